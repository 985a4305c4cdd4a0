//! Domain types of the OCI distribution model: digests, references, media
//! types and descriptors. Everything past the parsing edge uses these types
//! instead of bare strings.

mod digest;
mod manifest;
mod media_type;
mod reference;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use manifest::{content_digest, Descriptor, Manifest, ManifestError, Platform};
pub use media_type::MediaType;
pub use reference::{
    check_registry_host, is_valid_repository, is_valid_tag, redact_userinfo, split_registry,
    split_target, Reference, ReferenceError, Repository, Target, DOCKER_HUB,
};
