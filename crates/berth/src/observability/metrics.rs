//! Prometheus metrics, namespace `berth_`.
//!
//! One [`Metrics`] value holds every family; components get a clone (the
//! families are reference-counted) and record into it. Gauges that mirror the
//! store (queue size, active containers) are refreshed when `/metrics` is
//! scraped, so they are never stale and cost nothing between scrapes.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Histogram buckets from 10 ms to 1 h: container creation is tens of
/// milliseconds, queue waits and job runs go up to hours.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A container-job hook command and how it ended (`ok`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookCommandLabels {
    pub command: String,
    pub outcome: String,
}

/// A Falco alert received: its rule, priority, and what berth's policy
/// made of it (`kill`, `alert`, `ignore`, or `unmatched` when it is about
/// no job of berth's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecurityEventLabels {
    pub rule: String,
    pub priority: String,
    pub action: String,
}

/// A container-job hook command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookCommandKind {
    pub command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    pub pool: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolConclusionLabels {
    pub pool: String,
    pub conclusion: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GithubLabels {
    pub endpoint: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleSetLabels {
    pub scale_set: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcilerErrorLabels {
    pub reconciler: &'static str,
    /// crate::error::Error::kind: store, docker, github, scale_set, config.
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleSetOutcomeLabels {
    pub scale_set: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOutcomeLabels {
    pub pool: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// The conclusions GitHub gives a completed job (`workflow_job.conclusion`);
/// anything else is counted as `other`, so the label's values stay bounded.
pub const GITHUB_CONCLUSIONS: [&str; 10] = [
    "success",
    "failure",
    "cancelled",
    "skipped",
    "timed_out",
    "neutral",
    "action_required",
    "stale",
    "startup_failure",
    "other",
];

/// The reconcilers (`crate::reconcile`), as `kind` labels.
pub const RECONCILER_KINDS: [&str; 9] = [
    "lease_expired",
    "cancelled",
    "completed_elsewhere",
    "timeout",
    "idle_runner",
    "queued_expired",
    "orphan_container",
    "orphan_job_object",
    "orphan_runner",
];

/// The Docker operations the controller reports failures of, as `op` labels.
pub const DOCKER_OPS: [&str; 26] = [
    "version",
    "info",
    "ping",
    "network_create",
    "network_list",
    "network_remove",
    "image_inspect",
    "image_pull",
    "container_create",
    "container_attach",
    "container_start",
    "container_stdin",
    "container_wait",
    "container_inspect",
    "container_list",
    "container_logs",
    "container_stop",
    "container_remove",
    "events",
    "volume_create",
    "volume_list",
    "volume_remove",
    "network_connect",
    "exec_create",
    "exec_start",
    "exec_inspect",
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric berth exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Calls of `POST /v1/jobs/delegate`, by outcome (accepted, duplicate, invalid, unauthorized).
    pub delegation_requests: Family<OutcomeLabels, Counter>,
    /// Webhook deliveries, by outcome (accepted, duplicate, ignored, invalid, unauthorized).
    pub webhook_deliveries: Family<OutcomeLabels, Counter>,
    /// Redeliveries berth asked GitHub for (crate::reconcile::delivery_catchup)
    /// and GitHub accepted.
    pub webhook_redeliveries_requested: Counter,
    /// Jobs waiting in the queue, per pool.
    pub job_queue_size: Family<PoolLabels, Gauge>,
    /// Worker containers provisioning, starting or running, per pool.
    pub active_worker_containers: Family<PoolLabels, Gauge>,
    /// Claim → container running.
    pub container_creation_duration: HistogramFamily<PoolLabels>,
    /// Container-job hook commands (`berth hook`), by command and outcome.
    pub hook_commands: Family<HookCommandLabels, Counter>,
    /// Falco alerts received (`POST /v1/security/events`), by rule,
    /// priority and action; a redelivered alert is not counted again.
    pub security_events: Family<SecurityEventLabels, Counter>,
    /// How long each hook command took (a step's whole run for the step commands).
    pub hook_command_duration: HistogramFamily<HookCommandKind>,
    /// Container running → container exited.
    pub job_execution_duration: HistogramFamily<PoolLabels>,
    /// Job accepted → container running.
    pub queue_wait: HistogramFamily<PoolLabels>,
    /// Jobs that reached a terminal state, per pool and state.
    pub jobs_finished: Family<PoolStateLabels, Counter>,
    /// Jobs GitHub reported completed, per pool and GitHub conclusion.
    pub jobs_concluded: Family<PoolConclusionLabels, Counter>,
    /// Each pool's `max_runners`, for saturation (active / max).
    pub pool_max_runners: Family<PoolLabels, Gauge>,
    /// Requests to GitHub, per endpoint and HTTP status (or `error`).
    pub github_api_requests: Family<GithubLabels, Counter>,
    /// The lowest `X-RateLimit-Remaining` GitHub reported most recently.
    pub github_rate_limit_remaining: Gauge,
    /// Docker API calls that failed, per operation.
    pub docker_api_errors: Family<OpLabels, Counter>,
    /// What reconcilers did, per kind of action.
    pub reconciler_actions: Family<KindLabels, Counter>,
    /// Reconcile passes that failed, per reconciler.
    pub reconciler_failures: Family<KindLabels, Counter>,
    /// Reconciler failures, per reconciler and what failed (store, Docker,
    /// GitHub, the Actions service, configuration).
    pub reconciler_errors: Family<ReconcilerErrorLabels, Counter>,
    /// Scale sets (`berth_scaleset_*`), from the service's statistics:
    /// jobs assigned (running included), jobs running, busy and idle runners.
    pub scaleset_assigned_jobs: Family<ScaleSetLabels, Gauge>,
    pub scaleset_running_jobs: Family<ScaleSetLabels, Gauge>,
    pub scaleset_busy_runners: Family<ScaleSetLabels, Gauge>,
    pub scaleset_idle_runners: Family<ScaleSetLabels, Gauge>,
    /// The runner count the scaler aims at, and the runners berth has.
    pub scaleset_desired_runners: Family<ScaleSetLabels, Gauge>,
    pub scaleset_runners: Family<ScaleSetLabels, Gauge>,
    /// A job's `queueTime` → its runner starting it (`JobStarted`).
    pub scaleset_job_startup_duration: HistogramFamily<ScaleSetLabels>,
    /// A job's runner starting it → its end (`JobCompleted`).
    pub scaleset_job_execution_duration: HistogramFamily<ScaleSetLabels>,
    /// Runner delegations: accepted, duplicate, retried, failed.
    pub scaleset_delegations: Family<ScaleSetOutcomeLabels, Counter>,
    /// Retirements of idle runners: retired, busy, gone, failed.
    pub scaleset_retirements: Family<ScaleSetOutcomeLabels, Counter>,
    /// Message sessions: created, conflict (409), refreshed, expired, failed.
    pub scaleset_session_events: Family<ScaleSetOutcomeLabels, Counter>,
    /// Job messages received, by kind (available, assigned, started, completed).
    pub scaleset_job_messages: Family<ScaleSetOutcomeLabels, Counter>,
    /// Warm containers waiting for a job, per pool (this replica's view of
    /// the store's warm pool after its last refill).
    pub warm_containers: Family<PoolLabels, Gauge>,
    /// Hand-offs per pool: `hit` (a job took a warm container), `miss` (the
    /// pool has a warm pool but none was ready; a cold create followed).
    pub warm_handoffs: Family<PoolOutcomeLabels, Counter>,
    /// Supervised components (crate::supervise): 1 while up, 0 while down.
    pub component_up: Family<ComponentLabels, Gauge>,
    /// When each component last finished a pass successfully (Unix seconds).
    pub component_last_success: Family<ComponentLabels, Gauge<f64, AtomicU64>>,
    /// Times the supervisor restarted each component.
    pub component_restarts: Family<ComponentLabels, Counter>,
    /// Open connections to the API (`crate::api::server`).
    pub api_connections: Gauge,
    /// API connections the server closed, by reason (timeouts, eviction).
    pub api_connections_closed: Family<ReasonLabels, Counter>,
    /// API requests refused before the router, by reason.
    pub api_requests_refused: Family<ReasonLabels, Counter>,
    /// Rows the retention component deleted, by what they were.
    pub retention_pruned: Family<WhatLabels, Counter>,
    /// The fleet (crate::fleet::capacity), refreshed at each scrape.
    pub host_up: Family<HostLabels, Gauge>,
    pub host_cordoned: Family<HostLabels, Gauge>,
    pub host_slots: Family<HostLabels, Gauge>,
    pub host_busy_slots: Family<HostLabels, Gauge>,
    pub host_warm_containers: Family<HostLabels, Gauge>,
    pub fleet_free_slots: Gauge,
    pub fleet_jobs_waiting: Family<PoolLabels, Gauge>,
    pub fleet_desired_hosts: Family<HostLabelsLabels, Gauge>,
    pub host_lease_acquired: Family<HostLabels, Counter>,
    pub host_probe_duration: HistogramFamily<HostLabels>,
    /// `berth_secret_refresh_failures_total{secret}`: re-reads of a secret
    /// that failed (crate::secrets); the last good value stayed in use.
    pub secret_refresh_failures: Family<SecretLabels, Counter>,
    /// `berth_secret_last_refresh_timestamp_seconds{secret}`.
    pub secret_last_refresh: Family<SecretLabels, Gauge<f64, AtomicU64>>,
    /// `berth_vault_token_operations_total{operation,outcome}`.
    pub vault_token_operations: Family<VaultTokenLabels, Counter>,
}

/// A secret berth keeps current, by its configuration name
/// (`github.webhook_secret`, `github.private_key`, `orchestrator.token`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabels {
    pub secret: String,
}

/// A Vault token operation (`login`, `renew`) and its outcome (`ok`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VaultTokenLabels {
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

/// A pool's `host_labels`, sorted and joined with `,`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabelsLabels {
    pub host_labels: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabels {
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let delegation_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "job_delegation_requests",
            "Job delegation requests received, by outcome",
            delegation_requests.clone(),
        );
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "GitHub webhook deliveries received, by outcome",
            webhook_deliveries.clone(),
        );
        let webhook_redeliveries_requested = Counter::default();
        registry.register(
            "webhook_redeliveries_requested",
            "Redeliveries of missed webhook deliveries berth asked GitHub for (and GitHub accepted)",
            webhook_redeliveries_requested.clone(),
        );
        let job_queue_size = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "job_queue_size",
            "Jobs queued and not yet claimed, per pool",
            job_queue_size.clone(),
        );
        let active_worker_containers = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "active_worker_containers",
            "Worker containers provisioning, starting or running, per pool",
            active_worker_containers.clone(),
        );
        let hook_commands = Family::<HookCommandLabels, Counter>::default();
        registry.register(
            "hook_commands",
            "Container-job hook commands (prepare_job, run_script_step, run_container_step, cleanup_job), by outcome",
            hook_commands.clone(),
        );
        let security_events = Family::<SecurityEventLabels, Counter>::default();
        registry.register(
            "security_events",
            "Falco alerts received, by rule, priority and the action taken (kill, alert, ignore, unmatched)",
            security_events.clone(),
        );
        let hook_command_duration: HistogramFamily<HookCommandKind> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "hook_command_duration_seconds",
            "How long container-job hook commands took",
            hook_command_duration.clone(),
        );
        let container_creation_duration =
            HistogramFamily::<PoolLabels>::new_with_constructor(duration_histogram);
        registry.register(
            "container_creation_duration_seconds",
            "Time from claiming a job to its worker container running",
            container_creation_duration.clone(),
        );
        let job_execution_duration =
            HistogramFamily::<PoolLabels>::new_with_constructor(duration_histogram);
        registry.register(
            "job_execution_duration_seconds",
            "Time from a worker container running to its exit",
            job_execution_duration.clone(),
        );
        let queue_wait = HistogramFamily::<PoolLabels>::new_with_constructor(duration_histogram);
        registry.register(
            "job_queue_wait_seconds",
            "Time from a job being accepted to its worker container running",
            queue_wait.clone(),
        );
        let jobs_finished = Family::<PoolStateLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs that reached a terminal state",
            jobs_finished.clone(),
        );
        let jobs_concluded = Family::<PoolConclusionLabels, Counter>::default();
        registry.register(
            "jobs_concluded",
            "Jobs GitHub reported completed, per pool and GitHub conclusion",
            jobs_concluded.clone(),
        );
        let pool_max_runners = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_max_runners",
            "The max_runners limit of each pool",
            pool_max_runners.clone(),
        );
        let github_api_requests = Family::<GithubLabels, Counter>::default();
        registry.register(
            "github_api_requests",
            "Requests made to the GitHub API, per endpoint and status",
            github_api_requests.clone(),
        );
        let github_rate_limit_remaining = Gauge::default();
        registry.register(
            "github_rate_limit_remaining",
            "X-RateLimit-Remaining of the latest GitHub API answer",
            github_rate_limit_remaining.clone(),
        );
        let docker_api_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "docker_api_errors",
            "Docker API calls that failed, per operation",
            docker_api_errors.clone(),
        );
        let reconciler_actions = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconciler_actions",
            "Corrective actions taken by reconcilers, per kind",
            reconciler_actions.clone(),
        );
        let reconciler_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconciler_failures",
            "Reconcile passes that failed, per reconciler",
            reconciler_failures.clone(),
        );
        let reconciler_errors = Family::<ReconcilerErrorLabels, Counter>::default();
        registry.register(
            "reconciler_errors",
            "Reconciler failures, per reconciler and kind of error (store, docker, github, scale_set, config)",
            reconciler_errors.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<ScaleSetLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let scaleset_assigned_jobs = gauge(
            &mut registry,
            "scaleset_assigned_jobs",
            "Jobs assigned to the scale set and not completed (running included)",
        );
        let scaleset_running_jobs = gauge(
            &mut registry,
            "scaleset_running_jobs",
            "Jobs of the scale set running",
        );
        let scaleset_busy_runners = gauge(
            &mut registry,
            "scaleset_busy_runners",
            "Runners of the scale set running a job",
        );
        let scaleset_idle_runners = gauge(
            &mut registry,
            "scaleset_idle_runners",
            "Registered runners of the scale set without a job",
        );
        let scaleset_desired_runners = gauge(
            &mut registry,
            "scaleset_desired_runners",
            "Runners the scale set should have",
        );
        let scaleset_runners = gauge(
            &mut registry,
            "scaleset_runners",
            "Runners berth has for the scale set (delegated, starting, idle or busy)",
        );
        let scaleset_job_startup_duration =
            HistogramFamily::<ScaleSetLabels>::new_with_constructor(duration_histogram);
        registry.register(
            "scaleset_job_startup_duration_seconds",
            "Time from a job being queued on GitHub to a runner of the scale set starting it",
            scaleset_job_startup_duration.clone(),
        );
        let scaleset_job_execution_duration =
            HistogramFamily::<ScaleSetLabels>::new_with_constructor(duration_histogram);
        registry.register(
            "scaleset_job_execution_duration_seconds",
            "Time from a runner of the scale set starting a job to the job's end",
            scaleset_job_execution_duration.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<ScaleSetOutcomeLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let scaleset_delegations = counter(
            &mut registry,
            "scaleset_delegations",
            "Runner delegations of scale-set listeners, by outcome",
        );
        let scaleset_retirements = counter(
            &mut registry,
            "scaleset_retirements",
            "Idle runner retirements of scale-set listeners, by outcome",
        );
        let scaleset_session_events = counter(
            &mut registry,
            "scaleset_session_events",
            "Scale-set message session events (created, conflict, refreshed, expired, failed)",
        );
        let scaleset_job_messages = counter(
            &mut registry,
            "scaleset_job_messages",
            "Scale-set job messages received, by kind",
        );
        registry.register(
            "build",
            "berth build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        for outcome in ["accepted", "duplicate", "invalid", "unauthorized", "error"] {
            drop(delegation_requests.get_or_create(&Self::outcome(outcome)));
        }
        for outcome in [
            "accepted",
            "duplicate",
            "ignored",
            "invalid",
            "unauthorized",
            "error",
        ] {
            drop(webhook_deliveries.get_or_create(&Self::outcome(outcome)));
        }
        let warm_containers = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "warm_containers",
            "Warm containers (created ahead, no job yet) per pool",
            warm_containers.clone(),
        );
        let warm_handoffs = Family::<PoolOutcomeLabels, Counter>::default();
        registry.register(
            "warm_handoffs",
            "Jobs of pools with a warm pool, by whether a warm container was ready (hit) or not (miss)",
            warm_handoffs.clone(),
        );
        let component_up = Family::<ComponentLabels, Gauge>::default();
        registry.register(
            "component_up",
            "Whether each supervised component is up (1) or down (0)",
            component_up.clone(),
        );
        let component_last_success = Family::<ComponentLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "component_last_success_timestamp_seconds",
            "When each supervised component last finished a pass successfully (Unix time)",
            component_last_success.clone(),
        );
        let component_restarts = Family::<ComponentLabels, Counter>::default();
        registry.register(
            "component_restarts",
            "Times the supervisor started a component again after it ended unexpectedly",
            component_restarts.clone(),
        );
        let api_connections = Gauge::default();
        registry.register(
            "api_connections",
            "Open connections to the API",
            api_connections.clone(),
        );
        let api_connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "api_connections_closed",
            "API connections closed by the server: tls_handshake_timeout, header_timeout, idle_timeout, evicted (at server.max_connections)",
            api_connections_closed.clone(),
        );
        for reason in [
            "tls_handshake_timeout",
            "header_timeout",
            "idle_timeout",
            "evicted",
        ] {
            drop(api_connections_closed.get_or_create(&ReasonLabels { reason }));
        }
        let api_requests_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "api_requests_refused",
            "API requests refused for their body: body_too_large (Content-Length above server.max_body_bytes), body_timeout, body_too_slow",
            api_requests_refused.clone(),
        );
        for reason in ["body_too_large", "body_timeout", "body_too_slow"] {
            drop(api_requests_refused.get_or_create(&ReasonLabels { reason }));
        }
        let retention_pruned = Family::<WhatLabels, Counter>::default();
        registry.register(
            "retention_pruned",
            "Rows the retention component deleted: job_logs, jobs (with their logs), deliveries, dashboard_sessions",
            retention_pruned.clone(),
        );
        for what in ["job_logs", "jobs", "deliveries", "dashboard_sessions"] {
            drop(retention_pruned.get_or_create(&WhatLabels { what }));
        }
        let host_up = Family::<HostLabels, Gauge>::default();
        registry.register(
            "host_up",
            "1 while the Docker host answers its probes (health up), else 0",
            host_up.clone(),
        );
        let host_cordoned = Family::<HostLabels, Gauge>::default();
        registry.register(
            "host_cordoned",
            "1 while the Docker host is cordoned or draining (no new jobs)",
            host_cordoned.clone(),
        );
        let host_slots = Family::<HostLabels, Gauge>::default();
        registry.register(
            "host_slots",
            "Job slots of the Docker host (docker_host.max_runners)",
            host_slots.clone(),
        );
        let host_busy_slots = Family::<HostLabels, Gauge>::default();
        registry.register(
            "host_busy_slots",
            "Jobs placed on the Docker host whose worker has not exited",
            host_busy_slots.clone(),
        );
        let host_warm_containers = Family::<HostLabels, Gauge>::default();
        registry.register(
            "host_warm_containers",
            "Warm containers ready on the Docker host",
            host_warm_containers.clone(),
        );
        let fleet_free_slots = Gauge::default();
        registry.register(
            "fleet_free_slots",
            "Slots free on hosts that are up and active",
            fleet_free_slots.clone(),
        );
        let fleet_jobs_waiting = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "fleet_jobs_waiting",
            "Jobs queued and waiting for a slot, per pool",
            fleet_jobs_waiting.clone(),
        );
        let fleet_desired_hosts = Family::<HostLabelsLabels, Gauge>::default();
        registry.register(
            "fleet_desired_hosts",
            "Hosts the work in hand needs, per host label set: ceil(min(active + queued, max_runners) summed over the pools needing the set / slots per host)",
            fleet_desired_hosts.clone(),
        );
        let host_lease_acquired = Family::<HostLabels, Counter>::default();
        registry.register(
            "host_lease_acquired",
            "Times this replica took a host's lease (started watching it)",
            host_lease_acquired.clone(),
        );
        let host_probe_duration =
            HistogramFamily::<HostLabels>::new_with_constructor(duration_histogram);
        registry.register(
            "host_probe_duration_seconds",
            "How long a Docker host's probe (version and info) took",
            host_probe_duration.clone(),
        );
        let secret_refresh_failures = Family::<SecretLabels, Counter>::default();
        registry.register(
            "secret_refresh_failures",
            "Re-reads of a secret (file or Vault) that failed; the last good value stayed in use",
            secret_refresh_failures.clone(),
        );
        let secret_last_refresh = Family::<SecretLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "secret_last_refresh_timestamp_seconds",
            "When each secret was last read successfully (Unix time)",
            secret_last_refresh.clone(),
        );
        let vault_token_operations = Family::<VaultTokenLabels, Counter>::default();
        registry.register(
            "vault_token_operations",
            "Vault token logins (AppRole, or the token file read again) and renewals, by outcome",
            vault_token_operations.clone(),
        );
        for kind in RECONCILER_KINDS {
            drop(reconciler_actions.get_or_create(&KindLabels { kind }));
            drop(reconciler_failures.get_or_create(&KindLabels { kind }));
        }
        for op in DOCKER_OPS {
            drop(docker_api_errors.get_or_create(&OpLabels { op }));
        }
        Self {
            registry: Arc::new(registry),
            delegation_requests,
            webhook_deliveries,
            webhook_redeliveries_requested,
            job_queue_size,
            active_worker_containers,
            container_creation_duration,
            hook_commands,
            security_events,
            hook_command_duration,
            job_execution_duration,
            queue_wait,
            jobs_finished,
            jobs_concluded,
            pool_max_runners,
            github_api_requests,
            github_rate_limit_remaining,
            docker_api_errors,
            reconciler_actions,
            reconciler_failures,
            reconciler_errors,
            scaleset_assigned_jobs,
            scaleset_running_jobs,
            scaleset_busy_runners,
            scaleset_idle_runners,
            scaleset_desired_runners,
            scaleset_runners,
            scaleset_job_startup_duration,
            scaleset_job_execution_duration,
            scaleset_delegations,
            scaleset_retirements,
            scaleset_session_events,
            scaleset_job_messages,
            warm_containers,
            warm_handoffs,
            component_up,
            component_last_success,
            component_restarts,
            api_connections,
            api_connections_closed,
            api_requests_refused,
            retention_pruned,
            host_up,
            host_cordoned,
            host_slots,
            host_busy_slots,
            host_warm_containers,
            fleet_free_slots,
            fleet_jobs_waiting,
            fleet_desired_hosts,
            host_lease_acquired,
            host_probe_duration,
            secret_refresh_failures,
            secret_last_refresh,
            vault_token_operations,
        }
    }

    /// Creates a kept-current secret's failure counter at zero.
    pub fn init_secret(&self, secret: &str) {
        drop(self.secret_refresh_failures.get_or_create(&SecretLabels {
            secret: secret.to_string(),
        }));
    }

    /// A secret was read successfully now.
    pub fn secret_refreshed(&self, secret: &str) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
        self.secret_last_refresh
            .get_or_create(&SecretLabels {
                secret: secret.to_string(),
            })
            .set(now);
    }

    /// A secret could not be read again.
    pub fn secret_refresh_failed(&self, secret: &str) {
        self.secret_refresh_failures
            .get_or_create(&SecretLabels {
                secret: secret.to_string(),
            })
            .inc();
    }

    /// Creates the Vault token operation series at zero.
    pub fn init_vault_token_operations(&self) {
        for operation in ["login", "renew"] {
            for outcome in ["ok", "error"] {
                drop(
                    self.vault_token_operations
                        .get_or_create(&VaultTokenLabels { operation, outcome }),
                );
            }
        }
    }

    /// A Vault token `login` or `renew` succeeded or failed.
    pub fn vault_token_operation(&self, operation: &'static str, ok: bool) {
        self.vault_token_operations
            .get_or_create(&VaultTokenLabels {
                operation,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    fn host(name: &str) -> HostLabels {
        HostLabels {
            host: name.to_string(),
        }
    }

    /// Sets a host's gauges (crate::fleet::capacity::publish).
    pub fn set_host(&self, host: &str, up: bool, cordoned: bool, slots: i64, busy: i64, warm: i64) {
        let labels = Self::host(host);
        self.host_up.get_or_create(&labels).set(i64::from(up));
        self.host_cordoned
            .get_or_create(&labels)
            .set(i64::from(cordoned));
        self.host_slots.get_or_create(&labels).set(slots);
        self.host_busy_slots.get_or_create(&labels).set(busy);
        self.host_warm_containers.get_or_create(&labels).set(warm);
    }

    /// Creates every per-host series at zero (see [`Metrics::init_pools`]):
    /// on every replica, so the first lease a replica takes over from
    /// another shows as a rise of `berth_host_lease_acquired_total`
    /// (`increase()` misses a series born at 1), and each host's probe
    /// histogram is there before its first probe. The gauges follow at
    /// each scrape (crate::fleet::capacity::publish).
    pub fn init_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        for host in hosts {
            let labels = Self::host(host);
            drop(self.host_lease_acquired.get_or_create(&labels));
            drop(self.host_probe_duration.get_or_create(&labels));
        }
    }

    pub fn host_lease_taken(&self, host: &str) {
        self.host_lease_acquired
            .get_or_create(&Self::host(host))
            .inc();
    }

    pub fn host_probed(&self, host: &str, took: std::time::Duration) {
        self.host_probe_duration
            .get_or_create(&Self::host(host))
            .observe(took.as_secs_f64());
    }

    fn component(name: &str) -> ComponentLabels {
        ComponentLabels {
            component: name.to_string(),
        }
    }

    /// Counts a reconciler failure by the kind of its error
    /// (`berth_reconciler_errors_total`).
    pub fn reconciler_error(&self, reconciler: &'static str, error: &'static str) {
        self.reconciler_errors
            .get_or_create(&ReconcilerErrorLabels { reconciler, error })
            .inc();
    }

    /// Sets `berth_component_up{component}`.
    pub fn component_up(&self, component: &str, up: bool) {
        self.component_up
            .get_or_create(&Self::component(component))
            .set(i64::from(up));
        // The restart counter exists from the first report on, at zero.
        drop(
            self.component_restarts
                .get_or_create(&Self::component(component)),
        );
    }

    /// Sets `berth_component_last_success_timestamp_seconds{component}`.
    pub fn component_last_success(&self, component: &str, at: time::OffsetDateTime) {
        self.component_last_success
            .get_or_create(&Self::component(component))
            .set(at.unix_timestamp_nanos() as f64 / 1e9);
    }

    /// Counts a restart (`berth_component_restarts_total`).
    pub fn component_restarted(&self, component: &str) {
        self.component_restarts
            .get_or_create(&Self::component(component))
            .inc();
    }

    /// Creates every per-scale-set series at zero (see [`Metrics::init_pools`]).
    pub fn init_scale_sets<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            let labels = ScaleSetLabels {
                scale_set: name.to_string(),
            };
            for gauge in [
                &self.scaleset_assigned_jobs,
                &self.scaleset_running_jobs,
                &self.scaleset_busy_runners,
                &self.scaleset_idle_runners,
                &self.scaleset_desired_runners,
                &self.scaleset_runners,
            ] {
                drop(gauge.get_or_create(&labels));
            }
            drop(self.scaleset_job_startup_duration.get_or_create(&labels));
            drop(self.scaleset_job_execution_duration.get_or_create(&labels));
            for outcome in ["accepted", "duplicate", "retried", "failed"] {
                drop(
                    self.scaleset_delegations
                        .get_or_create(&ScaleSetOutcomeLabels {
                            scale_set: name.to_string(),
                            outcome,
                        }),
                );
            }
        }
    }

    /// Creates every per-pool series at zero, so dashboards and alerts see
    /// each metric from the first scrape, not only after its first event.
    pub fn init_pools<'a>(&self, pools: impl IntoIterator<Item = &'a str>) {
        for pool in pools {
            let labels = Self::pool(pool);
            drop(self.job_queue_size.get_or_create(&labels));
            drop(self.active_worker_containers.get_or_create(&labels));
            drop(self.container_creation_duration.get_or_create(&labels));
            drop(self.job_execution_duration.get_or_create(&labels));
            drop(self.queue_wait.get_or_create(&labels));
            drop(self.pool_max_runners.get_or_create(&labels));
            drop(self.warm_containers.get_or_create(&labels));
            for outcome in ["hit", "miss"] {
                drop(self.warm_handoffs.get_or_create(&PoolOutcomeLabels {
                    pool: pool.to_string(),
                    outcome,
                }));
            }
            for state in crate::store::JobState::TERMINAL {
                drop(self.jobs_finished.get_or_create(&PoolStateLabels {
                    pool: pool.to_string(),
                    state: state.as_str(),
                }));
            }
            for conclusion in GITHUB_CONCLUSIONS {
                drop(self.jobs_concluded.get_or_create(&PoolConclusionLabels {
                    pool: pool.to_string(),
                    conclusion,
                }));
            }
        }
    }

    /// Exports a pool's `max_runners` (`berth_pool_max_runners`).
    pub fn set_pool_max_runners(&self, pool: &str, max_runners: u32) {
        self.pool_max_runners
            .get_or_create(&Self::pool(pool))
            .set(i64::from(max_runners));
    }

    /// Counts a hand-off of a pool with a warm pool: `hit` or `miss`
    /// (`berth_warm_handoffs_total`).
    pub fn warm_handoff(&self, pool: &str, hit: bool) {
        self.warm_handoffs
            .get_or_create(&PoolOutcomeLabels {
                pool: pool.to_string(),
                outcome: if hit { "hit" } else { "miss" },
            })
            .inc();
    }

    /// Counts rows the retention component deleted (`berth_retention_pruned_total`).
    pub fn retention_pruned(&self, what: &'static str, rows: u64) {
        if rows > 0 {
            self.retention_pruned
                .get_or_create(&WhatLabels { what })
                .inc_by(rows);
        }
    }

    /// Counts an API connection the server closed (`berth_api_connections_closed_total`).
    pub fn api_connection_closed(&self, reason: &'static str) {
        self.api_connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts an API request refused before the router (`berth_api_requests_refused_total`).
    pub fn api_request_refused(&self, reason: &'static str) {
        self.api_requests_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a job that reached a terminal state (`berth_jobs_finished_total`).
    pub fn job_finished(&self, pool: &str, state: crate::store::JobState) {
        self.jobs_finished
            .get_or_create(&PoolStateLabels {
                pool: pool.to_string(),
                state: state.as_str(),
            })
            .inc();
    }

    /// Counts a job GitHub reported completed with `conclusion`
    /// (`berth_jobs_concluded_total`); unknown conclusions count as `other`.
    pub fn job_concluded(&self, pool: &str, conclusion: &str) {
        let conclusion = GITHUB_CONCLUSIONS
            .iter()
            .copied()
            .find(|c| *c == conclusion)
            .unwrap_or("other");
        self.jobs_concluded
            .get_or_create(&PoolConclusionLabels {
                pool: pool.to_string(),
                conclusion,
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn pool(pool: &str) -> PoolLabels {
        PoolLabels {
            pool: pool.to_string(),
        }
    }

    pub fn outcome(outcome: &'static str) -> OutcomeLabels {
        OutcomeLabels { outcome }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_metric_names_are_exported() {
        let m = Metrics::new();
        m.delegation_requests
            .get_or_create(&Metrics::outcome("accepted"))
            .inc();
        m.job_queue_size
            .get_or_create(&Metrics::pool("linux"))
            .set(3);
        m.active_worker_containers
            .get_or_create(&Metrics::pool("linux"))
            .set(1);
        m.container_creation_duration
            .get_or_create(&Metrics::pool("linux"))
            .observe(0.2);
        m.job_execution_duration
            .get_or_create(&Metrics::pool("linux"))
            .observe(12.0);
        m.github_api_requests
            .get_or_create(&GithubLabels {
                endpoint: "generate_jitconfig",
                status: "201".into(),
            })
            .inc();
        let text = m.encode();
        for name in [
            "berth_job_delegation_requests_total{outcome=\"accepted\"} 1",
            "berth_job_queue_size{pool=\"linux\"} 3",
            "berth_active_worker_containers{pool=\"linux\"} 1",
            "berth_container_creation_duration_seconds_bucket",
            "berth_job_execution_duration_seconds_count{pool=\"linux\"} 1",
            "berth_github_api_requests_total{endpoint=\"generate_jitconfig\",status=\"201\"} 1",
            "berth_build_info",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(text.contains("le=\"0.01\"") && text.contains("le=\"3600.0\""));
    }

    #[test]
    fn per_pool_series_start_at_zero_and_conclusions_stay_bounded() {
        let m = Metrics::new();
        m.init_pools(["linux"]);
        m.set_pool_max_runners("linux", 7);
        m.job_concluded("linux", "success");
        m.job_concluded("linux", "something-new");
        m.job_finished("linux", crate::store::JobState::Expired);
        let text = m.encode();
        for line in [
            "berth_pool_max_runners{pool=\"linux\"} 7",
            "berth_jobs_concluded_total{pool=\"linux\",conclusion=\"success\"} 1",
            "berth_jobs_concluded_total{pool=\"linux\",conclusion=\"other\"} 1",
            "berth_jobs_concluded_total{pool=\"linux\",conclusion=\"failure\"} 0",
            "berth_jobs_finished_total{pool=\"linux\",state=\"expired\"} 1",
            "berth_jobs_finished_total{pool=\"linux\",state=\"failed\"} 0",
            "berth_reconciler_failures_total{kind=\"orphan_runner\"} 0",
            "berth_docker_api_errors_total{op=\"container_create\"} 0",
            "berth_webhook_deliveries_total{outcome=\"error\"} 0",
            "berth_warm_containers{pool=\"linux\"} 0",
            "berth_warm_handoffs_total{pool=\"linux\",outcome=\"miss\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("something-new"));
    }

    #[test]
    fn per_host_counters_and_histograms_start_at_zero() {
        let m = Metrics::new();
        m.init_hosts(["a", "b"]);
        m.host_lease_taken("b");
        let text = m.encode();
        for line in [
            "berth_host_lease_acquired_total{host=\"a\"} 0",
            "berth_host_lease_acquired_total{host=\"b\"} 1",
            "berth_host_probe_duration_seconds_count{host=\"a\"} 0",
            "berth_host_probe_duration_seconds_count{host=\"b\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
