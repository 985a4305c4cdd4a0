//! Text and Markdown renderings of a rules review.

use std::fmt::Write;

use super::{ReferenceChange, ReferenceChanges, RuleChange, RulesChanges};
use crate::plan::render::MARKDOWN_OPEN_ROWS;

/// Formats the rules summary line, such as
/// `Rules: 1 added, 0 removed, 2 changed, 4 unchanged.`
pub fn rules_line(rules: &RulesChanges) -> String {
    let (mut added, mut removed, mut changed) = (0, 0, 0);
    for change in &rules.changes {
        match change {
            RuleChange::Added(_) => added += 1,
            RuleChange::Removed(_) => removed += 1,
            RuleChange::Changed { .. } => changed += 1,
        }
    }
    format!(
        "Rules: {added} added, {removed} removed, {changed} changed, {} unchanged.",
        rules.unchanged
    )
}

/// Formats the destinations summary line, such as
/// `Destinations: 3 added, 1 removed, 0 from another source, 9 unchanged.`
pub fn references_line(references: &ReferenceChanges) -> String {
    let (added, removed, source) = references.counts();
    format!(
        "Destinations: {added} added, {removed} removed, {source} from another source, {} unchanged.",
        references.unchanged
    )
}

/// Renders the review for a terminal: summary lines, one line per changed
/// rule and destination reference, then the unified diff of the rules.
pub fn text(rules: &RulesChanges, references: Option<&ReferenceChanges>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", rules_line(rules));
    for change in &rules.changes {
        let _ = writeln!(out, "  {}", rule_text(change));
    }
    for host in &rules.registries_changed {
        let _ = writeln!(out, "  ~ registry {host}: settings changed");
    }
    if let Some(references) = references {
        let _ = writeln!(out, "\n{}", references_line(references));
        for change in &references.changes {
            let _ = writeln!(out, "  {}", reference_text(change));
        }
    }
    if !rules.unified_diff.is_empty() {
        let _ = write!(out, "\n{}", rules.unified_diff);
    }
    out
}

fn rule_text(change: &RuleChange) -> String {
    match change {
        RuleChange::Added(name) => format!("+ rule {name:?}"),
        RuleChange::Removed(name) => format!("- rule {name:?}"),
        RuleChange::Changed {
            name,
            destinations_added,
            destinations_removed,
            fields,
        } => {
            let parts = change_parts(destinations_added, destinations_removed, fields, |d| {
                d.to_string()
            });
            format!("~ rule {name:?}: {}", parts.join("; "))
        }
    }
}

/// Lists a changed rule's added and removed destinations, each written
/// through `quote`, then its changed fields.
fn change_parts<T: std::fmt::Display>(
    added: &[T],
    removed: &[T],
    fields: &[String],
    quote: impl Fn(&T) -> String,
) -> Vec<String> {
    let mut parts: Vec<String> = added
        .iter()
        .map(|d| format!("+destination {}", quote(d)))
        .collect();
    parts.extend(removed.iter().map(|d| format!("-destination {}", quote(d))));
    if !fields.is_empty() {
        parts.push(format!("changed {}", fields.join(", ")));
    }
    parts
}

fn reference_text(change: &ReferenceChange) -> String {
    match change {
        ReferenceChange::Added {
            destination,
            source,
        } => format!("+ {destination} from {source}"),
        ReferenceChange::Removed {
            destination,
            source,
        } => format!("- {destination} from {source}"),
        ReferenceChange::Source {
            destination,
            old,
            new,
        } => format!("~ {destination} from {old} -> {new}"),
    }
}

/// Renders the review as a pull request comment: bold summary lines, tables
/// of changed rules and destination references, and the unified diff in a
/// `diff` code block. Long tables and the diff are folded in `<details>`.
pub fn markdown(rules: &RulesChanges, references: Option<&ReferenceChanges>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "**{}**", rules_line(rules));
    if let Some(references) = references {
        let _ = writeln!(out, "\n**{}**", references_line(references));
    }
    out.push('\n');
    let rows = rules.changes.len() + rules.registries_changed.len();
    if rows > 0 {
        let mut table = String::from("| Change | Rule | Details |\n|---|---|---|\n");
        for change in &rules.changes {
            table.push_str(&rule_row(change));
        }
        for host in &rules.registries_changed {
            let _ = writeln!(table, "| `~` changed | registry `{host}` | settings |");
        }
        out.push_str(&fold("Changed rules", rows, &table));
    }
    if let Some(references) = references.filter(|r| !r.changes.is_empty()) {
        let mut table = String::from("| Change | Destination | Source |\n|---|---|---|\n");
        for change in &references.changes {
            table.push_str(&reference_row(change));
        }
        out.push_str(&fold(
            "Changed destinations",
            references.changes.len(),
            &table,
        ));
    }
    if !rules.unified_diff.is_empty() {
        let _ = write!(
            out,
            "<details>\n<summary>Normalised rules diff</summary>\n\n```diff\n{}```\n\n</details>\n",
            rules.unified_diff
        );
    }
    out
}

fn rule_row(change: &RuleChange) -> String {
    match change {
        RuleChange::Added(name) => format!("| `+` added | `{name}` | |\n"),
        RuleChange::Removed(name) => format!("| `-` removed | `{name}` | |\n"),
        RuleChange::Changed {
            name,
            destinations_added,
            destinations_removed,
            fields,
        } => {
            let parts = change_parts(destinations_added, destinations_removed, fields, |d| {
                format!("`{d}`")
            });
            format!("| `~` changed | `{name}` | {} |\n", parts.join("<br>"))
        }
    }
}

fn reference_row(change: &ReferenceChange) -> String {
    match change {
        ReferenceChange::Added {
            destination,
            source,
        } => format!("| `+` added | `{destination}` | `{source}` |\n"),
        ReferenceChange::Removed {
            destination,
            source,
        } => format!("| `-` removed | `{destination}` | `{source}` |\n"),
        ReferenceChange::Source {
            destination,
            old,
            new,
        } => format!("| `~` source | `{destination}` | `{old}` → `{new}` |\n"),
    }
}

/// Returns `body` and a blank line, inside `<details>` when it has more
/// than [`MARKDOWN_OPEN_ROWS`] rows.
fn fold(title: &str, rows: usize, body: &str) -> String {
    if rows <= MARKDOWN_OPEN_ROWS {
        return format!("{body}\n");
    }
    format!("<details>\n<summary>{title} ({rows})</summary>\n\n{body}\n</details>\n\n")
}
