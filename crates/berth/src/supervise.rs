//! Supervision of `berth serve`'s long-running components, and the status
//! each of them records.
//!
//! # Why
//!
//! The dispatcher, the watcher, the reconciler lanes, the warm refill and
//! the scale-set listeners each run as a task for the life of the process.
//! A task that panics or returns early would otherwise vanish silently:
//! berth would go on accepting webhooks, `/readyz` would stay ready, and no
//! job would ever run again. So every component runs under a
//! [`Supervisor`], which notices its end at once, logs the cause, and
//! applies the component's [`OnExit`] policy:
//!
//! | component            | required | on an unexpected end | why                                              |
//! |----------------------|----------|----------------------|--------------------------------------------------|
//! | `dispatcher`         | yes      | restart with backoff | its state is in the store: a fresh loop resumes  |
//! | `watcher`            | yes      | restart with backoff | a fresh start checks every running job (catch-up)|
//! | `reconciler.local`   | yes      | restart with backoff | passes are idempotent                            |
//! | `reconciler.github`  | no       | restart with backoff | a GitHub outage must not make berth unready      |
//! | `warm_refill`        | no       | restart with backoff | jobs still start cold without it                 |
//! | `retention`          | no       | restart with backoff | pruning can wait                                 |
//! | `delivery_catchup`   | no       | restart with backoff | a GitHub outage must not make berth unready; a failed pass is retried at the next interval |
//! | `heartbeat`          | yes      | stop the process     | other replicas take over the leases of a replica that stops heartbeating: one that goes on working without a heartbeat could run a job twice |
//! | `scale_set:<name>`   | no       | restart with backoff | a listener that gives up is retried, never silent |
//! | `secrets`            | no       | restart with backoff | a secret that cannot be read again keeps its last value |
//!
//! Restarts back off from 1 s, doubling to 30 s; the backoff resets when a
//! run lasted longer than a minute.
//!
//! # Status
//!
//! Each component records, through its [`ComponentHandle`], when its last
//! pass started and finished, its result, how long it took and how many
//! passes failed in a row. A component is *up* while its task runs and it
//! has not failed [`FAILING_AFTER`] passes in a row; after a crash it is
//! down until its first successful pass. `/readyz` is not ready while a
//! required component is down; `GET /v1/status` and `berth status` show
//! every component; `berth_component_up{component}` and
//! `berth_component_last_success_timestamp_seconds{component}` export it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::observability::Metrics;

/// Passes failed in a row after which a component counts as down.
pub const FAILING_AFTER: u32 = 3;
/// First wait before a restart.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long resets the restart backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// What the supervisor does when a component ends before shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExit {
    /// Start it again after a backoff.
    Restart,
    /// Stop the whole process with an error (a service manager restarts it).
    StopProcess,
}

/// Where a component is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    /// Running, no pass finished yet.
    Starting,
    /// Running, its last pass succeeded (or fewer than [`FAILING_AFTER`] failed).
    Running,
    /// Running, but its last [`FAILING_AFTER`] or more passes failed.
    Failing,
    /// It ended unexpectedly; waiting to be started again.
    Restarting,
    /// Started again after a crash, no successful pass yet.
    Recovering,
    /// Stopped at shutdown.
    Stopped,
    /// Ended unexpectedly and is not restarted (the process stops).
    Failed,
}

impl ComponentState {
    pub fn is_up(self) -> bool {
        matches!(self, Self::Starting | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Failing => "failing",
            Self::Restarting => "restarting",
            Self::Recovering => "recovering",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// One component's status, as `GET /v1/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    /// Whether `/readyz` depends on it.
    pub required: bool,
    pub on_exit: OnExit,
    pub up: bool,
    pub state: ComponentState,
    /// What the component is doing, in its own words (e.g. a listener's
    /// session state).
    pub detail: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_finished_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success_at: Option<OffsetDateTime>,
    /// `ok` or `error`, of the last finished pass.
    pub last_result: Option<&'static str>,
    pub last_error: Option<String>,
    pub last_duration_seconds: Option<f64>,
    pub consecutive_failures: u32,
    /// Times the supervisor started it again after an unexpected end.
    pub restarts: u32,
    #[serde(skip)]
    pass_started: Option<Instant>,
}

/// Every component's status; shared by the supervisor, the components, the
/// API and the metrics.
#[derive(Clone)]
pub struct Components {
    inner: Arc<Mutex<BTreeMap<String, ComponentStatus>>>,
    metrics: Metrics,
}

impl Components {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            inner: Default::default(),
            metrics,
        }
    }

    /// Registers a component (or returns the handle of one registered
    /// already, keeping its record).
    pub fn register(&self, name: &str, required: bool, on_exit: OnExit) -> ComponentHandle {
        let mut all = self.inner.lock().expect("component status");
        all.entry(name.to_string())
            .or_insert_with(|| ComponentStatus {
                name: name.to_string(),
                required,
                on_exit,
                up: true,
                state: ComponentState::Starting,
                detail: None,
                last_started_at: None,
                last_finished_at: None,
                last_success_at: None,
                last_result: None,
                last_error: None,
                last_duration_seconds: None,
                consecutive_failures: 0,
                restarts: 0,
                pass_started: None,
            });
        drop(all);
        let handle = ComponentHandle {
            name: Arc::from(name),
            components: self.clone(),
        };
        handle.update(|_| {});
        handle
    }

    /// Every component, by name.
    pub fn snapshot(&self) -> Vec<ComponentStatus> {
        self.inner
            .lock()
            .expect("component status")
            .values()
            .cloned()
            .collect()
    }

    /// The required components that are down (empty: ready).
    pub fn required_down(&self) -> Vec<String> {
        self.inner
            .lock()
            .expect("component status")
            .values()
            .filter(|c| c.required && !c.up)
            .map(|c| c.name.clone())
            .collect()
    }
}

/// A component's way to record its passes.
#[derive(Clone)]
pub struct ComponentHandle {
    name: Arc<str>,
    components: Components,
}

impl ComponentHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn update(&self, change: impl FnOnce(&mut ComponentStatus)) {
        let mut all = self.components.inner.lock().expect("component status");
        let Some(status) = all.get_mut(&*self.name) else {
            return;
        };
        change(status);
        status.up = status.state.is_up();
        let metrics = &self.components.metrics;
        metrics.component_up(&self.name, status.up);
        if let Some(at) = status.last_success_at {
            metrics.component_last_success(&self.name, at);
        }
    }

    /// A pass begins.
    pub fn pass_started(&self) {
        self.update(|s| {
            s.last_started_at = Some(OffsetDateTime::now_utc());
            s.pass_started = Some(Instant::now());
        });
    }

    /// A pass ended with `result`.
    pub fn pass_finished(&self, result: Result<(), String>) {
        self.update(|s| {
            let now = OffsetDateTime::now_utc();
            s.last_finished_at = Some(now);
            s.last_duration_seconds = s.pass_started.take().map(|t| t.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    s.last_result = Some("ok");
                    s.last_error = None;
                    s.last_success_at = Some(now);
                    s.consecutive_failures = 0;
                    if matches!(
                        s.state,
                        ComponentState::Starting
                            | ComponentState::Failing
                            | ComponentState::Recovering
                    ) {
                        s.state = ComponentState::Running;
                    }
                }
                Err(error) => {
                    s.last_result = Some("error");
                    s.last_error = Some(error);
                    s.consecutive_failures += 1;
                    if s.consecutive_failures >= FAILING_AFTER
                        && matches!(s.state, ComponentState::Starting | ComponentState::Running)
                    {
                        s.state = ComponentState::Failing;
                    }
                }
            }
        });
    }

    /// Records a whole pass at once.
    pub fn pass(&self, started: Instant, result: Result<(), String>) {
        self.update(|s| {
            s.last_started_at = Some(
                OffsetDateTime::now_utc()
                    - time::Duration::seconds_f64(started.elapsed().as_secs_f64()),
            );
            s.pass_started = Some(started);
        });
        self.pass_finished(result);
    }

    /// What the component is doing now (shown with its status).
    pub fn set_detail(&self, detail: impl Into<String>) {
        let detail = detail.into();
        self.update(|s| s.detail = Some(detail));
    }

    fn set_state(&self, state: ComponentState) {
        self.update(|s| s.state = state);
    }
}

/// Runs components and watches them end; see the [module docs](self).
pub struct Supervisor {
    components: Components,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// Cancelled, with the cause recorded, when a component whose policy is
    /// [`OnExit::StopProcess`] ends.
    fatal: CancellationToken,
    fatal_cause: Arc<Mutex<Option<String>>>,
}

impl Supervisor {
    pub fn new(components: Components, shutdown: CancellationToken) -> Self {
        Self {
            components,
            shutdown,
            tasks: JoinSet::new(),
            fatal: CancellationToken::new(),
            fatal_cause: Default::default(),
        }
    }

    /// Starts `make(handle)` as the component `name` and keeps it running
    /// until shutdown. `make` is called again for every restart.
    pub fn spawn<F, Fut>(&mut self, name: &str, required: bool, on_exit: OnExit, make: F)
    where
        F: Fn(ComponentHandle) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.components.register(name, required, on_exit);
        let shutdown = self.shutdown.clone();
        let fatal = self.fatal.clone();
        let fatal_cause = self.fatal_cause.clone();
        self.tasks.spawn(async move {
            let mut backoff = RESTART_BACKOFF_MIN;
            loop {
                let began = Instant::now();
                // A task of its own, so that a panic is caught here.
                let outcome = tokio::spawn(make(handle.clone())).await;
                if shutdown.is_cancelled() {
                    handle.set_state(ComponentState::Stopped);
                    return;
                }
                let cause = match outcome {
                    Ok(Ok(())) => "it returned before shutdown".to_string(),
                    Ok(Err(e)) => format!("it failed: {e:#}"),
                    Err(e) if e.is_panic() => format!("it panicked: {}", panic_message(e)),
                    Err(e) => format!("it was cancelled: {e}"),
                };
                handle.update(|s| {
                    s.last_error = Some(cause.clone());
                    s.last_result = Some("error");
                });
                if on_exit == OnExit::StopProcess {
                    tracing::error!(component = %handle.name, cause = %cause,
                        "a component stopped unexpectedly; stopping berth");
                    handle.set_state(ComponentState::Failed);
                    fatal_cause
                        .lock()
                        .expect("fatal cause")
                        .get_or_insert_with(|| {
                            format!("component `{}` stopped: {cause}", handle.name)
                        });
                    fatal.cancel();
                    return;
                }
                if began.elapsed() >= STABLE_RUN {
                    backoff = RESTART_BACKOFF_MIN;
                }
                tracing::error!(component = %handle.name, cause = %cause,
                    restart_in_ms = backoff.as_millis() as u64,
                    "a component stopped unexpectedly; restarting it");
                handle.set_state(ComponentState::Restarting);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => {
                        handle.set_state(ComponentState::Stopped);
                        return;
                    }
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                handle.update(|s| {
                    s.restarts += 1;
                    s.state = ComponentState::Recovering;
                });
                handle.components.metrics.component_restarted(&handle.name);
            }
        });
    }

    /// Resolves when a component whose policy is to stop the process ended;
    /// gives the cause.
    pub async fn fatal(&self) -> String {
        self.fatal.cancelled().await;
        self.fatal_cause
            .lock()
            .expect("fatal cause")
            .clone()
            .unwrap_or_default()
    }

    /// Waits for every component to end (after shutdown).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-text panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components() -> Components {
        Components::new(Metrics::new())
    }

    #[test]
    fn failing_passes_take_a_component_down_and_one_success_brings_it_up() {
        let all = components();
        let h = all.register("lane", true, OnExit::Restart);
        assert!(all.required_down().is_empty(), "a starting component is up");
        for _ in 0..FAILING_AFTER - 1 {
            h.pass_started();
            h.pass_finished(Err("boom".into()));
        }
        assert!(
            all.required_down().is_empty(),
            "below the threshold it stays up"
        );
        h.pass_started();
        h.pass_finished(Err("boom".into()));
        assert_eq!(all.required_down(), ["lane"]);
        let s = &all.snapshot()[0];
        assert_eq!(s.state, ComponentState::Failing);
        assert_eq!(s.consecutive_failures, FAILING_AFTER);
        assert_eq!(s.last_error.as_deref(), Some("boom"));
        h.pass_started();
        h.pass_finished(Ok(()));
        assert!(all.required_down().is_empty());
        let s = &all.snapshot()[0];
        assert_eq!(
            (s.state, s.consecutive_failures),
            (ComponentState::Running, 0)
        );
        assert!(s.last_success_at.is_some() && s.last_duration_seconds.is_some());
    }

    #[tokio::test]
    async fn a_panicking_component_is_restarted_and_down_until_it_succeeds() {
        let all = components();
        let shutdown = CancellationToken::new();
        let mut sup = Supervisor::new(all.clone(), shutdown.clone());
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = runs.clone();
        let stop = shutdown.clone();
        sup.spawn("dispatcher", true, OnExit::Restart, move |h| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let stop = stop.clone();
            async move {
                if n == 0 {
                    panic!("first run panics");
                }
                h.pass_started();
                h.pass_finished(Ok(()));
                stop.cancelled().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let s = &all.snapshot()[0];
        assert_eq!(s.state, ComponentState::Restarting);
        assert!(
            s.last_error
                .as_deref()
                .unwrap()
                .contains("first run panics")
        );
        assert_eq!(all.required_down(), ["dispatcher"]);
        tokio::time::sleep(RESTART_BACKOFF_MIN * 2).await;
        let s = &all.snapshot()[0];
        assert_eq!((s.state, s.restarts), (ComponentState::Running, 1));
        assert!(all.required_down().is_empty());
        shutdown.cancel();
        sup.join().await;
        assert_eq!(all.snapshot()[0].state, ComponentState::Stopped);
    }

    #[tokio::test]
    async fn a_component_that_must_not_restart_stops_the_process() {
        let all = components();
        let shutdown = CancellationToken::new();
        let mut sup = Supervisor::new(all.clone(), shutdown.clone());
        sup.spawn("heartbeat", true, OnExit::StopProcess, |_| async {
            anyhow::bail!("database gone")
        });
        let cause = sup.fatal().await;
        assert!(
            cause.contains("heartbeat") && cause.contains("database gone"),
            "{cause}"
        );
        assert_eq!(all.snapshot()[0].state, ComponentState::Failed);
    }
}
