//! The LevelDB layout of the metadata db, and how it is opened.
//!
//! Layout (db schema 2; migrations/ says how earlier layouts are brought here):
//! - `i/<id>` → the item's JSON, exactly as it was read;
//! - `x/<field>\0<value>\0<id>` → empty: the filter index (see [`super::filter`]);
//! - `m/state` → the chain position the database holds ([`RecordedState`]);
//! - `m/schema`, `m/migration/NNNN`, `m/filter-fields` → what the migrations recorded.
//!
//! What describes a bundle as a whole (counts, digests, model) lives in its manifest.
//!
//! rusty-leveldb's `DB` is `Send` but not `Sync` and every read takes `&mut self`, so the
//! server keeps several read handles ([`MetadataReaders`]), each on its own copy-on-write
//! clone of the version's database, each behind its own mutex.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use parking_lot::Mutex;
use rusty_leveldb::compressor::SnappyCompressor;
use rusty_leveldb::{CompressorId, DB, Options};

pub use super::migrate::SCHEMA_VERSION;

/// Prefix of item keys.
const ITEM_KEY_PREFIX: &[u8] = b"i/";

/// The key recording which chain position the database holds: `{"seq", "chain_digest"}`,
/// written in the same batch as the records that bring it there.
pub const STATE_KEY: &[u8] = b"m/state";

/// What [`STATE_KEY`] holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedState {
    /// The seq the database includes.
    pub seq: u64,
    /// The digest of the last delta applied (or the bundle's chain digest).
    pub chain_digest: String,
}

/// The key under which an item is stored.
pub fn item_key(id: &str) -> Vec<u8> {
    item_key_bytes(id.as_bytes())
}

/// [`item_key`] of an id given as bytes.
pub fn item_key_bytes(id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(ITEM_KEY_PREFIX.len() + id.len());
    key.extend_from_slice(ITEM_KEY_PREFIX);
    key.extend_from_slice(id);
    key
}

/// The item id of a key, if it is an item key.
pub fn id_of_key(key: &[u8]) -> Option<&str> {
    key.strip_prefix(ITEM_KEY_PREFIX)
        .and_then(|id| std::str::from_utf8(id).ok())
}

/// Options every database is opened with: Snappy tables, no log reuse (rusty-leveldb's log
/// reuse lost an acknowledged batch after a torn tail), a modest block cache.
///
/// `Options` holds `Rc`s: build it in the thread that opens the database and keep no clone.
pub fn db_options(create_if_missing: bool) -> Options {
    Options {
        create_if_missing,
        reuse_logs: false,
        compressor: SnappyCompressor::ID,
        write_buffer_size: 8 << 20,
        block_cache_capacity_bytes: 32 << 20,
        ..Options::default()
    }
}

/// Opens a database directory (never a baked bundle's: only clones and new builds).
pub fn open_db(dir: &Path, create_if_missing: bool) -> anyhow::Result<DB> {
    DB::open(dir, db_options(create_if_missing))
        .map_err(|status| anyhow!("{status}"))
        .with_context(|| format!("open LevelDB {}", dir.display()))
}

/// Reads one key from a database opened on its own clone (a closure, because it also owns
/// the database's snapshot, a type rusty-leveldb does not export).
type ReadFn = Box<dyn FnMut(&[u8]) -> rusty_leveldb::Result<Option<Vec<u8>>>>;

/// Calls `each(key, value)` for every key of an open database that starts with `prefix`,
/// in key order.
pub fn for_each_with_prefix(
    db: &mut DB,
    prefix: &[u8],
    mut each: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use rusty_leveldb::LdbIterator;
    let mut iter = db
        .new_iter()
        .map_err(|s| anyhow!("{s}"))
        .context("iterate LevelDB")?;
    iter.seek(prefix);
    while let Some((key, value)) = iter.current() {
        if !key.starts_with(prefix) {
            break;
        }
        each(&key, &value)?;
        if !iter.advance() {
            break;
        }
    }
    Ok(())
}

/// Whether an open database holds any key that starts with `prefix`.
pub fn any_with_prefix(db: &mut DB, prefix: &[u8]) -> anyhow::Result<bool> {
    use rusty_leveldb::LdbIterator;
    let mut iter = db
        .new_iter()
        .map_err(|s| anyhow!("{s}"))
        .context("iterate LevelDB")?;
    iter.seek(prefix);
    Ok(iter
        .current()
        .is_some_and(|(key, _)| key.starts_with(prefix)))
}

/// Calls `each(id, json)` for every item of an open database, in key order.
pub fn for_each_item(
    db: &mut DB,
    mut each: impl FnMut(&str, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for_each_with_prefix(db, ITEM_KEY_PREFIX, |key, value| {
        let Some(id) = id_of_key(key) else {
            bail!(
                "item key {} is not UTF-8: the db is damaged",
                super::migrate::printable(key)
            );
        };
        each(id, value)
    })
}

/// Every key and value of an open database, in key order (for checks and tests).
pub fn dump(db: &mut DB) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    super::migrate::scan(db, b"", None, usize::MAX)
}

/// Writes every item of the closed database at `db_dir` as JSONL (one stored JSON per
/// line, in key order), reading from a clone made under `scratch`. Returns the count.
pub fn export_items(
    db_dir: &Path,
    scratch: &Path,
    out: &mut impl std::io::Write,
) -> anyhow::Result<u64> {
    let clone = scratch.join("export");
    super::clone::clone_db_dir(db_dir, &clone)?;
    let mut db = open_db(&clone, false)?;
    let mut n_items = 0u64;
    for_each_item(&mut db, |_, json| {
        out.write_all(json)?;
        out.write_all(b"\n")?;
        n_items += 1;
        Ok(())
    })?;
    Ok(n_items)
}

/// One read handle: a database opened on its own clone, with the snapshot reads use.
struct ReadHandle {
    read: ReadFn,
}

/// A small pool of read handles over one immutable version of the metadata db.
///
/// Requests take whichever handle is free, so no single lock serialises all reads.
pub struct MetadataReaders {
    /// One handle per shard; each on its own directory under `clone_root`.
    handles: Vec<Mutex<ReadHandle>>,
    /// Where the shard clones live; removed when the readers are dropped.
    clone_root: PathBuf,
}

// SAFETY: `DB` is `Send` (rusty-leveldb declares it so). The closure owns the `DB` and its
// `Snapshot`, whose `Rc`s point only into that same `DB`; nothing else holds a clone of
// them, so the whole handle moves between threads as one. Every call goes through a
// `Mutex`, so no two threads ever touch the same `DB` at once.
unsafe impl Send for ReadHandle {}

impl MetadataReaders {
    /// Opens `n_shards` read handles on clones of the closed database at `db_dir`, made under
    /// `clone_root` (which must not exist yet), and runs `first` on the first handle's
    /// database before its snapshot is taken (to load what is read whole, such as the filter
    /// index).
    pub fn open<T>(
        db_dir: &Path,
        clone_root: &Path,
        n_shards: usize,
        first: impl FnOnce(&mut DB) -> anyhow::Result<T>,
    ) -> anyhow::Result<(Self, T)> {
        std::fs::create_dir_all(clone_root)
            .with_context(|| format!("create reader directory {}", clone_root.display()))?;
        // Built first, so that a shard failing to open drops it, which removes every clone
        // made so far.
        let mut readers = MetadataReaders {
            handles: Vec::new(),
            clone_root: clone_root.to_path_buf(),
        };
        let mut first = Some(first);
        let mut loaded = None;
        for shard in 0..n_shards.max(1) {
            let shard_dir = clone_root.join(format!("shard-{shard}"));
            super::clone::clone_db_dir(db_dir, &shard_dir)?;
            let mut db = open_db(&shard_dir, false)?;
            if let Some(first) = first.take() {
                loaded = Some(first(&mut db)?);
            }
            let snapshot = db.get_snapshot();
            let read: ReadFn = Box::new(move |key: &[u8]| {
                db.get_at(&snapshot, key)
                    .map(|value| value.map(|bytes| bytes.to_vec()))
            });
            readers.handles.push(Mutex::new(ReadHandle { read }));
        }
        Ok((readers, loaded.expect("at least one shard")))
    }

    /// Reads the recorded chain position.
    pub fn recorded_state(&self) -> anyhow::Result<Option<RecordedState>> {
        let mut guard = self.handles[0].lock();
        match (guard.read)(STATE_KEY).map_err(|status| anyhow!("{status}"))? {
            Some(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).context("parse the recorded state")?,
            )),
            None => Ok(None),
        }
    }

    /// Reads one item's JSON. An error means the read failed (for example a corrupt block):
    /// it is not proof of absence.
    pub fn get(&self, id: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let key = item_key(id);
        // Take the first free handle; if all are busy, wait on the one this thread maps to.
        for handle in &self.handles {
            if let Some(mut guard) = handle.try_lock() {
                return read(&mut guard, &key, id);
            }
        }
        let shard = thread_shard() % self.handles.len();
        let mut guard = self.handles[shard].lock();
        read(&mut guard, &key, id)
    }
}

fn read(handle: &mut ReadHandle, key: &[u8], id: &str) -> anyhow::Result<Option<Vec<u8>>> {
    (handle.read)(key)
        .map_err(|status| anyhow!("{status}"))
        .with_context(|| format!("read item {id:?}"))
}

fn thread_shard() -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut hasher);
    hasher.finish() as usize
}

impl Drop for MetadataReaders {
    fn drop(&mut self) {
        // Close every database before its directory goes away.
        self.handles.clear();
        if let Err(error) = std::fs::remove_dir_all(&self.clone_root) {
            tracing::warn!(dir = %self.clone_root.display(), %error, "remove reader clones");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_pool_that_fails_to_open_leaves_no_clones_behind() {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = dir.path().join("db");
        let mut db = open_db(&db_dir, true).unwrap();
        db.put(&item_key("a"), b"{}").unwrap();
        db.close().unwrap();
        drop(db);
        let clones = dir.path().join("readers");
        let failed = MetadataReaders::open(&db_dir, &clones, 3, |_| -> anyhow::Result<()> {
            anyhow::bail!("the first shard's loader fails")
        });
        assert!(failed.is_err());
        assert!(
            !clones.exists(),
            "the partly opened pool removed its clones"
        );
        let (readers, ()) = MetadataReaders::open(&db_dir, &clones, 2, |_| Ok(())).unwrap();
        assert_eq!(readers.get("a").unwrap().as_deref(), Some(&b"{}"[..]));
        drop(readers);
        assert!(!clones.exists());
    }
}
