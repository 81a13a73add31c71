//! Applying verified deltas to a new copy-on-write version, one delta at a time.
//!
//! [`StateDir::begin_apply`] clones the current version into staging (tables shared,
//! mutable files copied) and migrates the copy if its layout is older; [`Applying::apply`]
//! writes one delta as one LevelDB write batch that also records the new chain position and
//! keeps the filter index current, and patches the vector index the same way; only the
//! delta being applied is held in memory. [`Applying::finish`] closes the database and
//! saves the index, leaving a complete version in staging to be checked (the health gate)
//! before [`Finished::commit`] commits it. Nothing here touches the current version, so a failure or a
//! cancellation at any step leaves it serving and the state dir as it was.
//!
//! Every step is blocking: run it on a blocking thread.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use rusty_leveldb::{DB, WriteBatch};

use super::{Cancel, Staging, StateDir, StoreVersion, VersionInfo};
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
#[derive(Debug, Clone)]
pub struct ApplyInputs {
    /// The bundle's model: put items are embedded with it.
    pub model: Arc<TfidfModel>,
    /// The bundle's id and text fields.
    pub fields: ItemFields,
    /// The bundle's filter fields, for a current version of an older layout that records
    /// none yet.
    pub filter_fields: Vec<String>,
    /// Issue time of the head the deltas were verified against, recorded in the version.
    pub head_issued_at: u64,
}

/// What an apply did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The committed version.
    pub version: StoreVersion,
    /// Deltas applied.
    pub n_deltas: usize,
    /// Records applied.
    pub n_records: u64,
    /// Wall time per stage, in order.
    pub stage_seconds: Vec<(&'static str, f64)>,
    /// The new version's index, as written (so serving need not read it back), unless it
    /// was taken before the commit.
    pub index: Option<VectorIndex>,
    /// Every id the deltas put or deleted (what a cache of the base version must drop).
    pub touched: HashSet<String>,
}

/// A new version being made from the current one, delta by delta.
pub struct Applying {
    /// The version the deltas continue.
    current: StoreVersion,
    /// How items are read and embedded.
    inputs: ApplyInputs,
    /// The new version's directory.
    staging: Staging,
    /// The new version's database (a clone in staging).
    db: DB,
    /// The new version's vector index.
    index: VectorIndex,
    /// The fields the db's filter index covers (empty: none).
    indexed: Vec<String>,
    /// The last delta applied: seq, digest, length.
    last: Option<(u64, String, u64)>,
    /// Deltas and records applied so far.
    n_deltas: usize,
    /// Records applied so far.
    n_records: u64,
    /// Wall time per stage so far.
    stage_seconds: Vec<(&'static str, f64)>,
    /// When applying started (the first `apply`).
    apply_started: Option<Instant>,
    /// Every id put or deleted so far.
    touched: HashSet<String>,
}

impl StateDir {
    /// Starts a new version from `current`, to be made `seq` by the deltas applied to it
    /// (the staging directory is named after `seq`).
    pub fn begin_apply(
        self: &Arc<Self>,
        current: &StoreVersion,
        seq: u64,
        inputs: ApplyInputs,
    ) -> anyhow::Result<Applying> {
        let started = Instant::now();
        let staging = self.stage_copy_of(current, seq, &inputs.filter_fields)?;
        let index = VectorIndex::load(&current.index_path())?;
        let mut db = leveldb::open_db(&staging.db_dir(), false)?;
        let indexed = filter::recorded_fields(&mut db)?.unwrap_or_default();
        Ok(Applying {
            current: current.clone(),
            inputs,
            staging,
            db,
            index,
            indexed,
            last: None,
            n_deltas: 0,
            n_records: 0,
            stage_seconds: vec![("clone", started.elapsed().as_secs_f64())],
            apply_started: None,
            touched: HashSet::new(),
        })
    }
}

impl Applying {
    /// The seq the version reaches so far.
    pub fn seq(&self) -> u64 {
        self.last
            .as_ref()
            .map_or(self.current.info.seq, |(seq, _, _)| *seq)
    }

    /// How many deltas were applied so far.
    pub fn n_deltas(&self) -> usize {
        self.n_deltas
    }

    /// Writes one delta (verified, continuing what was applied so far) as one batch that
    /// also records the chain position it reaches.
    pub fn apply(&mut self, delta: &VerifiedDelta) -> anyhow::Result<()> {
        self.apply_started.get_or_insert_with(Instant::now);
        let mut batch = WriteBatch::default();
        // Items this batch already changed: the database does not show them yet.
        let mut pending: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        for (record_idx, record) in delta.batch.records.iter().enumerate() {
            let (id, new_json, held) = self
                .record(&mut batch, record)
                .map_err(|e| anyhow!("delta seq {} record {}: {e:#}", delta.seq, record_idx + 1))?;
            self.touched.insert(id.clone());
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
        if self.n_deltas == 0 {
            crate::failpoint::hit("after-first-batch");
        }
        self.n_deltas += 1;
        self.n_records += delta.batch.records.len() as u64;
        self.last = Some((delta.seq, delta.digest.clone(), delta.len));
        Ok(())
    }

    /// Closes the database, saves the index and commits the version, unless `cancel` was
    /// raised first. Fails when no delta was applied.
    pub fn commit(self, cancel: &Cancel) -> anyhow::Result<Applied> {
        self.finish()?.commit(cancel)
    }

    /// Closes the database and saves the index: the version is complete in staging, to be
    /// checked ([`Finished::view`]) and then committed. With no delta applied, it is a copy of
    /// the base.
    pub fn finish(mut self) -> anyhow::Result<Finished> {
        // No deltas: a copy of the base, checked like any new version (a snapshot installed
        // at the head the instance goes to).
        let (seq, digest, len) = self.last.clone().unwrap_or_else(|| {
            let info = &self.current.info;
            (info.seq, info.chain_digest.clone(), info.chain_len)
        });
        self.db
            .close()
            .map_err(|s| anyhow!("{s}"))
            .context("close the new version's database")?;
        crate::failpoint::hit("after-close");
        self.index.compact_if_worthwhile();
        self.index.save(&self.staging.index_path())?;
        let applied_seconds = self
            .apply_started
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.stage_seconds.push(("apply", applied_seconds));
        let info = VersionInfo {
            name: String::new(),
            seq,
            n_items: self.index.n_items() as u64,
            created_at: now_secs(),
            chain_digest: digest,
            chain_len: len,
            head_issued_at: Some(self.inputs.head_issued_at),
            schema_version: SCHEMA_VERSION,
            ..self.current.info.clone()
        };
        Ok(Finished {
            info: self.staging.view(info).info,
            staging: self.staging,
            index: Some(self.index),
            n_deltas: self.n_deltas,
            n_records: self.n_records,
            stage_seconds: self.stage_seconds,
            touched: self.touched,
        })
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
                let item = parse_item(item.get(), &self.inputs.fields)?;
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

/// A version whose deltas are all applied, complete in staging: its database closed, its
/// index saved. Removed on drop unless committed (blocking: drop it on a blocking thread).
pub struct Finished {
    /// The version's directory.
    staging: Staging,
    /// What `version.json` will say.
    info: VersionInfo,
    /// The version's index, as written, unless taken.
    index: Option<VectorIndex>,
    /// Deltas applied.
    n_deltas: usize,
    /// Records applied.
    n_records: u64,
    /// Wall time per stage so far.
    stage_seconds: Vec<(&'static str, f64)>,
    /// Every id put or deleted.
    touched: HashSet<String>,
}

impl Finished {
    /// The version as it will be committed, seen in staging: open it to check it.
    pub fn view(&self) -> StoreVersion {
        self.staging.view(self.info.clone())
    }

    /// The version's index (once; the caller keeps it, for a catalog).
    pub fn take_index(&mut self) -> Option<VectorIndex> {
        self.index.take()
    }

    /// The sha256 of the last delta applied.
    pub fn last_digest(&self) -> &str {
        &self.info.chain_digest
    }

    /// Adds a stage's wall time to what [`Applied::stage_seconds`] reports.
    pub fn record_stage(&mut self, stage: &'static str, seconds: f64) {
        self.stage_seconds.push((stage, seconds));
    }

    /// Commits the version (it becomes current), unless `cancel` was raised first.
    pub fn commit(mut self, cancel: &Cancel) -> anyhow::Result<Applied> {
        let started = Instant::now();
        let version = self.staging.commit(self.info, cancel)?;
        self.stage_seconds
            .push(("commit", started.elapsed().as_secs_f64()));
        Ok(Applied {
            version,
            n_deltas: self.n_deltas,
            n_records: self.n_records,
            stage_seconds: self.stage_seconds,
            index: self.index,
            touched: self.touched,
        })
    }
}

impl StateDir {
    /// Applies `deltas` (verified, in order, continuing `current`) and commits a new version.
    /// Blocking; for tools and tests that hold every delta already.
    pub fn apply_deltas(
        self: &Arc<Self>,
        current: &StoreVersion,
        inputs: ApplyInputs,
        deltas: &[VerifiedDelta],
    ) -> anyhow::Result<Applied> {
        let last_seq = deltas.last().map_or(current.info.seq, |d| d.seq);
        let mut applying = self.begin_apply(current, last_seq, inputs)?;
        for delta in deltas {
            applying.apply(delta)?;
        }
        applying.commit(&Cancel::never())
    }
}
