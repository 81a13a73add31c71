//! The OpenAPI contract: the committed `openapi.json` is the one the code generates, the
//! daemon serves it at `/openapi.json`, and the daemon's answers have its shapes.

use deltacache::http::openapi::{BatchResponse, SearchResponse, StatusBody, document_json};

use super::support::{build_bundle, sample_items, serve_local};

/// Fails when `openapi.json` at the top of the repository is not what the code generates.
/// To regenerate it: `UPDATE_EXPECT=1 cargo test --locked --test it openapi::`.
#[test]
fn committed_openapi_json_is_the_generated_contract() {
    expect_test::expect_file!["../../openapi.json"].assert_eq(&document_json());
}

#[test]
fn contract_names_every_route_error_code_and_header() {
    let document: serde_json::Value = serde_json::from_str(&document_json()).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for route in [
        "/search",
        "/items/{id}",
        "/items/batch",
        "/livez",
        "/readyz",
        "/metrics",
        "/status",
        "/openapi.json",
    ] {
        assert!(paths.contains(&route), "{route} missing from {paths:?}");
    }
    let codes = &document["components"]["schemas"]["ErrorCode"]["enum"];
    for code in [
        "invalid_json",
        "invalid_field",
        "invalid_path",
        "unreadable_body",
        "not_found",
        "method_not_allowed",
        "request_timeout",
        "payload_too_large",
        "top_k_out_of_range",
        "too_many_ids",
        "too_many_terms",
        "bad_filter",
        "not_ready",
        "overloaded",
        "vector_backend_unavailable",
        "internal",
    ] {
        assert!(
            codes.as_array().unwrap().contains(&code.into()),
            "{code} not in {codes}"
        );
    }
    let search = &document["paths"]["/search"]["post"]["responses"];
    for status in ["200", "400", "408", "413", "422", "500", "503"] {
        assert!(search[status].is_object(), "/search lacks {status}");
    }
    assert_eq!(search["200"]["headers"]["x-data-version"]["required"], true);
    assert_eq!(search["503"]["headers"]["Retry-After"]["required"], true);
    assert_eq!(
        search["422"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}

#[tokio::test]
async fn daemon_serves_the_contract_and_answers_in_its_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let daemon = serve_local(&bundle, &dir.path().join("state"));
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;

    let response = client
        .get(format!("{}/openapi.json", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), document_json());

    let search: SearchResponse = client
        .post(format!("{}/search", daemon.url))
        .json(&serde_json::json!({"query_text": "database", "top_k": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(search.results.len(), 2);
    assert!(search.results.iter().all(|hit| hit.score > 0.0));
    let batch: BatchResponse = client
        .post(format!("{}/items/batch", daemon.url))
        .json(&serde_json::json!({"ids": ["db-1", "nope"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((batch.items.len(), batch.missing), (1, vec!["nope".into()]));
    let status: StatusBody = client
        .get(format!("{}/status", daemon.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(status.ready);
    assert_eq!(status.n_items, Some(6));
}
