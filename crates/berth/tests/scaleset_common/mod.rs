//! Helpers of the scale-set tests: the `[[scale_set]]` table, queueing jobs
//! for it, what must hold once they ran, and `berth proxy` as a process.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::scaleset::orchestrator::RETIRED;
use berth::store::{Job, JobFilter, JobState, Store};
use ghsim::{JobSpec, JobView};

use crate::common::{World, eventually};

pub const SET: &str = "berth-linux";
pub const LIMIT: Duration = Duration::from_secs(120);

/// A `[[scale_set]]` table for `World::config` (appended after the pool).
pub fn scale_set_toml(world: &World, extra: &str) -> String {
    format!(
        "\n[[scale_set]]\nname = \"{SET}\"\ngithub_config_url = \"{}\"\npool = \"linux\"\nmax_runners = 10\n{extra}\n",
        world.sim.github_url("acme")
    )
}

/// Queues a job for the scale set; returns GitHub's job id.
pub fn queue(world: &World, steps: &[&str]) -> u64 {
    world.queue_spec(JobSpec::new("acme/widgets", &["self-hosted", SET], steps))
}

pub async fn wait_completed(world: &World, ids: &[u64]) -> Vec<JobView> {
    let mut done = Vec::new();
    for id in ids {
        let job = world.sim.wait_job_completed(*id, LIMIT).await.unwrap();
        assert_eq!(
            job.status, "completed",
            "GitHub job {id} did not complete: {job:?}"
        );
        done.push(job);
    }
    done
}

pub async fn scale_set_jobs(store: &Store) -> Vec<Job> {
    store
        .job_list(&JobFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.scale_set.as_deref() == Some(SET))
        .collect()
}

/// The sum of every sample whose line starts with `prefix`.
pub fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn get_text(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// No worker container, no runner registration, no live runner job left.
pub async fn assert_nothing_left(world: &World, store: &Store) {
    eventually(
        "no worker container left",
        Duration::from_secs(30),
        || async { world.containers().is_empty() },
    )
    .await;
    eventually(
        "no runner registration left",
        Duration::from_secs(30),
        || async { world.berth_runners().is_empty() },
    )
    .await;
    eventually(
        "no live scale-set runner left",
        Duration::from_secs(30),
        || async {
            scale_set_jobs(store)
                .await
                .iter()
                .all(|j| j.state.is_terminal())
        },
    )
    .await;
}

/// Every GitHub job ran once, on its own berth runner, in its own container;
/// any other runner berth made was retired without running a job. Returns
/// the berth jobs that ran one.
pub async fn assert_one_runner_per_job(store: &Store, ran: &[JobView]) -> Vec<Job> {
    let jobs = scale_set_jobs(store).await;
    let runners: BTreeSet<&str> = ran
        .iter()
        .map(|j| j.runner_name.as_deref().unwrap())
        .collect();
    assert_eq!(
        runners.len(),
        ran.len(),
        "each job on its own runner: {ran:?}"
    );
    let (used, unused): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| {
        j.runner_name
            .as_deref()
            .is_some_and(|r| runners.contains(r))
    });
    assert_eq!(
        used.len(),
        ran.len(),
        "one berth job per runner that ran: {used:#?}"
    );
    let containers: BTreeSet<&str> = used
        .iter()
        .filter_map(|j| j.container_id.as_deref())
        .collect();
    assert_eq!(containers.len(), ran.len(), "a fresh container per job");
    for job in &used {
        assert_eq!(job.state, JobState::Completed, "{job:#?}");
        assert_eq!(job.exit_code, Some(0));
    }
    for job in &unused {
        assert!(job.github_runner_name.is_none(), "{job:#?}");
        assert_eq!(job.state, JobState::Cancelled, "{job:#?}");
        assert_eq!(job.error.as_deref(), Some(RETIRED), "{job:#?}");
    }
    used
}

/// A `berth proxy` configuration: the world's App, the scale set, the
/// orchestrator at `orchestrator_url` with the token in `token_file`.
pub fn proxy_toml(
    world: &World,
    metrics_port: u16,
    orchestrator_url: &str,
    token_file: &Path,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{metrics_port}"
[github]
api_url = "{api}"
app_id = {app_id}
private_key_path = "{key}"
request_timeout = 5
[logs]
level = "berth=debug,info"
[[scale_set]]
name = "{SET}"
github_config_url = "{config_url}"
pool = "linux"
max_runners = 10
[orchestrator]
url = "{orchestrator_url}"
token_file = "{token}"
"#,
        api = world.sim.api_url(),
        app_id = world.sim.app_id(),
        key = world.dir.path().join("app.pem").display(),
        config_url = world.sim.github_url("acme"),
        token = token_file.display(),
    )
}

/// A `berth` process (`proxy` or `serve`), its stderr in a log file.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn start(args: &[&str], config: &Path, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Process { child, log }
    }

    /// `kill -9`: no session deleted, no cleanup.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; returns the exit code once it stopped (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(started.elapsed() < limit, "did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
