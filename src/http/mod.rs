//! The HTTP API: router, shared state, the server loop with its limits (`serve`), and its
//! OpenAPI contract (`openapi`).

pub mod error;
mod handlers;
pub mod openapi;
pub mod serve;

pub use handlers::status_body;
pub use serve::{HttpLimits, Probes};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, MakeSpan, TraceLayer};
use tracing::Level;

use crate::catalog::CurrentCatalog;

/// The largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Header naming the data version (seq) an answer was served from.
pub const DATA_VERSION_HEADER: &str = "x-data-version";
/// Header carrying a request's id: the client's when it sent one, else made here; echoed on
/// the answer and logged with every line of the request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

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
    /// Runs searches off the async workers, a bounded number at once.
    pub searches: serve::CpuPool,
    /// The most distinct known terms a query may hold.
    pub max_query_terms: usize,
    /// Request counters and histograms, by route, method and status.
    pub request_metrics: Arc<serve::RequestMetrics>,
    /// The state dir, whose filesystem's room `/metrics` reports (None: not reported).
    pub state_dir: Option<PathBuf>,
}

impl AppState {
    /// State for serving `catalog` (with the process's metrics recorder, an empty sync
    /// status, the short `/status`, and `search`'s limits).
    pub fn new(
        catalog: Arc<CurrentCatalog>,
        bundle_dir: PathBuf,
        vectors: crate::catalog::backend::VectorBackend,
        search: SearchLimits,
    ) -> Self {
        AppState {
            catalog,
            started: Instant::now(),
            bundle_dir,
            metrics: crate::telemetry::prometheus(),
            sync: Default::default(),
            vectors,
            status_detail: false,
            searches: serve::CpuPool::new(search.threads, search.queue),
            max_query_terms: search.max_query_terms,
            request_metrics: Default::default(),
            state_dir: None,
        }
    }
}

/// Limits on searches: how many run at once, how many may wait, how long a query may be.
#[derive(Debug, Clone, Copy)]
pub struct SearchLimits {
    /// Searches running at once (each on its own thread).
    pub threads: usize,
    /// Searches waiting for a thread; beyond, 503 at once.
    pub queue: usize,
    /// The most distinct known terms a query may hold (422 beyond).
    pub max_query_terms: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        SearchLimits {
            threads: cores,
            queue: 8 * cores,
            max_query_terms: 256,
        }
    }
}

/// All routes, with the request limits, body limit, access log and metrics. Handlers can be
/// driven without a socket through `tower::ServiceExt::oneshot`.
pub fn router(state: AppState, limits: &HttpLimits) -> Router {
    let routes = Router::new()
        .route("/search", post(handlers::search))
        // An item whose id is `batch` is fetched with GET like any other.
        .route(
            "/items/batch",
            post(handlers::items_batch).get(handlers::item_named_batch),
        )
        .route("/items/{id}", get(handlers::item))
        .route("/openapi.json", get(handlers::openapi));
    with_layers(probe_routes(routes), state, limits)
}

/// The routes that must stay answerable under any request load, served on the probe
/// listener.
pub fn probe_router(state: AppState, limits: &HttpLimits) -> Router {
    with_layers(probe_routes(Router::new()), state, limits)
}

/// What a connection above the main listener's limit is served: the probes, and 503
/// `overloaded` with `Retry-After` for every other route.
pub fn overflow_router(state: AppState, limits: &HttpLimits) -> Router {
    let routes = Router::new()
        .route("/livez", get(handlers::livez))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/status", get(handlers::status))
        .fallback(handlers::too_many_connections);
    with_layers(routes, state, limits)
}

/// The probes, as the main and probe routers serve them.
pub fn probes(
    state: AppState,
    limits: &HttpLimits,
    listener: Option<tokio::net::TcpListener>,
) -> Probes {
    Probes {
        router: probe_router(state.clone(), limits),
        overflow: overflow_router(state, limits),
        listener,
    }
}

fn probe_routes(routes: Router<AppState>) -> Router<AppState> {
    routes
        .route("/livez", get(handlers::livez))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/status", get(handlers::status))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
}

fn with_layers(routes: Router<AppState>, state: AppState, limits: &HttpLimits) -> Router {
    serve::with_request_limits(routes, limits)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(RequestSpan)
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // 5xx answers are logged once where they are made (see ApiError::internal).
                .on_failure(()),
        )
        // Outermost, so that the span above and every answer (408s included) have the id.
        .layer(SetRequestIdLayer::x_request_id(RequestIds))
        .with_state(state)
}

/// Makes the ids of requests that come without `x-request-id`: a random prefix drawn once
/// per process, then a counter (`5f1c2a9e0b7d4c31-2a`). Unique across restarts and
/// instances in practice, and no system call per request.
#[derive(Debug, Clone, Copy)]
struct RequestIds;

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            let mut bytes = [0u8; 8];
            // Without the system's randomness, the time keeps restarts apart.
            if getrandom::fill(&mut bytes).is_err() {
                bytes = (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64))
                .to_le_bytes();
            }
            u64::from_le_bytes(bytes)
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("{prefix:016x}-{n:x}"))
            .ok()
            .map(RequestId::new)
    }
}

/// The span every line of a request is logged in: method, URI, HTTP version and request id.
#[derive(Debug, Clone, Copy)]
struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> tracing::Span {
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        tracing::info_span!(
            "request",
            method = %request.method(),
            uri = %request.uri(),
            version = ?request.version(),
            request_id = %request_id,
        )
    }
}

/// Counts and times every request by route, method and status (labels from closed sets:
/// route patterns, known methods or `other`), gives the request deadline's bare 408 the
/// error shape every answer shares, and names the data version on answers whose handler did
/// not (the handler knows the version it used; this fills in the current one for the rest).
async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let mut response = next.run(request).await;
    if response.status() == StatusCode::REQUEST_TIMEOUT
        && response.headers().get(header::CONTENT_TYPE).is_none()
    {
        response = error::ApiError::request_timeout().into_response();
    }
    if !response.headers().contains_key(DATA_VERSION_HEADER)
        && let Some(catalog) = state.catalog.load()
    {
        response
            .headers_mut()
            .insert(DATA_VERSION_HEADER, HeaderValue::from(catalog.seq()));
    }
    state.request_metrics.record(
        serve::route_label(matched.as_ref()),
        &method,
        response.status(),
        started.elapsed(),
    );
    response
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
