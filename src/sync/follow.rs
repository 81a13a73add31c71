//! The daemon's follower: sync on a timer, on SIGHUP, and (for `file://` stores) when the
//! store directory changes; swap readers to each new version after its commit point.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::BackoffBuilder;
use serde::Serialize;

use super::fleet::FleetView;
use super::{Made, SyncOutcome, Syncer, failure_reason, with_deadline};
use crate::catalog::{Catalog, CurrentCatalog, Inconsistent, open_in_background};
use crate::clock::now_secs;
use crate::delta_store::DeltaStore;
use crate::state::{Cancel, Models, Refusal, StateDir, StoreVersion};

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
    /// Sync attempts finished by this process (succeeded or not).
    pub attempts: u64,
    /// `applied` (a new version is served), `committed` (applied but not yet swapped in),
    /// `up-to-date`, `no-head`, `pinned` (by `rollback`), `fleet-pinned`, `halted`, `held`
    /// (waiting for this instance's wave), `gate-refused` or `failed`.
    pub last_result: Option<String>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Whether the served version may be behind the delta store (last sync failed or head expired).
    pub stale: bool,
    /// Issue time of the head the served version was synced to.
    pub head_issued_at: Option<u64>,
    /// Committed versions in the state dir.
    pub versions_kept: usize,
    /// The fleet policy this instance follows, its wave and what it holds back.
    pub fleet: FleetView,
    /// The health gate's last refusal (kept until a version passes it).
    pub gate_refusal: Option<Refusal>,
    /// Seconds from the newest served delta's publication to its swap here.
    pub publish_to_serve_seconds: Option<f64>,
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

/// The owner of the version being served: it syncs and swaps, and it is the only one that
/// changes which version is served (following, a failed swap's retry, `rollback` and
/// `unpin` through the control socket), one change at a time.
pub struct Follower {
    /// Fetch, verify, apply; `None` when serving the bundle alone.
    pub syncer: Option<Syncer>,
    /// The models of the bundle and of rolled-over versions, for opening catalogs.
    pub models: Arc<Models>,
    /// The state dir.
    pub state: Arc<StateDir>,
    /// The version being served. Held for a whole sync or rollback: it serialises every
    /// change of the served version; requests never take it.
    pub served: tokio::sync::Mutex<StoreVersion>,
    /// The catalog requests read.
    pub current: Arc<CurrentCatalog>,
    /// Status for `/status`.
    pub status: SharedStatus,
    /// Read handles per catalog.
    pub reader_shards: usize,
    /// Versions kept.
    pub keep_versions: usize,
    /// How long one sync attempt may take before it is cancelled and reported.
    pub attempt_deadline: Duration,
    /// Wakes the follow loop (an unpin, SIGHUP, a changed store directory).
    pub wake: tokio::sync::Notify,
}

impl Follower {
    /// One sync attempt within [`Follower::attempt_deadline`]: see [`Follower::sync_within`].
    pub async fn sync_and_swap(&self) -> anyhow::Result<bool> {
        self.sync_within(self.attempt_deadline, "sync").await
    }

    /// One sync attempt within `deadline` (`what` names it in the error when it overruns);
    /// on success with new deltas, opens the new version and swaps it in. Returns whether a
    /// swap happened. A version an earlier attempt committed but could not swap in is
    /// opened, not applied again. A failure is recorded in the status and returned.
    pub async fn sync_within(&self, deadline: Duration, what: &str) -> anyhow::Result<bool> {
        let cancel = Cancel::default();
        // Boxed: the attempt's future is deep, and every caller nests it further.
        let attempt = with_deadline(
            deadline,
            what,
            &cancel,
            Box::pin(async {
                let mut served = self.served.lock().await;
                metrics::counter!("deltacache_sync_attempts_total").increment(1);
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("syncing")]);
                if let Some(pending) = self.pending_version(&served)? {
                    return self.swap_to(&mut served, pending, None, None, |_| {}).await;
                }
                let Some(syncer) = &self.syncer else {
                    return Ok(false);
                };
                let outcome = syncer.sync(&self.state, &served, &cancel).await;
                let fleet = syncer.fleet_view();
                match self.record_outcome(outcome, fleet)? {
                    Some(made) => self.swap_made(&mut served, *made).await,
                    None => Ok(false),
                }
            }),
        )
        .await;
        if let Err(error) = &attempt {
            self.record_failure(error);
        }
        attempt
    }

    /// A committed version that `current` names, newer than the one served and of the same
    /// lineage: an earlier attempt committed it but did not swap it in.
    fn pending_version(&self, served: &StoreVersion) -> anyhow::Result<Option<StoreVersion>> {
        let Some(current) = self.state.current()? else {
            return Ok(None);
        };
        let same_lineage = current.info.dataset == served.info.dataset
            && current.info.model_fingerprint == served.info.model_fingerprint;
        Ok((current.info.name != served.info.name
            && same_lineage
            && current.info.seq > served.info.seq)
            .then_some(current))
    }

    /// Swaps in a version a sync made (its catalog open), and records how long after their
    /// publication its deltas came to be served.
    async fn swap_made(&self, served: &mut StoreVersion, mut made: Made) -> anyhow::Result<bool> {
        let published_ms = made.published_ms.clone();
        // The served catalog's cache carries over, but for the ids the deltas touched.
        if let (Some(touched), Some(old)) = (made.touched.take(), self.current.load())
            && old.info.name == served.info.name
        {
            let new = made.catalog.clone();
            let _ = tokio::task::spawn_blocking(move || new.seed_cache_from(&old, &touched)).await;
        }
        self.swap_to(
            served,
            made.version,
            Some(made.catalog),
            made.refused_rest,
            move |status| {
                let now = crate::clock::now_millis();
                for published in published_ms {
                    let seconds = now.saturating_sub(published) as f64 / 1000.0;
                    metrics::histogram!("deltacache_publish_to_serve_seconds").record(seconds);
                    status.publish_to_serve_seconds = Some(seconds);
                }
                status.gate_refusal = None;
            },
        )
        .await
    }

    /// Swaps in `version`, opening it unless its catalog is given. When it cannot be opened,
    /// the served version keeps serving and the status says so; a version that fails its
    /// consistency checks is discarded (and `current` points back at the served one), while
    /// one that failed for a passing reason (no file descriptors, no space) is opened again
    /// by the next attempt. `refused_rest` says why the version stops short of the head, if
    /// it does; `also` updates the status in the same step as the swap.
    async fn swap_to(
        &self,
        served: &mut StoreVersion,
        version: StoreVersion,
        catalog: Option<Arc<Catalog>>,
        refused_rest: Option<String>,
        also: impl FnOnce(&mut SyncStatus),
    ) -> anyhow::Result<bool> {
        let opened = match catalog {
            Some(catalog) => Ok(catalog),
            None => {
                open_in_background(
                    &self.state,
                    &version,
                    &self.models,
                    None,
                    self.reader_shards,
                )
                .await
            }
        };
        let catalog = match opened {
            Ok(catalog) => catalog,
            Err(error) => {
                let discard = error.downcast_ref::<Inconsistent>().is_some();
                if discard {
                    self.state.set_current(&served.info.name)?;
                }
                self.collect_garbage(served).await;
                return Err(error.context(format!(
                    "version {} (seq {}) is committed but could not be opened; seq {} stays current{}",
                    version.info.name,
                    version.info.seq,
                    served.info.seq,
                    if discard { "; it was discarded" } else { "" }
                )));
            }
        };
        {
            // The swap happens under the status lock, so `/status` never pairs the new
            // version with the old status or the reverse.
            let mut status = self.status.write();
            self.current.swap(catalog);
            status.head_issued_at = version.info.head_issued_at;
            status.last_result = Some("applied".into());
            status.stale = refused_rest.is_some();
            status.last_error = refused_rest;
            metrics::gauge!("deltacache_stale").set(if status.stale { 1.0 } else { 0.0 });
            also(&mut status);
        }
        metrics::counter!("deltacache_swaps_total").increment(1);
        metrics::gauge!("deltacache_current_seq").set(version.info.seq as f64);
        *served = version;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("serving")]);
        self.collect_garbage(served).await;
        Ok(true)
    }

    /// Makes the kept version with `seq` current, pins it and serves it at once. Takes the
    /// same lock as a sync, so no apply in flight can commit past the pin afterwards.
    pub async fn rollback_to(&self, seq: u64) -> anyhow::Result<String> {
        let mut served = self.served.lock().await;
        let state = self.state.clone();
        let version = tokio::task::spawn_blocking(move || pin_kept_version(&state, seq))
            .await
            .context("join the rollback task")??;
        let opened = open_in_background(
            &self.state,
            &version,
            &self.models,
            None,
            self.reader_shards,
        )
        .await;
        let catalog = match opened {
            Ok(catalog) => catalog,
            Err(error) => {
                // Serve and point at what was served before; the pin is withdrawn.
                self.state.set_pinned(None)?;
                self.state.set_current(&served.info.name)?;
                return Err(error.context(format!(
                    "open version {} to roll back to; still serving seq {}, not pinned",
                    version.info.name, served.info.seq
                )));
            }
        };
        {
            let mut status = self.status.write();
            self.current.swap(catalog);
            status.head_issued_at = version.info.head_issued_at;
            status.last_result = Some("pinned".into());
        }
        metrics::counter!("deltacache_swaps_total").increment(1);
        metrics::gauge!("deltacache_current_seq").set(version.info.seq as f64);
        *served = version;
        tracing::info!(seq, version = %served.info.name, "rolled back and pinned");
        Ok(format!(
            "serving version {} (seq {}), pinned; `rollback --unpin` to follow again",
            served.info.name, seq
        ))
    }

    /// Removes the pin and wakes the follow loop, which syncs forward at once.
    pub async fn unpin(&self) -> anyhow::Result<String> {
        let served = self.served.lock().await;
        self.state.set_pinned(None)?;
        self.wake.notify_one();
        tracing::info!(seq = served.info.seq, "unpinned; following resumes");
        Ok(format!(
            "unpinned: serving seq {}; following resumes now",
            served.info.seq
        ))
    }

    /// The version being served (waits for a sync or rollback in progress).
    pub async fn served(&self) -> StoreVersion {
        self.served.lock().await.clone()
    }

    /// Removes old versions (never the served, current or pinned one) and records how many
    /// are on disk afterwards.
    pub async fn collect_garbage(&self, served: &StoreVersion) {
        let kept = self
            .state
            .collect_garbage_in_background(self.keep_versions, &served.info.name)
            .await;
        if let Some(kept) = kept {
            self.status.write().versions_kept = kept;
        }
    }

    /// Records a failed attempt in the status and metrics (the caller logs it).
    fn record_failure(&self, error: &anyhow::Error) {
        let reason = failure_reason(error);
        metrics::counter!("deltacache_sync_failures_total", "reason" => reason).increment(1);
        metrics::gauge!("deltacache_stale").set(1.0);
        let mut status = self.status.write();
        status.last_sync_at = Some(now_secs());
        status.attempts += 1;
        status.last_result = Some("failed".into());
        status.last_error = Some(format!("{error:#}"));
        status.stale = true;
    }

    /// Records a sync outcome (and the fleet policy it saw) in the status; returns the new
    /// version to swap in, if any. A failure is returned for the caller to record and log;
    /// `applied` is recorded only once the new version is swapped in.
    fn record_outcome(
        &self,
        outcome: anyhow::Result<SyncOutcome>,
        fleet: FleetView,
    ) -> anyhow::Result<Option<Box<Made>>> {
        let outcome = outcome?;
        let mut status = self.status.write();
        status.last_sync_at = Some(now_secs());
        status.attempts += 1;
        status.fleet = fleet;
        if let Ok(Some(seen)) = self.state.watermark() {
            status.head_seq_seen = Some(seen.seq);
        }
        let described = outcome.describe();
        let (result, behind) = match outcome {
            SyncOutcome::NoHead => ("no-head", None),
            SyncOutcome::UpToDate { .. } => ("up-to-date", None),
            SyncOutcome::Pinned { .. } => ("pinned", None),
            SyncOutcome::FleetPinned { .. } => ("fleet-pinned", None),
            SyncOutcome::Halted { .. } => ("halted", None),
            SyncOutcome::Held { .. } => ("held", None),
            SyncOutcome::GateRefused { refusal, .. } => {
                status.gate_refusal = Some(refusal);
                ("gate-refused", Some(described))
            }
            SyncOutcome::Applied(made) => {
                tracing::info!(
                    seq = made.version.info.seq,
                    head_seq = made.head_seq,
                    n_deltas = made.n_deltas,
                    n_records = made.n_records,
                    back = made.back,
                    gate = ?made.gate,
                    stage_seconds = ?made.stage_seconds,
                    "{described}"
                );
                status.deltas_applied += made.n_deltas as u64;
                status.last_result = Some("committed".into());
                return Ok(Some(made));
            }
        };
        status.last_result = Some(result.into());
        // Held back on purpose (the gate): behind the head, and saying why; otherwise
        // nothing is wrong.
        status.stale = behind.is_some();
        status.last_error = behind;
        metrics::gauge!("deltacache_stale").set(if status.stale { 1.0 } else { 0.0 });
        Ok(None)
    }

    /// Follows the delta store until the task is dropped: every `interval`, on SIGHUP, and on
    /// changes to a `file://` store's directory. After a failure the next attempt comes
    /// sooner, backing off exponentially up to `interval`.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let (wake_tx, mut wake_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let _watcher = match self.syncer.as_ref().map(Syncer::store) {
            Some(DeltaStore::File(store)) => watch_directory(
                &store.root().join(crate::tuf::METADATA_DIR),
                wake_tx.clone(),
            ),
            _ => None,
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
                _ = self.wake.notified() => "asked",
            };
            // Wake-ups queued before this sync starts are covered by it: one sync for them
            // all (those that arrive while it runs still get their own).
            while wake_rx.try_recv().is_ok() {}
            tracing::debug!(trigger, "syncing");
            match self.sync_and_swap().await {
                Ok(_) => {
                    backoff = new_backoff(interval);
                    wait = self.next_wait(interval);
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

impl Follower {
    /// The interval, or less when a held-back delta's wave starts sooner (so it is taken
    /// when its wave starts, not up to an interval later).
    fn next_wait(&self, interval: Duration) -> Duration {
        let Some(held) = self.status.read().fleet.held else {
            return interval;
        };
        let until = held
            .release_at_ms
            .saturating_sub(crate::clock::now_millis())
            .saturating_add(10);
        interval.min(Duration::from_millis(until))
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
        let Ok(event) = event else { return };
        if changes_head(&event) {
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

/// Whether a watch event on the store's metadata directory means a new or replaced
/// `timestamp.json`. Reads are events too (inotify reports opens and closes): reacting to
/// them would make every sync's own read of it trigger the next sync. A publish replaces the
/// file by renaming a temporary file over it and then makes it readable (chmod); notify
/// reports that rename twice (`Name(To)` with the new name, then `Name(Both)` with both) and
/// the chmod as `Metadata`: only the first means new contents, so the others are ignored,
/// or each publish would cost every follower three syncs.
fn changes_head(event: &notify::Event) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    let kind_may_change_contents = match event.kind {
        notify::EventKind::Create(_) | notify::EventKind::Remove(_) => true,
        notify::EventKind::Modify(ModifyKind::Metadata(_))
        | notify::EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => false,
        notify::EventKind::Modify(_) => true,
        _ => false,
    };
    kind_may_change_contents
        && event.paths.iter().any(|path| {
            path.file_name()
                .is_some_and(|name| name == "timestamp.json")
        })
}

/// Pins the newest kept version with `seq` and makes it current (the state dir's lock or
/// the follower's must be held). Blocking.
pub fn pin_kept_version(state: &StateDir, seq: u64) -> anyhow::Result<StoreVersion> {
    let versions = state.versions()?;
    let Some(version) = versions.iter().rev().find(|v| v.info.seq == seq) else {
        let kept: Vec<u64> = versions.iter().map(|v| v.info.seq).collect();
        anyhow::bail!("no kept version has seq {seq}; kept seqs: {kept:?}");
    };
    state.set_pinned(Some(&version.info.name))?;
    state.set_current(&version.info.name)?;
    Ok(version.clone())
}

#[cfg(test)]
mod tests {
    use super::changes_head;
    use crate::delta_store::{Condition, DeltaStore, RemoteSettings};

    /// Every event a raw watcher of `dir` reports while `act` runs, up to the creation of a
    /// fence file made after it (inotify keeps one watch's events in order, so the fence's
    /// event comes after all of `act`'s).
    fn events_of(dir: &std::path::Path, act: impl FnOnce()) -> Vec<notify::Event> {
        use notify::Watcher;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .unwrap();
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .unwrap();
        act();
        let fence = dir.join("fence");
        std::fs::write(&fence, b"").unwrap();
        let mut events = Vec::new();
        loop {
            let event: notify::Event = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("the fence's event")
                .unwrap();
            if event.paths.iter().any(|p| p == &fence) {
                return events;
            }
            events.push(event);
        }
    }

    /// A publish replaces `timestamp.json` through the file store (temporary file, rename,
    /// chmod): that must wake a follower once, not once per event notify reports for it.
    #[test]
    fn a_replaced_timestamp_wakes_the_follower_once() {
        let root = tempfile::tempdir().unwrap();
        let metadata = root.path().join("metadata");
        std::fs::create_dir(&metadata).unwrap();
        let timestamp = metadata.join("timestamp.json");
        std::fs::write(&timestamp, b"{\"version\": 1}").unwrap();
        let tag = crate::digest::sha256_hex(b"{\"version\": 1}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let url = format!("file://{}", root.path().display());
        let store = runtime
            .block_on(DeltaStore::open(&url, &RemoteSettings::default()))
            .unwrap();
        let events = events_of(&metadata, || {
            runtime
                .block_on(store.replace(
                    "metadata/timestamp.json",
                    b"{\"version\": 2}",
                    Condition::Matches(tag),
                ))
                .unwrap();
        });
        let wakes: Vec<_> = events.iter().filter(|e| changes_head(e)).collect();
        assert_eq!(
            wakes.len(),
            1,
            "wake-ups {wakes:?} of all events {events:?}"
        );
        assert_eq!(std::fs::read(&timestamp).unwrap(), b"{\"version\": 2}");

        // A writer that rewrites the file in place still wakes it; reading it does not.
        let events = events_of(&metadata, || {
            std::fs::write(&timestamp, b"{\"version\": 3}").unwrap();
        });
        assert!(events.iter().any(changes_head), "{events:?}");
        let events = events_of(&metadata, || {
            std::fs::read(&timestamp).unwrap();
        });
        assert!(!events.iter().any(changes_head), "{events:?}");
    }
}
