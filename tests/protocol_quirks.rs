//! Registry behaviours that differ from the specification or between
//! registries: redirects to storage, relative `Location`, paginated tags
//! and catalogs, schema1, `Accept`, sha512, foreign layers, exact manifest
//! bytes, per-registry limits and mutual TLS.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{HttpServer, Reply, Run, Syncer};
use sha2::Digest as _;
use tempfile::TempDir;
use testkit::certs::Ca;
use testkit::image::{
    docker_image, docker_layer_from_files, docker_list, oci_image, random_layer, sample_image,
    sample_index, sha256_digest, Blob, Platform, Pusher,
};
use testkit::proxy::{FaultProxy, Faults, STORAGE_QUERY};
use testkit::registry::{Registry, RegistryOptions};

const USER: &str = "quirks";
const PASSWORD: &str = "quirks-Pa55word";

fn write_rules(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn apply(syncer: &Syncer, rules: &Path) -> Run {
    syncer.run(&["apply", "--auto-approve", rules.to_str().unwrap()])
}

/// Rules copying `repo` (every tag) from `src` to the same name at `dst`,
/// both plain HTTP.
fn copy_rules(dir: &Path, src: &str, dst: &str, repo: &str) -> PathBuf {
    write_rules(
        dir,
        "rules.yaml",
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/{repo}\n    destinations: [{dst}/{repo}]\n"
        ),
    )
}

#[test]
fn redirected_blob_get_drops_authorization() {
    let source = Registry::start_with(RegistryOptions {
        htpasswd: Some((USER.into(), PASSWORD.into())),
        ..RegistryOptions::default()
    });
    let image = sample_image("redirect");
    Pusher::new(&source)
        .basic_auth(USER, PASSWORD)
        .push_image("redir/app", "v1", &image);
    let proxy = FaultProxy::start(
        &source.base_url(),
        Faults {
            redirect_blob_get: true,
            ..Faults::default()
        },
    );
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        "rules.yaml",
        &format!(
            "registries:\n  {src}: {{tls: disabled, username: {USER}, password: {PASSWORD}}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/redir/app\n    destinations: [{dst}/redir/app]\n",
            src = proxy.host(),
            dst = destination.host()
        ),
    );

    apply(&Syncer::new(), &rules).expect_code(0);

    let stored = proxy.storage_requests();
    assert_eq!(
        stored.len(),
        image.blobs().count(),
        "every blob read goes to storage: {stored:?}"
    );
    for request in &stored {
        assert!(!request.had_authorization, "{request:?}");
        assert!(request.query_matched, "{request:?}");
        assert!(
            request.path_and_query.contains(STORAGE_QUERY),
            "{request:?}"
        );
        assert_eq!(request.status, 200, "{request:?}");
    }
    assert_eq!(
        Pusher::new(&destination).manifest_digest("redir/app", "v1"),
        Some(image.digest.clone())
    );
}

#[test]
fn relative_location_is_resolved() {
    let source = Registry::start();
    let destination = Registry::start();
    let image = sample_image("relative");
    Pusher::new(&source).push_image("rel/app", "v1", &image);
    let proxy = FaultProxy::start(
        &destination.base_url(),
        Faults {
            relative_location: true,
            ..Faults::default()
        },
    );
    let dir = TempDir::new().unwrap();
    let rules = copy_rules(dir.path(), &source.host(), &proxy.host(), "rel/app");

    apply(&Syncer::new(), &rules).expect_code(0);

    assert_eq!(
        Pusher::new(&destination).manifest_digest("rel/app", "v1"),
        Some(image.digest.clone())
    );
}

#[test]
fn paginated_tags_are_followed() {
    let source = Registry::start();
    let pusher = Pusher::new(&source);
    let tags = ["a1", "b2", "c3", "d4", "e5"];
    let image = sample_image("pages");
    for tag in tags {
        pusher.push_image("paged/app", tag, &image);
    }
    let proxy = FaultProxy::start(
        &source.base_url(),
        Faults {
            paginate_tags: Some(2),
            ..Faults::default()
        },
    );
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = copy_rules(dir.path(), &proxy.host(), &destination.host(), "paged/app");

    apply(&Syncer::new(), &rules).expect_code(0);

    let mut copied = Pusher::new(&destination).tags("paged/app");
    copied.sort();
    assert_eq!(copied, tags);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.path_and_query.contains("extra=1")),
        "the next-page link's extra parameter was dropped"
    );
}

/// Serves HTTP/1.1 on loopback, answering each request with
/// `respond(method, path_and_query)`, and returns its `host:port`.
fn scripted_server(respond: impl Fn(&str, &str) -> Reply + Send + 'static) -> String {
    HttpServer::start(move |request| respond(&request.method, &request.target)).host
}

fn json_reply(status: u16, body: serde_json::Value, link: Option<&str>) -> Reply {
    let reply = Reply::json(status, body);
    match link {
        Some(link) => reply.header("Link", &format!("<{link}>; rel=\"next\"")),
        None => reply,
    }
}

#[test]
fn repeated_page_url_is_an_error() {
    let host = scripted_server(|_, target| {
        let tags = serde_json::json!({"name": "loop/app", "tags": ["a"]});
        match target {
            "/v2/loop/app/tags/list" => {
                json_reply(200, tags, Some("/v2/loop/app/tags/list?page=2"))
            }
            _ => json_reply(200, tags, Some("/v2/loop/app/tags/list")),
        }
    });
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = copy_rules(dir.path(), &host, &destination.host(), "loop/app");

    let run = Syncer::new().run(&["plan", rules.to_str().unwrap()]);

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("repeated"), "{}", run.stderr);
}

/// Pushes one small image into `count` repositories named `many/rNNN`.
fn push_many(registry: &Registry, count: usize) -> Vec<String> {
    let pusher = Pusher::new(registry);
    let image = sample_image("many");
    (0..count)
        .map(|i| {
            let repo = format!("many/r{i:03}");
            pusher.push_image(&repo, "v1", &image);
            repo
        })
        .collect()
}

fn plan_creates(rules: &Path) -> serde_json::Value {
    let run = Syncer::new()
        .run(&["plan", "--format", "json", rules.to_str().unwrap()])
        .expect_code(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    plan["summary"]["create"].clone()
}

#[test]
fn catalog_over_100_repositories() {
    let source = Registry::start();
    let repos = push_many(&source, 105);
    let destination = Registry::start();
    // The first catalog request carries `n`; this server rejects it as
    // registries with a smaller page limit do, and forwards everything
    // else, without `n`, to the real registry, which then pages by 100
    // with a relative `Link`.
    let upstream = source.base_url();
    let front = scripted_server(move |method, target| {
        if target.starts_with("/v2/_catalog?n=") {
            let envelope = serde_json::json!({"errors": [{"code": "PAGINATION_NUMBER_INVALID", "message": "invalid number of results requested"}]});
            return json_reply(400, envelope, None);
        }
        let client = reqwest::blocking::Client::new();
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
        let response = client
            .request(method.parse().unwrap(), format!("{upstream}{target}"))
            .header("Accept", accept)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| {
                ["content-type", "docker-content-digest", "link"].contains(&name.as_str())
            })
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
            .collect();
        Reply {
            status,
            headers,
            body: response.bytes().unwrap().to_vec(),
        }
    });
    let dir = TempDir::new().unwrap();
    let text = |src: &str| {
        format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/many/**\n    destinations: [\"{dst}/{{repo}}\"]\n",
            dst = destination.host()
        )
    };
    let direct = write_rules(dir.path(), "direct.yaml", &text(&source.host()));
    let fallback = write_rules(dir.path(), "fallback.yaml", &text(&front));

    assert_eq!(plan_creates(&direct), repos.len());
    assert_eq!(plan_creates(&fallback), repos.len());

    let catalog_uris: Vec<String> = source
        .requests()
        .into_iter()
        .filter(|e| e.uri.starts_with("/v2/_catalog"))
        .map(|e| e.uri)
        .collect();
    assert!(
        catalog_uris.iter().any(|u| u.contains("last=")),
        "the registry's Link was never followed: {catalog_uris:?}"
    );
    for uri in &catalog_uris {
        let n = uri
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("n="))
            .map(|n| n.parse::<usize>().unwrap());
        assert!(n.unwrap_or(0) <= 1000, "{uri}");
    }
}

/// Makes a signed schema1 manifest: the registry itself converts a schema2
/// image to schema1 when a tag is fetched without the schema2 type.
fn push_schema1(registry: &Registry, repo: &str, tag: &str) -> String {
    let pusher = Pusher::new(registry);
    let image = docker_image(
        vec![docker_layer_from_files(&[("legacy.txt", b"schema1\n")])],
        Platform::linux("amd64"),
    );
    pusher.push_image(repo, "schema2-origin", &image);
    let response = pusher
        .request(
            reqwest::Method::GET,
            &format!("/v2/{repo}/manifests/schema2-origin"),
            &|r| {
                r.header(
                    "Accept",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )
            },
        )
        .unwrap();
    let media_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(media_type.contains("v1+prettyjws"), "{media_type}");
    let bytes = response.bytes().unwrap();
    pusher.push_manifest(repo, tag, &media_type, &bytes)
}

#[test]
fn schema1_fails_only_that_image() {
    let source = Registry::start_with(RegistryOptions {
        schema1: true,
        ..RegistryOptions::default()
    });
    push_schema1(&source, "legacy/app", "old");
    let modern = sample_image("modern");
    Pusher::new(&source).push_image("modern/app", "v1", &modern);
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        "rules.yaml",
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/legacy/app:old\n    destinations: [{dst}/legacy/app]\n  - source: {src}/modern/app:v1\n    destinations: [{dst}/modern/app]\n",
            src = source.host(),
            dst = destination.host()
        ),
    );

    let run = apply(&Syncer::new(), &rules);

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(output.contains("schema1"), "{output}");
    assert!(output.contains("legacy/app"), "{output}");
    assert!(output.contains("1 failed"), "{output}");
    let copy = Pusher::new(&destination);
    assert_eq!(
        copy.manifest_digest("modern/app", "v1"),
        Some(modern.digest.clone())
    );
    assert_eq!(copy.manifest_digest("legacy/app", "old"), None);
}

/// Fetches a manifest's bytes and `Docker-Content-Digest` with the schema1
/// type accepted, as a schema1-aware client would.
fn schema1_bytes(registry: &Registry, repo: &str, tag: &str) -> (Vec<u8>, String) {
    let response = Pusher::new(registry)
        .request(
            reqwest::Method::GET,
            &format!("/v2/{repo}/manifests/{tag}"),
            &|r| {
                r.header(
                    "Accept",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )
            },
        )
        .unwrap();
    let digest = response
        .headers()
        .get("docker-content-digest")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    (response.bytes().unwrap().to_vec(), digest)
}

fn before_signatures(manifest: &[u8]) -> &[u8] {
    let text = std::str::from_utf8(manifest).unwrap();
    let end = text.find("\"signatures\"").expect("a signed manifest");
    &manifest[..end]
}

#[test]
fn schema1_copied_with_payload_digest() {
    let with_schema1 = RegistryOptions {
        schema1: true,
        ..RegistryOptions::default()
    };
    let source = Registry::start_with(with_schema1.clone());
    let pushed = push_schema1(&source, "legacy/app", "old");
    let (source_bytes, source_digest) = schema1_bytes(&source, "legacy/app", "old");
    assert_eq!(source_digest, pushed);
    // The registry's digest covers the signed payload, not the whole body.
    assert_ne!(sha256_digest(&source_bytes), source_digest);
    let destination = Registry::start_with(with_schema1);
    let dir = TempDir::new().unwrap();
    let rules = copy_rules(
        dir.path(),
        &source.host(),
        &destination.host(),
        "legacy/app",
    );
    let syncer = Syncer::new();

    let run = apply(&syncer, &rules).expect_code(0);

    assert!(run.stdout.contains("2 created"), "{}", run.stdout);
    let (copied_bytes, copied_digest) = schema1_bytes(&destination, "legacy/app", "old");
    assert_eq!(copied_digest, source_digest);
    // Each registry signs schema1 manifests again with its own key when
    // serving them, so only the part before the signatures is comparable.
    assert_eq!(
        before_signatures(&copied_bytes),
        before_signatures(&source_bytes)
    );
    let puts = destination.count_requests("PUT", "");
    let again = apply(&syncer, &rules).expect_code(0);
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(destination.count_requests("PUT", ""), puts);
}

#[test]
fn second_run_writes_nothing() {
    let source = Registry::start();
    let pusher = Pusher::new(&source);
    pusher.push_image("kinds/app", "oci", &sample_image("kinds-oci"));
    let docker = docker_image(
        vec![docker_layer_from_files(&[("d.txt", b"docker\n")])],
        Platform::linux("amd64"),
    );
    pusher.push_image("kinds/app", "docker", &docker);
    pusher.push_index("kinds/app", "index", &sample_index("kinds-index"));
    let list = docker_list(vec![
        docker_image(
            vec![docker_layer_from_files(&[("a.txt", b"amd64\n")])],
            Platform::linux("amd64"),
        ),
        docker_image(
            vec![docker_layer_from_files(&[("b.txt", b"arm64\n")])],
            Platform::linux("arm64"),
        ),
    ]);
    pusher.push_index("kinds/app", "list", &list);
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = copy_rules(dir.path(), &source.host(), &destination.host(), "kinds/app");
    let syncer = Syncer::new();

    apply(&syncer, &rules).expect_code(0);
    let puts = destination.count_requests("PUT", "");
    let posts = destination.count_requests("POST", "");
    let again = apply(&syncer, &rules).expect_code(0);

    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(destination.count_requests("PUT", ""), puts);
    assert_eq!(destination.count_requests("POST", ""), posts);
    let copy = Pusher::new(&destination);
    for tag in ["oci", "docker", "index", "list"] {
        assert_eq!(
            copy.manifest_digest("kinds/app", tag),
            pusher.manifest_digest("kinds/app", tag),
            "{tag}"
        );
    }
}

fn sha512_blob(media_type: &str, bytes: Vec<u8>) -> Blob {
    let digest = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&bytes)));
    Blob {
        media_type: media_type.into(),
        digest,
        bytes,
    }
}

fn descriptor(blob: &Blob) -> serde_json::Value {
    serde_json::json!({"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size()})
}

#[test]
fn sha512_descriptors_are_verified() {
    let source = Registry::start();
    let pusher = Pusher::new(&source);
    let base = oci_image(vec![random_layer(4096, 512)], Platform::linux("amd64"));
    let layer = sha512_blob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        base.layers[0].bytes.clone(),
    );
    pusher.push_blob("sha/app", &base.config);
    pusher.push_blob("sha/app", &layer);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor(&base.config),
        "layers": [descriptor(&layer)],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = pusher.push_manifest(
        "sha/app",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &bytes,
    );
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = copy_rules(dir.path(), &source.host(), &destination.host(), "sha/app");

    apply(&Syncer::new(), &rules).expect_code(0);

    let copy = Pusher::new(&destination);
    assert_eq!(copy.manifest_digest("sha/app", "v1"), Some(digest));
    assert_eq!(
        copy.get_blob("sha/app", &layer.digest).as_deref(),
        Some(layer.bytes.as_slice())
    );
}

#[test]
fn foreign_layers_are_not_fetched() {
    let foreign = RegistryOptions {
        foreign_urls: true,
        ..RegistryOptions::default()
    };
    let source = Registry::start_with(foreign.clone());
    let pusher = Pusher::new(&source);
    let base = docker_image(
        vec![docker_layer_from_files(&[("win.txt", b"local\n")])],
        Platform::linux("amd64"),
    );
    let foreign_digest = format!("sha256:{}", "ab".repeat(32));
    for blob in base.blobs() {
        pusher.push_blob("win/app", blob);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": descriptor(&base.config),
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "digest": foreign_digest,
                "size": 1234,
                "urls": ["https://127.0.0.1:9/foreign/layer.tar.gz"]
            },
            descriptor(&base.layers[0])
        ],
    });
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    let digest = pusher.push_manifest(
        "win/app",
        "v1",
        "application/vnd.docker.distribution.manifest.v2+json",
        &bytes,
    );
    let destination = Registry::start_with(foreign);
    let dir = TempDir::new().unwrap();
    let rules = copy_rules(dir.path(), &source.host(), &destination.host(), "win/app");

    apply(&Syncer::new(), &rules).expect_code(0);

    assert_eq!(source.count_requests("GET", &foreign_digest), 0);
    assert_eq!(source.count_requests("HEAD", &foreign_digest), 0);
    let copy = Pusher::new(&destination);
    assert_eq!(copy.manifest_digest("win/app", "v1"), Some(digest));
    let (copied, _) = copy.get_manifest("win/app", "v1").unwrap();
    assert_eq!(copied, bytes);
}

#[test]
fn manifest_bytes_are_kept_exactly() {
    let source = Registry::start();
    let pusher = Pusher::new(&source);
    let image = sample_image("exact");
    for blob in image.blobs() {
        pusher.push_blob("exact/app", blob);
    }
    let layers: Vec<String> = image
        .layers
        .iter()
        .map(|l| {
            format!(
                "    {{\n      \"size\" : {},\n      \"digest\" : \"{}\",\n      \"mediaType\" : \"{}\"\n    }}",
                l.size(),
                l.digest,
                l.media_type
            )
        })
        .collect();
    let text = format!(
        "{{\n  \"layers\" : [\n{}\n  ],\n  \"annotations\" : {{ \"note\" : \"<&> \\u00e9\" }},\n  \"config\" : {{\n    \"size\" : {},\n    \"mediaType\" : \"{}\",\n    \"digest\" : \"{}\"\n  }},\n  \"mediaType\" : \"application/vnd.oci.image.manifest.v1+json\",\n  \"schemaVersion\" : 2\n}}\n",
        layers.join(",\n"),
        image.config.size(),
        image.config.media_type,
        image.config.digest
    );
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let digest = pusher.push_manifest("exact/app", "v1", media_type, text.as_bytes());
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = copy_rules(dir.path(), &source.host(), &destination.host(), "exact/app");

    apply(&Syncer::new(), &rules).expect_code(0);

    let (copied, copied_type) = Pusher::new(&destination)
        .get_manifest("exact/app", "v1")
        .unwrap();
    assert_eq!(String::from_utf8(copied).unwrap(), text);
    assert_eq!(copied_type, media_type);
    assert_eq!(
        Pusher::new(&destination).manifest_digest("exact/app", "v1"),
        Some(digest)
    );
}

#[test]
fn requests_per_second_limits_rate() {
    let source = Registry::start();
    let layers = (0..4).map(|i| random_layer(1024, 700 + i)).collect();
    Pusher::new(&source).push_image(
        "rate/app",
        "v1",
        &oci_image(layers, Platform::linux("amd64")),
    );
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        "rules.yaml",
        &format!(
            "registries:\n  {src}: {{tls: disabled, requests_per_second: 4, max_concurrency: 1}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/rate/app\n    destinations: [{dst}/rate/app]\n",
            src = source.host(),
            dst = destination.host()
        ),
    );
    let before = source.requests().len();

    let start = Instant::now();
    apply(&Syncer::new(), &rules).expect_code(0);
    let elapsed = start.elapsed();

    let sent = source.requests().len() - before;
    // Plan and apply each run their own limiter, so the first request of
    // each starts at once.
    let minimum = Duration::from_secs_f64((sent.saturating_sub(2)) as f64 / 4.0);
    assert!(sent >= 8, "only {sent} requests");
    assert!(
        elapsed >= minimum,
        "{sent} requests in {elapsed:?}, expected at least {minimum:?}"
    );
}

#[test]
fn mutual_tls_with_client_certificate() {
    let ca = Ca::new();
    let client = ca.issue_client("syncer-test");
    let destination = Registry::start_with(RegistryOptions {
        tls: Some(ca.issue_server()),
        client_ca: Some(ca.cert_path()),
        ..RegistryOptions::default()
    });
    let source = Registry::start();
    let image = sample_image("mtls");
    Pusher::new(&source).push_image("mtls/app", "v1", &image);
    let dir = TempDir::new().unwrap();
    let with_cert = write_rules(
        dir.path(),
        "cert.yaml",
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}:\n    ca_file: {ca}\n    cert_file: {cert}\n    key_file: {key}\nrules:\n  - source: {src}/mtls/app\n    destinations: [{dst}/mtls/app]\n",
            src = source.host(),
            dst = destination.host(),
            ca = ca.cert_path().display(),
            cert = client.cert_path.display(),
            key = client.key_path.display()
        ),
    );
    let without_cert = write_rules(
        dir.path(),
        "nocert.yaml",
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}:\n    ca_file: {ca}\n    retries: 0\nrules:\n  - source: {src}/mtls/app\n    destinations: [{dst}/mtls/app]\n",
            src = source.host(),
            dst = destination.host(),
            ca = ca.cert_path().display()
        ),
    );

    let refused = Syncer::new().run(&["plan", without_cert.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);

    apply(&Syncer::new(), &with_cert).expect_code(0);
    let copy = Pusher::new(&destination)
        .ca(&ca.cert_path())
        .client_cert(&client);
    assert_eq!(
        copy.manifest_digest("mtls/app", "v1"),
        Some(image.digest.clone())
    );
}

#[test]
fn tls_mistakes_fail_at_once_with_a_hint() {
    let plain = Registry::start();
    let ca = Ca::new();
    let secure = Registry::start_with(RegistryOptions {
        tls: Some(ca.issue_server()),
        ..RegistryOptions::default()
    });
    let dir = TempDir::new().unwrap();
    // No `tls:` for either: the plain one needs `disabled`, the other its CA.
    let cases = [
        (plain.host(), "set `tls: disabled`"),
        (secure.host(), "give its CA with `ca_file`"),
    ];
    for (host, hint) in cases {
        let rules = write_rules(
            dir.path(),
            "rules.yaml",
            &format!(
                "rules:\n  - source: {host}/some/app:v1\n    destinations: [{host}/copy/app]\n"
            ),
        );

        let run = Syncer::new().run(&["plan", rules.to_str().unwrap()]);

        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains(hint), "{}", run.stderr);
        // Another handshake would fail the same way, so none is tried.
        assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    }
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let rules = write_rules(
        dir.path(),
        "rules.yaml",
        &format!(
            "registries:\n  {host}: {{ca_file: {ca}}}\nrules:\n  - source: {host}/some/app:v1\n    destinations: [{host}/copy/app]\n",
            host = secure.host(),
            ca = empty.display()
        ),
    );
    let run = Syncer::new().run(&["plan", rules.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("contains no PEM certificate"),
        "{}",
        run.stderr
    );
}

#[test]
fn permanent_statuses_are_not_retried() {
    // 503 is the control: the same set-up does retry a transient status.
    for (status, code, shown, retried) in [
        (400, "TAG_INVALID", "TAG_INVALID", false),
        (403, "DENIED", "DENIED", false),
        (404, "NAME_UNKNOWN", "held/app not found", false),
        (503, "UNAVAILABLE", "UNAVAILABLE", true),
    ] {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = calls.clone();
        let host = scripted_server(move |_, target| {
            if target.starts_with("/v2/held/app/tags/list") {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let body = serde_json::json!({"errors": [{"code": code, "message": "scripted"}]});
            json_reply(status, body, None)
        });
        let destination = Registry::start();
        let dir = TempDir::new().unwrap();
        let text = format!(
            "registries:\n  {host}: {{tls: disabled, retries: 2}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {host}/held/app\n    destinations: [{dst}/held/app]\n",
            dst = destination.host()
        );
        let rules = write_rules(dir.path(), "rules.yaml", &text);

        let run = Syncer::new().run(&["plan", rules.to_str().unwrap()]);

        assert_eq!(run.code, 1, "{status}: {}", run.stderr);
        assert!(run.stderr.contains(shown), "{status}: {}", run.stderr);
        let count = calls.load(std::sync::atomic::Ordering::SeqCst);
        let expected = if retried { 3 } else { 1 };
        assert_eq!(count, expected, "{status}: {}", run.stderr);
    }
}

#[test]
fn overlong_blob_body_is_cut_off() {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random_layer(2048, 77);
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.bytes.len()}]
    })
    .to_string()
    .into_bytes();
    let manifest_digest = sha256_digest(&manifest);
    // The layer is served with 4 KiB more than its descriptor's size.
    let mut overlong = layer.bytes.clone();
    overlong.extend(std::iter::repeat_n(0u8, 4096));
    let layer_path = format!("/v2/long/app/blobs/{}", layer.digest);
    let config_path = format!("/v2/long/app/blobs/{config_digest}");
    let host = scripted_server(move |_, target| {
        let reply = |body: Vec<u8>, content_type: &str| Reply {
            status: 200,
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                ("Docker-Content-Digest".into(), manifest_digest.clone()),
            ],
            body,
        };
        if target.starts_with("/v2/long/app/manifests/") {
            reply(
                manifest.clone(),
                "application/vnd.oci.image.manifest.v1+json",
            )
        } else if target == layer_path {
            reply(overlong.clone(), "application/octet-stream")
        } else if target == config_path {
            reply(config.clone(), "application/octet-stream")
        } else {
            json_reply(200, serde_json::json!({}), None)
        }
    });
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let text = format!(
        "registries:\n  {host}: {{tls: disabled, retries: 0}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {host}/long/app:v1\n    destinations: [{dst}/long/app]\n",
        dst = destination.host()
    );
    let rules = write_rules(dir.path(), "rules.yaml", &text);

    let run = apply(&Syncer::new(), &rules);

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("size mismatch"), "{}", run.stdout);
    let copy = Pusher::new(&destination);
    assert_eq!(copy.get_blob("long/app", &layer.digest), None);
    assert_eq!(copy.manifest_digest("long/app", "v1"), None);
}

#[test]
fn uncopyable_manifest_is_skipped_not_planned() {
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json"}"#.to_vec();
    let digest = sha256_digest(&body);
    let host = scripted_server(move |_, target| {
        if target.starts_with("/v2/odd/app/manifests/") {
            Reply {
                status: 200,
                headers: vec![
                    (
                        "Content-Type".into(),
                        "application/vnd.example.thing+json".into(),
                    ),
                    ("Docker-Content-Digest".into(), digest.clone()),
                ],
                body: body.clone(),
            }
        } else {
            json_reply(404, serde_json::json!({"errors": []}), None)
        }
    });
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let text = format!(
        "registries:\n  {host}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {host}/odd/app:v1\n    destinations: [{dst}/odd/app]\n",
        dst = destination.host()
    );
    let rules = write_rules(dir.path(), "rules.yaml", &text);

    // Nothing can be done about it, so it is no change to apply every night.
    let plan = Syncer::new()
        .run(&["plan", "--detailed-exitcode", rules.to_str().unwrap()])
        .expect_code(0);

    assert!(plan.stdout.contains("Skipped:"), "{}", plan.stdout);
    assert!(plan.stdout.contains("cannot be copied"), "{}", plan.stdout);
    assert!(plan.stderr.contains("cannot be copied"), "{}", plan.stderr);
    assert!(plan.stdout.contains("1 skipped"), "{}", plan.stdout);
}
