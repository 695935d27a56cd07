//! The routes a remote `berth proxy` calls besides `POST /v1/jobs/delegate`.
//! Each takes a bearer token with the `delegate` (or `admin`) scope and is a
//! thin wrapper of [`super::orchestrator`].
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
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::ScaleSetError;
use super::delegator::{JobEvent, RetireAnswer, RunnerList};
use super::orchestrator;
use crate::api::ApiError;
use crate::api::auth::{self, Need};
use crate::context::Context;

/// The routes, to merge into the API router.
pub fn router() -> Router<Arc<Context>> {
    Router::new()
        .route("/v1/scale-sets/{name}/runners", get(list_runners))
        .route("/v1/scale-sets/{name}/events", post(events))
        .route("/v1/scale-sets/{name}/runners/{key}/retire", post(retire))
}

impl From<ScaleSetError> for ApiError {
    fn from(e: ScaleSetError) -> Self {
        let status = match &e {
            ScaleSetError::UnknownScaleSet(_) => StatusCode::NOT_FOUND,
            ScaleSetError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            e if e.is_transient() => StatusCode::BAD_GATEWAY,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    }
}

async fn list_runners(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth::authorize(&ctx.store, &headers, Need::Delegate).await?;
    let runners = orchestrator::runners(&ctx, &name).await?;
    Ok(Json(RunnerList { runners }).into_response())
}

async fn events(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth::authorize(&ctx.store, &headers, Need::Delegate).await?;
    let event: JobEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid job event: {e}")))?;
    orchestrator::report(&ctx, &name, &event).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn retire(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path((name, key)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    auth::authorize(&ctx.store, &headers, Need::Delegate).await?;
    let outcome = orchestrator::retire(&ctx, &name, key).await?;
    Ok(Json(RetireAnswer { outcome }).into_response())
}
