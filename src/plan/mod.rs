//! Planning: resolve rules against catalogs and tag lists into desired
//! copies, compare digests with HEAD requests, and build the `Plan` that
//! renderers print and the executor applies.

mod diff;
mod model;
mod platforms;
mod prune;
pub mod render;
mod resolve;
pub mod saved;
mod shard;
mod tree;

pub use diff::{build_plan, PlanError, PlanOptions};
pub use model::{Action, BlobCounts, Operation, Plan, Summary};
pub use platforms::rewritten_tree;
pub use resolve::{resolve, resolve_all, Desired, PruneScope, ResolveError, Resolved};
pub use shard::{Shard, ShardError};
pub use tree::{fetch_tree, ImageTree, TreeCache};
