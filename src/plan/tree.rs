//! The content graph below one manifest: child manifests depth-first and
//! the blobs they reference.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::oci::{Descriptor, Digest, Manifest, ManifestError, Repository, Target};
use crate::registry::{RegistryClient, RegistryError};

/// A manifest with everything it references.
#[derive(Debug)]
pub struct ImageTree {
    pub root: Manifest,
    /// Child manifests in push order: every child before its parent index.
    pub children: Vec<Manifest>,
    /// Distributable blobs, each once, config and layers in manifest order.
    pub blobs: Vec<Descriptor>,
    /// Foreign or non-distributable layers, which are never fetched.
    pub foreign: Vec<Descriptor>,
}

impl ImageTree {
    pub fn kind(&self) -> &'static str {
        if self.root.media_type.is_index() {
            "index"
        } else {
            "image"
        }
    }
}

/// Content fetched during a run, shared by planner and executor.
#[derive(Debug, Default)]
pub struct TreeCache {
    trees: Mutex<HashMap<(String, Digest), Arc<ImageTree>>>,
    /// Blob presence per `registry/repository`, as checked with HEAD.
    blobs: Mutex<HashMap<(String, String, Digest), bool>>,
}

impl TreeCache {
    pub fn tree(&self, registry: &str, digest: &Digest) -> Option<Arc<ImageTree>> {
        self.trees
            .lock()
            .expect("cache lock poisoned")
            .get(&(registry.to_string(), digest.clone()))
            .cloned()
    }

    pub fn insert_tree(&self, registry: &str, tree: Arc<ImageTree>) {
        let key = (registry.to_string(), tree.root.digest.clone());
        self.trees
            .lock()
            .expect("cache lock poisoned")
            .insert(key, tree);
    }

    pub fn blob_present(
        &self,
        registry: &str,
        repository: &Repository,
        digest: &Digest,
    ) -> Option<bool> {
        let key = (registry.to_string(), repository.to_string(), digest.clone());
        self.blobs
            .lock()
            .expect("cache lock poisoned")
            .get(&key)
            .copied()
    }

    pub fn set_blob_present(
        &self,
        registry: &str,
        repository: &Repository,
        digest: &Digest,
        present: bool,
    ) {
        let key = (registry.to_string(), repository.to_string(), digest.clone());
        self.blobs
            .lock()
            .expect("cache lock poisoned")
            .insert(key, present);
    }
}

/// Maximum number of indexes on the path from a tree's root to any of its
/// manifests, the root included. Images in practice nest two or three (an
/// index of indexes of images), and the walk recurses once per level.
pub const MAX_INDEX_DEPTH: usize = 8;

/// Fetches the manifest `digest` and, for an index, every child, depth-first.
pub async fn fetch_tree(
    client: &RegistryClient,
    repository: &Repository,
    digest: &Digest,
    cache: &TreeCache,
) -> Result<Arc<ImageTree>, RegistryError> {
    if let Some(tree) = cache.tree(client.host(), digest) {
        return Ok(tree);
    }
    let source = Remote { client, repository };
    let tree = Arc::new(build_tree(&source, digest).await?);
    cache.insert_tree(client.host(), tree.clone());
    Ok(tree)
}

/// Origin of the manifests and blob sizes a tree is built from: a
/// registry repository, or a map in tests.
trait ContentSource: Sync {
    fn manifest(
        &self,
        digest: &Digest,
    ) -> impl Future<Output = Result<Manifest, RegistryError>> + Send;

    fn blob_size(&self, digest: &Digest)
        -> impl Future<Output = Result<u64, RegistryError>> + Send;
}

/// One repository of a registry.
struct Remote<'a> {
    client: &'a RegistryClient,
    repository: &'a Repository,
}

impl ContentSource for Remote<'_> {
    async fn manifest(&self, digest: &Digest) -> Result<Manifest, RegistryError> {
        let target = Target::Digest(digest.clone());
        self.client.get_manifest(self.repository, &target).await
    }

    async fn blob_size(&self, digest: &Digest) -> Result<u64, RegistryError> {
        self.client.blob_size(self.repository, digest).await
    }
}

/// Fetches the manifest `digest` and, for an index, every distinct child
/// once, depth-first.
async fn build_tree<S: ContentSource>(
    source: &S,
    digest: &Digest,
) -> Result<ImageTree, RegistryError> {
    let root = source.manifest(digest).await?;
    let mut walk = Walk {
        source,
        tree: ImageTree {
            root: root.clone(),
            children: Vec::new(),
            blobs: Vec::new(),
            foreign: Vec::new(),
        },
        blobs_seen: HashSet::new(),
        manifests_seen: HashSet::from([root.digest.clone()]),
        indexes_open: Vec::new(),
    };
    collect(&mut walk, &root).await?;
    Ok(walk.tree)
}

/// State of one tree walk.
struct Walk<'a, S> {
    source: &'a S,
    tree: ImageTree,
    blobs_seen: HashSet<Digest>,
    /// Manifests fetched so far, so a child listed twice, or by two
    /// indexes, costs one request and is pushed once.
    manifests_seen: HashSet<Digest>,
    /// Indexes from the root down to the one being walked.
    indexes_open: Vec<Digest>,
}

type Collecting<'a> = Pin<Box<dyn Future<Output = Result<(), RegistryError>> + Send + 'a>>;

fn collect<'a, S: ContentSource>(
    walk: &'a mut Walk<'_, S>,
    manifest: &'a Manifest,
) -> Collecting<'a> {
    Box::pin(async move {
        for mut blob in manifest.blobs()? {
            if is_foreign(&blob) {
                walk.tree.foreign.push(blob);
            } else if walk.blobs_seen.insert(blob.digest.clone()) {
                // Schema1 records no sizes, and uploads need one up front.
                if manifest.media_type.is_schema1() {
                    blob.size = walk.source.blob_size(&blob.digest).await?;
                }
                walk.tree.blobs.push(blob);
            }
        }
        if !manifest.media_type.is_index() {
            return Ok(());
        }
        if walk.indexes_open.len() >= MAX_INDEX_DEPTH {
            return Err(ManifestError::IndexTooDeep {
                digest: manifest.digest.clone(),
                max: MAX_INDEX_DEPTH,
            }
            .into());
        }
        walk.indexes_open.push(manifest.digest.clone());
        for child in manifest.children()? {
            // Content addressing makes a cycle infeasible while fetched
            // digests are checked, so this only guards the recursion.
            if walk.indexes_open.contains(&child.digest) {
                return Err(ManifestError::IndexCycle {
                    digest: child.digest,
                }
                .into());
            }
            if !walk.manifests_seen.insert(child.digest.clone()) {
                continue;
            }
            let child = walk.source.manifest(&child.digest).await?;
            collect(walk, &child).await?;
            walk.tree.children.push(child);
        }
        walk.indexes_open.pop();
        Ok(())
    })
}

/// Foreign layers (Windows base layers) and non-distributable layers are
/// served from their `urls`, not by registries, so they are not copied.
fn is_foreign(blob: &Descriptor) -> bool {
    let media_type = blob.media_type.as_str();
    !blob.urls.is_empty()
        || media_type.contains(".foreign.")
        || media_type.contains("nondistributable")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::oci::{Algorithm, MediaType};

    /// Manifests in memory, counting every fetch.
    #[derive(Default)]
    struct Memory {
        manifests: HashMap<Digest, Manifest>,
        fetches: AtomicUsize,
    }

    impl ContentSource for Memory {
        async fn manifest(&self, digest: &Digest) -> Result<Manifest, RegistryError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            Ok(self.manifests[digest].clone())
        }

        async fn blob_size(&self, _digest: &Digest) -> Result<u64, RegistryError> {
            Ok(0)
        }
    }

    impl Memory {
        fn add(
            &mut self,
            media_type: &str,
            body: serde_json::Value,
            digest: Option<Digest>,
        ) -> Digest {
            let bytes = Bytes::from(body.to_string());
            let digest = digest.unwrap_or_else(|| Digest::compute(Algorithm::Sha256, &bytes));
            let manifest = Manifest::new(bytes, Some(media_type), digest.clone());
            self.manifests.insert(digest.clone(), manifest);
            digest
        }

        fn image(&mut self) -> Digest {
            let blob = |text: &str| {
                json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": Digest::compute(Algorithm::Sha256, text.as_bytes()).to_string(),
                    "size": text.len(),
                })
            };
            let body = json!({
                "schemaVersion": 2,
                "mediaType": MediaType::OCI_MANIFEST,
                "config": blob("config"),
                "layers": [blob("layer")],
            });
            self.add(MediaType::OCI_MANIFEST, body, None)
        }

        fn index(&mut self, children: &[Digest], digest: Option<Digest>) -> Digest {
            let manifests: Vec<serde_json::Value> = children
                .iter()
                .map(|child| {
                    json!({
                        "mediaType": MediaType::OCI_INDEX,
                        "digest": child.to_string(),
                        "size": 1,
                    })
                })
                .collect();
            let body = json!({
                "schemaVersion": 2,
                "mediaType": MediaType::OCI_INDEX,
                "manifests": manifests,
            });
            self.add(MediaType::OCI_INDEX, body, digest)
        }

        /// Builds `levels` indexes, each listing the one below, over an image.
        fn chain(&mut self, levels: usize) -> Vec<Digest> {
            let mut digests = vec![self.image()];
            for _ in 0..levels {
                let below = digests.last().unwrap().clone();
                digests.push(self.index(&[below], None));
            }
            digests.reverse();
            digests
        }
    }

    fn made_up_digest(hex_digit: char) -> Digest {
        format!("sha256:{}", hex_digit.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn fan_out_fetches_each_manifest_once() {
        let mut memory = Memory::default();
        let mut below = memory.image();
        for _ in 0..6 {
            below = memory.index(&[below.clone(), below], None);
        }

        let tree = build_tree(&memory, &below).await.unwrap();

        assert_eq!(memory.fetches.load(Ordering::SeqCst), 7);
        assert_eq!(tree.children.len(), 6);
        assert_eq!(tree.blobs.len(), 2);
    }

    #[tokio::test]
    async fn index_chain_at_limit_is_read() {
        let mut memory = Memory::default();
        let chain = memory.chain(MAX_INDEX_DEPTH);

        let tree = build_tree(&memory, &chain[0]).await.unwrap();

        assert_eq!(tree.children.len(), MAX_INDEX_DEPTH);
    }

    #[tokio::test]
    async fn index_chain_over_limit_fails() {
        let mut memory = Memory::default();
        let chain = memory.chain(MAX_INDEX_DEPTH + 1);

        let error = build_tree(&memory, &chain[0]).await.unwrap_err();

        assert!(matches!(error, RegistryError::Manifest(_)), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("deeper than 8"), "{message}");
        assert!(
            message.contains(&chain[MAX_INDEX_DEPTH].to_string()),
            "{message}"
        );
    }

    #[tokio::test]
    async fn index_cycle_fails() {
        let mut memory = Memory::default();
        let first = made_up_digest('a');
        let second = made_up_digest('b');
        memory.index(std::slice::from_ref(&second), Some(first.clone()));
        memory.index(std::slice::from_ref(&first), Some(second.clone()));

        let error = build_tree(&memory, &first).await.unwrap_err();

        assert!(matches!(error, RegistryError::Manifest(_)), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("cycle"), "{message}");
        assert!(message.contains(&first.to_string()), "{message}");
    }
}
