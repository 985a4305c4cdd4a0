//! Scheduling of an apply: blob jobs largest first under the global
//! `--jobs` limit, and each operation's manifests as soon as its own blobs
//! are in place, children before their index.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::{stream, StreamExt};
use tracing::info;

use super::deliver::{blob_jobs, run_blob_job, work_totals, BlobJob, Context, Deliveries, Totals};
use super::progress::Progress;
use super::{Outcome, Report};
use crate::oci::{Digest, Repository, Target};
use crate::plan::{fetch_tree, rewritten_tree, Action, ImageTree, Operation, Plan, TreeCache};
use crate::registry::{Access, Registries, RegistryError};
use crate::rules::PlatformSpec;

/// Knobs for an apply.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Blob jobs in flight at once, and manifest pushes in flight at once.
    pub jobs: usize,
    /// Attempts per blob copy, the first included.
    pub blob_attempts: u32,
}

/// Applies every change in `plan`. A failed operation does not stop the
/// others; the report lists each failure with its error.
pub async fn execute(
    plan: &Plan,
    registries: &Registries,
    options: &ApplyOptions,
    progress: &Progress,
) -> Report {
    let started = Instant::now();
    let mut report = Report {
        unchanged: plan.summary.unchanged,
        ..Report::default()
    };
    let (deletions, changes): (Vec<&Operation>, Vec<&Operation>) =
        plan.changes().partition(|op| op.action == Action::Delete);
    let (trees, tree_errors) = load_trees(&changes, plan, registries, options.jobs).await;
    let sources: Vec<Result<Arc<ImageTree>, String>> = changes
        .iter()
        .map(|op| tree_of(op, &trees, &tree_errors))
        .collect();
    let ready_trees: Vec<Option<Arc<ImageTree>>> =
        sources.iter().map(|s| s.as_ref().ok().cloned()).collect();
    let jobs = blob_jobs(&changes, &ready_trees);
    let (bytes, blobs) = work_totals(&jobs, plan);
    progress.set_totals(bytes, blobs, changes.len());
    let totals = Mutex::new(Totals::default());
    let context = Context {
        plan,
        registries,
        attempts: options.blob_attempts,
        totals: &totals,
        progress,
    };
    let pipeline = Pipeline {
        changes: &changes,
        sources: &sources,
        registries,
        progress,
        limit: options.jobs.max(1),
    };
    let outcomes = pipeline.run(jobs, &context).await;
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
type TreeErrors = HashMap<(String, Digest), String>;

/// Returns the tree `op` pushes, or why there is none.
fn tree_of(
    op: &Operation,
    trees: &Trees,
    tree_errors: &TreeErrors,
) -> Result<Arc<ImageTree>, String> {
    let Some(digest) = op.content_digest().cloned() else {
        return Err("plan has no source digest for this operation".into());
    };
    let key = (op.source.registry.clone(), digest);
    match trees.get(&key) {
        Some(tree) => Ok(tree.clone()),
        None => Err(tree_errors
            .get(&key)
            .cloned()
            .unwrap_or_else(|| "source manifest not fetched".into())),
    }
}

/// Fetches (or takes from the plan's cache) the tree of every source.
async fn load_trees(
    changes: &[&Operation],
    plan: &Plan,
    registries: &Registries,
    jobs: usize,
) -> (Trees, TreeErrors) {
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
    cache: &TreeCache,
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
/// Each repository's tags are read again first: a digest that another tag
/// points at by now (pushed since the plan, or by this run) is not deleted.
async fn delete_tags<'a>(
    deletions: &[&'a Operation],
    registries: &Registries,
) -> Vec<(&'a Operation, Outcome)> {
    // Tags each digest may lose, by repository.
    let mut planned: BTreeMap<(String, Repository), BTreeMap<Digest, Vec<String>>> =
        BTreeMap::new();
    for op in deletions {
        if let (Some(digest), Some(tag)) = (&op.destination_digest, op.destination.tag()) {
            planned
                .entry((
                    op.destination.registry.clone(),
                    op.destination.repository.clone(),
                ))
                .or_default()
                .entry(digest.clone())
                .or_default()
                .push(tag.to_string());
        }
    }
    let mut current: HashMap<(String, Repository), Result<TagsByDigest, String>> = HashMap::new();
    for (registry, repository) in planned.keys() {
        let tags = tags_by_digest(registries, registry, repository).await;
        current.insert((registry.clone(), repository.clone()), tags);
    }
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
        let repository_key = (destination.registry.clone(), destination.repository.clone());
        let doomed = planned
            .get(&repository_key)
            .and_then(|digests| digests.get(digest))
            .cloned()
            .unwrap_or_default();
        let outcome = match current.get(&repository_key) {
            Some(Err(error)) => Outcome::Failed(format!(
                "not deleted: reading the repository's tags again failed: {error}"
            )),
            Some(Ok(now)) => {
                let others: Vec<&String> = now
                    .get(digest)
                    .into_iter()
                    .flatten()
                    .filter(|tag| !doomed.contains(tag))
                    .collect();
                if others.is_empty() {
                    delete_manifest(
                        registries,
                        &destination.registry,
                        &destination.repository,
                        digest,
                    )
                    .await
                } else {
                    let names: Vec<&str> = others.iter().map(|t| t.as_str()).collect();
                    Outcome::Failed(format!(
                        "not deleted: {} is now also tagged {}, which the plan keeps; run plan again",
                        digest.short(),
                        names.join(", ")
                    ))
                }
            }
            None => Outcome::Failed("not deleted: the repository's tags were not read".into()),
        };
        results.insert(key, outcome.clone());
        outcomes.push((*op, outcome));
    }
    outcomes
}

/// Tags of one repository, grouped by the digest each points at.
type TagsByDigest = HashMap<Digest, Vec<String>>;

/// Reads a repository's tags and the digest each points at now.
async fn tags_by_digest(
    registries: &Registries,
    registry: &str,
    repository: &Repository,
) -> Result<TagsByDigest, String> {
    let client = registries.client(registry).map_err(|e| e.to_string())?;
    let tags = match client.tags_as(repository, Access::Push).await {
        Ok(tags) => tags,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    let heads: Vec<_> = stream::iter(tags)
        .filter(|tag| std::future::ready(crate::oci::is_valid_tag(tag)))
        .map(|tag| {
            let client = &client;
            async move {
                let head = client
                    .head_manifest_as(repository, &Target::Tag(tag.clone()), Access::Push)
                    .await;
                (tag, head)
            }
        })
        .buffer_unordered(DELETE_CHECK_JOBS)
        .collect()
        .await;
    let mut by_digest = TagsByDigest::new();
    for (tag, head) in heads {
        match head {
            Ok(Some(head)) => by_digest.entry(head.digest).or_default().push(tag),
            Ok(None) => {}
            Err(e) => return Err(format!("{registry}/{repository}:{tag}: {e}")),
        }
    }
    Ok(by_digest)
}

/// HEAD requests in flight while reading tags again before deletions.
const DELETE_CHECK_JOBS: usize = 8;

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

/// Operation index and its outcome, once its manifests are pushed.
type Push<'a> = Pin<Box<dyn Future<Output = (usize, Outcome)> + Send + 'a>>;

/// The event loop of an apply. Blob jobs run under the `--jobs` limit. As
/// each finishes, the operations that were waiting only for it start
/// pushing their manifests, also at most `--jobs` at once. Every wait is
/// on a future, never on a timer.
struct Pipeline<'a> {
    changes: &'a [&'a Operation],
    sources: &'a [Result<Arc<ImageTree>, String>],
    registries: &'a Registries,
    progress: &'a Progress,
    limit: usize,
}

impl<'a> Pipeline<'a> {
    async fn run(&self, jobs: Vec<BlobJob>, context: &Context<'_>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; self.changes.len()];
        let mut waiting = vec![0usize; self.changes.len()];
        for job in &jobs {
            for &index in &job.operations {
                waiting[index] += 1;
            }
        }
        let mut ready: VecDeque<usize> = (0..self.changes.len())
            .filter(|&index| waiting[index] == 0)
            .collect();
        let mut deliveries = Deliveries::new();
        let mut blobs = stream::iter(jobs)
            .map(|job| async move {
                let delivered = run_blob_job(&job, context).await;
                (job.operations, delivered)
            })
            .buffer_unordered(self.limit);
        let mut blobs_done = false;
        let mut pushes: FuturesUnordered<Push<'a>> = FuturesUnordered::new();
        loop {
            while pushes.len() < self.limit {
                let Some(index) = ready.pop_front() else {
                    break;
                };
                match self.start_push(index, &deliveries) {
                    Ok(push) => pushes.push(push),
                    Err(outcome) => self.record(&mut outcomes, index, outcome),
                }
            }
            if blobs_done && pushes.is_empty() && ready.is_empty() {
                break;
            }
            tokio::select! {
                next = blobs.next(), if !blobs_done => match next {
                    Some((operations, delivered)) => {
                        deliveries.extend(delivered);
                        for index in operations {
                            waiting[index] -= 1;
                            if waiting[index] == 0 {
                                ready.push_back(index);
                            }
                        }
                    }
                    None => blobs_done = true,
                },
                Some((index, outcome)) = pushes.next(), if !pushes.is_empty() => {
                    self.record(&mut outcomes, index, outcome);
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every operation gets an outcome"))
            .collect()
    }

    fn record(&self, outcomes: &mut [Option<Outcome>], index: usize, outcome: Outcome) {
        outcomes[index] = Some(outcome);
        self.progress.image_done();
    }

    /// Starts pushing the manifests of operation `index`, whose blob jobs
    /// have all finished, or returns its failure when a blob or the source
    /// tree is missing.
    fn start_push(&self, index: usize, deliveries: &Deliveries) -> Result<Push<'a>, Outcome> {
        let op = self.changes[index];
        let tree = self.sources[index].clone().map_err(Outcome::Failed)?;
        let dest_key = (
            op.destination.registry.clone(),
            op.destination.repository.clone(),
        );
        for blob in &tree.blobs {
            if let Some(Err(error)) = deliveries.get(&(dest_key.clone(), blob.digest.clone())) {
                return Err(Outcome::Failed(format!("blob {}: {error}", blob.digest)));
            }
        }
        let registries = self.registries;
        Ok(Box::pin(async move {
            let outcome = match push_manifests(op, &tree, registries).await {
                Ok(()) => {
                    info!(destination = %op.destination, digest = %tree.root.digest, "pushed");
                    Outcome::Done
                }
                Err(error) => Outcome::Failed(error.to_string()),
            };
            (index, outcome)
        }))
    }
}

/// Pushes an operation's child manifests by digest, then its root under
/// the destination tag.
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
