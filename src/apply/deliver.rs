//! Blob delivery: one job per source blob, which uploads it to one
//! repository per destination registry (all registries from a single
//! source read) and mounts it into the other repositories of each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tracing::{debug, info};

use super::blob::{copy_blob, BlobSource, UploadTarget};
use super::progress::Progress;
use crate::oci::{Descriptor, Digest, Repository};
use crate::plan::{ImageTree, Operation, Plan};
use crate::registry::{Access, Registries, RegistryError, UploadStart};

/// A destination repository: registry host and repository path.
pub type RepoKey = (String, Repository);

/// Outcome of delivering one blob to one destination repository.
pub type Deliveries = HashMap<(RepoKey, Digest), Result<(), String>>;

/// One source blob, every destination repository that needs it, and the
/// operations (indexes into the list of changes) waiting for it.
pub struct BlobJob {
    pub source_registry: String,
    pub source_repository: Repository,
    pub blob: Descriptor,
    pub destinations: BTreeSet<RepoKey>,
    pub operations: Vec<usize>,
}

/// Blob counts and bytes of a run.
#[derive(Default)]
pub struct Totals {
    pub copied: usize,
    pub mounted: usize,
    pub present: usize,
    pub bytes: u64,
}

/// Shared state of a run that every blob job uses.
pub struct Context<'a> {
    pub plan: &'a Plan,
    pub registries: &'a Registries,
    pub attempts: u32,
    pub totals: &'a Mutex<Totals>,
    pub progress: &'a Progress,
}

/// Groups the blobs of every change by source blob, so each is read once.
/// `trees[i]` is the source tree of `changes[i]`, when it could be fetched.
pub fn blob_jobs(changes: &[&Operation], trees: &[Option<Arc<ImageTree>>]) -> Vec<BlobJob> {
    let mut jobs: BTreeMap<(String, Digest), BlobJob> = BTreeMap::new();
    for (index, (op, tree)) in changes.iter().zip(trees).enumerate() {
        let Some(tree) = tree else {
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
                    operations: Vec::new(),
                });
            job.destinations.insert((
                op.destination.registry.clone(),
                op.destination.repository.clone(),
            ));
            if job.operations.last() != Some(&index) {
                job.operations.push(index);
            }
        }
    }
    let mut jobs: Vec<BlobJob> = jobs.into_values().collect();
    // Largest first, so a big layer does not start last and leave a tail.
    jobs.sort_by_key(|job| std::cmp::Reverse(job.blob.size));
    jobs
}

/// Bytes and blobs the jobs will read from sources, counting a blob the
/// plan saw present in all of its destination repositories as no work.
pub fn work_totals(jobs: &[BlobJob], plan: &Plan) -> (u64, usize) {
    let mut bytes = 0;
    let mut blobs = 0;
    for job in jobs {
        let all_present = job.destinations.iter().all(|(registry, repository)| {
            plan.cache
                .blob_present(registry, repository, &job.blob.digest)
                == Some(true)
        });
        if !all_present {
            bytes += job.blob.size;
            blobs += 1;
        }
    }
    (bytes, blobs)
}

/// Delivers one blob to every destination repository: present ones are
/// left alone, one repository per registry receives the upload, and the
/// rest mount from a repository of the same registry that contains it.
pub async fn run_blob_job(job: &BlobJob, context: &Context<'_>) -> Deliveries {
    let digest = &job.blob.digest;
    let mut deliveries = Deliveries::new();
    let mut holders: HashMap<String, Repository> = HashMap::new();
    let mut missing: BTreeMap<String, Vec<Repository>> = BTreeMap::new();
    for (registry, repository) in &job.destinations {
        let key = ((registry.clone(), repository.clone()), digest.clone());
        match is_present(context, registry, repository, digest).await {
            Ok(true) => {
                lock(context.totals).present += 1;
                holders
                    .entry(registry.clone())
                    .or_insert_with(|| repository.clone());
                deliveries.insert(key, Ok(()));
            }
            Ok(false) => missing
                .entry(registry.clone())
                .or_default()
                .push(repository.clone()),
            Err(error) => {
                deliveries.insert(key, Err(error.to_string()));
            }
        }
    }
    let uploads = upload_targets(job, context, &holders, &mut missing, &mut deliveries);
    if !uploads.is_empty() {
        upload(job, context, &uploads, &mut deliveries, &mut holders).await;
    }
    for (registry, repositories) in missing {
        for repository in repositories {
            let holder = holders.get(&registry);
            let outcome = mount(job, context, &registry, &repository, holder).await;
            deliveries.insert(((registry.clone(), repository), digest.clone()), outcome);
        }
    }
    deliveries
}

/// Takes one repository out of `missing` for each registry that contains
/// the blob in no repository yet: those receive the upload, the rest mount.
fn upload_targets(
    job: &BlobJob,
    context: &Context<'_>,
    holders: &HashMap<String, Repository>,
    missing: &mut BTreeMap<String, Vec<Repository>>,
    deliveries: &mut Deliveries,
) -> Vec<UploadTarget> {
    let mut uploads = Vec::new();
    for (registry, repositories) in missing.iter_mut() {
        if holders.contains_key(registry) || repositories.is_empty() {
            continue;
        }
        let repository = repositories.remove(0);
        match context.registries.client(registry) {
            Ok(client) => uploads.push(UploadTarget { client, repository }),
            Err(error) => {
                deliveries.insert(
                    ((registry.clone(), repository), job.blob.digest.clone()),
                    Err(error.to_string()),
                );
            }
        }
    }
    uploads
}

/// Streams the blob from its source to every target at once.
async fn upload(
    job: &BlobJob,
    context: &Context<'_>,
    targets: &[UploadTarget],
    deliveries: &mut Deliveries,
    holders: &mut HashMap<String, Repository>,
) {
    let digest = &job.blob.digest;
    let results = match context.registries.client(&job.source_registry) {
        Ok(source) => {
            debug!(%digest, size = job.blob.size, destinations = targets.len(), "copying blob");
            let source = BlobSource {
                client: &source,
                repository: &job.source_repository,
            };
            let progress = context.progress.start_blob(digest, job.blob.size);
            copy_blob(&source, &job.blob, targets, context.attempts, &progress).await
        }
        Err(error) => {
            let error = Arc::new(error);
            targets.iter().map(|_| Err(error.clone())).collect()
        }
    };
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
        let mut totals = lock(context.totals);
        totals.copied += 1;
        totals.bytes += job.blob.size;
    }
}

/// Mounts the blob from `holder` in the same registry. Only 201 means
/// mounted: without a holder, or when the registry returns 202 with an
/// upload session instead, the blob is uploaded.
async fn mount(
    job: &BlobJob,
    context: &Context<'_>,
    registry: &str,
    repository: &Repository,
    holder: Option<&Repository>,
) -> Result<(), String> {
    let digest = &job.blob.digest;
    let client = context
        .registries
        .client(registry)
        .map_err(|e| e.to_string())?;
    if let Some(from) = holder {
        match client.start_upload(repository, digest, Some(from)).await {
            Ok(UploadStart::Mounted) => {
                debug!(%digest, %repository, %from, "mounted blob");
                lock(context.totals).mounted += 1;
                return Ok(());
            }
            Ok(UploadStart::Session(_)) => {
                info!(%digest, %repository, %from, "mount declined, uploading instead");
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    let source = context
        .registries
        .client(&job.source_registry)
        .map_err(|e| e.to_string())?;
    let source = BlobSource {
        client: &source,
        repository: &job.source_repository,
    };
    let target = UploadTarget {
        client,
        repository: repository.clone(),
    };
    let progress = context.progress.start_blob(digest, job.blob.size);
    let mut results = copy_blob(&source, &job.blob, &[target], context.attempts, &progress).await;
    let result = results.pop().unwrap_or(Ok(()));
    if result.is_ok() {
        let mut totals = lock(context.totals);
        totals.copied += 1;
        totals.bytes += job.blob.size;
    }
    result.map_err(|e| e.to_string())
}

/// Checks whether the destination repository links the blob: the plan's
/// observation when it made one, else a HEAD request.
async fn is_present(
    context: &Context<'_>,
    registry: &str,
    repository: &Repository,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    let cached = context
        .plan
        .cache
        .blob_present(registry, repository, digest);
    if let Some(present) = cached {
        return Ok(present);
    }
    context
        .registries
        .client(registry)?
        .blob_exists_as(repository, digest, Access::Push)
        .await
}

fn lock(totals: &Mutex<Totals>) -> std::sync::MutexGuard<'_, Totals> {
    totals.lock().expect("totals lock poisoned")
}
