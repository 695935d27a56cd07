//! `berth bench placement`: how many jobs per second berth's claim with
//! placement ([`Store::job_claim`]: the pool's oldest job and a host with a
//! free slot, in one statement) hands out, and at what latency, with
//! several replicas claiming from one PostgreSQL at once; and, in the same
//! run, the same load with the claim from before the fleet (no host), on
//! PostgreSQL and on SQLite, as the baseline.
//!
//! Each replica is a process of its own (this binary, `berth bench
//! placement --claimer SPEC`) with its own connection pool, so replicas
//! contend for the claim lock and the rows as berth's replicas do. Each
//! claims in a closed loop, as a dispatcher does when jobs are waiting:
//!
//! 1. [`Store::job_claim`] with the production placement: the hosts that
//!    offer the pool's `host_labels` (a further host without the label is
//!    registered too and must get nothing), `spread` or `pack`, the pool's
//!    and the global limit (timed: this is the claim latency);
//! 2. [`Store::host_busy`], the check: no host may be over its slots;
//! 3. [`Store::job_finish`] (`completed`), which frees the slot.
//!
//! The baseline runs the same loop, with the pre-fleet statement (below)
//! in place of step 1, run the way `job_claim` runs its own (under the
//! claim lock on PostgreSQL). Every run gets a fresh database (PostgreSQL:
//! a database of its own, dropped after; SQLite: a temporary file) with
//! `--jobs` queued jobs and ends when none is left.
//!
//! Afterwards the bench checks that every job was claimed exactly once (by
//! the claimers' lists of ids and by each job's `attempts`), that every job
//! is `completed` on an offered host, and that no claimer ever saw a host
//! over its slots. With one slot per host (the default) a claim that raced
//! another onto the same host is seen by the check right after it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use uuid::Uuid;

use super::{CLOCK_TICKS_PER_SECOND, Machine, Percentiles, ProcessUsage};
use crate::config::DockerHostConfig;
use crate::store::{
    GithubStatus, JobFilter, JobSource, JobState, NewJob, Placement, PlacementHost, Store,
    StoreOptions,
};

/// The claim on SQLite before the fleet (commit 4a0491b, `CLAIM_SQLITE` in
/// `store/jobs.rs`), verbatim: the same queue order and limits as today's
/// claim, and no host. The baseline.
const PRE_FLEET_CLAIM_SQLITE: &str = "
UPDATE jobs
SET state = 'provisioning',
    lease_owner = $2,
    lease_expires_at = $3,
    attempts = attempts + 1,
    updated_at = $4
WHERE id = (SELECT id FROM jobs
            WHERE state = 'queued' AND pool = $1 AND NOT cancel_requested
            ORDER BY queued_at, id
            LIMIT 1)
  AND state = 'queued'
  AND (SELECT COUNT(*) FROM jobs
       WHERE pool = $1 AND state IN ('provisioning', 'starting', 'running')
         AND exited_at IS NULL) < $5
  AND (SELECT COUNT(*) FROM jobs
       WHERE state IN ('provisioning', 'starting', 'running') AND exited_at IS NULL) < $6
RETURNING *";

/// The claim on PostgreSQL before the fleet (commit 4a0491b,
/// `CLAIM_POSTGRES`), verbatim; it too ran under the claim lock.
const PRE_FLEET_CLAIM_POSTGRES: &str = "
UPDATE jobs
SET state = 'provisioning',
    lease_owner = $2,
    lease_expires_at = $3,
    attempts = attempts + 1,
    updated_at = $4
WHERE id = (SELECT id FROM jobs
            WHERE state = 'queued' AND pool = $1 AND NOT cancel_requested
            ORDER BY queued_at, id
            LIMIT 1
            FOR UPDATE SKIP LOCKED)
  AND state = 'queued'
  AND (SELECT COUNT(*) FROM jobs
       WHERE pool = $1 AND state IN ('provisioning', 'starting', 'running')
         AND exited_at IS NULL) < $5
  AND (SELECT COUNT(*) FROM jobs
       WHERE state IN ('provisioning', 'starting', 'running') AND exited_at IS NULL) < $6
RETURNING *";

/// The bench's pool, and the host label it needs (`host_labels`).
const POOL: &str = "bench";
const POOL_HOST_LABEL: &str = "linux";
/// A registered, `up` host without the pool's label: it must get no job.
const UNOFFERED_HOST: &str = "gpu-0";
/// How long a claimer may take to connect and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What `berth bench placement` is asked to do.
#[derive(Debug, Clone)]
pub struct PlacementOptions {
    pub jobs: usize,
    pub hosts: u32,
    pub slots: u32,
    /// Replica processes of each PostgreSQL run (one run per entry).
    pub replicas: Vec<usize>,
    pub rounds: usize,
    pub pack: bool,
    /// The PostgreSQL server; `None` runs SQLite only.
    pub postgres: Option<String>,
    pub sqlite: bool,
    pub json: Option<PathBuf>,
    /// The berth binary whose claimers run (default: this one).
    pub berth: Option<PathBuf>,
}

/// Which database a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Db {
    Postgres,
    Sqlite,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Postgres => "PostgreSQL",
            Db::Sqlite => "SQLite",
        }
    }
}

/// Which claim statement a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Statement {
    /// Today's [`Store::job_claim`].
    Placement,
    /// The claim before the fleet (the baseline).
    PreFleet,
}

impl Statement {
    fn name(self) -> &'static str {
        match self {
            Statement::Placement => "placement",
            Statement::PreFleet => "pre-fleet",
        }
    }
}

/// A host of the bench's fleet, as `[[docker_host]]` describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchHost {
    pub name: String,
    pub labels: Vec<String>,
    pub slots: u32,
    pub weight: f64,
}

/// What one claimer process is told (`--claimer`, as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimerSpec {
    pub url: String,
    pub statement: Statement,
    /// Every host, in configuration order.
    pub hosts: Vec<BenchHost>,
    pub pool_host_labels: Vec<String>,
    pub pack: bool,
    pub pool_max: u32,
    pub global_max: u32,
    /// The claims' lease owner (the replica's id).
    pub owner: String,
}

/// What one claimer process reports on stdout when done.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClaimerReport {
    /// The jobs it claimed, in order.
    pub claimed: Vec<Uuid>,
    /// The latency of each successful claim, milliseconds.
    pub latencies_ms: Vec<f64>,
    /// Claims that found no host with room while jobs were still queued.
    pub no_room: u64,
    /// Jobs it placed on each host.
    pub per_host: BTreeMap<String, u64>,
    /// The most active jobs the check after a claim saw on each host.
    pub max_busy: BTreeMap<String, i64>,
    /// Checks that saw a host over its slots (or a job on a host not offered).
    pub over_slots: u64,
}

/// One run: one statement, one database, `replicas` claimer processes.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub db: Db,
    pub statement: Statement,
    pub replicas: usize,
    pub round: usize,
    pub claims: usize,
    pub wall_seconds: f64,
    pub claims_per_second: f64,
    pub latency_ms: Percentiles,
    pub no_room: u64,
    pub per_host: BTreeMap<String, u64>,
    pub cpu: CpuFigures,
    pub checks: RunChecks,
    #[serde(skip)]
    latencies_ms: Vec<f64>,
}

/// Where the CPU went while the claimers ran, seconds (of all CPUs).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuFigures {
    /// The claimer processes together (user + system).
    pub claimers: f64,
    /// The whole machine (from `/proc/stat`): the claimers, the database
    /// server, and anything else running meanwhile.
    pub machine: f64,
    /// The whole machine's capacity over the wall time (CPUs × seconds).
    pub capacity: f64,
}

/// What a run's checks found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunChecks {
    /// Claims the claimers reported, and how many distinct jobs those were.
    pub claims_reported: usize,
    pub distinct_jobs_claimed: usize,
    /// Jobs in the store afterwards, and how many of them are `completed`
    /// after exactly one claim with no lease left.
    pub jobs_stored: usize,
    pub completed_once: usize,
    /// Jobs on a host the pool may not use (any host, for the pre-fleet
    /// claim, which places none).
    pub misplaced: usize,
    /// The most active jobs seen on each host, and the checks that saw a
    /// host over its slots.
    pub max_busy: BTreeMap<String, i64>,
    pub over_slots_seen: u64,
    /// What is wrong, if anything.
    pub failures: Vec<String>,
}

/// The runs of one configuration (database, statement, replicas) together.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigFigures {
    pub db: Db,
    pub statement: Statement,
    pub replicas: usize,
    pub runs: usize,
    pub claims: usize,
    pub wall_seconds: f64,
    pub claims_per_second: f64,
    pub latency_ms: Percentiles,
    pub no_room: u64,
    pub per_host: BTreeMap<String, u64>,
    /// Claimers' CPU per claim, microseconds.
    pub claimer_cpu_us_per_claim: f64,
    /// The whole machine's CPU per claim (claimers, database, anything
    /// else), microseconds.
    pub machine_cpu_us_per_claim: f64,
    /// Share of the machine's CPU busy meanwhile.
    pub machine_busy: f64,
}

/// Placement over the pre-fleet claim, same database and replicas, same run.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub db: Db,
    pub replicas: usize,
    /// Claims per second, placement / pre-fleet.
    pub throughput: f64,
    /// p95 claim latency, placement / pre-fleet.
    pub p95_latency: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlacementTargets {
    /// PostgreSQL, 3 replicas, placement: ≥ 1,000 claims/s (`None`: not run).
    pub at_least_1000_per_s_with_3_replicas: Option<bool>,
    /// PostgreSQL, 3 replicas, placement: p95 claim latency < 20 ms.
    pub p95_under_20_ms_with_3_replicas: Option<bool>,
    /// SQLite: placement's claims/s at least 0.9 of the pre-fleet claim's.
    pub sqlite_not_slower: Option<bool>,
}

/// The report of `berth bench placement`.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementReport {
    pub bench: &'static str,
    pub machine: Machine,
    /// `/proc/loadavg`'s 1-minute figure before and after.
    pub load_average: (f64, f64),
    pub postgres_server: Option<PostgresServer>,
    pub jobs: usize,
    pub hosts: u32,
    pub slots: u32,
    pub placement: &'static str,
    pub rounds: usize,
    pub configs: Vec<ConfigFigures>,
    pub ratios: Vec<Ratio>,
    pub targets: PlacementTargets,
    pub runs: Vec<RunFigures>,
    /// Every run's checks passed.
    pub checks_passed: bool,
}

/// The PostgreSQL server's version and the settings that decide a commit's cost.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresServer {
    pub version: String,
    pub fsync: String,
    pub synchronous_commit: String,
}

impl PlacementReport {
    /// Fails unless every run's checks passed (the targets are reported, not enforced).
    pub fn check(&self) -> anyhow::Result<()> {
        let failures: Vec<String> = self
            .runs
            .iter()
            .flat_map(|r| {
                r.checks.failures.iter().map(move |f| {
                    format!(
                        "{} {} ×{} (round {}): {f}",
                        r.db.name(),
                        r.statement.name(),
                        r.replicas,
                        r.round + 1
                    )
                })
            })
            .collect();
        if !failures.is_empty() {
            bail!("checks failed:\n{}", failures.join("\n"));
        }
        Ok(())
    }
}

/// The bench's hosts: `count` offering the pool's label, then one that does not.
fn bench_hosts(count: u32, slots: u32) -> Vec<BenchHost> {
    let mut hosts: Vec<BenchHost> = (0..count)
        .map(|i| BenchHost {
            name: format!("host-{i}"),
            labels: vec![POOL_HOST_LABEL.to_owned(), format!("zone-{}", i % 2)],
            slots,
            weight: 1.0,
        })
        .collect();
    hosts.push(BenchHost {
        name: UNOFFERED_HOST.to_owned(),
        labels: vec!["gpu".to_owned()],
        slots,
        weight: 1.0,
    });
    hosts
}

/// The hosts a claim offers, as the fleet computes them
/// (crate::fleet::Fleet::placement_for): those offering every label the
/// pool asks for, with their position in the configuration.
fn placement_hosts(spec: &ClaimerSpec) -> Vec<PlacementHost> {
    spec.hosts
        .iter()
        .zip(0u32..)
        .map(|(h, ordinal)| {
            let config = DockerHostConfig {
                name: h.name.clone(),
                url: String::new(),
                labels: h.labels.clone(),
                max_runners: h.slots,
                weight: h.weight,
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
            };
            (config, ordinal)
        })
        .filter(|(config, _)| config.offers(&spec.pool_host_labels))
        .map(|(config, ordinal)| PlacementHost {
            name: config.name,
            slots: config.max_runners,
            weight: config.weight,
            ordinal,
        })
        .collect()
}

pub async fn run(options: PlacementOptions) -> anyhow::Result<PlacementReport> {
    if options.jobs == 0 || options.hosts == 0 || options.slots == 0 || options.rounds == 0 {
        bail!("--jobs, --hosts, --slots and --rounds must be at least 1");
    }
    if options.replicas.is_empty() || options.replicas.contains(&0) {
        bail!("--replicas must list replica counts of at least 1");
    }
    if options.postgres.is_none() && !options.sqlite {
        bail!("nothing to run: give --postgres (or BERTH_TEST_POSTGRES_URL), or drop --no-sqlite");
    }
    if options.postgres.is_none() {
        eprintln!(
            "berth bench placement: no PostgreSQL server (--postgres, BERTH_TEST_POSTGRES_URL): SQLite only"
        );
    }
    let berth = super::berth_binary(options.berth.as_deref())?;
    let load_before = load_average();
    let postgres_server = match &options.postgres {
        Some(server) => Some(postgres_server(server).await?),
        None => None,
    };
    let mut runs = Vec::new();
    for round in 0..options.rounds {
        // Alternate which statement goes first, so drift favours neither.
        let order = if round % 2 == 0 {
            [Statement::Placement, Statement::PreFleet]
        } else {
            [Statement::PreFleet, Statement::Placement]
        };
        if let Some(server) = &options.postgres {
            for &replicas in &options.replicas {
                for statement in order {
                    let target = Target::Postgres(server);
                    runs.push(
                        run_once(&berth, &options, target, statement, replicas, round).await?,
                    );
                }
            }
        }
        if options.sqlite {
            for statement in order {
                runs.push(run_once(&berth, &options, Target::Sqlite, statement, 1, round).await?);
            }
        }
    }
    let configs = combine(&runs);
    let ratios = ratios(&configs);
    let find = |db, statement, replicas| {
        configs
            .iter()
            .find(|c| c.db == db && c.statement == statement && c.replicas == replicas)
    };
    let three = find(Db::Postgres, Statement::Placement, 3);
    let targets = PlacementTargets {
        at_least_1000_per_s_with_3_replicas: three.map(|c| c.claims_per_second >= 1000.0),
        p95_under_20_ms_with_3_replicas: three.map(|c| c.latency_ms.p95 < 20.0),
        sqlite_not_slower: ratios
            .iter()
            .find(|r| r.db == Db::Sqlite)
            .map(|r| r.throughput >= 0.9),
    };
    let report = PlacementReport {
        bench: "placement",
        machine: Machine::here(),
        load_average: (load_before, load_average()),
        postgres_server,
        jobs: options.jobs,
        hosts: options.hosts,
        slots: options.slots,
        placement: if options.pack { "pack" } else { "spread" },
        rounds: options.rounds,
        checks_passed: runs.iter().all(|r| r.checks.failures.is_empty()),
        configs,
        ratios,
        targets,
        runs,
    };
    print_report(&report);
    if let Some(path) = &options.json {
        super::write_json(path, &report)?;
    }
    Ok(report)
}

/// Where a run's database lives.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// A database of its own on this server.
    Postgres(&'a str),
    /// A file in a temporary folder.
    Sqlite,
}

async fn run_once(
    berth: &Path,
    options: &PlacementOptions,
    target: Target<'_>,
    statement: Statement,
    replicas: usize,
    round: usize,
) -> anyhow::Result<RunFigures> {
    let db = match target {
        Target::Postgres(_) => Db::Postgres,
        Target::Sqlite => Db::Sqlite,
    };
    eprintln!(
        "berth bench placement: round {}, {} {} claim, {} replica(s), {} jobs…",
        round + 1,
        db.name(),
        statement.name(),
        replicas,
        options.jobs
    );
    match target {
        Target::Postgres(server) => {
            let (url, name) = create_database(server).await?;
            let result = measure(berth, options, &url, db, statement, replicas, round).await;
            drop_database(server, &name).await?;
            result
        }
        Target::Sqlite => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("berth.db").display());
            measure(berth, options, &url, db, statement, replicas, round).await
        }
    }
}

/// Fills the store at `url`, runs the claimers, checks the outcome.
async fn measure(
    berth: &Path,
    options: &PlacementOptions,
    url: &str,
    db: Db,
    statement: Statement,
    replicas: usize,
    round: usize,
) -> anyhow::Result<RunFigures> {
    let hosts = bench_hosts(options.hosts, options.slots);
    let capacity = options.hosts * options.slots;
    let spec = |i: usize| ClaimerSpec {
        url: url.to_owned(),
        statement,
        hosts: hosts.clone(),
        pool_host_labels: vec![POOL_HOST_LABEL.to_owned()],
        pack: options.pack,
        pool_max: capacity,
        global_max: capacity,
        owner: format!("bench-replica-{i}"),
    };
    fill(url, &hosts, options.jobs).await?;

    let mut claimers = Vec::with_capacity(replicas);
    for i in 0..replicas {
        claimers.push(Claimer::start(berth, &spec(i)).await?);
    }
    for claimer in &mut claimers {
        claimer.ready().await?;
    }
    let machine_before = machine_cpu_seconds();
    let started = Instant::now();
    for claimer in &mut claimers {
        claimer.go().await?;
    }
    let outcomes = futures::future::join_all(claimers.into_iter().map(|c| c.finish(started))).await;
    let machine_after = machine_cpu_seconds();
    let mut reports = Vec::with_capacity(replicas);
    let mut wall = Duration::ZERO;
    let mut claimers_cpu = 0.0;
    for outcome in outcomes {
        let (report, done_after, cpu) = outcome?;
        wall = wall.max(done_after);
        claimers_cpu += cpu;
        reports.push(report);
    }
    let wall_seconds = wall.as_secs_f64();
    let cpu = CpuFigures {
        claimers: claimers_cpu,
        machine: machine_after - machine_before,
        capacity: wall_seconds * Machine::here().cpus as f64,
    };

    let offered = placement_hosts(&spec(0));
    let checks = check_run(url, statement, &offered, options, &reports).await?;
    let mut per_host = BTreeMap::new();
    let mut latencies_ms = Vec::new();
    let mut no_room = 0;
    for report in reports {
        for (host, n) in report.per_host {
            *per_host.entry(host).or_insert(0) += n;
        }
        latencies_ms.extend(report.latencies_ms);
        no_room += report.no_room;
    }
    let claims = latencies_ms.len();
    Ok(RunFigures {
        db,
        statement,
        replicas,
        round,
        claims,
        wall_seconds,
        claims_per_second: claims as f64 / wall_seconds.max(f64::MIN_POSITIVE),
        latency_ms: Percentiles::of(&latencies_ms),
        no_room,
        per_host,
        cpu,
        checks,
        latencies_ms,
    })
}

/// A fresh store: the hosts registered and `up`, `jobs` queued jobs.
async fn fill(url: &str, hosts: &[BenchHost], jobs: usize) -> anyhow::Result<()> {
    let store = Store::connect(url).await?;
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    store.hosts_register(&names).await?;
    for name in &names {
        store
            .host_probe_ok(name, "bench", None, store.now())
            .await?;
    }
    let inserted = futures::stream::iter(1..=jobs)
        .map(|i| {
            let store = store.clone();
            async move {
                store
                    .job_insert(NewJob {
                        github_job_id: i as i64,
                        run_id: 1_000_000 + i as i64,
                        repository: "acme/widgets".to_owned(),
                        workflow: Some("CI".to_owned()),
                        job_name: Some("build".to_owned()),
                        labels: vec!["self-hosted".to_owned(), "linux".to_owned()],
                        pool: POOL.to_owned(),
                        source: JobSource::Webhook,
                        scale_set: None,
                        github_status: Some(GithubStatus::Queued),
                        timeout_secs: None,
                    })
                    .await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for job in inserted {
        job?;
    }
    store.close().await;
    Ok(())
}

/// The checks of one run (see the module's doc).
async fn check_run(
    url: &str,
    statement: Statement,
    offered: &[PlacementHost],
    options: &PlacementOptions,
    reports: &[ClaimerReport],
) -> anyhow::Result<RunChecks> {
    let mut checks = RunChecks {
        claims_reported: reports.iter().map(|r| r.claimed.len()).sum(),
        ..RunChecks::default()
    };
    let mut distinct = HashSet::new();
    for report in reports {
        distinct.extend(report.claimed.iter().copied());
        for (host, &n) in &report.max_busy {
            let max = checks.max_busy.entry(host.clone()).or_insert(0);
            *max = (*max).max(n);
        }
        checks.over_slots_seen += report.over_slots;
    }
    checks.distinct_jobs_claimed = distinct.len();

    let store = Store::connect(url).await?;
    let jobs = store.job_list(&JobFilter::default()).await?;
    store.close().await;
    checks.jobs_stored = jobs.len();
    let offered: HashSet<&str> = offered.iter().map(|h| h.name.as_str()).collect();
    for job in &jobs {
        if job.state == JobState::Completed
            && job.attempts == 1
            && job.lease_owner.is_none()
            && distinct.contains(&job.id)
        {
            checks.completed_once += 1;
        }
        let placed_right = match (statement, job.host.as_deref()) {
            (Statement::Placement, Some(host)) => offered.contains(host),
            (Statement::PreFleet, None) => true,
            _ => false,
        };
        if !placed_right {
            checks.misplaced += 1;
        }
    }

    let mut failures = Vec::new();
    if checks.jobs_stored != options.jobs {
        failures.push(format!(
            "{} jobs stored, {} queued",
            checks.jobs_stored, options.jobs
        ));
    }
    if checks.claims_reported != options.jobs || checks.distinct_jobs_claimed != options.jobs {
        failures.push(format!(
            "{} claims of {} distinct jobs reported, for {} jobs",
            checks.claims_reported, checks.distinct_jobs_claimed, options.jobs
        ));
    }
    if checks.completed_once != options.jobs {
        failures.push(format!(
            "{} of {} jobs completed after exactly one claim",
            checks.completed_once, options.jobs
        ));
    }
    if checks.misplaced > 0 {
        failures.push(format!(
            "{} jobs on a host the pool may not use",
            checks.misplaced
        ));
    }
    if checks.over_slots_seen > 0 {
        failures.push(format!(
            "{} checks saw a host over its {} slot(s): most seen {:?}",
            checks.over_slots_seen, options.slots, checks.max_busy
        ));
    }
    checks.failures = failures;
    Ok(checks)
}

/// One claimer process.
struct Claimer {
    child: tokio::process::Child,
    pid: u32,
    /// Its CPU seconds when it said it was ready.
    cpu_at_ready: f64,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
    stderr: tokio::process::ChildStderr,
}

impl Claimer {
    async fn start(berth: &Path, spec: &ClaimerSpec) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(berth)
            .args(["bench", "placement", "--claimer"])
            .arg(serde_json::to_string(spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} bench placement --claimer", berth.display()))?;
        let stdin = child.stdin.take().context("the claimer's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the claimer's stdout")?);
        let stderr = child.stderr.take().context("the claimer's stderr")?;
        let pid = child.id().context("a claimer exited at once")?;
        Ok(Claimer {
            child,
            pid,
            cpu_at_ready: 0.0,
            stdin,
            stdout,
            stderr,
        })
    }

    /// The next line the claimer writes, or its stderr as the error.
    async fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line).await?;
        if read == 0 {
            let mut stderr = String::new();
            let _ = self.stderr.read_to_string(&mut stderr).await;
            let status = self.child.wait().await?;
            bail!("a claimer exited ({status}):\n{stderr}");
        }
        Ok(line)
    }

    /// Waits until the claimer is connected and has prepared its statements.
    async fn ready(&mut self) -> anyhow::Result<()> {
        let line = tokio::time::timeout(READY_TIMEOUT, self.line())
            .await
            .context("a claimer was not ready in time")??;
        ensure!(
            line.trim() == "ready",
            "a claimer said {line:?} instead of ready"
        );
        self.cpu_at_ready = ProcessUsage::of(self.pid)?.cpu_seconds;
        Ok(())
    }

    async fn go(&mut self) -> anyhow::Result<()> {
        self.stdin.write_all(b"go\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Its report, when it said it was done (after `started`), and the
    /// CPU seconds it used claiming.
    async fn finish(mut self, started: Instant) -> anyhow::Result<(ClaimerReport, Duration, f64)> {
        let line = self.line().await?;
        ensure!(
            line.trim() == "done",
            "a claimer said {line:?} instead of done"
        );
        let done_after = started.elapsed();
        let cpu = ProcessUsage::of(self.pid)?.cpu_seconds - self.cpu_at_ready;
        let report: ClaimerReport =
            serde_json::from_str(&self.line().await?).context("reading a claimer's report")?;
        let status = self.child.wait().await?;
        ensure!(status.success(), "a claimer exited with {status}");
        Ok((report, done_after, cpu))
    }
}

/// `berth bench placement --claimer SPEC`: one replica's claim loop (see
/// the module's doc). Prints `ready` once connected and prepared, starts
/// on a line on stdin, prints `done` when no job is left, then its report
/// as one line of JSON.
pub async fn claimer(spec: &str) -> anyhow::Result<()> {
    let spec: ClaimerSpec = serde_json::from_str(spec).context("reading the claimer's spec")?;
    let options = StoreOptions {
        max_connections: 2,
        ..StoreOptions::default()
    };
    let store = Store::connect_with(&spec.url, options).await?;
    let offered = placement_hosts(&spec);
    let slots: BTreeMap<&str, i64> = offered
        .iter()
        .map(|h| (h.name.as_str(), i64::from(h.slots)))
        .collect();

    // Warm up: prepare each statement once (a claim of a pool with no jobs,
    // the check, a finish of no job), so the first timed claim parses nothing.
    claim(&store, &spec, &offered, "bench-warm-up").await?;
    store.host_busy().await?;
    store
        .job_finish(Uuid::nil(), JobState::Completed, Some(0), None)
        .await?;
    say("ready").await?;
    let mut go = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await?;

    let mut report = ClaimerReport::default();
    loop {
        let sent = Instant::now();
        let claimed = claim(&store, &spec, &offered, POOL).await?;
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        let Some(job) = claimed else {
            if queued(&store).await? == 0 {
                break;
            }
            report.no_room += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        report.latencies_ms.push(ms);
        if let Some(host) = &job.host {
            *report.per_host.entry(host.clone()).or_insert(0) += 1;
        }
        let mut busy: BTreeMap<String, i64> = BTreeMap::new();
        for (host, _pool, n) in store.host_busy().await? {
            *busy.entry(host).or_insert(0) += n;
        }
        for (host, n) in busy {
            if n > slots.get(host.as_str()).copied().unwrap_or(0) {
                report.over_slots += 1;
            }
            let max = report.max_busy.entry(host).or_insert(0);
            *max = (*max).max(n);
        }
        let finished = store
            .job_finish(job.id, JobState::Completed, Some(0), None)
            .await?;
        ensure!(finished, "job {} was no longer active to finish", job.id);
        report.claimed.push(job.id);
    }
    say("done").await?;
    say(&serde_json::to_string(&report)?).await?;
    store.close().await;
    Ok(())
}

/// One claim of `pool` with the spec's statement.
async fn claim(
    store: &Store,
    spec: &ClaimerSpec,
    offered: &[PlacementHost],
    pool: &str,
) -> anyhow::Result<Option<crate::store::Job>> {
    let now = store.now();
    let lease_until = now + time::Duration::minutes(10);
    let job = match spec.statement {
        Statement::Placement => {
            store
                .job_claim(
                    pool,
                    spec.pool_max,
                    spec.global_max,
                    Placement {
                        hosts: offered,
                        pack: spec.pack,
                        slots_per_job: 1,
                    },
                    &spec.owner,
                    lease_until,
                    now,
                )
                .await?
        }
        Statement::PreFleet => {
            store
                .job_claim_unplaced(
                    (PRE_FLEET_CLAIM_SQLITE, PRE_FLEET_CLAIM_POSTGRES),
                    pool,
                    spec.pool_max,
                    spec.global_max,
                    &spec.owner,
                    lease_until,
                    now,
                )
                .await?
        }
    };
    Ok(job)
}

/// Jobs of the bench's pool still queued.
async fn queued(store: &Store) -> anyhow::Result<i64> {
    Ok(store
        .job_counts()
        .await?
        .iter()
        .filter(|c| c.pool == POOL && c.state == JobState::Queued)
        .map(|c| c.count)
        .sum())
}

/// A line on stdout, flushed.
async fn say(line: &str) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    stdout.write_all(line.as_bytes()).await?;
    stdout.write_all(b"\n").await?;
    stdout.flush().await?;
    Ok(())
}

/// A database of its own on `server`; its URL and name.
async fn create_database(server: &str) -> anyhow::Result<(String, String)> {
    let name = format!("berth_bench_{}", Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(server)
        .await
        .with_context(|| format!("connecting to {}", crate::service::redact_url(server)))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .context("creating the bench's database")?;
    admin.close().await.ok();
    let mut url = url::Url::parse(server).context("the PostgreSQL URL")?;
    url.set_path(&format!("/{name}"));
    Ok((url.to_string(), name))
}

/// Drops the bench's database `name` (one [`create_database`] made).
async fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    ensure!(
        name.starts_with("berth_bench_"),
        "not a bench database: {name}"
    );
    let mut admin = sqlx::PgConnection::connect(server).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .context("dropping the bench's database")?;
    admin.close().await.ok();
    Ok(())
}

async fn postgres_server(server: &str) -> anyhow::Result<PostgresServer> {
    let mut conn = sqlx::PgConnection::connect(server)
        .await
        .with_context(|| format!("connecting to {}", crate::service::redact_url(server)))?;
    let server = PostgresServer {
        version: show(&mut conn, "server_version").await?,
        fsync: show(&mut conn, "fsync").await?,
        synchronous_commit: show(&mut conn, "synchronous_commit").await?,
    };
    conn.close().await.ok();
    Ok(server)
}

async fn show(conn: &mut sqlx::PgConnection, setting: &str) -> anyhow::Result<String> {
    let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
        .fetch_one(conn)
        .await?;
    Ok(value)
}

/// CPU seconds the whole machine has been busy (all CPUs, since boot):
/// `/proc/stat`'s first line less idle and iowait.
fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy: u64 = ticks.iter().take(8).sum::<u64>()
        - ticks.get(3).copied().unwrap_or(0)
        - ticks.get(4).copied().unwrap_or(0);
    busy as f64 / CLOCK_TICKS_PER_SECOND
}

/// The 1-minute load average.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The runs of each configuration together: claims over summed wall time,
/// percentiles over every claim.
fn combine(runs: &[RunFigures]) -> Vec<ConfigFigures> {
    let mut keys: Vec<(Db, usize, Statement)> = runs
        .iter()
        .map(|r| (r.db, r.replicas, r.statement))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(db, replicas, statement)| {
            let these: Vec<&RunFigures> = runs
                .iter()
                .filter(|r| r.db == db && r.replicas == replicas && r.statement == statement)
                .collect();
            let claims: usize = these.iter().map(|r| r.claims).sum();
            let wall: f64 = these.iter().map(|r| r.wall_seconds).sum();
            let latencies: Vec<f64> = these
                .iter()
                .flat_map(|r| r.latencies_ms.iter().copied())
                .collect();
            let claimers_cpu: f64 = these.iter().map(|r| r.cpu.claimers).sum();
            let machine_cpu: f64 = these.iter().map(|r| r.cpu.machine).sum();
            let capacity: f64 = these.iter().map(|r| r.cpu.capacity).sum();
            let per_claim = |cpu: f64| cpu * 1e6 / (claims.max(1) as f64);
            let mut per_host = BTreeMap::new();
            for r in &these {
                for (host, n) in &r.per_host {
                    *per_host.entry(host.clone()).or_insert(0) += n;
                }
            }
            ConfigFigures {
                db,
                statement,
                replicas,
                runs: these.len(),
                claims,
                wall_seconds: wall,
                claims_per_second: claims as f64 / wall.max(f64::MIN_POSITIVE),
                latency_ms: Percentiles::of(&latencies),
                no_room: these.iter().map(|r| r.no_room).sum(),
                per_host,
                claimer_cpu_us_per_claim: per_claim(claimers_cpu),
                machine_cpu_us_per_claim: per_claim(machine_cpu),
                machine_busy: machine_cpu / capacity.max(f64::MIN_POSITIVE),
            }
        })
        .collect()
}

fn ratios(configs: &[ConfigFigures]) -> Vec<Ratio> {
    configs
        .iter()
        .filter(|c| c.statement == Statement::Placement)
        .filter_map(|placed| {
            let base = configs.iter().find(|c| {
                c.statement == Statement::PreFleet
                    && c.db == placed.db
                    && c.replicas == placed.replicas
            })?;
            Some(Ratio {
                db: placed.db,
                replicas: placed.replicas,
                throughput: placed.claims_per_second
                    / base.claims_per_second.max(f64::MIN_POSITIVE),
                p95_latency: placed.latency_ms.p95 / base.latency_ms.p95.max(f64::MIN_POSITIVE),
            })
        })
        .collect()
}

fn print_report(report: &PlacementReport) {
    println!(
        "\nberth bench placement: {} jobs per run, {} hosts × {} slot(s) ({}) and one host without the label, {} round(s), {} CPUs, load {:.2} → {:.2}",
        report.jobs,
        report.hosts,
        report.slots,
        report.placement,
        report.rounds,
        report.machine.cpus,
        report.load_average.0,
        report.load_average.1
    );
    if let Some(pg) = &report.postgres_server {
        println!(
            "PostgreSQL {} (fsync {}, synchronous_commit {})",
            pg.version, pg.fsync, pg.synchronous_commit
        );
    }
    println!(
        "{:<11} {:>8} {:<10} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>5}  jobs per host",
        "database",
        "replicas",
        "claim",
        "claims",
        "per s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "no room",
        "claimer µs",
        "machine µs",
        "busy"
    );
    for c in &report.configs {
        let hosts: Vec<String> = c.per_host.iter().map(|(h, n)| format!("{h} {n}")).collect();
        println!(
            "{:<11} {:>8} {:<10} {:>7} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>10.0} {:>10.0} {:>4.0}%  {}",
            c.db.name(),
            c.replicas,
            c.statement.name(),
            c.claims,
            c.claims_per_second,
            c.latency_ms.p50,
            c.latency_ms.p95,
            c.latency_ms.p99,
            c.latency_ms.max,
            c.no_room,
            c.claimer_cpu_us_per_claim,
            c.machine_cpu_us_per_claim,
            c.machine_busy * 100.0,
            if hosts.is_empty() {
                "-".to_owned()
            } else {
                hosts.join(", ")
            }
        );
    }
    println!(
        "(claimer µs, machine µs: CPU time per claim of the claimer processes, and of the whole machine; busy: the machine's CPU in use meanwhile)"
    );
    for r in &report.ratios {
        println!(
            "ratio placement / pre-fleet, {} × {}: throughput {:.3}, p95 latency {:.3}",
            r.db.name(),
            r.replicas,
            r.throughput,
            r.p95_latency
        );
    }
    let mark = |target: Option<bool>| match target {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not run",
    };
    let t = &report.targets;
    println!(
        "targets: PostgreSQL with 3 replicas ≥1,000 claims/s {}, p95 < 20 ms {}; SQLite placement ≥0.9× pre-fleet {}",
        mark(t.at_least_1000_per_s_with_3_replicas),
        mark(t.p95_under_20_ms_with_3_replicas),
        mark(t.sqlite_not_slower)
    );
    if report.checks_passed {
        println!(
            "checks: every job claimed exactly once and completed, on an offered host; no host seen over its slots (most seen per host: {})",
            most_busy(report)
        );
    } else {
        println!("checks: FAILED (see below)");
    }
}

/// The most active jobs any check saw on each host, over every run.
fn most_busy(report: &PlacementReport) -> String {
    let mut most: BTreeMap<&str, i64> = BTreeMap::new();
    for run in &report.runs {
        for (host, &n) in &run.checks.max_busy {
            let max = most.entry(host.as_str()).or_insert(0);
            *max = (*max).max(n);
        }
    }
    if most.is_empty() {
        return "-".to_owned();
    }
    most.iter()
        .map(|(h, n)| format!("{h} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_offered_the_labelled_hosts_in_configuration_order() {
        let spec = ClaimerSpec {
            url: String::new(),
            statement: Statement::Placement,
            hosts: bench_hosts(3, 2),
            pool_host_labels: vec![POOL_HOST_LABEL.to_owned()],
            pack: false,
            pool_max: 6,
            global_max: 6,
            owner: "o".to_owned(),
        };
        let offered = placement_hosts(&spec);
        let names: Vec<(&str, u32, u32)> = offered
            .iter()
            .map(|h| (h.name.as_str(), h.slots, h.ordinal))
            .collect();
        assert_eq!(
            names,
            [("host-0", 2, 0), ("host-1", 2, 1), ("host-2", 2, 2)]
        );
    }

    /// The checks catch a job claimed twice, a job left unclaimed and a
    /// host seen over its slots.
    #[tokio::test]
    async fn the_checks_catch_double_claims_and_full_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("berth.db").display());
        let hosts = bench_hosts(2, 1);
        fill(&url, &hosts, 2).await.unwrap();
        let store = Store::connect(&url).await.unwrap();
        let jobs = store.job_list(&JobFilter::default()).await.unwrap();
        store.close().await;
        let options = PlacementOptions {
            jobs: 2,
            hosts: 2,
            slots: 1,
            replicas: vec![2],
            rounds: 1,
            pack: false,
            postgres: None,
            sqlite: true,
            json: None,
            berth: None,
        };
        let spec = ClaimerSpec {
            url: url.clone(),
            statement: Statement::Placement,
            hosts,
            pool_host_labels: vec![POOL_HOST_LABEL.to_owned()],
            pack: false,
            pool_max: 2,
            global_max: 2,
            owner: "o".to_owned(),
        };
        let twice = ClaimerReport {
            claimed: vec![jobs[0].id],
            max_busy: BTreeMap::from([("host-0".to_owned(), 2)]),
            over_slots: 1,
            ..ClaimerReport::default()
        };
        let checks = check_run(
            &url,
            Statement::Placement,
            &placement_hosts(&spec),
            &options,
            &[twice.clone(), twice],
        )
        .await
        .unwrap();
        assert_eq!(
            (checks.claims_reported, checks.distinct_jobs_claimed),
            (2, 1)
        );
        // Nothing ran: both jobs are still queued, on no host.
        assert_eq!((checks.completed_once, checks.misplaced), (0, 2));
        assert_eq!(checks.over_slots_seen, 2);
        assert_eq!(checks.failures.len(), 4, "{:?}", checks.failures);
    }
}
