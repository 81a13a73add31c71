//! `deltacache keygen`.

use std::path::PathBuf;

use clap::Args;

use crate::delta::keys::PublisherKey;

#[derive(Debug, Args)]
pub(super) struct KeygenArgs {
    /// Where to write the secret key (mode 0600; never overwritten). The public key goes to
    /// the same path plus `.pub`; append that line to the instances' trusted-keys file.
    #[arg(long, value_name = "KEYFILE")]
    out: PathBuf,
}

pub(super) fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let key = PublisherKey::generate()?;
    let pub_path = key.save(&args.out)?;
    println!("key id {}", key.id());
    println!("secret key: {} (keep it off instances)", args.out.display());
    println!(
        "public key: {} (add it to the trusted-keys file)",
        pub_path.display()
    );
    Ok(())
}
