//! What a worker's exit means for its job.
//!
//! A JIT runner runs one job and exits. But which job it ran is GitHub's
//! choice: any job whose labels match. So the exit of the container berth
//! started for job J finishes J only when J ran on it; otherwise J still needs
//! a runner and goes back to the queue. What the runner ran comes from
//! GitHub's `in_progress`/`completed` events (recorded on the job as
//! `github_runner_name`), and when those were lost, from asking GitHub.
//!
//! A scale-set job is different: it *is* a runner (crate::scaleset), so its
//! worker's exit ends it by exit code, with no question to GitHub.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::resources;
use crate::context::Context;
use crate::dispatch::logs;
use crate::docker::controller::Controller;
use crate::observability::Metrics;
use crate::store::{GithubStatus, Job, JobState};

/// What to do with a job whose worker exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finish {
        state: JobState,
        error: Option<String>,
    },
    Requeue(String),
}

/// The containers whose exit is being handled in this process, so that the
/// event stream and a reconcile pass noticing the same exit handle it once.
/// Private to exit handling; the context only carries the handle.
#[derive(Default)]
pub struct ExitsInProgress(std::sync::Mutex<std::collections::HashSet<String>>);

impl ExitsInProgress {
    /// `false` if the exit of `container_id` is being handled already.
    fn begin(&self, container_id: &str) -> bool {
        self.0
            .lock()
            .expect("exit registry")
            .insert(container_id.to_string())
    }

    fn end(&self, container_id: &str) {
        self.0.lock().expect("exit registry").remove(container_id);
    }
}

/// Handles the exit of a worker container: keeps its output, removes it and
/// its runner registration, and finishes or requeues its job. Idempotent:
/// Docker events can arrive twice, and reconcilers call this too.
pub async fn handle_exit(
    ctx: &Arc<Context>,
    host: &str,
    container_id: &str,
    exit_code: Option<i64>,
) {
    let Ok(docker) = ctx.fleet.docker(host) else {
        return;
    };
    if !ctx.exits_in_progress.begin(container_id) {
        return;
    }
    handle_exit_once(ctx, docker, container_id, exit_code).await;
    ctx.exits_in_progress.end(container_id);
}

async fn handle_exit_once(
    ctx: &Arc<Context>,
    docker: &Controller,
    container_id: &str,
    exit_code: Option<i64>,
) {
    // The slot first: the dispatcher may start the next job while this
    // one's output is kept, GitHub asked and the container removed.
    match ctx
        .store
        .job_worker_exited(container_id, ctx.store.now())
        .await
    {
        Ok(true) => ctx.wake_dispatcher(),
        Ok(false) => {}
        Err(e) => tracing::warn!(container_id, error = %e, "recording a worker's exit failed"),
    }
    let job = match ctx.store.job_get_by_container_id(container_id).await {
        Ok(job) => job,
        Err(e) => {
            tracing::error!(container_id, error = %e, "looking up the job of an exited worker failed");
            return;
        }
    };
    let Some(job) = job.filter(|j| j.state.is_active()) else {
        // No live job owns it: an orphan, a job already finished, or a warm
        // container that died waiting. Removing it is all there is to do (the
        // runner reconciler handles registrations); a warm one is first
        // struck from the warm table so no job takes it, and its pool refilled.
        if matches!(ctx.store.warm_delete(container_id).await, Ok(true)) {
            tracing::info!(
                container_id,
                exit_code,
                "a warm container exited; replacing it"
            );
            ctx.warm.wake();
        }
        resources::remove_container(docker, container_id).await;
        return;
    };
    let span = crate::job_span!(job);
    span.record("container_id", container_id);
    if let Some(runner) = &job.runner_name {
        span.record("runner_name", runner.as_str());
    }
    settle(ctx, docker, &job, container_id, exit_code)
        .instrument(span)
        .await;
}

async fn settle(
    ctx: &Arc<Context>,
    docker: &Controller,
    job: &Job,
    container_id: &str,
    exit_code: Option<i64>,
) {
    logs::wait_captured(ctx, container_id, Duration::from_secs(5)).await;
    let exit_code = match exit_code {
        Some(code) => Some(code),
        None => docker
            .inspect(container_id)
            .await
            .ok()
            .and_then(|i| i.exit_code),
    };
    // Deciding takes a while (GitHub may be asked, a late `completed` waited
    // for). Meanwhile GitHub's choice of runner may move this container to
    // another job (crate::lifecycle::binding): the outcome is then not this
    // job's, and is decided again for the job holding the container now.
    let mut job = job.clone();
    for _ in 0..3 {
        let outcome = decide(ctx, &job, exit_code).await;
        // The job's end is recorded before anything is cleaned up: should
        // berth stop right here, the reconcilers remove what it left.
        if apply(ctx, &job, outcome, exit_code).await != Applied::RunnerMoved {
            break;
        }
        match ctx.store.job_get_by_container_id(container_id).await {
            Ok(Some(now_holding)) if now_holding.state.is_active() => {
                tracing::info!(
                    job_id = %now_holding.id,
                    "the worker's runner was given to another job while its exit was decided; deciding for that job"
                );
                job = now_holding;
            }
            _ => break,
        }
    }
    resources::remove_container(docker, container_id).await;
    if let Some(name) = job.runner_name.as_deref() {
        if ctx.pool_of(&job).is_ok_and(|p| p.container_jobs) {
            // What the hook made and the worker's volumes: the worker is gone.
            crate::container_jobs::runtime::remove_objects(ctx, docker, name, true).await;
        }
        resources::deregister_job_runner(ctx, &job, job.runner_id, name).await;
    }
}

/// A job whose host went down before its runner started there (still
/// provisioning): its registration is removed and it goes back to the
/// queue, to be placed on another host. Its provisioning, should it still
/// be going, finds the job moved on at its next step and stops.
pub async fn host_lost_before_start(ctx: &Context, job: &Job, reason: &str) {
    if let Some(name) = job.runner_name.as_deref() {
        resources::deregister_job_runner(ctx, job, job.runner_id, name).await;
    }
    apply(ctx, job, Outcome::Requeue(reason.to_string()), None).await;
}

/// A job whose host went down after its runner started there: settled as
/// an exit without exit code, from GitHub's view (completed there: it
/// finishes as GitHub says; never taken: back to the queue; taken by this
/// runner and not completed: failed, since the runner is gone with its
/// host). Nothing is asked of the host, which does not answer; what is
/// left on it is the orphan reconciler's when it comes back.
pub async fn host_lost(ctx: &Context, job: &Job, reason: &str) {
    if let Some(container_id) = job.container_id.as_deref()
        && let Ok(true) = ctx
            .store
            .job_worker_exited(container_id, ctx.store.now())
            .await
    {
        ctx.wake_dispatcher();
    }
    let outcome = match decide(ctx, job, None).await {
        Outcome::Requeue(_) => Outcome::Requeue(reason.to_string()),
        Outcome::Finish {
            state: JobState::Failed,
            error,
        } if job.deadline().is_none_or(|d| ctx.store.now() < d) => Outcome::Finish {
            state: JobState::Failed,
            error: Some(format!(
                "{reason} while the job ran{}",
                error.map(|e| format!(" ({e})")).unwrap_or_default()
            )),
        },
        other => other,
    };
    apply(ctx, job, outcome, None).await;
    if let Some(name) = job.runner_name.as_deref() {
        resources::deregister_job_runner(ctx, job, job.runner_id, name).await;
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The job was finished or requeued.
    Done,
    /// Nothing changed: the job had ended already, or the store failed
    /// (logged; the reconcilers retry).
    Unchanged,
    /// Nothing changed: the job no longer holds the runner the outcome was
    /// decided for (GitHub gave it to another job meanwhile).
    RunnerMoved,
}

/// Applies an outcome decided on the snapshot `job` with a conditional
/// update, and counts it. The update holds only while the job still has
/// the runner the snapshot shows (see [`Store::job_finish_holding`]).
///
/// [`Store::job_finish_holding`]: crate::store::Store::job_finish_holding
pub async fn apply(ctx: &Context, job: &Job, outcome: Outcome, exit_code: Option<i64>) -> Applied {
    let now = ctx.store.now();
    let changed = match outcome {
        Outcome::Finish { state, error } => {
            match super::finish_holding(ctx, job, state, exit_code, error.as_deref()).await {
                Ok(true) => {
                    if let Some(started) = job.started_at {
                        ctx.metrics
                            .job_execution_duration
                            .get_or_create(&Metrics::pool(&job.pool))
                            .observe((now - started).as_seconds_f64().max(0.0));
                    }
                    tracing::info!(state = %state, exit_code, error = error.as_deref().unwrap_or(""), "job finished");
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::error!(error = %e, "finishing a job failed; the reconciler will retry");
                    ctx.wake_dispatcher();
                    return Applied::Unchanged;
                }
            }
        }
        Outcome::Requeue(reason) => {
            let reason = match super::retry_or_give_up(ctx, job, reason) {
                super::Retry::Requeue(reason) => reason,
                super::Retry::GiveUp(error) => {
                    let give_up = Outcome::Finish {
                        state: JobState::Failed,
                        error: Some(error),
                    };
                    return Box::pin(apply(ctx, job, give_up, exit_code)).await;
                }
            };
            match ctx
                .store
                .job_requeue_holding(
                    job.id,
                    job.runner_name.as_deref(),
                    JobState::ACTIVE,
                    &reason,
                )
                .await
            {
                Ok(true) => {
                    tracing::info!(reason = %reason, "job goes back to the queue");
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::error!(error = %e, "requeueing a job failed");
                    ctx.wake_dispatcher();
                    return Applied::Unchanged;
                }
            }
        }
    };
    ctx.wake_dispatcher();
    if changed {
        return Applied::Done;
    }
    match ctx.store.job_get(job.id).await {
        Ok(Some(now)) if now.state.is_active() && now.runner_name != job.runner_name => {
            Applied::RunnerMoved
        }
        _ => Applied::Unchanged,
    }
}

/// Decides what a worker exit means for the job it was started for.
pub async fn decide(ctx: &Context, job: &Job, exit_code: Option<i64>) -> Outcome {
    if let Some(reason) = &job.stop_reason {
        // berth stopped it (crate::security): whatever the runner managed.
        return Outcome::Finish {
            state: JobState::Failed,
            error: Some(reason.clone()),
        };
    }
    if job.cancel_requested {
        return Outcome::Finish {
            state: JobState::Cancelled,
            error: Some("cancelled on request".into()),
        };
    }
    if let Some(deadline) = job.deadline()
        && ctx.store.now() >= deadline
    {
        let secs = job.timeout_secs.unwrap_or_default();
        return Outcome::Finish {
            state: JobState::Failed,
            error: Some(format!("timed out after {secs} s")),
        };
    }
    if job.scale_set.is_some() {
        // A scale-set job is one runner: it ends when the runner does, and
        // whichever job GitHub gave the runner was the runner's to run.
        return by_exit_code(exit_code);
    }
    let ran_here = job.runner_name.is_some() && job.github_runner_name == job.runner_name;
    if ran_here {
        // GitHub's word on how the job ended beats the runner's exit code.
        let conclusion = match completion_of(ctx, job).await {
            Some(conclusion) => Some(conclusion),
            // The worker is gone without an exit code and no `completed`
            // delivery came: removed while berth was down, or a store
            // restored from a backup that missed the delivery. GitHub knows.
            None if exit_code.is_none() => completion_on_github(ctx, job).await,
            None => None,
        };
        return match conclusion {
            Some(conclusion) if conclusion == "cancelled" => Outcome::Finish {
                state: JobState::Cancelled,
                error: Some("cancelled on GitHub".into()),
            },
            Some(_) => Outcome::Finish {
                state: JobState::Completed,
                error: None,
            },
            None => by_exit_code(exit_code),
        };
    }
    if job.github_status == Some(GithubStatus::Completed) {
        return after_github_completion(
            job.github_conclusion.as_deref(),
            job.github_runner_name.as_deref(),
        );
    }
    // GitHub's events did not say where the job ran: ask.
    let Some(github) = ctx.github.as_ref() else {
        return by_exit_code(exit_code);
    };
    match github
        .get_job(&job.repository, job.github_job_id as u64)
        .await
    {
        Ok(Some(remote)) => {
            let remote_runner = remote.runner_name.as_deref().filter(|n| !n.is_empty());
            let ours = remote_runner.is_some() && remote_runner == job.runner_name.as_deref();
            match remote.status.as_str() {
                _ if ours => by_exit_code(exit_code),
                "completed" => after_github_completion(remote.conclusion.as_deref(), remote_runner),
                "in_progress" => Outcome::Finish {
                    state: JobState::Expired,
                    error: Some(format!(
                        "GitHub gave the job to runner `{}`, which berth does not manage",
                        remote_runner.unwrap_or("?")
                    )),
                },
                _ => Outcome::Requeue(format!(
                    "runner `{}` exited (code {}) without taking the job",
                    job.runner_name.as_deref().unwrap_or("?"),
                    exit_code.map_or("unknown".into(), |c| c.to_string())
                )),
            }
        }
        Ok(None) => Outcome::Finish {
            state: JobState::Expired,
            error: Some("GitHub no longer knows this job".into()),
        },
        Err(e) => Outcome::Requeue(format!(
            "the worker exited and GitHub could not be asked about the job: {e}"
        )),
    }
}

/// The job's conclusion. A runner reports it to GitHub just before it exits,
/// so the `completed` delivery may trail the container's exit by a moment:
/// wait a little for it rather than ask GitHub's API for every job.
async fn completion_of(ctx: &Context, job: &Job) -> Option<String> {
    if job.github_status == Some(GithubStatus::Completed) {
        return job.github_conclusion.clone();
    }
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(Some(fresh)) = ctx.store.job_get(job.id).await
            && fresh.github_status == Some(GithubStatus::Completed)
        {
            return fresh.github_conclusion;
        }
    }
    None
}

/// How GitHub's API says the job ended, recorded on the job as its
/// `completed` delivery would have; `None` while it is not completed there
/// or GitHub cannot be asked.
async fn completion_on_github(ctx: &Context, job: &Job) -> Option<String> {
    let github = ctx.github.as_ref()?;
    let remote = github
        .get_job(&job.repository, job.github_job_id as u64)
        .await
        .ok()??;
    if remote.status != "completed" {
        return None;
    }
    let runner_id = remote.runner_id.and_then(|id| i64::try_from(id).ok());
    if let Err(e) = ctx
        .store
        .job_record_github_status(
            job.github_job_id,
            GithubStatus::Completed,
            remote.conclusion.as_deref(),
            remote.runner_name.as_deref(),
            runner_id,
        )
        .await
    {
        tracing::warn!(error = %e, "recording GitHub's completion of a job failed");
    }
    Some(remote.conclusion.unwrap_or_default())
}

fn by_exit_code(exit_code: Option<i64>) -> Outcome {
    match exit_code {
        Some(0) => Outcome::Finish {
            state: JobState::Completed,
            error: None,
        },
        Some(code) => Outcome::Finish {
            state: JobState::Failed,
            error: Some(format!("the runner exited with code {code}")),
        },
        None => Outcome::Finish {
            state: JobState::Failed,
            error: Some("the worker container disappeared".into()),
        },
    }
}

/// The job completed on GitHub, but not on the runner berth started for it.
pub fn after_github_completion(conclusion: Option<&str>, runner: Option<&str>) -> Outcome {
    match conclusion {
        Some("cancelled") => Outcome::Finish {
            state: JobState::Cancelled,
            error: Some("cancelled on GitHub".into()),
        },
        _ => Outcome::Finish {
            state: JobState::Completed,
            error: runner.map(|r| format!("ran on runner `{r}`")),
        },
    }
}
