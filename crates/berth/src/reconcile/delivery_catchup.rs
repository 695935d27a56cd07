//! The `delivery_catchup` component: has GitHub redeliver the `workflow_job`
//! deliveries berth missed.
//!
//! # Why
//!
//! GitHub delivers each webhook once and never retries a failed delivery.
//! A job whose `queued` delivery did not reach berth is never run: it waits
//! on GitHub until it times out. Deliveries are missed when berth is down
//! (a restart, a crash, an upgrade), when GitHub cannot reach it (a network
//! partition, a load balancer or TLS problem), when berth answers 5xx (its
//! store unavailable), and, with no failure on GitHub's side at all, when
//! the store is restored from an older backup: what was applied after the
//! backup is gone. GitHub keeps a log of the App's deliveries for 3 days and
//! redelivers any of them on request; this component reads that log and
//! asks for what berth does not have.
//!
//! # What a pass does
//!
//! At start, and then every `reconcile.delivery_catchup_interval`:
//!
//! 1. reads the log (`GET /app/hook/deliveries`, App JWT) newest first, back
//!    to `reconcile.delivery_catchup_window` at the first pass, and after
//!    that back to the start of the previous successful pass less
//!    [`SINCE_MARGIN`] (a delivery in flight while the log was read is
//!    logged with the time it started);
//! 2. keeps the `workflow_job` events whose delivery id (`guid`, berth's
//!    `X-GitHub-Delivery`) is not in berth's delivery log
//!    (`webhook_deliveries`, kept `retention.deliveries`, at least GitHub's 3
//!    days). An event is one `guid` however many attempts it had. Whatever
//!    GitHub answered the first time does not matter: a delivery applied to a
//!    store that a backup then replaced was answered 200;
//! 3. leaves out an event whose last attempt was a redelivery that berth
//!    itself answered below 500: berth received it and refused it (a webhook
//!    secret that differs, say) and would refuse it again;
//! 4. asks GitHub to redeliver the others, oldest first, at most
//!    [`MAX_REDELIVERIES_PER_PASS`] a pass
//!    (`POST /app/hook/deliveries/{id}/attempts`); what is left over waits
//!    for the next pass, which then reads from the same moment again.
//!
//! A redelivery comes back through the webhook intake like any delivery,
//! and intake is idempotent (on the delivery id, and on GitHub's job id): a
//! job berth already has from another path (the delegate API, a scale set)
//! changes nothing. Each accepted request counts in
//! `berth_webhook_redeliveries_requested_total`.
//!
//! # Failures
//!
//! GitHub calls go through the client's retries and rate-limit waits
//! (crate::github). A pass that still fails (GitHub unreachable, rate
//! limited for longer than the client waits) is a failed pass of the
//! component: recorded in its status, retried at the next interval from the
//! same moment, never fatal. A redelivery GitHub refuses for that one
//! delivery (gone from its log, say) is logged and skipped.
//!
//! It runs only where it can matter: with a webhook secret (berth takes no
//! webhooks without one) and at least one `[[pool]]` (scale sets get their
//! jobs from their own message queue). With several replicas each runs it;
//! a delivery two of them ask for comes back twice, and the second is a
//! duplicate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::github::{GithubError, HookDelivery};
use crate::store::StoreError;
use crate::supervise::ComponentHandle;

/// Redeliveries asked for in one pass at most: GitHub rate-limits them, and
/// a long outage's backlog is worked down over a few passes.
pub const MAX_REDELIVERIES_PER_PASS: usize = 100;
/// Pages of the delivery log (100 entries each) read in one pass at most.
pub const MAX_LOG_PAGES: u32 = 100;
/// Later passes read the log back to the previous pass's start less this.
pub const SINCE_MARGIN: Duration = Duration::from_secs(120);

/// The event this component catches up on.
const WORKFLOW_JOB: &str = "workflow_job";

/// What one pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// Entries of GitHub's delivery log read.
    pub listed: usize,
    /// `workflow_job` events berth does not have.
    pub missing: usize,
    /// Redeliveries GitHub accepted.
    pub requested: usize,
    /// Missing events not asked for again: berth answered their last
    /// redelivery below 500.
    pub refused_by_berth: usize,
    /// Redeliveries GitHub refused (the delivery gone from its log, say).
    pub refused_by_github: usize,
    /// Missing events over [`MAX_REDELIVERIES_PER_PASS`], left for the next pass.
    pub deferred: usize,
    /// Whether the log was read back to the moment asked for (see
    /// [`MAX_LOG_PAGES`]).
    pub complete: bool,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("reading the App's webhook delivery log: {0}")]
    List(#[source] GithubError),
    #[error("asking GitHub to redeliver (after {requested} redeliveries this pass): {source}")]
    Redeliver {
        requested: usize,
        #[source]
        source: GithubError,
    },
    #[error("reading berth's delivery log: {0}")]
    Store(#[from] StoreError),
}

/// Whether the component runs: a catch-up interval, a webhook secret, a
/// pool, and a GitHub App to ask.
pub fn enabled(ctx: &Context) -> bool {
    !ctx.config.reconcile.delivery_catchup_interval.is_zero()
        && ctx.webhook_secret.is_some()
        && !ctx.config.pools.is_empty()
        && ctx.github.is_some()
}

/// The `delivery_catchup` component: a pass now, then every
/// `reconcile.delivery_catchup_interval`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken, status: ComponentHandle) {
    let window = ctx.config.reconcile.delivery_catchup_window;
    let mut since = ctx.store.now() - window;
    loop {
        let started = ctx.store.now();
        status.pass_started();
        let outcome = tokio::select! {
            r = pass(&ctx, since) => r,
            _ = shutdown.cancelled() => return,
        };
        match &outcome {
            Ok(done) => {
                if done.complete && done.deferred == 0 {
                    since = started - SINCE_MARGIN;
                }
                report(done);
            }
            Err(e) => tracing::warn!(error = %e,
                "the delivery catch-up failed; it tries again at its next pass"),
        }
        status.pass_finished(outcome.map(drop).map_err(|e| e.to_string()));
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.reconcile.delivery_catchup_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn report(done: &CatchUp) {
    if done.requested > 0 || done.refused_by_github > 0 || done.deferred > 0 {
        tracing::info!(
            listed = done.listed,
            missing = done.missing,
            requested = done.requested,
            refused_by_github = done.refused_by_github,
            deferred = done.deferred,
            "asked GitHub to redeliver missed webhook deliveries"
        );
    }
    if done.refused_by_berth > 0 {
        tracing::warn!(
            count = done.refused_by_berth,
            "missed webhook deliveries whose redelivery berth refused (is the webhook secret \
             the App's?); not asked for again"
        );
    }
    if !done.complete {
        tracing::warn!(
            listed = done.listed,
            "the App's delivery log has more entries in the catch-up window than one pass \
             reads; only the newest were caught up"
        );
    }
}

/// One pass: the log back to `since`, the events berth lacks, their
/// redeliveries.
pub async fn pass(ctx: &Context, since: OffsetDateTime) -> Result<CatchUp, CatchUpError> {
    let Some(github) = ctx.github.as_ref() else {
        return Ok(CatchUp::default());
    };
    let log = github
        .list_hook_deliveries(since, MAX_LOG_PAGES)
        .await
        .map_err(CatchUpError::List)?;
    let mut done = CatchUp {
        listed: log.deliveries.len(),
        complete: log.complete,
        ..CatchUp::default()
    };
    let mut wanted = Vec::new();
    for event in events(&log.deliveries) {
        if event.latest.event != WORKFLOW_JOB || ctx.store.delivery_known(event.guid).await? {
            continue;
        }
        done.missing += 1;
        let latest = event.latest;
        if latest.redelivery && (1..500).contains(&latest.status_code) {
            done.refused_by_berth += 1;
            continue;
        }
        wanted.push(latest);
    }
    done.deferred = wanted.len().saturating_sub(MAX_REDELIVERIES_PER_PASS);
    for delivery in wanted.into_iter().take(MAX_REDELIVERIES_PER_PASS) {
        match github.redeliver_hook_delivery(delivery.id).await {
            Ok(()) => {
                done.requested += 1;
                ctx.metrics.webhook_redeliveries_requested.inc();
                tracing::debug!(delivery_id = %delivery.guid, action = ?delivery.action,
                    "asked GitHub to redeliver a missed webhook delivery");
            }
            Err(e) if e.is_transient() => {
                return Err(CatchUpError::Redeliver {
                    requested: done.requested,
                    source: e,
                });
            }
            Err(e) => {
                done.refused_by_github += 1;
                tracing::warn!(delivery_id = %delivery.guid, error = %e,
                    "GitHub refused to redeliver a missed webhook delivery; skipping it");
            }
        }
    }
    Ok(done)
}

/// One event of the log: its `guid`, and its latest attempt.
struct Event<'a> {
    guid: &'a str,
    latest: &'a HookDelivery,
}

/// The log's events, oldest first (by their first attempt), each with its
/// latest attempt.
fn events(log: &[HookDelivery]) -> Vec<Event<'_>> {
    // The log is newest first: walking it backwards meets each event's
    // first attempt first, and its latest last.
    let mut order: Vec<&str> = Vec::new();
    let mut latest: HashMap<&str, &HookDelivery> = HashMap::new();
    for delivery in log.iter().rev() {
        let guid = delivery.guid.as_str();
        match latest.get(guid) {
            None => order.push(guid),
            Some(seen) if seen.id > delivery.id => continue,
            Some(_) => {}
        }
        latest.insert(guid, delivery);
    }
    order
        .into_iter()
        .map(|guid| Event {
            guid,
            latest: latest[guid],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: u64, guid: &str, redelivery: bool, status_code: u16) -> HookDelivery {
        HookDelivery {
            id,
            guid: guid.into(),
            delivered_at: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(id as i64),
            redelivery,
            status: String::new(),
            status_code,
            event: WORKFLOW_JOB.into(),
            action: Some("queued".into()),
        }
    }

    #[test]
    fn events_are_oldest_first_with_their_latest_attempt() {
        // Newest first, as GitHub lists them.
        let log = [
            attempt(5, "b", true, 200),
            attempt(4, "c", false, 0),
            attempt(3, "a", true, 503),
            attempt(2, "b", false, 0),
            attempt(1, "a", false, 0),
        ];
        let events: Vec<(&str, u64)> = events(&log).iter().map(|e| (e.guid, e.latest.id)).collect();
        assert_eq!(events, [("a", 3), ("b", 5), ("c", 4)]);
    }
}
