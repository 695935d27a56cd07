//! The GitHub REST client: installation tokens, JIT runner configs, runner
//! registrations, job lookups, the App's webhook delivery log and
//! redeliveries.
//!
//! Every request goes through [`GithubClient::send`], which is where the
//! operational rules live: retries with jittered exponential backoff on 5xx,
//! timeouts and connection errors; waiting as `Retry-After` or
//! `X-RateLimit-Reset` says on 429 and on 403 rate limits; and counting each
//! request in `berth_github_api_requests_total{endpoint,status}`.
//!
//! Tokens (App JWTs, installation tokens) and JIT configs never reach a log
//! line or an error message: errors carry the endpoint name, the status and
//! GitHub's `message`, nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::GithubError;
use super::app::AppAuth;
use crate::config::{Scope, Secret};
use crate::observability::Metrics;
use crate::observability::metrics::GithubLabels;

/// Installation tokens are renewed this long before GitHub expires them.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How a client retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A rate limit asking to wait longer than this fails the call instead.
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_rate_limit_wait: Duration::from_secs(120),
        }
    }
}

/// Authentication for one request.
enum Auth<'a> {
    App,
    Installation(&'a Scope),
}

/// A runner registration as GitHub lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    pub status: String,
    pub busy: bool,
    #[serde(default)]
    pub labels: Vec<RunnerLabel>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RunnerLabel {
    pub name: String,
}

/// A just-in-time runner configuration. The encoded config is a credential.
#[derive(Debug, Clone)]
pub struct JitConfig {
    pub runner_id: u64,
    pub runner_name: String,
    pub encoded: Secret,
}

/// The parts of a workflow job berth looks at.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowJob {
    pub id: u64,
    pub run_id: u64,
    pub status: String,
    pub conclusion: Option<String>,
    pub runner_name: Option<String>,
    pub runner_id: Option<u64>,
    #[serde(default)]
    pub labels: Vec<String>,
}

/// One entry of the App's webhook delivery log (`GET /app/hook/deliveries`):
/// one attempt at delivering an event. A redelivery is an entry of its own,
/// with the same `guid` (berth's delivery id, `X-GitHub-Delivery`).
#[derive(Debug, Clone, Deserialize)]
pub struct HookDelivery {
    /// The attempt, as `POST /app/hook/deliveries/{id}/attempts` names it.
    pub id: u64,
    pub guid: String,
    #[serde(with = "time::serde::rfc3339")]
    pub delivered_at: time::OffsetDateTime,
    #[serde(default)]
    pub redelivery: bool,
    /// GitHub's words for the outcome: `OK`, `Invalid HTTP Response: 503`,
    /// `failed to connect to host`, …
    #[serde(default)]
    pub status: String,
    /// The receiver's HTTP status; 0 when it gave none (down, unreachable,
    /// timed out).
    #[serde(default)]
    pub status_code: u16,
    pub event: String,
    #[serde(default)]
    pub action: Option<String>,
}

/// The delivery log back to some moment, newest first.
#[derive(Debug, Clone, Default)]
pub struct HookDeliveryLog {
    pub deliveries: Vec<HookDelivery>,
    /// `false` when the page limit was reached before the moment asked for:
    /// older entries were left unread.
    pub complete: bool,
}

/// Entries per page of the delivery log (GitHub's most).
const HOOK_DELIVERIES_PER_PAGE: &str = "100";

#[derive(Debug, Clone, Deserialize)]
struct InstallationToken {
    token: String,
    expires_at: String,
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    expires_at: SystemTime,
}

#[derive(Debug, Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct JitResponse {
    runner: Runner,
    encoded_jit_config: String,
}

#[derive(Deserialize)]
struct RunnerList {
    total_count: u64,
    runners: Vec<Runner>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

/// A GitHub App client. Cheap to clone.
#[derive(Clone)]
pub struct GithubClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    api_url: String,
    app: AppAuth,
    retry: RetryPolicy,
    metrics: Metrics,
    /// Installation id per scope, found once.
    installations: Mutex<HashMap<String, u64>>,
    /// Installation token per installation id; the lock also makes concurrent
    /// callers wait for one refresh instead of each minting a token.
    tokens: Mutex<HashMap<u64, CachedToken>>,
}

/// The HTTP client of every call to GitHub (REST and the Actions service):
/// each request limited to `request_timeout`, connecting for at most 10 s.
pub(crate) fn http_client(request_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl GithubClient {
    /// `api_url` is `https://api.github.com` or a GHES `https://HOST/api/v3`.
    pub fn new(
        api_url: &str,
        app: AppAuth,
        request_timeout: Duration,
        retry: RetryPolicy,
        metrics: Metrics,
    ) -> Result<Self, GithubError> {
        let http = http_client(request_timeout)
            .map_err(|e| GithubError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                api_url: api_url.trim_end_matches('/').to_string(),
                app,
                retry,
                metrics,
                installations: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The installation that covers `scope`, looked up once and cached.
    pub async fn installation_id(&self, scope: &Scope) -> Result<u64, GithubError> {
        let key = scope.to_string();
        if let Some(id) = self.inner.installations.lock().await.get(&key) {
            return Ok(*id);
        }
        let endpoint = match scope {
            Scope::Org(_) => "get_org_installation",
            Scope::Repo { .. } => "get_repo_installation",
        };
        let path = ApiPath::scope(scope).join(&["installation"]);
        let installation: Installation = self
            .send_json(endpoint, Method::GET, &path, Auth::App, None)
            .await?;
        self.inner
            .installations
            .lock()
            .await
            .insert(key, installation.id);
        Ok(installation.id)
    }

    /// A valid installation token for `scope`, minted or taken from the cache.
    pub async fn installation_token(&self, scope: &Scope) -> Result<Secret, GithubError> {
        let installation = self.installation_id(scope).await?;
        let mut tokens = self.inner.tokens.lock().await;
        if let Some(cached) = tokens.get(&installation)
            && cached.expires_at > SystemTime::now() + TOKEN_REFRESH_MARGIN
        {
            return Ok(cached.token.clone());
        }
        let fresh: InstallationToken = self
            .send_json(
                "create_installation_access_token",
                Method::POST,
                &ApiPath::new(&[
                    "app",
                    "installations",
                    &installation.to_string(),
                    "access_tokens",
                ]),
                Auth::App,
                Some(serde_json::json!({})),
            )
            .await?;
        let expires_at = time::OffsetDateTime::parse(
            &fresh.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64))
        .unwrap_or_else(|_| SystemTime::now() + Duration::from_secs(3600));
        let cached = CachedToken {
            token: Secret::new(fresh.token),
            expires_at,
        };
        tokens.insert(installation, cached.clone());
        Ok(cached.token)
    }

    /// Mints a just-in-time runner registration (webhook mode).
    ///
    /// A retry after a lost answer can find the name taken (409); the stale
    /// registration is then removed and the config minted again, so a retry
    /// never leaves a second registration behind.
    pub async fn generate_jitconfig(
        &self,
        scope: &Scope,
        name: &str,
        runner_group_id: u64,
        labels: &[String],
        work_folder: &str,
    ) -> Result<JitConfig, GithubError> {
        let body = serde_json::json!({
            "name": name,
            "runner_group_id": runner_group_id,
            "labels": labels,
            "work_folder": work_folder,
        });
        let path = ApiPath::scope(scope).join(&["actions", "runners", "generate-jitconfig"]);
        let first = self
            .send_json::<JitResponse>(
                "generate_jitconfig",
                Method::POST,
                &path,
                Auth::Installation(scope),
                Some(body.clone()),
            )
            .await;
        let response = match first {
            Err(GithubError::Http { status: 409, .. }) => {
                if let Some(stale) = self.find_runner(scope, name).await? {
                    self.delete_runner(scope, stale.id).await?;
                }
                self.send_json::<JitResponse>(
                    "generate_jitconfig",
                    Method::POST,
                    &path,
                    Auth::Installation(scope),
                    Some(body),
                )
                .await?
            }
            other => other?,
        };
        Ok(JitConfig {
            runner_id: response.runner.id,
            runner_name: response.runner.name,
            encoded: Secret::new(response.encoded_jit_config),
        })
    }

    /// Removes a runner registration; an already-removed runner is not an error.
    pub async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> Result<(), GithubError> {
        let path = ApiPath::scope(scope).join(&["actions", "runners", &runner_id.to_string()]);
        match self
            .send(
                "delete_runner",
                Method::DELETE,
                &path,
                Auth::Installation(scope),
                None,
            )
            .await
        {
            Ok(_) | Err(GithubError::Http { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every runner registered at `scope`, following pagination.
    pub async fn list_runners(&self, scope: &Scope) -> Result<Vec<Runner>, GithubError> {
        let mut all = Vec::new();
        for page in 1.. {
            let path = ApiPath::scope(scope)
                .join(&["actions", "runners"])
                .query("per_page", "100")
                .query("page", &page.to_string());
            let list: RunnerList = self
                .send_json(
                    "list_runners",
                    Method::GET,
                    &path,
                    Auth::Installation(scope),
                    None,
                )
                .await?;
            let got = list.runners.len();
            all.extend(list.runners);
            if got < 100 || all.len() as u64 >= list.total_count {
                break;
            }
        }
        Ok(all)
    }

    pub async fn find_runner(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<Option<Runner>, GithubError> {
        Ok(self
            .list_runners(scope)
            .await?
            .into_iter()
            .find(|r| r.name == name))
    }

    /// A workflow job's current status on GitHub; `None` when GitHub does not know it.
    pub async fn get_job(
        &self,
        repository: &str,
        job_id: u64,
    ) -> Result<Option<WorkflowJob>, GithubError> {
        let scope = repo_scope(repository)?;
        let path = ApiPath::scope(&scope).join(&["actions", "jobs", &job_id.to_string()]);
        match self
            .send_json(
                "get_job",
                Method::GET,
                &path,
                Auth::Installation(&scope),
                None,
            )
            .await
        {
            Ok(job) => Ok(Some(job)),
            Err(GithubError::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Cancels a workflow run (`POST …/actions/runs/{run_id}/cancel`; the
    /// App needs `actions: write`). A run that already completed (409) is
    /// not an error: there is nothing left to cancel.
    pub async fn cancel_workflow_run(
        &self,
        repository: &str,
        run_id: u64,
    ) -> Result<(), GithubError> {
        let scope = repo_scope(repository)?;
        let path = ApiPath::scope(&scope).join(&["actions", "runs", &run_id.to_string(), "cancel"]);
        match self
            .send(
                "cancel_workflow_run",
                Method::POST,
                &path,
                Auth::Installation(&scope),
                None,
            )
            .await
        {
            Ok(_) | Err(GithubError::Http { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A runner registration token (the first link of the scale-set token chain).
    pub async fn registration_token(&self, scope: &Scope) -> Result<Secret, GithubError> {
        let path = ApiPath::scope(scope).join(&["actions", "runners", "registration-token"]);
        let t: TokenResponse = self
            .send_json(
                "create_registration_token",
                Method::POST,
                &path,
                Auth::Installation(scope),
                None,
            )
            .await?;
        Ok(Secret::new(t.token))
    }

    /// The App's webhook delivery log back to `since` (App JWT; the App
    /// needs no permission for its own hook), newest first, following the
    /// cursor GitHub's `Link: <…>; rel="next"` names for at most `max_pages`
    /// pages of 100. Only the cursor is taken from the link: every request
    /// goes to `github.api_url`, whatever host a header names.
    pub async fn list_hook_deliveries(
        &self,
        since: time::OffsetDateTime,
        max_pages: u32,
    ) -> Result<HookDeliveryLog, GithubError> {
        let mut log = HookDeliveryLog::default();
        let mut cursor: Option<String> = None;
        for _ in 0..max_pages {
            let mut path = ApiPath::new(&["app", "hook", "deliveries"])
                .query("per_page", HOOK_DELIVERIES_PER_PAGE);
            if let Some(cursor) = &cursor {
                path = path.query("cursor", cursor);
            }
            let (body, headers) = self
                .send_with_headers("list_hook_deliveries", Method::GET, &path, Auth::App, None)
                .await?;
            let page: Vec<HookDelivery> =
                serde_json::from_slice(&body).map_err(|e| GithubError::Decode {
                    endpoint: "list_hook_deliveries",
                    message: e.to_string(),
                })?;
            for delivery in page {
                if delivery.delivered_at < since {
                    log.complete = true;
                    return Ok(log);
                }
                log.deliveries.push(delivery);
            }
            cursor = next_cursor(&headers);
            if cursor.is_none() {
                log.complete = true;
                return Ok(log);
            }
        }
        Ok(log)
    }

    /// Asks GitHub to deliver the delivery-log entry `delivery_id` again
    /// (`POST /app/hook/deliveries/{id}/attempts`, App JWT): GitHub answers
    /// 202 and sends it, same body and `X-GitHub-Delivery`, soon after.
    pub async fn redeliver_hook_delivery(&self, delivery_id: u64) -> Result<(), GithubError> {
        let path = ApiPath::new(&[
            "app",
            "hook",
            "deliveries",
            &delivery_id.to_string(),
            "attempts",
        ]);
        self.send(
            "redeliver_hook_delivery",
            Method::POST,
            &path,
            Auth::App,
            None,
        )
        .await
        .map(drop)
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &ApiPath,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<T, GithubError> {
        let bytes = self.send(endpoint, method, path, auth, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| GithubError::Decode {
            endpoint,
            message: e.to_string(),
        })
    }

    /// One logical call: authenticated, retried, rate-limit aware, counted.
    async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &ApiPath,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<bytes::Bytes, GithubError> {
        self.send_with_headers(endpoint, method, path, auth, body)
            .await
            .map(|(body, _)| body)
    }

    /// [`Self::send`], with the answer's headers (pagination links).
    async fn send_with_headers(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &ApiPath,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<(bytes::Bytes, reqwest::header::HeaderMap), GithubError> {
        let url = path.url(&self.inner.api_url)?;
        let retry = &self.inner.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let bearer = match &auth {
                Auth::App => Secret::new(self.inner.app.jwt()?),
                // Boxed: minting a token is itself a `send` (with App auth).
                Auth::Installation(scope) => Box::pin(self.installation_token(scope)).await?,
            };
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
                .bearer_auth(bearer.expose());
            if let Some(b) = &body {
                request = request.json(b);
            }
            let outcome = request.send().await;
            let (wait, error) = match outcome {
                Err(e) => {
                    self.count(endpoint, "error");
                    let error = GithubError::Transport {
                        endpoint,
                        message: describe_transport_error(&e),
                    };
                    (Some(self.backoff(attempt)), error)
                }
                Ok(response) => {
                    let status = response.status();
                    self.count(endpoint, status.as_str());
                    let headers = response.headers().clone();
                    if let Some(remaining) = header_u64(&headers, "x-ratelimit-remaining") {
                        self.inner
                            .metrics
                            .github_rate_limit_remaining
                            .set(remaining as i64);
                    }
                    let bytes = response.bytes().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok((bytes, headers));
                    }
                    let message = serde_json::from_slice::<ErrorBody>(&bytes)
                        .ok()
                        .and_then(|b| b.message)
                        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
                    if status == StatusCode::UNAUTHORIZED
                        && attempt == 1
                        && let Auth::Installation(scope) = &auth
                    {
                        // A revoked or expired installation token: mint a new one once.
                        self.forget_token(scope).await;
                        (
                            None,
                            GithubError::Http {
                                endpoint,
                                status: status.as_u16(),
                                message,
                            },
                        )
                    } else if let Some(wait) = rate_limit_wait(status, &headers, &message) {
                        if wait > retry.max_rate_limit_wait {
                            return Err(GithubError::RateLimited {
                                endpoint,
                                retry_after: wait,
                            });
                        }
                        tracing::warn!(
                            endpoint,
                            status = status.as_u16(),
                            wait_ms = wait.as_millis() as u64,
                            "GitHub rate limit; waiting"
                        );
                        (
                            Some(wait),
                            GithubError::RateLimited {
                                endpoint,
                                retry_after: wait,
                            },
                        )
                    } else if status.is_server_error() {
                        (
                            Some(self.backoff(attempt)),
                            GithubError::Http {
                                endpoint,
                                status: status.as_u16(),
                                message,
                            },
                        )
                    } else {
                        return Err(GithubError::Http {
                            endpoint,
                            status: status.as_u16(),
                            message,
                        });
                    }
                }
            };
            if attempt >= retry.max_attempts {
                return Err(error);
            }
            let wait = wait.unwrap_or_default();
            tracing::debug!(endpoint, attempt, wait_ms = wait.as_millis() as u64, error = %error, "retrying GitHub call");
            tokio::time::sleep(wait).await;
        }
    }

    async fn forget_token(&self, scope: &Scope) {
        if let Some(id) = self
            .inner
            .installations
            .lock()
            .await
            .get(&scope.to_string())
        {
            self.inner.tokens.lock().await.remove(id);
        }
    }

    fn count(&self, endpoint: &'static str, status: &str) {
        self.inner
            .metrics
            .github_api_requests
            .get_or_create(&GithubLabels {
                endpoint,
                status: status.to_string(),
            })
            .inc();
    }

    /// The wait before retry `attempt`: see [`super::backoff`].
    fn backoff(&self, attempt: u32) -> Duration {
        let retry = &self.inner.retry;
        super::backoff::backoff(retry.base_delay, retry.max_delay, attempt)
    }
}

/// A REST API path, built from segments so that no value can change its
/// shape: each segment is percent-encoded (a `/` in a value stays inside
/// its segment), and `.`, `..` or empty segments are refused (names are
/// checked against GitHub's rules before they get here: `crate::names`).
#[derive(Debug, Clone)]
struct ApiPath {
    segments: Vec<String>,
    query: Vec<(&'static str, String)>,
}

impl ApiPath {
    fn new(segments: &[&str]) -> ApiPath {
        ApiPath {
            segments: segments.iter().map(|s| s.to_string()).collect(),
            query: Vec::new(),
        }
    }

    /// `/orgs/ORG` or `/repos/OWNER/NAME`.
    fn scope(scope: &Scope) -> ApiPath {
        match scope {
            Scope::Org(org) => ApiPath::new(&["orgs", org]),
            Scope::Repo { owner, name } => ApiPath::new(&["repos", owner, name]),
        }
    }

    fn join(mut self, segments: &[&str]) -> ApiPath {
        self.segments.extend(segments.iter().map(|s| s.to_string()));
        self
    }

    fn query(mut self, key: &'static str, value: &str) -> ApiPath {
        self.query.push((key, value.to_string()));
        self
    }

    /// The full URL under the API root `base` (which may have a path of
    /// its own, as GHES's `/api/v3`).
    fn url(&self, base: &str) -> Result<url::Url, GithubError> {
        if let Some(bad) = self
            .segments
            .iter()
            .find(|s| s.is_empty() || *s == "." || *s == "..")
        {
            return Err(GithubError::Config(format!(
                "refusing a GitHub API path with the segment {bad:?}"
            )));
        }
        let mut url = url::Url::parse(base)
            .map_err(|e| GithubError::Config(format!("github.api_url: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| GithubError::Config("github.api_url cannot have a path".into()))?
            .pop_if_empty()
            .extend(&self.segments);
        if !self.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(self.query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }
}

fn repo_scope(repository: &str) -> Result<Scope, GithubError> {
    format!("repo:{repository}")
        .parse()
        .map_err(|e: String| GithubError::Config(e))
}

fn header_u64(headers: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The `cursor` of the `rel="next"` URL of a `Link` header, if any.
fn next_cursor(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        if !next {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        url::Url::parse(target)
            .ok()?
            .query_pairs()
            .find(|(key, _)| key == "cursor")
            .map(|(_, value)| value.into_owned())
    })
}

/// How long GitHub asks us to wait, when the answer is a rate limit.
///
/// 429 is always a rate limit. 403 is one only with `Retry-After`, with
/// `X-RateLimit-Remaining: 0`, or with GitHub's "rate limit" message; any
/// other 403 is a permission problem and must not be retried.
fn rate_limit_wait(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    message: &str,
) -> Option<Duration> {
    let retry_after = header_u64(headers, "retry-after").map(Duration::from_secs);
    let exhausted = header_u64(headers, "x-ratelimit-remaining") == Some(0);
    let reset_wait = header_u64(headers, "x-ratelimit-reset").map(|reset| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Duration::from_secs(reset.saturating_sub(now) + 1)
    });
    let is_limit = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (retry_after.is_some()
                || exhausted
                || message.to_ascii_lowercase().contains("rate limit")));
    if !is_limit {
        return None;
    }
    Some(
        retry_after
            .or(if exhausted { reset_wait } else { None })
            // GitHub's advice for a secondary limit without headers: wait a minute.
            .unwrap_or(Duration::from_secs(60)),
    )
}

/// reqwest's errors include the URL; keep only the kind of failure.
fn describe_transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_cursor_is_read_from_the_link_header() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(next_cursor(&headers), None);
        headers.insert(
            "link",
            "<https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_123>; rel=\"prev\", \
             <https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_42%2B>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_cursor(&headers).as_deref(), Some("v1_42+"));
        headers.insert(
            "link",
            "<https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_9>; rel=\"prev\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_cursor(&headers), None, "no next page");
    }

    #[test]
    fn api_paths_are_built_from_segments() {
        let repo = Scope::Repo {
            owner: "acme".into(),
            name: "widgets".into(),
        };
        let url = ApiPath::scope(&repo)
            .join(&["actions", "jobs", "42"])
            .url("https://ghe.example/api/v3")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://ghe.example/api/v3/repos/acme/widgets/actions/jobs/42"
        );
        let url = ApiPath::scope(&Scope::Org("acme".into()))
            .join(&["actions", "runners"])
            .query("per_page", "100")
            .url("https://api.github.com")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.github.com/orgs/acme/actions/runners?per_page=100"
        );
        // A value cannot add segments or climb out of its own.
        let sneaky = Scope::Repo {
            owner: "acme".into(),
            name: "a/../../../app".into(),
        };
        let url = ApiPath::scope(&sneaky)
            .url("https://api.github.com")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.github.com/repos/acme/a%2F..%2F..%2F..%2Fapp"
        );
        for bad in ["..", ".", ""] {
            let scope = Scope::Repo {
                owner: "acme".into(),
                name: bad.into(),
            };
            assert!(
                ApiPath::scope(&scope)
                    .url("https://api.github.com")
                    .is_err(),
                "{bad:?}"
            );
        }
    }
}
