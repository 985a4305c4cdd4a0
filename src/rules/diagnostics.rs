//! Located rules-file errors, collected so that one run reports them all.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a rules file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// Line and column, 1-based, where the parser knows them.
    pub location: Option<(usize, usize)>,
    /// Where in the document, such as `rules[2].source`, when no line is known.
    pub path: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, path: Option<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            location: None,
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": ")?;
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found while loading rules.
#[derive(Debug)]
pub struct RulesError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RulesError {}
