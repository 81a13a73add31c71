//! `deltacache serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::pinecone_args::PineconeArgs;
use super::remote_args::RemoteArgs;
use crate::catalog::backend::VectorBackendKind;
use crate::config::{ConfigFile, HumanDuration};
use crate::http::{HttpLimits, SearchLimits};
use crate::server::{
    self, DEFAULT_SYNC_DEADLINE, FollowOptions, MIN_FOLLOW_INTERVAL, OnSyncFailure, ServeOptions,
};
use crate::sync::SyncOptions;
use crate::telemetry::LogFormat;

/// Default listen address.
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Args)]
#[command(
    override_usage = "deltacache serve --bundle <DIR> --state-dir <DIR> [OPTIONS]\n       deltacache serve --config <FILE> [OPTIONS]"
)]
pub(super) struct ServeArgs {
    /// The bundle written by build-base (read only; never opened in place).
    #[arg(long, env = "DELTACACHE_BUNDLE", value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// Writable directory for copy-on-write versions; best on the bundle's filesystem so
    /// tables are shared by hard link.
    #[arg(long, env = "DELTACACHE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "DELTACACHE_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// TOML config file; its keys are these flags' names (flags and DELTACACHE_* variables
    /// win over it).
    #[arg(long, env = "DELTACACHE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Number of LevelDB read handles, each on its own clone [default: number of CPUs].
    #[arg(long, env = "DELTACACHE_READER_SHARDS", value_name = "N")]
    reader_shards: Option<usize>,
    /// Bytes of item JSON each served version keeps in memory in front of its LevelDB
    /// reads; carried over a swap but for the ids the deltas touched; 0 for none
    /// [default: 268435456].
    #[arg(long, env = "DELTACACHE_CACHE_BYTES", value_name = "BYTES")]
    cache_bytes: Option<u64>,
    /// Seconds in-flight requests may take to finish after SIGTERM [default: 10].
    #[arg(long, env = "DELTACACHE_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    drain_timeout_secs: Option<u64>,
    /// Delta store to sync from at boot and follow: file:///dir or s3://bucket/prefix.
    /// Without it, the bundle alone is served.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: Option<String>,
    /// The trusted TUF root (the root.json the image bakes); required with --store.
    #[arg(long, env = "DELTACACHE_TRUSTED_ROOT", value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    /// No longer read: instances trust a TUF root. Refused with what to pass instead.
    #[arg(long, hide = true, value_name = "FILE")]
    trusted_keys: Option<PathBuf>,
    /// How often to poll the head for new deltas (SIGHUP syncs now), e.g. 60s, at least 1s
    /// [default: 60s]
    #[arg(long, env = "DELTACACHE_FOLLOW_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    follow_interval: Option<Duration>,
    /// When the boot-time sync fails: serve-stale (serve the newest good local version,
    /// report it stale, keep retrying) or fail (exit non-zero) [default: serve-stale].
    #[arg(
        long,
        env = "DELTACACHE_ON_SYNC_FAILURE",
        value_enum,
        value_name = "POLICY"
    )]
    on_sync_failure: Option<OnSyncFailure>,
    /// How long the boot-time sync may take before the policy applies [default: 120s].
    #[arg(long, env = "DELTACACHE_BOOT_DEADLINE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    boot_deadline: Option<Duration>,
    /// Committed versions kept in the state dir [default: 3].
    #[arg(long, env = "DELTACACHE_KEEP_VERSIONS", value_name = "N")]
    keep_versions: Option<usize>,
    /// How long a sync attempt after boot may take before it is cancelled (nothing is
    /// committed), reported stale and retried, e.g. 5m [default: 5m].
    #[arg(long, env = "DELTACACHE_SYNC_DEADLINE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    sync_deadline: Option<Duration>,
    /// The most memory one delta's decoded records may take, in bytes; deltas are applied
    /// one at a time, so this bounds what a sync holds [default: 1073741824].
    #[arg(long, env = "DELTACACHE_APPLY_MEMORY_BUDGET", value_name = "BYTES")]
    apply_memory_budget: Option<u64>,
    /// This instance's wave seed, 0..2048: which rollout wave it is in [default: derived
    /// from /etc/machine-id].
    #[arg(long, env = "DELTACACHE_INSTANCE_SEED", value_name = "N")]
    instance_seed: Option<u32>,
    /// A JSON list of canary queries every new version must answer before it is served
    /// (besides the fleet policy's); README "Fleet control" [default: none].
    #[arg(long, env = "DELTACACHE_CANARIES", value_name = "FILE")]
    canaries: Option<PathBuf>,
    /// A chain longer than this many deltas (or larger in bytes than the newest snapshot)
    /// is caught up by downloading that snapshot; 0 never uses snapshots [default: 32].
    #[arg(long, env = "DELTACACHE_SNAPSHOT_AFTER_DELTAS", value_name = "N")]
    snapshot_after_deltas: Option<u64>,
    /// The largest catch-up snapshot downloaded; a larger one is skipped and the chain
    /// replayed [default: 17179869184].
    #[arg(long, env = "DELTACACHE_MAX_SNAPSHOT_BYTES", value_name = "BYTES")]
    max_snapshot_bytes: Option<u64>,
    /// Show file paths, the delta store URL and error text in /status (keep off when the
    /// port faces untrusted clients; the control socket always shows them) [default: false].
    #[arg(long, env = "DELTACACHE_STATUS_DETAIL", value_name = "BOOL")]
    status_detail: Option<bool>,
    /// Where /search ranks: local (the version's own index) or pinecone [default: local].
    #[arg(
        long,
        env = "DELTACACHE_VECTOR_BACKEND",
        value_enum,
        value_name = "BACKEND"
    )]
    vector_backend: Option<VectorBackendKind>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    pinecone: PineconeArgs,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Connection, request and search limits.
#[derive(Debug, Args)]
struct LimitArgs {
    /// A second address serving only /livez, /readyz, /metrics and /status, which stay
    /// answerable there whatever load the main port has [default: none].
    #[arg(long, env = "DELTACACHE_PROBE_LISTEN", value_name = "ADDR")]
    probe_listen: Option<String>,
    /// Time a client has to send a request's headers, counted from when its connection is
    /// idle; also the keep-alive idle timeout. Keep it above a load balancer's idle timeout
    /// [default: 65s].
    #[arg(long, env = "DELTACACHE_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    header_read_timeout: Option<Duration>,
    /// Longest pause between two pieces of a request body (408 after it) [default: 10s].
    #[arg(long, env = "DELTACACHE_BODY_READ_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    body_read_timeout: Option<Duration>,
    /// Deadline of a whole request, its body included (408 after it) [default: 30s].
    #[arg(long, env = "DELTACACHE_REQUEST_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    request_timeout: Option<Duration>,
    /// Connections served at once on the main port; up to 64 more get one answer (probes, or
    /// 503 with Retry-After), beyond that they are closed [default: 1024].
    #[arg(long, env = "DELTACACHE_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Searches running at once [default: number of CPUs].
    #[arg(long, env = "DELTACACHE_SEARCH_THREADS", value_name = "N")]
    search_threads: Option<usize>,
    /// Searches waiting for a thread; beyond, 503 with Retry-After at once [default: 8 per CPU].
    #[arg(long, env = "DELTACACHE_SEARCH_QUEUE", value_name = "N")]
    search_queue: Option<usize>,
    /// The most distinct known terms one query may hold (422 beyond) [default: 256].
    #[arg(long, env = "DELTACACHE_MAX_QUERY_TERMS", value_name = "N")]
    max_query_terms: Option<usize>,
}

impl LimitArgs {
    /// The limits, flags and environment first, then the config file, then the defaults.
    fn resolve(
        &self,
        file: &ConfigFile,
    ) -> anyhow::Result<(HttpLimits, SearchLimits, Option<SocketAddr>)> {
        let mut http = HttpLimits::default();
        let duration =
            |flag: Option<Duration>, key: Option<HumanDuration>| flag.or(key.map(|d| d.0));
        if let Some(d) = duration(self.header_read_timeout, file.header_read_timeout) {
            http.header_read_timeout = d;
        }
        if let Some(d) = duration(self.body_read_timeout, file.body_read_timeout) {
            http.body_read_timeout = d;
        }
        if let Some(d) = duration(self.request_timeout, file.request_timeout) {
            http.request_timeout = d;
        }
        if let Some(n) = self.max_connections.or(file.max_connections) {
            anyhow::ensure!(
                n >= 1,
                "--max-connections (max-connections) must be at least 1"
            );
            http.max_connections = n;
        }
        let mut search = SearchLimits::default();
        if let Some(n) = self.search_threads.or(file.search_threads) {
            search.threads = n.max(1);
        }
        if let Some(n) = self.search_queue.or(file.search_queue) {
            search.queue = n;
        }
        if let Some(n) = self.max_query_terms.or(file.max_query_terms) {
            search.max_query_terms = n.max(1);
        }
        let probe_listen = match self.probe_listen.clone().or(file.probe_listen.clone()) {
            Some(text) => Some(text.parse().with_context(|| {
                format!("probe listen address {text:?} is not IP:PORT (for example 127.0.0.1:9090)")
            })?),
            None => None,
        };
        Ok((http, search, probe_listen))
    }
}

impl ServeArgs {
    /// The config file named by `--config`, or an empty one.
    fn config_file(&self) -> anyhow::Result<ConfigFile> {
        match &self.config {
            Some(path) => ConfigFile::load(path),
            None => Ok(ConfigFile::default()),
        }
    }

    fn into_options(self, file: ConfigFile) -> anyhow::Result<ServeOptions> {
        let follow = self.follow_options(&file)?;
        let (http, search, probe_listen) = self.limits.resolve(&file)?;
        let pinecone = match self
            .vector_backend
            .or(file.vector_backend)
            .unwrap_or_default()
        {
            VectorBackendKind::Local => None,
            VectorBackendKind::Pinecone => Some(self.pinecone.settings(&file)?),
        };
        let bundle = self.bundle.or(file.bundle).context(
            "no bundle: pass --bundle DIR (or set DELTACACHE_BUNDLE, or `bundle` in the config file)",
        )?;
        let state_dir = self.state_dir.or(file.state_dir).context(
            "no state dir: pass --state-dir DIR (or set DELTACACHE_STATE_DIR, or `state-dir` in the config file)",
        )?;
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!("listen address {listen:?} is not IP:PORT (for example 127.0.0.1:8080)")
        })?;
        crate::catalog::cache::set_budget(
            self.cache_bytes
                .or(file.cache_bytes)
                .unwrap_or(crate::catalog::cache::DEFAULT_CACHE_BYTES),
        );
        let reader_shards = self
            .reader_shards
            .or(file.reader_shards)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .clamp(1, 64);
        let drain = self
            .drain_timeout_secs
            .or(file.drain_timeout_secs)
            .unwrap_or(10);
        Ok(ServeOptions {
            bundle,
            state_dir,
            listen,
            reader_shards,
            drain_timeout: Duration::from_secs(drain),
            follow,
            pinecone,
            status_detail: self.status_detail.or(file.status_detail).unwrap_or(false),
            http,
            probe_listen,
            search,
        })
    }

    /// The follow interval from the flag, the environment or the config file, refused under
    /// [`MIN_FOLLOW_INTERVAL`] with where it was set: each interval costs every instance a
    /// request to the store (on S3, a bill).
    fn follow_interval(&self, file: &ConfigFile) -> anyhow::Result<Duration> {
        let (interval, source) = match (self.follow_interval, file.follow_interval) {
            (Some(interval), _) => {
                let on_command_line = std::env::args()
                    .any(|a| a == "--follow-interval" || a.starts_with("--follow-interval="));
                let source = match on_command_line {
                    true => "--follow-interval".to_owned(),
                    false => "DELTACACHE_FOLLOW_INTERVAL".to_owned(),
                };
                (interval, source)
            }
            (None, Some(interval)) => (
                interval.0,
                match &self.config {
                    Some(path) => format!("`follow-interval` in {}", path.display()),
                    None => "`follow-interval` in the config file".to_owned(),
                },
            ),
            (None, None) => return Ok(Duration::from_secs(60)),
        };
        if interval < MIN_FOLLOW_INTERVAL {
            anyhow::bail!(
                "{source} is {}, under the floor of {}: every interval each instance asks the delta store for its timestamp (on S3, a billed request), so set it to {} or more (default 60s); a file:// store is watched and SIGHUP syncs at once, so a short interval is never needed for speed",
                humantime::format_duration(interval),
                humantime::format_duration(MIN_FOLLOW_INTERVAL),
                humantime::format_duration(MIN_FOLLOW_INTERVAL),
            );
        }
        Ok(interval)
    }

    /// Following a delta store, when one is named.
    fn follow_options(&self, file: &ConfigFile) -> anyhow::Result<Option<FollowOptions>> {
        let Some(store) = self.store.clone().or(file.store.clone()) else {
            return Ok(None);
        };
        if let Some(keys) = file.trusted_keys.clone() {
            anyhow::bail!(
                "`trusted-keys = {:?}` in the config file is no longer read: instances trust a TUF root; set `trusted-root` to the repository's root.json (README \"Trust\")",
                keys.display().to_string()
            );
        }
        let trusted_root = super::trusted_root(
            self.trusted_root.clone().or(file.trusted_root.clone()),
            self.trusted_keys.clone(),
        )
        .context(
            "--store needs --trusted-root FILE (or DELTACACHE_TRUSTED_ROOT, or `trusted-root` in the config file)",
        )?;
        let mut sync = SyncOptions::new(store, trusted_root);
        sync.remote = self.remote.settings_with(file);
        if let Some(keep) = self.keep_versions.or(file.keep_versions) {
            sync.keep_versions = keep.max(1);
        }
        if let Some(budget) = self.apply_memory_budget.or(file.apply_memory_budget) {
            sync.memory_budget_bytes = budget;
        }
        sync.instance_seed = self.instance_seed.or(file.instance_seed);
        sync.canaries = self.canaries.clone().or(file.canaries.clone());
        if let Some(n) = self.snapshot_after_deltas.or(file.snapshot_after_deltas) {
            sync.snapshot_after_deltas = n;
        }
        if let Some(cap) = self.max_snapshot_bytes.or(file.max_snapshot_bytes) {
            sync.max_snapshot_bytes = cap;
        }
        Ok(Some(FollowOptions {
            sync,
            follow_interval: self.follow_interval(file)?,
            on_sync_failure: self
                .on_sync_failure
                .or(file.on_sync_failure)
                .unwrap_or(OnSyncFailure::ServeStale),
            boot_deadline: self
                .boot_deadline
                .or(file.boot_deadline.map(|d| d.0))
                .unwrap_or(Duration::from_secs(120)),
            sync_deadline: self
                .sync_deadline
                .or(file.sync_deadline.map(|d| d.0))
                .unwrap_or(DEFAULT_SYNC_DEADLINE),
        }))
    }
}

/// Serves; logs in `log_format` (`--log-format` or `DELTACACHE_LOG_FORMAT`), else in the
/// config file's `log-format`, else as text.
pub(super) fn run(args: ServeArgs, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let file = args.config_file();
    let format = log_format
        .or(file.as_ref().ok().and_then(|file| file.log_format))
        .unwrap_or_default();
    crate::telemetry::init_logging(format);
    let options = args.into_options(file?)?;
    let runtime = super::runtime()?;
    runtime.block_on(server::run(
        options,
        crate::http::shutdown_signal(),
        |addr, probes| {
            // Before the main line: whoever waits for that line then knows both.
            if let Some(probes) = probes {
                println!("deltacache: probes on http://{probes}");
            }
            println!("deltacache: listening on http://{addr}");
        },
    ))
}
