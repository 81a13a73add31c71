//! `deltacache publish-delta`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::pinecone_args::PineconeArgs;
use super::remote_args::RemoteArgs;
use crate::config::ConfigFile;
use crate::delta::publish::{ChangeSource, PublishOptions, publish};
use crate::pinecone::PineconeClient;
use crate::pinecone::mirror::publish_and_mirror;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["changes", "diff"]))]
pub(super) struct PublishDeltaArgs {
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    /// The publisher's secret key (from keygen).
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// The bundle the chain starts from (its dataset, model and ids).
    #[arg(long, value_name = "DIR")]
    bundle: PathBuf,
    /// Changes file: JSONL lines {"op":"put","item":{...}} and {"op":"delete","id":"..."}.
    /// Within one file the last operation on an id wins.
    #[arg(long, value_name = "CHANGES.jsonl")]
    changes: Option<PathBuf>,
    /// Publish the difference between two JSONL snapshots of the catalogue (streamed: memory
    /// holds one digest per id of OLD).
    #[arg(long, num_args = 2, value_names = ["OLD.jsonl", "NEW.jsonl"])]
    diff: Option<Vec<PathBuf>>,
    /// How long the new head stays valid, e.g. 7d, 12h.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    expires_in: Duration,
    /// Show what would change and publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// More public keys to accept on the current head and chain (the key's own public half is
    /// always accepted), e.g. during key rotation.
    #[arg(long, value_name = "FILE")]
    trusted_keys: Option<PathBuf>,
    /// Also mirror the delta to a Pinecone index, after the head moved: delete the deleted
    /// ids, then upsert the put items' vectors (see the README, "Pinecone users").
    #[arg(long)]
    pinecone: bool,
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
    let options = PublishOptions {
        store: args.store,
        key: args.key,
        trusted_keys: args.trusted_keys,
        bundle: args.bundle,
        changes,
        expires_in: args.expires_in,
        dry_run: args.dry_run,
        remote: args.remote.settings(),
    };
    let runtime = super::runtime()?;
    let (report, mirrored) = match &client {
        Some(client) => {
            let (report, mirrored) = runtime.block_on(publish_and_mirror(&options, client))?;
            (report, Some((client, mirrored)))
        }
        None => (runtime.block_on(publish(&options))?, None),
    };
    let counts = format!(
        "{} adds, {} updates, {} deletes, {} unchanged, {} unknown deletes dropped, {} bytes",
        report.adds,
        report.updates,
        report.deletes,
        report.unchanged,
        report.unknown_deletes,
        report.bytes
    );
    if report.dry_run {
        println!("dry run: would publish seq {}: {counts}", report.seq);
    } else {
        println!("published seq {} ({}): {counts}", report.seq, report.digest);
    }
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
