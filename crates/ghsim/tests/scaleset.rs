//! The runner scale-set service as actions/scaleset uses it: token chain,
//! runner groups, scale sets, sessions (409 for a second), the message long
//! poll (200/202/401, lastMessageId, acks, statistics), the older-GHES
//! acquire flow, scale-set JIT runners and agents.

mod common;

use std::time::Duration;

use common::*;
use ghsim::{JobSpec, ScaleSetFlow, SimConfig, SimHandle};
use serde_json::{Value, json};

struct Admin {
    url: String,
    token: String,
}

/// registration token → `POST /actions/runner-registration` (RemoteAuth) → admin token.
async fn admin(sim: &SimHandle, scope: &str) -> Admin {
    let c = http();
    let tok = token(sim, "acme").await;
    let reg_path = if scope.contains('/') {
        format!("repos/{scope}")
    } else {
        format!("orgs/{scope}")
    };
    let reg: Value = c
        .post(format!(
            "{}/{reg_path}/actions/runners/registration-token",
            sim.api_url()
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .post(format!("{}/actions/runner-registration", sim.api_url()))
        .header(
            "authorization",
            format!("RemoteAuth {}", reg["token"].as_str().unwrap()),
        )
        .json(&json!({"url": sim.github_url(scope), "runner_event": "register"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let v: Value = r.json().await.unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    // the admin token is a JWT whose exp the client reads
    let claims: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(&token)
        .unwrap()
        .claims;
    assert!(claims["exp"].as_i64().unwrap() > ghsim::auth::now_secs());
    Admin {
        url: v["url"].as_str().unwrap().to_string(),
        token,
    }
}

impl Admin {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let sep = if path.contains('?') { '&' } else { '?' };
        http()
            .request(
                method,
                format!("{}{path}{sep}api-version=6.0-preview", self.url),
            )
            .bearer_auth(&self.token)
    }

    async fn create_scale_set(&self, name: &str) -> Value {
        let r = self
            .req(reqwest::Method::POST, "_apis/runtime/runnerscalesets")
            .json(&json!({"name": name, "runnerGroupId": 1, "labels": [{"name": name, "type": "System"}], "RunnerSetting": {"disableUpdate": true}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn session(&self, id: u64) -> (u16, Value) {
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("_apis/runtime/runnerscalesets/{id}/sessions"),
            )
            .json(&json!({"ownerName": "berth-test"}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

/// One long poll of a session's queue: (status, message).
async fn poll(session: &Value, last: u64) -> (u16, Value) {
    let r = http()
        .get(session["messageQueueUrl"].as_str().unwrap())
        .query(&[("lastMessageId", last.to_string())])
        .header("Accept", "application/json; api-version=6.0-preview")
        .header("X-ScaleSetMaxCapacity", "5")
        .bearer_auth(session["messageQueueAccessToken"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn ack(session: &Value, id: u64) -> u16 {
    let mut u = url::Url::parse(session["messageQueueUrl"].as_str().unwrap()).unwrap();
    u.set_path(&format!("{}/{id}", u.path()));
    http()
        .delete(u)
        .bearer_auth(session["messageQueueAccessToken"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn job_messages(msg: &Value) -> Vec<Value> {
    assert_eq!(msg["messageType"], "RunnerScaleSetJobMessages");
    serde_json::from_str(msg["body"].as_str().expect("body is a JSON string")).unwrap()
}

/// Polls until a message arrives (bounded).
async fn next_message(session: &Value, last: u64) -> Value {
    for _ in 0..20 {
        let (s, m) = poll(session, last).await;
        if s == 200 {
            return m;
        }
        assert_eq!(s, 202);
    }
    panic!("no message");
}

#[tokio::test]
async fn token_chain_rejects_bad_registration_tokens() {
    let sim = start(fast_config()).await;
    let c = http();
    let url = format!("{}/actions/runner-registration", sim.api_url());
    let body = json!({"url": sim.github_url("acme"), "runner_event": "register"});
    let r = c
        .post(&url)
        .header("authorization", "RemoteAuth nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // a repo registration token does not open the org
    let tok = token(&sim, "acme").await;
    let reg: Value = c
        .post(format!(
            "{}/repos/acme/widgets/actions/runners/registration-token",
            sim.api_url()
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .post(&url)
        .header(
            "authorization",
            format!("RemoteAuth {}", reg["token"].as_str().unwrap()),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // a remove token is no registration token
    let rm: Value = c
        .post(format!(
            "{}/orgs/acme/actions/runners/remove-token",
            sim.api_url()
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .post(&url)
        .header(
            "authorization",
            format!("RemoteAuth {}", rm["token"].as_str().unwrap()),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn expired_admin_token_gets_401() {
    let sim = start(SimConfig {
        admin_token_lifetime: Duration::from_secs(1),
        ..fast_config()
    })
    .await;
    let a = admin(&sim, "acme").await;
    let r = a
        .req(
            reqwest::Method::GET,
            "_apis/runtime/runnergroups/?groupName=Default",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = a
        .req(
            reqwest::Method::GET,
            "_apis/runtime/runnergroups/?groupName=Default",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // a new admin token works again
    let a = admin(&sim, "acme").await;
    let r = a
        .req(
            reqwest::Method::GET,
            "_apis/runtime/runnergroups/?groupName=Default",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn scale_sets_and_sessions() {
    let sim = start(SimConfig {
        queue_token_lifetime: Duration::from_secs(2),
        ..fast_config()
    })
    .await;
    let a = admin(&sim, "acme").await;

    let groups: Value = a
        .req(
            reqwest::Method::GET,
            "_apis/runtime/runnergroups/?groupName=Default",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(groups["count"], 1);
    assert_eq!(groups["value"][0]["id"], 1);
    assert_eq!(groups["value"][0]["isDefaultGroup"], true);

    let missing: Value = a
        .req(
            reqwest::Method::GET,
            "_apis/runtime/runnerscalesets?runnerGroupId=1&name=berth-linux",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(missing["count"], 0);
    let ss = a.create_scale_set("berth-linux").await;
    let id = ss["id"].as_u64().unwrap();
    assert_eq!(ss["runnerGroupName"], "Default");
    assert_eq!(
        ss["labels"][0],
        json!({"type": "System", "name": "berth-linux"})
    );
    assert_eq!(ss["RunnerSetting"]["disableUpdate"], true);
    let found: Value = a
        .req(
            reqwest::Method::GET,
            "_apis/runtime/runnerscalesets?runnerGroupId=1&name=berth-linux",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (found["count"].as_u64(), found["value"][0]["id"].as_u64()),
        (Some(1), Some(id))
    );
    let by_id: Value = a
        .req(
            reqwest::Method::GET,
            &format!("_apis/runtime/runnerscalesets/{id}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_id["name"], "berth-linux");
    let dup = a
        .req(reqwest::Method::POST, "_apis/runtime/runnerscalesets")
        .json(&json!({"name": "berth-linux", "runnerGroupId": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409);
    // another scope does not see it
    let repo_admin = admin(&sim, "acme/widgets").await;
    let r = repo_admin
        .req(
            reqwest::Method::GET,
            &format!("_apis/runtime/runnerscalesets/{id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // sessions: one at a time
    let (s, session) = a.session(id).await;
    assert_eq!(s, 200);
    assert!(session["sessionId"].is_string());
    assert_eq!(session["statistics"]["totalAssignedJobs"], 0);
    assert_eq!(session["runnerScaleSet"]["id"].as_u64(), Some(id));
    let (s, err) = a.session(id).await;
    assert_eq!(s, 409);
    assert!(
        err["typeName"]
            .as_str()
            .unwrap()
            .contains("TaskAgentSessionConflictException")
    );

    // idle: 202 after the poll timeout
    let t = std::time::Instant::now();
    assert_eq!(poll(&session, 0).await.0, 202);
    assert!(t.elapsed() >= Duration::from_millis(350));

    // a job for the scale set: JobAssigned, with the fields actions/scaleset parses
    let job = sim
        .queue_job(JobSpec::new("acme/widgets", &["berth-linux"], &["echo hi"]))
        .unwrap();
    assert_eq!(sim.job(job.id).unwrap().scale_set_id, Some(id));
    let m = next_message(&session, 0).await;
    let mid = m["messageId"].as_u64().unwrap();
    let jobs = job_messages(&m);
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    assert_eq!(j["messageType"], "JobAssigned");
    assert_eq!(j["runnerRequestId"].as_u64(), Some(job.runner_request_id));
    assert_eq!(j["jobId"], job.id.to_string());
    assert_eq!(j["repositoryName"], "widgets");
    assert_eq!(j["ownerName"], "acme");
    assert_eq!(j["workflowRunId"].as_u64(), Some(job.run_id));
    assert_eq!(j["requestLabels"], json!(["berth-linux"]));
    for f in [
        "jobWorkflowRef",
        "jobDisplayName",
        "eventName",
        "queueTime",
        "scaleSetAssignTime",
        "runnerAssignTime",
        "finishTime",
    ] {
        assert!(j[f].is_string(), "{f}");
    }
    assert_eq!(m["statistics"]["totalAssignedJobs"], 1);
    assert_eq!(m["statistics"]["totalRunningJobs"], 0);
    // not acked: polled again (lastMessageId below it) it comes back
    assert_eq!(
        next_message(&session, 0).await["messageId"].as_u64(),
        Some(mid)
    );
    // the capacity header was seen
    assert_eq!(
        sim.scale_sets()[0]
            .session
            .as_ref()
            .unwrap()
            .last_max_capacity,
        Some(5)
    );
    // ack removes it: the next poll does not return it
    assert_eq!(ack(&session, mid).await, 204);
    assert_eq!(poll(&session, mid).await.0, 202);
    assert_eq!(poll(&session, 0).await.0, 202);
    assert!(sim.scale_sets()[0].unacked_message_ids.is_empty());

    // queue token expiry: 401, then refresh gives a new token that works
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(poll(&session, mid).await.0, 401);
    let sid = session["sessionId"].as_str().unwrap();
    let r = a
        .req(
            reqwest::Method::PATCH,
            &format!("_apis/runtime/runnerscalesets/{id}/sessions/{sid}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let refreshed: Value = r.json().await.unwrap();
    assert_ne!(
        refreshed["messageQueueAccessToken"],
        session["messageQueueAccessToken"]
    );
    assert_eq!(poll(&refreshed, mid).await.0, 202);

    // cancelling the job yields JobCompleted(canceled)
    sim.cancel_job(job.id).unwrap();
    let m = next_message(&refreshed, mid).await;
    let jobs = job_messages(&m);
    assert_eq!(
        (jobs[0]["messageType"].as_str(), jobs[0]["result"].as_str()),
        (Some("JobCompleted"), Some("canceled"))
    );
    assert_eq!(m["statistics"]["totalAssignedJobs"], 0);

    // delete the session; a new one can be created
    let r = a
        .req(
            reqwest::Method::DELETE,
            &format!("_apis/runtime/runnerscalesets/{id}/sessions/{sid}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(a.session(id).await.0, 200);
    // delete the scale set
    let r = a
        .req(
            reqwest::Method::DELETE,
            &format!("_apis/runtime/runnerscalesets/{id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = a
        .req(
            reqwest::Method::GET,
            &format!("_apis/runtime/runnerscalesets/{id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn older_ghes_flow_needs_acquirejobs() {
    let sim = start(fast_config()).await;
    sim.set_default_scale_set_flow(ScaleSetFlow::Acquire);
    let a = admin(&sim, "acme").await;
    let id = a.create_scale_set("ghes-set").await["id"].as_u64().unwrap();
    let (_, session) = a.session(id).await;
    let job = sim
        .queue_job(JobSpec::new("acme/widgets", &["ghes-set"], &["true"]))
        .unwrap();
    let m = next_message(&session, 0).await;
    let jobs = job_messages(&m);
    assert_eq!(jobs[0]["messageType"], "JobAvailable");
    assert!(
        jobs[0]["acquireJobUrl"]
            .as_str()
            .unwrap()
            .ends_with("/acquirejobs")
    );
    assert_eq!(m["statistics"]["totalAvailableJobs"], 1);
    assert_eq!(m["statistics"]["totalAssignedJobs"], 0);
    let mid = m["messageId"].as_u64().unwrap();
    assert_eq!(ack(&session, mid).await, 204);

    // a scale-set runner cannot take it before it is acquired
    let jit: Value = a
        .req(
            reqwest::Method::POST,
            &format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig"),
        )
        .json(&json!({"name": "ghes-runner-1", "workFolder": "_work"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let runner = ManualRunner::connect(jit["encodedJITConfig"].as_str().unwrap()).await;
    assert!(runner.poll().await.is_none());

    let r = http()
        .post(format!(
            "{}_apis/runtime/runnerscalesets/{id}/acquirejobs?api-version=6.0-preview",
            a.url
        ))
        .bearer_auth(session["messageQueueAccessToken"].as_str().unwrap())
        .json(&json!([job.runner_request_id, 999_999]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let acquired: Value = r.json().await.unwrap();
    assert_eq!(
        acquired,
        json!({"count": 1, "value": [job.runner_request_id]})
    );
    let m = next_message(&session, mid).await;
    assert_eq!(job_messages(&m)[0]["messageType"], "JobAssigned");
    assert_eq!(m["statistics"]["totalAssignedJobs"], 1);
    assert_eq!(m["statistics"]["totalAcquiredJobs"], 1);
    // now the runner gets it
    let offer = runner.poll().await.expect("offered after acquire");
    assert_eq!(offer.runner_request_id, job.runner_request_id.to_string());
}

#[tokio::test]
async fn scale_set_runner_runs_a_job_with_started_and_completed_messages() {
    let sim = start(fast_config()).await;
    let a = admin(&sim, "acme").await;
    let id = a.create_scale_set("berth-linux").await["id"]
        .as_u64()
        .unwrap();
    let (_, session) = a.session(id).await;
    let job = sim
        .queue_job(JobSpec::new(
            "acme/gadgets",
            &["berth-linux"],
            &["echo from-scale-set"],
        ))
        .unwrap();
    let m = next_message(&session, 0).await;
    let mut last = m["messageId"].as_u64().unwrap();
    ack(&session, last).await;

    let r = a
        .req(
            reqwest::Method::POST,
            &format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig"),
        )
        .json(&json!({"name": "berth-ss-1", "workFolder": "_work"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let jit: Value = r.json().await.unwrap();
    assert_eq!(jit["runner"]["name"], "berth-ss-1");
    assert_eq!(jit["runner"]["runnerScaleSetId"].as_u64(), Some(id));
    let agent_id = jit["runner"]["id"].as_u64().unwrap();
    // a second runner of that name: 409 AgentExistsException
    let r = a
        .req(
            reqwest::Method::POST,
            &format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig"),
        )
        .json(&json!({"name": "berth-ss-1", "workFolder": "_work"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(
        r.json::<Value>().await.unwrap()["typeName"]
            .as_str()
            .unwrap()
            .contains("AgentExistsException")
    );
    // agents: get, by name
    let ag: Value = a
        .req(
            reqwest::Method::GET,
            &format!("_apis/distributedtask/pools/0/agents/{agent_id}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ag["runnerScaleSetId"].as_u64(), Some(id));
    let list: Value = a
        .req(
            reqwest::Method::GET,
            "_apis/distributedtask/pools/0/agents?agentName=berth-ss-1",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["count"], 1);

    let p = spawn_runner(jit["encodedJITConfig"].as_str().unwrap());
    let (code, stderr) = p.finish().await;
    assert_eq!(code, 0, "{stderr}");
    let done = sim.job(job.id).unwrap();
    assert_eq!(
        (done.conclusion.as_deref(), done.runner_name.as_deref()),
        (Some("success"), Some("berth-ss-1"))
    );
    assert_eq!(sim.job_log(job.id).unwrap(), "from-scale-set\n");

    // JobStarted then JobCompleted (maybe batched in one message)
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let m = next_message(&session, last).await;
        last = m["messageId"].as_u64().unwrap();
        for j in job_messages(&m) {
            if j["messageType"] == "JobStarted" {
                assert_eq!(j["runnerName"], "berth-ss-1");
                assert_eq!(j["runnerId"].as_u64(), Some(agent_id));
            }
            if j["messageType"] == "JobCompleted" {
                assert_eq!(j["result"], "succeeded");
                assert_eq!(m["statistics"]["totalAssignedJobs"], 0);
                assert_eq!(m["statistics"]["totalRegisteredRunners"], 0);
            }
            kinds.push(j["messageType"].as_str().unwrap().to_string());
        }
        ack(&session, last).await;
    }
    assert_eq!(kinds, ["JobStarted", "JobCompleted"]);
    // the ephemeral runner is gone
    let r = a
        .req(
            reqwest::Method::GET,
            &format!("_apis/distributedtask/pools/0/agents/{agent_id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.json::<Value>().await.unwrap()["typeName"]
            .as_str()
            .unwrap()
            .contains("AgentNotFoundException")
    );
}

#[tokio::test]
async fn deleting_an_idle_scale_set_agent() {
    let sim = start(fast_config()).await;
    let a = admin(&sim, "acme").await;
    let id = a.create_scale_set("del-set").await["id"].as_u64().unwrap();
    let jit: Value = a
        .req(
            reqwest::Method::POST,
            &format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig"),
        )
        .json(&json!({"name": "del-1", "workFolder": "_work"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = jit["runner"]["id"].as_u64().unwrap();
    let r = a
        .req(
            reqwest::Method::DELETE,
            &format!("_apis/distributedtask/pools/0/agents/{agent}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(sim.runners().is_empty());
    // and a started runner for a deleted registration fails to authenticate (exit 3)
    let (code, stderr) = spawn_runner(jit["encodedJITConfig"].as_str().unwrap())
        .finish()
        .await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("authentication failed"), "{stderr}");
}

#[tokio::test]
async fn an_idle_session_expires_so_a_restarted_listener_can_reconnect() {
    let sim = start(SimConfig {
        session_idle_timeout: Duration::from_millis(1500),
        ..fast_config()
    })
    .await;
    let a = admin(&sim, "acme").await;
    let id = a.create_scale_set("restart-set").await["id"]
        .as_u64()
        .unwrap();
    let (s, session) = a.session(id).await;
    assert_eq!(s, 200);
    // polling keeps it alive
    for _ in 0..2 {
        assert_eq!(poll(&session, 0).await.0, 202);
        assert_eq!(a.session(id).await.0, 409);
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (s, fresh) = a.session(id).await;
    assert_eq!(s, 200);
    assert_ne!(fresh["sessionId"], session["sessionId"]);
    assert_eq!(
        poll(&session, 0).await.0,
        401,
        "the old session's token is gone"
    );
}
