//! `deltacache status`, `export`, `rollback` and `compact`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::remote_args::RemoteArgs;
use crate::server::control::{self, ControlRequest};
use crate::sync::SyncOptions;
use crate::sync::ops;

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// The state dir to describe (read only; fine beside a running daemon).
    #[arg(long, env = "DELTACACHE_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(super) fn status(args: StatusArgs) -> anyhow::Result<()> {
    let report = ops::state_report(&args.state_dir)?;
    // A running daemon adds what it serves (through its control socket).
    let daemon = super::runtime()?
        .block_on(control::request(&args.state_dir, &ControlRequest::Status))?
        .and_then(|answer| answer.status);
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        json["daemon"] = daemon.unwrap_or(serde_json::Value::Null);
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    print!("{}", describe_status(&report, daemon.as_ref()));
    Ok(())
}

/// `status` for people: one fact a line, times as RFC 3339 with their age, and the running
/// daemon's last result and last error on lines of their own.
fn describe_status(report: &ops::StateReport, daemon: Option<&serde_json::Value>) -> String {
    use std::fmt::Write;
    let time = |secs: Option<u64>, none: &str| {
        secs.map_or_else(|| none.to_owned(), crate::clock::describe_secs)
    };
    let seq = |seq: Option<u64>| seq.map_or("none".into(), |s| s.to_string());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "current: {}",
        report.current.as_deref().unwrap_or("none")
    );
    let _ = writeln!(out, "applied seq: {}", seq(report.applied_seq));
    let _ = writeln!(
        out,
        "highest head accepted: {}{}",
        seq(report.head_seq_seen),
        report
            .head_issued_at
            .map(|t| format!(", issued {}", crate::clock::describe_secs(t)))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "last sync that applied deltas: {}",
        time(report.last_sync_at, "never")
    );
    if let Some(pinned) = &report.pinned {
        let _ = writeln!(out, "pinned: {pinned} (rollback --unpin to follow again)");
    }
    let _ = writeln!(out, "versions:");
    for version in &report.versions {
        let _ = writeln!(
            out,
            "  {}  seq {}  {} items  made {}",
            version.name,
            version.seq,
            version.n_items,
            time(version.created_at, "at an unknown time")
        );
    }
    let Some(daemon) = daemon else {
        let _ = writeln!(
            out,
            "running daemon: none (the last sync result and error are known to a running daemon only)"
        );
        return out;
    };
    let sync = &daemon["sync"];
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "none".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let _ = writeln!(out, "running daemon: serving seq {}", text(&daemon["seq"]));
    let _ = writeln!(
        out,
        "  last sync attempt: {}",
        time(sync["last_sync_at"].as_u64(), "none yet")
    );
    let _ = writeln!(out, "  last result: {}", text(&sync["last_result"]));
    let _ = writeln!(out, "  last error: {}", text(&sync["last_error"]));
    let _ = writeln!(out, "  stale: {}", text(&sync["stale"]));
    let _ = writeln!(out, "  versions kept: {}", text(&sync["versions_kept"]));
    out
}

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    /// The state dir whose current version to export.
    #[arg(long, env = "DELTACACHE_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// Output JSONL file [default: standard output].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(super) fn export(args: ExportArgs) -> anyhow::Result<()> {
    let n_items = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("create {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let n = ops::export(&args.state_dir, &mut out)?;
            out.flush()?;
            n
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = ops::export(&args.state_dir, &mut out)?;
            out.flush()?;
            n
        }
    };
    eprintln!("exported {n_items} items");
    Ok(())
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["to", "unpin"]))]
pub(super) struct RollbackArgs {
    /// The state dir.
    #[arg(long, env = "DELTACACHE_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// Make the kept version with this seq current and pin it.
    #[arg(long, value_name = "SEQ")]
    to: Option<u64>,
    /// Remove the pin so following moves on again.
    #[arg(long)]
    unpin: bool,
}

pub(super) fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let request = match args.to {
        Some(to) if !args.unpin => ControlRequest::Rollback { to },
        _ => ControlRequest::Unpin,
    };
    // A running daemon does it at once, under its own lock; otherwise the state dir is
    // changed directly, under the state dir's lock.
    let answer = super::runtime()?.block_on(control::request(&args.state_dir, &request))?;
    match answer {
        Some(answer) if answer.ok => println!("{}", answer.message),
        Some(answer) => anyhow::bail!("the running daemon refused: {}", answer.message),
        None => println!(
            "{}",
            ops::rollback(&args.state_dir, if args.unpin { None } else { args.to })?
        ),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(super) struct CompactArgs {
    /// The bundle the chain starts from.
    #[arg(long, value_name = "DIR")]
    bundle: PathBuf,
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    #[command(flatten)]
    trust: super::TrustedRootArgs,
    /// The new bundle directory (must not exist).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Fit a new model on the compacted catalogue (new fingerprint: deltas built for the old
    /// model are then refused; publishers must publish against the new bundle).
    #[arg(long)]
    refit: bool,
    /// Also publish the new bundle to the store as the catch-up snapshot of its seq: an
    /// instance far behind downloads it instead of replaying the chain. With --refit, a
    /// model rollover: every instance moves to the new model, and later deltas are built for
    /// it.
    #[arg(long, requires = "keys")]
    publish: bool,
    /// With --publish: a secret key that signs (the targets key and the online key, or one
    /// key the root lists for all three roles). Repeat for each.
    #[arg(long = "key", value_name = "KEYFILE")]
    keys: Vec<PathBuf>,
    /// With --publish: how long the new timestamp stays valid, e.g. 7d (at most 30 days).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    expires_in: std::time::Duration,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn compact(args: CompactArgs) -> anyhow::Result<()> {
    let mut options = SyncOptions::new(args.store, args.trust.path()?);
    options.remote = args.remote.settings();
    let at = crate::delta::fleet::FleetStore {
        store: options.store.clone(),
        trusted_root: Some(options.trusted_root.clone()),
        remote: options.remote.clone(),
    };
    let runtime = super::runtime()?;
    let report = runtime.block_on(ops::compact(&args.bundle, options, &args.out, args.refit))?;
    println!(
        "compacted bundle {}: dataset {}, seq {}, {} items, model {}",
        args.out.display(),
        report.manifest.dataset,
        report.manifest.seq,
        report.manifest.n_items,
        &report.manifest.model_fingerprint[..16]
    );
    if args.publish {
        let published = runtime.block_on(crate::delta::snapshot::publish(
            &at,
            &args.keys,
            &args.out,
            args.expires_in,
        ))?;
        println!(
            "published snapshot {} ({} bytes) to {}: instances more than the configured number of deltas behind (snapshot-after-deltas) catch up from it",
            published.name, published.bytes, at.store
        );
    }
    Ok(())
}
