//! The Pinecone backend against an in-process fake that speaks Pinecone's documented JSON
//! (query, vectors/upsert, vectors/delete, describe_index_stats) over real HTTP on
//! 127.0.0.1:0. Pinecone's cloud is unreachable here and Pinecone Local needs docker; the
//! fake checks every request's headers and ranks by real cosine similarity over what was
//! upserted, so the local and pinecone backends can be compared on the same data.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use super::support::{
    Daemon, binary, build_bundle, post_search, sample_items, serve_local, write_jsonl,
};

const API_KEY: &str = "pcsk_test_5ecret_never_logged";

/// What the fake does instead of answering normally.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Answer normally.
    Pass,
    Status(u16),
    Hang,
    Malformed,
}

/// An in-process Pinecone index with one namespace.
#[derive(Default)]
struct Fake {
    /// The dimension `describe_index_stats` reports.
    dimension: AtomicUsize,
    /// Upserted vectors by id.
    vectors: Mutex<BTreeMap<String, Vec<f32>>>,
    /// Faults for the next `/query` calls, in order.
    query_faults: Mutex<VecDeque<Fault>>,
    /// A fault every `/query` gets while set.
    query_always: Mutex<Option<Fault>>,
    /// Faults for the next `/vectors/upsert` calls, in order.
    upsert_faults: Mutex<VecDeque<Fault>>,
    /// Ids put at the top of every query's matches (absent locally).
    ghosts: Mutex<Vec<String>>,
    /// `/query` requests received.
    n_queries: AtomicUsize,
    /// (vectors, body bytes) of every acknowledged upsert request.
    upsert_batches: Mutex<Vec<(usize, usize)>>,
    /// Ids deleted.
    deleted: Mutex<Vec<String>>,
    /// Requests whose headers were wrong.
    bad_headers: AtomicUsize,
    /// Namespaces named in request bodies.
    namespaces: Mutex<Vec<String>>,
    /// Metadata upserted with each vector.
    metadata: Mutex<BTreeMap<String, serde_json::Value>>,
    /// The `filter` of every `/query` request that had one.
    filters: Mutex<Vec<serde_json::Value>>,
}

/// Pinecone's metadata filter semantics for the operators deltacache sends ($eq, $and)
/// and a few more ($ne, $in, $or, implicit equality); anything else is an error, as
/// Pinecone answers 400 to an unknown operator.
fn filter_admits(filter: &serde_json::Value, metadata: &serde_json::Value) -> Result<bool, String> {
    let object = filter.as_object().ok_or("filter must be an object")?;
    let mut all = true;
    for (key, condition) in object {
        let holds = match key.as_str() {
            "$and" | "$or" => {
                let clauses = condition.as_array().ok_or("$and/$or take an array")?;
                let results = clauses
                    .iter()
                    .map(|c| filter_admits(c, metadata))
                    .collect::<Result<Vec<bool>, String>>()?;
                if key == "$and" {
                    results.iter().all(|&r| r)
                } else {
                    results.iter().any(|&r| r)
                }
            }
            field if field.starts_with('$') => return Err(format!("unknown operator {field}")),
            field => {
                let value = metadata.get(field);
                let same = |want: &serde_json::Value| match (value, want) {
                    (Some(serde_json::Value::Number(a)), serde_json::Value::Number(b)) => {
                        a.as_f64() == b.as_f64()
                    }
                    (Some(have), want) => have == want,
                    (None, _) => false,
                };
                match condition {
                    serde_json::Value::Object(ops) => {
                        let mut ok = true;
                        for (op, want) in ops {
                            ok &= match op.as_str() {
                                "$eq" => same(want),
                                "$ne" => !same(want),
                                "$in" => want
                                    .as_array()
                                    .ok_or("$in takes an array")?
                                    .iter()
                                    .any(same),
                                other => return Err(format!("unsupported operator {other}")),
                            };
                        }
                        ok
                    }
                    want => same(want),
                }
            }
        };
        all &= holds;
    }
    Ok(all)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

async fn fake_handler(
    State(fake): State<Arc<Fake>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("api-key") != Some(API_KEY)
        || header("x-pinecone-api-version") != Some("2025-04")
        || header("content-type") != Some("application/json")
    {
        fake.bad_headers.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, "{\"error\":\"bad headers\"}").into_response();
    }
    let request: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(_) => return (StatusCode::BAD_REQUEST, "not json").into_response(),
    };
    if let Some(ns) = request.get("namespace").and_then(|n| n.as_str()) {
        fake.namespaces.lock().push(ns.to_owned());
    }
    let fault = |fault: Option<Fault>| async move {
        match fault? {
            Fault::Pass => None,
            Fault::Status(status) => Some(
                (
                    StatusCode::from_u16(status).unwrap(),
                    "{\"error\":\"injected\"}",
                )
                    .into_response(),
            ),
            Fault::Malformed => Some((StatusCode::OK, "{\"matches\": [{\"id\": 7").into_response()),
            Fault::Hang => std::future::pending::<Option<Response>>().await,
        }
    };
    match uri.path() {
        "/describe_index_stats" => axum::Json(serde_json::json!({
            "dimension": fake.dimension.load(Ordering::SeqCst),
            "totalVectorCount": fake.vectors.lock().len(),
            "namespaces": {},
        }))
        .into_response(),
        "/query" => {
            fake.n_queries.fetch_add(1, Ordering::SeqCst);
            let injected = fake
                .query_faults
                .lock()
                .pop_front()
                .or(*fake.query_always.lock());
            if let Some(response) = fault(injected).await {
                return response;
            }
            assert_eq!(request["includeValues"], false);
            assert_eq!(request["includeMetadata"], false);
            let query: Vec<f32> = serde_json::from_value(request["vector"].clone()).unwrap();
            assert_eq!(query.len(), fake.dimension.load(Ordering::SeqCst));
            let top_k = request["topK"].as_u64().unwrap() as usize;
            let filter = request.get("filter").cloned();
            if let Some(filter) = &filter {
                fake.filters.lock().push(filter.clone());
            }
            let metadata = fake.metadata.lock().clone();
            let mut scored = Vec::new();
            for (id, v) in fake.vectors.lock().iter() {
                if let Some(filter) = &filter {
                    let empty = serde_json::json!({});
                    match filter_admits(filter, metadata.get(id).unwrap_or(&empty)) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(error) => {
                            return (StatusCode::BAD_REQUEST, format!("{{\"error\":{error:?}}}"))
                                .into_response();
                        }
                    }
                }
                scored.push((id.clone(), cosine(&query, v)));
            }
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut matches: Vec<serde_json::Value> = fake
                .ghosts
                .lock()
                .iter()
                .map(|id| serde_json::json!({"id": id, "score": 0.99}))
                .collect();
            matches.extend(
                scored
                    .into_iter()
                    .map(|(id, score)| serde_json::json!({"id": id, "score": score})),
            );
            matches.truncate(top_k);
            axum::Json(
                serde_json::json!({"matches": matches, "namespace": "", "usage": {"readUnits": 1}}),
            )
            .into_response()
        }
        "/vectors/upsert" => {
            let injected = fake.upsert_faults.lock().pop_front();
            if let Some(response) = fault(injected).await {
                return response;
            }
            let vectors = request["vectors"].as_array().unwrap();
            let dimension = fake.dimension.load(Ordering::SeqCst);
            let mut stored = fake.vectors.lock();
            for vector in vectors {
                let values: Vec<f32> = serde_json::from_value(vector["values"].clone()).unwrap();
                assert_eq!(
                    values.len(),
                    dimension,
                    "upserted vector of the wrong dimension"
                );
                let id = vector["id"].as_str().unwrap().to_owned();
                match vector.get("metadata") {
                    Some(metadata) => fake.metadata.lock().insert(id.clone(), metadata.clone()),
                    None => fake.metadata.lock().remove(&id),
                };
                stored.insert(id, values);
            }
            fake.upsert_batches.lock().push((vectors.len(), body.len()));
            axum::Json(serde_json::json!({"upsertedCount": vectors.len()})).into_response()
        }
        "/vectors/delete" => {
            let ids: Vec<String> = serde_json::from_value(request["ids"].clone()).unwrap();
            let mut stored = fake.vectors.lock();
            for id in &ids {
                stored.remove(id);
                fake.metadata.lock().remove(id);
            }
            fake.deleted.lock().extend(ids);
            axum::Json(serde_json::json!({})).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "no such route").into_response(),
    }
}

/// Starts the fake with the given dimension; returns it and its base URL.
async fn start_fake(dimension: usize) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    fake.dimension.store(dimension, Ordering::SeqCst);
    let router = axum::Router::new()
        .fallback(fake_handler)
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (fake, url)
}

fn n_terms(bundle: &Path) -> usize {
    deltacache::bundle::Bundle::open(bundle)
        .unwrap()
        .manifest
        .n_terms
}

/// Runs the binary to completion off the async runtime (the fake keeps answering).
async fn run_bin(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(&args)
            .env("PINECONE_API_KEY", API_KEY)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `build-base --pinecone` of `items` into `dir/bundle`.
async fn build_with_pinecone(
    dir: &Path,
    items: &[serde_json::Value],
    url: &str,
) -> std::process::Output {
    let input = dir.join("items.jsonl");
    write_jsonl(&input, items);
    run_bin(
        [
            "build-base",
            "--input",
            input.to_str().unwrap(),
            "--out",
            dir.join("bundle").to_str().unwrap(),
            "--dataset",
            "sample",
            "--pinecone",
            "--pinecone-index-host",
            url,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await
}

/// A daemon serving `bundle` with the pinecone backend, its stderr collected (RUST_LOG=debug
/// so that anything logging a header would show).
fn start_pinecone_daemon(
    bundle: &Path,
    state: &Path,
    url: &str,
    extra: &[&str],
) -> (Daemon, Arc<Mutex<String>>) {
    let mut args = vec![
        "serve",
        "--bundle",
        bundle.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--vector-backend",
        "pinecone",
        "--pinecone-index-host",
        url,
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(binary())
        .args(&args)
        .env("RUST_LOG", "debug")
        .env("PINECONE_API_KEY", API_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = stderr_text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let url = loop {
        let line = lines
            .next()
            .expect("daemon exited before it listened")
            .unwrap();
        if let Some(url) = line.strip_prefix("deltacache: listening on ") {
            break url.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Daemon { child, url }, stderr_text)
}

async fn search(
    client: &reqwest::Client,
    url: &str,
    text: &str,
    top_k: u32,
) -> (u16, serde_json::Value) {
    post_search(
        client,
        url,
        serde_json::json!({"query_text": text, "top_k": top_k}),
    )
    .await
}

async fn search_filtered(
    client: &reqwest::Client,
    url: &str,
    text: &str,
    top_k: u32,
    filter: serde_json::Value,
) -> (u16, serde_json::Value) {
    post_search(
        client,
        url,
        serde_json::json!({"query_text": text, "top_k": top_k, "filter": filter}),
    )
    .await
}

fn ids(body: &serde_json::Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn get_text(client: &reqwest::Client, url: String) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// Builds the sample bundle with `build-base --pinecone` into a fresh fake.
async fn sample_setup() -> (tempfile::TempDir, PathBuf, Arc<Fake>, String) {
    let dir = tempfile::tempdir().unwrap();
    // The fake's dimension must be the model's term count: learn it from a dry build.
    std::fs::create_dir_all(dir.path().join("probe")).unwrap();
    let probe = build_bundle(&dir.path().join("probe"), &sample_items());
    let (fake, url) = start_fake(n_terms(&probe)).await;
    let output = build_with_pinecone(dir.path(), &sample_items(), &url).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bundle = dir_bundle(&dir);
    (dir, bundle, fake, url)
}

fn dir_bundle(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("bundle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinecone_and_local_backends_return_the_same_ids_and_the_key_stays_secret() {
    let (dir, bundle, fake, url) = sample_setup().await;
    assert_eq!(fake.vectors.lock().len(), sample_items().len());
    let client = reqwest::Client::new();
    let local = serve_local(&bundle, &dir.path().join("state-local"));
    let (remote, stderr) = start_pinecone_daemon(&bundle, &dir.path().join("state-pc"), &url, &[]);
    local.wait_ready(&client).await;
    remote.wait_ready(&client).await;
    for query in [
        "fast key value database",
        "load balancer",
        "espresso crema",
        "database with transactions and snapshots",
        "iron skillet heating proxy",
        "no known words here",
    ] {
        for top_k in [1, 3, 10] {
            let (s1, from_local) = search(&client, &local.url, query, top_k).await;
            let (s2, from_pinecone) = search(&client, &remote.url, query, top_k).await;
            assert_eq!((s1, s2), (200, 200));
            assert_eq!(
                ids(&from_local),
                ids(&from_pinecone),
                "query {query:?} top_k {top_k}"
            );
            assert_eq!(from_pinecone["missing"], 0);
            for (a, b) in from_local["results"]
                .as_array()
                .unwrap()
                .iter()
                .zip(from_pinecone["results"].as_array().unwrap())
            {
                let (a, b) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
                assert_eq!(
                    from_local["results"][0]["metadata"],
                    from_pinecone["results"][0]["metadata"]
                );
            }
        }
    }
    assert!(fake.n_queries.load(Ordering::SeqCst) >= 15);
    assert_eq!(
        fake.bad_headers.load(Ordering::SeqCst),
        0,
        "every request had the headers"
    );
    assert!(fake.namespaces.lock().iter().all(|ns| ns.is_empty()));
    let status = get_text(&client, format!("{}/status", remote.url)).await;
    assert!(
        status.contains("\"vector_backend\":\"pinecone\""),
        "{status}"
    );
    assert!(!status.contains(API_KEY));
    let _ = remote.terminate();
    let logged = stderr.lock().clone();
    assert!(logged.contains("DEBUG"), "the daemon logged at debug level");
    assert!(!logged.contains(API_KEY), "the API key was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_are_passed_to_pinecone_in_its_syntax_and_agree_with_the_local_index() {
    let (dir, bundle, fake, url) = sample_setup().await;
    // The upserts carried the indexed field as metadata.
    assert_eq!(
        fake.metadata.lock().get("net-1"),
        Some(&serde_json::json!({"category": "networking"}))
    );
    let client = reqwest::Client::new();
    let local = serve_local(&bundle, &dir.path().join("state-local"));
    let (remote, _) = start_pinecone_daemon(&bundle, &dir.path().join("state-pc"), &url, &[]);
    local.wait_ready(&client).await;
    remote.wait_ready(&client).await;
    for (query, category) in [
        ("load balancer database with snapshots", "database"),
        ("load balancer database with snapshots", "networking"),
        ("espresso skillet proxy", "kitchen"),
        ("database", "kitchen"),
        ("database", "no-such-category"),
    ] {
        let filter = serde_json::json!({"category": category});
        let (s1, from_local) =
            search_filtered(&client, &local.url, query, 10, filter.clone()).await;
        let (s2, from_pinecone) =
            search_filtered(&client, &remote.url, query, 10, filter.clone()).await;
        assert_eq!((s1, s2), (200, 200), "{from_local} {from_pinecone}");
        assert_eq!(ids(&from_local), ids(&from_pinecone), "{query} {category}");
        for result in from_pinecone["results"].as_array().unwrap() {
            assert_eq!(result["metadata"]["category"], category);
        }
        assert_eq!(
            fake.filters.lock().last(),
            Some(&serde_json::json!({"category": {"$eq": category}})),
            "the filter reached Pinecone in its syntax"
        );
    }
    // An unindexed field is refused before Pinecone is asked.
    let n_queries = fake.n_queries.load(Ordering::SeqCst);
    let (status, body) = search_filtered(
        &client,
        &remote.url,
        "database",
        5,
        serde_json::json!({"price": 10.5}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"price\"") && message.contains("category"),
        "{message}"
    );
    assert_eq!(fake.n_queries.load(Ordering::SeqCst), n_queries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_answer_503_and_the_circuit_fails_fast_while_items_keep_working() {
    let (dir, bundle, fake, url) = sample_setup().await;
    let client = reqwest::Client::new();
    let (daemon, stderr) = start_pinecone_daemon(
        &bundle,
        &dir.path().join("state"),
        &url,
        &["--pinecone-attempts", "2", "--pinecone-timeout", "300ms"],
    );
    daemon.wait_ready(&client).await;
    let query = "fast key value database";
    let unavailable = |status: u16, body: &serde_json::Value| {
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "vector_backend_unavailable");
    };

    // 429, then success: retried.
    fake.query_faults.lock().push_back(Fault::Status(429));
    let (status, body) = search(&client, &daemon.url, query, 3).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body)[0], "db-1");

    // 401 is not retried: one request, then 503.
    let before = fake.n_queries.load(Ordering::SeqCst);
    fake.query_faults.lock().push_back(Fault::Status(401));
    let (status, body) = search(&client, &daemon.url, query, 3).await;
    unavailable(status, &body);
    assert_eq!(fake.n_queries.load(Ordering::SeqCst), before + 1);

    // Malformed JSON from the server.
    fake.query_faults.lock().extend([Fault::Malformed]);
    let (status, body) = search(&client, &daemon.url, query, 3).await;
    unavailable(status, &body);

    // Timeouts: the fake never answers; both attempts time out.
    fake.query_faults.lock().extend([Fault::Hang, Fault::Hang]);
    let (status, body) = search(&client, &daemon.url, query, 3).await;
    unavailable(status, &body);

    // Recovers: success resets the breaker's count.
    let (status, _) = search(&client, &daemon.url, query, 3).await;
    assert_eq!(status, 200);

    // 500s until the circuit opens: then 503 without calling Pinecone at all.
    *fake.query_always.lock() = Some(Fault::Status(500));
    let mut opened_after = None;
    for call in 0..10 {
        let before = fake.n_queries.load(Ordering::SeqCst);
        let (status, body) = search(&client, &daemon.url, query, 3).await;
        unavailable(status, &body);
        if fake.n_queries.load(Ordering::SeqCst) == before {
            opened_after = Some(call);
            break;
        }
    }
    assert_eq!(
        opened_after,
        Some(deltacache::pinecone::BREAKER_THRESHOLD as usize)
    );
    let before = fake.n_queries.load(Ordering::SeqCst);
    for _ in 0..3 {
        let (status, body) = search(&client, &daemon.url, query, 3).await;
        unavailable(status, &body);
    }
    assert_eq!(
        fake.n_queries.load(Ordering::SeqCst),
        before,
        "the open circuit fails fast"
    );
    let response = client
        .get(format!("{}/items/db-1", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics = get_text(&client, format!("{}/metrics", daemon.url)).await;
    assert!(
        metrics.contains("deltacache_vector_backend_circuit_open 1"),
        "{metrics}"
    );
    let _ = daemon.terminate();
    assert!(!stderr.lock().contains(API_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_absent_locally_is_a_counted_join_miss() {
    let (dir, bundle, fake, url) = sample_setup().await;
    let client = reqwest::Client::new();
    let (daemon, _stderr) = start_pinecone_daemon(&bundle, &dir.path().join("state"), &url, &[]);
    daemon.wait_ready(&client).await;
    fake.ghosts.lock().push("ghost-1".into());
    let (status, body) = search(&client, &daemon.url, "fast key value database", 3).await;
    assert_eq!(status, 200);
    assert_eq!(body["missing"], 1);
    assert_eq!(ids(&body), ["db-1", "db-2"]);
    let metrics = get_text(&client, format!("{}/metrics", daemon.url)).await;
    assert!(
        metrics.contains("deltacache_join_misses_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dimension_mismatch_is_refused_naming_both_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let terms = n_terms(&bundle);
    let (fake, url) = start_fake(terms + 7).await;
    let serve = run_bin(
        [
            "serve",
            "--bundle",
            bundle.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--vector-backend",
            "pinecone",
            "--pinecone-index-host",
            &url,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(!serve.status.success());
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(
        stderr.contains(&format!("dimension {}", terms + 7))
            && stderr.contains(&format!("{terms} terms")),
        "{stderr}"
    );
    let other = tempfile::tempdir().unwrap();
    let build = build_with_pinecone(other.path(), &sample_items(), &url).await;
    assert!(!build.status.success());
    assert!(String::from_utf8_lossy(&build.stderr).contains(&format!("dimension {}", terms + 7)));
    assert!(fake.upsert_batches.lock().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_is_mirrored_after_it_is_published() {
    let (dir, bundle, fake, url) = sample_setup().await;
    let trust = super::support::Trust::new(dir.path());
    let key = trust.key.clone();
    let changes = dir.path().join("changes.jsonl");
    std::fs::write(
        &changes,
        concat!(
            "{\"op\":\"put\",\"item\":{\"id\":\"db-1\",\"text\":\"fast key value database\"}}\n",
            "{\"op\":\"delete\",\"id\":\"kit-2\"}\n"
        ),
    )
    .unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    trust.init_store(&store, &Default::default()).await;
    let before = fake.vectors.lock().get("db-1").cloned().unwrap();
    let output = run_bin(
        [
            "publish-delta",
            "--store",
            &store,
            "--key",
            key.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "--changes",
            changes.to_str().unwrap(),
            "--pinecone",
            "--pinecone-index-host",
            &url,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(*fake.deleted.lock(), ["kit-2"]);
    let vectors = fake.vectors.lock();
    assert!(!vectors.contains_key("kit-2"));
    assert_ne!(
        vectors["db-1"], before,
        "the changed item's vector was upserted"
    );
    assert_eq!(vectors.len(), sample_items().len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_upserts_respect_the_batch_limits_and_resume() {
    // 2500 items over a small vocabulary: the 1000-vector limit is the one that binds.
    let items: Vec<serde_json::Value> = (0..2500)
        .map(|i| {
            let text = format!("w{} w{} w{}", i % 40, (i * 7) % 40, (i * 13) % 40);
            serde_json::json!({"id": format!("item-{i:05}"), "text": text})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("probe")).unwrap();
    let probe = build_bundle(&dir.path().join("probe"), &items);
    let (fake, url) = start_fake(n_terms(&probe)).await;
    // The second request is refused (400 is not retried): the run stops after one batch.
    fake.upsert_faults
        .lock()
        .extend([Fault::Pass, Fault::Status(400)]);
    let first = build_with_pinecone(dir.path(), &items, &url).await;
    assert!(!first.status.success());
    let progress = deltacache::pinecone::mirror::progress_path(&dir.path().join("bundle"));
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&progress).unwrap()).unwrap();
    assert_eq!(recorded["n_acknowledged"], 1000);
    assert_eq!(recorded["complete"], false);
    // The same command again resumes after the acknowledged batch.
    let resumed = build_with_pinecone(dir.path(), &items, &url).await;
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let batches = fake.upsert_batches.lock().clone();
    assert_eq!(
        batches.iter().map(|b| b.0).collect::<Vec<_>>(),
        [1000, 1000, 500]
    );
    for (n_vectors, bytes) in &batches {
        assert!(*n_vectors <= deltacache::pinecone::MAX_UPSERT_VECTORS);
        assert!(*bytes <= deltacache::pinecone::MAX_UPSERT_BYTES);
    }
    assert_eq!(fake.vectors.lock().len(), 2500);
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&progress).unwrap()).unwrap();
    assert_eq!(recorded["complete"], true);
    assert_eq!(recorded["n_acknowledged"], 2500);
    // Complete: a re-run sends nothing.
    let again = build_with_pinecone(dir.path(), &items, &url).await;
    assert!(again.status.success());
    assert_eq!(fake.upsert_batches.lock().len(), 3);
}
