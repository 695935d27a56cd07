//! The web dashboard: server-rendered HTML, no external assets, no
//! JavaScript needed.
//!
//! Pages refresh themselves (`<meta http-equiv="refresh">`), so the job list,
//! the queue depth and a running job's log are live in any browser, with
//! scripts on or off. Filters are plain links. The dashboard needs a token
//! with the `read` scope: browsers cannot send bearer headers, so `/login`
//! takes a token once and sets a cookie holding a dashboard session: a new
//! `read` token made for the cookie, valid 12 hours at most and revoked
//! with the token it was made from (see `auth::create_session`). The token
//! typed in never goes into the cookie, so signing in with an `admin` token
//! leaves no `admin` power in the browser. The dashboard only reads; it has
//! no action that changes state (hosts are cordoned and drained with the
//! API or `berth hosts`, which need an `admin` token).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{self, AuthError, Need};
use super::{ApiError, ApiResult};
use crate::context::Context;
use crate::fleet::capacity::FleetView;
use crate::store::{HostHealth, Job, JobFilter, JobState};

/// The cookie holding the dashboard's session token.
pub const COOKIE: &str = "berth_token";

/// Authorizes a dashboard request: the bearer header, or the login cookie.
async fn viewer(ctx: &Context, headers: &HeaderMap) -> Result<(), Response> {
    if ctx.config.server.public_dashboard {
        return Ok(());
    }
    // A client that sends a bearer token is a program: it gets the API's
    // 401 or 403. A browser (the cookie, or nothing yet) is sent to sign in.
    let bearer = headers.contains_key(header::AUTHORIZATION);
    let mut headers = headers.clone();
    if !bearer
        && let Some(token) = cookie(&headers, COOKIE)
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    match auth::authorize(&ctx.store, &headers, Need::Read).await {
        Ok(_) => Ok(()),
        Err(AuthError::Missing | AuthError::Invalid | AuthError::Expired | AuthError::Revoked)
            if !bearer =>
        {
            Err(Redirect::to("/login").into_response())
        }
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn page(title: &str, refresh_secs: Option<u32>, body: &str) -> Response {
    let refresh = refresh_secs
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title><style>{STYLE}</style></head>\
         <body><header><a class=\"brand\" href=\"/\">berth</a></header><main>{body}</main></body></html>",
        title = esc(title)
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
        .into_response()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}\
header{background:#24292f;padding:10px 20px}header a{color:#fff;font-weight:600;text-decoration:none;font-size:18px}\
main{padding:16px 20px}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #d0d7de;white-space:nowrap}\
th{background:#eaeef2}.stats{display:flex;gap:12px;margin-bottom:14px;flex-wrap:wrap}\
.stat{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 14px}.stat b{font-size:20px;display:block}\
.filters a{margin-right:10px}.state{font-weight:600}.completed{color:#1a7f37}.failed,.expired{color:#cf222e}\
.cancelled{color:#6e7781}.running,.starting,.provisioning{color:#0969da}.queued{color:#9a6700}\
.health,.admin{font-weight:600}.up,.active{color:#1a7f37}.down{color:#cf222e}.unknown{color:#6e7781}\
.cordoned,.draining{color:#9a6700}\
pre{background:#0d1117;color:#e6edf3;padding:12px;overflow:auto;max-height:70vh}dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}\
dt{color:#57606a}dd{margin:0}.alert{background:#ffebe9;border:1px solid #cf222e;color:#cf222e;padding:8px 14px;border-radius:6px}";

fn esc(s: &str) -> String {
    super::html_escape(s)
}

fn duration(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 120.0 {
        format!("{secs:.1} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

fn queue_wait(job: &Job, now: time::OffsetDateTime) -> String {
    let until = job.started_at.or(job.finished_at).unwrap_or(now);
    duration((until - job.queued_at).as_seconds_f64().max(0.0))
}

fn run_time(job: &Job, now: time::OffsetDateTime) -> String {
    match job.started_at {
        Some(s) => duration(
            (job.finished_at.unwrap_or(now) - s)
                .as_seconds_f64()
                .max(0.0),
        ),
        None => "-".into(),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    pool: Option<String>,
}

/// `GET /`: live counts and the job list.
pub async fn index(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(denied) = viewer(&ctx, &headers).await {
        return denied;
    }
    let q = match super::query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    match render_index(&ctx, q).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn render_index(ctx: &Context, q: ListQuery) -> ApiResult<Response> {
    super::no_nul("pool", q.pool.as_deref())?;
    let state: Option<JobState> = match q.state.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse().map_err(|e: crate::store::UnknownName| {
            ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
        })?),
        None => None,
    };
    let counts = ctx.store.job_counts().await?;
    let jobs = ctx
        .store
        .job_list(&JobFilter {
            states: state.into_iter().collect(),
            pool: q.pool.clone(),
            repository: None,
            limit: Some(200),
        })
        .await?;
    let now = ctx.store.now();
    let count = |states: &[JobState]| -> i64 {
        counts
            .iter()
            .filter(|c| states.contains(&c.state))
            .map(|c| c.count)
            .sum()
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<section class=\"stats\"><div class=\"stat\" id=\"queue-depth\"><b>{}</b>queued</div>\
         <div class=\"stat\" id=\"running-containers\"><b>{}</b>running containers</div>\
         <div class=\"stat\"><b>{}</b>starting</div><div class=\"stat\"><b>{}</b>completed</div>\
         <div class=\"stat\"><b>{}</b>failed</div>",
        count(&[JobState::Queued]),
        count(&[JobState::Running]),
        count(&[JobState::Provisioning, JobState::Starting]),
        count(&[JobState::Completed]),
        count(&[JobState::Failed, JobState::Expired]),
    );
    for pool in &ctx.config.pools {
        let of = |states: &[JobState]| -> i64 {
            counts
                .iter()
                .filter(|c| c.pool == pool.name && states.contains(&c.state))
                .map(|c| c.count)
                .sum()
        };
        let _ = write!(
            body,
            "<div class=\"stat\"><b>{}/{}</b>pool {} busy, {} queued</div>",
            of(JobState::ACTIVE),
            pool.max_runners,
            esc(&pool.name),
            of(&[JobState::Queued])
        );
    }
    body.push_str("</section><nav class=\"filters\">Show: <a href=\"/\">all</a>");
    for s in JobState::ALL {
        let _ = write!(body, "<a href=\"/?state={0}\">{0}</a>", s.as_str());
    }
    body.push_str("</nav>");
    render_components(ctx, &mut body);
    render_hosts(&crate::fleet::capacity::view(ctx).await?, now, &mut body);
    body.push_str("<h2>Jobs</h2>");
    if jobs.is_empty() {
        body.push_str("<p id=\"no-jobs\">No jobs yet.</p>");
    } else {
        body.push_str(
            "<table id=\"jobs\"><thead><tr><th>job</th><th>state</th><th>repository</th><th>workflow / job</th>\
             <th>pool</th><th>queue wait</th><th>duration</th><th>GitHub</th><th>error</th></tr></thead><tbody>",
        );
        for j in &jobs {
            let name = format!(
                "{} / {}",
                j.workflow.as_deref().unwrap_or("-"),
                j.job_name.as_deref().unwrap_or("-")
            );
            let _ = write!(
                body,
                "<tr><td><a href=\"/jobs/{id}\">{short}</a></td><td class=\"state {state}\">{state}</td><td>{repo}</td>\
                 <td>{name}</td><td>{pool}</td><td>{wait}</td><td>{dur}</td><td>{gh}</td><td>{err}</td></tr>",
                id = j.id,
                short = &j.id.simple().to_string()[20..],
                state = j.state.as_str(),
                repo = esc(&j.repository),
                name = esc(&name),
                pool = esc(&j.pool),
                wait = queue_wait(j, now),
                dur = run_time(j, now),
                gh = esc(j
                    .github_conclusion
                    .as_deref()
                    .or(j.github_status.map(|s| s.as_str()))
                    .unwrap_or("-")),
                err = esc(j.error.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</tbody></table>");
    }
    Ok(page("berth", Some(5), &body))
}

/// The supervised components (crate::supervise): a banner when a required
/// one is down, and a table with each one's last pass.
fn render_components(ctx: &Context, body: &mut String) {
    let down = ctx.components.required_down();
    if !down.is_empty() {
        let _ = write!(
            body,
            "<p id=\"not-ready\" class=\"alert\">Not ready: {} down.</p>",
            esc(&down.join(", "))
        );
    }
    body.push_str(
        "<h2>Components</h2><table id=\"components\"><thead><tr><th>component</th><th>state</th>\
         <th>last pass</th><th>took</th><th>failures in a row</th><th>restarts</th><th>detail</th>\
         </tr></thead><tbody>",
    );
    let now = time::OffsetDateTime::now_utc();
    for c in ctx.components.snapshot() {
        let last = match (c.last_finished_at, c.last_result) {
            (Some(at), Some(result)) => format!(
                "{result}, {} ago",
                duration((now - at).as_seconds_f64().max(0.0))
            ),
            _ => "-".into(),
        };
        let detail = c
            .last_error
            .as_deref()
            .or(c.detail.as_deref())
            .unwrap_or("");
        let _ = write!(
            body,
            "<tr data-component=\"{name}\"><td>{name}{req}</td><td class=\"state {class}\">{state}</td>\
             <td>{last}</td><td>{took}</td><td>{fails}</td><td>{restarts}</td><td>{detail}</td></tr>",
            name = esc(&c.name),
            req = if c.required { " (required)" } else { "" },
            class = if c.up { "running" } else { "failed" },
            state = c.state.as_str(),
            last = esc(&last),
            took = c.last_duration_seconds.map_or("-".into(), duration),
            fails = c.consecutive_failures,
            restarts = c.restarts,
            detail = esc(detail),
        );
    }
    body.push_str("</tbody></table>");
}

/// The Docker hosts (as `GET /v1/hosts` shows them) and the fleet's
/// capacity (as `GET /v1/fleet`).
fn render_hosts(fleet: &FleetView, now: time::OffsetDateTime, body: &mut String) {
    body.push_str(
        "<h2>Hosts</h2><table id=\"hosts\"><thead><tr><th>host</th><th>health</th><th>admin</th>\
         <th>labels</th><th>slots used / free</th><th>warm</th><th>last probe</th><th>watched by</th>\
         </tr></thead><tbody>",
    );
    for h in &fleet.hosts {
        let last_probe = h.last_probe_at.map_or("never".into(), |at| {
            format!("{} ago", duration((now - at).as_seconds_f64().max(0.0)))
        });
        let health = match &h.probe_error {
            // Cut: a cell holding a whole Docker error would widen the table past the screen.
            Some(error) if h.health != HostHealth::Up => format!(
                "{}: {}",
                h.health,
                crate::names::cut_at(error, 120).unwrap_or_else(|| error.clone())
            ),
            _ => h.health.to_string(),
        };
        let _ = write!(
            body,
            "<tr data-host=\"{name}\"><td>{name}</td><td class=\"health {health_class}\">{health}</td>\
             <td class=\"admin {admin}\">{admin}{drained}</td><td>{labels}</td><td>{busy} / {free} of {slots}</td>\
             <td>{warm}</td><td>{last_probe}</td><td>{owner}</td></tr>",
            name = esc(&h.name),
            health_class = h.health.as_str(),
            health = esc(&health),
            admin = h.admin.as_str(),
            drained = if h.drained { " (drained)" } else { "" },
            labels = if h.labels.is_empty() {
                "-".to_string()
            } else {
                esc(&h.labels.join(", "))
            },
            busy = h.busy,
            free = h.free,
            slots = h.slots,
            warm = h.warm,
            owner = esc(h.owner.as_deref().unwrap_or("-")),
        );
    }
    body.push_str("</tbody></table>");
    let (waiting, needed) = fleet.summary(esc);
    let _ = write!(
        body,
        "<p id=\"fleet\">Free slots: <b>{}</b>. Waiting: {}. Hosts needed: {}.</p>",
        fleet.free_slots,
        if waiting.is_empty() {
            "none".to_string()
        } else {
            waiting.join(", ")
        },
        if needed.is_empty() {
            "none".to_string()
        } else {
            needed.join(", ")
        },
    );
}

/// `GET /jobs/{id}`: one job and its output, refreshed while it runs.
pub async fn job_page(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(denied) = viewer(&ctx, &headers).await {
        return denied;
    }
    match render_job(&ctx, &id).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn render_job(ctx: &Context, id: &str) -> ApiResult<Response> {
    let job = super::find_job(ctx, id).await?;
    let now = ctx.store.now();
    let logs = ctx.store.job_logs_get(job.id).await?;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h2>Job {id}</h2><dl id=\"job\"><dt>state</dt><dd class=\"state {state}\">{state}</dd>\
         <dt>repository</dt><dd>{repo}</dd><dt>workflow</dt><dd>{wf}</dd><dt>job</dt><dd>{name}</dd>\
         <dt>GitHub job</dt><dd>{gh} (run {run})</dd><dt>pool</dt><dd>{pool}</dd><dt>attempts</dt><dd>{attempts}</dd>\
         <dt>runner</dt><dd>{runner}</dd><dt>container</dt><dd>{container}</dd><dt>queue wait</dt><dd>{wait}</dd>\
         <dt>duration</dt><dd>{dur}</dd><dt>GitHub says</dt><dd>{conclusion}</dd><dt>exit code</dt><dd>{exit}</dd>\
         <dt>error</dt><dd>{err}</dd></dl>",
        id = job.id,
        state = job.state.as_str(),
        repo = esc(&job.repository),
        wf = esc(job.workflow.as_deref().unwrap_or("-")),
        name = esc(job.job_name.as_deref().unwrap_or("-")),
        gh = job.github_job_id,
        run = job.run_id,
        pool = esc(&job.pool),
        attempts = job.attempts,
        runner = esc(job.runner_name.as_deref().unwrap_or("-")),
        container = esc(job
            .container_id
            .as_deref()
            .map(|c| &c[..12.min(c.len())])
            .unwrap_or("-")),
        wait = queue_wait(&job, now),
        dur = run_time(&job, now),
        conclusion = esc(job
            .github_conclusion
            .as_deref()
            .or(job.github_status.map(|s| s.as_str()))
            .unwrap_or("-")),
        exit = job.exit_code.map_or("-".into(), |c| c.to_string()),
        err = esc(job.error.as_deref().unwrap_or("")),
    );
    let containers = ctx.store.job_containers(job.id).await?;
    if !containers.is_empty() {
        // A container job's own containers (docs/container-jobs.md).
        let _ = write!(
            body,
            "<h3>Containers</h3><table id=\"containers\"><tr><th>role</th><th>name</th><th>image</th><th>id</th><th>state</th></tr>"
        );
        for c in &containers {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.role),
                esc(&c.name),
                esc(&c.image),
                esc(&c.container_id[..12.min(c.container_id.len())]),
                if c.removed_at.is_some() {
                    "removed"
                } else {
                    "present"
                }
            );
        }
        body.push_str("</table>");
    }
    let security_events = ctx.store.security_events_of_job(job.id).await?;
    if !security_events.is_empty() {
        // Falco's alerts about the job (docs/runtime-security.md), already
        // redacted when stored.
        let _ = write!(
            body,
            "<h3>Security events</h3><table id=\"security-events\"><tr><th>time</th><th>priority</th><th>rule</th><th>action</th><th>outcome</th><th>output</th></tr>"
        );
        for e in &security_events {
            let _ = write!(
                body,
                "<tr class=\"security {outcome}\"><td>{time}</td><td>{priority}</td><td>{rule}</td><td>{action}</td><td>{outcome}</td><td><code>{output}</code></td></tr>",
                time = e
                    .time
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                priority = esc(&e.priority),
                rule = esc(&e.rule),
                action = esc(&e.action),
                outcome = esc(&e.outcome),
                output = esc(&e.output),
            );
        }
        body.push_str("</table>");
    }
    let (text, truncated) = match &logs {
        Some(l) => (String::from_utf8_lossy(&l.content).to_string(), l.truncated),
        None => (String::new(), false),
    };
    let _ = write!(
        body,
        "<h3>Worker output{}</h3><pre id=\"log\">{}</pre><p><a href=\"/v1/jobs/{}/logs\">raw</a></p>",
        if job.state.is_terminal() {
            ""
        } else {
            " (live)"
        },
        if text.is_empty() {
            "(no output yet)".to_string()
        } else {
            esc(&text)
        },
        job.id
    );
    if truncated {
        body.push_str("<p>The output went past the size cap; its end was not kept.</p>");
    }
    let refresh = (!job.state.is_terminal()).then_some(2);
    Ok(page(&format!("berth job {}", job.id), refresh, &body))
}

/// `GET /login`: a form for the dashboard token.
pub async fn login_form() -> Response {
    page(
        "berth: sign in",
        None,
        "<h2>Sign in</h2><p>Paste an API token with the <code>read</code> or <code>admin</code> scope \
         (<code>berth token create --scope read</code>). The browser keeps only a read-only \
         session made from it, for 12 hours at most.</p>\
         <form method=\"post\" action=\"/login\"><input type=\"password\" name=\"token\" size=\"60\" autocomplete=\"off\">\
         <button type=\"submit\">Sign in</button></form>",
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login`: checks the token (`read` or `admin`) and sets a cookie
/// holding a new dashboard session made from it, never the token itself.
pub async fn login(State(ctx): State<Arc<Context>>, Form(form): Form<LoginForm>) -> Response {
    let mut headers = HeaderMap::new();
    let Ok(value) = format!("Bearer {}", form.token.trim()).parse() else {
        return ApiError::new(StatusCode::BAD_REQUEST, "not a token").into_response();
    };
    headers.insert(header::AUTHORIZATION, value);
    let parent = match auth::authorize(&ctx.store, &headers, Need::Read).await {
        Ok(parent) => parent,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (session, stored) = match auth::create_session(&ctx.store, &parent).await {
        Ok(created) => created,
        Err(e) => return ApiError::from(e).into_response(),
    };
    // The cookie lives as long as the session: 12 hours, or less when the
    // token signed in with expires sooner (rounded up to a whole second).
    let lifetime = auth::SESSION_LIFETIME.as_secs() as i64;
    let max_age = stored.expires_at.map_or(lifetime, |at| {
        let left = at - ctx.store.now();
        let secs = left.whole_seconds() + i64::from(left.subsec_nanoseconds() > 0);
        secs.clamp(0, lifetime)
    });
    let secure = if ctx.config.server.tls_cert.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}
