//! `POST /v1/security/events`: Falco's alerts in (crate::security).
//!
//! Falco's `http_output` posts one alert per request; falcosidekick's
//! webhook output does too, and a relay may batch them in an array. The
//! caller needs a token of the `security` scope (or `admin`), and when the
//! API serves TLS with `server.tls_client_ca`, a client certificate signed
//! by that CA as well.
//!
//! Answers: 202 with what became of each alert (`events`), including those
//! about no job of berth's (`unmatched`: counted and logged, nothing else)
//! and redeliveries (`duplicate`: acted on once); 400 for a body that is
//! not Falco's format, naming what is wrong, with nothing acted on.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::{self, Need};
use super::{ApiError, ApiResult, body_bytes};
use crate::context::Context;
use crate::security::{falco, response};

/// Largest body accepted: a full batch of alerts with long outputs.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// Set on a request by the server when the connection's client presented a
/// certificate that `server.tls_client_ca` verified.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedClientCertificate;

pub async fn events(
    State(ctx): State<Arc<Context>>,
    client_certificate: Option<axum::Extension<VerifiedClientCertificate>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    if ctx.config.server.tls_client_ca.is_some() && client_certificate.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "security events need a client certificate signed by server.tls_client_ca",
        ));
    }
    auth::authorize(&ctx.store, &headers, Need::Security).await?;
    let body = body_bytes(body)?;
    let events = falco::parse_body(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let results = response::receive(&ctx, events).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "events": results }))).into_response())
}
