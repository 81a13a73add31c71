//! Command-line interface: one file per subcommand. Glue only: parse, call, report.

mod build_base;
mod demo;
mod fleet;
mod generate;
mod keygen;
mod pinecone_args;
mod publish_delta;
mod remote_args;
mod serve;
mod state_tools;
mod sync;
mod trust;
mod verify;

use clap::{Parser, Subcommand};

/// deltacache: similarity search and metadata lookups from a LevelDB baked into a machine
/// image, kept fresh by signed deltas.
#[derive(Debug, Parser)]
#[command(name = "deltacache", version, about, long_about = None)]
pub struct Cli {
    /// How log lines are written on stderr: text (one human-readable line per event) or json
    /// (one JSON object per line). For `serve`, also the config file's `log-format`
    /// [default: text].
    #[arg(
        long,
        global = true,
        env = "DELTACACHE_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT"
    )]
    log_format: Option<crate::telemetry::LogFormat>,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a bundle (LevelDB metadata db, TF-IDF model, vector index, manifest) from
    /// JSONL items.
    BuildBase(build_base::BuildBaseArgs),
    /// Make a new Ed25519 signing key (root, targets or online).
    Keygen(keygen::KeygenArgs),
    /// Make, rotate, sign and publish the TUF root: which keys may sign what.
    #[command(subcommand)]
    Root(trust::RootCommand),
    /// Create, refresh and clean the TUF repository in a delta store.
    #[command(subcommand)]
    Repo(trust::RepoCommand),
    /// Publish the next delta to a delta store (a new target of its TUF repository).
    PublishDelta(publish_delta::PublishDeltaArgs),
    /// Pin, halt, roll out in waves and gate the whole fleet: the signed fleet policy.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Verify a delta store's repository and whole chain from a trusted root.
    Verify(verify::VerifyArgs),
    /// Serve search and lookups over HTTP from a copy-on-write clone of a bundle.
    Serve(Box<serve::ServeArgs>),
    /// The boot-time sync alone: bring a state dir to the delta store's head, then exit.
    Sync(sync::SyncArgs),
    /// What a state dir holds: versions, current, applied seq, last sync.
    Status(state_tools::StatusArgs),
    /// The current version's items as JSONL.
    Export(state_tools::ExportArgs),
    /// Make an older kept version current and pin it (or unpin).
    Rollback(state_tools::RollbackArgs),
    /// Bundle + deltas → a new bundle at the head, for the next image bake.
    Compact(state_tools::CompactArgs),
    /// Build a bundle from a built-in sample catalogue and serve it on loopback.
    Demo(demo::DemoArgs),
    /// Man pages and shell completion scripts, made from these very definitions (the image
    /// installs them).
    #[command(subcommand)]
    Generate(generate::GenerateCommand),
}

/// The trusted root to use; a trusted-keys file given the earlier way is refused with what
/// to pass instead.
/// The TUF root a one-shot sync trusts.
#[derive(Debug, clap::Args)]
struct TrustedRootArgs {
    /// The trusted TUF root (the root.json the image bakes; a newer root the delta store
    /// publishes, signed by enough of its keys, takes over).
    #[arg(
        long,
        env = "DELTACACHE_TRUSTED_ROOT",
        value_name = "FILE",
        required_unless_present = "trusted_keys"
    )]
    trusted_root: Option<std::path::PathBuf>,
    /// No longer read: instances trust a TUF root. Refused with what to pass instead.
    #[arg(long, hide = true, value_name = "FILE")]
    trusted_keys: Option<std::path::PathBuf>,
}

impl TrustedRootArgs {
    /// The root file, refusing the old `--trusted-keys` with what to pass instead.
    fn path(&self) -> anyhow::Result<std::path::PathBuf> {
        trusted_root(self.trusted_root.clone(), self.trusted_keys.clone())
    }
}

fn trusted_root(
    trusted_root: Option<std::path::PathBuf>,
    trusted_keys: Option<std::path::PathBuf>,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(keys) = trusted_keys {
        anyhow::bail!(
            "--trusted-keys {} is no longer read: instances trust a TUF root; pass --trusted-root with the repository's root.json (README \"Trust\")",
            keys.display()
        );
    }
    trusted_root
        .ok_or_else(|| anyhow::anyhow!("pass --trusted-root FILE: the repository's root.json"))
}

/// The async runtime every subcommand that needs one runs on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// Parses the command line and runs the subcommand.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    if let Command::Serve(args) = cli.command {
        // Logging starts once the config file, which may set `log-format`, is read.
        return serve::run(*args, log_format);
    }
    crate::telemetry::init_logging(log_format.unwrap_or_default());
    match cli.command {
        Command::BuildBase(args) => build_base::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Root(command) => trust::root(command),
        Command::Repo(command) => trust::repo(command),
        Command::PublishDelta(args) => publish_delta::run(args),
        Command::Fleet(command) => fleet::run(command),
        Command::Verify(args) => verify::run(args),
        Command::Serve(_) => unreachable!("serve returned above"),
        Command::Sync(args) => sync::run(args),
        Command::Status(args) => state_tools::status(args),
        Command::Export(args) => state_tools::export(args),
        Command::Rollback(args) => state_tools::rollback(args),
        Command::Compact(args) => state_tools::compact(args),
        Command::Demo(args) => demo::run(args),
        Command::Generate(command) => generate::run(command),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand, however deep, with its path (`deltacache repo init`); clap's own
    /// `help` subcommands left out.
    fn subcommands() -> Vec<(String, clap::Command)> {
        fn walk(command: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
            for sub in command.get_subcommands().filter(|c| c.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                out.push((path.clone(), sub.clone()));
                walk(sub, &path, out);
            }
        }
        let mut command = crate::cli::Cli::command();
        command.build();
        let mut out = Vec::new();
        walk(&command, "deltacache", &mut out);
        out
    }

    /// The arguments a user sees (not clap's own --help and --version).
    fn visible_args(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
        command
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
    }

    /// The style every `--help` follows; each rule broken is listed by subcommand and flag.
    /// - Every subcommand and every flag has help text, a sentence that starts with a capital
    ///   letter and ends without a full stop (as clap's own lines do).
    /// - A default is written `[default: ...]` at the end of the help (clap adds it for a
    ///   declared default; an optional flag whose default lives elsewhere writes it the same
    ///   way), never twice.
    /// - Value names are capitals (`FILE`, `DURATION`, `ROLE=PUB`).
    /// - A flag that reads an environment variable declares it to clap, which shows it as
    ///   `[env: DELTACACHE_...]`; its name is DELTACACHE_ and the flag's name. Every `serve`
    ///   and `sync` flag that takes a value has one, and so do `--store`, `--state-dir` and
    ///   `--trusted-root` wherever they appear.
    /// - Every required flag is in the usage line.
    #[test]
    fn every_help_is_written_in_one_style() {
        let value_name = regex_lite_value_name;
        let mut faults = Vec::new();
        let commands = subcommands();
        assert!(
            commands.len() >= 20,
            "only {} subcommands found",
            commands.len()
        );
        for (path, command) in &commands {
            let about = command
                .get_about()
                .map(|s| s.to_string())
                .unwrap_or_default();
            if !sentence(&about) {
                faults.push(format!("{path}: about {about:?} is not a sentence"));
            }
            let usage = command.clone().render_usage().to_string();
            for arg in visible_args(command) {
                let Some(long) = arg.get_long() else {
                    continue; // positional: none today
                };
                let at = format!("{path} --{long}");
                let help = arg.get_help().map(|s| s.to_string()).unwrap_or_default();
                if !sentence(&help) {
                    faults.push(format!("{at}: help {help:?} is not a sentence"));
                }
                let written = help.matches("[default").count();
                let declared =
                    !arg.get_default_values().is_empty() && arg.get_action().takes_values();
                if written + usize::from(declared) > 1 {
                    faults.push(format!("{at}: the default is given twice"));
                }
                if written == 1 && !help.ends_with(']') {
                    faults.push(format!(
                        "{at}: [default: ...] is not at the end of {help:?}"
                    ));
                }
                if arg.get_action().takes_values() {
                    for name in arg.get_value_names().unwrap_or_default() {
                        if !value_name(name) {
                            faults.push(format!("{at}: value name {name} is not in capitals"));
                        }
                    }
                }
                let wanted = format!("DELTACACHE_{}", long.to_uppercase().replace('-', "_"));
                match arg.get_env().map(|e| e.to_string_lossy().into_owned()) {
                    Some(env) if env != wanted => {
                        faults.push(format!("{at}: environment variable {env}, not {wanted}"))
                    }
                    Some(_) if arg.is_hide_env_set() => {
                        faults.push(format!("{at}: its environment variable is hidden"))
                    }
                    Some(_) => {}
                    None => {
                        let must = matches!(long, "store" | "state-dir" | "trusted-root")
                            || (matches!(path.as_str(), "deltacache serve" | "deltacache sync")
                                && arg.get_action().takes_values());
                        if must {
                            faults.push(format!("{at}: no environment variable ({wanted})"));
                        }
                    }
                }
                if arg.is_required_set() && !usage.contains(&format!("--{long}")) {
                    faults.push(format!(
                        "{at}: required, but not in the usage line {usage:?}"
                    ));
                }
            }
        }
        assert!(faults.is_empty(), "--help style:\n{}", faults.join("\n"));
    }

    /// `serve` takes its bundle and state dir from flags, the environment or the config file;
    /// its usage line shows both ways.
    #[test]
    fn serve_usage_names_the_bundle_and_state_dir_or_the_config_file() {
        let mut command = crate::cli::Cli::command();
        command.build();
        let serve = command.find_subcommand_mut("serve").unwrap();
        let usage = serve.render_usage().to_string();
        for flag in ["--bundle <DIR>", "--state-dir <DIR>", "--config <FILE>"] {
            assert!(usage.contains(flag), "{flag} not in {usage:?}");
        }
    }

    /// Starts with a capital letter (or a quoted word) and ends without a full stop.
    fn sentence(text: &str) -> bool {
        let first = text.chars().next();
        first.is_some_and(|c| c.is_uppercase() || c == '`' || c == '"')
            && !text.ends_with('.')
            && !text.ends_with(' ')
    }

    /// `FILE`, `ROLE=PUB`, `DURATION=PERCENT`.
    fn regex_lite_value_name(name: &str) -> bool {
        name.split('=').all(|part| {
            part.starts_with(|c: char| c.is_ascii_uppercase())
                && part
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
    }
}
