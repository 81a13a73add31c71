//! `deltacache demo`: the embedded default a newcomer runs first.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::demo::prepare;
use crate::server;

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// Address to serve on.
    #[arg(long, default_value = super::serve::DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
    /// Directory for the demo's files (catalogue, bundle, state dir) [default: a temporary
    /// directory removed on exit].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub(super) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temporary;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("deltacache-demo-")
                .tempdir()
                .context("create a temporary directory")?;
            temporary.path().to_path_buf()
        }
    };
    let runtime = super::runtime()?;
    let files = runtime.block_on(prepare(&dir, |line| println!("{line}")))?;
    let options = files.serve_options(args.listen);
    runtime.block_on(server::run(options, crate::http::shutdown_signal(), |addr, _probes| {
        println!("deltacache: listening on http://{addr}");
        println!("try:");
        println!(
            "  curl -s -X POST http://{addr}/search -H 'content-type: application/json' -d '{{\"query_text\": \"fast key value database\", \"top_k\": 3}}'"
        );
        println!(
            "  curl -s -X POST http://{addr}/search -H 'content-type: application/json' -d '{{\"query_text\": \"fast storage\", \"filter\": {{\"category\": \"database\"}}}}'"
        );
        println!("  curl -s http://{addr}/items/demo-0301   # added by the signed delta");
        println!("  curl -s http://{addr}/status");
        println!("stop with Ctrl-C");
    }))
}
