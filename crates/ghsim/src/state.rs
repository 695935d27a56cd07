//! The simulated world: accounts, repositories, runners, jobs, scale sets,
//! tokens and deliveries, all behind one mutex.
//!
//! One lock keeps every state transition atomic (a job is offered to exactly
//! one runner, a runner holds at most one job, statistics always add up)
//! without reasoning about lock order. Nothing awaits while holding it:
//! handlers lock, change or copy what they need, and unlock. Waiting (long
//! polls) uses [`tokio::sync::Notify`] outside the lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::{AccountKind, ScaleSetFlow};

/// Locks a mutex, ignoring poisoning (a panicked handler must not wedge the simulator).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// RFC 3339 UTC with seconds, GitHub's timestamp format (`2021-09-13T02:21:13Z`).
pub fn ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Now, UTC.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Where a runner or scale set is registered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Organisation level: serves every repository of the org.
    Org(String),
    /// Repository level: `owner`, `repo`.
    Repo(String, String),
}

impl Scope {
    /// Whether this scope covers repository `owner/repo`.
    pub fn covers(&self, owner: &str, repo: &str) -> bool {
        match self {
            Scope::Org(o) => o.eq_ignore_ascii_case(owner),
            Scope::Repo(o, r) => o.eq_ignore_ascii_case(owner) && r.eq_ignore_ascii_case(repo),
        }
    }

    /// The owner (org or user) login.
    pub fn owner(&self) -> &str {
        match self {
            Scope::Org(o) | Scope::Repo(o, _) => o,
        }
    }

    /// `org:acme` / `repo:acme/widgets`.
    pub fn label(&self) -> String {
        match self {
            Scope::Org(o) => format!("org:{o}"),
            Scope::Repo(o, r) => format!("repo:{o}/{r}"),
        }
    }

    /// `acme` / `acme/widgets` (path of the GitHub config URL).
    pub fn path(&self) -> String {
        match self {
            Scope::Org(o) => o.clone(),
            Scope::Repo(o, r) => format!("{o}/{r}"),
        }
    }

    /// Same scope, ignoring case.
    pub fn same(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Org(a), Scope::Org(b)) => a.eq_ignore_ascii_case(b),
            (Scope::Repo(a, b), Scope::Repo(c, d)) => {
                a.eq_ignore_ascii_case(c) && b.eq_ignore_ascii_case(d)
            }
            _ => false,
        }
    }
}

/// An account with the App installed.
#[derive(Debug, Clone)]
pub struct Account {
    pub login: String,
    pub id: u64,
    pub kind: AccountKind,
    pub installation_id: u64,
}

/// A repository (created on first use).
#[derive(Debug, Clone)]
pub struct Repo {
    pub id: u64,
    pub owner: String,
    pub name: String,
    pub created_at: OffsetDateTime,
}

/// A registered self-hosted runner (REST JIT, scale-set JIT).
#[derive(Debug, Clone)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    /// As registered (original case), `self-hosted` first.
    pub labels: Vec<String>,
    pub group_id: u64,
    pub ephemeral: bool,
    pub scale_set_id: Option<u64>,
    pub work_folder: String,
    /// OAuth client id (from `.credentials`).
    pub client_id: String,
    /// Broker session, when the runner is connected.
    pub session_id: Option<Uuid>,
    /// Software version reported when it connected.
    pub version: Option<String>,
    /// The job it holds (acquired and not completed).
    pub job_id: Option<u64>,
    pub created_at: OffsetDateTime,
    /// Jobs it has completed.
    pub jobs_done: u32,
    /// Last time it talked to the broker or run service.
    pub last_seen: Option<Instant>,
}

impl Runner {
    /// Online: it has a broker session and was heard from within `idle`
    /// (a runner that died without deleting its session goes offline, as on GitHub).
    pub fn online(&self, idle: std::time::Duration) -> bool {
        self.session_id.is_some() && self.last_seen.is_some_and(|t| t + idle > Instant::now())
    }
}

/// Lifecycle of a job (GitHub's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Waiting,
    Queued,
    InProgress,
    Completed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Waiting => "waiting",
            JobStatus::Queued => "queued",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
        }
    }
}

/// One step as queued.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepSpec {
    /// Display name.
    pub name: String,
    /// Shell command (`/bin/sh -c`); empty for an action step.
    pub run: String,
    /// `shell:` of a run step.
    #[serde(default)]
    pub shell: Option<String>,
    /// Step environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `uses:` of a container action step.
    #[serde(default)]
    pub uses: Option<String>,
    /// `with: args:` of an action step (joined with spaces).
    #[serde(default)]
    pub args: Vec<String>,
    /// `with: entrypoint:` of an action step.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// Content of a Dockerfile action's `Dockerfile`.
    #[serde(default)]
    pub dockerfile: Option<String>,
}

impl StepSpec {
    /// A `run:` step.
    pub fn run(name: String, run: &str) -> Self {
        StepSpec {
            name,
            run: run.to_string(),
            ..Default::default()
        }
    }
}

/// One step's progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepState {
    pub number: u32,
    pub name: String,
    /// `queued`, `in_progress`, `completed`.
    pub status: String,
    /// `success`, `failure`, `skipped`, `cancelled`.
    pub conclusion: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// The step's output lines.
    #[serde(default)]
    pub output: Vec<String>,
}

/// An offer of a job to a runner that has not acquired it yet.
#[derive(Debug, Clone)]
pub struct Offer {
    pub runner_id: u64,
    pub deadline: Instant,
}

/// A workflow job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub run_id: u64,
    pub run_attempt: u32,
    pub owner: String,
    pub repo: String,
    pub labels: Vec<String>,
    pub steps: Vec<StepSpec>,
    pub step_states: Vec<StepState>,
    pub workflow_name: String,
    pub name: String,
    pub priority: i64,
    pub environment: Option<String>,
    pub head_sha: String,
    pub head_branch: String,
    pub status: JobStatus,
    pub conclusion: Option<String>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub completed_at: Option<OffsetDateTime>,
    pub runner_id: Option<u64>,
    pub runner_name: Option<String>,
    pub runner_group_id: Option<u64>,
    pub runner_group_name: Option<String>,
    /// FIFO order among equal priorities.
    pub seq: u64,
    /// The id runners and scale sets use for this job request.
    pub runner_request_id: u64,
    pub offer: Option<Offer>,
    /// How many times the job was offered.
    pub offers: u32,
    /// Scale set the job was assigned to at queue time.
    pub scale_set_id: Option<u64>,
    /// Older-GHES flow: the listener called `acquirejobs` for it.
    pub scale_set_acquired: bool,
    pub cancel_requested: bool,
    pub cancel_requested_at: Option<Instant>,
    /// Last renew from the runner.
    pub locked_until: Option<Instant>,
    /// When a waiting job is approved automatically.
    pub approve_at: Option<Instant>,
    pub plan_id: Uuid,
    pub log: Vec<String>,
    /// Webhook faults to apply to this job's deliveries.
    pub webhook_fault: Option<crate::webhooks::DeliveryFault>,
    /// Job container.
    pub container: Option<crate::engine::ContainerSpec>,
    /// Service containers, in order.
    pub services: crate::engine::Services,
    /// The job message carries `DistributedTask.AllowRunnerContainerHooks: true`.
    pub allow_container_hooks: bool,
}

/// A message of a scale set's queue.
#[derive(Debug, Clone)]
pub struct QueueMessage {
    pub id: u64,
    pub body: String,
    pub statistics: Value,
}

/// A scale-set message session.
#[derive(Debug, Clone)]
pub struct ScaleSetSession {
    pub id: Uuid,
    pub owner_name: String,
    pub queue_token: String,
    pub token_expires: Instant,
    pub created_at: OffsetDateTime,
    pub last_max_capacity: Option<u32>,
    pub polls: u64,
    /// Last poll or refresh (idle sessions expire).
    pub last_seen: Instant,
}

/// A runner scale set.
#[derive(Debug)]
pub struct ScaleSet {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub runner_group_id: u64,
    pub labels: Vec<(String, String)>,
    pub runner_setting: Value,
    pub created_on: OffsetDateTime,
    pub flow: ScaleSetFlow,
    pub session: Option<ScaleSetSession>,
    /// Job messages not yet bundled into a queue message.
    pub pending: Vec<Value>,
    /// Bundled messages not yet deleted (acked).
    pub queue: VecDeque<QueueMessage>,
    pub next_message_id: u64,
    pub notify: Arc<Notify>,
}

/// A token with a scope and expiry.
#[derive(Debug, Clone)]
pub struct ScopedToken {
    pub scope: Scope,
    pub expires_at: OffsetDateTime,
    pub remove: bool,
}

/// An installation access token.
#[derive(Debug, Clone)]
pub struct InstallToken {
    pub installation_id: u64,
    pub expires_at: OffsetDateTime,
}

/// A runner access token.
#[derive(Debug, Clone)]
pub struct RunnerToken {
    pub runner_id: u64,
    pub expires: Instant,
}

/// A rate-limit window of one credential.
#[derive(Debug, Clone)]
pub struct RateBucket {
    pub used: u32,
    pub reset: i64,
}

/// One recorded webhook delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// `X-GitHub-Delivery`.
    pub guid: String,
    /// Sequence number of this attempt (1-based, over all deliveries).
    pub seq: u64,
    pub event: String,
    pub action: String,
    pub job_id: u64,
    /// HTTP status the receiver answered; `None` when not sent or failed.
    pub status: Option<u16>,
    /// Transport error, or why it was not sent.
    pub error: Option<String>,
    /// `delivered`, `failed`, `dropped` (fault), `held` (reorder fault, not sent yet), `no_target`.
    pub outcome: String,
    /// A redelivery of an earlier GUID.
    pub redelivery: bool,
    /// A duplicate sent by the `duplicate` fault.
    pub duplicate: bool,
    pub delivered_at: String,
    /// The exact body sent.
    pub payload: String,
    /// GitHub's `status` text for this attempt in the App's delivery log:
    /// `OK`, `Invalid HTTP Response: 503`, `failed to connect to host`,
    /// `timed out` (empty for an attempt never sent).
    #[serde(default)]
    pub status_text: String,
    /// Seconds the attempt took.
    #[serde(default)]
    pub duration: f64,
    /// The installation the event belongs to (from the payload).
    #[serde(default)]
    pub installation_id: Option<u64>,
    /// The repository the event belongs to (from the payload).
    #[serde(default)]
    pub repository_id: Option<u64>,
}

impl Delivery {
    /// Whether GitHub attempted this delivery, and so lists it in the App's
    /// delivery log (`GET /app/hook/deliveries`) and can redeliver it. A
    /// `drop` fault models an event GitHub never sent, and without a webhook
    /// URL (`no_target`) GitHub sends nothing: neither is in the log.
    pub fn attempted(&self) -> bool {
        self.outcome == "delivered" || self.outcome == "failed"
    }
}

/// Id counters.
#[derive(Debug)]
pub struct Counters {
    pub runner: u64,
    pub job: u64,
    pub run: u64,
    pub request: u64,
    pub repo: u64,
    pub scale_set: u64,
    pub label: u64,
    pub seq: u64,
    pub delivery: u64,
    pub message: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            runner: 0,
            job: 10_000_000_000,
            run: 7_000_000_000,
            request: 1_000,
            repo: 600_000_000,
            scale_set: 0,
            label: 100,
            seq: 0,
            delivery: 0,
            message: 0,
        }
    }
}

/// Everything mutable.
#[derive(Debug, Default)]
pub struct World {
    pub ids: Counters,
    pub accounts: Vec<Account>,
    pub repos: BTreeMap<String, Repo>,
    pub runners: BTreeMap<u64, Runner>,
    pub jobs: BTreeMap<u64, Job>,
    pub scale_sets: BTreeMap<u64, ScaleSet>,
    pub install_tokens: HashMap<String, InstallToken>,
    pub reg_tokens: HashMap<String, ScopedToken>,
    pub runner_tokens: HashMap<String, RunnerToken>,
    pub labels: HashMap<String, u64>,
    pub rate: HashMap<String, RateBucket>,
    pub deliveries: Vec<Delivery>,
    pub fault_hits: u64,
    /// Every encoded JIT config handed out, so tests can prove none leaks.
    pub issued_jit_configs: Vec<String>,
    /// When each runner (by name) first opened a broker session: the moment
    /// its process was up and talking. Kept after the runner is deleted, for
    /// start-up latency measurements.
    pub runner_sessions: HashMap<String, OffsetDateTime>,
    /// When each runner (by name) first asked for an OAuth token: the first
    /// request its process makes, so the earliest sign from outside that the
    /// process runs. Stamped on arrival, before the assertion is checked.
    pub runner_first_contacts: HashMap<String, OffsetDateTime>,
    /// When each runner's process started, as the stand-in reports it with
    /// its first request (`runner::PROCESS_STARTED_HEADER`).
    pub runner_process_starts: HashMap<String, OffsetDateTime>,
}

impl World {
    /// The account with this login.
    pub fn account(&self, login: &str) -> Option<&Account> {
        self.accounts
            .iter()
            .find(|a| a.login.eq_ignore_ascii_case(login))
    }

    /// The account with this installation.
    pub fn account_by_installation(&self, id: u64) -> Option<&Account> {
        self.accounts.iter().find(|a| a.installation_id == id)
    }

    /// The repository, created on first use when its owner has the App installed.
    pub fn repo(&mut self, owner: &str, name: &str) -> Option<Repo> {
        let acct = self.account(owner)?.login.clone();
        let key = format!(
            "{}/{}",
            owner.to_ascii_lowercase(),
            name.to_ascii_lowercase()
        );
        if let Some(r) = self.repos.get(&key) {
            return Some(r.clone());
        }
        self.ids.repo += 1;
        let r = Repo {
            id: self.ids.repo,
            owner: acct,
            name: name.to_string(),
            created_at: now(),
        };
        self.repos.insert(key, r.clone());
        Some(r)
    }

    /// Stable numeric id of a label name.
    pub fn label_id(&mut self, name: &str) -> u64 {
        let key = name.to_ascii_lowercase();
        if let Some(id) = self.labels.get(&key) {
            return *id;
        }
        self.ids.label += 1;
        self.labels.insert(key, self.ids.label);
        self.ids.label
    }
}
