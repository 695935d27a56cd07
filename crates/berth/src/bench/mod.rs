//! `berth bench`: berth's performance, measured against a baseline in the
//! same run (see `docs/PERFORMANCE.md` for the method and the figures).
//!
//! * [`pipeline`] runs trivial jobs through the whole pipeline (webhook →
//!   queue → JIT config from the simulator → container → runner stand-in →
//!   cleanup) and, in the same run, the same containers straight through the
//!   Docker API.
//! * [`intake`] fires signed `workflow_job` deliveries at the webhook
//!   endpoint over many connections and counts what is durably accepted.
//! * [`placement`] claims jobs with placement from replica processes on
//!   one PostgreSQL, and on SQLite, against the claim from before the fleet.
//! * [`hook`] runs container-job steps and `prepare_job` through `berth
//!   hook` against the same Docker work done directly.
//!
//! The first two run the real `berth serve` as a child process, so that its
//! CPU time and peak RSS can be read from `/proc` without the load
//! generator's; the third runs its replicas as child processes of this
//! binary (`--claimer`).

pub mod hook;
pub mod intake;
pub mod pipeline;
pub mod placement;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

/// How long `berth serve` may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Linux's `USER_HZ`: the unit of utime and stime in `/proc/PID/stat`. It
/// is 100 on every architecture Linux supports today.
pub(crate) const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// A `berth serve` child process of a benchmark.
pub struct ServeChild {
    child: tokio::process::Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
}

impl ServeChild {
    /// Starts `berth serve --config CONFIG` (the binary at `berth`) listening
    /// on `url`, with its stderr in `log`, and waits until it is ready.
    pub async fn start(berth: &Path, config: &Path, url: &str, log: &Path) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(log).context("creating the serve log")?;
        let child = tokio::process::Command::new(berth)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", berth.display()))?;
        let pid = child.id().context("berth serve exited at once")?;
        let mut serve = ServeChild {
            child,
            pid,
            url: url.to_owned(),
            log: log.to_owned(),
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = serve.child.try_wait()? {
                bail!(
                    "berth serve exited with {status} before it was ready:\n{}",
                    serve.log_tail()
                );
            }
            let ready = client
                .get(format!("{url}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(serve);
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "berth serve was not ready within {READY_TIMEOUT:?}:\n{}",
                    serve.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU time and memory of the process so far, from `/proc`.
    pub fn usage(&self) -> anyhow::Result<ProcessUsage> {
        ProcessUsage::of(self.pid)
    }

    /// The last lines berth serve wrote to stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not exited within 15 s.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// SIGKILL, as abrupt as a crash; waits for the exit.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// CPU time and memory of one process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcessUsage {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// Resident set size now (`VmRSS`), MiB.
    pub rss_mib: f64,
}

impl ProcessUsage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // The command name (field 2) may hold spaces: count from its ')'.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(ProcessUsage {
            cpu_seconds: (ticks(11) + ticks(12)) as f64 / CLOCK_TICKS_PER_SECOND,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
            rss_mib: kib("VmRSS:") / 1024.0,
        })
    }
}

/// p50, p95 and p99 of a set of durations, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (milliseconds).
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[i.clamp(1, sorted.len()) - 1]
        };
        Percentiles {
            count: sorted.len(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// The machine a benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// `sha256=<hex>`: GitHub's `X-Hub-Signature-256` of `body`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    crate::intake::webhook::sign(secret.as_bytes(), body)
}

/// A `workflow_job` `queued` delivery shaped like GitHub's: the fields berth
/// reads, plus the bulk GitHub sends around them (the repository's URL
/// templates), about 7 KB like octokit's example delivery.
pub fn workflow_job_queued(job_id: i64, repository: &str, labels: &[&str]) -> Vec<u8> {
    let (owner, name) = repository.split_once('/').unwrap_or((repository, ""));
    let api = "https://api.github.com";
    let body = serde_json::json!({
        "action": "queued",
        "workflow_job": {
            "id": job_id,
            "run_id": 9_000_000_000_i64 + job_id,
            "workflow_name": "CI",
            "head_branch": "main",
            "run_url": format!("{api}/repos/{repository}/actions/runs/{}", 9_000_000_000_i64 + job_id),
            "run_attempt": 1,
            "node_id": format!("CR_kwDOBench{job_id:012}"),
            "head_sha": format!("{:040x}", job_id),
            "url": format!("{api}/repos/{repository}/actions/jobs/{job_id}"),
            "html_url": format!("https://github.com/{repository}/actions/runs/{}/job/{job_id}", 9_000_000_000_i64 + job_id),
            "status": "queued",
            "conclusion": null,
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": "2026-01-01T00:00:00Z",
            "completed_at": null,
            "name": "build",
            "steps": [],
            "check_run_url": format!("{api}/repos/{repository}/check-runs/{job_id}"),
            "labels": labels,
            "runner_id": null,
            "runner_name": null,
            "runner_group_id": null,
            "runner_group_name": null
        },
        "repository": {
            "id": 1_296_269,
            "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
            "name": name,
            "full_name": repository,
            "private": true,
            "owner": {
                "login": owner,
                "id": 1,
                "node_id": "MDQ6VXNlcjE=",
                "avatar_url": "https://avatars.githubusercontent.com/u/1?v=4",
                "url": format!("{api}/users/{owner}"),
                "html_url": format!("https://github.com/{owner}"),
                "type": "Organization",
                "site_admin": false
            },
            "html_url": format!("https://github.com/{repository}"),
            "description": "A repository whose jobs berth runs",
            "fork": false,
            "url": format!("{api}/repos/{repository}"),
            "hooks_url": format!("{api}/repos/{repository}/hooks"),
            "issues_url": format!("{api}/repos/{repository}/issues{{/number}}"),
            "pulls_url": format!("{api}/repos/{repository}/pulls{{/number}}"),
            "created_at": "2011-01-26T19:01:12Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "pushed_at": "2026-01-01T00:00:00Z",
            "default_branch": "main",
            "visibility": "private"
        },
        "organization": {
            "login": owner,
            "id": 1,
            "node_id": "MDEyOk9yZ2FuaXphdGlvbjE=",
            "url": format!("{api}/orgs/{owner}"),
            "description": ""
        },
        "sender": {
            "login": "octocat",
            "id": 583_231,
            "node_id": "MDQ6VXNlcjU4MzIzMQ==",
            "type": "User",
            "site_admin": false
        },
        "installation": { "id": 1, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ==" }
    });
    let mut body = body;
    if let Some(repo) = body["repository"].as_object_mut() {
        for (key, path) in REPOSITORY_URL_TEMPLATES {
            repo.insert(
                (*key).to_owned(),
                serde_json::Value::String(format!("{api}/repos/{repository}/{path}")),
            );
        }
    }
    serde_json::to_vec(&body).expect("JSON")
}

/// The URL templates GitHub puts in every `repository` object.
const REPOSITORY_URL_TEMPLATES: &[(&str, &str)] = &[
    ("forks_url", "forks"),
    ("keys_url", "keys{/key_id}"),
    ("collaborators_url", "collaborators{/collaborator}"),
    ("teams_url", "teams"),
    ("issue_events_url", "issues/events{/number}"),
    ("events_url", "events"),
    ("assignees_url", "assignees{/user}"),
    ("branches_url", "branches{/branch}"),
    ("tags_url", "tags"),
    ("blobs_url", "git/blobs{/sha}"),
    ("git_tags_url", "git/tags{/sha}"),
    ("git_refs_url", "git/refs{/sha}"),
    ("trees_url", "git/trees{/sha}"),
    ("statuses_url", "statuses/{sha}"),
    ("languages_url", "languages"),
    ("stargazers_url", "stargazers"),
    ("contributors_url", "contributors"),
    ("subscribers_url", "subscribers"),
    ("subscription_url", "subscription"),
    ("commits_url", "commits{/sha}"),
    ("git_commits_url", "git/commits{/sha}"),
    ("comments_url", "comments{/number}"),
    ("issue_comment_url", "issues/comments{/number}"),
    ("contents_url", "contents/{+path}"),
    ("compare_url", "compare/{base}...{head}"),
    ("merges_url", "merges"),
    ("archive_url", "{archive_format}{/ref}"),
    ("downloads_url", "downloads"),
    ("milestones_url", "milestones{/number}"),
    (
        "notifications_url",
        "notifications{?since,all,participating}",
    ),
    ("labels_url", "labels{/name}"),
    ("releases_url", "releases{/id}"),
    ("deployments_url", "deployments"),
    ("git_url", "git"),
    ("ssh_url", "ssh"),
    ("clone_url", "clone.git"),
    ("svn_url", "svn"),
    ("homepage", "homepage"),
    ("mirror_url", "mirror"),
    ("pulls_url", "pulls{/number}"),
    ("issues_url", "issues{/number}"),
];

/// Writes `report` as pretty JSON to `path`.
pub fn write_json(path: &Path, report: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The `berth` binary to run as `berth serve`: `--berth`, or this one.
pub fn berth_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p.to_owned()),
        None => std::env::current_exe().context("finding the berth binary"),
    }
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_loopback_addr() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A TOML string literal.
pub(crate) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Milliseconds between two instants of the wall clock.
pub(crate) fn ms_between(from: time::OffsetDateTime, to: time::OffsetDateTime) -> f64 {
    (to - from).as_seconds_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&samples);
        assert_eq!(
            (p.count, p.p50, p.p95, p.p99, p.max),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(Percentiles::of(&[]).count, 0);
        assert_eq!(Percentiles::of(&[7.0]).p99, 7.0);
    }

    #[test]
    fn signature_matches_githubs_test_vector() {
        // docs.github.com: "Validating webhook deliveries".
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn own_process_usage_is_readable() {
        let usage = ProcessUsage::of(std::process::id()).unwrap();
        assert!(usage.peak_rss_mib > 0.0 && usage.peak_rss_mib >= usage.rss_mib);
    }
}
