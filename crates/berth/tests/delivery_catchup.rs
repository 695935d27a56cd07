//! The delivery catch-up (crate::reconcile::delivery_catchup) against the
//! simulator's delivery log: deliveries GitHub could not make while berth
//! was down are redelivered when it starts and their jobs run; a delivery
//! berth has is not asked for again, whatever path brought its job; a pass
//! is bounded; a delivery berth itself refused is not asked for again; a
//! failing GitHub leaves the component failing and retrying, berth ready.

mod common;

use std::time::Duration;

use berth::reconcile::delivery_catchup::{self, MAX_REDELIVERIES_PER_PASS};
use berth::store::JobState;
use common::{Berth, WEBHOOK_SECRET, World, eventually};
use ghsim::{Delivery, JobSpec, WebhookTarget};

/// A URL where nothing listens: deliveries to it fail as they do while
/// berth is down ("failed to connect to host", `status_code` 0).
async fn nowhere() -> String {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/webhooks/github", closed.local_addr().unwrap());
    drop(closed);
    url
}

fn point_webhooks(world: &World, url: &str, secret: &str) {
    world.sim.set_webhook(Some(WebhookTarget {
        url: url.into(),
        secret: Some(secret.into()),
    }));
}

/// A job no pool of berth's serves: berth records its delivery and ignores
/// it, so no container is made.
fn unserved(world: &World) -> u64 {
    world.queue_spec(JobSpec {
        repository: "acme/widgets".into(),
        labels: vec!["self-hosted".into(), "nobody-serves-this".into()],
        steps: vec!["true".into()],
        ..JobSpec::default()
    })
}

fn failed_queued(d: &[Delivery], jobs: &[u64]) -> usize {
    d.iter()
        .filter(|d| jobs.contains(&d.job_id) && d.action == "queued" && d.outcome == "failed")
        .count()
}

fn redelivered_to_berth(d: &[Delivery]) -> usize {
    d.iter()
        .filter(|d| d.redelivery && d.status == Some(202))
        .count()
}

fn redeliveries_requested(berth: &Berth) -> f64 {
    berth.ctx.metrics.webhook_redeliveries_requested.get() as f64
}

fn an_hour_ago(berth: &Berth) -> time::OffsetDateTime {
    berth.store().now() - Duration::from_secs(3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_missed_while_berth_was_down_are_redelivered_at_start_and_the_jobs_run() {
    let world = World::new().await;
    // berth is down: GitHub's deliveries of both jobs fail.
    point_webhooks(&world, &nowhere().await, WEBHOOK_SECRET);
    let jobs = [
        world.queue(&["echo caught up"]),
        world.queue(&["echo me too"]),
    ];
    assert!(
        world
            .sim
            .wait_deliveries(Duration::from_secs(10), |d| failed_queued(d, &jobs) == 2)
            .await
    );
    // berth starts; its first catch-up pass has GitHub redeliver them.
    let mut config = world.config("");
    // Passes every 2 s: should the first redelivery race the simulator's
    // switch to berth's URL, the next pass asks again.
    config.reconcile.delivery_catchup_interval = Duration::from_secs(2);
    let berth = Berth::start(&world, config).await;
    for gh_job in jobs {
        let job = berth.wait_terminal(gh_job, Duration::from_secs(60)).await;
        assert_eq!(job.state, JobState::Completed, "{job:?}");
        let on_github = world.sim.job(gh_job).unwrap();
        assert_eq!(on_github.conclusion.as_deref(), Some("success"));
    }
    let log = world.sim.deliveries();
    for gh_job in jobs {
        let queued = log
            .iter()
            .find(|d| d.job_id == gh_job && d.action == "queued")
            .unwrap();
        assert!(
            berth.store().delivery_known(&queued.guid).await.unwrap(),
            "the missed delivery was applied under its own id"
        );
        assert!(
            log.iter()
                .any(|d| d.guid == queued.guid && d.redelivery && d.status == Some(202)),
            "redelivered, same X-GitHub-Delivery"
        );
    }
    assert!(redeliveries_requested(&berth) >= 2.0);
    let status = berth
        .ctx
        .components
        .snapshot()
        .into_iter()
        .find(|c| c.name == "delivery_catchup")
        .expect("the component runs");
    assert_eq!(status.last_result, Some("ok"), "{status:?}");
    assert!(status.last_duration_seconds.is_some());
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pass_is_bounded_and_what_berth_has_is_not_asked_for_again() {
    let world = World::new().await;
    let mut config = world.config("");
    // Passes are run by hand here.
    config.reconcile.delivery_catchup_interval = Duration::ZERO;
    let berth = Berth::start(&world, config).await;
    assert!(
        !berth
            .ctx
            .components
            .snapshot()
            .iter()
            .any(|c| c.name == "delivery_catchup"),
        "an interval of 0 disables the component"
    );
    // One more delivery than a pass asks for is missed.
    point_webhooks(&world, &nowhere().await, WEBHOOK_SECRET);
    let jobs: Vec<u64> = (0..=MAX_REDELIVERIES_PER_PASS)
        .map(|_| unserved(&world))
        .collect();
    let missed = jobs.len();
    assert!(
        world
            .sim
            .wait_deliveries(Duration::from_secs(20), |d| failed_queued(d, &jobs)
                == missed)
            .await
    );
    world.point_webhooks_at(&berth.url);

    let first = delivery_catchup::pass(&berth.ctx, an_hour_ago(&berth))
        .await
        .unwrap();
    assert_eq!(
        (first.missing, first.requested, first.deferred),
        (missed, MAX_REDELIVERIES_PER_PASS, 1),
        "{first:?}"
    );
    assert!(first.complete && first.listed >= missed, "{first:?}");
    assert!(
        world
            .sim
            .wait_deliveries(Duration::from_secs(20), |d| redelivered_to_berth(d)
                == MAX_REDELIVERIES_PER_PASS)
            .await
    );
    // The next pass asks only for the one left over: berth has the others.
    let second = delivery_catchup::pass(&berth.ctx, an_hour_ago(&berth))
        .await
        .unwrap();
    assert_eq!((second.missing, second.requested), (1, 1), "{second:?}");
    assert!(
        world
            .sim
            .wait_deliveries(Duration::from_secs(10), |d| redelivered_to_berth(d)
                == missed)
            .await
    );
    let third = delivery_catchup::pass(&berth.ctx, an_hour_ago(&berth))
        .await
        .unwrap();
    assert_eq!((third.missing, third.requested), (0, 0), "{third:?}");
    assert_eq!(redeliveries_requested(&berth), missed as f64);
    // Each delivery was applied once: ignored (no pool serves it), recorded.
    for d in world.sim.deliveries().iter().filter(|d| d.redelivery) {
        assert!(berth.store().delivery_known(&d.guid).await.unwrap());
    }

    // A delivery berth answered and refused (a webhook secret that is not
    // the App's) is asked for once; its redelivery refused too, not again.
    point_webhooks(
        &world,
        &format!("{}/v1/webhooks/github", berth.url),
        "not-the-secret",
    );
    let refused = unserved(&world);
    assert!(
        world
            .sim
            .wait_deliveries(Duration::from_secs(10), |d| d
                .iter()
                .any(|d| d.job_id == refused && d.status == Some(401)))
            .await
    );
    let asked = delivery_catchup::pass(&berth.ctx, an_hour_ago(&berth))
        .await
        .unwrap();
    assert_eq!((asked.missing, asked.requested), (1, 1), "{asked:?}");
    assert!(
        world
            .sim
            .wait_deliveries(Duration::from_secs(10), |d| d
                .iter()
                .any(|d| d.job_id == refused && d.redelivery && d.status == Some(401)))
            .await
    );
    let not_again = delivery_catchup::pass(&berth.ctx, an_hour_ago(&berth))
        .await
        .unwrap();
    assert_eq!(
        (
            not_again.missing,
            not_again.refused_by_berth,
            not_again.requested
        ),
        (1, 1, 0),
        "{not_again:?}"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_berth_has_from_the_delegate_api_is_not_run_twice_by_a_redelivery() {
    let world = World::new().await;
    let mut config = world.config("");
    config.reconcile.delivery_catchup_interval = Duration::ZERO;
    let berth = Berth::start(&world, config).await;
    // GitHub cannot reach berth; the job comes in through the delegate API
    // instead (as from `berth proxy`).
    point_webhooks(&world, &nowhere().await, WEBHOOK_SECRET);
    let gh_job = world.queue(&["echo once"]);
    assert!(
        world
            .sim
            .wait_deliveries(Duration::from_secs(10), |d| failed_queued(d, &[gh_job])
                == 1)
            .await
    );
    let request = berth::intake::DelegateRequest {
        repository: "acme/widgets".into(),
        github_job_id: gh_job as i64,
        run_id: world.sim.job(gh_job).unwrap().run_id as i64,
        labels: vec!["self-hosted".into(), "linux".into()],
        workflow: None,
        job_name: None,
        pool: None,
        scale_set: None,
    };
    let (delegated, _) = berth::intake::accept_delegate(&berth.ctx, request)
        .await
        .unwrap();
    world.point_webhooks_at(&berth.url);
    let done = delivery_catchup::pass(&berth.ctx, an_hour_ago(&berth))
        .await
        .unwrap();
    assert!(done.requested >= 1, "{done:?}");
    let job = berth.wait_terminal(gh_job, Duration::from_secs(60)).await;
    assert_eq!(
        (job.id, job.state),
        (delegated.id, JobState::Completed),
        "{job:?}"
    );
    // The redelivered `queued` changed nothing: the job was berth's already.
    eventually(
        "the redelivery answered as a duplicate",
        Duration::from_secs(10),
        || async {
            berth
                .ctx
                .metrics
                .encode()
                .contains("berth_webhook_deliveries_total{outcome=\"duplicate\"} 1")
        },
    )
    .await;
    let jobs = berth
        .store()
        .jobs_in_states(&[
            JobState::Queued,
            JobState::Provisioning,
            JobState::Starting,
            JobState::Running,
        ])
        .await
        .unwrap();
    assert!(jobs.is_empty(), "no second job: {jobs:?}");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_github_leaves_the_component_failing_and_retrying_and_berth_ready() {
    use ghsim::{FaultKind, FaultRule};
    let world = World::new().await;
    // A missed delivery, and a delivery log GitHub cannot serve.
    point_webhooks(&world, &nowhere().await, WEBHOOK_SECRET);
    let gh_job = unserved(&world);
    assert!(
        world
            .sim
            .wait_deliveries(Duration::from_secs(10), |d| failed_queued(d, &[gh_job])
                == 1)
            .await
    );
    let mut broken = FaultRule::new(FaultKind::ServerError);
    broken.path_prefix = Some("/app/hook/deliveries".into());
    world.sim.add_fault(broken);
    let mut config = world.config("");
    config.reconcile.delivery_catchup_interval = Duration::from_secs(1);
    config.github.max_attempts = 2;
    let berth = Berth::start(&world, config).await;
    // Registered once `serve` has started its components.
    let component = |berth: &Berth| {
        berth
            .ctx
            .components
            .snapshot()
            .into_iter()
            .find(|c| c.name == "delivery_catchup")
    };
    eventually("two failed passes", Duration::from_secs(20), || async {
        component(&berth).is_some_and(|c| c.consecutive_failures >= 2)
    })
    .await;
    let failing = component(&berth).unwrap();
    assert_eq!(failing.last_result, Some("error"), "{failing:?}");
    assert!(
        failing
            .last_error
            .as_deref()
            .unwrap()
            .contains("delivery log"),
        "{failing:?}"
    );
    assert_eq!(failing.restarts, 0, "a failed pass is not a crash");
    let ready = berth
        .http()
        .get(format!("{}/readyz", berth.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "berth stays ready");
    // GitHub answers again: the next pass catches up on what was missed.
    world.sim.clear_faults();
    let guid = world
        .sim
        .deliveries()
        .into_iter()
        .find(|d| d.job_id == gh_job)
        .unwrap()
        .guid;
    eventually(
        "the missed delivery applied",
        Duration::from_secs(20),
        || async { berth.store().delivery_known(&guid).await.unwrap() },
    )
    .await;
    eventually("a successful pass", Duration::from_secs(10), || async {
        component(&berth).is_some_and(|c| c.last_result == Some("ok"))
    })
    .await;
    assert_eq!(component(&berth).unwrap().consecutive_failures, 0);
    berth.stop().await;
}
