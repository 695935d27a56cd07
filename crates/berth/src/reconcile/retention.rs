//! The `retention` component: deletes what `[retention]` no longer keeps.
//!
//! Every `retention.interval` it deletes, in this order, the output of jobs
//! finished more than `job_logs` ago, the jobs finished more than
//! `finished_jobs` ago (their output goes with them), and the delivery ids
//! older than `deliveries`; then the dashboard sessions (short-lived API
//! tokens, see `api::auth`) that expired more than [`SESSION_GRACE`] ago,
//! which nothing configures: an expired session is useless, and the day of
//! grace only keeps it in `GET /v1/tokens?sessions=true` for a while after
//! it ended. Each kind is deleted in batches of
//! `retention.batch` rows, at most [`MAX_BATCHES`] per pass: a store that
//! grew large is worked down over a few passes, without one long statement
//! holding the writer. Every step is a conditional DELETE, so replicas may
//! prune side by side. What was deleted is counted in
//! `berth_retention_pruned_total{what}`.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::store::StoreError;
use crate::supervise::ComponentHandle;

/// Batches of one kind per pass at most.
pub const MAX_BATCHES: u32 = 20;

/// Dashboard sessions are deleted this long after they expired.
pub const SESSION_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub job_logs: u64,
    pub jobs: u64,
    pub deliveries: u64,
    pub dashboard_sessions: u64,
}

/// The `retention` component: a pass now, then every `retention.interval`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken, status: ComponentHandle) {
    loop {
        status.pass_started();
        tokio::select! {
            r = prune(&ctx) => {
                match &r {
                    Ok(p) if *p != Pruned::default() => {
                        tracing::info!(job_logs = p.job_logs, jobs = p.jobs,
                            deliveries = p.deliveries, dashboard_sessions = p.dashboard_sessions,
                            "retention pruned the store");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention pass failed"),
                }
                status.pass_finished(r.map(drop).map_err(|e| e.to_string()));
            }
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.retention.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One pass: logs, jobs, deliveries, dashboard sessions, each in bounded
/// batches.
pub async fn prune(ctx: &Context) -> Result<Pruned, StoreError> {
    let retention = &ctx.config.retention;
    let now = ctx.store.now();
    let batch = retention.batch;
    let mut pruned = Pruned::default();
    if let Some(before) = cutoff(now, retention.job_logs) {
        pruned.job_logs = batches(ctx, "job_logs", batch, || {
            ctx.store.job_logs_prune(before, batch)
        })
        .await?;
    }
    if let Some(before) = cutoff(now, retention.finished_jobs) {
        pruned.jobs = batches(ctx, "jobs", batch, || {
            ctx.store.jobs_prune_finished(before, batch)
        })
        .await?;
    }
    if let Some(before) = cutoff(now, retention.deliveries) {
        pruned.deliveries = batches(ctx, "deliveries", batch, || {
            ctx.store.deliveries_prune(before, batch)
        })
        .await?;
    }
    let sessions_before = now - SESSION_GRACE;
    pruned.dashboard_sessions = batches(ctx, "dashboard_sessions", batch, || {
        ctx.store.api_tokens_prune_sessions(sessions_before, batch)
    })
    .await?;
    // Hook credentials of runners no active job holds: already refused,
    // deleted so that the table holds only live ones.
    let credentials = ctx.store.hook_credentials_prune(sessions_before).await?;
    if credentials > 0 {
        tracing::debug!(credentials, "deleted the hook credentials of finished jobs");
    }
    Ok(pruned)
}

/// `now - keep`, or `None` for a zero `keep` (kept forever).
fn cutoff(now: OffsetDateTime, keep: Duration) -> Option<OffsetDateTime> {
    (!keep.is_zero()).then(|| now - keep)
}

/// Runs `delete` until a batch comes back short or [`MAX_BATCHES`] ran;
/// counts what it deleted as `what`.
async fn batches<F, Fut>(
    ctx: &Context,
    what: &'static str,
    batch: u32,
    mut delete: F,
) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    for _ in 0..MAX_BATCHES {
        let deleted = delete().await?;
        total += deleted;
        ctx.metrics.retention_pruned(what, deleted);
        if deleted < u64::from(batch) {
            break;
        }
    }
    Ok(total)
}
