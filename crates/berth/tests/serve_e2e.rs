//! `berth serve` end to end: the GitHub simulator, the real Docker engine,
//! the runner stand-in in hardened worker containers.

mod common;

use std::time::Duration;

use berth::store::JobState;
use common::{Berth, World, eventually};

const JOB_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_webhook_to_container_to_completion() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;

    let gh_job = world.queue(&["echo step-one-output", "echo step-two-output >&2"]);
    let running = berth.wait_state(gh_job, JobState::Running, JOB_LIMIT).await;
    let container_id = running.container_id.clone().expect("a running job has a container");

    // The worker never shows its JIT config to `docker inspect`.
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &container_id])
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.contains("berth.managed"), "{inspect}");
    assert!(!inspect.contains("ACTIONS_RUNNER_INPUT_JITCONFIG"));
    assert!(!inspect.contains("eyJ"), "base64 JSON (a JIT config) in docker inspect");

    let job = berth.wait_terminal(gh_job, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(job.github_runner_name, job.runner_name);
    assert_eq!(world.sim.job(gh_job).unwrap().conclusion.as_deref(), Some("success"));

    // The worker's output is kept (the runner's console; step output goes to GitHub).
    let logs = berth.store().job_logs_get(job.id).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&logs.content);
    assert!(text.contains(&format!("acquired job {gh_job}")), "{text}");
    assert!(text.contains("succeeded"), "{text}");
    let sim_log = world.sim.job_log(gh_job).unwrap();
    assert!(sim_log.contains("step-one-output") && sim_log.contains("step-two-output"), "{sim_log}");
    eventually("container removed", Duration::from_secs(10), || async { world.containers().is_empty() }).await;
    eventually("runner deregistered", Duration::from_secs(10), || async { world.berth_runners().is_empty() }).await;

    // The API shows the job as the contract says.
    let got: serde_json::Value = berth
        .http()
        .get(format!("{}/v1/jobs/{}", berth.url, job.id))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["state"], "completed");
    assert_eq!(got["github_job_id"], gh_job);
    assert_eq!(got["repository"], "acme/widgets");
    let metrics = berth
        .http()
        .get(format!("{}/metrics", berth.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "berth_job_queue_size",
        "berth_active_worker_containers",
        "berth_container_creation_duration_seconds_count{pool=\"linux\"} 1",
        "berth_job_execution_duration_seconds_count{pool=\"linux\"} 1",
        "berth_github_api_requests_total{endpoint=\"generate_jitconfig\",status=\"201\"} 1",
        "berth_webhook_deliveries_total{outcome=\"accepted\"}",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    berth.stop().await;
}
