//! `berth bench hook`: what the container hook costs, against the same
//! Docker work done directly, in the same run.
//!
//! One job of a `container_jobs` pool is put in the store as running (its
//! runner named, a hook credential issued), and berth's HTTP API serves it
//! on loopback. Then, alternating so that both see the same machine:
//!
//! - **prepare**: `berth hook` (a real process of this binary, as the
//!   runner starts it) runs `prepare_job` for a job container and one
//!   service with a health check, until both are ready; against the same
//!   network and containers made straight through the Docker API, until the
//!   service is healthy;
//! - **step**: `berth hook` runs `run_script_step` (`sh -c true` in the job
//!   container, output streamed back, exit code returned); against the same
//!   `docker exec` straight through the Docker API.
//!
//! The job container and service use the local worker image (`sh`, `tail`,
//! busybox `httpd`), never pulled. Everything made is removed at the end.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig};
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Role};
use crate::docker::controller::{Controller, LABEL_MANAGED};
use crate::store::{JobChanges, JobSource, JobState, NewJob, Placement, PlacementHost};

/// What to measure.
#[derive(Debug, Clone)]
pub struct HookOptions {
    /// Steps through each path.
    pub steps: usize,
    /// `prepare_job` runs through each path.
    pub prepares: usize,
    /// Write the report as JSON here too.
    pub json: Option<PathBuf>,
}

/// Percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Spread {
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

fn spread(mut ms: Vec<f64>) -> Spread {
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Spread {
        n: ms.len(),
        p50_ms: at(0.5),
        p95_ms: at(0.95),
        max_ms: *ms.last().unwrap_or(&0.0),
    }
}

/// The report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookReport {
    pub step_hook: Spread,
    pub step_direct: Spread,
    pub prepare_hook: Spread,
    pub prepare_direct: Spread,
}

const INSTANCE: &str = "berth-bench-hook";
const NETWORK: &str = "berth-bench-hook";
const HEALTH: &str = "wget -q -O /dev/null http://127.0.0.1:8080/run.sh";

/// Runs the benchmark and prints its report.
pub async fn run(options: HookOptions) -> anyhow::Result<()> {
    if options.steps == 0 || options.prepares == 0 {
        bail!("--steps and --prepares must be at least 1");
    }
    let docker_api = crate::docker::worker_image::connect(None).await?;
    let image = crate::docker::worker_image::ensure_local_worker_image(&docker_api).await?;
    let tag = image.reference.clone();
    let dir = tempfile::tempdir()?;
    let sim = ghsim::Simulator::start(
        ghsim::SimConfig::default(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    )?;
    let key = dir.path().join("app.pem");
    std::fs::write(&key, sim.app_private_key_pem())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let docker_host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
worker_url = "{url}"
[store]
url = "sqlite://{db}"
[github]
api_url = "{api}"
app_id = {app_id}
private_key_path = "{key}"
[docker]
host = "{docker_host}"
network = "{NETWORK}"
instance = "{INSTANCE}"
[[pool]]
name = "bench"
scope = "org:acme"
labels = ["self-hosted", "bench"]
image = "{tag}"
pull_policy = "never"
container_jobs = true
[pool.containers]
images = ["berth-worker-local:*"]
pull_policy = "never"
cpus = 1
memory = "256m"
"#,
        db = dir.path().join("bench.db").display(),
        api = sim.api_url(),
        app_id = sim.app_id(),
        key = key.display(),
    );
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, text)?;
    let config = Config::load(Some(&path), Vec::<(String, String)>::new(), Role::Serve)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .config;
    let ctx = crate::service::build(config, None).await?;
    let docker = ctx.fleet.first().docker.clone();
    docker.ensure_network(NETWORK).await?;

    // The job, as the dispatcher leaves it once its worker runs.
    let now = ctx.store.now();
    ctx.store.hosts_register(&["default".to_owned()]).await?;
    ctx.store
        .host_probe_ok("default", "bench", None, now)
        .await?;
    let (job, _) = ctx
        .store
        .job_insert(NewJob {
            github_job_id: 1,
            run_id: 1,
            repository: "acme/bench".into(),
            workflow: None,
            job_name: None,
            labels: vec!["self-hosted".into(), "bench".into()],
            pool: "bench".into(),
            source: JobSource::Webhook,
            scale_set: None,
            github_status: None,
            timeout_secs: None,
        })
        .await?;
    let hosts = [PlacementHost {
        name: "default".into(),
        slots: 10,
        weight: 1.0,
        ordinal: 0,
    }];
    ctx.store
        .job_claim(
            "bench",
            10,
            10,
            Placement {
                hosts: &hosts,
                pack: false,
                slots_per_job: 1,
            },
            "bench",
            now + time::Duration::hours(1),
            now,
        )
        .await?
        .context("the bench job could not be claimed")?;
    let runner = format!("berth-bench-{}", &job.id.simple().to_string()[20..]);
    for (from, to, changes) in [
        (
            JobState::Provisioning,
            JobState::Provisioning,
            JobChanges::new().runner_name(&runner),
        ),
        (
            JobState::Provisioning,
            JobState::Starting,
            JobChanges::new(),
        ),
        (JobState::Starting, JobState::Running, JobChanges::new()),
    ] {
        ctx.store
            .job_transition(job.id, &[from], to, changes)
            .await?;
    }
    let credential = crate::container_jobs::credential::issue(&ctx, &runner).await?;
    let shutdown = CancellationToken::new();
    let api = tokio::spawn(crate::api::serve(ctx.clone(), listener, shutdown.clone()));

    let hook = Hook {
        berth: std::env::current_exe()?,
        url: url.clone(),
        credential,
    };
    let result = measure(&options, &hook, &docker, &tag, &runner).await;
    // Whatever happened, nothing stays.
    let _ = hook.call("cleanup_job", json!({})).await;
    crate::container_jobs::runtime::remove_objects(&ctx, &docker, &runner, true).await;
    remove_direct(&docker).await;
    let _ = docker.network_remove(NETWORK).await;
    shutdown.cancel();
    let _ = api.await;
    let report = result?;
    print(&report);
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

struct Hook {
    berth: PathBuf,
    url: String,
    credential: String,
}

impl Hook {
    /// Runs `berth hook` as the runner does: input on stdin; returns its
    /// exit code.
    async fn call(&self, command: &str, args: serde_json::Value) -> anyhow::Result<i32> {
        let response = tempfile::NamedTempFile::new()?;
        let input = json!({
            "command": command,
            "responseFile": response.path(),
            "args": args,
            "state": {},
        });
        let mut child = tokio::process::Command::new(&self.berth)
            .arg("hook")
            .env("BERTH_HOOK_URL", &self.url)
            .env("BERTH_HOOK_TOKEN", &self.credential)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(input.to_string().as_bytes()).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        let code = out.status.code().unwrap_or(-1);
        if code != 0 {
            bail!(
                "berth hook {command} exited {code}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(code)
    }
}

fn elapsed_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

async fn measure(
    options: &HookOptions,
    hook: &Hook,
    docker: &Controller,
    tag: &str,
    runner: &str,
) -> anyhow::Result<HookReport> {
    let prepare_args = json!({
        "container": {"image": tag, "environmentVariables": {}},
        "services": [{
            "contextName": "web",
            "image": tag,
            "entryPoint": "/bin/busybox",
            "entryPointArgs": ["httpd", "-f", "-p", "8080", "-h", "/home/runner"],
            "createOptions": format!("--health-cmd \"{HEALTH}\" --health-interval 100ms --health-retries 50"),
        }],
    });
    let (mut prepare_hook, mut prepare_direct) = (Vec::new(), Vec::new());
    for round in 0..options.prepares {
        for hook_first in [round % 2 == 0, round % 2 != 0] {
            if hook_first {
                let t = Instant::now();
                hook.call("prepare_job", prepare_args.clone()).await?;
                prepare_hook.push(elapsed_ms(t));
                hook.call("cleanup_job", json!({})).await?;
            } else {
                let t = Instant::now();
                prepare_directly(docker, tag).await?;
                prepare_direct.push(elapsed_ms(t));
                remove_direct(docker).await;
            }
        }
    }
    // Steps: one job container through the hook, one made directly.
    hook.call(
        "prepare_job",
        json!({"container": {"image": tag}, "services": []}),
    )
    .await?;
    let direct_container = start_direct_job(docker, tag).await?;
    let _ = runner;
    let step_args = json!({
        "entryPoint": "sh",
        "entryPointArgs": ["-c", "true"],
        "environmentVariables": {"CI": "true"},
        "prependPath": [],
        "workingDirectory": "/",
    });
    let (mut step_hook, mut step_direct) = (Vec::new(), Vec::new());
    for i in 0..options.steps {
        for hook_first in [i % 2 == 0, i % 2 != 0] {
            let t = Instant::now();
            if hook_first {
                hook.call("run_script_step", step_args.clone()).await?;
                step_hook.push(elapsed_ms(t));
            } else {
                let (exec, mut output) = docker
                    .exec(
                        &direct_container,
                        vec!["sh".into(), "-c".into(), "true".into()],
                        vec!["CI=true".into()],
                        Some("/".into()),
                    )
                    .await?;
                while output.next().await.is_some() {}
                let code = docker.exec_exit_code(&exec).await?;
                if code != Some(0) {
                    bail!("the direct exec exited {code:?}");
                }
                step_direct.push(elapsed_ms(t));
            }
        }
    }
    Ok(HookReport {
        step_hook: spread(step_hook),
        step_direct: spread(step_direct),
        prepare_hook: spread(prepare_hook),
        prepare_direct: spread(prepare_direct),
    })
}

fn direct_labels() -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        ("berth.bench".to_owned(), "hook".to_owned()),
    ])
}

fn direct_body(tag: &str, network: &str, cmd: Vec<&str>, health: bool) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(tag.to_owned()),
        entrypoint: Some(vec![cmd[0].to_owned()]),
        cmd: Some(cmd[1..].iter().map(|s| s.to_string()).collect()),
        labels: Some(direct_labels()),
        healthcheck: health.then(|| HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), HEALTH.into()]),
            interval: Some(100_000_000),
            retries: Some(50),
            ..Default::default()
        }),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            nano_cpus: Some(1_000_000_000),
            memory: Some(256 << 20),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const DIRECT_NET: &str = "berth-bench-hook-direct";

/// The network, a service with its health check and a job container,
/// straight through the Docker API, until the service is healthy.
async fn prepare_directly(docker: &Controller, tag: &str) -> anyhow::Result<()> {
    docker
        .job_network_create(
            DIRECT_NET,
            &BTreeMap::from([("berth.bench".to_owned(), "hook".to_owned())]),
            true,
        )
        .await?;
    let service = docker
        .container_create(
            "berth-bench-hook-direct-web",
            direct_body(
                tag,
                DIRECT_NET,
                vec![
                    "/bin/busybox",
                    "httpd",
                    "-f",
                    "-p",
                    "8080",
                    "-h",
                    "/home/runner",
                ],
                true,
            ),
        )
        .await?;
    docker.container_start(&service).await?;
    let job = docker
        .container_create(
            "berth-bench-hook-direct-job",
            direct_body(tag, DIRECT_NET, vec!["tail", "-f", "/dev/null"], false),
        )
        .await?;
    docker.container_start(&job).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = docker.run_state(&service).await?;
        if state.health.as_deref() == Some("healthy") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the directly started service was not healthy within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn start_direct_job(docker: &Controller, tag: &str) -> anyhow::Result<String> {
    docker
        .job_network_create(
            DIRECT_NET,
            &BTreeMap::from([("berth.bench".to_owned(), "hook".to_owned())]),
            true,
        )
        .await?;
    let id = docker
        .container_create(
            "berth-bench-hook-direct-steps",
            direct_body(tag, DIRECT_NET, vec!["tail", "-f", "/dev/null"], false),
        )
        .await?;
    docker.container_start(&id).await?;
    Ok(id)
}

async fn remove_direct(docker: &Controller) {
    if let Ok(found) = docker
        .containers_labelled(&["berth.bench=hook".to_owned()])
        .await
    {
        for c in found {
            let _ = docker.remove(&c.id).await;
        }
    }
    let _ = docker.network_remove(DIRECT_NET).await;
}

fn print(r: &HookReport) {
    println!(
        "berth bench hook: a step and a prepare_job through `berth hook` against the same Docker work done directly"
    );
    println!(
        "{:<26} {:>5} {:>9} {:>9} {:>9}",
        "", "n", "p50 ms", "p95 ms", "max ms"
    );
    for (name, s) in [
        ("step, through the hook", &r.step_hook),
        ("step, docker exec direct", &r.step_direct),
        ("prepare, through the hook", &r.prepare_hook),
        ("prepare, direct", &r.prepare_direct),
    ] {
        println!(
            "{name:<26} {:>5} {:>9.1} {:>9.1} {:>9.1}",
            s.n, s.p50_ms, s.p95_ms, s.max_ms
        );
    }
    println!(
        "added by the hook per step: p50 {:+.1} ms, p95 {:+.1} ms (target: under 50 ms at p95); prepare_job: p50 ×{:.2}",
        r.step_hook.p50_ms - r.step_direct.p50_ms,
        r.step_hook.p95_ms - r.step_direct.p95_ms,
        r.prepare_hook.p50_ms / r.prepare_direct.p50_ms.max(0.001),
    );
}
