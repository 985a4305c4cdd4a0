//! The apply lock: an advisory `flock(2)` on a file derived from the rules
//! path and shard, so that overlapping runs of one job on one machine do not
//! pile up. The kernel releases it when the process exits or dies.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::plan::Shard;

/// A held lock, released when dropped.
#[derive(Debug)]
pub struct ApplyLock {
    _file: File,
}

/// Error taking the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another syncer apply of the same rules is running ({holder}); lock file {path}")]
    Held { path: String, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Lock file for `rules` and `shard`: in `$XDG_RUNTIME_DIR` when set, else
/// in the temp folder, named after a hash of the canonical rules path so
/// that `rules`, `./rules` and a symlink to it share one lock.
pub fn default_path(rules: &Path, shard: Option<Shard>) -> PathBuf {
    let canonical = std::fs::canonicalize(rules).unwrap_or_else(|_| rules.to_path_buf());
    let mut key = canonical.display().to_string();
    if let Some(shard) = shard {
        key.push_str(&format!(" shard {shard}"));
    }
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let folder = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    folder.join(format!("syncer-apply-{}.lock", &hash[..16]))
}

/// Takes the lock at `path` without waiting, and writes this process's id
/// into the file so that a second run can name the holder.
pub fn acquire(path: &Path) -> Result<ApplyLock, LockError> {
    let io_error = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error)?;
    if !try_lock(&file).map_err(io_error)? {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "holder unknown".to_string(),
            text => text.to_string(),
        };
        return Err(LockError::Held {
            path: path.display().to_string(),
            holder,
        });
    }
    file.set_len(0).map_err(io_error)?;
    file.rewind().map_err(io_error)?;
    write!(file, "pid {}", std::process::id()).map_err(io_error)?;
    Ok(ApplyLock { _file: file })
}

/// Returns `false` when another open file description holds the lock.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;

    // SAFETY: the descriptor belongs to `file`, which outlives the call.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

// NOTE: without flock(2) there is no lock, and overlapping applies both run.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    tracing::warn!("the apply lock needs flock(2), which this platform lacks; not locking");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_file_is_rejected() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("apply.lock");
        let first = acquire(&path).expect("first lock");
        let second = acquire(&path).unwrap_err();
        let message = second.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        acquire(&path).expect("lock after release");
    }

    #[test]
    fn default_path_differs_by_shard() {
        let rules = Path::new("/nonexistent/rules.yaml");
        let whole = default_path(rules, None);
        let shard = default_path(rules, Some(Shard { index: 0, count: 2 }));
        assert_ne!(whole, shard);
        assert_eq!(whole, default_path(rules, None));
    }
}
