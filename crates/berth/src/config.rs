//! Configuration: one TOML file, every key also settable as
//! `BERTH_<SECTION>__<KEY>` (docs/reference/configuration.md lists every
//! key; a test keeps it, deploy/berth.example.toml and this module in step).
//!
//! The environment is passed in rather than read from the process, so tests
//! (and embedders such as `berth demo`) can load a configuration without
//! touching global state. Loading never stops at the first problem: every
//! error names the key and where its value came from (the file or the
//! environment), because an operator fixing a config wants the whole list.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Deserialize;

use crate::secrets::SecretLocation;

/// Exit code of `berth config check` and `berth serve` on a bad configuration.
pub const EXIT_CONFIG: u8 = 64;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "BERTH_";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub github: GithubConfig,
    /// How secrets given as `vault://…` references are read (crate::secrets).
    pub vault: Option<VaultConfig>,
    pub docker: DockerConfig,
    pub dispatch: DispatchConfig,
    pub reconcile: ReconcileConfig,
    pub logs: LogsConfig,
    pub retention: RetentionConfig,
    pub fleet: FleetConfig,
    /// `[security]`: what berth does about Falco's alerts
    /// (crate::security::policy).
    pub security: crate::security::SecurityConfig,
    /// The Docker hosts jobs run on. Empty: the one host `docker.host`,
    /// named [`DEFAULT_HOST_NAME`].
    #[serde(rename = "docker_host")]
    pub docker_hosts: Vec<DockerHostConfig>,
    #[serde(rename = "pool")]
    pub pools: Vec<PoolConfig>,
    #[serde(rename = "scale_set")]
    pub scale_sets: Vec<ScaleSetConfig>,
    /// Only for a standalone `berth proxy`: where to delegate jobs.
    pub orchestrator: Option<OrchestratorConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `host:port` the HTTP API listens on.
    pub listen: String,
    /// Serve `/metrics` without a bearer token.
    pub public_metrics: bool,
    /// Serve `/healthz` and `/readyz` without a bearer token.
    pub public_health: bool,
    /// Serve the web dashboard without signing in.
    pub public_dashboard: bool,
    /// PEM certificate chain: with `tls_key`, the API speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: with TLS on, clients may present a certificate
    /// signed by one of them, and `POST /v1/security/events` requires one
    /// (mutual TLS for the alerting path). Other endpoints do not ask.
    pub tls_client_ca: Option<PathBuf>,
    /// Open connections at most. At the cap the connection idle longest
    /// is closed to make room; while every one is busy, new connections
    /// wait in the listen backlog (see docs/operations.md, Security).
    pub max_connections: usize,
    /// A new connection must send a request's headers within this long.
    #[serde(with = "secs")]
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this long.
    #[serde(with = "secs")]
    pub body_timeout: Duration,
    /// ...and, after its first 5 seconds, at no less than this many bytes
    /// a second on average (0: no minimum).
    pub body_min_rate: u64,
    /// A TLS client must finish its handshake within this long.
    #[serde(with = "secs")]
    pub tls_handshake_timeout: Duration,
    /// A kept-alive connection without a request in progress is closed
    /// after this long.
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// A request whose `Content-Length` is above this is refused (413)
    /// before its body is read. The webhook endpoint takes up to GitHub's
    /// own cap of 25 MiB; other endpoints take less.
    pub max_body_bytes: u64,
    /// This API's URL as worker containers reach it (e.g.
    /// `http://host.docker.internal:8080`): `berth hook` in the workers of
    /// `container_jobs` pools calls it (docs/container-jobs.md).
    pub worker_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_metrics: true,
            public_health: true,
            public_dashboard: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            body_min_rate: 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: crate::intake::webhook::MAX_WEBHOOK_BYTES as u64,
            worker_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created if missing) or `postgres://user@host/db`.
    pub url: String,
    /// On SQLite, commit concurrent intake writes (webhooks, delegate calls)
    /// together, one fsync for all (see `store::group_commit`). Off: one
    /// commit per request, for comparison.
    pub group_commit: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://berth.db".into(),
            group_commit: true,
        }
    }
}

/// Webhook secrets shorter than this get a warning at start.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GHES.
    pub api_url: String,
    pub app_id: Option<u64>,
    /// The App's client id; accepted by GitHub as the JWT issuer too.
    pub client_id: Option<String>,
    /// A file holding the App's PEM private key, or a `vault://` reference.
    pub private_key_path: Option<SecretLocation>,
    /// The App's PEM private key itself (for `BERTH_GITHUB__PRIVATE_KEY`).
    pub private_key: Option<Secret>,
    pub webhook_secret: Option<Secret>,
    /// A file holding the webhook secret, or a `vault://` reference.
    pub webhook_secret_file: Option<SecretLocation>,
    /// After the webhook secret changes (a re-read file or Vault secret),
    /// deliveries signed with the previous one are accepted this long.
    #[serde(with = "secs")]
    pub webhook_secret_overlap: Duration,
    /// Timeout of one GitHub API request.
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// Attempts per GitHub API call on 5xx, timeouts and rate limits.
    pub max_attempts: u32,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".into(),
            app_id: None,
            client_id: None,
            private_key_path: None,
            private_key: None,
            webhook_secret: None,
            webhook_secret_file: None,
            webhook_secret_overlap: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(30),
            max_attempts: 6,
        }
    }
}

/// The connection to Vault or OpenBao (`[vault]`), for secrets given as
/// `vault://MOUNT/PATH#FIELD` references (crate::secrets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example.com:8200` (or `http://` on loopback).
    pub address: String,
    /// PEM certificate(s) the server's certificate must chain to, on top
    /// of the usual roots.
    pub ca_cert: Option<PathBuf>,
    /// Enterprise or OpenBao namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// How berth gets its Vault token.
    pub auth: VaultAuth,
    /// `auth = "token"`: the file holding the token (re-read when the token
    /// cannot be renewed).
    pub token_file: Option<PathBuf>,
    /// `auth = "approle"`: the role id, or `role_id_file`.
    pub role_id: Option<Secret>,
    pub role_id_file: Option<PathBuf>,
    /// `auth = "approle"`: the file holding the secret id.
    pub secret_id_file: Option<PathBuf>,
    /// Where the AppRole auth method is mounted.
    #[serde(default = "defaults::approle_mount")]
    pub approle_mount: String,
    /// How often secrets are read again when Vault gives them no shorter
    /// lease (KV version 2 secrets have none); files too.
    #[serde(default = "defaults::vault_refresh_interval", with = "secs")]
    pub refresh_interval: Duration,
    /// Time limit of one request to Vault.
    #[serde(default = "defaults::vault_request_timeout", with = "secs")]
    pub request_timeout: Duration,
}

/// How berth authenticates to Vault (`vault.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuth {
    /// A token from `vault.token_file` (written by Vault Agent, say).
    Token,
    /// AppRole: `role_id` (or `role_id_file`) and `secret_id_file`.
    Approle,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock` or `tcp://socket-proxy:2375`.
    pub host: String,
    /// The bridge network worker containers join unless a pool asks for host networking.
    pub network: String,
    /// Timeout of one Docker API call (image pulls excepted).
    #[serde(with = "secs")]
    pub call_timeout: Duration,
    /// Names this berth installation on the Docker host (label
    /// `berth.instance`): reconcilers only touch their own instance's
    /// containers, so several installations (or test runs) can share a host.
    /// Replicas of one installation share it.
    pub instance: String,
    /// Image repositories a pool may use without pinning by digest, as
    /// prefixes (`ghcr.io/acme/` allows everything below it).
    pub allowed_images: Vec<String>,
    /// How long an image pull may take.
    #[serde(with = "secs")]
    pub pull_timeout: Duration,
    /// Extra `/etc/hosts` entries for workers, as `name:address`
    /// (`host.docker.internal:host-gateway` lets workers reach a service on the host).
    pub extra_hosts: Vec<String>,
    /// The egress proxy workers go out through, `http://HOST:PORT` (see
    /// docs/egress-proxy.md). When set, workers get `HTTP_PROXY`,
    /// `HTTPS_PROXY` and `NO_PROXY` (and their lower-case forms) naming it,
    /// and `network` must be an internal network (berth creates it with
    /// `Internal: true`), so the proxy is the only way out. Not a secret:
    /// credentials in it are refused.
    pub egress_proxy: Option<String>,
    /// Destinations workers reach without the proxy (`NO_PROXY`), when
    /// `egress_proxy` is set: names on the internal network, loopback.
    pub no_proxy: Vec<String>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: "unix:///var/run/docker.sock".into(),
            network: "berth".into(),
            call_timeout: Duration::from_secs(30),
            instance: "berth".into(),
            allowed_images: Vec::new(),
            pull_timeout: Duration::from_secs(600),
            extra_hosts: Vec::new(),
            egress_proxy: None,
            no_proxy: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        }
    }
}

/// The name of the one host of an installation without `[[docker_host]]`
/// (its URL is `docker.host`).
pub const DEFAULT_HOST_NAME: &str = "default";

/// One Docker host of the fleet (`[[docker_host]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerHostConfig {
    /// Names the host in the API, metrics, logs and the `berth.host` label.
    pub name: String,
    /// `unix:///path`, `tcp://HOST:PORT` (a berth socket proxy on that
    /// host) or, with `tls_ca`/`tls_cert`/`tls_key`, `https://HOST:PORT`
    /// (an engine or proxy that checks client certificates).
    pub url: String,
    /// What the host offers (`gpu`, `arm64`, `zone-a`); pools ask for them
    /// with `host_labels`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The host's job slots: jobs on it at once, all pools together.
    #[serde(default = "defaults::host_max_runners")]
    pub max_runners: u32,
    /// Relative share of jobs under `spread` placement (2.0 takes twice the
    /// load of 1.0 before it counts as equally busy).
    #[serde(default = "defaults::host_weight")]
    pub weight: f64,
    /// CA certificate the host's certificate must chain to (PEM).
    pub tls_ca: Option<PathBuf>,
    /// berth's client certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// berth's client key (PEM).
    pub tls_key: Option<PathBuf>,
}

impl DockerHostConfig {
    /// Whether the host has every label in `wanted` (case-insensitive).
    pub fn offers(&self, wanted: &[String]) -> bool {
        wanted
            .iter()
            .all(|w| self.labels.iter().any(|l| l.eq_ignore_ascii_case(w)))
    }
}

/// How jobs are placed on hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// The least loaded host (busy slots over slots, divided by weight).
    #[default]
    Spread,
    /// The first host, in configuration order, with a free slot: load
    /// gathers on the first hosts, and the last ones idle, ready to scale in.
    Pack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// `spread` (default) or `pack`.
    pub placement: Placement,
    /// How often each host is probed (ping, version, disk).
    #[serde(with = "secs")]
    pub probe_interval: Duration,
    /// A host that has not answered a probe for this long is `down`: it gets
    /// no new jobs, and its jobs are settled from GitHub's view.
    #[serde(with = "secs")]
    pub down_after: Duration,
    /// How long a replica's ownership of a host's watch, log capture and
    /// reconciling lasts unless renewed (renewed every third of it).
    #[serde(with = "secs")]
    pub host_lease: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            placement: Placement::Spread,
            probe_interval: Duration::from_secs(5),
            down_after: Duration::from_secs(30),
            host_lease: Duration::from_secs(10),
        }
    }
}

impl FleetConfig {
    fn validate(&self, c: &mut Checks) {
        if self.probe_interval < Duration::from_millis(200) {
            c.bad("fleet.probe_interval", "must be at least 0.2 seconds");
        }
        if self.down_after < self.probe_interval * 2 {
            c.bad(
                "fleet.down_after",
                "must be at least twice fleet.probe_interval (one lost probe is not a dead host)",
            );
        }
        if self.host_lease < Duration::from_secs(2) {
            c.bad("fleet.host_lease", "must be at least 2 seconds");
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Jobs provisioning, starting or running at once across all pools.
    pub global_max_runners: u32,
    /// How long a claim holds a job before another worker may take it over.
    #[serde(with = "secs")]
    pub lease: Duration,
    /// Attempts to create a container before the job fails.
    pub create_attempts: u32,
    /// Times a job may be claimed (each claim mints a runner) before it fails.
    pub max_attempts: u32,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            global_max_runners: 50,
            lease: Duration::from_secs(60),
            create_attempts: 3,
            max_attempts: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Period of the reconcile pass (it also runs on demand).
    #[serde(with = "secs")]
    pub interval: Duration,
    /// A `berth.managed` container with no live job is removed after this long.
    #[serde(with = "secs")]
    pub orphan_grace: Duration,
    /// A queued job is checked against GitHub once it has waited this long.
    #[serde(with = "secs")]
    pub queued_check_after: Duration,
    /// Period of the delivery catch-up (crate::reconcile::delivery_catchup),
    /// which has GitHub redeliver the `workflow_job` deliveries berth missed;
    /// it also runs at start. 0 disables it.
    #[serde(with = "secs")]
    pub delivery_catchup_interval: Duration,
    /// How far back the catch-up's first pass after a start reads GitHub's
    /// delivery log (later passes read from the previous one on): at least
    /// the longest outage to recover from, at most GitHub's 3 days.
    #[serde(with = "secs")]
    pub delivery_catchup_window: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(120),
            queued_check_after: Duration::from_secs(600),
            delivery_catchup_interval: Duration::from_secs(300),
            delivery_catchup_window: Duration::from_secs(3600),
        }
    }
}

/// How long the store keeps what is finished (`reconcile::retention`
/// prunes it in bounded batches). A zero keeps it forever.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Finished jobs (completed, failed, cancelled, expired) are deleted,
    /// with their logs, this long after they finished.
    #[serde(with = "secs")]
    pub finished_jobs: Duration,
    /// A finished job's output is deleted this long after the job finished
    /// (the job's record stays until `finished_jobs`).
    #[serde(with = "secs")]
    pub job_logs: Duration,
    /// Webhook delivery ids, kept to tell a redelivery apart: at least
    /// GitHub's redelivery window of 3 days.
    #[serde(with = "secs")]
    pub deliveries: Duration,
    /// How often the pruning runs.
    #[serde(with = "secs")]
    pub interval: Duration,
    /// Rows deleted per statement; a pass deletes at most 20 batches of
    /// each kind, so one pass never holds the store for long.
    pub batch: u32,
}

/// GitHub keeps its log of an App's webhook deliveries, and lets one be
/// redelivered, for 3 days.
pub const GITHUB_REDELIVERY_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            finished_jobs: Duration::from_secs(30 * DAY),
            job_logs: Duration::from_secs(7 * DAY),
            deliveries: Duration::from_secs(7 * DAY),
            interval: Duration::from_secs(300),
            batch: 500,
        }
    }
}

impl RetentionConfig {
    fn validate(&self, c: &mut Checks) {
        if !self.deliveries.is_zero() && self.deliveries < GITHUB_REDELIVERY_WINDOW {
            c.bad(
                "retention.deliveries",
                "must be at least 259200 (3 days, GitHub's redelivery window), or 0 to keep them",
            );
        }
        if self.interval.is_zero() {
            c.bad("retention.interval", "must be more than 0");
        }
        if self.batch == 0 || self.batch > 100_000 {
            c.bad("retention.batch", "must be from 1 to 100000");
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// `tracing` filter, e.g. `info` or `berth=debug,info`.
    pub level: String,
    /// Bytes of container output kept per job; the rest is dropped and marked truncated.
    pub job_log_cap_bytes: u64,
    /// Also write every line of worker output, as a JSON object with the
    /// job's correlation fields, to this file (for Loki, Fluentd, …).
    pub job_output_file: Option<PathBuf>,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            job_log_cap_bytes: 10 * 1024 * 1024,
            job_output_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// `org:NAME` or `repo:OWNER/NAME`.
    pub scope: Scope,
    /// A job is for this pool when all its labels are among these (case-insensitive).
    pub labels: Vec<String>,
    pub image: String,
    /// `never`, `if-not-present` (default) or `always`.
    #[serde(default)]
    pub pull_policy: crate::docker::image_policy::PullPolicy,
    #[serde(default = "defaults::max_runners")]
    pub max_runners: u32,
    #[serde(default = "defaults::runner_group_id")]
    pub runner_group_id: u64,
    #[serde(default = "defaults::cpus")]
    pub cpus: f64,
    /// Bytes, or with a suffix: `512m`, `4g`.
    #[serde(default = "defaults::memory")]
    pub memory: ByteSize,
    #[serde(default = "defaults::pids_limit")]
    pub pids_limit: i64,
    /// Capabilities added back after dropping all (e.g. `CHOWN`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Run workers on the host network instead of berth's bridge network.
    #[serde(default)]
    pub host_network: bool,
    /// Read-only root filesystem with tmpfs work folders.
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// A job running longer than this is stopped and failed.
    #[serde(default = "defaults::job_timeout", with = "secs")]
    pub job_timeout: Duration,
    /// A runner that got no job within this long is removed and deregistered.
    #[serde(default = "defaults::idle_timeout", with = "secs")]
    pub idle_timeout: Duration,
    #[serde(default = "defaults::work_folder")]
    pub work_folder: String,
    /// Containers kept created ahead of demand (the warm pool); a job takes
    /// one instead of waiting for a create. They hold no runner credential
    /// until hand-off. At most `max_runners`; 0 turns warm pools off.
    #[serde(default)]
    pub warm: u32,
    /// Start warm containers too (their entrypoint waits on stdin for the
    /// JIT config), so a hand-off skips the start as well as the create.
    #[serde(default)]
    pub warm_started: bool,
    /// Host labels the pool's jobs need: they run only on hosts that offer
    /// all of them (`[[docker_host]] labels`).
    #[serde(default)]
    pub host_labels: Vec<String>,
    /// Slots of its Docker host one job of this pool takes (a host runs
    /// jobs while their slots add up to at most its `max_runners`): more
    /// than 1 for jobs that run more than their worker, such as container
    /// jobs with services.
    #[serde(default = "defaults::host_slots")]
    pub host_slots: u32,
    /// Run `container:` jobs, `services:` and Docker container actions
    /// through the runner's container hooks (`berth hook`): the workers get
    /// `ACTIONS_RUNNER_CONTAINER_HOOKS`, a per-job credential and per-job
    /// volumes, and berth runs the containers under `containers`' policy.
    #[serde(default)]
    pub container_jobs: bool,
    /// What a container job may run (`[pool.containers]`).
    #[serde(default)]
    pub containers: ContainerPolicy,
    /// When a security alert kills one of the pool's jobs, also cancel its
    /// whole workflow run on GitHub (the App needs `actions: write`).
    #[serde(default)]
    pub security_cancel_run: bool,
}

/// `[pool.containers]`: the policy for the containers a pool's jobs ask for
/// through the hook (job container, services, container actions). Every
/// container gets berth's hardening whatever this says: never privileged,
/// all capabilities dropped but `capabilities`, no-new-privileges, limits,
/// no host mounts (docs/container-jobs.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerPolicy {
    /// Images a job may name: `*` matches any run of characters
    /// (`postgres:*`, `node:22*`, `ghcr.io/acme/*`); an entry pinned by digest
    /// (`name@sha256:…`) allows exactly that image. Empty: none.
    pub images: Vec<String>,
    /// When the hook's images are pulled (`never`, `if-not-present`, `always`).
    pub pull_policy: crate::docker::image_policy::PullPolicy,
    /// Set `ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER`: jobs without `container:`
    /// fail instead of running their steps in the worker.
    pub require_job_container: bool,
    /// Service containers a job may ask for.
    pub max_services: u32,
    /// CPU limit of each container.
    pub cpus: f64,
    /// Memory limit of each container.
    pub memory: ByteSize,
    pub pids_limit: i64,
    /// Capabilities the containers keep (all others are dropped). The default
    /// is what package managers and database images need to start as root.
    pub capabilities: Vec<String>,
    /// Build Dockerfile container actions on the Docker host (through the
    /// socket proxy's `image_build` rule); refused when false.
    pub allow_builds: bool,
    /// How long `prepare_job` waits for services' health checks.
    #[serde(with = "secs")]
    pub service_health_timeout: Duration,
    /// Size limit of the job's workspace and temp volumes (tmpfs: they count
    /// toward the host's memory, and vanish with the job).
    pub workspace_size: ByteSize,
}

impl Default for ContainerPolicy {
    fn default() -> Self {
        Self {
            images: Vec::new(),
            pull_policy: Default::default(),
            require_job_container: false,
            max_services: 4,
            cpus: 2.0,
            memory: ByteSize(4 * 1024 * 1024 * 1024),
            pids_limit: 4096,
            capabilities: [
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "FSETID",
                "KILL",
                "NET_BIND_SERVICE",
                "SETGID",
                "SETUID",
                "SETPCAP",
            ]
            .map(str::to_owned)
            .to_vec(),
            allow_builds: false,
            service_health_timeout: Duration::from_secs(120),
            workspace_size: ByteSize(4 * 1024 * 1024 * 1024),
        }
    }
}

mod defaults {
    use super::ByteSize;
    use std::time::Duration;

    pub fn max_runners() -> u32 {
        10
    }
    pub fn runner_group_id() -> u64 {
        1
    }
    pub fn cpus() -> f64 {
        2.0
    }
    pub fn memory() -> ByteSize {
        ByteSize(4 * 1024 * 1024 * 1024)
    }
    pub fn pids_limit() -> i64 {
        4096
    }
    pub fn job_timeout() -> Duration {
        Duration::from_secs(6 * 3600)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn work_folder() -> String {
        "_work".into()
    }
    pub fn host_slots() -> u32 {
        1
    }
    pub fn host_max_runners() -> u32 {
        10
    }
    pub fn host_weight() -> f64 {
        1.0
    }
    pub fn scale_set_max() -> u32 {
        10
    }
    pub fn approle_mount() -> String {
        "approle".into()
    }
    pub fn vault_refresh_interval() -> Duration {
        crate::secrets::DEFAULT_REFRESH_INTERVAL
    }
    pub fn vault_request_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn runner_group() -> String {
        "Default".into()
    }
}

impl PoolConfig {
    /// The pool rule: a job belongs to a pool when every label the job asks
    /// for is one of the pool's labels, compared case-insensitively, as GitHub
    /// matches `runs-on` against runner labels. `self-hosted` is implied.
    pub fn serves(&self, job_labels: &[String]) -> bool {
        job_labels.iter().all(|wanted| {
            wanted.eq_ignore_ascii_case("self-hosted")
                || self.labels.iter().any(|l| l.eq_ignore_ascii_case(wanted))
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSetConfig {
    /// Jobs use `runs-on: <name>`.
    pub name: String,
    /// Org, repo or enterprise URL, e.g. `https://github.com/my-org`.
    pub github_config_url: String,
    #[serde(default = "defaults::runner_group")]
    pub runner_group: String,
    /// Whose image and limits its runners use.
    pub pool: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub min_runners: u32,
    #[serde(default = "defaults::scale_set_max")]
    pub max_runners: u32,
    /// Idle runners kept ready on top of the busy ones.
    #[serde(default)]
    pub idle_runners: u32,
    /// Which process runs this scale set's listener. In a `berth proxy`
    /// configuration every scale set is listened to, whatever this says.
    #[serde(default)]
    pub listener: ListenerSite,
}

/// Where a scale set's listener runs (`[[scale_set]] listener`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerSite {
    /// Inside `berth serve`, delegating in-process.
    #[default]
    Serve,
    /// In a standalone `berth proxy`; `berth serve` only mints and runs the
    /// scale set's runners.
    Proxy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorConfig {
    pub url: String,
    /// A file holding the delegate token, or a `vault://` reference.
    pub token_file: Option<SecretLocation>,
    pub token: Option<Secret>,
}

/// Who a pool's runners register with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Org(String),
    Repo { owner: String, name: String },
}

impl Scope {
    /// Whether a job of `repository` (`owner/name`) can run on this scope's runners.
    pub fn covers(&self, repository: &str) -> bool {
        match self {
            Scope::Org(org) => repository
                .split_once('/')
                .is_some_and(|(owner, _)| owner.eq_ignore_ascii_case(org)),
            Scope::Repo { owner, name } => repository.split_once('/').is_some_and(|(o, n)| {
                o.eq_ignore_ascii_case(owner) && n.eq_ignore_ascii_case(name)
            }),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Org(org) => write!(f, "org:{org}"),
            Scope::Repo { owner, name } => write!(f, "repo:{owner}/{name}"),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use crate::names;
        match s.split_once(':') {
            Some(("org", org)) if names::check_owner(org).is_ok() => {
                Ok(Scope::Org(org.to_string()))
            }
            Some(("repo", repo)) => match names::split_repository(repo) {
                Ok((owner, name)) => Ok(Scope::Repo {
                    owner: owner.into(),
                    name: name.into(),
                }),
                Err(e) => Err(format!("`{s}` is not `repo:OWNER/NAME`: {e}")),
            },
            _ => Err(format!("`{s}` is neither `org:NAME` nor `repo:OWNER/NAME`")),
        }
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written as an integer or with a `k`, `m` or `g` suffix (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_suffix('b').unwrap_or(&t);
        let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => t.split_at(i),
            None => (t, ""),
        };
        let factor: u64 = match unit.trim() {
            "" => 1,
            "k" | "ki" => 1 << 10,
            "m" | "mi" => 1 << 20,
            "g" | "gi" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}` (use k, m or g)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is not a size such as 512m or 4g"))?;
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A secret value: never printed by `Debug` or `Display`, so it cannot leak
/// through a log line or an error message by accident.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call sites are few and deliberate.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Durations in configuration files are whole seconds.
mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(serde::de::Error::custom(
                "must be a non-negative number of seconds",
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

/// One problem with a configuration, naming the key and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// e.g. `pool[0].max_runners` or `github.webhook_secret`.
    pub key: String,
    /// The file path, `environment variable BERTH_…`, or `defaults`.
    pub source: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.source, self.key, self.message)
        }
    }
}

/// Everything wrong with a configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

/// What the loaded configuration is going to be used for: the checks differ
/// (a standalone proxy needs an orchestrator; the service needs App credentials
/// only once it has pools).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serve,
    Proxy,
}

/// A loaded configuration plus warnings that do not stop berth from starting.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigProblem>,
}

impl Config {
    /// Loads `file` (if any) overlaid with `BERTH_<SECTION>__<KEY>` variables
    /// from `env`, then validates the result for `role`.
    pub fn load<I, K, V>(file: Option<&Path>, env: I, role: Role) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError {
                    problems: vec![ConfigProblem {
                        key: String::new(),
                        source: path.display().to_string(),
                        message: "no such file".into(),
                    }],
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = EnvSource::new(env);
        figment = figment.merge(env);
        let config: Config = figment.extract().map_err(|e| ConfigError {
            problems: figment_problems(&figment, e, file),
        })?;
        let source_of = |key: &str| source_for(&figment, key, file);
        let (problems, warnings) = config.validate(role, &source_of);
        if problems.is_empty() {
            Ok(Loaded { config, warnings })
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The pools a job with these labels may run in, in configuration order.
    pub fn pool_for(&self, repository: &str, labels: &[String]) -> Option<&PoolConfig> {
        self.pools
            .iter()
            .find(|p| p.scope.covers(repository) && p.serves(labels))
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The Docker hosts jobs run on: the `[[docker_host]]` entries, or
    /// without any, the one host `docker.host` (named [`DEFAULT_HOST_NAME`],
    /// with every slot `dispatch.global_max_runners` allows).
    pub fn hosts(&self) -> Vec<DockerHostConfig> {
        if !self.docker_hosts.is_empty() {
            return self.docker_hosts.clone();
        }
        vec![DockerHostConfig {
            name: DEFAULT_HOST_NAME.into(),
            url: self.docker.host.clone(),
            labels: Vec::new(),
            max_runners: self.dispatch.global_max_runners,
            weight: 1.0,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }]
    }

    /// Every problem with this configuration for `role`, and the warnings:
    /// each section checks itself, then the checks that span sections.
    fn validate(
        &self,
        role: Role,
        source_of: &dyn Fn(&str) -> String,
    ) -> (Vec<ConfigProblem>, Vec<ConfigProblem>) {
        let mut checks = Checks::new(source_of);
        let c = &mut checks;
        self.server.validate(c);
        self.store.validate(c);
        self.github.validate(c);
        self.validate_vault(c);
        // Pools and scale sets mint runners, and a proxy's listeners talk to
        // GitHub: both need the App's credentials.
        let needs_app = role == Role::Serve
            && !(self.pools.is_empty() && self.scale_sets.is_empty())
            || role == Role::Proxy;
        if needs_app {
            self.github.validate_app_credentials(c);
        }
        self.docker.validate(c);
        if self.docker.egress_proxy.is_some() {
            for (i, pool) in self.pools.iter().enumerate() {
                if pool.host_network {
                    c.bad(
                        format!("pool[{i}].host_network"),
                        "a pool on the host's network would bypass docker.egress_proxy",
                    );
                }
            }
        }
        self.dispatch.validate(c);
        self.reconcile.validate(c);
        self.logs.validate(c);
        self.retention.validate(c);
        self.fleet.validate(c);
        for (key, message) in self.security.problems() {
            c.bad(key, message);
        }
        self.validate_hosts(c);

        let mut names = BTreeSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            pool.validate(i, &self.docker.allowed_images, c);
            if pool.container_jobs && role == Role::Serve && self.server.worker_url.is_none() {
                c.bad(
                    "server.worker_url",
                    format!(
                        "required by pool `{}` (container_jobs): the URL at which its workers reach this API",
                        pool.name
                    ),
                );
            }
            if !names.insert(pool.name.as_str()) {
                c.bad(
                    format!("pool[{i}].name"),
                    format!("pool `{}` is defined twice", pool.name),
                );
            }
        }

        let mut scale_set_names = BTreeSet::new();
        for (i, set) in self.scale_sets.iter().enumerate() {
            set.validate(i, c);
            if !scale_set_names.insert(set.name.as_str()) {
                c.bad(
                    format!("scale_set[{i}].name"),
                    format!("scale set `{}` is defined twice", set.name),
                );
            }
            // A standalone proxy delegates to an orchestrator, whose pools
            // it does not know.
            if role == Role::Serve && self.pool(&set.pool).is_none() {
                c.bad(
                    format!("scale_set[{i}].pool"),
                    format!("no pool named `{}`", set.pool),
                );
            }
        }

        if role == Role::Proxy {
            match &self.orchestrator {
                None => c.bad("orchestrator.url", "required for `berth proxy`"),
                Some(o) => o.validate(c),
            }
            if self.scale_sets.is_empty() {
                c.bad(
                    "scale_set",
                    "`berth proxy` needs at least one [[scale_set]]",
                );
            }
        }
        (checks.problems, checks.warnings)
    }
}

/// The problems and warnings found so far, each naming its key and where the
/// key's value came from.
struct Checks<'a> {
    source_of: &'a dyn Fn(&str) -> String,
    problems: Vec<ConfigProblem>,
    warnings: Vec<ConfigProblem>,
}

impl<'a> Checks<'a> {
    fn new(source_of: &'a dyn Fn(&str) -> String) -> Self {
        Self {
            source_of,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn problem(&self, key: String, message: String) -> ConfigProblem {
        ConfigProblem {
            source: (self.source_of)(&key),
            key,
            message,
        }
    }

    /// `key` is wrong: berth does not start.
    fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let problem = self.problem(key.into(), message.into());
        self.problems.push(problem);
    }

    /// `key` works, but probably not as meant.
    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let warning = self.problem(key.into(), message.into());
        self.warnings.push(warning);
    }
}

impl ServerConfig {
    fn validate(&self, c: &mut Checks) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            c.bad(
                "server.listen",
                format!("`{}` is not an address such as 127.0.0.1:8080", self.listen),
            );
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => c.bad("server.tls_key", "set with server.tls_cert"),
            (None, Some(_)) => c.bad("server.tls_cert", "set with server.tls_key"),
            (Some(cert), Some(key)) => {
                for (k, path) in [("server.tls_cert", cert), ("server.tls_key", key)] {
                    if !path.is_file() {
                        c.bad(k, format!("{} does not exist", path.display()));
                    }
                }
            }
            (None, None) => {}
        }
        if let Some(ca) = &self.tls_client_ca {
            if self.tls_cert.is_none() {
                c.bad(
                    "server.tls_client_ca",
                    "needs server.tls_cert and server.tls_key: client certificates come with TLS",
                );
            } else if !ca.is_file() {
                c.bad(
                    "server.tls_client_ca",
                    format!("{} does not exist", ca.display()),
                );
            }
        }
        if self.max_connections < 16 {
            c.bad("server.max_connections", "must be at least 16");
        }
        for (key, value) in [
            ("server.header_timeout", self.header_timeout),
            ("server.body_timeout", self.body_timeout),
            ("server.tls_handshake_timeout", self.tls_handshake_timeout),
            ("server.idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                c.bad(key, "must be more than 0");
            }
        }
        if self.max_body_bytes < 1024 {
            c.bad("server.max_body_bytes", "must be at least 1024");
        }
        if let Some(url) = &self.worker_url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => c.bad(
                    "server.worker_url",
                    "must be an http:// or https:// URL with a host",
                ),
            }
        }
    }
}

impl StoreConfig {
    fn validate(&self, c: &mut Checks) {
        let url = &self.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            c.bad("store.url", "must start with sqlite: or postgres://");
        }
    }
}

impl GithubConfig {
    fn validate(&self, c: &mut Checks) {
        if url::Url::parse(&self.api_url).is_err() {
            c.bad("github.api_url", "is not a URL");
        }
        if self.webhook_secret.is_some() && self.webhook_secret_file.is_some() {
            c.bad(
                "github.webhook_secret_file",
                "set either webhook_secret or webhook_secret_file, not both",
            );
        }
        if let Some(SecretLocation::File(path)) = &self.webhook_secret_file
            && !path.is_file()
        {
            c.bad(
                "github.webhook_secret_file",
                format!("{} does not exist", path.display()),
            );
        }
        self.validate_webhook_secret(c);
        if self.private_key.is_some() && self.private_key_path.is_some() {
            c.bad(
                "github.private_key_path",
                "set either private_key or private_key_path, not both",
            );
        }
        if let Some(SecretLocation::File(path)) = &self.private_key_path
            && !path.is_file()
        {
            c.bad(
                "github.private_key_path",
                format!("{} does not exist", path.display()),
            );
        }
    }

    /// An empty secret would make berth accept webhooks signed with the
    /// empty key, that is by anyone: refused. A short one is a warning.
    fn validate_webhook_secret(&self, c: &mut Checks) {
        let (key, secret) = match (&self.webhook_secret, &self.webhook_secret_file) {
            (Some(secret), _) => ("github.webhook_secret", secret.clone()),
            (None, Some(SecretLocation::File(path))) if path.is_file() => {
                match crate::secrets::read_file(path) {
                    Ok(secret) => ("github.webhook_secret_file", secret),
                    Err(e) => {
                        c.bad("github.webhook_secret_file", e.to_string());
                        return;
                    }
                }
            }
            _ => return,
        };
        if secret.expose().trim().is_empty() {
            c.bad(
                key,
                "is empty: webhooks signed with an empty key would be accepted; set the random secret of the App's webhook",
            );
        } else if secret.expose().len() < MIN_WEBHOOK_SECRET_BYTES {
            c.warn(
                key,
                format!(
                    "is shorter than {MIN_WEBHOOK_SECRET_BYTES} bytes: a short secret can be guessed; use a long random one"
                ),
            );
        }
    }

    /// The App's id (or client id) and private key are there.
    fn validate_app_credentials(&self, c: &mut Checks) {
        if self.app_id.is_none() && self.client_id.is_none() {
            c.bad(
                "github.app_id",
                "required to run pools or scale sets (or set github.client_id)",
            );
        }
        if self.private_key.is_none() && self.private_key_path.is_none() {
            c.bad(
                "github.private_key_path",
                "required to run pools or scale sets",
            );
        }
    }
}

impl DockerConfig {
    fn validate(&self, c: &mut Checks) {
        if !(self.host.starts_with("unix://")
            || self.host.starts_with("tcp://")
            || self.host.starts_with("http://"))
        {
            c.bad(
                "docker.host",
                "must be unix:///path, tcp://host:port or http://host:port",
            );
        }
        if let Some(proxy) = &self.egress_proxy
            && let Err(why) = check_egress_proxy_url(proxy)
        {
            c.bad("docker.egress_proxy", why);
        }
        if let Some(entry) = self
            .no_proxy
            .iter()
            .find(|e| e.is_empty() || e.contains(',') || e.chars().any(char::is_whitespace))
        {
            c.bad(
                "docker.no_proxy",
                format!("`{entry}` is not a host, domain or address (no commas or spaces)"),
            );
        }
    }
}

impl Config {
    /// `[[docker_host]]` entries, and the pools' `host_labels` against them.
    fn validate_hosts(&self, c: &mut Checks) {
        let mut names = BTreeSet::new();
        for (i, host) in self.docker_hosts.iter().enumerate() {
            host.validate(i, c);
            if !names.insert(host.name.as_str()) {
                c.bad(
                    format!("docker_host[{i}].name"),
                    format!("host `{}` is defined twice", host.name),
                );
            }
        }
        if !self.docker_hosts.is_empty() && self.docker.host != DockerConfig::default().host {
            c.warn(
                "docker.host",
                "ignored: with [[docker_host]] entries, jobs run on those hosts only",
            );
        }
        let hosts = self.hosts();
        for (i, pool) in self.pools.iter().enumerate() {
            if !hosts.iter().any(|h| h.offers(&pool.host_labels)) {
                c.warn(
                    format!("pool[{i}].host_labels"),
                    format!(
                        "no [[docker_host]] offers {:?}: the pool's jobs wait until one does",
                        pool.host_labels
                    ),
                );
            }
        }
    }
}

impl DockerHostConfig {
    fn validate(&self, i: usize, c: &mut Checks) {
        let key = |field: &str| format!("docker_host[{i}].{field}");
        if !crate::names::is_host_name(&self.name) {
            c.bad(
                key("name"),
                "1 to 63 characters of letters, digits, -, _ and .",
            );
        }
        let tls = [&self.tls_ca, &self.tls_cert, &self.tls_key];
        let with_tls = tls.iter().filter(|p| p.is_some()).count();
        if with_tls != 0 && with_tls != 3 {
            c.bad(
                key("tls_ca"),
                "tls_ca, tls_cert and tls_key go together (mutual TLS needs all three)",
            );
        }
        let scheme_ok = if with_tls == 3 {
            self.url.starts_with("https://") || self.url.starts_with("tcp://")
        } else {
            self.url.starts_with("unix://")
                || self.url.starts_with("tcp://")
                || self.url.starts_with("http://")
        };
        if !scheme_ok {
            c.bad(
                key("url"),
                if with_tls == 3 {
                    "with TLS, must be https://host:port or tcp://host:port"
                } else {
                    "must be unix:///path, tcp://host:port or http://host:port (https:// needs tls_ca, tls_cert and tls_key)"
                },
            );
        }
        for (field, path) in [
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                c.bad(
                    key(field),
                    format!("{} is not a readable file", path.display()),
                );
            }
        }
        if self.max_runners == 0 {
            c.bad(key("max_runners"), "must be at least 1");
        }
        if !(self.weight > 0.0 && self.weight <= 1000.0) {
            c.bad(key("weight"), "must be more than 0 and at most 1000");
        }
        if let Some(label) = self.labels.iter().find(|l| !crate::names::is_label(l)) {
            c.bad(key("labels"), format!("`{label}` is not a label"));
        }
    }
}

impl DispatchConfig {
    fn validate(&self, c: &mut Checks) {
        if self.global_max_runners == 0 {
            c.bad("dispatch.global_max_runners", "must be at least 1");
        }
        if self.max_attempts == 0 {
            c.bad("dispatch.max_attempts", "must be at least 1");
        }
        if self.create_attempts == 0 {
            c.bad("dispatch.create_attempts", "must be at least 1");
        }
        if self.lease < Duration::from_secs(5) {
            c.bad("dispatch.lease", "must be at least 5 seconds");
        }
    }
}

impl ReconcileConfig {
    fn validate(&self, c: &mut Checks) {
        if self.interval.is_zero() {
            c.bad("reconcile.interval", "must be more than 0");
        }
        if self.delivery_catchup_window.is_zero()
            || self.delivery_catchup_window > GITHUB_REDELIVERY_WINDOW
        {
            c.bad(
                "reconcile.delivery_catchup_window",
                "must be from 1 to 259200 seconds (GitHub keeps its delivery log 3 days)",
            );
        }
    }
}

impl LogsConfig {
    fn validate(&self, c: &mut Checks) {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            c.bad("logs.level", format!("not a log filter: {e}"));
        }
    }
}

impl PoolConfig {
    /// Checks `[[pool]]` number `i` on its own (names unique across pools
    /// are [`Config::validate`]'s). An image neither pinned nor under
    /// `allowed_images` is a warning.
    fn validate(&self, i: usize, allowed_images: &[String], c: &mut Checks) {
        let key = |field: &str| format!("pool[{i}].{field}");
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 40
            && self
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
        if !valid_name {
            c.bad(
                key("name"),
                "1 to 40 characters of letters, digits, - and _",
            );
        }
        if self.labels.is_empty() || self.labels.len() > 100 {
            c.bad(key("labels"), "needs 1 to 100 labels");
        }
        if self.labels.iter().any(|l| l.trim().is_empty()) {
            c.bad(key("labels"), "labels must not be empty");
        }
        if self.image.trim().is_empty() {
            c.bad(key("image"), "must name an image");
        }
        if self.max_runners == 0 {
            c.bad(key("max_runners"), "must be at least 1");
        }
        if self.warm > self.max_runners {
            c.bad(
                key("warm"),
                format!(
                    "must be at most max_runners ({}): warm containers count towards the pool's containers",
                    self.max_runners
                ),
            );
        }
        if !(self.cpus > 0.0 && self.cpus <= 1024.0) {
            c.bad(key("cpus"), "must be more than 0");
        }
        if self.memory.0 < 6 * 1024 * 1024 {
            c.bad(key("memory"), "must be at least 6m (Docker's minimum)");
        }
        if self.pids_limit < 16 {
            c.bad(key("pids_limit"), "must be at least 16");
        }
        if self.job_timeout.is_zero() {
            c.bad(key("job_timeout"), "must be more than 0");
        }
        for cap in &self.cap_add {
            if cap.eq_ignore_ascii_case("ALL")
                || cap.to_ascii_uppercase().trim_start_matches("CAP_") == "SYS_ADMIN"
            {
                c.bad(key("cap_add"), format!("`{cap}` cannot be added back"));
            }
        }
        if self.host_slots == 0 || self.host_slots > 1000 {
            c.bad(key("host_slots"), "must be between 1 and 1000");
        }
        if let Some(label) = self.host_labels.iter().find(|l| !crate::names::is_label(l)) {
            c.bad(key("host_labels"), format!("`{label}` is not a label"));
        }
        if self.container_jobs {
            self.validate_container_jobs(i, c);
        }
        if let Err(reason) = crate::docker::image_policy::check(&self.image, allowed_images) {
            c.warn(
                key("image"),
                format!(
                    "{reason}: its jobs will fail; pin it (name@sha256:…) so every job runs the image you reviewed"
                ),
            );
        }
    }
}

impl PoolConfig {
    /// The `container_jobs` rules of pool number `i`.
    fn validate_container_jobs(&self, i: usize, c: &mut Checks) {
        let key = |field: &str| format!("pool[{i}].{field}");
        let policy = &self.containers;
        if self.warm > 0 {
            c.bad(
                key("warm"),
                "must be 0 with container_jobs: a job's volumes are made with its worker, for its repository",
            );
        }
        if self.host_network {
            c.bad(
                key("host_network"),
                "cannot be combined with container_jobs: job containers get a network of their own",
            );
        }
        if policy.images.is_empty() {
            c.warn(
                key("containers.images"),
                "is empty: every container job of this pool will be refused (list the images jobs may name)",
            );
        }
        if let Some(bad) = policy
            .images
            .iter()
            .find(|p| p.trim().is_empty() || p.contains(char::is_whitespace))
        {
            c.bad(
                key("containers.images"),
                format!("`{bad}` is not an image pattern"),
            );
        }
        if !(policy.cpus > 0.0 && policy.cpus <= 1024.0) {
            c.bad(key("containers.cpus"), "must be more than 0");
        }
        if policy.memory.0 < 6 * 1024 * 1024 {
            c.bad(
                key("containers.memory"),
                "must be at least 6m (Docker's minimum)",
            );
        }
        if policy.pids_limit < 16 {
            c.bad(key("containers.pids_limit"), "must be at least 16");
        }
        if policy.workspace_size.0 < 1024 * 1024 {
            c.bad(key("containers.workspace_size"), "must be at least 1m");
        }
        for cap in &policy.capabilities {
            if let Err(reason) = crate::container_jobs::policy::capability(cap) {
                c.bad(key("containers.capabilities"), reason);
            }
        }
    }
}

impl ScaleSetConfig {
    /// Checks `[[scale_set]]` number `i` on its own (unique names and the
    /// pool it names are [`Config::validate`]'s).
    fn validate(&self, i: usize, c: &mut Checks) {
        let key = |field: &str| format!("scale_set[{i}].{field}");
        if self.name.trim().is_empty() {
            c.bad(key("name"), "must not be empty");
        }
        if let Err(e) = ConfigUrl::parse(&self.github_config_url) {
            c.bad(key("github_config_url"), e.to_string());
        }
        if self.max_runners > 10_000 {
            c.bad(key("max_runners"), "must be at most 10000");
        }
        if self.max_runners == 0 || self.min_runners > self.max_runners {
            c.bad(
                key("max_runners"),
                "must be at least 1 and at least min_runners",
            );
        }
    }
}

impl OrchestratorConfig {
    fn validate(&self, c: &mut Checks) {
        if url::Url::parse(&self.url).is_err() {
            c.bad("orchestrator.url", "is not a URL");
        }
        if self.token.is_none() && self.token_file.is_none() {
            c.bad(
                "orchestrator.token_file",
                "a token with the delegate scope is required",
            );
        }
        if self.token.is_some() && self.token_file.is_some() {
            c.bad(
                "orchestrator.token_file",
                "set either token or token_file, not both",
            );
        }
        if let Some(SecretLocation::File(path)) = &self.token_file
            && !path.is_file()
        {
            c.bad(
                "orchestrator.token_file",
                format!("{} does not exist", path.display()),
            );
        }
    }
}

impl VaultConfig {
    fn validate(&self, c: &mut Checks) {
        match url::Url::parse(&self.address) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                if u.scheme() == "http" && self.ca_cert.is_some() {
                    c.warn(
                        "vault.ca_cert",
                        "ignored: vault.address is http://, not https://",
                    );
                }
            }
            _ => c.bad(
                "vault.address",
                format!(
                    "`{}` is not an http:// or https:// URL with a host (and no credentials)",
                    self.address
                ),
            ),
        }
        if let Some(path) = &self.ca_cert {
            match std::fs::read(path) {
                Ok(pem) => {
                    if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |c| c.is_empty()) {
                        c.bad(
                            "vault.ca_cert",
                            format!("{} holds no PEM certificate", path.display()),
                        );
                    }
                }
                Err(e) => c.bad(
                    "vault.ca_cert",
                    format!("cannot read {}: {e}", path.display()),
                ),
            }
        }
        if self
            .namespace
            .as_deref()
            .is_some_and(|n| n.trim().is_empty() || n.chars().any(char::is_control))
        {
            c.bad("vault.namespace", "must not be empty");
        }
        let approle_only = [
            ("vault.role_id", self.role_id.is_some()),
            ("vault.role_id_file", self.role_id_file.is_some()),
            ("vault.secret_id_file", self.secret_id_file.is_some()),
        ];
        match self.auth {
            VaultAuth::Token => {
                match &self.token_file {
                    None => c.bad("vault.token_file", "required with auth = \"token\""),
                    Some(path) => readable_file(c, "vault.token_file", path),
                }
                for (key, set) in approle_only {
                    if set {
                        c.bad(key, "only used with auth = \"approle\"");
                    }
                }
            }
            VaultAuth::Approle => {
                if self.token_file.is_some() {
                    c.bad("vault.token_file", "only used with auth = \"token\"");
                }
                match (&self.role_id, &self.role_id_file) {
                    (None, None) => c.bad(
                        "vault.role_id",
                        "required with auth = \"approle\" (or vault.role_id_file)",
                    ),
                    (Some(_), Some(_)) => c.bad(
                        "vault.role_id_file",
                        "set either role_id or role_id_file, not both",
                    ),
                    (Some(role_id), None) if role_id.expose().trim().is_empty() => {
                        c.bad("vault.role_id", "must not be empty")
                    }
                    (None, Some(path)) => readable_file(c, "vault.role_id_file", path),
                    (Some(_), None) => {}
                }
                match &self.secret_id_file {
                    None => c.bad("vault.secret_id_file", "required with auth = \"approle\""),
                    Some(path) => readable_file(c, "vault.secret_id_file", path),
                }
            }
        }
        let mount_ok = !self.approle_mount.is_empty()
            && self.approle_mount.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
            });
        if !mount_ok {
            c.bad(
                "vault.approle_mount",
                format!(
                    "`{}` is not a mount path such as approle",
                    self.approle_mount
                ),
            );
        }
        if self.refresh_interval < Duration::from_secs(1) {
            c.bad("vault.refresh_interval", "must be at least 1 second");
        }
        if self.request_timeout.is_zero() {
            c.bad("vault.request_timeout", "must be more than 0");
        }
    }
}

/// `path` is a file berth can read, or `key` is reported.
fn readable_file(c: &mut Checks, key: &str, path: &Path) {
    if !path.is_file() {
        c.bad(key, format!("{} does not exist", path.display()));
    } else if let Err(e) = std::fs::File::open(path) {
        c.bad(key, format!("cannot read {}: {e}", path.display()));
    }
}

impl Config {
    /// The keys that name where a secret is, with what they name.
    pub fn secret_locations(&self) -> Vec<(&'static str, &SecretLocation)> {
        let mut found = Vec::new();
        if let Some(l) = &self.github.private_key_path {
            found.push(("github.private_key_path", l));
        }
        if let Some(l) = &self.github.webhook_secret_file {
            found.push(("github.webhook_secret_file", l));
        }
        if let Some(l) = self
            .orchestrator
            .as_ref()
            .and_then(|o| o.token_file.as_ref())
        {
            found.push(("orchestrator.token_file", l));
        }
        found
    }

    /// `[vault]` and the `vault://` references that need it.
    fn validate_vault(&self, c: &mut Checks) {
        let references: Vec<_> = self
            .secret_locations()
            .into_iter()
            .filter_map(|(key, l)| l.vault().map(|r| (key, r)))
            .collect();
        match &self.vault {
            Some(vault) => {
                vault.validate(c);
                if references.is_empty() {
                    c.warn(
                        "vault.address",
                        "no secret is read from Vault: no key holds a vault:// reference",
                    );
                }
            }
            None => {
                for (key, reference) in references {
                    c.bad(
                        key,
                        format!("{reference} needs a [vault] section (vault.address, vault.auth)"),
                    );
                }
            }
        }
    }
}

/// Maps figment's errors to problems that name the key and the source.
fn figment_problems(
    figment: &Figment,
    error: figment::Error,
    file: Option<&Path>,
) -> Vec<ConfigProblem> {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = match &e.metadata {
                Some(md) if md.name.contains("environment") => env_source_name(&key),
                Some(md) => md
                    .source
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| md.name.to_string()),
                None => source_for(figment, &key, file),
            };
            ConfigProblem {
                key,
                source,
                message: e.kind.to_string(),
            }
        })
        .collect()
}

fn env_source_name(key: &str) -> String {
    let var = key
        .split('.')
        .map(|k| k.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join("__");
    format!("environment variable {ENV_PREFIX}{var}")
}

/// Where the value of `key` came from, for messages.
fn source_for(figment: &Figment, key: &str, file: Option<&Path>) -> String {
    // Array elements (`pool[0].x`) are looked up by their table name.
    let lookup: String = key
        .split('.')
        .map(|part| part.split('[').next().unwrap_or(part))
        .collect::<Vec<_>>()
        .join(".");
    match figment.find_metadata(&lookup) {
        Some(md) if md.name.contains("environment") => env_source_name(&lookup),
        Some(md) => md
            .source
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_else(|| md.name.to_string()),
        None => file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "defaults".into()),
    }
}

/// `BERTH_<SECTION>__<KEY>=value` pairs as a figment provider. Values are
/// parsed like figment's own `Env` (numbers, booleans, arrays `[a, b]`).
struct EnvSource {
    vars: Vec<(String, String)>,
}

impl EnvSource {
    fn new<I, K, V>(env: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = env
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(ENV_PREFIX)?;
                // Only `SECTION__KEY…` names configure berth; BERTH_RUNNER_STANDIN and
                // other single-word variables belong to other parts of the program.
                rest.contains("__").then(|| (rest.to_ascii_lowercase(), v))
            })
            .collect();
        Self { vars }
    }
}

impl Provider for EnvSource {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, raw) in &self.vars {
            let path: Vec<&str> = key.split("__").collect();
            let value: Value = raw.parse().expect("figment value parsing is infallible");
            insert_path(&mut root, &path, value);
        }
        let mut map = Map::new();
        map.insert(Profile::Default, root);
        Ok(map)
    }
}

fn insert_path(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

/// `http://HOST:PORT` with nothing else: no credentials (the URL lands in
/// every worker's environment, which `docker inspect` shows), no path.
fn check_egress_proxy_url(proxy: &str) -> Result<(), String> {
    let url = url::Url::parse(proxy).map_err(|e| format!("`{proxy}` is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "`{proxy}`: must be http://HOST:PORT (the proxy speaks plain HTTP; HTTPS goes through it with CONNECT)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry credentials: workers' environment is visible to `docker inspect`"
                .into(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) || url.port().is_none() {
        return Err(format!(
            "`{proxy}`: must name a host and a port, http://HOST:PORT"
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{proxy}`: must be http://HOST:PORT with no path"));
    }
    Ok(())
}

/// Where a scale set lives, parsed from its GitHub config URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigUrl {
    pub url: String,
    pub scope: Scope,
}

impl ConfigUrl {
    /// `https://github.com/ORG` or `https://github.com/OWNER/REPO` (GHES
    /// alike). Enterprise URLs need a personal access token, which berth
    /// does not use.
    pub fn parse(url: &str) -> Result<ConfigUrl, String> {
        let parsed = url::Url::parse(url.trim_end_matches('/'))
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let parts: Vec<&str> = parsed
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let scope = match parts.as_slice() {
            ["enterprises", _] => {
                return Err(format!(
                    "`{url}` is an enterprise; berth's GitHub App can serve organisations and repositories"
                ));
            }
            [org] => format!("org:{org}"),
            [owner, repo] => format!("repo:{owner}/{repo}"),
            _ => {
                return Err(format!(
                    "`{url}` names neither an organisation nor a repository"
                ));
            }
        };
        Ok(ConfigUrl {
            url: url.trim_end_matches('/').to_string(),
            scope: scope.parse()?,
        })
    }

    /// `owner` or `owner/name`: what a runner not made for a particular job
    /// shows as its repository.
    pub fn display_scope(&self) -> String {
        match &self.scope {
            Scope::Org(org) => org.clone(),
            Scope::Repo { owner, name } => format!("{owner}/{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    const NO_ENV: [(&str, &str); 0] = [];

    #[test]
    fn defaults_serve_a_laptop() {
        let loaded = Config::load(None, NO_ENV, Role::Serve).unwrap();
        let c = loaded.config;
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.store.url, "sqlite://berth.db");
        assert_eq!(c.docker.host, "unix:///var/run/docker.sock");
        assert!(c.pools.is_empty());
    }

    #[test]
    fn security_settings_are_checked() {
        assert_eq!(
            problems_of(
                "[server]\ntls_client_ca = \"/nonexistent/ca.pem\"\n[[security.policy]]\nrule = \"\"\naction = \"kill\"\n",
                Role::Serve
            ),
            [
                "security.policy[0].rule: is empty; use `*` for every rule",
                "server.tls_client_ca: needs server.tls_cert and server.tls_key: client certificates come with TLS",
            ]
        );
        for bad in [
            "[security]\nkill_at = \"severe\"\n",
            "[[security.policy]]\nrule = \"*\"\naction = \"quarantine\"\n",
            "[[security.policy]]\nrule = \"*\"\naction = \"kill\"\npriority = \"loud\"\n",
        ] {
            let f = file(bad);
            let text = Config::load(Some(f.path()), NO_ENV, Role::Serve)
                .unwrap_err()
                .to_string();
            assert!(text.contains("security"), "{bad}: {text}");
        }
        let f = file(
            "[security]\nkill_at = \"Error\"\n[[security.policy]]\nrule = \"Berth net*\"\npriority = \"WARNING\"\naction = \"ignore\"\n",
        );
        let config = Config::load(Some(f.path()), NO_ENV, Role::Serve)
            .unwrap()
            .config;
        assert_eq!(config.security.kill_at, crate::security::Priority::Error);
        assert_eq!(
            config.security.action(
                "Berth network tool in worker",
                crate::security::Priority::Warning
            ),
            crate::security::Action::Ignore
        );
    }

    #[test]
    fn empty_webhook_secrets_are_refused_and_short_ones_warned() {
        for toml in [
            "[github]\nwebhook_secret = \"\"\n",
            "[github]\nwebhook_secret = \"  \\t \"\n",
        ] {
            let f = file(toml);
            let text = Config::load(Some(f.path()), NO_ENV, Role::Serve)
                .unwrap_err()
                .to_string();
            assert!(text.contains("`github.webhook_secret`: is empty"), "{text}");
        }
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), "\n").unwrap();
        let f = file(&format!(
            "[github]\nwebhook_secret_file = \"{}\"\n",
            secret.path().display()
        ));
        let text = Config::load(Some(f.path()), NO_ENV, Role::Serve)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("`github.webhook_secret_file`: is empty"),
            "{text}"
        );
        let f = file("[github]\nwebhook_secret = \"short\"\n");
        let loaded = Config::load(Some(f.path()), NO_ENV, Role::Serve).unwrap();
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.key == "github.webhook_secret" && w.message.contains("shorter than 16")),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn egress_proxy_is_checked() {
        let f = file("[docker]\negress_proxy = \"http://berth-egress:3128\"\n");
        let c = Config::load(Some(f.path()), NO_ENV, Role::Serve)
            .unwrap()
            .config;
        assert_eq!(
            c.docker.egress_proxy.as_deref(),
            Some("http://berth-egress:3128")
        );
        assert_eq!(c.docker.no_proxy, ["localhost", "127.0.0.1", "::1"]);
        for (value, want) in [
            ("https://p:3128", "must be http://HOST:PORT"),
            ("http://user:pw@p:3128", "must not carry credentials"),
            ("http://p", "must name a host and a port"),
            ("http://p:3128/x", "no path"),
            ("p:3128", "must be http://HOST:PORT"),
        ] {
            let f = file(&format!("[docker]\negress_proxy = \"{value}\"\n"));
            let err = Config::load(Some(f.path()), NO_ENV, Role::Serve)
                .unwrap_err()
                .to_string();
            assert!(err.contains("`docker.egress_proxy`"), "{value}: {err}");
            assert!(err.contains(want), "{value}: {err}");
        }
        let f = file(
            "[docker]\negress_proxy = \"http://p:3128\"\nno_proxy = [\"a,b\"]\n[github]\napp_id = 1\nprivate_key = \"k\"\n[[pool]]\nname = \"linux\"\nscope = \"org:acme\"\nlabels = [\"linux\"]\nimage = \"img@sha256:0000000000000000000000000000000000000000000000000000000000000000\"\nhost_network = true\n",
        );
        let err = Config::load(Some(f.path()), NO_ENV, Role::Serve)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`pool[0].host_network`"), "{err}");
        assert!(err.contains("`docker.no_proxy`"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_names_nested_keys() {
        let f = file("[server]\nlisten = \"127.0.0.1:9000\"\n[store]\nurl = \"sqlite://x.db\"\n");
        let env = [
            ("BERTH_SERVER__LISTEN", "0.0.0.0:7000"),
            ("BERTH_DISPATCH__GLOBAL_MAX_RUNNERS", "7"),
            ("BERTH_RUNNER_STANDIN", "/ignored"),
            ("PATH", "/bin"),
        ];
        let c = Config::load(Some(f.path()), env, Role::Serve)
            .unwrap()
            .config;
        assert_eq!(c.server.listen, "0.0.0.0:7000");
        assert_eq!(c.store.url, "sqlite://x.db");
        assert_eq!(c.dispatch.global_max_runners, 7);
    }

    #[test]
    fn a_warm_pool_is_at_most_max_runners() {
        let pool = |warm: u32| {
            file(&format!(
                "[[pool]]\nname = \"linux\"\nscope = \"org:acme\"\nlabels = [\"linux\"]\nimage = \"img\"\nmax_runners = 2\nwarm = {warm}\nwarm_started = true\n"
            ))
        };
        let f = pool(3);
        let text = Config::load(Some(f.path()), NO_ENV, Role::Serve)
            .unwrap_err()
            .to_string();
        assert!(text.contains("`pool[0].warm`"), "{text}");
        let f = pool(2);
        let text = match Config::load(Some(f.path()), NO_ENV, Role::Serve) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        assert!(!text.contains("`pool[0].warm`"), "{text}");
    }

    #[test]
    fn problems_name_key_and_file() {
        let f = file(
            "[server]\nlisten = \"nowhere\"\n[[pool]]\nname = \"linux\"\nscope = \"org:acme\"\nlabels = [\"linux\"]\nimage = \"img\"\nmax_runners = 0\n",
        );
        let err = Config::load(Some(f.path()), NO_ENV, Role::Serve).unwrap_err();
        let text = err.to_string();
        let path = f.path().display().to_string();
        assert!(text.contains(&format!("{path}: `server.listen`")), "{text}");
        assert!(
            text.contains(&format!("{path}: `pool[0].max_runners`")),
            "{text}"
        );
        // pools need App credentials
        assert!(text.contains("`github.app_id`"), "{text}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_reported_with_their_source() {
        let f = file("[server]\nlisen = \"127.0.0.1:1\"\n");
        let err = Config::load(Some(f.path()), NO_ENV, Role::Serve).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        assert!(
            err.to_string().contains(&f.path().display().to_string()),
            "{err}"
        );

        let err = Config::load(
            None,
            [("BERTH_DISPATCH__GLOBAL_MAX_RUNNERS", "many")],
            Role::Serve,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("environment variable BERTH_DISPATCH__GLOBAL_MAX_RUNNERS"),
            "{text}"
        );
    }

    #[test]
    fn pool_rule_is_label_subset_case_insensitive() {
        let f = file(
            "[github]\napp_id = 1\nprivate_key = \"k\"\n[[pool]]\nname = \"linux\"\nscope = \"org:acme\"\nlabels = [\"Linux\", \"x64\"]\nimage = \"img@sha256:00\"\n",
        );
        let c = Config::load(Some(f.path()), NO_ENV, Role::Serve)
            .unwrap()
            .config;
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            c.pool_for("acme/widgets", &labels(&["self-hosted", "linux"]))
                .is_some()
        );
        assert!(
            c.pool_for("acme/widgets", &labels(&["linux", "X64"]))
                .is_some()
        );
        assert!(
            c.pool_for("acme/widgets", &labels(&["linux", "gpu"]))
                .is_none()
        );
        assert!(c.pool_for("other/widgets", &labels(&["linux"])).is_none());
    }

    #[test]
    fn sizes_scopes_and_secrets() {
        assert_eq!("512m".parse::<ByteSize>().unwrap(), ByteSize(512 << 20));
        assert_eq!("4g".parse::<ByteSize>().unwrap(), ByteSize(4 << 30));
        assert!("4x".parse::<ByteSize>().is_err());
        assert_eq!(
            "repo:o/n".parse::<Scope>().unwrap(),
            Scope::Repo {
                owner: "o".into(),
                name: "n".into()
            }
        );
        assert!("team:x".parse::<Scope>().is_err());
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn docker_hosts_are_checked_and_default_to_docker_host() {
        let c = Config::load(None, NO_ENV, Role::Serve).unwrap().config;
        let hosts = c.hosts();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].name, DEFAULT_HOST_NAME);
        assert_eq!(hosts[0].url, c.docker.host);
        assert_eq!(hosts[0].max_runners, c.dispatch.global_max_runners);

        let found = problems_of(
            "[fleet]\nprobe_interval = 5\ndown_after = 6\nhost_lease = 1\n\
             [[docker_host]]\nname = \"a\"\nurl = \"unix:///a.sock\"\nweight = 0\nmax_runners = 0\n\
             [[docker_host]]\nname = \"a\"\nurl = \"https://b:2376\"\n\
             [[docker_host]]\nname = \"c/d\"\nurl = \"tcp://c:2375\"\ntls_ca = \"/nonexistent-ca.pem\"\n",
            Role::Serve,
        );
        assert_eq!(
            found,
            [
                "docker_host[0].max_runners: must be at least 1",
                "docker_host[0].weight: must be more than 0 and at most 1000",
                "docker_host[1].name: host `a` is defined twice",
                "docker_host[1].url: must be unix:///path, tcp://host:port or http://host:port (https:// needs tls_ca, tls_cert and tls_key)",
                "docker_host[2].name: 1 to 63 characters of letters, digits, -, _ and .",
                "docker_host[2].tls_ca: /nonexistent-ca.pem is not a readable file",
                "docker_host[2].tls_ca: tls_ca, tls_cert and tls_key go together (mutual TLS needs all three)",
                "fleet.down_after: must be at least twice fleet.probe_interval (one lost probe is not a dead host)",
                "fleet.host_lease: must be at least 2 seconds",
            ]
        );
    }

    #[test]
    fn a_pool_needing_labels_no_host_offers_is_a_warning() {
        let f = file(
            "[[docker_host]]\nname = \"a\"\nurl = \"unix:///a.sock\"\nlabels = [\"zone-a\"]\n\
             [[pool]]\nname = \"gpu\"\nscope = \"org:acme\"\nlabels = [\"gpu\"]\n\
             image = \"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"\n\
             host_labels = [\"GPU\"]\n\
             [github]\napp_id = 1\nprivate_key = \"k\"\n",
        );
        let loaded = Config::load(Some(f.path()), NO_ENV, Role::Serve).unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            warnings.iter().any(|w| w.contains("`pool[0].host_labels`")
                && w.contains("no [[docker_host]] offers [\"GPU\"]")),
            "{warnings:?}"
        );
        assert!(
            !loaded.config.hosts()[0].offers(&["GPU".to_string()]),
            "labels match case-insensitively, and zone-a is not gpu"
        );
        assert!(loaded.config.hosts()[0].offers(&["ZONE-A".to_string()]));
    }

    /// Every problem `validate` can report, each checked word for word:
    /// users and scripts read these messages.
    fn problems_of(text: &str, role: Role) -> Vec<String> {
        let f = file(text);
        let err = Config::load(Some(f.path()), NO_ENV, role).unwrap_err();
        let mut found: Vec<String> = err
            .problems
            .iter()
            .map(|p| {
                assert_eq!(p.source, f.path().display().to_string(), "{p}");
                format!("{}: {}", p.key, p.message)
            })
            .collect();
        found.sort();
        found
    }

    fn sorted(expected: &[&str]) -> Vec<String> {
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        expected
    }

    #[test]
    fn every_section_reports_its_problems_word_for_word() {
        let log_error = tracing_subscriber::EnvFilter::try_new("=").unwrap_err();
        let url_error = ConfigUrl::parse("nope").unwrap_err().to_string();
        let found = problems_of(
            r#"
[server]
listen = "nowhere"
tls_cert = "/nonexistent/cert.pem"
[store]
url = "mysql://x"
[github]
api_url = "not a url"
webhook_secret = "s"
webhook_secret_file = "/nonexistent/webhook"
private_key = "k"
private_key_path = "/nonexistent/key.pem"
[docker]
host = "ftp://x"
egress_proxy = "https://p:3128"
no_proxy = ["a b"]
[dispatch]
global_max_runners = 0
max_attempts = 0
create_attempts = 0
lease = 1
[reconcile]
interval = 0
delivery_catchup_window = 0
[logs]
level = "="
[[pool]]
name = "bad name!"
scope = "org:acme"
labels = []
image = " "
max_runners = 0
warm = 1
cpus = 0.0
memory = "1m"
pids_limit = 1
job_timeout = 0
cap_add = ["ALL", "cap_sys_admin", "CHOWN"]
host_network = true
[[pool]]
name = "bad name!"
scope = "org:acme"
labels = ["x", " "]
image = "img@sha256:00"
[[scale_set]]
name = " "
github_config_url = "nope"
pool = "missing"
max_runners = 20000
[[scale_set]]
name = " "
github_config_url = "https://github.com/acme"
pool = "bad name!"
min_runners = 11
"#,
            Role::Serve,
        );
        let expected = [
            "server.listen: `nowhere` is not an address such as 127.0.0.1:8080".to_string(),
            "server.tls_key: set with server.tls_cert".into(),
            "store.url: must start with sqlite: or postgres://".into(),
            "github.api_url: is not a URL".into(),
            "github.webhook_secret_file: set either webhook_secret or webhook_secret_file, not both".into(),
            "github.webhook_secret_file: /nonexistent/webhook does not exist".into(),
            "github.private_key_path: set either private_key or private_key_path, not both".into(),
            "github.private_key_path: /nonexistent/key.pem does not exist".into(),
            "github.app_id: required to run pools or scale sets (or set github.client_id)".into(),
            "docker.host: must be unix:///path, tcp://host:port or http://host:port".into(),
            "docker.egress_proxy: `https://p:3128`: must be http://HOST:PORT (the proxy speaks plain HTTP; HTTPS goes through it with CONNECT)".into(),
            "pool[0].host_network: a pool on the host's network would bypass docker.egress_proxy".into(),
            "docker.no_proxy: `a b` is not a host, domain or address (no commas or spaces)".into(),
            "dispatch.global_max_runners: must be at least 1".into(),
            "dispatch.max_attempts: must be at least 1".into(),
            "dispatch.create_attempts: must be at least 1".into(),
            "dispatch.lease: must be at least 5 seconds".into(),
            "reconcile.interval: must be more than 0".into(),
            "reconcile.delivery_catchup_window: must be from 1 to 259200 seconds (GitHub keeps its delivery log 3 days)".into(),
            format!("logs.level: not a log filter: {log_error}"),
            "pool[0].name: 1 to 40 characters of letters, digits, - and _".into(),
            "pool[0].labels: needs 1 to 100 labels".into(),
            "pool[0].image: must name an image".into(),
            "pool[0].max_runners: must be at least 1".into(),
            "pool[0].warm: must be at most max_runners (0): warm containers count towards the pool's containers".into(),
            "pool[0].cpus: must be more than 0".into(),
            "pool[0].memory: must be at least 6m (Docker's minimum)".into(),
            "pool[0].pids_limit: must be at least 16".into(),
            "pool[0].job_timeout: must be more than 0".into(),
            "pool[0].cap_add: `ALL` cannot be added back".into(),
            "pool[0].cap_add: `cap_sys_admin` cannot be added back".into(),
            "pool[1].name: 1 to 40 characters of letters, digits, - and _".into(),
            "pool[1].name: pool `bad name!` is defined twice".into(),
            "pool[1].labels: labels must not be empty".into(),
            "scale_set[0].name: must not be empty".into(),
            format!("scale_set[0].github_config_url: {url_error}"),
            "scale_set[0].max_runners: must be at most 10000".into(),
            "scale_set[0].pool: no pool named `missing`".into(),
            "scale_set[1].name: must not be empty".into(),
            "scale_set[1].name: scale set ` ` is defined twice".into(),
            "scale_set[1].max_runners: must be at least 1 and at least min_runners".into(),
        ];
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_eq!(found, sorted(&expected));

        // The other half of each pair, and what only a proxy needs.
        let found = problems_of(
            "[server]\ntls_key = \"/nonexistent/key.pem\"\n",
            Role::Proxy,
        );
        assert_eq!(
            found,
            sorted(&[
                "server.tls_cert: set with server.tls_key",
                "github.app_id: required to run pools or scale sets (or set github.client_id)",
                "github.private_key_path: required to run pools or scale sets",
                "orchestrator.url: required for `berth proxy`",
                "scale_set: `berth proxy` needs at least one [[scale_set]]",
            ])
        );
        let found = problems_of(
            "[server]\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n[github]\nclient_id = \"Iv1\"\nprivate_key = \"k\"\n[orchestrator]\nurl = \"not a url\"\n[[scale_set]]\nname = \"s\"\ngithub_config_url = \"https://github.com/acme\"\npool = \"elsewhere\"\n",
            Role::Proxy,
        );
        assert_eq!(
            found,
            sorted(&[
                "server.tls_cert: /nonexistent/cert.pem does not exist",
                "server.tls_key: /nonexistent/key.pem does not exist",
                "orchestrator.url: is not a URL",
                "orchestrator.token_file: a token with the delegate scope is required",
            ])
        );
    }

    #[test]
    fn vault_settings_and_references_are_checked_word_for_word() {
        let dir = tempfile::tempdir().unwrap();
        let secret_id = dir.path().join("secret-id");
        std::fs::write(&secret_id, "s").unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let secret_id = secret_id.display();
        let not_pem = not_pem.display();

        // A reference without [vault].
        let found = problems_of(
            "[github]\nwebhook_secret_file = \"vault://secret/berth/github#webhook\"\n\
             [orchestrator]\nurl = \"http://o:8080\"\ntoken_file = \"vault://kv/proxy#token\"\n",
            Role::Serve,
        );
        assert_eq!(
            found,
            sorted(&[
                "github.webhook_secret_file: vault://secret/berth/github#webhook needs a [vault] section (vault.address, vault.auth)",
                "orchestrator.token_file: vault://kv/proxy#token needs a [vault] section (vault.address, vault.auth)",
            ])
        );

        // Token auth with AppRole's keys, a bad address, a CA that is no PEM.
        let found = problems_of(
            &format!(
                "[github]\nprivate_key_path = \"vault://secret/berth/github#private_key\"\n\
                 [vault]\naddress = \"ftp://vault:8200\"\nca_cert = \"{not_pem}\"\nnamespace = \" \"\n\
                 auth = \"token\"\nrole_id = \"r\"\nsecret_id_file = \"{secret_id}\"\n\
                 approle_mount = \"/x/\"\nrefresh_interval = 0.5\nrequest_timeout = 0\n"
            ),
            Role::Serve,
        );
        assert_eq!(
            found,
            sorted(&[
                "vault.address: `ftp://vault:8200` is not an http:// or https:// URL with a host (and no credentials)",
                &format!("vault.ca_cert: {not_pem} holds no PEM certificate"),
                "vault.namespace: must not be empty",
                "vault.token_file: required with auth = \"token\"",
                "vault.role_id: only used with auth = \"approle\"",
                "vault.secret_id_file: only used with auth = \"approle\"",
                "vault.approle_mount: `/x/` is not a mount path such as approle",
                "vault.refresh_interval: must be at least 1 second",
                "vault.request_timeout: must be more than 0",
            ])
        );

        // AppRole without its keys, or with both role id keys.
        let found = problems_of(
            "[github]\nwebhook_secret_file = \"vault://secret/w#s\"\n\
             [vault]\naddress = \"https://vault:8200\"\nauth = \"approle\"\ntoken_file = \"/t\"\n",
            Role::Serve,
        );
        assert_eq!(
            found,
            sorted(&[
                "vault.token_file: only used with auth = \"token\"",
                "vault.role_id: required with auth = \"approle\" (or vault.role_id_file)",
                "vault.secret_id_file: required with auth = \"approle\"",
            ])
        );
        let found = problems_of(
            "[github]\nwebhook_secret_file = \"vault://secret/w#s\"\n\
             [vault]\naddress = \"https://vault:8200\"\nauth = \"approle\"\nrole_id = \"r\"\n\
             role_id_file = \"/nonexistent/role\"\nsecret_id_file = \"/nonexistent/secret\"\n",
            Role::Serve,
        );
        assert_eq!(
            found,
            sorted(&[
                "vault.role_id_file: set either role_id or role_id_file, not both",
                "vault.secret_id_file: /nonexistent/secret does not exist",
            ])
        );

        // A good AppRole section; [vault] without a reference is a warning.
        let good = format!(
            "[vault]\naddress = \"http://127.0.0.1:8200\"\nauth = \"approle\"\nrole_id = \"r\"\nsecret_id_file = \"{secret_id}\"\n"
        );
        let f = file(&format!(
            "[github]\nwebhook_secret_file = \"vault://secret/berth/github#webhook\"\nwebhook_secret_overlap = 60\n{good}"
        ));
        let loaded = Config::load(Some(f.path()), NO_ENV, Role::Serve).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let vault = loaded.config.vault.as_ref().unwrap();
        assert_eq!(vault.auth, VaultAuth::Approle);
        assert_eq!(vault.approle_mount, "approle");
        assert_eq!(vault.refresh_interval, Duration::from_secs(300));
        assert_eq!(
            loaded.config.github.webhook_secret_overlap,
            Duration::from_secs(60)
        );
        assert!(!format!("{vault:?}").contains("role_id: Some(\"r\")"));
        let f = file(&good);
        let loaded = Config::load(Some(f.path()), NO_ENV, Role::Serve).unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert_eq!(loaded.warnings[0].key, "vault.address");

        // A malformed reference is refused at loading, naming its key and
        // where it came from.
        let err = Config::load(
            None,
            [("BERTH_GITHUB__PRIVATE_KEY_PATH", "vault://secret#key")],
            Role::Serve,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("environment variable BERTH_GITHUB__PRIVATE_KEY_PATH")
                && err.contains("github.private_key_path")
                && err.contains("names no secret under its mount"),
            "{err}"
        );
    }

    #[test]
    fn the_delivery_catch_up_keys_default_and_are_bounded_by_githubs_log() {
        let defaults = ReconcileConfig::default();
        assert_eq!(
            (
                defaults.delivery_catchup_interval,
                defaults.delivery_catchup_window
            ),
            (Duration::from_secs(300), Duration::from_secs(3600))
        );
        // 0 disables the catch-up; the window may be GitHub's whole 3 days.
        let f =
            file("[reconcile]\ndelivery_catchup_interval = 0\ndelivery_catchup_window = 259200\n");
        let loaded = Config::load(Some(f.path()), NO_ENV, Role::Serve).unwrap();
        assert!(loaded.config.reconcile.delivery_catchup_interval.is_zero());
        assert_eq!(
            loaded.config.reconcile.delivery_catchup_window,
            GITHUB_REDELIVERY_WINDOW
        );
        // GitHub keeps no older deliveries.
        assert_eq!(
            problems_of(
                "[reconcile]\ndelivery_catchup_window = 259201\n",
                Role::Serve
            ),
            [
                "reconcile.delivery_catchup_window: must be from 1 to 259200 seconds (GitHub keeps its delivery log 3 days)"
            ]
        );
    }

    #[test]
    fn unpinned_images_warn() {
        let f = file(
            "[github]\napp_id = 1\nprivate_key = \"k\"\n[[pool]]\nname = \"linux\"\nscope = \"org:acme\"\nlabels = [\"linux\"]\nimage = \"ubuntu:latest\"\n",
        );
        let loaded = Config::load(Some(f.path()), NO_ENV, Role::Serve).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(loaded.warnings[0].key, "pool[0].image");
    }
}
