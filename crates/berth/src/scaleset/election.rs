//! One listener per scale set across replicas (PostgreSQL).
//!
//! GitHub gives a scale set one message session: a second listener's
//! session is refused (409) until the first one's is deleted or expires.
//! With several `berth serve` replicas on one database, every replica runs
//! the component `scale_set:<name>`, but only the one holding the scale
//! set's lease in the store (`scale_set_leases`) listens; the others stand
//! by and try again every [`TRY_EVERY`].
//!
//! * The holder renews its lease every [`RENEW_EVERY`]; the lease lasts
//!   [`LEASE_TTL`]. A holder that cannot renew for `LEASE_TTL -
//!   RENEW_EVERY` stops listening (and deletes its session) before anyone
//!   else may take over, so two replicas never poll the same scale set.
//! * The holder records its session id in the lease. A replica that takes
//!   over from a holder whose lease ran out (it was killed, or cut off)
//!   deletes that session first, so it does not wait for GitHub to expire
//!   it. Failover after a kill -9 takes at most `LEASE_TTL + TRY_EVERY`
//!   plus one session delete and create.
//! * A clean stop releases the lease at once, after the listener deleted
//!   its session.
//!
//! Each runner a listener delegates is a job in the shared store, keyed by
//! its runner request id, so a new holder re-reading the scale set's
//! statistics neither loses nor doubles runners (crate::scaleset::orchestrator).
//! On SQLite there is one replica, and no election.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::listener::Listener;
use crate::context::Context;
use crate::store::ListenerLease;
use crate::supervise::ComponentHandle;

/// How long a listener lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the holder renews it.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How often a replica standing by tries to take it.
pub const TRY_EVERY: Duration = Duration::from_secs(1);

/// Runs the listener that `make` builds whenever this replica holds the
/// scale set's lease, until `shutdown`. `make` is called for each term (a
/// listener runs once).
pub async fn listen_when_elected(
    ctx: Arc<Context>,
    scale_set: String,
    status: ComponentHandle,
    shutdown: CancellationToken,
    make: impl Fn() -> Listener,
) -> anyhow::Result<()> {
    let holder = ctx.replica_id.clone();
    loop {
        let Some(previous) = take(&ctx, &scale_set, &holder, &status, &shutdown).await else {
            return Ok(());
        };
        tracing::info!(
            scale_set,
            "this replica holds the scale set's listener lease"
        );
        if let Some(session) = previous {
            delete_stale_session(&ctx, &scale_set, &session).await;
        }
        let term = shutdown.child_token();
        let renewal = tokio::spawn(renew(
            ctx.clone(),
            scale_set.clone(),
            holder.clone(),
            term.clone(),
        ));
        let record = {
            let (ctx, scale_set, holder) = (ctx.clone(), scale_set.clone(), holder.clone());
            Arc::new(move |session: Option<String>| {
                let (ctx, scale_set, holder) = (ctx.clone(), scale_set.clone(), holder.clone());
                tokio::spawn(async move {
                    if let Err(e) = ctx
                        .store
                        .scale_set_lease_record_session(&scale_set, &holder, session.as_deref())
                        .await
                    {
                        tracing::warn!(scale_set, error = %e, "recording the message session failed");
                    }
                });
            })
        };
        let listened = make().on_session(record).run(term.clone()).await;
        term.cancel();
        let _ = renewal.await;
        if shutdown.is_cancelled() {
            if let Err(e) = ctx.store.scale_set_lease_release(&scale_set, &holder).await {
                tracing::warn!(scale_set, error = %e, "releasing the listener lease failed");
            }
            return listened.map_err(anyhow::Error::from);
        }
        // The lease was lost (or the listener ended): stand by again. An
        // error retrying cannot fix goes to the supervisor.
        listened?;
        tracing::warn!(scale_set, "the listener lease was lost; standing by");
    }
}

/// Waits until this replica holds the lease; the session a dead holder
/// left, if any. `None` on shutdown.
async fn take(
    ctx: &Context,
    scale_set: &str,
    holder: &str,
    status: &ComponentHandle,
    shutdown: &CancellationToken,
) -> Option<Option<String>> {
    loop {
        status.pass_started();
        match ctx
            .store
            .scale_set_lease_take(scale_set, holder, ctx.store.now(), LEASE_TTL)
            .await
        {
            Ok(ListenerLease::Taken { previous_session }) => {
                status.pass_finished(Ok(()));
                return Some(previous_session);
            }
            Ok(ListenerLease::HeldBy { holder, .. }) => {
                status.set_detail(format!("standing by: replica {holder} listens"));
                status.pass_finished(Ok(()));
            }
            Err(e) => {
                status.set_detail("standing by: the store is unavailable");
                status.pass_finished(Err(format!("taking the listener lease: {e}")));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TRY_EVERY) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Renews the lease every [`RENEW_EVERY`] until `term` ends; ends the term
/// when the lease is lost, or when it could not be renewed for so long that
/// another replica may soon take it.
async fn renew(ctx: Arc<Context>, scale_set: String, holder: String, term: CancellationToken) {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = term.cancelled() => return,
        }
        match ctx
            .store
            .scale_set_lease_renew(&scale_set, &holder, ctx.store.now(), LEASE_TTL)
            .await
        {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                tracing::warn!(scale_set, "another replica took the listener lease");
                term.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(scale_set, error = %e, "renewing the listener lease failed");
                if renewed.elapsed() >= LEASE_TTL - RENEW_EVERY {
                    tracing::warn!(
                        scale_set,
                        "the listener lease could not be renewed in time; stopping the listener"
                    );
                    term.cancel();
                    return;
                }
            }
        }
    }
}

/// Deletes the message session a dead holder left, so that this replica's
/// session is not refused until GitHub expires it.
async fn delete_stale_session(ctx: &Context, scale_set: &str, session: &str) {
    let deleted = async {
        let id = ctx.scale_sets.id(scale_set).await?;
        ctx.scale_sets
            .client(scale_set)?
            .delete_session(id, session)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(10), deleted).await {
        Ok(Ok(())) => tracing::info!(
            scale_set,
            "deleted the message session of the previous holder"
        ),
        Ok(Err(e)) => tracing::warn!(scale_set, error = %e,
            "deleting the previous holder's message session failed; it will expire"),
        Err(_) => tracing::warn!(
            scale_set,
            "deleting the previous holder's message session timed out"
        ),
    }
}
