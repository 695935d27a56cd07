//! `berth bench` end to end with tiny numbers, and what group commit must
//! keep: one job per GitHub job under concurrent duplicate deliveries, and
//! no accepted delivery lost when `berth serve` is killed (`kill -9`)
//! right after its 202s. `berth bench placement` runs on the test
//! PostgreSQL (`BERTH_TEST_POSTGRES_URL`) and SQLite.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::bench::{ServeChild, intake, sign, workflow_job_queued};
use berth::store::Store;
use common::{WEBHOOK_SECRET, World};
use ghsim::{FaultKind, FaultRule};
use serde_json::Value;

fn berth_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_berth"))
}

fn percentiles_are_sane(report: &Value, path: &str, count: u64) {
    let p = report
        .pointer(path)
        .unwrap_or_else(|| panic!("{path} missing"));
    assert_eq!(p["count"], count, "{path}: {p}");
    let (p50, p95, p99) = (
        p["p50"].as_f64().unwrap(),
        p["p95"].as_f64().unwrap(),
        p["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p95 && p95 <= p99, "{path}: {p}");
    assert!(p99 < 60_000.0, "{path}: {p}");
}

#[test]
fn pipeline_bench_runs_every_job_both_ways_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(berth_exe())
        .args([
            "bench",
            "pipeline",
            "--jobs",
            "5",
            "--concurrency",
            "2",
            "--track",
            "30",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("throughput ratio"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["bench"], "pipeline");
    assert_eq!(report["jobs"], 5);
    assert_eq!(report["concurrency"], 2);
    assert_eq!(report["raw_docker"]["succeeded"], 5, "{report}");
    assert_eq!(report["pipeline"]["succeeded"], 5, "{report}");
    assert_eq!(report["pipeline"]["failed"], 0);
    assert_eq!(report["containers_left"], 0);
    for path in [
        "/raw_docker/create_to_running_ms",
        "/raw_docker/running_to_exited_ms",
        "/raw_docker/exited_to_removed_ms",
        "/pipeline/webhook_to_running_ms",
        "/pipeline/running_to_done_ms",
        "/pipeline/done_to_removed_ms",
    ] {
        percentiles_are_sane(&report, path, 5);
    }
    // berth's own account of each hand-off, read from its log.
    for phase in [
        "claim_wait_ms",
        "runner_ms",
        "container_ms",
        "record_ms",
        "start_ms",
    ] {
        let p = &report["pipeline"]["handoff"][phase];
        assert!(p["count"].as_u64().unwrap() >= 5, "{phase}: {p}");
        assert!(p["p50"].as_f64().unwrap() >= 0.0, "{phase}: {p}");
    }
    let handoff = &report["pipeline"]["handoff"];
    assert!(
        handoff["start_ms"]["p50"].as_f64().unwrap() > 0.0
            && handoff["container_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{handoff}"
    );
    for way in ["raw_docker", "pipeline"] {
        let rate = report[way]["jobs_per_second"].as_f64().unwrap();
        let wall = report[way]["wall_seconds"].as_f64().unwrap();
        assert!(
            rate > 0.0 && (rate * wall - 5.0).abs() < 0.01,
            "{way}: {report}"
        );
    }
    let ratio = report["throughput_ratio"].as_f64().unwrap();
    let expected = report["pipeline"]["jobs_per_second"].as_f64().unwrap()
        / report["raw_docker"]["jobs_per_second"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9);
    let serve = &report["serve"];
    assert_eq!(serve["jobs_tracked"], 35, "5 run + 30 parked: {serve}");
    assert_eq!(serve["jobs_live"], 30, "the parked ones: {serve}");
    let rss = serve["peak_rss_mib"].as_f64().unwrap();
    assert!(rss > 5.0 && rss < 1024.0, "{serve}");
    let cpu = serve["cpu_seconds_pipeline"].as_f64().unwrap();
    assert!(cpu > 0.0 && cpu <= serve["cpu_seconds_total"].as_f64().unwrap());
    for key in [
        "throughput_ratio_at_least_0_9",
        "webhook_to_running_p95_within_15_ms",
        "rss_at_most_60_mib_with_1000_jobs",
    ] {
        assert!(report["targets"][key].is_boolean(), "{key}");
    }
    assert_eq!(
        report["targets"]["rss_at_most_60_mib_with_1000_jobs"], false,
        "35 < 1000 jobs"
    );
}

#[test]
fn intake_bench_stores_every_accepted_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(berth_exe())
        .args([
            "bench",
            "intake",
            "--deliveries",
            "400",
            "--connections",
            "8",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for mode in ["group_commit", "without_group_commit"] {
        let run = &report[mode];
        assert_eq!(run["accepted"], 400, "{mode}: {run}");
        assert_eq!(run["failed"], 0, "{mode}: {run}");
        assert_eq!(run["jobs_stored"], 400, "{mode}: {run}");
        // The pool's one slot holds one job; the rest wait.
        assert_eq!(run["jobs_queued"], 399, "{mode}: {run}");
        percentiles_are_sane(&report, &format!("/{mode}/latency_ms"), 400);
    }
    assert_eq!(report["targets"]["every_accept_stored"], true);
    assert!(report["throughput_ratio"].as_f64().unwrap() > 0.0);
}

/// A child `berth serve` for `world` whose GitHub calls all hang, so no
/// job gets a container while the test runs.
async fn serve_without_runners(world: &World) -> ServeChild {
    let mut hang = FaultRule::new(FaultKind::Slow);
    hang.delay_ms = Some(3_600_000);
    world.sim.add_fault(hang);
    let addr = berth::bench::free_loopback_addr().unwrap();
    let path = world.dir.path().join("serve.toml");
    std::fs::write(
        &path,
        world.config_toml(&addr.to_string(), "max_runners = 1"),
    )
    .unwrap();
    ServeChild::start(
        berth_exe(),
        &path,
        &format!("http://{addr}"),
        &world.dir.path().join("serve.log"),
    )
    .await
    .unwrap()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    delivery: String,
    body: Vec<u8>,
) -> reqwest::Result<(u16, Value)> {
    let response = client
        .post(format!("{url}/v1/webhooks/github"))
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sign(WEBHOOK_SECRET, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_keeps_duplicates_single_and_loses_no_accepted_delivery_on_kill_9() {
    let world = World::new().await;
    let serve = serve_without_runners(&world).await;
    let url = serve.url.clone();
    let client = reqwest::Client::new();

    // 1. One GitHub job delivered 40 times at once (30 distinct delivery
    //    ids, 10 redeliveries of one id): one job, one `queued` answer.
    let job_id = 424_242;
    let body = workflow_job_queued(job_id, "acme/widgets", &["self-hosted", "linux"]);
    let answers = futures::future::join_all((0..40).map(|i| {
        let delivery = if i < 30 {
            format!("dup-{i}")
        } else {
            "redelivered".to_owned()
        };
        post(&client, &url, delivery, body.clone())
    }))
    .await;
    let mut outcomes = Vec::new();
    let mut ids = BTreeSet::new();
    for answer in answers {
        let (status, json) = answer.unwrap();
        assert_eq!(status, 202, "{json}");
        outcomes.push(json["outcome"].as_str().unwrap().to_owned());
        ids.insert(json["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        outcomes.iter().filter(|o| *o == "queued").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| *o == "duplicate").count(),
        39,
        "{outcomes:?}"
    );
    assert_eq!(ids.len(), 1, "every answer names the same job: {ids:?}");

    // 2. Many distinct deliveries over 16 connections; kill -9 once 300
    //    were accepted, with more in flight.
    let deliveries = Arc::new(intake::signed_deliveries(WEBHOOK_SECRET, 3000));
    let accepted: Arc<Mutex<Vec<i64>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let (deliveries, accepted, next) = (deliveries.clone(), accepted.clone(), next.clone());
            let (client, url) = (reqwest::Client::new(), url.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(d) = deliveries.get(i) else { return };
                    let sent = client
                        .post(format!("{url}/v1/webhooks/github"))
                        .header("X-GitHub-Event", "workflow_job")
                        .header("X-GitHub-Delivery", &d.delivery_id)
                        .header("X-Hub-Signature-256", &d.signature)
                        .body(d.body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 202 => {
                            let job: Value = serde_json::from_slice(&d.body).unwrap();
                            let id = job["workflow_job"]["id"].as_i64().unwrap();
                            accepted.lock().unwrap().push(id);
                        }
                        Ok(r) => panic!("delivery {i} answered {}", r.status()),
                        // berth is gone: stop.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while accepted.lock().unwrap().len() < 300 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "300 deliveries were not accepted in 60 s");
    serve.kill().await;
    for sender in senders {
        sender.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() < deliveries.len(),
        "the kill came after every delivery; nothing was tested"
    );

    // 3. Every delivery answered 202 is in the store after the crash.
    let store = Store::connect(&format!(
        "sqlite://{}",
        world.dir.path().join("berth.db").display()
    ))
    .await
    .unwrap();
    let mut missing = Vec::new();
    for id in &accepted {
        if store.job_get_by_github_id(*id).await.unwrap().is_none() {
            missing.push(*id);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} accepted deliveries lost: {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(10)]
    );
    let duplicate = store.job_get_by_github_id(job_id).await.unwrap();
    assert!(duplicate.is_some());
    store.close().await;
}

/// `berth bench placement` with two replica processes on the test
/// PostgreSQL and one on SQLite: its own checks pass (every job claimed
/// once and completed on an offered host, no host over its slots), which
/// the report shows run by run. Its speed is not checked here.
#[test]
fn placement_bench_claims_every_job_once_within_the_slots() {
    let postgres = std::env::var("BERTH_TEST_POSTGRES_URL").expect(
        "BERTH_TEST_POSTGRES_URL is not set: run scripts/test, or eval \"$(scripts/postgres-test-server)\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(berth_exe())
        .args([
            "bench",
            "placement",
            "--jobs",
            "200",
            "--replicas",
            "2",
            "--postgres",
            &postgres,
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ratio placement / pre-fleet"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["bench"], "placement");
    assert_eq!(report["checks_passed"], true, "{report}");
    let runs = report["runs"].as_array().unwrap();
    let mut seen = BTreeSet::new();
    for run in runs {
        let checks = &run["checks"];
        let name = format!("{} {} ×{}", run["db"], run["statement"], run["replicas"]);
        assert_eq!(checks["failures"], serde_json::json!([]), "{name}: {run}");
        assert_eq!(checks["claims_reported"], 200, "{name}");
        assert_eq!(checks["distinct_jobs_claimed"], 200, "{name}");
        assert_eq!(checks["completed_once"], 200, "{name}");
        assert_eq!(checks["misplaced"], 0, "{name}");
        assert_eq!(checks["over_slots_seen"], 0, "{name}");
        percentiles_are_sane(run, "/latency_ms", 200);
        let placed: u64 = run["per_host"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(host, n)| {
                assert!(host.starts_with("host-"), "{name}: a job on {host}");
                n.as_u64().unwrap()
            })
            .sum();
        let expected = if run["statement"] == "placement" {
            200
        } else {
            0
        };
        assert_eq!(placed, expected, "{name}: {run}");
        if run["statement"] == "placement" {
            // The check after each claim saw the hosts it placed on, never over one slot.
            let busy = checks["max_busy"].as_object().unwrap();
            assert!(!busy.is_empty(), "{name}: {run}");
            assert!(busy.values().all(|n| n == 1), "{name}: {run}");
        }
        seen.insert(name);
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            "\"postgres\" \"placement\" ×2".to_string(),
            "\"postgres\" \"pre-fleet\" ×2".to_string(),
            "\"sqlite\" \"placement\" ×1".to_string(),
            "\"sqlite\" \"pre-fleet\" ×1".to_string(),
        ])
    );
}

#[test]
fn hook_bench_runs_steps_and_prepares_both_ways_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(berth_exe())
        .args(["bench", "hook", "--steps", "4", "--prepares", "1"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("added by the hook per step"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for (path, n) in [
        ("step_hook", 4),
        ("step_direct", 4),
        ("prepare_hook", 1),
        ("prepare_direct", 1),
    ] {
        assert_eq!(report[path]["n"], n, "{report}");
        let (p50, p95) = (
            report[path]["p50_ms"].as_f64().unwrap(),
            report[path]["p95_ms"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p95, "{path}: {report}");
    }
    // Nothing of either path is left on the engine.
    for args in [
        &[
            "ps",
            "-aq",
            "--filter",
            "label=berth.instance=berth-bench-hook",
        ][..],
        &["ps", "-aq", "--filter", "label=berth.bench=hook"],
        &["network", "ls", "-q", "--filter", "label=berth.bench=hook"],
        &[
            "volume",
            "ls",
            "-q",
            "--filter",
            "label=berth.instance=berth-bench-hook",
        ],
    ] {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "left behind ({args:?}): {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
