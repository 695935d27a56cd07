//! Fault injection and rate limits: what makes berth's GitHub client prove
//! its retries and back-off.
//!
//! A [`FaultRule`] answers a fraction of requests (optionally only those whose
//! path starts with a prefix, optionally only the next N) with a 5xx, a 429
//! with `Retry-After`, GitHub's 403 secondary rate limit with `Retry-After`,
//! or delays them. Every REST answer carries `X-RateLimit-*` headers counted
//! per credential; a credential that exhausts its hourly budget gets GitHub's
//! 403 primary rate-limit answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::now_secs;
use crate::sim::Shared;
use crate::state::{RateBucket, lock};

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with `status` (default 502).
    ServerError,
    /// 429 with `Retry-After`.
    TooManyRequests,
    /// 403 secondary rate limit with `Retry-After`.
    SecondaryRateLimit,
    /// Delay by `delay_ms`, then answer normally.
    Slow,
}

/// One fault rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRule {
    /// What to do.
    pub kind: FaultKind,
    /// Fraction of matching requests affected (0..=1, default 1).
    #[serde(default = "one")]
    pub fraction: f64,
    /// Only paths starting with this (e.g. `/repos/`, `/app/installations`,
    /// `/_services/actions`). `/api/v3` is ignored when matching.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Only the next N matching requests.
    #[serde(default)]
    pub count: Option<u32>,
    /// Status for `server_error` (default 502).
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` seconds (default 1).
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// Delay for `slow`, ms.
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

fn one() -> f64 {
    1.0
}

impl FaultRule {
    /// A rule of `kind` hitting every request.
    pub fn new(kind: FaultKind) -> Self {
        FaultRule {
            kind,
            fraction: 1.0,
            path_prefix: None,
            count: None,
            status: None,
            retry_after_secs: None,
            delay_ms: None,
        }
    }
}

fn matching_path(path: &str) -> &str {
    path.strip_prefix("/api/v3").unwrap_or(path)
}

/// Picks the fault (if any) for this request, spending `count`.
fn pick(s: &Shared, path: &str) -> Option<FaultRule> {
    let path = matching_path(path);
    let mut rules = lock(&s.faults);
    let mut rng = rand::thread_rng();
    let idx = rules.iter().position(|r| {
        r.count != Some(0)
            && r.path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(matching_path(p)))
            && (r.fraction >= 1.0 || rng.r#gen::<f64>() < r.fraction)
    })?;
    let rule = rules[idx].clone();
    if let Some(c) = rules[idx].count.as_mut() {
        *c -= 1;
        if *c == 0 {
            rules.remove(idx);
        }
    }
    Some(rule)
}

/// Middleware applying fault rules (everything but `/_sim`).
pub(crate) async fn fault_layer(
    State(s): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path().starts_with("/_sim") {
        return next.run(req).await;
    }
    let Some(rule) = pick(&s, req.uri().path()) else {
        return next.run(req).await;
    };
    lock(&s.world).fault_hits += 1;
    let retry_after = rule.retry_after_secs.unwrap_or(1).to_string();
    match rule.kind {
        FaultKind::Slow => {
            tokio::time::sleep(Duration::from_millis(rule.delay_ms.unwrap_or(1000))).await;
            next.run(req).await
        }
        FaultKind::ServerError => {
            let status = StatusCode::from_u16(rule.status.unwrap_or(502))
                .ok()
                .filter(|s| s.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            (
                status,
                axum::Json(
                    json!({"message": "Server Error", "documentation_url": crate::error::DOCS_URL}),
                ),
            )
                .into_response()
        }
        FaultKind::TooManyRequests => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"message": "Too many requests", "documentation_url": "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api"})),
            )
                .into_response();
            r.headers_mut().insert(
                "retry-after",
                HeaderValue::from_str(&retry_after).expect("digits"),
            );
            r
        }
        FaultKind::SecondaryRateLimit => {
            let mut r = (
                StatusCode::FORBIDDEN,
                axum::Json(json!({
                    "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000.",
                    "documentation_url": "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
                })),
            )
                .into_response();
            r.headers_mut().insert(
                "retry-after",
                HeaderValue::from_str(&retry_after).expect("digits"),
            );
            r
        }
    }
}

/// Middleware counting requests per credential and adding `X-RateLimit-*` (REST only).
pub(crate) async fn rate_limit_layer(
    State(s): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    // REST only: the Actions service, the runner endpoints and `/_sim` all start with `/_`.
    if req.uri().path().starts_with("/_") {
        return next.run(req).await;
    }
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split_whitespace().last().unwrap_or("").to_string())
        .unwrap_or_else(|| "anonymous".into());
    let limit = if key == "anonymous" {
        60
    } else {
        s.cfg.rate_limit
    };
    let now = now_secs();
    let (used, reset) = {
        let mut w = lock(&s.world);
        let b = w.rate.entry(key.clone()).or_insert(RateBucket {
            used: 0,
            reset: now + 3600,
        });
        if b.reset <= now {
            *b = RateBucket {
                used: 0,
                reset: now + 3600,
            };
        }
        b.used = b.used.saturating_add(1);
        (b.used, b.reset)
    };
    let mut resp = if used > limit {
        (
            StatusCode::FORBIDDEN,
            axum::Json(json!({
                "message": "API rate limit exceeded. (But here's the good news: Authenticated requests get a higher rate limit. Check out the documentation for more details.)",
                "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"
            })),
        )
            .into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    let num = |n: i64| HeaderValue::from_str(&n.to_string()).expect("digits");
    h.insert("x-ratelimit-limit", num(limit as i64));
    h.insert(
        "x-ratelimit-remaining",
        num(limit.saturating_sub(used.min(limit)) as i64),
    );
    h.insert("x-ratelimit-reset", num(reset));
    h.insert("x-ratelimit-used", num(used.min(limit) as i64));
    h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    let request_id = format!(
        "{:X}:{:X}",
        std::process::id(),
        rand::thread_rng().r#gen::<u64>()
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-github-request-id", v);
    }
    h.insert(
        "x-github-media-type",
        HeaderValue::from_static("github.v3; format=json"),
    );
    resp
}

/// A 404 for unknown paths, in GitHub's shape.
pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"message": "Not Found", "documentation_url": crate::error::DOCS_URL})),
    )
        .into_response()
}
