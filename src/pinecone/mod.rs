//! Pinecone as the vector backend: a small client for Pinecone's REST data plane (query,
//! upsert, delete, describe index stats), with per-attempt timeouts, bounded retries with
//! backoff on 429 and 5xx, and a circuit breaker that fails fast after repeated failures.
//!
//! Vectors are the model's TF-IDF embeddings made dense: the index's dimension must equal
//! the model's term count. The API key is kept in [`ApiKey`], whose `Debug` never shows it,
//! and is sent as a sensitive header (so HTTP logging layers redact it).

pub mod mirror;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backon::BackoffBuilder;
use serde::Deserialize;

use crate::search::tfidf::SparseVector;

/// The `X-Pinecone-Api-Version` sent unless configured otherwise.
pub const DEFAULT_API_VERSION: &str = "2025-04";
/// The most vectors one upsert request carries (Pinecone's recommended limit).
pub const MAX_UPSERT_VECTORS: usize = 1000;
/// The largest upsert request body, in bytes (Pinecone's limit).
pub const MAX_UPSERT_BYTES: usize = 2 * 1024 * 1024;
/// The most ids one delete request carries.
pub const MAX_DELETE_IDS: usize = 1000;
/// Consecutive failed calls after which the circuit opens.
pub const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit fails fast before one trial call is let through.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);
/// Environment variable holding the API key.
pub const API_KEY_ENV: &str = "PINECONE_API_KEY";

/// A Pinecone API key. Never printed: `Debug` shows a placeholder.
#[derive(Clone)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// The key from `PINECONE_API_KEY`, else from `file` (refused when group or others can
    /// read it, like a publisher's secret key).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(path) = file {
            return Self::from_file(path);
        }
        match std::env::var(API_KEY_ENV) {
            Ok(key) if !key.trim().is_empty() => Ok(ApiKey(key.trim().to_owned())),
            _ => bail!(
                "no Pinecone API key: set {API_KEY_ENV} or pass --pinecone-api-key-file FILE (mode 0600)"
            ),
        }
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        let key = crate::secret_file::read_private(path, "Pinecone API key file")?;
        Ok(ApiKey(key))
    }

    /// A key given directly (tests, tools).
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }
}

/// Where and how to reach one Pinecone index namespace.
#[derive(Debug, Clone)]
pub struct PineconeSettings {
    /// Base URL of the index's data plane, e.g. `https://my-index-abc.svc.pinecone.io`.
    pub base_url: String,
    /// The namespace vectors live in ("" is Pinecone's default namespace).
    pub namespace: String,
    /// The API key.
    pub api_key: ApiKey,
    /// `X-Pinecone-Api-Version`.
    pub api_version: String,
    /// Timeout of one attempt (connect included).
    pub timeout: Duration,
    /// Attempts per call; 429, 5xx and transport errors are retried with backoff.
    pub max_attempts: u32,
}

impl PineconeSettings {
    /// Settings with the defaults: API version 2025-04, 2 s per attempt, 3 attempts.
    pub fn new(host: &str, namespace: impl Into<String>, api_key: ApiKey) -> Self {
        PineconeSettings {
            base_url: base_url(host),
            namespace: namespace.into(),
            api_key,
            api_version: DEFAULT_API_VERSION.to_owned(),
            timeout: Duration::from_secs(2),
            max_attempts: 3,
        }
    }
}

/// `--pinecone-index-host`: a bare host means `https://HOST`; a URL is taken as it is.
pub fn base_url(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.starts_with("http://") || host.starts_with("https://") {
        host.to_owned()
    } else {
        format!("https://{host}")
    }
}

/// Why a Pinecone call failed. Callers branch on it only to answer 503; the message is for
/// the log.
#[derive(Debug, thiserror::Error)]
pub enum PineconeError {
    /// The circuit is open: recent calls failed, so this one was not attempted.
    #[error("Pinecone circuit open after repeated failures; failing fast")]
    CircuitOpen,
    /// No answer: connect error, reset, or the attempt timed out.
    #[error("call {path}: {detail}")]
    Transport {
        /// The route called.
        path: &'static str,
        /// What happened.
        detail: String,
    },
    /// Pinecone answered with an error status.
    #[error("Pinecone answered {status} to {path}: {body}")]
    Status {
        /// The route called.
        path: &'static str,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The answer was not the documented JSON.
    #[error("Pinecone's answer to {path} is not the documented JSON: {detail}")]
    Malformed {
        /// The route called.
        path: &'static str,
        /// The parse error.
        detail: String,
    },
}

impl PineconeError {
    /// Whether trying again may help: no answer, 429, or 5xx.
    fn is_retryable(&self) -> bool {
        match self {
            PineconeError::Transport { .. } => true,
            PineconeError::Status { status, .. } => *status == 429 || *status >= 500,
            PineconeError::CircuitOpen | PineconeError::Malformed { .. } => false,
        }
    }
}

/// A circuit breaker. No maintained crate fits a handful of lines, so this is a small state
/// machine:
///
/// - `Closed`: calls go through; each failed call (after its retries) adds one to a count
///   of consecutive failures, a success resets it. At [`BREAKER_THRESHOLD`] it opens.
/// - `Open { until }`: calls fail at once with [`PineconeError::CircuitOpen`] until
///   `until`; the first call after it becomes the trial (`HalfOpen`).
/// - `HalfOpen { since }`: one trial call is in flight; others fail fast. Its success closes
///   the circuit, its failure opens it again. A trial that never reports (its request was
///   cancelled) is forgotten after a cooldown, when another trial is let through.
///
/// The mutex is a plain one, held for a few instructions and never across `.await`.
struct CircuitBreaker {
    state: parking_lot::Mutex<BreakerState>,
    threshold: u32,
    cooldown: Duration,
}

#[derive(Debug, Clone, Copy)]
enum BreakerState {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

impl CircuitBreaker {
    fn new(threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            state: parking_lot::Mutex::new(BreakerState::Closed {
                consecutive_failures: 0,
            }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Whether a call may go out now.
    fn admit(&self, now: Instant) -> Result<(), PineconeError> {
        let mut state = self.state.lock();
        match *state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if now < until => Err(PineconeError::CircuitOpen),
            BreakerState::HalfOpen { since } if now < since + self.cooldown => {
                Err(PineconeError::CircuitOpen)
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                *state = BreakerState::HalfOpen { since: now };
                Ok(())
            }
        }
    }

    /// Records how an admitted call ended.
    fn record(&self, succeeded: bool, now: Instant) {
        let mut state = self.state.lock();
        let next = match (*state, succeeded) {
            (_, true) => BreakerState::Closed {
                consecutive_failures: 0,
            },
            (
                BreakerState::Closed {
                    consecutive_failures,
                },
                false,
            ) if consecutive_failures + 1 < self.threshold => BreakerState::Closed {
                consecutive_failures: consecutive_failures + 1,
            },
            (_, false) => BreakerState::Open {
                until: now + self.cooldown,
            },
        };
        let open = matches!(next, BreakerState::Open { .. });
        if open && !matches!(*state, BreakerState::Open { .. }) {
            tracing::warn!(
                cooldown_s = self.cooldown.as_secs_f64(),
                "Pinecone circuit opened after repeated failures; /search fails fast"
            );
        }
        metrics::gauge!("deltacache_vector_backend_circuit_open").set(if open { 1.0 } else { 0.0 });
        *state = next;
    }
}

/// One match of a query.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueryMatch {
    /// The vector's id (the item's id).
    pub id: String,
    /// Its similarity to the query.
    pub score: f32,
}

#[derive(Deserialize)]
struct QueryResponse {
    matches: Vec<QueryMatch>,
}

#[derive(Deserialize)]
struct IndexStats {
    dimension: u64,
}

/// A pooled client for one index namespace. Cheap to share behind an `Arc`.
pub struct PineconeClient {
    /// One connection pool for every call.
    http: reqwest::Client,
    /// Where, which namespace, which key.
    settings: PineconeSettings,
    /// Fails fast after repeated failures.
    breaker: CircuitBreaker,
}

impl std::fmt::Debug for PineconeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PineconeClient")
            .field("base_url", &self.settings.base_url)
            .field("namespace", &self.settings.namespace)
            .finish_non_exhaustive()
    }
}

impl PineconeClient {
    /// A client with the default circuit breaker. Makes no call.
    pub fn new(settings: PineconeSettings) -> anyhow::Result<Arc<Self>> {
        Self::with_breaker(settings, BREAKER_THRESHOLD, BREAKER_COOLDOWN)
    }

    /// A client whose circuit opens after `threshold` consecutive failed calls and stays
    /// open for `cooldown`.
    pub fn with_breaker(
        settings: PineconeSettings,
        threshold: u32,
        cooldown: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let mut key = reqwest::header::HeaderValue::from_str(&settings.api_key.0)
            .context("the Pinecone API key holds characters an HTTP header cannot carry")?;
        key.set_sensitive(true);
        let version = reqwest::header::HeaderValue::from_str(&settings.api_version)
            .with_context(|| format!("Pinecone API version {:?}", settings.api_version))?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("Api-Key", key);
        headers.insert("X-Pinecone-Api-Version", version);
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .context("build the Pinecone HTTP client")?;
        Ok(Arc::new(PineconeClient {
            http,
            breaker: CircuitBreaker::new(threshold, cooldown),
            settings,
        }))
    }

    /// The index's base URL and namespace, for `/status` and messages.
    pub fn describe(&self) -> String {
        format!(
            "{} namespace {:?}",
            self.settings.base_url, self.settings.namespace
        )
    }

    /// The settings (the key stays redacted in `Debug`).
    pub fn settings(&self) -> &PineconeSettings {
        &self.settings
    }

    /// The top `top_k` matches of a dense `vector`, best first, among the vectors whose
    /// metadata satisfies `filter` (Pinecone's filter syntax) if one is given.
    pub async fn query(
        &self,
        vector: &[f32],
        top_k: usize,
        filter: Option<serde_json::Value>,
    ) -> Result<Vec<QueryMatch>, PineconeError> {
        let mut body = serde_json::json!({
            "namespace": self.settings.namespace,
            "vector": vector,
            "topK": top_k,
            "includeValues": false,
            "includeMetadata": false,
        });
        if let Some(filter) = filter {
            body["filter"] = filter;
        }
        let response: QueryResponse = self.call("/query", body.to_string().into_bytes()).await?;
        Ok(response.matches)
    }

    /// The index's dimension (`POST /describe_index_stats`).
    pub async fn dimension(&self) -> Result<u64, PineconeError> {
        let stats: IndexStats = self.call("/describe_index_stats", b"{}".to_vec()).await?;
        Ok(stats.dimension)
    }

    /// Refuses an index whose dimension differs from the model's term count.
    pub async fn check_dimension(&self, n_terms: usize) -> anyhow::Result<()> {
        let dimension = self
            .dimension()
            .await
            .with_context(|| format!("read the dimension of Pinecone index {}", self.describe()))?;
        if dimension != n_terms as u64 {
            bail!(
                "Pinecone index {} has dimension {dimension} but the model has {n_terms} terms: \
                 create the index with dimension {n_terms}, or rebuild the bundle with \
                 --max-features {dimension}",
                self.settings.base_url
            );
        }
        Ok(())
    }

    /// Upserts one batch already serialised by [`UpsertBatcher`].
    pub async fn upsert_batch(&self, batch: &UpsertBatch) -> Result<(), PineconeError> {
        let _: serde_json::Value = self
            .call("/vectors/upsert", batch.body(&self.settings.namespace))
            .await?;
        Ok(())
    }

    /// Deletes `ids` (at most [`MAX_DELETE_IDS`] per request; more are split).
    pub async fn delete(&self, ids: &[String]) -> Result<(), PineconeError> {
        for chunk in ids.chunks(MAX_DELETE_IDS) {
            let body = serde_json::json!({"ids": chunk, "namespace": self.settings.namespace});
            let _: serde_json::Value = self
                .call("/vectors/delete", body.to_string().into_bytes())
                .await?;
        }
        Ok(())
    }

    /// One call: circuit breaker, then attempts with backoff between them.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<T, PineconeError> {
        self.breaker.admit(Instant::now())?;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
            .build();
        let result = loop {
            match self.attempt(path, body.clone()).await {
                Ok(value) => break Ok(value),
                Err(error) if error.is_retryable() => match delays.next() {
                    Some(delay) => {
                        tracing::debug!(path, error = %error, "retrying Pinecone call");
                        tokio::time::sleep(delay).await;
                    }
                    None => break Err(error),
                },
                Err(error) => break Err(error),
            }
        };
        if let Err(error) = &result {
            let reason = match error {
                PineconeError::Transport { .. } => "transport",
                PineconeError::Status { status: 429, .. } => "throttled",
                PineconeError::Status { status, .. } if *status >= 500 => "server",
                PineconeError::Status { .. } => "refused",
                PineconeError::Malformed { .. } => "malformed",
                PineconeError::CircuitOpen => "circuit_open",
            };
            metrics::counter!("deltacache_vector_backend_failures_total", "reason" => reason)
                .increment(1);
        }
        self.breaker.record(result.is_ok(), Instant::now());
        result
    }

    async fn attempt<T: serde::de::DeserializeOwned>(
        &self,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<T, PineconeError> {
        let transport = |error: reqwest::Error| PineconeError::Transport {
            path,
            // Without the URL: it is ours anyway, and shorter messages read better.
            detail: error.without_url().to_string(),
        };
        let response = self
            .http
            .post(format!("{}{path}", self.settings.base_url))
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let body: String = text.chars().take(200).collect();
            return Err(PineconeError::Status {
                path,
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_slice(&bytes).map_err(|error| PineconeError::Malformed {
            path,
            detail: error.to_string(),
        })
    }
}

/// The model's sparse embedding as the dense vector Pinecone takes.
pub fn densify(sparse: &SparseVector, n_terms: usize) -> Vec<f32> {
    let mut dense = vec![0.0f32; n_terms];
    for &(term, weight) in sparse {
        if let Some(slot) = dense.get_mut(term as usize) {
            *slot = weight;
        }
    }
    dense
}

/// One upsert request's vectors, serialised.
#[derive(Debug, Default)]
pub struct UpsertBatch {
    /// `{"id":..,"values":[..]}` objects, comma-separated.
    vectors: Vec<u8>,
    /// How many vectors.
    pub n_vectors: usize,
}

impl UpsertBatch {
    /// The request body.
    fn body(&self, namespace: &str) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.vectors.len() + 64);
        body.extend_from_slice(b"{\"vectors\":[");
        body.extend_from_slice(&self.vectors);
        body.extend_from_slice(b"],\"namespace\":");
        serde_json::to_writer(&mut body, namespace).expect("a string serialises");
        body.push(b'}');
        body
    }
}

/// Packs vectors into upsert requests of at most [`MAX_UPSERT_VECTORS`] vectors and
/// [`MAX_UPSERT_BYTES`] bytes of body. The packing depends only on the vectors' order and
/// contents, so a resumed upload cuts the same batches.
pub struct UpsertBatcher {
    n_terms: usize,
    namespace_len: usize,
    current: UpsertBatch,
}

impl UpsertBatcher {
    /// A batcher for vectors of dimension `n_terms` going to `namespace`.
    pub fn new(n_terms: usize, namespace: &str) -> Self {
        UpsertBatcher {
            n_terms,
            namespace_len: serde_json::to_string(namespace).map_or(2, |s| s.len()),
            current: UpsertBatch::default(),
        }
    }

    /// Adds one item's vector; returns a full batch to send first when it would not fit.
    /// `metadata` (the item's indexed fields, for Pinecone's metadata filter) is sent when
    /// not empty.
    pub fn push(
        &mut self,
        id: &str,
        vector: &SparseVector,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<Option<UpsertBatch>> {
        let dense = densify(vector, self.n_terms);
        let mut record = serde_json::json!({"id": id, "values": dense});
        if !metadata.is_empty() {
            record["metadata"] = serde_json::Value::Object(metadata.clone());
        }
        let one = serde_json::to_vec(&record).context("serialise a vector")?;
        // `{"vectors":[` + `],"namespace":` + the namespace + `}`.
        let overhead = 14 + 14 + self.namespace_len + 1;
        if one.len() + overhead > MAX_UPSERT_BYTES {
            bail!(
                "the vector of item {id:?} takes {} bytes of JSON, over Pinecone's {MAX_UPSERT_BYTES}-byte request limit: \
                 the model has {} terms; rebuild the bundle with a smaller --max-features",
                one.len(),
                self.n_terms
            );
        }
        let full = !self.current.vectors.is_empty()
            && (self.current.n_vectors >= MAX_UPSERT_VECTORS
                || self.current.vectors.len() + 1 + one.len() + overhead > MAX_UPSERT_BYTES);
        let ready = if full {
            Some(std::mem::take(&mut self.current))
        } else {
            None
        };
        if !self.current.vectors.is_empty() {
            self.current.vectors.push(b',');
        }
        self.current.vectors.extend_from_slice(&one);
        self.current.n_vectors += 1;
        Ok(ready)
    }

    /// The last, partial batch, if any.
    pub fn finish(self) -> Option<UpsertBatch> {
        (self.current.n_vectors > 0).then_some(self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_means_https_and_urls_are_kept() {
        assert_eq!(
            base_url("idx-1.svc.pinecone.io"),
            "https://idx-1.svc.pinecone.io"
        );
        assert_eq!(base_url("http://127.0.0.1:9000/"), "http://127.0.0.1:9000");
    }

    #[test]
    fn key_is_redacted_in_debug() {
        let settings = PineconeSettings::new("h", "", ApiKey::new("pcsk_secret"));
        assert!(!format!("{settings:?}").contains("pcsk_secret"));
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "pcsk_x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = ApiKey::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ApiKey::load(Some(&path)).unwrap().0, "pcsk_x");
    }

    #[test]
    fn breaker_opens_after_threshold_and_half_opens_after_cooldown() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(breaker.admit(t0).is_ok());
        breaker.record(false, t0);
        assert!(breaker.admit(t0).is_ok());
        breaker.record(false, t0);
        assert!(matches!(breaker.admit(t0), Err(PineconeError::CircuitOpen)));
        let later = t0 + Duration::from_secs(11);
        assert!(breaker.admit(later).is_ok(), "one trial after the cooldown");
        assert!(breaker.admit(later).is_err(), "only one trial at a time");
        breaker.record(true, later);
        assert!(breaker.admit(later).is_ok());
    }

    #[test]
    fn batches_respect_count_and_byte_limits() {
        let n_terms = 2000;
        let mut batcher = UpsertBatcher::new(n_terms, "ns");
        let vector: SparseVector = (0..n_terms as u32).map(|t| (t, 0.123_456_7)).collect();
        let mut batches = Vec::new();
        for i in 0..300 {
            if let Some(batch) = batcher
                .push(&format!("id-{i}"), &vector, &Default::default())
                .unwrap()
            {
                batches.push(batch);
            }
        }
        batches.extend(batcher.finish());
        assert!(batches.len() > 1);
        assert_eq!(batches.iter().map(|b| b.n_vectors).sum::<usize>(), 300);
        for batch in &batches {
            assert!(batch.body("ns").len() <= MAX_UPSERT_BYTES);
            assert!(batch.n_vectors <= MAX_UPSERT_VECTORS);
            let parsed: serde_json::Value = serde_json::from_slice(&batch.body("ns")).unwrap();
            assert_eq!(parsed["vectors"].as_array().unwrap().len(), batch.n_vectors);
        }
    }
}
