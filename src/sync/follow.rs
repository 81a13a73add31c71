//! The daemon's follower: sync on a timer, on SIGHUP, and (for `file://` stores) when the
//! store directory changes; swap readers to each new version after its commit point.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use serde::Serialize;

use super::{SyncOutcome, Syncer, failure_reason};
use crate::catalog::{CurrentCatalog, open_in_background};
use crate::clock::now_secs;
use crate::delta_store::DeltaStore;
use crate::search::index::VectorIndex;
use crate::state::{StateDir, StoreVersion};

/// What `/status` reports about syncing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// The delta store followed (None: serving the bundle alone).
    pub store: Option<String>,
    /// Seq of the bundle.
    pub bundle_seq: u64,
    /// Newest head seq seen.
    pub head_seq_seen: Option<u64>,
    /// Deltas applied by this process.
    pub deltas_applied: u64,
    /// When the last sync attempt ended (seconds since the epoch).
    pub last_sync_at: Option<u64>,
    /// `applied`, `up-to-date`, `no-head`, `pinned` or `failed`.
    pub last_result: Option<String>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Whether the served version may be behind the delta store (last sync failed or head expired).
    pub stale: bool,
    /// Issue time of the head the served version was synced to.
    pub head_issued_at: Option<u64>,
    /// Committed versions in the state dir.
    pub versions_kept: usize,
}

impl SyncStatus {
    /// Seconds since the served version's head was issued.
    pub fn staleness_seconds(&self) -> Option<u64> {
        self.head_issued_at
            .map(|issued| now_secs().saturating_sub(issued))
    }
}

/// Shared sync status; written by the follower, read by `/status` and `/metrics`.
pub type SharedStatus = Arc<parking_lot::RwLock<SyncStatus>>;

/// Syncs and swaps; owns the state dir while the daemon runs.
pub struct Follower {
    /// Fetch, verify, apply.
    pub syncer: Syncer,
    /// The state dir.
    pub state: Arc<StateDir>,
    /// The version being served.
    pub version: tokio::sync::Mutex<StoreVersion>,
    /// The catalog requests read.
    pub current: Arc<CurrentCatalog>,
    /// Status for `/status`.
    pub status: SharedStatus,
    /// Read handles per catalog.
    pub reader_shards: usize,
    /// Versions kept.
    pub keep_versions: usize,
}

impl Follower {
    /// One sync attempt; on success with new deltas, opens the new version and swaps it in.
    /// Returns whether a swap happened.
    pub async fn sync_and_swap(&self) -> anyhow::Result<bool> {
        let mut version = self.version.lock().await;
        metrics::counter!("deltacache_sync_attempts_total").increment(1);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("syncing")]);
        let outcome = self.syncer.sync(&self.state, &version).await;
        let new_version = self.record_outcome(outcome)?;
        let Some((new_version, index)) = new_version else {
            return Ok(false);
        };
        let catalog = open_in_background(
            &self.state,
            &new_version,
            self.syncer.model.clone(),
            Some(index),
            self.reader_shards,
        )
        .await?;
        self.current.swap(catalog);
        metrics::counter!("deltacache_swaps_total").increment(1);
        metrics::gauge!("deltacache_current_seq").set(new_version.info.seq as f64);
        {
            let mut status = self.status.write();
            status.head_issued_at = new_version.info.head_issued_at;
            status.versions_kept = self.state.versions().map(|v| v.len()).unwrap_or(0);
        }
        *version = new_version;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("serving")]);
        self.state
            .collect_garbage_in_background(self.keep_versions)
            .await;
        Ok(true)
    }

    /// Records a sync outcome in the status and metrics; returns the new version, if any.
    /// A failure is returned, not logged: the caller handles (and logs) it.
    fn record_outcome(
        &self,
        outcome: anyhow::Result<SyncOutcome>,
    ) -> anyhow::Result<Option<(StoreVersion, VectorIndex)>> {
        let mut status = self.status.write();
        status.last_sync_at = Some(now_secs());
        if let Ok(Some(seen)) = self.state.watermark() {
            status.head_seq_seen = Some(seen.seq);
        }
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                let reason = failure_reason(&error);
                metrics::counter!("deltacache_sync_failures_total", "reason" => reason)
                    .increment(1);
                status.last_result = Some("failed".into());
                status.last_error = Some(format!("{error:#}"));
                status.stale = true;
                metrics::gauge!("deltacache_stale").set(1.0);
                return Err(error);
            }
        };
        status.last_error = None;
        status.stale = false;
        metrics::gauge!("deltacache_stale").set(0.0);
        let (result, new_version) = match outcome {
            SyncOutcome::NoHead => ("no-head", None),
            SyncOutcome::UpToDate { .. } => ("up-to-date", None),
            SyncOutcome::Pinned { .. } => ("pinned", None),
            SyncOutcome::Applied {
                version,
                n_deltas,
                n_records,
                head_seq,
                refused_rest,
                stage_seconds,
                index,
            } => {
                tracing::info!(
                    seq = version.info.seq,
                    head_seq,
                    n_deltas,
                    n_records,
                    ?stage_seconds,
                    "applied deltas"
                );
                status.deltas_applied += n_deltas as u64;
                if let Some(refused) = refused_rest {
                    status.last_error = Some(refused);
                    status.stale = true;
                }
                ("applied", Some((*version, *index)))
            }
        };
        status.last_result = Some(result.into());
        Ok(new_version)
    }

    /// Follows the delta store until the task is dropped: every `interval`, on SIGHUP, and on
    /// changes to a `file://` store's directory. After a failure the next attempt comes
    /// sooner, backing off exponentially up to `interval`.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let (wake_tx, mut wake_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let _watcher = match self.syncer.store() {
            DeltaStore::File(store) => watch_directory(store.root(), wake_tx.clone()),
            DeltaStore::S3(_) => None,
        };
        #[cfg(unix)]
        {
            let wake = wake_tx.clone();
            tokio::spawn(async move {
                let Ok(mut hangup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                while hangup.recv().await.is_some() {
                    if wake.send("SIGHUP").is_err() {
                        return;
                    }
                }
            });
        }
        let mut backoff = new_backoff(interval);
        let mut wait = interval;
        loop {
            let trigger = tokio::select! {
                _ = tokio::time::sleep(wait) => "timer",
                reason = wake_rx.recv() => reason.unwrap_or("timer"),
            };
            tracing::debug!(trigger, "syncing");
            match self.sync_and_swap().await {
                Ok(_) => {
                    backoff = new_backoff(interval);
                    wait = interval;
                }
                Err(error) => {
                    wait = backoff.next().unwrap_or(interval);
                    tracing::warn!(
                        reason = failure_reason(&error),
                        error = format!("{error:#}"),
                        retry_in_seconds = wait.as_secs_f64(),
                        "sync failed; serving the last good version"
                    );
                }
            }
        }
    }
}

fn new_backoff(interval: Duration) -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1).min(interval))
        .with_max_delay(interval)
        .with_jitter()
        .without_max_times()
        .build()
}

fn watch_directory(
    root: &std::path::Path,
    wake: tokio::sync::mpsc::UnboundedSender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only a new or replaced head matters. Reads are events too (inotify reports opens
        // and closes): reacting to them would make every sync's own read of the head
        // trigger the next sync.
        let Ok(event) = event else { return };
        let changes_head = matches!(
            event.kind,
            notify::EventKind::Create(_)
                | notify::EventKind::Modify(_)
                | notify::EventKind::Remove(_)
        ) && event.paths.iter().any(|path| {
            path.file_name()
                .is_some_and(|name| name == crate::delta_store::HEAD_NAME)
        });
        if changes_head {
            let _ = wake.send("store changed");
        }
    })
    .ok()?;
    match watcher.watch(root, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(error) => {
            tracing::info!(%error, dir = %root.display(), "not watching the delta store directory; polling only");
            None
        }
    }
}
