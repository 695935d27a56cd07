//! Watching workers exit, from Docker's event stream.
//!
//! One long-lived events connection tells berth the moment any worker dies,
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
use crate::supervise::ComponentHandle;

/// Follows the event stream until `shutdown`. Each subscription is a pass
/// of the `watcher` component (crate::supervise): it succeeds once the
/// catch-up is done, and a broken stream is a failed pass.
pub async fn watch(ctx: Arc<Context>, shutdown: CancellationToken, status: ComponentHandle) {
    let mut since = None;
    loop {
        status.pass_started();
        let mut events = ctx.docker.events(since);
        match catch_up(&ctx).await {
            Ok(()) => status.pass_finished(Ok(())),
            Err(e) => status.pass_finished(Err(e)),
        }
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = shutdown.cancelled() => return,
            };
            match next {
                Some(Ok(event)) => {
                    since = Some(event.time);
                    if let ContainerEventKind::Die { exit_code } = event.kind
                        && ctx.owns(&event.labels)
                    {
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            handle_exit(&ctx, &event.container_id, exit_code).await
                        });
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the Docker event stream failed; re-subscribing");
                    status.pass_started();
                    status.pass_finished(Err(format!("the Docker event stream failed: {e}")));
                    break;
                }
                None => {
                    status.pass_started();
                    status.pass_finished(Err("the Docker event stream ended".into()));
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Checks every running job's container once: exited ones are handled,
/// running ones get their output captured (after a restart). Fails only
/// when the running jobs cannot be listed.
pub async fn catch_up(ctx: &Arc<Context>) -> Result<(), String> {
    let jobs = match ctx.store.jobs_in_states(&[JobState::Running]).await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::error!(error = %e, "listing running jobs failed");
            return Err(format!("listing running jobs: {e}"));
        }
    };
    for job in jobs {
        let Some(container_id) = job.container_id.clone() else {
            continue;
        };
        match ctx.docker.inspect(&container_id).await {
            Ok(info) if info.running => logs::spawn_capture(ctx, job.id, &container_id),
            Ok(info) if info.status.is_finished() => {
                logs::spawn_capture(ctx, job.id, &container_id);
                handle_exit(ctx, &container_id, info.exit_code).await;
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => handle_exit(ctx, &container_id, None).await,
            Err(e) => tracing::warn!(container_id, error = %e, "inspecting a worker failed"),
        }
    }
    Ok(())
}
