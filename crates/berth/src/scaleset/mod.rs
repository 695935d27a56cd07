//! Scale set: the proxy runner — a persistent listener on GitHub's runner
//! scale-set protocol that delegates each runner to the orchestrator.
//!
//! # Why a listener, and why it delegates runners rather than jobs
//!
//! GitHub does not let anyone hand a job to a chosen runner
//! (docs/proxy-runner.md, "Why a listener, not a runner that hands its job
//! over"). What it does offer is the scale set: jobs whose `runs-on` names
//! it are assigned to it, a listener long-polls for them over one outbound
//! connection, and *any* JIT runner minted for the scale set takes *any* of
//! its jobs. So the listener
//! does not move jobs anywhere: it keeps the number of runners right, and
//! each runner is one berth job — one fresh, single-use container.
//!
//! # The parts
//!
//! ```text
//!                 ┌──────────── berth proxy (or inside berth serve) ────────────┐
//! GitHub Actions  │ listener: session, long poll, ack, acquire, JobStarted/…    │
//! service ◀──────▶│   └─ state (statistics, waiting jobs, busy/done runners)    │
//!  (client.rs)    │ scaler task: desired count vs the orchestrator's runners    │
//!                 │   └─ delegations / retirements, off the poll loop, retried  │
//!                 └───────────────┬─────────────────────────────────────────────┘
//!                                 │ Delegator: HTTP (`POST /v1/jobs/delegate`, …)
//!                                 ▼            or in-process (same functions)
//!                 orchestrator: one berth job per runner; the dispatcher mints the
//!                 runner's JIT config through the Actions service (registry.rs)
//! ```
//!
//! * [`client`]: the Actions-service client — the token chain (App JWT →
//!   installation token → registration token → `runner-registration` →
//!   admin token, refreshed 60 s before it expires), scale sets, sessions,
//!   the message queue, `acquirejobs`, `generatejitconfig` and runners. One
//!   client type serves the listener and the dispatcher.
//! * [`messages`]: the message and statistics types, and the parsing of the
//!   batched `RunnerScaleSetJobMessages` body.
//! * [`scaler`]: the scaling rule and the plan (pure functions, unit-tested).
//! * [`listener`]: the poll loop and the scaler task.
//! * [`delegator`]: where runners are delegated to — the orchestrator over
//!   HTTP (`berth proxy`) or in-process (`berth serve`).
//! * [`orchestrator`]: the orchestrator's side of a delegation: the runner
//!   list of a scale set, job events, retiring idle runners.
//! * [`registry`]: the scale sets an orchestrator mints for (id cache,
//!   scale-set JIT configs, runner removal).
//! * the HTTP routes a remote proxy uses besides the delegate call are in
//!   crate::api::scaleset.
//! * [`proxy`]: the `berth proxy` command.
//!
//! # Keys: a berth job is one runner request
//!
//! A delegation is idempotent on its `github_job_id`, the store's unique key.
//! In scale-set mode that key names a runner, not a GitHub job:
//!
//! * a runner created for an assigned job carries that job's
//!   `runnerRequestId` (unique on GitHub; a retried or redelivered
//!   `JobAssigned` lands on the same row);
//! * a runner created for the buffer (`min_runners`, `idle_runners`, or work
//!   found at start-up without its `JobAssigned` message) carries
//!   [`buffer_key`]: bit 62 set plus 62 random bits, a range no GitHub
//!   request or job id reaches, so it never collides with one.
//!
//! Retries are safe because the key is fixed before the first attempt; a
//! restarted listener asks the orchestrator which runners exist before it
//! creates any, so it never duplicates the ones its predecessor made.

pub mod client;
pub mod delegator;
pub mod election;
pub mod listener;
pub mod messages;
pub mod orchestrator;
pub mod proxy;
pub mod registry;
pub mod scaler;

pub use client::ActionsClient;
pub use delegator::{Delegator, HttpDelegator, InProcessDelegator};
pub use registry::Registry;

use crate::github::GithubError;
use crate::store::StoreError;

/// The container label naming the scale set a worker's runner belongs to.
pub const LABEL_SCALE_SET: &str = "berth.scale-set";

/// Bit 62: set in every buffer key, never in a GitHub id.
pub const BUFFER_KEY_BIT: i64 = 1 << 62;

/// A fresh key for a runner not created for a particular assigned job.
pub fn buffer_key() -> i64 {
    BUFFER_KEY_BIT | (rand::random::<i64>() & (BUFFER_KEY_BIT - 1)).max(1)
}

/// Whether `key` was made by [`buffer_key`].
pub fn is_buffer_key(key: i64) -> bool {
    key & BUFFER_KEY_BIT != 0
}

/// What can go wrong in the scale-set component. Messages name the endpoint
/// and what the service said; never a token or a JIT config.
#[derive(Debug, thiserror::Error)]
pub enum ScaleSetError {
    #[error("scale set configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Github(#[from] GithubError),
    #[error("Actions service {endpoint}: HTTP {status} {type_key}: {message}")]
    Service {
        endpoint: &'static str,
        status: u16,
        /// The service's exception type, e.g. `AgentExistsException`.
        type_key: String,
        message: String,
    },
    #[error("Actions service {endpoint}: {message}")]
    Transport {
        endpoint: &'static str,
        message: String,
    },
    #[error("Actions service {endpoint}: unexpected answer: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
    /// `409` on session creation: another listener (or a crashed one's
    /// session that has not expired yet) holds the scale set.
    #[error("the scale set already has a message session: {0}")]
    SessionConflict(String),
    /// `401` from the message queue: the session's queue token expired.
    #[error("the message queue token expired")]
    QueueTokenExpired,
    /// `404` for the session: it expired or was deleted; open a new one.
    #[error("the message session is gone: {0}")]
    SessionGone(String),
    /// The runner holds a job and cannot be removed now.
    #[error("runner {0} is running a job")]
    RunnerBusy(u64),
    #[error("orchestrator {endpoint}: {message}")]
    Orchestrator {
        endpoint: &'static str,
        /// The HTTP status, `None` when there was no answer.
        status: Option<u16>,
        message: String,
    },
    #[error("no scale set named `{0}` is configured")]
    UnknownScaleSet(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

impl ScaleSetError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ScaleSetError::Github(e) => e.is_transient(),
            ScaleSetError::Service { status, .. } => *status >= 500 || *status == 429,
            ScaleSetError::Transport { .. }
            | ScaleSetError::SessionConflict(_)
            | ScaleSetError::QueueTokenExpired
            | ScaleSetError::SessionGone(_)
            | ScaleSetError::RunnerBusy(_)
            | ScaleSetError::Store(_) => true,
            ScaleSetError::Orchestrator { status, .. } => match status {
                None => true,
                Some(s) => *s >= 500 || *s == 429 || *s == 408,
            },
            ScaleSetError::Config(_)
            | ScaleSetError::Decode { .. }
            | ScaleSetError::UnknownScaleSet(_) => false,
        }
    }

    /// The service's exception type, when it answered with one.
    pub fn type_key(&self) -> Option<&str> {
        match self {
            ScaleSetError::Service { type_key, .. } => Some(type_key),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ScaleSetError::Service { status, .. } => Some(*status),
            ScaleSetError::Orchestrator { status, .. } => *status,
            ScaleSetError::Github(GithubError::Http { status, .. }) => Some(*status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_keys_are_positive_unique_and_recognisable() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let k = buffer_key();
            assert!(k > 0 && is_buffer_key(k));
            assert!(seen.insert(k));
        }
        // GitHub's request and job ids are far below 2^62.
        assert!(!is_buffer_key(9_876_543_210));
        assert!(!is_buffer_key(1));
    }
}
