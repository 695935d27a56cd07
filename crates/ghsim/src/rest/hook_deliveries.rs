//! The App's webhook delivery log: `GET /app/hook/deliveries` and `POST
//! /app/hook/deliveries/{delivery_id}/attempts`.
//!
//! GitHub never retries a failed delivery; it keeps a log of the App's
//! deliveries for a few days and redelivers one when asked. An App that was
//! down or unreachable reads the log and asks for what it missed. The log
//! here is built on the recorded delivery attempts (crate::webhooks): every
//! attempt GitHub made is one entry, newest first, a redelivery being an
//! entry of its own with the same `guid` and `redelivery: true`. Answers
//! follow `fixtures/openapi/app-hook-deliveries.openapi.json`: App JWT
//! authentication, cursor pagination with a `Link: <…>; rel="next"`
//! header, `per_page` up to 100, the `status` filter (`success`: a
//! `status_code` from 200 to 399, `failure`: 400 to 599; an attempt that got
//! no answer has `status_code` 0 and is in neither).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{DOCS_URL, Error, Result};
use crate::sim::Shared;
use crate::state::{Delivery, lock};

/// Page size when `per_page` is not given, and the most GitHub gives.
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;

/// Cursors name the newest delivery of the page they start: `v1_<id>`.
const CURSOR_PREFIX: &str = "v1_";

pub(super) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/app/hook/deliveries", get(list))
        .route(
            "/app/hook/deliveries/{delivery_id}/attempts",
            post(redeliver),
        )
}

#[derive(Deserialize)]
struct ListQuery {
    per_page: Option<String>,
    cursor: Option<String>,
    status: Option<String>,
}

/// Which deliveries `status` keeps; `None` for a value GitHub refuses.
fn status_filter(status: Option<&str>) -> Option<fn(u16) -> bool> {
    match status {
        None => Some(|_| true),
        Some("success") => Some(|code| (200..=399).contains(&code)),
        Some("failure") => Some(|code| (400..=599).contains(&code)),
        Some(_) => None,
    }
}

/// A 422 shaped as GitHub's `validation-error`.
fn validation_failed(field: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "message": "Validation Failed",
            "errors": [{"resource": "Hook", "field": field, "code": "invalid"}],
            "documentation_url": DOCS_URL,
        })),
    )
        .into_response()
}

/// One entry of the log, as `hook-delivery-item`.
fn item(d: &Delivery) -> Value {
    json!({
        "id": d.seq,
        "guid": d.guid,
        "delivered_at": d.delivered_at,
        "redelivery": d.redelivery,
        "duration": d.duration,
        "status": d.status_text,
        "status_code": d.status.unwrap_or(0),
        "event": d.event,
        "action": d.action,
        "installation_id": d.installation_id,
        "repository_id": d.repository_id,
        "throttled_at": null,
    })
}

async fn list(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    s.app_auth(&headers)?;
    let Some(keep) = status_filter(q.status.as_deref()) else {
        return Ok(validation_failed("status"));
    };
    // GitHub ignores a `per_page` it cannot read, and caps it at 100.
    let per_page = q
        .per_page
        .as_deref()
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(DEFAULT_PER_PAGE)
        .clamp(1, MAX_PER_PAGE);
    let start = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => u64::MAX,
        Some(cursor) => cursor
            .strip_prefix(CURSOR_PREFIX)
            .and_then(|id| id.parse::<u64>().ok())
            .ok_or_else(|| Error::BadRequest("Bad Request".into()))?,
    };
    let w = lock(&s.world);
    // Newest first, from the cursor on; one more than a page tells whether
    // a next page exists.
    let mut page: Vec<&Delivery> = w
        .deliveries
        .iter()
        .rev()
        .filter(|d| d.attempted() && d.seq <= start && keep(d.status.unwrap_or(0)))
        .take(per_page + 1)
        .collect();
    let next = (page.len() > per_page).then(|| page[per_page].seq);
    page.truncate(per_page);
    let body: Vec<Value> = page.into_iter().map(item).collect();
    drop(w);
    let mut response = Json(body).into_response();
    if let Some(next) = next {
        let mut query = format!("per_page={per_page}&cursor={CURSOR_PREFIX}{next}");
        if let Some(status) = &q.status {
            query.push_str(&format!("&status={status}"));
        }
        let link = format!(
            "<{}/app/hook/deliveries?{query}>; rel=\"next\"",
            s.api_url()
        );
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert("link", value);
        }
    }
    Ok(response)
}

async fn redeliver(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(delivery_id): Path<String>,
) -> Result<(StatusCode, Json<Value>)> {
    s.app_auth(&headers)?;
    let id: u64 = delivery_id.parse().map_err(|_| Error::not_found())?;
    s.redeliver_logged(id).ok_or_else(Error::not_found)?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))))
}
