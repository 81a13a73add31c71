//! `deltacache sync`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::remote_args::RemoteArgs;
use crate::sync::SyncOptions;
use crate::sync::ops::sync_once;

#[derive(Debug, Args)]
pub(super) struct SyncArgs {
    /// The bundle (read only; never opened in place).
    #[arg(long, env = "DELTACACHE_BUNDLE", value_name = "DIR")]
    bundle: PathBuf,
    /// The writable state dir (must not be in use by a running serve).
    #[arg(long, env = "DELTACACHE_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    #[command(flatten)]
    trust: super::TrustedRootArgs,
    /// The most memory one delta's decoded records may take, in bytes (deltas are applied
    /// one at a time).
    #[arg(long, env = "DELTACACHE_APPLY_MEMORY_BUDGET", default_value_t = crate::sync::DEFAULT_MEMORY_BUDGET_BYTES, value_name = "BYTES")]
    apply_memory_budget: u64,
    /// This instance's wave seed, 0..2048 [default: derived from /etc/machine-id].
    #[arg(long, env = "DELTACACHE_INSTANCE_SEED", value_name = "N")]
    instance_seed: Option<u32>,
    /// A JSON list of canary queries every new version must answer before it is committed
    /// (besides the fleet policy's); README "Fleet control".
    #[arg(long, env = "DELTACACHE_CANARIES", value_name = "FILE")]
    canaries: Option<PathBuf>,
    /// A chain longer than this many deltas (or larger in bytes than the newest snapshot)
    /// is caught up by downloading that snapshot; 0 never uses snapshots.
    #[arg(long, env = "DELTACACHE_SNAPSHOT_AFTER_DELTAS", default_value_t = crate::sync::DEFAULT_SNAPSHOT_AFTER_DELTAS, value_name = "N")]
    snapshot_after_deltas: u64,
    /// The largest catch-up snapshot downloaded; a larger one is skipped and the chain
    /// replayed.
    #[arg(long, env = "DELTACACHE_MAX_SNAPSHOT_BYTES", default_value_t = crate::sync::DEFAULT_MAX_SNAPSHOT_BYTES, value_name = "BYTES")]
    max_snapshot_bytes: u64,
    /// The size of each ranged read of a snapshot download (tests make it small).
    #[arg(long, hide = true, default_value_t = crate::sync::DEFAULT_SNAPSHOT_CHUNK_BYTES, value_name = "BYTES")]
    snapshot_chunk_bytes: u64,
    /// How long the whole sync may take: past it, the apply in progress is cancelled at its
    /// next step (nothing half-made is kept) and the command exits non-zero, e.g. 10m.
    #[arg(long, env = "DELTACACHE_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    deadline: Duration,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn run(args: SyncArgs) -> anyhow::Result<()> {
    let mut options = SyncOptions::new(args.store, args.trust.path()?);
    options.remote = args.remote.settings();
    options.memory_budget_bytes = args.apply_memory_budget;
    options.instance_seed = args.instance_seed;
    options.canaries = args.canaries;
    options.snapshot_after_deltas = args.snapshot_after_deltas;
    options.max_snapshot_bytes = args.max_snapshot_bytes;
    options.snapshot_chunk_bytes = args.snapshot_chunk_bytes;
    let runtime = super::runtime()?;
    let outcome = runtime.block_on(sync_once(
        &args.bundle,
        &args.state_dir,
        options,
        args.deadline,
    ))?;
    println!("{}", outcome.describe());
    Ok(())
}
