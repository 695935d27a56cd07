//! Scale-set mode end to end, with the listener inside `berth serve`: the
//! simulator's runner scale-set service, the real Docker engine, the runner
//! stand-in in hardened single-use containers.

mod common;
mod scaleset_common;

use std::time::Duration;

use berth::scaleset::orchestrator::RETIRED;
use berth::store::{Job, JobSource, JobState};
use common::{Berth, World, eventually};
use ghsim::{FaultKind, FaultRule, ScaleSetFlow, SimConfig};
use scaleset_common::{
    LIMIT, SET, assert_nothing_left as nothing_left,
    assert_one_runner_per_job as one_runner_per_job, queue, sample, scale_set_jobs as jobs_of,
    scale_set_toml, wait_completed,
};

async fn scale_set_jobs(berth: &Berth) -> Vec<Job> {
    jobs_of(berth.store()).await
}

async fn assert_nothing_left(world: &World, berth: &Berth) {
    nothing_left(world, berth.store()).await
}

async fn assert_one_runner_per_job(berth: &Berth, ran: &[ghsim::JobView]) -> Vec<Job> {
    one_runner_per_job(berth.store(), ran).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_jobs_run_in_five_fresh_containers() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config(&scale_set_toml(&world, ""))).await;

    let ids: Vec<u64> = (1..=5)
        .map(|n| queue(&world, &[&format!("echo scale-set-job-{n}")]))
        .collect();
    let ran = wait_completed(&world, &ids).await;
    for job in &ran {
        assert_eq!(job.conclusion.as_deref(), Some("success"), "{job:?}");
        assert!(job.runner_name.as_deref().unwrap().starts_with("berth-"));
        assert!(job.scale_set_id.is_some());
    }
    assert_nothing_left(&world, &berth).await;
    let used = assert_one_runner_per_job(&berth, &ran).await;

    // The job JSON shows what each runner ran.
    for job in &used {
        assert_eq!(job.source, JobSource::ScaleSet);
        let gh = ran
            .iter()
            .find(|g| g.runner_name == job.runner_name)
            .unwrap();
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
        assert_eq!(got["scale_set"], SET);
        assert_eq!(got["repository"], "acme/widgets");
        assert_eq!(got["run_id"], gh.run_id);
        assert_eq!(got["github_status"], "completed");
        assert_eq!(got["github_conclusion"], "success");
        assert_eq!(got["github_runner_name"], got["runner_name"]);
        assert_eq!(got["state"], "completed");
    }
    // Runner credentials came from the scale set, never from the REST API.
    let text = berth.metrics().await;
    for name in [
        "berth_scaleset_assigned_jobs{scale_set=\"berth-linux\"}",
        "berth_scaleset_running_jobs{scale_set=\"berth-linux\"}",
        "berth_scaleset_busy_runners{scale_set=\"berth-linux\"}",
        "berth_scaleset_idle_runners{scale_set=\"berth-linux\"}",
        "berth_scaleset_desired_runners{scale_set=\"berth-linux\"}",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            "berth_scaleset_job_startup_duration_seconds_count{scale_set=\"berth-linux\"}"
        ),
        5.0
    );
    eventually(
        "five executions measured",
        Duration::from_secs(10),
        || async {
            sample(
                &berth.metrics().await,
                "berth_scaleset_job_execution_duration_seconds_count{scale_set=\"berth-linux\"}",
            ) == 5.0
        },
    )
    .await;
    assert!(
        sample(
            &text,
            "berth_github_api_requests_total{endpoint=\"actions_generate_jitconfig\",status=\"200\"}"
        ) >= 5.0
    );
    assert_eq!(
        sample(
            &text,
            "berth_github_api_requests_total{endpoint=\"generate_jitconfig\""
        ),
        0.0
    );
    assert!(
        sample(
            &text,
            "berth_scaleset_delegations_total{scale_set=\"berth-linux\",outcome=\"accepted\"}"
        ) >= 5.0
    );
    berth.stop().await;
    // The listener deleted its session on the way out.
    assert!(world.sim.scale_sets()[0].session.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn older_ghes_jobs_are_acquired_then_run() {
    let world = World::new().await;
    world.sim.set_default_scale_set_flow(ScaleSetFlow::Acquire);
    let berth = Berth::start(&world, world.config(&scale_set_toml(&world, ""))).await;
    let ids = [queue(&world, &["echo one"]), queue(&world, &["echo two"])];
    let ran = wait_completed(&world, &ids).await;
    assert!(
        ran.iter()
            .all(|j| j.conclusion.as_deref() == Some("success"))
    );
    assert_nothing_left(&world, &berth).await;
    assert_one_runner_per_job(&berth, &ran).await;
    let text = berth.metrics().await;
    assert_eq!(
        sample(
            &text,
            "berth_scaleset_job_messages_total{scale_set=\"berth-linux\",outcome=\"available\"}"
        ),
        2.0
    );
    assert!(
        sample(
            &text,
            "berth_github_api_requests_total{endpoint=\"actions_acquire_jobs\",status=\"200\"}"
        ) >= 1.0
    );
    berth.stop().await;
}

/// A session left open by a listener that died (here: opened by hand and
/// never polled) makes the first attempts fail with 409; the listener keeps
/// trying and takes over once the service expires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_conflict_at_start_is_waited_out() {
    let world = World::with_sim(SimConfig {
        session_idle_timeout: Duration::from_secs(6),
        ..SimConfig::default()
    })
    .await;
    let config = world.config(&scale_set_toml(&world, ""));
    // The predecessor: the same scale set, a session nobody polls.
    let key = berth::secrets::LiveSecret::new(berth::config::Secret::new(
        world.sim.app_private_key_pem(),
    ));
    let probe = berth::scaleset::Registry::new(
        &config,
        Some(
            &berth::service::github_client(&config, key, berth::observability::Metrics::new())
                .unwrap(),
        ),
        &berth::observability::Metrics::new(),
    )
    .unwrap();
    let id = probe.id(SET).await.unwrap();
    probe
        .client(SET)
        .unwrap()
        .create_session(id, "crashed-listener")
        .await
        .unwrap();

    let berth = Berth::start(&world, config).await;
    let gh = queue(&world, &["echo after the conflict"]);
    eventually("the listener met the conflict", Duration::from_secs(10), || async {
        sample(
            &berth.metrics().await,
            "berth_scaleset_session_events_total{scale_set=\"berth-linux\",outcome=\"conflict\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(
        world.sim.scale_sets()[0]
            .session
            .as_ref()
            .unwrap()
            .owner_name,
        "crashed-listener"
    );
    let ran = wait_completed(&world, &[gh]).await;
    assert_eq!(ran[0].conclusion.as_deref(), Some("success"));
    let owner = world.sim.scale_sets()[0]
        .session
        .clone()
        .unwrap()
        .owner_name;
    assert!(owner.starts_with("berth-"), "{owner}");
    assert_nothing_left(&world, &berth).await;
    assert_one_runner_per_job(&berth, &ran).await;
    berth.stop().await;
}

/// Queue tokens that expire every 2 s (401 on the poll) and an admin token
/// that enters its refresh margin 3 s after it is issued: jobs keep coming
/// through, on one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiring_tokens_are_refreshed_mid_poll() {
    let world = World::with_sim(SimConfig {
        queue_token_lifetime: Duration::from_secs(2),
        admin_token_lifetime: Duration::from_secs(63),
        ..SimConfig::default()
    })
    .await;
    let berth = Berth::start(&world, world.config(&scale_set_toml(&world, ""))).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(queue(&world, &[&format!("echo wave-{n}")]));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let ran = wait_completed(&world, &ids).await;
    assert!(
        ran.iter()
            .all(|j| j.conclusion.as_deref() == Some("success"))
    );
    let text = berth.metrics().await;
    assert!(
        sample(
            &text,
            "berth_scaleset_session_events_total{scale_set=\"berth-linux\",outcome=\"refreshed\"}"
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "berth_scaleset_session_events_total{scale_set=\"berth-linux\",outcome=\"created\"}"
        ),
        1.0,
        "one session throughout"
    );
    assert!(
        sample(
            &text,
            "berth_github_api_requests_total{endpoint=\"actions_get_message\",status=\"401\"}"
        ) >= 2.0
    );
    assert!(
        sample(
            &text,
            "berth_github_api_requests_total{endpoint=\"actions_runner_registration\""
        ) >= 2.0
    );
    assert!(world.sim.scale_sets()[0].session.as_ref().unwrap().polls > 3);
    assert_nothing_left(&world, &berth).await;
    assert_one_runner_per_job(&berth, &ran).await;
    berth.stop().await;
}

/// Runners made for jobs that were then cancelled on GitHub are beyond the
/// desired count: they are retired while idle, and never the one running
/// the remaining job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runners_beyond_the_desired_count_are_retired_while_idle() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config(&scale_set_toml(&world, ""))).await;
    let keep = queue(&world, &["sleep 4", "echo kept"]);
    let kept = world
        .sim
        .wait_job(keep, LIMIT, |j| j.status != "queued")
        .await
        .unwrap();
    assert_eq!(kept.status, "in_progress", "{kept:?}");
    // New runners cannot reach GitHub for a while (their token request is
    // held), so the two jobs below are cancelled before any runner made
    // for them could take one: those runners are surplus, never busy.
    let mut held = FaultRule::new(FaultKind::Slow);
    held.path_prefix = Some("/_services/vstoken/".into());
    held.delay_ms = Some(3_000);
    world.sim.add_fault(held);
    let cancel = [
        queue(&world, &["echo never"]),
        queue(&world, &["echo never"]),
    ];
    eventually(
        "three runners delegated",
        Duration::from_secs(20),
        || async { scale_set_jobs(&berth).await.len() >= 3 },
    )
    .await;
    for id in cancel {
        world.sim.cancel_job(id).unwrap();
    }
    world.sim.clear_faults();
    let ran = wait_completed(&world, &[keep]).await;
    assert_eq!(ran[0].conclusion.as_deref(), Some("success"));
    for id in cancel {
        let j = world.sim.job(id).unwrap();
        assert_eq!(j.conclusion.as_deref(), Some("cancelled"), "{j:?}");
        assert!(j.runner_name.is_none(), "a cancelled job ran: {j:?}");
    }
    assert_nothing_left(&world, &berth).await;
    assert_one_runner_per_job(&berth, &ran).await;
    let retired = scale_set_jobs(&berth)
        .await
        .into_iter()
        .filter(|j| j.error.as_deref() == Some(RETIRED))
        .count();
    assert_eq!(retired, 2, "{:#?}", scale_set_jobs(&berth).await);
    let text = berth.metrics().await;
    assert_eq!(
        sample(
            &text,
            "berth_scaleset_retirements_total{scale_set=\"berth-linux\",outcome=\"retired\"}"
        ),
        2.0
    );
    berth.stop().await;
}

/// `idle_runners` keeps warm runners on top of the busy ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_buffer_is_kept_on_top_of_busy_runners() {
    let world = World::new().await;
    let berth = Berth::start(
        &world,
        world.config(&scale_set_toml(&world, "idle_runners = 1")),
    )
    .await;
    let idle_running = || async {
        scale_set_jobs(&berth)
            .await
            .iter()
            .filter(|j| j.state == JobState::Running && j.github_runner_name.is_none())
            .count()
    };
    eventually(
        "one idle runner, before any job",
        Duration::from_secs(30),
        || async { idle_running().await == 1 },
    )
    .await;
    let gh = queue(&world, &["sleep 3"]);
    let started = world
        .sim
        .wait_job(gh, LIMIT, |j| j.status != "queued")
        .await
        .unwrap();
    assert_eq!(started.status, "in_progress");
    // The job took the idle runner; a new idle one is made while it runs.
    eventually(
        "a new idle runner beside the busy one",
        Duration::from_secs(30),
        || async {
            idle_running().await == 1
                && scale_set_jobs(&berth)
                    .await
                    .iter()
                    .any(|j| j.github_runner_name.is_some() && !j.state.is_terminal())
        },
    )
    .await;
    wait_completed(&world, &[gh]).await;
    // Back to one idle runner, nothing else.
    eventually("one idle runner left", Duration::from_secs(30), || async {
        let live: Vec<Job> = scale_set_jobs(&berth)
            .await
            .into_iter()
            .filter(|j| !j.state.is_terminal())
            .collect();
        live.len() == 1 && live[0].github_runner_name.is_none()
    })
    .await;
    assert_eq!(world.berth_runners().len(), 1);
    berth.stop().await;
}

/// Runners that fail before taking a job (here: the pool's image is one the
/// image policy refuses) make the listener back off instead of delegating a
/// new runner the moment the last one failed: a bounded number of attempts
/// and log lines, the failures counted, and each job ending with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runners_that_fail_at_once_are_delegated_with_backoff() {
    let world = World::new().await;
    let listen = format!("127.0.0.1:{}", common::free_port());
    // An unpinned tag outside any allowed repository: every job fails at
    // provisioning, before a container exists.
    let toml = world.config_toml(&listen, "").replace(
        &format!("image = \"{}\"", world.image_id),
        "image = \"berth-worker-local:latest\"",
    ) + &scale_set_toml(&world, "");
    let config = world.dir.path().join("berth.toml");
    std::fs::write(&config, toml).unwrap();
    let serve = common::ServeProcess::start(&world, &config, 1);
    common::wait_listening(&listen, Duration::from_secs(20)).await;
    queue(&world, &["echo never runs"]);
    let watched = Duration::from_secs(12);
    tokio::time::sleep(watched).await;
    let text = scaleset_common::get_text(&format!("http://{listen}/metrics")).await;
    let delegated = sample(
        &text,
        "berth_scaleset_delegations_total{scale_set=\"berth-linux\",outcome=\"accepted\"}",
    ) + sample(
        &text,
        "berth_scaleset_delegations_total{scale_set=\"berth-linux\",outcome=\"duplicate\"}",
    );
    let failed = sample(
        &text,
        "berth_scaleset_delegations_total{scale_set=\"berth-linux\",outcome=\"runner_failed\"}",
    );
    // Waits of 1, 2, 4, 8 s: about five attempts in 12 s (without the
    // backoff: thousands).
    assert!(
        (1.0..=8.0).contains(&delegated),
        "{delegated} delegations in {watched:?}\n{text}"
    );
    assert!(failed >= 1.0, "failures are counted\n{text}");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    let lines = log.lines().count();
    assert!(lines < 200, "{lines} log lines in {watched:?}");
    let backoff_started = log
        .lines()
        .filter(|l| l.contains("fail before taking a job"))
        .count();
    assert_eq!(
        backoff_started, 1,
        "the backoff is logged once, when it starts:\n{log}"
    );
    let store = berth::store::Store::connect(&format!(
        "sqlite://{}",
        world.dir.path().join("berth.db").display()
    ))
    .await
    .unwrap();
    let jobs = jobs_of(&store).await;
    assert!(!jobs.is_empty());
    for job in jobs {
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        let error = job.error.unwrap_or_default();
        assert!(
            error.contains("berth-worker-local:latest"),
            "the job names its reason: {error}"
        );
    }
}

/// Two `berth serve` replicas on one PostgreSQL with the same scale set:
/// only the lease holder opens a message session (the other never gets a
/// 409); after a kill -9 of the holder, the other deletes the dead
/// session, opens its own and runs jobs, within the lease's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_listens_and_another_takes_over_after_kill_9() {
    use berth::scaleset::election::{LEASE_TTL, TRY_EVERY};
    let world = World::new().await;
    let store_url = common::postgres_schema().await;
    let config = |listen: &str, name: &str| {
        let sqlite = format!(
            "url = \"sqlite://{}\"",
            world.dir.path().join("berth.db").display()
        );
        let toml = world
            .config_toml(listen, "")
            .replace(&sqlite, &format!("url = \"{store_url}\""))
            + &scale_set_toml(&world, "");
        assert!(toml.contains("postgres"), "{toml}");
        let path = world.dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        path
    };
    let addr_a = format!("127.0.0.1:{}", common::free_port());
    let addr_b = format!("127.0.0.1:{}", common::free_port());
    let replica_a = common::ServeProcess::start(&world, &config(&addr_a, "a.toml"), 1);
    common::wait_listening(&addr_a, Duration::from_secs(30)).await;
    let session = || {
        world
            .sim
            .scale_sets()
            .first()
            .and_then(|s| s.session.clone())
    };
    eventually("replica A polls", LIMIT, || async {
        session().is_some_and(|s| s.polls > 0)
    })
    .await;
    let first = session().unwrap().id;
    let replica_b = common::ServeProcess::start(&world, &config(&addr_b, "b.toml"), 2);
    common::wait_listening(&addr_b, Duration::from_secs(30)).await;
    let ran = wait_completed(&world, &[queue(&world, &["echo before"])]).await;
    assert_eq!(ran[0].conclusion.as_deref(), Some("success"));
    let sessions_of = |addr: String| async move {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let of = |outcome: &str| {
            sample(
                &text,
                &format!(
                    "berth_scaleset_session_events_total{{scale_set=\"{SET}\",outcome=\"{outcome}\"}}"
                ),
            )
        };
        (of("created"), of("conflict"))
    };
    assert_eq!(sessions_of(addr_b.clone()).await, (0.0, 0.0), "B stands by");
    assert_eq!(session().unwrap().id, first);

    let killed = std::time::Instant::now();
    replica_a.kill_9();
    eventually("replica B polls its own session", LIMIT, || async {
        session().is_some_and(|s| s.id != first && s.polls > 0)
    })
    .await;
    let failover = killed.elapsed();
    println!("listener failover after kill -9: {failover:?}");
    assert!(
        failover < LEASE_TTL + TRY_EVERY + Duration::from_secs(5),
        "failover took {failover:?}"
    );
    assert_eq!(
        sessions_of(addr_b.clone()).await,
        (1.0, 0.0),
        "B deleted the dead session instead of waiting out a 409"
    );
    let ran = wait_completed(&world, &[queue(&world, &["echo after"])]).await;
    assert_eq!(ran[0].conclusion.as_deref(), Some("success"));
    replica_b.terminate();
    assert!(session().is_none(), "a clean stop deletes the session");
}
