//! `/search` over real HTTP on loopback with the local backend and with the pinecone backend
//! against an in-process fake Pinecone (Pinecone's documented JSON, exact cosine over sparse
//! copies of the upserted vectors), in the same run: requests/s and latency percentiles.
//!
//! ```text
//! cargo bench --bench pinecone
//! ```
//!
//! Optional: `DELTACACHE_BENCH_ITEMS` (synthetic items, default 5000),
//! `DELTACACHE_BENCH_SECS` (seconds per backend, default 5), `DELTACACHE_BENCH_CLIENTS`
//! (concurrent clients, default 8). The fake runs in the same process and on the same cores
//! as the daemon, so the pinecone figures include its work but not a real network hop: a real
//! Pinecone adds its own round trip (typically milliseconds) on top.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use deltacache::bundle::build::{BuildOptions, InputFormat, ModelSource, build_base};
use deltacache::bundle::items::ItemFields;
use deltacache::catalog::CurrentCatalog;
use deltacache::catalog::backend::VectorBackend;
use deltacache::http::{AppState, HttpLimits, SearchLimits, probes, router};
use deltacache::pinecone::{ApiKey, PineconeClient, PineconeSettings};
use deltacache::search::tfidf::FitOptions;
use deltacache::server::{ServeOptions, load_catalog};
use parking_lot::RwLock;

type SparseRows = RwLock<Vec<(String, Vec<(usize, f32)>)>>;

async fn fake(State(rows): State<Arc<SparseRows>>, uri: Uri, body: Bytes) -> Response {
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match uri.path() {
        "/describe_index_stats" => {
            axum::Json(serde_json::json!({"dimension": request_dimension()})).into_response()
        }
        "/vectors/upsert" => {
            let mut stored = rows.write();
            for vector in request["vectors"].as_array().into_iter().flatten() {
                let values: Vec<f32> =
                    serde_json::from_value(vector["values"].clone()).unwrap_or_default();
                let sparse = values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| **v != 0.0)
                    .map(|(i, v)| (i, *v))
                    .collect();
                stored.push((vector["id"].as_str().unwrap_or("").to_owned(), sparse));
            }
            axum::Json(serde_json::json!({"upsertedCount": 0})).into_response()
        }
        "/query" => {
            let query: Vec<f32> =
                serde_json::from_value(request["vector"].clone()).unwrap_or_default();
            let top_k = request["topK"].as_u64().unwrap_or(10) as usize;
            let mut scored: Vec<(&str, f32)> = Vec::new();
            let stored = rows.read();
            for (id, row) in stored.iter() {
                // Stored vectors and queries are l2-normalised: cosine is the dot product.
                let dot: f32 = row.iter().map(|(i, v)| query[*i] * v).sum();
                scored.push((id, dot));
            }
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            scored.truncate(top_k);
            let matches: Vec<_> = scored
                .iter()
                .map(|(id, score)| serde_json::json!({"id": id, "score": score}))
                .collect();
            axum::Json(serde_json::json!({"matches": matches})).into_response()
        }
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

static DIMENSION: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
fn request_dimension() -> usize {
    DIMENSION.load(std::sync::atomic::Ordering::SeqCst)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let n_items = env_number("DELTACACHE_BENCH_ITEMS", 5000) as usize;
    let secs = env_number("DELTACACHE_BENCH_SECS", 5);
    let n_clients = env_number("DELTACACHE_BENCH_CLIENTS", 8) as usize;
    let dir = tempfile::tempdir()?;
    // A deterministic catalogue over 800 words: ~6 words per item.
    let word = |i: usize| format!("w{}x", (i * 2_654_435_761) % 800);
    let mut jsonl = String::new();
    for i in 0..n_items {
        let text: Vec<String> = (0..6).map(|j| word(i * 7 + j * 131)).collect();
        jsonl.push_str(
            &serde_json::json!({"id": format!("item-{i}"), "text": text.join(" ")}).to_string(),
        );
        jsonl.push('\n');
    }
    std::fs::write(dir.path().join("items.jsonl"), jsonl)?;
    let bundle = dir.path().join("bundle");
    build_base(&BuildOptions {
        input: dir.path().join("items.jsonl"),
        input_format: InputFormat::Jsonl,
        filter_fields: vec!["category".into()],
        filter_fields_named: false,
        out: bundle.clone(),
        dataset: Some("bench".into()),
        fields: ItemFields::default(),
        model: ModelSource::Fit(FitOptions::default()),
        seq: 0,
        chain: None,
    })?;
    let options = ServeOptions {
        reader_shards: 2,
        ..ServeOptions::new(
            bundle.clone(),
            dir.path().join("state"),
            "127.0.0.1:0".parse()?,
        )
    };
    let (_state, catalog) = load_catalog(&options)?;
    DIMENSION.store(
        catalog.model().n_terms(),
        std::sync::atomic::Ordering::SeqCst,
    );
    let queries: Vec<String> = (0..200)
        .map(|i| format!("{} {}", word(i * 13), word(i * 29 + 5)))
        .collect();

    let rows: Arc<SparseRows> = Arc::default();
    let fake_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let fake_url = format!("http://{}", fake_listener.local_addr()?);
    let fake_router = axum::Router::new().fallback(fake).with_state(rows.clone());
    tokio::spawn(async move { axum::serve(fake_listener, fake_router).await });
    let client = PineconeClient::new(PineconeSettings::new(&fake_url, "", ApiKey::new("bench")))?;
    let uploaded = deltacache::pinecone::mirror::upsert_bundle(&bundle, &client).await?;
    println!(
        "pinecone bench: {n_items} items, {} terms, {} vectors upserted in {} requests; {n_clients} clients, {secs}s per backend",
        catalog.model().n_terms(),
        uploaded.n_sent,
        uploaded.n_requests
    );

    let current = Arc::new(CurrentCatalog::default());
    current.swap(Arc::new(catalog));
    let mut figures = Vec::new();
    for backend in [VectorBackend::Local, VectorBackend::Pinecone(client)] {
        let name = backend.name();
        let state = AppState::new(
            current.clone(),
            bundle.clone(),
            backend,
            SearchLimits::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/search", listener.local_addr()?);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let limits = HttpLimits::default();
        let server = tokio::spawn(deltacache::http::serve::run(
            listener,
            router(state.clone(), &limits),
            probes(state, &limits, None),
            limits,
            async move {
                let _ = stop_rx.await;
            },
            Duration::from_secs(1),
        ));
        let (rps, p50, p99) = drive(&url, &queries, n_clients, Duration::from_secs(secs)).await?;
        let _ = stop_tx.send(());
        let _ = server.await;
        println!("| {name} | {rps:.0} req/s | p50 {p50:.3} ms | p99 {p99:.3} ms |");
        figures.push((rps, p99));
    }
    println!(
        "pinecone: ratio pinecone/local throughput {:.2}, p99 {:.2}",
        figures[1].0 / figures[0].0,
        figures[1].1 / figures[0].1
    );
    Ok(())
}

async fn drive(
    url: &str,
    queries: &[String],
    n_clients: usize,
    duration: Duration,
) -> anyhow::Result<(f64, f64, f64)> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for client_idx in 0..n_clients {
        let (http, url, queries) = (http.clone(), url.to_owned(), queries.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = client_idx;
            while Instant::now() < deadline {
                let body =
                    serde_json::json!({"query_text": queries[i % queries.len()], "top_k": 10});
                let sent = Instant::now();
                let response = http.post(&url).json(&body).send().await?;
                anyhow::ensure!(
                    response.status() == 200,
                    "search answered {}",
                    response.status()
                );
                response.bytes().await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                i += n_clients;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.context("join a client")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Ok((all.len() as f64 / elapsed, pct(0.50), pct(0.99)))
}
