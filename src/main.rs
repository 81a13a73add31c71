//! The `deltacache` binary: everything lives in the library; this reports the error chain
//! (as a log line with JSON logs) and sets the exit code.

fn main() {
    if let Err(error) = deltacache::cli::main() {
        deltacache::telemetry::report_fatal(&error);
        std::process::exit(1);
    }
}
