//! Releasing what a job held: its container and its runner registration.
//! Shared by the dispatcher, the exit handler and the reconcilers, and
//! idempotent, since any of them may get there first.

use std::time::Duration;

use crate::config::PoolConfig;
use crate::context::Context;
use crate::docker::controller::Controller;
use crate::store::Job;

/// Removes a container and its anonymous volumes; a missing container is fine.
pub async fn remove_container(docker: &Controller, container_id: &str) -> bool {
    for attempt in 1..=3u32 {
        match docker.remove(container_id).await {
            Ok(()) => return true,
            Err(e) if e.is_not_found() => return true,
            Err(e) if e.is_transient() && attempt < 3 => {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(e) => {
                tracing::warn!(container_id, error = %e, "removing a worker container failed; the orphan reconciler will retry");
                return false;
            }
        }
    }
    false
}

/// Stops a container: SIGTERM, then SIGKILL after `grace`.
pub async fn stop_container(docker: &Controller, container_id: &str, grace: Duration) {
    if let Err(e) = docker.stop(container_id, grace).await
        && !e.is_not_found()
    {
        tracing::warn!(container_id, error = %e, "stopping a worker container failed");
    }
}

/// What deleting a runner registration came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deregistration {
    /// Deleted, or already gone (a runner that ran its job GitHub removes).
    Deleted,
    /// GitHub refused: the runner is running a job.
    Busy,
    /// GitHub could not be asked (logged; the runner reconciler retries).
    Failed,
}

/// Deletes a runner registration (by id, else by name). A runner that already
/// ran its job was removed by GitHub; that is not an error.
pub async fn deregister_runner(
    ctx: &Context,
    pool: &PoolConfig,
    runner_id: Option<i64>,
    runner_name: &str,
) -> bool {
    try_deregister_runner(ctx, pool, runner_id, runner_name).await == Deregistration::Deleted
}

async fn try_deregister_runner(
    ctx: &Context,
    pool: &PoolConfig,
    runner_id: Option<i64>,
    runner_name: &str,
) -> Deregistration {
    let Some(github) = ctx.github.as_ref() else {
        return Deregistration::Failed;
    };
    let id = match runner_id {
        Some(id) if id > 0 => Some(id as u64),
        _ => match github.find_runner(&pool.scope, runner_name).await {
            Ok(found) => found.map(|r| r.id),
            Err(e) => {
                tracing::warn!(runner_name, error = %e, "looking up a runner registration failed; the runner reconciler will retry");
                return Deregistration::Failed;
            }
        },
    };
    let Some(id) = id else {
        return Deregistration::Deleted;
    };
    match github.delete_runner(&pool.scope, id).await {
        Ok(()) => Deregistration::Deleted,
        // "Bad request - Runner … is still running a job".
        Err(crate::github::GithubError::Http { status: 422, .. }) => {
            tracing::info!(
                runner_name,
                "the runner is running a job; its registration stays"
            );
            Deregistration::Busy
        }
        Err(e) => {
            tracing::warn!(runner_name, error = %e, "deleting a runner registration failed; the runner reconciler will retry");
            Deregistration::Failed
        }
    }
}

/// Deletes the registration of the runner `job` holds, unless the runner is
/// running a job: GitHub refuses that, which is how berth learns that a
/// worker it cannot otherwise see into took a job (see
/// crate::reconcile's expired leases).
pub async fn deregister_job_runner_unless_busy(ctx: &Context, job: &Job) -> Deregistration {
    let Some(runner_name) = job.runner_name.as_deref() else {
        return Deregistration::Deleted;
    };
    match (&job.scale_set, ctx.pool_of(job)) {
        (Some(set), _) => {
            match ctx
                .scale_sets
                .remove_runner(set, job.runner_id, runner_name)
                .await
            {
                Ok(()) => Deregistration::Deleted,
                Err(crate::scaleset::ScaleSetError::RunnerBusy(_)) => Deregistration::Busy,
                Err(e) => {
                    tracing::warn!(scale_set = %set, runner_name, error = %e, "deleting a scale-set runner registration failed");
                    Deregistration::Failed
                }
            }
        }
        (None, Ok(pool)) => try_deregister_runner(ctx, pool, job.runner_id, runner_name).await,
        (None, Err(_)) => Deregistration::Failed,
    }
}

/// Deletes the runner registration `runner_name` that `job` held: through
/// the Actions service for a scale-set runner, the REST API otherwise.
pub async fn deregister_job_runner(
    ctx: &Context,
    job: &Job,
    runner_id: Option<i64>,
    runner_name: &str,
) -> bool {
    match (&job.scale_set, ctx.pool_of(job)) {
        (Some(set), _) => deregister_scale_set_runner(ctx, set, runner_id, runner_name).await,
        (None, Ok(pool)) => deregister_runner(ctx, pool, runner_id, runner_name).await,
        (None, Err(_)) => false,
    }
}

/// Deletes a scale-set runner registration through the Actions service. One
/// GitHub already removed (it ran its job) is not an error.
pub async fn deregister_scale_set_runner(
    ctx: &Context,
    scale_set: &str,
    runner_id: Option<i64>,
    runner_name: &str,
) -> bool {
    match ctx
        .scale_sets
        .remove_runner(scale_set, runner_id, runner_name)
        .await
    {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(scale_set, runner_name, error = %e, "deleting a scale-set runner registration failed");
            false
        }
    }
}
