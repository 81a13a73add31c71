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
use super::leveldb::open_db;
use super::migrate::{MigrationContext, SCHEMA_VERSION, check_supported, migrate};
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
    /// The digest the next delta must name as its parent (the last applied delta's, or the
    /// bundle's chain digest). Also recorded inside the database, in the same write as the
    /// last delta's records.
    pub chain_digest: String,
    /// Length of the object `chain_digest` names.
    pub chain_len: u64,
    /// Seq of the bundle the version descends from.
    pub bundle_seq: u64,
    /// Issue time of the head this version was synced to (None: the bundle alone).
    pub head_issued_at: Option<u64>,
    /// The store layout version of its database (versions written before this field
    /// existed are schema 1).
    #[serde(default = "schema_one")]
    pub schema_version: u32,
}

fn schema_one() -> u32 {
    1
}

impl VersionInfo {
    /// Writes `version.json` into a version directory being made (in staging).
    pub fn write_into(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(VERSION_FILE);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(self).context("encode version.json")?,
        )
        .with_context(|| format!("write {}", path.display()))
    }
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
    /// The locked `lock` file; the lock is released when this is dropped. `None` for a
    /// read-only view.
    _lock: Option<File>,
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
            _lock: Some(lock),
        })
    }

    /// A view of a state dir that takes no lock and changes nothing (for `status`, `export`
    /// and `rollback` beside a running daemon). Only atomic, durable pointer writes may be
    /// made through it.
    pub fn inspect(root: &Path) -> anyhow::Result<Self> {
        if !root.join("versions").is_dir() {
            bail!(
                "{} is not a state dir (no versions/ inside): pass the --state-dir that serve or sync uses",
                root.display()
            );
        }
        Ok(StateDir {
            root: root.to_path_buf(),
            _lock: None,
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

    /// Loads the description of a committed version.
    pub fn load_version(&self, name: &str) -> anyhow::Result<StoreVersion> {
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
        check_supported(info.schema_version, &format!("version {name}"))?;
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
                if info.schema_version < SCHEMA_VERSION {
                    return self.upgrade(&current, &manifest.filter_fields);
                }
                return Ok(current);
            }
            tracing::info!(
                current = %info.name, current_seq = info.seq, bundle_seq = manifest.seq,
                "bundle is newer than (or incompatible with) the state dir; starting again from the bundle"
            );
        }
        let started = std::time::Instant::now();
        bundle.verify_files()?;
        let verify_seconds = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let (name, staging) = self.new_staging(manifest.seq)?;
        let method = clone_db_dir(&bundle.dir.join(DB_DIR), &staging.join(DB_DIR))?;
        let index_method =
            share_immutable(&bundle.dir.join(INDEX_FILE), &staging.join(INDEX_FILE))?;
        tracing::info!(
            db = %method,
            index = %index_method,
            verify_seconds,
            clone_seconds = started.elapsed().as_secs_f64(),
            "checked the bundle's digests and cloned it into a new version"
        );
        if method != CloneMethod::HardLink {
            tracing::warn!(
                "tables were cloned by {method}, not hard link: keep the state dir on the bundle's filesystem, owned by the service user"
            );
        }
        migrate_copy(
            &staging.join(DB_DIR),
            manifest.schema_version,
            &manifest.filter_fields,
            &format!(
                "version {name}, cloned from bundle {}",
                bundle.dir.display()
            ),
        )?;
        let info = VersionInfo {
            name: name.clone(),
            dataset: manifest.dataset.clone(),
            seq: manifest.seq,
            model_fingerprint: manifest.model_fingerprint.clone(),
            bundle_manifest_sha256: bundle.manifest_sha256.clone(),
            n_items: manifest.n_items,
            created_at: now_secs(),
            chain_digest: manifest.chain_digest.clone(),
            chain_len: manifest.chain_len,
            bundle_seq: manifest.seq,
            head_issued_at: None,
            schema_version: SCHEMA_VERSION,
        };
        info.write_into(&staging)?;
        self.commit(&staging, &name)
    }

    /// Makes and commits a copy of `version` migrated to [`SCHEMA_VERSION`] (a state dir
    /// written by an older binary). The old version is left as it was.
    pub fn upgrade(
        &self,
        version: &StoreVersion,
        filter_fields: &[String],
    ) -> anyhow::Result<StoreVersion> {
        let (name, staging) = self.new_staging(version.info.seq)?;
        clone_db_dir(&version.db_dir(), &staging.join(DB_DIR))?;
        share_immutable(&version.index_path(), &staging.join(INDEX_FILE))?;
        migrate_copy(
            &staging.join(DB_DIR),
            version.info.schema_version,
            filter_fields,
            &format!("version {name}, cloned from version {}", version.info.name),
        )?;
        let info = VersionInfo {
            name: name.clone(),
            created_at: now_secs(),
            schema_version: SCHEMA_VERSION,
            ..version.info.clone()
        };
        info.write_into(&staging)?;
        tracing::info!(from = %version.info.name, to = %name, schema = SCHEMA_VERSION, "upgraded the current version's store layout");
        let upgraded = self.commit(&staging, &name)?;
        // A pin (rollback) on the old copy moves to the new one: same seq, same items.
        if self.pinned()?.as_deref() == Some(version.info.name.as_str()) {
            self.set_pinned(Some(&name))?;
        }
        Ok(upgraded)
    }

    /// Commits a complete staging directory as version `name` and points `current` at it.
    /// The commit point is the fsync of the state dir after the pointer's rename.
    pub fn commit(&self, staging: &Path, name: &str) -> anyhow::Result<StoreVersion> {
        durable::fsync_tree(staging)?;
        crate::failpoint::hit("after-fsync");
        durable::rename_durably(staging, &self.root.join("versions").join(name))?;
        crate::failpoint::hit("after-rename");
        self.set_current(name)?;
        self.load_version(name)
    }

    /// Points `current` at a committed version (atomically, durably).
    pub fn set_current(&self, name: &str) -> anyhow::Result<()> {
        durable::write_atomically(&self.root.join("current"), format!("{name}\n").as_bytes())
    }

    /// A new, empty staging directory for a version of `seq`; returns its name and path.
    pub fn new_staging(&self, seq: u64) -> anyhow::Result<(String, PathBuf)> {
        let name = format!("{seq:012}-{}", unique_suffix());
        let path = self.root.join("staging").join(&name);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok((name, path))
    }

    /// Every committed version that loads, oldest first (by seq, then creation).
    pub fn versions(&self) -> anyhow::Result<Vec<StoreVersion>> {
        let dir = self.root.join("versions");
        let mut versions = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            match self.load_version(&name) {
                Ok(version) => versions.push(version),
                Err(error) => {
                    tracing::warn!(version = %name, error = format!("{error:#}"), "skipping an unusable version")
                }
            }
        }
        versions.sort_by(|a, b| {
            (a.info.seq, a.info.created_at, &a.info.name).cmp(&(
                b.info.seq,
                b.info.created_at,
                &b.info.name,
            ))
        });
        Ok(versions)
    }

    /// Removes committed versions beyond the newest `keep`, never the current or pinned one.
    /// Readers never hold a version directory (they hold clones), so removal is safe.
    pub fn collect_garbage(&self, keep: usize) -> anyhow::Result<usize> {
        let current = self.current_name()?;
        let pinned = self.pinned()?;
        let versions = self.versions()?;
        let mut removed = 0;
        let n_old = versions.len().saturating_sub(keep.max(1));
        for version in versions.into_iter().take(n_old) {
            if Some(&version.info.name) == current.as_ref()
                || Some(&version.info.name) == pinned.as_ref()
            {
                continue;
            }
            remove_any(&version.dir)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The name `current` holds, if any.
    pub fn current_name(&self) -> anyhow::Result<Option<String>> {
        read_name(&self.root.join("current"))
    }

    /// The version pinned by `rollback`, if any: following does not move away from it.
    pub fn pinned(&self) -> anyhow::Result<Option<String>> {
        read_name(&self.root.join("pinned"))
    }

    /// Pins (or with `None`, unpins) a version.
    pub fn set_pinned(&self, name: Option<&str>) -> anyhow::Result<()> {
        let path = self.root.join("pinned");
        match name {
            Some(name) => durable::write_atomically(&path, format!("{name}\n").as_bytes()),
            None => match std::fs::remove_file(&path) {
                Ok(()) => durable::fsync_path(&self.root),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
            },
        }
    }

    /// The highest head ever accepted here.
    pub fn head_watermark(&self) -> anyhow::Result<Option<crate::delta::chain::HeadWatermark>> {
        let path = self.root.join("trust.json");
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parse {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Records an accepted head if it is higher than the one recorded (durably).
    pub fn record_head(&self, seen: crate::delta::chain::HeadWatermark) -> anyhow::Result<()> {
        let higher = match self.head_watermark()? {
            Some(old) => (seen.seq, seen.issued_at) > (old.seq, old.issued_at),
            None => true,
        };
        if higher {
            durable::write_atomically(&self.root.join("trust.json"), &serde_json::to_vec(&seen)?)?;
        }
        Ok(())
    }

    /// A fresh directory path under `readers/` for one set of read handles.
    pub fn reader_dir(&self, version: &StoreVersion) -> PathBuf {
        self.root
            .join("readers")
            .join(format!("{}-{}", version.info.name, unique_suffix()))
    }
}

/// Migrates the closed database at `db_dir` (a clone in staging) from `schema_version` to
/// [`SCHEMA_VERSION`], if it is older, and closes it again.
pub fn migrate_copy(
    db_dir: &Path,
    schema_version: u32,
    filter_fields: &[String],
    what: &str,
) -> anyhow::Result<()> {
    check_supported(schema_version, what)?;
    if schema_version >= SCHEMA_VERSION {
        return Ok(());
    }
    let mut db = open_db(db_dir, false)?;
    migrate(
        &mut db,
        schema_version,
        &MigrationContext::new(filter_fields.to_vec()),
        what,
    )?;
    db.close()
        .map_err(|s| anyhow::anyhow!("{s}"))
        .with_context(|| format!("close {}", db_dir.display()))?;
    Ok(())
}

fn read_name(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(name) => Ok(Some(name.trim().to_owned()).filter(|n| !n.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
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
