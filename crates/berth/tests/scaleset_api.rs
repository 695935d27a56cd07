//! The orchestrator's side of scale-set mode over HTTP, as a remote `berth
//! proxy` uses it: delegating runners by key, listing them, recording job
//! events, retiring idle ones — against a live `berth serve`, the simulator
//! and Docker, with every answer checked against the OpenAPI description.

mod common;
mod scaleset_common;

use std::time::Duration;

use berth::scaleset::orchestrator::RETIRED;
use berth::store::{ApiTokenScope, JobState};
use common::{Berth, World, eventually};
use scaleset_common::{SET, scale_set_jobs, scale_set_toml};
use serde_json::{Value, json};

fn validator(name: &str) -> jsonschema::Validator {
    let mut root: Value = serde_json::from_str(berth::api::OPENAPI_JSON).unwrap();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    jsonschema::options().build(&root).unwrap()
}

fn assert_valid(name: &str, v: &Value) {
    let errors: Vec<String> = validator(name)
        .iter_errors(v)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "not a valid {name}: {errors:?}\n{v:#}");
}

#[test]
fn the_delegate_schema_takes_scale_set_runners() {
    let v = validator("DelegateRequest");
    let valid = [
        json!({"scale_set": "berth-linux", "github_job_id": 4611686018427387905_i64}),
        json!({"scale_set": "berth-linux", "github_job_id": 1001, "repository": "acme/widgets",
               "run_id": 7, "labels": ["berth-linux"], "pool": "linux", "workflow": "ci", "job_name": "b"}),
        json!({"scale_set": "s", "github_job_id": 1, "repository": "acme", "run_id": 0, "labels": []}),
        json!({"repository": "acme/widgets", "github_job_id": 1, "run_id": 2, "labels": ["linux"]}),
    ];
    for ok in valid {
        assert!(v.is_valid(&ok), "refused {ok}");
    }
    let invalid = [
        json!({"scale_set": "berth-linux"}),
        json!({"scale_set": " \t", "github_job_id": 1}),
        json!({"scale_set": "s", "github_job_id": 1, "repository": "a b"}),
        json!({"scale_set": "s", "github_job_id": 1, "run_id": -1}),
        json!({"scale_set": null, "github_job_id": 1}),
        json!({"github_job_id": 1, "run_id": 2, "labels": ["linux"]}),
        json!({"repository": "acme/widgets", "github_job_id": 1, "run_id": 0, "labels": ["x"]}),
    ];
    for bad in invalid {
        assert!(!v.is_valid(&bad), "accepted {bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_delegates_lists_reports_and_retires_over_http() {
    let world = World::new().await;
    // One runner at a time in the pool, so that a second one stays queued;
    // no listener here: the test plays the proxy.
    let config = world.config(&format!(
        "max_runners = 1\n{}",
        scale_set_toml(&world, "listener = \"proxy\"")
    ));
    let berth = Berth::start(&world, config).await;
    let (delegate_token, _) =
        berth::api::auth::create_token(berth.store(), "proxy", ApiTokenScope::Delegate)
            .await
            .unwrap();
    let (read_token, _) =
        berth::api::auth::create_token(berth.store(), "reader", ApiTokenScope::Read)
            .await
            .unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", berth.url);
    let post = |path: &str, body: Value| {
        http.post(url(path))
            .bearer_auth(&delegate_token)
            .json(&body)
            .send()
    };
    let runners = || async {
        let r = http
            .get(url(&format!("/v1/scale-sets/{SET}/runners")))
            .bearer_auth(&delegate_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let list: Value = r.json().await.unwrap();
        assert_valid("RunnerList", &list);
        list["runners"].as_array().unwrap().clone()
    };

    // Two buffer runners: keys only. The same key again is the same job.
    let keys = [4611686018427387905_i64, 4611686018427387906];
    for key in keys {
        let r = post(
            "/v1/jobs/delegate",
            json!({"scale_set": SET, "github_job_id": key}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 202);
        let job: Value = r.json().await.unwrap();
        assert_eq!(job["scale_set"], SET);
        assert_eq!(job["pool"], "linux");
        assert_eq!(
            job["repository"], "acme",
            "a runner for no job shows the scope"
        );
        assert_eq!(job["labels"], json!([SET]));
    }
    let again = post(
        "/v1/jobs/delegate",
        json!({"scale_set": SET, "github_job_id": keys[0]}),
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 200);
    // Refusals: another pool, an unknown scale set.
    let r = post(
        "/v1/jobs/delegate",
        json!({"scale_set": SET, "github_job_id": 5, "pool": "other"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(
        "/v1/jobs/delegate",
        json!({"scale_set": "nope", "github_job_id": 5}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);

    // The first runs (idle), the second waits for the pool's one slot.
    eventually(
        "one runner running, one queued",
        Duration::from_secs(60),
        || async {
            let list = runners().await;
            let phases: Vec<&str> = list.iter().map(|r| r["phase"].as_str().unwrap()).collect();
            phases == ["idle", "pending"]
        },
    )
    .await;
    let list = runners().await;
    assert_eq!(list[0]["key"], keys[0]);
    assert_eq!(list[1]["state"], "queued");
    let runner_name = list[0]["runner_name"].as_str().unwrap().to_string();
    assert!(world.berth_runners().contains(&runner_name));

    // A job event for the running runner is recorded on its job.
    let started = json!({"kind": "started", "runner_name": runner_name, "runner_id": 1.0,
        "runner_request_id": 77, "job_id": "9001", "repository": "acme/gadgets",
        "run_id": 4242, "workflow": "acme/gadgets/.github/workflows/ci.yml@refs/heads/main",
        "job_name": "build"});
    assert_valid("JobEvent", &started);
    let r = post(&format!("/v1/scale-sets/{SET}/events"), started)
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let job = berth.job(keys[0] as u64).await.unwrap();
    assert_eq!(job.repository, "acme/gadgets");
    assert_eq!(job.run_id, 4242);
    assert_eq!(job.job_name.as_deref(), Some("build"));
    assert_eq!(
        job.github_runner_name.as_deref(),
        Some(runner_name.as_str())
    );
    assert_eq!(runners().await[0]["phase"], "busy");
    // A busy runner is not retired.
    let retire = |key: i64| {
        post(
            &format!("/v1/scale-sets/{SET}/runners/{key}/retire"),
            json!(null),
        )
    };
    let r = retire(keys[0]).await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_valid("RetireAnswer", &answer);
    assert_eq!(answer["outcome"], "busy");

    // The queued runner is retired at once; it never runs.
    let answer: Value = retire(keys[1]).await.unwrap().json().await.unwrap();
    assert_eq!(answer["outcome"], "retired");
    let retired = berth.job(keys[1] as u64).await.unwrap();
    assert_eq!(retired.state, JobState::Cancelled);
    assert_eq!(retired.error.as_deref(), Some(RETIRED));
    assert!(retired.container_id.is_none());
    let answer: Value = retire(keys[1]).await.unwrap().json().await.unwrap();
    assert_eq!(answer["outcome"], "gone");

    // An idle running runner: its registration goes first, then its container.
    let key = 4611686018427387907_i64;
    post(
        "/v1/jobs/delegate",
        json!({"scale_set": SET, "github_job_id": key}),
    )
    .await
    .unwrap();
    // (the first runner is "busy" only by our word: let its job be recorded
    // completed so it no longer counts, and stop it so the slot frees)
    let done = json!({"kind": "completed", "runner_name": runner_name, "runner_request_id": 77,
        "conclusion": "success"});
    assert_eq!(
        post(&format!("/v1/scale-sets/{SET}/events"), done)
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(runners().await[0]["phase"], "done");
    let first = berth.job(keys[0] as u64).await.unwrap();
    std::process::Command::new("docker")
        .args(["kill", first.container_id.as_deref().unwrap()])
        .output()
        .unwrap();
    eventually(
        "the third runner runs idle",
        Duration::from_secs(60),
        || async {
            berth
                .job(key as u64)
                .await
                .is_some_and(|j| j.state == JobState::Running)
        },
    )
    .await;
    let third = berth.job(key as u64).await.unwrap();
    let answer: Value = retire(key).await.unwrap().json().await.unwrap();
    assert_eq!(answer["outcome"], "retired");
    let third_after = berth.job(key as u64).await.unwrap();
    assert_eq!(third_after.state, JobState::Cancelled);
    assert!(
        !world
            .berth_runners()
            .contains(third.runner_name.as_ref().unwrap())
    );
    eventually("no container left", Duration::from_secs(30), || async {
        world.containers().is_empty()
    })
    .await;
    assert!(
        scale_set_jobs(berth.store())
            .await
            .iter()
            .all(|j| j.state.is_terminal())
    );
    assert_eq!(
        berth
            .job(keys[0] as u64)
            .await
            .unwrap()
            .github_conclusion
            .as_deref(),
        Some("success")
    );

    // Errors: JSON, as described.
    for (status, response) in [
        (
            401,
            http.get(url(&format!("/v1/scale-sets/{SET}/runners")))
                .send()
                .await
                .unwrap(),
        ),
        (
            403,
            http.get(url(&format!("/v1/scale-sets/{SET}/runners")))
                .bearer_auth(&read_token)
                .send()
                .await
                .unwrap(),
        ),
        (
            404,
            http.get(url("/v1/scale-sets/unknown/runners"))
                .bearer_auth(&delegate_token)
                .send()
                .await
                .unwrap(),
        ),
        (
            400,
            retire_raw(&http, &berth, &delegate_token, "not-a-key").await,
        ),
        (
            400,
            post(
                &format!("/v1/scale-sets/{SET}/events"),
                json!({"kind": "started", "runner_name": "a\u{0}", "runner_request_id": 1}),
            )
            .await
            .unwrap(),
        ),
        (
            400,
            post(
                &format!("/v1/scale-sets/{SET}/events"),
                json!({"kind": "sideways", "runner_name": "a", "runner_request_id": 1}),
            )
            .await
            .unwrap(),
        ),
    ] {
        assert_eq!(response.status(), status);
        assert_valid("Error", &response.json().await.unwrap());
    }
    berth.stop().await;
}

async fn retire_raw(
    http: &reqwest::Client,
    berth: &Berth,
    token: &str,
    key: &str,
) -> reqwest::Response {
    http.post(format!(
        "{}/v1/scale-sets/{SET}/runners/{key}/retire",
        berth.url
    ))
    .bearer_auth(token)
    .send()
    .await
    .unwrap()
}
