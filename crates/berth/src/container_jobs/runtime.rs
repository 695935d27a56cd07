//! The hook's four commands, done on the job's Docker host.
//!
//! Each command gets the job (from its credential, never from the request),
//! reports progress and output as [`Event`]s, and ends with one `Done` or
//! `Error`. Every object it makes is named after the job's runner
//! (`<runner>-job`, `<runner>-svc-<name>`, `<runner>-net`…) and labelled
//! with `berth.job`, `berth.runner` and `berth.role`: the runner's name is
//! unique per attempt, and [`remove_objects`] (from `cleanup_job`, the exit
//! handler and the orphan reconciler) finds everything by it.
//!
//! Nothing the request names is trusted: containers are found by the
//! runner's name, and a `state` that names a container of another job is
//! refused ([`check_state`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::policy::{
    self, CreateOptions, Mount, MountSource, Refused, RequestedMount, job_volume_folders,
};
use super::protocol::{
    Event, HookContainer, MountVolume, PrepareJobArgs, PrepareJobResponse, ResponseContainer,
    ResponseContext, ScriptStepArgs,
};
use super::volumes::{EXTERNALS_FOLDER, volume_name, work_folder};
use crate::config::{ContainerPolicy, PoolConfig};
use crate::context::{Context, LABEL_INSTANCE};
use crate::docker::controller::{
    Controller, DockerError, LABEL_HOST, LABEL_JOB, LABEL_MANAGED, LABEL_POOL, LABEL_REPOSITORY,
    LABEL_ROLE, LABEL_RUNNER,
};
use crate::docker::image_policy::PullPolicy;
use crate::store::{Job, JobContainer};

/// The channel a command reports on.
pub type Events = mpsc::Sender<Event>;

/// Why a command stopped: shown to the job as the hook's error.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<Refused> for Failure {
    fn from(r: Refused) -> Self {
        Failure(r.to_string())
    }
}

impl From<DockerError> for Failure {
    fn from(e: DockerError) -> Self {
        Failure(format!("Docker: {e}"))
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// The job a command is for, resolved from its credential.
#[derive(Clone)]
pub struct HookJob {
    pub job: Job,
    pub runner: String,
    pub host: String,
}

impl HookJob {
    fn net(&self) -> String {
        volume_name(&self.runner, "net")
    }

    fn job_container(&self) -> String {
        volume_name(&self.runner, "job")
    }

    fn labels(&self, ctx: &Context, role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_JOB.to_owned(), self.job.id.to_string()),
            (LABEL_RUNNER.to_owned(), self.runner.clone()),
            (LABEL_ROLE.to_owned(), role.to_owned()),
            (LABEL_POOL.to_owned(), self.job.pool.clone()),
            (LABEL_REPOSITORY.to_owned(), self.job.repository.clone()),
            (LABEL_HOST.to_owned(), self.host.clone()),
            (
                LABEL_INSTANCE.to_owned(),
                ctx.config.docker.instance.clone(),
            ),
        ])
    }
}

async fn say(events: &Events, text: impl Into<String>) {
    let _ = events
        .send(Event::Output {
            stream: "stdout".into(),
            text: format!("{}\n", text.into()),
        })
        .await;
}

/// Runs `command` for `hook` and sends its events, the last being `Done`
/// or `Error`.
pub async fn run(
    ctx: Arc<Context>,
    hook: HookJob,
    command: String,
    input: super::protocol::HookInput,
    events: Events,
) {
    let started = Instant::now();
    let result = match ctx.fleet.docker(&hook.host) {
        Err(e) => Err(Failure(e.to_string())),
        Ok(docker) => {
            let docker = docker.clone();
            match ctx.pool_of(&hook.job) {
                Err(e) => Err(Failure(e)),
                Ok(pool) => {
                    let pool = pool.clone();
                    match command.as_str() {
                        "prepare_job" => {
                            prepare_job(&ctx, &docker, &pool, &hook, input.args, &events).await
                        }
                        "run_script_step" => {
                            run_script_step(&docker, &hook, input.args, &events).await
                        }
                        "run_container_step" => {
                            run_container_step(&ctx, &docker, &pool, &hook, input.args, &events)
                                .await
                        }
                        "cleanup_job" => {
                            remove_objects(&ctx, &docker, &hook.runner, false).await;
                            Ok(Event::Done {
                                exit_code: 0,
                                response: None,
                            })
                        }
                        other => Err(Failure(format!("unknown hook command `{other}`"))),
                    }
                }
            }
        }
    };
    finish(&ctx, &hook, &command, started, result, &events).await;
}

/// Counts and times a command, and sends its last event.
async fn finish(
    ctx: &Context,
    hook: &HookJob,
    command: &str,
    started: Instant,
    result: Result<Event>,
    events: &Events,
) {
    use crate::observability::metrics::{HookCommandKind, HookCommandLabels};
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .hook_commands
        .get_or_create(&HookCommandLabels {
            command: command.to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
    ctx.metrics
        .hook_command_duration
        .get_or_create(&HookCommandKind {
            command: command.to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
    let last = match result {
        Ok(done) => done,
        Err(Failure(message)) => {
            tracing::info!(job_id = %hook.job.id, command, error = %message, "a container-job command failed");
            Event::Error { message }
        }
    };
    let _ = events.send(last).await;
}

/// A container asked for, checked against the policy.
struct Planned {
    image: String,
    options: CreateOptions,
    mounts: Vec<Mount>,
    env: BTreeMap<String, String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    workdir: Option<String>,
    registry: Option<DockerCredentials>,
    /// The worker image's externals volume (`/__e`).
    externals: String,
}

fn requested(mounts: &[MountVolume]) -> Vec<RequestedMount> {
    mounts
        .iter()
        .map(|m| RequestedMount {
            source: m.source_volume_path.clone(),
            target: m.target_volume_path.clone(),
            read_only: m.read_only,
        })
        .collect()
}

fn plan(
    c: &HookContainer,
    what: &str,
    pool: &PoolConfig,
    repository: &str,
    instance: &str,
) -> Result<Planned> {
    plan_checked(c, what, pool, repository, instance, true)
}

/// [`plan`]; `check_image` false for an image berth built for this job
/// (its bases were checked before the build).
fn plan_checked(
    c: &HookContainer,
    what: &str,
    pool: &PoolConfig,
    repository: &str,
    instance: &str,
    check_image: bool,
) -> Result<Planned> {
    let policy = &pool.containers;
    let image = c
        .image
        .clone()
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| Failure(format!("the {what} names no image")))?;
    if check_image {
        policy::check_image(&image, policy)?;
    }
    let options = policy::parse_create_options(c.create_options.as_deref(), policy)?;
    let folders = job_volume_folders(&work_folder(pool), repository);
    let mut mounts = policy::translate_mounts(
        &requested(&c.system_mount_volumes),
        true,
        &folders,
        EXTERNALS_FOLDER,
    )?;
    mounts.extend(policy::translate_mounts(
        &requested(&c.user_mount_volumes),
        false,
        &folders,
        EXTERNALS_FOLDER,
    )?);
    let mut env = options.env.clone();
    env.extend(c.environment_variables.clone());
    let entrypoint = c
        .entry_point
        .clone()
        .filter(|e| !e.is_empty())
        .or_else(|| options.entrypoint.clone())
        .map(|e| vec![e]);
    let args: Vec<String> = c
        .entry_point_args
        .iter()
        .filter(|a| !a.is_empty())
        .cloned()
        .collect();
    let registry = c.registry.as_ref().and_then(|r| {
        r.username.as_ref().map(|u| DockerCredentials {
            username: Some(u.clone()),
            password: r.password.clone(),
            serveraddress: r.server_url.clone(),
            ..Default::default()
        })
    });
    Ok(Planned {
        image,
        workdir: c
            .working_directory
            .clone()
            .filter(|w| !w.is_empty())
            .or_else(|| options.workdir.clone()),
        options,
        mounts,
        env,
        entrypoint,
        cmd: (!args.is_empty()).then_some(args),
        registry,
        externals: super::volumes::externals_volume(instance, &pool.image),
    })
}

fn seconds_ns(d: Option<Duration>) -> Option<i64> {
    d.map(|d| d.as_nanos() as i64)
}

/// The create body: berth's hardening whatever was asked.
fn create_body(
    p: &Planned,
    policy: &ContainerPolicy,
    hook: &HookJob,
    labels: BTreeMap<String, String>,
    extra_env: &BTreeMap<String, String>,
) -> ContainerCreateBody {
    let cpus = p.options.cpus.map_or(policy.cpus, |c| c.min(policy.cpus));
    let memory = p
        .options
        .memory_bytes
        .map_or(policy.memory.0 as i64, |m| m.min(policy.memory.0 as i64));
    let mounts = p
        .mounts
        .iter()
        .map(|m| bollard::models::Mount {
            target: Some(m.target.clone()),
            source: Some(match &m.source {
                MountSource::JobVolume(kind) => volume_name(&hook.runner, kind),
                MountSource::Externals => p.externals.clone(),
                MountSource::UserVolume(name) => volume_name(&hook.runner, &format!("u-{name}")),
            }),
            typ: Some(bollard::models::MountType::VOLUME),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let mut env: BTreeMap<String, String> = extra_env.clone();
    env.extend(p.env.clone());
    let health = p.options.health.is_set().then(|| HealthConfig {
        test: p.options.health.test.clone(),
        interval: seconds_ns(p.options.health.interval),
        timeout: seconds_ns(p.options.health.timeout),
        retries: p.options.health.retries,
        start_period: seconds_ns(p.options.health.start_period),
        start_interval: None,
    });
    let tmpfs = (!p.options.tmpfs.is_empty()).then(|| {
        p.options
            .tmpfs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    let mut caps: Vec<String> = policy
        .capabilities
        .iter()
        .filter_map(|c| policy::capability(c).ok())
        .collect();
    caps.extend(p.options.cap_add.iter().cloned());
    caps.sort();
    caps.dedup();
    ContainerCreateBody {
        image: Some(p.image.clone()),
        env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        entrypoint: p.entrypoint.clone(),
        cmd: p.cmd.clone(),
        working_dir: p.workdir.clone(),
        user: p.options.user.clone(),
        hostname: p.options.hostname.clone(),
        labels: Some(labels.into_iter().collect()),
        healthcheck: health,
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(HostConfig {
            nano_cpus: Some((cpus * 1e9).round() as i64),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(policy.pids_limit),
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(caps),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            binds: None,
            mounts: Some(mounts),
            devices: None,
            tmpfs,
            shm_size: p.options.shm_size,
            ipc_mode: Some("private".to_owned()),
            network_mode: Some(hook.net()),
            publish_all_ports: Some(false),
            init: Some(true),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            auto_remove: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Makes the image available per the pool's pull policy.
async fn ensure_image(
    ctx: &Context,
    docker: &Controller,
    policy: &ContainerPolicy,
    image: &str,
    registry: Option<DockerCredentials>,
    events: &Events,
) -> Result<()> {
    let present = docker.image_present(image).await?;
    let pull = match policy.pull_policy {
        PullPolicy::Never if !present => {
            return Err(Failure(format!(
                "the image `{image}` is not on the Docker host and pool.containers.pull_policy is `never`"
            )));
        }
        PullPolicy::Never => false,
        PullPolicy::IfNotPresent => !present,
        PullPolicy::Always => true,
    };
    if pull {
        say(events, format!("berth: pulling {image}")).await;
        docker
            .pull_image_with(image, registry, ctx.config.docker.pull_timeout)
            .await?;
    }
    Ok(())
}

/// The job's network (internal: its containers reach each other and, for
/// the job and action containers, the outside through the pool's network).
async fn ensure_network(ctx: &Context, docker: &Controller, hook: &HookJob) -> Result<()> {
    docker
        .job_network_create(&hook.net(), &hook.labels(ctx, "network"), true)
        .await?;
    Ok(())
}

async fn ensure_user_volumes(
    ctx: &Context,
    docker: &Controller,
    hook: &HookJob,
    mounts: &[Mount],
) -> Result<()> {
    for m in mounts {
        if let MountSource::UserVolume(name) = &m.source {
            docker
                .volume_create(
                    &volume_name(&hook.runner, &format!("u-{name}")),
                    &hook.labels(ctx, "volume"),
                    None,
                )
                .await?;
        }
    }
    Ok(())
}

/// Creates the container, records it for the API, and joins the pool's
/// network too when it needs the outside.
#[allow(clippy::too_many_arguments)]
async fn create(
    ctx: &Context,
    docker: &Controller,
    hook: &HookJob,
    name: &str,
    role: &str,
    alias: Option<&str>,
    body: ContainerCreateBody,
    outside: bool,
) -> Result<String> {
    let image = body.image.clone().unwrap_or_default();
    let mut body = body;
    if let Some(alias) = alias {
        body.networking_config = Some(bollard::models::NetworkingConfig {
            endpoints_config: Some(std::collections::HashMap::from([(
                hook.net(),
                bollard::models::EndpointSettings {
                    aliases: Some(vec![alias.to_owned()]),
                    ..Default::default()
                },
            )])),
        });
    }
    let id = docker.container_create(name, body).await?;
    let record = JobContainer {
        container_id: id.clone(),
        job_id: hook.job.id,
        host: hook.host.clone(),
        role: role.to_owned(),
        name: name.to_owned(),
        image,
        created_at: ctx.store.now(),
        removed_at: None,
    };
    if let Err(e) = ctx.store.job_container_insert(&record).await {
        tracing::warn!(job_id = %hook.job.id, error = %e, "recording a job container failed");
    }
    if outside {
        docker
            .network_connect(&ctx.config.docker.network, &id, Vec::new())
            .await?;
    }
    Ok(id)
}

/// A service's name on the job network: its `contextName` when the runner
/// sends one, else its image's name (`postgres:16` → `postgres`,
/// `ghcr.io/acme/cache@sha256:…` → `cache`). The runner does not send the
/// workflow's service id to hooks (actions/runner#2783), so a service is
/// reached by its image's name, as with ARC's hooks; a second service of the
/// same image gets `-2`, `-3`… (`taken` holds the names given so far).
fn alias_of(service: &HookContainer, taken: &[String]) -> Result<String> {
    let base = match &service.context_name {
        Some(name) => name.clone(),
        None => {
            let image = service.image.as_deref().unwrap_or("service");
            let without_digest = image.split('@').next().unwrap_or(image);
            let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
            let name = last.split(':').next().unwrap_or(last);
            name.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
                .trim_matches('-')
                .to_owned()
        }
    };
    let ok = !base.is_empty()
        && base.len() <= 50
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(Failure(format!(
            "`{base}` is not a service name berth can use"
        )));
    }
    let mut name = base.clone();
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    Ok(name)
}

/// Container port → itself: berth publishes nothing on the host, the job
/// reaches a service at `<name>:<port>`.
fn ports(mappings: &[String]) -> BTreeMap<String, String> {
    mappings
        .iter()
        .filter_map(|m| {
            let container = m.rsplit(':').next()?.split('/').next()?.trim();
            (!container.is_empty()).then(|| (container.to_owned(), container.to_owned()))
        })
        .collect()
}

async fn prepare_job(
    ctx: &Context,
    docker: &Controller,
    pool: &PoolConfig,
    hook: &HookJob,
    args: Value,
    events: &Events,
) -> Result<Event> {
    let args: PrepareJobArgs = serde_json::from_value(args)
        .map_err(|e| Failure(format!("prepare_job: invalid args: {e}")))?;
    let policy = &pool.containers;
    // Everything is checked before anything is made.
    if args.services.len() > policy.max_services as usize {
        return Err(Refused {
            rule: "services",
            message: format!(
                "the job asks for {} services; this pool allows {} (pool.containers.max_services)",
                args.services.len(),
                policy.max_services
            ),
        }
        .into());
    }
    let job_plan = match &args.container {
        Some(c) => {
            if c.dockerfile.is_some() {
                return Err(Failure(
                    "a job container cannot be built from a Dockerfile".into(),
                ));
            }
            Some(plan(
                c,
                "job container",
                pool,
                &hook.job.repository,
                &ctx.config.docker.instance,
            )?)
        }
        None => None,
    };
    let mut service_plans: Vec<(String, Planned, BTreeMap<String, String>)> = Vec::new();
    for s in &args.services {
        let taken: Vec<String> = service_plans.iter().map(|(a, _, _)| a.clone()).collect();
        let alias = alias_of(s, &taken)?;
        let planned = plan(
            s,
            &format!("service `{alias}`"),
            pool,
            &hook.job.repository,
            &ctx.config.docker.instance,
        )?;
        service_plans.push((alias, planned, ports(&s.port_mappings)));
    }
    let egress = crate::docker::egress::worker_env(&ctx.config.docker);

    ensure_network(ctx, docker, hook).await?;
    let mut services_state = serde_json::Map::new();
    let mut services_context = Vec::new();
    for (alias, planned, ports) in &service_plans {
        ensure_image(
            ctx,
            docker,
            policy,
            &planned.image,
            planned.registry.clone(),
            events,
        )
        .await?;
        ensure_user_volumes(ctx, docker, hook, &planned.mounts).await?;
        say(
            events,
            format!("berth: starting service {alias} ({})", planned.image),
        )
        .await;
        let name = volume_name(&hook.runner, &format!("svc-{alias}"));
        let body = create_body(
            planned,
            policy,
            hook,
            hook.labels(ctx, "service"),
            &BTreeMap::new(),
        );
        let id = create(
            ctx,
            docker,
            hook,
            &name,
            "service",
            Some(alias),
            body,
            false,
        )
        .await?;
        docker.container_start(&id).await?;
        services_state.insert(alias.clone(), json!(id));
        services_context.push(ResponseContainer {
            id,
            network: hook.net(),
            ports: ports.clone(),
        });
    }
    let mut job_context = None;
    let mut is_alpine = false;
    if let Some(mut planned) = job_plan {
        ensure_image(
            ctx,
            docker,
            policy,
            &planned.image,
            planned.registry.clone(),
            events,
        )
        .await?;
        ensure_user_volumes(ctx, docker, hook, &planned.mounts).await?;
        if planned.entrypoint.is_none() {
            // Kept running for `docker exec`, as the runner's own Docker mode does.
            planned.entrypoint = Some(vec!["tail".into()]);
            planned.cmd = Some(vec!["-f".into(), "/dev/null".into()]);
        }
        say(
            events,
            format!("berth: starting the job container ({})", planned.image),
        )
        .await;
        let body = create_body(&planned, policy, hook, hook.labels(ctx, "job"), &egress);
        let id = create(
            ctx,
            docker,
            hook,
            &hook.job_container(),
            "job",
            None,
            body,
            true,
        )
        .await?;
        docker.container_start(&id).await?;
        is_alpine = alpine(docker, &id).await;
        job_context = Some(ResponseContainer {
            id,
            network: hook.net(),
            ports: BTreeMap::new(),
        });
    }
    wait_healthy(
        docker,
        &services_context,
        &service_plans,
        policy.service_health_timeout,
        events,
    )
    .await?;
    let response = PrepareJobResponse {
        state: json!({
            "network": hook.net(),
            "container": job_context.as_ref().map(|c| c.id.clone()),
            "services": services_state,
        }),
        context: ResponseContext {
            container: job_context,
            services: services_context,
        },
        is_alpine,
    };
    Ok(Event::Done {
        exit_code: 0,
        response: Some(serde_json::to_value(response).map_err(|e| Failure(e.to_string()))?),
    })
}

/// Whether the job container runs Alpine (the runner then uses the musl
/// build of node for JavaScript actions).
async fn alpine(docker: &Controller, container: &str) -> bool {
    let Ok((exec, mut output)) = docker
        .exec(
            container,
            vec!["cat".into(), "/etc/alpine-release".into()],
            Vec::new(),
            None,
        )
        .await
    else {
        return false;
    };
    while output.next().await.is_some() {}
    matches!(docker.exec_exit_code(&exec).await, Ok(Some(0)))
}

/// Waits for every service with a health check to be healthy, as the
/// runner does; one that turns unhealthy or exits fails the job.
async fn wait_healthy(
    docker: &Controller,
    services: &[ResponseContainer],
    plans: &[(String, Planned, BTreeMap<String, String>)],
    timeout: Duration,
    events: &Events,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for (service, (alias, _, _)) in services.iter().zip(plans) {
        let mut announced = false;
        loop {
            let state = docker.run_state(&service.id).await?;
            if !state.running {
                return Err(Failure(format!(
                    "service `{alias}` exited with code {}",
                    state.exit_code.unwrap_or(-1)
                )));
            }
            match state.health.as_deref() {
                None | Some("healthy") => break,
                Some("unhealthy") => {
                    return Err(Failure(format!("service `{alias}` is unhealthy")));
                }
                Some(_) => {}
            }
            if !announced {
                say(
                    events,
                    format!("berth: waiting for service {alias} to be healthy"),
                )
                .await;
                announced = true;
            }
            if Instant::now() > deadline {
                return Err(Failure(format!(
                    "service `{alias}` was not healthy within {}s (pool.containers.service_health_timeout)",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

/// `PATH` for a step: the runner's prepend path, then the image's own.
fn step_path(prepend: &[String], image_env: &[String]) -> Option<String> {
    let image_path = image_env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    if prepend.is_empty() {
        return None;
    }
    Some(format!("{}:{image_path}", prepend.join(":")))
}

/// Streams `output` as events until it ends.
async fn forward(
    mut output: futures::stream::BoxStream<
        'static,
        std::result::Result<crate::docker::controller::OutputChunk, DockerError>,
    >,
    events: &Events,
) -> Result<()> {
    while let Some(chunk) = output.next().await {
        let chunk = chunk?;
        let sent = events
            .send(Event::Output {
                stream: chunk.stream.to_owned(),
                text: String::from_utf8_lossy(&chunk.bytes).into_owned(),
            })
            .await;
        if sent.is_err() {
            // The hook went away: the step's process goes on in the
            // container until the job ends; nothing to report to.
            return Err(Failure("the hook disconnected".into()));
        }
    }
    Ok(())
}

async fn run_script_step(
    docker: &Controller,
    hook: &HookJob,
    args: Value,
    events: &Events,
) -> Result<Event> {
    let args: ScriptStepArgs = serde_json::from_value(args)
        .map_err(|e| Failure(format!("run_script_step: invalid args: {e}")))?;
    if args.entry_point.trim().is_empty() {
        return Err(Failure("run_script_step: no entry point".into()));
    }
    let container = hook.job_container();
    let state = docker.run_state(&container).await.map_err(|e| {
        if e.is_not_found() {
            Failure("the job has no job container (prepare_job did not make one)".into())
        } else {
            e.into()
        }
    })?;
    if !state.running {
        return Err(Failure(format!(
            "the job container exited (code {})",
            state.exit_code.unwrap_or(-1)
        )));
    }
    let mut env: BTreeMap<String, String> = args.environment_variables.clone();
    if let Some(path) = step_path(&args.prepend_path, &state.env) {
        env.insert("PATH".into(), path);
    }
    let mut cmd = vec![args.entry_point.clone()];
    cmd.extend(
        args.entry_point_args
            .iter()
            .filter(|a| !a.is_empty())
            .cloned(),
    );
    let (exec, output) = docker
        .exec(
            &container,
            cmd,
            env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            args.working_directory.clone().filter(|w| !w.is_empty()),
        )
        .await?;
    forward(output, events).await?;
    let code = docker.exec_exit_code(&exec).await?.unwrap_or(-1);
    Ok(Event::Done {
        exit_code: code,
        response: None,
    })
}

async fn run_container_step(
    ctx: &Context,
    docker: &Controller,
    pool: &PoolConfig,
    hook: &HookJob,
    args: Value,
    events: &Events,
) -> Result<Event> {
    let args: HookContainer = serde_json::from_value(args)
        .map_err(|e| Failure(format!("run_container_step: invalid args: {e}")))?;
    let policy = &pool.containers;
    // A Dockerfile action runs the image `berth hook` had berth build first
    // (POST /v1/hook/build): one labelled with this job's runner.
    let built = match (&args.dockerfile, &args.image) {
        (None, _) => false,
        (Some(_), None) => {
            return Err(Refused {
                rule: "builds",
                message: "this step is a Dockerfile action: its image must be built first (berth hook does so where the pool allows builds)".into(),
            }
            .into());
        }
        (Some(_), Some(image)) => {
            let ours = docker
                .images_labelled(&[
                    format!("{LABEL_RUNNER}={}", hook.runner),
                    format!("{LABEL_ROLE}=image"),
                ])
                .await?;
            if !ours.iter().any(|id| id == image) {
                return Err(Failure(format!(
                    "the image `{image}` is not one berth built for this job"
                )));
            }
            true
        }
    };
    let mut planned = plan_checked(
        &args,
        "container action",
        pool,
        &hook.job.repository,
        &ctx.config.docker.instance,
        !built,
    )?;
    if let Some(path) = step_path(&args.prepend_path, &[]) {
        planned.env.entry("PATH".into()).or_insert(path);
    }
    if !built {
        ensure_image(
            ctx,
            docker,
            policy,
            &planned.image,
            planned.registry.clone(),
            events,
        )
        .await?;
    }
    ensure_network(ctx, docker, hook).await?;
    ensure_user_volumes(ctx, docker, hook, &planned.mounts).await?;
    let egress = crate::docker::egress::worker_env(&ctx.config.docker);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let name = volume_name(&hook.runner, &format!("act-{}", &suffix[..8]));
    let body = create_body(&planned, policy, hook, hook.labels(ctx, "action"), &egress);
    let id = create(ctx, docker, hook, &name, "action", None, body, true).await?;
    docker.container_start(&id).await?;
    let result = forward(docker.follow_output(&id), events).await;
    let mut code = None;
    for _ in 0..50 {
        let state = docker.run_state(&id).await?;
        if !state.running {
            code = state.exit_code;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if docker.remove(&id).await.is_ok() {
        let _ = ctx.store.job_container_removed(&id).await;
    }
    result?;
    Ok(Event::Done {
        exit_code: code.unwrap_or(-1),
        response: None,
    })
}

/// Builds a Dockerfile action's image from `context` (the action's folder,
/// as a tar archive the hook made in the worker), after checking its bases
/// against the pool's images; answers with the image's ID. The image is
/// labelled with the job and removed with its other objects.
pub async fn build(
    ctx: Arc<Context>,
    hook: HookJob,
    context: bytes::Bytes,
    dockerfile: String,
    events: Events,
) {
    let started = Instant::now();
    let result = build_inner(&ctx, &hook, context, &dockerfile, &events).await;
    finish(&ctx, &hook, "build", started, result, &events).await;
}

async fn build_inner(
    ctx: &Context,
    hook: &HookJob,
    context: bytes::Bytes,
    dockerfile: &str,
    events: &Events,
) -> Result<Event> {
    let pool = ctx.pool_of(&hook.job).map_err(Failure)?;
    let docker = ctx
        .fleet
        .docker(&hook.host)
        .map_err(|e| Failure(e.to_string()))?;
    let text = dockerfile_in(&context, dockerfile)?;
    policy::check_dockerfile(&text, &pool.containers)?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    // `berth-job/`: the only tags the socket proxy lets builds set, so a
    // job's build can never re-tag an image berth or its proxy run from.
    let tag = format!(
        "berth-job/{}:{}",
        hook.runner.to_ascii_lowercase(),
        &suffix[..8]
    );
    say(
        events,
        format!("berth: building the action's image ({tag})"),
    )
    .await;
    // Builds reach registries the way the job does: through the egress
    // proxy when there is one (Docker's predefined proxy build arguments).
    let build_args = crate::docker::egress::worker_env(&ctx.config.docker)
        .into_iter()
        .filter(|(k, _)| k.to_ascii_uppercase().ends_with("_PROXY"))
        .collect();
    let (output, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let labels = hook.labels(ctx, "image");
    let building = docker.image_build(
        context,
        dockerfile,
        &tag,
        &labels,
        &build_args,
        ctx.config.docker.pull_timeout,
        output,
    );
    tokio::pin!(building);
    let id = loop {
        tokio::select! {
            Some(line) = lines.recv() => {
                let _ = events
                    .send(Event::Output {
                        stream: "stdout".into(),
                        text: line,
                    })
                    .await;
            }
            built = &mut building => break built?,
        }
    };
    while let Ok(line) = lines.try_recv() {
        let _ = events
            .send(Event::Output {
                stream: "stdout".into(),
                text: line,
            })
            .await;
    }
    Ok(Event::Done {
        exit_code: 0,
        response: Some(json!({ "image": id })),
    })
}

/// The Dockerfile's text, from the build context.
fn dockerfile_in(context: &[u8], dockerfile: &str) -> Result<String> {
    let mut archive = tar::Archive::new(context);
    let entries = archive
        .entries()
        .map_err(|e| Failure(format!("the build context is not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Failure(format!("the build context is not a tar archive: {e}")))?;
        let path = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.trim_start_matches("./") == dockerfile {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)
                .map_err(|e| Failure(format!("cannot read {dockerfile}: {e}")))?;
            return Ok(text);
        }
    }
    Err(Failure(format!("the build context has no `{dockerfile}`")))
}

/// Refuses a `state` naming a container that is not one of this job's:
/// the credential acts for its own job only.
pub async fn check_state(
    docker: &Controller,
    hook: &HookJob,
    state: &Value,
) -> std::result::Result<(), String> {
    let mut named: Vec<String> = Vec::new();
    if let Some(c) = state.get("container").and_then(Value::as_str) {
        named.push(c.to_owned());
    }
    if let Some(services) = state.get("services").and_then(Value::as_object) {
        named.extend(
            services
                .values()
                .filter_map(Value::as_str)
                .map(str::to_owned),
        );
    }
    if named.is_empty() {
        return Ok(());
    }
    let ours = docker
        .containers_labelled(&[format!("{LABEL_RUNNER}={}", hook.runner)])
        .await
        .map_err(|e| e.to_string())?;
    for name in named {
        let mine = ours.iter().any(|c| {
            c.id == name || (name.len() >= 12 && c.id.starts_with(&name)) || c.name == name
        });
        if !mine {
            return Err(format!(
                "container `{name}` is not one of this job's containers"
            ));
        }
    }
    Ok(())
}

/// Removes what the hook made for the runner's job: its containers, its
/// network and the workflow's volumes, and with `worker_volumes` the
/// worker's own (once the worker is gone). Idempotent; failures are logged
/// and left to the orphan reconciler.
pub async fn remove_objects(
    ctx: &Context,
    docker: &Controller,
    runner: &str,
    worker_volumes: bool,
) -> u32 {
    let by_runner = format!("{LABEL_RUNNER}={runner}");
    let mut removed = 0;
    if let Ok(containers) = docker
        .containers_labelled(std::slice::from_ref(&by_runner))
        .await
    {
        for c in containers
            .iter()
            .filter(|c| c.labels.contains_key(LABEL_ROLE))
        {
            if crate::lifecycle::resources::remove_container(docker, &c.id).await {
                let _ = ctx.store.job_container_removed(&c.id).await;
                removed += 1;
            }
        }
    }
    if let Ok(networks) = docker
        .networks_labelled(std::slice::from_ref(&by_runner))
        .await
    {
        for n in networks {
            match docker.network_remove(&n.id).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(network = %n.name, error = %e, "removing a job network failed")
                }
            }
        }
    }
    if let Ok(images) = docker
        .images_labelled(&[by_runner.clone(), format!("{LABEL_ROLE}=image")])
        .await
    {
        for id in images {
            match docker.image_remove(&id).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(image = %id, error = %e, "removing a job's image failed"),
            }
        }
    }
    if let Ok(volumes) = docker
        .volumes_labelled(std::slice::from_ref(&by_runner))
        .await
    {
        for v in volumes {
            let role = v.labels.get(LABEL_ROLE).map(String::as_str);
            if role == Some("volume") || (worker_volumes && role == Some("work")) {
                match docker.volume_remove(&v.name).await {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(volume = %v.name, error = %e, "removing a job volume failed")
                    }
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_named_after_their_image_unless_the_runner_names_them() {
        let svc = |image: &str, context: Option<&str>| HookContainer {
            image: Some(image.into()),
            context_name: context.map(str::to_owned),
            ..Default::default()
        };
        assert_eq!(
            alias_of(&svc("postgres:16", None), &[]).unwrap(),
            "postgres"
        );
        assert_eq!(
            alias_of(&svc("ghcr.io/acme/Cache_db@sha256:abc", None), &[]).unwrap(),
            "cache-db"
        );
        assert_eq!(
            alias_of(&svc("redis", Some("queue")), &[]).unwrap(),
            "queue"
        );
        assert_eq!(
            alias_of(&svc("redis:7", None), &["redis".into()]).unwrap(),
            "redis-2"
        );
        assert!(alias_of(&svc("x", Some("bad name")), &[]).is_err());
    }

    #[test]
    fn ports_map_each_container_port_to_itself() {
        let p = ports(&["8080:80".into(), "5432".into(), "53:53/udp".into()]);
        assert_eq!(p["80"], "80");
        assert_eq!(p["5432"], "5432");
        assert_eq!(p["53"], "53");
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn the_step_path_puts_the_runners_entries_first() {
        assert_eq!(
            step_path(&["/a".into(), "/b".into()], &["PATH=/usr/bin:/bin".into()]).unwrap(),
            "/a:/b:/usr/bin:/bin"
        );
        assert_eq!(step_path(&[], &["PATH=/x".into()]), None);
    }
}
