//! `deltacache serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::ConfigFile;
use crate::server::{self, ServeOptions};

/// Default listen address.
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Args)]
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
    /// Seconds in-flight requests may take to finish after SIGTERM [default: 10].
    #[arg(long, env = "DELTACACHE_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    drain_timeout_secs: Option<u64>,
}

impl ServeArgs {
    fn into_options(self) -> anyhow::Result<ServeOptions> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
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
        })
    }
}

pub(super) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let options = args.into_options()?;
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(server::run(
        options,
        crate::http::shutdown_signal(),
        |addr| println!("deltacache: listening on http://{addr}"),
    ))
}
