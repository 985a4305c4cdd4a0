//! The content graph below one manifest: child manifests depth-first and
//! the blobs they reference.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::oci::{Descriptor, Digest, Manifest, Repository, Target};
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
    let root = client
        .get_manifest(repository, &Target::Digest(digest.clone()))
        .await?;
    let mut tree = ImageTree {
        root: root.clone(),
        children: Vec::new(),
        blobs: Vec::new(),
        foreign: Vec::new(),
    };
    let mut seen = HashSet::new();
    collect(client, repository, &root, &mut tree, &mut seen).await?;
    let tree = Arc::new(tree);
    cache.insert_tree(client.host(), tree.clone());
    Ok(tree)
}

type Collecting<'a> = Pin<Box<dyn Future<Output = Result<(), RegistryError>> + Send + 'a>>;

fn collect<'a>(
    client: &'a RegistryClient,
    repository: &'a Repository,
    manifest: &'a Manifest,
    tree: &'a mut ImageTree,
    seen: &'a mut HashSet<Digest>,
) -> Collecting<'a> {
    Box::pin(async move {
        for mut blob in manifest.blobs()? {
            if is_foreign(&blob) {
                tree.foreign.push(blob);
            } else if seen.insert(blob.digest.clone()) {
                // Schema1 records no sizes, and uploads need one up front.
                if manifest.media_type.is_schema1() {
                    blob.size = client.blob_size(repository, &blob.digest).await?;
                }
                tree.blobs.push(blob);
            }
        }
        for child in manifest.children()? {
            let child = client
                .get_manifest(repository, &Target::Digest(child.digest.clone()))
                .await?;
            collect(client, repository, &child, tree, seen).await?;
            tree.children.push(child);
        }
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
