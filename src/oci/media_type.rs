//! Manifest and blob media types, and what each kind means for copying.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A media type string as sent in `Content-Type` or a descriptor.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MediaType(String);

impl MediaType {
    pub const OCI_MANIFEST: &'static str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &'static str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &'static str =
        "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &'static str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_SCHEMA1: &'static str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &'static str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// `Accept` value for manifest requests. Docker Distribution 2.8.2 hides
    /// OCI content from a request that does not list the OCI types, and
    /// converts schema2 to schema1 or a list to one child when their types
    /// are missing, so every manifest HEAD and GET sends all four.
    pub const ACCEPT_MANIFESTS: &'static str = "application/vnd.oci.image.index.v1+json, \
         application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.list.v2+json, \
         application/vnd.docker.distribution.manifest.v2+json";

    pub fn new(text: impl Into<String>) -> Self {
        MediaType(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a list of manifests (OCI index or Docker list).
    pub fn is_index(&self) -> bool {
        self.essence() == Self::OCI_INDEX || self.essence() == Self::DOCKER_LIST
    }

    /// Whether this is a single-image manifest (OCI or Docker schema2).
    pub fn is_image(&self) -> bool {
        self.essence() == Self::OCI_MANIFEST || self.essence() == Self::DOCKER_MANIFEST
    }

    /// Whether this is a legacy Docker schema1 manifest.
    pub fn is_schema1(&self) -> bool {
        self.essence() == Self::DOCKER_SCHEMA1 || self.essence() == Self::DOCKER_SCHEMA1_SIGNED
    }

    /// The type without parameters such as `; charset=utf-8`.
    pub(crate) fn essence(&self) -> &str {
        self.0.split(';').next().unwrap_or("").trim()
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
