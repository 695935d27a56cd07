//! The shared context every component of `berth serve` works with: the
//! configuration, the store, the Docker hosts, the GitHub client, the
//! metrics, and the wake-up signals that make dispatching and reconciling
//! run on demand as well as periodically.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::{Config, PoolConfig};
use crate::github::GithubClient;
use crate::observability::Metrics;
use crate::observability::logging::LogLevelHandle;
use crate::store::{Job, Store};

/// The container label naming the berth installation that owns a worker.
pub const LABEL_INSTANCE: &str = "berth.instance";

/// Everything a component needs; cheap to share behind an `Arc`.
pub struct Context {
    pub config: Arc<Config>,
    pub store: Store,
    /// The Docker hosts, each with its controller (crate::fleet).
    pub fleet: crate::fleet::Fleet,
    /// `None` only when no pool is configured (nothing to mint runners for).
    pub github: Option<GithubClient>,
    /// The configured scale sets: their Actions-service clients and ids
    /// (minting and removing scale-set runners).
    pub scale_sets: Arc<crate::scaleset::Registry>,
    pub metrics: Metrics,
    /// Every supervised component's status (crate::supervise).
    pub components: crate::supervise::Components,
    /// The webhook secret in use, and the previous one during a rotation's
    /// overlap (`github.webhook_secret_overlap`).
    pub webhook_secret: Option<crate::secrets::LiveSecret>,
    /// Every secret berth keeps current, and the Vault connection
    /// (crate::secrets): the `secrets` component re-reads them.
    pub secrets: Arc<crate::secrets::Secrets>,
    /// This process's identity in leases (`hostname-pid-random`).
    pub replica_id: String,
    /// Wakes the dispatcher: a job was queued or a slot freed.
    pub dispatch_wake: Notify,
    /// Wakes the reconcilers: something needs cleaning up now.
    pub reconcile_wake: Notify,
    pub log_level: Option<LogLevelHandle>,
    /// Log capture's registry of running captures (private to it).
    pub log_captures: crate::dispatch::logs::Captures,
    /// Where worker output is forwarded as JSON lines (`logs.job_output_file`).
    pub job_output: Option<std::sync::Mutex<std::fs::File>>,
    /// Exit handling's registry of exits being handled (private to it).
    pub exits_in_progress: crate::lifecycle::exit::ExitsInProgress,
    /// The warm pools' current fingerprints and refill wake-up.
    pub warm: crate::dispatch::warm::WarmPools,
}

impl Context {
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.config.pool(name)
    }

    /// The pool configuration of a job, or the reason it cannot run.
    pub fn pool_of(&self, job: &Job) -> Result<&PoolConfig, String> {
        self.pool(&job.pool)
            .ok_or_else(|| format!("pool `{}` is no longer configured", job.pool))
    }

    pub fn github(&self) -> Result<&GithubClient, String> {
        self.github
            .as_ref()
            .ok_or_else(|| "no GitHub App is configured".to_string())
    }

    /// Whether a container's labels say it belongs to this installation.
    pub fn owns(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        labels.get(LABEL_INSTANCE) == Some(&self.config.docker.instance)
    }

    pub fn wake_dispatcher(&self) {
        self.dispatch_wake.notify_one();
    }

    pub fn wake_reconciler(&self) {
        self.reconcile_wake.notify_one();
    }
}

/// A lease owner id unique to this process.
pub fn new_replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
