//! Webhook conformance: the fixtures validate (proving the validator setup),
//! the signature vectors verify with the simulator's signing code, every
//! action the simulator emits validates against the octokit schemas and
//! carries GitHub's delivery headers, and delivery faults and redelivery
//! behave as documented.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use ghsim::webhooks::{sign_sha1, sign_sha256, verify_sha256};
use ghsim::{DeliveryFault, JobSpec, SimConfig, WebhookFaultRule, WebhookTarget};
use serde_json::Value;

const SECRET: &str = "It's a Secret to Everybody";

#[test]
fn fixture_examples_validate_against_their_schemas() {
    let dir = fixtures().join("webhooks/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let action = name.split('.').next().unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_valid(&webhook_validator(action), &v, &name);
        n += 1;
    }
    assert!(n >= 7, "expected the 7 example payloads, found {n}");
    // And the validator does reject: an in_progress payload is no `queued` event.
    let v = read_json("webhooks/examples/in_progress.payload.json");
    assert!(!webhook_validator("queued").is_valid(&v));
}

#[test]
fn signature_test_vector_and_signed_deliveries_verify() {
    let tv = read_json("webhooks/signature-test-vector.json");
    let secret = tv["secret"].as_str().unwrap();
    let payload = tv["payload"].as_str().unwrap().as_bytes();
    assert_eq!(
        sign_sha256(secret, payload),
        tv["x_hub_signature_256"].as_str().unwrap()
    );
    assert!(verify_sha256(
        secret,
        payload,
        tv["x_hub_signature_256"].as_str().unwrap()
    ));
    assert!(!verify_sha256(
        secret,
        b"Hello, World?",
        tv["x_hub_signature_256"].as_str().unwrap()
    ));
    assert!(!verify_sha256(
        "wrong",
        payload,
        tv["x_hub_signature_256"].as_str().unwrap()
    ));

    let sd = read_json("webhooks/signed-deliveries.synthetic.json");
    let secret = sd["secret"].as_str().unwrap();
    let deliveries = sd["deliveries"].as_array().unwrap();
    assert!(!deliveries.is_empty());
    for d in deliveries {
        let body = std::fs::read(
            fixtures()
                .join("webhooks")
                .join(d["body_file"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(body.len() as u64, d["body_len"].as_u64().unwrap());
        let h = &d["headers"];
        assert_eq!(
            sign_sha256(secret, &body),
            h["X-Hub-Signature-256"].as_str().unwrap()
        );
        assert_eq!(
            sign_sha1(secret, &body),
            h["X-Hub-Signature"].as_str().unwrap()
        );
        assert!(verify_sha256(
            secret,
            &body,
            h["X-Hub-Signature-256"].as_str().unwrap()
        ));
    }
}

fn hook_config(url: &str) -> SimConfig {
    SimConfig {
        webhook: Some(WebhookTarget {
            url: url.into(),
            secret: Some(SECRET.into()),
        }),
        ..fast_config()
    }
}

fn check_headers(sim: &ghsim::SimHandle, r: &Received) {
    assert_eq!(r.header("x-github-event"), "workflow_job");
    let guid = r.header("x-github-delivery");
    assert!(
        uuid::Uuid::parse_str(&guid).is_ok(),
        "delivery id {guid} is not a GUID"
    );
    assert_eq!(
        r.header("x-github-hook-id"),
        sim.config().hook_id.to_string()
    );
    assert_eq!(
        r.header("x-github-hook-installation-target-type"),
        "integration"
    );
    assert_eq!(
        r.header("x-github-hook-installation-target-id"),
        sim.app_id().to_string()
    );
    assert!(r.header("user-agent").starts_with("GitHub-Hookshot/"));
    assert_eq!(r.header("content-type"), "application/json");
    assert!(verify_sha256(
        SECRET,
        &r.body,
        &r.header("x-hub-signature-256")
    ));
    assert_eq!(r.header("x-hub-signature"), sign_sha1(SECRET, &r.body));
}

#[tokio::test]
async fn every_emitted_action_validates_and_is_signed() {
    let (rx, url) = Receiver::start().await;
    let sim = start(hook_config(&url)).await;
    let tok = token(&sim, "acme").await;

    // success and failure on the runner stand-in
    let ok = sim
        .queue_job(JobSpec::new(
            "acme/widgets",
            &["self-hosted", "linux"],
            &["echo one", "echo two"],
        ))
        .unwrap();
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "hook-ok", &["linux"]).await;
    assert_eq!(spawn_runner(&jit).finish().await.0, 0);
    let bad = sim
        .queue_job(JobSpec::new(
            "acme/widgets",
            &["linux"],
            &["exit 1", "echo skipped"],
        ))
        .unwrap();
    let (_, jit) = mint_jit(&sim, &tok, "acme/widgets", "hook-bad", &["linux"]).await;
    assert_eq!(spawn_runner(&jit).finish().await.0, 0);
    // waiting (environment), approved, then cancelled while queued
    let mut spec = JobSpec::new("acme/widgets", &["linux", "gpu"], &["echo deploy"]);
    spec.environment = Some("production".into());
    let env = sim.queue_job(spec).unwrap();
    assert_eq!(env.status, "waiting");
    sim.approve_job(env.id).unwrap();
    sim.cancel_job(env.id).unwrap();
    // a user-account repository (no `organization` in the payload)
    let user = sim
        .queue_job(JobSpec::new("octocat/hello", &["linux", "gpu"], &["true"]))
        .unwrap();
    sim.cancel_job(user.id).unwrap();

    let got = rx.wait(11, |_| true).await;
    let mut seen = HashSet::new();
    let validators: std::collections::HashMap<&str, jsonschema::Validator> =
        ["queued", "waiting", "in_progress", "completed"]
            .into_iter()
            .map(|a| (a, webhook_validator(a)))
            .collect();
    for r in &got {
        check_headers(&sim, r);
        let v = r.json();
        let action = v["action"].as_str().unwrap().to_string();
        assert_valid(
            &validators[action.as_str()],
            &v,
            &format!("emitted {action}"),
        );
        let job = &v["workflow_job"];
        let id = job["id"].as_u64().unwrap();
        if id == user.id {
            assert!(v.get("organization").is_none());
        } else {
            assert_eq!(v["organization"]["login"], "acme");
        }
        assert_eq!(
            v["installation"]["id"].as_u64(),
            sim.installation_id(if id == user.id { "octocat" } else { "acme" })
        );
        if action == "in_progress" {
            assert!(job["runner_name"].is_string() && job["runner_id"].is_u64());
            assert_eq!(job["runner_group_name"], "Default");
            assert!(!job["steps"].as_array().unwrap().is_empty());
        }
        seen.insert((
            action,
            job["conclusion"].as_str().unwrap_or("").to_string(),
            id,
        ));
    }
    for (action, conclusion, id) in [
        ("queued", "", ok.id),
        ("in_progress", "", ok.id),
        ("completed", "success", ok.id),
        ("completed", "failure", bad.id),
        ("waiting", "", env.id),
        ("queued", "", env.id),
        ("completed", "cancelled", env.id),
        ("completed", "cancelled", user.id),
    ] {
        assert!(
            seen.contains(&(action.to_string(), conclusion.to_string(), id)),
            "missing {action}/{conclusion} for job {id}: {seen:?}"
        );
    }
    // Completed payload of the failed job: steps carry their conclusions.
    let completed_bad = got
        .iter()
        .map(|r| r.json())
        .find(|v| v["action"] == "completed" && v["workflow_job"]["id"].as_u64() == Some(bad.id))
        .unwrap();
    let steps: Vec<&str> = completed_bad["workflow_job"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["conclusion"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["failure", "skipped"]);
    // Every delivery is recorded with its status.
    let recorded = sim.deliveries();
    assert_eq!(recorded.len(), got.len());
    assert!(
        recorded
            .iter()
            .all(|d| d.status == Some(202) && d.outcome == "delivered")
    );
}

#[tokio::test]
async fn delivery_faults_duplicate_drop_reorder_and_redelivery() {
    let (rx, url) = Receiver::start().await;
    let sim = start(SimConfig {
        reorder_hold: Duration::from_secs(10),
        ..hook_config(&url)
    })
    .await;
    let spec = |fault: Option<DeliveryFault>| {
        let mut s = JobSpec::new("acme/widgets", &["nobody-has-this"], &["true"]);
        s.webhook_fault = fault;
        s
    };
    let guid_of = |r: &Received| r.header("x-github-delivery");

    // duplicate: the same delivery (same GUID) arrives twice
    let dup = sim.queue_job(spec(Some(DeliveryFault::Duplicate))).unwrap();
    let got = rx
        .wait(2, |r| {
            r.json()["workflow_job"]["id"].as_u64() == Some(dup.id)
        })
        .await;
    assert_eq!(guid_of(&got[0]), guid_of(&got[1]));
    assert_eq!(got[0].body, got[1].body);

    // drop: nothing arrives, the delivery is recorded as dropped
    let dropped = sim.queue_job(spec(Some(DeliveryFault::Drop))).unwrap();
    assert!(
        sim.wait_deliveries(Duration::from_secs(5), |d| d
            .iter()
            .any(|d| d.job_id == dropped.id && d.outcome == "dropped"))
            .await
    );

    // reorder (global rule, only `queued` of one job): queued is held until completed went out
    sim.add_webhook_fault(WebhookFaultRule {
        mode: DeliveryFault::Reorder,
        job_id: None,
        action: Some("queued".into()),
        count: Some(1),
    });
    let re = sim.queue_job(spec(None)).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sim.cancel_job(re.id).unwrap();
    let got = rx
        .wait(2, |r| {
            r.json()["workflow_job"]["id"].as_u64() == Some(re.id)
        })
        .await;
    let actions: Vec<String> = got
        .iter()
        .map(|r| r.json()["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions,
        ["completed", "queued"],
        "reorder should deliver queued after completed"
    );

    // the dropped job's later events are unaffected by the spent global rule but keep the per-job fault
    assert!(
        rx.all()
            .iter()
            .all(|r| r.json()["workflow_job"]["id"].as_u64() != Some(dropped.id))
    );

    // redelivery keeps X-GitHub-Delivery
    let first = sim
        .deliveries()
        .into_iter()
        .find(|d| d.job_id == re.id && d.action == "completed")
        .unwrap();
    sim.redeliver(&first.guid).unwrap();
    let got = rx.wait(2, |r| guid_of(r) == first.guid).await;
    assert_eq!(got[0].body, got[1].body);
    assert!(
        sim.wait_deliveries(Duration::from_secs(5), |d| d
            .iter()
            .any(|d| d.guid == first.guid && d.redelivery))
            .await
    );

    // the same over the HTTP control API
    let c = http();
    let r = c
        .post(format!(
            "{}/_sim/deliveries/{}/redeliver",
            sim.base_url(),
            first.guid
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    rx.wait(3, |r| guid_of(r) == first.guid).await;
    let r = c
        .post(format!("{}/_sim/deliveries/nope/redeliver", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let listed: Vec<Value> = c
        .get(format!(
            "{}/_sim/deliveries?job_id={}",
            sim.base_url(),
            dup.id
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|d| d["action"] == "queued" && d["status"] == 202)
    );
}
