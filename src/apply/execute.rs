//! Scheduling of an apply: blob jobs largest first under the global
//! `--jobs` limit, and each operation's manifests as soon as its own blobs
//! are in place, children before their index.

use std::collections::{BTreeSet, HashMap, VecDeque};
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
use crate::plan::{fetch_tree, ImageTree, Operation, Plan};
use crate::registry::{Registries, RegistryError};

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
    let changes: Vec<&Operation> = plan.changes().collect();
    let (trees, tree_errors) = load_trees(&changes, plan, registries, options.jobs).await;
    let sources: Vec<Result<Arc<ImageTree>, String>> = changes
        .iter()
        .map(|op| source_tree(op, &trees, &tree_errors))
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

/// Returns the source tree of `op`, or why there is none.
fn source_tree(
    op: &Operation,
    trees: &Trees,
    tree_errors: &TreeErrors,
) -> Result<Arc<ImageTree>, String> {
    let Some(digest) = op.source_digest.clone() else {
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
    let wanted: BTreeSet<(String, Repository, Digest)> = changes
        .iter()
        .filter_map(|op| {
            Some((
                op.source.registry.clone(),
                op.source.repository.clone(),
                op.source_digest.clone()?,
            ))
        })
        .collect();
    let results: Vec<_> = stream::iter(wanted)
        .map(|(registry, repository, digest)| async move {
            let tree = async {
                fetch_tree(
                    &*registries.client(&registry)?,
                    &repository,
                    &digest,
                    &plan.cache,
                )
                .await
            }
            .await;
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
