//! Owning a host: the host lease, and the once-per-host work its holder
//! does (probing, the event watch, log capture; warm refill and the
//! orphan reconciler run for the hosts [`Fleet::owned`](super::Fleet::owned)
//! lists).
//!
//! Every replica runs [`run`] for every host. It tries to take the host's
//! lease every third of `fleet.host_lease`; the holder renews it at that
//! pace. Whoever holds it starts the host's work, and stops it when a
//! renewal fails or when it cannot renew for longer than the lease minus
//! one renewal period (by its own clock, before anyone else could take the
//! lease by the store's). Log capture is also fenced in the store
//! (crate::store::Store::job_logs_append_as_host_owner), for a holder
//! paused past its lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::context::Context;
use crate::store::{HealthChange, HostHealth, JobState};
use crate::supervise::ComponentHandle;

/// The component name of host `name`'s owner loop.
pub fn component_name(host: &str) -> String {
    format!("host:{host}")
}

/// Holds (or waits for) host `host`'s lease until `shutdown`, doing the
/// host's work while it holds it. On shutdown the lease is given up, so
/// another replica takes over at once.
pub async fn run(
    ctx: Arc<Context>,
    host: String,
    shutdown: CancellationToken,
    status: ComponentHandle,
) {
    let ttl = ctx.config.fleet.host_lease;
    let renew_every = ttl / 3;
    let lease = time::Duration::try_from(ttl).unwrap_or(time::Duration::seconds(10));
    let mut work: Option<(CancellationToken, TaskTracker)> = None;
    let mut renewed_at = Instant::now();
    loop {
        status.pass_started();
        let asked_at = Instant::now();
        let now = ctx.store.now();
        let result = ctx
            .store
            .host_lease_acquire(&host, &ctx.replica_id, now + lease, now)
            .await;
        let outcome = match result {
            Ok(true) => {
                renewed_at = asked_at;
                if work.is_none() {
                    tracing::info!(host, replica = %ctx.replica_id, "took the host lease: watching the host");
                    ctx.metrics.host_lease_taken(&host);
                    work = Some(start(&ctx, &host));
                }
                Ok(())
            }
            Ok(false) => {
                if let Some(w) = work.take() {
                    tracing::warn!(
                        host,
                        "another replica holds the host lease now; stopping the host's work"
                    );
                    stop(&ctx, &host, w).await;
                }
                Ok(())
            }
            Err(e) => {
                // Not knowing is not losing, until the lease could have run
                // out: then another replica may hold it.
                if work.is_some() && renewed_at.elapsed() + renew_every >= ttl {
                    tracing::warn!(host, error = %e, "could not renew the host lease in time; stopping the host's work");
                    if let Some(w) = work.take() {
                        stop(&ctx, &host, w).await;
                    }
                }
                Err(format!("renewing the lease of host `{host}`: {e}"))
            }
        };
        status.pass_finished(outcome);
        tokio::select! {
            _ = tokio::time::sleep(renew_every) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if let Some(w) = work.take() {
        stop(&ctx, &host, w).await;
        if let Err(e) = ctx.store.host_lease_release(&host, &ctx.replica_id).await {
            tracing::warn!(host, error = %e, "giving up the host lease failed; it expires by itself");
        }
    }
}

fn start(ctx: &Arc<Context>, host: &str) -> (CancellationToken, TaskTracker) {
    ctx.fleet.set_owned(host, true);
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (c, h, t) = (ctx.clone(), host.to_string(), token.clone());
    tasks.spawn(async move { probe_loop(c, h, t).await });
    let (c, h, t) = (ctx.clone(), host.to_string(), token.clone());
    tasks.spawn(async move { crate::dispatch::watch::watch_host(c, h, t).await });
    tasks.close();
    // Warm refill and the orphan reconciler look at the owned hosts.
    ctx.warm.wake();
    ctx.wake_reconciler();
    (token, tasks)
}

async fn stop(ctx: &Context, host: &str, (token, tasks): (CancellationToken, TaskTracker)) {
    ctx.fleet.set_owned(host, false);
    token.cancel();
    crate::dispatch::logs::stop_captures_on(ctx, host);
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
}

/// Probes the host every `fleet.probe_interval` while this replica owns it.
async fn probe_loop(ctx: Arc<Context>, host: String, stop: CancellationToken) {
    let mut prepared = false;
    loop {
        probe_once(&ctx, &host, &mut prepared).await;
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.fleet.probe_interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One probe: records what the engine answered, and acts on a change: a
/// host that went down has its jobs settled; one that came back gets a
/// reconcile pass (whatever berth left there is removed).
///
/// A host is `up` only once it is ready for jobs: the first good probe of
/// this owner also makes berth's network there (`prepared`), and a host
/// where that fails counts as not answering.
pub async fn probe_once(ctx: &Arc<Context>, host: &str, prepared: &mut bool) {
    let Ok(docker) = ctx.fleet.docker(host) else {
        return;
    };
    let now = ctx.store.now();
    let started = Instant::now();
    let mut answer = docker.probe().await.map_err(|e| e.to_string());
    if answer.is_ok() && !*prepared {
        match prepare(ctx, host).await {
            Ok(()) => *prepared = true,
            Err(e) => answer = Err(e),
        }
    }
    if answer.is_err() {
        // It may come back as a new machine, without the network.
        *prepared = false;
    }
    let change = match answer {
        Ok(probe) => {
            let free = probe.data_root.as_deref().and_then(free_disk_bytes);
            ctx.store
                .host_probe_ok(host, &probe.version, free, now)
                .await
        }
        Err(e) => {
            let grace = time::Duration::try_from(ctx.config.fleet.down_after)
                .unwrap_or(time::Duration::seconds(30));
            tracing::warn!(host, error = %e, "probing a Docker host failed");
            ctx.store
                .host_probe_failed(host, &e, now, now - grace)
                .await
        }
    };
    ctx.metrics.host_probed(host, started.elapsed());
    match change {
        Ok(change) => on_health(ctx, host, change).await,
        Err(e) => tracing::warn!(host, error = %e, "recording a host probe failed"),
    }
}

async fn on_health(ctx: &Arc<Context>, host: &str, change: HealthChange) {
    if change.came_up() {
        tracing::info!(host, "Docker host is up");
        ctx.wake_dispatcher();
        ctx.wake_reconciler();
        ctx.warm.wake();
    }
    if change.went_down() {
        tracing::error!(
            host,
            "Docker host is down: no new jobs go there, and its jobs are settled"
        );
    }
    if change.after == HostHealth::Down {
        // Every pass while down: a job that was mid-provisioning when the
        // host went down may reach a state to settle only later.
        settle_jobs_of_down_host(ctx, host).await;
    }
}

/// What a host needs before jobs run there: berth's worker network.
pub async fn prepare(ctx: &Context, host: &str) -> Result<(), String> {
    if ctx.config.pools.iter().all(|p| p.host_network) {
        return Ok(());
    }
    let docker = ctx.fleet.docker(host).map_err(|e| e.to_string())?;
    docker
        .ensure_network_with(
            &ctx.config.docker.network,
            ctx.config.docker.egress_proxy.is_some(),
        )
        .await
        .map(drop)
        .map_err(|e| {
            format!(
                "creating the Docker network `{}`: {e}",
                ctx.config.docker.network
            )
        })
}

/// Settles every active job placed on a host that is down. Nothing of the
/// host can be reached, so nothing is asked of it: a job whose runner had
/// not started there goes back to the queue (and is placed elsewhere); one
/// that ran there is decided from GitHub's view, as a worker exit with no
/// exit code would be. Their registrations are removed. The containers
/// left on the host are removed by the orphan reconciler once it answers.
pub async fn settle_jobs_of_down_host(ctx: &Arc<Context>, host: &str) {
    let jobs = match ctx.store.jobs_active_on_host(host).await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(host, error = %e, "listing a down host's jobs failed");
            return;
        }
    };
    for job in jobs {
        let span = crate::job_span!(job);
        let reason = format!("docker host `{host}` is down");
        async {
            if job.state == JobState::Provisioning {
                crate::lifecycle::exit::host_lost_before_start(ctx, &job, &reason).await;
            } else {
                crate::lifecycle::exit::host_lost(ctx, &job, &reason).await;
            }
        }
        .instrument(span)
        .await;
    }
}

/// Free bytes on the file system holding `path`, when it is on this
/// machine (an engine reached over a unix socket here, or one sharing the
/// path); `None` otherwise.
fn free_disk_bytes(path: &str) -> Option<i64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    i64::try_from(stat.f_bavail.saturating_mul(stat.f_frsize)).ok()
}
