//! syncer keeps container images in sync between registries with a
//! plan/apply workflow: rules in, a reviewed plan out, then only the missing
//! blobs and manifests copied.

// Errors carry the registry, request and status for their message; they are
// built only on failure paths, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod apply;
pub mod cli;
pub mod commands;
pub mod oci;
pub mod plan;
pub mod registry;
pub mod review;
pub mod rules;
