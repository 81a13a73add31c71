//! Failpoints for crash tests: when `DELTACACHE_FAILPOINT` names a step, the process aborts
//! there, exactly as if it had been killed with SIGKILL (no destructors, no flushing).
//! Unset (always, in production), a failpoint costs one cached environment lookup.

use std::sync::OnceLock;

/// Aborts the process if `DELTACACHE_FAILPOINT` equals `name`.
pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("DELTACACHE_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
