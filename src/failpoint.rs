//! Failpoints for crash and interruption tests: when `DELTACACHE_FAILPOINT` names a step,
//! the process aborts there, exactly as if it had been killed with SIGKILL (no destructors, no
//! flushing), or, at a pause point, waits there for ever (for a signal the test sends). Unset
//! (always, in production), a failpoint costs one cached environment lookup.

use std::sync::OnceLock;

/// The step `DELTACACHE_FAILPOINT` names, if any.
fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("DELTACACHE_FAILPOINT").ok())
        .as_deref()
}

/// Aborts the process if `DELTACACHE_FAILPOINT` equals `name`.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Never returns if `DELTACACHE_FAILPOINT` equals `name`: says `failpoint NAME: paused` on
/// standard error and waits, so that a test can interrupt the process at that exact step.
pub async fn pause(name: &str) {
    if armed() == Some(name) {
        eprintln!("failpoint {name}: paused");
        std::future::pending::<()>().await;
    }
}
