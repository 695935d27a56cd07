//! `berth proxy`, the real binary, delegating over HTTP to an orchestrator:
//! killed with -9 in the middle of a stream of jobs and restarted; and
//! running while the orchestrator is down for 30 s. No job is lost, none
//! runs twice, and nothing (container, registration, runner) is left.

mod common;
mod scaleset_common;

use std::time::{Duration, Instant};

use berth::store::{ApiTokenScope, Store};
use common::{Berth, World, eventually};
use ghsim::SimConfig;
use scaleset_common::{
    LIMIT, Process, assert_nothing_left, assert_one_runner_per_job, get_text, proxy_toml, queue,
    sample, scale_set_toml, wait_completed,
};

/// The proxy holds the session (not some predecessor).
async fn wait_session(world: &World, owner_pid: u32) {
    let suffix = format!("-{owner_pid}");
    eventually(
        "the proxy's session is open",
        Duration::from_secs(60),
        || async {
            world
                .sim
                .scale_sets()
                .first()
                .and_then(|s| s.session.clone())
                .is_some_and(|s| s.owner_name.ends_with(&suffix))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_killed_mid_stream_and_restarted_loses_nothing() {
    // A killed listener's session lingers until the service expires it.
    let world = World::with_sim(SimConfig {
        session_idle_timeout: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await;
    let berth = Berth::start(
        &world,
        world.config(&scale_set_toml(&world, "listener = \"proxy\"")),
    )
    .await;
    let (token, _) =
        berth::api::auth::create_token(berth.store(), "proxy", ApiTokenScope::Delegate)
            .await
            .unwrap();
    let token_file = world.dir.path().join("delegate.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let metrics_port = common::free_port();
    let config = world.dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        proxy_toml(&world, metrics_port, &berth.url, &token_file),
    )
    .unwrap();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");

    let mut proxy = Process::start(&["proxy"], &config, world.dir.path().join("proxy-1.log"));
    wait_session(&world, proxy.child.id()).await;

    // A first wave, still running when the proxy dies.
    let mut ids: Vec<u64> = (0..3)
        .map(|n| queue(&world, &["sleep 3", &format!("echo first-{n}")]))
        .collect();
    eventually("a first-wave job runs", LIMIT, || async {
        ids.iter()
            .any(|id| world.sim.job(*id).unwrap().status == "in_progress")
    })
    .await;
    proxy.kill9();

    // A second wave while no proxy listens.
    ids.extend((0..3).map(|n| queue(&world, &[&format!("echo second-{n}")])));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut proxy = Process::start(&["proxy"], &config, world.dir.path().join("proxy-2.log"));
    wait_session(&world, proxy.child.id()).await;

    let ran = wait_completed(&world, &ids).await;
    for job in &ran {
        assert_eq!(job.conclusion.as_deref(), Some("success"), "{job:?}");
    }
    assert_nothing_left(&world, berth.store()).await;
    assert_one_runner_per_job(berth.store(), &ran).await;
    let text = get_text(&metrics_url).await;
    // The successor met its predecessor's session first.
    assert!(
        sample(
            &text,
            "berth_scaleset_session_events_total{scale_set=\"berth-linux\",outcome=\"conflict\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "berth_scaleset_delegations_total{scale_set=\"berth-linux\",outcome=\"accepted\"}"
        ) >= 1.0
    );
    // The proxy never minted a runner: the orchestrator did.
    assert_eq!(
        sample(
            &text,
            "berth_github_api_requests_total{endpoint=\"actions_generate_jitconfig\""
        ),
        0.0
    );

    // SIGTERM: the session is deleted and the proxy exits 0.
    assert_eq!(proxy.terminate(Duration::from_secs(10)), Some(0));
    assert!(world.sim.scale_sets()[0].session.is_none());
    let log = proxy.log_text();
    assert!(
        !log.contains(&token),
        "the delegate token is in the proxy's log"
    );
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("\"scale_set\":\"berth-linux\""), "{log}");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_arriving_while_the_orchestrator_is_down_for_30s_all_run() {
    let world = World::new().await;
    let listen = format!("127.0.0.1:{}", common::free_port());
    let serve_config = world.dir.path().join("berth.toml");
    let toml = world.config_toml(&listen, &scale_set_toml(&world, "listener = \"proxy\""));
    std::fs::write(&serve_config, toml).unwrap();
    let store_url = format!("sqlite://{}", world.dir.path().join("berth.db").display());
    let store = Store::connect(&store_url).await.unwrap();
    let (token, _) = berth::api::auth::create_token(&store, "proxy", ApiTokenScope::Delegate)
        .await
        .unwrap();
    let token_file = world.dir.path().join("delegate.token");
    std::fs::write(&token_file, &token).unwrap();
    let metrics_port = common::free_port();
    let proxy_config = world.dir.path().join("proxy.toml");
    std::fs::write(
        &proxy_config,
        proxy_toml(
            &world,
            metrics_port,
            &format!("http://{listen}"),
            &token_file,
        ),
    )
    .unwrap();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let health = format!("http://{listen}/healthz");

    let mut serve = Process::start(
        &["serve"],
        &serve_config,
        world.dir.path().join("serve-1.log"),
    );
    eventually(
        "the orchestrator is up",
        Duration::from_secs(30),
        || async { !get_text(&health).await.is_empty() },
    )
    .await;
    let mut proxy = Process::start(
        &["proxy"],
        &proxy_config,
        world.dir.path().join("proxy.log"),
    );
    wait_session(&world, proxy.child.id()).await;

    serve.kill9();
    let ids: Vec<u64> = (0..3)
        .map(|n| queue(&world, &[&format!("echo while-down-{n}")]))
        .collect();
    let down_since = Instant::now();
    let polls_before = world.sim.scale_sets()[0].session.clone().unwrap().polls;
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Nothing ran, and the listener kept polling and retrying.
    for id in &ids {
        assert_eq!(world.sim.job(*id).unwrap().status, "queued");
    }
    assert!(world.sim.scale_sets()[0].session.clone().unwrap().polls > polls_before);
    let text = get_text(&metrics_url).await;
    assert!(
        sample(
            &text,
            "berth_scaleset_delegations_total{scale_set=\"berth-linux\",outcome=\"retried\"}"
        ) >= 3.0,
        "{text}"
    );
    assert!(down_since.elapsed() >= Duration::from_secs(30));

    let _serve = Process::start(
        &["serve"],
        &serve_config,
        world.dir.path().join("serve-2.log"),
    );
    let ran = wait_completed(&world, &ids).await;
    for job in &ran {
        assert_eq!(job.conclusion.as_deref(), Some("success"), "{job:?}");
    }
    assert_nothing_left(&world, &store).await;
    assert_one_runner_per_job(&store, &ran).await;
    assert_eq!(
        sample(
            &get_text(&metrics_url).await,
            "berth_scaleset_delegations_total{scale_set=\"berth-linux\",outcome=\"accepted\"}"
        ),
        3.0
    );
    assert_eq!(proxy.terminate(Duration::from_secs(10)), Some(0));
    assert!(world.sim.scale_sets()[0].session.is_none());
}

#[test]
fn proxy_refuses_a_configuration_without_an_orchestrator() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "[github]\napp_id = 1\nprivate_key = \"k\"\n[[scale_set]]\nname = \"s\"\ngithub_config_url = \"https://github.com/enterprises/big\"\npool = \"linux\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["proxy", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`orchestrator.url`"), "{err}");
    assert!(
        err.contains("`scale_set[0].github_config_url`") && err.contains("enterprise"),
        "{err}"
    );
}
