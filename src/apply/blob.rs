//! Blob copy with single-read fan-out: one source GET streams into the
//! uploads of every destination at once, through bounded channels so the
//! slowest destination sets the pace and memory stays flat.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::progress::BlobProgress;
use crate::oci::{Descriptor, Repository};
use crate::registry::{RegistryClient, RegistryError, UploadStart};

/// Chunks buffered per destination before the reader waits for it.
const CHANNEL_CHUNKS: usize = 8;

/// One repository that should receive a blob by upload.
#[derive(Clone)]
pub struct UploadTarget {
    pub client: Arc<RegistryClient>,
    pub repository: Repository,
}

pub type CopyResult = Result<(), Arc<RegistryError>>;

/// Source of a blob: the client and repository to read it from.
pub struct BlobSource<'a> {
    pub client: &'a RegistryClient,
    pub repository: &'a Repository,
}

/// Uploads `blob` from `source` to every target, reading the source once
/// per attempt. Targets that fail with a transient error are tried again,
/// alone, with a new upload session, up to `attempts` times in all. The
/// targets that succeeded are not sent the blob again.
pub async fn copy_blob(
    source: &BlobSource<'_>,
    blob: &Descriptor,
    targets: &[UploadTarget],
    attempts: u32,
    progress: &BlobProgress,
) -> Vec<CopyResult> {
    let mut results: Vec<CopyResult> = vec![Ok(()); targets.len()];
    let mut pending: Vec<usize> = (0..targets.len()).collect();
    for attempt in 1..=attempts.max(1) {
        if attempt > 1 {
            progress.restart();
        }
        let batch: Vec<UploadTarget> = pending.iter().map(|&i| targets[i].clone()).collect();
        let outcomes = stream_once(source, blob, &batch, progress).await;
        let mut retry = Vec::new();
        for (&index, outcome) in pending.iter().zip(outcomes) {
            results[index] = match outcome {
                Err(error) if error.is_transient() && attempt < attempts => {
                    warn!(digest = %blob.digest, repository = %targets[index].repository, attempt, error = %error, "blob copy failed, retrying with a new upload session");
                    retry.push(index);
                    Err(error)
                }
                Err(error) if attempt > 1 => Err(Arc::new(RegistryError::BlobAttempts {
                    last: error,
                    attempts: attempt,
                })),
                other => other,
            };
        }
        if retry.is_empty() {
            break;
        }
        pending = retry;
    }
    results
}

/// One attempt: open every upload session, stream the source into all of
/// them, and return each target's outcome. A source failure fails every
/// target, and their uploads are aborted before they complete.
async fn stream_once(
    source: &BlobSource<'_>,
    blob: &Descriptor,
    targets: &[UploadTarget],
    progress: &BlobProgress,
) -> Vec<CopyResult> {
    let mut results: Vec<Option<CopyResult>> = vec![None; targets.len()];
    let mut senders = Vec::new();
    let mut uploads = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        match open_upload(target, blob).await {
            Ok((sender, task)) => {
                senders.push((index, sender));
                uploads.push((index, task));
            }
            Err(error) => results[index] = Some(Err(Arc::new(error))),
        }
    }
    if senders.is_empty() {
        return results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect();
    }
    let source_error = pump(source, blob, &mut senders, progress).await;
    drop(senders);
    for (index, task) in uploads {
        let outcome = match task.await {
            Ok(outcome) => outcome.map_err(Arc::new),
            Err(join_error) => Err(Arc::new(RegistryError::Protocol {
                request: crate::registry::RequestInfo {
                    method: reqwest::Method::PUT,
                    url: format!("upload task for {}", blob.digest),
                },
                reason: format!("upload task ended abnormally: {join_error}"),
            })),
        };
        results[index] = Some(match &source_error {
            Some(error) => Err(error.clone()),
            None => outcome,
        });
    }
    results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
}

type Sender = mpsc::Sender<Result<Bytes, std::io::Error>>;
type UploadTask = tokio::task::JoinHandle<Result<(), RegistryError>>;

async fn open_upload(
    target: &UploadTarget,
    blob: &Descriptor,
) -> Result<(Sender, UploadTask), RegistryError> {
    let session = match target
        .client
        .start_upload(&target.repository, &blob.digest, None)
        .await?
    {
        UploadStart::Session(url) => url,
        UploadStart::Mounted => unreachable!("an upload without `mount` is never mounted"),
    };
    let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(receiver, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let client = target.client.clone();
    let repository = target.repository.clone();
    let digest = blob.digest.clone();
    let size = blob.size;
    let task = tokio::spawn(async move {
        client
            .finish_upload(&repository, session, &digest, size, body)
            .await
    });
    Ok((sender, task))
}

/// Reads the source blob and sends each chunk to every live destination.
/// Returns the source's error, after passing it to each upload so that
/// none completes with partial or corrupt data.
async fn pump(
    source: &BlobSource<'_>,
    blob: &Descriptor,
    senders: &mut Vec<(usize, Sender)>,
    progress: &BlobProgress,
) -> Option<Arc<RegistryError>> {
    let mut stream = match source.client.get_blob(source.repository, blob).await {
        Ok(stream) => stream,
        Err(error) => return Some(abort_all(senders, error).await),
    };
    while let Some(item) = stream.next().await {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(error) => return Some(abort_all(senders, error).await),
        };
        progress.advance(chunk.len() as u64);
        let mut live = Vec::with_capacity(senders.len());
        for (index, sender) in senders.drain(..) {
            // A closed channel means that upload already failed; its task
            // reports why, and the others go on.
            if sender.send(Ok(chunk.clone())).await.is_ok() {
                live.push((index, sender));
            }
        }
        *senders = live;
        if senders.is_empty() {
            debug!(digest = %blob.digest, "every upload of this blob failed, stopping the read");
            return None;
        }
    }
    None
}

async fn abort_all(senders: &mut Vec<(usize, Sender)>, error: RegistryError) -> Arc<RegistryError> {
    for (_, sender) in senders.drain(..) {
        let _ = sender
            .send(Err(std::io::Error::other("source blob read failed")))
            .await;
    }
    Arc::new(error)
}
