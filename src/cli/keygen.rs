//! `deltacache keygen`.

use std::path::PathBuf;

use clap::Args;

use crate::tuf::keys::{generate, public_path};

#[derive(Debug, Args)]
pub(super) struct KeygenArgs {
    /// Where to write the secret key (Ed25519 PKCS#8, mode 0600; never overwritten). The
    /// public key (a TUF key object) goes to the same path plus `.pub`.
    #[arg(long, value_name = "KEYFILE")]
    out: PathBuf,
}

pub(super) fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let (_, id) = generate(&args.out)?;
    println!("key id {id}");
    println!(
        "secret key: {} (keep it off instances; root keys offline)",
        args.out.display()
    );
    println!(
        "public key: {} (give it to `deltacache root init` or `root rotate`)",
        public_path(&args.out).display()
    );
    Ok(())
}
