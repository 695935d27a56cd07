//! The runner stand-in behind the `ghsim-runner` binary: takes a JIT config,
//! authenticates like the real runner, takes one job, runs its steps with
//! `/bin/sh -c`, streams their output, reports, and exits.
//!
//! Jobs with `container:`, `services:` or container actions go through the
//! runner's container hooks when `ACTIONS_RUNNER_CONTAINER_HOOKS` names one
//! and the job allows it: see [`crate::hooks`]. With
//! `ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER=true`, a job without `container:`
//! fails before its steps, as on the real runner.
//!
//! It is built to be copied into a `FROM scratch` image with only glibc and
//! busybox: no CA files (plain HTTP, or rustls' built-in roots), no DNS
//! beyond `/etc/hosts` (host names of the JIT config's URLs are looked up
//! there first), nothing else read from disk (but the hook script, when one
//! is configured).
//!
//! Exit codes: 0 when a job ran and was reported (whatever its conclusion);
//! 2 bad JIT config; 3 authentication failed; 4 the registration was deleted
//! while waiting; 143 stopped by SIGTERM/SIGINT before taking a job; 1 any
//! other runner-level error.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::auth::{KeyPair, sign_assertion};
use crate::error::{Error, Result};
use crate::hooks::{self, ContainerJob, RunnerEnv, StepResult};
use crate::runner_protocol::{
    AcquireJobRequest, BrokerMessage, BrokerSession, CompleteJobBody, JitConfig, JobRef,
    JobRequest, JobRequestRef, LogsBody, RenewResponse, StepUpdate, StepsBody, TokenResponse,
};
use crate::state::{now, ts};

/// Version reported to the simulator and by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Env var the real runner reads its JIT config from.
pub const JIT_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

/// Header of the stand-in's first request (the OAuth token): when its
/// process started, in nanoseconds since the Unix epoch. The real runner
/// sends no such thing; the simulator records it so that start-up latency
/// ("webhook → runner process started") can be measured from outside.
pub const PROCESS_STARTED_HEADER: &str = "x-ghsim-runner-process-started";

static PROCESS_STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();

/// Records now as the moment this process started; call it first in `main`.
pub fn mark_process_start() {
    PROCESS_STARTED.get_or_init(std::time::SystemTime::now);
}

/// A runner-level failure: [`Error::Runner`] with its exit code.
fn fail(code: i32, message: impl Into<String>) -> Error {
    Error::Runner {
        code,
        message: message.into(),
    }
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The job id.
    pub job_id: String,
    /// `succeeded`, `failed`, `canceled`.
    pub conclusion: String,
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runner root; the work folder is relative to it.
    pub root: PathBuf,
    /// Stop (as on SIGTERM) when this flips to true.
    pub stop: watch::Receiver<bool>,
}

/// The runner root, as the real runner sees it: the parent of the `bin/`
/// folder holding the executable (`/home/runner/bin/Runner.Listener` →
/// `/home/runner`), else the current directory. `RUNNER_ROOT` overrides.
pub fn runner_root() -> PathBuf {
    if let Some(r) = std::env::var_os("RUNNER_ROOT") {
        return PathBuf::from(r);
    }
    let exe_root = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        (dir.file_name()? == "bin").then(|| dir.parent().map(PathBuf::from))?
    });
    exe_root
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Host → address from `/etc/hosts`.
fn etc_hosts() -> HashMap<String, IpAddr> {
    let mut map = HashMap::new();
    let Ok(text) = std::fs::read_to_string("/etc/hosts") else {
        return map;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut parts = line.split_whitespace();
        let Some(ip) = parts.next().and_then(|p| p.parse::<IpAddr>().ok()) else {
            continue;
        };
        for name in parts {
            map.entry(name.to_ascii_lowercase()).or_insert(ip);
        }
    }
    map
}

fn client_for(urls: &[&str]) -> Result<reqwest::Client> {
    let hosts = etc_hosts();
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(format!("ghsim-runner/{VERSION}"));
    for u in urls {
        if let Ok(parsed) = url::Url::parse(u) {
            if let Some(url::Host::Domain(d)) = parsed.host() {
                if let Some(ip) = hosts.get(&d.to_ascii_lowercase()) {
                    b = b.resolve(d, SocketAddr::new(*ip, 0));
                }
            }
        }
    }
    b.build()
        .map_err(|e| fail(1, format!("cannot build HTTP client: {e}")))
}

struct Conn {
    http: reqwest::Client,
    jit: JitConfig,
    key: KeyPair,
    token: String,
    /// Since when polls have failed to reach the server, if they do.
    unreachable_since: Option<std::time::Instant>,
}

/// How long the server may be unreachable before the runner gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

impl Conn {
    async fn authenticate(&mut self) -> Result<()> {
        let data = &self.jit.credentials.data;
        let assertion = sign_assertion(&self.key, &data.client_id, &data.authorization_url)
            .map_err(|e| fail(3, format!("cannot sign client assertion: {e}")))?;
        let mut request = self.http.post(&data.authorization_url);
        if let Some(started) = PROCESS_STARTED.get()
            && let Ok(since) = started.duration_since(std::time::UNIX_EPOCH)
        {
            request = request.header(PROCESS_STARTED_HEADER, since.as_nanos().to_string());
        }
        let resp = request
            .form(&[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| fail(3, format!("cannot reach {}: {e}", data.authorization_url)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(fail(3, format!("authentication failed ({status}): {body}")));
        }
        let t: TokenResponse = resp
            .json()
            .await
            .map_err(|e| fail(3, format!("bad token response: {e}")))?;
        self.token = t.access_token;
        Ok(())
    }

    fn broker(&self, path: &str) -> String {
        format!("{}{path}", self.jit.runner.server_url_v2)
    }

    async fn post_json(
        &self,
        url: &str,
        body: &impl serde::Serialize,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
    }
}

/// Runs the stand-in with an encoded JIT config, reading the runner's
/// container settings ([`RunnerEnv`]) from this process's environment.
pub async fn run(encoded_jit: &str, opts: Options) -> Result<Outcome> {
    run_with_env(encoded_jit, opts, RunnerEnv::from_process()).await
}

/// [`run`] with the container settings given (tests use it to configure
/// hooks without changing the process environment).
pub async fn run_with_env(
    encoded_jit: &str,
    mut opts: Options,
    runner_env: RunnerEnv,
) -> Result<Outcome> {
    let jit = JitConfig::decode(encoded_jit).map_err(|e| fail(2, e.to_string()))?;
    let key = jit.rsa.to_key_pair().map_err(|e| fail(2, e.to_string()))?;
    let http = client_for(&[
        &jit.runner.server_url_v2,
        &jit.credentials.data.authorization_url,
    ])?;
    let mut conn = Conn {
        http,
        jit,
        key,
        token: String::new(),
        unreachable_since: None,
    };
    conn.authenticate().await?;
    let name = conn.jit.runner.agent_name.clone();
    eprintln!("ghsim-runner: {name} authenticated; opening session");
    let session = BrokerSession {
        session_id: None,
        owner_name: name.clone(),
        agent: serde_json::json!({"id": conn.jit.runner.agent_id, "name": name, "version": VERSION, "osDescription": "Linux"}),
    };
    let resp = conn
        .post_json(&conn.broker("session"), &session)
        .await
        .map_err(|e| fail(1, format!("cannot create session: {e}")))?;
    match resp.status().as_u16() {
        200..=299 => {}
        404 => return Err(fail(4, "runner registration not found (deleted?)")),
        401 | 403 => {
            return Err(fail(
                3,
                format!("session refused: {}", resp.text().await.unwrap_or_default()),
            ));
        }
        s => {
            return Err(fail(
                1,
                format!(
                    "cannot create session ({s}): {}",
                    resp.text().await.unwrap_or_default()
                ),
            ));
        }
    }
    let session: BrokerSession = resp
        .json()
        .await
        .map_err(|e| fail(1, format!("bad session response: {e}")))?;
    let session_id = session
        .session_id
        .map(|s| s.to_string())
        .unwrap_or_default();
    eprintln!("ghsim-runner: {name} listening for jobs");

    let result = async {
        loop {
            let job = tokio::select! {
                r = poll_once(&mut conn, &session_id) => r?,
                _ = opts.stop.wait_for(|s| *s) => {
                    return Err(fail(143, "stopped by signal while waiting for a job"));
                }
            };
            let Some(job) = job else { continue };
            eprintln!(
                "ghsim-runner: {name} acquired job {} ({})",
                job.job_id, job.job_display_name
            );
            let conclusion = run_job(&conn, &job, &mut opts, &runner_env).await?;
            return Ok(Outcome {
                job_id: job.job_id,
                conclusion,
            });
        }
    }
    .await;
    let _ = conn
        .http
        .delete(conn.broker("session"))
        .bearer_auth(&conn.token)
        .send()
        .await;
    result
}

/// One long poll; `Ok(Some(job))` once a job was acquired.
async fn poll_once(conn: &mut Conn, session_id: &str) -> Result<Option<JobRequest>> {
    let resp = conn
        .http
        .get(conn.broker("message"))
        .bearer_auth(&conn.token)
        .query(&[
            ("sessionId", session_id),
            ("status", "Online"),
            ("runnerVersion", VERSION),
            ("os", "Linux"),
            ("architecture", "X64"),
            ("disableUpdate", "true"),
        ])
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let since = *conn
                .unreachable_since
                .get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > GIVE_UP_AFTER {
                return Err(fail(1, format!("lost the connection to the server: {e}")));
            }
            eprintln!("ghsim-runner: message poll failed: {e}; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(None);
        }
    };
    conn.unreachable_since = None;
    match resp.status().as_u16() {
        202 | 204 => return Ok(None),
        200 => {}
        401 => {
            conn.authenticate().await?;
            return Ok(None);
        }
        404 => {
            let body: Value = resp.json().await.unwrap_or_default();
            let kind = body["errorKind"].as_str().unwrap_or("");
            return Err(fail(
                4,
                format!("runner registration deleted while waiting for a job ({kind})"),
            ));
        }
        s => {
            eprintln!("ghsim-runner: message poll answered {s}; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(None);
        }
    }
    let msg: BrokerMessage = resp
        .json()
        .await
        .map_err(|e| fail(1, format!("bad broker message: {e}")))?;
    if msg.message_type != "RunnerJobRequest" {
        return Ok(None);
    }
    let r: JobRequestRef = serde_json::from_str(&msg.body)
        .map_err(|e| fail(1, format!("bad job request message: {e}")))?;
    let resp = conn
        .post_json(
            &format!("{}acquirejob", r.run_service_url),
            &AcquireJobRequest {
                job_message_id: r.runner_request_id.clone(),
                runner_os: "Linux".into(),
                billing_owner_id: r.billing_owner_id.clone(),
            },
        )
        .await
        .map_err(|e| fail(1, format!("acquirejob failed: {e}")))?;
    match resp.status().as_u16() {
        200 => {}
        404 | 409 | 422 => {
            eprintln!(
                "ghsim-runner: job request {} not acquired ({}); waiting for another",
                r.runner_request_id,
                resp.status()
            );
            return Ok(None);
        }
        s => return Err(fail(1, format!("acquirejob answered {s}"))),
    }
    let mut job: JobRequest = resp
        .json()
        .await
        .map_err(|e| fail(1, format!("bad job: {e}")))?;
    // Remember where the job lives (the run service URL of the message).
    job.environment
        .insert("GHSIM_RUN_SERVICE_URL".into(), r.run_service_url);
    Ok(Some(job))
}

/// Why a step stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Cancelled,
}

/// Output lines of the job: (step number, line).
pub type LogSender = mpsc::UnboundedSender<(u32, String)>;

/// What the job runs, in order: the runner's own container steps around
/// the job's steps.
enum Unit<'a> {
    InitializeContainers(u32),
    Step(&'a crate::runner_protocol::JobStep),
    StopContainers(u32),
}

impl Unit<'_> {
    fn number(&self) -> u32 {
        match self {
            Unit::InitializeContainers(n) | Unit::StopContainers(n) => *n,
            Unit::Step(s) => s.number,
        }
    }
}

/// Runs every step, reports, returns the job conclusion.
async fn run_job(
    conn: &Conn,
    job: &JobRequest,
    opts: &mut Options,
    runner_env: &RunnerEnv,
) -> Result<String> {
    let run_url = job
        .environment
        .get("GHSIM_RUN_SERVICE_URL")
        .cloned()
        .unwrap_or_default();
    let job_ref = JobRef {
        plan_id: job.plan_id,
        job_id: job.job_id.clone(),
    };
    // Cancellation: from the server (renewjob) or a signal.
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let renew = {
        let http = conn.http.clone();
        let token = conn.token.clone();
        let url = format!("{run_url}renewjob");
        let body = job_ref.clone();
        let every = Duration::from_millis(job.renew_interval_ms.max(50));
        let cancel_tx = cancel_tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r = http.post(&url).bearer_auth(&token).json(&body).send().await;
                if let Ok(r) = r {
                    if let Ok(rr) = r.json::<RenewResponse>().await {
                        if rr.cancel_requested {
                            let _ = cancel_tx.send(true);
                        }
                    }
                }
            }
        })
    };
    let mut stop_rx = opts.stop.clone();
    let signal_forward = {
        let cancel_tx = cancel_tx.clone();
        tokio::spawn(async move {
            if stop_rx.wait_for(|s| *s).await.is_ok() {
                let _ = cancel_tx.send(true);
            }
        })
    };
    // Output lines go to the server in batches.
    let (log_tx, mut log_rx) = mpsc::unbounded_channel::<(u32, String)>();
    let shipper = {
        let http = conn.http.clone();
        let token = conn.token.clone();
        let url = format!("{run_url}logs");
        let plan = job.plan_id;
        let job_id = job.job_id.clone();
        tokio::spawn(async move {
            let mut batch: Vec<String> = Vec::new();
            let mut batch_bytes = 0usize;
            let mut step = 0u32;
            let flush = |step: u32, lines: Vec<String>| {
                let http = http.clone();
                let token = token.clone();
                let url = url.clone();
                let job_id = job_id.clone();
                async move {
                    if lines.is_empty() {
                        return;
                    }
                    let body = LogsBody {
                        plan_id: plan,
                        job_id,
                        step_number: step,
                        lines,
                    };
                    let _ = http.post(&url).bearer_auth(&token).json(&body).send().await;
                }
            };
            loop {
                let next = tokio::time::timeout(Duration::from_millis(100), log_rx.recv()).await;
                match next {
                    Ok(Some((s, line))) => {
                        if s != step && !batch.is_empty() {
                            batch_bytes = 0;
                            flush(step, std::mem::take(&mut batch)).await;
                        }
                        step = s;
                        batch_bytes += line.len();
                        batch.push(line);
                        if batch.len() >= 200 || batch_bytes >= 1 << 20 {
                            batch_bytes = 0;
                            flush(step, std::mem::take(&mut batch)).await;
                        }
                    }
                    Ok(None) => {
                        flush(step, std::mem::take(&mut batch)).await;
                        return;
                    }
                    Err(_) => {
                        batch_bytes = 0;
                        flush(step, std::mem::take(&mut batch)).await
                    }
                }
            }
        })
    };

    let repo_name = job
        .repository
        .rsplit('/')
        .next()
        .unwrap_or("repo")
        .to_string();
    let mut work_root = opts.root.join(&conn.jit.runner.work_folder);
    let mut work = work_root.join(&repo_name).join(&repo_name);
    if let Err(e) = std::fs::create_dir_all(&work) {
        work_root = std::env::temp_dir().join(&conn.jit.runner.work_folder);
        let fallback = work_root.join(&repo_name).join(&repo_name);
        eprintln!(
            "ghsim-runner: cannot create {} ({e}); using {}",
            work.display(),
            fallback.display()
        );
        let _ = std::fs::create_dir_all(&fallback);
        work = fallback;
    }
    let layout = hooks::Layout::new(
        &opts.root,
        &work_root,
        &job.repository,
        runner_env.tool_cache.as_deref(),
    );
    let mut containers = ContainerJob::new(job, layout, runner_env);
    let mut units: Vec<Unit> = job.steps.iter().map(Unit::Step).collect();
    if hooks::has_containers(job) {
        let first = job.steps.first().map_or(1, |s| s.number);
        let last = job.steps.last().map_or(1, |s| s.number);
        units.insert(0, Unit::InitializeContainers(first.saturating_sub(1)));
        units.push(Unit::StopContainers(last + 1));
    }
    let mut results: Vec<StepUpdate> = Vec::new();
    let mut job_failed = false;
    let mut job_cancelled = false;
    // JobExtension.ValidateJobContainer: "Set up job" fails, nothing runs
    // (the job's log has the message; step 0 is no step).
    let setup_failed = runner_env.require_job_container && job.job_container.is_none();
    if setup_failed {
        let _ = log_tx.send((
            0,
            format!("##[error]{}", hooks::REQUIRE_JOB_CONTAINER_MESSAGE),
        ));
        job_failed = true;
    }
    for unit in &units {
        let number = unit.number();
        // "Stop containers" runs always(), the others only while all is well.
        let always = matches!(unit, Unit::StopContainers(_));
        if setup_failed || ((job_failed || job_cancelled || *cancel_rx.borrow()) && !always) {
            job_cancelled |= *cancel_rx.borrow();
            let t = ts(now());
            results.push(StepUpdate {
                number,
                status: "completed".into(),
                conclusion: Some("skipped".into()),
                started_at: Some(t.clone()),
                completed_at: Some(t),
            });
            continue;
        }
        let started = ts(now());
        let _ = conn
            .post_json(
                &format!("{run_url}steps"),
                &StepsBody {
                    plan_id: job.plan_id,
                    job_id: job.job_id.clone(),
                    steps: vec![StepUpdate {
                        number,
                        status: "in_progress".into(),
                        conclusion: None,
                        started_at: Some(started.clone()),
                        completed_at: None,
                    }],
                },
            )
            .await;
        let result = match (unit, containers.as_mut()) {
            (Unit::InitializeContainers(_), Some(c)) => {
                c.initialize(number, &log_tx, cancel_rx.clone()).await
            }
            (Unit::StopContainers(_), Some(c)) => c.stop(number, &log_tx).await,
            (Unit::Step(step), Some(c)) if c.handles(step) => {
                c.run_step(step, &log_tx, cancel_rx.clone()).await
            }
            (Unit::Step(step), _) => {
                let outcome = run_step(
                    &step.script,
                    &work,
                    &job.environment,
                    number,
                    &log_tx,
                    cancel_rx.clone(),
                )
                .await;
                match outcome {
                    Ok(0) => StepResult::Succeeded,
                    Ok(code) => {
                        let _ = log_tx.send((
                            number,
                            format!("##[error]Process completed with exit code {code}."),
                        ));
                        StepResult::Failed
                    }
                    Err(Stop::Cancelled) => StepResult::Cancelled,
                }
            }
            // Without a container job there are no container steps.
            (_, None) => StepResult::Succeeded,
        };
        let conclusion = match result {
            StepResult::Succeeded => "success",
            StepResult::Failed => {
                job_failed = true;
                "failure"
            }
            StepResult::Cancelled => {
                let _ = log_tx.send((number, "##[error]The operation was canceled.".into()));
                job_cancelled = true;
                "cancelled"
            }
        };
        let update = StepUpdate {
            number,
            status: "completed".into(),
            conclusion: Some(conclusion.into()),
            started_at: Some(started),
            completed_at: Some(ts(now())),
        };
        let _ = conn
            .post_json(
                &format!("{run_url}steps"),
                &StepsBody {
                    plan_id: job.plan_id,
                    job_id: job.job_id.clone(),
                    steps: vec![update.clone()],
                },
            )
            .await;
        results.push(update);
    }
    drop(log_tx);
    let _ = shipper.await;
    renew.abort();
    signal_forward.abort();
    let conclusion = if job_cancelled {
        "canceled"
    } else if job_failed {
        "failed"
    } else {
        "succeeded"
    };
    let resp = conn
        .post_json(
            &format!("{run_url}completejob"),
            &CompleteJobBody {
                plan_id: job.plan_id,
                job_id: job.job_id.clone(),
                conclusion: conclusion.into(),
                step_results: results,
                outputs: Value::Object(Default::default()),
            },
        )
        .await
        .map_err(|e| fail(1, format!("completejob failed: {e}")))?;
    if !resp.status().is_success() {
        let s = resp.status();
        return Err(fail(
            1,
            format!(
                "completejob answered {s}: {}",
                resp.text().await.unwrap_or_default()
            ),
        ));
    }
    eprintln!("ghsim-runner: job {} finished: {conclusion}", job.job_id);
    Ok(conclusion.to_string())
}

/// Runs one step; `Ok(exit code)` or `Err(Cancelled)` after killing it.
async fn run_step(
    script: &str,
    work: &std::path::Path,
    env: &std::collections::BTreeMap<String, String>,
    number: u32,
    log: &LogSender,
    cancel: watch::Receiver<bool>,
) -> Result<i32, Stop> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(work)
        .env_remove(JIT_ENV)
        .env("GITHUB_WORKSPACE", work);
    for (k, v) in env {
        if k != "GHSIM_RUN_SERVICE_URL" {
            cmd.env(k, v);
        }
    }
    match run_process(cmd, None, number, log, Some(cancel)).await {
        Ok(r) => r,
        Err(e) => {
            let _ = log.send((number, format!("##[error]cannot start /bin/sh: {e}")));
            Ok(127)
        }
    }
}

/// Runs a process in its own process group, its stdout and stderr lines
/// going to step `number`'s log, `stdin` written to it then closed (else
/// no stdin). `Ok(Ok(exit code))`; `Ok(Err(Cancelled))` after killing the
/// group when `cancel` flips to true; `Err` when it cannot start.
pub(crate) async fn run_process(
    mut cmd: tokio::process::Command,
    stdin: Option<Vec<u8>>,
    number: u32,
    log: &LogSender,
    cancel: Option<watch::Receiver<bool>>,
) -> std::io::Result<Result<i32, Stop>> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A task: a process that does not read must not block us on a full pipe.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = pipe.write_all(&bytes).await;
            let _ = pipe.shutdown().await;
        });
    }
    let pid = child.id();
    let out = child.stdout.take().map(|o| forward(o, number, log.clone()));
    let err = child.stderr.take().map(|o| forward(o, number, log.clone()));
    let cancelled = async {
        // A dropped sender cancels nothing.
        if let Some(mut c) = cancel {
            if c.wait_for(|c| *c).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    let status = tokio::select! {
        s = child.wait() => Some(s),
        _ = cancelled => None,
    };
    let result = match status {
        Some(Ok(s)) => Ok(s.code().unwrap_or(128 + 9)),
        Some(Err(_)) => Ok(1),
        None => {
            if let Some(pgid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            Err(Stop::Cancelled)
        }
    };
    // Drain the output (bounded: a killed group closes its pipes).
    for h in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    Ok(result)
}

fn forward<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    r: R,
    number: u32,
    log: LogSender,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Bytes, not `lines()`: a step printing invalid UTF-8 must not stop
        // the reader (the step would then block on a full pipe).
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    let _ = log.send((number, String::from_utf8_lossy(&buf).into_owned()));
                }
            }
        }
    })
}
