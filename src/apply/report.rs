//! The result of an apply: per-operation outcomes and totals, rendered as
//! the final summary and as the JSON report.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::plan::render::human_bytes;
use crate::plan::{Action, Operation};

/// What happened to one operation.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "status", content = "error")]
pub enum Outcome {
    Done,
    Failed(String),
}

#[derive(Clone, Debug, Serialize)]
pub struct OperationResult {
    #[serde(flatten)]
    pub operation: Operation,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Totals of an apply run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub failed: usize,
    /// Tags deleted by prune.
    pub deleted: usize,
    pub blobs_copied: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    /// Bytes read from sources; each is uploaded to every registry in need.
    pub bytes_copied: u64,
    pub seconds: f64,
    /// `bytes_copied` over `seconds`: the rate of reading the sources.
    pub bytes_per_second: u64,
    pub operations: Vec<OperationResult>,
    /// Copies that could not be planned because a registry failed; each
    /// counts in `failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_planned: Vec<String>,
    /// Reason nothing was applied, for a run that stopped before copying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// Records copies that could not be planned as failures.
    pub fn add_not_planned(&mut self, failures: &[String]) {
        self.failed += failures.len();
        self.not_planned.extend(failures.iter().cloned());
    }

    /// Returns the report of a run that stopped before copying anything.
    pub fn not_applied(reason: String) -> Self {
        Report {
            error: Some(reason),
            ..Report::default()
        }
    }

    pub fn record(&mut self, operation: Operation, outcome: Outcome) {
        match (&outcome, operation.action) {
            (Outcome::Failed(_), _) => self.failed += 1,
            (Outcome::Done, Action::Create) => self.created += 1,
            (Outcome::Done, Action::Update) => self.updated += 1,
            (Outcome::Done, Action::Delete) => self.deleted += 1,
            (Outcome::Done, _) => {}
        }
        self.operations.push(OperationResult { operation, outcome });
    }

    /// Sets the run's duration and the throughput, from `bytes_copied`
    /// as it is now.
    pub fn set_duration(&mut self, elapsed: Duration) {
        self.seconds = elapsed.as_secs_f64();
        self.bytes_per_second = if self.seconds > 0.0 {
            (self.bytes_copied as f64 / self.seconds) as u64
        } else {
            0
        };
    }

    pub fn has_failures(&self) -> bool {
        self.failed > 0
    }

    /// Human summary: each failure with its error, then the totals.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for failure in &self.not_planned {
            let _ = writeln!(out, "Error: {failure}");
        }
        for result in &self.operations {
            if let Outcome::Failed(error) = &result.outcome {
                let _ = writeln!(out, "Error: {}: {error}", result.operation.destination);
            }
        }
        // Deletions are appended only when there are some, so applies
        // without prune print the same line as before.
        let deleted = if self.deleted > 0 {
            format!(", {} deleted", self.deleted)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "Apply complete: {} created, {} updated, {} unchanged, {} failed{deleted}.",
            self.created, self.updated, self.unchanged, self.failed
        );
        let _ = writeln!(
            out,
            "Blobs: {} copied ({}), {} mounted, {} present, in {:.1}s ({}/s).",
            self.blobs_copied,
            human_bytes(self.bytes_copied),
            self.blobs_mounted,
            self.blobs_present,
            self.seconds,
            human_bytes(self.bytes_per_second)
        );
        out
    }
}
