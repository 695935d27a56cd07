//! The Actions-service client against the simulator's scale-set service over
//! real HTTP: the token chain and its refresh, scale sets, sessions (409),
//! the long poll (200/202/401), acks, the acquire flow, scale-set JIT
//! runners (409 on a retried name) and runner removal (refused while busy).

use std::time::{Duration, Instant};

use berth::config::Secret;
use berth::github::{AppAuth, GithubClient, RetryPolicy};
use berth::observability::Metrics;
use berth::scaleset::ScaleSetError;
use berth::scaleset::client::ActionsClient;
use berth::scaleset::messages::JobMessageKind;
use ghsim::{JobSpec, ScaleSetFlow, SimConfig, SimHandle, Simulator};

fn fast(sim: SimConfig) -> SimConfig {
    SimConfig {
        poll_timeout: Duration::from_millis(300),
        ..sim
    }
}

fn client(sim: &SimHandle, config_path: &str) -> (ActionsClient, Metrics) {
    let metrics = Metrics::new();
    let app = AppAuth::new(
        sim.app_id().to_string(),
        &Secret::new(sim.app_private_key_pem()),
    )
    .unwrap();
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        max_rate_limit_wait: Duration::from_secs(5),
    };
    let github = GithubClient::new(
        &sim.api_url(),
        app,
        Duration::from_secs(5),
        retry,
        metrics.clone(),
    )
    .unwrap();
    let client = ActionsClient::new(
        github,
        &sim.api_url(),
        &sim.github_url(config_path),
        Duration::from_secs(5),
        metrics.clone(),
    )
    .unwrap();
    (client, metrics)
}

fn counted(metrics: &Metrics, endpoint: &str) -> u64 {
    let prefix = format!("berth_github_api_requests_total{{endpoint=\"{endpoint}\",");
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn job(labels: &[&str]) -> JobSpec {
    JobSpec::new("acme/widgets", labels, &["echo hi"])
}

#[tokio::test]
async fn scale_sets_sessions_and_the_message_queue() {
    let sim = Simulator::start_local(fast(SimConfig {
        queue_token_lifetime: Duration::from_secs(2),
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    let (c, metrics) = client(&sim, "acme");
    let labels = vec!["berth-test".to_string()];

    // Get-or-create is idempotent; changed labels are brought in line.
    let set = c
        .ensure_scale_set("berth-test", "Default", &labels)
        .await
        .unwrap();
    let again = c
        .ensure_scale_set("berth-test", "default", &labels)
        .await
        .unwrap();
    assert_eq!(set.id, again.id);
    assert_eq!(sim.scale_sets().len(), 1);
    let relabelled = c
        .ensure_scale_set(
            "berth-test",
            "Default",
            &["berth-test".into(), "gpu".into()],
        )
        .await
        .unwrap();
    assert_eq!(relabelled.id, set.id);
    assert_eq!(sim.scale_sets()[0].labels, ["berth-test", "gpu"]);
    c.ensure_scale_set("berth-test", "Default", &labels)
        .await
        .unwrap();
    assert!(matches!(
        c.runner_group_id("no-such-group").await,
        Err(ScaleSetError::Config(_))
    ));

    // One session at a time: the second is a conflict.
    let mut session = c.create_session(set.id, "listener-a").await.unwrap();
    assert!(session.statistics.is_some());
    match c.create_session(set.id, "listener-b").await {
        Err(ScaleSetError::SessionConflict(m)) => assert!(m.contains("listener-a"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Nothing yet: 202.
    assert_eq!(c.get_message(&session, 0, 5).await.unwrap(), None);
    assert_eq!(
        sim.scale_sets()[0]
            .session
            .as_ref()
            .unwrap()
            .last_max_capacity,
        Some(5)
    );

    // A job for the scale set arrives as JobAssigned, with statistics.
    let queued = sim.queue_job(job(&["berth-test"])).unwrap();
    let message = loop {
        if let Some(m) = c.get_message(&session, 0, 5).await.unwrap() {
            break m;
        }
    };
    assert_eq!(message.statistics.unwrap().total_assigned_jobs, 1);
    let assigned = &message.jobs[0];
    assert_eq!(assigned.kind, JobMessageKind::Assigned);
    assert_eq!(assigned.runner_request_id as u64, queued.runner_request_id);
    assert_eq!(assigned.job_id, queued.id.to_string());
    assert_eq!(assigned.repository().as_deref(), Some("acme/widgets"));
    // Unacked, it comes again to a poll from before it; acked, it is gone.
    let redelivered = c.get_message(&session, 0, 5).await.unwrap().unwrap();
    assert_eq!(redelivered.message_id, message.message_id);
    c.delete_message(&session, message.message_id)
        .await
        .unwrap();
    assert!(sim.scale_sets()[0].unacked_message_ids.is_empty());

    // The queue token expires: 401, then a refresh gives a working one.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(matches!(
        c.get_message(&session, message.message_id, 5).await,
        Err(ScaleSetError::QueueTokenExpired)
    ));
    session = c
        .refresh_session(set.id, &session.session_id)
        .await
        .unwrap();
    assert_eq!(
        c.get_message(&session, message.message_id, 5)
            .await
            .unwrap(),
        None
    );

    // Deleted, the session is gone for good; a new one can be opened.
    c.delete_session(set.id, &session.session_id).await.unwrap();
    c.delete_session(set.id, &session.session_id).await.unwrap();
    assert!(matches!(
        c.refresh_session(set.id, &session.session_id).await,
        Err(ScaleSetError::SessionGone(_))
    ));
    let fresh = c.create_session(set.id, "listener-b").await.unwrap();
    // The queue belongs to the scale set: the statistics still count the job.
    assert_eq!(fresh.statistics.unwrap().total_assigned_jobs, 1);

    // Every call was counted; the admin token was fetched once.
    assert_eq!(counted(&metrics, "actions_runner_registration"), 1);
    assert!(counted(&metrics, "actions_get_message") >= 4);
    assert!(counted(&metrics, "actions_create_session") >= 3);
}

#[tokio::test]
async fn older_ghes_offers_jobs_that_must_be_acquired() {
    let sim = Simulator::start_local(fast(SimConfig {
        scale_set_flow: ScaleSetFlow::Acquire,
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    let (c, _) = client(&sim, "acme");
    let set = c
        .ensure_scale_set("old-ghes", "Default", &["old-ghes".into()])
        .await
        .unwrap();
    let session = c.create_session(set.id, "l").await.unwrap();
    let queued = sim.queue_job(job(&["old-ghes"])).unwrap();
    let mut last = 0;
    let mut next = async || loop {
        if let Some(m) = c.get_message(&session, last, 2).await.unwrap() {
            last = m.message_id;
            c.delete_message(&session, m.message_id).await.unwrap();
            return m;
        }
    };
    let offered = next().await;
    assert_eq!(offered.jobs[0].kind, JobMessageKind::Available);
    assert_eq!(offered.statistics.unwrap().total_available_jobs, 1);
    let acquired = c
        .acquire_jobs(
            set.id,
            &session,
            &[offered.jobs[0].runner_request_id, 999_999],
        )
        .await
        .unwrap();
    assert_eq!(acquired, [queued.runner_request_id as i64]);
    let assigned = next().await;
    assert_eq!(assigned.jobs[0].kind, JobMessageKind::Assigned);
    assert_eq!(assigned.statistics.unwrap().total_assigned_jobs, 1);
}

#[tokio::test]
async fn jit_runners_are_minted_once_per_name_and_not_removed_while_busy() {
    let sim = Simulator::start_local(fast(SimConfig::default()))
        .await
        .unwrap();
    let (c, _) = client(&sim, "acme");
    let set = c
        .ensure_scale_set("jit-set", "Default", &["jit-set".into()])
        .await
        .unwrap();
    let first = c
        .generate_jitconfig(set.id, "berth-jit-1", "_work")
        .await
        .unwrap();
    // A retry after a lost answer: the name is taken (409), the stale
    // registration is replaced, and one runner of that name remains.
    let second = c
        .generate_jitconfig(set.id, "berth-jit-1", "_work")
        .await
        .unwrap();
    assert_ne!(first.runner_id, second.runner_id);
    let named: Vec<_> = sim
        .runners()
        .into_iter()
        .filter(|r| r.name == "berth-jit-1")
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].scale_set_id, Some(set.id));
    assert_eq!(
        c.list_runners(set.id)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [second.runner_id]
    );
    assert!(!format!("{second:?}").contains(second.encoded.expose()));

    // The runner takes a job that sleeps; while it runs, removal is refused.
    let queued = sim
        .queue_job(JobSpec::new("acme/widgets", &["jit-set"], &["sleep 3"]))
        .unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let root = tempfile::tempdir().unwrap();
    let encoded = second.encoded.expose().to_string();
    let runner = tokio::spawn(async move {
        ghsim::runner::run(
            &encoded,
            ghsim::runner::Options {
                root: root.path().to_path_buf(),
                stop,
            },
        )
        .await
    });
    let taken = sim
        .wait_job(queued.id, Duration::from_secs(20), |j| {
            j.status == "in_progress"
        })
        .await
        .unwrap();
    assert_eq!(taken.status, "in_progress", "the runner takes the job");
    assert!(matches!(
        c.remove_runner(second.runner_id).await,
        Err(ScaleSetError::RunnerBusy(id)) if id == second.runner_id
    ));
    let outcome = runner.await.unwrap().expect("the job ran");
    assert_eq!(outcome.conclusion, "succeeded");
    // GitHub removed the ephemeral runner; removing it again is fine.
    c.remove_runner(second.runner_id).await.unwrap();
    assert_eq!(
        c.get_runner_by_name("berth-jit-1")
            .await
            .unwrap()
            .map(|r| r.id),
        None
    );
}

#[tokio::test]
async fn the_admin_token_is_renewed_a_minute_before_it_expires() {
    // Valid for 62 s: inside the 60 s margin after 2 s.
    let sim = Simulator::start_local(fast(SimConfig {
        admin_token_lifetime: Duration::from_secs(62),
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    let (c, metrics) = client(&sim, "acme/widgets");
    c.ensure_scale_set("repo-set", "Default", &["repo-set".into()])
        .await
        .unwrap();
    c.ensure_scale_set("repo-set", "Default", &["repo-set".into()])
        .await
        .unwrap();
    assert_eq!(counted(&metrics, "actions_runner_registration"), 1);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.ensure_scale_set("repo-set", "Default", &["repo-set".into()])
        .await
        .unwrap();
    assert_eq!(counted(&metrics, "actions_runner_registration"), 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    // A repository scale set is scoped to the repository.
    assert_eq!(sim.scale_sets()[0].scope, "repo:acme/widgets");
}
