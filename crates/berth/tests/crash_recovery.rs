//! `berth serve` as a real process, killed at chosen points of a job's
//! lifecycle (failpoints abort as abruptly as `kill -9`), then restarted:
//! every accepted job finishes, and after one reconcile pass no container or
//! runner registration is left behind.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::store::{JobState, Store};
use common::{World, eventually};

const LIMIT: Duration = Duration::from_secs(90);

struct Serve {
    child: Child,
}

impl Serve {
    fn start(world: &World, config: &PathBuf, failpoints: &str, run: u32) -> Serve {
        let log = std::fs::File::create(world.dir.path().join(format!("serve-{run}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(config)
            .env("BERTH_FAILPOINTS", failpoints)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Serve { child }
    }

    /// Waits for the process to end by itself (a failpoint aborted it).
    fn wait_abort(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(!status.success(), "berth exited normally: {status:?}");
                return;
            }
            assert!(started.elapsed() < limit, "the failpoint was not reached");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn setup() -> (World, PathBuf, Store) {
    let world = World::new().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let toml = world
        .config_toml(&listen, "")
        .replace("lease = 10", "lease = 5");
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
    let started = Instant::now();
    loop {
        if let Some(job) = store.job_get_by_github_id(gh_job as i64).await.unwrap()
            && job.state.is_terminal()
        {
            return job;
        }
        assert!(
            started.elapsed() < LIMIT,
            "job not finished: {:?}",
            store.job_get_by_github_id(gh_job as i64).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(
    store: &Store,
    gh_job: u64,
    what: &str,
    check: impl Fn(&berth::store::Job) -> bool,
) {
    let started = Instant::now();
    loop {
        if let Some(job) = store.job_get_by_github_id(gh_job as i64).await.unwrap()
            && check(&job)
        {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{what}: {:?}",
            store.job_get_by_github_id(gh_job as i64).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let (world, config, store) = setup().await;
    let mut first = Serve::start(&world, &config, failpoint, 1);
    // Let the process come up before GitHub delivers the job.
    eventually("berth listening", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(config_listen(&config)).is_ok()
    })
    .await;
    let gh_job = world.queue(&["echo survived"]);
    first.wait_abort(LIMIT);
    let _second = Serve::start(&world, &config, "", 2);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_start() {
    crash_at("after_start").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_running() {
    let (world, config, store) = setup().await;
    let mut first = Serve::start(&world, &config, "", 1);
    eventually("berth listening", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(config_listen(&config)).is_ok()
    })
    .await;
    let gh_job = world.queue(&["echo before", "sleep 3", "echo after"]);
    wait_for(&store, gh_job, "running", |j| j.state == JobState::Running).await;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let _second = Serve::start(&world, &config, "", 2);
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
    let first = Serve::start(&world, &config, "", 1);
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
    let _second = Serve::start(&world, &config, "", 2);
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
    let _serve = Serve::start(&world, &config, "", 1);
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
