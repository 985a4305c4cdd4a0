//! `syncer diff` on a pair of rules files. Online, it names exactly the
//! destination references the change adds, removes and re-points. Offline,
//! it compares the rules alone.

mod common;

use std::path::{Path, PathBuf};

use common::{redact, snapshot_settings, Syncer};
use tempfile::TempDir;
use testkit::image::{sample_image, Pusher};
use testkit::registry::Registry;

struct Pair {
    source: Registry,
    dest: Registry,
    dir: TempDir,
}

impl Pair {
    fn start() -> Self {
        let source = Registry::start();
        let pusher = Pusher::new(&source);
        pusher.push_image("ns/app", "v1", &sample_image("app-v1"));
        pusher.push_image("ns/app", "v2", &sample_image("app-v2"));
        pusher.push_image("ns/tool", "1.0", &sample_image("tool"));
        pusher.push_image("ns/lib", "0.1", &sample_image("lib"));
        Pair {
            source,
            dest: Registry::start(),
            dir: TempDir::new().unwrap(),
        }
    }

    fn write(&self, name: &str, rules: &str) -> PathBuf {
        let header =
            format!("registries:\n  SRC:\n    tls: disabled\n  DST:\n    tls: disabled\n{rules}");
        let text = header
            .replace("SRC", &self.source.host())
            .replace("DST", &self.dest.host());
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn old_rules(&self) -> PathBuf {
        self.write(
            "old.yaml",
            "rules:
  - name: app
    source: SRC/ns/app
    destinations: [DST/mirror/app]
  - name: tool
    source: SRC/ns/tool:1.0
    destinations: [DST/tools/tool]
  - name: pinned
    source: SRC/ns/app:v1
    destinations: [DST/pinned/app:stable]
",
        )
    }

    fn new_rules(&self) -> PathBuf {
        self.write(
            "new.yaml",
            "rules:
  - name: app
    source: SRC/ns/app
    destinations: [DST/mirror/app, DST/backup/app]
  - name: lib
    source: SRC/ns/lib
    destinations: [DST/mirror/lib]
  - name: pinned
    source: SRC/ns/app:v2
    destinations: [DST/pinned/app:stable]
",
        )
    }

    fn redact(&self, text: &str) -> String {
        redact(
            text,
            &[
                (&self.source.host(), "SOURCE"),
                (&self.dest.host(), "DEST"),
                (self.dir.path().to_str().unwrap(), "TMP"),
            ],
        )
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Lines of the text output's destination section, after its summary line.
fn destination_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|line| !line.starts_with("Destinations:"))
        .skip(1)
        .take_while(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn online_diff_names_changed_destinations() {
    let pair = Pair::start();
    let run = Syncer::new()
        .run(&["diff", path(&pair.old_rules()), path(&pair.new_rules())])
        .expect_code(0);
    let (src, dst) = (pair.source.host(), pair.dest.host());
    let expected = vec![
        format!("  + {dst}/backup/app:v1 from {src}/ns/app:v1"),
        format!("  + {dst}/backup/app:v2 from {src}/ns/app:v2"),
        format!("  + {dst}/mirror/lib:0.1 from {src}/ns/lib:0.1"),
        format!("  ~ {dst}/pinned/app:stable from {src}/ns/app:v1 -> {src}/ns/app:v2"),
        format!("  - {dst}/tools/tool:1.0 from {src}/ns/tool:1.0"),
    ];
    assert_eq!(destination_lines(&run.stdout), expected, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("Destinations: 3 added, 1 removed, 1 from another source, 2 unchanged."),
        "{}",
        run.stdout
    );
}

#[test]
fn online_diff_markdown_lists_destinations() {
    let pair = Pair::start();
    let run = Syncer::new()
        .run(&[
            "diff",
            "--format",
            "markdown",
            path(&pair.old_rules()),
            path(&pair.new_rules()),
        ])
        .expect_code(0);
    let dst = pair.dest.host();
    assert!(run
        .stdout
        .contains(&format!("| `+` added | `{dst}/backup/app:v1` |")));
    assert!(run
        .stdout
        .contains(&format!("| `-` removed | `{dst}/tools/tool:1.0` |")));
    assert!(run.stdout.contains("```diff\n"));
}

#[test]
fn offline_diff_compares_rules_only() {
    let pair = Pair::start();
    let (old, new) = (pair.old_rules(), pair.new_rules());
    let gets_before = pair.source.requests().len();
    let syncer = Syncer::new();
    let text = syncer
        .run(&["diff", "--offline", path(&old), path(&new)])
        .expect_code(0);
    assert_eq!(
        pair.source.requests().len(),
        gets_before,
        "offline diff sent requests"
    );
    assert!(!text.stdout.contains("Destinations:"), "{}", text.stdout);
    let markdown = syncer
        .run(&[
            "diff",
            "--offline",
            "--format",
            "markdown",
            path(&old),
            path(&new),
        ])
        .expect_code(0);
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("workflow_diff_offline_text", pair.redact(&text.stdout));
        insta::assert_snapshot!(
            "workflow_diff_offline_markdown",
            pair.redact(&markdown.stdout)
        );
    });
}

#[test]
fn diff_of_identical_rules_is_empty() {
    let pair = Pair::start();
    let old = pair.old_rules();
    let run = Syncer::new()
        .run(&["diff", path(&old), path(&old)])
        .expect_code(0);
    assert!(
        run.stdout
            .starts_with("Rules: 0 added, 0 removed, 0 changed, 3 unchanged.\n"),
        "{}",
        run.stdout
    );
    assert!(destination_lines(&run.stdout).is_empty(), "{}", run.stdout);
    assert!(!run.stdout.contains("@@"), "{}", run.stdout);
}
