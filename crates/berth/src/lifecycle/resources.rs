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

/// Deletes a runner registration (by id, else by name). A runner that already
/// ran its job was removed by GitHub; that is not an error.
pub async fn deregister_runner(
    ctx: &Context,
    pool: &PoolConfig,
    runner_id: Option<i64>,
    runner_name: &str,
) -> bool {
    let Some(github) = ctx.github.as_ref() else {
        return false;
    };
    let id = match runner_id {
        Some(id) if id > 0 => Some(id as u64),
        _ => match github.find_runner(&pool.scope, runner_name).await {
            Ok(found) => found.map(|r| r.id),
            Err(e) => {
                tracing::warn!(runner_name, error = %e, "looking up a runner registration failed; the runner reconciler will retry");
                return false;
            }
        },
    };
    let Some(id) = id else { return true };
    match github.delete_runner(&pool.scope, id).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(runner_name, error = %e, "deleting a runner registration failed; the runner reconciler will retry");
            false
        }
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
