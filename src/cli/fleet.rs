//! `deltacache fleet set|show`: the signed fleet policy.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::remote_args::RemoteArgs;
use crate::delta::fleet::{self, FleetStore, PolicyChange, Wave, parse_wave};

#[derive(Debug, Subcommand)]
pub(super) enum FleetCommand {
    /// Change the fleet policy and publish it (every instance reads it on its next poll).
    Set(FleetSetArgs),
    /// Show the fleet policy the repository names.
    Show(FleetShowArgs),
}

/// Where the policy lives.
#[derive(Debug, Args)]
struct StoreArgs {
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    /// The root the publisher trusts (the one instances bake) [default: the store's first
    /// root].
    #[arg(long, env = "DELTACACHE_TRUSTED_ROOT", value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

impl StoreArgs {
    fn fleet_store(&self) -> FleetStore {
        FleetStore {
            store: self.store.clone(),
            trusted_root: self.trusted_root.clone(),
            remote: self.remote.settings(),
        }
    }
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("pinning").args(["pin", "unpin"]))]
#[command(group = clap::ArgGroup::new("halting").args(["halt", "resume"]))]
#[command(group = clap::ArgGroup::new("rollout").args(["wave", "no_waves"]))]
pub(super) struct FleetSetArgs {
    #[command(flatten)]
    at: StoreArgs,
    /// A secret key that signs: the targets key and the online key, or one key the root
    /// lists for all three roles. Repeat for each.
    #[arg(long = "key", value_name = "KEYFILE", required = true)]
    keys: Vec<PathBuf>,
    /// Every instance serves exactly this seq (going back to it if newer) until --unpin.
    #[arg(long, value_name = "SEQ")]
    pin: Option<u64>,
    /// Remove the pin: instances follow again.
    #[arg(long)]
    unpin: bool,
    /// Instances apply nothing newer than what they serve, until --resume.
    #[arg(long)]
    halt: bool,
    /// Lift --halt.
    #[arg(long)]
    resume: bool,
    /// A rollout wave, DURATION=PERCENT: from DURATION after a delta's publication, the
    /// first PERCENT of instances (cumulative, by seed) take it. Repeat, e.g.
    /// --wave 1h=1 --wave 4h=5 --wave 24h=100. Replaces the waves.
    #[arg(long, value_name = "DURATION=PERCENT", value_parser = parse_wave)]
    wave: Vec<Wave>,
    /// Remove the waves: every instance takes each delta at once.
    #[arg(long)]
    no_waves: bool,
    /// A JSON list of canary queries the health gate runs on every new version (replaces
    /// the policy's): [{"query", "top_k", "must_include", "must_exclude", "min_results"}].
    #[arg(long, value_name = "FILE")]
    canaries: Option<PathBuf>,
    /// The largest share of the served version's items one swap may remove, in percent
    /// [default in a new policy: 25].
    #[arg(long, value_name = "PERCENT")]
    max_removed_percent: Option<f64>,
    /// The fewest items a version may hold [default in a new policy: 1].
    #[arg(long, value_name = "N")]
    min_items: Option<u64>,
    /// The slowest median search a new version may answer with, in milliseconds [default in
    /// a new policy: 250].
    #[arg(long, value_name = "MS")]
    latency_budget_ms: Option<f64>,
    /// How long the new timestamp stays valid, e.g. 7d (at most 30 days).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    expires_in: Duration,
}

#[derive(Debug, Args)]
pub(super) struct FleetShowArgs {
    #[command(flatten)]
    at: StoreArgs,
    /// Print the policy as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(command: FleetCommand) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    match command {
        FleetCommand::Set(args) => {
            let change = PolicyChange {
                pin: args.pin,
                unpin: args.unpin,
                halt: match (args.halt, args.resume) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                waves: match (args.wave.is_empty(), args.no_waves) {
                    (false, _) => Some(args.wave),
                    (true, true) => Some(Vec::new()),
                    (true, false) => None,
                },
                canaries: args.canaries,
                max_removed_percent: args.max_removed_percent,
                min_items: args.min_items,
                latency_budget_ms: args.latency_budget_ms,
            };
            let policy = runtime.block_on(fleet::set(
                &args.at.fleet_store(),
                &args.keys,
                &change,
                args.expires_in,
            ))?;
            println!(
                "published the fleet policy to {}:\n{}",
                args.at.store,
                policy.describe()
            );
        }
        FleetCommand::Show(args) => {
            let (policy, seqs) = runtime.block_on(fleet::show(&args.at.fleet_store()))?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&policy.unwrap_or_default())?
                );
            } else {
                match &policy {
                    Some(policy) => println!("{}", policy.describe()),
                    None => println!(
                        "no fleet policy published: instances follow the head with the default gate\n{}",
                        fleet::FleetPolicy::default().describe()
                    ),
                }
                if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
                    println!("published seqs: {first}..={last}");
                }
            }
        }
    }
    Ok(())
}
