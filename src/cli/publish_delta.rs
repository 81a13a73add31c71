//! `deltacache publish-delta`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::pinecone_args::PineconeArgs;
use super::remote_args::RemoteArgs;
use crate::config::ConfigFile;
use crate::delta::publish::{ChangeSource, PublishOptions, PublishProgress, publish_reporting};
use crate::pinecone::PineconeClient;
use crate::pinecone::mirror::publish_and_mirror;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["changes", "diff"]))]
pub(super) struct PublishDeltaArgs {
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    /// A secret key that signs: the targets key and the online (snapshot and timestamp) key,
    /// or one key the root lists for all three. Repeat for each; every key signs the roles
    /// the newest root lists it for, and keys it does not authorise are refused before
    /// anything is written.
    #[arg(long = "key", value_name = "KEYFILE")]
    keys: Vec<PathBuf>,
    /// The targets key, when it is kept apart from the online key.
    #[arg(long, value_name = "KEYFILE")]
    targets_key: Option<PathBuf>,
    /// The online key that signs snapshot and timestamp, when kept apart.
    #[arg(long, value_name = "KEYFILE")]
    timestamp_key: Option<PathBuf>,
    /// The root the publisher trusts (the one instances bake) [default: the store's first
    /// root].
    #[arg(long, env = "DELTACACHE_TRUSTED_ROOT", value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    /// The bundle the chain starts from (its dataset, model and ids).
    #[arg(long, value_name = "DIR")]
    bundle: PathBuf,
    /// Changes file: JSONL lines {"op":"put","item":{...}} and {"op":"delete","id":"..."}.
    /// Within one file the last operation on an id wins.
    #[arg(long, value_name = "FILE")]
    changes: Option<PathBuf>,
    /// Publish the difference between two JSONL snapshots of the catalogue (streamed: memory
    /// holds one digest per id of OLD).
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    diff: Option<Vec<PathBuf>>,
    /// How long the new timestamp stays valid, e.g. 7d, 12h (at most 30 days): instances
    /// refuse the repository once it expires, so publish or `repo refresh` within it.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    expires_in: Duration,
    /// Show what would change and publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Publish even when the delta fails the fleet policy's count checks (it removes more
    /// than max_removed_percent of the items, or leaves fewer than min_items); instances'
    /// health gates still check it.
    #[arg(long)]
    force: bool,
    /// Also mirror the delta to a Pinecone index, after the head moved: delete the deleted
    /// ids, then upsert the put items' vectors (see the README, "Pinecone users").
    #[arg(long)]
    pinecone: bool,
    /// Folder where the publisher keeps the chain's tip (the ids live after the newest
    /// delta) between runs, so a publish reads only the deltas published since the last one
    /// instead of the whole chain [default: $XDG_CACHE_HOME/deltacache/tips, else
    /// ~/.cache/deltacache/tips].
    #[arg(long, env = "DELTACACHE_TIP_CACHE", value_name = "DIR")]
    tip_cache: Option<PathBuf>,
    /// Read the tip from the chain, and keep nothing (wins over --tip-cache).
    #[arg(long)]
    no_tip_cache: bool,
    #[command(flatten)]
    pinecone_args: PineconeArgs,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn run(args: PublishDeltaArgs) -> anyhow::Result<()> {
    let changes = match (args.changes, args.diff) {
        (Some(path), None) => ChangeSource::Changes(path),
        (None, Some(paths)) => {
            let [old, new]: [PathBuf; 2] = paths
                .try_into()
                .map_err(|_| anyhow::anyhow!("--diff takes OLD.jsonl NEW.jsonl"))?;
            ChangeSource::Diff { old, new }
        }
        _ => anyhow::bail!("pass exactly one of --changes FILE or --diff OLD NEW"),
    };
    let client = match args.pinecone && !args.dry_run {
        true => Some(PineconeClient::new(
            args.pinecone_args.settings(&ConfigFile::default())?,
        )?),
        false => None,
    };
    let keys: Vec<PathBuf> = args
        .keys
        .into_iter()
        .chain(args.targets_key)
        .chain(args.timestamp_key)
        .collect();
    if keys.is_empty() {
        anyhow::bail!("no signing key: pass --key KEYFILE (or --targets-key and --timestamp-key)");
    }
    let options = PublishOptions {
        store: args.store,
        keys,
        trusted_root: args.trusted_root,
        bundle: args.bundle,
        changes,
        expires_in: args.expires_in,
        dry_run: args.dry_run,
        force: args.force,
        remote: args.remote.settings(),
        tip_cache: crate::delta::tip_cache::chosen(args.tip_cache.as_deref(), args.no_tip_cache),
    };
    let runtime = super::runtime()?;
    let progress = PublishProgress::default();
    let (report, mirrored) = match &client {
        Some(client) => {
            let (report, mirrored) = runtime.block_on(until_interrupted(
                publish_and_mirror(&options, client, &progress),
                &progress,
            ))?;
            (report, Some((client, mirrored)))
        }
        None => (
            runtime.block_on(until_interrupted(
                publish_reporting(&options, &progress),
                &progress,
            ))?,
            None,
        ),
    };
    print_report(&report);
    if let Some((client, mirrored)) = mirrored {
        println!(
            "pinecone {}: {} ids deleted, {} vectors upserted in {} requests",
            client.describe(),
            report.deleted_ids.len(),
            mirrored.n_sent,
            mirrored.n_requests
        );
    }
    Ok(())
}

/// Runs `publish` until it ends or Ctrl-C (SIGINT) interrupts it; an interruption is an
/// error that says what was and was not published.
async fn until_interrupted<T>(
    publish: impl std::future::Future<Output = anyhow::Result<T>>,
    progress: &PublishProgress,
) -> anyhow::Result<T> {
    tokio::select! {
        // First: the signal handler is in place before the publish writes anything.
        biased;
        signal = tokio::signal::ctrl_c() => {
            signal.map_err(|e| anyhow::anyhow!("listen for Ctrl-C: {e}"))?;
            Err(anyhow::anyhow!(progress.interrupted()))
        }
        result = publish => result,
    }
}

/// What a publish did, for the operator: counts, the count checks, out-of-vocabulary words.
fn print_report(report: &crate::delta::publish::PublishReport) {
    let counts = format!(
        "{} adds, {} updates, {} deletes, {} unchanged, {} unknown deletes dropped, {} bytes",
        report.adds,
        report.updates,
        report.deletes,
        report.unchanged,
        report.unknown_deletes,
        report.bytes
    );
    if report.nothing_to_publish {
        println!(
            "nothing to publish: the changes leave the catalogue as it is ({counts}); the repository is unchanged, seq {} stays the head{}",
            report.seq - 1,
            if report.dry_run { " (dry run)" } else { "" }
        );
        return;
    }
    if report.dry_run {
        println!("dry run: would publish seq {}: {counts}", report.seq);
    } else {
        println!("published seq {} ({}): {counts}", report.seq, report.digest);
    }
    println!(
        "items: {} before, {} after",
        report.items_before, report.items_after
    );
    match report.tip_cached_seq {
        Some(seq) => println!(
            "tip: from the tip cache at seq {seq}, {} newer deltas read",
            report.deltas_read
        ),
        None => println!("tip: {} deltas read from the bundle on", report.deltas_read),
    }
    if let Some(check) = &report.count_check {
        println!(
            "warning: fails the fleet policy's count checks ({check}){}",
            if report.dry_run {
                "; publishing it needs --force"
            } else {
                "; published with --force"
            }
        );
    }
    if report.oov_items > 0 {
        let shown: Vec<&str> = report
            .oov_terms
            .iter()
            .take(10)
            .map(String::as_str)
            .collect();
        println!(
            "out of vocabulary: {} of the added or changed items carry {} words the model does not know ({}{}): search cannot find them by those words until the model is rolled over (`deltacache compact --refit --publish`, README \"Model rollover\")",
            report.oov_items,
            report.oov_terms.len(),
            shown.join(", "),
            if report.oov_terms.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
}
