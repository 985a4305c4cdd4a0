//! The rules language end to end against real `docker-registry`
//! processes: each tag filter, platform selection with a rewritten index,
//! `overwrite: false`, and `prune` with protected and shared tags.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::{redact, snapshot_settings, Syncer};
use serde_json::Value;
use tempfile::TempDir;
use testkit::image::{layer_from_files, oci_image, oci_index, sample_image, Platform, Pusher};
use testkit::registry::{Registry, RegistryOptions};

/// Tags of `team/app` in the filter table: semver order differs from text
/// order, some have a `v` prefix, one is a pre-release, two are not semver.
const APP_TAGS: [&str; 8] = [
    "1.2.0",
    "1.9.0",
    "1.10.0",
    "v1.10.1",
    "v2.0.0",
    "2.1.0-rc.1",
    "latest",
    "nightly",
];

struct Pair {
    source: Registry,
    destination: Registry,
    dir: TempDir,
}

impl Pair {
    fn start() -> Self {
        Self::start_with(RegistryOptions::default())
    }

    fn start_with(destination: RegistryOptions) -> Self {
        Pair {
            source: Registry::start(),
            destination: Registry::start_with(destination),
            dir: TempDir::new().unwrap(),
        }
    }

    /// Writes a rules file whose `SRC` and `DST` stand for the two hosts.
    fn rules(&self, name: &str, body: &str) -> PathBuf {
        let (src, dst) = (self.source.host(), self.destination.host());
        let text = format!(
            "registries:\n  {src}:\n    tls: disabled\n  {dst}:\n    tls: disabled\n{}",
            body.replace("SRC", &src).replace("DST", &dst)
        );
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn redact(&self, text: &str) -> String {
        redact(
            text,
            &[
                (&self.source.host(), "SOURCE"),
                (&self.destination.host(), "DESTINATION"),
            ],
        )
    }

    fn plan_json(&self, rules: &std::path::Path) -> Value {
        let run = Syncer::new()
            .run(&["plan", "--format", "json", rules.to_str().unwrap()])
            .expect_code(0);
        serde_json::from_str(&run.stdout).unwrap()
    }
}

/// Destination references of the plan, grouped by rule, host redacted.
fn destinations_by_rule(pair: &Pair, plan: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_rule: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for op in plan["operations"].as_array().unwrap() {
        let rule = op["rule"].as_str().unwrap().to_string();
        let destination = pair.redact(op["destination"].as_str().unwrap());
        by_rule.entry(rule).or_default().insert(destination);
    }
    by_rule
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn filters_select_exact_references() {
    let pair = Pair::start();
    let pusher = Pusher::new(&pair.source);
    let image = sample_image("filters");
    for tag in APP_TAGS {
        pusher.push_image("team/app", tag, &image);
    }
    // (rule name, tags block, destination tags expected)
    let table: [(&str, &str, &[&str]); 9] = [
        ("all", "{}", &APP_TAGS),
        ("include-v", "{include: [\"v*\"]}", &["v1.10.1", "v2.0.0"]),
        (
            "exclude",
            "{exclude: [\"*-rc*\", nightly, latest]}",
            &["1.2.0", "1.9.0", "1.10.0", "v1.10.1", "v2.0.0"],
        ),
        (
            "regex",
            "{regex: '^[0-9]+\\.[0-9]+\\.[0-9]+$'}",
            &["1.2.0", "1.9.0", "1.10.0"],
        ),
        (
            "semver-range",
            "{semver: \">=1.9, <2\"}",
            &["1.9.0", "1.10.0", "v1.10.1"],
        ),
        (
            "semver-prerelease",
            "{semver: \">=2.1.0-rc.0\"}",
            &["2.1.0-rc.1"],
        ),
        ("latest-2", "{latest: 2}", &["v1.10.1", "v2.0.0"]),
        (
            "latest-after-include",
            "{include: [\"1.*\"], latest: 2}",
            &["1.9.0", "1.10.0"],
        ),
        (
            "latest-in-range",
            "{semver: \"<1.10\", latest: 5}",
            &["1.2.0", "1.9.0"],
        ),
    ];
    let mut body = String::from("rules:\n");
    for (name, tags, _) in &table {
        body.push_str(&format!(
            "  - name: {name}\n    source: SRC/team/app\n    destinations: [DST/{name}/app]\n    tags: {tags}\n"
        ));
    }
    let rules = pair.rules("filters.yaml", &body);
    let plan = pair.plan_json(&rules);
    let by_rule = destinations_by_rule(&pair, &plan);
    for (name, _, expected) in &table {
        let want: BTreeSet<String> = expected
            .iter()
            .map(|tag| format!("DESTINATION/{name}/app:{tag}"))
            .collect();
        let got = by_rule.get(*name).cloned().unwrap_or_default();
        assert_eq!(got, want, "rule {name}");
    }
}

#[test]
fn defaults_tags_merge_field_by_field() {
    let pair = Pair::start();
    let pusher = Pusher::new(&pair.source);
    let image = sample_image("defaults");
    for tag in APP_TAGS {
        pusher.push_image("team/app", tag, &image);
    }
    let rules = pair.rules(
        "defaults.yaml",
        "defaults:\n  tags:\n    exclude: [nightly, latest]\n    latest: 2\nrules:\n  - name: inherits\n    source: SRC/team/app\n    destinations: [DST/inherits/app]\n  - name: overrides-latest\n    source: SRC/team/app\n    destinations: [DST/overrides/app]\n    tags:\n      latest: 1\n",
    );
    let by_rule = destinations_by_rule(&pair, &pair.plan_json(&rules));
    assert_eq!(
        by_rule["inherits"],
        set(&[
            "DESTINATION/inherits/app:v1.10.1",
            "DESTINATION/inherits/app:v2.0.0"
        ])
    );
    assert_eq!(
        by_rule["overrides-latest"],
        set(&["DESTINATION/overrides/app:v2.0.0"])
    );
}

fn three_platform_index() -> testkit::image::Index {
    let children = [
        Platform::linux("amd64"),
        Platform::linux_variant("arm64", "v8"),
        Platform::linux("s390x"),
    ]
    .into_iter()
    .map(|platform| {
        let text = format!("platform {platform}\n");
        oci_image(
            vec![layer_from_files(&[("p.txt", text.as_bytes())])],
            platform,
        )
    })
    .collect();
    oci_index(children)
}

#[test]
fn platforms_rewrite_index_and_skip_image() {
    let pair = Pair::start();
    let source = Pusher::new(&pair.source);
    let source_digest = source.push_index("team/multi", "1.0", &three_platform_index());
    source.push_image("team/single", "1.0", &sample_image("single-amd64"));
    let rules = pair.rules(
        "platforms.yaml",
        "defaults:\n  platforms: [linux/amd64, linux/arm64/v8]\nrules:\n  - name: multi\n    source: SRC/team/multi\n    destinations: [DST/mirror/multi]\n  - name: single\n    source: SRC/team/single\n    destinations: [DST/mirror/single]\n    platforms: [linux/arm64]\n",
    );
    let path = rules.to_str().unwrap();
    let syncer = Syncer::new();
    let plan = syncer.run(&["plan", path]).expect_code(0);
    snapshot_settings()
        .bind(|| insta::assert_snapshot!("rules_platforms_plan", pair.redact(&plan.stdout)));
    let json = pair.plan_json(&rules);
    let multi = &json["operations"][0];
    assert_eq!(multi["source_digest"], source_digest.as_str());
    let rewritten = multi["rewritten_digest"].as_str().unwrap().to_string();
    assert_ne!(rewritten, source_digest);
    assert_eq!(json["operations"][1]["action"], "skip");
    let markdown = syncer
        .run(&["plan", "--format", "markdown", path])
        .expect_code(0);
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("rules_platforms_markdown", pair.redact(&markdown.stdout))
    });

    syncer
        .run(&["apply", "--auto-approve", path])
        .expect_code(0);
    let destination = Pusher::new(&pair.destination);
    assert_eq!(
        destination
            .manifest_digest("mirror/multi", "1.0")
            .as_deref(),
        Some(rewritten.as_str())
    );
    assert!(destination.tags("mirror/single").is_empty());
    let (bytes, _) = destination.get_manifest("mirror/multi", "1.0").unwrap();
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    let platforms: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"]);
    for child in index["manifests"].as_array().unwrap() {
        let digest = child["digest"].as_str().unwrap();
        assert!(destination.get_manifest("mirror/multi", digest).is_some());
    }

    let again = syncer
        .run(&["plan", "--detailed-exitcode", path])
        .expect_code(0);
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert!(
        again
            .stdout
            .contains("No changes. 1 destination tag matches its source, 1 skipped."),
        "{}",
        again.stdout
    );
}

#[test]
fn overwrite_false_keeps_moved_tag() {
    let pair = Pair::start();
    let wanted = Pusher::new(&pair.source).push_image("team/app", "v1", &sample_image("new"));
    let kept = Pusher::new(&pair.destination).push_image("mirror/app", "v1", &sample_image("old"));
    let rules = pair.rules(
        "overwrite.yaml",
        "rules:\n  - name: keep\n    source: SRC/team/app\n    destinations: [DST/mirror/app]\n    overwrite: false\n",
    );
    let path = rules.to_str().unwrap();
    let syncer = Syncer::new();
    let plan = syncer.run(&["plan", path]).expect_code(0);
    assert!(plan.stdout.contains(&wanted), "{}", plan.stdout);
    assert!(plan.stdout.contains(&kept), "{}", plan.stdout);
    snapshot_settings()
        .bind(|| insta::assert_snapshot!("rules_overwrite_plan", pair.redact(&plan.stdout)));
    syncer
        .run(&["apply", "--auto-approve", path])
        .expect_code(0);
    let destination = Pusher::new(&pair.destination);
    assert_eq!(
        destination.manifest_digest("mirror/app", "v1").as_deref(),
        Some(kept.as_str())
    );
}

/// A destination with a tag the rule produces (`v1`), a tag sharing its
/// digest (`shared`), two stale tags and a protected signature tag.
fn seed_prune(pair: &Pair) -> String {
    let source = Pusher::new(&pair.source);
    let v1 = source.push_image("team/app", "v1", &sample_image("v1"));
    source.push_image("team/app", "v2", &sample_image("v2"));
    let destination = Pusher::new(&pair.destination);
    destination.push_image("mirror/app", "v1", &sample_image("v1"));
    destination.push_image("mirror/app", "shared", &sample_image("v1"));
    destination.push_image("mirror/app", "old", &sample_image("old"));
    destination.push_image("mirror/app", "older", &sample_image("older"));
    let signature = format!("{}.sig", v1.replace(':', "-"));
    destination.push_image("mirror/app", &signature, &sample_image("signature"));
    signature
}

const PRUNE_RULES: &str =
    "rules:\n  - name: mirror\n    source: SRC/team/app\n    destinations: [DST/mirror/app]\n    prune: true\n";

#[test]
fn prune_deletes_stale_tags_only() {
    let pair = Pair::start();
    let signature = seed_prune(&pair);
    let rules = pair.rules("prune.yaml", PRUNE_RULES);
    let path = rules.to_str().unwrap();
    let syncer = Syncer::new();
    let plan = syncer.run(&["plan", path]).expect_code(0);
    snapshot_settings()
        .bind(|| insta::assert_snapshot!("rules_prune_plan", pair.redact(&plan.stdout)));
    let apply = syncer
        .run(&["apply", "--auto-approve", path])
        .expect_code(0);
    assert!(
        apply
            .stdout
            .contains("Apply complete: 1 created, 0 updated, 1 unchanged, 0 failed, 2 deleted."),
        "{}",
        apply.stdout
    );
    let mut tags = Pusher::new(&pair.destination).tags("mirror/app");
    tags.sort();
    let mut want = vec![signature, "shared".to_string(), "v1".into(), "v2".into()];
    want.sort();
    assert_eq!(tags, want);
    let again = syncer
        .run(&["plan", "--detailed-exitcode", path])
        .expect_code(0);
    assert!(again.stdout.contains("1 skipped"), "{}", again.stdout);
}

#[test]
fn prune_without_delete_support_fails_deletions_only() {
    let pair = Pair::start_with(RegistryOptions {
        delete_enabled: false,
        ..RegistryOptions::default()
    });
    seed_prune(&pair);
    let rules = pair.rules("prune.yaml", PRUNE_RULES);
    let apply = Syncer::new()
        .run(&["apply", "--auto-approve", rules.to_str().unwrap()])
        .expect_code(1);
    assert!(
        apply
            .stdout
            .contains("Apply complete: 1 created, 0 updated, 1 unchanged, 2 failed."),
        "{}",
        apply.stdout
    );
    assert!(
        apply.stdout.contains("does not support deleting manifests"),
        "{}",
        apply.stdout
    );
    let destination = Pusher::new(&pair.destination);
    assert!(destination.manifest_digest("mirror/app", "v2").is_some());
    assert!(destination.manifest_digest("mirror/app", "old").is_some());
}

#[test]
fn prune_keeps_digest_this_run_pushes() {
    let pair = Pair::start();
    let image = sample_image("pushed-now");
    Pusher::new(&pair.source).push_image("team/app", "v1", &image);
    // `old` is not produced, but its digest is the one `v1` brings, so
    // deleting it would untag `v1` as well.
    Pusher::new(&pair.destination).push_image("mirror/app", "old", &image);
    let rules = pair.rules("prune.yaml", PRUNE_RULES);
    let path = rules.to_str().unwrap();
    let syncer = Syncer::new();

    let plan = syncer.run(&["plan", path]).expect_code(0);
    let apply = syncer
        .run(&["apply", "--auto-approve", path])
        .expect_code(0);

    assert!(plan.stdout.contains("not deletable"), "{}", plan.stdout);
    assert!(plan.stdout.contains("also tagged v1"), "{}", plan.stdout);
    assert!(apply.stdout.contains("1 created"), "{}", apply.stdout);
    let mut tags = Pusher::new(&pair.destination).tags("mirror/app");
    tags.sort();
    assert_eq!(tags, ["old", "v1"]);
}

#[test]
fn deletion_rechecks_tags_before_deleting() {
    let pair = Pair::start();
    Pusher::new(&pair.source).push_image("team/app", "v1", &sample_image("v1"));
    let stale = sample_image("stale");
    let destination = Pusher::new(&pair.destination);
    destination.push_image("mirror/app", "old", &stale);
    let rules = pair.rules("prune.yaml", PRUNE_RULES);
    let path = rules.to_str().unwrap();
    let saved = pair.dir.path().join("plan.json");
    let saved = saved.to_str().unwrap();
    let syncer = Syncer::new();
    syncer.run(&["plan", "--out", saved, path]).expect_code(0);
    // After review, someone signs the stale image: the protected tag
    // shares the digest that the plan deletes.
    destination.push_image("mirror/app", "release.sig", &stale);

    let apply = syncer.run(&["apply", "--plan", saved, path]).expect_code(1);

    let output = format!("{}{}", apply.stdout, apply.stderr);
    assert!(output.contains("also tagged release.sig"), "{output}");
    assert!(output.contains("1 created"), "{output}");
    let mut tags = destination.tags("mirror/app");
    tags.sort();
    assert_eq!(tags, ["old", "release.sig", "v1"]);
}

#[test]
fn prune_spares_source_without_tags() {
    let pair = Pair {
        source: Registry::start_with(RegistryOptions {
            delete_enabled: true,
            ..RegistryOptions::default()
        }),
        destination: Registry::start(),
        dir: TempDir::new().unwrap(),
    };
    let source = Pusher::new(&pair.source);
    source.push_image("team/kept", "v1", &sample_image("kept"));
    let gone_digest = source.push_image("team/gone", "v1", &sample_image("gone"));
    let rules = pair.rules(
        "glob.yaml",
        "rules:\n  - name: all\n    source: SRC/team/**\n    destinations: [DST/mirror]\n    prune: true\n",
    );
    let path = rules.to_str().unwrap();
    let syncer = Syncer::new();
    syncer
        .run(&["apply", "--auto-approve", path])
        .expect_code(0);
    // The registry still lists the repository, now with `"tags": null`.
    source.delete_manifest("team/gone", &gone_digest);
    Pusher::new(&pair.destination).push_image("mirror/kept", "stale", &sample_image("stale"));

    let apply = syncer
        .run(&["apply", "--auto-approve", path])
        .expect_code(0);

    assert!(apply.stdout.contains("not pruning"), "{}", apply.stdout);
    // Logged too, for alerting on WARN lines.
    assert!(apply.stderr.contains("not pruning"), "{}", apply.stderr);
    assert!(apply.stdout.contains("1 deleted"), "{}", apply.stdout);
    let copy = Pusher::new(&pair.destination);
    assert_eq!(copy.tags("mirror/gone"), ["v1"]);
    assert_eq!(copy.tags("mirror/kept"), ["v1"]);
}
