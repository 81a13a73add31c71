//! The `deltacache` binary: everything lives in the library; this prints the error chain
//! and sets the exit code.

fn main() {
    if let Err(error) = deltacache::cli::main() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
