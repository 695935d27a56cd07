//! Failure points for recovery and supervision tests.
//!
//! `BERTH_FAILPOINTS` is a comma-separated list of `name` or `name=action`:
//!
//! | action       | what reaching the point does                                   |
//! |--------------|----------------------------------------------------------------|
//! | `abort`      | (the default) aborts the process: no unwinding, no clean-up, as abrupt as `kill -9` |
//! | `panic`      | panics, every time the point is reached                         |
//! | `panic-once` | panics the first time only                                      |
//! | `error`      | makes the step report a failure ([`fails`]), every time          |
//!
//! Tests use them to crash `berth serve` at exact places of a job's
//! lifecycle, and to make one component fail, and check what recovery and
//! the supervisor do. Unset, a failpoint costs one load of a cached list.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Panic,
    PanicOnce,
    Error,
}

struct Armed {
    name: String,
    action: Action,
    fired: AtomicBool,
}

fn armed() -> &'static [Armed] {
    static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var("BERTH_FAILPOINTS").unwrap_or_default()))
}

fn parse(spec: &str) -> Vec<Armed> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let (name, action) = entry.split_once('=').unwrap_or((entry, "abort"));
            let action = match action.trim() {
                "panic" => Action::Panic,
                "panic-once" => Action::PanicOnce,
                "error" => Action::Error,
                _ => Action::Abort,
            };
            Armed {
                name: name.trim().to_string(),
                action,
                fired: AtomicBool::new(false),
            }
        })
        .collect()
}

/// Aborts or panics if the failpoint `name` is armed to.
pub fn hit(name: &str) {
    for point in armed().iter().filter(|a| a.name == name) {
        match point.action {
            Action::Abort => {
                eprintln!("berth: failpoint `{name}` reached: aborting");
                std::process::abort();
            }
            Action::Panic => panic!("failpoint `{name}` reached"),
            Action::PanicOnce if !point.fired.swap(true, Ordering::SeqCst) => {
                panic!("failpoint `{name}` reached (once)")
            }
            Action::PanicOnce | Action::Error => {}
        }
    }
}

/// Whether the failpoint `name` is armed at all, for a point that needs a
/// step of its own to set up the state it crashes in.
pub fn is_armed(name: &str) -> bool {
    armed().iter().any(|a| a.name == name)
}

/// Whether the step at failpoint `name` should report a failure (armed as
/// `name=error`).
pub fn fails(name: &str) -> bool {
    armed()
        .iter()
        .any(|a| a.name == name && a.action == Action::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_with_their_action_and_abort_by_default() {
        let parsed = parse(" after_mint, dispatch_claim=panic-once ,reconcile_local=error,x=panic");
        let got: Vec<_> = parsed.iter().map(|a| (a.name.as_str(), a.action)).collect();
        assert_eq!(
            got,
            [
                ("after_mint", Action::Abort),
                ("dispatch_claim", Action::PanicOnce),
                ("reconcile_local", Action::Error),
                ("x", Action::Panic),
            ]
        );
    }
}
