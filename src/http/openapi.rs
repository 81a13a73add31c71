//! The OpenAPI 3.1 contract of the HTTP API, generated (utoipa) from the request and response
//! types and the handlers' route annotations; served at `GET /openapi.json` and committed as
//! `openapi.json` at the top of the repository (a test compares the two).
//!
//! `/search` and `/items/batch` write their answers by hand from the stored JSON (no
//! re-parsing on the hot path); [`SearchResponse`] and [`BatchResponse`] are their shapes,
//! for the contract and for clients.

use std::sync::LazyLock;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use utoipa::openapi::{Header, ObjectBuilder, Type};

use super::DATA_VERSION_HEADER;
use super::error::{ErrorBody, ErrorCode, ErrorDetail};
use super::handlers::{self, Alive, BatchRequest, FilterValue, Liveness, Readiness, Ready};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "deltacache",
        description = "Similarity search and metadata lookups from a LevelDB baked into a \
            machine image, kept fresh by signed deltas. Every answer made once a data version \
            is loaded carries `x-data-version`; every error is \
            `{\"error\": {\"code\", \"message\"}}` except a request hyper cannot parse at all \
            (a malformed request line or header, headers over its limits, an over-long URI), \
            which hyper answers itself with a bare 400, 431 or 414 and closes the connection. \
            A method a route does not take is a 405 `method_not_allowed`, a route that does \
            not exist a 404 `not_found`."
    ),
    paths(
        handlers::search,
        handlers::item,
        handlers::item_named_batch,
        handlers::items_batch,
        handlers::livez,
        handlers::readyz,
        handlers::metrics,
        handlers::status,
        handlers::openapi,
    ),
    components(schemas(
        handlers::SearchRequest,
        FilterValue,
        BatchRequest,
        SearchResponse,
        SearchHit,
        BatchResponse,
        Liveness,
        Alive,
        Readiness,
        Ready,
        StatusBody,
        SyncBody,
        FleetBody,
        GateRefusedBody,
        ErrorBody,
        ErrorDetail,
        ErrorCode,
    )),
    modifiers(&Headers),
    tags(
        (name = "data", description = "Searches and item lookups."),
        (name = "probes", description = "Health, metrics and status, also served on the probe listener."),
        (name = "meta", description = "This contract."),
    )
)]
struct ApiDoc;

/// The `POST /search` answer (written by hand in `handlers::search_body`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResponse {
    /// The top-k items scoring above 0, best first (ties in corpus order).
    pub results: Vec<SearchHit>,
    /// Ids the index returned that the metadata db lacked (normally 0).
    pub missing: u64,
    /// The data version (seq) the answer was served from.
    pub data_version: u64,
}

/// One search result.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    /// The item's id.
    pub id: String,
    /// Cosine similarity of the TF-IDF vectors, > 0.
    pub score: f32,
    /// The item's JSON, exactly as stored.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

/// The `POST /items/batch` answer (written by hand in `handlers::items_batch`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    /// The items found, each exactly as stored, in the order asked.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    /// The ids asked for that no item has.
    pub missing: Vec<String>,
    /// The data version (seq) the answer was served from.
    pub data_version: u64,
}

/// The `GET /status` answer (`handlers::status_body`). Before a version is loaded only
/// `ready`, `uptime_seconds` and `sync` are present.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusBody {
    /// Whether a data version is served.
    pub ready: bool,
    /// The dataset served.
    pub dataset: Option<String>,
    /// The data version (seq) served.
    pub seq: Option<u64>,
    /// How many items the served version holds.
    pub n_items: Option<u64>,
    /// The TF-IDF model's fingerprint.
    pub model_fingerprint: Option<String>,
    /// How many terms the model knows.
    pub n_terms: Option<u64>,
    /// The top-level item fields `/search` can filter on.
    pub filter_fields: Option<Vec<String>>,
    /// The db's schema version.
    pub schema_version: Option<u32>,
    /// Where `/search` ranks: `local` or `pinecone`.
    pub vector_backend: Option<String>,
    /// Seconds since the process started.
    pub uptime_seconds: f64,
    /// Detail only: the bundle directory served.
    pub bundle: Option<String>,
    /// Detail only: the served version's name.
    pub version: Option<String>,
    /// What syncing has done.
    pub sync: SyncBody,
}

/// The `sync` part of `/status`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncBody {
    /// The seq of the bundle the daemon booted from.
    pub bundle_seq: u64,
    /// The newest seq seen in the delta store.
    pub head_seq_seen: Option<u64>,
    /// When the last sync ran (seconds since the epoch).
    pub last_sync_at: Option<u64>,
    /// How many syncs ran.
    pub attempts: u64,
    /// How the last sync ended.
    pub last_result: Option<String>,
    /// Whether the data is older than the stale threshold.
    pub stale: bool,
    /// Seconds since the newest served data was published.
    pub staleness_seconds: Option<u64>,
    /// How many versions the state dir keeps.
    pub versions_kept: u64,
    /// Seconds from the newest served delta's publication to its swap here.
    pub publish_to_serve_seconds: Option<f64>,
    /// The fleet policy this instance follows.
    pub fleet: FleetBody,
    /// The health gate's last refusal, kept until a version passes it.
    pub gate_refused: Option<GateRefusedBody>,
    /// Detail only: the delta store URL.
    pub store: Option<String>,
    /// Detail only: deltas applied since the process started.
    pub deltas_applied: Option<u64>,
    /// Detail only: the last sync error's text.
    pub last_error: Option<String>,
}

/// The fleet part of `/status`'s `sync`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetBody {
    /// Whether the delta store holds a fleet policy.
    pub policy_set: bool,
    /// The seq the fleet is pinned to.
    pub pin: Option<u64>,
    /// Whether the fleet is halted.
    pub halt: bool,
    /// How many waves the policy has.
    pub waves: u64,
    /// This instance's seed, which picks its wave.
    pub instance_seed: u32,
    /// This instance's wave.
    pub wave: u64,
    /// How long this instance's wave waits after a publication.
    pub wave_delay_seconds: u64,
    /// The seq held back until the wave's time.
    pub held_seq: Option<u64>,
    /// When the held seq is released (milliseconds since the epoch).
    pub held_until_ms: Option<u64>,
    /// Detail only: the policy as published.
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
}

/// A version the health gate refused.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateRefusedBody {
    /// The seq the version reached.
    pub seq: u64,
    /// `min-items`, `removed`, `canary`, `latency` or `search`.
    pub reason: String,
    /// When (seconds since the epoch).
    pub at: u64,
    /// Detail only: what failed, in words.
    pub message: Option<String>,
}

/// Adds the headers every operation shares: `x-data-version` on every answer, and
/// `Retry-After` on every 503.
struct Headers;

impl utoipa::Modify for Headers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let seconds = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .build()
        };
        let data_version = Header::builder()
            .schema(seconds())
            .description(Some(
                "The data version (seq) the answer was served from; on every answer made \
                 once a version is loaded.",
            ))
            .build();
        let retry_after = Header::builder()
            .schema(seconds())
            .description(Some("Seconds to wait before retrying (1)."))
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                for (status, response) in operation.responses.responses.iter_mut() {
                    let utoipa::openapi::RefOr::T(response) = response else {
                        continue;
                    };
                    response
                        .headers
                        .insert(DATA_VERSION_HEADER.into(), data_version.clone());
                    if status == "503" {
                        response
                            .headers
                            .insert("Retry-After".into(), retry_after.clone());
                    }
                }
            }
        }
    }
}

/// Operations whose 200 (and, for items, 404) answers always name the data version.
const VERSIONED: [&str; 4] = ["search", "get_item", "get_item_named_batch", "get_items"];

/// The contract as JSON, pretty-printed with a final newline: what `GET /openapi.json`
/// serves and `openapi.json` holds.
pub fn document_json() -> String {
    let mut document =
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    mark_required_headers(&mut document);
    let mut text =
        serde_json::to_string_pretty(&document).expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

/// The contract, rendered once for `GET /openapi.json`.
pub fn document_bytes() -> &'static Bytes {
    static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| Bytes::from(document_json()));
    &DOCUMENT
}

/// utoipa's header objects cannot say `required`: marks `Retry-After` on every 503, and
/// `x-data-version` where the handler always sets it.
fn mark_required_headers(document: &mut serde_json::Value) {
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
    {
        let versioned = operation["operationId"]
            .as_str()
            .is_some_and(|id| VERSIONED.contains(&id));
        let Some(responses) = operation["responses"].as_object_mut() else {
            continue;
        };
        for (status, response) in responses {
            let headers = &mut response["headers"];
            if status == "503" {
                headers["Retry-After"]["required"] = true.into();
            }
            let item_missing = status == "404" && versioned;
            if versioned && (status == "200" || item_missing) {
                headers[DATA_VERSION_HEADER]["required"] = true.into();
            }
        }
    }
}
