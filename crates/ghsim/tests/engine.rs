//! The workflow engine with the real `ghsim-runner` binary as a host
//! process: JIT config shape, two-step and failing jobs, a runner "stealing"
//! a higher-priority job, cancellation (REST and SIGTERM), requeue of a job
//! not acquired in time, a deleted registration, and the runner's interface.

mod common;

use std::time::Duration;

use common::*;
use ghsim::{JitConfig, JobSpec, SimConfig, StepInput};
use serde_json::Value;

fn keys_and_types(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = match v {
                Value::Null => "null",
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            (k.clone(), t.to_string())
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn jit_config_has_the_real_shape() {
    let sim = start(SimConfig {
        public_url: Some("http://host.docker.internal:4321".into()),
        ..fast_config()
    })
    .await;
    let tok = token(&sim, "acme").await;
    let (_, encoded) = mint_jit(&sim, &tok, "acme/widgets", "shape", &["linux"]).await;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let outer: Value = serde_json::from_slice(&b64.decode(&encoded).unwrap()).unwrap();
    let fixture = read_json("runner/jitconfig.synthetic.json");
    assert_eq!(
        keys_and_types(&outer),
        keys_and_types(&fixture["decoded_outer"])
    );
    for file in [".runner", ".credentials", ".credentials_rsaparams"] {
        let decoded: Value =
            serde_json::from_slice(&b64.decode(outer[file].as_str().unwrap()).unwrap()).unwrap();
        let want = &fixture["decoded_files"][file];
        assert_eq!(keys_and_types(&decoded), keys_and_types(want), "{file}");
        if file == ".credentials" {
            assert_eq!(
                keys_and_types(&decoded["data"]),
                keys_and_types(&want["data"])
            );
            assert_eq!(decoded["scheme"], "OAuth");
            assert!(
                decoded["data"]["authorizationUrl"]
                    .as_str()
                    .unwrap()
                    .starts_with("http://host.docker.internal:4321/")
            );
        }
        if file == ".runner" {
            assert_eq!(decoded["agentName"], "shape");
            assert_eq!(decoded["ephemeral"], true);
            assert_eq!(decoded["useV2Flow"], true);
            for u in ["serverUrl", "serverUrlV2", "gitHubUrl"] {
                assert!(
                    decoded[u]
                        .as_str()
                        .unwrap()
                        .starts_with("http://host.docker.internal:4321/"),
                    "{u} uses the public URL"
                );
            }
        }
    }
    // the RSA parameters form a valid key, with inverseQ = q^-1 mod p
    let jit = JitConfig::decode(&encoded).unwrap();
    jit.rsa.to_key_pair().unwrap();
    let n = |s: &str| rsa::BigUint::from_bytes_be(&b64.decode(s).unwrap());
    let (p, q, iq) = (n(&jit.rsa.p), n(&jit.rsa.q), n(&jit.rsa.inverse_q));
    assert_eq!((q * iq) % &p, rsa::BigUint::from(1u8));
    // the fixture's own blob decodes with the same code
    let f = JitConfig::decode(fixture["encoded_jit_config"].as_str().unwrap()).unwrap();
    assert_eq!(f.runner.agent_name, "New runner");
    assert_eq!(
        f.credentials.data.client_id,
        "00000000-0000-0000-0000-000000000000"
    );
    // and what we encode decodes back to the same config
    assert_eq!(JitConfig::decode(&jit.encode().unwrap()).unwrap(), jit);
}

#[tokio::test]
async fn two_step_job_completes_on_the_stand_in() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    let (runner, jit) = mint_jit(
        &sim,
        &tok,
        "acme/widgets",
        "berth-two-step",
        &["self-hosted", "linux"],
    )
    .await;
    let proc = spawn_runner(&jit);
    let mut spec = JobSpec::new("acme/widgets", &["self-hosted", "linux"], &[]);
    spec.steps = vec![
        StepInput::Named { name: Some("greet".into()), run: "echo hello from step one".into() },
        StepInput::Command("echo step two in $GITHUB_REPOSITORY; pwd; echo jit=${ACTIONS_RUNNER_INPUT_JITCONFIG:-unset}; printf 'bin\\377ary\\n'; head -c 300000 /dev/zero | tr '\\0' x; echo; echo tail".into()),
    ];
    let job = sim.queue_job(spec).unwrap();
    let (code, stderr) = proc.finish().await;
    assert_eq!(code, 0, "{stderr}");
    let done = sim.job(job.id).unwrap();
    assert_eq!(done.status, "completed");
    assert_eq!(done.conclusion.as_deref(), Some("success"));
    assert_eq!(done.runner_name.as_deref(), Some("berth-two-step"));
    assert_eq!(done.runner_id, runner["id"].as_u64());
    assert_eq!(done.steps.len(), 2);
    assert_eq!(done.steps[0].name, "greet");
    assert!(
        done.steps
            .iter()
            .all(|s| s.status == "completed" && s.conclusion.as_deref() == Some("success"))
    );
    assert_eq!(done.steps[0].output, ["hello from step one"]);
    assert_eq!(done.steps[1].output[0], "step two in acme/widgets");
    assert!(
        done.steps[1].output[1].ends_with("_work/widgets/widgets"),
        "{:?}",
        done.steps[1].output
    );
    assert_eq!(done.steps[1].output[2], "jit=unset");
    assert_eq!(
        done.steps[1].output[3], "bin\u{fffd}ary",
        "invalid UTF-8 does not stop the output"
    );
    assert_eq!(
        done.steps[1].output[4].len(),
        300_000,
        "long lines arrive whole"
    );
    assert_eq!(done.steps[1].output[5], "tail");
    // the log over the HTTP control API
    let log = http()
        .get(format!("{}/_sim/jobs/{}/logs", sim.base_url(), job.id))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        log.starts_with("hello from step one\nstep two in acme/widgets\n"),
        "{log}"
    );
    // the runner is gone: REST and control API
    let list: Value = http()
        .get(format!(
            "{}/repos/acme/widgets/actions/runners",
            sim.api_url()
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total_count"], 0);
    assert!(sim.runners().is_empty());
}

#[tokio::test]
async fn failing_step_fails_the_job() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    let job = sim
        .queue_job(JobSpec::new(
            "acme/widgets",
            &["linux"],
            &["echo before", "echo oops >&2; exit 3", "echo never"],
        ))
        .unwrap();
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "berth-fail", &["linux"]).await;
    let (code, stderr) = spawn_runner(&jit).finish().await;
    assert_eq!(
        code, 0,
        "a job that ran and was reported exits 0 whatever its conclusion: {stderr}"
    );
    let done = sim.job(job.id).unwrap();
    assert_eq!(done.conclusion.as_deref(), Some("failure"));
    let c: Vec<_> = done
        .steps
        .iter()
        .map(|s| s.conclusion.clone().unwrap())
        .collect();
    assert_eq!(c, ["success", "failure", "skipped"]);
    assert!(
        sim.job_log(job.id)
            .unwrap()
            .contains("oops\n##[error]Process completed with exit code 3.")
    );
}

#[tokio::test]
async fn a_runner_takes_any_matching_job_highest_priority_first() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    // job A queued, a runner minted "for" it, then a higher-priority job B
    let a = sim
        .queue_job(JobSpec::new("acme/widgets", &["linux"], &["echo A"]))
        .unwrap();
    let (_, jit_for_a) = mint_jit(&sim, &tok, "acme/widgets", "minted-for-a", &["linux"]).await;
    let mut spec_b = JobSpec::new("acme/widgets", &["linux"], &["echo B"]);
    spec_b.priority = Some(10);
    let b = sim.queue_job(spec_b).unwrap();
    // an org runner serves repositories of its org too
    let c = sim
        .queue_job(JobSpec::new("acme/gadgets", &["linux"], &["echo C"]))
        .unwrap();
    assert_eq!(spawn_runner(&jit_for_a).finish().await.0, 0);
    assert_eq!(
        sim.job(b.id).unwrap().runner_name.as_deref(),
        Some("minted-for-a"),
        "B stolen by A's runner"
    );
    assert_eq!(sim.job(a.id).unwrap().status, "queued");
    // FIFO among equals: A (older) before C
    let r = http()
        .post(format!(
            "{}/orgs/acme/actions/runners/generate-jitconfig",
            sim.api_url()
        ))
        .bearer_auth(&tok)
        .json(&serde_json::json!({"name": "org-runner", "runner_group_id": 1, "labels": ["linux"]}))
        .send()
        .await
        .unwrap();
    let jit: Value = r.json().await.unwrap();
    assert_eq!(
        spawn_runner(jit["encoded_jit_config"].as_str().unwrap())
            .finish()
            .await
            .0,
        0
    );
    assert_eq!(
        sim.job(a.id).unwrap().runner_name.as_deref(),
        Some("org-runner")
    );
    let jit2: Value = http()
        .post(format!(
            "{}/orgs/acme/actions/runners/generate-jitconfig",
            sim.api_url()
        ))
        .bearer_auth(&tok)
        .json(
            &serde_json::json!({"name": "org-runner-2", "runner_group_id": 1, "labels": ["LINUX"]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        spawn_runner(jit2["encoded_jit_config"].as_str().unwrap())
            .finish()
            .await
            .0,
        0
    );
    let c = sim.job(c.id).unwrap();
    assert_eq!(
        (c.conclusion.as_deref(), c.runner_name.as_deref()),
        (Some("success"), Some("org-runner-2")),
        "labels match case-insensitively"
    );
}

#[tokio::test]
async fn labels_and_scope_must_match() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    sim.queue_job(JobSpec::new("acme/widgets", &["linux", "gpu"], &["true"]))
        .unwrap();
    sim.queue_job(JobSpec::new("acme/gadgets", &["linux"], &["true"]))
        .unwrap();
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "no-gpu", &["linux"]).await;
    let m = ManualRunner::connect(&jit).await;
    assert!(
        m.poll().await.is_none(),
        "neither the gpu job nor another repository's job"
    );
}

#[tokio::test]
async fn cancelling_a_running_job_over_rest() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    let job = sim
        .queue_job(JobSpec::new(
            "acme/widgets",
            &["linux"],
            &["echo started; sleep 30", "echo never"],
        ))
        .unwrap();
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "to-cancel", &["linux"]).await;
    let proc = spawn_runner(&jit);
    let j = sim
        .wait_job(job.id, Duration::from_secs(10), |j| {
            j.steps[0].output.first().map(String::as_str) == Some("started")
        })
        .await
        .unwrap();
    assert_eq!(j.status, "in_progress");
    let t = std::time::Instant::now();
    let r = http()
        .post(format!(
            "{}/repos/acme/widgets/actions/runs/{}/cancel",
            sim.api_url(),
            job.run_id
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (code, stderr) = proc.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the step was killed, not waited for"
    );
    let done = sim.job(job.id).unwrap();
    assert_eq!(done.conclusion.as_deref(), Some("cancelled"));
    let c: Vec<_> = done
        .steps
        .iter()
        .map(|s| s.conclusion.clone().unwrap())
        .collect();
    assert_eq!(c, ["cancelled", "skipped"]);
}

#[tokio::test]
async fn sigterm_kills_the_step_and_reports_cancelled() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    let job = sim
        .queue_job(JobSpec::new(
            "acme/widgets",
            &["linux"],
            &["echo started; sleep 30"],
        ))
        .unwrap();
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "to-term", &["linux"]).await;
    let proc = spawn_runner(&jit);
    sim.wait_job(job.id, Duration::from_secs(10), |j| {
        !j.steps[0].output.is_empty()
    })
    .await
    .unwrap();
    let pid = rustix::process::Pid::from_raw(proc.child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let (code, stderr) = proc.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        sim.job(job.id).unwrap().conclusion.as_deref(),
        Some("cancelled")
    );
}

#[tokio::test]
async fn a_job_not_acquired_in_time_is_requeued() {
    let sim = start(SimConfig {
        offer_timeout: Duration::from_millis(600),
        ..fast_config()
    })
    .await;
    let tok = token(&sim, "acme").await;
    let job = sim
        .queue_job(JobSpec::new("acme/widgets", &["linux"], &["echo requeued"]))
        .unwrap();
    let (_, jit_slow) = mint_jit(&sim, &tok, "acme/widgets", "slow", &["linux"]).await;
    let slow = ManualRunner::connect(&jit_slow).await;
    let offer = slow.poll().await.expect("offered to the slow runner");
    assert_eq!(
        sim.job(job.id).unwrap().offered_to,
        sim.runners()
            .iter()
            .find(|r| r.name == "slow")
            .map(|r| r.id)
    );
    // while offered, nobody else gets it
    let (_, jit_fast) = mint_jit(&sim, &tok, "acme/widgets", "fast", &["linux"]).await;
    let fast = ManualRunner::connect(&jit_fast).await;
    // after the offer timeout it goes to the other runner
    let again = fast
        .poll()
        .await
        .or(fast.poll().await)
        .expect("requeued and offered again");
    assert_eq!(again.runner_request_id, offer.runner_request_id);
    assert_eq!(fast.acquire(&again).await.0, 200);
    // the slow runner's late acquire: 409
    assert_eq!(slow.acquire(&offer).await.0, 409);
    let j = sim.job(job.id).unwrap();
    assert_eq!(
        (j.status.as_str(), j.runner_name.as_deref(), j.offers),
        ("in_progress", Some("fast"), 2)
    );
    assert!(sim.job_log(job.id).unwrap().contains("requeued"));
}

#[tokio::test]
async fn deleted_registration_stops_a_waiting_runner() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    let (runner, jit) = mint_jit(&sim, &tok, "acme/widgets", "to-delete", &["linux"]).await;
    let proc = spawn_runner(&jit);
    let id = runner["id"].as_u64().unwrap();
    for _ in 0..100 {
        if sim
            .runners()
            .iter()
            .any(|r| r.id == id && r.status == "online")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http()
        .delete(format!(
            "{}/repos/acme/widgets/actions/runners/{id}",
            sim.api_url()
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (code, stderr) = proc.finish().await;
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("registration deleted"), "{stderr}");
}

#[tokio::test]
async fn runner_interface() {
    let bin = env!("CARGO_BIN_EXE_ghsim-runner");
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ghsim-runner {}", env!("CARGO_PKG_VERSION"))
    );
    // bad JIT config: exit 2 with a clear message
    let out = std::process::Command::new(bin)
        .args(["run", "--jitconfig", "not-base64!"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid JIT config"));
    let out = std::process::Command::new(bin)
        .arg("run")
        .env_remove("ACTIONS_RUNNER_INPUT_JITCONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ACTIONS_RUNNER_INPUT_JITCONFIG"));
    // unreachable server: exit 3 (authentication failed)
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "env-runner", &["linux"]).await;
    let job = sim
        .queue_job(JobSpec::new(
            "acme/widgets",
            &["linux"],
            &["echo via-env ${ACTIONS_RUNNER_INPUT_JITCONFIG:-unset}"],
        ))
        .unwrap();
    // the JIT config from the environment (removed before steps run)
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(bin)
        .arg("run")
        .current_dir(dir.path())
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", &jit)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim.job_log(job.id).unwrap(), "via-env unset\n");
    sim.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, jit2) = {
        let sim2 = start(fast_config()).await;
        let tok2 = token(&sim2, "acme").await;
        let r = mint_jit(&sim2, &tok2, "acme/widgets", "orphan", &["linux"]).await;
        sim2.shutdown();
        tokio::time::sleep(Duration::from_millis(100)).await;
        r
    };
    let out = tokio::process::Command::new(bin)
        .args(["run", "--jitconfig", &jit2])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn many_jobs_on_many_runners() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    let n = 24;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            sim.queue_job(JobSpec::new(
                "acme/widgets",
                &["linux"],
                &[&format!("echo job-{i}")],
            ))
            .unwrap()
            .id,
        );
    }
    let mut running = Vec::new();
    for i in 0..n {
        let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", &format!("bulk-{i}"), &["linux"]).await;
        running.push(spawn_runner(&jit));
        if running.len() == 8 {
            for p in running.drain(..) {
                assert_eq!(p.finish().await.0, 0);
            }
        }
    }
    for p in running {
        assert_eq!(p.finish().await.0, 0);
    }
    let mut names = std::collections::HashSet::new();
    for id in ids {
        let j = sim.job(id).unwrap();
        assert_eq!(j.conclusion.as_deref(), Some("success"));
        assert!(
            names.insert(j.runner_name.unwrap()),
            "one job per ephemeral runner"
        );
    }
    assert!(sim.runners().is_empty());
}

#[tokio::test]
async fn large_output_arrives_whole_and_in_order() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    let job = sim
        .queue_job(JobSpec::new(
            "acme/widgets",
            &["linux"],
            &[
                "seq 1 100000",
                "head -c 3000000 /dev/zero | tr '\\0' y; echo",
            ],
        ))
        .unwrap();
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "chatty", &["linux"]).await;
    let (code, stderr) = spawn_runner(&jit).finish().await;
    assert_eq!(code, 0, "{stderr}");
    let j = sim.job(job.id).unwrap();
    assert_eq!(j.conclusion.as_deref(), Some("success"));
    assert_eq!(j.steps[0].output.len(), 100_000);
    assert!(
        j.steps[0]
            .output
            .iter()
            .enumerate()
            .all(|(i, l)| *l == (i + 1).to_string())
    );
    assert_eq!(j.steps[1].output.len(), 1);
    assert_eq!(j.steps[1].output[0].len(), 3_000_000);
}

#[tokio::test]
async fn runners_use_the_public_url_resolved_through_etc_hosts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = SimConfig {
        public_url: Some(format!("http://localhost:{port}")),
        ..fast_config()
    };
    let sim = ghsim::Simulator::start(cfg, listener).unwrap();
    assert_eq!(sim.public_url(), format!("http://localhost:{port}"));
    let tok = token(&sim, "acme").await;
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "public", &["linux"]).await;
    let decoded = JitConfig::decode(&jit).unwrap();
    assert!(
        decoded
            .runner
            .server_url_v2
            .starts_with("http://localhost:")
    );
    assert!(
        decoded
            .credentials
            .data
            .authorization_url
            .starts_with("http://localhost:")
    );
    let job = sim
        .queue_job(JobSpec::new(
            "acme/widgets",
            &["linux"],
            &["echo $GITHUB_SERVER_URL"],
        ))
        .unwrap();
    let (code, stderr) = spawn_runner(&jit).finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        sim.job_log(job.id).unwrap(),
        format!("http://localhost:{port}\n")
    );
}

#[tokio::test]
async fn container_jobs_carry_containers_services_actions_and_variables() {
    let sim = start(fast_config()).await;
    let tok = token(&sim, "acme").await;
    // Over the HTTP control API, in the workflow file's shapes (a raw body:
    // `json!` would sort the services).
    let spec = serde_json::json!({
        "repository": "acme/widgets", "labels": ["linux"],
        "container": {"image": "docker://node:22", "env": {"NODE_ENV": "test"},
                      "options": "--cpus 1", "ports": [8080, "9090:90"],
                      "volumes": ["my_docker_volume:/volume_mount"],
                      "credentials": {"username": "u", "password": "p"}},
        "services": {"redis": "redis:7", "db": {"image": "postgres:16", "ports": ["5432"],
                     "entrypoint": "docker-entrypoint.sh", "command": "postgres -c fsync=off"}},
        "steps": [
            "echo plain",
            {"name": "bash", "run": "echo $X", "shell": "bash", "env": {"X": "1"}},
            {"uses": "docker://alpine:3.20", "args": ["echo", "hi"], "entrypoint": "/bin/sh", "env": {"Y": "2"}},
            {"name": "local", "uses": "./.github/actions/hello", "dockerfile": true, "args": "a b"},
            {"uses": "acme/tools/lint@v2", "dockerfile": "FROM alpine\n"}
        ]
    });
    let body = spec.to_string().replace(
        r#""services":{"db":{"command":"postgres -c fsync=off","entrypoint":"docker-entrypoint.sh","image":"postgres:16","ports":["5432"]},"redis":"redis:7"}"#,
        r#""services":{"redis":"redis:7","db":{"command":"postgres -c fsync=off","entrypoint":"docker-entrypoint.sh","image":"postgres:16","ports":["5432"]}}"#,
    );
    assert!(body.contains(r#"{"redis":"redis:7","db""#), "{body}");
    let r = http()
        .post(format!("{}/_sim/jobs", sim.base_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let view: Value = r.json().await.unwrap();
    let names: Vec<&str> = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Initialize containers",
            "Run echo plain",
            "bash",
            "Run docker://alpine:3.20",
            "local",
            "Run acme/tools/lint@v2",
            "Stop containers"
        ]
    );
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "manual", &["linux"]).await;
    let m = ManualRunner::connect(&jit).await;
    let offer = m.poll().await.unwrap();
    let (status, job) = m.acquire(&offer).await;
    assert_eq!(status, 200);
    let job = job.unwrap();
    let c = job.job_container.as_ref().unwrap();
    assert_eq!(c.image, "node:22", "docker:// is stripped");
    assert_eq!(c.ports, ["8080", "9090:90"]);
    assert_eq!(c.options.as_deref(), Some("--cpus 1"));
    assert_eq!(c.credentials.as_ref().unwrap().username, "u");
    let services: Vec<&str> = job
        .job_service_containers
        .0
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(services, ["redis", "db"], "in the order given");
    assert_eq!(
        job.job_service_containers.0[1].1.command.as_deref(),
        Some("postgres -c fsync=off")
    );
    assert_eq!(
        job.variables["DistributedTask.AllowRunnerContainerHooks"].value,
        "true"
    );
    let numbers: Vec<u32> = job.steps.iter().map(|s| s.number).collect();
    assert_eq!(
        numbers,
        [2, 3, 4, 5, 6],
        "1 and 7 are the runner's own steps"
    );
    let refs: Vec<Value> = job
        .steps
        .iter()
        .map(|s| serde_json::to_value(s.reference.as_ref().unwrap()).unwrap())
        .collect();
    assert_eq!(refs[0], serde_json::json!({"type": "script"}));
    assert_eq!(
        refs[2],
        serde_json::json!({"type": "containerRegistry", "image": "alpine:3.20"})
    );
    assert_eq!(
        refs[3],
        serde_json::json!({"type": "repository", "repositoryType": "self", "path": ".github/actions/hello"})
    );
    assert_eq!(
        refs[4],
        serde_json::json!({"type": "repository", "repositoryType": "GitHub", "name": "acme/tools", "ref": "v2", "path": "lint"})
    );
    assert_eq!(job.steps[1].inputs["shell"], "bash");
    assert_eq!(job.steps[1].environment["X"], "1");
    assert_eq!(job.steps[2].inputs["args"], "echo hi");
    assert_eq!(job.steps[2].inputs["entrypoint"], "/bin/sh");
    assert_eq!(job.steps[3].inputs["args"], "a b");
    assert_eq!(
        job.steps[3].ghsim_dockerfile.as_deref(),
        Some(ghsim::engine::DEFAULT_DOCKERFILE)
    );
    assert_eq!(
        job.steps[4].ghsim_dockerfile.as_deref(),
        Some("FROM alpine\n")
    );

    // Without the variable, and without containers: the old message.
    let mut plain = JobSpec::new("acme/widgets", &["plain"], &["true"]);
    plain.allow_container_hooks = Some(false);
    sim.queue_job(plain).unwrap();
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "manual2", &["plain"]).await;
    let m = ManualRunner::connect(&jit).await;
    let offer = m.poll().await.unwrap();
    let (_, job) = m.acquire(&offer).await;
    let job = job.unwrap();
    assert!(job.variables.is_empty());
    assert!(job.job_container.is_none() && job.job_service_containers.is_empty());
    assert_eq!(job.steps[0].number, 1);

    // Bad specs are refused.
    for bad in [
        serde_json::json!({"repository": "acme/widgets", "labels": ["x"], "steps": [{"uses": "actions/checkout@v4"}]}),
        serde_json::json!({"repository": "acme/widgets", "labels": ["x"], "steps": [{"uses": "docker://"}]}),
        serde_json::json!({"repository": "acme/widgets", "labels": ["x"], "steps": [{"run": "x", "uses": "docker://a"}]}),
        serde_json::json!({"repository": "acme/widgets", "labels": ["x"], "steps": ["true"], "container": {"image": "a", "entrypoint": "b"}}),
        serde_json::json!({"repository": "acme/widgets", "labels": ["x"], "steps": ["true"], "container": ""}),
    ] {
        let r = http()
            .post(format!("{}/_sim/jobs", sim.base_url()))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{bad} -> {}", r.status());
    }
}
