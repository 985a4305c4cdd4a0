//! The apply lock: an advisory `flock(2)` on a file derived from the rules
//! path and shard, so that overlapping runs of one job on one machine do not
//! pile up. The kernel releases it when the process exits or dies.
//!
//! The lock file lives in a folder that only the current user can write
//! to, and is opened without following symbolic links. Another user can
//! therefore neither hold the lock nor make this process write through a
//! link to a file of their choice.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::plan::Shard;

/// Bytes of the lock file read to name the holder.
const HOLDER_BYTES: u64 = 64;

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
    /// A lock file or folder that another user could control.
    #[error("unsafe lock path {path}: {reason}")]
    Unsafe { path: String, reason: String },
}

impl LockError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        LockError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn unsafe_path(path: &Path, reason: impl Into<String>) -> Self {
        LockError::Unsafe {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }
}

/// Returns the lock file for `rules` and `shard`: in `$XDG_RUNTIME_DIR`
/// when set, else in the private folder `syncer-<uid>` of the temp folder,
/// which is created if missing. The name is a hash of the canonical rules
/// path, so that `rules`, `./rules` and a symlink to it share one lock.
pub fn default_path(rules: &Path, shard: Option<Shard>) -> Result<PathBuf, LockError> {
    let folder = match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => private_folder(&std::env::temp_dir())?,
    };
    Ok(folder.join(lock_name(rules, shard)))
}

/// Returns the lock file name for `rules` and `shard`.
fn lock_name(rules: &Path, shard: Option<Shard>) -> String {
    let canonical = std::fs::canonicalize(rules).unwrap_or_else(|_| rules.to_path_buf());
    let mut key = canonical.display().to_string();
    // Shard 0/1 is the whole job, so it shares the unsharded lock.
    if let Some(shard) = shard.filter(|shard| shard.count > 1) {
        key.push_str(&format!(" shard {shard}"));
    }
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    format!("syncer-apply-{}.lock", &hash[..16])
}

/// Creates `parent/syncer-<uid>` with mode 0700 if it is missing, and
/// checks that it is a real folder of the current user that no other user
/// can write to.
#[cfg(unix)]
fn private_folder(parent: &Path) -> Result<PathBuf, LockError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};

    let uid = current_uid();
    let folder = parent.join(format!("syncer-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&folder) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(LockError::io(&folder, error)),
    }
    let metadata = std::fs::symlink_metadata(&folder).map_err(|e| LockError::io(&folder, e))?;
    let fix = "remove it, or set XDG_RUNTIME_DIR or --lock-file";
    if metadata.file_type().is_symlink() {
        return Err(LockError::unsafe_path(
            &folder,
            format!("the lock folder is a symbolic link; {fix}"),
        ));
    }
    if !metadata.is_dir() {
        return Err(LockError::unsafe_path(
            &folder,
            format!("the lock folder is not a folder; {fix}"),
        ));
    }
    if metadata.uid() != uid {
        return Err(LockError::unsafe_path(
            &folder,
            format!(
                "the lock folder is owned by uid {}, not by this user (uid {uid}); {fix}",
                metadata.uid()
            ),
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(LockError::unsafe_path(
            &folder,
            format!(
                "other users can write to the lock folder (mode {:o}); run `chmod 700` on it",
                metadata.mode() & 0o7777
            ),
        ));
    }
    Ok(folder)
}

/// Returns the effective user id, which owns the files this process creates.
#[cfg(unix)]
fn current_uid() -> u32 {
    // SAFETY: POSIX specifies that geteuid(2) always succeeds, and it takes
    // no pointers.
    unsafe { libc::geteuid() }
}

// NOTE: without unix permissions the temp folder is used as it is.
#[cfg(not(unix))]
fn private_folder(parent: &Path) -> Result<PathBuf, LockError> {
    Ok(parent.to_path_buf())
}

/// Takes the lock at `path` without waiting, and writes this process's id
/// into the file so that a second run can name the holder.
pub fn acquire(path: &Path) -> Result<ApplyLock, LockError> {
    let file = open_lock_file(path)?;
    check_lock_file(path, &file)?;
    if !try_lock(&file).map_err(|e| LockError::io(path, e))? {
        return Err(LockError::Held {
            path: path.display().to_string(),
            holder: read_holder(&file),
        });
    }
    write_holder(&file).map_err(|e| LockError::io(path, e))?;
    Ok(ApplyLock { _file: file })
}

/// Opens or creates the lock file without following a symbolic link at
/// `path` and without truncating it.
fn open_lock_file(path: &Path) -> Result<File, LockError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path).map_err(|error| {
        #[cfg(unix)]
        if error.raw_os_error() == Some(libc::ELOOP) {
            return LockError::unsafe_path(
                path,
                "the lock file is a symbolic link, which is never followed; remove it or choose another --lock-file",
            );
        }
        LockError::io(path, error)
    })
}

/// Checks that the opened lock file is a regular file of the current user
/// with no other name, so that writing the holder changes no other file.
#[cfg(unix)]
fn check_lock_file(path: &Path, file: &File) -> Result<(), LockError> {
    use std::os::unix::fs::MetadataExt;

    let metadata = file.metadata().map_err(|e| LockError::io(path, e))?;
    let uid = current_uid();
    let reason = if !metadata.is_file() {
        "the lock file is not a regular file".to_string()
    } else if metadata.uid() != uid {
        format!(
            "the lock file is owned by uid {}, not by this user (uid {uid})",
            metadata.uid()
        )
    } else if metadata.nlink() != 1 {
        format!(
            "the lock file has {} hard links, so it may be another file",
            metadata.nlink()
        )
    } else {
        return Ok(());
    };
    Err(LockError::unsafe_path(
        path,
        format!("{reason}; remove it or choose another --lock-file"),
    ))
}

#[cfg(not(unix))]
fn check_lock_file(_path: &Path, _file: &File) -> Result<(), LockError> {
    Ok(())
}

/// Returns the first line of the lock file with control characters
/// removed, because another process wrote it and a terminal shows it.
fn read_holder(file: &File) -> String {
    let mut bytes = Vec::new();
    let _ = file.take(HOLDER_BYTES).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let first_line = text.lines().next().unwrap_or("");
    let printable: String = first_line.chars().filter(|c| !c.is_control()).collect();
    match printable.trim() {
        "" => "holder unknown".to_string(),
        holder => holder.to_string(),
    }
}

/// Writes `pid N` as the file's first line, in place. Older content after
/// that line stays, and [`read_holder`] ignores it.
#[cfg(unix)]
fn write_holder(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;

    file.write_all_at(format!("pid {}\n", std::process::id()).as_bytes(), 0)
}

#[cfg(not(unix))]
fn write_holder(mut file: &File) -> std::io::Result<()> {
    use std::io::{Seek, Write};

    file.rewind()?;
    writeln!(file, "pid {}", std::process::id())
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
    fn lock_name_differs_by_shard() {
        let rules = Path::new("/nonexistent/rules.yaml");
        let whole = lock_name(rules, None);
        let shard = lock_name(rules, Some(Shard { index: 0, count: 2 }));
        assert_ne!(whole, shard);
        assert_eq!(whole, lock_name(rules, None));
        assert_eq!(whole, lock_name(rules, Some(Shard { index: 0, count: 1 })));
    }

    #[cfg(unix)]
    #[test]
    fn symlink_at_lock_path_is_rejected() {
        let dir = tempfile::TempDir::new().unwrap();
        let target = dir.path().join("important.txt");
        std::fs::write(&target, "important data\n").unwrap();
        let path = dir.path().join("apply.lock");
        std::os::unix::fs::symlink(&target, &path).unwrap();

        let error = acquire(&path).unwrap_err();

        assert!(matches!(error, LockError::Unsafe { .. }), "{error}");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        let content = std::fs::read_to_string(&target).unwrap();
        assert_eq!(content, "important data\n");
    }

    #[cfg(unix)]
    #[test]
    fn hard_linked_lock_file_is_rejected() {
        let dir = tempfile::TempDir::new().unwrap();
        let target = dir.path().join("important.txt");
        std::fs::write(&target, "important data\n").unwrap();
        let path = dir.path().join("apply.lock");
        std::fs::hard_link(&target, &path).unwrap();

        let error = acquire(&path).unwrap_err();

        assert!(error.to_string().contains("2 hard links"), "{error}");
        let content = std::fs::read_to_string(&target).unwrap();
        assert_eq!(content, "important data\n");
    }

    #[test]
    fn holder_is_first_line_without_control_characters() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("apply.lock");
        std::fs::write(&path, "pid 1 \x1b[31mred\x07\nsecond line\n").unwrap();
        let file = File::open(&path).unwrap();

        let holder = read_holder(&file);

        assert_eq!(holder, "pid 1 [31mred");
    }

    #[test]
    fn holder_replaces_longer_old_content_in_first_line() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("apply.lock");
        std::fs::write(&path, "pid 123456789012345678901234567890 old").unwrap();
        let lock = acquire(&path).expect("lock");
        let file = File::open(&path).unwrap();

        let holder = read_holder(&file);

        assert_eq!(holder, format!("pid {}", std::process::id()));
        drop(lock);
    }

    #[cfg(unix)]
    #[test]
    fn private_folder_is_created_with_mode_0700() {
        use std::os::unix::fs::PermissionsExt;

        let parent = tempfile::TempDir::new().unwrap();

        let folder = private_folder(parent.path()).expect("private folder");

        let mode = std::fs::metadata(&folder).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(folder.starts_with(parent.path()));
        assert_eq!(
            private_folder(parent.path()).expect("existing folder"),
            folder
        );
    }

    #[cfg(unix)]
    #[test]
    fn private_folder_symlink_is_rejected() {
        let parent = tempfile::TempDir::new().unwrap();
        let elsewhere = tempfile::TempDir::new().unwrap();
        let uid = current_uid();
        let folder = parent.path().join(format!("syncer-{uid}"));
        std::os::unix::fs::symlink(elsewhere.path(), &folder).unwrap();

        let error = private_folder(parent.path()).unwrap_err();

        assert!(error.to_string().contains("symbolic link"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn private_folder_writable_by_others_is_rejected() {
        use std::os::unix::fs::PermissionsExt;

        let parent = tempfile::TempDir::new().unwrap();
        let uid = current_uid();
        let folder = parent.path().join(format!("syncer-{uid}"));
        std::fs::create_dir(&folder).unwrap();
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777)).unwrap();

        let error = private_folder(parent.path()).unwrap_err();

        assert!(error.to_string().contains("mode 777"), "{error}");
    }
}
