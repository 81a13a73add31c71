//! `deltacache verify`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::remote_args::RemoteArgs;
use crate::bundle::Bundle;
use crate::clock::now_secs;
use crate::delta::chain::{ChainPosition, verify_chain};
use crate::delta::format::DEFAULT_MAX_DELTA_BYTES;
use crate::delta::keys::TrustedKeys;
use crate::delta_store::DeltaStore;

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// Delta store: file:///dir or s3://bucket/prefix.
    #[arg(long, env = "DELTACACHE_STORE", value_name = "URL")]
    store: String,
    /// Trusted public keys (one or more `.pub` lines).
    #[arg(long, env = "DELTACACHE_TRUSTED_KEYS", value_name = "FILE")]
    trusted_keys: PathBuf,
    /// Walk back to this bundle's seq and check the chain starts from it [default: walk back
    /// to the first delta].
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// The largest delta accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_DELTA_BYTES, value_name = "BYTES")]
    max_delta_bytes: u64,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let trusted = TrustedKeys::load(&args.trusted_keys)?;
    let bundle = args.bundle.as_deref().map(Bundle::open).transpose()?;
    let position = bundle
        .as_ref()
        .map(|b| ChainPosition::of_bundle(&b.manifest));
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let store = DeltaStore::open(&args.store, &args.remote.settings()).await?;
        let report = verify_chain(&store, &trusted, position.as_ref(), args.max_delta_bytes, now_secs())
            .await
            .with_context(|| format!("verify {}", store.describe()))?;
        let Some(head) = report.head else {
            println!("{}: no head yet (nothing published)", store.describe());
            return Ok(());
        };
        for delta in &report.deltas {
            let header = &delta.batch.header;
            println!(
                "ok seq {} {} {} bytes, {} records, signed by {}",
                delta.seq, delta.digest, delta.len, header.n_records, delta.key_id
            );
        }
        println!(
            "ok head: dataset {}, seq {}, issued {}, expires {}; {} deltas verified back to seq {} ({})",
            head.head.dataset,
            head.head.seq,
            head.head.issued_at,
            head.head.expires_at,
            report.deltas.len(),
            report.base.0,
            report.base.1
        );
        Ok(())
    })
}
