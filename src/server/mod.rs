//! The daemon: bind, bring the state dir to a servable version, sync it to the head, swap it
//! in, serve, keep following.
//!
//! The listener is bound first so `/livez` answers and `/readyz` says 503 while the version
//! is prepared; nothing but those answers before the first swap, and the first swap happens
//! only after the boot-time sync committed (or, with `serve-stale`, gave up).

pub mod control;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::catalog::backend::VectorBackend;
use crate::catalog::{Catalog, CurrentCatalog, open_in_background, open_with_fallback};
use crate::http::{self, AppState, HttpLimits, SearchLimits};
use crate::pinecone::{PineconeClient, PineconeSettings};
use crate::state::{LocalState, StateDir};
use crate::sync::follow::{Follower, SharedStatus, SyncStatus};
use crate::sync::{SyncOptions, Syncer};

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
    /// How long any later sync attempt may take before it is cancelled, reported and
    /// retried.
    pub sync_deadline: Duration,
}

/// The shortest [`FollowOptions::follow_interval`] `serve` accepts: each interval is a
/// request to the delta store from every instance.
pub const MIN_FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// The default [`FollowOptions::sync_deadline`].
pub const DEFAULT_SYNC_DEADLINE: Duration = Duration::from_secs(300);

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
    /// Whether `/status` shows paths, the delta store URL and error text (the control
    /// socket always does).
    pub status_detail: bool,
    /// Connection and request limits.
    pub http: HttpLimits,
    /// A second address serving only `/livez`, `/readyz`, `/metrics` and `/status`, for
    /// health checks and scrapes that must get through whatever load the main port has.
    pub probe_listen: Option<SocketAddr>,
    /// How many searches run at once and wait, and how long a query may be.
    pub search: SearchLimits,
}

impl ServeOptions {
    /// Options for serving `bundle` from `state_dir` on `listen` with every default (no delta
    /// store, local ranking, default limits).
    pub fn new(bundle: PathBuf, state_dir: PathBuf, listen: SocketAddr) -> Self {
        ServeOptions {
            bundle,
            state_dir,
            listen,
            reader_shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            drain_timeout: Duration::from_secs(10),
            follow: None,
            pinecone: None,
            status_detail: false,
            http: HttpLimits::default(),
            probe_listen: None,
            search: SearchLimits::default(),
        }
    }
}

/// File descriptors kept free beside the connection limits: databases, the delta store's
/// connections, logs.
const FD_RESERVE: usize = 512;

/// Binds the main listener and, when configured, the probe listener.
async fn bind(
    options: &ServeOptions,
) -> anyhow::Result<(tokio::net::TcpListener, Option<tokio::net::TcpListener>)> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| {
            format!(
                "listen on {} (is another process using it? choose another --listen)",
                options.listen
            )
        })?;
    let probe_listener = match options.probe_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("listen for probes on {addr} (is another process using it? choose another --probe-listen)")
        })?),
        None => None,
    };
    Ok((listener, probe_listener))
}

/// Logs where probes are served, and returns that address.
fn on_listening_probes(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    let addr = listener.local_addr().ok()?;
    tracing::info!(%addr, "serving probes (/livez, /readyz, /metrics, /status)");
    Some(addr)
}

/// Loads the current version of the bundle alone (no delta store): used by tests and tools.
pub fn load_catalog(options: &ServeOptions) -> anyhow::Result<(Arc<StateDir>, Catalog)> {
    let local = LocalState::open(&options.bundle, &options.state_dir)?;
    let catalog = open_with_fallback(&local, options.reader_shards)?;
    Ok((local.state, catalog))
}

/// The bundle and the state dir (locked), opened before binding, so that a missing bundle or
/// a state dir another process holds is refused before anything says it listens.
async fn open_before_binding(
    options: &ServeOptions,
) -> anyhow::Result<(crate::bundle::Bundle, Arc<StateDir>)> {
    let (bundle_dir, state_dir) = (options.bundle.clone(), options.state_dir.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            crate::bundle::Bundle::open(&bundle_dir)?,
            Arc::new(StateDir::open(&state_dir)?),
        ))
    })
    .await
    .context("join the loading task")?
}

/// Runs the daemon until `shutdown` resolves. `on_listening` is told the bound address and,
/// when probes have a listener of their own, its address.
pub async fn run(
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> anyhow::Result<()> {
    let opened = open_before_binding(&options).await?;
    let (listener, probe_listener) = bind(&options).await?;
    let local_addr = listener.local_addr().context("read the bound address")?;
    let fd_limit = http::serve::check_fd_budget(&options.http, FD_RESERVE)?;
    tracing::debug!(fd_limit, "open-file limit");
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
        sync: status.clone(),
        status_detail: options.status_detail,
        state_dir: Some(options.state_dir.clone()),
        ..AppState::new(
            current.clone(),
            options.bundle.clone(),
            vectors.clone(),
            options.search,
        )
    };
    // After AppState::new, which installs the metrics recorder.
    if options.follow.is_some() {
        crate::sync::zero_metrics();
    }
    crate::catalog::zero_metrics();
    let probe_addr = probe_listener.as_ref().and_then(on_listening_probes);
    on_listening(local_addr, probe_addr);
    let server = tokio::spawn(http::serve::run(
        listener,
        http::router(app.clone(), &options.http),
        http::probes(app.clone(), &options.http, probe_listener),
        options.http.clone(),
        shutdown,
        options.drain_timeout,
    ));
    let booted = boot(&options, opened, current.clone(), status, &vectors).await;
    let follower = match booted {
        Ok(follower) => follower,
        Err(error) => {
            server.abort();
            return Err(error);
        }
    };
    let control = tokio::spawn(control::serve(
        options.state_dir.join(control::SOCKET_NAME),
        follower.clone(),
        app,
    ));
    let follower_task = options
        .follow
        .as_ref()
        .map(|follow| tokio::spawn(follower.clone().run(follow.follow_interval)));
    let result = server.await.context("join the server task")?;
    control.abort();
    if let Some(task) = follower_task {
        task.abort();
        let _ = task.await;
    }
    // Release read handles (and their clones) before the state dir's lock.
    drop(follower);
    drop(current);
    result
}

/// Boot: local version, boot-time sync within the deadline, first swap, READY=1. Returns
/// the follower: the owner of the served version, which follows the delta store when one is
/// configured and answers the control socket either way.
async fn boot(
    options: &ServeOptions,
    (bundle, state): (crate::bundle::Bundle, Arc<StateDir>),
    current: Arc<CurrentCatalog>,
    status: SharedStatus,
    vectors: &VectorBackend,
) -> anyhow::Result<Arc<Follower>> {
    let started = Instant::now();
    let local = tokio::task::spawn_blocking(move || LocalState::open_from(bundle, state))
        .await
        .context("join the loading task")??;
    if let VectorBackend::Pinecone(client) = vectors {
        // Before the first swap: a mismatched index never serves a request.
        client
            .check_dimension(local.models.bundle().n_terms())
            .await?;
    }
    status.write().bundle_seq = local.bundle.manifest.seq;
    warn_if_pinned(&local.state);
    let syncer = match &options.follow {
        Some(follow) => {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(
                "syncing from the delta store",
            )]);
            let mut sync = follow.sync.clone();
            sync.reader_shards = options.reader_shards;
            sync.model_rollover = !matches!(vectors, VectorBackend::Pinecone(_));
            Some(Syncer::open(sync, &local.bundle, local.models.clone()).await?)
        }
        None => None,
    };
    let follower = Arc::new(Follower {
        syncer,
        models: local.models.clone(),
        state: local.state.clone(),
        served: tokio::sync::Mutex::new(local.version.clone()),
        current: current.clone(),
        status: status.clone(),
        reader_shards: options.reader_shards,
        keep_versions: options
            .follow
            .as_ref()
            .map_or(3, |follow| follow.sync.keep_versions),
        attempt_deadline: options
            .follow
            .as_ref()
            .map_or(DEFAULT_SYNC_DEADLINE, |follow| follow.sync_deadline),
        wake: tokio::sync::Notify::new(),
    });
    if let Some(follow) = &options.follow {
        boot_sync(&follower, follow).await?;
    }
    if current.load().is_none() {
        // Nothing new was applied: serve the local version as it is.
        let mut served = follower.served.lock().await;
        status.write().head_issued_at = served.info.head_issued_at;
        let catalog = open_local_version(local, &served, options.reader_shards).await?;
        *served = follower.state.load_version(&catalog.info.name)?;
        // Counted before ready: `/status` never reports versions_kept 0 after a restart.
        follower.collect_garbage(&served).await;
        swap_first(&current, catalog, started);
    } else {
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "ready");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
    Ok(follower)
}

/// Says at start that a `rollback` pin holds this instance back, and how to lift it.
fn warn_if_pinned(state: &StateDir) {
    let Ok(Some(name)) = state.pinned() else {
        return;
    };
    let seq = state.load_version(&name).map(|v| v.info.seq);
    let seq = seq.map_or_else(|_| "unknown".to_owned(), |s| s.to_string());
    tracing::warn!(
        version = %name,
        seq = %seq,
        "pinned at seq {seq} by `deltacache rollback`: following does not move past it until `deltacache rollback --state-dir {} --unpin`",
        state.root().display()
    );
}

/// The boot-time sync within the deadline; a failure is fatal or leaves the status stale,
/// as the policy says.
async fn boot_sync(follower: &Follower, follow: &FollowOptions) -> anyhow::Result<()> {
    let synced = follower
        .sync_within(follow.boot_deadline, "boot-time sync")
        .await;
    let Err(error) = synced else {
        return Ok(());
    };
    match follow.on_sync_failure {
        OnSyncFailure::Fail => {
            Err(error.context(
                "boot-time sync failed and --on-sync-failure is fail: exiting without serving (--on-sync-failure serve-stale serves the newest good local version meanwhile and retries)",
            ))
        }
        OnSyncFailure::ServeStale => {
            tracing::warn!(
                error = format!("{error:#}"),
                "boot-time sync failed; serving the newest good local version, marked stale"
            );
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
    let opened =
        open_in_background(&local.state, version, &local.models, None, reader_shards).await;
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
