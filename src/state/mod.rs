//! The state dir, and the one owner of everything under it.
//!
//! ```text
//! STATE_DIR/
//!   lock                 flock held by the one process that owns the state dir
//!   current              the name of the current version (replaced atomically)
//!   pinned               the version `rollback` pinned, if any
//!   refused.json         versions the health gate refused, by their last delta's digest
//!   trust.json           the newest delta verified metadata named (for status)
//!   trust/ID/            the TUF metadata trusted, per delta store and dataset (ID hashes
//!                        both; binding.json names them): what refuses a replayed or
//!                        rolled-back repository across restarts
//!   versions/NAME/       one complete version: db/, index.bin, version.json, and model.json
//!                        when its model is not the bundle's (after a model rollover)
//!   staging/NAME/        versions being made; removed on start
//!   readers/             per-process clones the read handles open; removed on start
//!   scratch/NAME(.lock)  short-lived work of lock-free tools (export); removed once unlocked
//!   downloads/SHA.part   a catch-up snapshot being downloaded (kept across restarts to
//!                        resume; removed once installed)
//! ```
//!
//! A version is made in staging ([`Staging`]), fsynced whole, renamed into `versions/`, and
//! only then named by `current` (write temp, fsync, rename, fsync parent): the commit point
//! is that last fsync. A committed version directory is never written again; readers open
//! clones of it. Nothing outside this module writes under the state dir.

pub mod apply;
mod local;
mod make;
mod models;
mod refused;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::bundle::{DB_DIR, INDEX_FILE};
use crate::db::migrate::check_supported;
use crate::delta::chain::ChainPosition;
use crate::durable;
use crate::lock_file::LockFile;

pub use local::LocalState;
pub use make::{Scratch, Staging};
pub use models::{Models, short as short_fingerprint};
pub use refused::{MAX_REFUSALS, Refusal};

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
    /// The db layout version of its database (versions written before this field existed
    /// are schema 1).
    #[serde(default = "schema_one")]
    pub schema_version: u32,
}

fn schema_one() -> u32 {
    1
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

    /// Where the delta chain continues from this version.
    pub fn chain_position(&self) -> ChainPosition {
        let info = &self.info;
        ChainPosition::new(
            &info.dataset,
            info.seq,
            &info.chain_digest,
            info.chain_len,
            &info.model_fingerprint,
        )
        .held_by(format!(
            "the state dir's version {} (made from --bundle)",
            info.name
        ))
    }
}

/// The newest delta verified metadata named when this state dir last synced, remembered in
/// `trust.json` for status (the TUF metadata in `trust/` is what refuses rollbacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TrustWatermark {
    /// The newest delta's seq.
    pub seq: u64,
    /// When it was published.
    pub issued_at: u64,
}

/// Which repository trusted metadata belongs to: a state dir pointed at another delta store
/// (or serving another dataset) starts from its baked root again rather than refusing
/// everything against metadata of a different repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBinding {
    /// The delta store URL.
    pub store: String,
    /// The dataset.
    pub dataset: String,
}

impl TrustBinding {
    /// The folder name under `trust/`: a digest of the store and dataset.
    fn folder(&self) -> String {
        let digest =
            crate::digest::sha256_hex(format!("{}\0{}", self.store, self.dataset).as_bytes());
        digest[..16].to_owned()
    }
}

impl TrustWatermark {
    /// (seq, issue time), the order heads are compared in.
    pub fn as_pair(&self) -> (u64, u64) {
        (self.seq, self.issued_at)
    }
}

/// A flag that abandons work in progress (an apply overrunning its deadline): checked
/// between steps, and awaited beside anything that waits, so work stops at the next step
/// boundary and never commits after it is raised.
#[derive(Debug, Clone, Default)]
pub struct Cancel(tokio_util::sync::CancellationToken);

/// Work abandoned because its [`Cancel`] was raised.
#[derive(Debug, thiserror::Error)]
#[error("cancelled before the commit point: nothing was committed")]
pub struct Cancelled;

impl Cancel {
    /// A flag nobody raises.
    pub fn never() -> Self {
        Self::default()
    }

    /// Raises the flag.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether the flag is raised.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// `Err(Cancelled)` once the flag is raised.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Runs `work` until it finishes or the flag is raised (then `Err(Cancelled)`).
    pub async fn run<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, Cancelled> {
        tokio::select! {
            biased;
            _ = self.0.cancelled() => Err(Cancelled),
            done = work => Ok(done),
        }
    }
}

/// Room on the filesystem that holds a directory, as `statvfs(2)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesystemSpace {
    /// Bytes an unprivileged user (the service user) may still write.
    pub available: u64,
    /// Size of the filesystem in bytes.
    pub size: u64,
}

/// The room left on the filesystem of `dir` (the state dir, where every new version is
/// made): a read, never a write. Blocking (a `statvfs(2)`): call it off the async workers.
pub fn filesystem_space(dir: &Path) -> std::io::Result<FilesystemSpace> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(FilesystemSpace {
        available: stat.f_bavail.saturating_mul(stat.f_frsize),
        size: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

/// An open state dir. Holding it (through [`StateDir::open`]) holds the state dir's lock.
#[derive(Debug)]
pub struct StateDir {
    /// The state dir's root.
    root: PathBuf,
    /// The held lock; released when this is dropped. `None` for a lock-free view.
    _lock: Option<LockFile>,
}

impl StateDir {
    /// Opens (creating if needed) a state dir, takes its lock, and removes leftovers of
    /// interrupted work (staging, reader clones, scratch space no process holds).
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        for sub in ["versions", "staging", "readers", "scratch"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("create state dir {}", root.join(sub).display()))?;
        }
        let lock = LockFile::try_acquire(&root.join("lock"))?.with_context(|| {
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
        make::remove_unheld_scratch(&root.join("scratch"))?;
        Ok(StateDir {
            root: root.to_path_buf(),
            _lock: Some(lock),
        })
    }

    /// A view of a state dir that takes no lock (for `status`, `export` and `rollback` beside
    /// a running daemon). Through it only atomic, durable pointer writes and private scratch
    /// space are used.
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

    /// Where the download of the object with sha256 `sha256` is written (`downloads/`
    /// is created if needed). What is there survives a restart, so a download resumes.
    pub fn download_path(&self, sha256: &str) -> anyhow::Result<PathBuf> {
        let dir = self.root.join("downloads");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(dir.join(format!("{sha256}.part")))
    }

    /// Removes every download but `keep`'s (a finished one, or one no longer wanted).
    pub fn remove_downloads(&self, keep: Option<&str>) -> anyhow::Result<()> {
        let dir = self.root.join("downloads");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries {
            let path = entry?.path();
            if keep.is_some_and(|k| {
                path.file_name() == Some(std::ffi::OsStr::new(&format!("{k}.part")))
            }) {
                continue;
            }
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
        Ok(())
    }

    /// The committed version `current` names, if any and if it is intact enough to use.
    pub fn current(&self) -> anyhow::Result<Option<StoreVersion>> {
        let Some(name) = self.current_name()? else {
            return Ok(None);
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

    /// The name `current` holds, if any.
    pub fn current_name(&self) -> anyhow::Result<Option<String>> {
        read_name(&self.root.join("current"))
    }

    /// Points `current` at a committed version (atomically, durably).
    pub fn set_current(&self, name: &str) -> anyhow::Result<()> {
        self.load_version(name)?;
        durable::write_atomically(&self.root.join("current"), format!("{name}\n").as_bytes())
    }

    /// Forgets which version is current (durably), so the next start clones the bundle again.
    pub fn reset(&self) -> anyhow::Result<()> {
        remove_durably(&self.root, "current")
    }

    /// The version pinned by `rollback`, if any: following does not move away from it.
    pub fn pinned(&self) -> anyhow::Result<Option<String>> {
        read_name(&self.root.join("pinned"))
    }

    /// Pins (or with `None`, unpins) a version.
    pub fn set_pinned(&self, name: Option<&str>) -> anyhow::Result<()> {
        match name {
            Some(name) => {
                durable::write_atomically(&self.root.join("pinned"), format!("{name}\n").as_bytes())
            }
            None => remove_durably(&self.root, "pinned"),
        }
    }

    /// The highest head ever accepted here.
    pub fn watermark(&self) -> anyhow::Result<Option<TrustWatermark>> {
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
    pub fn record_watermark(&self, seen: TrustWatermark) -> anyhow::Result<()> {
        let higher = match self.watermark()? {
            Some(old) => seen.as_pair() > old.as_pair(),
            None => true,
        };
        if higher {
            durable::write_atomically(&self.root.join("trust.json"), &serde_json::to_vec(&seen)?)?;
        }
        Ok(())
    }

    /// A scratch copy of the TUF metadata trusted for `binding` (empty the first time), for
    /// a client to load the repository with. Nothing in the state dir changes until
    /// [`StateDir::keep_trusted`] keeps the copy, after the sync it served succeeded.
    pub fn stage_trusted(&self, binding: &TrustBinding) -> anyhow::Result<Scratch> {
        let scratch = self.scratch("trust")?;
        let kept = self.root.join("trust").join(binding.folder());
        if kept.is_dir() {
            for entry in
                std::fs::read_dir(&kept).with_context(|| format!("list {}", kept.display()))?
            {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    std::fs::copy(entry.path(), scratch.path().join(entry.file_name()))
                        .with_context(|| format!("copy {}", entry.path().display()))?;
                }
            }
        }
        Ok(scratch)
    }

    /// Keeps the TUF metadata in `staged` as what is trusted for `binding` (each file
    /// replaced atomically and durably).
    pub fn keep_trusted(&self, binding: &TrustBinding, staged: &Scratch) -> anyhow::Result<()> {
        let kept = self.root.join("trust").join(binding.folder());
        std::fs::create_dir_all(&kept).with_context(|| format!("create {}", kept.display()))?;
        for entry in std::fs::read_dir(staged.path())
            .with_context(|| format!("list {}", staged.path().display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let bytes = std::fs::read(entry.path())
                    .with_context(|| format!("read {}", entry.path().display()))?;
                let target = kept.join(entry.file_name());
                let old = std::fs::read(&target).ok();
                if !same_metadata(old.as_deref(), &bytes) {
                    durable::write_atomically(&target, &bytes)?;
                }
            }
        }
        let binding_file = kept.join("binding.json");
        if !binding_file.exists() {
            durable::write_atomically(&binding_file, &serde_json::to_vec_pretty(binding)?)?;
        }
        Ok(())
    }

    /// A fresh directory path under `readers/` for one set of read handles.
    pub fn reader_dir(&self, version: &StoreVersion) -> PathBuf {
        self.root
            .join("readers")
            .join(format!("{}-{}", version.info.name, make::unique_suffix()))
    }

    /// Removes committed versions beyond the newest `keep`, never the current one, the
    /// pinned one or `served` (the one a running daemon serves; "" for none). Readers never
    /// hold a version directory (they hold clones), so removal is safe. Returns how many
    /// were removed and how many are kept. Blocking (it removes whole trees): see
    /// [`StateDir::collect_garbage_in_background`].
    pub fn collect_garbage(&self, keep: usize, served: &str) -> anyhow::Result<(usize, usize)> {
        let current = self.current_name()?;
        let pinned = self.pinned()?;
        let versions = self.versions()?;
        let n_versions = versions.len();
        let mut removed = 0;
        let n_old = n_versions.saturating_sub(keep.max(1));
        for version in versions.into_iter().take(n_old) {
            let name = Some(&version.info.name);
            if name == current.as_ref() || name == pinned.as_ref() || version.info.name == served {
                continue;
            }
            remove_any(&version.dir)?;
            removed += 1;
        }
        // What is on disk now, not what was meant to be: the count `/status` reports.
        Ok((removed, self.versions()?.len()))
    }

    /// [`StateDir::collect_garbage`] on a blocking thread, off the async workers; the
    /// outcome is logged here. Returns how many versions are kept (`None` on failure).
    pub async fn collect_garbage_in_background(
        self: &Arc<Self>,
        keep: usize,
        served: &str,
    ) -> Option<usize> {
        let (state, served) = (self.clone(), served.to_owned());
        match tokio::task::spawn_blocking(move || state.collect_garbage(keep, &served)).await {
            Ok(Ok((removed, kept))) => {
                if removed > 0 {
                    tracing::info!(removed, kept, "removed old versions");
                }
                Some(kept)
            }
            Ok(Err(error)) => {
                tracing::warn!(error = format!("{error:#}"), "remove old versions");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "join the garbage collection task");
                None
            }
        }
    }
}

/// Whether a kept metadata file already says what `new` says: the same bytes, or the same
/// JSON (tough re-serialises what it keeps, and the order of its keys changes from one
/// write to the next), so that a poll with nothing new rewrites and fsyncs nothing.
fn same_metadata(old: Option<&[u8]>, new: &[u8]) -> bool {
    let Some(old) = old else {
        return false;
    };
    old == new
        || matches!(
            (
                serde_json::from_slice::<serde_json::Value>(old),
                serde_json::from_slice::<serde_json::Value>(new),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}

fn read_name(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(name) => Ok(Some(name.trim().to_owned()).filter(|n| !n.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Removes `root/name` if it exists and fsyncs `root`.
fn remove_durably(root: &Path, name: &str) -> anyhow::Result<()> {
    let path = root.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => durable::fsync_path(root),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
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
