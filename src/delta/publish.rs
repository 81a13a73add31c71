//! `publish-delta`: changes in, the next delta out, as a new target of the TUF repository
//! (see `crate::tuf::repo` for the order of writes that keeps racing publishers and lost
//! answers from breaking the repository).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use super::chain::{
    ChainPosition, DeltaMeta, DeltaTarget, delta_target_name, delta_targets, verify_delta,
};
use super::format::{DeltaBatch, DeltaHeader, DeltaRecord, MAX_RECORDS_BYTES};
use super::snapshot::{plan_across, snapshot_targets};
use super::tip_cache::{CachedTip, TipCache};
use crate::bundle::items::{ItemFields, ItemReader, parse_item};
use crate::bundle::{Bundle, INDEX_FILE};
use crate::clock::now_secs;
use crate::delta_store::{DeltaStore, RemoteSettings};
use crate::digest::{canonical_json_sha256, sha256_hex};
use crate::progress::Progress;
use crate::search::index::VectorIndex;
use crate::tuf::client::TargetInfo;
use crate::tuf::keys::load_signers;
use crate::tuf::repo::{NewTarget, RepoState, target_object};
use crate::tuf::{self, Expiries, Role};

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
    /// The secret key files that sign: each signs the roles (targets, snapshot, timestamp)
    /// the newest root lists it for.
    pub keys: Vec<PathBuf>,
    /// The root the publisher trusts; `None` trusts the store's first root.
    pub trusted_root: Option<PathBuf>,
    /// The bundle the chain starts from.
    pub bundle: PathBuf,
    /// The changes.
    pub changes: ChangeSource,
    /// How long the new timestamp stays valid (the freshness bound of every instance).
    pub expires_in: Duration,
    /// Report what would change and publish nothing.
    pub dry_run: bool,
    /// Publish even when the delta fails the fleet policy's count checks.
    pub force: bool,
    /// Remote timeouts and retries.
    pub remote: RemoteSettings,
    /// Where the publisher keeps the chain's tip between runs (`None`: read it from the
    /// chain every time).
    pub tip_cache: Option<TipCache>,
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
    /// Items left as they were: in a diff, ids whose JSON is the same value in both
    /// snapshots; in a changes file, puts of the JSON value the item already has (dropped).
    pub unchanged: u64,
    /// Deletes of ids not live at the chain's tip: in neither the bundle nor any delta, or
    /// deleted by an earlier delta (dropped, with a warning saying which).
    pub unknown_deletes: u64,
    /// Whether nothing was published.
    pub dry_run: bool,
    /// The changes leave the catalogue as it is: no delta was (or would be) published. Not
    /// an error: a quiet day publishes nothing (the timestamp is then kept fresh by `repo
    /// refresh`).
    pub nothing_to_publish: bool,
    /// The items put by the delta (their JSON as written), for mirroring to Pinecone.
    pub puts: Vec<String>,
    /// The ids deleted by the delta, for mirroring to Pinecone.
    pub deleted_ids: Vec<String>,
    /// Items at the chain's tip before the delta.
    pub items_before: u64,
    /// Items after it.
    pub items_after: u64,
    /// Why the delta fails the fleet policy's count checks (published anyway with `force`).
    pub count_check: Option<String>,
    /// Added or changed items with words outside the model's vocabulary.
    pub oov_items: u64,
    /// Those words, distinct, sorted.
    pub oov_terms: Vec<String>,
    /// The seq of the tip read from the publisher's tip cache, if one was used.
    pub tip_cached_seq: Option<u64>,
    /// How many deltas were read from the store to know the tip.
    pub deltas_read: u64,
}

/// How far a publish got: what is and is not in the store, for a report when it is
/// interrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PublishStage {
    /// Reading the repository and the changes: nothing written yet.
    #[default]
    Preparing,
    /// Seq `.0` is made and being uploaded: nothing the repository names written yet.
    Uploading(u64),
    /// The delta of seq `.0` is in the store as `.1`, but the timestamp does not name it.
    Uploaded(u64, String),
    /// Seq `.0` is published: the timestamp names it.
    Published(u64),
}

/// The stage a publish in progress has reached, shared with whoever may interrupt it.
#[derive(Debug, Default)]
pub struct PublishProgress(parking_lot::Mutex<PublishStage>);

impl PublishProgress {
    /// The stage reached.
    pub fn stage(&self) -> PublishStage {
        self.0.lock().clone()
    }

    fn set(&self, stage: PublishStage) {
        *self.0.lock() = stage;
    }

    /// What an interruption now leaves: what was and was not published, and what to do.
    pub fn interrupted(&self) -> String {
        match self.stage() {
            PublishStage::Preparing => {
                "interrupted before anything was written: nothing was published; rerun the same command to publish".into()
            }
            PublishStage::Uploading(seq) => format!(
                "interrupted while uploading delta seq {seq}: it is not in the timestamp, so nothing was published; rerun the same command to publish it (`deltacache repo gc` removes a partial upload)"
            ),
            PublishStage::Uploaded(seq, object) => format!(
                "interrupted: delta seq {seq} uploaded ({object}) but not yet in the timestamp, so instances do not see it; rerun the same command to finish (it publishes seq {seq} again; `deltacache repo gc` then removes this upload)"
            ),
            PublishStage::Published(seq) => format!(
                "interrupted after delta seq {seq} was published (the timestamp names it): nothing more to do for it"
            ),
        }
    }
}

/// Publishes the next delta.
pub async fn publish(options: &PublishOptions) -> anyhow::Result<PublishReport> {
    publish_reporting(options, &PublishProgress::default()).await
}

/// [`publish`], recording in `progress` how far it got.
// long: the steps of a publish in their order; each is one call
pub async fn publish_reporting(
    options: &PublishOptions,
    progress: &PublishProgress,
) -> anyhow::Result<PublishReport> {
    let (keys, key_ids) = load_signers(&options.keys)?;
    let bundle = Bundle::open(&options.bundle)?;
    let fields = bundle.manifest.item_fields();
    let store = DeltaStore::open(&options.store, &options.remote).await?;
    let state = RepoState::read(&store, read_trusted_root(options)?.as_deref()).await?;
    if state.current.is_none() {
        bail!(
            "{} holds no published metadata: create the repository first with `deltacache repo init --store {}` (publish-delta never creates one)",
            store.describe(),
            options.store
        );
    }
    // Before anything is written: the keys must be the ones the newest root authorises.
    state.check_authorised(&key_ids, &[Role::Targets, Role::Snapshot, Role::Timestamp])?;
    let changes = read_source(&options.changes, &fields)?;
    let cache = options
        .tip_cache
        .as_ref()
        .map(|c| (c, options.store.as_str()));
    let tip = ChainTip::read(&store, &state, &bundle, cache).await?;

    let mut report = PublishReport {
        seq: tip.next_seq(),
        dry_run: options.dry_run,
        tip_cached_seq: tip.cached_seq,
        deltas_read: tip.deltas_read,
        ..Default::default()
    };
    let records = match (&options.changes, changes) {
        (ChangeSource::Diff { old, new }, _) => {
            diff_snapshots(old, new, &fields, &tip, &mut report)?
        }
        (ChangeSource::Changes(_), changes) => {
            classify_changes(changes.unwrap_or_default(), &bundle, &tip, &mut report)?
        }
    };
    if records.is_empty() {
        // The same answer with or without --dry-run: nothing to publish is not a failure.
        report.nothing_to_publish = true;
        tip.keep(cache, None, &fields)?;
        return Ok(report);
    }
    let batch = tip.next_batch(records, now_secs());
    let bytes = batch.encode()?;
    check_report(&mut report, &batch, &bundle, &tip, &store, &state).await?;
    if let Some(message) = &report.count_check
        && !options.force
        && !options.dry_run
    {
        bail!(
            "seq {} fails the fleet policy's count checks: {message}; every instance's health gate would refuse it. Nothing was published: check the changes, or pass --force to publish anyway (instances still gate it), or change the gate with `deltacache fleet set`",
            report.seq
        );
    }
    report.digest = sha256_hex(&bytes);
    report.bytes = bytes.len() as u64;
    if options.dry_run {
        tip.keep(cache, None, &fields)?;
        return Ok(report);
    }
    let target = NewTarget {
        name: delta_target_name(report.seq),
        bytes,
        custom: DeltaMeta {
            published_at_ms: crate::clock::now_millis(),
            ..DeltaMeta::of_batch(&batch)
        }
        .to_custom(),
    };
    let expiries = Expiries {
        timestamp: options.expires_in,
        ..Expiries::default()
    };
    let seq = report.seq;
    progress.set(PublishStage::Uploading(seq));
    let step = |step: tuf::repo::PublishStep| match step {
        tuf::repo::PublishStep::TargetsUploaded(objects) => {
            progress.set(PublishStage::Uploaded(seq, objects.join(", ")))
        }
        tuf::repo::PublishStep::MetadataUploaded => {}
        tuf::repo::PublishStep::TimestampReplaced => progress.set(PublishStage::Published(seq)),
    };
    tuf::repo::publish_reporting(&store, &state, &keys, vec![target], expiries, &step).await?;
    tip.keep(cache, Some((&batch, &report.digest)), &fields)?;
    Ok(report)
}

/// The root the publisher trusts, when one is given.
fn read_trusted_root(options: &PublishOptions) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = &options.trusted_root else {
        return Ok(None);
    };
    let bytes =
        std::fs::read(path).with_context(|| format!("read trusted root {}", path.display()))?;
    Ok(Some(bytes))
}

/// The tip the chain is read from, and the seq it stands at when it comes from the tip
/// cache: the cached tip when the verified `planned` deltas name its seq and digest, else
/// the bundle's ids.
fn starting_tip(
    bundle: &Bundle,
    planned: &[DeltaTarget],
    position: &ChainPosition,
    cache: Option<(&TipCache, &str)>,
) -> anyhow::Result<(CachedTip, Option<u64>)> {
    let cached = cache
        .and_then(|(cache, url)| cache.load(url, position))
        .filter(|tip| {
            planned
                .iter()
                .any(|d| d.meta.seq == tip.seq && d.digest == tip.digest)
        });
    Ok(match cached {
        Some(tip) => {
            let seq = tip.seq;
            (tip, Some(seq))
        }
        None => (
            CachedTip {
                seq: position.seq,
                digest: position.digest.clone(),
                ids: bundle_ids(bundle)?,
                ..CachedTip::default()
            },
            None,
        ),
    })
}

/// Saves the tip for the next publish; a failure only costs that publish a read of the
/// chain, so it is a warning.
fn save_tip(cache: &TipCache, store: &str, bundle: &ChainPosition, tip: &CachedTip) {
    if let Err(e) = cache.save(store, bundle, tip) {
        tracing::warn!(error = %format!("{e:#}"), "could not save the publisher's tip cache; the next publish reads the chain");
    }
}

/// Fills in what the report says beyond counts: the puts and deletes (for mirroring), the
/// items before and after and whether that passes the fleet policy's count checks, and the
/// added or changed items with words outside the model's vocabulary.
async fn check_report(
    report: &mut PublishReport,
    batch: &DeltaBatch,
    bundle: &Bundle,
    tip: &ChainTip,
    store: &DeltaStore,
    state: &RepoState,
) -> anyhow::Result<()> {
    let model = bundle.load_model()?;
    let mut oov_terms = std::collections::BTreeSet::new();
    for record in &batch.records {
        match record {
            DeltaRecord::Put { item } => {
                let unknown = model
                    .unknown_terms(&parse_item(item.get(), &bundle.manifest.item_fields())?.text);
                if !unknown.is_empty() {
                    report.oov_items += 1;
                    oov_terms.extend(unknown);
                }
                report.puts.push(item.get().to_owned());
            }
            DeltaRecord::Delete { id } => report.deleted_ids.push(id.clone()),
        }
    }
    report.oov_terms = oov_terms.into_iter().collect();
    report.items_before = tip.live_ids.len() as u64;
    report.items_after = report.items_before + report.adds - report.deletes;
    let (policy, _) = super::fleet::read_published(store, state).await?;
    if let Err((_, message)) = policy
        .unwrap_or_default()
        .gate
        .check_counts(report.items_before, report.items_after)
    {
        report.count_check = Some(message);
    }
    Ok(())
}

/// `repo init`: creates the repository in `store` with `root` (version 1), signed with
/// `keys`; with `adopt` (a trusted-keys file and the bundle the chain starts from), first
/// verifies the store's chain of the earlier format and publishes each of its deltas, byte
/// for byte, as a target, so instances that applied them keep their chain. Returns how many
/// deltas were adopted.
pub async fn init_repository(
    store: &str,
    remote: &RemoteSettings,
    root: &[u8],
    keys: &(Vec<Box<dyn tough::key_source::KeySource>>, Vec<String>),
    adopt: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<usize> {
    let store = std::sync::Arc::new(DeltaStore::open(store, remote).await?);
    let mut targets = Vec::new();
    if let Some((trusted_keys, bundle)) = adopt {
        let trusted = super::legacy::TrustedKeys::load(trusted_keys)?;
        let bundle = Bundle::open(bundle)?;
        let chain = super::legacy::read_chain(&store, &trusted).await?;
        let position = ChainPosition::of_bundle(&bundle.manifest)
            .held_by(format!("bundle {}", bundle.dir.display()));
        for delta in chain {
            let meta = DeltaMeta::of_batch(&delta.batch);
            if meta.dataset != position.dataset
                || meta.model_fingerprint != position.model_fingerprint
            {
                bail!(
                    "delta seq {} of {} is for dataset {:?} and model {}, but bundle {} is for {:?} and {}: adopt with the bundle the chain started from",
                    meta.seq,
                    store.describe(),
                    meta.dataset,
                    meta.model_fingerprint,
                    bundle.dir.display(),
                    position.dataset,
                    position.model_fingerprint
                );
            }
            targets.push(NewTarget {
                name: delta_target_name(meta.seq),
                bytes: delta.bytes,
                custom: meta.to_custom(),
            });
        }
    }
    let n_adopted = targets.len();
    tuf::repo::init(store, root, &keys.0, &keys.1, targets, Expiries::default()).await?;
    Ok(n_adopted)
}

/// The end of the chain as verified metadata names it: where the next delta continues from,
/// and the ids that exist after every delta since the bundle.
struct ChainTip {
    /// Where the bundle starts the chain.
    position: ChainPosition,
    /// The newest delta, `None` when the chain is still at the bundle.
    newest: Option<DeltaTarget>,
    /// Every id live at the tip.
    live_ids: HashSet<String>,
    /// The seq the tip cache started from, if it was used.
    cached_seq: Option<u64>,
    /// Deltas read from the store.
    deltas_read: u64,
    /// Ids a delta since the bundle deleted and none put again, with that delta's seq.
    deleted_at: HashMap<String, u64>,
    /// The digest ([`canonical_json_sha256`]) of the newest put since the bundle of each id
    /// a delta put, to tell a put that changes nothing.
    put_digest: HashMap<String, [u8; 32]>,
}

impl ChainTip {
    /// Checks the chain's metadata from the bundle on, and reads every delta since the
    /// bundle (each checked against its hash) to know which ids exist, which were deleted,
    /// and the newest JSON of each id a delta put; with a tip cache (and the store URL it is
    /// kept under) whose tip the metadata lists, only the deltas after that tip.
    async fn read(
        store: &DeltaStore,
        state: &RepoState,
        bundle: &Bundle,
        cache: Option<(&TipCache, &str)>,
    ) -> anyhow::Result<Self> {
        let position = ChainPosition::of_bundle(&bundle.manifest)
            .held_by(format!("bundle {}", bundle.dir.display()));
        let fields = bundle.manifest.item_fields();
        let targets = published_targets(state);
        let deltas = delta_targets(&targets)?;
        let snapshots = snapshot_targets(&targets)?;
        let planned = plan_across(&deltas, &snapshots, &position).map_err(|error| {
            // A dataset or model mismatch says itself what to do.
            if matches!(error, super::chain::ChainError::Binding { .. }) {
                return anyhow::Error::new(error);
            }
            anyhow::Error::new(error).context(format!(
                "the chain in {} does not continue bundle {} (seq {}): publish against the bundle the chain started from",
                store.describe(),
                bundle.dir.display(),
                position.seq
            ))
        })?;
        if let Some(rollover) = planned.rollovers.last() {
            bail!(
                "{} moved to model {} at seq {} ({}), but bundle {} has model {}: publish with --bundle of the new model (the bundle `compact --refit --publish` wrote, or one compacted since)",
                store.describe(),
                &rollover.meta.model_fingerprint[..16.min(rollover.meta.model_fingerprint.len())],
                rollover.meta.seq,
                rollover.name,
                bundle.dir.display(),
                &position.model_fingerprint[..16.min(position.model_fingerprint.len())]
            );
        }
        let planned = planned.deltas;
        let (start, cached_seq) = starting_tip(bundle, &planned, &position, cache)?;
        let mut at = start;
        let unread: Vec<&DeltaTarget> = planned
            .iter()
            .filter(|d| cached_seq.is_none_or(|seq| d.meta.seq > seq))
            .collect();
        for delta in &unread {
            let bytes = read_target(store, delta).await?;
            let verified = verify_delta(&bytes, delta, MAX_RECORDS_BYTES)?;
            for record in &verified.batch.records {
                at.take(record, delta.meta.seq, &fields)
                    .with_context(|| format!("a put in {}", delta.name))?;
            }
        }
        Ok(ChainTip {
            newest: planned
                .last()
                .cloned()
                .or_else(|| deltas.iter().find(|d| d.meta.seq == position.seq).cloned()),
            position,
            live_ids: at.ids,
            cached_seq,
            deltas_read: unread.len() as u64,
            deleted_at: at.deleted_at,
            put_digest: at.put_digest,
        })
    }

    /// Keeps this tip in the tip cache for the next publish, moved on by the `published`
    /// delta (its batch and sha256) when there is one. A tip that was neither moved on nor
    /// read past the cached one is already there.
    fn keep(
        self,
        cache: Option<(&TipCache, &str)>,
        published: Option<(&DeltaBatch, &str)>,
        fields: &ItemFields,
    ) -> anyhow::Result<()> {
        let Some((cache, url)) = cache else {
            return Ok(());
        };
        let (seq, digest) = match (published, &self.newest) {
            (Some((batch, digest)), _) => (batch.header.seq, digest.to_owned()),
            (None, Some(newest)) if self.deltas_read > 0 => {
                (newest.meta.seq, newest.digest.clone())
            }
            (None, _) => return Ok(()),
        };
        let mut at = CachedTip {
            seq,
            digest,
            ids: self.live_ids,
            deleted_at: self.deleted_at,
            put_digest: self.put_digest,
        };
        for record in published.map_or(&[][..], |(batch, _)| &batch.records) {
            at.take(record, seq, fields)?;
        }
        save_tip(cache, url, &self.position, &at);
        Ok(())
    }

    /// Warns that a delete of `id`, which is not live at the tip, is dropped, saying why.
    fn warn_dropped_delete(&self, id: &str) {
        match self.deleted_at.get(id) {
            Some(seq) => tracing::warn!(
                id,
                deleted_by_seq = seq,
                "delete of an id that seq {seq} already deleted; dropped (nothing to do)"
            ),
            None => tracing::warn!(
                id,
                "delete of an id that is in neither the bundle nor any delta published since; dropped (check the id)"
            ),
        }
    }

    /// The seq the next delta takes.
    fn next_seq(&self) -> u64 {
        self.newest
            .as_ref()
            .map_or(self.position.seq, |d| d.meta.seq)
            + 1
    }

    /// The next delta's batch, continuing the tip.
    fn next_batch(&self, records: Vec<DeltaRecord>, now: u64) -> DeltaBatch {
        let (parent_seq, parent_digest, parent_len) = match &self.newest {
            Some(newest) => (newest.meta.seq, newest.digest.clone(), newest.len),
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

/// The targets the repository's newest metadata lists (none before `repo init`).
pub fn published_targets(state: &RepoState) -> Vec<TargetInfo> {
    state
        .current
        .as_ref()
        .map(|current| crate::tuf::client::target_infos(&current.targets))
        .unwrap_or_default()
}

/// Reads a delta target's bytes from the store, checking its length and sha256.
pub async fn read_target(store: &DeltaStore, delta: &DeltaTarget) -> anyhow::Result<Vec<u8>> {
    read_listed(store, &delta.name, &delta.digest, delta.len).await
}

/// Reads the target `name` that signed metadata lists with `digest` and `len`, checking
/// both.
pub async fn read_listed(
    store: &DeltaStore,
    name: &str,
    digest: &str,
    len: u64,
) -> anyhow::Result<Vec<u8>> {
    let object = target_object(digest, name);
    let fetched = store
        .get(&object, len)
        .await?
        .with_context(|| format!("{object} is missing from {}", store.describe()))?;
    if fetched.bytes.len() as u64 != len || sha256_hex(&fetched.bytes) != digest {
        bail!("{object} does not match the length and sha256 its metadata states");
    }
    Ok(fetched.bytes)
}

fn bundle_ids(bundle: &Bundle) -> anyhow::Result<HashSet<String>> {
    let index = VectorIndex::load(&bundle.dir.join(INDEX_FILE))?;
    Ok((0..index.n_items() as u32)
        .map(|slot| index.id(slot).to_owned())
        .collect())
}

/// A changes file's records: (id, record), the last operation on each id.
type Changes = Vec<(String, DeltaRecord)>;

/// A changes file's records (`None` for a diff, read later against the tip).
fn read_source(source: &ChangeSource, fields: &ItemFields) -> anyhow::Result<Option<Changes>> {
    let ChangeSource::Changes(path) = source else {
        return Ok(None);
    };
    Ok(Some(read_changes(path, fields)?))
}

/// Reads a changes file: (id, record) in first-seen order; the last operation on an id wins.
fn read_changes(path: &std::path::Path, fields: &ItemFields) -> anyhow::Result<Changes> {
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
    Ok(records)
}

/// Counts a changes file's records against the chain's tip and keeps those that change
/// something: a put whose item is the JSON value the item already has is unchanged, a
/// delete of an id not live is dropped with a warning saying why.
fn classify_changes(
    records: Changes,
    bundle: &Bundle,
    tip: &ChainTip,
    report: &mut PublishReport,
) -> anyhow::Result<Vec<DeltaRecord>> {
    let in_bundle: Vec<&str> = records
        .iter()
        .filter(|(id, record)| {
            matches!(record, DeltaRecord::Put { .. })
                && tip.live_ids.contains(id)
                && !tip.put_digest.contains_key(id)
        })
        .map(|(id, _)| id.as_str())
        .collect();
    let bundle_json = bundle_items(bundle, &in_bundle)?;
    let mut kept = Vec::with_capacity(records.len());
    for (id, record) in records {
        match (&record, tip.live_ids.contains(&id)) {
            (DeltaRecord::Put { item }, true) => {
                let same = match (tip.put_digest.get(&id), bundle_json.get(&id)) {
                    (Some(digest), _) => *digest == json_digest(item.get())?,
                    (None, Some(current)) => json_digest(current)? == json_digest(item.get())?,
                    (None, None) => false,
                };
                if same {
                    report.unchanged += 1;
                    continue;
                }
                report.updates += 1;
            }
            (DeltaRecord::Put { .. }, false) => report.adds += 1,
            (DeltaRecord::Delete { .. }, true) => report.deletes += 1,
            (DeltaRecord::Delete { .. }, false) => {
                tip.warn_dropped_delete(&id);
                report.unknown_deletes += 1;
                continue;
            }
        }
        kept.push(record);
    }
    Ok(kept)
}

/// An item's JSON value's digest ([`canonical_json_sha256`]): equal for the same value
/// however it is written.
fn json_digest(json: &str) -> anyhow::Result<[u8; 32]> {
    canonical_json_sha256(json).context("parse an item's JSON")
}

/// The JSON the bundle holds for `ids`, read from a clone of its database (never the bundle
/// itself, which LevelDB would write to): made beside the bundle, so its tables are
/// hard-linked, else in the temporary directory.
fn bundle_items(bundle: &Bundle, ids: &[&str]) -> anyhow::Result<HashMap<String, String>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let beside = bundle.dir.parent().and_then(|parent| {
        tempfile::Builder::new()
            .prefix(".deltacache-publish-")
            .tempdir_in(parent)
            .ok()
    });
    let scratch = match beside {
        Some(dir) => dir,
        None => tempfile::tempdir().context("create a temporary directory")?,
    };
    let (readers, ()) = crate::db::leveldb::MetadataReaders::open(
        &bundle.dir.join(crate::bundle::DB_DIR),
        &scratch.path().join("db"),
        1,
        |_| Ok(()),
    )
    .with_context(|| format!("read the items of bundle {}", bundle.dir.display()))?;
    let mut items = HashMap::with_capacity(ids.len());
    for id in ids {
        if let Some(json) = readers.get(id)? {
            let json = String::from_utf8(json)
                .with_context(|| format!("bundle item {id:?} is not UTF-8"))?;
            items.insert((*id).to_owned(), json);
        }
    }
    Ok(items)
}

/// Puts and deletes that turn snapshot `old` into snapshot `new`. Memory holds one digest per
/// id of `old`, never the items themselves.
fn diff_snapshots(
    old: &std::path::Path,
    new: &std::path::Path,
    fields: &ItemFields,
    tip: &ChainTip,
    report: &mut PublishReport,
) -> anyhow::Result<Vec<DeltaRecord>> {
    let mut old_items: HashMap<String, [u8; 32]> = HashMap::new();
    for next in ItemReader::open(old, fields.clone())? {
        let (line_no, item) = next?;
        let digest = canonical_json_sha256(&item.json)
            .with_context(|| format!("{} line {line_no}", old.display()))?;
        if old_items.insert(item.id.clone(), digest).is_some() {
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
        let digest = canonical_json_sha256(&item.json)
            .with_context(|| format!("{} line {line_no}", new.display()))?;
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
        if tip.live_ids.contains(id) {
            report.deletes += 1;
        } else {
            report.unknown_deletes += 1;
            tip.warn_dropped_delete(id);
            continue;
        }
        records.push(DeltaRecord::Delete { id: id.clone() });
    }
    Ok(records)
}
