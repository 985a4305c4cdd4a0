//! Saved plans, Markdown output and shards, against real registries: a
//! saved plan whose source moved is rejected with nothing written, a fresh
//! one applies, and shards together cover the whole plan exactly once.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{redact, snapshot_settings, HttpServer, Reply, Syncer};
use serde_json::Value;
use tempfile::TempDir;
use testkit::image::{sample_image, Pusher};
use testkit::registry::Registry;

const PASSWORD: &str = "saved-plan-Pa55";

fn write_rules(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("plan file is JSON")
}

#[test]
fn stale_saved_plan_is_rejected() {
    let source = Registry::start();
    let dest = Registry::start();
    let dir = TempDir::new().unwrap();
    let pusher = Pusher::new(&source);
    pusher.push_image("ns/app", "v1", &sample_image("app-v1"));
    pusher.push_image("ns/app", "v2", &sample_image("app-v2"));
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}:\n    tls: disabled\n  {dst}:\n    tls: disabled\n    username: mirror\n    password: ${{DEST_PASSWORD}}\nrules:\n  - name: app\n    source: {src}/ns/app\n    destinations: [{dst}/mirror/app]\n",
            src = source.host(),
            dst = dest.host()
        ),
    );
    let rules = rules.to_str().unwrap();
    let plan_file = dir.path().join("plan.json");
    let plan_path = plan_file.to_str().unwrap();
    let syncer = Syncer::new().env("DEST_PASSWORD", PASSWORD);

    syncer
        .run(&["plan", "--out", plan_path, rules])
        .expect_code(0);
    let saved_text = std::fs::read_to_string(&plan_file).unwrap();
    assert!(!saved_text.contains(PASSWORD), "plan file holds a password");
    let saved = read_json(&plan_file);
    assert_eq!(saved["format_version"], 1);
    assert_eq!(saved["plan"]["summary"]["create"], 2);
    let hosts = saved["registries"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{hosts:?}");

    // The source tag moves after the plan was made.
    let moved_to = pusher.push_image("ns/app", "v1", &sample_image("app-v1-rebuilt"));
    let stale = syncer
        .run(&["apply", "--plan", plan_path, rules])
        .expect_code(1);
    assert!(stale.stderr.contains("is stale"), "{}", stale.stderr);
    let moved_line = format!("{}/ns/app:v1: planned sha256:", source.host());
    assert!(stale.stderr.contains(&moved_line), "{}", stale.stderr);
    assert!(stale.stderr.contains(&moved_to), "{}", stale.stderr);
    assert!(
        !stale.stderr.contains("ns/app:v2"),
        "v2 did not move: {}",
        stale.stderr
    );
    let dest_pusher = Pusher::new(&dest);
    assert_eq!(dest_pusher.manifest_digest("mirror/app", "v1"), None);
    assert_eq!(dest_pusher.manifest_digest("mirror/app", "v2"), None);
    assert_eq!(dest.count_requests("PUT", ""), 0);
    assert_eq!(dest.count_requests("POST", ""), 0);

    // A plan made now applies without a prompt and writes the new digest.
    syncer
        .run(&["plan", "--out", plan_path, rules])
        .expect_code(0);
    let apply = syncer
        .run(&["apply", "--plan", plan_path, rules])
        .expect_code(0);
    assert!(
        apply.stdout.contains("2 created, 0 updated"),
        "{}",
        apply.stdout
    );
    assert_eq!(
        dest_pusher.manifest_digest("mirror/app", "v1").as_deref(),
        Some(moved_to.as_str())
    );
}

#[test]
fn destination_written_since_plan_is_stale() {
    let source = Registry::start();
    let dest = Registry::start();
    let dir = TempDir::new().unwrap();
    Pusher::new(&source).push_image("ns/app", "v1", &sample_image("app-v1"));
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}:\n    tls: disabled\n  {dst}:\n    tls: disabled\nrules:\n  - source: {src}/ns/app:v1\n    destinations: [{dst}/mirror/app]\n",
            src = source.host(),
            dst = dest.host()
        ),
    );
    let rules = rules.to_str().unwrap();
    let plan_file = dir.path().join("plan.json");
    let syncer = Syncer::new();
    syncer
        .run(&["plan", "--out", plan_file.to_str().unwrap(), rules])
        .expect_code(0);

    // Someone else writes the destination tag meanwhile.
    Pusher::new(&dest).push_image("mirror/app", "v1", &sample_image("other"));
    let puts_before = dest.count_requests("PUT", "/manifests/");
    let stale = syncer
        .run(&["apply", "--plan", plan_file.to_str().unwrap(), rules])
        .expect_code(1);
    let line = format!(
        "{}/mirror/app:v1: planned (absent), now sha256:",
        dest.host()
    );
    assert!(stale.stderr.contains(&line), "{}", stale.stderr);
    assert_eq!(dest.count_requests("PUT", "/manifests/"), puts_before);
}

#[test]
fn plan_file_of_unknown_version_is_rejected() {
    let dir = TempDir::new().unwrap();
    let rules = write_rules(dir.path(), "rules: []\n");
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, r#"{"format_version": 99, "plan": {}}"#).unwrap();
    let run = Syncer::new()
        .run(&[
            "apply",
            "--plan",
            plan_file.to_str().unwrap(),
            rules.to_str().unwrap(),
        ])
        .expect_code(1);
    assert!(run.stderr.contains("format_version 99"), "{}", run.stderr);
}

/// A source of 12 tags: more than the Markdown table shows unfolded.
#[test]
fn markdown_plan_folds_long_tables() {
    let source = Registry::start();
    let dest = Registry::start();
    let dir = TempDir::new().unwrap();
    let pusher = Pusher::new(&source);
    for n in 1..=12 {
        pusher.push_image(
            "ns/app",
            &format!("v{n:02}"),
            &sample_image(&format!("app-{n}")),
        );
    }
    Pusher::new(&dest).push_image("mirror/app", "v01", &sample_image("stale"));
    Pusher::new(&dest).push_image("mirror/app", "v02", &sample_image("app-2"));
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}:\n    tls: disabled\n  {dst}:\n    tls: disabled\nrules:\n  - name: app\n    source: {src}/ns/app\n    destinations: [{dst}/mirror/app]\n",
            src = source.host(),
            dst = dest.host()
        ),
    );
    let run = Syncer::new()
        .run(&["plan", "--format", "markdown", rules.to_str().unwrap()])
        .expect_code(0);
    assert!(run
        .stdout
        .starts_with("**Plan: 10 to create, 1 to update, 0 to delete, 1 unchanged.**\n"));
    assert!(run.stdout.contains("<summary>11 changes</summary>"));
    let text = redact(
        &run.stdout,
        &[(&source.host(), "SOURCE"), (&dest.host(), "DEST")],
    );
    snapshot_settings().bind(|| insta::assert_snapshot!("workflow_plan_markdown", text));
}

/// Operation fields that do not depend on the other operations of a plan.
/// Blob counts do: a blob copied for one repository is mounted for the
/// next, so they differ between a shard and the whole plan.
fn identity(op: &Value) -> String {
    let mut op = op.clone();
    op.as_object_mut().unwrap().remove("blobs");
    op.to_string()
}

fn plan_operations(syncer: &Syncer, args: &[&str]) -> Vec<String> {
    let run = syncer.run(args).expect_code(0);
    let plan: Value = serde_json::from_str(&run.stdout).expect("plan JSON");
    plan["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(identity)
        .collect()
}

#[test]
fn shards_cover_plan_exactly_once() {
    let source = Registry::start();
    let dest = Registry::start();
    let dir = TempDir::new().unwrap();
    let pusher = Pusher::new(&source);
    for n in 0..9 {
        let image = sample_image(&format!("repo{n}"));
        pusher.push_image(&format!("team/repo{n}"), "v1", &image);
        pusher.push_image(&format!("team/repo{n}"), "v2", &image);
    }
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}:\n    tls: disabled\n  {dst}:\n    tls: disabled\nrules:\n  - name: all\n    source: {src}/team/**\n    destinations: [\"{dst}/mirror/{{repo}}\"]\n",
            src = source.host(),
            dst = dest.host()
        ),
    );
    let rules = rules.to_str().unwrap();
    let syncer = Syncer::new();
    let full = plan_operations(&syncer, &["plan", "--format", "json", rules]);
    assert_eq!(full.len(), 18);

    let count = 3;
    let mut covered: Vec<String> = Vec::new();
    let mut shard_of_repository = std::collections::HashMap::new();
    for index in 0..count {
        let shard = format!("{index}/{count}");
        let part = plan_operations(
            &syncer,
            &["plan", "--format", "json", "--shard", &shard, rules],
        );
        for op in &part {
            let destination: Value = serde_json::from_str(op).unwrap();
            let destination = destination["destination"].as_str().unwrap().to_string();
            let repository = destination.rsplit_once(':').unwrap().0.to_string();
            let owner = shard_of_repository
                .entry(repository.clone())
                .or_insert(index);
            assert_eq!(*owner, index, "{repository} split across shards");
        }
        covered.extend(part);
    }
    let mut sorted_full = full.clone();
    sorted_full.sort();
    covered.sort();
    assert_eq!(covered, sorted_full, "shards differ from the whole plan");

    // A plan saved for shard 1 is not applied as shard 0.
    let saved = dir.path().join("shard1.json");
    let saved = saved.to_str().unwrap();
    syncer
        .run(&["plan", "--shard", "1/3", "--out", saved, rules])
        .expect_code(0);
    let mixed = syncer
        .run(&["apply", "--plan", saved, "--shard", "0/3", rules])
        .expect_code(1);
    assert!(
        mixed.stderr.contains("covers shard 1/3"),
        "{}",
        mixed.stderr
    );

    // Applying shard 0 writes its destinations and no other.
    let apply = syncer
        .run(&["apply", "--auto-approve", "--shard", "0/3", rules])
        .expect_code(0);
    let dest_pusher = Pusher::new(&dest);
    let prefix = format!("{}/", dest.host());
    let mut written = BTreeSet::new();
    for (repository, shard) in &shard_of_repository {
        let path = repository.strip_prefix(&prefix).unwrap();
        let present = dest_pusher.manifest_digest(path, "v1").is_some();
        assert_eq!(
            present,
            *shard == 0,
            "{repository} in shard {shard}: {}",
            apply.stdout
        );
        if present {
            written.insert(path.to_string());
        }
    }
    assert_eq!(
        written.len(),
        shard_of_repository.values().filter(|s| **s == 0).count()
    );
}

#[test]
fn edited_saved_plan_is_rejected() {
    let source = Registry::start_with(testkit::registry::RegistryOptions {
        delete_enabled: true,
        ..Default::default()
    });
    let dest = Registry::start();
    let dir = TempDir::new().unwrap();
    let pusher = Pusher::new(&source);
    pusher.push_image("ns/app", "v1", &sample_image("edit-v1"));
    let v2 = pusher.push_image("ns/app", "v2", &sample_image("edit-v2"));
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {src}: {{tls: disabled}}\n  {dst}: {{tls: disabled}}\nrules:\n  - name: app\n    source: {src}/ns/app:v1\n    destinations: [{dst}/mirror/app]\n",
            src = source.host(),
            dst = dest.host()
        ),
    );
    let rules = rules.to_str().unwrap();
    let plan_file = dir.path().join("plan.json");
    let plan_path = plan_file.to_str().unwrap();
    let syncer = Syncer::new();
    syncer
        .run(&["plan", "--out", plan_path, rules])
        .expect_code(0);
    let saved = read_json(&plan_file);

    // One copy aimed elsewhere, and one deletion of a source tag that no
    // rule prunes, each with digests that pass the staleness check.
    let mut elsewhere = saved.clone();
    let destination = format!("{}/not-in-rules/app:v1", dest.host());
    elsewhere["plan"]["operations"][0]["destination"] = Value::from(destination.as_str());
    let mut deletion = saved.clone();
    let mut delete = saved["plan"]["operations"][0].clone();
    let source_tag = format!("{}/ns/app:v2", source.host());
    delete["action"] = Value::from("delete");
    delete["source"] = Value::from(source_tag.as_str());
    delete["destination"] = Value::from(source_tag.as_str());
    delete["destination_digest"] = Value::from(v2.as_str());
    deletion["plan"]["operations"]
        .as_array_mut()
        .unwrap()
        .push(delete);

    for (name, edited) in [("elsewhere", elsewhere), ("deletion", deletion)] {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, edited.to_string()).unwrap();

        let run = syncer
            .run(&["apply", "--plan", path.to_str().unwrap(), rules])
            .expect_code(1);

        assert!(
            run.stderr.contains("does not match the rules"),
            "{name}: {}",
            run.stderr
        );
    }
    assert!(Pusher::new(&dest).catalog().is_empty());
    assert_eq!(pusher.manifest_digest("ns/app", "v2"), Some(v2));
}

/// Serves `ns/app` with hostile tag names and a tag `v1` whose index has
/// one child, of a platform whose name carries escapes and HTML.
fn hostile_registry() -> HttpServer {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 1,
            "digest": format!("sha256:{}", "1".repeat(64)),
            "platform": {"os": "linux", "architecture": "arm64\u{1b}[2J</details><img src=x>|"}
        }]
    })
    .to_string();
    let digest = testkit::image::sha256_digest(index.as_bytes());
    HttpServer::start(move |request| {
        let target = request.target.as_str();
        if target == "/v2/ns/app/tags/list" {
            let tags = [
                "v1",
                "\u{1b}[31mred",
                "</details> ![x](http://127.0.0.1:9/t.png) | col |",
                "`code`<script>alert(1)</script>",
                "\u{202e}desrever",
            ];
            return Reply::json(200, serde_json::json!({"name": "ns/app", "tags": tags}));
        }
        if target == "/v2/ns/app/manifests/v1" || target == format!("/v2/ns/app/manifests/{digest}")
        {
            let media_type = "application/vnd.oci.image.index.v1+json";
            return Reply {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), media_type.into()),
                    ("Docker-Content-Digest".into(), digest.clone()),
                ],
                body: index.clone().into_bytes(),
            };
        }
        Reply::not_found()
    })
}

#[test]
fn registry_strings_are_escaped_in_plans() {
    let registry = hostile_registry();
    let dir = TempDir::new().unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            "registries:\n  {host}: {{tls: disabled}}\nrules:\n  - source: {host}/ns/app\n    destinations: [{host}/mirror/app]\n    platforms: [linux/amd64]\n",
            host = registry.host
        ),
    );
    let rules = rules.to_str().unwrap();
    let syncer = Syncer::new();

    let text = syncer.run(&["plan", rules]).expect_code(0).stdout;
    let markdown = syncer
        .run(&["plan", "--format", "markdown", rules])
        .expect_code(0)
        .stdout;

    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(!text.contains('\u{202e}'), "{text}");
    assert!(text.contains("Warning: "), "{text}");
    assert!(text.contains("\\u{1b}[31mred"), "{text}");
    assert!(text.contains("note   no child matches"), "{text}");
    assert!(text.contains("arm64\\u{1b}[2J"), "{text}");
    for raw in [
        "<script>",
        "</details>",
        "<img src=x>",
        "![x](",
        "| col |",
        "`code`",
    ] {
        assert!(!markdown.contains(raw), "{raw} in\n{markdown}");
    }
    assert!(!markdown.contains('\u{1b}'), "{markdown}");
    assert!(markdown.contains("\\<script\\>"), "{markdown}");
    assert!(markdown.contains("\\<img src=x\\>\\|"), "{markdown}");
}
