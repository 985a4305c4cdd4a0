//! Review of a rules change for `syncer diff`: the rules compared as
//! written (offline), and the destination references both sides resolve to
//! (online), rendered as text or Markdown.

mod references;
pub mod render;
mod rules;

pub use references::{compare_references, ReferenceChange, ReferenceChanges};
pub use rules::{compare_rules, NormalisedRules, RuleChange, RulesChanges, RulesReadError};
