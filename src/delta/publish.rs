//! `publish-delta`: changes in, the next signed delta and head out.
//!
//! Order of writes, so that a publisher killed at any point never leaves a head pointing at
//! a missing or partial delta: (1) the delta object, created only if absent, under a name
//! carrying its digest; (2) the head, replaced only if it is still the head that was read.
//! Two publishers racing both write their own delta objects; exactly one head swap wins and
//! the loser removes its unreferenced delta and publishes nothing.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::chain::{ChainPosition, VerifiedHead, fetch_chain, fetch_head};
use super::format::{DEFAULT_MAX_DELTA_BYTES, DeltaBatch, DeltaHeader, DeltaRecord, Head};
use super::keys::{PublisherKey, TrustedKeys};
use crate::bundle::items::{ItemFields, ItemReader, parse_item};
use crate::bundle::{Bundle, INDEX_FILE};
use crate::clock::now_secs;
use crate::delta_store::{DeltaStore, HeadCondition, PutError, RemoteSettings};
use crate::digest::sha256_hex;
use crate::progress::Progress;
use crate::search::index::VectorIndex;

/// Where the changes come from.
#[derive(Debug, Clone)]
pub enum ChangeSource {
    /// A changes file: JSONL of `{"op":"put","item":{...}}` and `{"op":"delete","id":"..."}`.
    Changes(PathBuf),
    /// The difference between two JSONL snapshots of the catalogue.
    Diff {
        /// The older snapshot.
        old: PathBuf,
        /// The newer snapshot.
        new: PathBuf,
    },
}

/// Everything `publish-delta` needs.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The delta store URL.
    pub store: String,
    /// The publisher's secret key file.
    pub key: PathBuf,
    /// Extra trusted keys for reading the current head (the key's own public half is always
    /// trusted).
    pub trusted_keys: Option<PathBuf>,
    /// The bundle the chain starts from.
    pub bundle: PathBuf,
    /// The changes.
    pub changes: ChangeSource,
    /// How long the new head stays valid.
    pub expires_in: Duration,
    /// Report what would change and publish nothing.
    pub dry_run: bool,
    /// Remote timeouts and retries.
    pub remote: RemoteSettings,
}

/// What a publish did (or would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// The new delta's seq.
    pub seq: u64,
    /// Its digest (empty on a dry run with nothing to do).
    pub digest: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Puts of ids not present before.
    pub adds: u64,
    /// Puts of ids present before.
    pub updates: u64,
    /// Deletes of present ids.
    pub deletes: u64,
    /// Ids left as they were (diff only).
    pub unchanged: u64,
    /// Deletes of ids in neither the bundle nor any earlier delta (dropped, with a warning).
    pub unknown_deletes: u64,
    /// Whether nothing was published.
    pub dry_run: bool,
    /// The items put by the delta (their JSON as written), for mirroring to Pinecone.
    pub puts: Vec<String>,
    /// The ids deleted by the delta, for mirroring to Pinecone.
    pub deleted_ids: Vec<String>,
}

/// Publishes the next delta.
pub async fn publish(options: &PublishOptions) -> anyhow::Result<PublishReport> {
    let key = PublisherKey::load(&options.key)?;
    let mut trusted = match &options.trusted_keys {
        Some(path) => TrustedKeys::load(path)?,
        None => TrustedKeys::default(),
    };
    trusted.add(key.verifying_key());
    let bundle = Bundle::open(&options.bundle)?;
    let fields = bundle.manifest.item_fields();
    let store = DeltaStore::open(&options.store, &options.remote).await?;
    let now = now_secs();
    let tip = ChainTip::read(&store, &trusted, &bundle, now).await?;

    let mut report = PublishReport {
        seq: tip.next_seq(),
        dry_run: options.dry_run,
        ..Default::default()
    };
    let records = match &options.changes {
        ChangeSource::Changes(path) => read_changes(path, &fields, &tip.live_ids, &mut report)?,
        ChangeSource::Diff { old, new } => {
            diff_snapshots(old, new, &fields, &tip.live_ids, &mut report)?
        }
    };
    if records.is_empty() {
        if options.dry_run {
            return Ok(report);
        }
        bail!("nothing to publish: the changes leave the catalogue as it is");
    }
    let batch = tip.next_batch(records, now);
    let delta = batch.sign(&key)?;
    for record in &batch.records {
        match record {
            DeltaRecord::Put { item } => report.puts.push(item.get().to_owned()),
            DeltaRecord::Delete { id } => report.deleted_ids.push(id.clone()),
        }
    }
    report.digest = sha256_hex(&delta);
    report.bytes = delta.len() as u64;
    if options.dry_run {
        return Ok(report);
    }
    let new_head = Head {
        dataset: tip.position.dataset.clone(),
        seq: report.seq,
        delta_digest: report.digest.clone(),
        delta_len: report.bytes,
        model_fingerprint: tip.position.model_fingerprint.clone(),
        issued_at: now,
        expires_at: now + options.expires_in.as_secs(),
    };
    upload(&store, &tip, &delta, &new_head.sign(&key)).await?;
    Ok(report)
}

/// The end of the chain as it stands: the verified head (if any), where the next delta
/// continues from, and the ids that exist after every delta since the bundle.
struct ChainTip {
    /// Where the bundle starts the chain.
    position: ChainPosition,
    /// The verified head, `None` before the first publish.
    head: Option<VerifiedHead>,
    /// Every id live at the head.
    live_ids: HashSet<String>,
}

impl ChainTip {
    /// Reads and verifies the head and every delta since the bundle.
    async fn read(
        store: &DeltaStore,
        trusted: &TrustedKeys,
        bundle: &Bundle,
        now: u64,
    ) -> anyhow::Result<Self> {
        let position = ChainPosition::of_bundle(&bundle.manifest);
        let fields = bundle.manifest.item_fields();
        let head = fetch_head(store, trusted, &position, None, now, true)
            .await
            .with_context(|| format!("read the head of {}", store.describe()))?;
        let mut live_ids = bundle_ids(bundle)?;
        if let Some(head) = &head {
            if head.head.seq < position.seq {
                bail!(
                    "the head of {} is at seq {} but bundle {} already includes seq {}: publish against the bundle the chain started from",
                    store.describe(),
                    head.head.seq,
                    bundle.dir.display(),
                    position.seq
                );
            }
            let chain = fetch_chain(
                store,
                trusted,
                &head.head,
                &position,
                DEFAULT_MAX_DELTA_BYTES,
            )
            .await
            .with_context(|| {
                format!(
                    "verify the chain of {} from bundle seq {}",
                    store.describe(),
                    position.seq
                )
            })?;
            for delta in &chain {
                for record in &delta.batch.records {
                    match record {
                        DeltaRecord::Put { item } => {
                            let item = parse_item(item.get(), &fields)
                                .with_context(|| format!("a put in delta seq {}", delta.seq))?;
                            live_ids.insert(item.id);
                        }
                        DeltaRecord::Delete { id } => {
                            live_ids.remove(id);
                        }
                    }
                }
            }
        }
        Ok(ChainTip {
            position,
            head,
            live_ids,
        })
    }

    /// The seq the next delta takes.
    fn next_seq(&self) -> u64 {
        self.head.as_ref().map_or(self.position.seq, |h| h.head.seq) + 1
    }

    /// The next delta's batch, continuing the tip.
    fn next_batch(&self, records: Vec<DeltaRecord>, now: u64) -> DeltaBatch {
        let (parent_seq, parent_digest, parent_len) = match &self.head {
            Some(head) => (
                head.head.seq,
                head.head.delta_digest.clone(),
                head.head.delta_len,
            ),
            None => (
                self.position.seq,
                self.position.digest.clone(),
                self.position.len,
            ),
        };
        DeltaBatch {
            header: DeltaHeader {
                dataset: self.position.dataset.clone(),
                seq: self.next_seq(),
                parent_seq,
                parent_digest,
                parent_len,
                created_at: now,
                model_fingerprint: self.position.model_fingerprint.clone(),
                // The layout this binary writes: an instance whose binary is older refuses the
                // delta rather than guess; one whose copy is older migrates it first.
                schema_version: crate::db::migrate::SCHEMA_VERSION,
                n_records: records.len() as u64,
                records_len: 0,
            },
            records,
        }
    }
}

/// Writes the delta (create-only), then swaps the head if it is still the one `tip` read.
async fn upload(
    store: &DeltaStore,
    tip: &ChainTip,
    delta: &[u8],
    signed_head: &[u8],
) -> anyhow::Result<()> {
    let seq = tip.next_seq();
    let digest = sha256_hex(delta);
    match store.put_delta(seq, &digest, delta).await {
        Ok(()) => {}
        Err(PutError::Conflict { name }) => bail!(
            "{name} already exists: an identical delta was published concurrently; nothing more to do"
        ),
        Err(PutError::Other(error)) => return Err(error.context("upload the delta")),
    }
    let condition = match &tip.head {
        Some(head) => HeadCondition::Matches(head.etag.clone()),
        None => HeadCondition::Absent,
    };
    match store.put_head(signed_head, condition).await {
        Ok(()) => Ok(()),
        Err(PutError::Conflict { .. }) => {
            if let Err(error) = store.remove_unreferenced_delta(seq, &digest).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "remove the unreferenced delta of a lost race"
                );
            }
            bail!(
                "another publisher moved the head of {} while this one published seq {seq}: nothing was published; re-run to publish on top of it",
                store.describe()
            )
        }
        Err(PutError::Other(error)) => Err(error.context("replace the head")),
    }
}

fn bundle_ids(bundle: &Bundle) -> anyhow::Result<HashSet<String>> {
    let index = VectorIndex::load(&bundle.dir.join(INDEX_FILE))?;
    Ok((0..index.n_items() as u32)
        .map(|slot| index.id(slot).to_owned())
        .collect())
}

/// Reads a changes file; the last operation on an id wins.
fn read_changes(
    path: &std::path::Path,
    fields: &ItemFields,
    live_ids: &HashSet<String>,
    report: &mut PublishReport,
) -> anyhow::Result<Vec<DeltaRecord>> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)
        .with_context(|| format!("open changes file {}", path.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut progress = Progress::bytes("changes", total);
    let mut position_of: HashMap<String, usize> = HashMap::new();
    let mut records: Vec<(String, DeltaRecord)> = Vec::new();
    let mut read = 0u64;
    for (line_idx, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = line_idx + 1;
        let line =
            line.with_context(|| format!("{} line {line_no}: not UTF-8 text", path.display()))?;
        read += line.len() as u64 + 1;
        if line_no.is_multiple_of(4096) {
            progress.set(read);
        }
        if line.trim().is_empty() {
            continue;
        }
        let record = DeltaRecord::from_json(line.as_bytes())
            .map_err(|e| anyhow::anyhow!("{} line {line_no}: {e}", path.display()))?;
        let id = match &record {
            DeltaRecord::Put { item } => {
                parse_item(item.get(), fields)
                    .map_err(|e| anyhow::anyhow!("{} line {line_no}: item: {e}", path.display()))?
                    .id
            }
            DeltaRecord::Delete { id } => id.clone(),
        };
        match position_of.get(&id) {
            Some(&at) => records[at].1 = record,
            None => {
                position_of.insert(id.clone(), records.len());
                records.push((id, record));
            }
        }
    }
    progress.finish();
    let mut kept = Vec::with_capacity(records.len());
    for (id, record) in records {
        match (&record, live_ids.contains(&id)) {
            (DeltaRecord::Put { .. }, true) => report.updates += 1,
            (DeltaRecord::Put { .. }, false) => report.adds += 1,
            (DeltaRecord::Delete { .. }, true) => report.deletes += 1,
            (DeltaRecord::Delete { .. }, false) => {
                tracing::warn!(
                    id,
                    "delete of an id that is in neither the bundle nor any earlier delta; dropped"
                );
                report.unknown_deletes += 1;
                continue;
            }
        }
        kept.push(record);
    }
    Ok(kept)
}

/// Puts and deletes that turn snapshot `old` into snapshot `new`. Memory holds one digest per
/// id of `old`, never the items themselves.
fn diff_snapshots(
    old: &std::path::Path,
    new: &std::path::Path,
    fields: &ItemFields,
    live_ids: &HashSet<String>,
    report: &mut PublishReport,
) -> anyhow::Result<Vec<DeltaRecord>> {
    let mut old_items: HashMap<String, [u8; 32]> = HashMap::new();
    for next in ItemReader::open(old, fields.clone())? {
        let (line_no, item) = next?;
        if old_items
            .insert(item.id.clone(), Sha256::digest(item.json.as_bytes()).into())
            .is_some()
        {
            bail!(
                "{} line {line_no}: duplicate id {:?}",
                old.display(),
                item.id
            );
        }
    }
    let total = std::fs::metadata(new).map(|m| m.len()).unwrap_or(0);
    let mut progress = Progress::bytes("diff", total);
    let mut records = Vec::new();
    let mut seen_new: HashSet<String> = HashSet::new();
    let mut reader = ItemReader::open(new, fields.clone())?;
    while let Some(next) = reader.next() {
        let (line_no, item) = next?;
        if !seen_new.insert(item.id.clone()) {
            bail!(
                "{} line {line_no}: duplicate id {:?}",
                new.display(),
                item.id
            );
        }
        let digest: [u8; 32] = Sha256::digest(item.json.as_bytes()).into();
        match old_items.get(&item.id) {
            Some(old_digest) if *old_digest == digest => {
                report.unchanged += 1;
                continue;
            }
            Some(_) => report.updates += 1,
            None => report.adds += 1,
        }
        let raw = serde_json::value::RawValue::from_string(item.json)
            .with_context(|| format!("{} line {line_no}", new.display()))?;
        records.push(DeltaRecord::Put { item: raw });
        if line_no.is_multiple_of(4096) {
            progress.set(reader.bytes_read());
        }
    }
    progress.finish();
    let mut deletes: Vec<&String> = old_items
        .keys()
        .filter(|id| !seen_new.contains(*id))
        .collect();
    deletes.sort();
    for id in deletes {
        if live_ids.contains(id) {
            report.deletes += 1;
        } else {
            report.unknown_deletes += 1;
            tracing::warn!(
                id,
                "delete of an id that is in neither the bundle nor any earlier delta; dropped"
            );
            continue;
        }
        records.push(DeltaRecord::Delete { id: id.clone() });
    }
    Ok(records)
}
