//! Dispatch: claims queued jobs (leases), mints a JIT runner config, and drives
//! each job's container through create → start → watch → remove.
//!
//! * [`run`] is the claim loop: it takes the oldest queued job of each pool in
//!   turn, as long as the pool's and the global limits allow, and hands each
//!   to a provisioning task ([`provision`]). It wakes when intake queues a job
//!   or a slot frees, and once a second regardless.
//! * [`watch`] follows Docker's event stream and, for every worker that
//!   exits, hands the exit to the job lifecycle
//!   ([`crate::lifecycle::exit`]).
//! * [`logs`] keeps each job's container output in the store.
//! * [`warm`] keeps each pool's warm containers (created ahead of demand)
//!   ready; provisioning takes one instead of creating a container.
//!
//! Every step is a conditional update of the job's row. When one fails, some
//! other actor (a reconciler, another replica, a webhook) changed the job
//! first; the step cleans up what it made and leaves the job to them.

pub mod logs;
pub mod provision;
pub mod spec;
pub mod warm;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::context::Context;
use crate::store::Job;
use crate::supervise::ComponentHandle;

pub use provision::provision;

/// How often the claim loop looks for work when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The claim loop. Returns after `shutdown`, once in-flight provisioning has
/// finished. Hand-offs get half of `drain` to finish; those that have not
/// are then abandoned: each releases what it made and requeues its job, so
/// a graceful stop leaves no container or runner registration behind
/// (whatever is still left after `drain` is the reconcilers' at the next
/// start, as after a crash).
///
/// Each round over the pools is one pass of the `dispatcher` component
/// (crate::supervise): a round in which a claim failed is a failed pass.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    drain: Duration,
    status: ComponentHandle,
) {
    let tasks = TaskTracker::new();
    let abandon = CancellationToken::new();
    'outer: loop {
        let mut claimed = false;
        let started = std::time::Instant::now();
        let mut failure = None;
        crate::failpoint::hit("dispatch_round");
        for pool in &ctx.config.pools {
            if shutdown.is_cancelled() {
                break 'outer;
            }
            match claim(&ctx, pool).await {
                Ok(Some(job)) => {
                    claimed = true;
                    let (ctx, abandon) = (ctx.clone(), abandon.clone());
                    let span = crate::job_span!(job);
                    tasks.spawn(async move { provision(ctx, job, abandon).await }.instrument(span));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(pool = %pool.name, error = %e, "claiming a job failed");
                    failure = Some(format!("claiming a job of pool `{}`: {e}", pool.name));
                }
            }
        }
        status.pass(started, failure.map_or(Ok(()), Err));
        if claimed {
            continue;
        }
        tokio::select! {
            _ = ctx.dispatch_wake.notified() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tasks.close();
    if tokio::time::timeout(drain / 2, tasks.wait()).await.is_ok() {
        return;
    }
    abandon.cancel();
    if tokio::time::timeout(drain / 2, tasks.wait()).await.is_err() {
        tracing::warn!(
            "provisioning still in progress at shutdown; leases will expire and the jobs be recovered"
        );
    }
}

/// Claims the pool's oldest job and places it on one of the hosts that
/// offer the pool's `host_labels` (crate::fleet).
async fn claim(
    ctx: &Context,
    pool: &crate::config::PoolConfig,
) -> Result<Option<Job>, crate::store::StoreError> {
    let now = ctx.store.now();
    let lease =
        time::Duration::try_from(ctx.config.dispatch.lease).unwrap_or(time::Duration::MINUTE);
    let hosts = ctx.fleet.placement_for(pool);
    ctx.store
        .job_claim(
            &pool.name,
            pool.max_runners,
            ctx.config.dispatch.global_max_runners,
            crate::store::Placement {
                hosts: &hosts,
                pack: ctx.config.fleet.placement == crate::config::Placement::Pack,
                slots_per_job: pool.host_slots,
            },
            &ctx.replica_id,
            now + lease,
            now,
        )
        .await
}
