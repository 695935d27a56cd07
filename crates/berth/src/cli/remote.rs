//! The operator commands that talk to a running orchestrator over its HTTP
//! API: `berth jobs list|show|cancel`, `berth logs JOB [-f]`, `berth pools`,
//! `berth hosts list|cordon|uncordon|drain`, `berth status`, `berth token
//! list|revoke`.
//!
//! They are thin: every answer comes from the API (so they work against a
//! remote `berth serve` and see exactly what the dashboard sees), printed as a
//! readable table, or as the API's own JSON with `--json` for scripts. The
//! token is read from `BERTH_TOKEN` or a file, never from the command line,
//! where `ps` would show it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use futures::StreamExt;
use serde_json::Value;
use time::OffsetDateTime;

use crate::fleet::capacity::{FleetView, HostView};
use crate::store::{ApiToken, HostAdmin, HostHealth, Job};

/// Where the orchestrator is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// The orchestrator's base URL.
    #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A file holding an API token (`read` scope; `admin` to cancel jobs,
    /// to cordon, uncordon and drain hosts, and for `berth token
    /// list|revoke`). The `BERTH_TOKEN` environment variable works too.
    #[arg(long, env = "BERTH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A PEM certificate to trust, for an `https` URL with a private CA.
    #[arg(long, env = "BERTH_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// Filters of `berth jobs list`, passed to `GET /v1/jobs` as they are.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListFilter {
    /// Only jobs in these states (comma-separated: `queued,running`).
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub pool: Option<String>,
    /// `owner/name`.
    #[arg(long)]
    pub repository: Option<String>,
    /// At most this many jobs, newest first (1 to 5000).
    #[arg(long)]
    pub limit: Option<u32>,
}

/// An authenticated client of one orchestrator.
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    token: Option<String>,
}

impl Client {
    pub fn new(remote: &Remote) -> anyhow::Result<Self> {
        let base = url::Url::parse(&remote.url)
            .with_context(|| format!("--url `{}` is not a URL", remote.url))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("--url `{}` must be http:// or https://", remote.url);
        }
        let token = match (&remote.token_file, std::env::var("BERTH_TOKEN")) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, Ok(token)) if !token.trim().is_empty() => Some(token.trim().to_string()),
            _ => None,
        };
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("berth-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(path) = &remote.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA certificate {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            http = http.add_root_certificate(cert);
        }
        Ok(Client {
            http: http.build()?,
            base,
            token,
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let url = self
            .base
            .join(path)
            .with_context(|| format!("building a URL for {path}"))?;
        let mut req = self.http.request(method, url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        Ok(req)
    }

    /// Sends a request; any answer but 2xx becomes an error carrying the
    /// API's own message.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach berth at {}: {e}", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or(body);
        let hint = match status.as_u16() {
            401 => {
                " (set BERTH_TOKEN or --token-file; `berth token create --scope read` makes one)"
            }
            403 => " (this token's scope does not allow it)",
            _ => "",
        };
        bail!("{status}: {message}{hint}")
    }

    async fn get_json(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let req = self.request(reqwest::Method::GET, path)?.query(query);
        Ok(self.send(req).await?.json().await?)
    }
}

/// `berth jobs list`.
pub async fn jobs_list(remote: &Remote, filter: &ListFilter, json: bool) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let mut query = Vec::new();
    for (key, value) in [
        ("state", &filter.state),
        ("pool", &filter.pool),
        ("repository", &filter.repository),
    ] {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    if let Some(limit) = filter.limit {
        query.push(("limit", limit.to_string()));
    }
    let answer = client.get_json("/v1/jobs", &query).await?;
    if json {
        return print_json(&answer);
    }
    let jobs: Vec<Job> = serde_json::from_value(answer.get("jobs").cloned().unwrap_or_default())
        .context("the server's job list is not in the expected form")?;
    if jobs.is_empty() {
        eprintln!("no jobs");
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "POOL",
        "REPOSITORY",
        "JOB",
        "WAIT",
        "DURATION",
        "UPDATED",
    ]);
    for job in &jobs {
        table.row(vec![
            job.id.to_string(),
            job.state.as_str().to_string(),
            job.pool.clone(),
            job.repository.clone(),
            job_title(job),
            queue_wait(job, now),
            run_duration(job, now),
            format!("{} ago", human(now - job.updated_at)),
        ]);
    }
    table.print();
    Ok(())
}

/// `berth jobs show`.
pub async fn jobs_show(remote: &Remote, id: &str, json: bool) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let answer = client
        .get_json(&format!("/v1/jobs/{}", path_segment(id)), &[])
        .await?;
    if json {
        return print_json(&answer);
    }
    let containers = client
        .get_json(&format!("/v1/jobs/{}/containers", path_segment(id)), &[])
        .await
        .ok()
        .and_then(|c| c["containers"].as_array().cloned())
        .unwrap_or_default();
    let security_events = answer["security_events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let job: Job =
        serde_json::from_value(answer).context("the server's job is not in the expected form")?;
    print_job(&job);
    if !security_events.is_empty() {
        // Falco's alerts about the job (docs/runtime-security.md).
        println!();
        let mut table = Table::new(&["TIME", "PRIORITY", "RULE", "ACTION", "OUTCOME", "OUTPUT"]);
        for e in &security_events {
            let text = |k: &str| e[k].as_str().unwrap_or("-").to_string();
            table.row(vec![
                text("time"),
                text("priority"),
                text("rule"),
                text("action"),
                text("outcome"),
                text("output"),
            ]);
        }
        table.print();
    }
    if !containers.is_empty() {
        // A container job's own containers (docs/container-jobs.md).
        println!();
        println!(
            "{:<8}  {:<12}  {:<40}  {:<9}  IMAGE",
            "ROLE", "ID", "NAME", "STATE"
        );
        for c in &containers {
            let text = |k: &str| c[k].as_str().unwrap_or("-").to_string();
            let id: String = text("container_id").chars().take(12).collect();
            let state = if c["removed_at"].is_string() {
                "removed"
            } else {
                "present"
            };
            println!(
                "{:<8}  {:<12}  {:<40}  {:<9}  {}",
                printable(&text("role")),
                printable(&id),
                printable(&text("name")),
                state,
                printable(&text("image"))
            );
        }
    }
    Ok(())
}

/// `berth jobs cancel`.
pub async fn jobs_cancel(remote: &Remote, id: &str, json: bool) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let req = client.request(
        reqwest::Method::POST,
        &format!("/v1/jobs/{}/cancel", path_segment(id)),
    )?;
    let answer: Value = client.send(req).await?.json().await?;
    if json {
        return print_json(&answer);
    }
    let job: Job =
        serde_json::from_value(answer).context("the server's job is not in the expected form")?;
    println!(
        "cancel requested for job {} ({}); it was {}",
        job.id,
        printable(&job_title(&job)),
        job.state
    );
    Ok(())
}

/// `berth logs JOB [-f]`: the job's output as the server stores it; with
/// `follow`, streamed until the job ends.
pub async fn logs(remote: &Remote, id: &str, follow: bool) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let mut req = client.request(
        reqwest::Method::GET,
        &format!("/v1/jobs/{}/logs", path_segment(id)),
    )?;
    if follow {
        req = req.query(&[("follow", "true")]);
    }
    let resp = client.send(req).await?;
    let mut body = resp.bytes_stream();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the log stream broke off")?;
        stdout.write_all(&chunk)?;
        // Flush per chunk: `-f` is read by people watching a job live.
        stdout.flush()?;
    }
    Ok(())
}

/// `berth pools`.
pub async fn pools(remote: &Remote, json: bool) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let answer = client.get_json("/v1/pools", &[]).await?;
    if json {
        return print_json(&answer);
    }
    let pools = answer
        .get("pools")
        .and_then(Value::as_array)
        .context("the server's pool list is not in the expected form")?;
    let mut table = Table::new(&["POOL", "SCOPE", "LABELS", "QUEUED", "ACTIVE", "MAX"]);
    for pool in pools {
        let text = |key: &str| match pool.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            Some(other) => other.to_string(),
            None => "-".into(),
        };
        table.row(vec![
            text("name"),
            text("scope"),
            text("labels"),
            text("queued"),
            text("active"),
            text("max_runners"),
        ]);
    }
    table.print();
    Ok(())
}

/// `berth hosts list`: the hosts as a table, then the fleet's capacity
/// (both from `GET /v1/fleet`); with `json`, `GET /v1/hosts` as it is.
pub async fn hosts_list(remote: &Remote, json: bool) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    if json {
        return print_json(&client.get_json("/v1/hosts", &[]).await?);
    }
    let fleet: FleetView = serde_json::from_value(client.get_json("/v1/fleet", &[]).await?)
        .context("the server's fleet is not in the expected form")?;
    let now = OffsetDateTime::now_utc();
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "ADMIN",
        "LABELS",
        "SLOTS",
        "USED/FREE",
        "WARM",
        "LAST PROBE",
        "OWNER",
    ]);
    for host in &fleet.hosts {
        let admin = if host.drained {
            format!("{} (drained)", host.admin)
        } else {
            host.admin.to_string()
        };
        table.row(vec![
            host.name.clone(),
            host.health.to_string(),
            admin,
            if host.labels.is_empty() {
                "-".into()
            } else {
                host.labels.join(",")
            },
            host.slots.to_string(),
            format!("{}/{}", host.busy, host.free),
            host.warm.to_string(),
            host.last_probe_at
                .map_or("never".into(), |t| format!("{} ago", human(now - t))),
            host.owner.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table.print();
    println!("{}", fleet_summary(&fleet));
    Ok(())
}

/// The fleet's capacity in three lines: free slots, jobs waiting per pool,
/// hosts needed per host label set.
fn fleet_summary(fleet: &FleetView) -> String {
    let (waiting, needed) = fleet.summary(printable);
    let or_none = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    format!(
        "free slots: {}\njobs waiting: {}\nhosts needed: {}",
        fleet.free_slots,
        or_none(waiting),
        or_none(needed)
    )
}

/// What `berth hosts cordon|uncordon|drain` asks of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    Cordon,
    Uncordon,
    Drain,
}

impl HostAction {
    /// The last segment of its route, `POST /v1/hosts/{name}/…`.
    fn route(self) -> &'static str {
        match self {
            HostAction::Cordon => "cordon",
            HostAction::Uncordon => "uncordon",
            HostAction::Drain => "drain",
        }
    }
}

/// Asks the orchestrator to cordon, uncordon or drain host `name`;
/// answers the host as it is now.
async fn post_host_action(
    client: &Client,
    name: &str,
    action: HostAction,
) -> anyhow::Result<(Value, HostView)> {
    let req = client.request(
        reqwest::Method::POST,
        &format!("/v1/hosts/{}/{}", path_segment(name), action.route()),
    )?;
    let answer: Value = client.send(req).await?.json().await?;
    let host = serde_json::from_value(answer.clone())
        .context("the server's host is not in the expected form")?;
    Ok((answer, host))
}

/// `berth hosts cordon|uncordon NAME` (and `drain` without `--wait`).
pub async fn host_admin(
    remote: &Remote,
    name: &str,
    action: HostAction,
    json: bool,
) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let (answer, host) = post_host_action(&client, name, action).await?;
    if json {
        return print_json(&answer);
    }
    let name = printable(&host.name);
    match action {
        HostAction::Cordon => println!(
            "host {name} cordoned: no new jobs; {} stay",
            what_is_left(&host)
        ),
        HostAction::Uncordon if host.health == HostHealth::Up => {
            println!("host {name} uncordoned: it takes jobs again")
        }
        HostAction::Uncordon => println!(
            "host {name} uncordoned: it takes jobs again once it is up (it is {})",
            host.health
        ),
        HostAction::Drain if host.drained => println!("host {name} is drained"),
        HostAction::Drain => println!(
            "host {name} draining: no new jobs, its warm containers removed; {} left",
            what_is_left(&host)
        ),
    }
    Ok(())
}

/// How often `berth hosts drain --wait` asks how far the drain is.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// `berth hosts drain NAME [--wait [--timeout SECS]]`: drains the host;
/// with `wait`, polls it until it is drained, printing what is left each
/// time that changes, and fails once `timeout` has passed.
pub async fn host_drain(
    remote: &Remote,
    name: &str,
    wait: bool,
    timeout: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<()> {
    if !wait {
        return host_admin(remote, name, HostAction::Drain, json).await;
    }
    let client = Client::new(remote)?;
    let (_, mut host) = post_host_action(&client, name, HostAction::Drain).await?;
    let shown = printable(&host.name);
    // With `--json` stdout holds only the final answer.
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut last_shown = None;
    let answer = loop {
        if host.admin != HostAdmin::Draining {
            bail!(
                "host {shown} is no longer draining: it is {} (someone cordoned or uncordoned it)",
                host.admin
            );
        }
        if host.drained {
            break serde_json::to_value(&host)?;
        }
        let left = what_is_left(&host);
        if last_shown.as_ref() != Some(&left) {
            say(left.clone());
            last_shown = Some(left.clone());
        }
        let pause = match deadline {
            Some(deadline) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    bail!(
                        "host {shown} is not drained after {}s: {left} left",
                        timeout.unwrap_or_default().as_secs()
                    );
                }
                DRAIN_POLL.min(deadline - now)
            }
            None => DRAIN_POLL,
        };
        tokio::time::sleep(pause).await;
        let answer = client
            .get_json(&format!("/v1/hosts/{}", path_segment(name)), &[])
            .await?;
        host = serde_json::from_value(answer)
            .context("the server's host is not in the expected form")?;
    };
    if json {
        print_json(&answer)
    } else {
        println!("host {shown} is drained");
        Ok(())
    }
}

/// `2 jobs running, 1 warm container`.
fn what_is_left(host: &HostView) -> String {
    let count = |n: i64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{}, {}",
        count(host.busy, "job running", "jobs running"),
        count(host.warm, "warm container", "warm containers")
    )
}

/// `berth token list`: every token's record (never a hash or a token).
pub async fn tokens_list(remote: &Remote, sessions: bool, json: bool) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let query = if sessions {
        vec![("sessions", "true".to_string())]
    } else {
        Vec::new()
    };
    let answer = client.get_json("/v1/tokens", &query).await?;
    if json {
        return print_json(&answer);
    }
    let tokens: Vec<ApiToken> =
        serde_json::from_value(answer.get("tokens").cloned().unwrap_or_default())
            .context("the server's token list is not in the expected form")?;
    if tokens.is_empty() {
        eprintln!("no tokens");
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let mut header = vec![
        "ID",
        "NAME",
        "SCOPE",
        "STATE",
        "CREATED",
        "LAST USED",
        "EXPIRES",
    ];
    if sessions {
        header.push("SESSION OF");
    }
    let mut table = Table::new(&header);
    for token in &tokens {
        let mut row = vec![
            token.id.to_string(),
            token.name.clone(),
            token.scope.as_str().to_string(),
            token_state(token, now).to_string(),
            timestamp(Some(token.created_at)),
            timestamp(token.last_used_at),
            timestamp(token.expires_at),
        ];
        if sessions {
            row.push(token.session_of.map_or("-".into(), |id| id.to_string()));
        }
        table.row(row);
    }
    table.print();
    Ok(())
}

/// `berth token revoke`.
pub async fn token_revoke(remote: &Remote, id: &str, json: bool) -> anyhow::Result<()> {
    // A token pasted where its id belongs would otherwise travel in a URL,
    // and URLs end up in proxy logs.
    if id.trim().starts_with(crate::api::auth::TOKEN_PREFIX) {
        bail!(
            "that is a token, not a token id; nothing was sent (`berth token list` shows the ids)"
        );
    }
    let client = Client::new(remote)?;
    let req = client.request(
        reqwest::Method::POST,
        &format!("/v1/tokens/{}/revoke", path_segment(id)),
    )?;
    let answer: Value = client.send(req).await?.json().await?;
    if json {
        return print_json(&answer);
    }
    let token: ApiToken =
        serde_json::from_value(answer).context("the server's token is not in the expected form")?;
    println!(
        "revoked {} token {} `{}` at {}, with its dashboard sessions",
        token.scope,
        token.id,
        printable(&token.name),
        timestamp(token.revoked_at)
    );
    Ok(())
}

/// `revoked`, `expired` or `active`.
fn token_state(token: &ApiToken, now: OffsetDateTime) -> &'static str {
    if token.is_revoked() {
        "revoked"
    } else if token.is_expired_at(now) {
        "expired"
    } else {
        "active"
    }
}

/// RFC 3339 to the second, or `-`.
fn timestamp(at: Option<OffsetDateTime>) -> String {
    at.and_then(|t| {
        t.replace_millisecond(0)
            .ok()?
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "-".into())
}

/// `berth status`: each component's status; fails (exit 1) when a
/// required component is down, so scripts and probes can use it.
pub async fn status(remote: &Remote, json: bool) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let answer = client.get_json("/v1/status", &[]).await?;
    let ready = answer.get("ready").and_then(Value::as_bool);
    if json {
        print_json(&answer)?;
    } else {
        let components = answer
            .get("components")
            .and_then(Value::as_array)
            .context("the server's status is not in the expected form")?;
        let now = OffsetDateTime::now_utc();
        let mut table = Table::new(&[
            "COMPONENT",
            "REQUIRED",
            "UP",
            "STATE",
            "LAST PASS",
            "TOOK",
            "RESULT",
            "FAILS",
            "RESTARTS",
            "DETAIL",
        ]);
        for c in components {
            let text = |key: &str| match c.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "-".into(),
                Some(other) => other.to_string(),
            };
            let yes_no = |key: &str| match c.get(key).and_then(Value::as_bool) {
                Some(true) => "yes".to_string(),
                Some(false) => "no".to_string(),
                None => "-".to_string(),
            };
            let ago = c
                .get("last_finished_at")
                .and_then(Value::as_str)
                .and_then(|t| {
                    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
                })
                .map_or("-".into(), |t| format!("{} ago", human(now - t)));
            let took = c
                .get("last_duration_seconds")
                .and_then(Value::as_f64)
                .map_or("-".into(), |s| human(time::Duration::seconds_f64(s)));
            let result = match (
                text("last_result").as_str(),
                c.get("last_error").and_then(Value::as_str),
            ) {
                ("error", Some(e)) => format!("error: {e}"),
                (r, _) => r.to_string(),
            };
            table.row(vec![
                text("name"),
                yes_no("required"),
                yes_no("up"),
                text("state"),
                ago,
                took,
                result,
                text("consecutive_failures"),
                text("restarts"),
                text("detail"),
            ]);
        }
        table.print();
        println!(
            "replica {}: {}",
            printable(answer.get("replica").and_then(Value::as_str).unwrap_or("-")),
            if ready == Some(true) {
                "ready"
            } else {
                "NOT READY"
            }
        );
    }
    if ready != Some(true) {
        anyhow::bail!("not ready: a required component is down");
    }
    Ok(())
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An id typed by a person goes into a URL path: encode it so a stray `/` or
/// `?` cannot address another route.
fn path_segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id.trim(), percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn job_title(job: &Job) -> String {
    match (&job.workflow, &job.job_name) {
        (Some(w), Some(j)) => format!("{w} / {j}"),
        (None, Some(j)) => j.clone(),
        (Some(w), None) => w.clone(),
        (None, None) => format!("#{}", job.github_job_id),
    }
}

/// Queued → container running; still counting while the job waits.
fn queue_wait(job: &Job, now: OffsetDateTime) -> String {
    match job.started_at {
        Some(started) => human(started - job.queued_at),
        None if !job.state.is_terminal() => format!("{}…", human(now - job.queued_at)),
        None => "-".into(),
    }
}

/// Container running → finished; still counting while it runs.
fn run_duration(job: &Job, now: OffsetDateTime) -> String {
    match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => human(f - s),
        (Some(s), None) => format!("{}…", human(now - s)),
        _ => "-".into(),
    }
}

/// A duration as a person reads it: `850ms`, `12.3s`, `4m05s`, `2h10m`.
fn human(d: time::Duration) -> String {
    let ms = d.whole_milliseconds().max(0);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

fn print_job(job: &Job) {
    let now = OffsetDateTime::now_utc();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let at = |v: Option<OffsetDateTime>| {
        v.map(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        })
        .unwrap_or_else(|| "-".into())
    };
    let fields: Vec<(&str, String)> = vec![
        ("id", job.id.to_string()),
        ("state", job.state.as_str().to_string()),
        ("repository", job.repository.clone()),
        ("workflow", opt(&job.workflow)),
        ("job", opt(&job.job_name)),
        ("github job id", job.github_job_id.to_string()),
        ("run id", job.run_id.to_string()),
        ("labels", job.labels.join(",")),
        ("pool", job.pool.clone()),
        ("source", job.source.as_str().to_string()),
        ("scale set", opt(&job.scale_set)),
        ("attempts", job.attempts.to_string()),
        ("runner", opt(&job.runner_name)),
        ("container", opt(&job.container_id)),
        ("github conclusion", opt(&job.github_conclusion)),
        ("exit code", num(job.exit_code)),
        ("cancel requested", job.cancel_requested.to_string()),
        ("error", opt(&job.error)),
        ("created", at(Some(job.created_at))),
        ("queued", at(Some(job.queued_at))),
        ("started", at(job.started_at)),
        ("finished", at(job.finished_at)),
        ("queue wait", queue_wait(job, now)),
        ("duration", run_duration(job, now)),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in fields {
        println!("{key:<width$}  {}", printable(&value));
    }
}

/// Text from the API as a terminal may show it: control characters (an
/// escape sequence in a job name could rewrite the screen) and bidi
/// overrides (which reorder what is shown) are written as `\u{..}`.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A table cell: [`printable`], cut to [`MAX_CELL_CHARS`] characters.
fn cell(text: &str) -> String {
    let text = printable(text);
    crate::names::cut_at(&text, MAX_CELL_CHARS).unwrap_or(text)
}

/// Table cells are cut here: one long job name must not push every other
/// column off the screen.
const MAX_CELL_CHARS: usize = 80;

/// Left-aligned columns as wide as their widest cell: what `docker ps` and
/// `kubectl get` print, which operators already read without thinking.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// A row of cells as the API gave them; each is made printable and cut
    /// ([`cell`]).
    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    // Padded by hand: `format!`'s width is at most 65,535.
                    let pad = w.saturating_sub(cell.chars().count()) + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human(time::Duration::milliseconds(850)), "850ms");
        assert_eq!(human(time::Duration::milliseconds(12_345)), "12.3s");
        assert_eq!(human(time::Duration::seconds(245)), "4m05s");
        assert_eq!(human(time::Duration::minutes(130)), "2h10m");
        assert_eq!(human(time::Duration::milliseconds(-5)), "0ms");
    }

    #[test]
    fn table_columns_line_up() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        assert_eq!(t.render(), "A           LONGER\nwide cell   x\n");
    }

    #[test]
    fn hostile_cells_are_printable_bounded_and_never_panic() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec![
            "\u{1b}[2J\u{1b}]0;pwned\u{7}build".into(),
            "queued".into(),
        ]);
        t.row(vec!["x".repeat(70_000), "running".into()]);
        t.row(vec!["evil\u{202e}txt.exe".into(), "failed".into()]);
        let out = t.render();
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(out.contains("\\u{1b}[2J"), "{out}");
        assert!(out.contains("\\u{202e}"), "{out}");
        assert!(out.lines().all(|l| l.chars().count() < 200), "{out}");
        assert_eq!(printable("a\tb\nc"), "a\\u{9}b\\u{a}c");
    }

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        assert_eq!(path_segment("../metrics?x=1"), "%2E%2E%2Fmetrics%3Fx%3D1");
    }
}
