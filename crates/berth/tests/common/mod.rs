//! Test harness: a GitHub simulator reachable from containers, the local
//! worker image, and `berth serve` either in-process or as a real process.
#![allow(dead_code)]

pub mod engines;
pub mod faults;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::config::{Config, Role};
use berth::context::Context;
use berth::store::{ApiTokenScope, Job, JobState, Store};
use ghsim::{JobSpec, SimConfig, SimHandle, Simulator, WebhookTarget};
use tokio_util::sync::CancellationToken;

pub const WEBHOOK_SECRET: &str = "test-webhook-secret-5f2a";
pub const LABELS: [&str; 2] = ["self-hosted", "linux"];

/// The simulator, the worker image and a scratch folder for one test.
pub struct World {
    pub sim: SimHandle,
    pub image_id: String,
    pub dir: tempfile::TempDir,
    /// `berth.instance` of this test's berth: its containers, and only them.
    pub instance: String,
    /// berth's socket proxy, in front of the local engine: every berth of
    /// these tests reaches Docker only through it, with the built-in
    /// least-privilege policy.
    pub proxy: berth_proxies::socket::Running,
    key_path: PathBuf,
}

impl World {
    pub async fn new() -> World {
        Self::with_sim(SimConfig::default()).await
    }

    /// The simulator listens on all addresses so that workers reach it
    /// through `host.docker.internal` (the host's docker0 address).
    pub async fn with_sim(sim_config: SimConfig) -> World {
        Self::with_sim_at(sim_config, "0.0.0.0", "host.docker.internal").await
    }

    /// The simulator listening on `bind` (an address, port chosen), telling
    /// runners to reach it as `public_host` (e.g. loopback only, reached by
    /// workers through the egress proxy as `localhost`).
    /// A world whose worker image carries the container hook (`berth
    /// hook`, for pools with `container_jobs`).
    pub async fn with_container_hooks() -> World {
        let mut world = Self::new().await;
        let docker = berth::docker::worker_image::connect(None).await.unwrap();
        let image = berth::docker::worker_image::ensure_local_worker_image_with_hook(&docker)
            .await
            .unwrap();
        world.image_id = image.id;
        world
    }

    pub async fn with_sim_at(mut sim_config: SimConfig, bind: &str, public_host: &str) -> World {
        let listener = tokio::net::TcpListener::bind((bind, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        sim_config.public_url = Some(format!("http://{public_host}:{port}"));
        let sim = Simulator::start(sim_config, listener).unwrap();
        let docker = berth::docker::worker_image::connect(None).await.unwrap();
        let image = berth::docker::worker_image::ensure_local_worker_image(&docker)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("app.pem");
        std::fs::write(&key_path, sim.app_private_key_pem()).unwrap();
        let instance = format!("test-{}", uuid::Uuid::new_v4().simple());
        let proxy = socket_proxy().await;
        World {
            sim,
            image_id: image.id,
            dir,
            instance,
            proxy,
            key_path,
        }
    }

    /// A configuration TOML for berth against this world. `extra` is
    /// appended inside the `[[pool]]` table.
    pub fn config_toml(&self, listen: &str, pool_extra: &str) -> String {
        self.config_toml_with(listen, "", pool_extra)
    }

    /// [`config_toml`](Self::config_toml) with `server_extra` inside `[server]`.
    pub fn config_toml_with(&self, listen: &str, server_extra: &str, pool_extra: &str) -> String {
        format!(
            r#"
[server]
listen = "{listen}"
{server_extra}
[store]
url = "sqlite://{db}"
[github]
api_url = "{api}"
app_id = {app_id}
private_key_path = "{key}"
webhook_secret = "{secret}"
request_timeout = 5
[docker]
host = "{docker}"
network = "berth-test"
instance = "{instance}"
extra_hosts = ["host.docker.internal:host-gateway"]
[dispatch]
lease = 10
[reconcile]
interval = 2
orphan_grace = 5
queued_check_after = 30
[logs]
level = "berth=debug,info"
[[pool]]
name = "linux"
scope = "org:acme"
labels = ["self-hosted", "linux"]
image = "{image}"
cpus = 1
memory = "256m"
idle_timeout = 60
{pool_extra}
"#,
            db = self.dir.path().join("berth.db").display(),
            api = self.sim.api_url(),
            app_id = self.sim.app_id(),
            key = self.key_path.display(),
            secret = WEBHOOK_SECRET,
            instance = self.instance,
            image = self.image_id,
            docker = self.proxy.docker_host(),
        )
    }

    pub fn config(&self, pool_extra: &str) -> Config {
        let path = self.dir.path().join("berth.toml");
        std::fs::write(&path, self.config_toml("127.0.0.1:0", pool_extra)).unwrap();
        Config::load(Some(&path), Vec::<(String, String)>::new(), Role::Serve)
            .unwrap()
            .config
    }

    pub fn point_webhooks_at(&self, berth_url: &str) {
        self.sim.set_webhook(Some(WebhookTarget {
            url: format!("{berth_url}/v1/webhooks/github"),
            secret: Some(WEBHOOK_SECRET.into()),
        }));
    }

    pub fn queue(&self, steps: &[&str]) -> u64 {
        self.queue_spec(JobSpec {
            repository: "acme/widgets".into(),
            labels: LABELS.iter().map(|s| s.to_string()).collect(),
            steps: steps.iter().map(|s| (*s).into()).collect(),
            ..JobSpec::default()
        })
    }

    pub fn queue_spec(&self, spec: JobSpec) -> u64 {
        self.sim.queue_job(spec).unwrap().id
    }

    /// Containers of this test's berth, by `docker ps`.
    pub fn containers(&self) -> Vec<String> {
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--no-trunc", "--filter"])
            .arg(format!("label=berth.instance={}", self.instance))
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `berth-` runners the simulator still has registered.
    pub fn berth_runners(&self) -> Vec<String> {
        self.sim
            .runners()
            .into_iter()
            .filter(|r| r.name.starts_with("berth-"))
            .map(|r| r.name)
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let ids = self.containers();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

/// `berth serve` running in this process.
pub struct Berth {
    pub ctx: Arc<Context>,
    pub url: String,
    pub admin_token: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Berth {
    pub async fn start(world: &World, config: Config) -> Berth {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ctx = berth::service::build(config, None).await.unwrap();
        let (admin_token, _) =
            berth::api::auth::create_token(&ctx.store, "test", ApiTokenScope::Admin)
                .await
                .unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(berth::service::run(ctx.clone(), listener, shutdown.clone()));
        world.point_webhooks_at(&url);
        Berth {
            ctx,
            url,
            admin_token,
            shutdown,
            task,
        }
    }

    /// [`start`](Self::start) with `pool_extra` in the pool, listening on
    /// every address so that worker containers reach the API (container
    /// jobs: `server.worker_url` is `http://host.docker.internal:<port>`);
    /// `adjust` may change the configuration first.
    pub async fn start_reachable(
        world: &World,
        pool_extra: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> Berth {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let path = world.dir.path().join("berth.toml");
        let server = format!("worker_url = \"http://host.docker.internal:{port}\"");
        std::fs::write(
            &path,
            world.config_toml_with("127.0.0.1:0", &server, pool_extra),
        )
        .unwrap();
        let mut config = Config::load(Some(&path), Vec::<(String, String)>::new(), Role::Serve)
            .unwrap()
            .config;
        adjust(&mut config);
        let url = format!("http://127.0.0.1:{port}");
        let ctx = berth::service::build(config, None).await.unwrap();
        let (admin_token, _) =
            berth::api::auth::create_token(&ctx.store, "test", ApiTokenScope::Admin)
                .await
                .unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(berth::service::run(ctx.clone(), listener, shutdown.clone()));
        world.point_webhooks_at(&url);
        Berth {
            ctx,
            url,
            admin_token,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(12), self.task).await;
    }

    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    pub async fn job(&self, github_job_id: u64) -> Option<Job> {
        self.store()
            .job_get_by_github_id(github_job_id as i64)
            .await
            .unwrap()
    }

    /// Waits until the job with this GitHub id is in a terminal state.
    pub async fn wait_terminal(&self, github_job_id: u64, limit: Duration) -> Job {
        let started = Instant::now();
        loop {
            if let Some(job) = self.job(github_job_id).await
                && job.state.is_terminal()
            {
                return job;
            }
            assert!(
                started.elapsed() < limit,
                "job {github_job_id} not finished after {limit:?}: {:?}",
                self.job(github_job_id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_state(&self, github_job_id: u64, state: JobState, limit: Duration) -> Job {
        let started = Instant::now();
        loop {
            if let Some(job) = self.job(github_job_id).await
                && job.state == state
            {
                return job;
            }
            assert!(
                started.elapsed() < limit,
                "job {github_job_id} not {state} after {limit:?}: {:?}",
                self.job(github_job_id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// The Prometheus exposition of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /v1/jobs/{id}` as the admin sees it.
    pub async fn job_json(&self, id: uuid::Uuid) -> serde_json::Value {
        self.http()
            .get(format!("{}/v1/jobs/{id}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Polls `check` until it returns true.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "{what}: not true after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// berth's socket proxy in this process, in front of the local engine, with
/// the built-in least-privilege policy. Point a config at it with
/// `config.docker.host = proxy.docker_host().to_owned()`.
pub async fn socket_proxy() -> berth_proxies::socket::Running {
    let engine = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| h.starts_with("unix://"))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
    berth_proxies::socket::Running::start(
        berth_proxies::socket::Policy::default(),
        &engine,
        "127.0.0.1:0",
    )
    .await
    .expect("start the socket proxy")
}

/// `berth serve` as a real process (the binary under test), for tests that
/// kill it, crash it at a failpoint or read its exit status. Its stderr (the
/// JSON log) goes to `serve-<run>.log` in the world's folder.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl ServeProcess {
    pub fn start(world: &World, config: &std::path::Path, run: u32) -> ServeProcess {
        Self::start_with(world, config, run, "")
    }

    /// With `BERTH_FAILPOINTS` (see berth::failpoint).
    pub fn start_with(
        world: &World,
        config: &std::path::Path,
        run: u32,
        failpoints: &str,
    ) -> ServeProcess {
        let log = world.dir.path().join(format!("serve-{run}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(config)
            .env("BERTH_FAILPOINTS", failpoints)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        ServeProcess { child, log }
    }

    /// Waits for the process to end by itself (a failpoint aborted it).
    pub fn wait_abort(&mut self, limit: Duration) {
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

    /// SIGKILL, and reap it.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "berth serve exited with {status:?}");
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `berth.toml` for `world` listening on `listen`, pointing the
/// simulator's webhooks at it; returns its path.
pub fn write_config(world: &World, listen: &str, pool_extra: &str) -> PathBuf {
    let path = world.dir.path().join("berth.toml");
    std::fs::write(&path, world.config_toml(listen, pool_extra)).unwrap();
    path
}

/// Waits until `address` accepts TCP connections.
pub async fn wait_listening(address: &str, limit: Duration) {
    eventually("berth listening", limit, || async {
        std::net::TcpStream::connect(address).is_ok()
    })
    .await;
}

/// Waits until the job with GitHub id `gh_job` satisfies `check`.
pub async fn wait_for_job(
    store: &Store,
    gh_job: u64,
    limit: Duration,
    what: &str,
    check: impl Fn(&Job) -> bool,
) -> Job {
    let started = Instant::now();
    loop {
        if let Some(job) = store.job_get_by_github_id(gh_job as i64).await.unwrap()
            && check(&job)
        {
            return job;
        }
        assert!(
            started.elapsed() < limit,
            "job {gh_job}: {what} not true after {limit:?}: {:?}",
            store.job_get_by_github_id(gh_job as i64).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The simulator answers JIT-runner requests for the test org only after
/// `delay_ms` (the next `count` of them, or all).
pub fn slow_mint(delay_ms: u64, count: Option<u32>) -> ghsim::FaultRule {
    let mut slow = ghsim::FaultRule::new(ghsim::FaultKind::Slow);
    slow.delay_ms = Some(delay_ms);
    slow.path_prefix = Some("/orgs/acme/actions/runners/generate-jitconfig".into());
    slow.count = count;
    slow
}

/// A database schema of its own on the test PostgreSQL server; its URL.
pub async fn postgres_schema() -> String {
    postgres_schema_named("berth_e2e").await.url
}

/// A schema of its own on the test PostgreSQL server, for tests that also
/// reach it with PostgreSQL's own tools (`pg_dump`, `psql`).
pub struct PostgresSchema {
    /// The server's URL (`BERTH_TEST_POSTGRES_URL`).
    pub server: String,
    /// The schema's name: `prefix` and a fresh UUID.
    pub schema: String,
    /// The URL berth uses: the server's, with the schema as search path.
    pub url: String,
}

pub async fn postgres_schema_named(prefix: &str) -> PostgresSchema {
    use sqlx::Connection;
    let server = std::env::var("BERTH_TEST_POSTGRES_URL")
        .expect("BERTH_TEST_POSTGRES_URL is not set: run scripts/test, or eval \"$(scripts/postgres-test-server)\"");
    let schema = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    let separator = if server.contains('?') { '&' } else { '?' };
    let url = format!("{server}{separator}options[search_path]={schema}");
    PostgresSchema {
        server,
        schema,
        url,
    }
}
