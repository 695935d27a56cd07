//! Provisioning one claimed job: mint a JIT runner, create its hardened
//! container, hand it the JIT config over stdin, start it.
//!
//! The order is chosen for crash safety:
//! 1. the runner's *name* is recorded before the runner is minted, so the
//!    runner reconciler never mistakes a registration being made for an
//!    orphan;
//! 2. the container is created with the job's labels before its id is
//!    recorded; a crash in between leaves a labelled container the orphan
//!    reconciler removes after its grace period;
//! 3. the JIT config exists only in memory here and in the container's stdin.
//!
//! Within that order, the runner (name, then mint: a GitHub round trip) and
//! the container (image check, then create: Docker calls) are made side by
//! side, and one commit records both before the container starts: a cold
//! start costs the slower of the two rather than their sum.
//!
//! The claim is a lease, renewed while this runs. If it is lost (this
//! process stalled and a reconciler requeued the job), provisioning stops
//! and releases what it made.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::spec::{runner_name, worker_spec};
use crate::config::PoolConfig;
use crate::context::Context;
use crate::docker::controller::{Controller, DockerError, WorkerSpec};
use crate::github::{GithubClient, JitConfig};
use crate::lifecycle::resources;
use crate::observability::Metrics;
use crate::store::{Job, JobChanges, JobState};

/// Why provisioning stopped.
#[derive(Debug)]
enum Stop {
    /// Someone else changed the job (lease expired, cancelled, rebound).
    Lost,
    /// Worth another attempt later (GitHub or Docker unavailable).
    Transient(String),
    /// Will not work however often it is tried (missing image, bad pool).
    Permanent(String),
    /// berth is shutting down and the hand-off did not finish in time.
    Abandoned,
}

impl Stop {
    /// `what` failed with `error`: transient or permanent as the error says
    /// (crate::error::Error::is_transient, the one place that sorts them).
    fn failed(what: &str, error: impl Into<crate::error::Error>) -> Stop {
        let error = error.into();
        let reason = format!("{what} failed: {error}");
        if error.is_transient() {
            Stop::Transient(reason)
        } else {
            Stop::Permanent(reason)
        }
    }
}

/// What provisioning made, noted the moment it exists, so that a step cut
/// short (a lost lease, shutdown) still releases it. The lease renewer reads
/// it too: once the runner is named, the lease is renewed by runner.
#[derive(Default)]
struct Made {
    /// The runner's name once recorded, and its GitHub id once minted.
    runner: Mutex<Option<(String, Option<i64>)>>,
    /// The container: its name before the create is sent (a create cut
    /// short may still have made it), its id once created or taken.
    container: Mutex<Option<String>>,
}

impl Made {
    fn runner(&self) -> Option<(String, Option<i64>)> {
        self.runner.lock().expect("made").clone()
    }

    fn runner_made(&self, name: &str, id: Option<i64>) {
        *self.runner.lock().expect("made") = Some((name.to_owned(), id));
    }

    fn container(&self) -> Option<String> {
        self.container.lock().expect("made").clone()
    }

    fn container_made(&self, reference: &str) {
        *self.container.lock().expect("made") = Some(reference.to_owned());
    }
}

/// Drives a claimed job (state `provisioning`) to `running`, or back to the
/// queue, or to `failed`.
///
/// Once its runner is named, provisioning addresses "the job holding this
/// runner" rather than the job it started for: GitHub may give the runner to
/// another job at any moment ([`Store::job_take_runner`]), and the runner
/// being made is then that job's.
///
/// [`Store::job_take_runner`]: crate::store::Store::job_take_runner
///
/// When `abandon` fires (shutdown, after the dispatcher's drain time), it
/// stops, releases what it made and puts the job back in the queue.
pub async fn provision(ctx: Arc<Context>, job: Job, abandon: CancellationToken) {
    let claimed_at = Instant::now();
    // From intake (or the last requeue) to this claim: time in berth's queue.
    let claim_wait =
        (ctx.store.now() - job.queued_at.max(job.created_at)).max(time::Duration::ZERO);
    let lost = CancellationToken::new();
    let made: Arc<Made> = Default::default();
    let renewer = tokio::spawn(renew_lease(ctx.clone(), job.id, made.clone(), lost.clone()));
    let outcome = tokio::select! {
        outcome = steps(&ctx, &job, &made, claimed_at, claim_wait) => outcome,
        _ = lost.cancelled() => Err(Stop::Lost),
        _ = abandon.cancelled() => Err(Stop::Abandoned),
    };
    renewer.abort();
    // Refill the warm pool once this hand-off is done and its runner had a
    // moment to start: a refill's create and start would compete with both
    // for the engine and the CPU (crate::dispatch::warm::REFILL_SETTLE).
    if ctx.pool(&job.pool).is_some_and(|p| p.warm > 0) {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(super::warm::REFILL_SETTLE).await;
            ctx.warm.wake();
        });
    }
    let Err(stop) = outcome else { return };
    // The job to settle: whichever holds the runner now, else the one claimed.
    let holder = match made.runner() {
        Some((name, _)) => match ctx.store.job_get_by_runner_name(&name).await {
            Ok(Some(holder)) if holder.state.is_active() => holder,
            _ => job.clone(),
        },
        None => job.clone(),
    };
    release(&ctx, &made, &holder).await;
    let in_flight = [JobState::Provisioning, JobState::Starting];
    match stop {
        Stop::Lost => {
            tracing::info!("lost the claim while provisioning; released what was made");
        }
        Stop::Abandoned => {
            let reason = "berth shut down while provisioning";
            tracing::info!("{reason}; released what was made, job back in the queue");
            let _ = ctx.store.job_requeue(holder.id, &in_flight, reason).await;
        }
        Stop::Transient(reason) => {
            match crate::lifecycle::retry_or_give_up(&ctx, &holder, reason) {
                crate::lifecycle::Retry::GiveUp(error) => {
                    tracing::error!(error = %error, "job failed");
                    finish_failed(&ctx, &holder, &error).await;
                }
                crate::lifecycle::Retry::Requeue(reason) => {
                    tracing::warn!(reason = %reason, attempts = holder.attempts, "provisioning failed; job goes back to the queue");
                    let _ = ctx.store.job_requeue(holder.id, &in_flight, &reason).await;
                    // A short pause before the job can be claimed again, so an
                    // outage is not hammered in a tight loop.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    ctx.wake_dispatcher();
                }
            }
        }
        Stop::Permanent(reason) => {
            tracing::error!(error = %reason, "job failed");
            finish_failed(&ctx, &holder, &reason).await;
        }
    }
}

async fn finish_failed(ctx: &Context, job: &Job, error: &str) {
    if let Err(e) = crate::lifecycle::finish(ctx, job, JobState::Failed, None, Some(error)).await {
        tracing::error!(error = %e, "recording the job's failure failed; the reconcilers retry");
    }
}

async fn steps(
    ctx: &Arc<Context>,
    job: &Job,
    made: &Made,
    claimed_at: Instant,
    claim_wait: time::Duration,
) -> Result<(), Stop> {
    let pool = ctx.pool_of(job).map_err(Stop::Permanent)?;
    let github = ctx.github().map_err(Stop::Permanent)?;
    // The claim placed the job; a host configured no more is a requeue
    // away from another.
    let host = ctx.fleet.host_of(job);
    let docker = ctx
        .fleet
        .docker(host)
        .map_err(|e| Stop::Transient(e.to_string()))?;
    let runner_name = &runner_name(pool, job);
    crate::docker::image_policy::check(&pool.image, &ctx.config.docker.allowed_images)
        .map_err(Stop::Permanent)?;
    let warm_pool = pool.warm > 0;

    // The runner side and the container side run side by side: the JIT
    // config goes over stdin at start, so the create does not wait for the
    // GitHub round trip, nor the mint for Docker.
    let (named_tx, named_rx) = tokio::sync::oneshot::channel::<()>();
    let runner_side = async move {
        // 1. Record the name, then mint. From here on the runner is the key.
        let named = ctx
            .store
            .job_transition(
                job.id,
                &[JobState::Provisioning],
                JobState::Provisioning,
                JobChanges::new().runner_name(runner_name),
            )
            .await;
        match named {
            Ok(true) => {}
            Ok(false) => return Err(Stop::Lost),
            Err(e) => return Err(Stop::Transient(format!("the store failed: {e}"))),
        }
        made.runner_made(runner_name, None);
        let _ = named_tx.send(());
        let jit = mint(ctx, job, pool, github, runner_name).await;
        if let Ok(jit) = &jit {
            made.runner_made(runner_name, Some(jit.runner_id as i64));
            crate::failpoint::hit("after_mint");
        }
        jit
    };
    let container_side = async move {
        // 2. A warm container is taken for the runner's name (so only once
        // it is recorded); a cold one is created with the job's labels, and
        // a crash before its id is recorded leaves a labelled container the
        // orphan reconciler removes. A warm container's fingerprint holds
        // the image ID it was made from, checked against the pool's image
        // every few seconds (crate::dispatch::warm).
        // A container job's worker volumes are labelled with the runner,
        // and the orphan_job_object reconciler removes what no recorded
        // runner holds: they too are made only once the name is recorded
        // (a pass in between once removed a volume before its container
        // was created).
        if (warm_pool || pool.container_jobs) && named_rx.await.is_err() {
            return Ok(None);
        }
        if warm_pool {
            if let Some((id, started)) = super::warm::take(ctx, host, pool, runner_name).await {
                made.container_made(&id);
                return Ok(Some(Worker {
                    id,
                    started,
                    warm: true,
                }));
            }
        }
        let spec = worker_spec(ctx, job, pool, runner_name);
        made.container_made(&spec.name);
        if pool.container_jobs {
            let owner = spec
                .user_ids()
                .map_err(|e| Stop::failed("the worker's user", e))?;
            crate::container_jobs::volumes::create_worker_volumes(
                docker,
                pool,
                &spec.labels,
                &spec.volumes,
                owner,
            )
            .await
            .map_err(|e| Stop::failed("creating the job's volumes", e))?;
        }
        let id = create_container(ctx, docker, pool, &spec).await?;
        made.container_made(&id);
        Ok::<_, Stop>(Some(Worker {
            id,
            started: false,
            warm: false,
        }))
    };
    let ((jit, runner_took), (worker, container_took)) =
        tokio::join!(timed(runner_side), timed(container_side));

    let jit: JitConfig = jit?;
    let Some(worker) = worker? else {
        return Err(Stop::Lost);
    };
    let span = tracing::Span::current();
    span.record("runner_name", runner_name.as_str());
    span.record("container_id", worker.id.as_str());
    let warm_hit = worker.warm;
    let (container_id, started) = (worker.id, worker.started);

    // One commit records the runner and its container (each write is an
    // fsync, and the hand-off is latency-bound).
    let recording = Instant::now();
    transition(
        ctx,
        runner_name,
        JobState::Provisioning,
        JobState::Starting,
        JobChanges::new()
            .runner(runner_name, jit.runner_id as i64)
            .container_id(&container_id),
    )
    .await?;
    crate::failpoint::hit(if warm_hit {
        "after_warm_take"
    } else {
        "after_create"
    });

    // 3. Deliver the JIT config, and start (a warm container may already
    // run, its entrypoint blocked reading stdin).
    let record_took = recording.elapsed();
    let starting = Instant::now();
    // A container-jobs worker also gets its hook credential, as a second
    // line (docs/worker-image.md); the store keeps only its hash.
    let mut secret = jit.encoded.expose().as_bytes().to_vec();
    if pool.container_jobs {
        let credential = crate::container_jobs::credential::issue(ctx, runner_name)
            .await
            .map_err(|e| Stop::Transient(format!("recording the hook credential failed: {e}")))?;
        secret.push(b'\n');
        secret.extend_from_slice(credential.as_bytes());
    }
    if !started && crate::failpoint::is_armed("before_config") {
        // Crash tests: the worker runs, its config not yet written (a replica
        // that dies between Docker's start and the write to stdin).
        let _ = docker.start_waiting(&container_id).await;
        crate::failpoint::hit("before_config");
    }
    let delivered = if started {
        docker.deliver_secret(&container_id, &secret).await
    } else {
        docker.start_with_secret(&container_id, &secret).await
    };
    drop(secret);
    delivered.map_err(|e| Stop::Transient(format!("starting the worker container failed: {e}")))?;
    crate::failpoint::hit("after_start");
    let start_took = starting.elapsed();
    let now = ctx.store.now();
    transition(
        ctx,
        runner_name,
        JobState::Starting,
        JobState::Running,
        JobChanges::new().started_at(now).clear_lease(),
    )
    .await?;

    let labels = Metrics::pool(&job.pool);
    ctx.metrics
        .container_creation_duration
        .get_or_create(&labels)
        .observe(claimed_at.elapsed().as_secs_f64());
    let waited = (now - job.queued_at).as_seconds_f64().max(0.0);
    ctx.metrics
        .queue_wait
        .get_or_create(&labels)
        .observe(waited);
    // Where the hand-off's time went: the runner (name and mint) and the
    // container (take or create) side by side, then the record and start.
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    tracing::info!(
        queue_wait_ms = (waited * 1000.0) as u64,
        claim_wait_ms = claim_wait.as_seconds_f64() * 1000.0,
        warm = warm_hit,
        runner_ms = ms(runner_took),
        container_ms = ms(container_took),
        record_ms = ms(record_took),
        start_ms = ms(start_took),
        "worker container running"
    );
    let holder = match ctx.store.job_get_by_runner_name(runner_name).await {
        Ok(Some(holder)) => holder.id,
        _ => job.id,
    };
    super::logs::spawn_capture(ctx, host, holder, &container_id);
    Ok(())
}

/// `work`'s output and how long it took.
async fn timed<T>(work: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let output = work.await;
    (output, started.elapsed())
}

/// A worker container provisioning got hold of.
struct Worker {
    id: String,
    /// Already running, its entrypoint blocked reading stdin.
    started: bool,
    /// Taken from the pool's warm containers.
    warm: bool,
}

/// Mints the job's runner: through the Actions service for a scale-set job
/// (with berth's own App credentials), else a repository or organisation
/// JIT runner.
async fn mint(
    ctx: &Context,
    job: &Job,
    pool: &PoolConfig,
    github: &GithubClient,
    runner_name: &str,
) -> Result<JitConfig, Stop> {
    match &job.scale_set {
        Some(set) => ctx
            .scale_sets
            .mint(set, runner_name, &pool.work_folder)
            .await
            .map_err(|e| Stop::failed("minting a scale-set runner", e)),
        None => github
            .generate_jitconfig(
                &pool.scope,
                runner_name,
                pool.runner_group_id,
                &pool.labels,
                &pool.work_folder,
            )
            .await
            .map_err(|e| Stop::failed("minting a JIT runner", e)),
    }
}

/// One conditional transition of the job holding the runner; `Lost` when it
/// did not apply.
async fn transition(
    ctx: &Context,
    runner_name: &str,
    from: JobState,
    to: JobState,
    changes: JobChanges,
) -> Result<(), Stop> {
    match ctx
        .store
        .job_transition_by_runner(runner_name, &[from], to, changes)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(Stop::Lost),
        Err(e) => Err(Stop::Transient(format!("the store failed: {e}"))),
    }
}

/// Creates the job's container under the pool's pull policy. `always`
/// pulls first; otherwise the create itself tells whether the image is on
/// the host, so the hot path makes no image inspect, and `if-not-present`
/// pulls and creates again when it is not.
async fn create_container(
    ctx: &Context,
    docker: &Controller,
    pool: &PoolConfig,
    spec: &WorkerSpec,
) -> Result<String, Stop> {
    use crate::docker::image_policy::PullPolicy;
    // A bare image ID names a local image; there is nothing to pull it from.
    let pullable = !pool.image.starts_with("sha256:");
    if pool.pull_policy == PullPolicy::Always && pullable {
        pull(ctx, docker, pool).await?;
    }
    match create_with_retries(ctx, docker, spec).await {
        Ok(id) => Ok(id),
        Err(DockerError::ImageMissing { .. })
            if pool.pull_policy == PullPolicy::IfNotPresent && pullable =>
        {
            pull(ctx, docker, pool).await?;
            create_with_retries(ctx, docker, spec)
                .await
                .map_err(|e| create_failed(pool, e))
        }
        Err(e) => Err(create_failed(pool, e)),
    }
}

async fn pull(ctx: &Context, docker: &Controller, pool: &PoolConfig) -> Result<(), Stop> {
    tracing::info!(image = %pool.image, "pulling the worker image");
    docker
        .pull_image(&pool.image, ctx.config.docker.pull_timeout)
        .await
        .map_err(|e| Stop::failed(&format!("pulling the worker image `{}`", pool.image), e))
}

/// Creates the container, trying again after transient failures; a refused
/// spec or a missing image is returned at once.
async fn create_with_retries(
    ctx: &Context,
    docker: &Controller,
    spec: &WorkerSpec,
) -> Result<String, DockerError> {
    let attempts = ctx.config.dispatch.create_attempts.max(1);
    let mut attempt = 1;
    loop {
        match docker.create_worker(spec).await {
            Ok(id) => return Ok(id),
            Err(e @ (DockerError::InvalidSpec(_) | DockerError::ImageMissing { .. })) => {
                return Err(e);
            }
            Err(e) if attempt >= attempts => return Err(e),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "creating the worker container failed");
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                attempt += 1;
            }
        }
    }
}

fn create_failed(pool: &PoolConfig, e: DockerError) -> Stop {
    match e {
        DockerError::InvalidSpec(msg) => {
            Stop::Permanent(format!("the pool's worker settings are invalid: {msg}"))
        }
        DockerError::ImageMissing { image } => Stop::Permanent(format!(
            "the worker image `{image}` is not on the Docker host (pull_policy = {:?})",
            pool.pull_policy
        )),
        e => Stop::failed("creating the worker container", e),
    }
}

/// Releases the runner registration and container a failed attempt made,
/// unless a live job still holds them (one GitHub gave the runner to).
async fn release(ctx: &Context, made: &Made, job: &Job) {
    if let Some(container) = made.container() {
        let held = matches!(
            ctx.store.job_get_by_container_id(&container).await,
            Ok(Some(holder)) if holder.state.is_active()
        );
        if held {
            return;
        }
        if let Ok(docker) = ctx.fleet.docker_of(job) {
            resources::remove_container(docker, &container).await;
        }
    }
    if let Some((name, id)) = made.runner() {
        let holder = ctx.store.job_get_by_runner_name(&name).await.ok().flatten();
        if holder.as_ref().is_some_and(|h| h.state.is_active()) {
            return;
        }
        resources::deregister_job_runner(ctx, holder.as_ref().unwrap_or(job), id, &name).await;
    }
}

/// Keeps the claim alive (by job id until the runner is named, then by
/// runner); cancels `lost` when it cannot.
async fn renew_lease(ctx: Arc<Context>, id: uuid::Uuid, made: Arc<Made>, lost: CancellationToken) {
    let lease = ctx.config.dispatch.lease;
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let until =
            ctx.store.now() + time::Duration::try_from(lease).unwrap_or(time::Duration::MINUTE);
        let name = made.runner().map(|(name, _)| name);
        let renewed = match &name {
            Some(name) => {
                ctx.store
                    .job_lease_renew_by_runner(name, &ctx.replica_id, until)
                    .await
            }
            None => ctx.store.job_lease_renew(id, &ctx.replica_id, until).await,
        };
        match renewed {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return;
            }
            // A store hiccup: try again at the next tick; the lease has slack.
            Err(e) => tracing::warn!(error = %e, "renewing a lease failed"),
        }
    }
}
