//! The HTTP API: router, shared state, and the server loop with graceful shutdown.

pub mod error;
mod handlers;

pub use handlers::status_body;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::catalog::CurrentCatalog;

/// The largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Header naming the data version (seq) an answer was served from.
pub const DATA_VERSION_HEADER: &str = "x-data-version";

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The catalog answers come from.
    pub catalog: Arc<CurrentCatalog>,
    /// When the process started, for `/status`.
    pub started: Instant,
    /// The bundle being served, for `/status`.
    pub bundle_dir: PathBuf,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// What syncing has done, for `/status` and `/metrics`.
    pub sync: crate::sync::follow::SharedStatus,
    /// Where `/search` ranks: the local index or Pinecone.
    pub vectors: crate::catalog::backend::VectorBackend,
    /// Whether `/status` shows paths, the delta store URL and error text.
    pub status_detail: bool,
}

/// All routes, with body limit, access log and metrics. Handlers can be driven without a
/// socket through `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/search", post(handlers::search))
        .route("/items/batch", post(handlers::items_batch))
        .route("/items/{id}", get(handlers::item))
        .route("/livez", get(handlers::livez))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/status", get(handlers::status))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // 5xx answers are logged once where they are made (see ApiError::internal).
                .on_failure(()),
        )
        .with_state(state)
}

/// Counts and times every request by route and status, and names the data version on
/// answers whose handler did not (the handler knows the version it used; this fills in the
/// current one for the rest).
async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let mut response = next.run(request).await;
    if !response.headers().contains_key(DATA_VERSION_HEADER)
        && let Some(catalog) = state.catalog.load()
    {
        response
            .headers_mut()
            .insert(DATA_VERSION_HEADER, HeaderValue::from(catalog.seq()));
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("deltacache_http_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("deltacache_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish for at most `drain_timeout`.
pub async fn run(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = drain_tx.send(());
    });
    let server = server.into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(Into::into),
        _ = drain_rx => {}
    }
    tracing::info!(
        drain_timeout_s = drain_timeout.as_secs_f64(),
        "shutting down; draining requests"
    );
    match tokio::time::timeout(drain_timeout, server).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::error!(%error, "install SIGTERM handler");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
