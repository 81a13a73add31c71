//! Sync: bring a state dir to the newest signed state in a delta store.
//!
//! fetch head (cap, signature, binding, expiry, not older than the watermark) → record the
//! watermark → fetch and verify every delta back to the current version by parent digests →
//! apply to a new copy-on-write version → commit. A delta that fails in the middle of the
//! chain: the deltas before it are found by listing the delta store (accepting only a single valid
//! candidate per seq), applied, and the failure is reported.

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
    ChainError, ChainPosition, VerifiedDelta, VerifiedHead, fetch_chain, fetch_head,
    verify_delta_bytes,
};
use crate::delta::format::DEFAULT_MAX_DELTA_BYTES;
use crate::delta::keys::TrustedKeys;
use crate::delta_store::{DeltaStore, RemoteSettings};
use crate::search::tfidf::TfidfModel;
use crate::state::apply::ApplyInputs;
use crate::state::{StateDir, StoreVersion, TrustWatermark};

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
    /// Committed versions kept in the state dir.
    pub keep_versions: usize,
}

impl SyncOptions {
    /// Options with defaults for everything but the delta store and keys.
    pub fn new(store: String, trusted_keys: PathBuf) -> Self {
        SyncOptions {
            store,
            trusted_keys,
            remote: RemoteSettings::default(),
            max_delta_bytes: DEFAULT_MAX_DELTA_BYTES,
            keep_versions: 3,
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

    /// The store, for watching and messages.
    pub fn store(&self) -> &DeltaStore {
        &self.store
    }

    /// Brings `state` from `current` to the head.
    pub async fn sync(
        &self,
        state: &Arc<StateDir>,
        current: &StoreVersion,
    ) -> anyhow::Result<SyncOutcome> {
        if let Some(pinned) = state.pinned()? {
            return Ok(SyncOutcome::Pinned { version: pinned });
        }
        let position = current.chain_position();
        let not_older_than = state.watermark()?.map(|w| w.as_pair());
        let head = fetch_head(
            &self.store,
            &self.trusted,
            &position,
            not_older_than,
            now_secs(),
            false,
        )
        .await?;
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
        if head.head.seq <= current.info.seq {
            // Same seq: the head must name the delta this version already has.
            self.fetch_chain(&head, &position).await?;
            state.record_watermark(watermark)?;
            return Ok(SyncOutcome::UpToDate {
                head_seq: head.head.seq,
            });
        }
        let started = Instant::now();
        let (deltas, refused_rest) = match self.fetch_chain(&head, &position).await {
            Ok(deltas) => {
                state.record_watermark(watermark)?;
                (deltas, None)
            }
            Err(ChainError::Fetch(error)) => return Err(ChainError::Fetch(error).into()),
            Err(error) => {
                let prefix = self.valid_prefix(&position, head.head.seq).await;
                if prefix.is_empty() {
                    return Err(error.into());
                }
                tracing::warn!(error = %error, n_deltas = prefix.len(), "applying the valid prefix of a broken chain");
                (prefix, Some(error.to_string()))
            }
        };
        let fetch_seconds = started.elapsed().as_secs_f64();
        let bytes: u64 = deltas.iter().map(|d| d.len).sum();
        metrics::counter!("deltacache_fetched_bytes_total").increment(bytes);
        let mut outcome = self
            .apply(state, current, deltas, head.head.issued_at)
            .await?;
        if let SyncOutcome::Applied {
            head_seq,
            refused_rest: refused,
            stage_seconds,
            ..
        } = &mut outcome
        {
            *head_seq = head.head.seq;
            *refused = refused_rest;
            stage_seconds.insert(0, ("fetch+verify", fetch_seconds));
        }
        Ok(outcome)
    }

    /// Fetches and verifies every delta from `position` to `head`.
    async fn fetch_chain(
        &self,
        head: &VerifiedHead,
        position: &ChainPosition,
    ) -> Result<Vec<VerifiedDelta>, ChainError> {
        fetch_chain(
            &self.store,
            &self.trusted,
            &head.head,
            position,
            self.options.max_delta_bytes,
        )
        .await
    }

    /// Has the state dir apply `deltas` to `current` on a blocking thread.
    async fn apply(
        &self,
        state: &Arc<StateDir>,
        current: &StoreVersion,
        deltas: Vec<VerifiedDelta>,
        head_issued_at: u64,
    ) -> anyhow::Result<SyncOutcome> {
        let state = state.clone();
        let current = current.clone();
        let model = self.model.clone();
        let fields = self.fields.clone();
        let filter_fields = self.filter_fields.clone();
        let n_deltas = deltas.len();
        let started = Instant::now();
        let applied = tokio::task::spawn_blocking(move || {
            let inputs = ApplyInputs {
                model: &model,
                fields: &fields,
                filter_fields: &filter_fields,
                head_issued_at,
            };
            state.apply_deltas(&current, inputs, &deltas)
        })
        .await
        .context("join the apply task")??;
        metrics::histogram!("deltacache_apply_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("deltacache_deltas_applied_total").increment(n_deltas as u64);
        metrics::counter!("deltacache_records_applied_total").increment(applied.n_records);
        Ok(SyncOutcome::Applied {
            head_seq: applied.version.info.seq,
            version: Box::new(applied.version),
            n_deltas,
            n_records: applied.n_records,
            refused_rest: None,
            stage_seconds: applied.stage_seconds,
            index: Box::new(applied.index),
        })
    }

    /// Walks forward from `position` by listing each next seq, accepting a delta only when it
    /// is the single candidate that verifies and continues the chain; stops at the first seq
    /// without one. Never reaches `head_seq` itself (the head names that delta).
    async fn valid_prefix(&self, position: &ChainPosition, head_seq: u64) -> Vec<VerifiedDelta> {
        let mut prefix: Vec<VerifiedDelta> = Vec::new();
        let (mut digest, mut seq) = (position.digest.clone(), position.seq);
        while seq + 1 < head_seq {
            let next = seq + 1;
            let Ok(candidates) = self.store.list_deltas(next).await else {
                break;
            };
            let mut valid = Vec::new();
            for candidate in candidates {
                let Ok(Some(bytes)) = self
                    .store
                    .get_delta(next, &candidate, self.options.max_delta_bytes)
                    .await
                else {
                    continue;
                };
                if let Ok(delta) = verify_delta_bytes(
                    &bytes,
                    next,
                    &candidate,
                    self.options.max_delta_bytes,
                    self.options.max_delta_bytes,
                    &self.trusted,
                    position,
                ) && delta.batch.header.parent_seq == seq
                    && delta.batch.header.parent_digest == digest
                {
                    valid.push(delta);
                }
            }
            if valid.len() != 1 {
                break;
            }
            let delta = valid.remove(0);
            (digest, seq) = (delta.digest.clone(), next);
            prefix.push(delta);
        }
        prefix
    }
}

/// A short label for a sync failure, for metrics.
pub fn failure_reason(error: &anyhow::Error) -> &'static str {
    match error.downcast_ref::<ChainError>() {
        Some(ChainError::Fetch(error)) if error.is_permanent() => "refused",
        Some(ChainError::Fetch(_)) => "unreachable",
        Some(ChainError::Expired { .. }) => "expired",
        Some(ChainError::Rollback { .. }) => "rollback",
        Some(_) => "refused",
        None => "other",
    }
}

/// Runs `future` with a deadline, naming what timed out.
pub async fn with_deadline<T>(
    deadline: Duration,
    what: &str,
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(deadline, future).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("{what} did not finish within {}s", deadline.as_secs_f64()),
    }
}
