//! Seeds the benchmark corpus into a registry with testkit's real image
//! builders. Built by `bench/run.sh`:
//!
//! ```text
//! bench-seed corpus  BASE_URL SMALL INDEXES  # small/s-N:v1 images, multi/m-N:v1 indexes
//! bench-seed large   BASE_URL SIZE_MIB       # large/blob:v1; prints the layer digest
//! bench-seed catalog BASE_URL REPOS TAGS     # cat/rNNNN with tags t1..tTAGS
//! ```
//!
//! `BASE_URL` is `http://127.0.0.1:PORT`. Pushes run on a few threads.

use std::sync::atomic::{AtomicUsize, Ordering};

use testkit::image::{oci_image, random_layer, sample_image, sample_index, Platform, Pusher};

/// Threads pushing at once; the registry, not the client, is the limit.
const THREADS: usize = 6;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage())
    };
    match args.first().map(String::as_str) {
        Some("corpus") => corpus(base_url(&args), number(2), number(3)),
        Some("large") => large(base_url(&args), number(2)),
        Some("catalog") => catalog(base_url(&args), number(2), number(3)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: bench-seed corpus|large|catalog BASE_URL N [M]");
    std::process::exit(2);
}

fn base_url(args: &[String]) -> &str {
    args.get(1).map(String::as_str).unwrap_or_else(|| usage())
}

/// Runs `push(i)` for every `i` in `0..count` on `THREADS` threads.
fn in_parallel(count: usize, push: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                push(i);
            });
        }
    });
}

fn corpus(base_url: &str, small: usize, indexes: usize) {
    in_parallel(small, |i| {
        let pusher = Pusher::for_url(base_url);
        pusher.push_image(
            &format!("small/s-{i}"),
            "v1",
            &sample_image(&format!("s-{i}")),
        );
    });
    in_parallel(indexes, |i| {
        let pusher = Pusher::for_url(base_url);
        pusher.push_index(
            &format!("multi/m-{i}"),
            "v1",
            &sample_index(&format!("m-{i}")),
        );
    });
}

fn large(base_url: &str, size_mib: usize) {
    let layer = random_layer(size_mib << 20, 200);
    let digest = layer.digest.clone();
    let image = oci_image(vec![layer], Platform::linux("amd64"));
    Pusher::for_url(base_url).push_image("large/blob", "v1", &image);
    println!("{digest}");
}

fn catalog(base_url: &str, repos: usize, tags: usize) {
    let image = sample_image("catalog");
    in_parallel(repos, |i| {
        let pusher = Pusher::for_url(base_url);
        let repo = format!("cat/r{i:04}");
        for blob in image.blobs() {
            pusher.push_blob(&repo, blob);
        }
        for tag in 1..=tags {
            pusher.push_manifest(
                &repo,
                &format!("t{tag}"),
                &image.media_type,
                &image.manifest,
            );
        }
    });
}
