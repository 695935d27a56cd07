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

/// A job of pool `linux` written to the store directly, past intake's checks.
fn stored_job(github_job_id: i64, repository: &str, labels: &[&str]) -> berth::store::NewJob {
    berth::store::NewJob {
        github_job_id,
        run_id: 1,
        repository: repository.into(),
        workflow: None,
        job_name: None,
        labels: labels.iter().map(|l| l.to_string()).collect(),
        pool: "linux".into(),
        source: berth::store::JobSource::Delegate,
        scale_set: None,
        github_status: None,
        timeout_secs: None,
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

/// berth's view of a runner trails GitHub's: a runner may run another job
/// than its own before GitHub's webhook about it arrives, or without one
/// arriving at all. Such a runner seems idle, but stopping it would fail
/// the job it runs: GitHub refuses to delete its registration, and the
/// idle-runner reconciler leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_running_a_job_berth_was_not_told_of_is_not_removed_as_idle() {
    let world = World::new().await;
    let mut config = world.config("");
    config.pools[0].idle_timeout = Duration::from_secs(2);
    let berth = Berth::start(&world, config).await;
    // A job GitHub does not have: its runner is free for any other.
    berth::intake::accept_delegate(&berth.ctx, delegate(123_457))
        .await
        .unwrap();
    let own = berth
        .wait_state(123_457, JobState::Running, Duration::from_secs(30))
        .await;
    // A job berth never hears of (its webhooks go nowhere): the runner
    // takes it, and runs it past the idle timeout.
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    world.sim.set_webhook(Some(ghsim::WebhookTarget {
        url: format!("{dead}/v1/webhooks/github"),
        secret: Some(common::WEBHOOK_SECRET.into()),
    }));
    let unseen = world.queue(&["sleep 6", "echo done"]);
    let taken = world
        .sim
        .wait_job(unseen, Duration::from_secs(30), |j| {
            j.status == "in_progress"
        })
        .await
        .unwrap();
    assert_eq!(taken.runner_name, own.runner_name, "{taken:?}");
    let ran = world
        .sim
        .wait_job_completed(unseen, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ran.conclusion.as_deref(), Some("success"), "{ran:?}");
    // Its exit settles berth's job, and nothing is left.
    let done = berth.wait_terminal(123_457, Duration::from_secs(30)).await;
    assert!(done.state.is_terminal(), "{done:?}");
    eventually("nothing left", Duration::from_secs(10), || async {
        world.containers().is_empty() && world.berth_runners().is_empty()
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
    berth
        .ctx
        .fleet
        .first()
        .docker
        .create_worker(&spec)
        .await
        .unwrap()
}

/// Stale queued jobs are checked against GitHub; one whose repository
/// cannot be asked about (stored by an older berth, before names were
/// checked) is skipped and counted, and the others are still checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_queued_jobs_are_checked_against_github() {
    let world = World::new().await;
    let berth = busy_berth(&world, Duration::from_secs(2)).await;
    let (unaskable, _) = berth
        .store()
        .job_insert(stored_job(
            555_555,
            "acme widgets",
            &["self-hosted", "linux"],
        ))
        .await
        .unwrap();
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
    let skipped = berth.store().job_get(unaskable.id).await.unwrap().unwrap();
    assert_eq!(skipped.state, JobState::Queued, "{skipped:?}");
    let metrics = berth.ctx.metrics.encode();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "berth_reconciler_errors_total{reconciler=\"queued_expired\",error=\"github\"}"
        ) && !l.ends_with(" 0")),
        "{metrics}"
    );
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

/// `[retention]`: a finished job's output goes after `job_logs`, the job
/// after `finished_jobs`; live jobs stay; what went is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_prunes_finished_jobs_and_their_logs() {
    let world = World::new().await;
    let mut config = world.config("max_runners = 1");
    config.retention.job_logs = Duration::from_secs(1);
    config.retention.finished_jobs = Duration::from_secs(4);
    config.retention.interval = Duration::from_millis(300);
    config.retention.batch = 1;
    let berth = Berth::start(&world, config).await;
    let store = berth.store();
    // The pool's one slot is busy first, so the dispatcher leaves the jobs
    // inserted below alone.
    let live = world.queue(&["sleep 20"]);
    berth
        .wait_state(live, JobState::Running, Duration::from_secs(30))
        .await;
    let mut finished = Vec::new();
    for n in 0..3 {
        let (job, _) = store
            .job_insert(stored_job(
                700_000 + n,
                "acme/widgets",
                &["nothing-serves-this"],
            ))
            .await
            .unwrap();
        store.job_logs_append(job.id, b"output", 100).await.unwrap();
        assert!(
            store
                .job_finish(job.id, JobState::Completed, Some(0), None)
                .await
                .unwrap()
        );
        finished.push(job.id);
    }
    eventually("the output pruned", Duration::from_secs(10), || async {
        let mut gone = true;
        for id in &finished {
            gone &= store.job_logs_get(*id).await.unwrap().is_none();
        }
        gone
    })
    .await;
    for id in &finished {
        assert!(store.job_get(*id).await.unwrap().is_some(), "the job stays");
    }
    eventually("the jobs pruned", Duration::from_secs(15), || async {
        let mut gone = true;
        for id in &finished {
            gone &= store.job_get(*id).await.unwrap().is_none();
        }
        gone
    })
    .await;
    assert!(berth.job(live).await.is_some(), "a live job stays");
    let metrics = berth.ctx.metrics.encode();
    for series in [
        "berth_retention_pruned_total{what=\"job_logs\"} 3",
        "berth_retention_pruned_total{what=\"jobs\"} 3",
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series}\n{metrics}");
    }
    berth.stop().await;
}
