//! The GitHub client against the simulator over real HTTP on loopback.

use std::time::{Duration, Instant};

use berth::config::{Scope, Secret};
use berth::github::{AppAuth, GithubClient, GithubError, RetryPolicy};
use berth::observability::Metrics;
use ghsim::{FaultKind, FaultRule, JobSpec, SimConfig, SimHandle, Simulator};

fn org() -> Scope {
    Scope::Org("acme".into())
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        max_rate_limit_wait: Duration::from_secs(5),
    }
}

async fn client(sim: &SimHandle) -> (GithubClient, Metrics) {
    let metrics = Metrics::new();
    let auth = AppAuth::new(
        sim.app_id().to_string(),
        &Secret::new(sim.app_private_key_pem()),
    )
    .unwrap();
    let client = GithubClient::new(
        &sim.api_url(),
        auth,
        Duration::from_secs(5),
        fast_retries(),
        metrics.clone(),
    )
    .unwrap();
    (client, metrics)
}

fn counted(metrics: &Metrics, endpoint: &str, status: &str) -> u64 {
    let needle =
        format!("berth_github_api_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&needle)
                .map(|v| v.trim().parse::<u64>().unwrap())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn installation_token_is_cached_and_jit_runners_round_trip() {
    let sim = Simulator::start_local(SimConfig::default()).await.unwrap();
    let (gh, metrics) = client(&sim).await;

    let labels = vec!["self-hosted".to_string(), "linux".to_string()];
    let jit = gh
        .generate_jitconfig(&org(), "berth-test-1", 1, &labels, "_work")
        .await
        .unwrap();
    assert_eq!(jit.runner_name, "berth-test-1");
    assert!(!jit.encoded.expose().is_empty());
    // the secret never shows in Debug output
    assert!(!format!("{jit:?}").contains(jit.encoded.expose()));

    // a second call reuses the installation and its token
    gh.generate_jitconfig(&org(), "berth-test-2", 1, &labels, "_work")
        .await
        .unwrap();
    assert_eq!(
        counted(&metrics, "create_installation_access_token", "201"),
        1
    );
    assert_eq!(counted(&metrics, "get_org_installation", "200"), 1);
    assert_eq!(counted(&metrics, "generate_jitconfig", "201"), 2);

    let runners = gh.list_runners(&org()).await.unwrap();
    let names: Vec<_> = runners.iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.contains(&"berth-test-1") && names.contains(&"berth-test-2"),
        "{names:?}"
    );

    // a name clash (a retry after a lost answer) replaces the stale registration
    let again = gh
        .generate_jitconfig(&org(), "berth-test-1", 1, &labels, "_work")
        .await
        .unwrap();
    assert_ne!(again.runner_id, jit.runner_id);
    assert_eq!(counted(&metrics, "generate_jitconfig", "409"), 1);
    let same_name = gh
        .list_runners(&org())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.name == "berth-test-1")
        .count();
    assert_eq!(same_name, 1);

    gh.delete_runner(&org(), again.runner_id).await.unwrap();
    // deleting twice is not an error
    gh.delete_runner(&org(), again.runner_id).await.unwrap();
    assert!(
        gh.find_runner(&org(), "berth-test-1")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn job_lookup() {
    let sim = Simulator::start_local(SimConfig::default()).await.unwrap();
    let (gh, _) = client(&sim).await;
    let queued = sim
        .queue_job(JobSpec {
            repository: "acme/widgets".into(),
            labels: vec!["self-hosted".into(), "linux".into()],
            steps: vec!["echo hi".into()],
            ..JobSpec::default()
        })
        .unwrap();
    let job = gh
        .get_job("acme/widgets", queued.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, "queued");
    assert_eq!(job.run_id, queued.run_id);
    assert!(
        gh.get_job("acme/widgets", 999_999_999)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn retries_5xx_and_honours_rate_limits() {
    let sim = Simulator::start_local(SimConfig::default()).await.unwrap();
    let (gh, metrics) = client(&sim).await;
    // 30% of requests fail with 502, and some are rate limited with Retry-After: 1
    let mut err = FaultRule::new(FaultKind::ServerError);
    err.fraction = 0.3;
    err.status = Some(502);
    sim.add_fault(err);
    for i in 0..15 {
        gh.generate_jitconfig(
            &org(),
            &format!("berth-flaky-{i}"),
            1,
            &["linux".into()],
            "_work",
        )
        .await
        .unwrap();
    }
    assert!(
        counted(&metrics, "generate_jitconfig", "502")
            + counted(&metrics, "get_org_installation", "502")
            + counted(&metrics, "create_installation_access_token", "502")
            > 0
    );
    sim.clear_faults();

    let mut limited = FaultRule::new(FaultKind::TooManyRequests);
    limited.count = Some(1);
    limited.retry_after_secs = Some(1);
    limited.path_prefix = Some("/orgs/acme/actions/runners".into());
    sim.add_fault(limited);
    let started = Instant::now();
    gh.list_runners(&org()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After was not honoured"
    );
    assert_eq!(counted(&metrics, "list_runners", "429"), 1);

    let mut secondary = FaultRule::new(FaultKind::SecondaryRateLimit);
    secondary.count = Some(1);
    secondary.retry_after_secs = Some(1);
    secondary.path_prefix = Some("/orgs/acme/actions/runners".into());
    sim.add_fault(secondary);
    let started = Instant::now();
    gh.list_runners(&org()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(counted(&metrics, "list_runners", "403"), 1);
}

#[tokio::test]
async fn a_wrong_app_key_is_refused_without_leaking_it() {
    let sim = Simulator::start_local(SimConfig::default()).await.unwrap();
    // another simulator's key is a valid RSA key that is not this App's
    let other = Simulator::start_local(SimConfig {
        app_key_pem: None,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let pem = other.app_private_key_pem();
    let wrong = if pem == sim.app_private_key_pem() {
        // the simulator caches one generated key per process; make a distinct one
        generate_pem()
    } else {
        pem
    };
    let auth = AppAuth::new(sim.app_id().to_string(), &Secret::new(wrong.clone())).unwrap();
    let gh = GithubClient::new(
        &sim.api_url(),
        auth,
        Duration::from_secs(5),
        fast_retries(),
        Metrics::new(),
    )
    .unwrap();
    let err = gh
        .generate_jitconfig(&org(), "berth-x", 1, &["linux".into()], "_work")
        .await
        .unwrap_err();
    match &err {
        GithubError::Http { status: 401, .. } => {}
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(!err.to_string().contains("PRIVATE KEY"));
    assert!(AppAuth::new("1", &Secret::new("not a key")).is_err());
}

fn generate_pem() -> String {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}
