//! Advisory whole-file locks (`flock` through std's `File::lock`), released when the
//! [`LockFile`] is dropped or the process dies.

use std::fs::File;
use std::path::Path;

use anyhow::Context;

/// A held lock on a file.
#[derive(Debug)]
pub struct LockFile {
    /// The open, locked file; closing it releases the lock.
    _file: File,
}

impl LockFile {
    /// Creates `path` if needed and takes its lock without waiting; `Ok(None)` when another
    /// process (or another handle in this one) holds it.
    pub fn try_acquire(path: &Path) -> anyhow::Result<Option<Self>> {
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(LockFile { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("lock {}", path.display()))
            }
        }
    }

    /// Creates `path` if needed and takes its lock, waiting for another holder to release it.
    /// Blocking: call it off the async workers.
    pub fn acquire(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        file.lock()
            .with_context(|| format!("lock {}", path.display()))?;
        Ok(LockFile { _file: file })
    }
}
