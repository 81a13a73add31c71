//! Logging and metrics set-up, done once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How log lines are written on stderr: `--log-format`, `DELTACACHE_LOG_FORMAT`, the config
/// file's `log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One human-readable line per event (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (the event's
    /// fields, `message` among them) and `span` (the current span's name and fields, such as
    /// a request's `request_id`).
    Json,
}

/// The format `init_logging` installed, for [`report_fatal`].
static INSTALLED: OnceLock<LogFormat> = OnceLock::new();

/// Installs the tracing subscriber: `RUST_LOG` filters (default `info`), logs to stderr in
/// `format`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // The innermost span only: the daemon's one span is a request's, so every line of a
        // request carries its fields once, without the span list repeating them.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if installed.is_ok() {
        let _ = INSTALLED.set(format);
    }
}

/// Reports the error that ends the process: a JSON log line when JSON logs were installed
/// (so that stderr holds nothing else) that `RUST_LOG` lets through, else `error: ...` with
/// the whole chain.
pub fn report_fatal(error: &anyhow::Error) {
    if INSTALLED.get() == Some(&LogFormat::Json) && tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{error:#}");
    } else {
        eprintln!("error: {error:#}");
    }
}

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (a `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

/// Every metric the process exports, with its `# HELP` text (README's metrics list names the
/// same; `tests/it/tidy.rs` checks that every name used in `src/` is here and there).
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "deltacache_http_requests_total",
        Kind::Counter,
        "HTTP requests answered, by route pattern, method and status.",
    ),
    (
        "deltacache_http_request_duration_seconds",
        Kind::Histogram,
        "Time to answer an HTTP request, by route pattern.",
    ),
    (
        "deltacache_http_connections_over_limit_total",
        Kind::Counter,
        "Connections beyond max-connections, by listener and action (answered 503 or closed).",
    ),
    (
        "deltacache_http_accept_errors_total",
        Kind::Counter,
        "Errors accepting a connection (file descriptors exhausted, for instance).",
    ),
    (
        "deltacache_items_served_total",
        Kind::Counter,
        "Items returned by /search, /items/{id} and /items/batch.",
    ),
    (
        "deltacache_searches_inline_total",
        Kind::Counter,
        "Light searches answered where they arrived rather than on the search pool.",
    ),
    (
        "deltacache_query_terms_total",
        Kind::Counter,
        "Words of search queries inside (known) and outside (unknown) the model's vocabulary.",
    ),
    (
        "deltacache_join_misses_total",
        Kind::Counter,
        "Ranked ids the metadata db lacked (a search's `missing`; normally 0).",
    ),
    (
        "deltacache_item_cache_hits_total",
        Kind::Counter,
        "Item lookups answered from the item cache.",
    ),
    (
        "deltacache_item_cache_misses_total",
        Kind::Counter,
        "Item lookups that read LevelDB.",
    ),
    (
        "deltacache_item_cache_carried_entries",
        Kind::Gauge,
        "Item cache entries the last swap carried over from the served version.",
    ),
    (
        "deltacache_ready",
        Kind::Gauge,
        "1 once a version is swapped in and /readyz answers 200, else 0.",
    ),
    (
        "deltacache_current_seq",
        Kind::Gauge,
        "Seq of the data version served.",
    ),
    (
        "deltacache_head_seq",
        Kind::Gauge,
        "Newest seq the delta store's verified metadata names.",
    ),
    (
        "deltacache_items",
        Kind::Gauge,
        "Items in the version served.",
    ),
    (
        "deltacache_staleness_seconds",
        Kind::Gauge,
        "Seconds since the newest delta of the served version was published.",
    ),
    (
        "deltacache_stale",
        Kind::Gauge,
        "1 when the last sync failed (the version served may be behind the delta store), else 0.",
    ),
    (
        "deltacache_sync_attempts_total",
        Kind::Counter,
        "Sync attempts that ended, whatever their result.",
    ),
    (
        "deltacache_sync_failures_total",
        Kind::Counter,
        "Sync attempts that failed, by reason.",
    ),
    (
        "deltacache_gate_refusals_total",
        Kind::Counter,
        "New versions the health gate refused, by reason.",
    ),
    (
        "deltacache_deltas_applied_total",
        Kind::Counter,
        "Deltas applied to new versions.",
    ),
    (
        "deltacache_records_applied_total",
        Kind::Counter,
        "Delta records (puts and deletes) applied.",
    ),
    (
        "deltacache_swaps_total",
        Kind::Counter,
        "Versions swapped in for readers.",
    ),
    (
        "deltacache_apply_duration_seconds",
        Kind::Histogram,
        "Time to apply a sync's deltas to a new version, up to its commit.",
    ),
    (
        "deltacache_fetched_bytes_total",
        Kind::Counter,
        "Delta bytes fetched from the delta store.",
    ),
    (
        "deltacache_metadata_reused_total",
        Kind::Counter,
        "Snapshot and targets metadata a poll did not read again.",
    ),
    (
        "deltacache_publish_to_serve_seconds",
        Kind::Histogram,
        "Time from a delta's publication to its swap on this instance.",
    ),
    (
        "deltacache_snapshot_bytes_total",
        Kind::Counter,
        "Catch-up snapshot bytes downloaded.",
    ),
    (
        "deltacache_snapshots_installed_total",
        Kind::Counter,
        "Catch-up snapshots installed as versions.",
    ),
    (
        "deltacache_snapshot_skipped_total",
        Kind::Counter,
        "Catch-up snapshots not used, by reason (too_large, failed).",
    ),
    (
        "deltacache_fleet_wave",
        Kind::Gauge,
        "Wave of the fleet policy this instance is in.",
    ),
    (
        "deltacache_held_back_seq",
        Kind::Gauge,
        "Newest seq the fleet policy holds back from this instance (0: none).",
    ),
    (
        "deltacache_fleet_pin_seq",
        Kind::Gauge,
        "Seq the fleet policy pins (-1: none).",
    ),
    (
        "deltacache_fleet_halted",
        Kind::Gauge,
        "1 when the fleet policy halts updates, else 0.",
    ),
    (
        "deltacache_state_dir_filesystem_available_bytes",
        Kind::Gauge,
        "Bytes available to the daemon on the state dir's filesystem.",
    ),
    (
        "deltacache_state_dir_filesystem_size_bytes",
        Kind::Gauge,
        "Size in bytes of the state dir's filesystem.",
    ),
    (
        "deltacache_vector_backend_failures_total",
        Kind::Counter,
        "Failed calls to the Pinecone backend, by reason.",
    ),
    (
        "deltacache_vector_backend_circuit_open",
        Kind::Gauge,
        "1 while the Pinecone backend's circuit breaker is open, else 0.",
    ),
];

/// Gives every metric of [`METRICS`] its `# HELP` line (the recorder prints it once the
/// metric has a value).
fn describe_metrics() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    &[
                        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                        0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                    ],
                )
                // A histogram, as the README says, so that a fleet's quantiles can be summed
                // over its instances (without buckets it would be a summary: quantiles of
                // one instance over the last minute only). From a watched directory's
                // fraction of a second to waves of a day.
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("deltacache_publish_to_serve_seconds".into()),
                        &[
                            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                            1800.0, 3600.0, 14400.0, 86400.0,
                        ],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => {
                    describe_metrics();
                    // Histograms buffer samples until upkeep drains them; without a scraper
                    // they would grow with every request. Drain them on a timer.
                    let upkeep = handle.clone();
                    std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || loop {
                            std::thread::sleep(std::time::Duration::from_secs(5));
                            upkeep.run_upkeep();
                        })
                        .ok();
                    handle
                }
                Err(error) => {
                    tracing::warn!(%error, "a metrics recorder is already installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    /// `deltacache_publish_to_serve_seconds` is exported as a histogram (buckets that sum over
    /// instances), not as a summary.
    #[test]
    fn publish_to_serve_is_a_histogram() {
        let handle = crate::telemetry::prometheus();
        metrics::histogram!("deltacache_publish_to_serve_seconds").record(0.3);
        let text = handle.render();
        assert!(
            text.contains("# TYPE deltacache_publish_to_serve_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("deltacache_publish_to_serve_seconds_bucket{le=\"0.5\"}"),
            "{text}"
        );
        assert!(
            !text.contains("deltacache_publish_to_serve_seconds{quantile"),
            "{text}"
        );
    }
}
