//! Property-based fuzzing of the HTTP API through the real router, without a socket
//! (`tower::ServiceExt::oneshot`): random methods (invented tokens too), paths (random bytes
//! percent-encoded, long paths, `..`, unicode), headers (huge, duplicated `content-length`,
//! bytes outside ASCII) and bodies (random JSON of every shape, deep nesting, huge numbers,
//! wrong types for every field, invalid UTF-8). Whatever the request, no answer is a 5xx,
//! every answer names its data version, and every 4xx is `{"error": {"code", "message"}}`
//! with `content-type: application/json`.
//!
//! The same properties over raw sockets, with hyper in front and at scale, are
//! `scripts/bench_hardening.sh bad-input`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use deltacache::catalog::CurrentCatalog;
use deltacache::http::{AppState, HttpLimits, router};
use deltacache::server::{ServeOptions, load_catalog};
use deltacache::state::StateDir;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::ServiceExt;

use super::support::{build_bundle, sample_items};

/// One request as the fuzzer makes it; the URI is checked when the request is built.
#[derive(Debug, Clone)]
struct FuzzRequest {
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
}

const ROUTES: &[&str] = &[
    "/search",
    "/items/batch",
    "/items/db-1",
    "/items/nope",
    "/items/",
    "/items",
    "/livez",
    "/readyz",
    "/status",
    "/metrics",
    "/",
    "/search/",
    "/items/db-1/extra",
    "/SEARCH",
];

const STANDARD_METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// Every byte but the unreserved ones, percent-encoded: always a valid path segment.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => proptest::sample::select(STANDARD_METHODS),
        // Invented tokens, any case, up to the odd long one.
        2 => "[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,40}"
            .prop_map(|token| Method::from_bytes(token.as_bytes()).unwrap()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(ROUTES).prop_map(str::to_owned),
        2 => proptest::collection::vec(any::<u8>(), 0..60)
            .prop_map(|bytes| format!("/items/{}", percent_encode(&bytes))),
        2 => "\\PC{1,30}".prop_map(|text| format!("/items/{}", percent_encode(text.as_bytes()))),
        1 => (1usize..20_000).prop_map(|n| format!("/items/{}", "a".repeat(n))),
        2 => proptest::collection::vec(
            proptest::sample::select(&["..", ".", "items", "search", "%2e%2e", "batch", "", "db-1"][..]),
            1..8,
        )
        .prop_map(|segments| format!("/{}", segments.join("/"))),
        1 => (proptest::sample::select(ROUTES), "\\PC{0,20}")
            .prop_map(|(route, query)| format!("{route}?{}", percent_encode(query.as_bytes()))),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("query_text".to_owned()),
                    Just("top_k".to_owned()),
                    Just("filter".to_owned()),
                    Just("ids".to_owned()),
                    Just("category".to_owned()),
                    "\\PC{0,8}",
                ],
                inner,
                0..5,
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let text =
        || prop_oneof![3 => "\\PC{0,60}".prop_map(serde_json::Value::from), 1 => json_value()];
    prop_oneof![
        // Search bodies with each field right, absent or of any type.
        4 => (
            proptest::option::of(text()),
            proptest::option::of(prop_oneof![
                (-5i64..1_010).prop_map(serde_json::Value::from),
                json_value()
            ]),
            proptest::option::of(prop_oneof![
                Just(serde_json::json!({"category": "database"})),
                json_value().prop_map(|v| serde_json::json!({"category": v})),
                json_value(),
            ]),
        )
            .prop_map(|(query_text, top_k, filter)| {
                let mut body = serde_json::Map::new();
                for (key, value) in [("query_text", query_text), ("top_k", top_k), ("filter", filter)] {
                    if let Some(value) = value {
                        body.insert(key.into(), value);
                    }
                }
                serde_json::to_vec(&body).unwrap()
            }),
        // Batch bodies: ids of any type, up to just past the limit.
        2 => prop_oneof![
            proptest::collection::vec("[a-z0-9-]{0,10}", 0..1_005)
                .prop_map(|ids| serde_json::json!({ "ids": ids })),
            json_value().prop_map(|ids| serde_json::json!({ "ids": ids })),
        ]
        .prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        // Deep nesting, in the body and in a field.
        1 => (1usize..3_000, any::<bool>()).prop_map(|(depth, in_field)| {
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            if in_field {
                format!(r#"{{"query_text": "x", "filter": {{"category": {nested}}}}}"#).into_bytes()
            } else {
                nested.into_bytes()
            }
        }),
        // Well-formed but out of range: top_k, a filter on a field that is not indexed.
        1 => prop_oneof![-100_000i64..1, 1_001i64..100_000]
            .prop_map(|k| format!(r#"{{"query_text": "database", "top_k": {k}}}"#).into_bytes()),
        1 => "[a-z]{1,12}".prop_map(|field| {
            format!(r#"{{"query_text": "database", "filter": {{"{field}x": "v"}}}}"#).into_bytes()
        }),
        // Numbers no integer type holds.
        1 => proptest::sample::select(
            &["1e400", "-1e400", "123456789012345678901234567890", "1.5", "-0", "1E3", "NaN"][..]
        )
        .prop_map(|n| format!(r#"{{"query_text": "database", "top_k": {n}}}"#).into_bytes()),
        // Invalid UTF-8 inside a string, and plain bytes.
        1 => proptest::collection::vec(0x80u8..=0xff, 1..8).prop_map(|junk| {
            let mut body = br#"{"query_text": "data"#.to_vec();
            body.extend(junk);
            body.extend(br#"base"}"#);
            body
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..300),
        // Just over the body limit.
        2 => (60_000usize..70_000)
            .prop_map(|n| format!(r#"{{"query_text": "{}"}}"#, "x".repeat(n)).into_bytes()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
    let value_bytes =
        proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..80);
    let one = prop_oneof![
        (0usize..70_000).prop_map(|n| vec![(
            HeaderName::from_static("x-big"),
            HeaderValue::from_str(&"a".repeat(n)).unwrap()
        )]),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| vec![
            (header::CONTENT_LENGTH, HeaderValue::from(a)),
            (header::CONTENT_LENGTH, HeaderValue::from(b)),
        ]),
        value_bytes
            .clone()
            .prop_map(|v| vec![(header::CONTENT_TYPE, HeaderValue::from_bytes(&v).unwrap())]),
        proptest::sample::select(
            &[
                "application/json",
                "text/plain",
                "application/json; charset=utf-16",
                "multipart/form-data; boundary=x",
                ""
            ][..]
        )
        .prop_map(|v| vec![(header::CONTENT_TYPE, HeaderValue::from_static(v))]),
        ("[a-z][a-z0-9-]{0,20}", value_bytes).prop_map(|(name, v)| vec![(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(&v).unwrap()
        )]),
        proptest::sample::select(&["gzip", "br", "chunked", "identity, gzip"][..]).prop_map(
            |v| vec![
                (header::CONTENT_ENCODING, HeaderValue::from_static(v)),
                (header::TRANSFER_ENCODING, HeaderValue::from_static(v)),
            ]
        ),
    ];
    proptest::collection::vec(one, 0..4).prop_map(|groups| groups.into_iter().flatten().collect())
}

fn request() -> impl Strategy<Value = FuzzRequest> {
    let to = |method: Method, path: &'static str| {
        move |(headers, body)| FuzzRequest {
            method: method.clone(),
            path: path.to_owned(),
            headers,
            body,
        }
    };
    prop_oneof![
        // Mostly the routes that read a body, so the bodies reach the parsers.
        4 => (headers(), body()).prop_map(to(Method::POST, "/search")),
        2 => (headers(), body()).prop_map(to(Method::POST, "/items/batch")),
        2 => (path(), headers()).prop_map(|(path, headers)| FuzzRequest {
            method: Method::GET,
            path,
            headers,
            body: Vec::new(),
        }),
        3 => (method(), path(), headers(), body()).prop_map(|(method, path, headers, body)| {
            FuzzRequest {
                method,
                path,
                headers,
                body,
            }
        }),
    ]
}

/// A ready app state on the sample catalogue, with the opened state dir and the temporary
/// directory it lives in (keep both for as long as the state serves).
fn ready_state() -> (AppState, Arc<StateDir>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let current = Arc::new(CurrentCatalog::default());
    let (state_dir, catalog) = load_catalog(&ServeOptions {
        reader_shards: 2,
        ..ServeOptions::new(
            bundle.clone(),
            dir.path().join("state"),
            "127.0.0.1:0".parse().unwrap(),
        )
    })
    .unwrap();
    current.swap(Arc::new(catalog));
    let state = AppState::new(
        current,
        bundle,
        deltacache::catalog::backend::VectorBackend::Local,
        Default::default(),
    );
    (state, state_dir, dir)
}

/// Sends one request through the router and checks every promised property of the answer;
/// returns its status (`None`: the path was not a valid URI, so no request was made).
async fn check(app: &axum::Router, case: FuzzRequest) -> Result<Option<u16>, TestCaseError> {
    let Ok(uri) = case.path.parse::<Uri>() else {
        return Ok(None);
    };
    let mut builder = Request::builder().method(case.method.clone()).uri(uri);
    for (name, value) in &case.headers {
        builder = builder.header(name, value);
    }
    let request = builder.body(Body::from(case.body.clone())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let what = format!(
        "{} {} ({} body bytes) -> {status}: {}",
        case.method,
        case.path.chars().take(120).collect::<String>(),
        case.body.len(),
        String::from_utf8_lossy(&body)
            .chars()
            .take(200)
            .collect::<String>()
    );
    prop_assert!(!status.is_server_error(), "a 5xx: {}", what);
    prop_assert!(
        headers.contains_key("x-data-version"),
        "no x-data-version: {}",
        what
    );
    if status.is_client_error() {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        prop_assert!(
            content_type.starts_with("application/json"),
            "content-type {content_type:?}: {}",
            what
        );
        // axum answers HEAD without a body.
        if case.method != Method::HEAD {
            let error: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {what}")))?;
            let code = error["error"]["code"].as_str().unwrap_or("");
            let message = error["error"]["message"].as_str().unwrap_or("");
            prop_assert!(
                !code.is_empty() && !message.is_empty(),
                "not the error shape: {}",
                what
            );
        }
    }
    Ok(Some(status.as_u16()))
}

#[test]
fn no_request_gets_a_5xx_and_every_4xx_is_the_json_error_shape() {
    let (state, _state_dir, _dir) = ready_state();
    let app = router(state, &HttpLimits::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    runner
        .run(&request(), |case| {
            if let Some(status) = runtime.block_on(check(&app, case))? {
                *statuses.lock().unwrap().entry(status).or_default() += 1;
            }
            Ok(())
        })
        .unwrap();
    // The generator must reach every kind of answer, or the properties above hold vacuously.
    let statuses = statuses.into_inner().unwrap();
    for status in [200, 400, 404, 405, 413, 422] {
        assert!(
            statuses.contains_key(&status),
            "no request was answered {status}: {statuses:?}"
        );
    }
}
