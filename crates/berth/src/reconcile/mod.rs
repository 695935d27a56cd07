//! Reconcilers: periodic and on-demand, idempotent passes that finish or clean
//! up whatever a crash or a lost event left behind.
//!
//! The same pass runs at start-up, every `reconcile.interval`, and whenever a
//! component wakes it. It compares what should be (the store) with what is
//! (Docker's containers, GitHub's runners and jobs) and closes the gap:
//!
//! | what is found                                   | what is done                                   |
//! |-------------------------------------------------|------------------------------------------------|
//! | a claim whose lease ran out                     | job requeued, or running if its worker runs    |
//! | a `berth.managed` container no live job owns    | removed after `orphan_grace`                   |
//! | a warm container recorded in the store           | left to crate::dispatch::warm (kept or replaced) |
//! | an offline `berth-` runner no live job owns     | registration deleted                           |
//! | a job queued longer than `queued_check_after`   | checked on GitHub; expired if no longer queued |
//! | a job past its pool's `job_timeout`             | worker stopped (SIGTERM, then kill); failed    |
//! | a runner idle past its pool's `idle_timeout`    | worker stopped; job requeued or finished       |
//! | a cancelled job                                 | worker stopped; job cancelled                  |
//! | a job GitHub completed without its own runner   | that runner torn down; job finished            |
//! | a running job whose worker exited unseen        | exit handled                                   |
//!
//! Scale-set runners (jobs with `scale_set`) are runners, not GitHub jobs:
//! GitHub's view of a job never ends them, and idle ones are their
//! listener's to keep or retire (crate::scaleset), so the GitHub-job and
//! idle-runner rows do not apply to them.
//!
//! Each action is a conditional update or an idempotent Docker/GitHub call,
//! so two replicas (or a reconciler racing the dispatcher) can run this at
//! once without harm. Normal running and crash recovery share this one code
//! path: there is no separate "recovery mode".
//!
//! Beside the two lanes, [`delivery_catchup`] repairs what no store or
//! Docker state shows: a `workflow_job` delivery that never reached berth
//! (it has GitHub redeliver it), and [`retention`] deletes what is kept no
//! longer.

pub mod delivery_catchup;
pub mod replicas;
pub mod retention;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::dispatch::{logs, watch};
use crate::docker::controller::{Controller, LABEL_POOL, LABEL_RUNNER, NAME_PREFIX};
use crate::lifecycle::exit::{Outcome, after_github_completion, apply, handle_exit};
use crate::lifecycle::resources;
use crate::observability::metrics::KindLabels;
use crate::store::{GithubStatus, Job, JobChanges, JobSource, JobState};
use crate::supervise::ComponentHandle;

/// Grace given to a worker between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What one pass did, per kind of action.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub leases_expired: u32,
    pub orphan_containers: u32,
    /// Containers, networks and volumes of container jobs whose job ended.
    pub orphan_job_objects: u32,
    pub orphan_runners: u32,
    pub queued_expired: u32,
    pub timed_out: u32,
    pub idle_runners: u32,
    pub cancelled: u32,
    pub completed_elsewhere: u32,
    pub failures: u32,
    /// The reconcilers that failed, each with its error.
    pub failed: Vec<String>,
}

/// The local lane (`reconciler.local`): a pass now, then every `interval`
/// and whenever woken (a cancel, a runner to tear down).
///
/// The reconcilers run in two lanes, each a component of its own
/// (crate::supervise). The GitHub lane ([`run_github`]) reads GitHub (a job
/// lookup per long-queued job, the runner list per scope): a slow or
/// unreachable GitHub holds a pass of it up to `request_timeout ×
/// max_attempts` per call, and must not hold up the repairs of the local
/// lane, which needs the store and Docker. Within a lane the order stands;
/// across lanes every action is conditional, so whatever one lane sees
/// half-done a later pass finishes. A pass cut short by shutdown is like one
/// cut short by a crash: the next start finishes it. A pass in which a
/// reconciler failed is a failed pass of its lane.
pub async fn run_local(ctx: Arc<Context>, shutdown: CancellationToken, status: ComponentHandle) {
    loop {
        status.pass_started();
        tokio::select! {
            r = local_pass(&ctx) => status.pass_finished(r.outcome()),
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.reconcile.interval) => {}
            _ = ctx.reconcile_wake.notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The GitHub lane (`reconciler.github`): a pass now, then every `interval`.
pub async fn run_github(ctx: Arc<Context>, shutdown: CancellationToken, status: ComponentHandle) {
    loop {
        status.pass_started();
        tokio::select! {
            r = github_pass(&ctx) => status.pass_finished(r.outcome()),
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.reconcile.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

impl Report {
    /// A pass's result for its lane's status: the reconcilers that failed.
    fn outcome(&self) -> std::result::Result<(), String> {
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(format!("reconcilers failed: {}", self.failed.join("; ")))
        }
    }
}

/// Runs one reconciler, counts what it did into `$report` and the metrics.
macro_rules! step {
    ($ctx:ident, $report:ident, $kind:literal, $field:ident, $call:expr) => {
        match $call.await {
            Ok(n) => {
                $report.$field += n;
                if n > 0 {
                    $ctx.metrics
                        .reconciler_actions
                        .get_or_create(&KindLabels { kind: $kind })
                        .inc_by(u64::from(n));
                }
            }
            Err(e) => {
                $report.failures += 1;
                $report.failed.push(format!("{}: {e}", $kind));
                $ctx.metrics
                    .reconciler_failures
                    .get_or_create(&KindLabels { kind: $kind })
                    .inc();
                $ctx.metrics.reconciler_error($kind, e.kind());
                tracing::warn!(reconciler = $kind, error = %e, error_kind = e.kind(),
                    transient = e.is_transient(), "reconciler failed");
            }
        }
    };
}

/// The reconcilers that need only the store and Docker (and GitHub only to
/// delete a registration they release).
async fn local_pass(ctx: &Arc<Context>) -> Report {
    let mut r = Report::default();
    if crate::failpoint::fails("reconcile_local") {
        r.failures += 1;
        r.failed
            .push("failpoint: the failpoint `reconcile_local` is armed".into());
    }
    step!(ctx, r, "lease_expired", leases_expired, expired_leases(ctx));
    step!(ctx, r, "cancelled", cancelled, cancellations(ctx));
    step!(
        ctx,
        r,
        "completed_elsewhere",
        completed_elsewhere,
        completed_elsewhere(ctx)
    );
    step!(ctx, r, "timeout", timed_out, timeouts(ctx));
    step!(ctx, r, "idle_runner", idle_runners, idle_runners(ctx));
    for host in ctx.fleet.owned() {
        if let Err(e) = watch::catch_up(ctx, host.name()).await {
            r.failures += 1;
            r.failed
                .push(format!("catch_up on host `{}`: {e}", host.name()));
        }
    }
    step!(
        ctx,
        r,
        "orphan_container",
        orphan_containers,
        orphan_containers(ctx)
    );
    step!(
        ctx,
        r,
        "orphan_job_object",
        orphan_job_objects,
        orphan_job_objects(ctx)
    );
    if r != Report::default() {
        tracing::info!(report = ?r, lane = "local", "reconcile pass acted");
    }
    r
}

/// The reconcilers that read GitHub.
async fn github_pass(ctx: &Arc<Context>) -> Report {
    let mut r = Report::default();
    step!(
        ctx,
        r,
        "queued_expired",
        queued_expired,
        queued_too_long(ctx)
    );
    step!(ctx, r, "orphan_runner", orphan_runners, orphan_runners(ctx));
    if r != Report::default() {
        tracing::info!(report = ?r, lane = "github", "reconcile pass acted");
    }
    r
}

type Result<T> = std::result::Result<T, crate::error::Error>;

/// A configured duration as a `time` duration.
fn duration(d: Duration, key: &str) -> Result<time::Duration> {
    time::Duration::try_from(d)
        .map_err(|e| crate::error::Error::Config(format!("{key} is out of range: {e}")))
}

/// Claims whose holder died: a running worker is adopted, anything else is
/// released and the job requeued.
async fn expired_leases(ctx: &Arc<Context>) -> Result<u32> {
    let now = ctx.store.now();
    let mut acted = 0;
    for job in ctx.store.jobs_with_expired_leases(now).await? {
        match expired_lease(ctx, &job, now).await {
            Ok(true) => acted += 1,
            Ok(false) => {}
            Err(e) => item_failed(ctx, "lease_expired", &job, e)?,
        }
    }
    Ok(acted)
}

async fn expired_lease(ctx: &Arc<Context>, job: &Job, now: OffsetDateTime) -> Result<bool> {
    if job.state == JobState::Starting
        && let Some(container_id) = &job.container_id
    {
        let host = ctx.fleet.host_of(job);
        match docker_of(ctx, job)?.inspect(container_id).await {
            Ok(info) if info.running => {
                // Running, but it may never have got its config: a replica
                // that died between starting the worker and writing to its
                // stdin leaves it blocked reading, for ever. Its runner's
                // registration tells: GitHub refuses to delete a runner that
                // runs a job. Deleted, the runner can take none now, and the
                // job goes back to the queue below (its worker removed).
                match resources::deregister_job_runner_unless_busy(ctx, job).await {
                    resources::Deregistration::Busy => {}
                    resources::Deregistration::Deleted => {
                        return requeue_expired(ctx, job, now).await;
                    }
                    resources::Deregistration::Failed => return Ok(false),
                }
                // The runner runs a job: adopt the worker.
                let changes = JobChanges::new().started_at(now).clear_lease();
                let adopted = ctx
                    .store
                    .job_transition(job.id, &[JobState::Starting], JobState::Running, changes)
                    .await?;
                if adopted {
                    logs::spawn_capture(ctx, host, job.id, container_id);
                }
                return Ok(adopted);
            }
            Ok(info) if info.status.is_finished() => {
                // It ran (and maybe ran a job) while nobody watched.
                logs::spawn_capture(ctx, host, job.id, container_id);
                handle_exit(ctx, host, container_id, info.exit_code).await;
                return Ok(true);
            }
            _ => {}
        }
    }
    requeue_expired(ctx, job, now).await
}

/// Requeues (or, out of attempts, fails) a job whose claim's lease expired,
/// and frees what it held.
async fn requeue_expired(ctx: &Arc<Context>, job: &Job, now: OffsetDateTime) -> Result<bool> {
    let reason = "the claim's lease expired before the worker was running";
    let released = match crate::lifecycle::retry_or_give_up(ctx, job, reason) {
        crate::lifecycle::Retry::GiveUp(error) => {
            crate::lifecycle::finish(ctx, job, JobState::Failed, None, Some(&error)).await?
        }
        crate::lifecycle::Retry::Requeue(reason) => {
            ctx.store
                .job_requeue_if_lease_expired(
                    job.id,
                    &[JobState::Provisioning, JobState::Starting],
                    now,
                    &reason,
                )
                .await?
        }
    };
    if released {
        release(ctx, job).await;
        ctx.wake_dispatcher();
    }
    Ok(released)
}

/// One item a reconciler could not handle. A transient error (the store,
/// Docker or GitHub unavailable) would fail the next items too: it ends
/// the reconciler's pass. Any other is about this item alone: it is
/// logged and counted (`berth_reconciler_errors_total`), and the
/// reconciler goes on with the rest.
fn item_failed(ctx: &Context, kind: &'static str, job: &Job, e: crate::error::Error) -> Result<()> {
    let e = skip_unless_transient(ctx, kind, e)?;
    crate::job_span!(job).in_scope(|| {
        tracing::warn!(reconciler = kind, error = %e, error_kind = e.kind(),
            "reconciler skipped a job it cannot handle")
    });
    Ok(())
}

/// [`item_failed`]'s rule for any item: a transient error is returned (it
/// ends the pass); any other is counted and handed back for the caller to
/// log with the item's own fields.
fn skip_unless_transient(
    ctx: &Context,
    kind: &'static str,
    e: crate::error::Error,
) -> Result<crate::error::Error> {
    if e.is_transient() {
        return Err(e);
    }
    ctx.metrics.reconciler_error(kind, e.kind());
    Ok(e)
}

/// The controller of the host a job was placed on.
fn docker_of<'a>(ctx: &'a Context, job: &Job) -> Result<&'a Controller> {
    ctx.fleet
        .docker_of(job)
        .map_err(|e| crate::error::Error::Config(e.to_string()))
}

/// Whether the runner `job` holds may be stopped: it has none, or its
/// registration is deleted now, so it can take no job. Berth's view of a
/// runner trails GitHub's: one that seems idle, or whose job GitHub ran
/// elsewhere, may be running another job GitHub has not reported yet.
/// GitHub refuses to delete a runner running a job: that one is left
/// alone, and its exit settles the job (crate::lifecycle::exit).
async fn runner_let_go(ctx: &Context, job: &Job) -> bool {
    job.runner_name.is_none()
        || resources::deregister_job_runner_unless_busy(ctx, job).await
            == resources::Deregistration::Deleted
}

/// Frees a job's container and runner registration (the job no longer has them).
async fn release(ctx: &Context, job: &Job) {
    if let Some(container_id) = &job.container_id
        && let Ok(docker) = docker_of(ctx, job)
    {
        resources::remove_container(docker, container_id).await;
    }
    if let Some(name) = job.runner_name.as_deref() {
        resources::deregister_job_runner(ctx, job, job.runner_id, name).await;
    }
}

/// Stops a worker and handles its exit right away (the exit handler is
/// idempotent, so the Docker event that follows changes nothing).
async fn stop_and_settle(ctx: &Arc<Context>, job: &Job, container_id: &str) {
    let host = ctx.fleet.host_of(job);
    if let Ok(docker) = ctx.fleet.docker(host) {
        resources::stop_container(docker, container_id, STOP_GRACE).await;
    }
    handle_exit(ctx, host, container_id, None).await;
}

async fn cancellations(ctx: &Arc<Context>) -> Result<u32> {
    let now = ctx.store.now();
    let mut acted = 0;
    for job in ctx.store.jobs_cancel_requested().await? {
        match cancellation(ctx, &job, now).await {
            Ok(true) => acted += 1,
            Ok(false) => {}
            Err(e) => item_failed(ctx, "cancelled", &job, e)?,
        }
    }
    Ok(acted)
}

async fn cancellation(ctx: &Arc<Context>, job: &Job, now: OffsetDateTime) -> Result<bool> {
    let lease_live = job.lease_expires_at.is_some_and(|t| t > now);
    match (job.state, &job.container_id) {
        (JobState::Running, Some(container_id)) => {
            stop_and_settle(ctx, job, container_id).await;
            Ok(true)
        }
        // A claim in flight finishes provisioning first; the next pass stops it.
        (JobState::Provisioning | JobState::Starting, _) if lease_live => Ok(false),
        _ => {
            // Stopped by berth itself (crate::security): failed, with why.
            let (state, error) = match &job.stop_reason {
                Some(reason) => (JobState::Failed, reason.as_str()),
                None => (JobState::Cancelled, "cancelled on request"),
            };
            let cancelled = crate::lifecycle::finish(ctx, job, state, None, Some(error)).await?;
            if cancelled {
                release(ctx, job).await;
            }
            Ok(cancelled)
        }
    }
}

/// Jobs GitHub completed while their own runner never took them (cancelled
/// before it started, or run by another runner): the runner is not needed.
async fn completed_elsewhere(ctx: &Arc<Context>) -> Result<u32> {
    let now = ctx.store.now();
    let mut acted = 0;
    for job in ctx.store.jobs_in_states(JobState::ACTIVE).await? {
        // A scale-set job is its runner: GitHub's word on a job never ends it.
        let done_elsewhere = job.scale_set.is_none()
            && job.github_status == Some(GithubStatus::Completed)
            && (job.runner_name.is_none() || job.github_runner_name != job.runner_name);
        let lease_live = job.lease_expires_at.is_some_and(|t| t > now);
        if !done_elsewhere || lease_live {
            continue;
        }
        if !runner_let_go(ctx, &job).await {
            continue;
        }
        let outcome = after_github_completion(
            job.github_conclusion.as_deref(),
            job.github_runner_name.as_deref(),
        );
        if let Some(container_id) = &job.container_id
            && let Ok(docker) = docker_of(ctx, &job)
        {
            resources::stop_container(docker, container_id, Duration::from_secs(1)).await;
        }
        release(ctx, &job).await;
        apply(ctx, &job, outcome, None).await;
        acted += 1;
    }
    Ok(acted)
}

async fn timeouts(ctx: &Arc<Context>) -> Result<u32> {
    let now = ctx.store.now();
    let mut acted = 0;
    for job in ctx.store.jobs_running_past_timeout(now).await? {
        crate::job_span!(job).in_scope(|| tracing::warn!("job timed out; stopping its worker"));
        match &job.container_id {
            Some(container_id) => stop_and_settle(ctx, &job, container_id).await,
            None => {
                let secs = job.timeout_secs.unwrap_or_default();
                apply(
                    ctx,
                    &job,
                    Outcome::Finish {
                        state: JobState::Failed,
                        error: Some(format!("timed out after {secs} s")),
                    },
                    None,
                )
                .await;
            }
        }
        acted += 1;
    }
    Ok(acted)
}

/// Runners that never got their job within the pool's idle time.
async fn idle_runners(ctx: &Arc<Context>) -> Result<u32> {
    let now = ctx.store.now();
    let mut acted = 0;
    for job in ctx.store.jobs_in_states(&[JobState::Running]).await? {
        let Ok(pool) = ctx.pool_of(&job) else {
            continue;
        };
        // A scale set's idle runners are its listener's to keep or retire.
        if job.scale_set.is_some() {
            continue;
        }
        let taken = job.runner_name.is_some() && job.github_runner_name == job.runner_name;
        let idle_since = job.started_at.unwrap_or(job.updated_at);
        let idle_for = (now - idle_since).as_seconds_f64();
        if taken || idle_for < pool.idle_timeout.as_secs_f64() {
            continue;
        }
        let Some(container_id) = &job.container_id else {
            continue;
        };
        if !runner_let_go(ctx, &job).await {
            continue;
        }
        crate::job_span!(job).in_scope(|| {
            tracing::info!(
                idle_secs = idle_for as u64,
                "runner got no job within the idle timeout; removing it"
            )
        });
        stop_and_settle(ctx, &job, container_id).await;
        acted += 1;
    }
    Ok(acted)
}

/// Jobs waiting a long time: still wanted on GitHub?
async fn queued_too_long(ctx: &Arc<Context>) -> Result<u32> {
    let Some(github) = ctx.github.as_ref() else {
        return Ok(0);
    };
    let limit = duration(
        ctx.config.reconcile.queued_check_after,
        "reconcile.queued_check_after",
    )?;
    let before = ctx.store.now() - limit;
    let mut acted = 0;
    for job in ctx.store.jobs_queued_before(before).await? {
        // A scale-set job's key is a runner request, not a GitHub job.
        if job.source == JobSource::ScaleSet || job.scale_set.is_some() {
            continue;
        }
        match still_wanted(ctx, github, &job).await {
            Ok(true) => acted += 1,
            Ok(false) => {}
            Err(e) => item_failed(ctx, "queued_expired", &job, e)?,
        }
    }
    Ok(acted)
}

/// Asks GitHub about one long-queued job and ends it when GitHub no longer
/// wants a runner for it.
async fn still_wanted(
    ctx: &Arc<Context>,
    github: &crate::github::GithubClient,
    job: &Job,
) -> Result<bool> {
    let outcome = match github
        .get_job(&job.repository, job.github_job_id as u64)
        .await?
    {
        None => Outcome::Finish {
            state: JobState::Expired,
            error: Some("GitHub no longer knows this job".into()),
        },
        Some(remote) if remote.status == "completed" => {
            after_github_completion(remote.conclusion.as_deref(), remote.runner_name.as_deref())
        }
        Some(remote) if remote.status == "in_progress" => Outcome::Finish {
            state: JobState::Expired,
            error: Some(format!(
                "GitHub gave the job to runner `{}` before berth started one",
                remote.runner_name.unwrap_or_default()
            )),
        },
        Some(_) => return Ok(false),
    };
    apply(ctx, job, outcome, None).await;
    Ok(true)
}

/// Containers labelled `berth.managed` that no live job owns, on the hosts
/// this replica owns (crate::fleet) and that answer.
async fn orphan_containers(ctx: &Arc<Context>) -> Result<u32> {
    let mut acted = 0;
    for host in ctx.fleet.owned() {
        if ctx
            .store
            .host_get(host.name())
            .await?
            .is_some_and(|h| h.health == crate::store::HostHealth::Down)
        {
            continue;
        }
        acted += orphan_containers_on(ctx, &host.docker).await?;
    }
    Ok(acted)
}

async fn orphan_containers_on(ctx: &Arc<Context>, docker: &Controller) -> Result<u32> {
    let grace = duration(ctx.config.reconcile.orphan_grace, "reconcile.orphan_grace")?;
    let now = ctx.store.now();
    // Docker's list first, then the store (the same reasoning as for runners).
    let containers = docker.list_managed().await?;
    // Warm containers before the jobs: taking one moves it from the warm
    // table to its job in one transaction, so read in this order it is
    // always in one of the two sets. Those the warm table records are the
    // warm pools' to keep, replace or remove (crate::dispatch::warm); a
    // `berth.warm` container in neither (a crash between its create and its
    // record) is an orphan like any other.
    let warm: BTreeSet<String> = ctx
        .store
        .warm_list()
        .await?
        .into_iter()
        .map(|w| w.container_id)
        .collect();
    let owned = ctx.store.active_container_ids().await?;
    let live_runners = ctx.store.active_runner_names().await?;
    let mut acted = 0;
    for c in containers {
        if !ctx.owns(&c.labels)
            || owned.contains(&c.id)
            || warm.contains(&c.id)
            || now - c.created < grace
        {
            continue;
        }
        tracing::info!(container_id = %c.id, name = %c.name, "removing an orphan worker container");
        resources::remove_container(docker, &c.id).await;
        if let Some(runner) = c.labels.get(LABEL_RUNNER)
            && !live_runners.contains(runner)
        {
            if let Some(set) = c.labels.get(crate::scaleset::LABEL_SCALE_SET) {
                resources::deregister_scale_set_runner(ctx, set, None, runner).await;
            } else if let Some(pool) = c.labels.get(LABEL_POOL).and_then(|p| ctx.pool(p)) {
                resources::deregister_runner(ctx, pool, None, runner).await;
            }
        }
        acted += 1;
    }
    Ok(acted)
}

/// What container jobs made (their containers, networks, volumes; see
/// crate::container_jobs) for a runner no active job holds, on the hosts
/// this replica owns and that answer. Found by label: the hook names and
/// labels everything after the job's runner, recorded in the store before
/// anything is made, so Docker's list read before the store's never shows
/// an object of a runner about to be recorded.
async fn orphan_job_objects(ctx: &Arc<Context>) -> Result<u32> {
    let mut acted = 0;
    for host in ctx.fleet.owned() {
        if ctx
            .store
            .host_get(host.name())
            .await?
            .is_some_and(|h| h.health == crate::store::HostHealth::Down)
        {
            continue;
        }
        let docker = &host.docker;
        let role = [crate::docker::controller::LABEL_ROLE.to_owned()];
        let mut runners = BTreeSet::new();
        // Only this installation's (`berth.instance`): several may share a host.
        for c in docker.containers_labelled(&role).await? {
            if ctx.owns(&c.labels) {
                runners.extend(c.labels.get(LABEL_RUNNER).cloned());
            }
        }
        for n in docker.networks_labelled(&role).await? {
            if ctx.owns(&n.labels) {
                runners.extend(n.labels.get(LABEL_RUNNER).cloned());
            }
        }
        // Externals volumes of worker images no pool uses any more (one in
        // use by a worker is refused by Docker and kept).
        let current: BTreeSet<String> = ctx
            .config
            .pools
            .iter()
            .filter(|p| p.container_jobs)
            .map(|p| {
                crate::container_jobs::volumes::externals_volume(
                    &ctx.config.docker.instance,
                    &p.image,
                )
            })
            .collect();
        for v in docker.volumes_labelled(&role).await? {
            if !ctx.owns(&v.labels) {
                continue;
            }
            runners.extend(v.labels.get(LABEL_RUNNER).cloned());
            let externals = v
                .labels
                .get(crate::docker::controller::LABEL_ROLE)
                .map(String::as_str)
                == Some("externals");
            if externals
                && !current.contains(&v.name)
                && docker.volume_remove(&v.name).await.is_ok()
            {
                acted += 1;
            }
        }
        if runners.is_empty() {
            continue;
        }
        let live = ctx.store.active_runner_names().await?;
        for runner in runners.iter().filter(|r| !live.contains(*r)) {
            // The worker first: a volume in use cannot be removed.
            for c in docker
                .containers_labelled(&[format!("{LABEL_RUNNER}={runner}")])
                .await?
            {
                if !c.labels.contains_key(crate::docker::controller::LABEL_ROLE)
                    && ctx.owns(&c.labels)
                {
                    resources::remove_container(docker, &c.id).await;
                }
            }
            let removed =
                crate::container_jobs::runtime::remove_objects(ctx, docker, runner, true).await;
            if removed > 0 {
                tracing::info!(runner_name = %runner, removed, "removed what a finished container job left");
                acted += removed;
            }
        }
    }
    Ok(acted)
}

/// Offline `berth-` runner registrations that no live job owns.
async fn orphan_runners(ctx: &Arc<Context>) -> Result<u32> {
    let Some(github) = ctx.github.as_ref() else {
        return Ok(0);
    };
    let mut seen_scopes = BTreeSet::new();
    let mut acted = 0;
    for pool in &ctx.config.pools {
        if !seen_scopes.insert(pool.scope.to_string()) {
            continue;
        }
        // GitHub's list first, then the store: a runner is named in the store
        // before it is minted, so every runner in this list that is still
        // wanted is in the live set read afterwards. (The other order would
        // delete a runner minted between the two reads.)
        let runners = github.list_runners(&pool.scope).await?;
        let live = ctx.store.active_runner_names().await?;
        for runner in runners {
            if !runner.name.starts_with(NAME_PREFIX)
                || live.contains(&runner.name)
                || runner.status != "offline"
            {
                continue;
            }
            tracing::info!(runner_name = %runner.name, "deleting an orphan runner registration");
            match github.delete_runner(&pool.scope, runner.id).await {
                Ok(()) => acted += 1,
                Err(e) => {
                    let e = skip_unless_transient(ctx, "orphan_runner", e.into())?;
                    tracing::warn!(runner_name = %runner.name, error = %e,
                        "cannot delete an orphan runner registration; going on with the others");
                }
            }
        }
    }
    Ok(acted)
}
