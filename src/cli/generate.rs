//! `deltacache generate`: man pages and shell completions from the clap definitions
//! (`scripts/provision.sh` installs what the image's binary writes).

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Subcommand};

#[derive(Debug, Subcommand)]
pub(super) enum GenerateCommand {
    /// Man pages (section 1): deltacache.1 and one per subcommand, such as
    /// deltacache-serve.1 and deltacache-root-init.1.
    Man {
        /// The directory to write them into (made if missing; pages there are replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// A completion script for SHELL, on stdout.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

pub(super) fn run(command: GenerateCommand) -> anyhow::Result<()> {
    match command {
        GenerateCommand::Man { out } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("--out {}: make the directory", out.display()))?;
            clap_mangen::generate_to(super::Cli::command(), &out)
                .with_context(|| format!("--out {}: write the man pages", out.display()))?;
            let mut pages: Vec<String> = std::fs::read_dir(&out)
                .with_context(|| format!("--out {}: list the man pages", out.display()))?
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with("deltacache") && name.ends_with(".1"))
                .collect();
            pages.sort();
            println!(
                "deltacache: {} man pages in {}: {}",
                pages.len(),
                out.display(),
                pages.join(" ")
            );
            Ok(())
        }
        GenerateCommand::Completions { shell } => {
            let mut stdout = std::io::stdout().lock();
            clap_complete::generate(shell, &mut super::Cli::command(), "deltacache", &mut stdout);
            Ok(())
        }
    }
}
