//! Transient and permanent faults between syncer and real registries,
//! injected by the testkit fault proxy: 429 with and without `Retry-After`,
//! 5xx, connections reset in a blob, flipped bytes, lost upload replies,
//! stalled servers, and every fault at once.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Run, Syncer};
use tempfile::TempDir;
use testkit::image::{
    oci_image, random_layer, sample_image, sample_index, Image, Platform, Pusher,
};
use testkit::listener::FullListener;
use testkit::proxy::{FaultKind, FaultProxy, Faults, RetryAfter};
use testkit::registry::Registry;

/// A source registry with one image behind a fault proxy, and a plain
/// destination registry.
struct Setup {
    source: Registry,
    proxy: FaultProxy,
    destination: Registry,
    image: Image,
    dir: TempDir,
}

impl Setup {
    fn start(faults: Faults) -> Self {
        let source = Registry::start();
        let layers = (0..3).map(|i| random_layer(64 * 1024, 300 + i)).collect();
        let image = oci_image(layers, Platform::linux("amd64"));
        Pusher::new(&source).push_image("fault/app", "v1", &image);
        let proxy = FaultProxy::start(&source.base_url(), faults);
        Setup {
            source,
            proxy,
            destination: Registry::start(),
            image,
            dir: TempDir::new().unwrap(),
        }
    }

    /// Rules copying every tag of `fault/app` from the proxy; `extra` is
    /// added to the proxy's registry settings.
    fn rules(&self, extra: &str) -> PathBuf {
        let text = format!(
            "registries:\n  {src}: {{tls: disabled{extra}}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/fault/app\n    destinations: [{dst}/fault/app]\n",
            src = self.proxy.host(),
            dst = self.destination.host()
        );
        let path = self.dir.path().join("rules.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn copied_digest(&self) -> Option<String> {
        Pusher::new(&self.destination).manifest_digest("fault/app", "v1")
    }

    fn faults_fired(&self, kind: &FaultKind) -> usize {
        let proxied = self.proxy.requests();
        let stored = self.proxy.storage_requests();
        proxied
            .iter()
            .filter(|r| r.fault.as_ref() == Some(kind))
            .count()
            + stored
                .iter()
                .filter(|r| r.fault.as_ref() == Some(kind))
                .count()
    }
}

fn apply(rules: &Path) -> Run {
    Syncer::new().run(&["apply", "--auto-approve", rules.to_str().unwrap()])
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

fn tag_list_faults(retry_after: RetryAfter, count: u32) -> Faults {
    Faults {
        too_many_requests: count,
        retry_after,
        fault_path_contains: Some("/tags/list".into()),
        ..Faults::default()
    }
}

#[test]
fn retry_after_seconds_is_honoured() {
    let setup = Setup::start(tag_list_faults(RetryAfter::Seconds(2), 1));
    let rules = setup.rules("");

    let (run, elapsed) = timed(|| apply(&rules));

    run.expect_code(0);
    assert_eq!(setup.faults_fired(&FaultKind::TooManyRequests), 1);
    assert!(elapsed >= Duration::from_secs(2), "waited only {elapsed:?}");
    assert_eq!(setup.copied_digest(), Some(setup.image.digest.clone()));
}

#[test]
fn retry_after_http_date_is_honoured() {
    let wait = Duration::from_secs(2);
    let setup = Setup::start(tag_list_faults(RetryAfter::DateIn(wait), 1));
    let rules = setup.rules("");

    let (run, elapsed) = timed(|| apply(&rules));

    run.expect_code(0);
    assert_eq!(setup.faults_fired(&FaultKind::TooManyRequests), 1);
    assert!(elapsed >= wait, "waited only {elapsed:?}");
}

#[test]
fn too_many_requests_without_header_backs_off() {
    let setup = Setup::start(tag_list_faults(RetryAfter::Absent, 3));
    let rules = setup.rules("");

    let (run, elapsed) = timed(|| apply(&rules));

    run.expect_code(0);
    assert_eq!(setup.faults_fired(&FaultKind::TooManyRequests), 3);
    // Three growing waits of at least 100, 200 and 400 ms.
    assert!(
        elapsed >= Duration::from_millis(700),
        "no backoff: {elapsed:?}"
    );
}

#[test]
fn text_error_body_and_attempts_are_reported() {
    let setup = Setup::start(tag_list_faults(RetryAfter::Seconds(0), 100));
    let rules = setup.rules(", retries: 2");

    let run = Syncer::new().run(&["plan", rules.to_str().unwrap()]);

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("rate limit exceeded, slow down"),
        "text body not shown: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("after 3 attempts"),
        "attempts not counted: {}",
        run.stderr
    );
    assert_eq!(setup.faults_fired(&FaultKind::TooManyRequests), 3);
}

#[test]
fn server_errors_are_retried() {
    let setup = Setup::start(Faults {
        server_error_every: Some(2),
        server_error_limit: Some(12),
        ..Faults::default()
    });
    let rules = setup.rules("");

    apply(&rules).expect_code(0);

    let statuses: HashSet<u16> = setup
        .proxy
        .requests()
        .iter()
        .filter_map(|r| match r.fault {
            Some(FaultKind::ServerError(status)) => Some(status),
            _ => None,
        })
        .collect();
    for status in [500, 502, 503, 504] {
        assert!(statuses.contains(&status), "{status} never injected");
    }
    assert_eq!(setup.copied_digest(), Some(setup.image.digest.clone()));
}

#[test]
fn not_found_is_not_retried() {
    let setup = Setup::start(Faults::default());
    let text = format!(
        "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/fault/missing:v1\n    destinations: [{dst}/fault/missing]\n",
        src = setup.proxy.host(),
        dst = setup.destination.host()
    );
    let rules = setup.dir.path().join("missing.yaml");
    std::fs::write(&rules, text).unwrap();

    let run = Syncer::new().run(&["plan", rules.to_str().unwrap()]);

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let tries = setup
        .proxy
        .requests()
        .iter()
        .filter(|r| r.path_and_query.contains("/fault/missing/manifests/"))
        .count();
    assert_eq!(tries, 1, "a 404 was retried");
}

#[test]
fn reset_mid_blob_is_retried() {
    let setup = Setup::start(Faults {
        reset_blob_get: 2,
        ..Faults::default()
    });
    let rules = setup.rules("");

    apply(&rules).expect_code(0);

    assert_eq!(setup.faults_fired(&FaultKind::ResetMidBody), 2);
    assert_eq!(setup.copied_digest(), Some(setup.image.digest.clone()));
    let destination = Pusher::new(&setup.destination);
    for blob in setup.image.blobs() {
        let bytes = destination.get_blob("fault/app", &blob.digest);
        assert_eq!(bytes.as_deref(), Some(blob.bytes.as_slice()));
    }
}

#[test]
fn source_stalled_mid_blob_gets_new_session() {
    let setup = Setup::start(Faults {
        stall_blob_get: 1,
        stall_for: Duration::from_secs(4),
        ..Faults::default()
    });
    let rules = setup.rules(", read_timeout: 1s");

    apply(&rules).expect_code(0);

    assert_eq!(setup.faults_fired(&FaultKind::StalledMidBody), 1);
    assert_eq!(setup.copied_digest(), Some(setup.image.digest.clone()));
    // The stalled blob's upload was abandoned and the blob sent again in a
    // new session: one more session than blobs, and no partial blob.
    let blobs = setup.image.blobs().count();
    let sessions = setup.destination.count_requests("POST", "/blobs/uploads/");
    assert_eq!(sessions, blobs + 1);
    let destination = Pusher::new(&setup.destination);
    for blob in setup.image.blobs() {
        let bytes = destination.get_blob("fault/app", &blob.digest);
        assert_eq!(bytes.as_deref(), Some(blob.bytes.as_slice()));
    }
}

#[test]
fn flipped_byte_is_retried_once() {
    let setup = Setup::start(Faults {
        flip_byte_blob_get: 1,
        ..Faults::default()
    });
    let rules = setup.rules("");

    apply(&rules).expect_code(0);

    assert_eq!(setup.faults_fired(&FaultKind::FlippedByte), 1);
    assert_eq!(setup.copied_digest(), Some(setup.image.digest.clone()));
}

#[test]
fn persistent_corruption_fails_that_image() {
    let setup = Setup::start(Faults {
        flip_byte_blob_get: 1000,
        ..Faults::default()
    });
    let healthy = Registry::start();
    let fine = sample_image("fine");
    Pusher::new(&healthy).push_image("fine/app", "v1", &fine);
    let text = format!(
        "registries:\n  {src}: {{tls: disabled}}\n  {ok}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/fault/app\n    destinations: [{dst}/fault/app]\n  - source: {ok}/fine/app\n    destinations: [{dst}/fine/app]\n",
        src = setup.proxy.host(),
        ok = healthy.host(),
        dst = setup.destination.host()
    );
    let rules = setup.dir.path().join("corrupt.yaml");
    std::fs::write(&rules, text).unwrap();

    let run = apply(&rules);

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let output = format!("{}{}", run.stdout, run.stderr);
    let layer = &setup.image.layers[0].digest;
    assert!(
        output.contains(layer.as_str()),
        "digest not named: {output}"
    );
    assert!(output.contains("1 failed"), "{}", run.stdout);
    assert_eq!(setup.copied_digest(), None);
    let destination = Pusher::new(&setup.destination);
    for blob in &setup.image.layers {
        assert!(
            !destination.blob_exists("fault/app", &blob.digest),
            "corrupt upload of {} completed",
            blob.digest
        );
    }
    assert_eq!(
        destination.manifest_digest("fine/app", "v1"),
        Some(fine.digest.clone())
    );
}

#[test]
fn uploads_never_reuse_a_session() {
    let setup = Setup::start(Faults {
        lose_patch_reply: 5,
        server_error_every: Some(2),
        server_error_limit: Some(4),
        fault_path_contains: Some("/blobs/uploads/".into()),
        ..Faults::default()
    });
    let destination_proxy = FaultProxy::start(
        &setup.destination.base_url(),
        Faults {
            lose_patch_reply: 5,
            server_error_every: Some(2),
            server_error_limit: Some(4),
            fault_path_contains: Some("/blobs/uploads/".into()),
            ..Faults::default()
        },
    );
    let text = format!(
        "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/fault/app\n    destinations: [{dst}/fault/app]\n",
        src = setup.source.host(),
        dst = destination_proxy.host()
    );
    let rules = setup.dir.path().join("sessions.yaml");
    std::fs::write(&rules, text).unwrap();

    apply(&rules).expect_code(0);

    let records = destination_proxy.requests();
    assert!(
        records.iter().all(|r| r.method != "PATCH"),
        "syncer sent a PATCH; lost PATCH replies would matter"
    );
    let mut sessions = HashSet::new();
    for put in records
        .iter()
        .filter(|r| r.method == "PUT" && r.path_and_query.contains("/blobs/uploads/"))
    {
        let session = put.path_and_query.split('?').next().unwrap().to_string();
        assert!(
            sessions.insert(session.clone()),
            "session reused: {session}"
        );
    }
    assert!(
        records
            .iter()
            .any(|r| matches!(r.fault, Some(FaultKind::ServerError(_)))),
        "no upload failed, the test proves nothing"
    );
    assert_eq!(setup.copied_digest(), Some(setup.image.digest.clone()));
}

/// A server that accepts connections, reads requests, and never answers.
fn stalled_server() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let mut open = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let mut buffer = [0u8; 1024];
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
                    let _ = stream.read(&mut buffer);
                    open.push(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (host, handle)
}

#[test]
fn stalled_source_hits_read_timeout() {
    let (host, _server) = stalled_server();
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = dir.path().join("stalled.yaml");
    let text = format!(
        "registries:\n  {host}: {{tls: disabled, read_timeout: 1s, retries: 1}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {host}/slow/app:v1\n    destinations: [{dst}/slow/app]\n",
        dst = destination.host()
    );
    std::fs::write(&rules, text).unwrap();

    let (run, elapsed) = timed(|| Syncer::new().run(&["plan", rules.to_str().unwrap()]));

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("timed out"),
        "no timeout named: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("no data within read_timeout"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("after 2 attempts"),
        "attempts not counted: {}",
        run.stderr
    );
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
}

fn every_fault() -> Faults {
    Faults {
        too_many_requests: 3,
        retry_after: RetryAfter::Seconds(1),
        server_error_every: Some(5),
        server_error_limit: Some(6),
        fault_path_contains: None,
        reset_blob_get: 1,
        flip_byte_blob_get: 1,
        strip_response_headers: vec!["Docker-Content-Digest".into()],
        redirect_blob_get: true,
        relative_location: true,
        paginate_tags: Some(2),
        lose_patch_reply: 2,
        delay: Some(Duration::from_millis(5)),
        stall_blob_get: 1,
        stall_for: Duration::from_millis(500),
    }
}

#[test]
fn every_fault_at_once_converges() {
    let source = Registry::start();
    let pusher = Pusher::new(&source);
    let mut want = Vec::new();
    for tag in ["v1", "v2", "v3", "v4", "v5"] {
        let layers = vec![random_layer(32 * 1024, tag.as_bytes()[1] as u64)];
        let image = oci_image(layers, Platform::linux("amd64"));
        want.push((tag, pusher.push_image("chaos/app", tag, &image)));
    }
    let index = sample_index("chaos");
    want.push(("multi", pusher.push_index("chaos/app", "multi", &index)));
    let destination = Registry::start();
    let source_proxy = FaultProxy::start(&source.base_url(), every_fault());
    let destination_proxy = FaultProxy::start(&destination.base_url(), every_fault());
    let dir = TempDir::new().unwrap();
    let rules = dir.path().join("chaos.yaml");
    let text = format!(
        "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/chaos/app\n    destinations: [{dst}/chaos/app]\n",
        src = source_proxy.host(),
        dst = destination_proxy.host()
    );
    std::fs::write(&rules, text).unwrap();

    apply(&rules).expect_code(0);

    let copy = Pusher::new(&destination);
    for (tag, digest) in &want {
        assert_eq!(
            copy.manifest_digest("chaos/app", tag).as_deref(),
            Some(digest.as_str()),
            "chaos/app:{tag}"
        );
    }
    for kind in [
        FaultKind::TooManyRequests,
        FaultKind::Redirected,
        FaultKind::PaginatedTags,
    ] {
        assert!(
            source_proxy
                .requests()
                .iter()
                .any(|r| r.fault.as_ref() == Some(&kind)),
            "{kind:?} never fired at the source"
        );
    }
    let puts_before = destination.count_requests("PUT", "");
    source_proxy.set_faults(every_fault());
    destination_proxy.set_faults(every_fault());

    let again = apply(&rules).expect_code(0);

    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(
        destination.count_requests("PUT", ""),
        puts_before,
        "second run wrote to the destination"
    );
}

/// Starts a source of one image with `layers` small layers behind a proxy
/// that delays every request by 40 ms, so concurrent requests overlap there.
fn slow_source(layers: u64) -> (Registry, FaultProxy, Faults) {
    let source = Registry::start();
    let blobs = (0..layers).map(|i| random_layer(4096, 700 + i)).collect();
    let image = oci_image(blobs, Platform::linux("amd64"));
    Pusher::new(&source).push_image("wide/app", "v1", &image);
    let faults = Faults {
        delay: Some(Duration::from_millis(40)),
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&source.base_url(), faults.clone());
    (source, proxy, faults)
}

/// Copies `wide/app` from the proxy with `settings` for the proxy's
/// registry, at 8 jobs, and returns the in-flight counts at each arrival.
fn wide_copy(proxy: &FaultProxy, settings: &str) -> Vec<usize> {
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = dir.path().join("rules.yaml");
    let text = format!(
        "registries:\n  {src}: {{tls: disabled, {settings}}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/wide/app\n    destinations: [{dst}/wide/app]\n",
        src = proxy.host(),
        dst = destination.host()
    );
    std::fs::write(&rules, text).unwrap();
    proxy.clear_requests();
    Syncer::new()
        .run(&[
            "apply",
            "--auto-approve",
            "--jobs",
            "8",
            rules.to_str().unwrap(),
        ])
        .expect_code(0);
    proxy.in_flight_at_arrival()
}

#[test]
fn max_concurrency_bounds_requests() {
    let (_source, proxy, _) = slow_source(16);

    let bounded = wide_copy(&proxy, "max_concurrency: 2");
    let open = wide_copy(&proxy, "max_concurrency: 8");

    let max = |counts: &[usize]| counts.iter().copied().max().unwrap_or(0);
    assert!(bounded.len() > 16, "only {} requests", bounded.len());
    assert_eq!(max(&bounded), 2, "{bounded:?}");
    // Without the bound the same copy overlaps more, so the proxy does see
    // concurrency when there is some.
    assert!(max(&open) > 2, "{open:?}");
}

#[test]
fn too_many_requests_lower_concurrency() {
    let (_source, proxy, faults) = slow_source(24);
    let calm = wide_copy(&proxy, "max_concurrency: 6");
    // The 429s go to blob reads, which run side by side, so every permit
    // is in use when they arrive.
    proxy.set_faults(Faults {
        too_many_requests: 4,
        retry_after: RetryAfter::Seconds(0),
        fault_path_contains: Some("/blobs/".into()),
        ..faults
    });

    let throttled = wide_copy(&proxy, "max_concurrency: 6");

    let rejected = count_faults(&proxy, &FaultKind::TooManyRequests);
    assert_eq!(rejected, 4);
    // Requests admitted before the 429s may still be in flight for a
    // while, so the window starts after them. Four 429s withhold four of
    // six permits, and only 20 successes give one back.
    let window =
        |counts: &[usize]| -> usize { counts.iter().skip(12).take(20).copied().max().unwrap_or(0) };
    assert!(window(&calm) > 3, "calm run never overlapped: {calm:?}");
    assert!(
        window(&throttled) <= 3,
        "concurrency stayed high after 429s: {throttled:?}"
    );
}

fn count_faults(proxy: &FaultProxy, kind: &FaultKind) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.fault.as_ref() == Some(kind))
        .count()
}

#[test]
fn connect_timeout_is_honoured() {
    let silent = FullListener::start();
    let destination = Registry::start();
    let dir = TempDir::new().unwrap();
    let rules = dir.path().join("rules.yaml");
    let text = format!(
        "registries:\n  {src}: {{tls: disabled, connect_timeout: 1s, retries: 1}}\n  {dst}: {{tls: disabled}}\nrules:\n  - source: {src}/silent/app:v1\n    destinations: [{dst}/silent/app]\n",
        src = silent.host(),
        dst = destination.host()
    );
    std::fs::write(&rules, text).unwrap();

    let (run, elapsed) = timed(|| Syncer::new().run(&["plan", rules.to_str().unwrap()]));

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("(after 2 attempts)"), "{}", run.stderr);
    assert!(
        run.stderr.contains("no connection within connect_timeout"),
        "{}",
        run.stderr
    );
    // Two attempts of one second each, plus a short backoff between them.
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}
