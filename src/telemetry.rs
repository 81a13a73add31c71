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
