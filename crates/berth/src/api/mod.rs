//! API: berth's HTTP surface (webhooks, delegate, jobs, tokens, hosts and
//! the fleet, metrics, health).
//!
//! Handlers are thin: they authenticate, parse, call intake or the store, and
//! map the result to a status code. Errors are JSON `{"error": "..."}` naming
//! what is wrong; nothing secret is ever echoed back.

pub mod auth;
pub mod dashboard;
pub mod hook;
pub mod hosts;
pub mod scaleset;
pub mod security;
pub mod server;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::intake::{
    self, Accepted, DelegateRequest, DeliveryHeaders, IntakeError, webhook::MAX_WEBHOOK_BYTES,
};
use crate::observability::Metrics;
use crate::store::{JobFilter, JobState};
use auth::{AuthError, Need};

/// An API error: a status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::Missing | AuthError::Invalid | AuthError::Expired | AuthError::Revoked => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        let status = match &e {
            IntakeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IntakeError::Invalid(_) => StatusCode::BAD_REQUEST,
            IntakeError::NoPool(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IntakeError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error while serving a request");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// berth's API described in OpenAPI 3.1, served at `GET /v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// A query string that did not parse: 400 with a JSON error, like every other
/// error (axum's own rejection is plain text). Checked after authentication.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// Text from a caller that the store will hold or compare: PostgreSQL refuses
/// NUL in text, so it is refused here as a bad request, not a store error.
fn no_nul(what: &str, value: Option<&str>) -> ApiResult<()> {
    match value {
        Some(v) if v.contains('\0') => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{what}` must not contain NUL characters"),
        )),
        _ => Ok(()),
    }
}

/// The router of `berth serve`.
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route(
            "/v1/webhooks/github",
            // One byte over GitHub's cap is enough to answer 413.
            post(webhook).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES)),
        )
        .route("/v1/jobs/delegate", post(delegate))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/logs", get(job_logs))
        .route("/v1/jobs/{id}/containers", get(job_containers))
        .route(
            "/v1/hook/build",
            post(hook::build).layer(DefaultBodyLimit::max(hook::MAX_BUILD_CONTEXT_BYTES)),
        )
        .route("/v1/hook/{command}", post(hook::command))
        .route(
            "/v1/security/events",
            post(security::events).layer(DefaultBodyLimit::max(security::MAX_BODY_BYTES)),
        )
        .route("/v1/pools", get(list_pools))
        .route("/v1/status", get(status))
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/{name}", get(hosts::show))
        .route("/v1/hosts/{name}/cordon", post(hosts::cordon))
        .route("/v1/hosts/{name}/uncordon", post(hosts::uncordon))
        .route("/v1/hosts/{name}/drain", post(hosts::drain))
        .route("/v1/fleet", get(hosts::fleet))
        .route("/v1/tokens", get(list_tokens))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/scale-sets/{name}/runners", get(scaleset::list_runners))
        .route("/v1/scale-sets/{name}/events", post(scaleset::events))
        .route(
            "/v1/scale-sets/{name}/runners/{key}/retire",
            post(scaleset::retire),
        )
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/admin/log-level", get(get_log_level).put(set_log_level))
        .route("/", get(dashboard::index))
        .route("/jobs/{id}", get(dashboard::job_page))
        .route("/login", get(dashboard::login_form).post(dashboard::login))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(ctx)
}

/// Serves the API on `listener` until `shutdown`, within the limits of
/// `[server]` (see [`server`]).
pub async fn serve(
    ctx: Arc<Context>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tls = match (&ctx.config.server.tls_cert, &ctx.config.server.tls_key) {
        (Some(cert), Some(key)) => Some(
            tls::acceptor(cert, key, ctx.config.server.tls_client_ca.as_deref())
                .map_err(std::io::Error::other)?,
        ),
        _ => None,
    };
    let limits = server::Limits::from_config(&ctx.config.server);
    server::raise_open_files_limit(limits.max_connections);
    let metrics = ctx.metrics.clone();
    server::serve(listener, tls, router(ctx), limits, metrics, shutdown).await
}

/// A request body, or the error to answer: 408 when it did not arrive in
/// time (see [`server::LimitedBody`]), 413 when it is too large.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| match server::BodyTimedOut::find(&e) {
        Some(why) => ApiError::new(StatusCode::REQUEST_TIMEOUT, why.to_string()),
        None => ApiError::new(e.status(), e.body_text()),
    })
}

async fn webhook(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body_bytes(body)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let accepted = intake::accept_webhook(
        &ctx,
        DeliveryHeaders {
            event: header("x-github-event"),
            delivery_id: header("x-github-delivery"),
            signature: header("x-hub-signature-256"),
        },
        &body,
    )
    .await?;
    let status = if accepted == Accepted::Pong {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(accepted)).into_response())
}

async fn delegate(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    // Requests refused before intake are counted here, so that
    // `berth_job_delegation_requests_total` sees every call (the
    // BerthDelegationFailures alert is about exactly these).
    let refused = |outcome: &'static str| {
        ctx.metrics
            .delegation_requests
            .get_or_create(&crate::observability::metrics::Metrics::outcome(outcome))
            .inc();
    };
    if let Err(e) = auth::authorize(&ctx.store, &headers, Need::Delegate).await {
        refused(match e {
            auth::AuthError::Unavailable => "error",
            _ => "unauthorized",
        });
        return Err(e.into());
    }
    let body = body_bytes(body).inspect_err(|_| refused("invalid"))?;
    let request: DelegateRequest = serde_json::from_slice(&body).map_err(|e| {
        refused("invalid");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid delegate request: {e}"),
        )
    })?;
    let (job, inserted) = intake::accept_delegate(&ctx, request).await?;
    let status = if inserted {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(job)).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    pool: Option<String>,
    repository: Option<String>,
    limit: Option<u32>,
}

async fn list_jobs(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Read).await?;
    let q = query(q)?;
    no_nul("pool", q.pool.as_deref())?;
    no_nul("repository", q.repository.as_deref())?;
    let limit = match q.limit {
        None => 500,
        Some(n @ 1..=5000) => n,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`limit` must be from 1 to 5000",
            ));
        }
    };
    let mut states = Vec::new();
    for s in q
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        states.push(
            s.parse::<JobState>()
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?,
        );
    }
    let jobs = ctx
        .store
        .job_list(&JobFilter {
            states,
            pool: q.pool,
            repository: q.repository,
            limit: Some(limit),
        })
        .await?;
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

fn parse_id(id: &str) -> ApiResult<uuid::Uuid> {
    id.parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("`{id}` is not a job id")))
}

pub(crate) async fn find_job(ctx: &Context, id: &str) -> ApiResult<crate::store::Job> {
    ctx.store
        .job_get(parse_id(id)?)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`")))
}

async fn get_job(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Read).await?;
    let job = find_job(&ctx, &id).await?;
    let security_events = ctx.store.security_events_of_job(job.id).await?;
    let mut body = serde_json::to_value(&job).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serializing the job: {e}"),
        )
    })?;
    body["security_events"] = json!(security_events);
    Ok(Json(body).into_response())
}

/// The containers a container job's hook made (docs/container-jobs.md).
async fn job_containers(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Read).await?;
    let job = find_job(&ctx, &id).await?;
    let containers = ctx.store.job_containers(job.id).await?;
    Ok(Json(json!({ "containers": containers })).into_response())
}

async fn cancel_job(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Admin).await?;
    let job = find_job(&ctx, &id).await?;
    if job.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job `{id}` is already {}", job.state),
        ));
    }
    ctx.store.job_request_cancel(job.id).await?;
    ctx.wake_reconciler();
    let job = find_job(&ctx, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

async fn job_logs(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Read).await?;
    let q = query(q)?;
    let job = find_job(&ctx, &id).await?;
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !q.follow {
        let logs = ctx.store.job_logs_get(job.id).await?;
        let content = logs.map(|l| l.content).unwrap_or_default();
        return Ok((text, content).into_response());
    }
    // Follow: stream what is stored, then what is appended, until the job ends.
    let stream = futures::stream::unfold(
        (ctx, job.id, 0u64, false),
        |(ctx, id, offset, done)| async move {
            if done {
                return None;
            }
            loop {
                let finished =
                    matches!(ctx.store.job_get(id).await, Ok(Some(j)) if j.state.is_terminal());
                let chunk = match ctx.store.job_logs_get_from(id, offset).await {
                    Ok(Some(logs)) => logs.content,
                    Ok(None) => Vec::new(),
                    Err(_) => return None,
                };
                if !chunk.is_empty() {
                    let next = offset + chunk.len() as u64;
                    return Some((
                        Ok::<_, std::io::Error>(Bytes::from(chunk)),
                        (ctx, id, next, false),
                    ));
                }
                if finished {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        },
    );
    Ok((text, Body::from_stream(stream)).into_response())
}

/// `GET /v1/pools` (read): each configured pool with its queue and active jobs.
async fn list_pools(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Read).await?;
    let counts = ctx.store.job_counts().await?;
    let pools: Vec<_> = ctx
        .config
        .pools
        .iter()
        .map(|pool| {
            let of = |states: &[JobState]| -> i64 {
                counts
                    .iter()
                    .filter(|c| c.pool == pool.name && states.contains(&c.state))
                    .map(|c| c.count)
                    .sum()
            };
            json!({
                "name": pool.name,
                "scope": pool.scope.to_string(),
                "labels": pool.labels,
                "max_runners": pool.max_runners,
                "queued": of(&[JobState::Queued]),
                "active": of(JobState::ACTIVE),
            })
        })
        .collect();
    Ok(Json(json!({ "pools": pools })).into_response())
}

#[derive(Debug, Deserialize)]
struct TokensQuery {
    /// Include dashboard sessions.
    #[serde(default)]
    sessions: bool,
}

/// `GET /v1/tokens` (admin): every token's record (never its hash), oldest
/// first; dashboard sessions only with `?sessions=true`.
async fn list_tokens(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    q: Result<Query<TokensQuery>, QueryRejection>,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Admin).await?;
    let q = query(q)?;
    let tokens = ctx.store.api_token_list(q.sessions).await?;
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

/// `POST /v1/tokens/{id}/revoke` (admin): revokes the token and the
/// dashboard sessions made from it; answers its record. Revoking again
/// changes nothing.
async fn revoke_token(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Admin).await?;
    // The id is not echoed when it is not one: a token pasted by mistake
    // must not come back in the answer.
    let token_id: uuid::Uuid = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not a token id (token ids are UUIDs; `GET /v1/tokens` lists them)",
        )
    })?;
    let revoked = ctx
        .store
        .api_token_revoke(token_id, ctx.store.now())
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no token `{token_id}`")))?;
    tracing::info!(token_id = %revoked.id, name = %revoked.name, scope = %revoked.scope,
        "API token revoked");
    Ok(Json(revoked).into_response())
}

/// `GET /v1/openapi.json` (public): this API described in OpenAPI 3.1.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// `GET /v1/admin/log-level` (admin): the active log filter.
async fn get_log_level(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Admin).await?;
    let level = ctx.log_level.as_ref().map(|h| h.get()).unwrap_or_default();
    Ok(Json(json!({ "level": level })).into_response())
}

/// `PUT /v1/admin/log-level` (admin) with `{"level": "debug"}`: changes the
/// log filter at run time, without a restart.
async fn set_log_level(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Admin).await?;
    #[derive(Deserialize)]
    struct Level {
        level: String,
    }
    let Level { level } = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"level\": \"…\"}}: {e}"),
        )
    })?;
    let handle = ctx.log_level.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "this process does not own its logger")
    })?;
    handle
        .set(&level)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    tracing::info!(level = %level, "log filter changed");
    Ok(Json(json!({ "level": handle.get() })).into_response())
}

/// Refreshes the gauges that mirror the store, then encodes every metric.
async fn metrics(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> ApiResult<Response> {
    if !ctx.config.server.public_metrics {
        auth::authorize(&ctx.store, &headers, Need::Read).await?;
    }
    refresh_gauges(&ctx).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
        .into_response())
}

pub async fn refresh_gauges(ctx: &Context) -> Result<(), crate::store::StoreError> {
    let counts = ctx.store.job_counts().await?;
    for pool in &ctx.config.pools {
        let of = |states: &[JobState]| -> i64 {
            counts
                .iter()
                .filter(|c| c.pool == pool.name && states.contains(&c.state))
                .map(|c| c.count)
                .sum()
        };
        let labels = Metrics::pool(&pool.name);
        ctx.metrics
            .job_queue_size
            .get_or_create(&labels)
            .set(of(&[JobState::Queued]));
        ctx.metrics
            .active_worker_containers
            .get_or_create(&labels)
            .set(of(JobState::ACTIVE));
    }
    let fleet = crate::fleet::capacity::view(ctx).await?;
    crate::fleet::capacity::publish(ctx, &fleet);
    Ok(())
}

async fn healthz(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> ApiResult<Response> {
    if !ctx.config.server.public_health {
        auth::authorize(&ctx.store, &headers, Need::Read).await?;
    }
    Ok(Json(json!({ "status": "ok" })).into_response())
}

/// How long `/readyz` waits for a Docker host's ping.
const READY_PING: std::time::Duration = std::time::Duration::from_secs(2);

/// Ready when the store answers, a Docker host answers and every required
/// component (crate::supervise) is up.
async fn readyz(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> ApiResult<Response> {
    // Unauthenticated callers (a load balancer's probe) learn what is down,
    // not the internal error text, which names paths and addresses; a
    // `read` token shows it, and the log always has it.
    let authorized = auth::authorize(&ctx.store, &headers, Need::Read).await;
    if !ctx.config.server.public_health {
        authorized.clone()?;
    }
    let detailed = authorized.is_ok();
    let store = ctx.store.ping().await.map_err(|e| e.to_string());
    // Ready while any host answers: a fleet with a host down still runs
    // jobs (the down one gets none; the capacity signal and BerthHostDown
    // say so). The hosts are asked at once, each for at most READY_PING, so
    // an engine that does not answer cannot hold a load balancer's probe.
    let pings = futures::future::join_all(ctx.fleet.hosts().iter().map(|h| async {
        match tokio::time::timeout(READY_PING, h.docker.ping()).await {
            Ok(answer) => answer.map_err(|e| format!("{}: {e}", h.name())),
            Err(_) => Err(format!("{}: no answer within {READY_PING:?}", h.name())),
        }
    }))
    .await;
    let docker = if pings.iter().any(Result::is_ok) {
        Ok(())
    } else {
        let errors: Vec<String> = pings.into_iter().filter_map(Result::err).collect();
        Err(errors.join("; "))
    };
    let components_down = ctx.components.required_down();
    let status = if store.is_ok() && docker.is_ok() && components_down.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    for (what, result) in [("store", &store), ("docker", &docker)] {
        if let Err(e) = result {
            tracing::warn!(dependency = what, error = %e, "not ready");
        }
    }
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) if detailed => e.clone(),
        Err(_) => "unavailable".to_string(),
    };
    Ok((
        status,
        Json(json!({
            "store": show(&store),
            "docker": show(&docker),
            "components_down": components_down,
        })),
    )
        .into_response())
}

/// `GET /v1/status` (read): whether this replica is ready, and every
/// supervised component's status.
async fn status(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Read).await?;
    Ok(Json(status_document(&ctx)).into_response())
}

/// The body of `GET /v1/status`.
pub fn status_document(ctx: &Context) -> serde_json::Value {
    let components = ctx.components.snapshot();
    json!({
        "replica": ctx.replica_id,
        "ready": ctx.components.required_down().is_empty(),
        "components": components,
    })
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
