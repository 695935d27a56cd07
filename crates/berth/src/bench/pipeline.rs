//! `berth bench pipeline`: trivial jobs through the whole pipeline, against
//! the same containers run straight through the Docker API, in one run.
//!
//! **Baseline (raw Docker).** `concurrency` workers, each in a loop: queue a
//! one-step job (`true`) on the simulator, mint a JIT runner for it through
//! the simulator's control API, then create → attach and start (at once,
//! as berth does) → write the JIT config on stdin → wait → remove, with bollard, using the very create
//! body berth sends for the pool (same image, command, limits, hardening,
//! network). The runner stand-in inside takes the job and runs it, so both
//! ways do the same work inside the container.
//!
//! **Pipeline.** A real `berth serve` (child process, SQLite) with one pool
//! of `concurrency` runners. `concurrency` drivers each queue a job on the
//! simulator, which sends the signed `workflow_job` webhook to berth; the
//! next job is queued when a container is removed. Everything between is
//! berth's: intake, queue, claim, JIT config over the REST API, create,
//! stdin delivery, start, Docker events, exit handling, log capture,
//! removal.
//!
//! **Timestamps.** Docker's events (`start`, `die`, `destroy`, daemon
//! clock) for both ways. "Webhook received" is the job's `created_at` in
//! berth's store (stamped at intake, right after the signature check);
//! the baseline's counterpart is the moment before its create call.
//!
//! **Tracked jobs.** Before the pipeline runs, `track` jobs are delivered
//! for a second, parked pool whose one runner slot never frees (its JIT
//! config request hangs in the simulator): they stay queued in berth's store, so
//! `berth serve` tracks `track` live jobs plus the pipeline's while its
//! peak RSS is read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::Docker;
use bollard::container::AttachContainerResults;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use ghsim::{FaultKind, FaultRule, JitRequest, JobSpec, SimHandle, WebhookTarget};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};

use super::{Machine, Percentiles, ServeChild, ms_between, toml_str};
use crate::context::LABEL_INSTANCE;
use crate::demo::standin::{self, HOST_ALIAS};
use crate::docker::controller::LABEL_JOB;
use crate::docker::worker_image;
use crate::docker::{ContainerEventKind, Controller, WorkerNetwork, WorkerSpec};
use crate::store::{JobFilter, JobState, Store};

/// The Docker network both ways use.
const NETWORK: &str = "berth-bench";
/// The parked pool's repository and labels.
const PARKED_REPOSITORY: &str = "acme/parked";
const PARKED_LABELS: [&str; 2] = ["self-hosted", "parked"];
/// Container limits of both ways (the demo's pool).
const CPUS: f64 = 1.0;
const MEMORY_BYTES: u64 = 256 << 20;
const PIDS_LIMIT: i64 = 512;

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub jobs: usize,
    pub concurrency: usize,
    /// Rounds the jobs are split into, each running both ways, alternating
    /// which goes first.
    pub rounds: usize,
    pub track: usize,
    pub json: Option<PathBuf>,
    pub berth: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub bench: &'static str,
    pub machine: Machine,
    pub jobs: usize,
    pub concurrency: usize,
    pub raw_docker: RawFigures,
    pub pipeline: PipelineFigures,
    /// Pipeline throughput over raw Docker's.
    pub throughput_ratio: f64,
    pub serve: ServeFigures,
    /// Containers of either way still there at the end (removed then).
    pub containers_left: usize,
    pub targets: PipelineTargets,
}

#[derive(Debug, Clone, Serialize)]
pub struct RawFigures {
    /// Containers that exited 0 and were removed.
    pub succeeded: usize,
    pub failed: usize,
    pub wall_seconds: f64,
    pub jobs_per_second: f64,
    /// Before the create call → Docker's `start` event.
    pub create_to_running_ms: Percentiles,
    /// `start` → `die`.
    pub running_to_exited_ms: Percentiles,
    /// `die` → `destroy`.
    pub exited_to_removed_ms: Percentiles,
    /// Minting the JIT runner config in the simulator (before the create
    /// call, so not in `create_to_running_ms`; berth's pipeline pays it
    /// between the webhook and the start, over the REST API).
    pub jit_mint_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineFigures {
    /// Jobs `completed` with GitHub's conclusion `success`.
    pub succeeded: usize,
    pub failed: usize,
    pub wall_seconds: f64,
    pub jobs_per_second: f64,
    /// Job `created_at` (webhook accepted) → its container's `start` event.
    pub webhook_to_running_ms: Percentiles,
    /// `start` → `die` (the runner finished the job and exited).
    pub running_to_done_ms: Percentiles,
    /// `die` → `destroy`.
    pub done_to_removed_ms: Percentiles,
    /// `die` → the job's worker slot free in the store: berth's record of
    /// the exit (`exited_at`), or, where a berth has none, the job's end
    /// (`finished_at`), which freed the slot before the exit was recorded
    /// on its own. The raw baseline's counterpart is `die` → `destroy`
    /// (its slot is free once the container is removed).
    pub exited_to_slot_free_ms: Percentiles,
    /// Where berth's hand-offs spent their time, from its own log.
    pub handoff: HandoffFigures,
}

/// The fields of berth's `worker container running` log line, per job of
/// the measured pool: berth's queue, then the runner and the container made
/// side by side, then one commit and Docker's attach and start.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HandoffFigures {
    /// Intake (or requeue) → claim.
    pub claim_wait_ms: Percentiles,
    /// Runner named and minted (GitHub round trip).
    pub runner_ms: Percentiles,
    /// Container created (Docker).
    pub container_ms: Percentiles,
    /// Runner and container recorded (one commit).
    pub record_ms: Percentiles,
    /// Attach and start (Docker), JIT config written.
    pub start_ms: Percentiles,
}

impl HandoffFigures {
    /// Reads the `worker container running` lines of `pool` in berth's
    /// JSON log.
    fn from_log(log: &str, pool: &str) -> Self {
        let mut fields: [Vec<f64>; 5] = Default::default();
        const NAMES: [&str; 5] = [
            "claim_wait_ms",
            "runner_ms",
            "container_ms",
            "record_ms",
            "start_ms",
        ];
        for line in log.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let entry = entry.get("fields").unwrap_or(&entry);
            if entry["message"] != "worker container running" || entry["pool"] != pool {
                continue;
            }
            for (samples, name) in fields.iter_mut().zip(NAMES) {
                if let Some(ms) = entry[name].as_f64() {
                    samples.push(ms);
                }
            }
        }
        let [claim_wait, runner, container, record, start] = fields.map(|f| Percentiles::of(&f));
        HandoffFigures {
            claim_wait_ms: claim_wait,
            runner_ms: runner,
            container_ms: container,
            record_ms: record,
            start_ms: start,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServeFigures {
    /// CPU seconds (user + system) while the pipeline ran.
    pub cpu_seconds_pipeline: f64,
    /// CPU milliseconds per pipeline job.
    pub cpu_ms_per_job: f64,
    /// CPU seconds over the process's life (start-up and parking included).
    pub cpu_seconds_total: f64,
    /// Peak resident set size (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// Jobs in berth's store at the end: the pipeline's plus the parked ones.
    pub jobs_tracked: u64,
    /// Of those, live (not finished): the parked pool's.
    pub jobs_live: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineTargets {
    /// Pipeline throughput ≥ 0.9 × raw Docker.
    pub throughput_ratio_at_least_0_9: bool,
    /// Webhook → running p95 ≤ raw create → running p95 + 15 ms.
    pub webhook_to_running_p95_within_15_ms: bool,
    /// Peak RSS ≤ 60 MiB with ≥ 1,000 jobs tracked.
    pub rss_at_most_60_mib_with_1000_jobs: bool,
}

impl PipelineReport {
    /// `Err` unless every job succeeded both ways and nothing was left.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.pipeline.succeeded != self.jobs || self.raw_docker.succeeded != self.jobs {
            bail!(
                "not every job succeeded: pipeline {}/{}, raw Docker {}/{}",
                self.pipeline.succeeded,
                self.jobs,
                self.raw_docker.succeeded,
                self.jobs
            );
        }
        if self.containers_left > 0 {
            bail!("{} containers were left behind", self.containers_left);
        }
        Ok(())
    }
}

/// Docker's timestamps of one container.
#[derive(Debug, Clone, Default)]
struct ContainerTimes {
    instance: String,
    job: String,
    start: Option<OffsetDateTime>,
    die: Option<OffsetDateTime>,
    destroy: Option<OffsetDateTime>,
}

type Timeline = Arc<Mutex<HashMap<String, ContainerTimes>>>;

pub async fn run(options: PipelineOptions) -> anyhow::Result<PipelineReport> {
    if options.jobs == 0 || options.concurrency == 0 {
        bail!("--jobs and --concurrency must be at least 1");
    }
    let berth = super::berth_binary(options.berth.as_deref())?;
    let say = |line: &str| eprintln!("berth bench pipeline: {line}");
    let docker_host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let docker = worker_image::connect(None).await?;
    let controller = Controller::connect(&docker_host, Duration::from_secs(60)).await?;
    controller.ensure_network(NETWORK).await?;
    let image = worker_image::ensure_local_worker_image(&docker).await?;
    let sim = standin::start_simulator(&docker).await?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let instance = format!("bench-{run_id}");
    let raw_instance = format!("bench-{run_id}-raw");

    // Docker's events for every berth-managed container, from now on.
    let timeline: Timeline = Arc::default();
    let (destroyed_tx, mut destroyed_rx) = mpsc::unbounded_channel::<String>();
    let events = {
        let mut stream = controller.events(Some(OffsetDateTime::now_utc()));
        let timeline = timeline.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                let mut timeline = timeline.lock().expect("timeline");
                let entry = timeline.entry(event.container_id.clone()).or_default();
                if let Some(i) = event.labels.get(LABEL_INSTANCE) {
                    entry.instance = i.clone();
                }
                if let Some(j) = event.labels.get(LABEL_JOB) {
                    entry.job = j.clone();
                }
                match event.kind {
                    ContainerEventKind::Start => entry.start = Some(event.time),
                    ContainerEventKind::Die { .. } => entry.die = Some(event.time),
                    ContainerEventKind::Destroy => {
                        entry.destroy = Some(event.time);
                        let _ = destroyed_tx.send(entry.instance.clone());
                    }
                    _ => {}
                }
            }
        })
    };

    let outcome = async {
        let dir = tempfile::tempdir()?;
        let secret = format!("bench-{:032x}", rand::random::<u128>());
        let addr = super::free_loopback_addr()?;
        let url = format!("http://{addr}");
        let config = write_config(
            dir.path(),
            &ConfigParams {
                addr,
                sim: &sim,
                image: &image.id,
                secret: &secret,
                instance: &instance,
                docker_host: &docker_host,
                concurrency: options.concurrency,
            },
        )?;
        let serve = ServeChild::start(&berth, &config, &url, &dir.path().join("serve.log")).await?;
        let webhooks = WebhookTarget {
            url: format!("{url}/v1/webhooks/github"),
            secret: Some(secret.clone()),
        };
        let result = async {
            park(&sim, &url, &secret, options.track).await?;
            let rounds = options.rounds.clamp(1, options.jobs);
            say(&format!(
                "{} jobs each way at concurrency {} in {rounds} interleaved rounds ({} parked jobs tracked)…",
                options.jobs, options.concurrency, options.track
            ));
            let mut raw = RawRun::default();
            let (mut pipeline_wall, mut pipeline_cpu, mut pipeline_done) = (0.0, 0.0, 0);
            for round in 0..rounds {
                // Jobs of this round, spread as evenly as the count allows.
                let jobs = options.jobs / rounds + usize::from(round < options.jobs % rounds);
                // Raw first in even rounds, berth first in odd ones, so a
                // machine that drifts (caches, other load) favours neither.
                for raw_turn in [round % 2 == 0, round % 2 == 1] {
                    if raw_turn {
                        // No webhooks to berth while the raw way runs.
                        sim.set_webhook(None);
                        let this = run_raw(&docker, &sim, &image.id, &raw_instance, raw.jobs.len(), jobs, options.concurrency).await?;
                        raw.absorb(this);
                        // Let the last events arrive.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        drain(&mut destroyed_rx);
                        cancel_leftover_jobs(&sim);
                    } else {
                        sim.set_webhook(Some(webhooks.clone()));
                        let before = serve.usage()?;
                        pipeline_done += jobs;
                        pipeline_wall += run_pipeline(
                            &sim,
                            &instance,
                            jobs,
                            pipeline_done,
                            options.concurrency,
                            &mut destroyed_rx,
                            &dir.path().join("berth.db"),
                        )
                        .await?;
                        pipeline_cpu += serve.usage()?.cpu_seconds - before.cpu_seconds;
                    }
                }
            }
            let after = serve.usage()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let raw_figures = raw_figures(&raw, &timeline, &raw_instance);
            let store = Store::connect(&format!(
                "sqlite://{}",
                dir.path().join("berth.db").display()
            ))
            .await?;
            let figures =
                pipeline_figures(&store, &timeline, &instance, options.jobs, pipeline_wall).await?;
            let counts = store.job_counts().await?;
            store.close().await;
            let jobs_tracked: u64 = counts.iter().map(|c| c.count as u64).sum();
            let jobs_live: u64 = counts
                .iter()
                .filter(|c| !c.state.is_terminal())
                .map(|c| c.count as u64)
                .sum();
            let serve_figures = ServeFigures {
                cpu_seconds_pipeline: pipeline_cpu,
                cpu_ms_per_job: pipeline_cpu * 1000.0 / options.jobs as f64,
                cpu_seconds_total: after.cpu_seconds,
                peak_rss_mib: after.peak_rss_mib,
                jobs_tracked,
                jobs_live,
            };
            anyhow::Ok((raw_figures, figures, serve_figures))
        }
        .await;
        if result.is_err() {
            eprintln!("{}", serve.log_tail());
        }
        serve.stop().await;
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        result.map(|(raw, mut pipeline, serve)| {
            pipeline.handoff = HandoffFigures::from_log(&log, "linux");
            (raw, pipeline, serve)
        })
    }
    .await;

    let left = leftovers(&controller, &[&instance, &raw_instance]).await;
    events.abort();
    sim.shutdown();
    let (raw_docker, pipeline, serve) = outcome?;

    let throughput_ratio = pipeline.jobs_per_second / raw_docker.jobs_per_second.max(1e-9);
    let targets = PipelineTargets {
        throughput_ratio_at_least_0_9: throughput_ratio >= 0.9,
        webhook_to_running_p95_within_15_ms: pipeline.webhook_to_running_ms.p95
            <= raw_docker.create_to_running_ms.p95 + 15.0,
        rss_at_most_60_mib_with_1000_jobs: serve.peak_rss_mib <= 60.0 && serve.jobs_tracked >= 1000,
    };
    let report = PipelineReport {
        bench: "pipeline",
        machine: Machine::here(),
        jobs: options.jobs,
        concurrency: options.concurrency,
        raw_docker,
        pipeline,
        throughput_ratio,
        serve,
        containers_left: left,
        targets,
    };
    print_report(&report);
    if let Some(path) = &options.json {
        super::write_json(path, &report)?;
    }
    Ok(report)
}

/// One raw-Docker job: when its create call was made, its container, and
/// whether it exited 0.
struct RawJob {
    mint_ms: f64,
    requested: OffsetDateTime,
    container_id: String,
    exit_code: i64,
}

#[derive(Default)]
struct RawRun {
    jobs: Vec<RawJob>,
    failures: usize,
    wall_seconds: f64,
}

impl RawRun {
    /// Adds a round's jobs and wall time to the run's.
    fn absorb(&mut self, round: RawRun) {
        self.jobs.extend(round.jobs);
        self.failures += round.failures;
        self.wall_seconds += round.wall_seconds;
    }
}

async fn run_raw(
    docker: &Docker,
    sim: &SimHandle,
    image: &str,
    instance: &str,
    first: usize,
    jobs: usize,
    concurrency: usize,
) -> anyhow::Result<RawRun> {
    let next = Arc::new(AtomicUsize::new(first));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (docker, sim, next) = (docker.clone(), sim.clone(), next.clone());
        let (image, instance) = (image.to_owned(), instance.to_owned());
        let total = first + jobs;
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut failures = 0;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return (done, failures);
                }
                match raw_job(&docker, &sim, &image, &instance, n).await {
                    Ok(job) => done.push(job),
                    Err(e) => {
                        eprintln!("berth bench pipeline: raw job {n} failed: {e:#}");
                        failures += 1;
                    }
                }
            }
        }));
    }
    let mut jobs = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (done, failed) = worker.await?;
        jobs.extend(done);
        failures += failed;
    }
    Ok(RawRun {
        jobs,
        failures,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The worker spec berth builds for the bench pool (see
/// `dispatch::spec::worker_spec`), for the raw way.
fn raw_spec(image: &str, instance: &str, name: &str) -> WorkerSpec {
    let mut spec = WorkerSpec::new(name, image, WorkerNetwork::Bridge(NETWORK.into()));
    spec.labels.extend([
        (LABEL_JOB.to_owned(), uuid::Uuid::now_v7().to_string()),
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
        (
            crate::docker::controller::LABEL_POOL.to_owned(),
            "linux".to_owned(),
        ),
        (
            crate::docker::controller::LABEL_REPOSITORY.to_owned(),
            standin::REPOSITORY.to_owned(),
        ),
    ]);
    spec.cpus = CPUS;
    spec.memory_bytes = MEMORY_BYTES as i64;
    spec.pids_limit = PIDS_LIMIT;
    spec.read_only_rootfs = true;
    spec.work_folder = "/home/runner/_work".into();
    spec.extra_hosts = vec![format!("{HOST_ALIAS}:host-gateway")];
    spec
}

async fn raw_job(
    docker: &Docker,
    sim: &SimHandle,
    image: &str,
    instance: &str,
    n: usize,
) -> anyhow::Result<RawJob> {
    sim.queue_job(one_step_job())?;
    let name = format!("berth-{instance}-{n}");
    let minting = Instant::now();
    let (_, jit) = sim.create_jit_runner(JitRequest {
        scope: standin::ORG.into(),
        name: format!("bench-raw-{n}-{:08x}", rand::random::<u32>()),
        labels: standin::RUNS_ON.iter().map(|s| s.to_string()).collect(),
        work_folder: None,
    })?;
    let mint_ms = minting.elapsed().as_secs_f64() * 1000.0;
    let body = raw_spec(image, instance, &name).create_body()?;
    let requested = OffsetDateTime::now_utc();
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            body,
        )
        .await?;
    let id = created.id;
    // Attach and start at once, as berth's controller does: the baseline
    // gets every trick the pipeline uses.
    let attach = docker.attach_container(
        &id,
        Some(AttachContainerOptions {
            stdin: true,
            stream: true,
            ..Default::default()
        }),
    );
    let (AttachContainerResults { output, mut input }, ()) =
        tokio::try_join!(attach, docker.start_container(&id, None))?;
    input.write_all(jit.as_bytes()).await?;
    input.write_all(b"\n").await?;
    input.shutdown().await?;
    drop(output);
    let exit_code = match docker
        .wait_container(
            &id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        )
        .next()
        .await
    {
        Some(Ok(answer)) => answer.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        Some(Err(e)) => return Err(e.into()),
        None => bail!("the wait ended without an exit code"),
    };
    docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            }),
        )
        .await?;
    Ok(RawJob {
        mint_ms,
        requested,
        container_id: id,
        exit_code,
    })
}

fn one_step_job() -> JobSpec {
    JobSpec {
        repository: standin::REPOSITORY.into(),
        labels: standin::RUNS_ON.iter().map(|s| s.to_string()).collect(),
        steps: vec!["true".into()],
        workflow_name: Some("bench".into()),
        ..JobSpec::default()
    }
}

fn raw_figures(raw: &RawRun, timeline: &Timeline, instance: &str) -> RawFigures {
    let timeline = timeline.lock().expect("timeline");
    let (mut to_running, mut running, mut removing) = (Vec::new(), Vec::new(), Vec::new());
    for job in &raw.jobs {
        if let Some(t) = timeline.get(&job.container_id) {
            debug_assert_eq!(t.instance, instance);
            if let Some(start) = t.start {
                to_running.push(ms_between(job.requested, start));
                if let Some(die) = t.die {
                    running.push(ms_between(start, die));
                    if let Some(destroy) = t.destroy {
                        removing.push(ms_between(die, destroy));
                    }
                }
            }
        }
    }
    let succeeded = raw.jobs.iter().filter(|j| j.exit_code == 0).count();
    RawFigures {
        succeeded,
        failed: raw.failures + raw.jobs.len() - succeeded,
        wall_seconds: raw.wall_seconds,
        jobs_per_second: succeeded as f64 / raw.wall_seconds,
        create_to_running_ms: Percentiles::of(&to_running),
        running_to_exited_ms: Percentiles::of(&running),
        exited_to_removed_ms: Percentiles::of(&removing),
        jit_mint_ms: Percentiles::of(&raw.jobs.iter().map(|j| j.mint_ms).collect::<Vec<_>>()),
    }
}

/// Jobs the raw way queued but no runner took (only after a failure):
/// cancelled, so that the pipeline's runners do not take them.
fn cancel_leftover_jobs(sim: &SimHandle) {
    for job in sim.jobs() {
        if job.status == "queued" {
            let _ = sim.cancel_job(job.id);
        }
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<String>) {
    while rx.try_recv().is_ok() {}
}

struct ConfigParams<'a> {
    addr: std::net::SocketAddr,
    sim: &'a SimHandle,
    image: &'a str,
    secret: &'a str,
    instance: &'a str,
    docker_host: &'a str,
    concurrency: usize,
}

fn write_config(dir: &Path, p: &ConfigParams<'_>) -> anyhow::Result<PathBuf> {
    let key = dir.join("app.pem");
    std::fs::write(&key, p.sim.app_private_key_pem()).context("writing the App key")?;
    let text = format!(
        r#"[server]
listen = {listen}
[store]
url = {store}
[github]
api_url = {api}
app_id = {app_id}
private_key_path = {key}
webhook_secret = {secret}
request_timeout = 3600
[docker]
host = {docker}
network = {network}
instance = {instance}
extra_hosts = [{extra_host}]
[dispatch]
global_max_runners = {global}
[reconcile]
interval = 30
orphan_grace = 60
[logs]
# `info`: the bench reads each hand-off's breakdown from the
# "worker container running" lines.
level = "info"

[[pool]]
name = "linux"
scope = "org:{org}"
labels = ["self-hosted", "linux"]
image = {image}
pull_policy = "never"
max_runners = {concurrency}
cpus = {cpus:.1}
memory = "{memory}"
pids_limit = {pids}
read_only_rootfs = true
job_timeout = 120

[[pool]]
name = "parked"
scope = "repo:{parked_repo}"
labels = ["self-hosted", "parked"]
image = {image}
pull_policy = "never"
max_runners = 1
"#,
        listen = toml_str(&p.addr.to_string()),
        store = toml_str(&format!("sqlite://{}", dir.join("berth.db").display())),
        api = toml_str(&p.sim.api_url()),
        app_id = p.sim.app_id(),
        key = toml_str(&key.display().to_string()),
        secret = toml_str(p.secret),
        docker = toml_str(p.docker_host),
        network = toml_str(NETWORK),
        instance = toml_str(p.instance),
        extra_host = toml_str(&format!("{HOST_ALIAS}:host-gateway")),
        global = p.concurrency + 1,
        org = standin::ORG,
        image = toml_str(p.image),
        concurrency = p.concurrency,
        cpus = CPUS,
        memory = format_args!("{}m", MEMORY_BYTES >> 20),
        pids = PIDS_LIMIT,
        parked_repo = PARKED_REPOSITORY,
    );
    let path = dir.join("berth.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Delivers `n` jobs for the parked pool straight to berth's webhook
/// endpoint (signed), after making their JIT config requests hang, and
/// waits until berth has them all.
async fn park(sim: &SimHandle, url: &str, secret: &str, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    // Only the JIT config request hangs: berth's reconcilers also ask
    // GitHub about this repository (its runners, its installation), and a
    // reconcile pass stuck on a hanging call would stall every repair.
    let mut hang = FaultRule::new(FaultKind::Slow);
    hang.delay_ms = Some(3_600_000);
    hang.path_prefix = Some(format!(
        "/repos/{PARKED_REPOSITORY}/actions/runners/generate-jitconfig"
    ));
    sim.add_fault(hang);
    let client = reqwest::Client::new();
    let base = 7_000_000_000_i64 + i64::from(rand::random::<u16>()) * 100_000;
    let endpoint = format!("{url}/v1/webhooks/github");
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let body =
                super::workflow_job_queued(base + i as i64, PARKED_REPOSITORY, &PARKED_LABELS);
            let request = client
                .post(&endpoint)
                .header("x-github-event", "workflow_job")
                .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
                .header("x-hub-signature-256", super::sign(secret, &body))
                .header("content-type", "application/json")
                .body(body);
            async move {
                let response = request.send().await?;
                if response.status() != reqwest::StatusCode::ACCEPTED {
                    bail!("a parked delivery was answered {}", response.status());
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}

/// Queues `jobs` one-step jobs on the simulator, at most `concurrency`
/// whose container is not yet removed, and returns the wall time from the
/// first queued to the last removed. Ends when every job is finished in
/// berth's store.
/// Runs `jobs` more jobs through berth; returns the round's wall time once
/// `total` jobs (this round's and earlier rounds') are finished in its store.
async fn run_pipeline(
    sim: &SimHandle,
    instance: &str,
    jobs: usize,
    total: usize,
    concurrency: usize,
    destroyed: &mut mpsc::UnboundedReceiver<String>,
    db: &Path,
) -> anyhow::Result<f64> {
    let limit = Duration::from_secs(120 + (jobs as u64 * 10) / concurrency as u64);
    let deadline = tokio::time::Instant::now() + limit;
    let slots = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut last_removed = started;
    let mut removed = 0;
    let mut queued = 0;
    let store = Store::connect(&format!("sqlite://{}", db.display())).await?;
    let mut finished_check = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        if started.elapsed() > limit {
            break Err(anyhow::anyhow!(
                "the pipeline did not finish within {limit:?} ({removed} containers removed)"
            ));
        }
        tokio::select! {
            // Wakes the loop to give up even when nothing else happens.
            _ = tokio::time::sleep_until(deadline) => {}
            permit = slots.clone().acquire_owned(), if queued < jobs => {
                permit?.forget();
                sim.queue_job(one_step_job())?;
                queued += 1;
            }
            Some(which) = destroyed.recv() => {
                if which == instance {
                    removed += 1;
                    last_removed = Instant::now();
                    slots.add_permits(1);
                }
            }
            _ = finished_check.tick(), if queued == jobs && removed >= jobs => {
                let done = store
                    .job_list(&JobFilter {
                        pool: Some("linux".into()),
                        ..JobFilter::default()
                    })
                    .await?;
                if done.len() >= total && done.iter().all(|j| j.state.is_terminal()) {
                    break Ok((last_removed - started).as_secs_f64());
                }
            }
        }
    };
    store.close().await;
    result
}

async fn pipeline_figures(
    store: &Store,
    timeline: &Timeline,
    instance: &str,
    jobs: usize,
    wall_seconds: f64,
) -> anyhow::Result<PipelineFigures> {
    let rows = store
        .job_list(&JobFilter {
            pool: Some("linux".into()),
            ..JobFilter::default()
        })
        .await?;
    let timeline = timeline.lock().expect("timeline");
    // The container each job last ran in (a job can get a second one if
    // GitHub gave its first runner another job).
    let mut slot_free = Vec::new();
    let mut by_job: HashMap<&str, &ContainerTimes> = HashMap::new();
    for t in timeline.values().filter(|t| t.instance == instance) {
        let newer = by_job
            .get(t.job.as_str())
            .is_none_or(|seen| seen.start < t.start);
        if newer {
            by_job.insert(t.job.as_str(), t);
        }
    }
    let (mut to_running, mut running, mut removing) = (Vec::new(), Vec::new(), Vec::new());
    for job in &rows {
        let Some(t) = by_job.get(job.id.to_string().as_str()) else {
            continue;
        };
        if let Some(start) = t.start {
            to_running.push(ms_between(job.created_at, start));
            if let Some(die) = t.die {
                running.push(ms_between(start, die));
                if let Some(destroy) = t.destroy {
                    removing.push(ms_between(die, destroy));
                }
                if let Some(freed) = job.exited_at.or(job.finished_at) {
                    slot_free.push(ms_between(die, freed));
                }
            }
        }
    }
    let succeeded = rows
        .iter()
        .filter(|j| {
            j.state == JobState::Completed && j.github_conclusion.as_deref() == Some("success")
        })
        .count();
    Ok(PipelineFigures {
        succeeded,
        failed: jobs.saturating_sub(succeeded),
        wall_seconds,
        jobs_per_second: succeeded as f64 / wall_seconds,
        webhook_to_running_ms: Percentiles::of(&to_running),
        running_to_done_ms: Percentiles::of(&running),
        done_to_removed_ms: Percentiles::of(&removing),
        exited_to_slot_free_ms: Percentiles::of(&slot_free),
        handoff: HandoffFigures::default(),
    })
}

/// Counts, then removes, containers of these instances still there.
async fn leftovers(controller: &Controller, instances: &[&str]) -> usize {
    let mut left = 0;
    for c in controller.list_managed().await.unwrap_or_default() {
        let ours = c
            .labels
            .get(LABEL_INSTANCE)
            .is_some_and(|i| instances.contains(&i.as_str()));
        if ours {
            left += 1;
            let _ = controller.remove(&c.id).await;
        }
    }
    left
}

fn print_report(r: &PipelineReport) {
    println!(
        "\nberth bench pipeline: {} jobs each way at concurrency {}, {} CPUs ({})",
        r.jobs, r.concurrency, r.machine.cpus, r.machine.cpu_model
    );
    println!(
        "{:<12} {:>9} {:>8} {:>8}   {:<24} {:>8} {:>8} {:>8}",
        "way", "succeeded", "wall s", "jobs/s", "phase (ms)", "p50", "p95", "p99"
    );
    let phases = |name: &str, ok: usize, wall: f64, rate: f64, rows: [(&str, Percentiles); 3]| {
        for (i, (phase, p)) in rows.iter().enumerate() {
            if i == 0 {
                print!("{name:<12} {ok:>9} {wall:>8.2} {rate:>8.2}   ");
            } else {
                print!("{:<12} {:>9} {:>8} {:>8}   ", "", "", "", "");
            }
            println!("{phase:<24} {:>8.1} {:>8.1} {:>8.1}", p.p50, p.p95, p.p99);
        }
    };
    let raw = &r.raw_docker;
    phases(
        "raw Docker",
        raw.succeeded,
        raw.wall_seconds,
        raw.jobs_per_second,
        [
            ("create → running", raw.create_to_running_ms),
            ("running → exited", raw.running_to_exited_ms),
            ("exited → removed", raw.exited_to_removed_ms),
        ],
    );
    let p = &r.pipeline;
    phases(
        "berth",
        p.succeeded,
        p.wall_seconds,
        p.jobs_per_second,
        [
            ("webhook → running", p.webhook_to_running_ms),
            ("running → job done", p.running_to_done_ms),
            ("job done → removed", p.done_to_removed_ms),
        ],
    );
    println!(
        "{:<40} {:<24} {:>8.1} {:>8.1} {:>8.1}",
        "",
        "(berth: exited → slot free)",
        p.exited_to_slot_free_ms.p50,
        p.exited_to_slot_free_ms.p95,
        p.exited_to_slot_free_ms.p99
    );
    println!(
        "{:<40} {:<24} {:>8.1} {:>8.1} {:>8.1}",
        "",
        "(raw: JIT mint, simulator)",
        raw.jit_mint_ms.p50,
        raw.jit_mint_ms.p95,
        raw.jit_mint_ms.p99
    );
    let h = &p.handoff;
    for (phase, q) in [
        ("(berth: claim wait)", h.claim_wait_ms),
        ("(runner named, minted)", h.runner_ms),
        ("(container created)", h.container_ms),
        ("(both recorded)", h.record_ms),
        ("(attach and start)", h.start_ms),
    ] {
        println!(
            "{:<40} {:<24} {:>8.1} {:>8.1} {:>8.1}",
            "", phase, q.p50, q.p95, q.p99
        );
    }
    println!(
        "throughput ratio (berth / raw Docker): {:.3}",
        r.throughput_ratio
    );
    println!(
        "berth serve: {:.2} CPU s for the pipeline ({:.1} ms per job), {:.2} CPU s in all; peak RSS {:.1} MiB with {} jobs tracked ({} live)",
        r.serve.cpu_seconds_pipeline,
        r.serve.cpu_ms_per_job,
        r.serve.cpu_seconds_total,
        r.serve.peak_rss_mib,
        r.serve.jobs_tracked,
        r.serve.jobs_live
    );
    println!("containers left behind: {}", r.containers_left);
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    let t = &r.targets;
    println!(
        "targets: throughput ≥ 0.9× {}; webhook→running p95 ≤ raw + 15 ms {}; RSS ≤ 60 MiB with ≥1,000 jobs {}",
        mark(t.throughput_ratio_at_least_0_9),
        mark(t.webhook_to_running_p95_within_15_ms),
        mark(t.rss_at_most_60_mib_with_1000_jobs)
    );
}
