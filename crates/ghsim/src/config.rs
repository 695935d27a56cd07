//! What a simulated GitHub looks like: the App, the accounts it is installed
//! on, the URLs it hands out and the timings of its protocols.
//!
//! Defaults describe the "default world" berth's tests and `berth demo` use:
//! one App installed on the organisation `acme` and on the user `octocat`,
//! short long-poll timeouts so tests stay fast, and GitHub's real token
//! lifetimes. Everything is public so tests can shorten any timer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::FaultRule;

/// Whether an account is an organisation or a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountKind {
    /// A GitHub organisation (`/orgs/{org}` endpoints work for it).
    Organization,
    /// A personal account (only repository-level endpoints).
    User,
}

/// An account the App is installed on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountConfig {
    /// Login, e.g. `acme`.
    pub login: String,
    /// Organisation or user.
    pub kind: AccountKind,
    /// The installation id of the App on this account.
    pub installation_id: u64,
    /// The account's numeric id.
    pub account_id: u64,
}

/// How a scale set receives jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleSetFlow {
    /// github.com today: a job arrives as `JobAssigned`.
    #[default]
    Assigned,
    /// Older GHES: `JobAvailable` first; the listener must call `acquirejobs`
    /// and only then is the job `JobAssigned` and runnable.
    Acquire,
}

/// Where `workflow_job` webhooks go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookTarget {
    /// The receiving URL.
    pub url: String,
    /// HMAC secret; without it GitHub sends no signature headers.
    pub secret: Option<String>,
}

/// The whole simulator configuration. `SimConfig::default()` is the default world.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// GitHub App id.
    pub app_id: u64,
    /// GitHub App client id (also accepted as JWT `iss`).
    pub client_id: String,
    /// App slug.
    pub app_slug: String,
    /// App display name.
    pub app_name: String,
    /// PEM (PKCS#1 or PKCS#8) of the App key; generated (and cached per process) when absent.
    pub app_key_pem: Option<String>,
    /// Accounts the App is installed on.
    pub accounts: Vec<AccountConfig>,
    /// Runner group names (id = position + 1). The first is the default group.
    pub runner_groups: Vec<String>,
    /// URL put into everything handed to runners (JIT configs, token and run
    /// service URLs). `None` = the listen URL.
    pub public_url: Option<String>,
    /// Webhook target, if any (can also be set later through the control API).
    pub webhook: Option<WebhookTarget>,
    /// `X-GitHub-Hook-ID` value.
    pub hook_id: u64,
    /// Long-poll timeout of the scale-set message queue and the runner broker.
    pub poll_timeout: Duration,
    /// A scale-set session not polled for this long expires, so a restarted
    /// listener can open a new one (the real service does the same, slowly).
    pub session_idle_timeout: Duration,
    /// A runner not heard from for this long is shown offline, and may open a
    /// new broker session.
    pub runner_idle_timeout: Duration,
    /// A job offered to a runner and not acquired within this time is requeued.
    pub offer_timeout: Duration,
    /// A running job whose runner stops renewing for this long fails.
    pub job_lock_timeout: Duration,
    /// A running job asked to cancel whose runner does not report within this
    /// time is completed as cancelled by the simulator.
    pub cancel_grace: Duration,
    /// Jobs with an `environment` wait this long before being approved
    /// automatically; `None` waits for `POST /_sim/jobs/{id}/approve`.
    pub environment_auto_approve: Option<Duration>,
    /// Installation access token lifetime (GitHub: 1 hour).
    pub installation_token_lifetime: Duration,
    /// Registration / remove token lifetime (GitHub: 1 hour).
    pub registration_token_lifetime: Duration,
    /// Lifetime of the Actions-service admin token from `/actions/runner-registration`.
    pub admin_token_lifetime: Duration,
    /// Lifetime of a scale-set session's `messageQueueAccessToken`.
    pub queue_token_lifetime: Duration,
    /// Lifetime of a runner's OAuth access token.
    pub runner_token_lifetime: Duration,
    /// Requests per hour per token before the primary rate limit answers 403.
    pub rate_limit: u32,
    /// Default scale-set flow (a scale set can override it through the control API).
    pub scale_set_flow: ScaleSetFlow,
    /// How long a webhook delivery held back by the `reorder` fault may wait.
    pub reorder_hold: Duration,
    /// Timeout of one webhook delivery (GitHub: 10 s).
    pub webhook_timeout: Duration,
    /// Fault rules active from the start.
    pub faults: Vec<FaultRule>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            app_id: 424_242,
            client_id: "Iv23liGhsimClient01".into(),
            app_slug: "berth-sim".into(),
            app_name: "berth (simulated)".into(),
            app_key_pem: None,
            accounts: vec![
                AccountConfig {
                    login: "acme".into(),
                    kind: AccountKind::Organization,
                    installation_id: 5_100_001,
                    account_id: 9_100_001,
                },
                AccountConfig {
                    login: "octocat".into(),
                    kind: AccountKind::User,
                    installation_id: 5_100_002,
                    account_id: 9_100_002,
                },
            ],
            runner_groups: vec!["Default".into()],
            public_url: None,
            webhook: None,
            hook_id: 470_000_001,
            poll_timeout: Duration::from_secs(3),
            session_idle_timeout: Duration::from_secs(120),
            runner_idle_timeout: Duration::from_secs(30),
            offer_timeout: Duration::from_secs(10),
            job_lock_timeout: Duration::from_secs(60),
            cancel_grace: Duration::from_secs(10),
            environment_auto_approve: Some(Duration::from_millis(100)),
            installation_token_lifetime: Duration::from_secs(3600),
            registration_token_lifetime: Duration::from_secs(3600),
            admin_token_lifetime: Duration::from_secs(3600),
            queue_token_lifetime: Duration::from_secs(3600),
            runner_token_lifetime: Duration::from_secs(3600),
            rate_limit: 5000,
            scale_set_flow: ScaleSetFlow::Assigned,
            reorder_hold: Duration::from_millis(500),
            webhook_timeout: Duration::from_secs(10),
            faults: Vec::new(),
        }
    }
}

impl SimConfig {
    /// The installation id of an account, if the App is installed there.
    pub fn installation_for(&self, login: &str) -> Option<u64> {
        self.accounts
            .iter()
            .find(|a| a.login.eq_ignore_ascii_case(login))
            .map(|a| a.installation_id)
    }
}
