//! The apply lock: while one apply of a rules file runs, a second one of
//! the same rules exits at once with exit code 3, and runs again once the
//! first has finished.

mod common;

use std::time::{Duration, Instant};

use common::{Run, Syncer};
use tempfile::TempDir;
use testkit::image::{sample_image, Pusher};
use testkit::proxy::{FaultProxy, Faults, RetryAfter};
use testkit::registry::Registry;

#[test]
fn overlapping_applies_do_not_both_run() {
    let source = Registry::start();
    let dest = Registry::start();
    Pusher::new(&source).push_image("ns/app", "v1", &sample_image("app-v1"));
    // Three 429 responses with `Retry-After: 2` keep the first apply busy for
    // about six seconds, long enough to start a second one meanwhile.
    let slow = FaultProxy::start(
        &source.base_url(),
        Faults {
            too_many_requests: 3,
            retry_after: RetryAfter::Seconds(2),
            ..Faults::default()
        },
    );
    let dir = TempDir::new().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        format!(
            "registries:\n  {src}:\n    tls: disabled\n  {dst}:\n    tls: disabled\nrules:\n  - source: {src}/ns/app\n    destinations: [{dst}/mirror/app]\n",
            src = slow.host(),
            dst = dest.host()
        ),
    )
    .unwrap();
    let rules = rules.to_str().unwrap();
    let runtime = TempDir::new().unwrap();
    let syncer = Syncer::new().env("XDG_RUNTIME_DIR", runtime.path().to_str().unwrap());

    let first = syncer
        .command(&["apply", "--auto-approve", rules])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("first apply starts");
    // The lock is taken before planning, so a request at the proxy means
    // the first apply holds it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.requests().is_empty() {
        assert!(Instant::now() < deadline, "first apply sent no request");
        std::thread::sleep(Duration::from_millis(20));
    }

    let started = Instant::now();
    let second = syncer.run(&["apply", "--auto-approve", rules]);
    let waited = started.elapsed();
    let first = Run::from(first.wait_with_output().unwrap());

    let second = second.expect_code(3);
    assert!(
        second
            .stderr
            .contains("another syncer apply of the same rules is running"),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("pid "), "{}", second.stderr);
    assert!(
        waited < Duration::from_secs(3),
        "second apply waited {waited:?}"
    );
    let first = first.expect_code(0);
    assert!(
        first.stdout.contains("Apply complete: 1 created"),
        "{}",
        first.stdout
    );
    assert_eq!(dest.count_requests("PUT", "/manifests/"), 1);

    // The lock went with the first process.
    syncer
        .run(&["apply", "--auto-approve", rules])
        .expect_code(0);
}

/// Writes rules naming a registry at a listener that never accepts, so a
/// run that got past the lock would fail to connect instead of copying.
fn unreachable_rules(dir: &std::path::Path) -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let rules = dir.join("rules.yaml");
    std::fs::write(
        &rules,
        format!(
            "registries:\n  {host}:\n    tls: disabled\n    retries: 0\n    read_timeout: 1s\nrules:\n  - source: {host}/ns/app\n    destinations: [{host}/mirror/app]\n"
        ),
    )
    .unwrap();
    (listener, rules.to_str().unwrap().to_string())
}

#[test]
fn lock_file_symlink_is_rejected() {
    let dir = TempDir::new().unwrap();
    let (listener, rules) = unreachable_rules(dir.path());
    let target = dir.path().join("important.txt");
    std::fs::write(&target, "important data\n").unwrap();
    let lock = dir.path().join("apply.lock");
    std::os::unix::fs::symlink(&target, &lock).unwrap();

    let run = Syncer::new().run(&[
        "apply",
        "--auto-approve",
        "--lock-file",
        lock.to_str().unwrap(),
        &rules,
    ]);

    let run = run.expect_code(1);
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "important data\n"
    );
    assert!(listener.accept().is_err(), "apply went on past the lock");
}

#[test]
fn default_lock_folder_symlink_is_rejected() {
    use std::os::unix::fs::MetadataExt;

    let dir = TempDir::new().unwrap();
    let (listener, rules) = unreachable_rules(dir.path());
    let temp = TempDir::new().unwrap();
    let uid = std::fs::metadata(temp.path()).unwrap().uid();
    let elsewhere = TempDir::new().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), temp.path().join(format!("syncer-{uid}")))
        .unwrap();
    let syncer = Syncer::new()
        .env("XDG_RUNTIME_DIR", "")
        .env("TMPDIR", temp.path().to_str().unwrap());

    let run = syncer.run(&["apply", "--auto-approve", &rules]);

    let run = run.expect_code(1);
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert!(
        std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none(),
        "a lock file was created through the symlink"
    );
    assert!(listener.accept().is_err(), "apply went on past the lock");
}
