//! `berth bench intake`: how many signed `workflow_job` deliveries per
//! second `berth serve` accepts durably on SQLite, and at what latency.
//!
//! The load generator is this process: `connections` keep-alive HTTP/1.1
//! connections on loopback, each sending the next delivery as soon as the
//! previous one is answered (a closed loop, so the rate is what berth
//! sustains). Every delivery is distinct (its own job id and delivery id)
//! and signed beforehand, so signing costs the generator nothing while it
//! runs. A delivery counts as accepted on `202`, which berth sends only
//! after the job row and the delivery id are committed.
//!
//! The pool's runners are all busy for the whole run (its one slot holds a
//! job whose JIT config request to the simulator hangs), so the jobs stay
//! queued: the state of a berth receiving a burst while saturated, and no
//! container is started.
//!
//! The same load runs twice in one invocation, against a fresh store each
//! time: with group commit (berth's default) and without, as the baseline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use ghsim::{FaultKind, FaultRule, SimConfig, Simulator};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use super::{Machine, Percentiles, ProcessUsage, ServeChild, toml_str};
use crate::docker::worker_image;
use crate::store::{JobState, Store};

/// What `berth bench intake` is asked to do.
#[derive(Debug, Clone)]
pub struct IntakeOptions {
    pub deliveries: usize,
    pub connections: usize,
    /// Also run the same load with group commit off.
    pub baseline: bool,
    pub json: Option<PathBuf>,
    pub berth: Option<PathBuf>,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct IntakeReport {
    pub bench: &'static str,
    pub machine: Machine,
    pub deliveries: usize,
    pub connections: usize,
    pub body_bytes: usize,
    pub group_commit: IntakeRun,
    pub without_group_commit: Option<IntakeRun>,
    /// Group-commit throughput over the baseline's.
    pub throughput_ratio: Option<f64>,
    pub targets: IntakeTargets,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntakeRun {
    /// Answered 202.
    pub accepted: usize,
    /// Any other answer, or a transport error.
    pub failed: usize,
    pub wall_seconds: f64,
    pub deliveries_per_second: f64,
    pub latency_ms: Percentiles,
    /// Job rows in the store afterwards, read back by a separate connection.
    pub jobs_stored: u64,
    /// Jobs left queued (all but the one the pool is busy with).
    pub jobs_queued: u64,
    pub serve: ServeFigures,
    /// CPU seconds this process (the load generator) used meanwhile: it
    /// shares the machine with `berth serve`.
    pub generator_cpu_seconds: f64,
}

/// `berth serve`'s own cost, from `/proc`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServeFigures {
    /// CPU seconds (user + system) during the load alone.
    pub cpu_seconds_under_load: f64,
    /// CPU seconds over the whole life of the process.
    pub cpu_seconds_total: f64,
    pub peak_rss_mib: f64,
    pub rss_mib_after: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntakeTargets {
    /// ≥ 10,000 deliveries/s accepted durably.
    pub throughput_at_least_10k_per_s: bool,
    /// p99 < 50 ms.
    pub p99_under_50_ms: bool,
    /// Every 202 left a job row.
    pub every_accept_stored: bool,
}

const REPOSITORY: &str = "acme/widgets";
const LABELS: [&str; 2] = ["self-hosted", "linux"];

pub async fn run(options: IntakeOptions) -> anyhow::Result<IntakeReport> {
    if options.deliveries == 0 || options.connections == 0 {
        bail!("--deliveries and --connections must be at least 1");
    }
    let berth = super::berth_binary(options.berth.as_deref())?;
    let docker = worker_image::connect(None).await?;
    let image = worker_image::ensure_local_worker_image(&docker).await?;
    // The simulator holds the App; every GitHub call hangs, so the pool's
    // one runner slot stays busy and the accepted jobs stay queued.
    let sim = Simulator::start_local(SimConfig::default()).await?;
    let mut hang = FaultRule::new(FaultKind::Slow);
    hang.delay_ms = Some(3_600_000);
    sim.add_fault(hang);

    let secret = format!("bench-{:032x}", rand::random::<u128>());
    eprintln!(
        "berth bench intake: signing {} distinct deliveries…",
        options.deliveries
    );
    let deliveries = Arc::new(signed_deliveries(&secret, options.deliveries));
    let body_bytes = deliveries.first().map_or(0, |d| d.body.len());

    let mut runs = Vec::new();
    let modes: &[bool] = if options.baseline {
        &[true, false]
    } else {
        &[true]
    };
    for &group_commit in modes {
        let dir = tempfile::tempdir()?;
        let config = write_config(dir.path(), &sim, &image.id, &secret, group_commit)?;
        let addr = super::free_loopback_addr()?;
        let url = format!("http://{addr}");
        let serve = ServeChild::start(
            &berth,
            &config.with_listen(addr),
            &url,
            &dir.path().join("serve.log"),
        )
        .await?;
        eprintln!(
            "berth bench intake: {} deliveries over {} connections, group commit {}…",
            options.deliveries,
            options.connections,
            if group_commit { "on" } else { "off" }
        );
        let result = drive(&serve, addr, deliveries.clone(), options.connections).await;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}", serve.log_tail());
                serve.stop().await;
                return Err(e);
            }
        };
        let store = Store::connect(&format!(
            "sqlite://{}",
            dir.path().join("berth.db").display()
        ))
        .await?;
        let counts = store.job_counts().await?;
        store.close().await;
        let jobs_stored: u64 = counts.iter().map(|c| c.count as u64).sum();
        let jobs_queued: u64 = counts
            .iter()
            .filter(|c| c.state == JobState::Queued)
            .map(|c| c.count as u64)
            .sum();
        serve.stop().await;
        runs.push(IntakeRun {
            jobs_stored,
            jobs_queued,
            ..result
        });
    }
    sim.shutdown();

    let group = runs.remove(0);
    let baseline = runs.pop();
    let targets = IntakeTargets {
        throughput_at_least_10k_per_s: group.deliveries_per_second >= 10_000.0,
        p99_under_50_ms: group.latency_ms.p99 < 50.0,
        every_accept_stored: group.jobs_stored as usize >= group.accepted
            && baseline
                .as_ref()
                .is_none_or(|b| b.jobs_stored as usize >= b.accepted),
    };
    let report = IntakeReport {
        bench: "intake",
        machine: Machine::here(),
        deliveries: options.deliveries,
        connections: options.connections,
        body_bytes,
        throughput_ratio: baseline
            .as_ref()
            .map(|b| group.deliveries_per_second / b.deliveries_per_second.max(f64::MIN_POSITIVE)),
        without_group_commit: baseline,
        group_commit: group,
        targets,
    };
    print_report(&report);
    if let Some(path) = &options.json {
        super::write_json(path, &report)?;
    }
    Ok(report)
}

/// One signed delivery, ready to send.
pub struct Delivery {
    pub body: Bytes,
    pub signature: String,
    pub delivery_id: String,
}

/// `n` distinct `queued` deliveries for `acme/widgets`, signed with `secret`.
pub fn signed_deliveries(secret: &str, n: usize) -> Vec<Delivery> {
    let base = i64::from(rand::random::<u32>()) * 1_000_000;
    (0..n)
        .map(|i| {
            let body = super::workflow_job_queued(base + i as i64 + 1, REPOSITORY, &LABELS);
            Delivery {
                signature: super::sign(secret, &body),
                body: Bytes::from(body),
                delivery_id: uuid::Uuid::new_v4().to_string(),
            }
        })
        .collect()
}

/// The bench's `berth serve` configuration; the listen address is added
/// once a port is chosen.
struct ConfigFile {
    path: PathBuf,
    text: String,
}

impl ConfigFile {
    fn with_listen(&self, addr: std::net::SocketAddr) -> PathBuf {
        let text = format!(
            "[server]\nlisten = {}\n{}",
            toml_str(&addr.to_string()),
            self.text
        );
        std::fs::write(&self.path, text).expect("writing the bench configuration");
        self.path.clone()
    }
}

fn write_config(
    dir: &Path,
    sim: &ghsim::SimHandle,
    image_id: &str,
    secret: &str,
    group_commit: bool,
) -> anyhow::Result<ConfigFile> {
    let key = dir.join("app.pem");
    std::fs::write(&key, sim.app_private_key_pem()).context("writing the App key")?;
    let db = dir.join("berth.db");
    let text = format!(
        r#"
[store]
url = {store}
group_commit = {group_commit}
[github]
api_url = {api}
app_id = {app_id}
private_key_path = {key}
webhook_secret = {secret}
request_timeout = 3600
max_attempts = 1
[docker]
network = "berth-bench"
instance = {instance}
[dispatch]
global_max_runners = 1
[reconcile]
interval = 600
[logs]
level = "warn"
[[pool]]
name = "linux"
scope = "org:acme"
labels = ["self-hosted", "linux"]
image = {image}
pull_policy = "never"
max_runners = 1
"#,
        store = toml_str(&format!("sqlite://{}", db.display())),
        api = toml_str(&sim.api_url()),
        app_id = sim.app_id(),
        key = toml_str(&key.display().to_string()),
        secret = toml_str(secret),
        instance = toml_str(&format!("bench-intake-{:08x}", rand::random::<u32>())),
        image = toml_str(image_id),
    );
    Ok(ConfigFile {
        path: dir.join("berth.toml"),
        text,
    })
}

/// Sends every delivery over `connections` connections; returns the
/// figures (store counts are filled in by the caller).
async fn drive(
    serve: &ServeChild,
    addr: std::net::SocketAddr,
    deliveries: Arc<Vec<Delivery>>,
    connections: usize,
) -> anyhow::Result<IntakeRun> {
    let next = Arc::new(AtomicUsize::new(0));
    let before = serve.usage()?;
    let generator_before = ProcessUsage::of(std::process::id())?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let next = next.clone();
        let deliveries = deliveries.clone();
        tasks.push(tokio::spawn(async move {
            connection_loop(addr, &deliveries, &next).await
        }));
    }
    let mut latencies = Vec::with_capacity(deliveries.len());
    let mut accepted = 0;
    let mut failed = 0;
    for task in tasks {
        let outcome = task.await.context("a load task panicked")??;
        latencies.extend(outcome.latencies_ms);
        accepted += outcome.accepted;
        failed += outcome.failed;
    }
    let wall = started.elapsed().as_secs_f64();
    let after = serve.usage()?;
    let generator_after = ProcessUsage::of(std::process::id())?;
    Ok(IntakeRun {
        accepted,
        failed,
        wall_seconds: wall,
        deliveries_per_second: accepted as f64 / wall,
        latency_ms: Percentiles::of(&latencies),
        jobs_stored: 0,
        jobs_queued: 0,
        serve: figures(before, after),
        generator_cpu_seconds: generator_after.cpu_seconds - generator_before.cpu_seconds,
    })
}

fn figures(before: ProcessUsage, after: ProcessUsage) -> ServeFigures {
    ServeFigures {
        cpu_seconds_under_load: after.cpu_seconds - before.cpu_seconds,
        cpu_seconds_total: after.cpu_seconds,
        peak_rss_mib: after.peak_rss_mib,
        rss_mib_after: after.rss_mib,
    }
}

struct ConnectionOutcome {
    latencies_ms: Vec<f64>,
    accepted: usize,
    failed: usize,
}

/// One keep-alive connection sending deliveries until none is left;
/// reconnects when berth closes the connection.
async fn connection_loop(
    addr: std::net::SocketAddr,
    deliveries: &[Delivery],
    next: &AtomicUsize,
) -> anyhow::Result<ConnectionOutcome> {
    let mut outcome = ConnectionOutcome {
        latencies_ms: Vec::new(),
        accepted: 0,
        failed: 0,
    };
    let mut sender = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(delivery) = deliveries.get(i) else {
            return Ok(outcome);
        };
        if sender
            .as_ref()
            .is_none_or(|s: &hyper::client::conn::http1::SendRequest<Full<Bytes>>| s.is_closed())
        {
            sender = Some(connect(addr).await?);
        }
        let s = sender.as_mut().expect("connected");
        let request = http::Request::post("/v1/webhooks/github")
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", &delivery.delivery_id)
            .header("x-hub-signature-256", &delivery.signature)
            .body(Full::new(delivery.body.clone()))?;
        let sent = Instant::now();
        let answer = async {
            s.ready().await?;
            let response = s.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        match tokio::time::timeout(Duration::from_secs(30), answer).await {
            Ok(Ok(status)) if status == http::StatusCode::ACCEPTED => {
                outcome
                    .latencies_ms
                    .push(sent.elapsed().as_secs_f64() * 1000.0);
                outcome.accepted += 1;
            }
            Ok(Ok(_)) => outcome.failed += 1,
            Ok(Err(_)) | Err(_) => {
                outcome.failed += 1;
                sender = None;
            }
        }
    }
}

async fn connect(
    addr: std::net::SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

fn print_report(report: &IntakeReport) {
    println!(
        "\nberth bench intake: {} signed deliveries ({} bytes each) over {} connections, {} CPUs",
        report.deliveries, report.body_bytes, report.connections, report.machine.cpus
    );
    println!(
        "{:<22} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "mode",
        "accepted",
        "failed",
        "per s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "CPU s",
        "RSS MiB"
    );
    let row = |name: &str, r: &IntakeRun| {
        println!(
            "{:<22} {:>9} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.1}",
            name,
            r.accepted,
            r.failed,
            r.deliveries_per_second,
            r.latency_ms.p50,
            r.latency_ms.p95,
            r.latency_ms.p99,
            r.latency_ms.max,
            r.serve.cpu_seconds_under_load,
            r.serve.peak_rss_mib
        );
    };
    row("group commit", &report.group_commit);
    if let Some(b) = &report.without_group_commit {
        row("commit per request", b);
    }
    if let Some(ratio) = report.throughput_ratio {
        println!("throughput ratio (group commit / per request): {ratio:.2}");
    }
    println!(
        "jobs stored: {} ({} queued); the load generator used {:.2} CPU s",
        report.group_commit.jobs_stored,
        report.group_commit.jobs_queued,
        report.group_commit.generator_cpu_seconds
    );
    let t = &report.targets;
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: ≥10,000/s {}; p99 < 50 ms {}; every 202 stored {}",
        mark(t.throughput_at_least_10k_per_s),
        mark(t.p99_under_50_ms),
        mark(t.every_accept_stored)
    );
}
