//! The rules file: loading YAML into raw structs, expanding `${VAR}`,
//! validating into the model the planner uses, tag filters and the mapping
//! from source repositories to destination repositories.

mod conflicts;
mod diagnostics;
mod env;
mod filter;
mod load;
mod locate;
mod mapping;
mod model;
mod parse;
mod platform;
mod raw;
mod schema;
mod settings;
mod validate;

pub use diagnostics::{Diagnostic, RulesError};
pub use filter::{FilterError, TagFilter};
pub use load::load;
pub use mapping::Destination;
pub use model::{Protect, Rule, Rules, Source};
pub use platform::{describe as describe_platform, PlatformSpec};
pub use schema::schema_json;
