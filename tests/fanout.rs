//! Single-read fan-out against real registries. One rule copied to three
//! destination registries (and a second repository in one of them) reads
//! each source blob once, uploads it once per registry and mounts it into
//! the second repository. A destination whose upload fails is retried
//! alone, while the others get the blob once.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::Syncer;
use tempfile::TempDir;
use testkit::image::{oci_image, random_layer, sample_index, Image, Index, Platform, Pusher};
use testkit::proxy::{FaultKind, FaultProxy, Faults};
use testkit::registry::Registry;

/// Source repository copied by every test.
const SOURCE_REPO: &str = "app/one";

/// Seeds `app/one` with a single image (one 3 MiB layer, so the upload
/// streams over many chunks) and a multi-arch index.
fn seed(source: &Registry) -> (Image, Index) {
    let pusher = Pusher::new(source);
    let image = oci_image(
        vec![random_layer(3 << 20, 7), random_layer(64 << 10, 8)],
        Platform::linux("amd64"),
    );
    pusher.push_image(SOURCE_REPO, "v1", &image);
    let index = sample_index("fanout");
    pusher.push_index(SOURCE_REPO, "v2", &index);
    (image, index)
}

/// Digests of every blob the two tags reference, each once.
fn blob_digests(image: &Image, index: &Index) -> BTreeSet<String> {
    let mut digests: BTreeSet<String> = image.blobs().map(|b| b.digest.clone()).collect();
    digests.extend(index.blobs().into_iter().map(|b| b.digest.clone()));
    digests
}

fn write_rules(dir: &TempDir, source: &str, destinations: &[String]) -> PathBuf {
    let mut registries = format!("registries:\n  {source}: {{tls: disabled}}\n");
    for host in destinations
        .iter()
        .map(|d| d.split('/').next().unwrap())
        .collect::<BTreeSet<_>>()
    {
        registries.push_str(&format!("  {host}: {{tls: disabled}}\n"));
    }
    let list = destinations.join(", ");
    let text = format!(
        "{registries}rules:\n  - name: fanout\n    source: {source}/{SOURCE_REPO}\n    destinations: [{list}]\n"
    );
    let path = dir.path().join("fanout.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Number of access-log lines of `registry` with this method, a URI
/// containing `uri_part`, and this status.
fn count_with_status(registry: &Registry, method: &str, uri_part: &str, status: u16) -> usize {
    registry
        .requests()
        .iter()
        .filter(|e| e.method == method && e.uri.contains(uri_part) && e.status == status)
        .count()
}

#[test]
fn three_way_fanout_reads_each_blob_once() {
    let source = Registry::start();
    let (a, b, c) = (Registry::start(), Registry::start(), Registry::start());
    let (image, index) = seed(&source);
    let blobs = blob_digests(&image, &index);
    let dir = TempDir::new().unwrap();
    let destinations = vec![
        format!("{}/mirror/one", a.host()),
        format!("{}/second/one", a.host()),
        format!("{}/mirror/one", b.host()),
        format!("{}/mirror/one", c.host()),
    ];
    let rules = write_rules(&dir, &source.host(), &destinations);
    let rules = rules.to_str().unwrap();
    let syncer = Syncer::new();

    let plan = syncer
        .run(&["plan", "--format", "json", rules])
        .expect_code(0);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let mut planned = (0, 0);
    for op in plan["operations"].as_array().unwrap() {
        let destination = op["destination"].as_str().unwrap();
        let copy = op["blobs"]["copy"].as_u64().unwrap();
        let mount = op["blobs"]["mount"].as_u64().unwrap();
        if destination.contains("/second/") {
            assert_eq!(copy, 0, "plan copies into {destination}: {op}");
            planned.1 += mount;
        } else {
            assert_eq!(mount, 0, "plan mounts into {destination}: {op}");
            planned.0 += copy;
        }
    }
    assert_eq!(planned.0, 3 * blobs.len() as u64, "blobs planned for copy");
    assert_eq!(planned.1, blobs.len() as u64, "blobs planned for mount");
    let gets_before_apply = source.count_requests("GET", "/blobs/sha256:");
    assert_eq!(gets_before_apply, 0, "plan read blob content");

    let report_path = dir.path().join("report.json");
    let apply = syncer
        .run(&[
            "apply",
            "--auto-approve",
            "--report",
            report_path.to_str().unwrap(),
            rules,
        ])
        .expect_code(0);
    assert!(
        apply
            .stdout
            .contains("Apply complete: 8 created, 0 updated, 0 unchanged, 0 failed."),
        "{}",
        apply.stdout
    );

    for digest in &blobs {
        let gets = source.count_requests("GET", &format!("/blobs/{digest}"));
        assert_eq!(gets, 1, "source GETs of {digest}");
    }
    assert_eq!(
        source.count_requests("GET", "/blobs/sha256:"),
        blobs.len(),
        "source blob GETs in all"
    );

    for (name, registry) in [("a", &a), ("b", &b), ("c", &c)] {
        let uploads = count_with_status(registry, "PUT", "/blobs/uploads/", 201);
        assert_eq!(uploads, blobs.len(), "blob uploads into {name}");
    }
    let mounted = count_with_status(&a, "POST", "mount=", 201);
    assert_eq!(mounted, blobs.len(), "mounts answered 201 in a");
    assert_eq!(
        a.count_requests("POST", "/second/one/blobs/uploads/?mount="),
        blobs.len()
    );
    for registry in [&b, &c] {
        assert_eq!(
            registry.count_requests("POST", "mount="),
            0,
            "mount elsewhere"
        );
    }

    let source_pusher = Pusher::new(&source);
    for (registry, repo) in [
        (&a, "mirror/one"),
        (&a, "second/one"),
        (&b, "mirror/one"),
        (&c, "mirror/one"),
    ] {
        let pusher = Pusher::new(registry);
        for tag in ["v1", "v2"] {
            assert_eq!(
                pusher.manifest_digest(repo, tag),
                source_pusher.manifest_digest(SOURCE_REPO, tag),
                "{}/{repo}:{tag}",
                registry.host()
            );
        }
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["blobs_copied"], blobs.len());
    assert_eq!(report["blobs_mounted"], blobs.len());
    assert_eq!(report["failed"], 0);
}

#[test]
fn failed_destination_retries_alone() {
    let source = Registry::start();
    let (a, b, c) = (Registry::start(), Registry::start(), Registry::start());
    // The proxy numbers upload requests to c and fails the second (the
    // first blob's PUT, after its POST) with a 5xx, once, before c sees it.
    let proxy = FaultProxy::start(
        &c.base_url(),
        Faults {
            server_error_every: Some(2),
            server_error_limit: Some(1),
            fault_path_contains: Some("/blobs/uploads/".into()),
            ..Faults::default()
        },
    );
    let (image, index) = seed(&source);
    let blobs = blob_digests(&image, &index);
    let largest = image.layers[0].digest.clone();
    let dir = TempDir::new().unwrap();
    let destinations = vec![
        format!("{}/mirror/one", a.host()),
        format!("{}/mirror/one", b.host()),
        format!("{}/mirror/one", proxy.host()),
    ];
    let rules = write_rules(&dir, &source.host(), &destinations);

    // One blob job at a time, largest first: the failed PUT is the 3 MiB
    // layer's, cut off while its body streams.
    let apply = Syncer::new()
        .run(&[
            "apply",
            "--auto-approve",
            "--jobs",
            "1",
            rules.to_str().unwrap(),
        ])
        .expect_code(0);
    assert!(apply.stdout.contains("0 failed."), "{}", apply.stdout);

    let faulted: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| matches!(r.fault, Some(FaultKind::ServerError(_))))
        .collect();
    assert_eq!(faulted.len(), 1, "{faulted:?}");
    assert_eq!(faulted[0].method, "PUT", "{faulted:?}");
    assert!(
        faulted[0]
            .path_and_query
            .contains(&largest.replace(':', "%3A")),
        "{faulted:?}"
    );

    for (name, registry) in [("a", &a), ("b", &b), ("c", &c)] {
        let uploads = count_with_status(registry, "PUT", "/blobs/uploads/", 201);
        assert_eq!(uploads, blobs.len(), "blob uploads into {name}");
    }
    assert_eq!(
        source.count_requests("GET", &format!("/blobs/{largest}")),
        2,
        "the failed blob is read again for c alone"
    );
    assert_eq!(
        source.count_requests("GET", "/blobs/sha256:"),
        blobs.len() + 1,
        "source blob GETs in all"
    );
    let source_pusher = Pusher::new(&source);
    for registry in [&a, &b, &c] {
        let pusher = Pusher::new(registry);
        assert_eq!(
            pusher.manifest_digest("mirror/one", "v1"),
            source_pusher.manifest_digest(SOURCE_REPO, "v1"),
            "{}",
            registry.host()
        );
        assert!(pusher.blob_exists("mirror/one", &largest));
    }
}
