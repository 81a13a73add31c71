//! `deltacache root ...` and `deltacache repo ...`: the root of trust and the repository.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::remote_args::RemoteArgs;
use crate::delta_store::DeltaStore;
use crate::tuf::ceremony::{
    RootEdit, RootKeys, init_root, parse_roles, rotate_root, sign_root_file,
};
use crate::tuf::keys::load_signers;
use crate::tuf::repo::RepoState;
use crate::tuf::{Expiries, Role};

#[derive(Debug, Subcommand)]
pub(super) enum RootCommand {
    /// Make root version 1: which keys may sign each role, and how many must.
    Init(RootInitArgs),
    /// Make root version N+1 from N: add, remove or replace keys, change thresholds.
    Rotate(RootRotateArgs),
    /// Add signatures to a root file (key holders sign in turn).
    Sign(RootSignArgs),
    /// Publish root N+1 to a delta store: instances rotate to it at their next sync.
    Publish(RootPublishArgs),
}

#[derive(Debug, Args)]
pub(super) struct RootInitArgs {
    /// The root file to write (must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// A root key (public `.pub` file; offline keys). Repeat for each.
    #[arg(long = "root-key", value_name = "PUB", required = true)]
    root_keys: Vec<PathBuf>,
    /// How many root keys must sign a root [default: 2 with 3 or more keys, else 1].
    #[arg(long, value_name = "N")]
    root_threshold: Option<u64>,
    /// The publisher's targets key (public file). Repeat for several.
    #[arg(long = "targets-key", value_name = "PUB", required = true)]
    targets_keys: Vec<PathBuf>,
    /// How many targets keys must sign.
    #[arg(long, default_value_t = 1, value_name = "N")]
    targets_threshold: u64,
    /// The online key that signs snapshot and timestamp metadata [default: the targets key].
    #[arg(long = "online-key", value_name = "PUB")]
    online_keys: Vec<PathBuf>,
    /// How long the root stays valid, e.g. 365d (at most 5 years).
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    expires_in: Duration,
    /// Secret root keys to sign with now (others sign later with `root sign`).
    #[arg(long = "sign-with", value_name = "KEYFILE")]
    sign_with: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct RootRotateArgs {
    /// Root version N.
    #[arg(long, value_name = "FILE")]
    previous: PathBuf,
    /// Root version N+1, to write (must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Add a key to a role: ROLE=PUBFILE (roles: root, targets, snapshot, timestamp, online).
    #[arg(long = "add-key", value_name = "ROLE=PUB")]
    add_keys: Vec<String>,
    /// Remove a key from a role: ROLE=KEYID or ROLE=PUBFILE.
    #[arg(long = "remove-key", value_name = "ROLE=KEY")]
    remove_keys: Vec<String>,
    /// Set a role's threshold: ROLE=N.
    #[arg(long = "threshold", value_name = "ROLE=N")]
    thresholds: Vec<String>,
    /// How long the new root stays valid.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    expires_in: Duration,
    /// Secret root keys (of version N or N+1) to sign with now.
    #[arg(long = "sign-with", value_name = "KEYFILE")]
    sign_with: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct RootSignArgs {
    /// The root file to sign (changed in place).
    #[arg(long, value_name = "FILE")]
    root: PathBuf,
    /// For root N+1: root N, whose root keys must also sign it.
    #[arg(long, value_name = "FILE")]
    previous: Option<PathBuf>,
    /// Secret keys to sign with.
    #[arg(long = "key", value_name = "KEYFILE", required = true)]
    keys: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct RootPublishArgs {
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    /// Root version N+1, signed by a threshold of root N's root keys and of its own.
    #[arg(long, value_name = "FILE")]
    root: PathBuf,
    /// The root the publisher trusts [default: the store's first root].
    #[arg(long, env = "DELTACACHE_TRUSTED_ROOT", value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn root(command: RootCommand) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    match command {
        RootCommand::Init(args) => {
            refuse_existing(&args.out)?;
            let online = if args.online_keys.is_empty() {
                args.targets_keys.clone()
            } else {
                args.online_keys.clone()
            };
            let n_root = args.root_keys.len() as u64;
            let keys = RootKeys {
                root: (
                    args.root_keys.clone(),
                    args.root_threshold
                        .unwrap_or(if n_root >= 3 { 2 } else { 1 }),
                ),
                targets: (args.targets_keys.clone(), args.targets_threshold),
                online: (online, 1),
            };
            let (bytes, status) =
                runtime.block_on(init_root(&keys, args.expires_in, &args.sign_with))?;
            write_new(&args.out, &bytes)?;
            println!("wrote {}: {status}", args.out.display());
        }
        RootCommand::Rotate(args) => {
            refuse_existing(&args.out)?;
            let edits = parse_edits(&args)?;
            let (bytes, status) = runtime.block_on(rotate_root(
                &args.previous,
                &edits,
                args.expires_in,
                &args.sign_with,
            ))?;
            write_new(&args.out, &bytes)?;
            println!("wrote {}: {status}", args.out.display());
        }
        RootCommand::Sign(args) => {
            let status = runtime.block_on(sign_root_file(
                &args.root,
                args.previous.as_deref(),
                &args.keys,
            ))?;
            println!("signed {}: {status}", args.root.display());
        }
        RootCommand::Publish(args) => {
            let trusted = read_optional(args.trusted_root.as_ref())?;
            let bytes = std::fs::read(&args.root)
                .with_context(|| format!("read {}", args.root.display()))?;
            let version = runtime.block_on(async {
                let store = DeltaStore::open(&args.store, &args.remote.settings()).await?;
                let state = RepoState::read(&store, trusted.as_deref()).await?;
                crate::tuf::repo::publish_root(&store, &state, &bytes).await
            })?;
            println!(
                "published root version {version} to {}: instances rotate to it at their next sync; sign and publish metadata with the new keys now (`repo refresh`, `publish-delta`)",
                args.store
            );
        }
    }
    Ok(())
}

fn parse_edits(args: &RootRotateArgs) -> anyhow::Result<Vec<RootEdit>> {
    let split = |text: &str, flag: &str| -> anyhow::Result<(Vec<Role>, String)> {
        let (role, value) = text
            .split_once('=')
            .with_context(|| format!("--{flag} {text:?}: write ROLE=VALUE"))?;
        Ok((parse_roles(role)?, value.to_owned()))
    };
    let mut edits = Vec::new();
    for text in &args.add_keys {
        let (roles, value) = split(text, "add-key")?;
        edits.extend(
            roles
                .into_iter()
                .map(|r| RootEdit::AddKey(r, value.clone().into())),
        );
    }
    for text in &args.remove_keys {
        let (roles, value) = split(text, "remove-key")?;
        edits.extend(
            roles
                .into_iter()
                .map(|r| RootEdit::RemoveKey(r, value.clone())),
        );
    }
    for text in &args.thresholds {
        let (roles, value) = split(text, "threshold")?;
        let n: u64 = value
            .parse()
            .with_context(|| format!("--threshold {text:?}: the threshold is a number"))?;
        edits.extend(roles.into_iter().map(|r| RootEdit::Threshold(r, n)));
    }
    if edits.is_empty() {
        eprintln!("no --add-key, --remove-key or --threshold: the new root renews the expiry only");
    }
    Ok(edits)
}

fn refuse_existing(path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} already exists: choose another --out (roots are never overwritten)",
            path.display()
        );
    }
    Ok(())
}

fn write_new(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    refuse_existing(path)?;
    crate::durable::write_atomically(path, bytes)
}

fn read_optional(path: Option<&PathBuf>) -> anyhow::Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("read trusted root {}", p.display())))
        .transpose()
}

#[derive(Debug, Subcommand)]
pub(super) enum RepoCommand {
    /// Create the repository in a delta store: root 1, then empty signed metadata. Never
    /// over an existing one.
    Init(RepoInitArgs),
    /// Sign timestamp (and snapshot) again with new expiries, so a quiet catalogue does not
    /// expire; needs only the online key.
    Refresh(RepoRefreshArgs),
    /// Remove targets no current metadata names (left by publishes that lost a race or
    /// died). Run it when no publish is in progress.
    Gc(RepoGcArgs),
}

#[derive(Debug, Args)]
pub(super) struct RepoInitArgs {
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    /// Root version 1 (from `root init`, signed by a threshold of its root keys).
    #[arg(long, value_name = "FILE")]
    root: PathBuf,
    /// Keys that sign the first targets, snapshot and timestamp (the targets key and the
    /// online key). Repeat for each.
    #[arg(long = "key", value_name = "KEYFILE", required = true)]
    keys: Vec<PathBuf>,
    /// Adopt a store of the earlier format (a signed head and deltas): verify its chain with
    /// this trusted-keys file and publish every delta, byte for byte, as a target, so
    /// instances that applied them keep their chain.
    #[arg(long, value_name = "FILE", requires = "bundle")]
    adopt_trusted_keys: Option<PathBuf>,
    /// With --adopt-trusted-keys: the bundle the adopted chain starts from.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct RepoRefreshArgs {
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    /// The online key (signs timestamp and snapshot).
    #[arg(long = "key", value_name = "KEYFILE", required = true)]
    keys: Vec<PathBuf>,
    /// Also sign a new snapshot (renews its expiry).
    #[arg(long)]
    snapshot: bool,
    /// How long the new timestamp stays valid, e.g. 7d (at most 30 days).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    expires_in: Duration,
    /// The root the publisher trusts [default: the store's first root].
    #[arg(long, env = "DELTACACHE_TRUSTED_ROOT", value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct RepoGcArgs {
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    /// The root the publisher trusts [default: the store's first root].
    #[arg(long, env = "DELTACACHE_TRUSTED_ROOT", value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn repo(command: RepoCommand) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    match command {
        RepoCommand::Init(args) => {
            let root = std::fs::read(&args.root)
                .with_context(|| format!("read root {}", args.root.display()))?;
            let keys = load_signers(&args.keys)?;
            let adopted = runtime.block_on(crate::delta::publish::init_repository(
                &args.store,
                &args.remote.settings(),
                &root,
                &keys,
                args.adopt_trusted_keys
                    .as_deref()
                    .zip(args.bundle.as_deref()),
            ))?;
            println!(
                "created the repository in {}{}",
                args.store,
                match adopted {
                    0 => String::new(),
                    n => format!(", adopting {n} deltas of the earlier format"),
                }
            );
        }
        RepoCommand::Refresh(args) => {
            let trusted = read_optional(args.trusted_root.as_ref())?;
            let keys = load_signers(&args.keys)?;
            let published = runtime.block_on(async {
                let store = DeltaStore::open(&args.store, &args.remote.settings()).await?;
                let state = RepoState::read(&store, trusted.as_deref()).await?;
                let roles: &[Role] = if args.snapshot {
                    &[Role::Snapshot, Role::Timestamp]
                } else {
                    &[Role::Timestamp]
                };
                state.check_authorised(&keys.1, roles)?;
                let expiries = Expiries {
                    timestamp: args.expires_in,
                    ..Expiries::default()
                };
                anyhow::Ok(
                    crate::tuf::repo::refresh(&store, &state, &keys.0, args.snapshot, expiries)
                        .await?,
                )
            })?;
            println!(
                "refreshed {}: timestamp version {}, snapshot version {}",
                args.store, published.timestamp, published.snapshot
            );
        }
        RepoCommand::Gc(args) => {
            let trusted = read_optional(args.trusted_root.as_ref())?;
            let removed = runtime.block_on(async {
                let store = DeltaStore::open(&args.store, &args.remote.settings()).await?;
                let state = RepoState::read(&store, trusted.as_deref()).await?;
                if args.dry_run {
                    return crate::tuf::repo::unnamed_targets(&store, &state).await;
                }
                crate::tuf::repo::gc(&store, &state).await
            })?;
            for object in &removed {
                println!(
                    "{} {object}",
                    if args.dry_run {
                        "would remove"
                    } else {
                        "removed"
                    }
                );
            }
            println!("{} unnamed targets", removed.len());
        }
    }
    Ok(())
}
