//! The executor: copies the blobs a plan needs, each read from its source
//! once and streamed to every destination registry that lacks it, then
//! pushes manifests, children before their index.

mod blob;
mod execute;
mod report;

pub use execute::{execute, ApplyOptions};
pub use report::{OperationResult, Outcome, Report};
