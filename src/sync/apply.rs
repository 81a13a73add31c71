//! Applying verified deltas to a new copy-on-write version.
//!
//! Clone the current version into staging (tables shared, mutable files copied), apply each
//! delta as one LevelDB write batch that also records the new chain position, patch the
//! vector index the same way, close the database, write `version.json`, then commit: fsync
//! everything, rename into `versions/`, replace the pointer. Nothing here touches the
//! current version, so a failure at any step leaves it serving and the state dir as it was
//! (the staging leftovers are removed on the next start).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use rusty_leveldb::WriteBatch;

use crate::bundle::items::{ItemFields, parse_item};
use crate::bundle::{DB_DIR, INDEX_FILE};
use crate::delta::chain::VerifiedDelta;
use crate::delta::format::DeltaRecord;
use crate::search::index::VectorIndex;
use crate::search::tfidf::TfidfModel;
use crate::store::clone::clone_db_dir;
use crate::store::filter;
use crate::store::leveldb::{self, RecordedState, STATE_KEY};
use crate::store::migrate::{MigrationContext, SCHEMA_VERSION, migrate};
use crate::store::state::{StateDir, StoreVersion, VersionInfo};

/// What an apply did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The committed version.
    pub version: StoreVersion,
    /// Records applied.
    pub n_records: u64,
    /// Wall time per stage, in order.
    pub stage_seconds: Vec<(&'static str, f64)>,
    /// The new version's index, as written (so serving need not read it back).
    pub index: VectorIndex,
}

/// Applies `deltas` (verified, in order, continuing `current`) and commits a new version.
/// A `current` of an older store layout is migrated first (with `filter_fields`, the
/// bundle's); the filter index is kept current in each delta's batch.
pub fn apply_deltas(
    state: &StateDir,
    current: &StoreVersion,
    model: &TfidfModel,
    fields: &ItemFields,
    filter_fields: &[String],
    deltas: &[VerifiedDelta],
    head_issued_at: u64,
) -> anyhow::Result<Applied> {
    let Some(last) = deltas.last() else {
        bail!("no deltas to apply");
    };
    let (name, staging) = state.new_staging(last.seq)?;
    let name = name.as_str();
    let staging = staging.as_path();
    // Everything up to the commit happens in staging; on any error it is removed, so the
    // state dir is left as it was.
    let result = (|| -> anyhow::Result<Applied> {
        let mut stage_seconds = Vec::new();
        let started = Instant::now();
        let method = clone_db_dir(&current.db_dir(), &staging.join(DB_DIR))?;
        tracing::debug!(%method, version = %name, "cloned the current version");
        let mut index = VectorIndex::load(&current.index_path())?;
        stage_seconds.push(("clone", started.elapsed().as_secs_f64()));
        crate::failpoint::hit("after-clone");

        let started = Instant::now();
        let mut db = leveldb::open_db(&staging.join(DB_DIR), false)?;
        migrate(
            &mut db,
            current.info.schema_version,
            &MigrationContext::new(filter_fields.to_vec()),
            &format!("version {name}, cloned from version {}", current.info.name),
        )?;
        let indexed = filter::recorded_fields(&mut db)?.unwrap_or_default();
        let mut n_records = 0u64;
        for (delta_idx, delta) in deltas.iter().enumerate() {
            let mut batch = WriteBatch::default();
            // Items this batch already changed: the database does not show them yet.
            let mut pending: HashMap<String, Option<Vec<u8>>> = HashMap::new();
            for (record_idx, record) in delta.batch.records.iter().enumerate() {
                // `held`: whether the version held the item before this record (the index
                // and the store hold the same ids), so a new id costs no read below.
                let (id, new_json, held) = match record {
                    DeltaRecord::Put { item } => {
                        let item = parse_item(item.get(), fields).map_err(|e| {
                            anyhow!("delta seq {} record {}: {e}", delta.seq, record_idx + 1)
                        })?;
                        batch.put(&leveldb::item_key(&item.id), item.json.as_bytes());
                        let held = index.contains(&item.id);
                        index.upsert(&item.id, &model.embed(&item.text))?;
                        (item.id, Some(item.json.into_bytes()), held)
                    }
                    DeltaRecord::Delete { id } => {
                        batch.delete(&leveldb::item_key(id));
                        (id.clone(), None, index.delete(id))
                    }
                };
                if !indexed.is_empty() {
                    // The old entries go first, so an entry the new JSON keeps is put back.
                    let old = match pending.get(&id) {
                        Some(old) => old.clone(),
                        None if held => db.get(&leveldb::item_key(&id)).map(|b| b.to_vec()),
                        None => None,
                    };
                    for key in old
                        .iter()
                        .filter_map(|j| filter::entry_keys(j, &id, &indexed))
                        .flatten()
                    {
                        batch.delete(&key);
                    }
                    for key in new_json
                        .iter()
                        .filter_map(|j| filter::entry_keys(j, &id, &indexed))
                        .flatten()
                    {
                        batch.put(&key, b"");
                    }
                    pending.insert(id, new_json);
                }
                n_records += 1;
            }
            let recorded = RecordedState {
                seq: delta.seq,
                chain_digest: delta.digest.clone(),
            };
            batch.put(STATE_KEY, &serde_json::to_vec(&recorded)?);
            db.write(batch, true)
                .map_err(|s| anyhow!("{s}"))
                .with_context(|| format!("write delta seq {}", delta.seq))?;
            if delta_idx == 0 {
                crate::failpoint::hit("after-first-batch");
            }
        }
        db.close()
            .map_err(|s| anyhow!("{s}"))
            .context("close the new version's database")?;
        drop(db);
        crate::failpoint::hit("after-close");
        index.compact_if_worthwhile();
        index.save(&staging.join(INDEX_FILE))?;
        stage_seconds.push(("apply", started.elapsed().as_secs_f64()));

        let started = Instant::now();
        let info = VersionInfo {
            name: name.to_owned(),
            dataset: current.info.dataset.clone(),
            seq: last.seq,
            model_fingerprint: current.info.model_fingerprint.clone(),
            bundle_manifest_sha256: current.info.bundle_manifest_sha256.clone(),
            n_items: index.n_items() as u64,
            created_at: crate::delta::publish::now_secs(),
            chain_digest: last.digest.clone(),
            chain_len: last.len,
            bundle_seq: current.info.bundle_seq,
            head_issued_at: Some(head_issued_at),
            schema_version: SCHEMA_VERSION,
        };
        info.write_into(staging)?;
        let version = state.commit(staging, name)?;
        stage_seconds.push(("commit", started.elapsed().as_secs_f64()));
        Ok(Applied {
            version,
            n_records,
            stage_seconds,
            index,
        })
    })();
    if result.is_err()
        && staging.exists()
        && let Err(error) = std::fs::remove_dir_all(staging)
    {
        tracing::warn!(%error, dir = %staging.display(), "remove an abandoned staging directory");
    }
    result
}
