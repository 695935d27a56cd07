//! `berth serve` end to end: the GitHub simulator, the real Docker engine,
//! the runner stand-in in hardened worker containers.

mod common;

use std::time::Duration;

use berth::store::JobState;
use common::{Berth, World, eventually, slow_mint};

const JOB_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_webhook_to_container_to_completion() {
    let world = World::new().await;
    let mut config = world.config("");
    let forwarded = world.dir.path().join("job-output.jsonl");
    config.logs.job_output_file = Some(forwarded.clone());
    let berth = Berth::start(&world, config).await;

    let gh_job = world.queue(&["echo step-one-output", "echo step-two-output >&2"]);
    let running = berth.wait_state(gh_job, JobState::Running, JOB_LIMIT).await;
    let container_id = running
        .container_id
        .clone()
        .expect("a running job has a container");

    // The worker never shows its JIT config to `docker inspect`.
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &container_id])
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.contains("berth.managed"), "{inspect}");
    assert!(!inspect.contains("ACTIONS_RUNNER_INPUT_JITCONFIG"));
    assert!(
        !inspect.contains("eyJ"),
        "base64 JSON (a JIT config) in docker inspect"
    );

    let job = berth.wait_terminal(gh_job, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(job.github_runner_name, job.runner_name);
    assert_eq!(
        world.sim.job(gh_job).unwrap().conclusion.as_deref(),
        Some("success")
    );

    // The worker's output is kept (the runner's console; step output goes to GitHub).
    let logs = berth.store().job_logs_get(job.id).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&logs.content);
    assert!(text.contains(&format!("acquired job {gh_job}")), "{text}");
    assert!(text.contains("succeeded"), "{text}");
    // ...and forwarded as JSON lines with the correlation fields.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&forwarded)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let acquired = lines
        .iter()
        .find(|l| l["line"].as_str().unwrap().contains("acquired job"))
        .expect("the runner's output was forwarded");
    assert_eq!(acquired["repository"], "acme/widgets");
    assert_eq!(acquired["job_id"], gh_job);
    assert_eq!(acquired["berth_job_id"], job.id.to_string());
    assert_eq!(acquired["workflow"], "CI");
    assert!(acquired["run_id"].is_number() && acquired["container_id"].is_string());
    let sim_log = world.sim.job_log(gh_job).unwrap();
    assert!(
        sim_log.contains("step-one-output") && sim_log.contains("step-two-output"),
        "{sim_log}"
    );
    eventually("container removed", Duration::from_secs(10), || async {
        world.containers().is_empty()
    })
    .await;
    eventually("runner deregistered", Duration::from_secs(10), || async {
        world.berth_runners().is_empty()
    })
    .await;

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

fn rule(
    mode: ghsim::DeliveryFault,
    job_id: Option<u64>,
    action: Option<&str>,
) -> ghsim::WebhookFaultRule {
    ghsim::WebhookFaultRule {
        mode,
        job_id,
        action: action.map(str::to_string),
        count: None,
    }
}

async fn assert_clean(world: &World) {
    eventually(
        "no worker container left",
        Duration::from_secs(15),
        || async { world.containers().is_empty() },
    )
    .await;
    eventually("no berth runner left", Duration::from_secs(15), || async {
        world.berth_runners().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_out_of_order_and_missing_webhooks() {
    use ghsim::DeliveryFault::{Drop, Duplicate, Reorder};
    let world = World::new().await;
    // One runner at a time: GitHub gives a job to any idle runner of the
    // org, so with three at once a runner may run another's job (which
    // berth follows, tested elsewhere); here each job keeps its own.
    let berth = Berth::start(&world, world.config("max_runners = 1")).await;

    // Every delivery of this job comes twice.
    world
        .sim
        .add_webhook_fault(rule(Duplicate, None, Some("queued")));
    let twice = world.queue(&["echo twice"]);
    world.sim.clear_webhook_faults();
    world
        .sim
        .add_webhook_fault(rule(Duplicate, Some(twice), None));
    // in_progress arrives after completed.
    let reordered = world.queue(&["echo reordered"]);
    world
        .sim
        .add_webhook_fault(rule(Reorder, Some(reordered), Some("in_progress")));
    // GitHub never tells berth that this one started or finished.
    let silent = world.queue(&["echo silent"]);
    world
        .sim
        .add_webhook_fault(rule(Drop, Some(silent), Some("in_progress")));
    world
        .sim
        .add_webhook_fault(rule(Drop, Some(silent), Some("completed")));

    for gh_job in [twice, reordered, silent] {
        let job = berth.wait_terminal(gh_job, JOB_LIMIT).await;
        assert_eq!(job.state, JobState::Completed, "{job:?}");
        assert_eq!(job.attempts, 1, "one runner per job: {job:?}");
        assert_eq!(
            world.sim.job(gh_job).unwrap().conclusion.as_deref(),
            Some("success")
        );
    }
    let all = berth.store().job_list(&Default::default()).await.unwrap();
    assert_eq!(all.len(), 3, "duplicates created no job: {all:?}");
    let metrics = berth.ctx.metrics.encode();
    assert!(
        metrics.contains("berth_webhook_deliveries_total{outcome=\"duplicate\"}"),
        "{metrics}"
    );
    // The late in_progress did not move the reordered job backwards.
    let reordered_job = berth.job(reordered).await.unwrap();
    assert_eq!(
        reordered_job.github_status,
        Some(berth::store::GithubStatus::Completed)
    );
    assert_clean(&world).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stolen_runner_leaves_its_job_to_be_driven_again() {
    use ghsim::DeliveryFault::Drop;
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;

    // `other` is queued on GitHub first, with a higher priority, and berth
    // never hears of it: the runner berth starts for `mine` takes it.
    world.sim.add_webhook_fault(rule(Drop, None, None));
    let other = world.queue_spec(ghsim::JobSpec {
        repository: "acme/widgets".into(),
        labels: common::LABELS.iter().map(|s| s.to_string()).collect(),
        steps: vec!["echo other".into()],
        priority: Some(10),
        ..Default::default()
    });
    world.sim.clear_webhook_faults();
    world.sim.add_webhook_fault(rule(Drop, Some(other), None));
    let mine = world.queue(&["echo mine"]);

    let job = berth.wait_terminal(mine, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(
        job.attempts, 2,
        "driven again after its first runner was taken: {job:?}"
    );
    let other_on_github = world.sim.job(other).unwrap();
    assert_eq!(other_on_github.status, "completed");
    let thief = other_on_github.runner_name.unwrap();
    assert!(
        thief.starts_with("berth-linux-") && thief.ends_with("-1"),
        "{thief}"
    );
    assert_eq!(world.sim.job(mine).unwrap().runner_name, job.runner_name);
    assert_clean(&world).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runners_taking_each_others_jobs_still_run_every_job_once() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    // Priorities make GitHub hand jobs out in another order than berth
    // started runners for them, so runners take each other's jobs.
    let mut ids = Vec::new();
    for priority in [1, 5, 3, 9, 7, 2] {
        ids.push(world.queue_spec(ghsim::JobSpec {
            repository: "acme/widgets".into(),
            labels: common::LABELS.iter().map(|s| s.to_string()).collect(),
            steps: vec![
                format!("echo job-{priority}").as_str().into(),
                "sleep 1".into(),
            ],
            priority: Some(priority),
            ..Default::default()
        }));
    }
    for &id in &ids {
        let job = berth.wait_terminal(id, JOB_LIMIT).await;
        assert_eq!(job.state, JobState::Completed, "{job:?}");
        let on_github = world.sim.job(id).unwrap();
        assert_eq!(on_github.conclusion.as_deref(), Some("success"));
    }
    // Every runner ran exactly one job.
    let mut runners: Vec<_> = ids
        .iter()
        .map(|&id| world.sim.job(id).unwrap().runner_name.unwrap())
        .collect();
    runners.sort();
    runners.dedup();
    assert_eq!(runners.len(), ids.len());
    assert_clean(&world).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancellation_before_and_after_the_runner_started() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("max_runners = 1")).await;
    let client = berth.http();
    let cancel = |id: uuid::Uuid| {
        client
            .post(format!("{}/v1/jobs/{id}/cancel", berth.url))
            .bearer_auth(&berth.admin_token)
            .send()
    };

    // The pool's one slot is taken by a long job...
    let long = world.queue(&["sleep 30"]);
    let running = berth.wait_state(long, JobState::Running, JOB_LIMIT).await;
    // ...so these two wait in berth's queue.
    let via_api = world.queue(&["echo never"]);
    let via_github = world.queue(&["echo never"]);
    let queued = berth.wait_state(via_api, JobState::Queued, JOB_LIMIT).await;
    berth
        .wait_state(via_github, JobState::Queued, JOB_LIMIT)
        .await;

    // Before a runner started: cancelled through berth's API, and on GitHub.
    assert_eq!(cancel(queued.id).await.unwrap().status(), 202);
    world.sim.cancel_job(via_github).unwrap();
    let job = berth.wait_terminal(via_api, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    assert!(job.container_id.is_none());
    let job = berth.wait_terminal(via_github, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");

    // After it started: cancelled through berth's API stops the container.
    let wait_until_taken = async {
        eventually("long job taken", JOB_LIMIT, || async {
            world.sim.job(long).unwrap().status == "in_progress"
        })
        .await
    };
    wait_until_taken.await;
    assert_eq!(cancel(running.id).await.unwrap().status(), 202);
    let job = berth.wait_terminal(long, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    // A second cancel of a finished job is refused.
    assert_eq!(cancel(running.id).await.unwrap().status(), 409);

    // After it started, cancelled on GitHub: the runner stops and reports it.
    let on_github = world.queue(&["sleep 30"]);
    berth
        .wait_state(on_github, JobState::Running, JOB_LIMIT)
        .await;
    eventually("job taken", JOB_LIMIT, || async {
        world.sim.job(on_github).unwrap().status == "in_progress"
    })
    .await;
    world.sim.cancel_job(on_github).unwrap();
    let job = berth.wait_terminal(on_github, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    assert_clean(&world).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_past_its_timeout_is_stopped_and_failed() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("job_timeout = 3")).await;
    let gh_job = world.queue(&["sleep 60"]);
    let job = berth.wait_terminal(gh_job, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert_eq!(job.error.as_deref(), Some("timed out after 3 s"));
    let ran_for = job.finished_at.unwrap() - job.started_at.unwrap();
    assert!(
        ran_for < time::Duration::seconds(20),
        "stopped promptly: {ran_for}"
    );
    assert_clean(&world).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_errors_and_rate_limits_on_30_percent_of_requests() {
    use ghsim::{FaultKind, FaultRule};
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    // Only GitHub's REST API, which berth calls, fails; runners are not hit.
    // The first request under each prefix fails once each way for certain,
    // so that a run with few requests (tokens are cached) still meets both
    // kinds; the rest is random.
    for prefix in ["/app/", "/orgs/", "/repos/"] {
        for kind in [FaultKind::ServerError, FaultKind::TooManyRequests] {
            let mut first = FaultRule::new(kind);
            first.count = Some(1);
            first.path_prefix = Some(prefix.into());
            world.sim.add_fault(first);
        }
    }
    for prefix in ["/app/", "/orgs/", "/repos/"] {
        let mut errors = FaultRule::new(FaultKind::ServerError);
        errors.fraction = 0.2;
        errors.path_prefix = Some(prefix.into());
        let mut limited = FaultRule::new(FaultKind::TooManyRequests);
        limited.fraction = 0.125;
        limited.retry_after_secs = Some(1);
        limited.path_prefix = Some(prefix.into());
        world.sim.add_fault(errors);
        world.sim.add_fault(limited);
    }

    let ids: Vec<u64> = (0..6)
        .map(|i| world.queue(&[format!("echo {i}").as_str()]))
        .collect();
    for id in ids {
        let job = berth.wait_terminal(id, Duration::from_secs(120)).await;
        let logs = berth
            .store()
            .job_logs_get(job.id)
            .await
            .unwrap()
            .map(|l| String::from_utf8_lossy(&l.content).to_string());
        assert_eq!(job.state, JobState::Completed, "{job:?}\n{logs:?}");
    }
    assert!(world.sim.fault_hits() > 0, "faults were injected");
    let metrics = berth.ctx.metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("berth_github_api_requests_total")
                && (l.contains("status=\"500\"")
                    || l.contains("status=\"502\"")
                    || l.contains("status=\"503\"")
                    || l.contains("status=\"429\""))),
        "{metrics}"
    );
    world.sim.clear_faults();
    assert_clean(&world).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_policy_and_pull_policy() {
    use berth::docker::image_policy::PullPolicy;
    let world = World::new().await;
    let mut config = world.config("");
    // The allowlisted registry for `always` is a closed loopback port, so the
    // pull attempt never leaves this machine.
    config.docker.allowed_images = vec!["berth-worker-local".into(), "127.0.0.1:1/".into()];
    let base = config.pools[0].clone();
    let pool = |name: &str, image: &str, pull: PullPolicy| {
        let mut p = base.clone();
        p.name = name.into();
        p.labels = vec!["self-hosted".into(), name.into()];
        p.image = image.into();
        p.pull_policy = pull;
        p
    };
    config.pools = vec![
        pool("unpinned", "ubuntu:latest", PullPolicy::Never),
        pool(
            "allowlisted",
            "berth-worker-local:latest",
            PullPolicy::IfNotPresent,
        ),
        pool(
            "always",
            "127.0.0.1:1/berth-worker:latest",
            PullPolicy::Always,
        ),
        pool(
            "missing",
            "sha256:00000000000000000000000000000000000000000000000000000000000000aa",
            PullPolicy::IfNotPresent,
        ),
        pool(
            "absent",
            "127.0.0.1:1/berth-absent:latest",
            PullPolicy::IfNotPresent,
        ),
    ];
    let berth = Berth::start(&world, config).await;
    let queue = |label: &str| {
        world.queue_spec(ghsim::JobSpec {
            repository: "acme/widgets".into(),
            labels: vec!["self-hosted".into(), label.into()],
            steps: vec!["echo hi".into()],
            ..Default::default()
        })
    };
    let unpinned = queue("unpinned");
    let allowlisted = queue("allowlisted");
    let always = queue("always");
    let missing = queue("missing");
    let absent = queue("absent");

    let job = berth.wait_terminal(unpinned, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.error
            .as_deref()
            .unwrap()
            .contains("neither pinned by digest"),
        "{job:?}"
    );
    assert!(
        job.runner_name.is_none(),
        "no runner is minted for a refused image"
    );

    let job = berth.wait_terminal(allowlisted, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");

    // There is no registry: `always` must try, and fail with the reason.
    let job = berth.wait_terminal(always, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert!(
        job.error
            .as_deref()
            .unwrap()
            .contains("pulling the worker image"),
        "{job:?}"
    );

    let job = berth.wait_terminal(missing, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert!(
        job.error
            .as_deref()
            .unwrap()
            .contains("is not on the Docker host"),
        "{job:?}"
    );

    // Not on the host and `if-not-present`: the create misses, berth pulls.
    let job = berth.wait_terminal(absent, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert!(
        job.error
            .as_deref()
            .unwrap()
            .contains("pulling the worker image `127.0.0.1:1/berth-absent:latest`"),
        "{job:?}"
    );

    assert_clean(&world).await;
    berth.stop().await;
}

/// Requests the socket proxy in front of the engine let through for `rule`.
fn proxied(world: &World, rule: &str) -> u64 {
    let needle =
        format!("berth_socket_proxy_requests_total{{decision=\"allow\",rule=\"{rule}\"}} ");
    world
        .proxy
        .proxy()
        .metrics()
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&needle))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_start_creates_the_container_while_the_runner_is_minted() {
    let world = World::new().await;
    let mut config = world.config("");
    // One attempt is what this test counts: a loaded machine must not let
    // the claim's lease (10 s in these tests) run out and requeue the job.
    config.dispatch.lease = Duration::from_secs(60);
    let berth = Berth::start(&world, config).await;
    let inspects = proxied(&world, "image_inspect");
    // GitHub takes its time over the runner: longer than the client's 5 s
    // request timeout, so the first attempt cannot finish within 4.5 s.
    world.sim.add_fault(slow_mint(8_000, Some(1)));
    let gh_job = world.queue(&["echo side by side"]);
    eventually(
        "the container is created while the runner is minted",
        Duration::from_millis(4_500),
        || async { !world.containers().is_empty() },
    )
    .await;
    let job = berth.job(gh_job).await.unwrap();
    assert_eq!(job.state, JobState::Provisioning, "{job:?}");
    assert!(job.runner_name.is_some(), "the name comes first: {job:?}");
    assert!(job.runner_id.is_none(), "the mint is not done: {job:?}");

    let job = berth.wait_terminal(gh_job, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    // The create itself says whether the image is there.
    assert_eq!(
        proxied(&world, "image_inspect"),
        inspects,
        "no image inspect on a cold start"
    );
    assert_eq!(proxied(&world, "container_create"), 1);
    assert_clean(&world).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_stop_mid_hand_off_releases_what_was_made() {
    let world = World::new().await;
    let config = world.config("");
    let store_url = config.store.url.clone();
    let berth = Berth::start(&world, config).await;
    // GitHub never answers the mint in time: the hand-off is in flight
    // (its container already created) when berth is told to stop.
    world.sim.add_fault(slow_mint(60_000, None));
    let gh_job = world.queue(&["echo later"]);
    eventually(
        "the container is created",
        Duration::from_secs(15),
        || async { !world.containers().is_empty() },
    )
    .await;
    berth.stop().await;

    assert!(
        world.containers().is_empty(),
        "the stop removed the container it made: {:?}",
        world.containers()
    );
    let store = berth::store::Store::connect(&store_url).await.unwrap();
    let job = store
        .job_get_by_github_id(gh_job as i64)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Queued, "back in the queue: {job:?}");
    assert_eq!(
        job.error.as_deref(),
        Some("berth shut down while provisioning")
    );
    assert!(job.lease_expires_at.is_none(), "{job:?}");
    world.sim.clear_faults();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn following_a_jobs_log_streams_until_the_job_ends() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    let gh_job = world.queue(&["echo start", "sleep 3", "echo end"]);
    let running = berth.wait_state(gh_job, JobState::Running, JOB_LIMIT).await;
    let started = std::time::Instant::now();
    let response = berth
        .http()
        .get(format!(
            "{}/v1/jobs/{}/logs?follow=true",
            berth.url, running.id
        ))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut chunks = 0;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        chunks += 1;
    }
    // The stream ended by itself, once the job had finished.
    let job = berth.job(gh_job).await.unwrap();
    assert!(job.state.is_terminal(), "{job:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it followed the running job"
    );
    assert!(
        text.contains(&format!("acquired job {gh_job}")) && text.contains("succeeded"),
        "{text}"
    );
    assert!(
        chunks >= 2,
        "output arrived as it was written ({chunks} chunks)"
    );
    berth.stop().await;
}
