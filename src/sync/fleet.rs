//! How the fleet policy steers a sync.
//!
//! Read on every sync from the verified repository (absent: follow the head, default gate):
//! - `pin` older than the served seq: go back to a kept version of that seq (the one whose
//!   chain digest is the repository's), or rebuild one from the bundle and the chain up to
//!   it; `pin` at or past the served seq: take deltas up to it, no further;
//! - `halt`: take nothing;
//! - waves: take the deltas whose wave has started for this instance's seed, in order,
//!   stopping at the first that has not.
//!
//! A chain whose last delta made a version the gate refused is not applied again. A chain
//! that ends where a kept version ends (an unpin, a rollback undone) reuses that version.

use std::sync::Arc;

use serde::Serialize;

use super::{Made, SyncOutcome, Syncer, blocking};
use crate::catalog::open_in_background;
use crate::clock::now_millis;
use crate::db::migrate::SCHEMA_VERSION;
use crate::delta::chain::{ChainError, DeltaTarget};
use crate::delta::fleet::{FLEET_TARGET, FleetPolicy, MAX_FLEET_BYTES};
use crate::delta::snapshot::{Planned, SnapshotTarget, plan_across};
use crate::state::{Cancel, StateDir, StoreVersion};
use crate::tuf::client::{TargetInfo, TrustedRepo};

/// What the last sync saw of the fleet policy, for `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetView {
    /// The policy (`None`: the repository has none, so the defaults apply).
    pub policy: Option<FleetPolicy>,
    /// This instance's seed in 0..2048.
    pub instance_seed: u32,
    /// The wave this instance is in (1-based; 0: no waves).
    pub wave: usize,
    /// How long after its publication a delta reaches this instance, in seconds.
    pub wave_delay_seconds: u64,
    /// The delta held back until this instance's wave starts, if any.
    pub held: Option<HeldBack>,
}

/// A delta held back by its wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeldBack {
    /// Its seq.
    pub seq: u64,
    /// When this instance's wave starts for it (milliseconds since the epoch).
    pub release_at_ms: u64,
}

/// Where a sync goes.
pub(super) enum Route {
    /// Nowhere: report this.
    Stay(SyncOutcome),
    /// Apply `deltas` to a new version of `base`, gated or not (going back is an order).
    Take {
        /// The deltas, in order.
        deltas: Vec<DeltaTarget>,
        /// The model rollovers among them (a snapshot must be installed at the newest).
        rollovers: Vec<SnapshotTarget>,
        /// The version they continue.
        base: StoreVersion,
        /// Whether the health gate checks the result.
        gated: bool,
    },
    /// Serve a kept version.
    Kept {
        /// The version.
        version: StoreVersion,
        /// Whether it is older than the one served.
        back: bool,
    },
}

impl Syncer {
    /// The fleet policy the verified repository names (the defaults when it names none).
    /// One that does not parse fails the sync: the served version stays.
    pub(super) async fn read_policy(
        &self,
        repo: &TrustedRepo,
        targets: &[TargetInfo],
        cancel: &Cancel,
    ) -> anyhow::Result<FleetPolicy> {
        let refused = |reason: String| ChainError::Refused {
            object: FLEET_TARGET.to_owned(),
            reason,
        };
        let policy = match targets.iter().find(|t| t.name == FLEET_TARGET) {
            None => None,
            Some(target) if target.length > MAX_FLEET_BYTES => {
                return Err(refused(format!(
                    "it is {} bytes, more than the {MAX_FLEET_BYTES} a fleet policy may be",
                    target.length
                ))
                .into());
            }
            Some(_) => {
                let bytes = cancel
                    .run(repo.read_target(FLEET_TARGET))
                    .await?
                    .map_err(ChainError::Trust)?;
                Some(FleetPolicy::parse(&bytes).map_err(|e| refused(format!("{e:#}")))?)
            }
        };
        let mut view = self.view.lock();
        view.policy = policy.clone();
        publish_policy_metrics(policy.as_ref());
        Ok(policy.unwrap_or_default())
    }

    /// Where the policy sends a sync from `current`.
    pub(super) async fn route(
        &self,
        state: &Arc<StateDir>,
        policy: &FleetPolicy,
        deltas: &[DeltaTarget],
        snapshots: &[SnapshotTarget],
        current: &StoreVersion,
    ) -> anyhow::Result<Route> {
        let seq = current.info.seq;
        let head_seq = deltas.last().map_or(seq, |d| d.meta.seq);
        if let Some(pin) = policy.pin
            && pin < seq
        {
            return self.route_back(state, deltas, snapshots, pin).await;
        }
        let across = plan_across(deltas, snapshots, &current.chain_position())?;
        let mut planned = across.deltas.clone();
        if policy.halt {
            self.view.lock().held = None;
            return Ok(Route::Stay(SyncOutcome::Halted { head_seq }));
        }
        if let Some(pin) = policy.pin {
            planned.retain(|d| d.meta.seq <= pin);
        }
        let mut held = self.hold_back(policy, &mut planned);
        let reach = planned.last().map_or(seq, |d| d.meta.seq);
        let mut rollovers = rollovers_within(&across, reach);
        if let Some(waiting) = self.hold_rollover(policy, &mut planned, &mut rollovers) {
            held = Some(held.map_or(waiting, |h| if h.seq < waiting.seq { h } else { waiting }));
            self.view.lock().held = held;
        }
        // Where the chain ends: its last delta, or a model rollover at the served seq.
        let end = match (planned.last(), rollovers.last()) {
            (Some(last), _) => Some((last.meta.seq, last.digest.clone())),
            (None, Some(rollover)) => Some((rollover.meta.seq, rollover.meta.chain_digest.clone())),
            (None, None) => None,
        };
        let Some((last_seq, last_digest)) = end else {
            return Ok(Route::Stay(match (held, policy.pin) {
                (Some(held), _) => SyncOutcome::Held {
                    seq: held.seq,
                    release_at_ms: held.release_at_ms,
                },
                (None, Some(pin)) if pin == seq => SyncOutcome::FleetPinned { seq },
                _ => SyncOutcome::UpToDate { head_seq },
            }));
        };
        let (state_for_read, digest) = (state.clone(), last_digest.clone());
        let refusal = blocking(move || state_for_read.refusal_of(&digest)).await?;
        if let Some(refusal) = refusal {
            return Ok(Route::Stay(SyncOutcome::GateRefused {
                refusal,
                remembered: true,
            }));
        }
        let model = across.model_at(last_seq, &current.info.model_fingerprint);
        if let Some(version) = self.kept(state, last_seq, &last_digest, model).await? {
            return Ok(Route::Kept {
                version,
                back: false,
            });
        }
        Ok(Route::Take {
            rollovers,
            deltas: planned,
            base: current.clone(),
            gated: true,
        })
    }

    /// Cuts `planned` at the first delta whose wave has not started for this instance;
    /// records the wave and what is held back.
    fn hold_back(&self, policy: &FleetPolicy, planned: &mut Vec<DeltaTarget>) -> Option<HeldBack> {
        let (delay, wave) = policy.delay_for(self.seed);
        let delay_ms = delay.as_millis() as u64;
        let now = now_millis();
        let held = planned
            .iter()
            .position(|d| d.meta.published_ms() + delay_ms > now)
            .map(|idx| {
                let delta = &planned[idx];
                let held = HeldBack {
                    seq: delta.meta.seq,
                    release_at_ms: delta.meta.published_ms() + delay_ms,
                };
                planned.truncate(idx);
                held
            });
        let mut view = self.view.lock();
        view.wave = wave;
        view.wave_delay_seconds = delay.as_secs();
        view.held = held;
        metrics::gauge!("deltacache_fleet_wave").set(wave as f64);
        metrics::gauge!("deltacache_held_back_seq").set(held.map_or(0.0, |h| h.seq as f64));
        held
    }

    /// Cuts the chain before the first model rollover whose wave (by the snapshot's
    /// publication) has not started for this instance: the deltas up to its seq are taken on
    /// the old model meanwhile. Returns what is held back.
    fn hold_rollover(
        &self,
        policy: &FleetPolicy,
        planned: &mut Vec<DeltaTarget>,
        rollovers: &mut Vec<SnapshotTarget>,
    ) -> Option<HeldBack> {
        let delay_ms = policy.delay_for(self.seed).0.as_millis() as u64;
        let now = now_millis();
        let idx = rollovers
            .iter()
            .position(|r| r.meta.published_at_ms + delay_ms > now)?;
        let waiting = &rollovers[idx];
        let held = HeldBack {
            seq: waiting.meta.seq,
            release_at_ms: waiting.meta.published_at_ms + delay_ms,
        };
        planned.retain(|d| d.meta.seq <= held.seq);
        rollovers.truncate(idx);
        Some(held)
    }

    /// Going back to `pin`: the kept version of it, or the bundle's version with the chain
    /// up to it replayed. A pin before the bundle is refused: an instance cannot go back
    /// before its image.
    async fn route_back(
        &self,
        state: &Arc<StateDir>,
        deltas: &[DeltaTarget],
        snapshots: &[SnapshotTarget],
        pin: u64,
    ) -> anyhow::Result<Route> {
        self.view.lock().held = None;
        let manifest = &self.bundle.manifest;
        if pin < manifest.seq {
            anyhow::bail!(
                "the fleet policy pins seq {pin}, older than this instance's bundle (seq {}): an instance cannot go back before its image; pin seq {} or later",
                manifest.seq,
                manifest.seq
            );
        }
        let digest = if pin == manifest.seq {
            manifest.chain_digest.clone()
        } else {
            let Some(delta) = deltas.iter().find(|d| d.meta.seq == pin) else {
                anyhow::bail!(
                    "the fleet policy pins seq {pin}, which the repository does not name: pin a published seq"
                );
            };
            delta.digest.clone()
        };
        let across = plan_across(
            deltas,
            snapshots,
            &crate::delta::chain::ChainPosition::of_bundle(manifest),
        )?;
        let model = across.model_at(pin, &manifest.model_fingerprint);
        if let Some(version) = self.kept(state, pin, &digest, model).await? {
            return Ok(Route::Kept {
                version,
                back: true,
            });
        }
        let (state_for_base, bundle) = (state.clone(), self.bundle.clone());
        let base = blocking(move || state_for_base.bundle_version(&bundle)).await?;
        let mut planned = across.deltas.clone();
        planned.retain(|d| d.meta.seq <= pin);
        if planned.is_empty() {
            return Ok(Route::Kept {
                version: base,
                back: true,
            });
        }
        tracing::info!(
            pin,
            from = base.info.seq,
            n_deltas = planned.len(),
            "no kept version of the pinned seq: rebuilding it from the bundle"
        );
        Ok(Route::Take {
            rollovers: rollovers_within(&across, pin),
            deltas: planned,
            base,
            gated: false,
        })
    }

    /// The newest kept version of `seq` whose last delta is `digest`, of the model
    /// `fingerprint` and this layout.
    pub(super) async fn kept(
        &self,
        state: &Arc<StateDir>,
        seq: u64,
        digest: &str,
        fingerprint: &str,
    ) -> anyhow::Result<Option<StoreVersion>> {
        let (state, digest) = (state.clone(), digest.to_owned());
        let fingerprint = fingerprint.to_owned();
        blocking(move || {
            Ok(state.versions()?.into_iter().rev().find(|v| {
                v.info.seq == seq
                    && v.info.chain_digest == digest
                    && v.info.model_fingerprint == fingerprint
                    && v.info.schema_version == SCHEMA_VERSION
            }))
        })
        .await
    }

    /// Opens a kept version and makes it current.
    pub(super) async fn choose_kept(
        &self,
        state: &Arc<StateDir>,
        version: StoreVersion,
        head_seq: u64,
        back: bool,
    ) -> anyhow::Result<SyncOutcome> {
        let catalog = open_in_background(
            state,
            &version,
            &self.models,
            None,
            self.options.reader_shards,
        )
        .await?;
        let (state, name) = (state.clone(), version.info.name.clone());
        blocking(move || state.set_current(&name)).await?;
        Ok(SyncOutcome::Applied(Box::new(Made {
            version,
            n_deltas: 0,
            n_records: 0,
            head_seq,
            refused_rest: None,
            stage_seconds: Vec::new(),
            catalog,
            published_ms: Vec::new(),
            gate: None,
            back,
            snapshot_seq: None,
            touched: None,
        })))
    }
}

/// The policy's pin and halt, as gauges.
fn publish_policy_metrics(policy: Option<&FleetPolicy>) {
    let pin = policy.and_then(|p| p.pin).map_or(-1.0, |pin| pin as f64);
    metrics::gauge!("deltacache_fleet_pin_seq").set(pin);
    let halted = policy.is_some_and(|p| p.halt);
    metrics::gauge!("deltacache_fleet_halted").set(if halted { 1.0 } else { 0.0 });
}

/// The rollovers of `across` at or before `seq`: those a chain cut at `seq` crosses.
fn rollovers_within(across: &Planned, seq: u64) -> Vec<SnapshotTarget> {
    across
        .rollovers
        .iter()
        .filter(|r| r.meta.seq <= seq)
        .cloned()
        .collect()
}
