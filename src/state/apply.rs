//! Applying verified deltas to a new copy-on-write version.
//!
//! Clone the current version into staging (tables shared, mutable files copied), migrate the
//! copy if its layout is older, apply each delta as one LevelDB write batch that also records
//! the new chain position and keeps the filter index current, patch the vector index the
//! same way, close the database, then commit. Nothing here touches the current version, so a
//! failure at any step leaves it serving and the state dir as it was.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use rusty_leveldb::{DB, WriteBatch};

use super::{StateDir, StoreVersion, VersionInfo};
use crate::bundle::items::{ItemFields, parse_item};
use crate::clock::now_secs;
use crate::db::filter;
use crate::db::leveldb::{self, RecordedState, STATE_KEY};
use crate::db::migrate::SCHEMA_VERSION;
use crate::delta::chain::VerifiedDelta;
use crate::delta::format::DeltaRecord;
use crate::search::index::VectorIndex;
use crate::search::tfidf::TfidfModel;

/// What applying needs besides the deltas: how items are read and embedded.
#[derive(Debug, Clone, Copy)]
pub struct ApplyInputs<'a> {
    /// The bundle's model: put items are embedded with it.
    pub model: &'a TfidfModel,
    /// The bundle's id and text fields.
    pub fields: &'a ItemFields,
    /// The bundle's filter fields, for a current version of an older layout that records
    /// none yet.
    pub filter_fields: &'a [String],
    /// Issue time of the head the deltas were verified against, recorded in the version.
    pub head_issued_at: u64,
}

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

impl StateDir {
    /// Applies `deltas` (verified, in order, continuing `current`) and commits a new version.
    /// Blocking.
    pub fn apply_deltas(
        &self,
        current: &StoreVersion,
        inputs: ApplyInputs<'_>,
        deltas: &[VerifiedDelta],
    ) -> anyhow::Result<Applied> {
        let Some(last) = deltas.last() else {
            bail!("no deltas to apply");
        };
        let mut stage_seconds = Vec::new();
        let started = Instant::now();
        let staging = self.stage_copy_of(current, last.seq, inputs.filter_fields)?;
        let mut index = VectorIndex::load(&current.index_path())?;
        stage_seconds.push(("clone", started.elapsed().as_secs_f64()));

        let started = Instant::now();
        let mut db = leveldb::open_db(&staging.db_dir(), false)?;
        let mut writer = BatchWriter {
            indexed: filter::recorded_fields(&mut db)?.unwrap_or_default(),
            db,
            index: &mut index,
            inputs,
        };
        let mut n_records = 0u64;
        for (delta_idx, delta) in deltas.iter().enumerate() {
            n_records += writer.write(delta)?;
            if delta_idx == 0 {
                crate::failpoint::hit("after-first-batch");
            }
        }
        writer
            .db
            .close()
            .map_err(|s| anyhow!("{s}"))
            .context("close the new version's database")?;
        drop(writer);
        crate::failpoint::hit("after-close");
        index.compact_if_worthwhile();
        index.save(&staging.index_path())?;
        stage_seconds.push(("apply", started.elapsed().as_secs_f64()));

        let started = Instant::now();
        let version = staging.commit(VersionInfo {
            name: String::new(),
            seq: last.seq,
            n_items: index.n_items() as u64,
            created_at: now_secs(),
            chain_digest: last.digest.clone(),
            chain_len: last.len,
            head_issued_at: Some(inputs.head_issued_at),
            schema_version: SCHEMA_VERSION,
            ..current.info.clone()
        })?;
        stage_seconds.push(("commit", started.elapsed().as_secs_f64()));
        Ok(Applied {
            version,
            n_records,
            stage_seconds,
            index,
        })
    }
}

/// Writes deltas into the new version's open database and index.
struct BatchWriter<'a> {
    /// The fields the db's filter index covers (empty: none).
    indexed: Vec<String>,
    /// The new version's database (a clone in staging).
    db: DB,
    /// The new version's vector index.
    index: &'a mut VectorIndex,
    /// Model and item fields.
    inputs: ApplyInputs<'a>,
}

impl BatchWriter<'_> {
    /// Writes one delta as one batch that also records the chain position it reaches;
    /// returns its record count.
    fn write(&mut self, delta: &VerifiedDelta) -> anyhow::Result<u64> {
        let mut batch = WriteBatch::default();
        // Items this batch already changed: the database does not show them yet.
        let mut pending: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        for (record_idx, record) in delta.batch.records.iter().enumerate() {
            let (id, new_json, held) = self
                .record(&mut batch, record)
                .map_err(|e| anyhow!("delta seq {} record {}: {e:#}", delta.seq, record_idx + 1))?;
            if !self.indexed.is_empty() {
                let old = match pending.get(&id) {
                    Some(old) => old.clone(),
                    None if held => self.db.get(&leveldb::item_key(&id)).map(|b| b.to_vec()),
                    None => None,
                };
                self.reindex(&mut batch, &id, old.as_deref(), new_json.as_deref());
                pending.insert(id, new_json);
            }
        }
        let recorded = RecordedState {
            seq: delta.seq,
            chain_digest: delta.digest.clone(),
        };
        batch.put(STATE_KEY, &serde_json::to_vec(&recorded)?);
        self.db
            .write(batch, true)
            .map_err(|s| anyhow!("{s}"))
            .with_context(|| format!("write delta seq {}", delta.seq))?;
        Ok(delta.batch.records.len() as u64)
    }

    /// Adds one record to the batch and the index. Returns the id, its new JSON (`None` for
    /// a delete) and whether the version held the item before (the index and the db hold
    /// the same ids, so a new id costs no read of its old JSON).
    fn record(
        &mut self,
        batch: &mut WriteBatch,
        record: &DeltaRecord,
    ) -> anyhow::Result<(String, Option<Vec<u8>>, bool)> {
        match record {
            DeltaRecord::Put { item } => {
                let item = parse_item(item.get(), self.inputs.fields)?;
                batch.put(&leveldb::item_key(&item.id), item.json.as_bytes());
                let held = self.index.contains(&item.id);
                self.index
                    .upsert(&item.id, &self.inputs.model.embed(&item.text))?;
                Ok((item.id, Some(item.json.into_bytes()), held))
            }
            DeltaRecord::Delete { id } => {
                batch.delete(&leveldb::item_key(id));
                Ok((id.clone(), None, self.index.delete(id)))
            }
        }
    }

    /// Replaces an item's filter entries: the old ones go first, so an entry the new JSON
    /// keeps is put back.
    fn reindex(&self, batch: &mut WriteBatch, id: &str, old: Option<&[u8]>, new: Option<&[u8]>) {
        let keys = |json: Option<&[u8]>| {
            json.and_then(|j| filter::entry_keys(j, id, &self.indexed))
                .unwrap_or_default()
        };
        for key in keys(old) {
            batch.delete(&key);
        }
        for key in keys(new) {
            batch.put(&key, b"");
        }
    }
}
