//! The fake docker credential helper, found (or built) by
//! `testkit::token::credential_helper_dir`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use testkit::token::{credential_helper_dir, CREDENTIAL_HELPER_BIN};

fn run(dir: &Path, store: &Path, log: &Path, action: &str, stdin: &str) -> Output {
    let mut child = Command::new(dir.join(CREDENTIAL_HELPER_BIN))
        .arg(action)
        .env("FAKE_CREDENTIALS_FILE", store)
        .env("FAKE_CREDENTIALS_LOG", log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run helper");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn get_store_erase_list_and_log() {
    let dir = credential_helper_dir();
    assert!(
        dir.join(CREDENTIAL_HELPER_BIN).is_file(),
        "{}",
        dir.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("creds.json");
    let log = tmp.path().join("calls.log");
    std::fs::write(
        &store,
        r#"{"127.0.0.1:5000": {"Username": "alice", "Secret": "s3cret"}, "https://idx.example": {"Username": "<token>", "Secret": "refresh"}}"#,
    )
    .unwrap();

    let out = run(&dir, &store, &log, "get", "127.0.0.1:5000\n");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ServerURL": "127.0.0.1:5000", "Username": "alice", "Secret": "s3cret"})
    );

    let out = run(&dir, &store, &log, "get", "127.0.0.1:5001");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "credentials not found in native keychain"
    );

    let out = run(
        &dir,
        &store,
        &log,
        "store",
        r#"{"ServerURL": "new.host", "Username": "bob", "Secret": "pw2"}"#,
    );
    assert!(out.status.success(), "{out:?}");
    let out = run(&dir, &store, &log, "get", "new.host");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"pw2\""));
    let out = run(&dir, &store, &log, "list", "");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["new.host"], "bob");
    assert!(run(&dir, &store, &log, "erase", "new.host")
        .status
        .success());
    assert_eq!(
        run(&dir, &store, &log, "get", "new.host").status.code(),
        Some(1)
    );

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<(&str, Option<&str>)> = lines
        .iter()
        .map(|l| (l["action"].as_str().unwrap(), l["server_url"].as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("get", Some("127.0.0.1:5000")),
            ("get", Some("127.0.0.1:5001")),
            ("store", Some("new.host")),
            ("get", Some("new.host")),
            ("list", None),
            ("erase", Some("new.host")),
            ("get", Some("new.host")),
        ]
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log_text.contains("s3cret") && !log_text.contains("pw2"),
        "secrets must not be logged"
    );
}

#[test]
fn missing_store_means_not_found() {
    let dir = credential_helper_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = run(
        &dir,
        &tmp.path().join("absent.json"),
        &tmp.path().join("log"),
        "get",
        "anything",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "credentials not found in native keychain"
    );
}
