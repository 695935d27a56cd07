//! A fleet of Docker hosts on this machine: extra engines, each reached
//! through its own berth socket proxy (tests/common/engines.rs).

mod common;

use std::time::Duration;

use berth::docker::{Controller, WorkerNetwork, WorkerSpec};
use common::engines::ExtraEngine;

/// The harness itself: two extra engines, each with the worker image built
/// into it, run a hardened worker through their own socket proxy; the main
/// engine never sees those containers; dropping an engine stops it and
/// removes its bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extra_engines_run_workers_through_their_own_socket_proxies() {
    let engines = [ExtraEngine::start().await, ExtraEngine::start().await];
    assert_ne!(engines[0].host, engines[1].host);
    let main = berth::docker::worker_image::connect(None).await.unwrap();
    for engine in &engines {
        let docker = berth::docker::worker_image::connect(Some(&engine.host))
            .await
            .unwrap();
        let image = berth::docker::worker_image::ensure_local_worker_image(&docker)
            .await
            .unwrap_or_else(|e| panic!("building the worker image: {e}\n{}", engine.log()));
        let proxy = berth_proxies::socket::Running::start(
            berth_proxies::socket::Policy::default(),
            &engine.host,
            "127.0.0.1:0",
        )
        .await
        .unwrap();
        let controller = Controller::connect(proxy.docker_host(), Duration::from_secs(30))
            .await
            .unwrap();
        controller.ensure_network("berth-fleet").await.unwrap();
        let mut spec = WorkerSpec::new(
            format!("berth-fleet-{}", uuid::Uuid::new_v4().simple()),
            image.id.clone(),
            WorkerNetwork::Bridge("berth-fleet".into()),
        );
        spec.labels.insert(
            berth::docker::controller::LABEL_JOB.into(),
            uuid::Uuid::now_v7().to_string(),
        );
        spec.memory_bytes = 64 << 20;
        let id = controller.create_worker(&spec).await.unwrap();
        // Not a JIT config: the runner stand-in refuses it and exits.
        controller
            .start_with_secret(&id, b"not-a-jit-config")
            .await
            .unwrap();
        let code = tokio::time::timeout(Duration::from_secs(30), controller.wait_exit(&id))
            .await
            .expect("the worker exits")
            .unwrap();
        assert_ne!(code, 0);
        assert!(
            main.inspect_container(&id, None).await.is_err(),
            "the main engine does not have the extra engine's container"
        );
        controller.remove(&id).await.unwrap();
        proxy.stop().await;
    }
    let bridges: Vec<String> = engines.iter().map(|e| e.bridge.clone()).collect();
    drop(engines);
    for bridge in bridges {
        let exists = std::process::Command::new("ip")
            .args(["link", "show", &bridge])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(!exists, "bridge {bridge} was removed");
    }
    let docker0 = std::process::Command::new("ip")
        .args(["link", "show", "docker0"])
        .status()
        .unwrap();
    assert!(docker0.success(), "the main engine keeps its docker0");
}
