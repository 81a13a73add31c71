//! Route handlers: parse, call the catalog, map errors. No logic of their own.

use std::io::Write;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{
    ApiError, BodyAnswers, ErrorBody, ErrorCode, ItemAnswers, JsonBody, PathId, ServerError,
    SlowRequest,
};
use super::openapi::{BatchResponse, SearchResponse, StatusBody};
use super::serve::CpuError;
use super::{AppState, DATA_VERSION_HEADER};
use crate::catalog::backend::{SearchError, VectorBackend};
use crate::catalog::{Catalog, SearchOutcome};

/// The most results one search may ask for.
pub const MAX_TOP_K: i64 = 1000;
/// The most ids one batch lookup may ask for.
pub const MAX_BATCH_IDS: usize = 1000;

/// `POST /search` body: the shape the service this replaces takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"query_text": "fast key value database", "top_k": 3, "filter": {"category": "database"}}))]
pub struct SearchRequest {
    /// The text to search for.
    query_text: String,
    /// How many results, 1..=1000; default 5.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000, default = 5)]
    top_k: Option<i64>,
    /// Equality on indexed top-level fields, all of which must hold:
    /// `{"category": "database"}`. A field the bundle does not index (see `filter_fields` in
    /// `/status`) is a 422 `bad_filter`; `{}` means no filter.
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeMap<String, FilterValue>>)]
    filter: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A filter value: a string, a number (`2` equals `2.0`) or a boolean.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum FilterValue {
    /// Equal text.
    Text(String),
    /// An equal number.
    Number(f64),
    /// An equal boolean.
    Bool(bool),
}

/// `POST /items/batch` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"ids": ["demo-0001", "demo-0002", "no-such-id"]}))]
pub struct BatchRequest {
    /// Ids to look up, at most 1000.
    #[schema(max_items = 1000)]
    ids: Vec<String>,
}

/// `GET /livez` answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Liveness {
    /// Always `alive`.
    pub status: Alive,
}

/// The one state `/livez` reports.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Alive {
    /// The process runs.
    Alive,
}

/// `GET /readyz` answer once a data version is swapped in.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Always `ready` (before, the answer is a 503 `not_ready`).
    pub status: Ready,
    /// The data version (seq) served.
    pub data_version: u64,
}

/// The one state a 200 from `/readyz` reports.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ready {
    /// A data version is served.
    Ready,
}

fn current(state: &AppState) -> Result<Arc<Catalog>, ApiError> {
    state.catalog.load().ok_or_else(ApiError::not_ready)
}

/// A JSON response written from bytes, naming the version it was served from.
fn json_bytes(status: StatusCode, body: Vec<u8>, seq: u64) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(DATA_VERSION_HEADER, HeaderValue::from(seq));
    response
}

#[utoipa::path(
    post,
    path = "/search",
    operation_id = "search",
    tag = "data",
    summary = "Similarity search",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "The top-k items scoring above 0, best first.", body = SearchResponse),
        BodyAnswers,
        SlowRequest,
        ServerError,
        (status = 422, description = "`top_k` outside 1..=1000 (`top_k_out_of_range`), more distinct known terms than `--max-query-terms` (`too_many_terms`), or a filter on a field that is not indexed or with a value that is not a string, number or boolean (`bad_filter`).", body = ErrorBody),
        (status = 503, description = "No data version loaded yet (`not_ready`), too many searches or connections at once (`overloaded`), or the remote vector backend failed (`vector_backend_unavailable`).", body = ErrorBody),
    )
)]
pub(super) async fn search(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<SearchRequest>,
) -> Result<Response, ApiError> {
    let top_k = request.top_k.unwrap_or(5);
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(ApiError::unprocessable(
            ErrorCode::TopKOutOfRange,
            format!("field `top_k` must be between 1 and {MAX_TOP_K}, got {top_k}"),
        ));
    }
    let catalog = current(&state)?;
    let filter = match &request.filter {
        Some(object) if !object.is_empty() => {
            Some(catalog.parse_filter(object).map_err(|error| {
                ApiError::unprocessable(ErrorCode::BadFilter, error.to_string())
            })?)
        }
        _ => None,
    };
    let query = catalog.model().embed(&request.query_text);
    // How much of what clients ask the model knows: when the unknown share grows, it is
    // time to roll the model (`compact --refit`).
    let coverage = catalog.model().coverage(&request.query_text);
    metrics::counter!("deltacache_query_terms_total", "vocabulary" => "known")
        .increment(coverage.known);
    metrics::counter!("deltacache_query_terms_total", "vocabulary" => "unknown")
        .increment(coverage.unknown);
    if query.len() > state.max_query_terms {
        return Err(ApiError::unprocessable(
            ErrorCode::TooManyTerms,
            format!(
                "field `query_text` holds {} distinct known terms; at most {} per search",
                query.len(),
                state.max_query_terms
            ),
        ));
    }
    let outcome = match &state.vectors {
        // Ranking scores every posting of every query term. A search that reads few postings
        // (and needs no filter bitmap) costs microseconds: it runs here, which spares the two
        // thread hand-offs that would cost more than it. Any other is CPU work, run off the
        // async workers, a bounded number at once.
        VectorBackend::Local
            if filter.is_none()
                && catalog.index().postings_of(&query) <= INLINE_SEARCH_POSTINGS =>
        {
            metrics::counter!("deltacache_searches_inline_total").increment(1);
            catalog
                .search_embedded(&query, top_k as usize, None)
                .map_err(ApiError::internal)?
        }
        VectorBackend::Local => {
            let searched = catalog.clone();
            state
                .searches
                .run(move || searched.search_embedded(&query, top_k as usize, filter.as_ref()))
                .await
                .map_err(|error| match error {
                    CpuError::Overloaded => ApiError::overloaded(),
                    CpuError::Panicked => ApiError::internal(anyhow::anyhow!("a search panicked")),
                })?
                .map_err(ApiError::internal)?
        }
        remote => remote
            .search(
                &catalog,
                &request.query_text,
                top_k as usize,
                filter.as_ref(),
            )
            .await
            .map_err(|error| match error {
                SearchError::Unavailable(error) => ApiError::vector_backend_unavailable(error),
                SearchError::Internal(error) => ApiError::internal(error),
            })?,
    };
    metrics::counter!("deltacache_items_served_total").increment(outcome.hits.len() as u64);
    Ok(json_bytes(
        StatusCode::OK,
        search_body(&outcome, catalog.seq()),
        catalog.seq(),
    ))
}

/// The most postings a search may read on the async worker that received it (a few
/// microseconds of scoring); more goes to the search pool.
const INLINE_SEARCH_POSTINGS: usize = 4096;

/// The `/search` answer, written from the stored JSON as it is: no re-parsing on the hot
/// path.
fn search_body(outcome: &SearchOutcome, seq: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(
        64 + outcome
            .hits
            .iter()
            .map(|h| h.metadata.len() + 64)
            .sum::<usize>(),
    );
    body.extend_from_slice(b"{\"results\":[");
    for (hit_idx, hit) in outcome.hits.iter().enumerate() {
        if hit_idx > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"id\":");
        write_json_string(&mut body, &hit.id);
        let _ = write!(body, ",\"score\":{},\"metadata\":", hit.score);
        body.extend_from_slice(&hit.metadata);
        body.push(b'}');
    }
    let _ = write!(
        body,
        "],\"missing\":{},\"data_version\":{seq}}}",
        outcome.missing
    );
    body
}

/// Appends `text` as a JSON string.
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Serialising a string into a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

/// `GET /items/batch`: the item whose id is `batch` (the batch lookup is a POST).
#[utoipa::path(
    get,
    path = "/items/batch",
    operation_id = "get_item_named_batch",
    tag = "data",
    summary = "The item whose id is `batch`",
    description = "`/items/batch` is the batch lookup with POST; with GET it is the item whose id is `batch`, like `GET /items/{id}`.",
    responses(ItemAnswers, SlowRequest, ServerError)
)]
pub(super) async fn item_named_batch(State(state): State<AppState>) -> Result<Response, ApiError> {
    item(State(state), PathId("batch".into())).await
}

#[utoipa::path(
    get,
    path = "/items/{id}",
    operation_id = "get_item",
    tag = "data",
    summary = "One item by id",
    params(("id" = String, Path, description = "The item's id.", example = "demo-0001")),
    responses(
        ItemAnswers,
        SlowRequest,
        ServerError,
    )
)]
pub(super) async fn item(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let catalog = current(&state)?;
    match catalog.get(&id).map_err(ApiError::internal)? {
        Some(metadata) => {
            metrics::counter!("deltacache_items_served_total").increment(1);
            Ok(json_bytes(StatusCode::OK, metadata, catalog.seq()))
        }
        None => {
            let mut response =
                ApiError::not_found(format!("no item with id {id:?}")).into_response();
            response
                .headers_mut()
                .insert(DATA_VERSION_HEADER, HeaderValue::from(catalog.seq()));
            Ok(response)
        }
    }
}

#[utoipa::path(
    post,
    path = "/items/batch",
    operation_id = "get_items",
    tag = "data",
    summary = "Items by id, many at once",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "The items found, in the order asked, and the ids not found.", body = BatchResponse),
        BodyAnswers,
        SlowRequest,
        ServerError,
        (status = 422, description = "More than 1000 ids (`too_many_ids`).", body = ErrorBody),
        (status = 503, description = "No data version loaded yet (`not_ready`), or too many connections (`overloaded`).", body = ErrorBody),
    )
)]
pub(super) async fn items_batch(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    if request.ids.len() > MAX_BATCH_IDS {
        return Err(ApiError::unprocessable(
            ErrorCode::TooManyIds,
            format!(
                "field `ids` holds {} ids; at most {MAX_BATCH_IDS} per request",
                request.ids.len()
            ),
        ));
    }
    let catalog = current(&state)?;
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"items\":[");
    let mut missing = Vec::new();
    let mut n_found = 0usize;
    for id in &request.ids {
        match catalog.get(id).map_err(ApiError::internal)? {
            Some(metadata) => {
                if n_found > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&metadata);
                n_found += 1;
            }
            None => missing.push(id),
        }
    }
    metrics::counter!("deltacache_items_served_total").increment(n_found as u64);
    body.extend_from_slice(b"],\"missing\":");
    // Serialising strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, &missing);
    let _ = write!(body, ",\"data_version\":{}}}", catalog.seq());
    Ok(json_bytes(StatusCode::OK, body, catalog.seq()))
}

#[utoipa::path(
    get,
    path = "/livez",
    operation_id = "livez",
    tag = "probes",
    summary = "Liveness",
    responses(
        (status = 200, description = "The process runs.", body = Liveness),
        SlowRequest,
    )
)]
pub(super) async fn livez() -> Json<Liveness> {
    Json(Liveness {
        status: Alive::Alive,
    })
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "probes",
    summary = "Readiness",
    responses(
        (status = 200, description = "A data version is served.", body = Readiness),
        SlowRequest,
        (status = 503, description = "No data version is loaded yet (`not_ready`).", body = ErrorBody),
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    let catalog = current(&state)?;
    Ok(Json(Readiness {
        status: Ready::Ready,
        data_version: catalog.seq(),
    }))
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "probes",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.", body = String, content_type = "text/plain"),
        SlowRequest,
    )
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let catalog = state.catalog.load();
    metrics::gauge!("deltacache_ready").set(if catalog.is_some() { 1.0 } else { 0.0 });
    if let Some(catalog) = catalog {
        metrics::gauge!("deltacache_current_seq").set(catalog.seq() as f64);
        metrics::gauge!("deltacache_items").set(catalog.index().n_items() as f64);
    }
    if let Some(dir) = state.state_dir.clone() {
        // statvfs(2) may block (a network filesystem): off the async workers.
        let space = tokio::task::spawn_blocking(move || crate::state::filesystem_space(&dir));
        match space.await {
            Ok(Ok(space)) => {
                metrics::gauge!("deltacache_state_dir_filesystem_available_bytes")
                    .set(space.available as f64);
                metrics::gauge!("deltacache_state_dir_filesystem_size_bytes")
                    .set(space.size as f64);
            }
            Ok(Err(error)) => tracing::debug!(%error, "statvfs on the state dir failed"),
            Err(error) => tracing::debug!(%error, "statvfs on the state dir did not finish"),
        }
    }
    if let Some(staleness) = state.sync.read().staleness_seconds() {
        metrics::gauge!("deltacache_staleness_seconds").set(staleness as f64);
    }
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

#[utoipa::path(
    get,
    path = "/status",
    operation_id = "status",
    tag = "probes",
    summary = "What is served and how syncing goes",
    responses(
        (status = 200, description = "The served version and the sync state. With `status-detail = true` also the version name, bundle path, delta store URL, deltas applied and the last error's text.", body = StatusBody),
        SlowRequest,
    )
)]
pub(super) async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(status_body(&state, state.status_detail))
}

/// What `/status` answers: the served version and the sync state. The short form names no
/// file path, delta store URL or error text (it may face the network); `detail` adds them
/// (`status-detail = true`, or the control socket).
pub fn status_body(state: &AppState, detail: bool) -> serde_json::Value {
    let uptime = state.started.elapsed().as_secs_f64();
    // Read the catalog under the status lock: swaps happen under it, so the two agree.
    let (sync, served) = {
        let sync = state.sync.read();
        (sync.clone(), state.catalog.load())
    };
    let mut sync_json = serde_json::json!({
        "bundle_seq": sync.bundle_seq,
        "head_seq_seen": sync.head_seq_seen,
        "last_sync_at": sync.last_sync_at,
        "attempts": sync.attempts,
        "last_result": sync.last_result,
        "stale": sync.stale,
        "staleness_seconds": sync.staleness_seconds(),
        "versions_kept": sync.versions_kept,
        "publish_to_serve_seconds": sync.publish_to_serve_seconds,
        "fleet": fleet_json(&sync),
        "gate_refused": sync.gate_refusal.as_ref().map(|r| serde_json::json!({
            "seq": r.seq,
            "reason": r.reason,
            "at": r.at,
        })),
    });
    let mut body = match &served {
        Some(catalog) => serde_json::json!({
            "ready": true,
            "dataset": catalog.info.dataset,
            "seq": catalog.seq(),
            "n_items": catalog.index().n_items(),
            "model_fingerprint": catalog.model().fingerprint(),
            "n_terms": catalog.model().n_terms(),
            "filter_fields": catalog.filter_fields(),
            "schema_version": catalog.info.schema_version,
            "vector_backend": state.vectors.name(),
            "uptime_seconds": uptime,
        }),
        None => serde_json::json!({
            "ready": false,
            "uptime_seconds": uptime,
        }),
    };
    if detail {
        body["bundle"] = state.bundle_dir.display().to_string().into();
        if let Some(catalog) = &served {
            body["version"] = catalog.info.name.clone().into();
        }
        sync_json["store"] = sync.store.clone().into();
        sync_json["deltas_applied"] = sync.deltas_applied.into();
        sync_json["last_error"] = sync.last_error.clone().into();
        if let Some(refusal) = &sync.gate_refusal {
            sync_json["gate_refused"]["message"] = refusal.message.clone().into();
        }
        sync_json["fleet"]["policy"] = serde_json::to_value(&sync.fleet.policy).unwrap_or_default();
    }
    body["sync"] = sync_json;
    body
}

/// The fleet policy this instance follows, as `/status` shows it (the canaries' queries only
/// with detail).
fn fleet_json(sync: &crate::sync::follow::SyncStatus) -> serde_json::Value {
    let fleet = &sync.fleet;
    let policy = fleet.policy.as_ref();
    serde_json::json!({
        "policy_set": policy.is_some(),
        "pin": policy.and_then(|p| p.pin),
        "halt": policy.is_some_and(|p| p.halt),
        "waves": policy.map_or(0, |p| p.waves.len()),
        "instance_seed": fleet.instance_seed,
        "wave": fleet.wave,
        "wave_delay_seconds": fleet.wave_delay_seconds,
        "held_seq": fleet.held.map(|h| h.seq),
        "held_until_ms": fleet.held.map(|h| h.release_at_ms),
    })
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    summary = "This document",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object),
        SlowRequest,
        (status = 503, description = "Too many connections (`overloaded`).", body = ErrorBody),
    )
)]
pub(super) async fn openapi() -> Response {
    let mut response = super::openapi::document_bytes().clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) async fn too_many_connections() -> ApiError {
    ApiError::too_many_connections()
}

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see the README for the API")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: ErrorCode::MethodNotAllowed,
        message: "this route does not take that method".into(),
    }
}
