//! `berth serve`: wires the store, Docker, GitHub and metrics into a
//! [`Context`] and runs the API, the dispatcher, the watcher, the
//! reconcilers and the scale-set listeners it serves until shutdown.
//!
//! The listener is bound by the caller and passed in (tests bind port 0), and
//! shutdown is a token the caller cancels (on SIGTERM in `main`). Shutting
//! down stops taking work and leaves running jobs running: their containers
//! keep going, and the next start picks them up from the store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::context::{Context, new_replica_id};
use crate::github::{AppAuth, GithubClient, RetryPolicy};
use crate::observability::Metrics;
use crate::observability::logging::LogLevelHandle;
use crate::observability::metrics::OpLabels;
use crate::secrets::{LiveSecret, SecretSpec, Secrets};
use crate::store::Store;
use crate::supervise::Supervisor;
use crate::{api, dispatch, reconcile};

/// How long shutdown waits for in-flight provisioning before leaving it to
/// lease recovery; the whole shutdown stays under 10 s.
const DRAIN: Duration = Duration::from_secs(5);

/// Connects everything a configuration names.
pub async fn build(
    config: Config,
    log_level: Option<LogLevelHandle>,
) -> anyhow::Result<Arc<Context>> {
    let metrics = Metrics::new();
    // Every secret is read first: one that cannot be read stops berth
    // here, naming its key and where it points, before anything is started.
    let secrets = Secrets::new(&config, metrics.clone())?;
    let needs_app = !(config.pools.is_empty() && config.scale_sets.is_empty());
    let app_key = if needs_app {
        let spec =
            SecretSpec::app_private_key(&config).context("github.private_key_path is required")?;
        Some(secrets.add(spec).await?)
    } else {
        None
    };
    let webhook_secret = match SecretSpec::webhook_secret(&config) {
        Some(spec) => Some(secrets.add(spec).await?),
        None => None,
    };
    metrics.init_pools(config.pools.iter().map(|p| p.name.as_str()));
    for pool in &config.pools {
        metrics.set_pool_max_runners(&pool.name, pool.max_runners);
    }
    let store_options = crate::store::StoreOptions {
        group_commit: config.store.group_commit,
        ..Default::default()
    };
    let store = Store::connect_with(&config.store.url, store_options)
        .await
        .with_context(|| format!("opening the store at {}", redact_url(&config.store.url)))?;
    let hook_metrics = metrics.clone();
    let fleet = crate::fleet::Fleet::connect(
        &config,
        Arc::new(move |op| {
            hook_metrics
                .docker_api_errors
                .get_or_create(&OpLabels { op })
                .inc();
        }),
    )
    .await?;
    metrics.init_hosts(fleet.hosts().iter().map(|h| h.name()));
    store
        .hosts_register(&fleet.names())
        .await
        .context("recording the Docker hosts")?;
    if config.docker_hosts.is_empty() {
        // One host, as before fleets: it answered, so it is up, and berth
        // does not start without its network.
        let host = fleet.first();
        let version = host
            .docker
            .probe()
            .await
            .map(|p| p.version)
            .unwrap_or_default();
        store
            .host_probe_ok(host.name(), &version, None, store.now())
            .await
            .context("recording the Docker host")?;
        if config.pools.iter().any(|p| !p.host_network) {
            host.docker
                .ensure_network_with(&config.docker.network, config.docker.egress_proxy.is_some())
                .await
                .with_context(|| {
                    format!("creating the Docker network `{}`", config.docker.network)
                })?;
        }
    }
    let github = app_key
        .map(|key| github_client(&config, key, metrics.clone()))
        .transpose()?;
    let scale_sets = crate::scaleset::Registry::new(&config, github.as_ref(), &metrics)
        .context("setting up the scale sets")?;
    metrics.init_scale_sets(config.scale_sets.iter().map(|s| s.name.as_str()));
    let job_output = match &config.logs.job_output_file {
        Some(path) => Some(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening logs.job_output_file {}", path.display()))?,
        )),
        None => None,
    };
    Ok(Arc::new(Context {
        config: Arc::new(config),
        store,
        fleet,
        github,
        scale_sets: Arc::new(scale_sets),
        components: crate::supervise::Components::new(metrics.clone()),
        metrics,
        webhook_secret,
        secrets: Arc::new(secrets),
        replica_id: new_replica_id(),
        dispatch_wake: Notify::new(),
        reconcile_wake: Notify::new(),
        log_level,
        log_captures: Default::default(),
        exits_in_progress: Default::default(),
        warm: Default::default(),
        job_output,
    }))
}

/// The GitHub App client of a configuration, signing with `key` (kept
/// current by [`Secrets`]).
pub fn github_client(
    config: &Config,
    key: LiveSecret,
    metrics: Metrics,
) -> anyhow::Result<GithubClient> {
    let issuer = match (&config.github.app_id, &config.github.client_id) {
        (Some(id), _) => id.to_string(),
        (None, Some(client_id)) => client_id.clone(),
        (None, None) => anyhow::bail!("github.app_id is required"),
    };
    let app = AppAuth::live(issuer, key)?;
    let retry = RetryPolicy {
        max_attempts: config.github.max_attempts.max(1),
        ..RetryPolicy::default()
    };
    Ok(GithubClient::new(
        &config.github.api_url,
        app,
        config.github.request_timeout,
        retry,
        metrics,
    )?)
}

/// Runs every component until `shutdown`, each under the supervisor
/// (crate::supervise: which component is restarted and which stops the
/// process, and why). Returns an error when the API server fails or a
/// component whose policy is to stop the process ends; `main` then exits
/// non-zero.
pub async fn run(
    ctx: Arc<Context>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(
        listen = %listener.local_addr()?,
        replica = %ctx.replica_id,
        store = %redact_url(&ctx.config.store.url),
        hosts = ctx.fleet.hosts().len(),
        pools = ctx.config.pools.len(),
        "berth serving"
    );
    // Before any component: a predecessor's leases are released, so the
    // first reconcile pass recovers its hand-offs at once.
    reconcile::replicas::release_predecessors(&ctx)
        .await
        .context("releasing the leases of the previous process")?;
    // Components stop on `stop`: the caller's shutdown, or a fatal end of
    // a component.
    let stop = shutdown.child_token();
    let mut supervisor = Supervisor::new(ctx.components.clone(), stop.clone());
    let dispatch_supervisor = spawn_components(&ctx, &mut supervisor, &stop);
    let api = api::serve(ctx.clone(), listener, stop.clone());
    // Streaming responses (followed logs) could hold graceful shutdown open.
    let outcome = tokio::select! {
        r = api => r.context("serving the API"),
        _ = async { stop.cancelled().await; tokio::time::sleep(DRAIN).await } => Ok(()),
        cause = supervisor.fatal() => Err(anyhow::anyhow!(cause)),
    };
    stop.cancel();
    let _ = tokio::time::timeout(DRAIN, async {
        // The dispatcher first: no hand-off is in flight while the warm
        // containers this replica owns are removed.
        dispatch_supervisor.join().await;
        supervisor.join().await;
    })
    .await;
    ctx.store.close().await;
    tracing::info!("berth stopped; running jobs keep running and are picked up at the next start");
    outcome
}

/// Starts every background component under `supervisor`; the dispatcher
/// gets a supervisor of its own, returned, so that shutdown can wait for its
/// hand-offs before the warm refill removes its containers.
fn spawn_components(
    ctx: &Arc<Context>,
    supervisor: &mut Supervisor,
    stop: &CancellationToken,
) -> Supervisor {
    let mut dispatch_supervisor = Supervisor::new(ctx.components.clone(), stop.clone());
    spawn_loop(
        &mut dispatch_supervisor,
        "dispatcher",
        true,
        ctx,
        stop,
        |c, s, h| dispatch::run(c, s, DRAIN, h),
    );
    for host in ctx.fleet.names() {
        let (c, s, h) = (ctx.clone(), stop.clone(), host.clone());
        supervisor.spawn(
            &crate::fleet::owner::component_name(&host),
            true,
            crate::supervise::OnExit::Restart,
            move |status| {
                let (c, s, h) = (c.clone(), s.clone(), h.clone());
                async move {
                    crate::fleet::owner::run(c, h, s, status).await;
                    Ok(())
                }
            },
        );
    }
    spawn_loop(
        supervisor,
        "reconciler.local",
        true,
        ctx,
        stop,
        reconcile::run_local,
    );
    spawn_loop(
        supervisor,
        "reconciler.github",
        false,
        ctx,
        stop,
        reconcile::run_github,
    );
    spawn_loop(
        supervisor,
        "warm_refill",
        false,
        ctx,
        stop,
        dispatch::warm::run,
    );
    spawn_loop(
        supervisor,
        "retention",
        false,
        ctx,
        stop,
        reconcile::retention::run,
    );
    if reconcile::delivery_catchup::enabled(ctx) {
        spawn_loop(
            supervisor,
            "delivery_catchup",
            false,
            ctx,
            stop,
            reconcile::delivery_catchup::run,
        );
    }
    if reconcile::replicas::needs_heartbeat(ctx) {
        let (c, s) = (ctx.clone(), stop.clone());
        supervisor.spawn(
            "heartbeat",
            true,
            crate::supervise::OnExit::StopProcess,
            move |status| reconcile::replicas::heartbeat(c.clone(), s.clone(), status),
        );
    }
    if ctx.secrets.is_refreshable() {
        let (secrets, s) = (ctx.secrets.clone(), stop.clone());
        supervisor.spawn(
            "secrets",
            false,
            crate::supervise::OnExit::Restart,
            move |status| {
                let running = secrets.clone().run(s.clone(), Some(status));
                async move {
                    running.await;
                    Ok(())
                }
            },
        );
    }
    scale_set_listeners(ctx, supervisor, stop);
    dispatch_supervisor
}

/// Supervises `run`, a loop that returns only at `stop`, as the component
/// `name`, restarted with backoff should it end earlier.
fn spawn_loop<F, Fut>(
    supervisor: &mut Supervisor,
    name: &str,
    required: bool,
    ctx: &Arc<Context>,
    stop: &CancellationToken,
    run: F,
) where
    F: Fn(Arc<Context>, CancellationToken, crate::supervise::ComponentHandle) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (ctx, stop) = (ctx.clone(), stop.clone());
    supervisor.spawn(
        name,
        required,
        crate::supervise::OnExit::Restart,
        move |status| {
            let running = run(ctx.clone(), stop.clone(), status);
            async move {
                running.await;
                Ok(())
            }
        },
    );
}

/// The listeners of the scale sets this service runs itself (`listener =
/// "serve"`), delegating in-process, each a component `scale_set:<name>`.
/// A listener that stops on an error retrying cannot fix is restarted with
/// backoff, and shows as down meanwhile.
fn scale_set_listeners(ctx: &Arc<Context>, supervisor: &mut Supervisor, stop: &CancellationToken) {
    use crate::config::ListenerSite;
    use crate::scaleset::{InProcessDelegator, listener};
    let delegator = Arc::new(InProcessDelegator::new(ctx.clone()));
    for set in ctx
        .config
        .scale_sets
        .iter()
        .filter(|s| s.listener == ListenerSite::Serve)
    {
        let (ctx, stop, delegator, set) =
            (ctx.clone(), stop.clone(), delegator.clone(), set.clone());
        let name = format!("scale_set:{}", set.name);
        // Several replicas (PostgreSQL) elect one listener per scale set.
        let elect = reconcile::replicas::needs_heartbeat(&ctx);
        supervisor.spawn(
            &name,
            false,
            crate::supervise::OnExit::Restart,
            move |status| {
                let make = {
                    let (ctx, set, delegator, status) =
                        (ctx.clone(), set.clone(), delegator.clone(), status.clone());
                    move || {
                        listener::Listener::new(
                            set.clone(),
                            ctx.scale_sets.clone(),
                            delegator.clone(),
                            ctx.metrics.clone(),
                            listener::Timing::default(),
                        )
                        .with_status(status.clone())
                    }
                };
                let (ctx, stop, name) = (ctx.clone(), stop.clone(), set.name.clone());
                async move {
                    if elect {
                        crate::scaleset::election::listen_when_elected(
                            ctx, name, status, stop, make,
                        )
                        .await
                    } else {
                        make().run(stop).await.map_err(anyhow::Error::from)
                    }
                }
            },
        );
    }
}

/// A store URL without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
