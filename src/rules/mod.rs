//! The rules file: loading YAML into raw structs, expanding `${VAR}`,
//! validating into the model the planner uses, tag filters and the mapping
//! from source repositories to destination repositories.

mod diagnostics;
mod env;
mod filter;
mod load;
mod mapping;
mod model;
mod raw;
mod settings;

pub use diagnostics::{Diagnostic, RulesError};
pub use filter::TagFilter;
pub use load::load;
pub use mapping::Destination;
pub use model::{Rule, Rules, Source};
