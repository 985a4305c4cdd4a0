//! `syncer validate`: load and check rules with no network traffic.

use std::path::Path;

use super::{load_rules, Exit};

pub fn run(path: &Path) -> anyhow::Result<Exit> {
    let rules = match load_rules(path) {
        Ok(rules) => rules,
        Err(exit) => return Ok(exit),
    };
    let count = rules.rules.len();
    println!(
        "{} is valid: {count} rule{}, {} registr{} configured.",
        path.display(),
        if count == 1 { "" } else { "s" },
        rules.registries.len(),
        if rules.registries.len() == 1 {
            "y"
        } else {
            "ies"
        }
    );
    Ok(Exit::Success)
}
