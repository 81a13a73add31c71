//! Making versions: the one recipe behind every new version (a clone of the bundle, an
//! upgraded copy of an older layout, or the current version with deltas applied), and the
//! scratch space of lock-free tools.
//!
//! Every new version is a [`Staging`] directory: its database cloned from a source
//! (tables shared, the files LevelDB appends to copied), its index shared or rewritten, its
//! database migrated to this binary's layout, then committed whole. A `Staging` that is
//! dropped uncommitted removes itself, so a failure at any step leaves the state dir as it
//! was.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tempfile::TempDir;

use super::{Cancel, StateDir, StoreVersion, VERSION_FILE, VersionInfo, remove_any};
use crate::bundle::{Bundle, DB_DIR, INDEX_FILE, MODEL_FILE};
use crate::clock::{now_nanos, now_secs};
use crate::db::clone::{CloneMethod, clone_db_dir, share_immutable};
use crate::db::leveldb::open_db;
use crate::db::migrate::{MigrationContext, SCHEMA_VERSION, check_supported, migrate};
use crate::durable;
use crate::lock_file::LockFile;

/// A version being made in `staging/`. Removed on drop unless committed (the removal is
/// blocking: drop it on a blocking thread).
#[derive(Debug)]
pub struct Staging {
    /// The state dir it will be committed into.
    state: Arc<StateDir>,
    /// The version's name (seq, then a unique suffix).
    name: String,
    /// `staging/NAME`.
    dir: PathBuf,
    /// Set once renamed into `versions/`: nothing is left to remove.
    committed: bool,
}

impl Staging {
    /// A new, empty staging directory for a version of `seq`.
    fn create(state: &Arc<StateDir>, seq: u64) -> anyhow::Result<Self> {
        let name = format!("{seq:012}-{}", unique_suffix());
        let dir = state.root.join("staging").join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Staging {
            state: state.clone(),
            name,
            dir,
            committed: false,
        })
    }

    /// The name the version will have.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version's LevelDB directory while it is made.
    pub fn db_dir(&self) -> PathBuf {
        self.dir.join(DB_DIR)
    }

    /// The version's vector index file while it is made.
    pub fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX_FILE)
    }

    /// Clones the closed database at `db_dir` into this version (tables hard-linked, or
    /// reflinked, or copied), and shares `index` unless the caller writes its own.
    fn clone_from(&self, db_dir: &Path, index: Option<&Path>) -> anyhow::Result<CloneMethod> {
        let method = clone_db_dir(db_dir, &self.db_dir())?;
        if let Some(index) = index {
            share_immutable(index, &self.index_path())?;
        }
        Ok(method)
    }

    /// Migrates this version's database from `schema_version` to this binary's layout, if it
    /// is older (with `filter_fields` for a store that records none yet).
    fn migrate_from(
        &self,
        schema_version: u32,
        filter_fields: &[String],
        what: &str,
    ) -> anyhow::Result<()> {
        check_supported(schema_version, what)?;
        if schema_version >= SCHEMA_VERSION {
            return Ok(());
        }
        let db_dir = self.db_dir();
        let mut db = open_db(&db_dir, false)?;
        migrate(
            &mut db,
            schema_version,
            &MigrationContext::new(filter_fields.to_vec()),
            what,
        )?;
        db.close()
            .map_err(|s| anyhow::anyhow!("{s}"))
            .with_context(|| format!("close {}", db_dir.display()))
    }

    /// Writes `info` (its name set to this version's), fsyncs the whole version, renames it
    /// into `versions/` and points `current` at it. Committed when this returns `Ok`; a
    /// `cancel` raised before it starts abandons the version instead.
    pub fn commit(self, info: VersionInfo, cancel: &Cancel) -> anyhow::Result<StoreVersion> {
        self.commit_as(info, cancel, true)
    }

    /// What the version will be, seen where it is made (its name set), for checks before
    /// the commit: its database and index are complete once closed and saved.
    pub fn view(&self, mut info: VersionInfo) -> StoreVersion {
        info.name = self.name.clone();
        StoreVersion {
            dir: self.dir.clone(),
            info,
        }
    }

    /// [`Staging::commit`]; with `make_current` false, `current` is left as it is (a version
    /// kept beside the current one).
    fn commit_as(
        mut self,
        mut info: VersionInfo,
        cancel: &Cancel,
        make_current: bool,
    ) -> anyhow::Result<StoreVersion> {
        cancel.check()?;
        info.name = self.name.clone();
        let path = self.dir.join(VERSION_FILE);
        let json = serde_json::to_vec_pretty(&info).context("encode version.json")?;
        std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;
        durable::fsync_tree(&self.dir)?;
        crate::failpoint::hit("after-fsync");
        let target = self.state.root.join("versions").join(&self.name);
        durable::rename_durably(&self.dir, &target)?;
        self.committed = true;
        crate::failpoint::hit("after-rename");
        if make_current {
            self.state.set_current(&self.name)?;
            crate::failpoint::hit("after-commit");
        }
        self.state.load_version(&self.name)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed
            && self.dir.exists()
            && let Err(error) = std::fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(%error, dir = %self.dir.display(), "remove an abandoned staging directory");
        }
    }
}

impl StateDir {
    /// A new version of `seq`, made in `staging/`.
    pub fn stage(self: &Arc<Self>, seq: u64) -> anyhow::Result<Staging> {
        Staging::create(self, seq)
    }

    /// Returns the current version if it descends from a compatible bundle and is at least as
    /// new (upgrading a copy of it first if its layout is older); otherwise makes and commits
    /// a new version cloned from the bundle, after checking every bundle file against the
    /// manifest.
    pub fn ensure_from_bundle(self: &Arc<Self>, bundle: &Bundle) -> anyhow::Result<StoreVersion> {
        let manifest = &bundle.manifest;
        if let Some(current) = self.current()? {
            let info = &current.info;
            // A version of another model than the bundle's came from a model rollover and
            // carries its model.
            let model_known = info.model_fingerprint == manifest.model_fingerprint
                || current.dir.join(MODEL_FILE).is_file();
            if info.dataset == manifest.dataset && model_known && info.seq >= manifest.seq {
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
        self.clone_bundle(bundle)
    }

    /// A committed version holding exactly the bundle (its seq and chain digest, this
    /// binary's layout): a kept one, or a new clone committed beside the current version,
    /// which stays current. What a chain is replayed on to go back before every kept
    /// version.
    pub fn bundle_version(self: &Arc<Self>, bundle: &Bundle) -> anyhow::Result<StoreVersion> {
        let manifest = &bundle.manifest;
        let kept = self.versions()?.into_iter().rev().find(|v| {
            v.info.seq == manifest.seq
                && v.info.chain_digest == manifest.chain_digest
                && v.info.model_fingerprint == manifest.model_fingerprint
                && v.info.schema_version == SCHEMA_VERSION
        });
        match kept {
            Some(version) => Ok(version),
            None => self.clone_bundle_as(bundle, false, None, false),
        }
    }

    /// Makes and commits a version from a bundle other than the baked one (a catch-up
    /// snapshot unpacked in scratch space), after checking every file against its manifest;
    /// the current version stays current. `head_issued_at` is when the delta at its seq
    /// was issued.
    pub fn install_bundle(
        self: &Arc<Self>,
        bundle: &Bundle,
        head_issued_at: u64,
    ) -> anyhow::Result<StoreVersion> {
        self.clone_bundle_as(bundle, false, Some(head_issued_at), true)
    }

    /// Makes and commits a version cloned from the bundle, and makes it current.
    fn clone_bundle(self: &Arc<Self>, bundle: &Bundle) -> anyhow::Result<StoreVersion> {
        self.clone_bundle_as(bundle, true, None, false)
    }

    /// Makes and commits a version cloned from the bundle; `make_current` says whether it
    /// becomes current, `own_model` whether the version keeps the bundle's model beside it
    /// (a bundle other than the baked one: its model may not be the baked one's).
    fn clone_bundle_as(
        self: &Arc<Self>,
        bundle: &Bundle,
        make_current: bool,
        head_issued_at: Option<u64>,
        own_model: bool,
    ) -> anyhow::Result<StoreVersion> {
        let manifest = &bundle.manifest;
        let started = std::time::Instant::now();
        bundle.verify_files()?;
        let verify_seconds = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let staging = self.stage(manifest.seq)?;
        let method =
            staging.clone_from(&bundle.dir.join(DB_DIR), Some(&bundle.dir.join(INDEX_FILE)))?;
        if own_model {
            share_immutable(&bundle.dir.join(MODEL_FILE), &staging.dir.join(MODEL_FILE))?;
        }
        tracing::info!(
            db = %method,
            verify_seconds,
            clone_seconds = started.elapsed().as_secs_f64(),
            "checked the bundle's digests and cloned it into a new version"
        );
        if method != CloneMethod::HardLink {
            tracing::warn!(
                "tables were cloned by {method}, not hard link: keep the state dir on the bundle's filesystem, owned by the service user"
            );
        }
        staging.migrate_from(
            manifest.schema_version,
            &manifest.filter_fields,
            &format!(
                "version {}, cloned from bundle {}",
                staging.name(),
                bundle.dir.display()
            ),
        )?;
        staging.commit_as(
            VersionInfo {
                name: String::new(),
                dataset: manifest.dataset.clone(),
                seq: manifest.seq,
                model_fingerprint: manifest.model_fingerprint.clone(),
                bundle_manifest_sha256: bundle.manifest_sha256.clone(),
                n_items: manifest.n_items,
                created_at: now_secs(),
                chain_digest: manifest.chain_digest.clone(),
                chain_len: manifest.chain_len,
                bundle_seq: manifest.seq,
                head_issued_at,
                schema_version: SCHEMA_VERSION,
            },
            &Cancel::never(),
            make_current,
        )
    }

    /// Makes and commits a copy of `version` migrated to this binary's layout (a state dir
    /// written by an older binary). The old version is left as it was; a pin on it moves to
    /// the copy (same seq, same items).
    fn upgrade(
        self: &Arc<Self>,
        version: &StoreVersion,
        filter_fields: &[String],
    ) -> anyhow::Result<StoreVersion> {
        let staging = self.stage(version.info.seq)?;
        let name = staging.name().to_owned();
        staging.clone_from(&version.db_dir(), Some(&version.index_path()))?;
        staging.migrate_from(
            version.info.schema_version,
            filter_fields,
            &format!("version {name}, cloned from version {}", version.info.name),
        )?;
        let upgraded = staging.commit(
            VersionInfo {
                created_at: now_secs(),
                schema_version: SCHEMA_VERSION,
                ..version.info.clone()
            },
            &Cancel::never(),
        )?;
        tracing::info!(from = %version.info.name, to = %name, schema = SCHEMA_VERSION, "upgraded the current version's db layout");
        if self.pinned()?.as_deref() == Some(version.info.name.as_str()) {
            self.set_pinned(Some(&name))?;
        }
        Ok(upgraded)
    }

    /// Clones `version`'s database into a new staging version, migrated to this binary's
    /// layout, for deltas to be applied to; the index is left for the caller to write.
    pub(super) fn stage_copy_of(
        self: &Arc<Self>,
        version: &StoreVersion,
        seq: u64,
        filter_fields: &[String],
    ) -> anyhow::Result<Staging> {
        let staging = self.stage(seq)?;
        let method = staging.clone_from(&version.db_dir(), None)?;
        // A version with a model of its own (a rollover) passes it on.
        let model = version.dir.join(MODEL_FILE);
        if model.exists() {
            share_immutable(&model, &staging.dir.join(MODEL_FILE))?;
        }
        tracing::debug!(%method, version = %staging.name(), "cloned the current version");
        crate::failpoint::hit("after-clone");
        staging.migrate_from(
            version.info.schema_version,
            filter_fields,
            &format!(
                "version {}, cloned from version {}",
                staging.name(),
                version.info.name
            ),
        )?;
        Ok(staging)
    }

    /// Private scratch space under `scratch/` for a tool that takes no lock (export), removed
    /// when dropped. A scratch directory whose owner died is removed by the next
    /// [`StateDir::open`]; one in use is never touched.
    pub fn scratch(&self, what: &str) -> anyhow::Result<Scratch> {
        let root = self.root.join("scratch");
        std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        let name = format!("{what}-{}", unique_suffix());
        // The lock comes first: a directory without a held lock file is garbage.
        let lock = LockFile::try_acquire(&root.join(format!("{name}.lock")))?
            .context("lock a new scratch directory")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}."))
            .tempdir_in(&root)
            .with_context(|| format!("create a scratch directory in {}", root.display()))?;
        Ok(Scratch {
            dir: Some(dir),
            lock_path: root.join(format!("{name}.lock")),
            _lock: lock,
        })
    }
}

/// Scratch space in the state dir, removed (with its lock file) on drop.
#[derive(Debug)]
pub struct Scratch {
    /// The directory; `None` once removed.
    dir: Option<TempDir>,
    /// `scratch/NAME.lock`, removed after the directory.
    lock_path: PathBuf,
    /// Held while the scratch space is in use.
    _lock: LockFile,
}

impl Scratch {
    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.dir.take());
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Removes every scratch directory and lock file under `root` whose lock no process holds.
pub(super) fn remove_unheld_scratch(root: &Path) -> anyhow::Result<()> {
    let mut held = Vec::new();
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("list {}", root.display()))? {
        entries.push(entry?.path());
    }
    for path in entries.iter().filter(|p| is_lock_file(p)) {
        match LockFile::try_acquire(path)? {
            Some(_free) => remove_any(path)?,
            None => held.push(path.with_extension("")),
        }
    }
    for path in entries.iter().filter(|p| !is_lock_file(p)) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let owner = name
            .as_deref()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(owner, _)| root.join(owner));
        if owner.is_some_and(|owner| held.contains(&owner)) {
            continue;
        }
        tracing::info!(path = %path.display(), "removing leftover scratch space");
        remove_any(path)?;
    }
    Ok(())
}

fn is_lock_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "lock")
}

/// A suffix that differs between calls, processes and restarts.
pub(super) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}-{}-{}",
        now_nanos(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncommitted_staging_directory_removes_itself() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(StateDir::open(dir.path()).unwrap());
        let staging = state.stage(7).unwrap();
        let path = state.root().join("staging").join(staging.name());
        std::fs::write(path.join("partial"), b"half made").unwrap();
        drop(staging);
        assert!(!path.exists());
        assert!(state.versions().unwrap().is_empty());
    }

    #[test]
    fn scratch_space_in_use_survives_a_restart_and_a_dead_owners_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let in_use = state.scratch("export").unwrap();
        std::fs::write(in_use.path().join("work"), b"in use").unwrap();
        // What a killed tool leaves: a lock file nobody holds and its directory.
        let scratch = dir.path().join("scratch");
        std::fs::write(scratch.join("export-dead-1-0.lock"), b"").unwrap();
        std::fs::create_dir(scratch.join("export-dead-1-0.abc")).unwrap();
        std::fs::create_dir(scratch.join("orphan-without-lock.xyz")).unwrap();
        drop(state);
        let _reopened = StateDir::open(dir.path()).unwrap();
        assert!(
            in_use.path().join("work").exists(),
            "held scratch space is kept"
        );
        assert!(!scratch.join("export-dead-1-0.lock").exists());
        assert!(!scratch.join("export-dead-1-0.abc").exists());
        assert!(!scratch.join("orphan-without-lock.xyz").exists());
        let kept = in_use.path().to_path_buf();
        drop(in_use);
        assert!(!kept.exists());
        let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
