//! The job lifecycle: how a job ends, which runner is bound to it, and what
//! is released when it no longer needs its container and registration.
//!
//! Intake (GitHub's word on a job), the dispatcher (a hand-off that failed),
//! the watcher (a worker that exited), the reconcilers (leases, timeouts,
//! cancels) and the scale-set side (a runner retired) all end jobs. They do
//! it through this module, so that the rules hold the same everywhere:
//!
//! * [`exit`]: what a worker's exit means for its job (finish or requeue),
//!   and [`exit::apply`] of that outcome;
//! * [`binding`]: GitHub says which runner took which job (a JIT runner
//!   takes *any* job whose labels match, so the runner berth started for
//!   job A may run job B); the bookkeeping follows GitHub;
//! * [`resources`]: removing a job's container and deleting its runner
//!   registration, both idempotent;
//! * [`retry_or_give_up`]: the one rule for "give up after
//!   `dispatch.max_attempts`";
//! * [`finish`]: the one place a job is finished and counted
//!   (`berth_jobs_finished_total`).

pub mod binding;
pub mod exit;
pub mod resources;

use crate::context::Context;
use crate::store::{Job, JobState, StoreError};

/// What to do with a job whose attempt failed for a reason that may pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Put it back in the queue, with this reason recorded.
    Requeue(String),
    /// It had its attempts: fail it with this error.
    GiveUp(String),
}

/// Requeue, or give up after `dispatch.max_attempts` attempts (the
/// attempt that just failed counted).
pub fn retry_or_give_up(ctx: &Context, job: &Job, reason: impl Into<String>) -> Retry {
    let reason = reason.into();
    if job.attempts >= i64::from(ctx.config.dispatch.max_attempts) {
        Retry::GiveUp(format!("gave up after {} attempts: {reason}", job.attempts))
    } else {
        Retry::Requeue(reason)
    }
}

/// Finishes `job` in the terminal `state` (a conditional update: `false`
/// when it was finished already, or is gone), counts it, and wakes the
/// dispatcher (a slot may be free).
pub async fn finish(
    ctx: &Context,
    job: &Job,
    state: JobState,
    exit_code: Option<i64>,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let finished = ctx
        .store
        .job_finish(job.id, state, exit_code, error)
        .await?;
    Ok(counted(ctx, job, state, finished))
}

/// [`finish`], only while the job still holds the runner `job` shows
/// ([`Store::job_finish_holding`]): for outcomes decided on that snapshot.
///
/// [`Store::job_finish_holding`]: crate::store::Store::job_finish_holding
pub async fn finish_holding(
    ctx: &Context,
    job: &Job,
    state: JobState,
    exit_code: Option<i64>,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let finished = ctx
        .store
        .job_finish_holding(job.id, job.runner_name.as_deref(), state, exit_code, error)
        .await?;
    Ok(counted(ctx, job, state, finished))
}

fn counted(ctx: &Context, job: &Job, state: JobState, finished: bool) -> bool {
    if finished {
        ctx.metrics.job_finished(&job.pool, state);
    }
    ctx.wake_dispatcher();
    finished
}
