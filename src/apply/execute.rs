//! Scheduling of an apply: blob jobs largest first under a global limit,
//! then each operation's manifests once all its blobs are in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{stream, StreamExt};
use tokio::sync::Semaphore;
use tracing::{debug, info};

use super::blob::{copy_blob, UploadTarget};
use super::{Outcome, Report};
use crate::oci::{Descriptor, Digest, Repository, Target};
use crate::plan::{fetch_tree, rewritten_tree, Action, ImageTree, Operation, Plan};
use crate::registry::{Registries, RegistryError, UploadStart};
use crate::rules::PlatformSpec;

/// Knobs for an apply.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Blob copies and manifest pushes in flight at once.
    pub jobs: usize,
    /// Attempts per blob copy, the first included.
    pub blob_attempts: u32,
}

/// A destination repository: registry host and repository path.
type RepoKey = (String, Repository);

/// One source blob and every destination repository that needs it.
struct BlobJob {
    source_registry: String,
    source_repository: Repository,
    blob: Descriptor,
    destinations: BTreeSet<RepoKey>,
}

/// Outcome of delivering one blob to one destination repository.
type Deliveries = HashMap<(RepoKey, Digest), Result<(), String>>;

#[derive(Default)]
struct Totals {
    copied: usize,
    mounted: usize,
    present: usize,
    bytes: u64,
}

/// Applies every change in `plan`. A failed operation does not stop the
/// others; the report lists each failure.
pub async fn execute(plan: &Plan, registries: &Registries, options: &ApplyOptions) -> Report {
    let started = Instant::now();
    let mut report = Report {
        unchanged: plan.summary.unchanged,
        ..Report::default()
    };
    let (deletions, changes): (Vec<&Operation>, Vec<&Operation>) =
        plan.changes().partition(|op| op.action == Action::Delete);
    let (trees, tree_errors) = load_trees(&changes, plan, registries, options.jobs).await;
    let jobs = blob_jobs(&changes, &trees);
    let totals = Mutex::new(Totals::default());
    let deliveries = run_blob_jobs(jobs, plan, registries, options, &totals).await;
    let outcomes: Vec<Outcome> = stream::iter(changes.iter())
        .map(|op| finish_operation(op, &trees, &tree_errors, &deliveries, registries))
        .buffered(options.jobs.max(1))
        .collect()
        .await;
    for (op, outcome) in changes.into_iter().zip(outcomes) {
        report.record(op.clone(), outcome);
    }
    // Deletions run last, so a failed copy never leaves a repository with
    // fewer tags than before the apply.
    for (op, outcome) in delete_tags(&deletions, registries).await {
        report.record(op.clone(), outcome);
    }
    let totals = totals.into_inner().expect("totals lock poisoned");
    report.blobs_copied = totals.copied;
    report.blobs_mounted = totals.mounted;
    report.blobs_present = totals.present;
    report.bytes_copied = totals.bytes;
    report.set_duration(started.elapsed());
    report
}

type Trees = HashMap<(String, Digest), Arc<ImageTree>>;

/// Fetches (or takes from the plan's cache) the tree of every source.
async fn load_trees(
    changes: &[&Operation],
    plan: &Plan,
    registries: &Registries,
    jobs: usize,
) -> (Trees, HashMap<(String, Digest), String>) {
    let wanted: BTreeMap<(String, Digest), &Operation> = changes
        .iter()
        .filter_map(|op| {
            Some((
                (op.source.registry.clone(), op.content_digest()?.clone()),
                *op,
            ))
        })
        .collect();
    let results: Vec<_> = stream::iter(wanted)
        .map(|((registry, digest), op)| async move {
            let tree = source_tree(op, registries, &plan.cache).await;
            ((registry, digest), tree)
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    let mut trees = HashMap::new();
    let mut errors = HashMap::new();
    for (key, result) in results {
        match result {
            Ok(tree) => {
                trees.insert(key, tree);
            }
            Err(error) => {
                errors.insert(key, error.to_string());
            }
        }
    }
    (trees, errors)
}

/// Fetches the tree an operation pushes: the source's, or for a rewritten
/// index, the index rebuilt from the source with the plan's platforms. A
/// plan loaded from a file has an empty cache, so the rebuild must give
/// the digest the plan recorded.
async fn source_tree(
    op: &Operation,
    registries: &Registries,
    cache: &crate::plan::TreeCache,
) -> Result<Arc<ImageTree>, RegistryError> {
    let client = registries.client(&op.source.registry)?;
    let repository = &op.source.repository;
    let (Some(source_digest), Some(rewritten)) = (&op.source_digest, &op.rewritten_digest) else {
        let digest = op.content_digest().expect("operation has a digest");
        return fetch_tree(&client, repository, digest, cache).await;
    };
    if let Some(tree) = cache.tree(client.host(), rewritten) {
        return Ok(tree);
    }
    let platforms: Vec<PlatformSpec> = op
        .platforms
        .iter()
        .filter_map(|p| PlatformSpec::parse(p).ok())
        .collect();
    let source = client
        .get_manifest(repository, &Target::Digest(source_digest.clone()))
        .await?;
    let tree = rewritten_tree(&client, repository, &source, &platforms, cache).await?;
    if &tree.root.digest != rewritten {
        return Err(RegistryError::DigestMismatch {
            expected: rewritten.clone(),
            actual: tree.root.digest.clone(),
        });
    }
    Ok(tree)
}

/// Deletes the manifest behind each deletion, once per digest, since a
/// registry deletes by digest and so removes every tag pointing at it.
async fn delete_tags<'a>(
    deletions: &[&'a Operation],
    registries: &Registries,
) -> Vec<(&'a Operation, Outcome)> {
    let mut results: HashMap<(String, Repository, Digest), Outcome> = HashMap::new();
    let mut outcomes = Vec::new();
    for op in deletions {
        let Some(digest) = &op.destination_digest else {
            outcomes.push((
                *op,
                Outcome::Failed("plan has no digest for this deletion".into()),
            ));
            continue;
        };
        let destination = &op.destination;
        let key = (
            destination.registry.clone(),
            destination.repository.clone(),
            digest.clone(),
        );
        if let Some(outcome) = results.get(&key) {
            outcomes.push((*op, outcome.clone()));
            continue;
        }
        let outcome = delete_manifest(
            registries,
            &destination.registry,
            &destination.repository,
            digest,
        )
        .await;
        results.insert(key, outcome.clone());
        outcomes.push((*op, outcome));
    }
    outcomes
}

async fn delete_manifest(
    registries: &Registries,
    registry: &str,
    repository: &Repository,
    digest: &Digest,
) -> Outcome {
    let deleted = async {
        registries
            .client(registry)?
            .delete_manifest(repository, digest)
            .await
    }
    .await;
    match deleted {
        Ok(()) => {
            info!(%registry, %repository, %digest, "deleted manifest");
            Outcome::Done
        }
        // Docker Distribution 2.8 returns 405 with code UNSUPPORTED unless
        // `storage.delete.enabled` is set.
        Err(e) if e.status() == Some(reqwest::StatusCode::METHOD_NOT_ALLOWED) || e.has_code("UNSUPPORTED") => {
            Outcome::Failed(format!("registry {registry} does not support deleting manifests ({e}); enable deletes on the registry or set `prune: false`"))
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Groups the blobs of every change by source blob, so each is read once.
fn blob_jobs(changes: &[&Operation], trees: &Trees) -> Vec<BlobJob> {
    let mut jobs: BTreeMap<(String, Digest), BlobJob> = BTreeMap::new();
    for op in changes {
        let Some(tree) = op
            .content_digest()
            .and_then(|d| trees.get(&(op.source.registry.clone(), d.clone())))
        else {
            continue;
        };
        for blob in &tree.blobs {
            let job = jobs
                .entry((op.source.registry.clone(), blob.digest.clone()))
                .or_insert_with(|| BlobJob {
                    source_registry: op.source.registry.clone(),
                    source_repository: op.source.repository.clone(),
                    blob: blob.clone(),
                    destinations: BTreeSet::new(),
                });
            job.destinations.insert((
                op.destination.registry.clone(),
                op.destination.repository.clone(),
            ));
        }
    }
    let mut jobs: Vec<BlobJob> = jobs.into_values().collect();
    // Largest first, so a big layer does not start last and leave a tail.
    jobs.sort_by_key(|job| std::cmp::Reverse(job.blob.size));
    jobs
}

async fn run_blob_jobs(
    jobs: Vec<BlobJob>,
    plan: &Plan,
    registries: &Registries,
    options: &ApplyOptions,
    totals: &Mutex<Totals>,
) -> Deliveries {
    let limit = Arc::new(Semaphore::new(options.jobs.max(1)));
    let results: Vec<Deliveries> = stream::iter(jobs)
        .map(|job| {
            let limit = limit.clone();
            async move {
                let _permit = limit
                    .acquire_owned()
                    .await
                    .expect("semaphore is never closed");
                run_blob_job(&job, plan, registries, options, totals).await
            }
        })
        .buffer_unordered(options.jobs.max(1))
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// Delivers one blob to every destination repository: present ones are
/// left alone, one repository per registry receives the upload (all
/// registries from a single source read), and the rest mount from it.
async fn run_blob_job(
    job: &BlobJob,
    plan: &Plan,
    registries: &Registries,
    options: &ApplyOptions,
    totals: &Mutex<Totals>,
) -> Deliveries {
    let digest = &job.blob.digest;
    let mut deliveries = Deliveries::new();
    let mut holders: HashMap<String, Repository> = HashMap::new();
    let mut missing: BTreeMap<String, Vec<Repository>> = BTreeMap::new();
    for (registry, repository) in &job.destinations {
        match is_present(plan, registries, registry, repository, digest).await {
            Ok(true) => {
                totals.lock().expect("totals lock poisoned").present += 1;
                holders
                    .entry(registry.clone())
                    .or_insert_with(|| repository.clone());
                deliveries.insert(
                    ((registry.clone(), repository.clone()), digest.clone()),
                    Ok(()),
                );
            }
            Ok(false) => missing
                .entry(registry.clone())
                .or_default()
                .push(repository.clone()),
            Err(error) => {
                deliveries.insert(
                    ((registry.clone(), repository.clone()), digest.clone()),
                    Err(error.to_string()),
                );
            }
        }
    }
    let mut uploads = Vec::new();
    for (registry, repositories) in &mut missing {
        if holders.contains_key(registry) || repositories.is_empty() {
            continue;
        }
        let repository = repositories.remove(0);
        match registries.client(registry) {
            Ok(client) => uploads.push(UploadTarget { client, repository }),
            Err(error) => {
                deliveries.insert(
                    ((registry.clone(), repository), digest.clone()),
                    Err(error.to_string()),
                );
            }
        }
    }
    if !uploads.is_empty() {
        upload(
            job,
            registries,
            &uploads,
            options,
            totals,
            &mut deliveries,
            &mut holders,
        )
        .await;
    }
    for (registry, repositories) in missing {
        for repository in repositories {
            let outcome = mount(
                job,
                registries,
                &registry,
                &repository,
                holders.get(&registry),
                options,
                totals,
            )
            .await;
            deliveries.insert(((registry.clone(), repository), digest.clone()), outcome);
        }
    }
    deliveries
}

async fn upload(
    job: &BlobJob,
    registries: &Registries,
    targets: &[UploadTarget],
    options: &ApplyOptions,
    totals: &Mutex<Totals>,
    deliveries: &mut Deliveries,
    holders: &mut HashMap<String, Repository>,
) {
    let digest = &job.blob.digest;
    let source = match registries.client(&job.source_registry) {
        Ok(source) => source,
        Err(error) => {
            for target in targets {
                deliveries.insert(
                    (
                        (target.client.host().to_string(), target.repository.clone()),
                        digest.clone(),
                    ),
                    Err(error.to_string()),
                );
            }
            return;
        }
    };
    debug!(%digest, size = job.blob.size, destinations = targets.len(), "copying blob");
    let results = copy_blob(
        &source,
        &job.source_repository,
        &job.blob,
        targets,
        options.blob_attempts,
    )
    .await;
    let mut copied = false;
    for (target, result) in targets.iter().zip(results) {
        let host = target.client.host().to_string();
        if result.is_ok() {
            copied = true;
            holders.insert(host.clone(), target.repository.clone());
        }
        deliveries.insert(
            ((host, target.repository.clone()), digest.clone()),
            result.map_err(|e| e.to_string()),
        );
    }
    if copied {
        let mut totals = totals.lock().expect("totals lock poisoned");
        totals.copied += 1;
        totals.bytes += job.blob.size;
    }
}

/// Mounts the blob from `holder` in the same registry; without a holder,
/// or when the registry returns 202 instead of mounting, uploads it.
async fn mount(
    job: &BlobJob,
    registries: &Registries,
    registry: &str,
    repository: &Repository,
    holder: Option<&Repository>,
    options: &ApplyOptions,
    totals: &Mutex<Totals>,
) -> Result<(), String> {
    let client = registries.client(registry).map_err(|e| e.to_string())?;
    if let Some(from) = holder {
        match client
            .start_upload(repository, &job.blob.digest, Some(from))
            .await
        {
            Ok(UploadStart::Mounted) => {
                debug!(digest = %job.blob.digest, %repository, %from, "mounted blob");
                totals.lock().expect("totals lock poisoned").mounted += 1;
                return Ok(());
            }
            Ok(UploadStart::Session(_)) => {
                info!(digest = %job.blob.digest, %repository, "mount declined, uploading instead")
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    let source = registries
        .client(&job.source_registry)
        .map_err(|e| e.to_string())?;
    let target = UploadTarget {
        client,
        repository: repository.clone(),
    };
    let mut results = copy_blob(
        &source,
        &job.source_repository,
        &job.blob,
        &[target],
        options.blob_attempts,
    )
    .await;
    let result = results.pop().unwrap_or(Ok(()));
    if result.is_ok() {
        let mut totals = totals.lock().expect("totals lock poisoned");
        totals.copied += 1;
        totals.bytes += job.blob.size;
    }
    result.map_err(|e| e.to_string())
}

/// Whether the destination contains the blob: the plan's observation when it
/// made one, else a HEAD request.
async fn is_present(
    plan: &Plan,
    registries: &Registries,
    registry: &str,
    repository: &Repository,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    if let Some(present) = plan.cache.blob_present(registry, repository, digest) {
        return Ok(present);
    }
    registries
        .client(registry)?
        .blob_exists(repository, digest)
        .await
}

/// Pushes an operation's child manifests by digest, then its root under
/// the destination tag, once every blob it needs is delivered.
async fn finish_operation(
    op: &Operation,
    trees: &Trees,
    tree_errors: &HashMap<(String, Digest), String>,
    deliveries: &Deliveries,
    registries: &Registries,
) -> Outcome {
    let Some(digest) = op.content_digest().cloned() else {
        return Outcome::Failed("plan has no source digest for this operation".into());
    };
    let key = (op.source.registry.clone(), digest);
    let Some(tree) = trees.get(&key) else {
        let error = tree_errors
            .get(&key)
            .cloned()
            .unwrap_or_else(|| "source manifest not fetched".into());
        return Outcome::Failed(error);
    };
    let dest_key = (
        op.destination.registry.clone(),
        op.destination.repository.clone(),
    );
    for blob in &tree.blobs {
        if let Some(Err(error)) = deliveries.get(&(dest_key.clone(), blob.digest.clone())) {
            return Outcome::Failed(format!("blob {}: {error}", blob.digest));
        }
    }
    match push_manifests(op, tree, registries).await {
        Ok(()) => {
            info!(destination = %op.destination, digest = %tree.root.digest, "pushed");
            Outcome::Done
        }
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

async fn push_manifests(
    op: &Operation,
    tree: &ImageTree,
    registries: &Registries,
) -> Result<(), RegistryError> {
    let client = registries.client(&op.destination.registry)?;
    let repository = &op.destination.repository;
    for child in &tree.children {
        client
            .put_manifest(repository, &Target::Digest(child.digest.clone()), child)
            .await?;
    }
    client
        .put_manifest(repository, &op.destination.target, &tree.root)
        .await
}
