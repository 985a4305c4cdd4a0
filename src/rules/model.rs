//! The validated rules model: parsed references, compiled globs and
//! filters, connection settings. The planner sees only this.

use std::collections::HashMap;
use std::path::PathBuf;

use globset::{GlobMatcher, GlobSet};

use super::{Destination, PlatformSpec, TagFilter};
use crate::oci::{Repository, Target};
use crate::registry::ConnectionSettings;

/// All rules of a file or folder, with the registries' settings.
#[derive(Debug, Default)]
pub struct Rules {
    pub registries: HashMap<String, ConnectionSettings>,
    pub rules: Vec<Rule>,
}

/// One validated rule.
#[derive(Debug)]
pub struct Rule {
    /// The `name` given, else `<file stem>[<index>]`.
    pub name: String,
    pub file: PathBuf,
    pub source: Source,
    pub destinations: Vec<Destination>,
    pub tags: TagFilter,
    /// Platforms to copy; empty copies every platform unchanged.
    pub platforms: Vec<PlatformSpec>,
    /// Whether a destination tag holding another digest may be moved.
    pub overwrite: bool,
    /// Whether destination tags this rule does not produce are deleted.
    pub prune: bool,
    /// Tags that prune never deletes.
    pub protect: Protect,
}

/// Tag globs that prune leaves alone.
#[derive(Clone, Debug)]
pub struct Protect {
    pub patterns: Vec<String>,
    pub matcher: GlobSet,
}

impl Protect {
    pub fn is_protected(&self, tag: &str) -> bool {
        self.matcher.is_match(tag)
    }
}

/// What a rule reads from.
#[derive(Debug)]
pub enum Source {
    /// Every tag of one repository.
    Repository {
        registry: String,
        repository: Repository,
    },
    /// One tag or digest.
    Image {
        registry: String,
        repository: Repository,
        target: Target,
    },
    /// Every repository of the catalog whose path matches the glob.
    Glob {
        registry: String,
        pattern: String,
        matcher: GlobMatcher,
        /// Segments before the first one holding a glob character.
        fixed: String,
    },
}

impl Source {
    pub fn registry(&self) -> &str {
        match self {
            Source::Repository { registry, .. }
            | Source::Image { registry, .. }
            | Source::Glob { registry, .. } => registry,
        }
    }

    /// Part of a repository path that destinations do not repeat: a glob's
    /// fixed part, or a repository's parent namespace.
    pub fn fixed(&self) -> &str {
        match self {
            Source::Glob { fixed, .. } => fixed,
            Source::Repository { repository, .. } | Source::Image { repository, .. } => {
                let path = repository.as_str();
                path.rfind('/').map_or("", |i| &path[..i])
            }
        }
    }
}
