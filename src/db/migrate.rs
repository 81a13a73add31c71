//! Store layout migrations: how a store written by any earlier binary is brought to the
//! layout this binary writes ([`SCHEMA_VERSION`]).
//!
//! The migrations live in `migrations/NNNN_name.rs`, one per layout version, compiled into
//! the binary below and applied in order. Migration `N` takes a store at version `N - 1` to
//! version `N`. Its last write batch also records `m/schema` (`{"version": N}`) and
//! `m/migration/NNNN` (`{"name": ..}`), so a store says exactly which migrations it holds.
//! Each migration is idempotent: re-run on a store that a crash left half-migrated, it
//! finishes the job and gives the same store as an uninterrupted run.
//!
//! Migrations run only on databases this process made: copy-on-write clones in the state
//! dir (`serve`, `sync`) and new bundles (`build-base`, `compact`). Never on a baked bundle.

use anyhow::{Context, anyhow, bail};
use rusty_leveldb::{DB, LdbIterator, WriteBatch};
use serde::{Deserialize, Serialize};

#[path = "../../migrations/0001_item_key_prefix.rs"]
mod m0001_item_key_prefix;
#[path = "../../migrations/0002_filter_index.rs"]
mod m0002_filter_index;

/// One registered migration.
pub struct Migration {
    /// The schema version it produces (the one before is `version - 1`).
    pub version: u32,
    /// Its name, as in its file name.
    pub name: &'static str,
    /// Its file under `migrations/`.
    pub file: &'static str,
    /// Its source, as compiled in (its header says what it changes and why).
    pub source: &'static str,
    /// Applies it; returns the last batch, which the runner completes with the records.
    run: fn(&mut DB, &mut Chunks<'_>) -> anyhow::Result<WriteBatch>,
}

/// Every migration, in order. Adding a file under `migrations/` without registering it
/// here (or out of order) fails `registry_matches_the_migrations_directory`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "item_key_prefix",
        file: "0001_item_key_prefix.rs",
        source: include_str!("../../migrations/0001_item_key_prefix.rs"),
        run: m0001_item_key_prefix::run,
    },
    Migration {
        version: 2,
        name: "filter_index",
        file: "0002_filter_index.rs",
        source: include_str!("../../migrations/0002_filter_index.rs"),
        run: m0002_filter_index::run,
    },
];

/// The layout version this binary writes: that of its last migration.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Where a store records its layout version.
pub const SCHEMA_KEY: &[u8] = b"m/schema";

/// What [`SCHEMA_KEY`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRecord {
    /// The store's layout version.
    pub version: u32,
}

/// The key recording that migration `version` was applied.
pub fn migration_key(version: u32) -> Vec<u8> {
    format!("m/migration/{version:04}").into_bytes()
}

/// What the migrations need to know about the db.
#[derive(Debug, Clone)]
pub struct MigrationContext {
    /// The fields the filter index covers (migration 0002).
    pub filter_fields: Vec<String>,
    /// Keys written per batch.
    pub chunk_keys: usize,
    /// For crash tests: stop with an error after this many batches of one migration, as a
    /// crash would, leaving what was written.
    pub interrupt_after_chunks: Option<usize>,
}

impl MigrationContext {
    /// The context for a store whose bundle indexes `filter_fields`.
    pub fn new(filter_fields: Vec<String>) -> Self {
        MigrationContext {
            filter_fields,
            chunk_keys: 4096,
            interrupt_after_chunks: None,
        }
    }
}

/// A migration's writes, cut into batches of `chunk_keys` keys, each written (and logged)
/// before the next is gathered. A failpoint `migration-NNNN-chunk` fires after the first.
pub struct Chunks<'a> {
    version: u32,
    context: &'a MigrationContext,
    batch: WriteBatch,
    n_keys: usize,
    n_written: usize,
    /// Keys changed so far (for the log).
    pub n_changed: u64,
}

impl Chunks<'_> {
    /// The context.
    pub fn context(&self) -> &MigrationContext {
        self.context
    }

    /// Queues a put; writes the batch when it is full.
    pub fn put(&mut self, db: &mut DB, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.batch.put(key, value);
        self.queued(db)
    }

    /// Queues a delete; writes the batch when it is full.
    pub fn delete(&mut self, db: &mut DB, key: &[u8]) -> anyhow::Result<()> {
        self.batch.delete(key);
        self.queued(db)
    }

    /// Writes what is queued now (used where a migration changes phase).
    pub fn flush(&mut self, db: &mut DB) -> anyhow::Result<()> {
        if self.n_keys == 0 {
            return Ok(());
        }
        db.write(std::mem::take(&mut self.batch), true)
            .map_err(|s| anyhow!("{s}"))
            .with_context(|| format!("write a batch of migration {:04}", self.version))?;
        self.n_keys = 0;
        self.n_written += 1;
        if self.n_written == 1 {
            crate::failpoint::hit(&format!("migration-{:04}-chunk", self.version));
        }
        if self.context.interrupt_after_chunks == Some(self.n_written) {
            bail!(
                "migration {:04} interrupted after {} batches (crash test)",
                self.version,
                self.n_written
            );
        }
        Ok(())
    }

    fn queued(&mut self, db: &mut DB) -> anyhow::Result<()> {
        self.n_keys += 1;
        self.n_changed += 1;
        if self.n_keys >= self.context.chunk_keys {
            self.flush(db)?;
        }
        Ok(())
    }

    /// What is queued, for the last write (which the runner completes with the records).
    pub fn take_batch(&mut self) -> WriteBatch {
        self.n_keys = 0;
        std::mem::take(&mut self.batch)
    }
}

/// Up to `limit` (key, value) pairs at or after `from` and before `end` (exclusive; `None`
/// means to the end), read through a fresh iterator that is dropped before returning (so
/// the caller can write between scans).
pub fn scan(
    db: &mut DB,
    from: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut iter = db
        .new_iter()
        .map_err(|s| anyhow!("{s}"))
        .context("iterate the db")?;
    iter.seek(from);
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((key, value)) = iter.current() else {
            break;
        };
        if end.is_some_and(|end| &key[..] >= end) {
            break;
        }
        out.push((key.to_vec(), value.to_vec()));
        if !iter.advance() {
            break;
        }
    }
    Ok(out)
}

/// Calls `each(db, key, value)` for every key in `[start, end)`, in key order, reading
/// `limit` keys at a time through a fresh iterator, so that `each` may write to `db` (keys
/// it writes inside the range are not visited unless they sort after the current page).
pub fn for_each_in_pages(
    db: &mut DB,
    start: &[u8],
    end: &[u8],
    limit: usize,
    mut each: impl FnMut(&mut DB, Vec<u8>, Vec<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut from = start.to_vec();
    loop {
        let page = scan(db, &from, Some(end), limit)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        from = successor(last);
        for (key, value) in page {
            each(db, key, value)?;
        }
    }
}

/// A key for messages: as text when it is UTF-8, else as hex.
pub fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("0x{}", hex::encode(key)),
    }
}

/// The smallest key after `key` (for resuming a scan).
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The schema version a store records, if it records one. A store of the original
/// pipeline's layout (version 0) records none; if an item there happens to have the id
/// `m/schema`, its JSON does not parse as a record and is taken for an item.
pub fn recorded_version(db: &mut DB) -> anyhow::Result<Option<u32>> {
    match db.get(SCHEMA_KEY) {
        Some(bytes) => match serde_json::from_slice::<SchemaRecord>(&bytes) {
            Ok(record) => Ok(Some(record.version)),
            Err(_) => Ok(None),
        },
        None => Ok(None),
    }
}

/// Refuses a store newer than this binary.
pub fn check_supported(version: u32, what: &str) -> anyhow::Result<()> {
    if version > SCHEMA_VERSION {
        bail!(
            "{what} has db schema version {version}, newer than this binary's {SCHEMA_VERSION}: \
             it was written by a newer deltacache; run that version (or rebuild the bundle with this one)"
        );
    }
    Ok(())
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The version the store was at.
    pub from: u32,
    /// The version it is at now.
    pub to: u32,
    /// The files applied, in order.
    pub applied: Vec<&'static str>,
}

/// Brings an open store to [`SCHEMA_VERSION`], in place. `assumed` is the version to take
/// when the db records none (the bundle manifest's, or 0 for the original pipeline's
/// layout). Call only on a database this process made (a clone or a new build).
pub fn migrate(
    db: &mut DB,
    assumed: u32,
    context: &MigrationContext,
    what: &str,
) -> anyhow::Result<Migrated> {
    migrate_to(db, assumed, SCHEMA_VERSION, context, what)
}

/// [`migrate`] up to version `target` only (for tests of one migration at a time).
pub fn migrate_to(
    db: &mut DB,
    assumed: u32,
    target: u32,
    context: &MigrationContext,
    what: &str,
) -> anyhow::Result<Migrated> {
    let from = recorded_version(db)?.unwrap_or(assumed);
    check_supported(from, what)?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > from && m.version <= target)
    {
        let started = std::time::Instant::now();
        let mut chunks = Chunks {
            version: migration.version,
            context,
            batch: WriteBatch::default(),
            n_keys: 0,
            n_written: 0,
            n_changed: 0,
        };
        let mut last = (migration.run)(db, &mut chunks)
            .with_context(|| format!("migration {} on {what}", migration.file))?;
        let n_changed = chunks.n_changed;
        let record = SchemaRecord {
            version: migration.version,
        };
        last.put(SCHEMA_KEY, &serde_json::to_vec(&record)?);
        last.put(
            &migration_key(migration.version),
            &serde_json::to_vec(&serde_json::json!({"name": migration.name}))?,
        );
        crate::failpoint::hit(&format!("migration-{:04}-before-record", migration.version));
        db.write(last, true)
            .map_err(|s| anyhow!("{s}"))
            .with_context(|| format!("record migration {} on {what}", migration.file))?;
        tracing::info!(
            migration = migration.file,
            store = what,
            keys_changed = n_changed,
            seconds = started.elapsed().as_secs_f64(),
            "applied a store migration"
        );
        applied.push(migration.file);
    }
    Ok(Migrated {
        from,
        to: target.max(from),
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/` is registered, in order, with consecutive versions from
    /// 1, and carries a header saying what it changes and why.
    #[test]
    fn registry_matches_the_migrations_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.') && name != "README.md")
            .collect();
        files.sort();
        let registered: Vec<&str> = MIGRATIONS.iter().map(|m| m.file).collect();
        assert_eq!(
            files, registered,
            "every file in migrations/ must be registered in MIGRATIONS, in file-name order"
        );
        for (idx, migration) in MIGRATIONS.iter().enumerate() {
            let expected = format!("{:04}_{}.rs", idx + 1, migration.name);
            assert_eq!(migration.version as usize, idx + 1, "{}", migration.file);
            assert_eq!(migration.file, expected);
            let on_disk = std::fs::read_to_string(dir.join(migration.file)).unwrap();
            assert_eq!(
                on_disk, migration.source,
                "{} is compiled in",
                migration.file
            );
            let header: String = on_disk
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .collect::<Vec<_>>()
                .join("\n");
            for part in ["Changes:", "Why:"] {
                assert!(
                    header.contains(part),
                    "{}'s header must say {part}",
                    migration.file
                );
            }
        }
        assert_eq!(SCHEMA_VERSION as usize, MIGRATIONS.len());
    }
}
