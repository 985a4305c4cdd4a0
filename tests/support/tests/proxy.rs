//! The fault proxy in front of a real `docker-registry`, one test per fault.

mod common;

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use testkit::image::{oci_image, random_layer, sample_image, Platform, Pusher};
use testkit::proxy::{FaultKind, FaultProxy, Faults, RetryAfter, STORAGE_QUERY};
use testkit::registry::{Registry, RegistryOptions};

fn proxied(faults: Faults) -> (Registry, FaultProxy) {
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg.base_url(), faults);
    (reg, proxy)
}

/// Pushes (directly, without the proxy) an image with one 1 MiB layer and
/// returns the layer.
fn push_big_layer_image(reg: &Registry, repo: &str) -> testkit::image::Blob {
    let layer = random_layer(1 << 20, 7);
    let image = oci_image(vec![layer.clone()], Platform::linux("amd64"));
    Pusher::new(reg).push_image(repo, "v1", &image);
    layer
}

/// Reads a body until it ends or fails; returns the bytes and whether it failed.
fn read_all(mut resp: reqwest::blocking::Response) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match resp.read(&mut buf) {
            Ok(0) => return (out, false),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, true),
        }
    }
}

#[test]
fn transparent_by_default_and_locations_point_back_through_the_proxy() {
    let (reg, proxy) = proxied(Faults::default());
    let base = proxy.base_url();
    let image = sample_image("transparent");
    // Push through the proxy with the other fixture's client.
    let digest = Pusher::for_url(&base).push_image("team/app", "v1", &image);
    assert_eq!(digest, image.digest);

    let c = client();
    let r = get_manifest(&c, &base, "team/app", "v1", None);
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(image.digest.as_str())
    );
    assert_eq!(r.bytes().unwrap().as_ref(), image.manifest.as_slice());

    // Blob HEAD keeps Content-Length; GET streams the exact bytes.
    let layer = &image.layers[0];
    let r = c
        .head(format!("{base}/v2/team/app/blobs/{}", layer.digest))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(layer.bytes.len().to_string())
    );
    let r = c
        .get(format!("{base}/v2/team/app/blobs/{}", layer.digest))
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), layer.bytes.as_slice());

    // Absolute Location headers name the proxy, not the registry.
    let r = c
        .post(format!("{base}/v2/team/app/blobs/uploads/"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = header(&r, "location").unwrap();
    assert!(
        loc.starts_with(&format!(
            "http://{}/v2/team/app/blobs/uploads/",
            proxy.host()
        )),
        "{loc}"
    );
    assert!(!loc.contains(&reg.host()));

    let recs = proxy.requests();
    assert!(
        recs.iter()
            .all(|r| r.fault.is_none() && !r.had_authorization),
        "{recs:?}"
    );
    assert!(recs.iter().any(|r| r.method == "PUT"
        && r.path_and_query == "/v2/team/app/manifests/v1"
        && r.status == 201));
    assert!(proxy.storage_requests().is_empty());
}

#[test]
fn too_many_requests_with_retry_after_seconds_then_success() {
    let (_reg, proxy) = proxied(Faults {
        too_many_requests: 2,
        retry_after: RetryAfter::Seconds(2),
        ..Faults::default()
    });
    let c = client();
    for _ in 0..2 {
        let r = c.get(format!("{}/v2/", proxy.base_url())).send().unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "retry-after").as_deref(), Some("2"));
        assert!(header(&r, "content-type")
            .unwrap()
            .starts_with("text/plain"));
        assert!(r.text().unwrap().contains("Too Many Requests"));
    }
    assert_eq!(
        c.get(format!("{}/v2/", proxy.base_url()))
            .send()
            .unwrap()
            .status(),
        200
    );
    let faults: Vec<_> = proxy
        .requests()
        .into_iter()
        .map(|r| (r.status, r.fault))
        .collect();
    assert_eq!(
        faults,
        vec![
            (429, Some(FaultKind::TooManyRequests)),
            (429, Some(FaultKind::TooManyRequests)),
            (200, None)
        ]
    );

    // set_faults resets the counters.
    proxy.set_faults(Faults {
        too_many_requests: 1,
        retry_after: RetryAfter::Absent,
        ..Faults::default()
    });
    let r = c.get(format!("{}/v2/", proxy.base_url())).send().unwrap();
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_none());
    assert_eq!(
        c.get(format!("{}/v2/", proxy.base_url()))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn too_many_requests_with_an_http_date_only_on_matching_paths() {
    let (reg, proxy) = proxied(Faults {
        too_many_requests: 1,
        retry_after: RetryAfter::DateIn(Duration::from_secs(3)),
        fault_path_contains: Some("/manifests/".into()),
        ..Faults::default()
    });
    let image = sample_image("dated");
    Pusher::new(&reg).push_image("r", "v1", &image);
    let c = client();
    // Not a manifest path: untouched.
    assert_eq!(
        c.get(format!("{}/v2/", proxy.base_url()))
            .send()
            .unwrap()
            .status(),
        200
    );
    let r = get_manifest(&c, &proxy.base_url(), "r", "v1", None);
    assert_eq!(r.status(), 429);
    let date = httpdate::parse_http_date(&header(&r, "retry-after").unwrap()).unwrap();
    let ahead = date.duration_since(SystemTime::now()).unwrap();
    assert!(
        ahead >= Duration::from_secs(2) && ahead <= Duration::from_secs(5),
        "{ahead:?}"
    );
    assert_eq!(
        get_manifest(&c, &proxy.base_url(), "r", "v1", None).status(),
        200
    );
}

#[test]
fn server_errors_rotate_and_never_reach_upstream() {
    let (reg, proxy) = proxied(Faults {
        server_error_every: Some(2),
        server_error_limit: Some(3),
        ..Faults::default()
    });
    let c = client();
    let statuses: Vec<u16> = (0..8)
        .map(|i| {
            c.get(format!("{}/v2/?i={i}", proxy.base_url()))
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
        .collect();
    assert_eq!(statuses, vec![200, 500, 200, 502, 200, 503, 200, 200]);
    // Upstream saw exactly the five that passed (its access log may lag a little).
    let deadline = Instant::now() + Duration::from_secs(5);
    while reg.count_requests("GET", "/v2/?i=") < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(reg.count_requests("GET", "/v2/?i="), 5, "{}", reg.log());
    for i in [1, 3, 5] {
        assert_eq!(reg.count_requests("GET", &format!("/v2/?i={i}")), 0);
    }
}

#[test]
fn reset_blob_get_sends_half_then_drops_the_connection() {
    let (reg, proxy) = proxied(Faults {
        reset_blob_get: 1,
        ..Faults::default()
    });
    let layer = push_big_layer_image(&reg, "big");
    let c = client();
    let url = format!("{}/v2/big/blobs/{}", proxy.base_url(), layer.digest);

    // Manifests and HEADs are not blob GETs.
    assert_eq!(c.head(&url).send().unwrap().status(), 200);

    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(layer.bytes.len().to_string())
    );
    let (got, failed) = read_all(r);
    assert!(failed, "the body should end in an error");
    assert_eq!(got.len(), layer.bytes.len() / 2);
    assert_eq!(got.as_slice(), &layer.bytes[..got.len()]);

    let r = c.get(&url).send().unwrap();
    let body = r.bytes().unwrap();
    assert_eq!(sha256(&body), layer.digest);

    // A Range GET after the reset is served too (and is a blob GET).
    proxy.set_faults(Faults {
        reset_blob_get: 1,
        ..Faults::default()
    });
    let r = c.get(&url).header("range", "bytes=100-").send().unwrap();
    assert_eq!(r.status(), 206);
    let (got, failed) = read_all(r);
    assert!(failed);
    assert_eq!(
        got.as_slice(),
        &layer.bytes[100..100 + (layer.bytes.len() - 100) / 2]
    );
    let kinds: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter_map(|r| r.fault)
        .collect();
    assert_eq!(
        kinds,
        vec![FaultKind::ResetMidBody, FaultKind::ResetMidBody]
    );
}

#[test]
fn flip_byte_blob_get_corrupts_exactly_one_byte_once() {
    let (reg, proxy) = proxied(Faults {
        flip_byte_blob_get: 1,
        ..Faults::default()
    });
    let layer = push_big_layer_image(&reg, "flip");
    let c = client();
    let url = format!("{}/v2/flip/blobs/{}", proxy.base_url(), layer.digest);
    let first = c.get(&url).send().unwrap();
    assert_eq!(
        header(&first, "docker-content-digest").as_deref(),
        Some(layer.digest.as_str())
    );
    let first = first.bytes().unwrap();
    assert_eq!(first.len(), layer.bytes.len());
    assert_ne!(sha256(&first), layer.digest);
    let diffs: Vec<usize> = (0..first.len())
        .filter(|&i| first[i] != layer.bytes[i])
        .collect();
    assert_eq!(diffs, vec![layer.bytes.len() / 2]);
    let second = c.get(&url).send().unwrap().bytes().unwrap();
    assert_eq!(sha256(&second), layer.digest);
}

#[test]
fn strips_configured_response_headers() {
    let (reg, proxy) = proxied(Faults {
        strip_response_headers: vec!["Docker-Content-Digest".into()],
        ..Faults::default()
    });
    let image = sample_image("strip");
    Pusher::new(&reg).push_image("s", "v1", &image);
    let c = client();
    let direct = get_manifest(&c, &reg.base_url(), "s", "v1", None);
    assert!(header(&direct, "docker-content-digest").is_some());
    let r = get_manifest(&c, &proxy.base_url(), "s", "v1", None);
    assert_eq!(r.status(), 200);
    assert!(header(&r, "docker-content-digest").is_none());
    assert_eq!(r.bytes().unwrap().as_ref(), image.manifest.as_slice());
    let r = c
        .head(format!(
            "{}/v2/s/blobs/{}",
            proxy.base_url(),
            image.config.digest
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "docker-content-digest").is_none());
}

#[test]
fn redirected_blob_get_is_served_by_storage_with_the_original_credentials() {
    let reg = Registry::start_with(RegistryOptions {
        htpasswd: Some(("alice".into(), "pw".into())),
        ..RegistryOptions::default()
    });
    let image = sample_image("redirect");
    Pusher::new(&reg)
        .basic_auth("alice", "pw")
        .push_image("red", "v1", &image);
    let proxy = FaultProxy::start(
        &reg.base_url(),
        Faults {
            redirect_blob_get: true,
            ..Faults::default()
        },
    );
    let c = client();
    let layer = &image.layers[1];
    let url = format!("{}/v2/red/blobs/{}", proxy.base_url(), layer.digest);

    // Without credentials: upstream's 401 comes through, no redirect.
    assert_eq!(c.get(&url).send().unwrap().status(), 401);
    // Unknown blob: upstream's 404.
    let missing = format!(
        "{}/v2/red/blobs/sha256:{}",
        proxy.base_url(),
        "0".repeat(64)
    );
    assert_eq!(
        c.get(&missing)
            .basic_auth("alice", Some("pw"))
            .send()
            .unwrap()
            .status(),
        404
    );

    let r = c.get(&url).basic_auth("alice", Some("pw")).send().unwrap();
    assert_eq!(r.status(), 307);
    let loc = header(&r, "location").unwrap();
    assert!(
        loc.starts_with(&format!("http://{}/", proxy.storage_host())),
        "{loc}"
    );
    assert!(loc.contains(&format!("?{STORAGE_QUERY}&")), "{loc}");

    // A client that re-encodes the query breaks the signature.
    let altered = loc.replace("%2F", "/");
    assert_eq!(c.get(&altered).send().unwrap().status(), 403);
    // A client that forwards Authorization to another host:port is refused.
    assert_eq!(
        c.get(&loc)
            .basic_auth("alice", Some("pw"))
            .send()
            .unwrap()
            .status(),
        400
    );
    // The right way: no Authorization, query untouched.
    let r = c.get(&loc).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().unwrap()), layer.digest);
    // Range works through storage too.
    let r = c.get(&loc).header("range", "bytes=10-19").send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &layer.bytes[10..20]);

    let st = proxy.storage_requests();
    let summary: Vec<(bool, bool, u16)> = st
        .iter()
        .map(|s| (s.had_authorization, s.query_matched, s.status))
        .collect();
    assert_eq!(
        summary,
        vec![
            (false, false, 403),
            (true, true, 400),
            (false, true, 200),
            (false, true, 206)
        ]
    );
    let redirected: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.fault == Some(FaultKind::Redirected))
        .collect();
    assert_eq!(redirected.len(), 1);
    assert!(redirected[0].had_authorization);

    // Blob faults apply to what storage serves.
    proxy.set_faults(Faults {
        redirect_blob_get: true,
        flip_byte_blob_get: 1,
        ..Faults::default()
    });
    let r = c.get(&url).basic_auth("alice", Some("pw")).send().unwrap();
    let loc = header(&r, "location").unwrap();
    let body = c.get(&loc).send().unwrap().bytes().unwrap();
    assert_ne!(sha256(&body), layer.digest);
    assert_eq!(
        proxy.storage_requests().last().unwrap().fault,
        Some(FaultKind::FlippedByte)
    );
}

#[test]
fn relative_location_headers() {
    let (_reg, proxy) = proxied(Faults {
        relative_location: true,
        ..Faults::default()
    });
    let c = client();
    let base = proxy.base_url();
    let r = c
        .post(format!("{base}/v2/rel/blobs/uploads/"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = header(&r, "location").unwrap();
    assert!(loc.starts_with("/v2/rel/blobs/uploads/"), "{loc}");
    // Resolving it against the request URL completes the upload.
    let bytes = b"relative location blob".to_vec();
    let r = c
        .put(format!(
            "{}&digest={}",
            resolve(&base, &loc),
            sha256(&bytes).replace(':', "%3A")
        ))
        .body(bytes.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = header(&r, "location").unwrap();
    assert_eq!(loc, format!("/v2/rel/blobs/{}", sha256(&bytes)));
}

#[test]
fn paginated_tags_follow_relative_links_to_the_end() {
    let (reg, proxy) = proxied(Faults {
        paginate_tags: Some(2),
        ..Faults::default()
    });
    let image = sample_image("tags");
    let pusher = Pusher::new(&reg);
    pusher.push_image("multi/tags", "e", &image);
    for t in ["c", "a", "d", "b"] {
        pusher.push_manifest("multi/tags", t, &image.media_type, &image.manifest);
    }
    let c = client();
    let base = proxy.base_url();
    let mut url = format!("{base}/v2/multi/tags/tags/list");
    let mut pages = Vec::new();
    let mut links = Vec::new();
    loop {
        let r = c.get(&url).send().unwrap();
        assert_eq!(r.status(), 200);
        let link = header(&r, "link");
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["name"], "multi/tags");
        pages.push(
            v["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
        );
        let Some(link) = link else { break };
        links.push(link.clone());
        let target = link
            .split(';')
            .next()
            .unwrap()
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>');
        assert!(target.starts_with('/'), "relative link expected: {link}");
        url = resolve(&base, target);
        assert!(pages.len() < 10);
    }
    assert_eq!(pages, vec![vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    assert_eq!(
        links,
        vec![
            "</v2/multi/tags/tags/list?n=2&last=b&extra=1>; rel=\"next\"",
            "</v2/multi/tags/tags/list?n=2&last=d&extra=1>; rel=\"next\"",
        ]
    );
    // Errors pass through untouched.
    assert_eq!(
        c.get(format!("{base}/v2/nothing/here/tags/list"))
            .send()
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn lost_patch_reply_after_the_chunk_landed() {
    let (reg, proxy) = proxied(Faults {
        lose_patch_reply: 1,
        ..Faults::default()
    });
    let c = client();
    let base = proxy.base_url();
    let data = b"0123456789abcdef".repeat(1024);
    let r = c
        .post(format!("{base}/v2/lost/blobs/uploads/"))
        .send()
        .unwrap();
    let loc0 = resolve(&base, &header(&r, "location").unwrap());
    let sent = c
        .patch(&loc0)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", data.len() - 1))
        .body(data.clone())
        .send();
    assert!(sent.is_err(), "the reply should be lost: {sent:?}");
    let rec = proxy
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!((rec.status, rec.fault), (202, Some(FaultKind::LostReply)));

    // The old `_state` is stale now: upstream refuses it (2.8.2 answers 404
    // with the code BLOB_UPLOAD_INVALID, measured here).
    let r = c
        .patch(&loc0)
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    assert!(status == 404 || status == 400, "{status} {text}");
    assert!(text.contains("BLOB_UPLOAD_INVALID"), "{text}");

    // A new session from byte 0 goes through (the fault fired once).
    let r = c
        .post(format!("{base}/v2/lost/blobs/uploads/"))
        .send()
        .unwrap();
    let loc = resolve(&base, &header(&r, "location").unwrap());
    let r = c
        .patch(&loc)
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = resolve(&base, &header(&r, "location").unwrap());
    let r = c
        .put(format!(
            "{loc}&digest={}",
            sha256(&data).replace(':', "%3A")
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(format!(
            "{}/v2/lost/blobs/{}",
            reg.base_url(),
            sha256(&data)
        ))
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
}

#[test]
fn combined_faults_converge_for_a_retrying_client() {
    let (reg, proxy) = proxied(Faults {
        too_many_requests: 1,
        retry_after: RetryAfter::Seconds(0),
        server_error_every: Some(3),
        reset_blob_get: 1,
        flip_byte_blob_get: 1,
        ..Faults::default()
    });
    let layer = push_big_layer_image(&reg, "combo");
    let c = client();
    let url = format!("{}/v2/combo/blobs/{}", proxy.base_url(), layer.digest);
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= 10, "did not converge: {:?}", proxy.requests());
        let Ok(r) = c.get(&url).send() else { continue };
        if r.status() != 200 {
            continue;
        }
        let (body, failed) = read_all(r);
        if !failed && sha256(&body) == layer.digest {
            break;
        }
    }
    let kinds: Vec<_> = proxy.requests().into_iter().map(|r| r.fault).collect();
    assert!(kinds.contains(&Some(FaultKind::TooManyRequests)));
    assert!(kinds.contains(&Some(FaultKind::ServerError(500))));
    assert!(kinds.contains(&Some(FaultKind::ResetMidBody)));
    assert!(kinds.contains(&Some(FaultKind::FlippedByte)));
}

/// An open connection is closed when the server goes (checking that the
/// port refuses connections would race with other tests binding ports).
fn assert_closed(mut conn: std::net::TcpStream) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected {n} bytes after drop"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "connection still open after drop"
        ),
    }
}

#[test]
fn proxies_stop_on_drop() {
    let (_reg, proxy) = proxied(Faults::default());
    let to_proxy = std::net::TcpStream::connect(proxy.host()).unwrap();
    let to_storage = std::net::TcpStream::connect(proxy.storage_host()).unwrap();
    drop(proxy);
    assert_closed(to_proxy);
    assert_closed(to_storage);
}
