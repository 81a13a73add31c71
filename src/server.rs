//! The daemon: bind, bring the state dir to a servable version, swap it in, serve.
//!
//! The listener is bound first so `/livez` answers and `/readyz` says 503 while the version
//! is prepared; nothing but those answers before the first swap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bundle::Bundle;
use crate::catalog::{Catalog, CurrentCatalog};
use crate::http::{self, AppState};
use crate::store::state::StateDir;

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
}

/// Loads the current version: opens the state dir, clones the bundle if needed, opens the
/// read handles. Blocking: call it off the async runtime's workers.
pub fn load_catalog(options: &ServeOptions) -> anyhow::Result<(StateDir, Catalog)> {
    let started = Instant::now();
    let bundle = Bundle::open(&options.bundle)?;
    let model = Arc::new(bundle.load_model()?);
    let state = StateDir::open(&options.state_dir)?;
    let version = state.ensure_from_bundle(&bundle)?;
    let catalog = Catalog::open(
        &version,
        model,
        &state.reader_dir(&version),
        options.reader_shards,
    )?;
    tracing::info!(
        dataset = %catalog.info.dataset,
        seq = catalog.seq(),
        version = %catalog.info.name,
        n_items = catalog.index().n_items(),
        seconds = started.elapsed().as_secs_f64(),
        "version loaded"
    );
    Ok((state, catalog))
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
    let state = AppState {
        catalog: current.clone(),
        started: Instant::now(),
        bundle_dir: options.bundle.clone(),
        metrics: crate::telemetry::prometheus(),
    };
    on_listening(local_addr);
    let server = tokio::spawn(http::run(
        listener,
        http::router(state),
        shutdown,
        options.drain_timeout,
    ));
    let load_options = options.clone();
    let (state_dir, catalog) = tokio::task::spawn_blocking(move || load_catalog(&load_options))
        .await
        .context("join the loading task")??;
    current.swap(Arc::new(catalog));
    tracing::info!("ready");
    let result = server.await.context("join the server task")?;
    // Release read handles (and their clones) before the state dir's lock.
    drop(current);
    drop(state_dir);
    result
}
