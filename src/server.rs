//! The daemon: bind, bring the state dir to a servable version, sync it to the head, swap it
//! in, serve, keep following.
//!
//! The listener is bound first so `/livez` answers and `/readyz` says 503 while the version
//! is prepared; nothing but those answers before the first swap, and the first swap happens
//! only after the boot-time sync committed (or, with `serve-stale`, gave up).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::catalog::backend::VectorBackend;
use crate::catalog::{Catalog, CurrentCatalog, open_in_background, open_with_fallback};
use crate::http::{self, AppState};
use crate::pinecone::{PineconeClient, PineconeSettings};
use crate::state::{LocalState, StateDir};
use crate::sync::follow::{Follower, SharedStatus, SyncStatus};
use crate::sync::{SyncOptions, Syncer, with_deadline};

/// What to do when the boot-time sync fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnSyncFailure {
    /// Serve the newest good local version, report it stale, keep retrying.
    ServeStale,
    /// Exit non-zero.
    Fail,
}

/// Following a delta store while serving.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Store, keys, caps.
    pub sync: SyncOptions,
    /// Poll interval.
    pub follow_interval: Duration,
    /// Boot-time sync failure policy.
    pub on_sync_failure: OnSyncFailure,
    /// How long the boot-time sync may take before the policy applies.
    pub boot_deadline: Duration,
}

/// Everything `serve` needs, after flags, environment and config file are merged.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The baked bundle (never opened in place).
    pub bundle: PathBuf,
    /// The writable state dir.
    pub state_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Number of LevelDB read handles.
    pub reader_shards: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// The delta store to follow; `None` serves the bundle alone.
    pub follow: Option<FollowOptions>,
    /// The Pinecone index `/search` ranks with; `None` uses the local index.
    pub pinecone: Option<PineconeSettings>,
}

/// Loads the current version of the bundle alone (no delta store): used by tests and tools.
pub fn load_catalog(options: &ServeOptions) -> anyhow::Result<(Arc<StateDir>, Catalog)> {
    let local = LocalState::open(&options.bundle, &options.state_dir)?;
    let catalog = open_with_fallback(&local, options.reader_shards)?;
    Ok((local.state, catalog))
}

/// Runs the daemon until `shutdown` resolves. `on_listening` is told the bound address.
pub async fn run(
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| {
            format!(
                "listen on {} (is another process using it? choose another --listen)",
                options.listen
            )
        })?;
    let local_addr = listener.local_addr().context("read the bound address")?;
    let current = Arc::new(CurrentCatalog::default());
    let vectors = match &options.pinecone {
        None => VectorBackend::Local,
        Some(settings) => VectorBackend::Pinecone(PineconeClient::new(settings.clone())?),
    };
    let status: SharedStatus = Arc::new(parking_lot::RwLock::new(SyncStatus {
        store: options.follow.as_ref().map(|f| f.sync.store.clone()),
        ..Default::default()
    }));
    let app = AppState {
        catalog: current.clone(),
        started: Instant::now(),
        bundle_dir: options.bundle.clone(),
        metrics: crate::telemetry::prometheus(),
        sync: status.clone(),
        vectors: vectors.clone(),
    };
    on_listening(local_addr);
    let server = tokio::spawn(http::run(
        listener,
        http::router(app),
        shutdown,
        options.drain_timeout,
    ));
    let booted = boot(&options, current.clone(), status, &vectors).await;
    let follower_task = match booted {
        Ok(Some((follower, interval))) => Some(tokio::spawn(follower.run(interval))),
        Ok(None) => None,
        Err(error) => {
            server.abort();
            return Err(error);
        }
    };
    let result = server.await.context("join the server task")?;
    if let Some(task) = follower_task {
        task.abort();
        let _ = task.await;
    }
    // Release read handles (and their clones) before the state dir's lock.
    drop(current);
    result
}

/// Boot: local version, boot-time sync within the deadline, first swap, READY=1. Returns
/// the follower to run when a store is configured.
async fn boot(
    options: &ServeOptions,
    current: Arc<CurrentCatalog>,
    status: SharedStatus,
    vectors: &VectorBackend,
) -> anyhow::Result<Option<(Arc<Follower>, Duration)>> {
    let started = Instant::now();
    let (bundle_dir, state_dir) = (options.bundle.clone(), options.state_dir.clone());
    let local = tokio::task::spawn_blocking(move || LocalState::open(&bundle_dir, &state_dir))
        .await
        .context("join the loading task")??;
    if let VectorBackend::Pinecone(client) = vectors {
        // Before the first swap: a mismatched index never serves a request.
        client.check_dimension(local.model.n_terms()).await?;
    }
    status.write().bundle_seq = local.bundle.manifest.seq;
    let Some(follow) = &options.follow else {
        let reader_shards = options.reader_shards;
        let catalog = tokio::task::spawn_blocking(move || {
            open_with_fallback(&local, reader_shards).map(|c| (c, local))
        })
        .await
        .context("join the loading task")??;
        swap_first(&current, Arc::new(catalog.0), started);
        return Ok(None);
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(
        "syncing from the delta store",
    )]);
    let syncer = Syncer::open(follow.sync.clone(), &local.bundle, local.model.clone()).await?;
    let follower = Arc::new(Follower {
        syncer,
        state: local.state.clone(),
        version: tokio::sync::Mutex::new(local.version.clone()),
        current: current.clone(),
        status: status.clone(),
        reader_shards: options.reader_shards,
        keep_versions: follow.sync.keep_versions,
    });
    boot_sync(&follower, follow, &status).await?;
    if current.load().is_none() {
        // Nothing new was applied: serve the local version as it is.
        let version = follower.version.lock().await.clone();
        status.write().head_issued_at = version.info.head_issued_at;
        let catalog = open_local_version(local, &version, options.reader_shards).await?;
        swap_first(&current, catalog, started);
    } else {
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "ready");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
    Ok(Some((follower, follow.follow_interval)))
}

/// The boot-time sync within the deadline; a failure is fatal or marks the status stale, as
/// the policy says.
async fn boot_sync(
    follower: &Follower,
    follow: &FollowOptions,
    status: &SharedStatus,
) -> anyhow::Result<()> {
    let synced = with_deadline(
        follow.boot_deadline,
        "boot-time sync",
        follower.sync_and_swap(),
    )
    .await;
    let Err(error) = synced else {
        return Ok(());
    };
    match follow.on_sync_failure {
        OnSyncFailure::Fail => {
            Err(error.context("boot-time sync failed and --on-sync-failure is fail"))
        }
        OnSyncFailure::ServeStale => {
            tracing::warn!(
                error = format!("{error:#}"),
                "boot-time sync failed; serving the newest good local version, marked stale"
            );
            let mut status = status.write();
            status.stale = true;
            status.last_result = Some("failed".into());
            status.last_error = Some(format!("{error:#}"));
            Ok(())
        }
    }
}

/// Opens `version` (the local version the boot-time sync left current), falling back to
/// older versions or the bundle if it does not open.
async fn open_local_version(
    local: LocalState,
    version: &crate::state::StoreVersion,
    reader_shards: usize,
) -> anyhow::Result<Arc<Catalog>> {
    let opened = open_in_background(
        &local.state,
        version,
        local.model.clone(),
        None,
        reader_shards,
    )
    .await;
    match opened {
        Ok(catalog) => Ok(catalog),
        Err(_) => Ok(Arc::new(
            tokio::task::spawn_blocking(move || open_with_fallback(&local, reader_shards))
                .await
                .context("join the loading task")??,
        )),
    }
}

fn swap_first(current: &CurrentCatalog, catalog: Arc<Catalog>, started: Instant) {
    tracing::info!(
        dataset = %catalog.info.dataset,
        seq = catalog.seq(),
        version = %catalog.info.name,
        n_items = catalog.index().n_items(),
        seconds = started.elapsed().as_secs_f64(),
        "ready"
    );
    metrics::gauge!("deltacache_current_seq").set(catalog.seq() as f64);
    current.swap(catalog);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}
