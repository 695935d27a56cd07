//! The fault campaign (docs/RELIABILITY.md): berth under the faults a CI
//! service meets in production, each scenario checking what berth promises
//! and printing its figures (`FIGURE …` lines; run with `--no-capture`).
//!
//! The short form runs in CI. `BERTH_CHAOS_LONG=1` runs the long form:
//! bigger bursts and longer outages (`scripts/chaos` runs this group).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth::store::{Job, JobState};
use common::faults::{PrivatePostgres, Relay, SmallFs};
use common::{Berth, World, eventually};
use ghsim::{DeliveryFault, FaultKind, FaultRule, WebhookFaultRule};

fn long() -> bool {
    std::env::var("BERTH_CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// Short form, long form.
fn pick<T>(short: T, long_form: T) -> T {
    if long() { long_form } else { short }
}

fn figure(scenario: &str, name: &str, value: impl std::fmt::Display) {
    eprintln!("FIGURE {scenario} {name} {value}");
}

/// Queues `n` jobs running `steps`.
fn burst(world: &World, n: usize, steps: &[&str]) -> Vec<u64> {
    (0..n).map(|_| world.queue(steps)).collect()
}

/// Waits until every job is terminal in berth; returns them.
async fn settle(berth: &Berth, ids: &[u64], limit: Duration) -> Vec<Job> {
    let started = Instant::now();
    loop {
        let mut done = Vec::new();
        for id in ids {
            match berth.job(*id).await {
                Some(job) if job.state.is_terminal() => done.push(job),
                _ => break,
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        if started.elapsed() > limit {
            let states: BTreeMap<u64, String> = futures::future::join_all(ids.iter().map(|id| {
                let id = *id;
                async move {
                    let state = berth
                        .job(id)
                        .await
                        .map(|j| format!("{} {:?}", j.state, j.error))
                        .unwrap_or_else(|| "unknown to berth".into());
                    (id, state)
                }
            }))
            .await
            .into_iter()
            .collect();
            panic!("not all jobs finished after {limit:?}: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job completed in berth and succeeded on GitHub, run by a runner
/// of berth's, and no runner ran two jobs (a JIT runner runs one).
fn assert_all_completed(world: &World, jobs: &[Job]) {
    let mut runners = std::collections::BTreeSet::new();
    for job in jobs {
        assert_eq!(job.state, JobState::Completed, "{job:?}");
        let on_github = world.sim.job(job.github_job_id as u64).unwrap();
        assert_eq!(
            on_github.conclusion.as_deref(),
            Some("success"),
            "{on_github:?}"
        );
        let runner = on_github.runner_name.clone().unwrap_or_default();
        assert!(runner.starts_with("berth-"), "{on_github:?}\n{job:?}");
        // berth may have settled it from GitHub's API, never seeing the
        // webhook that names the runner (a delivery lost in a failover).
        if let Some(named) = &job.github_runner_name {
            assert_eq!(named, &runner, "{job:?}");
        }
        assert!(
            runners.insert(runner),
            "a runner ran two jobs: {on_github:?}"
        );
    }
}

/// Requests berth made to GitHub so far (its own count, every endpoint).
async fn github_calls(berth: &Berth) -> f64 {
    berth
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("berth_github_api_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until at least `n` of `ids` run on `berth`.
async fn wait_running(berth: &Berth, ids: &[u64], n: usize) {
    eventually(
        &format!("{n} of the jobs running"),
        Duration::from_secs(60),
        || async {
            let mut running = 0;
            for id in ids {
                if berth
                    .job(*id)
                    .await
                    .is_some_and(|j| j.state == JobState::Running)
                {
                    running += 1;
                }
            }
            running >= n
        },
    )
    .await;
}

/// Waits until a delivery about GitHub job `job_id` was refused with 503.
async fn wait_refused_delivery(world: &World, job_id: u64) {
    eventually("the refused delivery", Duration::from_secs(30), || async {
        world
            .sim
            .deliveries()
            .iter()
            .any(|d| d.job_id == job_id && d.status == Some(503))
    })
    .await;
}

/// Waits until `berth` answers `/readyz` with 200.
async fn wait_ready(berth: &Berth, what: &str) {
    eventually(what, Duration::from_secs(60), || async {
        berth
            .http()
            .get(format!("{}/readyz", berth.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

async fn nothing_left(world: &World) {
    eventually(
        "nothing of berth's left",
        Duration::from_secs(30),
        || async { world.containers().is_empty() && world.berth_runners().is_empty() },
    )
    .await;
}

/// 30 % of GitHub's REST answers are 5xx or 429 with `Retry-After`, 10 %
/// time out; webhooks come twice and out of order. Every job completes,
/// once; the figure is the extra GitHub calls per job against a clean
/// burst in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_faults_lose_and_double_no_job() {
    let world = World::new().await;
    let mut config = world.config("max_runners = 4");
    config.github.request_timeout = Duration::from_secs(1);
    // Dropped webhooks come back through the catch-up: often, here.
    config.reconcile.delivery_catchup_interval = Duration::from_secs(2);
    let berth = Berth::start(&world, config).await;
    let n = pick(6, 30);

    let before = github_calls(&berth).await;
    let clean = settle(
        &berth,
        &burst(&world, n, &["echo clean"]),
        Duration::from_secs(120),
    )
    .await;
    assert_all_completed(&world, &clean);
    let clean_calls = (github_calls(&berth).await - before) / n as f64;

    // The runner's own protocol (`/_services`) is left alone: the real
    // runner has retries of its own, the stand-in does not.
    for prefix in ["/app/", "/orgs/", "/repos/"] {
        let rule = |kind, fraction: f64| FaultRule {
            fraction,
            path_prefix: Some(prefix.into()),
            retry_after_secs: Some(1),
            delay_ms: Some(1500),
            ..FaultRule::new(kind)
        };
        // Tried in order: 15 %, then 15/85 of the rest (30 % in all), then
        // 10/70 of what is left (10 % in all).
        world.sim.add_fault(rule(FaultKind::ServerError, 0.15));
        world
            .sim
            .add_fault(rule(FaultKind::TooManyRequests, 0.15 / 0.85));
        world.sim.add_fault(rule(FaultKind::Slow, 0.1 / 0.7));
    }
    let ids = burst(&world, n, &["echo faulted"]);
    for (i, id) in ids.iter().enumerate() {
        let mode = match i % 3 {
            0 => DeliveryFault::Duplicate,
            1 => DeliveryFault::Reorder,
            _ => continue,
        };
        world.sim.add_webhook_fault(WebhookFaultRule {
            mode,
            job_id: Some(*id),
            action: None,
            count: None,
        });
    }
    // Some deliveries never reach berth (GitHub's side of a dropped
    // webhook: the attempt fails and GitHub does not retry it).
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    world.sim.set_webhook(Some(ghsim::WebhookTarget {
        url: format!("{dead}/v1/webhooks/github"),
        secret: Some(common::WEBHOOK_SECRET.into()),
    }));
    let dropped = burst(&world, pick(2, 6), &["echo dropped"]);
    eventually(
        "the dropped deliveries failed",
        Duration::from_secs(30),
        || async {
            let failed = world
                .sim
                .deliveries()
                .iter()
                .filter(|d| dropped.contains(&d.job_id) && d.status.is_none())
                .count();
            failed >= dropped.len()
        },
    )
    .await;
    world.point_webhooks_at(&berth.url);
    let mut ids = ids;
    ids.extend(&dropped);
    let before = github_calls(&berth).await;
    let started = Instant::now();
    let faulted = settle(&berth, &ids, Duration::from_secs(240)).await;
    let took = started.elapsed();
    assert_all_completed(&world, &faulted);
    let faulted_calls = (github_calls(&berth).await - before) / ids.len() as f64;
    world.sim.clear_faults();
    world.sim.clear_webhook_faults();
    nothing_left(&world).await;

    figure("github_faults", "jobs", ids.len());
    figure("github_faults", "dropped_deliveries", dropped.len());
    figure("github_faults", "fault_hits", world.sim.fault_hits());
    figure(
        "github_faults",
        "calls_per_job_clean",
        format!("{clean_calls:.1}"),
    );
    figure(
        "github_faults",
        "calls_per_job_faulted",
        format!("{faulted_calls:.1}"),
    );
    figure(
        "github_faults",
        "extra_calls_per_job",
        format!("{:.1}", faulted_calls - clean_calls),
    );
    figure(
        "github_faults",
        "burst_seconds",
        format!("{:.1}", took.as_secs_f64()),
    );
    berth.stop().await;
}

/// The link between berth and its Docker host (the socket proxy) is cut
/// mid-burst: running jobs finish while berth cannot see them, and once the
/// link is back berth learns it, and everything completes with nothing
/// left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_from_the_docker_host_heals() {
    let world = World::new().await;
    let upstream = world
        .proxy
        .docker_host()
        .trim_start_matches("tcp://")
        .trim_start_matches("http://")
        .to_string();
    let relay = Relay::start(&upstream).await;
    let mut config = world.config("max_runners = 2");
    config.docker.host = format!("tcp://{}", relay.addr);
    let berth = Berth::start(&world, config).await;
    let n = pick(4, 10);
    let outage = pick(Duration::from_secs(10), Duration::from_secs(30));
    let ids = burst(&world, n, &["sleep 3"]);
    wait_running(&berth, &ids, 2).await;
    relay.cut();
    tokio::time::sleep(outage).await;
    relay.mend();
    let mended = Instant::now();
    let jobs = settle(&berth, &ids, Duration::from_secs(180)).await;
    let took = mended.elapsed();
    assert_all_completed(&world, &jobs);
    nothing_left(&world).await;
    figure("docker_partition", "jobs", n);
    figure("docker_partition", "outage_seconds", outage.as_secs());
    figure(
        "docker_partition",
        "mend_to_all_done_seconds",
        format!("{:.1}", took.as_secs_f64()),
    );
    figure(
        "docker_partition",
        "max_attempts",
        jobs.iter().map(|j| j.attempts).max().unwrap_or_default(),
    );
    berth.stop().await;
}

/// PostgreSQL stops mid-burst and comes back. While it is down the intake
/// answers 503 (GitHub's delivery fails and is redelivered), nothing
/// accepted is lost, and berth recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_mid_burst_loses_nothing() {
    let world = World::new().await;
    let mut pg = PrivatePostgres::start();
    let mut config = world.config("max_runners = 3");
    config.store.url = pg.url();
    let berth = Berth::start(&world, config).await;
    let n = pick(5, 20);
    let outage = pick(Duration::from_secs(5), Duration::from_secs(30));
    let ids = burst(&world, n, &["sleep 2"]);
    wait_running(&berth, &ids, 1).await;
    pg.stop();
    let stopped = Instant::now();
    // A job queued on GitHub while the database is down: its delivery is
    // refused with 503, and GitHub keeps it for a redelivery.
    let during = world.queue(&["echo during"]);
    wait_refused_delivery(&world, during).await;
    let ready = berth
        .http()
        .get(format!("{}/readyz", berth.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready without its database");
    let remaining = outage.saturating_sub(stopped.elapsed());
    tokio::time::sleep(remaining).await;
    pg.start_again();
    let back = Instant::now();
    wait_ready(&berth, "ready again").await;
    let ready_after = back.elapsed();
    // What the delivery catch-up (or an operator) does: redeliver.
    let refused: Vec<String> = world
        .sim
        .deliveries()
        .iter()
        .filter(|d| d.status.is_none_or(|s| s >= 500))
        .map(|d| d.guid.clone())
        .collect();
    for guid in &refused {
        world.sim.redeliver(guid).unwrap();
    }
    let mut all = ids.clone();
    all.push(during);
    let jobs = settle(&berth, &all, Duration::from_secs(180)).await;
    let done_after = back.elapsed();
    assert_all_completed(&world, &jobs);
    // Every delivery berth accepted is a job it ran.
    for d in world.sim.deliveries() {
        if d.status == Some(202) {
            assert!(berth.job(d.job_id).await.is_some(), "{d:?}");
        }
    }
    nothing_left(&world).await;
    figure("postgres_restart", "jobs", all.len());
    figure("postgres_restart", "outage_seconds", outage.as_secs());
    figure("postgres_restart", "refused_deliveries", refused.len());
    figure(
        "postgres_restart",
        "back_to_ready_seconds",
        format!("{:.1}", ready_after.as_secs_f64()),
    );
    figure(
        "postgres_restart",
        "back_to_all_done_seconds",
        format!("{:.1}", done_after.as_secs_f64()),
    );
    berth.stop().await;
}

/// The SQLite store's disk fills up: the intake answers 503 naming the
/// problem, nothing accepted is lost, and when space returns berth takes
/// work again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_work_and_recovers_when_space_returns() {
    let world = World::new().await;
    let fs = SmallFs::mount("16m");
    let mut config = world.config("max_runners = 2");
    config.store.url = format!("sqlite://{}", fs.path().join("berth.db").display());
    let berth = Berth::start(&world, config).await;
    let first = burst(&world, 2, &["echo before"]);
    let before = settle(&berth, &first, Duration::from_secs(60)).await;
    assert_all_completed(&world, &before);

    let filler = fs.fill();
    let refused_job = world.queue(&["echo while full"]);
    wait_refused_delivery(&world, refused_job).await;
    // The caller is told what is wrong.
    let answer = berth
        .http()
        .post(format!("{}/v1/jobs/delegate", berth.url))
        .bearer_auth(&berth.admin_token)
        .json(&serde_json::json!({
            "repository": "acme/widgets", "github_job_id": 999_001, "run_id": 1,
            "labels": ["self-hosted", "linux"]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let message = answer.text().await.unwrap();
    assert!(message.contains("unavailable"), "{message}");
    assert!(berth.job(refused_job).await.is_none());

    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    for d in world.sim.deliveries() {
        if d.job_id == refused_job && d.status == Some(503) {
            world.sim.redeliver(&d.guid).unwrap();
        }
    }
    let after = burst(&world, 2, &["echo after"]);
    let mut all = after.clone();
    all.push(refused_job);
    let jobs = settle(&berth, &all, Duration::from_secs(90)).await;
    assert_all_completed(&world, &jobs);
    // What berth acknowledged is on disk: a connection of its own sees
    // every job (an acknowledged write once sat in a transaction that was
    // never committed; store::reset_sqlite_writer).
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", fs.path().join("berth.db").display());
        let mut fresh = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let (on_disk,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
            .fetch_one(&mut fresh)
            .await
            .unwrap();
        assert_eq!(on_disk as usize, first.len() + all.len());
    }
    nothing_left(&world).await;
    figure(
        "sqlite_disk_full",
        "space_back_to_all_done_seconds",
        format!("{:.1}", freed.elapsed().as_secs_f64()),
    );
    berth.stop().await;
}

/// A PostgreSQL primary with a synchronous streaming standby: the primary
/// crashes mid-burst, the standby is promoted and berth is restarted on
/// it. Every delivery berth accepted is on the standby (RPO 0), the
/// deliveries refused meanwhile are caught up from GitHub's log, and
/// every job completes. The figures: RPO (accepted deliveries missing
/// after the failover) and RTO (primary crash → berth ready on the new
/// primary, including the promotion).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_standby_takes_over_with_nothing_accepted_lost() {
    let world = World::new().await;
    let primary = PrivatePostgres::start();
    primary.serve_standbys(true);
    let standby = PrivatePostgres::standby_of(&primary);
    let mut config = world.config("max_runners = 3");
    config.store.url = primary.url();
    let first = Berth::start(&world, config).await;
    let n = pick(6, 30);
    let ids = burst(&world, n, &["sleep 2"]);
    eventually("every job accepted", Duration::from_secs(60), || async {
        for id in &ids {
            if first.job(*id).await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
    wait_running(&first, &ids, 1).await;

    primary.crash();
    let crashed = Instant::now();
    standby.promote();
    // The new primary has no standby yet: with synchronous_standby_names
    // still set (it came with the base backup) every commit would wait
    // for one. An operator clears it until a new standby is attached
    // (docs/operations.md).
    standby.psql("ALTER SYSTEM RESET synchronous_standby_names");
    standby.psql("SELECT pg_reload_conf()");
    // What berth acknowledged (202) against what the new primary has.
    let accepted: std::collections::BTreeSet<u64> = world
        .sim
        .deliveries()
        .iter()
        .filter(|d| d.status == Some(202) && d.action == "queued")
        .map(|d| d.job_id)
        .collect();
    let on_standby: std::collections::BTreeSet<u64> = standby
        .psql("SELECT github_job_id FROM jobs")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost: Vec<_> = accepted.difference(&on_standby).collect();
    assert!(lost.is_empty(), "accepted but not on the standby: {lost:?}");
    // A job queued while no primary answers.
    let during = world.queue(&["echo during"]);
    first.stop().await;

    let mut config = world.config("max_runners = 3");
    config.store.url = standby.url();
    // The delivery catch-up has GitHub redeliver what no primary took;
    // often here, so the test need not wait for the default 5 minutes.
    config.reconcile.delivery_catchup_interval = Duration::from_secs(2);
    let second = Berth::start(&world, config).await;
    wait_ready(&second, "ready on the new primary").await;
    let rto = crashed.elapsed();
    let mut all = ids.clone();
    all.push(during);
    let jobs = settle(&second, &all, Duration::from_secs(180)).await;
    let done = crashed.elapsed();
    assert_all_completed(&world, &jobs);
    nothing_left(&world).await;
    figure("postgres_failover", "jobs", all.len());
    figure("postgres_failover", "rpo_accepted_lost", lost.len());
    figure(
        "postgres_failover",
        "rto_crash_to_ready_seconds",
        format!("{:.1}", rto.as_secs_f64()),
    );
    figure(
        "postgres_failover",
        "crash_to_all_done_seconds",
        format!("{:.1}", done.as_secs_f64()),
    );
    second.stop().await;
}

/// A rolling restart of two replicas on PostgreSQL, one after the other,
/// while jobs run (what an upgrade does once the new schema is in: the
/// schema step itself is tests/schema_upgrade.rs). Nothing is lost or
/// run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_two_replicas_loses_and_doubles_nothing() {
    let world = World::new().await;
    let pg = PrivatePostgres::start();
    let config = || {
        let mut config = world.config("max_runners = 4");
        config.store.url = pg.url();
        config
    };
    let a = Berth::start(&world, config()).await;
    let b = Berth::start(&world, config()).await;
    let n = pick(3, 10);
    let started = Instant::now();
    let mut ids = burst(&world, n, &["sleep 2"]);

    // Replace a, while b takes the webhooks.
    world.point_webhooks_at(&b.url);
    a.stop().await;
    let a2 = Berth::start(&world, config()).await;
    ids.extend(burst(&world, n, &["sleep 2"]));
    // Replace b, while a2 takes them.
    world.point_webhooks_at(&a2.url);
    b.stop().await;
    let b2 = Berth::start(&world, config()).await;
    ids.extend(burst(&world, n, &["sleep 2"]));

    let jobs = settle(&a2, &ids, Duration::from_secs(180)).await;
    assert_all_completed(&world, &jobs);
    nothing_left(&world).await;
    figure("rolling_restart", "jobs", ids.len());
    figure(
        "rolling_restart",
        "all_done_seconds",
        format!("{:.1}", started.elapsed().as_secs_f64()),
    );
    figure(
        "rolling_restart",
        "max_attempts",
        jobs.iter().map(|j| j.attempts).max().unwrap_or_default(),
    );
    a2.stop().await;
    b2.stop().await;
}
