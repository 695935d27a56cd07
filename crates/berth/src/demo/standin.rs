//! One runner stand-in job driven by hand, the way berth's dispatcher drives
//! each job: the building blocks under the orchestrator exercised together
//! on a real engine with no configuration at all.
//!
//! 1. start the GitHub simulator where containers can reach it
//!    ([`start_simulator`]);
//! 2. queue a two-step job on it, as a `workflow_job` would arrive;
//! 3. mint a JIT runner config over its REST API with berth's GitHub client
//!    ([`github_client`]): App JWT → installation token → `generate-jitconfig`;
//! 4. create a hardened container with berth's Docker controller
//!    ([`worker_spec`]), start it and hand it the JIT config on stdin, never
//!    in its env, command or labels;
//! 5. follow the job to completion, then read back what GitHub and Docker
//!    show: the runner gone from the runner list, the container's exit code,
//!    and `docker inspect` of the container at every stage.
//!
//! [`run_standin_job`] returns the facts as a [`StandinRun`] without judging
//! them: `crates/berth/tests/standin_container.rs` calls it and asserts on
//! them. `berth demo` itself ([`super::run`]) runs the whole orchestrator.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use futures::StreamExt;
use ghsim::{JobSpec, JobView, SimConfig, SimHandle, Simulator, StepInput};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::config::{Scope, Secret};
use crate::docker::controller::{LABEL_GITHUB_JOB_ID, LABEL_JOB, LABEL_REPOSITORY, LABEL_RUNNER};
use crate::docker::worker_image::{self, WorkerImage};
use crate::docker::{Controller, LogOptions, TmpfsSizes, WorkerNetwork, WorkerSpec};
use crate::github::{AppAuth, GithubClient, JitConfig, RetryPolicy};
use crate::observability::Metrics;

/// The organisation the simulator's App is installed on; runners are minted there.
pub const ORG: &str = "acme";
/// The repository the demo's job belongs to.
pub const REPOSITORY: &str = "acme/widgets";
/// The job's `runs-on`; the runner is minted with exactly these labels.
pub const RUNS_ON: [&str; 2] = ["self-hosted", "linux"];
/// The host name containers use for the machine running the simulator.
pub const HOST_ALIAS: &str = "host.docker.internal";
/// Label on every container the demo creates; its value is one demo run's id.
pub const DEMO_LABEL: &str = "berth.demo";

/// Where progress lines go: stderr for `berth demo`, the test's output in tests.
pub type Progress = dyn Fn(&str) + Send + Sync;

/// How long one Docker call may take before the demo gives up on it.
const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the container may take to exit once its job has completed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long GitHub may take to drop a JIT runner after its job.
const RUNNER_REMOVAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the job is looked at while it runs.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// The most container output kept (its tail), for error messages.
const OUTPUT_LIMIT: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// The simulator, reachable from containers
// ---------------------------------------------------------------------------

/// Starts the GitHub simulator where worker containers can reach it.
///
/// # How containers reach the simulator
///
/// Workers run on Docker's default bridge. Everything the simulator hands to
/// a runner (the JIT config's server URLs) names it as
/// `http://host.docker.internal:<port>` (`SimConfig::public_url`), and every
/// worker is created with `ExtraHosts ["host.docker.internal:host-gateway"]`.
/// Docker resolves `host-gateway` to the default bridge's gateway address on
/// the host (`docker0`, 172.17.0.1 here), so the simulator listens on exactly
/// that address: containers on the bridge reach it, and unlike `0.0.0.0` it
/// is not exposed on the machine's other interfaces. Host-side calls (the
/// REST minting, the control API) use the same address.
///
/// A packet from a container to the gateway address is local delivery on the
/// host, so it passes the `INPUT` chain, not Docker's `FORWARD` rules. On the
/// machine this was built on both iptables back ends (nft and legacy) have
/// `INPUT` policy `ACCEPT`, and a container reaches such a port; a host
/// firewall that drops `INPUT` from `docker0` (ufw's default, for one) needs
/// `ufw allow in on docker0` or equivalent.
///
/// When the gateway address is not on this host (a remote or rootless engine,
/// Docker Desktop) binding to it fails and the simulator falls back to all
/// interfaces (`0.0.0.0`), where whatever `host-gateway` means on that set-up
/// can reach it.
pub async fn start_simulator(docker: &Docker) -> anyhow::Result<SimHandle> {
    let gateway = bridge_gateway(docker).await;
    let bound = match gateway {
        Some(ip) => TcpListener::bind((ip, 0)).await.ok(),
        None => None,
    };
    let listener = match bound {
        Some(listener) => listener,
        None => TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .context("binding the simulator's listener")?,
    };
    let port = listener.local_addr()?.port();
    let config = SimConfig {
        public_url: Some(format!("http://{HOST_ALIAS}:{port}")),
        ..SimConfig::default()
    };
    Simulator::start(config, listener).context("starting the GitHub simulator")
}

/// The gateway address of Docker's default bridge network, as seen from the
/// host: the IPAM gateway when the engine reports one, otherwise the first
/// address of its subnet (Docker's rule for `docker0` without `--bip`).
pub async fn bridge_gateway(docker: &Docker) -> Option<IpAddr> {
    let network = docker.inspect_network("bridge", None).await.ok()?;
    for config in network.ipam?.config.unwrap_or_default() {
        if let Some(gateway) = config.gateway.and_then(|g| g.parse::<IpAddr>().ok()) {
            return Some(gateway);
        }
        if let Some(subnet) = config.subnet {
            let base = subnet.split('/').next()?.parse::<Ipv4Addr>().ok()?;
            return Some(IpAddr::V4(Ipv4Addr::from(u32::from(base) + 1)));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// GitHub, through berth's own client
// ---------------------------------------------------------------------------

/// berth's GitHub client, authenticated as the simulator's App: every call
/// goes over REST exactly as it would to api.github.com.
pub fn github_client(sim: &SimHandle) -> anyhow::Result<GithubClient> {
    let auth = AppAuth::new(
        sim.app_id().to_string(),
        &Secret::new(sim.app_private_key_pem()),
    )?;
    Ok(GithubClient::new(
        &sim.api_url(),
        auth,
        Duration::from_secs(30),
        RetryPolicy::default(),
        Metrics::new(),
    )?)
}

// ---------------------------------------------------------------------------
// One job in one container
// ---------------------------------------------------------------------------

/// What [`run_standin_job`] runs and how it labels the container.
#[derive(Debug, Clone)]
pub struct StandinOptions {
    /// The job's steps, run in order with `/bin/sh -c` inside the container.
    pub steps: Vec<StepInput>,
    /// Labels put on the container (the demo's run id, a test's label).
    pub labels: HashMap<String, String>,
    /// How long the job may take from queueing to completion.
    pub timeout: Duration,
}

impl StandinOptions {
    /// The demo's job: two steps that show where they run.
    pub fn demo(labels: HashMap<String, String>) -> Self {
        let step = |name: &str, run: &str| StepInput::Named {
            name: Some(name.to_owned()),
            run: run.to_owned(),
        };
        Self {
            steps: vec![
                step(
                    "Say hello",
                    r#"echo "hello from $(id -un) (uid $(id -u)) in container $(hostname)""#,
                ),
                step(
                    "Look at the sandbox",
                    "echo \"kernel: $(uname -sr)\"; \
                     grep -E '^(CapEff|NoNewPrivs):' /proc/self/status; \
                     if touch /probe 2>/dev/null; then echo 'root fs: writable'; \
                     else echo 'root fs: read-only'; fi",
                ),
            ],
            labels,
            timeout: Duration::from_secs(120),
        }
    }
}

/// `docker inspect` of the worker container at one moment.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// `created`, `running` (after the JIT config was delivered) or `exited`.
    pub stage: &'static str,
    /// The inspect answer, as JSON.
    pub json: String,
}

/// Everything [`run_standin_job`] saw, for the caller to judge.
pub struct StandinRun {
    /// The job's last state, as the simulator's control API shows it.
    pub job: JobView,
    /// The job's log: every step's output lines, in order.
    pub log: String,
    /// The runner that was minted for the job, with its JIT config (a
    /// credential: `Debug` redacts it).
    pub runner: JitConfig,
    /// The runner names `GET /orgs/{org}/actions/runners` listed once the
    /// job was done (after waiting up to 10 s for the JIT runner to go).
    pub runners_after: Vec<String>,
    /// The worker container's id (it has been removed).
    pub container_id: String,
    /// Its name (the runner's name).
    pub container_name: String,
    /// Its exit code.
    pub exit_code: i64,
    /// Its stdout and stderr (the tail, at most 64 KiB).
    pub container_output: String,
    /// `docker inspect` after create, after start, after exit.
    pub inspections: Vec<Inspection>,
    /// From queueing the job to the simulator showing it in progress: minting
    /// the runner, starting the container and the runner taking the job.
    pub queued_to_running: Duration,
    /// From queueing the job to the container's exit.
    pub elapsed: Duration,
}

impl std::fmt::Debug for StandinRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinRun")
            .field("job", &self.job.id)
            .field("conclusion", &self.job.conclusion)
            .field("runner", &self.runner)
            .field("container", &self.container_name)
            .field("exit_code", &self.exit_code)
            .finish_non_exhaustive()
    }
}

impl StandinRun {
    /// The stages whose `docker inspect` shows the JIT config or one of the
    /// files inside it (empty when it never leaked).
    pub fn inspections_showing_the_jit_config(&self) -> Vec<&'static str> {
        let secrets = jit_config_parts(self.runner.encoded.expose());
        self.inspections
            .iter()
            .filter(|i| secrets.iter().any(|s| i.json.contains(s.as_str())))
            .map(|i| i.stage)
            .collect()
    }

    /// The last `lines` lines of the job's log.
    pub fn log_tail(&self, lines: usize) -> Vec<&str> {
        let all: Vec<&str> = self.log.lines().collect();
        all[all.len().saturating_sub(lines)..].to_vec()
    }
}

/// The strings of a JIT config that must never leak: the encoded config,
/// each base64 file inside it (`.runner`, `.credentials`,
/// `.credentials_rsaparams`), and the credentials' values (the runner's
/// OAuth client id and RSA private key parameters). Not the decoded
/// `.runner` file or URLs: they name the runner and the server, which are no
/// secret and do appear in a container's labels and hosts.
pub fn jit_config_parts(encoded: &str) -> Vec<String> {
    fn leaves(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) if !s.starts_with("http") => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
            Value::Object(fields) => fields.values().for_each(|v| leaves(v, out)),
            _ => {}
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut parts = vec![encoded.trim().to_owned()];
    let files: BTreeMap<String, String> = b64
        .decode(encoded.trim())
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default();
    for (name, file) in files {
        if name.starts_with(".credentials") {
            let decoded: Option<Value> = b64
                .decode(&file)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            if let Some(decoded) = decoded {
                leaves(&decoded, &mut parts);
            }
        }
        parts.push(file);
    }
    // Short values ("OAuth", the RSA exponent "AQAB") are no secret.
    parts.retain(|p| p.len() >= 16);
    parts
}

/// The worker's spec for berth's Docker controller, which adds the hardening
/// that never varies (every capability dropped, `no-new-privileges`, Docker's
/// init as PID 1, no swap, nothing mounted from the host, stdin open for the
/// JIT config and the only way it gets in). On top: the image's non-root user
/// (1001:1001), a read-only root with tmpfs `/tmp` and work folder, modest
/// CPU, memory and process limits, the default bridge network, and
/// `host.docker.internal` resolving to the host (see [`start_simulator`]).
pub fn worker_spec(
    image: &WorkerImage,
    runner_name: &str,
    job: &JobView,
    labels: &HashMap<String, String>,
) -> WorkerSpec {
    let mut spec = WorkerSpec::new(
        runner_name,
        image.id.clone(),
        WorkerNetwork::Bridge("bridge".to_owned()),
    );
    spec.labels
        .extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    // No berth job exists (no store here): the GitHub job id stands in. No
    // `berth.instance` label either, so no `berth serve` on this host counts
    // the container as its own orphan.
    spec.labels
        .insert(LABEL_JOB.to_owned(), format!("demo-{}", job.id));
    spec.labels
        .insert(LABEL_GITHUB_JOB_ID.to_owned(), job.id.to_string());
    spec.labels
        .insert(LABEL_REPOSITORY.to_owned(), job.repository.clone());
    spec.labels
        .insert(LABEL_RUNNER.to_owned(), runner_name.to_owned());
    spec.cpus = 1.0;
    spec.memory_bytes = 1024 * 1024 * 1024;
    spec.pids_limit = 512;
    spec.read_only_rootfs = true;
    spec.tmpfs = TmpfsSizes {
        tmp_bytes: 128 * 1024 * 1024,
        work_bytes: 256 * 1024 * 1024,
    };
    spec.extra_hosts = vec![format!("{HOST_ALIAS}:host-gateway")];
    spec
}

/// The Docker engine, twice: berth's [`Controller`] creates, starts, waits
/// for and removes the worker exactly as the dispatcher will; the plain
/// client builds the image and reads the full `docker inspect` answer.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The plain Docker client.
    pub docker: Docker,
    /// berth's Docker controller, on the same engine.
    pub controller: Controller,
}

impl Engine {
    /// Connects to `DOCKER_HOST`, else the local socket, negotiating the API version.
    pub async fn connect() -> anyhow::Result<Self> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let docker = worker_image::connect(Some(&host)).await?;
        let controller = Controller::connect(&host, DOCKER_CALL_TIMEOUT)
            .await
            .with_context(|| format!("connecting to the Docker engine at {host}"))?;
        Ok(Self { docker, controller })
    }
}

/// Queues a job with `options.steps` on the simulator, mints a JIT runner for
/// it over REST, runs the runner stand-in in a hardened worker container with
/// the JIT config on stdin, follows the job to completion, and reports what
/// it saw. The container is removed before this returns, whatever happened
/// (unless the future is dropped: remove by label then, see
/// [`remove_labelled_containers`]).
pub async fn run_standin_job(
    engine: &Engine,
    sim: &SimHandle,
    image: &WorkerImage,
    options: &StandinOptions,
    progress: &Progress,
) -> anyhow::Result<StandinRun> {
    let spec = JobSpec {
        repository: REPOSITORY.to_owned(),
        labels: RUNS_ON.iter().map(|l| l.to_string()).collect(),
        steps: options.steps.clone(),
        workflow_name: Some("berth demo".to_owned()),
        job_name: Some("hello".to_owned()),
        ..JobSpec::default()
    };
    let queued_at = Instant::now();
    let job = sim.queue_job(spec).context("queueing the job")?;
    progress(&format!(
        "queued job {} on {} (runs-on: {}, {} steps)",
        job.id,
        job.repository,
        RUNS_ON.join(", "),
        options.steps.len()
    ));

    let github = github_client(sim)?;
    let scope = Scope::Org(ORG.to_owned());
    let name = format!("berth-demo-{:08x}", rand::random::<u32>());
    let labels: Vec<String> = RUNS_ON.iter().map(|l| l.to_string()).collect();
    let runner = github
        .generate_jitconfig(&scope, &name, 1, &labels, "_work")
        .await
        .context("minting a JIT runner")?;
    progress(&format!(
        "minted JIT runner {} (id {}) over REST: App JWT → installation token → generate-jitconfig",
        runner.runner_name, runner.runner_id
    ));

    let spec = worker_spec(image, &runner.runner_name, &job, &options.labels);
    let id = engine
        .controller
        .create_worker(&spec)
        .await
        .context("creating the worker container")?;

    let driven = drive(
        engine,
        sim,
        &github,
        &scope,
        &runner,
        &id,
        job.id,
        queued_at,
        options.timeout,
        progress,
    )
    .await;
    let removed = engine.controller.remove(&id).await;
    let driven = driven?;
    removed.with_context(|| format!("removing container {id}"))?;
    progress(&format!("removed container {}", short(&id)));

    Ok(StandinRun {
        log: sim.job_log(job.id).unwrap_or_default(),
        job: driven.job,
        runner,
        runners_after: driven.runners_after,
        container_name: spec.name,
        container_id: id,
        exit_code: driven.exit_code,
        container_output: driven.output,
        inspections: driven.inspections,
        queued_to_running: driven.queued_to_running,
        elapsed: driven.elapsed,
    })
}

/// What [`drive`] found out.
struct Driven {
    job: JobView,
    runners_after: Vec<String>,
    exit_code: i64,
    output: String,
    inspections: Vec<Inspection>,
    queued_to_running: Duration,
    elapsed: Duration,
}

/// Starts the worker with its JIT config, follows the job and the container
/// to their ends. The container is the caller's to remove.
#[allow(clippy::too_many_arguments)]
async fn drive(
    engine: &Engine,
    sim: &SimHandle,
    github: &GithubClient,
    scope: &Scope,
    runner: &JitConfig,
    id: &str,
    job_id: u64,
    queued_at: Instant,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<Driven> {
    let controller = &engine.controller;
    let mut inspections = vec![inspect(&engine.docker, id, "created").await?];

    // Attach, start, write the config and a newline, close stdin: the image's
    // entrypoint reads that one line.
    controller
        .start_with_secret(id, runner.encoded.expose().trim().as_bytes())
        .await
        .context("starting the worker container with its JIT config")?;
    inspections.push(inspect(&engine.docker, id, "running").await?);
    progress(&format!(
        "container {} started (uid 1001, no capabilities, no-new-privileges, read-only root); \
         JIT config delivered on stdin",
        short(id)
    ));

    // The container's output, kept for error messages (Docker keeps it from
    // the first byte, so following it now misses nothing).
    let output = Arc::new(Mutex::new(String::new()));
    let collector = tokio::spawn(collect_output(
        controller.logs(id, LogOptions::follow()),
        output.clone(),
    ));
    let exited = {
        let controller = controller.clone();
        let id = id.to_owned();
        tokio::spawn(async move { controller.wait_exit(&id).await })
    };
    let output_now = || output.lock().unwrap_or_else(|e| e.into_inner()).clone();

    let deadline = queued_at + timeout;
    let mut queued_to_running = None;
    let mut step_seen_running: HashMap<u32, Instant> = HashMap::new();
    let mut steps_reported = 0;
    let job = loop {
        let container_gone = exited.is_finished();
        let job = sim.job(job_id).context("the simulator lost the job")?;
        if queued_to_running.is_none() && job.status != "queued" && job.status != "waiting" {
            let latency = queued_at.elapsed();
            queued_to_running = Some(latency);
            progress(&format!(
                "job {job_id} running on {} ({} after it was queued)",
                job.runner_name.as_deref().unwrap_or("?"),
                human(latency)
            ));
        }
        for step in &job.steps {
            if step.status == "in_progress" {
                step_seen_running
                    .entry(step.number)
                    .or_insert_with(Instant::now);
            }
        }
        for step in job.steps.iter().skip(steps_reported) {
            if step.status != "completed" {
                break;
            }
            // Seen running in an earlier look: about how long it took.
            let took = step_seen_running
                .get(&step.number)
                .map(|t| format!(" in about {}", human(t.elapsed())))
                .unwrap_or_default();
            let first_line = step.output.first().map(String::as_str).unwrap_or("");
            progress(&format!(
                "step {}/{} \"{}\" finished: {}{took}{}",
                step.number,
                job.steps.len(),
                step.name,
                step.conclusion.as_deref().unwrap_or("?"),
                if first_line.is_empty() {
                    String::new()
                } else {
                    format!(" — {first_line}")
                }
            ));
            steps_reported += 1;
        }
        if job.status == "completed" {
            break job;
        }
        if container_gone {
            bail!(
                "the worker container exited before job {job_id} completed (job {}); its output:\n{}",
                job.status,
                output_now()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "job {job_id} did not complete within {timeout:?} (it is {}); container output:\n{}",
                job.status,
                output_now()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    progress(&format!(
        "job {job_id} completed: {}",
        job.conclusion.as_deref().unwrap_or("no conclusion")
    ));

    let Ok(waited) = tokio::time::timeout(EXIT_TIMEOUT, exited).await else {
        bail!(
            "the worker container did not exit within {EXIT_TIMEOUT:?} of its job's end; its output:\n{}",
            output_now()
        );
    };
    let exit_code = waited
        .context("waiting for the worker container")?
        .context("waiting for the worker container")?;
    let elapsed = queued_at.elapsed();
    inspections.push(inspect(&engine.docker, id, "exited").await?);
    // The log stream ends with the container; what is left is a moment's work.
    let _ = tokio::time::timeout(Duration::from_secs(5), collector).await;
    progress(&format!("container {} exited {exit_code}", short(id)));

    // GitHub removes a JIT runner once its job is done; give it a moment.
    let removal_deadline = Instant::now() + RUNNER_REMOVAL_TIMEOUT;
    let runners_after = loop {
        let names: Vec<String> = github
            .list_runners(scope)
            .await
            .context("listing the runners")?
            .into_iter()
            .map(|r| r.name)
            .collect();
        if !names.contains(&runner.runner_name) || Instant::now() >= removal_deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !runners_after.contains(&runner.runner_name) {
        progress(&format!(
            "runner {} is gone from GET /orgs/{ORG}/actions/runners",
            runner.runner_name
        ));
    }

    Ok(Driven {
        job,
        runners_after,
        exit_code,
        output: output_now(),
        inspections,
        queued_to_running: queued_to_running.unwrap_or(elapsed),
        elapsed,
    })
}

/// Appends the container's output to `output`, keeping its last
/// [`OUTPUT_LIMIT`] bytes, until the stream ends.
async fn collect_output(
    mut stream: futures::stream::BoxStream<
        'static,
        Result<bytes::Bytes, crate::docker::DockerError>,
    >,
    output: Arc<Mutex<String>>,
) {
    while let Some(Ok(chunk)) = stream.next().await {
        let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(&String::from_utf8_lossy(&chunk));
        if out.len() > OUTPUT_LIMIT {
            let mut cut = out.len() - OUTPUT_LIMIT;
            while !out.is_char_boundary(cut) {
                cut += 1;
            }
            out.drain(..cut);
        }
    }
}

/// `docker inspect` of the container, as JSON.
async fn inspect(docker: &Docker, id: &str, stage: &'static str) -> anyhow::Result<Inspection> {
    let inspected = timed("container inspect", docker.inspect_container(id, None))
        .await?
        .context("inspecting the worker container")?;
    Ok(Inspection {
        stage,
        json: serde_json::to_string(&inspected)?,
    })
}

/// Removes every container (running or not) labelled `key=value`; how many.
pub async fn remove_labelled_containers(
    docker: &Docker,
    key: &str,
    value: &str,
) -> anyhow::Result<usize> {
    let filters = HashMap::from([("label", vec![format!("{key}={value}")])]);
    let list = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = timed("container list", docker.list_containers(Some(list))).await??;
    let mut removed = 0;
    for container in containers {
        let Some(id) = container.id else { continue };
        let remove = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match timed(
            "container remove",
            docker.remove_container(&id, Some(remove)),
        )
        .await?
        {
            Ok(()) => removed += 1,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e).with_context(|| format!("removing container {id}")),
        }
    }
    Ok(removed)
}

/// Awaits a Docker call for at most [`DOCKER_CALL_TIMEOUT`].
async fn timed<T>(what: &str, call: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(DOCKER_CALL_TIMEOUT, call)
        .await
        .with_context(|| format!("Docker {what} took longer than {DOCKER_CALL_TIMEOUT:?}"))
}

/// The first 12 characters of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// `1.23 s` or `456 ms`.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

// ---------------------------------------------------------------------------
// `berth demo`
// ---------------------------------------------------------------------------
