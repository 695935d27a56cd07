//! The control API over HTTP, the `ghsim` binary, the engine's timers
//! (lost runners, cancel grace, environment approval) and a load run of
//! 200 jobs on 16 concurrent runner processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ghsim::{JobSpec, SimConfig};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

#[tokio::test]
async fn control_api_over_http() {
    let (rx, hook) = Receiver::start().await;
    let sim = start(fast_config()).await;
    let c = http();
    let b = sim.base_url();
    let r = c.get(format!("{b}/_sim/info")).send().await.unwrap();
    assert!(
        !r.headers().contains_key("x-ratelimit-limit"),
        "rate limits are for the REST API only"
    );
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["app_id"].as_u64(), Some(sim.app_id()));
    assert_eq!(info["installations"][0]["account"], "acme");

    let r = c
        .put(format!("{b}/_sim/webhook"))
        .json(&json!({"url": hook, "secret": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .post(format!("{b}/_sim/jobs"))
        .json(&json!({"repository": "acme/widgets", "labels": ["linux"], "steps": ["echo a", {"name": "b", "run": "echo b"}], "environment": "prod", "priority": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_u64().unwrap();
    assert_eq!(job["status"], "waiting");
    assert_eq!(job["steps"][1]["name"], "b");
    let r = c
        .post(format!("{b}/_sim/jobs/{id}/approve"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "queued");
    rx.wait(2, |_| true).await;

    // a JIT runner through the control API, run by the stand-in
    let r: Value = c
        .post(format!("{b}/_sim/runners/jit"))
        .json(&json!({"scope": "acme", "name": "ctl-runner", "labels": ["linux"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["runner"]["scope"], "org:acme");
    let runners: Vec<Value> = c
        .get(format!("{b}/_sim/runners"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(runners.len(), 1);
    assert_eq!(
        spawn_runner(r["encoded_jit_config"].as_str().unwrap())
            .finish()
            .await
            .0,
        0
    );
    let done: Value = c
        .get(format!("{b}/_sim/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["conclusion"], "success");
    assert_eq!(done["runner_name"], "ctl-runner");
    let log = c
        .get(format!("{b}/_sim/jobs/{id}/logs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(log, "a\nb\n");
    let all: Vec<Value> = c
        .get(format!("{b}/_sim/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 1);

    // cancel over HTTP; unknown ids are 404
    let q: Value = c
        .post(format!("{b}/_sim/jobs"))
        .json(&json!({"repository": "acme/widgets", "labels": ["x"], "steps": ["true"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .post(format!("{b}/_sim/jobs/{}/cancel", q["id"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["conclusion"], "cancelled");
    assert_eq!(
        c.get(format!("{b}/_sim/jobs/1"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // bad job specs: 422 / 404
    let r = c
        .post(format!("{b}/_sim/jobs"))
        .json(&json!({"repository": "nope", "labels": ["x"], "steps": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = c
        .post(format!("{b}/_sim/jobs"))
        .json(&json!({"repository": "stranger/x", "labels": ["x"], "steps": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // webhook faults over HTTP
    let r = c
        .post(format!("{b}/_sim/webhook/faults"))
        .json(&json!({"mode": "drop", "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let rules: Vec<Value> = c
        .get(format!("{b}/_sim/webhook/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        c.delete(format!("{b}/_sim/webhook/faults"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    // installation token without a JWT
    let t: Value = c
        .post(format!(
            "{b}/_sim/installations/{}/token",
            sim.installation_id("acme").unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .get(format!(
            "{}/repos/acme/widgets/actions/runners",
            sim.api_url()
        ))
        .bearer_auth(t["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sets: Vec<Value> = c
        .get(format!("{b}/_sim/scalesets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(sets.is_empty());
}

#[tokio::test]
async fn engine_timers_lost_runner_cancel_grace_and_auto_approval() {
    let sim = start(SimConfig {
        job_lock_timeout: Duration::from_millis(500),
        cancel_grace: Duration::from_millis(300),
        environment_auto_approve: Some(Duration::from_millis(100)),
        runner_idle_timeout: Duration::from_millis(600),
        ..fast_config()
    })
    .await;
    // a runner that acquires and then goes silent: the job fails
    let lost = sim
        .queue_job(JobSpec::new("acme/widgets", &["t"], &["true"]))
        .unwrap();
    let (_, jit) = mint_jit(
        &sim,
        &token(&sim, "acme").await,
        "acme/widgets",
        "silent",
        &["t"],
    )
    .await;
    let m = ManualRunner::connect(&jit).await;
    assert_eq!(m.acquire(&m.poll().await.unwrap()).await.0, 200);
    let j = sim
        .wait_job_completed(lost.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(j.conclusion.as_deref(), Some("failure"));
    assert!(
        sim.runners().is_empty(),
        "the ephemeral runner is removed with its job"
    );

    // cancel of a running job whose runner never reports: cancelled after the grace
    let job = sim
        .queue_job(JobSpec::new("acme/widgets", &["t"], &["true"]))
        .unwrap();
    let (_, jit) = mint_jit(
        &sim,
        &token(&sim, "acme").await,
        "acme/widgets",
        "deaf",
        &["t"],
    )
    .await;
    let m = ManualRunner::connect(&jit).await;
    assert_eq!(m.acquire(&m.poll().await.unwrap()).await.0, 200);
    let t = Instant::now();
    sim.cancel_job(job.id).unwrap();
    let j = sim
        .wait_job_completed(job.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(j.conclusion.as_deref(), Some("cancelled"));
    assert!(t.elapsed() >= Duration::from_millis(250));

    // a runner that stops polling goes offline, and may open a new session
    let (_, jit) = mint_jit(
        &sim,
        &token(&sim, "acme").await,
        "acme/widgets",
        "idle",
        &["none"],
    )
    .await;
    let _m = ManualRunner::connect(&jit).await;
    let status = |sim: &ghsim::SimHandle| {
        sim.runners()
            .iter()
            .find(|r| r.name == "idle")
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(status(&sim), "online");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(status(&sim), "offline");
    let _again = ManualRunner::connect(&jit).await;
    assert_eq!(status(&sim), "online");

    // environment jobs approve themselves after the configured delay
    let mut spec = JobSpec::new("acme/widgets", &["t"], &["true"]);
    spec.environment = Some("staging".into());
    let env = sim.queue_job(spec).unwrap();
    assert_eq!(env.status, "waiting");
    let j = sim
        .wait_job(env.id, Duration::from_secs(5), |j| j.status == "queued")
        .await
        .unwrap();
    assert_eq!(j.status, "queued");
}

#[tokio::test]
async fn ghsim_binary_prints_its_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.pem");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ghsim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--public-url",
            "http://host.docker.internal:9999",
            "--app-key-out",
        ])
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let info: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(info["public_url"], "http://host.docker.internal:9999");
    assert_eq!(info["installations"].as_array().unwrap().len(), 2);
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let base = info["base_url"].as_str().unwrap();
    let got: Value = http()
        .get(format!("{base}/_sim/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["app_id"], info["app_id"]);
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_on_sixteen_concurrent_runners() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    let n = 200;
    let concurrency = 16;
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in 0..n {
        let mut spec = JobSpec::new(
            if i % 2 == 0 {
                "acme/widgets"
            } else {
                "acme/gadgets"
            },
            &["load"],
            &[&format!("echo load-{i}")],
        );
        spec.priority = Some((i % 3) as i64);
        ids.push(sim.queue_job(spec).unwrap().id);
    }
    let org_jit = |name: String| {
        let sim = sim.clone();
        let tok = tok.clone();
        async move {
            let r: Value = http()
                .post(format!(
                    "{}/orgs/acme/actions/runners/generate-jitconfig",
                    sim.api_url()
                ))
                .bearer_auth(&tok)
                .json(&json!({"name": name, "runner_group_id": 1, "labels": ["load"]}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["encoded_jit_config"].as_str().unwrap().to_string()
        }
    };
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < concurrency {
            let jit = org_jit(format!("load-{next}")).await;
            set.spawn(async move { spawn_runner(&jit).finish().await });
            next += 1;
        }
        let (code, stderr) = set.join_next().await.unwrap().unwrap();
        assert_eq!(code, 0, "{stderr}");
    }
    for id in &ids {
        assert_eq!(sim.job(*id).unwrap().conclusion.as_deref(), Some("success"));
    }
    assert!(sim.runners().is_empty());
    eprintln!(
        "200 jobs on 16 concurrent runner processes: {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(40));
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let sim = start(fast_config()).await;
    let url = format!("{}/_sim/info", sim.base_url());
    let clone = sim.clone();
    drop(sim);
    assert_eq!(
        http().get(&url).send().await.unwrap().status(),
        200,
        "a clone keeps it running"
    );
    drop(clone);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert!(c.get(&url).send().await.is_err(), "stopped");
}
