//! The values the store takes and returns.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// A string that is not one of an enum's names (from `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of: {expected})")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Defines a fieldless enum stored and serialized as fixed lowercase names,
/// with `ALL`, `as_str`, `Display` and `FromStr`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name stored in the database and used in JSON.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName {
                        kind: $kind,
                        value: s.to_owned(),
                        expected: concat!($($text, " "),+),
                    }),
                }
            }
        }
    };
}

named_enum! {
    /// What the probes say of a Docker host.
    pub enum HostHealth("host health") {
        /// Not probed yet.
        Unknown = "unknown",
        Up = "up",
        /// No answer for `fleet.down_after`: no new jobs, its jobs settled.
        Down = "down",
    }
}

named_enum! {
    /// What the operator asked of a Docker host.
    pub enum HostAdmin("host admin state") {
        /// Takes jobs.
        Active = "active",
        /// No new jobs; running jobs and warm containers stay.
        Cordoned = "cordoned",
        /// No new jobs, warm containers removed; running jobs finish.
        Draining = "draining",
    }
}

named_enum! {
    /// Where a job is in its life (the state machine of docs/architecture.md):
    ///
    /// ```text
    /// queued → provisioning → starting → running → completed | failed | cancelled | expired
    ///   ▲            │            │          │
    ///   └────────────┴────────────┴──────────┘  requeue (lease expired, runner taken, …)
    /// ```
    ///
    /// Any non-terminal state may end in any terminal one (`job_finish`).
    pub enum JobState("job state") {
        /// Waiting in its pool's queue for a claim.
        Queued = "queued",
        /// Claimed under a lease: the JIT config is being minted and the container created.
        Provisioning = "provisioning",
        /// The container exists and is being started.
        Starting = "starting",
        /// The container runs.
        Running = "running",
        /// The runner exited after the job succeeded.
        Completed = "completed",
        /// The job failed (non-zero exit, timeout, provisioning error, …).
        Failed = "failed",
        /// Cancelled on request (API or GitHub).
        Cancelled = "cancelled",
        /// GitHub no longer wants it (queued too long, run cancelled before a runner took it).
        Expired = "expired",
    }
}

impl JobState {
    /// States holding a worker slot; they count against the pool and global limits.
    pub const ACTIVE: &'static [JobState] = &[
        JobState::Provisioning,
        JobState::Starting,
        JobState::Running,
    ];
    /// States a job can still leave.
    pub const NON_TERMINAL: &'static [JobState] = &[
        JobState::Queued,
        JobState::Provisioning,
        JobState::Starting,
        JobState::Running,
    ];
    /// States a job never leaves.
    pub const TERMINAL: &'static [JobState] = &[
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Expired,
    ];

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// Whether the job holds a worker slot (see [`JobState::ACTIVE`]).
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }

    /// Position along the happy path; terminal states share the last one.
    pub(crate) fn step(self) -> u8 {
        match self {
            JobState::Queued => 0,
            JobState::Provisioning => 1,
            JobState::Starting => 2,
            JobState::Running => 3,
            JobState::Completed | JobState::Failed | JobState::Cancelled | JobState::Expired => 4,
        }
    }
}

named_enum! {
    /// How a job reached berth.
    pub enum JobSource("job source") {
        /// A `workflow_job` webhook.
        Webhook = "webhook",
        /// `POST /v1/jobs/delegate` (a standalone proxy runner or another client).
        Delegate = "delegate",
        /// A scale-set listener running inside `berth serve`.
        ScaleSet = "scale_set",
    }
}

named_enum! {
    /// The last status GitHub reported for the job (`workflow_job.status`).
    /// The order of the variants is the order a job goes through, which
    /// `job_record_github_status` uses to ignore events that arrive late.
    pub enum GithubStatus("GitHub job status") {
        Queued = "queued",
        Waiting = "waiting",
        InProgress = "in_progress",
        Completed = "completed",
    }
}

impl GithubStatus {
    /// 1 for `queued` up to 4 for `completed`; no status ranks 0. The
    /// `jobs.github_status_rank` column computes the same in SQL.
    pub(crate) fn rank(self) -> i64 {
        match self {
            GithubStatus::Queued => 1,
            GithubStatus::Waiting => 2,
            GithubStatus::InProgress => 3,
            GithubStatus::Completed => 4,
        }
    }
}

named_enum! {
    /// What an API token may do.
    pub enum ApiTokenScope("API token scope") {
        /// `POST /v1/jobs/delegate` only.
        Delegate = "delegate",
        /// Read jobs, logs and metrics.
        Read = "read",
        /// Everything, including cancelling jobs.
        Admin = "admin",
        /// `POST /v1/security/events` only: what Falco (or falcosidekick)
        /// holds, so that a leaked alerting token reads nothing.
        Security = "security",
    }
}

/// One GitHub job as berth tracks it: its queue entry and its state.
///
/// Serializes as the job JSON of the HTTP API (docs/reference/http-api.md):
/// fields under these names, states and sources as their lowercase names,
/// timestamps as RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// berth's job id (UUID v7, so ids sort by creation time).
    pub id: Uuid,
    /// GitHub's job id; unique: the idempotency key of intake.
    pub github_job_id: i64,
    pub run_id: i64,
    /// `owner/name`.
    pub repository: String,
    pub workflow: Option<String>,
    pub job_name: Option<String>,
    /// The job's `runs-on` labels.
    pub labels: Vec<String>,
    pub pool: String,
    pub source: JobSource,
    /// The scale set the job came through, for `source = scale_set` (and
    /// delegates from a proxy runner that names it).
    pub scale_set: Option<String>,
    pub state: JobState,
    /// Someone asked to cancel; claims skip the job, and the lifecycle ends it.
    pub cancel_requested: bool,
    /// How many times the job was claimed (kept across requeues).
    pub attempts: i64,
    /// The dispatcher holding the claim, while it holds one.
    pub lease_owner: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub lease_expires_at: Option<OffsetDateTime>,
    /// The JIT runner berth registered for this job (starts with `berth-`).
    pub runner_name: Option<String>,
    pub runner_id: Option<i64>,
    /// The worker container running that runner.
    pub container_id: Option<String>,
    /// The Docker host the job was placed on (`[[docker_host]] name`), from
    /// its claim until it is requeued.
    pub host: Option<String>,
    pub github_status: Option<GithubStatus>,
    /// `workflow_job.conclusion` once GitHub reports one (`success`, `failure`, …).
    pub github_conclusion: Option<String>,
    /// The runner GitHub says took the job. A JIT runner takes any matching
    /// job, so this may differ from `runner_name`.
    pub github_runner_name: Option<String>,
    pub github_runner_id: Option<i64>,
    /// The worker container's exit code.
    pub exit_code: Option<i64>,
    /// Why the job failed, or why it was last put back in the queue.
    pub error: Option<String>,
    /// How long the job may run (from `started_at`) before it is stopped.
    pub timeout_secs: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When the job last entered `queued` (FIFO order within a pool).
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: OffsetDateTime,
    /// When its container started running.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub finished_at: Option<OffsetDateTime>,
    /// When berth learnt that its worker container exited: from then on the
    /// job holds no worker slot. Internal (not in the API's job object).
    #[serde(skip)]
    pub exited_at: Option<OffsetDateTime>,
    /// Why berth stopped the job on its own (`security: <rule>`, see
    /// crate::security): set with `cancel_requested`, and the job then ends
    /// `failed` with this as its error rather than `cancelled`. Internal:
    /// the job's `error` shows it once the job ended.
    #[serde(skip)]
    pub stop_reason: Option<String>,
}

impl Job {
    /// When a running job times out: `started_at + timeout_secs`.
    pub fn deadline(&self) -> Option<OffsetDateTime> {
        let started = self.started_at?;
        let secs = self.timeout_secs?;
        Some(started + time::Duration::seconds(secs))
    }
}

/// A job as intake hands it to [`Store::job_insert`](super::Store::job_insert).
/// It starts `queued`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub github_job_id: i64,
    pub run_id: i64,
    pub repository: String,
    pub workflow: Option<String>,
    pub job_name: Option<String>,
    pub labels: Vec<String>,
    pub pool: String,
    pub source: JobSource,
    pub scale_set: Option<String>,
    /// The GitHub status seen at intake, if any (a webhook says `queued`).
    pub github_status: Option<GithubStatus>,
    pub timeout_secs: Option<i64>,
}

/// What [`Store::job_list`](super::Store::job_list) returns: newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in one of these states; empty means any state.
    pub states: Vec<JobState>,
    pub pool: Option<String>,
    pub repository: Option<String>,
    /// At most this many jobs; `None` means no limit.
    pub limit: Option<u32>,
}

/// How many jobs of a pool are in a state (`Store::job_counts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobCount {
    pub pool: String,
    pub state: JobState,
    pub count: i64,
}

/// Columns to set along with a state change in
/// [`Store::job_transition`](super::Store::job_transition); unset ones are
/// left as they are.
///
/// ```
/// # use berth::store::JobChanges;
/// let changes = JobChanges::new().container_id("c0ffee").runner("berth-abc", 42);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobChanges {
    pub(crate) sets: Vec<(Column, Value)>,
}

/// The columns a [`JobChanges`] may set. Kept to an enum so that column names
/// in dynamically built SQL are never caller-supplied strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    ContainerId,
    RunnerName,
    RunnerId,
    Error,
    ExitCode,
    StartedAt,
    FinishedAt,
    LeaseOwner,
    LeaseExpiresAt,
    TimeoutSecs,
    /// Only set by requeues.
    QueuedAt,
    /// Only cleared, by requeues (set by `Store::job_worker_exited`).
    ExitedAt,
    /// Only cleared, by requeues (set by `Store::job_claim`).
    Host,
}

impl Column {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Column::ContainerId => "container_id",
            Column::RunnerName => "runner_name",
            Column::RunnerId => "runner_id",
            Column::Error => "error",
            Column::ExitCode => "exit_code",
            Column::StartedAt => "started_at",
            Column::FinishedAt => "finished_at",
            Column::LeaseOwner => "lease_owner",
            Column::LeaseExpiresAt => "lease_expires_at",
            Column::TimeoutSecs => "timeout_secs",
            Column::QueuedAt => "queued_at",
            Column::ExitedAt => "exited_at",
            Column::Host => "host",
        }
    }
}

/// A column value: text or integer (timestamps are integer milliseconds), or NULL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

impl JobChanges {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn container_id(self, id: impl Into<String>) -> Self {
        self.set(Column::ContainerId, Value::Text(Some(id.into())))
    }

    pub fn clear_container_id(self) -> Self {
        self.set(Column::ContainerId, Value::Text(None))
    }

    /// The JIT runner registered for the job (name and GitHub's runner id).
    pub fn runner(self, name: impl Into<String>, id: i64) -> Self {
        self.runner_name(name)
            .set(Column::RunnerId, Value::Int(Some(id)))
    }

    pub fn runner_name(self, name: impl Into<String>) -> Self {
        self.set(Column::RunnerName, Value::Text(Some(name.into())))
    }

    pub fn clear_runner(self) -> Self {
        self.set(Column::RunnerName, Value::Text(None))
            .set(Column::RunnerId, Value::Int(None))
    }

    pub fn error(self, error: impl Into<String>) -> Self {
        self.set(Column::Error, Value::Text(Some(error.into())))
    }

    pub fn clear_error(self) -> Self {
        self.set(Column::Error, Value::Text(None))
    }

    pub fn exit_code(self, code: i64) -> Self {
        self.set(Column::ExitCode, Value::Int(Some(code)))
    }

    /// Defaults to the store's clock when moving to `running`.
    pub fn started_at(self, at: OffsetDateTime) -> Self {
        self.set(
            Column::StartedAt,
            Value::Int(Some(super::clock::to_millis(at))),
        )
    }

    /// Defaults to the store's clock when moving to a terminal state.
    pub fn finished_at(self, at: OffsetDateTime) -> Self {
        self.set(
            Column::FinishedAt,
            Value::Int(Some(super::clock::to_millis(at))),
        )
    }

    /// Hands the lease to `owner` until `until`.
    pub fn lease(self, owner: impl Into<String>, until: OffsetDateTime) -> Self {
        self.set(Column::LeaseOwner, Value::Text(Some(owner.into())))
            .set(
                Column::LeaseExpiresAt,
                Value::Int(Some(super::clock::to_millis(until))),
            )
    }

    /// Drops the lease (done anyway when moving to a terminal state).
    pub fn clear_lease(self) -> Self {
        self.set(Column::LeaseOwner, Value::Text(None))
            .set(Column::LeaseExpiresAt, Value::Int(None))
    }

    pub fn timeout_secs(self, secs: i64) -> Self {
        self.set(Column::TimeoutSecs, Value::Int(Some(secs)))
    }

    /// Whether a change of `column` is recorded.
    pub(crate) fn sets(&self, column: Column) -> bool {
        self.sets.iter().any(|(c, _)| *c == column)
    }

    /// Records `column = value`, replacing an earlier change of the same column.
    pub(crate) fn set(mut self, column: Column, value: Value) -> Self {
        self.sets.retain(|(c, _)| *c != column);
        self.sets.push((column, value));
        self
    }
}

/// What [`Store::job_logs_append`](super::Store::job_logs_append) left stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLogsState {
    /// Bytes stored (never more than the cap).
    pub size: i64,
    /// Whether bytes were dropped because the cap was reached.
    pub truncated: bool,
}

/// A job's kept output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLogs {
    /// The bytes asked for (all of them, or those after an offset).
    pub content: Vec<u8>,
    /// Total bytes stored for the job.
    pub size: i64,
    /// Whether the output went past the cap and its end was dropped.
    pub truncated: bool,
}

/// A new API token: only its hash ever reaches the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiToken {
    pub name: String,
    pub scope: ApiTokenScope,
    /// A hash of the token (e.g. hex SHA-256); the store never sees the token.
    pub token_hash: String,
    /// When it stops working; `None`: never.
    pub expires_at: Option<OffsetDateTime>,
    /// For a dashboard session, the token it was made from.
    pub session_of: Option<Uuid>,
}

/// A stored API token (its hash, never the token).
///
/// Serializes as the token record of the HTTP API (`GET /v1/tokens`): every
/// field but the hash, timestamps as RFC 3339, `null` when unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub scope: ApiTokenScope,
    #[serde(skip)]
    pub token_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Recorded at most about once a minute (see `api::auth`).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// For a dashboard session, the token it was made from; `None` otherwise.
    pub session_of: Option<Uuid>,
}

impl ApiToken {
    /// Whether the token no longer works at `now` because it expired.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether the token was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}
