//! The executor: copies the blobs a plan needs, each read from its source
//! once and streamed to every destination registry that lacks it, then
//! pushes each image's manifests, children before their index, as soon as
//! its blobs are in place.

mod blob;
mod deliver;
mod execute;
mod progress;
mod report;

pub use execute::{execute, ApplyOptions};
pub use progress::{Progress, ProgressMode};
pub use report::{OperationResult, Outcome, Report};
