//! `deltacache verify`.

use std::path::PathBuf;

use clap::Args;

use super::remote_args::RemoteArgs;
use crate::sync::ops::verify_repository;

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    /// The trusted root (the root.json instances bake).
    #[arg(long, env = "DELTACACHE_TRUSTED_ROOT", value_name = "FILE")]
    trusted_root: PathBuf,
    /// Check the chain starts from this bundle [default: from its first delta].
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// The largest delta accepted, in bytes: a larger one is a fault (the default is the
    /// most an instance downloads).
    #[arg(long, default_value_t = crate::sync::DEFAULT_MAX_DELTA_BYTES, value_name = "BYTES")]
    max_delta_bytes: u64,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let report = super::runtime()?.block_on(verify_repository(
        &args.store,
        &args.remote.settings(),
        &args.trusted_root,
        args.bundle.as_deref(),
        args.max_delta_bytes,
    ))?;
    for delta in &report.deltas {
        println!(
            "ok seq {} {} {} bytes, {} records",
            delta.seq, delta.digest, delta.len, delta.n_records
        );
    }
    println!(
        "ok {}: root version {}, targets version {}, timestamp version {} expires {}; {} deltas verified back to seq {} ({})",
        args.store,
        report.root_version,
        report.targets_version,
        report.timestamp_version,
        report
            .timestamp_expires
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| u64::try_from(t.as_second()).ok())
            .map_or_else(
                || report.timestamp_expires.clone(),
                crate::clock::describe_secs
            ),
        report.deltas.len(),
        report.base.0,
        report.base.1
    );
    Ok(())
}
