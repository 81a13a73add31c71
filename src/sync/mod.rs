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
//! Every attempt can be cancelled ([`Cancel`]); a cancelled attempt stops at the next delta
//! and never commits. [`with_deadline`] raises the flag when an attempt overruns and waits
//! for the attempt to stop, so no apply is left running unseen.

pub mod follow;
pub mod ops;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bundle::Bundle;
use crate::bundle::items::ItemFields;
use crate::delta::chain::{ChainError, DeltaTarget, delta_targets, plan, verify_delta};
use crate::delta_store::{DeltaStore, RemoteSettings};
use crate::search::tfidf::TfidfModel;
use crate::state::apply::{Applied, ApplyInputs, Applying};
use crate::state::{Cancel, Cancelled, StateDir, StoreVersion, TrustBinding, TrustWatermark};
use crate::tuf::client::{self, ClientLimits, TrustedRepo};

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
}

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
    /// New deltas were applied and committed.
    Applied {
        /// The new version.
        version: Box<StoreVersion>,
        /// How many deltas.
        n_deltas: usize,
        /// How many records.
        n_records: u64,
        /// The newest delta's seq.
        head_seq: u64,
        /// Set when only a prefix of the chain could be applied: why the rest was refused.
        refused_rest: Option<String>,
        /// Seconds per stage.
        stage_seconds: Vec<(&'static str, f64)>,
        /// The new version's index, already in memory.
        index: Box<crate::search::index::VectorIndex>,
    },
}

/// Everything needed to sync one state dir; shared by `sync` and the daemon's follower.
pub struct Syncer {
    /// The delta store.
    store: Arc<DeltaStore>,
    /// The trusted root's bytes.
    trusted_root: Vec<u8>,
    /// Which repository the state dir's trusted metadata belongs to.
    binding: TrustBinding,
    /// The bundle's model (deltas are embedded with it).
    pub model: Arc<TfidfModel>,
    /// The bundle's id and text fields.
    fields: ItemFields,
    /// The fields the bundle's filter index covers.
    filter_fields: Vec<String>,
    /// Caps and retention.
    options: SyncOptions,
}

impl Syncer {
    /// Reads the trusted root and opens the delta store.
    pub async fn open(
        options: SyncOptions,
        bundle: &Bundle,
        model: Arc<TfidfModel>,
    ) -> anyhow::Result<Self> {
        let trusted_root = read_trusted_root(&options.trusted_root)?;
        let store = Arc::new(DeltaStore::open(&options.store, &options.remote).await?);
        Ok(Syncer {
            binding: TrustBinding {
                store: store.describe(),
                dataset: bundle.manifest.dataset.clone(),
            },
            store,
            trusted_root,
            model,
            fields: bundle.manifest.item_fields(),
            filter_fields: bundle.manifest.filter_fields.clone(),
            options,
        })
    }

    /// The delta store, for watching and messages.
    pub fn store(&self) -> &DeltaStore {
        &self.store
    }

    /// Brings `state` from `current` to the newest delta; stops, committing nothing, once
    /// `cancel` is raised.
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
        let position = current.chain_position();
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
        let deltas = delta_targets(&repo.targets())?;
        let Some(newest) = deltas.last().cloned() else {
            self.keep_trusted(state, trusted, None).await?;
            return Ok(SyncOutcome::NoHead);
        };
        metrics::gauge!("deltacache_head_seq").set(newest.meta.seq as f64);
        let planned = plan(&deltas, &position)?;
        let watermark = TrustWatermark {
            seq: newest.meta.seq,
            issued_at: newest.meta.created_at,
        };
        if planned.is_empty() {
            self.keep_trusted(state, trusted, Some(watermark)).await?;
            return Ok(SyncOutcome::UpToDate {
                head_seq: newest.meta.seq,
            });
        }
        let plan_seconds = started.elapsed().as_secs_f64();
        let inputs = ApplyInputs {
            model: self.model.clone(),
            fields: self.fields.clone(),
            filter_fields: self.filter_fields.clone(),
            head_issued_at: planned.last().map_or(0, |d| d.meta.created_at),
        };
        let (mut applied, refused_rest) = self
            .apply(state, current, inputs, &repo, &planned, cancel)
            .await?;
        self.keep_trusted(state, trusted, Some(watermark)).await?;
        applied
            .stage_seconds
            .insert(0, ("verify metadata", plan_seconds));
        Ok(SyncOutcome::Applied {
            head_seq: newest.meta.seq,
            version: Box::new(applied.version),
            n_deltas: applied.n_deltas,
            n_records: applied.n_records,
            refused_rest,
            stage_seconds: applied.stage_seconds,
            index: Box::new(applied.index),
        })
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

    /// Fetches, checks and applies each planned delta in turn (one in memory at a time),
    /// then commits, unless `cancel` is raised first. A delta refused after others were
    /// applied ends the chain there: the ones before it are committed and the refusal is
    /// returned beside them. Blocking steps run on blocking threads; on failure the
    /// half-made version is removed there too.
    async fn apply(
        &self,
        state: &Arc<StateDir>,
        current: &StoreVersion,
        inputs: ApplyInputs,
        repo: &TrustedRepo,
        planned: &[DeltaTarget],
        cancel: &Cancel,
    ) -> anyhow::Result<(Applied, Option<String>)> {
        let started = Instant::now();
        let last_seq = planned.last().map_or(current.info.seq, |d| d.meta.seq);
        let (state, current) = (state.clone(), current.clone());
        let mut applying = blocking(move || state.begin_apply(&current, last_seq, inputs)).await?;
        let mut fetched_bytes = 0u64;
        let mut refused_rest = None;
        for delta in planned {
            let fetched = self.fetch(repo, delta, cancel).await;
            let verified = match fetched {
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
        let cancel = cancel.clone();
        let applied = blocking(move || applying.commit(&cancel)).await?;
        metrics::histogram!("deltacache_apply_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("deltacache_deltas_applied_total").increment(applied.n_deltas as u64);
        metrics::counter!("deltacache_records_applied_total").increment(applied.n_records);
        Ok((applied, refused_rest))
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

/// Removes a half-made version on a blocking thread (removal is blocking work).
async fn discard(applying: Applying) {
    let _ = blocking(move || {
        drop(applying);
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

/// A short label for a sync failure, for metrics.
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
