//! The orchestrator's side of a scale set: which runners it holds, what
//! the job messages say about them, and retiring the ones without a job.
//!
//! A scale set's runners are berth jobs whose `scale_set` names it. These
//! functions serve both the in-process listener and the HTTP routes a
//! remote `berth proxy` calls ([`super::api`]).
//!
//! # Retiring safely
//!
//! A runner beyond the desired count is removed only while it has no job,
//! and "no job" must still be true at the moment of removal. So:
//!
//! * queued (no runner minted yet): the job is cancelled with a conditional
//!   update from `queued`; a dispatcher that claimed it first wins;
//! * provisioning or starting: not now (the caller asks again later);
//! * running: the registration is removed through the Actions service
//!   first. The service refuses (`JobStillRunningException`) when the runner
//!   holds a job, atomically with the runner taking one; only once it is
//!   gone — so the runner can take nothing anymore — is the job finished
//!   and the container removed.

use std::sync::Arc;

use super::ScaleSetError;
use super::delegator::{EventKind, JobEvent, RetireOutcome, RunnerSlot};
use super::scaler::Phase;
use crate::context::Context;
use crate::lifecycle::resources;
use crate::store::{GithubStatus, Job, JobChanges, JobState};

/// The error recorded on a runner retired while idle.
pub const RETIRED: &str = "idle runner removed: the scale set scaled down";

/// The phase of a scale-set runner's job.
pub fn phase_of(job: &Job) -> Phase {
    if job.state.is_terminal() {
        return Phase::Done;
    }
    if job.cancel_requested {
        return Phase::Retiring;
    }
    match job.github_status {
        Some(GithubStatus::Completed) => Phase::Done,
        Some(GithubStatus::InProgress) => Phase::Busy,
        _ if job.state == JobState::Running => Phase::Idle,
        _ => Phase::Pending,
    }
}

fn ensure_known(ctx: &Context, scale_set: &str) -> Result<(), ScaleSetError> {
    match ctx.config.scale_sets.iter().any(|s| s.name == scale_set) {
        true => Ok(()),
        false => Err(ScaleSetError::UnknownScaleSet(scale_set.to_string())),
    }
}

/// The scale set's runners that are not finished, oldest first.
pub async fn runners(ctx: &Context, scale_set: &str) -> Result<Vec<RunnerSlot>, ScaleSetError> {
    ensure_known(ctx, scale_set)?;
    let jobs = ctx.store.jobs_in_states(JobState::NON_TERMINAL).await?;
    Ok(jobs
        .into_iter()
        .filter(|j| j.scale_set.as_deref() == Some(scale_set))
        .map(|j| RunnerSlot {
            key: j.github_job_id,
            id: j.id,
            state: j.state,
            phase: phase_of(&j),
            runner_name: j.runner_name,
        })
        .collect())
}

/// Records a `JobStarted` / `JobCompleted` on the berth job of the runner
/// it names. A runner berth does not know (another system's, or one already
/// forgotten) is ignored.
pub async fn report(ctx: &Context, scale_set: &str, event: &JobEvent) -> Result<(), ScaleSetError> {
    ensure_known(ctx, scale_set)?;
    let Some(job) = ctx
        .store
        .job_get_by_runner_name(&event.runner_name)
        .await?
        .filter(|j| j.scale_set.as_deref() == Some(scale_set))
    else {
        tracing::debug!(scale_set, runner_name = %event.runner_name, "a job event for a runner berth does not hold");
        return Ok(());
    };
    let (status, conclusion) = match event.kind {
        EventKind::Started => (GithubStatus::InProgress, None),
        EventKind::Completed => (GithubStatus::Completed, event.conclusion.as_deref()),
    };
    ctx.store
        .job_record_github_status(
            job.github_job_id,
            status,
            conclusion,
            Some(&event.runner_name),
            event.runner_id,
        )
        .await?;
    if event.kind == EventKind::Started || job.github_runner_name.is_none() {
        ctx.store
            .job_record_scale_set_run(
                job.id,
                event.repository.as_deref().filter(|r| !r.is_empty()),
                event.run_id.filter(|r| *r > 0),
                event.workflow.as_deref().filter(|w| !w.is_empty()),
                event.job_name.as_deref().filter(|n| !n.is_empty()),
            )
            .await?;
    }
    let span = crate::job_span!(job);
    span.record("runner_name", event.runner_name.as_str());
    span.in_scope(|| {
        tracing::info!(
            scale_set,
            event = ?event.kind,
            github_job = %event.job_id,
            ran_repository = event.repository.as_deref().unwrap_or(""),
            conclusion = conclusion.unwrap_or(""),
            "scale-set runner {}",
            match event.kind {
                EventKind::Started => "took a job",
                EventKind::Completed => "finished its job",
            }
        )
    });
    Ok(())
}

/// Retires the runner with delegation key `key`, if it has no job (see the
/// module docs).
pub async fn retire(
    ctx: &Arc<Context>,
    scale_set: &str,
    key: i64,
) -> Result<RetireOutcome, ScaleSetError> {
    ensure_known(ctx, scale_set)?;
    let Some(job) = ctx
        .store
        .job_get_by_github_id(key)
        .await?
        .filter(|j| j.scale_set.as_deref() == Some(scale_set))
    else {
        return Ok(RetireOutcome::Gone);
    };
    if job.state.is_terminal() {
        return Ok(RetireOutcome::Gone);
    }
    let span = crate::job_span!(job);
    let _enter = span.enter();
    match phase_of(&job) {
        Phase::Retiring => return Ok(RetireOutcome::Retired),
        Phase::Busy | Phase::Done => return Ok(RetireOutcome::Busy),
        Phase::Pending | Phase::Idle => {}
    }
    let outcome = match job.state {
        JobState::Queued => {
            if finish(ctx, &job, JobState::Queued).await? {
                RetireOutcome::Retired
            } else {
                // Claimed (or finished) meanwhile: ask again later.
                RetireOutcome::Busy
            }
        }
        JobState::Running => {
            let removed = ctx
                .scale_sets
                .remove_runner(
                    scale_set,
                    job.runner_id,
                    job.runner_name.as_deref().unwrap_or(""),
                )
                .await;
            match removed {
                Ok(()) => {
                    if finish(ctx, &job, JobState::Running).await? {
                        if let Some(container_id) = &job.container_id
                            && let Ok(docker) = ctx.fleet.docker_of(&job)
                        {
                            resources::remove_container(docker, container_id).await;
                        }
                        RetireOutcome::Retired
                    } else {
                        RetireOutcome::Busy
                    }
                }
                Err(ScaleSetError::RunnerBusy(_)) => RetireOutcome::Busy,
                Err(e) => return Err(e),
            }
        }
        _ => RetireOutcome::Busy,
    };
    tracing::info!(
        scale_set,
        key,
        outcome = outcome.as_str(),
        "retire an idle runner"
    );
    Ok(outcome)
}

/// Ends a retired runner's job (`cancelled`), conditionally on `from`.
async fn finish(ctx: &Context, job: &Job, from: JobState) -> Result<bool, ScaleSetError> {
    let done = ctx
        .store
        .job_transition(
            job.id,
            &[from],
            JobState::Cancelled,
            JobChanges::new().error(RETIRED),
        )
        .await?;
    if done {
        ctx.metrics.job_finished(&job.pool, JobState::Cancelled);
        ctx.wake_dispatcher();
    }
    Ok(done)
}
