//! Renderers of a plan: text for people, JSON for machines, Markdown for
//! pull request comments. They read the plan model only and never talk to
//! registries.

use std::fmt::Write;

use super::{Action, BlobCounts, Operation, Plan};

/// Renders the plan the way terraform's plan view reads: one block per
/// change, unchanged tags folded into a count, a legend for the symbols
/// used, and one summary line.
pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    for warning in &plan.warnings {
        let _ = writeln!(out, "Warning: {}", escape_text(warning));
    }
    if !plan.warnings.is_empty() {
        out.push('\n');
    }
    if !plan.has_changes() {
        write_skipped(&mut out, plan);
        let _ = writeln!(out, "{}", no_changes_line(plan));
        return out;
    }
    out.push_str("syncer will perform the following operations:\n");
    for op in plan.changes() {
        out.push('\n');
        write_operation(&mut out, op);
    }
    write_skipped(&mut out, plan);
    out.push('\n');
    out.push_str(&legend(plan));
    let _ = writeln!(out, "{}", summary_line(plan));
    out
}

/// Returns the one-line summary of a plan without changes, such as
/// `No changes. 7 destination tags match their sources, 1 skipped.`
fn no_changes_line(plan: &Plan) -> String {
    let unchanged = plan.summary.unchanged;
    let mut line = if unchanged == 1 {
        "No changes. 1 destination tag matches its source".to_string()
    } else {
        format!("No changes. {unchanged} destination tags match their sources")
    };
    if plan.summary.skip > 0 {
        line.push_str(&format!(", {} skipped", plan.summary.skip));
    }
    line.push('.');
    line
}

/// Lists the operations skipped on purpose, each with its reason.
fn write_skipped(out: &mut String, plan: &Plan) {
    let skipped: Vec<&Operation> = plan
        .operations
        .iter()
        .filter(|op| op.action == Action::Skip)
        .collect();
    if skipped.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str("Skipped:\n");
    for op in skipped {
        out.push('\n');
        let _ = writeln!(out, "  {} {}", op.action.symbol(), op.destination);
        if op.source != op.destination {
            let _ = writeln!(out, "      from   {}", op.source);
        }
        write_note(out, op);
    }
    if !plan.has_changes() {
        out.push('\n');
    }
}

fn write_operation(out: &mut String, op: &Operation) {
    let _ = writeln!(out, "  {} {}", op.action.symbol(), op.destination);
    if op.action == Action::Delete {
        if let Some(digest) = &op.destination_digest {
            let _ = writeln!(out, "      digest {}", digest.short());
        }
        write_note(out, op);
        return;
    }
    let _ = writeln!(out, "      from   {}", op.source);
    let kind = op.kind.as_deref().unwrap_or("image");
    write_note(out, op);
    let origin = match (&op.rewritten_digest, &op.source_digest) {
        (Some(_), Some(source)) => format!(", rewritten from {}", source.short()),
        _ => String::new(),
    };
    match (&op.destination_digest, op.content_digest()) {
        (Some(old), Some(new)) => {
            let _ = writeln!(
                out,
                "      digest {} -> {} ({kind}{origin})",
                old.short(),
                new.short()
            );
        }
        (None, Some(new)) => {
            let _ = writeln!(out, "      digest {} ({kind}{origin})", new.short());
        }
        _ => {}
    }
    if op.action != Action::Delete {
        let _ = writeln!(out, "      blobs  {}", blob_summary(&op.blobs));
    }
}

fn write_note(out: &mut String, op: &Operation) {
    if let Some(note) = &op.note {
        let _ = writeln!(out, "      note   {}", escape_text(note));
    }
}

/// Lists only the non-zero blob counts, such as `2 to copy (1.0 KiB), 1 present`.
fn blob_summary(blobs: &BlobCounts) -> String {
    let mut parts = Vec::new();
    if blobs.copy > 0 {
        parts.push(format!(
            "{} to copy ({})",
            blobs.copy,
            human_bytes(blobs.bytes)
        ));
    }
    if blobs.mount > 0 {
        parts.push(format!("{} to mount", blobs.mount));
    }
    if blobs.present > 0 {
        parts.push(format!("{} present", blobs.present));
    }
    if parts.is_empty() {
        return "none needed".to_string();
    }
    parts.join(", ")
}

fn legend(plan: &Plan) -> String {
    let mut parts = Vec::new();
    for (action, word) in [
        (Action::Create, "create"),
        (Action::Update, "update"),
        (Action::Delete, "delete"),
        (Action::Skip, "skip"),
    ] {
        if plan.operations.iter().any(|op| op.action == action) {
            parts.push(format!("{} {word}", action.symbol()));
        }
    }
    format!("Symbols: {}\n", parts.join(", "))
}

/// Formats the summary line, a stable interface that scripts may grep.
pub fn summary_line(plan: &Plan) -> String {
    let s = &plan.summary;
    // The skipped count is appended only when there is one, so plans
    // without skips print the same line as before.
    let skipped = if s.skip > 0 {
        format!(", {} skipped", s.skip)
    } else {
        String::new()
    };
    format!(
        "Plan: {} to create, {} to update, {} to delete, {} unchanged{skipped}.",
        s.create, s.update, s.delete, s.unchanged
    )
}

/// Renders the plan as pretty-printed JSON with a trailing newline.
pub fn json(plan: &Plan) -> String {
    let mut text = serde_json::to_string_pretty(plan).expect("plan serialises to JSON");
    text.push('\n');
    text
}

/// Rows of a Markdown table or list shown open; longer ones are folded
/// into `<details>` so that a pull request comment stays short.
pub const MARKDOWN_OPEN_ROWS: usize = 10;

/// Renders the plan as Markdown for a pull request comment: the summary
/// line in bold, then a table of changes and a list of warnings, each
/// folded into `<details>` when longer than [`MARKDOWN_OPEN_ROWS`].
pub fn markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "**{}**\n", summary_line(plan));
    if plan.has_changes() {
        let mut table = String::from(
            "| Action | Destination | Source | Digest | Blobs |\n|---|---|---|---|---|\n",
        );
        for op in plan.changes() {
            let blobs = if op.action == Action::Delete {
                String::new()
            } else {
                blob_summary(&op.blobs)
            };
            table.push_str(&markdown_row(op, &blobs));
        }
        let count = plan.changes().count();
        let title = format!("{count} change{}", if count == 1 { "" } else { "s" });
        out.push_str(&fold(&title, count, &table));
    } else {
        let _ = writeln!(out, "{}\n", no_changes_line(plan));
    }
    let skipped: Vec<&Operation> = plan
        .operations
        .iter()
        .filter(|op| op.action == Action::Skip)
        .collect();
    if !skipped.is_empty() {
        let mut table = String::from(
            "| Skipped | Destination | Source | Digest | Reason |\n|---|---|---|---|---|\n",
        );
        for op in &skipped {
            let note = escape_markdown(op.note.as_deref().unwrap_or(""));
            table.push_str(&markdown_row(op, &note));
        }
        let count = skipped.len();
        let title = format!("{count} skipped");
        out.push_str(&fold(&title, count, &table));
    }
    if !plan.failures.is_empty() {
        let list: String = plan
            .failures
            .iter()
            .map(|failure| format!("- {}\n", failure.replace('\n', " ")))
            .collect();
        let count = plan.failures.len();
        let title = format!("{count} not planned");
        let _ = writeln!(out, "**{count} not planned because a registry failed:**\n");
        out.push_str(&fold(&title, count, &list));
    }
    if !plan.warnings.is_empty() {
        let list: String = plan
            .warnings
            .iter()
            .map(|warning| format!("- {}\n", escape_markdown(warning)))
            .collect();
        let count = plan.warnings.len();
        let title = format!("{count} warning{}", if count == 1 { "" } else { "s" });
        out.push_str(&fold(&title, count, &list));
    }
    out
}

/// Renders one table row; `last` fills the final column (blobs, or the
/// reason of a skip).
fn markdown_row(op: &Operation, last: &str) -> String {
    let action = serde_json::to_value(op.action)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut digest = match (&op.destination_digest, op.content_digest()) {
        (Some(old), Some(new)) => format!("`{}` → `{}`", old.short(), new.short()),
        (None, Some(new)) => format!("`{}`", new.short()),
        (Some(old), None) => format!("`{}`", old.short()),
        (None, None) => String::new(),
    };
    if let (Some(_), Some(source)) = (&op.rewritten_digest, &op.source_digest) {
        digest.push_str(&format!(" (rewritten from `{}`)", source.short()));
    }
    format!(
        "| `{}` {action} | `{}` | `{}` | {digest} | {last} |\n",
        op.action.symbol(),
        op.destination,
        op.source
    )
}

/// Returns `body` followed by a blank line, inside `<details>` titled
/// `title` when it has more than [`MARKDOWN_OPEN_ROWS`] rows.
fn fold(title: &str, rows: usize, body: &str) -> String {
    if rows <= MARKDOWN_OPEN_ROWS {
        return format!("{body}\n");
    }
    // GitHub renders Markdown inside <details> only after a blank line.
    format!("<details>\n<summary>{title}</summary>\n\n{body}\n</details>\n\n")
}

/// Returns whether a terminal could act on `c`: a control character such as ESC,
/// or a bidirectional formatting character that reorders the line.
fn is_hidden_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Escapes control and bidirectional formatting characters as `\u{..}`.
/// Warnings and notes contain text from registries, such as tags that are
/// not valid tag names and platform names from an index.
fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_hidden_control(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Escapes `text` for a Markdown table cell or list item: control
/// characters as in [`escape_text`], and with a backslash the characters
/// that would start HTML, a link or image, code, emphasis or a new cell.
fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_hidden_control(c) {
            out.extend(c.escape_unicode());
        } else {
            if "\\`|<>[]*_".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// Formats a byte count with binary units, such as `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_text_shows_controls_as_code_points() {
        assert_eq!(escape_text("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(escape_text("x\ny\u{202e}z"), "x\\u{a}y\\u{202e}z");
        assert_eq!(escape_text("v1.0 <ok> | `fine`"), "v1.0 <ok> | `fine`");
    }

    #[test]
    fn escape_markdown_escapes_html_links_and_cells() {
        assert_eq!(
            escape_markdown("</details> ![x](u) | `c` *e* _u_ \\"),
            "\\</details\\> !\\[x\\](u) \\| \\`c\\` \\*e\\* \\_u\\_ \\\\"
        );
        assert_eq!(escape_markdown("a\u{7}b"), "a\\u{7}b");
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(200 * 1024 * 1024), "200.0 MiB");
    }
}
