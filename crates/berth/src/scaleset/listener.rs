//! The listener of one scale set: its message session, the long poll, and
//! the scaler task that keeps the number of runners right.
//!
//! # Two loops, so that nothing stalls the poll
//!
//! The *poll loop* only talks to the Actions service: it opens the session
//! (a `409` — a session that is still open, e.g. a crashed predecessor's —
//! is retried with backoff until it expires, never fatal), long-polls,
//! acknowledges each message, acquires offered jobs (older GHES), refreshes
//! the queue token on `401` (opening a new session if the old one is gone),
//! and records what the messages say in the shared state. It never waits
//! for the orchestrator.
//!
//! The *scaler task* runs after every poll and every few seconds: it asks
//! the orchestrator which runners exist, computes the plan
//! ([`super::scaler`]) and starts the delegations and retirements, each in
//! a task of its own. A delegation is retried with backoff (capped at a few
//! seconds) for as long as the orchestrator is unreachable; its key is
//! fixed before the first attempt, so a retry, or a later plan while it is
//! still in flight, never makes a second runner.
//!
//! # Start-up
//!
//! The first plan uses the new session's statistics and the orchestrator's
//! runners, so work that was pending before a restart is served even though
//! its `JobAssigned` messages went to the previous listener (ARC issue
//! #4027). Unacknowledged messages come again and change nothing.
//!
//! # Shutdown
//!
//! The session is deleted, so a successor can open one at once. Delegations
//! still being retried are dropped: the successor's first plan counts what
//! the orchestrator has and makes up the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::delegator::{Delegator, EventKind, JobEvent, RetireOutcome, RunnerSlot};
use super::messages::{JobMessage, JobMessageKind, Message, Session, Statistics};
use super::registry::{Registry, labels_of};
use super::scaler::{self, Create, Limits, Phase, Slot};
use super::{ScaleSetError, buffer_key};
use crate::config::ScaleSetConfig;
use crate::intake::DelegateRequest;
use crate::observability::Metrics;
use crate::observability::metrics::{ScaleSetLabels, ScaleSetOutcomeLabels};
use crate::supervise::ComponentHandle;

/// How long a busy runner that left the orchestrator's list without a
/// `JobCompleted` still counts (a runner that died with its job: GitHub
/// fails the job when its lock expires, and the statistics follow).
const VANISHED_BUSY_GRACE: Duration = Duration::from_secs(300);

/// How the listener waits and retries; tests shorten these.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Longest wait between session attempts after a `409`.
    pub session_retry_max: Duration,
    /// Longest wait after a failed poll.
    pub poll_retry_max: Duration,
    /// Longest wait between delegation attempts while the orchestrator is down.
    pub delegate_retry_max: Duration,
    /// The scaler runs at least this often.
    pub evaluate_every: Duration,
    /// Time limit of one call to the orchestrator.
    pub orchestrator_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            session_retry_max: Duration::from_secs(30),
            poll_retry_max: Duration::from_secs(30),
            delegate_retry_max: Duration::from_secs(5),
            evaluate_every: Duration::from_secs(5),
            orchestrator_timeout: Duration::from_secs(10),
        }
    }
}

/// One scale set's listener.
pub struct Listener {
    set: ScaleSetConfig,
    registry: Arc<Registry>,
    delegator: Arc<dyn Delegator>,
    metrics: Metrics,
    owner: String,
    timing: Timing,
    /// Where the listener records its session state and polls, when it runs
    /// as a supervised component (crate::supervise).
    status: Option<ComponentHandle>,
    /// Told the message session's id when one opens, and `None` once it is
    /// deleted (the election records it: crate::scaleset::election).
    on_session: Option<SessionHook>,
}

/// See [`Listener::on_session`].
pub type SessionHook = Arc<dyn Fn(Option<String>) + Send + Sync>;

/// A delegation not yet visible in the orchestrator's runner list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flight {
    /// Being delegated (or retried).
    Sending,
    /// Accepted when the runner list count was at this value.
    Accepted(u64),
}

/// What the poll loop learnt and the scaler acts on.
#[derive(Default)]
struct State {
    statistics: Option<Statistics>,
    /// Assigned jobs no runner took yet, by `runnerRequestId`.
    waiting: BTreeMap<i64, JobMessage>,
    /// Request ids started or completed (so a late `JobAssigned` is ignored).
    finished: BTreeSet<i64>,
    /// Runners that took a job, with when they left the orchestrator's list
    /// (their container ended) if they did before their `JobCompleted` came.
    busy: BTreeMap<String, Option<Instant>>,
    /// Runners whose job ended.
    done: BTreeSet<String>,
    /// The orchestrator's runners, from the last list that came back.
    slots: Vec<RunnerSlot>,
    /// Bumped when a runner list is requested.
    listing: u64,
    in_flight: BTreeMap<i64, Flight>,
    /// Retirements: `None` in progress, `Some(listing)` done at that count.
    retiring: BTreeMap<i64, Option<u64>>,
    orchestrator_up: Option<bool>,
    /// Runners that fail before taking a job (see [`StartBackoff`]).
    backoff: StartBackoff,
}

/// Backoff of new delegations while the scale set's runners fail before
/// taking a job (a pool whose image the policy refuses, a broken image, a
/// GitHub that refuses runners): without it the scaler would delegate a new
/// runner the moment the last one failed, thousands of times a second.
///
/// Each delegation the orchestrator refuses, or answers with a runner that
/// has already ended (its key known, but not among the runners it lists), is
/// one failure; new runners then wait
/// [`START_BACKOFF_MIN`] doubling per failure up to [`START_BACKOFF_MAX`].
/// A runner that takes a job, or stays up idle, ends the backoff. The
/// listener logs when the backoff starts and when it ends, not per attempt.
#[derive(Default)]
struct StartBackoff {
    failures: u32,
    until: Option<Instant>,
}

/// First wait after a runner failed before taking a job.
const START_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between runners while they keep failing.
const START_BACKOFF_MAX: Duration = Duration::from_secs(60);

impl StartBackoff {
    fn delay(failures: u32) -> Duration {
        START_BACKOFF_MIN
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(START_BACKOFF_MAX)
    }

    /// Records one failure; `true` when this starts a backoff.
    fn fail(&mut self, now: Instant) -> bool {
        self.failures += 1;
        self.until = Some(now + Self::delay(self.failures));
        self.failures == 1
    }

    /// Records a runner that works; `true` when this ends a backoff.
    fn succeed(&mut self) -> bool {
        let was = self.failures > 0;
        self.failures = 0;
        self.until = None;
        was
    }

    /// How long new runners must still wait.
    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("listener state")
    }
}

/// A session owner name: this host and process.
pub fn owner_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".into());
    format!("berth-{host}-{}", std::process::id())
}

/// The wait before retry `attempt`: from 500 ms doubling up to `max`, with
/// jitter (the one backoff of berth's clients, crate::github::backoff).
fn sleep_jittered(max: Duration, attempt: u32) -> Duration {
    crate::github::backoff::backoff(Duration::from_millis(500), max, attempt)
}

/// Sleeps, or returns `false` at once when `stop` is cancelled.
async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.cancelled() => false,
    }
}

impl Listener {
    pub fn new(
        set: ScaleSetConfig,
        registry: Arc<Registry>,
        delegator: Arc<dyn Delegator>,
        metrics: Metrics,
        timing: Timing,
    ) -> Self {
        Self {
            set,
            registry,
            delegator,
            metrics,
            owner: owner_name(),
            timing,
            status: None,
            on_session: None,
        }
    }

    /// Calls `hook` with the message session's id when one opens, and with
    /// `None` once the listener deleted it.
    pub fn on_session(mut self, hook: SessionHook) -> Self {
        self.on_session = Some(hook);
        self
    }

    fn session_changed(&self, session_id: Option<&str>) {
        if let Some(hook) = &self.on_session {
            hook(session_id.map(str::to_string));
        }
    }

    /// Records the session state and each poll in `status`.
    pub fn with_status(mut self, status: ComponentHandle) -> Self {
        self.status = Some(status);
        self
    }

    fn session_state(&self, state: impl Into<String>) {
        if let Some(status) = &self.status {
            status.set_detail(state);
        }
    }

    fn poll_started(&self) {
        if let Some(status) = &self.status {
            status.pass_started();
        }
    }

    fn poll_finished(&self, result: Result<(), String>) {
        if let Some(status) = &self.status {
            status.pass_finished(result);
        }
    }

    fn labels(&self) -> ScaleSetLabels {
        ScaleSetLabels {
            scale_set: self.set.name.clone(),
        }
    }

    fn count(&self, family: &'static str, outcome: &'static str) {
        let labels = ScaleSetOutcomeLabels {
            scale_set: self.set.name.clone(),
            outcome,
        };
        let counter = match family {
            "delegation" => &self.metrics.scaleset_delegations,
            "retirement" => &self.metrics.scaleset_retirements,
            "session" => &self.metrics.scaleset_session_events,
            _ => &self.metrics.scaleset_job_messages,
        };
        counter.get_or_create(&labels).inc();
    }

    /// Runs until `shutdown`. Errors only for what retrying cannot fix (a
    /// configuration the service refuses).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ScaleSetError> {
        let span = tracing::info_span!("scale_set", scale_set = %self.set.name);
        let this = Arc::new(self);
        this.clone().run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ScaleSetError> {
        let mut attempt = 0;
        self.session_state("finding the scale set");
        let id = loop {
            self.poll_started();
            match self.registry.id(&self.set.name).await {
                Ok(id) => break id,
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    self.poll_finished(Err(format!("finding the scale set: {e}")));
                    tracing::warn!(error = %e, attempt, "finding the scale set failed; retrying");
                    if !pause(
                        &shutdown,
                        sleep_jittered(self.timing.poll_retry_max, attempt),
                    )
                    .await
                    {
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.session_state("stopped: the scale set cannot be used");
                    self.poll_finished(Err(format!("finding the scale set: {e}")));
                    return Err(e);
                }
            }
        };
        self.poll_finished(Ok(()));
        tracing::info!(
            scale_set_id = id,
            delegator = self.delegator.kind(),
            min_runners = self.set.min_runners,
            max_runners = self.set.max_runners,
            idle_runners = self.set.idle_runners,
            "scale-set listener starting"
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        let stop = shutdown.child_token();
        let scaler = tokio::spawn(
            self.clone()
                .scaler_loop(shared.clone(), stop.clone())
                .in_current_span(),
        );
        let result = self.poll_loop(id, &shared, &shutdown).await;
        stop.cancel();
        let _ = scaler.await;
        result
    }

    // ---- The poll loop --------------------------------------------------------

    async fn poll_loop(
        &self,
        id: u64,
        shared: &Arc<Shared>,
        shutdown: &CancellationToken,
    ) -> Result<(), ScaleSetError> {
        let Some(mut session) = self.open_session(id, shared, shutdown).await else {
            return Ok(());
        };
        let mut last = 0u64;
        let mut failures = 0u32;
        let mut to_acquire: BTreeSet<i64> = BTreeSet::new();
        loop {
            if !to_acquire.is_empty() {
                self.acquire(id, &mut session, &mut to_acquire, shared, shutdown)
                    .await;
            }
            self.poll_started();
            let polled = tokio::select! {
                r = self.registry.client(&self.set.name)?.get_message(&session, last, self.set.max_runners) => r,
                _ = shutdown.cancelled() => break,
            };
            match &polled {
                Ok(_) => self.poll_finished(Ok(())),
                Err(e) => self.poll_finished(Err(format!("polling: {e}"))),
            }
            match polled {
                Ok(Some(message)) => {
                    failures = 0;
                    last = message.message_id;
                    self.handle(id, &mut session, message, &mut to_acquire, shared, shutdown)
                        .await;
                }
                Ok(None) => failures = 0,
                Err(ScaleSetError::QueueTokenExpired) => {
                    if !self.renew(id, &mut session, shared, shutdown).await {
                        break;
                    }
                }
                Err(ScaleSetError::SessionGone(reason)) => {
                    tracing::warn!(reason = %reason, "the message session is gone; opening a new one");
                    match self.open_session(id, shared, shutdown).await {
                        Some(s) => {
                            session = s;
                            last = 0;
                        }
                        None => break,
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "polling for messages failed");
                    if !pause(
                        shutdown,
                        sleep_jittered(self.timing.poll_retry_max, failures),
                    )
                    .await
                    {
                        break;
                    }
                }
            }
            shared.wake.notify_one();
        }
        let client = self.registry.client(&self.set.name)?;
        match tokio::time::timeout(
            Duration::from_secs(5),
            client.delete_session(id, &session.session_id),
        )
        .await
        {
            Ok(Ok(())) => {
                self.session_state("stopped: session deleted");
                self.session_changed(None);
                tracing::info!("message session deleted")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "deleting the message session failed"),
            Err(_) => tracing::warn!("deleting the message session timed out"),
        }
        Ok(())
    }

    /// Opens the session, retrying a `409` (and transient failures) with
    /// backoff. `None` on shutdown.
    async fn open_session(
        &self,
        id: u64,
        shared: &Shared,
        shutdown: &CancellationToken,
    ) -> Option<Session> {
        let client = self.registry.client(&self.set.name).ok()?;
        let mut attempt = 0;
        self.session_state("opening a message session");
        loop {
            attempt += 1;
            let opened = tokio::select! {
                r = client.create_session(id, &self.owner) => r,
                _ = shutdown.cancelled() => return None,
            };
            match opened {
                Ok(session) => {
                    self.count("session", "created");
                    self.session_changed(Some(&session.session_id));
                    tracing::info!(owner = %self.owner, "message session open");
                    self.session_state("session open: polling");
                    if let Some(stats) = session.statistics {
                        self.adopt(shared, stats);
                    }
                    shared.wake.notify_one();
                    return Some(session);
                }
                Err(ScaleSetError::SessionConflict(message)) => {
                    self.count("session", "conflict");
                    self.session_state(
                        "another session holds the scale set (409): retrying until it expires",
                    );
                    tracing::warn!(
                        attempt,
                        service_message = %message,
                        "another message session holds the scale set (a stopped listener's expires); retrying"
                    );
                }
                Err(e) => {
                    self.count("session", "failed");
                    self.session_state(format!("opening a session failed: {e}; retrying"));
                    tracing::warn!(attempt, error = %e, "opening the message session failed; retrying");
                }
            }
            if !pause(
                shutdown,
                sleep_jittered(self.timing.session_retry_max, attempt),
            )
            .await
            {
                return None;
            }
        }
    }

    /// A new queue token, or a new session when the old one is gone.
    /// `false` on shutdown.
    async fn renew(
        &self,
        id: u64,
        session: &mut Session,
        shared: &Shared,
        shutdown: &CancellationToken,
    ) -> bool {
        let Ok(client) = self.registry.client(&self.set.name) else {
            return false;
        };
        match client.refresh_session(id, &session.session_id).await {
            Ok(fresh) => {
                self.count("session", "refreshed");
                tracing::info!("message queue token refreshed");
                *session = fresh;
                true
            }
            Err(ScaleSetError::SessionGone(_)) => {
                self.count("session", "expired");
                match self.open_session(id, shared, shutdown).await {
                    Some(s) => {
                        *session = s;
                        true
                    }
                    None => false,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "refreshing the message session failed");
                pause(shutdown, Duration::from_secs(1)).await
            }
        }
    }

    fn adopt(&self, shared: &Shared, stats: Statistics) {
        shared.state().statistics = Some(stats);
        let l = self.labels();
        let m = &self.metrics;
        m.scaleset_assigned_jobs
            .get_or_create(&l)
            .set(i64::from(stats.total_assigned_jobs));
        m.scaleset_running_jobs
            .get_or_create(&l)
            .set(i64::from(stats.total_running_jobs));
        m.scaleset_busy_runners
            .get_or_create(&l)
            .set(i64::from(stats.total_busy_runners));
        m.scaleset_idle_runners
            .get_or_create(&l)
            .set(i64::from(stats.total_idle_runners));
    }

    async fn handle(
        &self,
        id: u64,
        session: &mut Session,
        message: Message,
        to_acquire: &mut BTreeSet<i64>,
        shared: &Arc<Shared>,
        shutdown: &CancellationToken,
    ) {
        if let Some(stats) = message.statistics {
            self.adopt(shared, stats);
        }
        // Acknowledge first, as actions/scaleset does: handling is idempotent,
        // and sizing follows the statistics, so a message lost after this is
        // made up by the next plan.
        let client = match self.registry.client(&self.set.name) {
            Ok(c) => c,
            Err(_) => return,
        };
        let mut acked = client.delete_message(session, message.message_id).await;
        if matches!(acked, Err(ScaleSetError::QueueTokenExpired))
            && self.renew(id, session, shared, shutdown).await
        {
            acked = client.delete_message(session, message.message_id).await;
        }
        if let Err(e) = acked {
            tracing::warn!(message_id = message.message_id, error = %e, "acknowledging a message failed");
        }
        for job in message.jobs {
            self.on_job_message(job, to_acquire, shared);
        }
        if !to_acquire.is_empty() {
            self.acquire(id, session, to_acquire, shared, shutdown)
                .await;
        }
        let mut st = shared.state();
        // Jobs wait only while they are assigned: keep no more than that.
        let assigned = st.statistics.map_or(0, |s| s.total_assigned_jobs as usize);
        while st.waiting.len() > assigned {
            st.waiting.pop_first();
        }
        while st.finished.len() > 10_000 {
            st.finished.pop_first();
        }
    }

    fn on_job_message(&self, job: JobMessage, to_acquire: &mut BTreeSet<i64>, shared: &Shared) {
        let request = job.runner_request_id;
        let repository = job.repository().unwrap_or_default();
        let kind = match job.kind {
            JobMessageKind::Available => "available",
            JobMessageKind::Assigned => "assigned",
            JobMessageKind::Started => "started",
            JobMessageKind::Completed => "completed",
        };
        self.count("message", kind);
        tracing::info!(
            runner_request_id = request,
            job_id = %job.job_id,
            repository = %repository,
            run_id = job.workflow_run_id,
            workflow = %job.job_workflow_ref,
            runner_name = job.runner().unwrap_or(""),
            result = job.result.as_deref().unwrap_or(""),
            "job {kind}"
        );
        let mut st = shared.state();
        match job.kind {
            JobMessageKind::Available => {
                if !st.finished.contains(&request) {
                    to_acquire.insert(request);
                }
            }
            JobMessageKind::Assigned => {
                to_acquire.remove(&request);
                if !st.finished.contains(&request) {
                    st.waiting.insert(request, job);
                }
            }
            JobMessageKind::Started | JobMessageKind::Completed => {
                to_acquire.remove(&request);
                st.waiting.remove(&request);
                st.finished.insert(request);
                let Some(runner) = job.runner().map(str::to_string) else {
                    return;
                };
                let event_kind = if job.kind == JobMessageKind::Started {
                    if !st.done.contains(&runner) {
                        st.busy.insert(runner.clone(), None);
                    }
                    if st.backoff.succeed() {
                        tracing::info!(
                            "a runner took a job: new runners start without waiting again"
                        );
                    }
                    if let (Some(queued), assigned) = (job.queue_time, job.runner_assign_time) {
                        let started = assigned.unwrap_or_else(time::OffsetDateTime::now_utc);
                        self.metrics
                            .scaleset_job_startup_duration
                            .get_or_create(&self.labels())
                            .observe((started - queued).as_seconds_f64().max(0.0));
                    }
                    EventKind::Started
                } else {
                    st.busy.remove(&runner);
                    st.done.insert(runner.clone());
                    if let (Some(started), Some(finished)) =
                        (job.runner_assign_time, job.finish_time)
                    {
                        self.metrics
                            .scaleset_job_execution_duration
                            .get_or_create(&self.labels())
                            .observe((finished - started).as_seconds_f64().max(0.0));
                    }
                    EventKind::Completed
                };
                drop(st);
                let event = JobEvent {
                    kind: event_kind,
                    runner_name: runner,
                    runner_id: job.runner_id.map(|i| i as i64).filter(|i| *i > 0),
                    runner_request_id: request,
                    job_id: job.job_id.clone(),
                    repository: job.repository(),
                    run_id: Some(job.workflow_run_id).filter(|r| *r > 0),
                    workflow: Some(job.job_workflow_ref.clone()).filter(|w| !w.is_empty()),
                    job_name: Some(job.job_display_name.clone()).filter(|n| !n.is_empty()),
                    conclusion: job.conclusion().map(str::to_string),
                };
                tokio::spawn(
                    report(self.delegator.clone(), self.set.name.clone(), event).in_current_span(),
                );
            }
        }
    }

    async fn acquire(
        &self,
        id: u64,
        session: &mut Session,
        to_acquire: &mut BTreeSet<i64>,
        shared: &Shared,
        shutdown: &CancellationToken,
    ) {
        let Ok(client) = self.registry.client(&self.set.name) else {
            return;
        };
        let ids: Vec<i64> = to_acquire.iter().copied().collect();
        let mut result = client.acquire_jobs(id, session, &ids).await;
        if matches!(result, Err(ScaleSetError::QueueTokenExpired))
            && self.renew(id, session, shared, shutdown).await
        {
            result = client.acquire_jobs(id, session, &ids).await;
        }
        match result {
            Ok(acquired) => {
                tracing::info!(
                    offered = ids.len(),
                    acquired = acquired.len(),
                    "acquired available jobs"
                );
                // Not acquired means taken or cancelled meanwhile: nothing to retry.
                to_acquire.clear();
            }
            Err(e) => {
                tracing::warn!(error = %e, "acquiring jobs failed; retrying after the next poll")
            }
        }
    }

    // ---- The scaler -------------------------------------------------------------

    async fn scaler_loop(self: Arc<Self>, shared: Arc<Shared>, stop: CancellationToken) {
        loop {
            // While new runners wait (StartBackoff), run again when the
            // wait is over rather than at the next wake-up.
            let next = shared
                .state()
                .backoff
                .remaining(Instant::now())
                .map_or(self.timing.evaluate_every, |w| {
                    w.min(self.timing.evaluate_every)
                });
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
                _ = stop.cancelled() => return,
            }
            if shared.state().statistics.is_some() {
                self.evaluate(&shared, &stop).await;
            }
        }
    }

    /// One plan, and the tasks that carry it out.
    async fn evaluate(self: &Arc<Self>, shared: &Arc<Shared>, stop: &CancellationToken) {
        let listing = {
            let mut st = shared.state();
            st.listing += 1;
            st.listing
        };
        let listed = tokio::time::timeout(
            self.timing.orchestrator_timeout,
            self.delegator.runners(&self.set.name),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ScaleSetError::Orchestrator {
                endpoint: "scale_set_runners",
                status: None,
                message: "timed out".into(),
            })
        });
        let mut st = shared.state();
        let fresh = match listed {
            Ok(slots) => {
                if st.orchestrator_up == Some(false) {
                    tracing::info!("the orchestrator answers again");
                }
                st.orchestrator_up = Some(true);
                let names: BTreeSet<String> =
                    slots.iter().filter_map(|s| s.runner_name.clone()).collect();
                st.done.retain(|n| names.contains(n));
                // A busy runner whose container ended before its
                // `JobCompleted` came still counts (the statistics count its
                // job as assigned until then), for a while.
                let now = Instant::now();
                for (name, gone_since) in st.busy.iter_mut() {
                    if names.contains(name) {
                        *gone_since = None;
                    } else {
                        gone_since.get_or_insert(now);
                    }
                }
                st.busy
                    .retain(|_, gone| gone.is_none_or(|t| now - t < VANISHED_BUSY_GRACE));
                self.note_runner_outcomes(&mut st, &slots);
                st.slots = slots;
                // Accepted before this list was asked for: the list shows them.
                st.in_flight
                    .retain(|_, f| !matches!(f, Flight::Accepted(at) if *at < listing));
                st.retiring
                    .retain(|_, done| !matches!(done, Some(at) if *at < listing));
                true
            }
            Err(e) => {
                if st.orchestrator_up != Some(false) {
                    tracing::warn!(error = %e, "the orchestrator cannot be asked for the scale set's runners; only assigned jobs get runners until it answers");
                }
                st.orchestrator_up = Some(false);
                false
            }
        };
        let stats = st.statistics.unwrap_or_default();
        let limits = Limits {
            min_runners: self.set.min_runners,
            max_runners: self.set.max_runners,
            idle_runners: self.set.idle_runners,
        };
        let desired = scaler::desired(&limits, stats.total_assigned_jobs, stats.total_busy_runners);
        let mut slots: Vec<Slot> = st
            .slots
            .iter()
            .map(|s| Slot {
                key: s.key,
                runner_name: s.runner_name.clone(),
                phase: self.merged_phase(&st, s),
            })
            .collect();
        // Busy runners gone from the list, under keys no delegation uses.
        let vanished = st.busy.iter().filter(|(_, gone)| gone.is_some());
        for (i, (name, _)) in vanished.enumerate() {
            slots.push(Slot {
                key: -1 - i as i64,
                runner_name: Some(name.clone()),
                phase: Phase::Busy,
            });
        }
        let in_flight: BTreeSet<i64> = st.in_flight.keys().copied().collect();
        let waiting: Vec<i64> = st.waiting.keys().copied().collect();
        let plan = scaler::plan(desired, &slots, &in_flight, &waiting, fresh);
        let l = self.labels();
        self.metrics
            .scaleset_desired_runners
            .get_or_create(&l)
            .set(i64::from(desired));
        self.metrics
            .scaleset_runners
            .get_or_create(&l)
            .set(i64::from(plan.live));
        if plan.create.is_empty() && plan.retire.is_empty() {
            return;
        }
        tracing::info!(
            assigned = stats.total_assigned_jobs,
            busy = stats.total_busy_runners,
            desired,
            live = plan.live,
            create = plan.create.len(),
            retire = plan.retire.len(),
            "scaling"
        );
        if !plan.create.is_empty()
            && let Some(wait) = st.backoff.remaining(Instant::now())
        {
            // The scaler runs again when the wait is over (scaler_loop).
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                held_back = plan.create.len(),
                "runners keep failing before taking a job: new runners wait"
            );
            self.count("delegation", "held_back");
            if plan.retire.is_empty() {
                return;
            }
        }
        let create = if st.backoff.remaining(Instant::now()).is_some() {
            Vec::new()
        } else {
            plan.create
        };
        for create in create {
            let request = match create {
                Create::ForJob(key) => self.request_for(key, st.waiting.get(&key)),
                Create::Buffer => self.request_for(buffer_key(), None),
            };
            st.in_flight.insert(request.github_job_id, Flight::Sending);
            tokio::spawn(
                self.clone()
                    .delegate(shared.clone(), request, stop.clone())
                    .in_current_span(),
            );
        }
        for key in plan.retire {
            if st.retiring.contains_key(&key) {
                continue;
            }
            st.retiring.insert(key, None);
            tokio::spawn(self.clone().retire(shared.clone(), key).in_current_span());
        }
    }

    /// The orchestrator's phase of a runner, corrected by what the messages
    /// said since.
    fn merged_phase(&self, st: &State, slot: &RunnerSlot) -> Phase {
        if st.retiring.contains_key(&slot.key) {
            return Phase::Retiring;
        }
        match slot.phase {
            Phase::Done | Phase::Retiring => slot.phase,
            phase => match slot.runner_name.as_ref() {
                Some(n) if st.done.contains(n) => Phase::Done,
                Some(n) if st.busy.contains_key(n) => Phase::Busy,
                _ => phase,
            },
        }
    }

    fn request_for(&self, key: i64, job: Option<&JobMessage>) -> DelegateRequest {
        let labels = job
            .map(|j| j.request_labels.clone())
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| labels_of(&self.set));
        DelegateRequest {
            repository: job.and_then(JobMessage::repository).unwrap_or_default(),
            github_job_id: key,
            run_id: job.map_or(0, |j| j.workflow_run_id.max(0)),
            labels,
            workflow: job
                .map(|j| j.job_workflow_ref.clone())
                .filter(|w| !w.is_empty()),
            job_name: job
                .map(|j| j.job_display_name.clone())
                .filter(|n| !n.is_empty()),
            pool: Some(self.set.pool.clone()),
            scale_set: Some(self.set.name.clone()),
        }
    }

    /// Delegates one runner, retrying while the orchestrator is unreachable.
    async fn delegate(
        self: Arc<Self>,
        shared: Arc<Shared>,
        request: DelegateRequest,
        stop: CancellationToken,
    ) {
        let key = request.github_job_id;
        let for_job = !super::is_buffer_key(key);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sent = tokio::select! {
                r = tokio::time::timeout(self.timing.orchestrator_timeout, self.delegator.delegate(&request)) => r,
                _ = stop.cancelled() => {
                    shared.state().in_flight.remove(&key);
                    return;
                }
            };
            let sent = sent.unwrap_or_else(|_| {
                Err(ScaleSetError::Orchestrator {
                    endpoint: "delegate",
                    status: None,
                    message: "timed out".into(),
                })
            });
            match sent {
                Ok(delegated) => {
                    {
                        let mut st = shared.state();
                        let at = st.listing;
                        st.in_flight.insert(key, Flight::Accepted(at));
                        // "Exists" for a key the orchestrator does not list
                        // (it lists the runners that have not ended) is a
                        // runner that already ended: no new runner comes of
                        // it, as with a refusal.
                        let ended = !delegated.created
                            && !st
                                .slots
                                .iter()
                                .any(|s| s.key == key && !s.state.is_terminal());
                        if ended {
                            self.runner_failed(
                                &mut st,
                                "the orchestrator answered with a runner that already ended",
                            );
                        }
                    }
                    self.count(
                        "delegation",
                        if delegated.created {
                            "accepted"
                        } else {
                            "duplicate"
                        },
                    );
                    tracing::info!(
                        key,
                        for_job,
                        berth_job_id = %delegated.id,
                        created = delegated.created,
                        attempts = attempt,
                        "runner delegated"
                    );
                    shared.wake.notify_one();
                    return;
                }
                Err(e) if e.is_transient() => {
                    self.count("delegation", "retried");
                    if attempt == 1 || attempt % 10 == 0 {
                        tracing::warn!(key, attempt, error = %e, "delegating a runner failed; retrying");
                    }
                    if !pause(
                        &stop,
                        sleep_jittered(self.timing.delegate_retry_max, attempt),
                    )
                    .await
                    {
                        shared.state().in_flight.remove(&key);
                        return;
                    }
                }
                Err(e) => {
                    self.count("delegation", "failed");
                    let mut st = shared.state();
                    st.in_flight.remove(&key);
                    self.runner_failed(&mut st, &format!("the orchestrator refused a runner: {e}"));
                    return;
                }
            }
        }
    }

    /// Ends the backoff when a runner of a fresh list is busy.
    fn note_runner_outcomes(&self, st: &mut State, slots: &[RunnerSlot]) {
        if slots.iter().any(|s| s.phase == Phase::Busy) && st.backoff.succeed() {
            tracing::info!("a runner took a job: new runners start without waiting again");
        }
    }

    /// One runner that will not run a job: counted, and new runners back
    /// off. Logged when the backoff starts; later ones only at debug level.
    fn runner_failed(&self, st: &mut State, why: &str) {
        self.count("delegation", "runner_failed");
        let failures = st.backoff.failures + 1;
        let wait = StartBackoff::delay(failures);
        if st.backoff.fail(Instant::now()) {
            tracing::warn!(
                reason = why,
                max_wait_secs = START_BACKOFF_MAX.as_secs(),
                "runners of this scale set fail before taking a job; new runners now wait, longer after each failure (see the jobs' errors)"
            );
        } else {
            tracing::debug!(
                reason = why,
                failures,
                wait_ms = wait.as_millis() as u64,
                "a runner failed again"
            );
        }
    }

    async fn retire(self: Arc<Self>, shared: Arc<Shared>, key: i64) {
        let outcome = tokio::time::timeout(
            self.timing.orchestrator_timeout,
            self.delegator.retire(&self.set.name, key),
        )
        .await;
        let mut st = shared.state();
        match outcome {
            Ok(Ok(RetireOutcome::Retired)) => {
                self.count("retirement", "retired");
                let at = st.listing;
                st.retiring.insert(key, Some(at));
                tracing::info!(key, "idle runner retired");
            }
            Ok(Ok(other)) => {
                self.count("retirement", other.as_str());
                st.retiring.remove(&key);
                tracing::debug!(key, outcome = other.as_str(), "runner not retired");
            }
            Ok(Err(e)) => {
                self.count("retirement", "failed");
                st.retiring.remove(&key);
                tracing::warn!(key, error = %e, "retiring a runner failed");
            }
            Err(_) => {
                self.count("retirement", "failed");
                st.retiring.remove(&key);
                tracing::warn!(key, "retiring a runner timed out");
            }
        }
    }
}

/// Records a job event with the orchestrator, retrying for about a minute:
/// it is bookkeeping (the job JSON), nothing waits for it.
async fn report(delegator: Arc<dyn Delegator>, scale_set: String, event: JobEvent) {
    for attempt in 1..=12u32 {
        match delegator.report(&scale_set, &event).await {
            Ok(()) => return,
            Err(e) if e.is_transient() && attempt < 12 => {
                tokio::time::sleep(sleep_jittered(Duration::from_secs(8), attempt)).await;
            }
            Err(e) => {
                tracing::warn!(runner_name = %event.runner_name, error = %e, "recording a job event with the orchestrator failed");
                return;
            }
        }
    }
}

/// Runs a listener for every scale set of `sets` until `shutdown`. When one
/// stops on an error retrying cannot fix, the others are stopped too and
/// the error is returned.
pub async fn run_all(
    sets: Vec<ScaleSetConfig>,
    registry: Arc<Registry>,
    delegator: Arc<dyn Delegator>,
    metrics: Metrics,
    timing: Timing,
    shutdown: CancellationToken,
) -> Result<(), ScaleSetError> {
    let local = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    for set in sets {
        let listener = Listener::new(
            set,
            registry.clone(),
            delegator.clone(),
            metrics.clone(),
            timing.clone(),
        );
        tasks.spawn(listener.run(local.clone()));
    }
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.unwrap_or_else(|e| {
            Err(ScaleSetError::Config(format!(
                "a listener task failed: {e}"
            )))
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "a scale-set listener stopped");
            local.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
