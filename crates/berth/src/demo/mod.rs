//! `berth demo`: the whole system on this machine, against the built-in
//! GitHub simulator, with nothing but a Docker engine.
//!
//! It builds the local worker image, starts the simulator where containers
//! can reach it, starts the orchestrator (`berth serve` in this process, on
//! SQLite in a temporary folder) with one pool, points the simulator's
//! webhooks at it, queues a handful of sample jobs as GitHub would, shows
//! each job's progress live, and ends with a summary. It exits 0 only when
//! every job succeeded and nothing (container, runner registration) was left
//! behind.

pub mod standin;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ghsim::{JobSpec, SimHandle, WebhookTarget};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PoolConfig, Scope, Secret};
use crate::context::Context;
use crate::docker::worker_image;
use crate::store::{Job, JobState};

pub use standin::{HOST_ALIAS, start_simulator};

/// The sample jobs: a name and its steps.
const SAMPLES: &[(&str, &[&str])] = &[
    (
        "hello",
        &["echo 'Hello from a fresh berth worker'", "uname -a"],
    ),
    (
        "build",
        &["echo compiling…", "sleep 1", "echo linking…", "echo built"],
    ),
    (
        "test",
        &["for i in 1 2 3 4 5; do echo \"test $i ok\"; done"],
    ),
    ("lint", &["echo 'no findings'"]),
    (
        "sandbox",
        &[
            "id",
            "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
            "test ! -e /var/run/docker.sock && echo 'no Docker socket here'",
        ],
    ),
];

const DEMO_LIMIT: Duration = Duration::from_secs(180);

/// Runs the demo; `Ok` only when every sample job succeeded.
pub async fn run() -> anyhow::Result<()> {
    let progress = crate::cli::progress::Progress::new();
    let say = |line: &str| progress.say(line);
    say("berth demo: sample jobs end to end against the built-in GitHub simulator");

    let docker = worker_image::connect(None).await?;
    let sources = tokio::task::spawn_blocking(worker_image::ImageSources::locate).await??;
    if let worker_image::Shell::HostTools(host) = &sources.shell {
        say(&format!(
            "no busybox ({}): using the host's own tools",
            host.instead_of_busybox
        ));
    }
    say(&format!(
        "building the local worker image (runner stand-in + {})…",
        sources.shell
    ));
    progress.status("building the local worker image");
    let image = worker_image::build_worker_image(&docker, &sources).await?;
    say(&format!(
        "worker image {} ({}), pinned as {}",
        image.reference,
        if image.built {
            "built"
        } else {
            "already present"
        },
        image.id
    ));
    let sim = start_simulator(&docker).await?;
    say(&format!(
        "GitHub simulator on {}; workers reach it as {}",
        sim.base_url(),
        sim.public_url()
    ));

    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let webhook_secret = format!("demo-{:032x}", rand::random::<u128>());
    let instance = format!("demo-{:08x}", rand::random::<u32>());
    let config = demo_config(&sim, &image.id, dir.path(), &webhook_secret, &instance);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let ctx = crate::service::build(config, None).await?;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(crate::service::run(ctx.clone(), listener, shutdown.clone()));
    sim.set_webhook(Some(WebhookTarget {
        url: format!("{url}/v1/webhooks/github"),
        secret: Some(webhook_secret),
    }));
    say(&format!(
        "berth serving on {url} (SQLite in {})",
        dir.path().display()
    ));

    let mut names = BTreeMap::new();
    for (name, steps) in SAMPLES {
        let queued = sim.queue_job(JobSpec {
            repository: format!("{}/widgets", standin::ORG),
            labels: standin::RUNS_ON.iter().map(|s| s.to_string()).collect(),
            steps: steps.iter().map(|s| (*s).into()).collect(),
            job_name: Some((*name).to_string()),
            workflow_name: Some("demo".into()),
            ..JobSpec::default()
        })?;
        names.insert(queued.id as i64, *name);
    }
    say(&format!(
        "queued {} jobs on GitHub; webhooks go to berth",
        names.len()
    ));

    let outcome = tokio::select! {
        outcome = follow(&ctx, &names, &progress) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    progress.status("stopping berth, checking nothing is left behind");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(12), service).await;
    let jobs = match outcome {
        Ok(jobs) => jobs,
        Err(e) => {
            cleanup(&ctx, &instance).await;
            sim.shutdown();
            return Err(e);
        }
    };
    let leftovers = leftovers(&ctx, &sim, &instance).await;
    progress.finish();
    print_summary(&ctx, &sim, &jobs, &names).await;
    cleanup(&ctx, &instance).await;
    sim.shutdown();
    let failed: Vec<_> = jobs
        .iter()
        .filter(|j| {
            j.state != JobState::Completed || j.github_conclusion.as_deref() != Some("success")
        })
        .map(|j| names[&j.github_job_id])
        .collect();
    if !failed.is_empty() {
        bail!("jobs that did not succeed: {}", failed.join(", "));
    }
    if !leftovers.is_empty() {
        bail!("left behind: {}", leftovers.join(", "));
    }
    println!(
        "\nall {} jobs succeeded, each in its own container; nothing left behind",
        jobs.len()
    );
    Ok(())
}

fn demo_config(
    sim: &SimHandle,
    image_id: &str,
    dir: &std::path::Path,
    secret: &str,
    instance: &str,
) -> Config {
    let mut config = Config::default();
    config.store.url = format!("sqlite://{}", dir.join("berth.db").display());
    config.github.api_url = sim.api_url();
    config.github.app_id = Some(sim.app_id());
    config.github.private_key = Some(Secret::new(sim.app_private_key_pem()));
    config.github.webhook_secret = Some(Secret::new(secret));
    config.docker.network = "berth-demo".into();
    config.docker.instance = instance.into();
    config.docker.extra_hosts = vec![format!("{HOST_ALIAS}:host-gateway")];
    config.reconcile.interval = Duration::from_secs(2);
    config.reconcile.orphan_grace = Duration::from_secs(10);
    config.logs.level = "warn".into();
    config.pools.push(PoolConfig {
        name: "linux".into(),
        scope: Scope::Org(standin::ORG.into()),
        labels: standin::RUNS_ON.iter().map(|s| s.to_string()).collect(),
        image: image_id.into(),
        pull_policy: crate::docker::image_policy::PullPolicy::Never,
        max_runners: 4,
        runner_group_id: 1,
        cpus: 1.0,
        memory: crate::config::ByteSize(256 << 20),
        pids_limit: 512,
        cap_add: Vec::new(),
        host_network: false,
        read_only_rootfs: true,
        job_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_secs(60),
        work_folder: "_work".into(),
        // The demo checks that nothing is left behind after its jobs; a
        // warm pool would keep containers on purpose.
        warm: 0,
        warm_started: false,
        host_labels: Vec::new(),
        host_slots: 1,
        container_jobs: false,
        containers: Default::default(),
        security_cancel_run: false,
    });
    config
}

/// Prints each job's state changes until all are finished.
async fn follow(
    ctx: &Arc<Context>,
    names: &BTreeMap<i64, &str>,
    progress: &crate::cli::progress::Progress,
) -> anyhow::Result<Vec<Job>> {
    let say = |line: &str| progress.say(line);
    let started = Instant::now();
    let mut last: BTreeMap<i64, (JobState, Option<String>)> = BTreeMap::new();
    loop {
        let mut jobs = Vec::new();
        for &id in names.keys() {
            if let Some(job) = ctx.store.job_get_by_github_id(id).await? {
                jobs.push(job);
            }
        }
        for job in &jobs {
            // GitHub may hand a runner another job than the one it was started
            // for; berth follows, so a job's container can change: show that too.
            let seen = (job.state, job.container_id.clone());
            if last.get(&job.github_job_id) != Some(&seen) {
                let detail = match job.state {
                    JobState::Provisioning => format!(
                        "runner {}",
                        job.runner_name.as_deref().unwrap_or("being named")
                    ),
                    JobState::Running | JobState::Starting => job
                        .container_id
                        .as_deref()
                        .map(|c| format!("container {}", &c[..12.min(c.len())]))
                        .unwrap_or_default(),
                    JobState::Completed => format!(
                        "GitHub says {}",
                        job.github_conclusion.as_deref().unwrap_or("?")
                    ),
                    _ => job.error.clone().unwrap_or_default(),
                };
                say(&format!(
                    "{:<8} {:<12} {detail}",
                    names[&job.github_job_id],
                    job.state.as_str()
                ));
                last.insert(job.github_job_id, seen);
            }
        }
        let count = |f: fn(JobState) -> bool| jobs.iter().filter(|j| f(j.state)).count();
        progress.status(format!(
            "{} of {} jobs finished, {} running, {} waiting",
            count(JobState::is_terminal),
            names.len(),
            count(|s| s == JobState::Running),
            names.len() - jobs.len() + count(|s| !s.is_terminal() && s != JobState::Running),
        ));
        if jobs.len() == names.len() && jobs.iter().all(|j| j.state.is_terminal()) {
            return Ok(jobs);
        }
        if started.elapsed() > DEMO_LIMIT {
            bail!("the jobs did not finish within {DEMO_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Containers and runner registrations still there after every job finished.
async fn leftovers(ctx: &Context, sim: &SimHandle, instance: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let containers: Vec<String> = ctx
            .fleet
            .first()
            .docker
            .list_managed()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                c.labels
                    .get(crate::context::LABEL_INSTANCE)
                    .map(String::as_str)
                    == Some(instance)
            })
            .map(|c| format!("container {}", c.name))
            .collect();
        let runners: Vec<String> = sim
            .runners()
            .into_iter()
            .filter(|r| r.name.starts_with("berth-"))
            .map(|r| format!("runner {}", r.name))
            .collect();
        let all: Vec<String> = containers.into_iter().chain(runners).collect();
        if all.is_empty() || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn cleanup(ctx: &Context, instance: &str) {
    let docker = &ctx.fleet.first().docker;
    for c in docker.list_managed().await.unwrap_or_default() {
        if c.labels
            .get(crate::context::LABEL_INSTANCE)
            .map(String::as_str)
            == Some(instance)
        {
            let _ = docker.remove(&c.id).await;
        }
    }
}

async fn print_summary(ctx: &Context, sim: &SimHandle, jobs: &[Job], names: &BTreeMap<i64, &str>) {
    println!();
    println!(
        "{:<8} {:<10} {:<10} {:>15} {:>10}",
        "job", "state", "on GitHub", "queued→running", "ran for"
    );
    for job in jobs {
        let wait = job
            .started_at
            .map(|s| format!("{:.0} ms", (s - job.created_at).as_seconds_f64() * 1000.0))
            .unwrap_or_else(|| "-".into());
        let ran = match (job.started_at, job.finished_at) {
            (Some(s), Some(f)) => format!("{:.1} s", (f - s).as_seconds_f64()),
            _ => "-".into(),
        };
        println!(
            "{:<8} {:<10} {:<10} {:>15} {:>10}",
            names[&job.github_job_id],
            job.state.as_str(),
            job.github_conclusion.as_deref().unwrap_or("-"),
            wait,
            ran
        );
    }
    for job in jobs {
        println!("\n── {} ({}) ──", names[&job.github_job_id], job.id);
        if let Some(steps) = sim.job_log(job.github_job_id as u64) {
            for line in tail(&steps, 6) {
                println!("  step  │ {line}");
            }
        }
        if let Ok(Some(logs)) = ctx.store.job_logs_get(job.id).await {
            let text = String::from_utf8_lossy(&logs.content);
            for line in tail(&text, 3) {
                println!("  worker│ {line}");
            }
        }
    }
}

fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}
