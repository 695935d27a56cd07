//! Watching workers exit, from each host's Docker event stream.
//!
//! One long-lived events connection per host (held by the replica that owns
//! the host: crate::fleet) tells berth the moment any worker dies,
//! with its exit code. When the stream breaks (Docker restarted, a proxy
//! timed out) it is re-subscribed from the last event seen, and every running
//! job's container is checked once, so an exit that happened while nobody
//! listened is still handled. The same check runs at start-up: that is how a
//! restarted berth picks up the jobs that ran while it was down.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::logs;
use crate::context::Context;
use crate::docker::controller::ContainerEventKind;
use crate::lifecycle::exit::handle_exit;
use crate::store::JobState;

/// How often the owner looks for running workers of its host whose output
/// nobody captures yet (a hand-off by another replica, or from a warm
/// container started long before): Docker keeps the whole output, so a
/// late capture loses nothing.
const CAPTURE_SCAN_EVERY: Duration = Duration::from_secs(2);

/// Follows host `host`'s event stream until `stop` (while this replica owns
/// the host: crate::fleet::owner). Each subscription is followed by a
/// catch-up over the host's running jobs.
pub async fn watch_host(ctx: Arc<Context>, host: String, stop: CancellationToken) {
    let Ok(docker) = ctx.fleet.docker(&host).cloned() else {
        return;
    };
    let mut since = None;
    loop {
        let mut events = docker.events(since);
        if let Err(e) = catch_up(&ctx, &host).await {
            tracing::warn!(host, error = %e, "catching up with a host's workers failed");
        }
        let mut scan = tokio::time::interval(CAPTURE_SCAN_EVERY);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = scan.tick() => {
                    capture_running(&ctx, &host).await;
                    continue;
                }
                _ = stop.cancelled() => return,
            };
            match next {
                Some(Ok(event)) => {
                    since = Some(event.time);
                    if let ContainerEventKind::Die { exit_code } = event.kind
                        && ctx.owns(&event.labels)
                    {
                        let (ctx, host) = (ctx.clone(), host.clone());
                        tokio::spawn(async move {
                            handle_exit(&ctx, &host, &event.container_id, exit_code).await
                        });
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(host, error = %e, "the Docker event stream failed; re-subscribing");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Checks every running job's container on `host` once: exited ones are
/// handled, running ones get their output captured (after a restart or a
/// takeover). Fails only when the running jobs cannot be listed.
pub async fn catch_up(ctx: &Arc<Context>, host: &str) -> Result<(), String> {
    let docker = ctx.fleet.docker(host).map_err(|e| e.to_string())?;
    let jobs = running_on(ctx, host).await?;
    for job in jobs {
        let Some(container_id) = job.container_id.clone() else {
            continue;
        };
        match docker.inspect(&container_id).await {
            Ok(info) if info.running => logs::spawn_capture(ctx, host, job.id, &container_id),
            Ok(info) if info.status.is_finished() => {
                logs::spawn_capture(ctx, host, job.id, &container_id);
                handle_exit(ctx, host, &container_id, info.exit_code).await;
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => handle_exit(ctx, host, &container_id, None).await,
            Err(e) => tracing::warn!(container_id, error = %e, "inspecting a worker failed"),
        }
    }
    Ok(())
}

/// Starts capturing every running job's output on `host` that no capture
/// follows yet.
async fn capture_running(ctx: &Arc<Context>, host: &str) {
    let Ok(jobs) = running_on(ctx, host).await else {
        return;
    };
    for job in jobs {
        if let Some(container_id) = job.container_id.as_deref() {
            logs::spawn_capture(ctx, host, job.id, container_id);
        }
    }
}

/// The running jobs placed on `host`.
async fn running_on(ctx: &Context, host: &str) -> Result<Vec<crate::store::Job>, String> {
    let jobs = ctx
        .store
        .jobs_in_states(&[JobState::Running])
        .await
        .map_err(|e| format!("listing running jobs: {e}"))?;
    Ok(jobs
        .into_iter()
        .filter(|j| ctx.fleet.host_of(j) == host)
        .collect())
}
