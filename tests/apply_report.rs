//! Reporting of an apply: the `--report` JSON lists every failed operation
//! with its error next to the totals, and progress goes to stderr as
//! periodic lines when stderr is not a terminal, never under `-q`.

mod common;

use std::path::PathBuf;

use common::Syncer;
use tempfile::TempDir;
use testkit::image::{oci_image, random_layer, sample_image, Platform, Pusher};
use testkit::registry::Registry;

fn write_rules(dir: &TempDir, source: &Registry, destination: &Registry, repo: &str) -> PathBuf {
    let text = format!(
        "registries:\n  {0}: {{tls: disabled}}\n  {1}: {{tls: disabled}}\nrules:\n  - source: {0}/{repo}\n    destinations: [{1}/copy]\n",
        source.host(),
        destination.host()
    );
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn report_lists_failed_operation_error() {
    let (source, destination) = (Registry::start(), Registry::start());
    let broken = sample_image("broken");
    let pusher = Pusher::new(&source);
    pusher.push_image("fail/broken", "v1", &broken);
    pusher.push_image("fail/fine", "v1", &sample_image("fine"));
    // Without its data file the layer's manifest still resolves, but the
    // blob read fails.
    let layer = &broken.layers[0].digest;
    let hex = layer.trim_start_matches("sha256:");
    let data = source.root_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    std::fs::remove_file(&data).unwrap();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(&dir, &source, &destination, "fail/*");
    let report_path = dir.path().join("report.json");

    let run = Syncer::new()
        .run(&[
            "apply",
            "--auto-approve",
            "--report",
            report_path.to_str().unwrap(),
            rules.to_str().unwrap(),
        ])
        .expect_code(1);

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["created"], 1);
    assert_eq!(report["failed"], 1);
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    let operations = report["operations"].as_array().unwrap();
    assert_eq!(operations.len(), 2);
    let failed: Vec<_> = operations
        .iter()
        .filter(|op| op["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{operations:?}");
    let destination = failed[0]["destination"].as_str().unwrap();
    assert!(destination.ends_with("copy/broken:v1"), "{destination}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains(layer.as_str()), "{error}");
    let done: Vec<_> = operations
        .iter()
        .filter(|op| op["status"] == "done")
        .collect();
    assert_eq!(done.len(), 1, "{operations:?}");
    assert!(done[0]["error"].is_null());
    assert!(run.stdout.contains(&format!("Error: {destination}: ")));
}

#[test]
fn progress_lines_without_terminal() {
    let (source, destination) = (Registry::start(), Registry::start());
    let image = oci_image(vec![random_layer(48 << 20, 3)], Platform::linux("amd64"));
    Pusher::new(&source).push_image("big/app", "v1", &image);
    let dir = TempDir::new().unwrap();
    let rules = write_rules(&dir, &source, &destination, "big/app");
    let syncer = Syncer::new().env("SYNCER_PROGRESS_INTERVAL", "0.02");

    let quiet = syncer
        .run(&["-q", "apply", "--auto-approve", rules.to_str().unwrap()])
        .expect_code(0);
    assert!(
        !quiet.stderr.contains("apply progress:"),
        "{}",
        quiet.stderr
    );

    // A fresh destination, so the second apply copies again.
    let fresh = Registry::start();
    let rules = write_rules(&dir, &source, &fresh, "big/app");
    let run = syncer
        .run(&["apply", "--auto-approve", rules.to_str().unwrap()])
        .expect_code(0);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("apply progress: "))
        .collect();
    assert!(!lines.is_empty(), "no progress line in {:?}", run.stderr);
    assert!(
        lines.iter().all(|l| l.contains(" of 48.0 MiB read")),
        "{lines:?}"
    );
    assert!(lines[0].contains("of 1 images"), "{lines:?}");
}

fn read_report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn report_written_when_nothing_to_do() {
    let (source, destination) = (Registry::start(), Registry::start());
    Pusher::new(&source).push_image("calm/app", "v1", &sample_image("calm"));
    let dir = TempDir::new().unwrap();
    let rules = write_rules(&dir, &source, &destination, "calm/app");
    let report_path = dir.path().join("report.json");
    let apply = |extra: &[&str]| {
        let mut args = vec!["apply", "--report", report_path.to_str().unwrap()];
        args.extend_from_slice(extra);
        Syncer::new().run(&args)
    };
    apply(&["--auto-approve", rules.to_str().unwrap()]).expect_code(0);
    assert_eq!(read_report(&report_path)["created"], 1);

    // A second run has nothing to copy, and its report must replace the
    // first one's numbers.
    let again = apply(&["--auto-approve", rules.to_str().unwrap()]).expect_code(0);

    assert!(
        again
            .stdout
            .contains("Apply complete: 0 created, 0 updated, 1 unchanged, 0 failed."),
        "{}",
        again.stdout
    );
    let report = read_report(&report_path);
    assert_eq!(report["created"], 0);
    assert_eq!(report["unchanged"], 1);
    assert!(report.get("error").is_none(), "{report}");

    // A run that stops before copying gives the reason in its report.
    let missing = dir.path().join("missing-plan.json");
    apply(&["--plan", missing.to_str().unwrap()]).expect_code(1);
    let report = read_report(&report_path);
    assert_eq!(report["unchanged"], 0);
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("missing-plan.json"), "{error}");
}
