//! End to end: a rules file with an exact repository fanned out to a plain
//! registry and to a TLS registry with basic auth, a single multi-arch tag,
//! a namespace glob and a template rule, planned, applied and planned again
//! against real `docker-registry` processes.

mod common;

use std::path::PathBuf;

use common::{redact, snapshot_settings, Syncer};
use tempfile::TempDir;
use testkit::certs::Ca;
use testkit::image::{
    docker_image, layer_from_files, sample_image, sample_index, Platform, Pusher,
};
use testkit::registry::{Registry, RegistryOptions};

const USER: &str = "mirror";
const PASSWORD: &str = "e2e-secret-Pa55";

struct Estate {
    source: Registry,
    plain: Registry,
    secure: Registry,
    ca: Ca,
    dir: TempDir,
}

impl Estate {
    fn start() -> Self {
        let ca = Ca::new();
        let secure = Registry::start_with(RegistryOptions {
            tls: Some(ca.issue_server()),
            htpasswd: Some((USER.into(), PASSWORD.into())),
            ..RegistryOptions::default()
        });
        let estate = Estate {
            source: Registry::start(),
            plain: Registry::start(),
            secure,
            ca,
            dir: TempDir::new().unwrap(),
        };
        estate.seed();
        estate
    }

    fn seed(&self) {
        let pusher = Pusher::new(&self.source);
        pusher.push_image("ns1/repo1", "v1", &sample_image("repo1-v1"));
        let docker = docker_image(
            vec![layer_from_files(&[("docker.txt", b"schema2 layer\n")])],
            Platform::linux("amd64"),
        );
        pusher.push_image("ns1/repo1", "v2", &docker);
        pusher.push_image("ns2/app", "1.0", &sample_image("ns2-app"));
        pusher.push_image("ns2/team/tool", "latest", &sample_image("ns2-tool"));
        pusher.push_index("ns3/repo4", "v3", &sample_index("repo4"));
        pusher.push_image("ns3/repo4", "v4", &sample_image("repo4-v4"));
    }

    fn rules(&self) -> PathBuf {
        let (src, dst, tls) = (self.source.host(), self.plain.host(), self.secure.host());
        let text = format!(
            r#"registries:
  {src}:
    tls: disabled
  {dst}:
    tls: disabled
  {tls}:
    ca_file: {ca}
    username: ${{E2E_USER}}
    password: ${{E2E_PASSWORD}}
rules:
  - name: one-repo
    source: {src}/ns1/repo1
    destinations:
      - {dst}/mirror/repo1
      - {tls}/backup/repo1
  - name: pinned
    source: {src}/ns3/repo4:v3
    destinations: [{dst}/pinned/repo4]
  - name: namespace
    source: {src}/ns2/**
    destinations: [{dst}/mirror/ns2]
  - name: everything
    source: {src}/**
    destinations: ["{dst}/all/{{repo}}"]
"#,
            ca = self.ca.cert_path().display()
        );
        let path = self.dir.path().join("estate.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn syncer(&self) -> Syncer {
        Syncer::new()
            .env("E2E_USER", USER)
            .env("E2E_PASSWORD", PASSWORD)
    }

    fn redact(&self, text: &str) -> String {
        redact(
            text,
            &[
                (&self.source.host(), "SOURCE"),
                (&self.plain.host(), "PLAIN"),
                (&self.secure.host(), "SECURE"),
            ],
        )
    }

    fn secure_pusher(&self) -> Pusher {
        Pusher::new(&self.secure)
            .ca(&self.ca.cert_path())
            .basic_auth(USER, PASSWORD)
    }
}

/// Every (source repository, tag, destination registry, repository) the
/// rules above must produce.
fn expected_copies() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    vec![
        ("ns1/repo1", "v1", "plain", "mirror/repo1"),
        ("ns1/repo1", "v2", "plain", "mirror/repo1"),
        ("ns1/repo1", "v1", "secure", "backup/repo1"),
        ("ns1/repo1", "v2", "secure", "backup/repo1"),
        ("ns3/repo4", "v3", "plain", "pinned/repo4"),
        ("ns2/app", "1.0", "plain", "mirror/ns2/app"),
        ("ns2/team/tool", "latest", "plain", "mirror/ns2/team/tool"),
        ("ns1/repo1", "v1", "plain", "all/ns1/repo1"),
        ("ns1/repo1", "v2", "plain", "all/ns1/repo1"),
        ("ns2/app", "1.0", "plain", "all/ns2/app"),
        ("ns2/team/tool", "latest", "plain", "all/ns2/team/tool"),
        ("ns3/repo4", "v3", "plain", "all/ns3/repo4"),
        ("ns3/repo4", "v4", "plain", "all/ns3/repo4"),
    ]
}

#[test]
fn plan_apply_plan_converges() {
    let estate = Estate::start();
    let rules = estate.rules();
    let rules = rules.to_str().unwrap();
    let syncer = estate.syncer();

    let plan = syncer.run(&["plan", rules]).expect_code(0);
    snapshot_settings()
        .bind(|| insta::assert_snapshot!("end_to_end_plan_text", estate.redact(&plan.stdout)));
    let json = syncer
        .run(&["plan", "--format", "json", rules])
        .expect_code(0);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan JSON parses");
    assert_eq!(parsed["summary"]["create"], 13);
    snapshot_settings()
        .bind(|| insta::assert_snapshot!("end_to_end_plan_json", estate.redact(&json.stdout)));
    syncer
        .run(&["plan", "--detailed-exitcode", rules])
        .expect_code(2);

    let apply = syncer
        .run(&["apply", "--auto-approve", rules])
        .expect_code(0);
    assert!(
        apply
            .stdout
            .contains("Apply complete: 13 created, 0 updated, 0 unchanged, 0 failed."),
        "{}",
        apply.stdout
    );

    let source = Pusher::new(&estate.source);
    let plain = Pusher::new(&estate.plain);
    let secure = estate.secure_pusher();
    for (repo, tag, registry, dest_repo) in expected_copies() {
        let want = source
            .manifest_digest(repo, tag)
            .expect("source tag exists");
        let pusher = if registry == "plain" { &plain } else { &secure };
        let got = pusher.manifest_digest(dest_repo, tag);
        assert_eq!(
            got.as_deref(),
            Some(want.as_str()),
            "{registry}/{dest_repo}:{tag}"
        );
        let (source_bytes, source_type) = source.get_manifest(repo, tag).unwrap();
        let (dest_bytes, dest_type) = pusher.get_manifest(dest_repo, tag).unwrap();
        assert_eq!(
            dest_bytes, source_bytes,
            "{registry}/{dest_repo}:{tag} bytes"
        );
        assert_eq!(
            dest_type, source_type,
            "{registry}/{dest_repo}:{tag} content type"
        );
    }

    let again = syncer
        .run(&["plan", "--detailed-exitcode", rules])
        .expect_code(0);
    assert!(again.stdout.starts_with("No changes."), "{}", again.stdout);
    assert!(!again.stdout.contains(PASSWORD) && !again.stderr.contains(PASSWORD));
}

#[test]
fn index_children_are_copied_by_digest() {
    let estate = Estate::start();
    let index = sample_index("children");
    Pusher::new(&estate.source).push_index("multi/app", "v1", &index);
    let rules = estate.dir.path().join("multi.yaml");
    let text = format!(
        "registries:\n  {0}: {{tls: disabled}}\n  {1}: {{tls: disabled}}\nrules:\n  - source: {0}/multi/app:v1\n    destinations: [{1}/copy/app]\n",
        estate.source.host(),
        estate.plain.host()
    );
    std::fs::write(&rules, text).unwrap();
    estate
        .syncer()
        .run(&["apply", "--auto-approve", rules.to_str().unwrap()])
        .expect_code(0);

    let plain = Pusher::new(&estate.plain);
    assert_eq!(
        plain.manifest_digest("copy/app", "v1").as_deref(),
        Some(index.digest.as_str())
    );
    for child in &index.children {
        assert_eq!(
            plain.manifest_digest("copy/app", &child.digest).as_deref(),
            Some(child.digest.as_str())
        );
        for blob in child.blobs() {
            assert!(
                plain.blob_exists("copy/app", &blob.digest),
                "blob {} missing",
                blob.digest
            );
        }
    }
}

#[test]
fn usage_error_exits_one_not_two() {
    // Exit 2 means "changes" under --detailed-exitcode, so a mistyped flag
    // must not look like it.
    let run = Syncer::new()
        .run(&["plan", "--detailed-exitcode", "--formt", "json"])
        .expect_code(1);
    assert!(run.stderr.contains("--format"), "{}", run.stderr);

    let help = Syncer::new().run(&["plan", "--help"]).expect_code(0);
    assert!(
        help.stdout.contains("--detailed-exitcode"),
        "{}",
        help.stdout
    );
}

#[test]
fn apply_without_terminal_needs_auto_approve() {
    let estate = Estate::start();
    let rules = estate.rules();
    let run = estate
        .syncer()
        .run(&["apply", rules.to_str().unwrap()])
        .expect_code(1);
    assert!(run.stderr.contains("--auto-approve"), "{}", run.stderr);
    assert!(
        Pusher::new(&estate.plain).catalog().is_empty(),
        "apply wrote without approval"
    );
}

#[test]
fn failed_image_does_not_stop_others() {
    let estate = Estate::start();
    let broken = sample_image("broken");
    let pusher = Pusher::new(&estate.source);
    pusher.push_image("fail/broken", "v1", &broken);
    pusher.push_image("fail/fine", "v1", &sample_image("fine"));
    // Remove one layer's data from the source store: its manifest still
    // resolves, but the blob read fails.
    let layer = &broken.layers[0].digest;
    let hex = layer.trim_start_matches("sha256:");
    let data = estate.source.root_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    std::fs::remove_file(&data).unwrap_or_else(|e| panic!("remove {}: {e}", data.display()));

    let rules = estate.dir.path().join("fail.yaml");
    let text = format!(
        "registries:\n  {0}: {{tls: disabled}}\n  {1}: {{tls: disabled}}\nrules:\n  - source: {0}/fail/*\n    destinations: [{1}/copy]\n",
        estate.source.host(),
        estate.plain.host()
    );
    std::fs::write(&rules, text).unwrap();
    let run = estate
        .syncer()
        .run(&["apply", "--auto-approve", rules.to_str().unwrap()])
        .expect_code(1);
    assert!(
        run.stdout
            .contains("1 created, 0 updated, 0 unchanged, 1 failed"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("copy/broken:v1"), "{}", run.stdout);
    let plain = Pusher::new(&estate.plain);
    assert_eq!(
        plain.manifest_digest("copy/fine", "v1"),
        pusher.manifest_digest("fail/fine", "v1")
    );
    assert_eq!(plain.manifest_digest("copy/broken", "v1"), None);
}

#[test]
fn unreachable_destination_spares_the_others() {
    let estate = Estate::start();
    let image = sample_image("spared");
    Pusher::new(&estate.source).push_image("fan/app", "v1", &image);
    // A port that was free a moment ago: connections are refused.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    let rules = estate.dir.path().join("fan.yaml");
    let report = estate.dir.path().join("report.json");
    let text = format!(
        "registries:\n  {src}: {{tls: disabled}}\n  {good}: {{tls: disabled}}\n  {dead}: {{tls: disabled, retries: 0}}\nrules:\n  - source: {src}/fan/app\n    destinations: [{good}/fan/app, {dead}/fan/app]\n",
        src = estate.source.host(),
        good = estate.plain.host(),
    );
    std::fs::write(&rules, text).unwrap();

    let plan = estate
        .syncer()
        .run(&["plan", "--detailed-exitcode", rules.to_str().unwrap()])
        .expect_code(1);
    let run = estate
        .syncer()
        .run(&[
            "apply",
            "--auto-approve",
            "--report",
            report.to_str().unwrap(),
            rules.to_str().unwrap(),
        ])
        .expect_code(1);

    let failure = format!("{dead}/fan/app:v1 from");
    assert!(plan.stderr.contains(&failure), "{}", plan.stderr);
    assert!(plan.stdout.contains("1 to create"), "{}", plan.stdout);
    assert!(run.stdout.contains(&failure), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("Apply complete: 1 created, 0 updated, 0 unchanged, 1 failed."),
        "{}",
        run.stdout
    );
    let plain = Pusher::new(&estate.plain);
    assert_eq!(
        plain.manifest_digest("fan/app", "v1"),
        Some(image.digest.clone())
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["failed"], 1);
    assert!(report["not_planned"][0].as_str().unwrap().contains(&dead));
}
