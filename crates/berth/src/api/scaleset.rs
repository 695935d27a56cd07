//! The handlers of the routes a remote `berth proxy` calls besides `POST
//! /v1/jobs/delegate` (routed in `crate::api`, described in its OpenAPI
//! document). Each takes a bearer token with the `delegate` (or `admin`)
//! scope and is a thin wrapper of [`crate::scaleset::orchestrator`].
//!
//! * `GET /v1/scale-sets/{name}/runners` → `{"runners": [{key, id, state,
//!   runner_name, phase}]}`
//! * `POST /v1/scale-sets/{name}/events` `{kind: started|completed,
//!   runner_name, runner_request_id, …}` → 204
//! * `POST /v1/scale-sets/{name}/runners/{key}/retire` → `{"outcome":
//!   "retired"|"busy"|"gone"}`
//!
//! A scale set this orchestrator has no `[[scale_set]]` for is 404.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::api::auth::{self, Need};
use crate::context::Context;
use crate::scaleset::ScaleSetError;
use crate::scaleset::delegator::{JobEvent, RetireAnswer, RunnerList};
use crate::scaleset::orchestrator;

impl From<ScaleSetError> for ApiError {
    fn from(e: ScaleSetError) -> Self {
        let status = match &e {
            ScaleSetError::UnknownScaleSet(_) => StatusCode::NOT_FOUND,
            ScaleSetError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Retiring asks the Actions service, which failed.
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    }
}

pub async fn list_runners(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth::authorize(&ctx.store, &headers, Need::Delegate).await?;
    let runners = orchestrator::runners(&ctx, &name).await?;
    Ok(Json(RunnerList { runners }).into_response())
}

pub async fn events(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth::authorize(&ctx.store, &headers, Need::Delegate).await?;
    let event: JobEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid job event: {e}")))?;
    // The store keeps these as text, which PostgreSQL refuses with NUL.
    let texts = [
        Some(event.runner_name.as_str()),
        Some(event.job_id.as_str()),
        event.repository.as_deref(),
        event.workflow.as_deref(),
        event.job_name.as_deref(),
        event.conclusion.as_deref(),
    ];
    if texts.into_iter().flatten().any(|t| t.contains('\0')) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "text fields must not contain NUL characters",
        ));
    }
    orchestrator::report(&ctx, &name, &event).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn retire(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    auth::authorize(&ctx.store, &headers, Need::Delegate).await?;
    let key: i64 = key.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{key}` is not a runner key"),
        )
    })?;
    let outcome = orchestrator::retire(&ctx, &name, key).await?;
    Ok(Json(RetireAnswer { outcome }).into_response())
}
