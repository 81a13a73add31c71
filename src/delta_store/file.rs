//! A delta store in a local directory.
//!
//! Objects are created exclusively (written to a temporary file, fsynced, then hard-linked to
//! their name, which fails if the name exists). An object is replaced under a lock on
//! `.lock`: read, compare its digest with the expected tag, write a temporary file, fsync,
//! rename, fsync the directory.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Condition, FetchError, Fetched, PutError};
use crate::durable;
use crate::lock_file::LockFile;

/// A directory holding a delta chain.
#[derive(Debug, Clone)]
pub struct FileStore {
    /// The root directory.
    root: PathBuf,
    /// How long one read may take (a file that never finishes reading, such as a FIFO put
    /// in a head's place, fails the read instead of blocking the sync).
    attempt_timeout: std::time::Duration,
}

impl FileStore {
    /// Opens a store directory; the first publish creates it, so reading a store that does
    /// not exist yet finds no head.
    pub fn open(root: &Path, attempt_timeout: std::time::Duration) -> anyhow::Result<Self> {
        Ok(FileStore {
            root: root.to_path_buf(),
            attempt_timeout,
        })
    }

    /// The store's URL.
    pub fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    /// The root directory (watched for changes by the follower).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(super) async fn get(&self, name: &str, cap: u64) -> Result<Option<Fetched>, FetchError> {
        self.read(name, 0, cap, true).await
    }

    /// Reads `len` bytes of an object from `offset` (fewer at its end).
    pub(super) async fn get_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Fetched>, FetchError> {
        self.read(name, offset, len, false).await
    }

    /// Reads at most `cap` bytes from `offset`; `whole` refuses an object longer than that.
    async fn read(
        &self,
        name: &str,
        offset: u64,
        cap: u64,
        whole: bool,
    ) -> Result<Option<Fetched>, FetchError> {
        let path = self.root.join(name);
        let name = name.to_owned();
        let timed_out = FetchError::Unavailable {
            name: path.display().to_string(),
            message: format!(
                "not read within {}s (attempt timeout)",
                self.attempt_timeout.as_secs_f64()
            ),
        };
        let read = tokio::task::spawn_blocking(move || {
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(FetchError::Unavailable {
                        name,
                        message: e.to_string(),
                    });
                }
            };
            let mut bytes = Vec::new();
            let unavailable = |e: std::io::Error| FetchError::Unavailable {
                name: name.clone(),
                message: e.to_string(),
            };
            let mut file = file;
            if offset > 0 {
                file.seek(std::io::SeekFrom::Start(offset))
                    .map_err(unavailable)?;
            }
            file.take(cap + u64::from(whole))
                .read_to_end(&mut bytes)
                .map_err(unavailable)?;
            if bytes.len() as u64 > cap {
                return Err(FetchError::Oversize { name, cap });
            }
            let etag = crate::digest::sha256_hex(&bytes);
            Ok(Some(Fetched { bytes, etag }))
        });
        // On a timeout the blocked thread is left to finish on its own; the sync goes on.
        tokio::time::timeout(self.attempt_timeout, read)
            .await
            .map_err(|_| timed_out)?
            .map_err(|e| FetchError::Unavailable {
                name: "read task".into(),
                message: e.to_string(),
            })?
    }

    pub(super) async fn create(&self, name: &str, bytes: &[u8]) -> Result<(), PutError> {
        let path = self.root.join(name);
        let bytes = bytes.to_vec();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().context("delta path has a parent")?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create delta store {}", dir.display()))?;
            let tmp =
                tempfile::NamedTempFile::new_in(dir).context("create a temporary delta file")?;
            std::fs::write(tmp.path(), &bytes).context("write delta")?;
            // Temporary files are private; a delta is readable by the daemons that follow
            // the store, like the head.
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
                    .context("make the delta readable")?;
            }
            durable::fsync_path(tmp.path())?;
            match std::fs::hard_link(tmp.path(), &path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(PutError::Conflict { name });
                }
                Err(e) => {
                    return Err(anyhow::Error::from(e)
                        .context(format!("create {}", path.display()))
                        .into());
                }
            }
            durable::fsync_path(dir)?;
            Ok(())
        })
        .await
        .map_err(|e| PutError::Other(e.into()))?
    }

    pub(super) async fn replace(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition,
    ) -> Result<(), PutError> {
        let root = self.root.clone();
        let path = self.root.join(name);
        let name = name.to_owned();
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().context("object path has a parent")?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create delta store {}", dir.display()))?;
            // One replacement at a time per store: read, compare, write, under the lock.
            let lock = LockFile::acquire(&root.join(".lock"))?;
            let current = match std::fs::read(&path) {
                Ok(current) => Some(crate::digest::sha256_hex(&current)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(anyhow::Error::from(e)
                        .context(format!("read {}", path.display()))
                        .into());
                }
            };
            let holds = match (&condition, &current) {
                (Condition::Absent, None) => true,
                (Condition::Matches(expected), Some(current)) => expected == current,
                _ => false,
            };
            if !holds {
                return Err(PutError::Conflict { name });
            }
            write_readable(&path, &bytes)?;
            drop(lock);
            Ok(())
        })
        .await
        .map_err(|e| PutError::Other(e.into()))?
    }

    pub(super) async fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        // Object names sit in at most one folder (`metadata/`, `targets/`).
        let (dir, file_prefix) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let dir_path = self.root.join(dir);
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(&dir_path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e).with_context(|| format!("list {}", dir_path.display())),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(file_prefix) {
                names.push(format!("{dir}/{name}"));
            }
        }
        names.sort();
        Ok(names)
    }

    pub(super) async fn remove(&self, name: &str) -> anyhow::Result<()> {
        let path = self.root.join(name);
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))
    }
}

/// Replaces `path` atomically and durably, readable by the daemons that follow the store.
fn write_readable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    durable::write_atomically(path, bytes)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("make {} readable", path.display()))
}
