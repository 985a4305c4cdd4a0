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

#[test]
fn unused_registry_gets_a_warning() {
    let dir = tempfile::TempDir::new().unwrap();
    let rules = dir.path().join("rules.yaml");
    // `127.0.0.1:5109` was meant to be `127.0.0.1:5009`, so its settings
    // would silently not apply.
    std::fs::write(
        &rules,
        "registries:\n  127.0.0.1:5109: {tls: disabled}\nrules:\n  - source: 127.0.0.1:5009/team/app\n    destinations: [127.0.0.1:5010/mirror/app]\n",
    )
    .unwrap();

    let run = Syncer::new()
        .run(&["validate", rules.to_str().unwrap()])
        .expect_code(0);

    assert!(run.stderr.contains("no rule uses it"), "{}", run.stderr);
    assert!(run.stderr.contains("127.0.0.1:5109"), "{}", run.stderr);
}

/// A rule that passes validation, for folders that need one valid file.
const ONE_RULE: &str =
    "rules:\n  - source: 127.0.0.1:9/team/app\n    destinations: [127.0.0.1:9/mirror/app]\n";

#[test]
fn rules_without_rules_fail() {
    let dir = tempfile::TempDir::new().unwrap();
    let runtime = tempfile::TempDir::new().unwrap();
    let syncer = Syncer::new().env("XDG_RUNTIME_DIR", runtime.path().to_str().unwrap());
    for (name, text) in [
        ("empty.yaml", ""),
        ("comment.yaml", "# nothing yet\n"),
        ("no-list.yaml", "rules: []\n"),
        ("registries-only.yaml", "registries:\n  127.0.0.1:9: {}\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        for command in [
            vec!["validate", path],
            vec!["plan", path],
            vec!["apply", "--auto-approve", path],
        ] {
            let run = syncer.run(&command);
            assert_eq!(run.code, 1, "{command:?}: {}", run.stderr);
            assert!(
                run.stderr
                    .contains("no rules: the file contains no entry under `rules:`"),
                "{command:?}: {}",
                run.stderr
            );
        }
    }
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a.yaml"), "rules: []\n").unwrap();
    let run = syncer.run(&["validate", folder.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the rules files in this folder contain no entry"),
        "{}",
        run.stderr
    );
}

#[test]
fn folder_extensions_in_any_case() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("a.YAML"), ONE_RULE.replace("app", "a")).unwrap();
    std::fs::write(dir.path().join("b.Yml"), ONE_RULE.replace("app", "b")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not rules").unwrap();

    let run = Syncer::new().run(&["validate", dir.path().to_str().unwrap()]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("is valid: 2 rules"), "{}", run.stdout);
}

#[test]
fn folder_with_broken_symlinks_fails() {
    use std::os::unix::fs::symlink;

    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("ok.yaml"), ONE_RULE).unwrap();
    symlink(
        dir.path().join("missing.yaml"),
        dir.path().join("dangling.yaml"),
    )
    .unwrap();
    symlink(dir.path().join("loop2.yaml"), dir.path().join("loop1.yaml")).unwrap();
    symlink(dir.path().join("loop1.yaml"), dir.path().join("loop2.yaml")).unwrap();

    let run = Syncer::new().run(&["validate", dir.path().to_str().unwrap()]);

    assert_eq!(run.code, 1, "{}", run.stderr);
    let dangling = format!(
        "{}: cannot read rules file: it is a symbolic link to",
        dir.path().join("dangling.yaml").display()
    );
    assert!(run.stderr.contains(&dangling), "{}", run.stderr);
    assert!(
        run.stderr.contains("missing.yaml, which does not exist"),
        "{}",
        run.stderr
    );
    for name in ["loop1.yaml", "loop2.yaml"] {
        let loop_error = format!(
            "{}: cannot read rules file:",
            dir.path().join(name).display()
        );
        assert!(run.stderr.contains(&loop_error), "{}", run.stderr);
    }
    assert!(run.stderr.contains("has 3 errors"), "{}", run.stderr);
}
