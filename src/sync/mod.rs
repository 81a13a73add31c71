//! Sync: bring a state dir to the newest signed state in a delta store.
//!
//! fetch head (cap, signature, binding, expiry, not older than the watermark) → walk back
//! from the head by parent digests, verifying each delta's header and keeping only its name
//! → record the watermark → fetch, verify and apply each delta in turn to a new copy-on-write
//! version, holding one delta in memory at a time → commit. A delta that fails in the middle
//! of the chain: the deltas before it are found by listing the delta store (accepting only a
//! single valid candidate per seq), applied, and the failure is reported.
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
use crate::clock::now_secs;
use crate::delta::chain::{
    ChainError, ChainLink, ChainPosition, DeltaLimits, VerifiedHead, fetch_head, fetch_link,
    plan_chain,
};
use crate::delta::format::DEFAULT_MAX_DELTA_BYTES;
use crate::delta::keys::TrustedKeys;
use crate::delta_store::{DeltaStore, RemoteSettings};
use crate::search::tfidf::TfidfModel;
use crate::state::apply::{Applied, ApplyInputs};
use crate::state::{Cancel, Cancelled, StateDir, StoreVersion, TrustWatermark};

/// Where and how to sync from.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Delta store URL.
    pub store: String,
    /// Trusted public keys file.
    pub trusted_keys: PathBuf,
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

impl SyncOptions {
    /// Options with defaults for everything but the delta store and keys.
    pub fn new(store: String, trusted_keys: PathBuf) -> Self {
        SyncOptions {
            store,
            trusted_keys,
            remote: RemoteSettings::default(),
            max_delta_bytes: DEFAULT_MAX_DELTA_BYTES,
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            keep_versions: 3,
        }
    }

    /// What one delta may cost.
    pub fn limits(&self) -> DeltaLimits {
        DeltaLimits {
            max_delta_bytes: self.max_delta_bytes,
            max_records_bytes: self.memory_budget_bytes,
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone)]
pub enum SyncOutcome {
    /// The store has no head yet.
    NoHead,
    /// Already at the head.
    UpToDate {
        /// The head's seq.
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
        /// The head's seq.
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
    store: DeltaStore,
    /// Keys deltas must be signed with.
    trusted: TrustedKeys,
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
    /// Loads the trusted keys and opens the delta store.
    pub async fn open(
        options: SyncOptions,
        bundle: &Bundle,
        model: Arc<TfidfModel>,
    ) -> anyhow::Result<Self> {
        let trusted = TrustedKeys::load(&options.trusted_keys)?;
        let store = DeltaStore::open(&options.store, &options.remote).await?;
        Ok(Syncer {
            store,
            trusted,
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

    /// Brings `state` from `current` to the head; stops, committing nothing, once `cancel` is
    /// raised.
    pub async fn sync(
        &self,
        state: &Arc<StateDir>,
        current: &StoreVersion,
        cancel: &Cancel,
    ) -> anyhow::Result<SyncOutcome> {
        if let Some(pinned) = state.pinned()? {
            return Ok(SyncOutcome::Pinned { version: pinned });
        }
        let position = current.chain_position();
        let not_older_than = state.watermark()?.map(|w| w.as_pair());
        let head = cancel
            .run(fetch_head(
                &self.store,
                &self.trusted,
                &position,
                not_older_than,
                now_secs(),
                false,
            ))
            .await??;
        let Some(head) = head else {
            return Ok(SyncOutcome::NoHead);
        };
        metrics::gauge!("deltacache_head_seq").set(head.head.seq as f64);
        // The watermark is recorded only once the chain up to the head verified, so a refused
        // head or delta leaves the state dir exactly as it was.
        let watermark = TrustWatermark {
            seq: head.head.seq,
            issued_at: head.head.issued_at,
        };
        let started = Instant::now();
        let (links, refused_rest) = match cancel.run(self.plan(&head, &position)).await? {
            Ok(links) => {
                state.record_watermark(watermark)?;
                (links, None)
            }
            Err(ChainError::Fetch(error)) => return Err(ChainError::Fetch(error).into()),
            Err(error) => {
                let prefix = cancel
                    .run(self.valid_prefix(&position, head.head.seq))
                    .await?;
                if prefix.is_empty() {
                    return Err(error.into());
                }
                tracing::warn!(error = %error, n_deltas = prefix.len(), "applying the valid prefix of a broken chain");
                (prefix, Some(error.to_string()))
            }
        };
        if links.is_empty() {
            return Ok(SyncOutcome::UpToDate {
                head_seq: head.head.seq,
            });
        }
        let plan_seconds = started.elapsed().as_secs_f64();
        let inputs = ApplyInputs {
            model: self.model.clone(),
            fields: self.fields.clone(),
            filter_fields: self.filter_fields.clone(),
            head_issued_at: head.head.issued_at,
        };
        let mut applied = self
            .apply(state, current, inputs, &position, &links, cancel)
            .await?;
        applied.stage_seconds.insert(0, ("plan", plan_seconds));
        Ok(SyncOutcome::Applied {
            head_seq: head.head.seq,
            version: Box::new(applied.version),
            n_deltas: applied.n_deltas,
            n_records: applied.n_records,
            refused_rest,
            stage_seconds: applied.stage_seconds,
            index: Box::new(applied.index),
        })
    }

    /// The deltas from `position` to `head`, oldest first, each verified (header only).
    async fn plan(
        &self,
        head: &VerifiedHead,
        position: &ChainPosition,
    ) -> Result<Vec<ChainLink>, ChainError> {
        plan_chain(
            &self.store,
            &self.trusted,
            &head.head,
            position,
            self.options.limits(),
        )
        .await
    }

    /// Fetches, verifies and applies each planned delta in turn (one in memory at a time),
    /// then commits, unless `cancel` is raised first. Blocking steps run on blocking threads;
    /// on failure the half-made version is removed there too.
    async fn apply(
        &self,
        state: &Arc<StateDir>,
        current: &StoreVersion,
        inputs: ApplyInputs,
        position: &ChainPosition,
        links: &[ChainLink],
        cancel: &Cancel,
    ) -> anyhow::Result<Applied> {
        let started = Instant::now();
        let last_seq = links.last().map_or(current.info.seq, |l| l.seq);
        let (state, current) = (state.clone(), current.clone());
        let mut applying = blocking(move || state.begin_apply(&current, last_seq, inputs)).await?;
        let mut fetched_bytes = 0u64;
        for link in links {
            let fetched = async {
                let delta = cancel
                    .run(fetch_link(
                        &self.store,
                        &self.trusted,
                        link,
                        position,
                        self.options.limits(),
                    ))
                    .await??;
                cancel.check()?;
                anyhow::Ok(delta)
            }
            .await;
            let delta = match fetched {
                Ok(delta) => delta,
                Err(error) => {
                    // Removing the half-made version is blocking work.
                    let _ = blocking(move || {
                        drop(applying);
                        Ok(())
                    })
                    .await;
                    return Err(error);
                }
            };
            fetched_bytes += delta.len;
            applying = blocking(move || applying.apply(&delta).map(|()| applying)).await?;
        }
        metrics::counter!("deltacache_fetched_bytes_total").increment(fetched_bytes);
        let cancel = cancel.clone();
        let applied = blocking(move || applying.commit(&cancel)).await?;
        metrics::histogram!("deltacache_apply_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("deltacache_deltas_applied_total").increment(applied.n_deltas as u64);
        metrics::counter!("deltacache_records_applied_total").increment(applied.n_records);
        Ok(applied)
    }

    /// Walks forward from `position` by listing each next seq, accepting a delta only when it
    /// is the single candidate that verifies and continues the chain; stops at the first seq
    /// without one. Never reaches `head_seq` itself (the head names that delta).
    async fn valid_prefix(&self, position: &ChainPosition, head_seq: u64) -> Vec<ChainLink> {
        let mut prefix: Vec<ChainLink> = Vec::new();
        let (mut digest, mut seq) = (position.digest.clone(), position.seq);
        while seq + 1 < head_seq {
            let next = seq + 1;
            let Ok(candidates) = self.store.list_deltas(next).await else {
                break;
            };
            let mut valid = Vec::new();
            for candidate in candidates {
                let link = ChainLink {
                    seq: next,
                    digest: candidate,
                    len: self.options.max_delta_bytes,
                };
                let Ok(delta) = fetch_link(
                    &self.store,
                    &self.trusted,
                    &link,
                    position,
                    self.options.limits(),
                )
                .await
                else {
                    continue;
                };
                if delta.batch.header.parent_seq == seq
                    && delta.batch.header.parent_digest == digest
                {
                    valid.push(ChainLink {
                        seq: next,
                        digest: delta.digest,
                        len: delta.len,
                    });
                }
            }
            if valid.len() != 1 {
                break;
            }
            let link = valid.remove(0);
            (digest, seq) = (link.digest.clone(), next);
            prefix.push(link);
        }
        prefix
    }
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
        Some(ChainError::Fetch(error)) if error.is_permanent() => "refused",
        Some(ChainError::Fetch(_)) => "unreachable",
        Some(ChainError::Expired { .. }) => "expired",
        Some(ChainError::Rollback { .. }) => "rollback",
        Some(_) => "refused",
        None => "other",
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
