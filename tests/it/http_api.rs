//! Handlers through the real router, without a socket (`tower::ServiceExt::oneshot`):
//! every status code the API promises.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use deltacache::catalog::CurrentCatalog;
use deltacache::http::{AppState, router};
use deltacache::server::{ServeOptions, load_catalog};
use deltacache::state::StateDir;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::support::{build_bundle, sample_items};

struct Fixture {
    state: AppState,
    _state_dir: Option<std::sync::Arc<StateDir>>,
    _dir: tempfile::TempDir,
}

fn fixture(ready: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let current = Arc::new(CurrentCatalog::default());
    let mut state_dir = None;
    if ready {
        let (opened, catalog) = load_catalog(&ServeOptions {
            reader_shards: 2,
            ..ServeOptions::new(
                bundle.clone(),
                dir.path().join("state"),
                "127.0.0.1:0".parse().unwrap(),
            )
        })
        .unwrap();
        current.swap(Arc::new(catalog));
        state_dir = Some(opened);
    }
    Fixture {
        state: AppState {
            status_detail: true,
            ..AppState::new(
                current,
                bundle,
                deltacache::catalog::backend::VectorBackend::Local,
                Default::default(),
            )
        },
        _state_dir: state_dir,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_owned()
    }
}

async fn call(state: &AppState, method: &str, uri: &str, body: impl Into<Body>) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let response = router(state.clone(), &Default::default())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// One row of the table below: request, expected status and error code (if an error).
fn cases() -> Vec<(
    &'static str,
    &'static str,
    String,
    StatusCode,
    Option<&'static str>,
)> {
    let big = format!(r#"{{"query_text": "{}"}}"#, "x".repeat(70 * 1024));
    vec![
        (
            "POST",
            "/search",
            r#"{"query_text": "database", "top_k": 2}"#.into(),
            StatusCode::OK,
            None,
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "database"}"#.into(),
            StatusCode::OK,
            None,
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "data"#.into(),
            StatusCode::BAD_REQUEST,
            Some("invalid_json"),
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": 5}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("invalid_field"),
        ),
        (
            "POST",
            "/search",
            r#"{"top_k": 5}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("invalid_field"),
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "x", "top_k": "5"}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("invalid_field"),
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "x", "top_k": 0}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("top_k_out_of_range"),
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "x", "top_k": 1001}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("top_k_out_of_range"),
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "database", "filter": {"category": "database"}}"#.into(),
            StatusCode::OK,
            None,
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "database", "filter": {}}"#.into(),
            StatusCode::OK,
            None,
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "database", "filter": {"price": 10.5}}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("bad_filter"),
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "database", "filter": {"category": ["database"]}}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("bad_filter"),
        ),
        (
            "POST",
            "/search",
            r#"{"query_text": "database", "filter": "category=database"}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("invalid_field"),
        ),
        (
            "POST",
            "/search",
            big,
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("payload_too_large"),
        ),
        ("GET", "/items/db-1", String::new(), StatusCode::OK, None),
        (
            "GET",
            "/items/nope",
            String::new(),
            StatusCode::NOT_FOUND,
            Some("not_found"),
        ),
        (
            "POST",
            "/items/batch",
            r#"{"ids": ["db-1", "nope"]}"#.into(),
            StatusCode::OK,
            None,
        ),
        (
            "POST",
            "/items/batch",
            r#"{"ids": "db-1"}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("invalid_field"),
        ),
        (
            "GET",
            "/no/such/route",
            String::new(),
            StatusCode::NOT_FOUND,
            Some("not_found"),
        ),
        (
            "GET",
            "/search",
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            Some("method_not_allowed"),
        ),
        ("GET", "/livez", String::new(), StatusCode::OK, None),
        ("GET", "/readyz", String::new(), StatusCode::OK, None),
        ("GET", "/status", String::new(), StatusCode::OK, None),
        ("GET", "/metrics", String::new(), StatusCode::OK, None),
    ]
}

#[tokio::test]
async fn every_route_answers_its_documented_status() {
    let fixture = fixture(true);
    for (method, uri, body, status, code) in cases() {
        let answer = call(&fixture.state, method, uri, body).await;
        assert_eq!(
            answer.status,
            status,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(
            answer
                .headers
                .get("x-data-version")
                .map(|v| v.to_str().unwrap()),
            Some("0"),
            "{method} {uri} lacks x-data-version"
        );
        if let Some(code) = code {
            assert_eq!(answer.error_code(), code, "{method} {uri}");
            assert!(
                !answer.json()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .is_empty()
            );
        }
    }
}

#[tokio::test]
async fn search_returns_ranked_results_with_stored_metadata() {
    let fixture = fixture(true);
    let answer = call(
        &fixture.state,
        "POST",
        "/search",
        r#"{"query_text": "load balancer TLS", "top_k": 3}"#,
    )
    .await;
    let body = answer.json();
    let ids: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["net-1", "net-2"],
        "only items sharing a term score > 0"
    );
    let first = &body["results"][0];
    assert!(first["score"].as_f64().unwrap() > body["results"][1]["score"].as_f64().unwrap());
    assert_eq!(first["metadata"], sample_items()[2]);
    assert_eq!(body["data_version"], 0);
    assert_eq!(body["missing"], 0);

    let answer = call(
        &fixture.state,
        "POST",
        "/items/batch",
        r#"{"ids": ["kit-2", "nope", "db-1"]}"#,
    )
    .await;
    let body = answer.json();
    assert_eq!(body["items"][0]["id"], "kit-2");
    assert_eq!(body["items"][1]["id"], "db-1");
    assert_eq!(body["missing"], serde_json::json!(["nope"]));

    let answer = call(
        &fixture.state,
        "POST",
        "/search",
        r#"{"query_text": "the of and", "top_k": 3}"#,
    )
    .await;
    assert_eq!(answer.json()["results"], serde_json::json!([]));
}

#[tokio::test]
async fn batch_of_more_than_1000_ids_is_refused() {
    let fixture = fixture(true);
    let ids: Vec<String> = (0..1001).map(|i| format!("id-{i}")).collect();
    let body = serde_json::json!({ "ids": ids }).to_string();
    let answer = call(&fixture.state, "POST", "/items/batch", body).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.error_code(), "too_many_ids");
}

#[tokio::test]
async fn nothing_is_served_before_the_first_swap() {
    let fixture = fixture(false);
    for (method, uri, body) in [
        ("POST", "/search", r#"{"query_text": "database"}"#),
        ("GET", "/items/db-1", ""),
        ("POST", "/items/batch", r#"{"ids": ["db-1"]}"#),
        ("GET", "/readyz", ""),
    ] {
        let answer = call(&fixture.state, method, uri, body).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {uri}"
        );
        assert_eq!(answer.error_code(), "not_ready");
        assert_eq!(answer.headers.get("retry-after").unwrap(), "1");
    }
    assert_eq!(
        call(&fixture.state, "GET", "/livez", "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&fixture.state, "GET", "/status", "").await.json()["ready"],
        false
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let fixture = fixture(true);
    call(&fixture.state, "GET", "/items/kit-1", "").await;
    let text = String::from_utf8(call(&fixture.state, "GET", "/metrics", "").await.body).unwrap();
    assert!(
        text.contains(
            r#"deltacache_http_requests_total{route="/items/{id}",method="GET",status="200"}"#
        ),
        "{text}"
    );
    assert!(text.contains("deltacache_http_request_duration_seconds_bucket"));
    assert!(text.contains("deltacache_current_seq 0"));
}

#[tokio::test]
async fn a_filter_narrows_before_top_k_and_an_unindexed_field_is_named() {
    let fixture = fixture(true);
    let ids = |answer: &Answer| -> Vec<String> {
        answer.json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let query = "database database espresso skillet";
    let unfiltered = call(
        &fixture.state,
        "POST",
        "/search",
        format!(r#"{{"query_text": "{query}", "top_k": 2}}"#),
    )
    .await;
    let filtered = call(
        &fixture.state,
        "POST",
        "/search",
        format!(r#"{{"query_text": "{query}", "top_k": 2, "filter": {{"category": "kitchen"}}}}"#),
    )
    .await;
    assert_eq!(ids(&unfiltered), ["db-2", "db-1"]);
    let mut kitchen = ids(&filtered);
    kitchen.sort();
    assert_eq!(
        kitchen,
        ["kit-1", "kit-2"],
        "the filter applies before top-k"
    );
    let refused = call(
        &fixture.state,
        "POST",
        "/search",
        r#"{"query_text": "x", "filter": {"category": "kitchen", "colour": "red"}}"#,
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("\"colour\"") && message.contains("indexed fields: category"),
        "{message}"
    );
}
