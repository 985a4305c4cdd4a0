//! Checks the registry, certificate and image fixtures against real
//! `docker-registry` processes.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::certs::Ca;
use testkit::image::{
    docker_image, docker_layer_from_files, docker_list, layer_from_files, oci_image, random_layer,
    sample_image, sample_index, sha256_digest, Blob, Platform, Pusher, DOCKER_LIST,
    DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use testkit::registry::{Registry, RegistryOptions};

fn roundtrip(registry: &Registry, pusher: &Pusher) {
    let image = sample_image("alpha");
    let digest = pusher.push_image("team/alpha", "v1", &image);
    assert_eq!(digest, image.digest);
    assert_eq!(
        pusher.manifest_digest("team/alpha", "v1"),
        Some(image.digest.clone())
    );
    let (bytes, content_type) = pusher.get_manifest("team/alpha", "v1").expect("manifest");
    assert_eq!(bytes, image.manifest);
    assert_eq!(content_type, OCI_MANIFEST);
    assert_eq!(sha256_digest(&bytes), image.digest);
    for blob in image.blobs() {
        assert!(pusher.blob_exists("team/alpha", &blob.digest));
        assert_eq!(
            pusher.get_blob("team/alpha", &blob.digest).unwrap(),
            blob.bytes
        );
    }
    assert_eq!(pusher.tags("team/alpha"), vec!["v1".to_string()]);

    let index = sample_index("beta");
    let digest = pusher.push_index("beta", "multi", &index);
    assert_eq!(digest, index.digest);
    let (bytes, content_type) = pusher.get_manifest("beta", "multi").expect("index");
    assert_eq!(bytes, index.manifest);
    assert_eq!(content_type, OCI_INDEX);
    assert_eq!(
        pusher.manifest_digest("beta", "multi"),
        Some(index.digest.clone())
    );
    for child in &index.children {
        let (bytes, ct) = pusher.get_manifest("beta", &child.digest).expect("child");
        assert_eq!(bytes, child.manifest);
        assert_eq!(ct, OCI_MANIFEST);
    }
    let mut catalog = pusher.catalog();
    catalog.sort();
    assert_eq!(catalog, vec!["beta".to_string(), "team/alpha".to_string()]);

    assert_eq!(pusher.manifest_digest("team/alpha", "nope"), None);
    assert_eq!(pusher.get_manifest("nothere", "v1"), None);
    assert!(pusher.tags("nothere").is_empty());
    assert!(!pusher.blob_exists("beta", &image.config.digest));

    pusher.delete_manifest("team/alpha", &image.digest);
    assert_eq!(pusher.manifest_digest("team/alpha", "v1"), None);
    assert!(registry.log().contains("listening on"));
}

#[test]
fn plain_registry_round_trip() {
    let registry = Registry::start();
    assert!(registry.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(registry.base_url(), format!("http://{}", registry.host()));
    roundtrip(&registry, &Pusher::new(&registry));
    assert!(registry
        .root_dir()
        .join("docker/registry/v2/blobs")
        .is_dir());
}

#[test]
fn tls_htpasswd_registry_round_trip() {
    let ca = Ca::new();
    let registry = Registry::start_with(RegistryOptions {
        htpasswd: Some(("alice".into(), "s3cret".into())),
        tls: Some(ca.issue_server()),
        ..Default::default()
    });
    assert!(registry.base_url().starts_with("https://127.0.0.1:"));
    let pusher = Pusher::new(&registry)
        .ca(&ca.cert_path())
        .basic_auth("alice", "s3cret");
    roundtrip(&registry, &pusher);

    // Without credentials: 401 with a Basic challenge.
    let anon = Pusher::new(&registry).ca(&ca.cert_path());
    let err = anon.try_push_blob("x", &Blob::new("application/octet-stream", b"x".to_vec()));
    assert_eq!(err.unwrap_err().status, 401);
    let wrong = Pusher::new(&registry)
        .ca(&ca.cert_path())
        .basic_auth("alice", "nope");
    let err = wrong
        .try_push_manifest("x", "t", OCI_MANIFEST, b"{}")
        .unwrap_err();
    assert_eq!(err.status, 401);

    // A client that does not trust this CA fails the handshake.
    let other = Ca::new();
    let untrusting = Pusher::new(&registry)
        .ca(&other.cert_path())
        .basic_auth("alice", "s3cret");
    let err = untrusting
        .request(reqwest::Method::GET, "/v2/", &|r| r)
        .unwrap_err();
    assert_eq!(err.status, 0, "{err}");

    // HTTP/2 over TLS is what the access log shows.
    assert!(registry.requests().iter().any(|e| e.protocol == "HTTP/2.0"));
}

#[test]
fn mutual_tls_requires_client_certificate() {
    let ca = Ca::new();
    let registry = Registry::start_with(RegistryOptions {
        tls: Some(ca.issue_server()),
        client_ca: Some(ca.cert_path()),
        ..Default::default()
    });
    let with_cert = Pusher::new(&registry)
        .ca(&ca.cert_path())
        .client_cert(&ca.issue_client("syncer-test"));
    let image = sample_image("mtls");
    assert_eq!(with_cert.push_image("m", "t", &image), image.digest);
    assert_eq!(
        with_cert.manifest_digest("m", "t"),
        Some(image.digest.clone())
    );

    let without = Pusher::new(&registry).ca(&ca.cert_path());
    let err = without
        .request(reqwest::Method::GET, "/v2/", &|r| r)
        .unwrap_err();
    assert_eq!(err.status, 0, "{err}");
    // A client certificate from another CA is refused too.
    let foreign = Ca::new();
    let wrong = Pusher::new(&registry)
        .ca(&ca.cert_path())
        .client_cert(&foreign.issue_client("intruder"));
    assert!(wrong.request(reqwest::Method::GET, "/v2/", &|r| r).is_err());
}

#[test]
fn access_log_counts_requests() {
    let registry = Registry::start();
    let pusher = Pusher::new(&registry);
    assert_eq!(
        registry.count_requests("GET", "/v2/"),
        0,
        "probe is not counted"
    );
    let image = sample_image("count");
    pusher.push_image("c/repo", "latest", &image);
    // config + 2 layers: a POST and a PUT each, then one manifest PUT.
    assert_eq!(
        registry.count_requests("POST", "/v2/c/repo/blobs/uploads/"),
        3
    );
    assert_eq!(registry.count_requests("PUT", "/blobs/uploads/"), 3);
    assert_eq!(
        registry.count_requests("PUT", "/v2/c/repo/manifests/latest"),
        1
    );
    assert_eq!(registry.count_requests("PUT", ""), 4);
    assert_eq!(registry.count_requests("HEAD", ""), 0);
    pusher.manifest_digest("c/repo", "latest");
    pusher.manifest_digest("c/repo", "missing");
    assert_eq!(registry.count_requests("HEAD", "/manifests/"), 2);
    let entries = registry.requests();
    let heads: Vec<_> = entries.iter().filter(|e| e.method == "HEAD").collect();
    assert_eq!(heads[0].status, 200);
    assert_eq!(heads[1].status, 404);
    assert_eq!(heads[1].protocol, "HTTP/1.1");
    assert!(
        registry.count_requests(
            "PUT",
            &format!("digest={}", image.layers[0].digest.replace(':', "%3A"))
        ) == 1
    );
}

#[test]
fn docker_formats_round_trip() {
    let registry = Registry::start();
    let pusher = Pusher::new(&registry);
    let children: Vec<_> = [
        Platform::linux("amd64"),
        Platform::linux_variant("arm", "v7"),
    ]
    .into_iter()
    .map(|p| {
        let layer = docker_layer_from_files(&[("etc/os", p.to_string().as_bytes())]);
        docker_image(vec![layer], p)
    })
    .collect();
    let list = docker_list(children);
    assert_eq!(pusher.push_index("d", "list", &list), list.digest);
    let (bytes, ct) = pusher.get_manifest("d", "list").unwrap();
    assert_eq!((bytes, ct.as_str()), (list.manifest.clone(), DOCKER_LIST));
    let (bytes, ct) = pusher.get_manifest("d", &list.children[1].digest).unwrap();
    assert_eq!(
        (bytes, ct.as_str()),
        (list.children[1].manifest.clone(), DOCKER_MANIFEST)
    );
    let v: serde_json::Value = serde_json::from_slice(&list.manifest).unwrap();
    assert_eq!(v["manifests"][1]["platform"]["variant"], "v7");
    assert_eq!(v["manifests"][1]["platform"]["architecture"], "arm");
}

#[test]
fn images_are_deterministic_and_real() {
    assert_eq!(sample_image("a"), sample_image("a"));
    assert_ne!(sample_image("a").digest, sample_image("b").digest);
    assert_eq!(sample_index("a").digest, sample_index("a").digest);
    assert_ne!(sample_index("a").digest, sample_index("b").digest);

    let files: &[(&str, &[u8])] = &[("a/b/c.txt", b"hello"), ("top", b"x")];
    let layer = layer_from_files(files);
    assert_eq!(layer, layer_from_files(files));
    // A real tar.gz: unpack it and compare the diff_id in the config.
    let tar_bytes = {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&layer.bytes[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 0);
            assert_eq!(e.header().uid().unwrap(), 0);
            e.path().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(names, vec!["a/", "a/b/", "a/b/c.txt", "top"]);
    let image = oci_image(vec![layer.clone()], Platform::linux_variant("arm64", "v8"));
    let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], sha256_digest(&tar_bytes));
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["variant"], "v8");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        image.platform(),
        Some(Platform::linux_variant("arm64", "v8"))
    );

    let r = random_layer(100_000, 7);
    assert_eq!(r, random_layer(100_000, 7));
    assert_ne!(r.digest, random_layer(100_000, 8).digest);
    assert!(
        r.bytes.len() >= 100_000 && r.bytes.len() < 100_000 + 4096,
        "{}",
        r.bytes.len()
    );
    assert_eq!(
        oci_image(vec![r.clone()], Platform::linux("amd64")).layers[0],
        r
    );
    assert!(r.diff_id() != r.digest);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&r.bytes[..]));
    let mut entries = archive.entries().unwrap();
    assert!(entries
        .next()
        .unwrap()
        .unwrap()
        .header()
        .entry_type()
        .is_dir());
    let mut file = entries.next().unwrap().unwrap();
    assert_eq!(file.path().unwrap().to_str(), Some("random/7.bin"));
    let mut content = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut content).unwrap();
    assert_eq!(content, testkit::image::random_bytes(100_000, 7));
    drop(file);
    assert!(entries.next().is_none());
    // An empty random layer is still a valid gzip.
    let empty = random_layer(0, 1);
    assert!(empty.diff_id() != empty.digest);
}

#[test]
fn large_random_blob_round_trip() {
    let registry = Registry::start();
    let pusher = Pusher::new(&registry);
    let blob = random_layer(16 << 20, 1);
    let image = oci_image(vec![blob.clone()], Platform::linux("amd64"));
    pusher.push_image("big", "t", &image);
    assert_eq!(pusher.get_blob("big", &blob.digest).unwrap(), blob.bytes);
}

#[test]
fn delete_can_be_disabled() {
    let registry = Registry::start_with(RegistryOptions {
        delete_enabled: false,
        ..Default::default()
    });
    let pusher = Pusher::new(&registry);
    let image = sample_image("nodelete");
    pusher.push_image("r", "t", &image);
    let err = pusher.try_delete_manifest("r", &image.digest).unwrap_err();
    assert_eq!(err.status, 405, "{err}");
}

#[test]
fn drop_ends_the_process() {
    let registry = Registry::start();
    let pid = registry.pid();
    let host = registry.host();
    let proc_path = format!("/proc/{pid}");
    assert!(Path::new(&proc_path).exists());
    drop(registry);
    // Reaped by Drop: no zombie left under that PID (barring PID reuse).
    let gone = Instant::now();
    while Path::new(&proc_path).exists() && gone.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let still = std::fs::read_to_string(format!("{proc_path}/cmdline")).unwrap_or_default();
    assert!(
        !still.contains("docker-registry"),
        "registry {pid} still running"
    );
    assert!(
        std::net::TcpStream::connect(&host).is_err(),
        "{host} still answers"
    );
}

#[test]
fn parallel_registries_start() {
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let registry = Registry::start();
                let pusher = Pusher::new(&registry);
                let image = sample_image(&format!("par{i}"));
                pusher.push_image("p", "t", &image);
                assert_eq!(pusher.manifest_digest("p", "t"), Some(image.digest));
                registry.port()
            })
        })
        .collect();
    let mut ports: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 6);
}

#[tokio::test]
async fn usable_inside_a_tokio_runtime() {
    let registry = Registry::start();
    let pusher = Pusher::new(&registry);
    let image = sample_image("async");
    assert_eq!(pusher.push_image("a", "t", &image), image.digest);
    assert_eq!(pusher.tags("a"), vec!["t".to_string()]);
}

#[test]
#[should_panic(expected = "mutually exclusive")]
fn htpasswd_and_token_conflict() {
    let ca = Ca::new();
    Registry::start_with(RegistryOptions {
        htpasswd: Some(("a".into(), "b".into())),
        token: Some(testkit::registry::TokenAuthConfig {
            realm: "http://127.0.0.1:1/token".into(),
            service: "s".into(),
            issuer: "i".into(),
            rootcertbundle: ca.cert_path(),
        }),
        ..Default::default()
    });
}

#[test]
fn pusher_answers_bearer_challenges() {
    use testkit::token::{TokenOptions, TokenServer};
    let ts = TokenServer::start(TokenOptions {
        users: vec![("alice".into(), "s3cret".into())],
        ..TokenOptions::default()
    });
    let registry = Registry::start_with(RegistryOptions {
        token: Some(ts.auth_config()),
        ..Default::default()
    });
    let pusher = Pusher::new(&registry).basic_auth("alice", "s3cret");
    // Read first (a pull-only token), then push (needs a new pull,push one).
    assert_eq!(pusher.manifest_digest("tok/app", "v1"), None);
    let image = sample_image("token");
    assert_eq!(pusher.push_image("tok/app", "v1", &image), image.digest);
    let index = sample_index("token");
    assert_eq!(pusher.push_index("tok/app", "multi", &index), index.digest);
    let mut tags = pusher.tags("tok/app");
    tags.sort();
    assert_eq!(tags, vec!["multi".to_string(), "v1".to_string()]);
    assert_eq!(pusher.catalog(), vec!["tok/app".to_string()]);
    // Tokens are cached: one 401 per scope change, not per request.
    let unauthorized = registry
        .requests()
        .iter()
        .filter(|e| e.status == 401)
        .count();
    assert!(unauthorized <= 3, "{unauthorized} challenges");

    let stranger = Pusher::new(&registry).basic_auth("alice", "wrong");
    let err = stranger
        .try_push_blob(
            "tok/app",
            &Blob::new("application/octet-stream", b"x".to_vec()),
        )
        .unwrap_err();
    assert_eq!(err.status, 401, "{err}");
}
