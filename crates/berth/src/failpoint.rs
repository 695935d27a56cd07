//! Crash points for recovery tests.
//!
//! `BERTH_FAILPOINTS=after_mint,…` makes the process abort (no unwinding, no
//! cleanup: as abrupt as `kill -9`) the first time it reaches a named point.
//! Tests use it to crash `berth serve` at exact places of a job's lifecycle
//! and check that a restart finishes every job and leaves nothing behind.
//! Unset, a failpoint costs one load of a cached flag.

use std::sync::OnceLock;

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("BERTH_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// Aborts the process if the failpoint `name` is armed.
pub fn hit(name: &str) {
    if armed().iter().any(|a| a == name) {
        eprintln!("berth: failpoint `{name}` reached: aborting");
        std::process::abort();
    }
}
