//! `syncer validate` against a corpus of broken rules files: each must
//! fail with exit code 1 and located messages, never panic, and never
//! open a network connection.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::{snapshot_settings, Syncer};

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/rules/broken")
        .expect("corpus folder")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

#[test]
fn corpus_has_enough_files() {
    assert!(corpus().len() >= 25, "{} files", corpus().len());
}

#[test]
fn broken_files_fail_with_located_errors() {
    let syncer = Syncer::new();
    let mut combined = String::new();
    for file in corpus() {
        let path = relative(&file);
        let run = syncer.run(&["validate", &path]);
        assert_eq!(run.code, 1, "{path}: exit code\n{}", run.stderr);
        assert!(
            !run.stderr.contains("panicked"),
            "{path} panicked:\n{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("s3cretpw"),
            "{path} printed a password:\n{}",
            run.stderr
        );
        assert!(
            run.stdout.is_empty(),
            "{path} printed on stdout:\n{}",
            run.stdout
        );
        for line in run.stderr.lines().filter(|l| l.starts_with("error: ")) {
            let located = format!("error: {path}:");
            assert!(line.starts_with(&located), "{path}: no location in {line}");
            let rest = &line[located.len()..];
            let numbers: Vec<&str> = rest.splitn(3, ':').take(2).collect();
            assert!(
                numbers.iter().all(|n| n.parse::<usize>().is_ok()),
                "{path}: no line and column in {line}"
            );
        }
        combined.push_str(&format!("=== {path} (exit {})\n{}\n", run.code, run.stderr));
    }
    snapshot_settings().bind(|| insta::assert_snapshot!("rules_broken_corpus", combined));
}

#[test]
fn folder_with_disagreeing_registries() {
    let run = Syncer::new().run(&["validate", "tests/rules/broken-folder"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    snapshot_settings().bind(|| insta::assert_snapshot!("rules_broken_folder", run.stderr));
}

#[test]
fn validate_opens_no_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let dir = tempfile::TempDir::new().unwrap();
    let rules = dir.path().join("net.yaml");
    let text = format!(
        "registries:\n  {host}:\n    tls: disabled\nrules:\n  - source: {host}/team/**\n    destinations: [\"{host}/mirror/{{repo}}\"]\n    prune: true\n    platforms: [linux/amd64]\n    tags:\n      semver: \">=1\"\n      latest: 2\n"
    );
    std::fs::write(&rules, text).unwrap();
    let run = Syncer::new().run(&["validate", rules.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let accepted = listener.accept();
    assert!(accepted.is_err(), "validate connected to {host}");
}
