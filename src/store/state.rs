//! The state dir: copy-on-write versions of the store and the pointer to the current one.
//!
//! ```text
//! STATE_DIR/
//!   lock                 flock held by the one process that owns the state dir
//!   current              the name of the current version (replaced atomically)
//!   versions/NAME/       one complete version: db/, index.bin, version.json
//!   staging/             versions being made; removed on start
//!   readers/             per-process clones the read handles open; removed on start
//! ```
//!
//! A version is made in `staging/`, fsynced whole, renamed into `versions/`, and only then
//! named by `current` (write temp, fsync, rename, fsync parent): the commit point is that
//! last fsync. A version directory is never written after it is committed; readers open
//! clones of it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::clone::{CloneMethod, clone_db_dir, share_immutable};
use super::durable;
use crate::bundle::{Bundle, DB_DIR, INDEX_FILE};

/// Name of the description file inside a version directory.
pub const VERSION_FILE: &str = "version.json";

/// What a version holds, written inside it before it is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version directory's name.
    pub name: String,
    /// Dataset of the bundle it descends from.
    pub dataset: String,
    /// The delta seq it includes.
    pub seq: u64,
    /// Model fingerprint it is bound to.
    pub model_fingerprint: String,
    /// sha256 of the manifest of the bundle it descends from.
    pub bundle_manifest_sha256: String,
    /// Number of items.
    pub n_items: u64,
    /// Seconds since the epoch when it was made.
    pub created_at: u64,
}

/// A committed version on disk.
#[derive(Debug, Clone)]
pub struct StoreVersion {
    /// The version directory.
    pub dir: PathBuf,
    /// Its description.
    pub info: VersionInfo,
}

impl StoreVersion {
    /// The version's LevelDB directory (closed; open clones of it, never it).
    pub fn db_dir(&self) -> PathBuf {
        self.dir.join(DB_DIR)
    }

    /// The version's vector index file.
    pub fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX_FILE)
    }
}

/// An open state dir. Holding it holds the state dir's lock.
#[derive(Debug)]
pub struct StateDir {
    /// The state dir's root.
    root: PathBuf,
    /// The locked `lock` file; the lock is released when this is dropped.
    _lock: File,
}

impl StateDir {
    /// Opens (creating if needed) a state dir, takes its lock, and removes leftovers of
    /// interrupted work (staging and reader clones).
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        for sub in ["versions", "staging", "readers"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("create state dir {}", root.join(sub).display()))?;
        }
        let lock_path = root.join("lock");
        let lock =
            File::create(&lock_path).with_context(|| format!("create {}", lock_path.display()))?;
        lock_exclusive(&lock).with_context(|| {
            format!(
                "lock state dir {}: another deltacache process is using it; stop it or choose another --state-dir",
                root.display()
            )
        })?;
        for sub in ["staging", "readers"] {
            let dir = root.join(sub);
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))?
            {
                let path = entry?.path();
                tracing::info!(path = %path.display(), "removing leftover of interrupted work");
                remove_any(&path)?;
            }
        }
        Ok(StateDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The state dir's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The committed version `current` names, if any and if it is intact enough to use.
    pub fn current(&self) -> anyhow::Result<Option<StoreVersion>> {
        let pointer = self.root.join("current");
        let name = match std::fs::read_to_string(&pointer) {
            Ok(name) => name.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", pointer.display())),
        };
        match self.load_version(&name) {
            Ok(version) => Ok(Some(version)),
            Err(error) => {
                tracing::warn!(version = %name, error = format!("{error:#}"), "current version is unusable; starting again from the bundle");
                Ok(None)
            }
        }
    }

    fn load_version(&self, name: &str) -> anyhow::Result<StoreVersion> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("current names {name:?}, which is not a version name");
        }
        let dir = self.root.join("versions").join(name);
        let path = dir.join(VERSION_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let info: VersionInfo =
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?;
        if info.name != name {
            bail!("{} describes version {:?}", path.display(), info.name);
        }
        for required in [dir.join(DB_DIR).join("CURRENT"), dir.join(INDEX_FILE)] {
            if !required.exists() {
                bail!("version {name} lacks {}", required.display());
            }
        }
        Ok(StoreVersion { dir, info })
    }

    /// Returns the current version if it descends from a compatible bundle and is at least as
    /// new; otherwise makes and commits a new version cloned from the bundle (after checking
    /// every bundle file against the manifest).
    pub fn ensure_from_bundle(&self, bundle: &Bundle) -> anyhow::Result<StoreVersion> {
        let manifest = &bundle.manifest;
        if let Some(current) = self.current()? {
            let info = &current.info;
            if info.dataset == manifest.dataset
                && info.model_fingerprint == manifest.model_fingerprint
                && info.seq >= manifest.seq
            {
                return Ok(current);
            }
            tracing::info!(
                current = %info.name, current_seq = info.seq, bundle_seq = manifest.seq,
                "bundle is newer than (or incompatible with) the state dir; starting again from the bundle"
            );
        }
        bundle.verify_files()?;
        let name = format!("{:012}-{}", manifest.seq, unique_suffix());
        let staging = self.root.join("staging").join(&name);
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("create {}", staging.display()))?;
        let method = clone_db_dir(&bundle.dir.join(DB_DIR), &staging.join(DB_DIR))?;
        let index_method =
            share_immutable(&bundle.dir.join(INDEX_FILE), &staging.join(INDEX_FILE))?;
        tracing::info!(db = %method, index = %index_method, "cloned the bundle into a new version");
        if method != CloneMethod::HardLink {
            tracing::warn!(
                "tables were cloned by {method}, not hard link: keep the state dir on the bundle's filesystem, owned by the service user"
            );
        }
        let info = VersionInfo {
            name: name.clone(),
            dataset: manifest.dataset.clone(),
            seq: manifest.seq,
            model_fingerprint: manifest.model_fingerprint.clone(),
            bundle_manifest_sha256: bundle.manifest_sha256.clone(),
            n_items: manifest.n_items,
            created_at: now_secs(),
        };
        std::fs::write(
            staging.join(VERSION_FILE),
            serde_json::to_vec_pretty(&info).context("encode version.json")?,
        )
        .context("write version.json")?;
        self.commit(&staging, &name)?;
        self.load_version(&name)
    }

    /// Commits a complete staging directory as version `name` and points `current` at it.
    fn commit(&self, staging: &Path, name: &str) -> anyhow::Result<()> {
        durable::fsync_tree(staging)?;
        durable::rename_durably(staging, &self.root.join("versions").join(name))?;
        durable::write_atomically(&self.root.join("current"), format!("{name}\n").as_bytes())
    }

    /// A fresh directory path under `readers/` for one set of read handles.
    pub fn reader_dir(&self, version: &StoreVersion) -> PathBuf {
        self.root
            .join("readers")
            .join(format!("{}-{}", version.info.name, unique_suffix()))
    }
}

fn lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn remove_any(path: &Path) -> anyhow::Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    result.with_context(|| format!("remove {}", path.display()))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{}-{}",
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
