//! GitHub: the App client (JWT → installation token), JIT runner configs,
//! runner registrations, job lookups and the App's webhook delivery log.

mod app;
pub(crate) mod backoff;
mod client;

pub use app::AppAuth;
pub(crate) use client::http_client;
pub use client::{
    GithubClient, HookDelivery, HookDeliveryLog, JitConfig, RetryPolicy, Runner, WorkflowJob,
};

use std::time::Duration;

/// What can go wrong talking to GitHub. Messages name the endpoint and what
/// GitHub said; they never contain a token or a JIT config.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub configuration: {0}")]
    Config(String),
    #[error("GitHub {endpoint}: HTTP {status}: {message}")]
    Http {
        endpoint: &'static str,
        status: u16,
        message: String,
    },
    #[error("GitHub {endpoint}: rate limited; retry after {retry_after:?}")]
    RateLimited {
        endpoint: &'static str,
        retry_after: Duration,
    },
    #[error("GitHub {endpoint}: {message}")]
    Transport {
        endpoint: &'static str,
        message: String,
    },
    #[error("GitHub {endpoint}: unexpected answer: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
}

impl GithubError {
    /// Whether trying again later may succeed (as opposed to a request GitHub refuses).
    pub fn is_transient(&self) -> bool {
        match self {
            GithubError::Http { status, .. } => *status >= 500 || *status == 429,
            GithubError::RateLimited { .. } | GithubError::Transport { .. } => true,
            GithubError::Config(_) | GithubError::Decode { .. } => false,
        }
    }
}
