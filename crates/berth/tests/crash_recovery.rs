//! `berth serve` as a real process, killed at chosen points of a job's
//! lifecycle (failpoints abort as abruptly as `kill -9`), then restarted:
//! every accepted job finishes, and after one reconcile pass no container or
//! runner registration is left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::store::{JobState, Store};
use common::{ServeProcess, World, eventually, free_port, wait_for_job, wait_listening};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);

async fn setup() -> (World, PathBuf, Store) {
    setup_with("", 5).await
}

/// A world, a configuration file (its pool given `pool_extra`, claims the
/// lease `lease_secs`) with the simulator's webhooks pointed at it, and its
/// store.
async fn setup_with(pool_extra: &str, lease_secs: u32) -> (World, PathBuf, Store) {
    let world = World::new().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let toml = world
        .config_toml(&listen, pool_extra)
        .replace("lease = 10", &format!("lease = {lease_secs}"));
    let path = world.dir.path().join("berth.toml");
    std::fs::write(&path, toml).unwrap();
    world.point_webhooks_at(&format!("http://{listen}"));
    let store = Store::connect(&format!(
        "sqlite://{}",
        world.dir.path().join("berth.db").display()
    ))
    .await
    .unwrap();
    (world, path, store)
}

async fn wait_terminal(store: &Store, gh_job: u64) -> berth::store::Job {
    wait_for_job(store, gh_job, LIMIT, "finished", |j| j.state.is_terminal()).await
}

async fn wait_for(
    store: &Store,
    gh_job: u64,
    what: &str,
    check: impl Fn(&berth::store::Job) -> bool,
) {
    wait_for_job(store, gh_job, LIMIT, what, check).await;
}

async fn assert_nothing_left(world: &World) {
    // One reconcile pass (interval 2 s) after the orphan grace (5 s).
    eventually("no container left", Duration::from_secs(30), || async {
        world.containers().is_empty()
    })
    .await;
    eventually(
        "no runner registration left",
        Duration::from_secs(30),
        || async { world.berth_runners().is_empty() },
    )
    .await;
}

/// Crashes at `failpoint`, restarts, and checks the job still completes once.
async fn crash_at(failpoint: &str) {
    crash_at_with(failpoint, |toml| toml).await;
}

/// [`crash_at`], with the configuration file edited by `edit`.
async fn crash_at_with(failpoint: &str, edit: fn(String) -> String) {
    let (world, config, store) = setup().await;
    let toml = edit(std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, toml).unwrap();
    let mut first = ServeProcess::start_with(&world, &config, 1, failpoint);
    // Let the process come up before GitHub delivers the job.
    eventually("berth listening", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(config_listen(&config)).is_ok()
    })
    .await;
    let gh_job = world.queue(&["echo survived"]);
    first.wait_abort(LIMIT);
    let _second = ServeProcess::start(&world, &config, 2);
    let job = wait_terminal(&store, gh_job).await;
    assert_eq!(
        job.state,
        JobState::Completed,
        "after a crash at {failpoint}: {job:?}"
    );
    let on_github = world.sim.job(gh_job).unwrap();
    assert_eq!(on_github.conclusion.as_deref(), Some("success"));
    assert_nothing_left(&world).await;
}

fn config_listen(config: &PathBuf) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    value["server"]["listen"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_accept() {
    crash_at("after_accept").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_mint() {
    crash_at("after_mint").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_create() {
    crash_at("after_create").await;
}

/// The worker was started but never got its config: it runs, blocked
/// reading stdin, and would for ever. Running is not proof of a runner, so
/// it is not adopted: its registration is deleted and the job runs anew.
/// (The idle-runner reconciler would end it too, after `idle_timeout`: set
/// past this test's limit, so only the lease's handling can pass it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_start_and_config() {
    crash_at_with("before_config", |toml| {
        assert!(toml.contains("idle_timeout = 60"), "{toml}");
        toml.replace("idle_timeout = 60", "idle_timeout = 3600")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_start() {
    crash_at("after_start").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_running() {
    let (world, config, store) = setup().await;
    let mut first = ServeProcess::start(&world, &config, 1);
    eventually("berth listening", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(config_listen(&config)).is_ok()
    })
    .await;
    let gh_job = world.queue(&["echo before", "sleep 3", "echo after"]);
    wait_for(&store, gh_job, "running", |j| j.state == JobState::Running).await;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let _second = ServeProcess::start(&world, &config, 2);
    let job = wait_terminal(&store, gh_job).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(
        job.attempts, 1,
        "the running worker was adopted, not replaced"
    );
    let logs = store.job_logs_get(job.id).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&logs.content);
    assert_eq!(
        text.matches("acquired job").count(),
        1,
        "output kept once across the restart: {text}"
    );
    assert_nothing_left(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_running_jobs_running() {
    let (world, config, store) = setup().await;
    let first = ServeProcess::start(&world, &config, 1);
    eventually("berth listening", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(config_listen(&config)).is_ok()
    })
    .await;
    let gh_job = world.queue(&["sleep 4", "echo done"]);
    wait_for(&store, gh_job, "running", |j| j.state == JobState::Running).await;
    let mut first = first;
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "berth did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let job = store
        .job_get_by_github_id(gh_job as i64)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        job.state,
        JobState::Running,
        "running jobs are left running"
    );
    assert_eq!(world.containers().len(), 1, "the worker keeps running");
    let _second = ServeProcess::start(&world, &config, 2);
    let job = wait_terminal(&store, gh_job).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_nothing_left(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_and_no_secret_reaches_logs_responses_the_database_or_docker() {
    let (world, config, store) = setup().await;
    // Secrets come from the environment here, not the file.
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("webhook_secret") && !l.starts_with("private_key_path"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, toml).unwrap();
    let pem = world.sim.app_private_key_pem();
    let log = std::fs::File::create(world.dir.path().join("serve-1.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("BERTH_GITHUB__WEBHOOK_SECRET", common::WEBHOOK_SECRET)
        .env("BERTH_GITHUB__PRIVATE_KEY", &pem)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let url = format!("http://{}", config_listen(&config));
    eventually("berth listening", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(config_listen(&config)).is_ok()
    })
    .await;
    let token = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["token", "create", "--scope", "admin", "--config"])
        .arg(&config)
        .env("BERTH_GITHUB__WEBHOOK_SECRET", common::WEBHOOK_SECRET)
        .env("BERTH_GITHUB__PRIVATE_KEY", &pem)
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();

    let gh_job = world.queue(&["echo hello", "sleep 2"]);
    wait_for(&store, gh_job, "running", |j| j.state == JobState::Running).await;
    let running = store
        .job_get_by_github_id(gh_job as i64)
        .await
        .unwrap()
        .unwrap();
    let inspect = Command::new("docker")
        .args(["inspect", running.container_id.as_deref().unwrap()])
        .output()
        .unwrap();
    let mut seen = String::from_utf8_lossy(&inspect.stdout).to_string();
    let job = wait_terminal(&store, gh_job).await;
    assert_eq!(job.state, JobState::Completed);
    // Everything berth answers...
    let client = reqwest::Client::new();
    for path in [
        "/v1/jobs".to_string(),
        format!("/v1/jobs/{}", job.id),
        format!("/v1/jobs/{}/logs", job.id),
        "/metrics".to_string(),
        "/readyz".to_string(),
        "/".to_string(),
    ] {
        let r = client
            .get(format!("{url}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        seen.push_str(&r.text().await.unwrap());
    }
    let r = client
        .post(format!("{url}/v1/webhooks/github"))
        .body("{}")
        .send()
        .await
        .unwrap();
    seen.push_str(&r.text().await.unwrap());
    let _ = child.kill();
    let _ = child.wait();
    // ...everything it logged, and everything it stored.
    let text = std::fs::read_to_string(world.dir.path().join("serve-1.log")).unwrap();
    seen.push_str(&text);
    let mut stored = Vec::new();
    for file in ["berth.db", "berth.db-wal", "berth.db-shm"] {
        stored.extend(std::fs::read(world.dir.path().join(file)).unwrap_or_default());
    }

    let mut job_lines = 0;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v.get(key).is_some(), "no {key}: {line}");
        }
        if v.get("berth_job_id").is_some() {
            job_lines += 1;
            for key in ["repository", "workflow", "run_id", "job_id"] {
                assert!(
                    v.get(key).is_some(),
                    "job-scoped line without {key}: {line}"
                );
            }
        }
    }
    assert!(job_lines >= 3, "job-scoped lines: {job_lines}\n{text}");

    let pem_body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut secrets = world.sim.issued_secrets();
    assert!(
        secrets.iter().any(|s| s.len() > 200),
        "the simulator handed out a JIT config"
    );
    secrets.push(common::WEBHOOK_SECRET.to_string());
    secrets.push(pem_body[..64].to_string());
    secrets.push(token.clone());
    for secret in &secrets {
        // A 24-character piece is enough to call it a leak.
        let piece = &secret[..secret.len().min(24)];
        assert!(
            !seen.contains(piece),
            "a secret ({}…) reached a log, a response or docker inspect",
            &piece[..6]
        );
        assert!(
            !stored.windows(piece.len()).any(|w| w == piece.as_bytes()),
            "a secret ({}…) reached the database",
            &piece[..6]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_at_run_time() {
    let (world, config, _store) = setup().await;
    // Start quiet: warnings only.
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("level = \"berth=debug,info\"", "level = \"warn\"");
    std::fs::write(&config, toml).unwrap();
    let _serve = ServeProcess::start(&world, &config, 1);
    let url = format!("http://{}", config_listen(&config));
    eventually("berth listening", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(config_listen(&config)).is_ok()
    })
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["token", "create", "--scope", "admin", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let client = reqwest::Client::new();
    let log = || std::fs::read_to_string(world.dir.path().join("serve-1.log")).unwrap();
    let r = client
        .get(format!("{url}/v1/admin/log-level"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["level"],
        "warn"
    );
    assert!(!log().contains("\"level\":\"INFO\""), "quiet at first");

    let r = client
        .put(format!("{url}/v1/admin/log-level"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"level": "debug"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually("debug lines appear", Duration::from_secs(20), || async {
        log().contains("\"level\":\"DEBUG\"")
    })
    .await;
    let r = client
        .put(format!("{url}/v1/admin/log-level"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"level": "no[such"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

// ---- Supervision: a component that panics or keeps failing ----------------

/// An admin token for the berth of `config` (stored in its database).
fn admin_token(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["token", "create", "--scope", "admin", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn get_status(listen: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("http://{listen}/v1/status"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn component<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no component {name} in {status:#}"))
}

async fn readyz(listen: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{listen}/readyz"))
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn metric(listen: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// A dispatcher that panics once is restarted: the status counts the
/// restart, and jobs run afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_that_panics_is_restarted_and_jobs_still_run() {
    let (world, config, store) = setup().await;
    let listen = config_listen(&config);
    let token = admin_token(&config);
    let _serve = ServeProcess::start_with(&world, &config, 1, "dispatch_round=panic-once");
    wait_listening(&listen, Duration::from_secs(20)).await;
    eventually(
        "the dispatcher restarted",
        Duration::from_secs(20),
        || async {
            let s = get_status(&listen, &token).await;
            let d = component(&s, "dispatcher");
            d["restarts"] == 1 && d["up"] == true
        },
    )
    .await;
    let s = get_status(&listen, &token).await;
    let d = component(&s, "dispatcher");
    assert!(
        d["last_error"].as_str().unwrap_or("").contains("panicked") || d["last_result"] == "ok",
        "{d:#}"
    );
    assert_eq!(
        metric(
            &listen,
            "berth_component_restarts_total{component=\"dispatcher\"}"
        )
        .await,
        Some(1.0)
    );
    let gh_job = world.queue(&["echo after the restart"]);
    let job = wait_terminal(&store, gh_job).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    let log = std::fs::read_to_string(world.dir.path().join("serve-1.log")).unwrap();
    assert!(
        log.contains("a component stopped unexpectedly; restarting it")
            && log.contains("dispatch_round"),
        "the panic and its cause are logged: {log}"
    );
}

/// A dispatcher that panics every time stays down: `/readyz` answers 503
/// naming it, the metric says 0, `/healthz` (liveness) still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_that_keeps_panicking_makes_berth_unready() {
    let (world, config, _store) = setup().await;
    let listen = config_listen(&config);
    let token = admin_token(&config);
    let _serve = ServeProcess::start_with(&world, &config, 1, "dispatch_round=panic");
    wait_listening(&listen, Duration::from_secs(20)).await;
    eventually(
        "restarted at least twice",
        Duration::from_secs(20),
        || async {
            component(&get_status(&listen, &token).await, "dispatcher")["restarts"]
                .as_u64()
                .unwrap_or(0)
                >= 2
        },
    )
    .await;
    let (code, body) = readyz(&listen).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["components_down"], serde_json::json!(["dispatcher"]));
    let s = get_status(&listen, &token).await;
    assert_eq!(s["ready"], false);
    let d = component(&s, "dispatcher");
    assert_eq!(d["up"], false, "{d:#}");
    assert!(
        ["restarting", "recovering"].contains(&d["state"].as_str().unwrap()),
        "{d:#}"
    );
    assert!(
        d["last_error"].as_str().unwrap().contains("failpoint"),
        "{d:#}"
    );
    assert_eq!(
        metric(&listen, "berth_component_up{component=\"dispatcher\"}").await,
        Some(0.0)
    );
    assert_eq!(
        metric(&listen, "berth_component_up{component=\"host:default\"}").await,
        Some(1.0)
    );
    let health = reqwest::get(format!("http://{listen}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// A reconcile lane whose passes keep failing is reported: its status counts
/// the failures in a row, `/readyz` turns 503, `berth status` says so and
/// exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_lane_that_keeps_failing_makes_berth_unready() {
    let (world, config, _store) = setup().await;
    let listen = config_listen(&config);
    let token = admin_token(&config);
    let _serve = ServeProcess::start_with(&world, &config, 1, "reconcile_local=error");
    wait_listening(&listen, Duration::from_secs(20)).await;
    // Passes every 2 s (reconcile.interval); down after 3 failures in a row.
    eventually(
        "the local lane is down",
        Duration::from_secs(30),
        || async { readyz(&listen).await.0 == 503 },
    )
    .await;
    let s = get_status(&listen, &token).await;
    let lane = component(&s, "reconciler.local");
    assert_eq!(lane["state"], "failing", "{lane:#}");
    assert!(
        lane["consecutive_failures"].as_u64().unwrap() >= 3,
        "{lane:#}"
    );
    assert_eq!(lane["last_result"], "error");
    assert!(
        lane["last_error"]
            .as_str()
            .unwrap()
            .contains("reconcile_local")
    );
    assert!(lane["last_started_at"].is_string() && lane["last_duration_seconds"].is_number());
    assert_eq!(component(&s, "reconciler.github")["up"], true);
    assert_eq!(
        metric(
            &listen,
            "berth_component_up{component=\"reconciler.local\"}"
        )
        .await,
        Some(0.0)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["status", "--url", &format!("http://{listen}")])
        .env("BERTH_TOKEN", &token)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(
        table.contains("reconciler.local") && table.contains("failing"),
        "{table}"
    );
    assert!(table.contains("NOT READY"), "{table}");
}

// ---- Restart after kill -9: leases of the dead process -------------------

/// kill -9 while a burst of jobs is being handed off, with a two-minute
/// lease: the restarted process releases the dead one's leases at
/// once (SQLite has one process), so every job gets a runner within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_during_a_burst_every_job_gets_a_runner_within_seconds() {
    let (world, config, store) = setup_with("max_runners = 4", 120).await;
    let listen = config_listen(&config);
    // GitHub is slow to mint runners: the whole burst is accepted and
    // claimed (leases live), and then the process is killed mid hand-off.
    world.sim.add_fault(common::slow_mint(4_000, None));
    let first = ServeProcess::start(&world, &config, 1);
    wait_listening(&listen, Duration::from_secs(20)).await;
    let jobs: Vec<u64> = (0..4)
        .map(|i| world.queue(&[&format!("echo job {i}"), "sleep 1"]))
        .collect();
    for gh_job in &jobs {
        wait_for_job(&store, *gh_job, LIMIT, "claimed", |j| {
            j.state == JobState::Provisioning
        })
        .await;
    }
    first.kill_9();
    world.sim.clear_faults();
    let leased = store
        .jobs_in_states(&[JobState::Provisioning, JobState::Starting])
        .await
        .unwrap();
    assert_eq!(leased.len(), 4, "the crash left the burst mid hand-off");
    let restarted = Instant::now();
    let _second = ServeProcess::start(&world, &config, 2);
    for gh_job in &jobs {
        wait_for_job(
            &store,
            *gh_job,
            Duration::from_secs(60),
            "has a runner",
            |j| j.state == JobState::Running || j.state.is_terminal(),
        )
        .await;
    }
    let took = restarted.elapsed();
    // Typically 2-5 s; a loaded CI machine gets slack, far below the lease.
    assert!(
        took < Duration::from_secs(40),
        "every job had a runner {took:?} after the restart (the lease is 120 s)"
    );
    eprintln!("every job had a runner {took:?} after the restart");
    for gh_job in jobs {
        assert_eq!(
            wait_terminal(&store, gh_job).await.state,
            JobState::Completed
        );
    }
    assert_nothing_left(&world).await;
}
