//! Catching up by snapshot: when the chain an instance would replay is long (more deltas
//! than [`SyncOptions::snapshot_after_deltas`], or more bytes than the snapshot), it
//! downloads the newest snapshot that stands on its own verified chain instead, in ranged
//! pieces written to `downloads/` in the state dir (so a restart resumes the download),
//! checks it against the sha256 and length the signed targets metadata states, unpacks it
//! into scratch space, checks the manifest against the snapshot's metadata and every file
//! against the manifest, and installs it as a version (the baked bundle is never touched).
//! The deltas after it are applied on top and the result gated as any new version is.
//!
//! A snapshot that cannot be used (over the size cap, damaged, not what its metadata says)
//! is logged and counted, and the chain is replayed instead: the chain alone is enough.
//!
//! A model rollover is a snapshot of a new model (`compact --refit --publish`): the chain
//! after it is built for that model, so an instance crossing it must install it (or a later
//! snapshot of that model); nothing else can take its place, and failing to is an error.
//!
//! [`SyncOptions::snapshot_after_deltas`]: super::SyncOptions::snapshot_after_deltas

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::{Syncer, blocking};
use crate::bundle::Bundle;
use crate::db::migrate::SCHEMA_VERSION;
use crate::delta::chain::DeltaTarget;
use crate::delta::snapshot::{SnapshotTarget, snapshot_targets, unpack};
use crate::state::{Cancel, Cancelled, StateDir, StoreVersion};
use crate::tuf::client::TargetInfo;
use crate::tuf::repo::target_object;

/// What the policy says about catching up by snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Choice {
    /// Replay the chain.
    Replay,
    /// Use this snapshot.
    Use(SnapshotTarget),
    /// This snapshot would be used, but it is larger than the cap.
    TooLarge(SnapshotTarget),
}

/// The snapshots verified metadata lists (none, with a warning, when their metadata does
/// not parse: the chain alone is enough then, and a rollover's chain is refused later by
/// its model).
pub(super) fn listed(targets: &[TargetInfo]) -> Vec<SnapshotTarget> {
    snapshot_targets(targets).unwrap_or_else(|error| {
        tracing::warn!(error = %error, "ignoring the repository's snapshots");
        Vec::new()
    })
}

/// The snapshot to catch up with, if any. Across a model rollover: the newest snapshot of
/// the newest rollover's model standing on the planned chain, whatever the chain's length.
/// Otherwise: the newest one after `base` that stands on the planned chain (same delta at
/// its seq), of this dataset, model and a known db schema, when the chain is longer than
/// `after_deltas` deltas or larger than the snapshot in bytes; `after_deltas` 0 turns
/// these off.
pub(super) fn choose(
    snapshots: &[SnapshotTarget],
    planned: &[DeltaTarget],
    rollovers: &[SnapshotTarget],
    base: &StoreVersion,
    after_deltas: u64,
    max_bytes: u64,
) -> Choice {
    let info = &base.info;
    let (model, from_seq) = match rollovers.last() {
        Some(rollover) => (&rollover.meta.model_fingerprint, rollover.meta.seq),
        None if after_deltas == 0 => return Choice::Replay,
        None => (&info.model_fingerprint, info.seq + 1),
    };
    // A rollover at the served seq stands on the served version itself.
    let on_base = |s: &SnapshotTarget| {
        s.meta.seq == info.seq
            && s.meta.chain_digest == info.chain_digest
            && s.meta.chain_len == info.chain_len
            && s.meta.model_fingerprint != info.model_fingerprint
    };
    let newest = snapshots.iter().rev().find(|s| {
        s.meta.seq >= from_seq
            && s.meta.dataset == info.dataset
            && &s.meta.model_fingerprint == model
            && s.meta.schema_version <= SCHEMA_VERSION
            && (planned.iter().any(|d| s.continues_as(d)) || on_base(s))
    });
    let Some(snapshot) = newest else {
        return Choice::Replay;
    };
    let chain_bytes: u64 = planned.iter().map(|d| d.len).sum();
    if rollovers.is_empty() && planned.len() as u64 <= after_deltas && chain_bytes <= snapshot.len {
        return Choice::Replay;
    }
    if snapshot.len > max_bytes {
        return Choice::TooLarge(snapshot.clone());
    }
    Choice::Use(snapshot.clone())
}

impl Syncer {
    /// Where to apply `planned` from: `base` and the whole chain, or a snapshot installed as
    /// a version and the deltas after it. Only a cancellation is an error here; anything
    /// else that stops the snapshot is logged and the chain is replayed.
    // long: the choice, its three refusals and the install, each a few lines.
    pub(super) async fn catch_up(
        &self,
        state: &Arc<StateDir>,
        snapshots: &[SnapshotTarget],
        base: StoreVersion,
        planned: Vec<DeltaTarget>,
        rollovers: &[SnapshotTarget],
        cancel: &Cancel,
    ) -> anyhow::Result<(StoreVersion, Vec<DeltaTarget>)> {
        let options = &self.options;
        if let Some(rollover) = rollovers.last()
            && !options.model_rollover
        {
            bail!(
                "{} moves the chain to a new model at seq {}; the Pinecone backend holds vectors of the bundle's model, so this instance does not follow it: bake an image from the new bundle (and fill a Pinecone namespace for it), or pin the fleet before seq {}",
                rollover.name,
                rollover.meta.seq,
                rollover.meta.seq
            );
        }
        let choice = choose(
            snapshots,
            &planned,
            rollovers,
            &base,
            options.snapshot_after_deltas,
            options.max_snapshot_bytes,
        );
        let snapshot = match choice {
            Choice::Replay if !rollovers.is_empty() => bail!(
                "the chain moves to a new model at seq {}, and no snapshot of that model stands on it: this instance cannot follow (the snapshot is missing or of another dataset or db schema)",
                rollovers[rollovers.len() - 1].meta.seq
            ),
            Choice::Replay => return Ok((base, planned)),
            Choice::TooLarge(snapshot) if !rollovers.is_empty() => bail!(
                "{} ({} bytes) moves the chain to a new model, and it is larger than --max-snapshot-bytes {}: raise the cap to follow",
                snapshot.name,
                snapshot.len,
                options.max_snapshot_bytes
            ),
            Choice::TooLarge(snapshot) => {
                tracing::warn!(
                    snapshot = %snapshot.name,
                    bytes = snapshot.len,
                    cap = options.max_snapshot_bytes,
                    "the snapshot is larger than --max-snapshot-bytes; replaying the chain instead"
                );
                metrics::counter!("deltacache_snapshot_skipped_total", "reason" => "too_large")
                    .increment(1);
                return Ok((base, planned));
            }
            Choice::Use(snapshot) => snapshot,
        };
        let rest: Vec<DeltaTarget> = planned
            .iter()
            .filter(|d| d.meta.seq > snapshot.meta.seq)
            .cloned()
            .collect();
        if let Some(kept) = self
            .kept(
                state,
                snapshot.meta.seq,
                &snapshot.meta.chain_digest,
                &snapshot.meta.model_fingerprint,
            )
            .await?
        {
            return Ok((kept, rest));
        }
        let issued_at = planned
            .iter()
            .find(|d| snapshot.continues_as(d))
            .map_or(0, |d| d.meta.created_at);
        match self.install(state, &snapshot, issued_at, cancel).await {
            Ok(version) => Ok((version, rest)),
            Err(error) if error.downcast_ref::<Cancelled>().is_some() || !rollovers.is_empty() => {
                Err(error.context(format!("install {}", snapshot.name)))
            }
            Err(error) => {
                tracing::warn!(
                    snapshot = %snapshot.name,
                    error = format!("{error:#}"),
                    "the snapshot could not be used; replaying the chain instead"
                );
                metrics::counter!("deltacache_snapshot_skipped_total", "reason" => "failed")
                    .increment(1);
                Ok((base, planned))
            }
        }
    }

    /// Downloads, checks and installs `snapshot` as a committed (not current) version.
    async fn install(
        &self,
        state: &Arc<StateDir>,
        snapshot: &SnapshotTarget,
        issued_at: u64,
        cancel: &Cancel,
    ) -> anyhow::Result<StoreVersion> {
        let started = std::time::Instant::now();
        let archive = self.download(state, snapshot, cancel).await?;
        let (state, snapshot_for_install) = (state.clone(), snapshot.clone());
        let version = blocking(move || {
            let scratch = state.scratch("snapshot")?;
            let dir = scratch.path().join("bundle");
            std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
            unpack(&archive, &dir)?;
            let bundle = Bundle::open(&dir)?;
            if let Some(mismatch) = snapshot_for_install.meta.mismatch(&bundle.manifest) {
                bail!("snapshot {}: {mismatch}", snapshot_for_install.name);
            }
            let version = state.install_bundle(&bundle, issued_at)?;
            state.remove_downloads(None)?;
            Ok(version)
        })
        .await?;
        metrics::counter!("deltacache_snapshots_installed_total").increment(1);
        tracing::info!(
            snapshot = %snapshot.name,
            seq = snapshot.meta.seq,
            version = %version.info.name,
            model = crate::state::short_fingerprint(&snapshot.meta.model_fingerprint),
            seconds = started.elapsed().as_secs_f64(),
            "installed the catch-up snapshot as a version"
        );
        Ok(version)
    }

    /// Downloads `snapshot` to `downloads/<sha256>.part` in pieces, resuming what an earlier
    /// run left there, and checks the whole against its signed length and sha256 (a file
    /// that does not match is removed, so the next attempt starts again).
    async fn download(
        &self,
        state: &Arc<StateDir>,
        snapshot: &SnapshotTarget,
        cancel: &Cancel,
    ) -> anyhow::Result<PathBuf> {
        let (state_for_path, sha) = (state.clone(), snapshot.sha256.clone());
        let path = blocking(move || {
            state_for_path.remove_downloads(Some(&sha))?;
            state_for_path.download_path(&sha)
        })
        .await?;
        let object = target_object(&snapshot.sha256, &snapshot.name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let mut offset = file.metadata()?.len();
        if offset > snapshot.len {
            file.set_len(0)?;
            offset = 0;
        }
        if offset > 0 {
            tracing::info!(
                snapshot = %snapshot.name,
                offset,
                bytes = snapshot.len,
                "resuming the snapshot download at byte {offset}"
            );
        }
        let chunk = self.options.snapshot_chunk_bytes.max(1);
        let mut reported = offset * 10 / snapshot.len.max(1);
        while offset < snapshot.len {
            let want = chunk.min(snapshot.len - offset);
            let fetched = cancel
                .run(self.store.get_range(&object, offset, want))
                .await??
                .with_context(|| format!("{object} is missing from {}", self.store.describe()))?;
            if fetched.bytes.len() as u64 != want {
                bail!(
                    "{object} ended at byte {}, but its signed metadata says it has {} bytes",
                    offset + fetched.bytes.len() as u64,
                    snapshot.len
                );
            }
            let written = path.clone();
            file = blocking(move || {
                file.write_all(&fetched.bytes)
                    .with_context(|| format!("write {}", written.display()))?;
                Ok(file)
            })
            .await?;
            offset += want;
            metrics::counter!("deltacache_snapshot_bytes_total").increment(want);
            crate::failpoint::hit("snapshot-after-piece");
            let tenth = offset * 10 / snapshot.len.max(1);
            if tenth > reported {
                reported = tenth;
                tracing::info!(snapshot = %snapshot.name, offset, bytes = snapshot.len, "downloading the snapshot: {}%", tenth * 10);
            }
        }
        let (check_path, expected) = (path.clone(), snapshot.sha256.clone());
        let actual = blocking(move || {
            file.sync_all()
                .with_context(|| format!("fsync {}", check_path.display()))?;
            Ok(crate::digest::digest_file(&check_path)?.sha256)
        })
        .await?;
        if actual != expected {
            let _ = std::fs::remove_file(&path);
            bail!(
                "{object} does not match the sha256 its signed metadata states (found {actual}): removed; the store holds a damaged or substituted object"
            );
        }
        Ok(path)
    }
}
