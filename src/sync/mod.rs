//! Sync: bring a state dir to the newest verified state of a delta store.
//!
//! load the TUF repository from the trusted root (tough: root chain, timestamp, snapshot,
//! targets, against the trusted metadata the state dir kept) → the delta targets that
//! continue the current version, checked as a chain from their metadata alone → fetch,
//! check (length and sha256 by tough, header against metadata), decode and apply each in
//! turn to a new copy-on-write version, holding one delta in memory at a time → commit →
//! keep the newly trusted metadata. A refusal before the commit leaves the state dir as it
//! was: tough works on a scratch copy of the trusted metadata, kept only after success. A
//! delta refused in the middle of a chain: the ones before it are committed, and the
//! refusal is reported.
//!
//! The fleet policy (`fleet.json`, a target of the same repository) is read on every sync:
//! it can hold the chain back (halt, waves) or pin it to a seq, going back to a kept version
//! or one rebuilt from the bundle ([`fleet`]). Every new version passes the health gate
//! ([`gate`]) on its own catalog before it is committed; one that fails is never committed
//! and never applied again.
//!
//! Every attempt can be cancelled ([`Cancel`]); a cancelled attempt stops at the next delta
//! and never commits. [`with_deadline`] raises the flag when an attempt overruns and waits
//! for the attempt to stop, so no apply is left running unseen.

pub mod fleet;
pub mod follow;
pub mod gate;
pub mod ops;
mod snapshot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bundle::Bundle;
use crate::bundle::items::ItemFields;
use crate::catalog::Catalog;
use crate::delta::chain::{ChainError, DeltaTarget, delta_targets, verify_delta};
use crate::delta::fleet::{Canary, FleetPolicy, instance_seed, read_canaries};
use crate::delta_store::{DeltaStore, RemoteSettings};
use crate::state::apply::{ApplyInputs, Finished};
use crate::state::{
    Cancel, Cancelled, Models, StateDir, StoreVersion, TrustBinding, TrustWatermark,
};
use crate::tuf::client::{self, ClientLimits, TrustedRepo};
use fleet::{FleetView, Route};

/// Where and how to sync from.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Delta store URL.
    pub store: String,
    /// The trusted root file (TUF `root.json`, baked into the image).
    pub trusted_root: PathBuf,
    /// Remote timeouts and retries.
    pub remote: RemoteSettings,
    /// Largest delta accepted.
    pub max_delta_bytes: u64,
    /// The most memory one delta's decoded records may take; deltas are applied one at a
    /// time, so this bounds what a sync holds.
    pub memory_budget_bytes: u64,
    /// Committed versions kept in the state dir.
    pub keep_versions: usize,
    /// This instance's wave seed (`None`: derived from the machine id).
    pub instance_seed: Option<u32>,
    /// A JSON file of canary queries every new version must answer (besides the fleet
    /// policy's).
    pub canaries: Option<PathBuf>,
    /// Read handles on each new version's catalog.
    pub reader_shards: usize,
    /// A chain longer than this many deltas (or larger in bytes than the newest snapshot)
    /// is caught up by downloading that snapshot; 0 never uses snapshots.
    pub snapshot_after_deltas: u64,
    /// The largest snapshot downloaded; a larger one is skipped and the chain replayed.
    pub max_snapshot_bytes: u64,
    /// The size of each ranged read of a snapshot download (what a restart loses at most).
    pub snapshot_chunk_bytes: u64,
    /// Whether a model rollover may be followed (not with the Pinecone backend, whose index
    /// holds vectors of the bundle's model).
    pub model_rollover: bool,
}

/// The default [`SyncOptions::snapshot_after_deltas`].
pub const DEFAULT_SNAPSHOT_AFTER_DELTAS: u64 = 32;
/// The default [`SyncOptions::max_snapshot_bytes`]: 16 GiB.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 16 << 30;
/// The default [`SyncOptions::snapshot_chunk_bytes`]: 8 MiB.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: u64 = 8 << 20;

/// The default [`SyncOptions::memory_budget_bytes`]: 1 GiB.
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 1 << 30;
/// The default [`SyncOptions::max_delta_bytes`]: 512 MiB.
pub const DEFAULT_MAX_DELTA_BYTES: u64 = 512 << 20;

impl SyncOptions {
    /// Options with defaults for everything but the delta store and the trusted root.
    pub fn new(store: String, trusted_root: PathBuf) -> Self {
        SyncOptions {
            store,
            trusted_root,
            remote: RemoteSettings::default(),
            max_delta_bytes: DEFAULT_MAX_DELTA_BYTES,
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            keep_versions: 3,
            instance_seed: None,
            canaries: None,
            reader_shards: 1,
            snapshot_after_deltas: DEFAULT_SNAPSHOT_AFTER_DELTAS,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
            model_rollover: true,
        }
    }

    /// What loading the repository may read.
    pub fn client_limits(&self) -> ClientLimits {
        ClientLimits {
            max_target_bytes: self.max_delta_bytes,
            ..ClientLimits::default()
        }
    }
}

/// Reads a trusted root file, refusing a trusted-keys file (the earlier way of trusting
/// publishers) with what to bake instead.
pub fn read_trusted_root(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("read trusted root {}", path.display()))?;
    if bytes.starts_with(b"deltacache-ed25519") || bytes.starts_with(b"#") {
        anyhow::bail!(
            "{} is a trusted-keys file; instances now trust a TUF root: bake the repository's root.json (made by `deltacache root init`, README \"Trust\") and pass it as --trusted-root",
            path.display()
        );
    }
    crate::tuf::root::parse_root(&bytes, &format!("trusted root {}", path.display()))?;
    Ok(bytes)
}

/// What one sync did.
#[derive(Debug, Clone)]
pub enum SyncOutcome {
    /// The repository names no delta yet.
    NoHead,
    /// Already at the newest delta.
    UpToDate {
        /// The newest delta's seq.
        head_seq: u64,
    },
    /// A pinned version is current; following is paused.
    Pinned {
        /// The pinned version.
        version: String,
    },
    /// The fleet policy pins this seq, which is served.
    FleetPinned {
        /// The pinned seq.
        seq: u64,
    },
    /// The fleet policy halts the fleet: nothing newer is applied.
    Halted {
        /// The newest delta's seq.
        head_seq: u64,
    },
    /// The next delta's wave has not started for this instance.
    Held {
        /// The delta held back.
        seq: u64,
        /// When its wave starts for this instance (milliseconds since the epoch).
        release_at_ms: u64,
    },
    /// The health gate refused the version the chain makes (now, or in an earlier attempt:
    /// it is not applied again); the served version stays.
    GateRefused {
        /// Why.
        refusal: crate::state::Refusal,
        /// Whether it was refused in an earlier attempt.
        remembered: bool,
    },
    /// A new version was made (or a kept one chosen) and committed.
    Applied(Box<Made>),
}

/// A version a sync committed, its catalog already open (the gate searched it).
#[derive(Clone)]
pub struct Made {
    /// The new version.
    pub version: StoreVersion,
    /// How many deltas (0: a kept version was chosen).
    pub n_deltas: usize,
    /// How many records.
    pub n_records: u64,
    /// The newest delta's seq.
    pub head_seq: u64,
    /// Set when only a prefix of the chain could be applied: why the rest was refused.
    pub refused_rest: Option<String>,
    /// Seconds per stage.
    pub stage_seconds: Vec<(&'static str, f64)>,
    /// The new version's catalog, open.
    pub catalog: Arc<Catalog>,
    /// When each applied delta was published (ms since the epoch), for freshness.
    pub published_ms: Vec<u64>,
    /// What the health gate measured (`None`: not gated, a kept version or a fleet pin).
    pub gate: Option<gate::GateReport>,
    /// Whether this goes back to an older seq (a fleet pin).
    pub back: bool,
    /// The seq of the catch-up snapshot this version was made from, if any.
    pub snapshot_seq: Option<u64>,
    /// The ids the deltas from the served version to this one put or deleted; `None` when
    /// it was not made from the served version (a kept one, a snapshot, going back).
    pub touched: Option<std::collections::HashSet<String>>,
}

impl SyncOutcome {
    /// One line saying what the sync did, for the operator.
    pub fn describe(&self) -> String {
        match self {
            SyncOutcome::NoHead => {
                "no delta in the repository yet: serving the bundle as it is".into()
            }
            SyncOutcome::UpToDate { head_seq } => format!("up to date at seq {head_seq}"),
            SyncOutcome::Pinned { version } => {
                format!("version {version} is pinned (rollback); not following")
            }
            SyncOutcome::FleetPinned { seq } => {
                format!("the fleet policy pins seq {seq}, which is served")
            }
            SyncOutcome::Halted { head_seq } => format!(
                "the fleet policy halts the fleet: nothing newer is applied (the head is seq {head_seq})"
            ),
            SyncOutcome::Held { seq, release_at_ms } => format!(
                "seq {seq} waits for this instance's wave, which starts in {}s",
                release_at_ms
                    .saturating_sub(crate::clock::now_millis())
                    .div_ceil(1000)
            ),
            SyncOutcome::GateRefused {
                refusal,
                remembered,
            } => format!(
                "the health gate {} seq {} ({}): {}; the last good version keeps serving",
                if *remembered {
                    "refused earlier"
                } else {
                    "refused"
                },
                refusal.seq,
                refusal.reason,
                refusal.message
            ),
            SyncOutcome::Applied(made) => {
                let stages: Vec<String> = made
                    .stage_seconds
                    .iter()
                    .map(|(n, s)| format!("{n} {s:.3}s"))
                    .collect();
                let via = made.snapshot_seq.map_or(String::new(), |seq| {
                    format!("caught up from the snapshot of seq {seq}, then ")
                });
                match (made.n_deltas, made.back) {
                    (0, false) if made.snapshot_seq.is_some() => format!(
                        "{via}applied 0 deltas: now at seq {} in version {} ({})",
                        made.version.info.seq,
                        made.version.info.name,
                        stages.join(", ")
                    ),
                    (0, back) => format!(
                        "{} kept version {}: now at seq {}",
                        if back { "went back to" } else { "moved to" },
                        made.version.info.name,
                        made.version.info.seq
                    ),
                    (n, back) => format!(
                        "{via}applied {n} deltas ({} records): now at seq {} in version {}{} ({})",
                        made.n_records,
                        made.version.info.seq,
                        made.version.info.name,
                        if back {
                            ", rebuilt from the bundle for the fleet pin"
                        } else {
                            ""
                        },
                        stages.join(", ")
                    ),
                }
            }
        }
    }
}

impl std::fmt::Debug for Made {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Made")
            .field("version", &self.version.info.name)
            .field("seq", &self.version.info.seq)
            .field("n_deltas", &self.n_deltas)
            .field("head_seq", &self.head_seq)
            .field("refused_rest", &self.refused_rest)
            .field("gate", &self.gate)
            .field("back", &self.back)
            .field("snapshot_seq", &self.snapshot_seq)
            .finish_non_exhaustive()
    }
}

/// Everything needed to sync one state dir; shared by `sync` and the daemon's follower.
pub struct Syncer {
    /// The delta store.
    store: Arc<DeltaStore>,
    /// The trusted root's bytes.
    trusted_root: Vec<u8>,
    /// Which repository the state dir's trusted metadata belongs to.
    binding: TrustBinding,
    /// The bundle the state dir descends from (to rebuild an older seq from).
    bundle: Bundle,
    /// The bundle's model and those of rolled-over versions (a version's deltas are
    /// embedded with its model).
    pub models: Arc<Models>,
    /// The bundle's id and text fields.
    fields: ItemFields,
    /// The fields the bundle's filter index covers.
    filter_fields: Vec<String>,
    /// This instance's wave seed.
    seed: u32,
    /// Canaries every new version must answer, besides the fleet policy's.
    canaries: Vec<Canary>,
    /// What the last sync saw of the fleet policy, for `/status`.
    view: parking_lot::Mutex<FleetView>,
    /// Caps and retention.
    options: SyncOptions,
}

impl Syncer {
    /// Reads the trusted root and the canaries, and opens the delta store.
    pub async fn open(
        options: SyncOptions,
        bundle: &Bundle,
        models: Arc<Models>,
    ) -> anyhow::Result<Self> {
        let trusted_root = read_trusted_root(&options.trusted_root)?;
        let seed = instance_seed(options.instance_seed)?;
        let canaries = match &options.canaries {
            Some(path) => read_canaries(path)?,
            None => Vec::new(),
        };
        let store = Arc::new(DeltaStore::open(&options.store, &options.remote).await?);
        Ok(Syncer {
            binding: TrustBinding {
                store: store.describe(),
                dataset: bundle.manifest.dataset.clone(),
            },
            store,
            trusted_root,
            bundle: bundle.clone(),
            models,
            fields: bundle.manifest.item_fields(),
            filter_fields: bundle.manifest.filter_fields.clone(),
            seed,
            canaries,
            view: parking_lot::Mutex::new(FleetView {
                instance_seed: seed,
                ..FleetView::default()
            }),
            options,
        })
    }

    /// The delta store, for watching and messages.
    pub fn store(&self) -> &DeltaStore {
        &self.store
    }

    /// What the last sync saw of the fleet policy.
    pub fn fleet_view(&self) -> FleetView {
        self.view.lock().clone()
    }

    /// Brings `state` from `current` to the newest delta the fleet policy lets this instance
    /// take; stops, committing nothing, once `cancel` is raised.
    pub async fn sync(
        &self,
        state: &Arc<StateDir>,
        current: &StoreVersion,
        cancel: &Cancel,
    ) -> anyhow::Result<SyncOutcome> {
        if let Some(pinned) = state.pinned()? {
            return Ok(SyncOutcome::Pinned { version: pinned });
        }
        let started = Instant::now();
        let (binding, state_for_copy) = (self.binding.clone(), state.clone());
        let trusted = blocking(move || state_for_copy.stage_trusted(&binding)).await?;
        let repo = cancel
            .run(client::load(
                self.store.clone(),
                &self.trusted_root,
                trusted.path(),
                self.options.client_limits(),
            ))
            .await?
            .map_err(ChainError::Trust)?;
        let targets = repo.targets();
        let deltas = delta_targets(&targets)?;
        let policy = self.read_policy(&repo, &targets, cancel).await?;
        let Some(newest) = deltas.last().cloned() else {
            self.keep_trusted(state, trusted, None).await?;
            return Ok(SyncOutcome::NoHead);
        };
        metrics::gauge!("deltacache_head_seq").set(newest.meta.seq as f64);
        let watermark = TrustWatermark {
            seq: newest.meta.seq,
            issued_at: newest.meta.created_at,
        };
        let snapshots = snapshot::listed(&targets);
        let route = self
            .route(state, &policy, &deltas, &snapshots, current)
            .await?;
        let outcome = match route {
            Route::Stay(outcome) => outcome,
            Route::Take {
                deltas: planned,
                rollovers,
                base,
                gated,
            } => {
                let head_seq = newest.meta.seq;
                let gate_against = gated.then_some(current.info.n_items);
                let base_name = base.info.name.clone();
                let (base, planned) = self
                    .catch_up(state, &snapshots, base, planned, &rollovers, cancel)
                    .await?;
                let plan_seconds = started.elapsed().as_secs_f64();
                let snapshot_seq = (base.info.name != base_name).then_some(base.info.seq);
                let mut making = self
                    .make(state, &base, &repo, &planned, gate_against, &policy, cancel)
                    .await?;
                if let Making::Made(made) = &mut making {
                    made.snapshot_seq = snapshot_seq;
                    if base.info.name != current.info.name {
                        made.touched = None;
                    }
                }
                making.finish(head_seq, plan_seconds)
            }
            Route::Kept { version, back } => {
                self.choose_kept(state, version, newest.meta.seq, back)
                    .await?
            }
        };
        self.keep_trusted(state, trusted, Some(watermark)).await?;
        Ok(outcome)
    }

    /// Keeps the metadata tough trusted in this sync (and the watermark), once the sync has
    /// succeeded.
    async fn keep_trusted(
        &self,
        state: &Arc<StateDir>,
        trusted: crate::state::Scratch,
        watermark: Option<TrustWatermark>,
    ) -> anyhow::Result<()> {
        let (state, binding) = (state.clone(), self.binding.clone());
        blocking(move || {
            state.keep_trusted(&binding, &trusted)?;
            if let Some(watermark) = watermark {
                state.record_watermark(watermark)?;
            }
            Ok(())
        })
        .await
    }

    /// Fetches, checks and applies each planned delta in turn (one in memory at a time) on
    /// a new version of `base`; with `gate_against` (the served version's item count),
    /// checks the version with the health gate before it is committed (a refusal is remembered, and nothing is committed). A delta
    /// refused after others were applied ends the chain there: the ones before it make the
    /// version, and the refusal is returned beside it. Blocking steps run on blocking
    /// threads; on failure the half-made version is removed there too.
    // long: one pass from the first fetch to the commit; each step is a call.
    #[allow(clippy::too_many_arguments)]
    async fn make(
        &self,
        state: &Arc<StateDir>,
        base: &StoreVersion,
        repo: &TrustedRepo,
        planned: &[DeltaTarget],
        gate_against: Option<u64>,
        policy: &FleetPolicy,
        cancel: &Cancel,
    ) -> anyhow::Result<Making> {
        let started = Instant::now();
        let last_seq = planned.last().map_or(base.info.seq, |d| d.meta.seq);
        let (models, base_for_model) = (self.models.clone(), base.clone());
        let model = blocking(move || models.for_version(&base_for_model)).await?;
        let inputs = ApplyInputs {
            model,
            fields: self.fields.clone(),
            filter_fields: self.filter_fields.clone(),
            head_issued_at: planned
                .last()
                .map_or(base.info.head_issued_at.unwrap_or(0), |d| d.meta.created_at),
        };
        let (state_for_apply, base_for_apply) = (state.clone(), base.clone());
        let mut applying =
            blocking(move || state_for_apply.begin_apply(&base_for_apply, last_seq, inputs))
                .await?;
        let mut fetched_bytes = 0u64;
        let mut refused_rest = None;
        for delta in planned {
            let verified = match self.fetch(repo, delta, cancel).await {
                Ok(verified) => verified,
                Err(error) => {
                    let refusal = error.downcast_ref::<ChainError>().is_some_and(|e| {
                        !matches!(e, ChainError::Trust(client::TrustError::Unreachable(_)))
                    });
                    if refusal && applying.n_deltas() > 0 {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            seq = applying.seq(),
                            "committing the valid prefix of a chain with a refused delta"
                        );
                        refused_rest = Some(format!("{error:#}"));
                        break;
                    }
                    discard(applying).await;
                    return Err(error);
                }
            };
            fetched_bytes += verified.len;
            applying = blocking(move || applying.apply(&verified).map(|()| applying)).await?;
        }
        metrics::counter!("deltacache_fetched_bytes_total").increment(fetched_bytes);
        let n_applied = applying.n_deltas();
        let mut finished = blocking(move || applying.finish()).await?;
        let catalog = match self.open_finished(state, &mut finished).await {
            Ok(catalog) => catalog,
            Err(error) => {
                discard(finished).await;
                return Err(error.context(format!(
                    "open the new version of seq {last_seq} to check it; nothing was committed"
                )));
            }
        };
        let gate = if let Some(previous_items) = gate_against {
            match self
                .gate(state, previous_items, &mut finished, &catalog, policy)
                .await?
            {
                Ok(report) => Some(report),
                Err(refusal) => {
                    drop(catalog);
                    discard(finished).await;
                    return Ok(Making::Refused(refusal));
                }
            }
        } else {
            None
        };
        let cancel = cancel.clone();
        let applied = blocking(move || finished.commit(&cancel)).await?;
        metrics::histogram!("deltacache_apply_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("deltacache_deltas_applied_total").increment(applied.n_deltas as u64);
        metrics::counter!("deltacache_records_applied_total").increment(applied.n_records);
        Ok(Making::Made(Box::new(Made {
            version: applied.version,
            n_deltas: applied.n_deltas,
            n_records: applied.n_records,
            head_seq: 0,
            refused_rest,
            stage_seconds: applied.stage_seconds,
            catalog,
            published_ms: planned[..n_applied]
                .iter()
                .map(|d| d.meta.published_ms())
                .collect(),
            gate,
            back: last_seq < base.info.seq,
            snapshot_seq: None,
            touched: Some(applied.touched),
        })))
    }

    /// Opens the catalog of a version finished in staging (its reader clones are made from
    /// there; they stay valid once the version is renamed into place).
    async fn open_finished(
        &self,
        state: &Arc<StateDir>,
        finished: &mut Finished,
    ) -> anyhow::Result<Arc<Catalog>> {
        let view = finished.view();
        let index = finished.take_index();
        let (state, models, shards) = (
            state.clone(),
            self.models.clone(),
            self.options.reader_shards,
        );
        blocking(move || {
            let model = models.for_version(&view)?;
            Catalog::open_with_index(&view, model, index, &state.reader_dir(&view), shards)
                .map(Arc::new)
        })
        .await
    }

    /// Runs the health gate on a finished version; a refusal is remembered in the state
    /// dir, counted and logged.
    async fn gate(
        &self,
        state: &Arc<StateDir>,
        previous: u64,
        finished: &mut Finished,
        catalog: &Arc<Catalog>,
        policy: &FleetPolicy,
    ) -> anyhow::Result<Result<gate::GateReport, crate::state::Refusal>> {
        let started = Instant::now();
        let catalog = catalog.clone();
        let (gate_policy, canaries) = (policy.gate.clone(), self.canaries.clone());
        let checked =
            blocking(move || Ok(gate::check(&catalog, previous, &gate_policy, &canaries))).await?;
        finished.record_stage("gate", started.elapsed().as_secs_f64());
        match checked {
            Ok(report) => {
                tracing::info!(?report, "the new version passed the health gate");
                Ok(Ok(report))
            }
            Err(refused) => {
                let refusal = crate::state::Refusal {
                    seq: refused.seq,
                    digest: finished.last_digest().to_owned(),
                    reason: refused.reason.to_owned(),
                    message: refused.message.clone(),
                    at: crate::clock::now_secs(),
                };
                metrics::counter!("deltacache_gate_refusals_total", "reason" => refused.reason)
                    .increment(1);
                tracing::warn!(seq = refused.seq, reason = refused.reason, message = %refused.message, "the health gate refused the new version; serving the last good one");
                let (state, record) = (state.clone(), refusal.clone());
                blocking(move || state.record_refusal(record)).await?;
                Ok(Err(refusal))
            }
        }
    }

    /// Reads one delta (tough checks its length and sha256) and decodes it within the
    /// memory budget; stops at once when `cancel` is raised.
    async fn fetch(
        &self,
        repo: &TrustedRepo,
        delta: &DeltaTarget,
        cancel: &Cancel,
    ) -> anyhow::Result<crate::delta::chain::VerifiedDelta> {
        let bytes = cancel
            .run(repo.read_target(&delta.name))
            .await?
            .map_err(ChainError::Trust)?;
        cancel.check()?;
        let delta = delta.clone();
        let budget = self.options.memory_budget_bytes;
        blocking(move || Ok(verify_delta(&bytes, &delta, budget)?)).await
    }
}

/// What making a version came to.
enum Making {
    /// Committed.
    Made(Box<Made>),
    /// Refused by the health gate; nothing committed.
    Refused(crate::state::Refusal),
}

impl Making {
    fn finish(self, head_seq: u64, plan_seconds: f64) -> SyncOutcome {
        match self {
            Making::Made(mut made) => {
                made.head_seq = head_seq;
                made.stage_seconds
                    .insert(0, ("verify metadata", plan_seconds));
                SyncOutcome::Applied(made)
            }
            Making::Refused(refusal) => SyncOutcome::GateRefused {
                refusal,
                remembered: false,
            },
        }
    }
}

/// Removes a half-made version on a blocking thread (removal is blocking work).
async fn discard<T: Send + 'static>(making: T) {
    let _ = blocking(move || {
        drop(making);
        Ok(())
    })
    .await;
}

/// Runs blocking work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("join a blocking task")?
}

/// Every label [`failure_reason`] gives (`deltacache_sync_failures_total{reason}`).
pub const FAILURE_REASONS: &[&str] = &[
    "unreachable",
    "no-repository",
    "expired",
    "rollback",
    "refused",
    "deadline",
    "other",
];

/// Exports the sync's counters at 0 before anything happens, one series per reason, so that
/// `increase()` and `rate()` see the first failure, refusal or apply (a series first scraped
/// at 1 has no earlier sample to compare with, and an alert on it would never fire).
pub fn zero_metrics() {
    for &reason in FAILURE_REASONS {
        metrics::counter!("deltacache_sync_failures_total", "reason" => reason).increment(0);
    }
    for &reason in gate::REFUSAL_REASONS {
        metrics::counter!("deltacache_gate_refusals_total", "reason" => reason).increment(0);
    }
    for name in [
        "deltacache_sync_attempts_total",
        "deltacache_swaps_total",
        "deltacache_deltas_applied_total",
        "deltacache_records_applied_total",
        "deltacache_fetched_bytes_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// A short label for a sync failure, for metrics (one of [`FAILURE_REASONS`]).
pub fn failure_reason(error: &anyhow::Error) -> &'static str {
    if error.downcast_ref::<Cancelled>().is_some() || error.downcast_ref::<Overran>().is_some() {
        return "deadline";
    }
    match error.downcast_ref::<ChainError>() {
        Some(error) => error.reason(),
        None => match error.downcast_ref::<crate::delta_store::FetchError>() {
            Some(fetch) if fetch.is_permanent() => "refused",
            Some(_) => "unreachable",
            None => "other",
        },
    }
}

/// An attempt that did not finish within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("{what} did not finish within {seconds}s")]
pub struct Overran {
    /// What overran.
    pub what: String,
    /// The deadline.
    pub seconds: f64,
}

/// How long an overrunning attempt gets to stop at its next step once cancelled.
pub const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// Runs `work` with a deadline. When it overruns, raises `cancel` and waits (up to
/// [`CANCEL_GRACE`]) for it to stop at its next step, so nothing it started keeps running
/// unseen; then fails with [`Overran`] naming `what`. A result the work reached anyway
/// (it passed its commit point before the flag was raised) is returned as it is.
pub async fn with_deadline<T>(
    deadline: Duration,
    what: &str,
    cancel: &Cancel,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::pin!(work);
    let overran = Overran {
        what: what.to_owned(),
        seconds: deadline.as_secs_f64(),
    };
    tokio::select! {
        result = &mut work => return result,
        _ = tokio::time::sleep(deadline) => {}
    }
    cancel.cancel();
    match tokio::time::timeout(CANCEL_GRACE, &mut work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(error)) if error.downcast_ref::<Cancelled>().is_some() => Err(overran.into()),
        Ok(Err(error)) => Err(error.context(overran)),
        Err(_) => Err(anyhow::Error::new(overran)
            .context("and it did not stop within the grace period after being cancelled")),
    }
}
