//! berth through its own socket proxy (built-in least-privilege policy),
//! against the real Docker engine: a whole job end to end, the controller's
//! edge cases, and the `berth socket-proxy` command itself.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::docker::{Controller, DockerError};
use berth::store::JobState;
use common::{Berth, World, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JOB_LIMIT: Duration = Duration::from_secs(60);

/// The happy path of `serve_e2e`, with every Docker call going through the
/// proxy: the dispatcher's create and attach-with-stdin (the JIT config),
/// the watcher's event stream, the log follower, the reconcilers' list and
/// inspect, and the removal. Not one of berth's calls may be denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_runs_end_to_end_through_the_socket_proxy() {
    let world = World::new().await;
    let proxy = common::socket_proxy().await;
    let mut config = world.config("");
    config.docker.host = proxy.docker_host().to_owned();
    let berth = Berth::start(&world, config).await;

    let gh_job = world.queue(&["echo through-the-proxy"]);
    let job = berth.wait_terminal(gh_job, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(
        world.sim.job(gh_job).unwrap().conclusion.as_deref(),
        Some("success")
    );
    let sim_log = world.sim.job_log(gh_job).unwrap();
    assert!(sim_log.contains("through-the-proxy"), "{sim_log}");
    let logs = berth.store().job_logs_get(job.id).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&logs.content);
    assert!(text.contains(&format!("acquired job {gh_job}")), "{text}");
    eventually("container removed", Duration::from_secs(10), || async {
        world.containers().is_empty()
    })
    .await;
    berth.stop().await;

    let metrics = proxy.proxy().metrics().encode();
    assert!(
        !metrics.contains("decision=\"deny\""),
        "berth made a call its own proxy denies:\n{metrics}"
    );
    for rule in [
        "container_create",
        "container_attach",
        "container_start",
        "container_logs",
        "events",
    ] {
        assert!(
            metrics.contains(&format!("decision=\"allow\",rule=\"{rule}\"")),
            "no allowed {rule} in\n{metrics}"
        );
    }
    proxy.stop().await;
}

/// What the controller relies on beyond the happy path: creating its
/// network, "already gone" being a 404 (so removal stays idempotent), a
/// missing container being NotFound, and the image lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_edge_cases_through_the_proxy() {
    let proxy = common::socket_proxy().await;
    let docker = Controller::connect(proxy.docker_host(), Duration::from_secs(10))
        .await
        .expect("version negotiation through the proxy");
    docker.ping().await.unwrap();

    let name = format!("berth-proxy-net-{}", std::process::id());
    let id = docker
        .ensure_network(&name)
        .await
        .expect("create the network");
    assert_eq!(
        docker.ensure_network(&name).await.unwrap(),
        id,
        "found again"
    );
    let _ = Command::new("docker").args(["network", "rm", &id]).output();

    docker
        .remove("berth-no-such-container")
        .await
        .expect("removing a missing container succeeds");
    match docker.inspect("berth-no-such-container").await {
        Err(DockerError::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(
        docker.image_id("berth-no-such-image:latest").await.unwrap(),
        None
    );
    // A pull passes the proxy and reaches the engine, which cannot resolve
    // the registry here: its error, not the proxy's 403, comes back.
    let pulled = docker
        .pull_image("nosuch.invalid/berth-proxy-test:1", Duration::from_secs(20))
        .await
        .expect_err("no registry is reachable here");
    assert!(
        !pulled.to_string().contains("socket-proxy"),
        "the proxy denied a pull: {pulled}"
    );
    let metrics = proxy.proxy().metrics().encode();
    assert!(
        metrics
            .contains(r#"berth_socket_proxy_requests_total{decision="allow",rule="image_pull"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("decision=\"deny\""), "{metrics}");
    proxy.stop().await;
}

/// One HTTP/1.1 request over a unix socket; (status, body).
async fn unix_request(path: &Path, method: &str, target: &str) -> (u16, String) {
    let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let request = format!("{method} {target} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `berth socket-proxy` as operators run it: a unix socket, the built-in
/// policy, metrics on their own port, JSON logs of every decision, and a
/// clean stop on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_proxy_command() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["socket-proxy", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .args([
            "--docker",
            "unix:///var/run/docker.sock",
            "--metrics",
            &metrics_addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "no socket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The metrics listener is bound before the socket appears.

    let (status, body) = unix_request(&socket, "GET", "/v1.41/_ping").await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    let (status, body) = unix_request(&socket, "POST", "/v1.41/containers/x/update").await;
    assert_eq!(status, 403, "{body}");
    let message: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("denied by rule `no-rule`"),
        "{body}"
    );

    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"berth_socket_proxy_requests_total{decision="allow",rule="ping"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"berth_socket_proxy_requests_total{decision="deny",rule="no-rule"} 1"#),
        "{metrics}"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "not stopped 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket file is removed on exit");

    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let denied = lines
        .iter()
        .find(|l| l["decision"] == "deny")
        .unwrap_or_else(|| panic!("no deny line in {stderr}"));
    assert_eq!(denied["method"], "POST");
    assert_eq!(denied["path"], "/v1.41/containers/x/update");
    assert_eq!(denied["rule"], "no-rule");
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("no rule allows")
    );
    let allowed = lines
        .iter()
        .find(|l| l["decision"] == "allow")
        .unwrap_or_else(|| panic!("no allow line in {stderr}"));
    assert_eq!(allowed["rule"], "ping");
    assert_eq!(allowed["path"], "/v1.41/_ping");
}

/// A policy file that does not parse stops the command with a message
/// naming the problem.
#[test]
fn a_bad_policy_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[container_create]\nallow_privileged = true\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["socket-proxy", "--listen", "127.0.0.1:0", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_privileged"), "{stderr}");
}
