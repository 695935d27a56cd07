//! The fleet's hosts over HTTP (routed in `crate::api`, described in its
//! OpenAPI document):
//!
//! * `GET /v1/hosts` (read) → `{"hosts": [host, …]}`, in configuration order
//! * `GET /v1/hosts/{name}` (read) → one host
//! * `POST /v1/hosts/{name}/cordon|uncordon|drain` (admin) → the host, with
//!   its new admin state
//! * `GET /v1/fleet` (read) → the capacity signal ([`capacity::FleetView`])
//!
//! A host is shown as [`capacity::view`] reads it. Cordoning and draining
//! only change the host's row in the store: the claim places jobs on
//! `active` hosts only, and the warm refill removes a draining host's warm
//! containers, so nothing else has to be told. Running jobs are never
//! touched: they finish where they are.
//!
//! A name that cannot be a host's (`crate::names::is_host_name`) is 400; a
//! host that is not configured, 404.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::{self, Need};
use super::{ApiError, ApiResult};
use crate::context::Context;
use crate::fleet::capacity::{self, HostView};
use crate::store::HostAdmin;

/// `GET /v1/hosts`.
pub async fn list(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Read).await?;
    let fleet = capacity::view(&ctx).await?;
    Ok(Json(json!({ "hosts": fleet.hosts })).into_response())
}

/// `GET /v1/hosts/{name}`.
pub async fn show(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Read).await?;
    configured(&ctx, &name)?;
    Ok(Json(host_view(&ctx, &name).await?).into_response())
}

/// `GET /v1/fleet`.
pub async fn fleet(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> ApiResult<Response> {
    auth::authorize(&ctx.store, &headers, Need::Read).await?;
    Ok(Json(capacity::view(&ctx).await?).into_response())
}

/// `POST /v1/hosts/{name}/cordon`: no new jobs; running jobs and warm
/// containers stay.
pub async fn cordon(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    set_admin(&ctx, &headers, &name, HostAdmin::Cordoned).await
}

/// `POST /v1/hosts/{name}/uncordon`: takes jobs again.
pub async fn uncordon(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    set_admin(&ctx, &headers, &name, HostAdmin::Active).await
}

/// `POST /v1/hosts/{name}/drain`: no new jobs, warm containers removed,
/// running jobs finish; the host shows `drained` once nothing is left.
pub async fn drain(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    set_admin(&ctx, &headers, &name, HostAdmin::Draining).await
}

async fn set_admin(
    ctx: &Context,
    headers: &HeaderMap,
    name: &str,
    admin: HostAdmin,
) -> ApiResult<Response> {
    auth::authorize(&ctx.store, headers, Need::Admin).await?;
    configured(ctx, name)?;
    if !ctx.store.host_set_admin(name, admin).await? {
        // Every configured host gets its row at start; one missing (a store
        // restored from before the host was added) is made here.
        ctx.store.hosts_register(&[name.to_string()]).await?;
        ctx.store.host_set_admin(name, admin).await?;
    }
    tracing::info!(host = name, admin = %admin, "host admin state set");
    // Draining: the refill removes the host's warm containers now rather
    // than at its next pass. Uncordoning: queued jobs may be placed now.
    ctx.warm.wake();
    ctx.wake_dispatcher();
    Ok(Json(host_view(ctx, name).await?).into_response())
}

/// 400 for a name no host can have, 404 for one not configured here.
fn configured(ctx: &Context, name: &str) -> ApiResult<()> {
    if !crate::names::is_host_name(name) {
        let shown = crate::names::cut_at(name, 64).unwrap_or_else(|| name.to_string());
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{shown:?} is not a host name (1 to 63 letters, digits, `-`, `_` and `.`; \
                 `GET /v1/hosts` lists the hosts)"
            ),
        ));
    }
    if ctx.fleet.get(name).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no Docker host `{name}` is configured"),
        ));
    }
    Ok(())
}

async fn host_view(ctx: &Context, name: &str) -> ApiResult<HostView> {
    capacity::view(ctx)
        .await?
        .hosts
        .into_iter()
        .find(|h| h.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no Docker host `{name}` is configured"),
            )
        })
}
