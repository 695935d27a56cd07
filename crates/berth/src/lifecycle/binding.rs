//! Following GitHub's choice of runner.
//!
//! berth starts one JIT runner per job, but GitHub hands a waiting runner any
//! queued job whose labels match. When GitHub reports (`in_progress`, or
//! `completed` if that was lost) that runner R, started for job X, took job
//! Y, the store moves R to Y ([`Store::job_take_runner`]): Y is now the job
//! running in R's container, and X gets Y's own runner if Y had a running
//! one, or goes back to the queue. Both jobs end up with exactly one runner;
//! none is started twice.
//!
//! [`Store::job_take_runner`]: crate::store::Store::job_take_runner

use std::sync::Arc;

use super::exit::{after_github_completion, apply};
use crate::context::Context;
use crate::docker::controller::NAME_PREFIX;
use crate::store::{Job, JobState};

/// GitHub says `runner_name` took the job with GitHub id `github_job_id`.
pub async fn runner_took_job(ctx: &Arc<Context>, github_job_id: i64, runner_name: &str) {
    if !runner_name.starts_with(NAME_PREFIX) {
        return;
    }
    // Scale-set runners are fungible and their jobs keyed by runner request
    // ids, not GitHub job ids: `JobStarted` binds them (crate::scaleset).
    let scale_set_runner = matches!(
        ctx.store.job_get_by_runner_name(runner_name).await,
        Ok(Some(job)) if job.scale_set.is_some()
    );
    let scale_set_key = matches!(
        ctx.store.job_get_by_github_id(github_job_id).await,
        Ok(Some(job)) if job.scale_set.is_some()
    );
    if scale_set_runner || scale_set_key {
        return;
    }
    match ctx.store.job_take_runner(github_job_id, runner_name).await {
        Ok(Some(rebound)) => {
            tracing::info!(
                runner_name,
                github_job_id,
                started_for = %rebound.started_for,
                started_for_state = %rebound.started_for_state,
                "GitHub gave a berth runner another job than the one it was started for; following GitHub"
            );
            ctx.wake_dispatcher();
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(runner_name, github_job_id, error = %e, "rebinding a runner failed")
        }
    }
}

/// GitHub says the job completed. A job still waiting for its runner needs
/// none now; a job whose own runner never took it has that runner torn
/// down by the reconciler.
pub async fn job_completed(ctx: &Arc<Context>, job: &Job) {
    match job.state {
        JobState::Queued => {
            let outcome = after_github_completion(
                job.github_conclusion.as_deref(),
                job.github_runner_name.as_deref(),
            );
            apply(ctx, job, outcome, None).await;
        }
        state if state.is_active() && job.github_runner_name != job.runner_name => {
            ctx.wake_reconciler();
        }
        _ => {}
    }
}
