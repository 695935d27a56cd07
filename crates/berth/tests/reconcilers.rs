//! Reconcilers against the real engine and the simulator: idle runners,
//! stale queued jobs, orphan containers and orphan runner registrations.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use berth::docker::controller::{WorkerNetwork, WorkerSpec};
use berth::intake::DelegateRequest;
use berth::store::JobState;
use common::{Berth, World, eventually};

fn delegate(github_job_id: i64) -> DelegateRequest {
    DelegateRequest {
        repository: "acme/widgets".into(),
        github_job_id,
        run_id: 1,
        labels: vec!["self-hosted".into(), "linux".into()],
        workflow: None,
        job_name: None,
        pool: None,
        scale_set: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_that_never_gets_a_job_is_removed_after_its_idle_time() {
    let world = World::new().await;
    let mut config = world.config("");
    config.pools[0].idle_timeout = Duration::from_secs(3);
    let berth = Berth::start(&world, config).await;
    // A job GitHub does not have: its runner waits in vain.
    let (job, _) = berth::intake::accept_delegate(&berth.ctx, delegate(123_456))
        .await
        .unwrap();
    let running = berth
        .wait_state(123_456, JobState::Running, Duration::from_secs(30))
        .await;
    assert!(
        world
            .berth_runners()
            .contains(running.runner_name.as_ref().unwrap())
    );
    let done = berth.wait_terminal(123_456, Duration::from_secs(30)).await;
    assert_eq!(done.id, job.id);
    assert_eq!(done.state, JobState::Expired, "{done:?}");
    assert_eq!(
        done.error.as_deref(),
        Some("GitHub no longer knows this job")
    );
    eventually("container removed", Duration::from_secs(10), || async {
        world.containers().is_empty()
    })
    .await;
    eventually("runner deregistered", Duration::from_secs(10), || async {
        world.berth_runners().is_empty()
    })
    .await;
    berth.stop().await;
}

/// berth with a one-runner pool whose runner is busy (`sleep 30`), so
/// every other job waits in the queue, checked on GitHub after `check_after`.
async fn busy_berth(world: &World, check_after: Duration) -> Berth {
    let mut config = world.config("max_runners = 1");
    config.reconcile.queued_check_after = check_after;
    let berth = Berth::start(world, config).await;
    let busy = world.queue(&["sleep 30"]);
    berth
        .wait_state(busy, JobState::Running, Duration::from_secs(30))
        .await;
    berth
}

/// A container labelled as this test's berth's, for a job berth does not
/// have (as if berth crashed between creating it and recording it).
async fn orphan_container(
    world: &World,
    berth: &Berth,
    name: &str,
    runner: Option<&str>,
) -> String {
    let mut spec = WorkerSpec::new(
        name,
        world.image_id.clone(),
        WorkerNetwork::Bridge("berth-test".into()),
    );
    spec.labels.extend(BTreeMap::from([
        ("berth.job".to_string(), uuid::Uuid::now_v7().to_string()),
        ("berth.pool".to_string(), "linux".to_string()),
        ("berth.instance".to_string(), world.instance.clone()),
    ]));
    if let Some(runner) = runner {
        spec.labels
            .insert("berth.runner".to_string(), runner.to_string());
    }
    spec.memory_bytes = 64 << 20;
    berth.ctx.docker.create_worker(&spec).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_queued_jobs_are_checked_against_github() {
    let world = World::new().await;
    let berth = busy_berth(&world, Duration::from_secs(2)).await;
    berth::intake::accept_delegate(&berth.ctx, delegate(987_654))
        .await
        .unwrap();
    let real = world.queue(&["echo real"]);
    berth
        .wait_state(real, JobState::Queued, Duration::from_secs(10))
        .await;
    // Unknown to GitHub: expired. Still queued on GitHub: left alone.
    let stale = berth.wait_terminal(987_654, Duration::from_secs(30)).await;
    assert_eq!(stale.state, JobState::Expired, "{stale:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(berth.job(real).await.unwrap().state, JobState::Queued);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphan_containers_and_runner_registrations_are_removed() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    // A container labelled as berth's, for a job berth does not have...
    let orphan = orphan_container(
        &world,
        &berth,
        "berth-orphan-test",
        Some("berth-linux-orphan-1"),
    )
    .await;
    // ...and an offline `berth-` registration nobody owns, plus one that is not berth's.
    let github = berth.ctx.github.as_ref().unwrap();
    let scope = berth::config::Scope::Org("acme".into());
    let labels = vec!["linux".to_string()];
    github
        .generate_jitconfig(&scope, "berth-linux-orphan-1", 1, &labels, "_work")
        .await
        .unwrap();
    github
        .generate_jitconfig(&scope, "someone-elses-runner", 1, &labels, "_work")
        .await
        .unwrap();
    assert!(world.containers().contains(&orphan));

    // The orphan grace is 5 s; passes run every 2 s.
    eventually(
        "orphan container removed",
        Duration::from_secs(20),
        || async { !world.containers().contains(&orphan) },
    )
    .await;
    eventually("orphan runner deleted", Duration::from_secs(20), || async {
        world.berth_runners().is_empty()
    })
    .await;
    let names: Vec<String> = world.sim.runners().into_iter().map(|r| r.name).collect();
    assert!(
        names.contains(&"someone-elses-runner".to_string()),
        "{names:?}"
    );
    let metrics = berth.ctx.metrics.encode();
    assert!(
        metrics.contains("berth_reconciler_actions_total{kind=\"orphan_container\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_reconciler_actions_total{kind=\"orphan_runner\"} 1"),
        "{metrics}"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_github_does_not_hold_up_local_repairs() {
    let world = World::new().await;
    let berth = busy_berth(&world, Duration::from_secs(1)).await;
    // Looking that job up on GitHub hangs: each attempt runs into the
    // client's 5 s timeout, and the client tries several times.
    let mut hang = ghsim::FaultRule::new(ghsim::FaultKind::Slow);
    hang.delay_ms = Some(20_000);
    hang.path_prefix = Some("/repos/acme/widgets/actions/jobs/".into());
    world.sim.add_fault(hang);
    berth::intake::accept_delegate(&berth.ctx, delegate(555_001))
        .await
        .unwrap();
    // Let a pass start on the stale job (queued_check_after is 1 s, passes
    // run every 2 s), then leave an orphan container behind.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let orphan = orphan_container(&world, &berth, "berth-orphan-hang", None).await;
    // Removed after its 5 s grace by the next local pass, while the GitHub
    // lane is still waiting on the hanging lookup.
    eventually(
        "orphan container removed while GitHub hangs",
        Duration::from_secs(15),
        || async { !world.containers().contains(&orphan) },
    )
    .await;
    assert_eq!(
        berth.job(555_001).await.unwrap().state,
        JobState::Queued,
        "the GitHub lane is still waiting"
    );
    world.sim.clear_faults();
    berth.stop().await;
}
