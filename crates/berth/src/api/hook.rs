//! `POST /v1/hook/{command}`: the orchestrator side of `berth hook`
//! (crate::container_jobs).
//!
//! Authenticated by the job's hook credential, not by an API token: the
//! credential names the job, and the job alone is what the command acts on.
//! The body is the runner's hook input as the runner wrote it; the answer
//! is `application/x-ndjson`, one [`Event`] per line, ending with `done` or
//! `error`, streamed as it comes (a step's output reaches the job's log
//! while the step runs).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::{ApiError, ApiResult, body_bytes};
use crate::container_jobs::credential::{self, Refusal};
use crate::container_jobs::protocol::{COMMANDS, Event, HookInput};
use crate::container_jobs::runtime::{self, HookJob};
use crate::context::Context;

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match r {
            Refusal::Missing | Refusal::Invalid => StatusCode::UNAUTHORIZED,
            Refusal::Ended(_) => StatusCode::FORBIDDEN,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, r.to_string())
    }
}

/// The largest build context `POST /v1/hook/build` takes.
pub const MAX_BUILD_CONTEXT_BYTES: usize = 64 * 1024 * 1024;

/// The job of the request's credential, if its pool runs container jobs,
/// with its runner and host.
async fn hook_job(
    ctx: &Context,
    headers: &HeaderMap,
) -> ApiResult<(HookJob, crate::config::PoolConfig)> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let job = credential::job_of(ctx, authorization).await?;
    let pool = ctx
        .pool_of(&job)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?
        .clone();
    if !pool.container_jobs {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("pool `{}` does not run container jobs", pool.name),
        ));
    }
    let Some(runner) = job.runner_name.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the job has no runner yet",
        ));
    };
    let host = ctx.fleet.host_of(&job).to_owned();
    Ok((HookJob { job, runner, host }, pool))
}

/// The answer: the command's events, one JSON object per line, as they come.
fn stream(received: tokio::sync::mpsc::Receiver<Event>) -> Response {
    let lines = tokio_stream::wrappers::ReceiverStream::new(received).map(|event| {
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

pub async fn command(
    State(ctx): State<Arc<Context>>,
    Path(command): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    if !COMMANDS.contains(&command.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown hook command `{command}` (one of {})",
                COMMANDS.join(", ")
            ),
        ));
    }
    let (hook, _pool) = hook_job(&ctx, &headers).await?;
    let body = body_bytes(body)?;
    let input: HookInput = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid hook input: {e}")))?;
    if input.command != command {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the hook input's command `{}` is not this endpoint's `{command}`",
                input.command
            ),
        ));
    }
    if let Ok(docker) = ctx.fleet.docker(&hook.host) {
        runtime::check_state(docker, &hook, &input.state)
            .await
            .map_err(|why| ApiError::new(StatusCode::FORBIDDEN, why))?;
    }
    let (events, received) = tokio::sync::mpsc::channel(64);
    tokio::spawn(runtime::run(ctx.clone(), hook, command, input, events));
    Ok(stream(received))
}

#[derive(Debug, serde::Deserialize)]
pub struct BuildQuery {
    /// The Dockerfile's path in the build context.
    dockerfile: String,
}

/// `POST /v1/hook/build?dockerfile=NAME`: builds a Dockerfile action's
/// image from the tar archive in the body (the action's folder, sent by
/// `berth hook` from the worker), where the pool allows builds.
pub async fn build(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    query: Result<Query<BuildQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (hook, pool) = hook_job(&ctx, &headers).await?;
    if !pool.containers.allow_builds {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this step is a Dockerfile action, and this pool does not build images \
             (pool.containers.allow_builds); use a published image (`docker://…`) or ask the \
             operator (berth policy: builds)",
        ));
    }
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let name = query.dockerfile;
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if !plain {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{name}` is not a path inside the build context"),
        ));
    }
    let body = body_bytes(body)?;
    let (events, received) = tokio::sync::mpsc::channel(64);
    tokio::spawn(runtime::build(ctx.clone(), hook, body, name, events));
    Ok(stream(received))
}
