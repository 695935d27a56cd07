//! Releasing the leases of replicas that died (crate::store::replicas has
//! the why).
//!
//! * SQLite: [`release_predecessors`] once at start-up, before any
//!   component runs.
//! * PostgreSQL: [`heartbeat`], the `heartbeat` component: every
//!   [`HEARTBEAT_EVERY`] it records this replica's heartbeat and releases the
//!   leases of replicas silent for [`DEAD_AFTER`], then wakes the
//!   reconcilers to requeue or adopt those jobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::store::BackendKind;
use crate::supervise::ComponentHandle;

/// How often a replica records its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A replica silent this long is dead: its leases are released.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);
/// A dead replica's row is forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Whether this store has several replicas, and so a heartbeat.
pub fn needs_heartbeat(ctx: &Context) -> bool {
    ctx.store.kind() == BackendKind::Postgres
}

/// SQLite, at start-up: every lease held by another owner belongs to a
/// process that died (one process per database by design). Makes them
/// expire now, so the first reconcile pass finishes those hand-offs at once
/// instead of after `dispatch.lease`.
pub async fn release_predecessors(ctx: &Context) -> anyhow::Result<()> {
    if needs_heartbeat(ctx) {
        return Ok(());
    }
    let released = ctx
        .store
        .leases_release_others(&ctx.replica_id, ctx.store.now())
        .await?;
    if released > 0 {
        tracing::info!(
            released,
            "released the leases of the previous berth process; their jobs are recovered now"
        );
    }
    Ok(())
}

/// The `heartbeat` component (PostgreSQL). Returns an error, which stops the
/// process, when no heartbeat could be recorded for [`DEAD_AFTER`]: by then
/// other replicas take this one's leases, and going on could run a job twice.
pub async fn heartbeat(
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    status: ComponentHandle,
) -> anyhow::Result<()> {
    let mut last_beat = Instant::now();
    loop {
        status.pass_started();
        let now = ctx.store.now();
        let result = beat(&ctx, now).await;
        match &result {
            Ok(released) => {
                last_beat = Instant::now();
                if *released > 0 {
                    tracing::info!(
                        released = *released,
                        "released the leases of replicas that stopped heartbeating"
                    );
                    ctx.wake_reconciler();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording the heartbeat failed");
                if last_beat.elapsed() >= DEAD_AFTER {
                    anyhow::bail!(
                        "no heartbeat recorded for {} s (last error: {e}); other replicas take over this replica's leases",
                        last_beat.elapsed().as_secs()
                    );
                }
            }
        }
        status.pass_finished(result.map(|_| ()).map_err(|e| format!("{e:#}")));
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            _ = shutdown.cancelled() => {
                if let Err(e) = ctx.store.replica_stopped(&ctx.replica_id).await {
                    tracing::warn!(error = %e, "recording this replica's stop failed");
                }
                return Ok(());
            }
        }
    }
}

async fn beat(ctx: &Context, now: time::OffsetDateTime) -> anyhow::Result<u64> {
    if crate::failpoint::fails("heartbeat") {
        anyhow::bail!("the failpoint `heartbeat` is armed");
    }
    ctx.store.replica_heartbeat(&ctx.replica_id, now).await?;
    let dead_after = time::Duration::try_from(DEAD_AFTER).unwrap_or(time::Duration::SECOND * 10);
    let forget = time::Duration::try_from(FORGET_AFTER).unwrap_or(time::Duration::DAY);
    Ok(ctx
        .store
        .leases_release_dead_replicas(now - dead_after, now - forget, now)
        .await?)
}
