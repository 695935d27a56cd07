//! The Actions-service client: everything berth says to the runner
//! scale-set service, for the listener and for the dispatcher alike.
//!
//! # The token chain
//!
//! The service takes an admin token that only GitHub's REST API can hand out:
//! App JWT → installation token (both in [`GithubClient`]) → registration
//! token for the config URL's org or repository → `POST
//! {api}/actions/runner-registration` with `Authorization: RemoteAuth
//! <registration token>` and `{url, runner_event: "register"}` → `{url,
//! token}`: the service's base URL and an admin JWT. The admin token is kept
//! until 60 s before its `exp` (read from the JWT, which is not verified: it
//! is the service's to check) and then fetched again; a `401` from the
//! service drops it at once. Concurrent callers wait for one refresh.
//!
//! # Sessions and the queue
//!
//! The message queue and `acquirejobs` take the session's own queue token;
//! `401` there means *that* token expired ([`ScaleSetError::QueueTokenExpired`]),
//! which the listener answers by refreshing the session.
//!
//! # Errors and retries
//!
//! Idempotent calls are retried on transport errors and 5xx (three attempts,
//! jittered backoff); session creation and the long poll are not, their
//! callers decide. Every call is counted in
//! `berth_github_api_requests_total{endpoint="actions_…"}`. No token, queue
//! token or JIT config ever reaches an error message or a log line.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use url::Url;

use super::ScaleSetError;
use super::messages::{Message, RunnerReference, ScaleSet, Session, parse_message};
use crate::config::Secret;
use crate::github::{GithubClient, JitConfig};
use crate::observability::Metrics;
use crate::observability::metrics::GithubLabels;

/// The admin token is renewed this long before it expires.
pub const ADMIN_TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// The service's API version, on every call.
const API_VERSION: &str = "6.0-preview";
/// Runner list and removal live under the "pool 0" agents endpoint.
const AGENTS: &str = "_apis/distributedtask/pools/0/agents";
const SCALE_SETS: &str = "_apis/runtime/runnerscalesets";
/// How long one long poll may take: the service holds it for up to ~50 s.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);

pub use crate::config::ConfigUrl;

#[derive(Clone)]
struct AdminConnection {
    url: String,
    token: Secret,
    expires_at: SystemTime,
}

/// The Actions service for one GitHub config URL. Cheap to clone.
#[derive(Clone)]
pub struct ActionsClient {
    inner: Arc<Inner>,
}

struct Inner {
    github: GithubClient,
    api_url: String,
    config: ConfigUrl,
    http: reqwest::Client,
    metrics: Metrics,
    admin: Mutex<Option<AdminConnection>>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "typeKey")]
    type_key: Option<String>,
}

#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
}

#[derive(Deserialize)]
struct RunnerGroup {
    id: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JitAnswer {
    runner: RunnerReference,
    #[serde(rename = "encodedJITConfig")]
    encoded_jit_config: String,
}

#[derive(Deserialize)]
struct Registration {
    url: String,
    token: String,
}

/// Whether a call may be repeated after a failure that left its effect unknown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Idempotent,
    Once,
}

impl ActionsClient {
    /// `api_url` is the REST API root (`https://api.github.com` or
    /// `https://HOST/api/v3`); `github` the App client that mints the
    /// registration tokens.
    pub fn new(
        github: GithubClient,
        api_url: &str,
        config_url: &str,
        request_timeout: Duration,
        metrics: Metrics,
    ) -> Result<Self, ScaleSetError> {
        let config = ConfigUrl::parse(config_url).map_err(ScaleSetError::Config)?;
        let http = crate::github::http_client(request_timeout)
            .map_err(|e| ScaleSetError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                github,
                api_url: api_url.trim_end_matches('/').to_string(),
                config,
                http,
                metrics,
                admin: Mutex::new(None),
            }),
        })
    }

    pub fn config_url(&self) -> &ConfigUrl {
        &self.inner.config
    }

    // ---- The token chain ---------------------------------------------------

    /// A valid admin connection, fetched or taken from the cache.
    async fn admin(&self) -> Result<AdminConnection, ScaleSetError> {
        let mut cached = self.inner.admin.lock().await;
        if let Some(admin) = cached.as_ref()
            && admin.expires_at > SystemTime::now() + ADMIN_TOKEN_MARGIN
        {
            return Ok(admin.clone());
        }
        let fresh = self.register().await?;
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    async fn forget_admin(&self) {
        *self.inner.admin.lock().await = None;
    }

    /// Registration token → `runner-registration` → admin connection.
    async fn register(&self) -> Result<AdminConnection, ScaleSetError> {
        let endpoint = "actions_runner_registration";
        let registration = self
            .inner
            .github
            .registration_token(&self.inner.config.scope)
            .await?;
        let url = format!("{}/actions/runner-registration", self.inner.api_url);
        let body = json!({"url": self.inner.config.url, "runner_event": "register"});
        let mut attempt = 0;
        let answer = loop {
            attempt += 1;
            let sent = self
                .inner
                .http
                .post(&url)
                .header(
                    "Authorization",
                    format!("RemoteAuth {}", registration.expose()),
                )
                .json(&body)
                .send()
                .await;
            match self.settle(endpoint, sent).await {
                Ok(bytes) => break bytes,
                Err(e) if e.is_transient() && attempt < 3 => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        };
        let reg: Registration = decode(endpoint, &answer)?;
        let expires_at = jwt_expiry(&reg.token).ok_or_else(|| ScaleSetError::Decode {
            endpoint,
            message: "the admin token carries no expiry".into(),
        })?;
        tracing::debug!(
            config_url = %self.inner.config.url,
            valid_secs = expires_at
                .duration_since(SystemTime::now())
                .map(|d| d.as_secs())
                .unwrap_or(0),
            "Actions service admin token fetched"
        );
        Ok(AdminConnection {
            url: reg.url,
            token: Secret::new(reg.token),
            expires_at,
        })
    }

    // ---- Plumbing ------------------------------------------------------------

    /// Counts a call and maps its answer: the body on success, the
    /// service's error otherwise.
    async fn settle(
        &self,
        endpoint: &'static str,
        sent: reqwest::Result<reqwest::Response>,
    ) -> Result<bytes::Bytes, ScaleSetError> {
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                self.count(endpoint, "error");
                return Err(ScaleSetError::Transport {
                    endpoint,
                    message: describe_transport_error(&e),
                });
            }
        };
        let status = response.status();
        self.count(endpoint, status.as_str());
        let bytes = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(bytes);
        }
        Err(service_error(endpoint, status, &bytes))
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

    /// One admin-authenticated call to the service. `path` is relative to
    /// the service's base URL; `api-version` is added.
    async fn call(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
        retry: Retry,
    ) -> Result<(StatusCode, bytes::Bytes), ScaleSetError> {
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let admin = self.admin().await?;
            let url = service_url(&admin.url, path, query)?;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url)
                .header("Accept", "application/json")
                .bearer_auth(admin.token.expose());
            if let Some(b) = &body {
                request = request.json(b);
            }
            let sent = request.send().await;
            let status = sent.as_ref().map(|r| r.status()).ok();
            match self.settle(endpoint, sent).await {
                Ok(bytes) => return Ok((status.unwrap_or(StatusCode::OK), bytes)),
                Err(e) if e.status() == Some(401) && !refreshed => {
                    // A revoked or expired admin token: fetch a new one, once.
                    refreshed = true;
                    self.forget_admin().await;
                }
                Err(e) if e.is_transient() && retry == Retry::Idempotent && attempt < 3 => {
                    tracing::debug!(endpoint, attempt, error = %e, "retrying an Actions service call");
                    backoff(attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
        retry: Retry,
    ) -> Result<T, ScaleSetError> {
        let (_, bytes) = self
            .call(endpoint, method, path, query, body, retry)
            .await?;
        decode(endpoint, &bytes)
    }

    // ---- Runner groups and scale sets ----------------------------------------

    /// The id of a runner group; `Default` is always 1.
    pub async fn runner_group_id(&self, name: &str) -> Result<u64, ScaleSetError> {
        if name.is_empty() || name.eq_ignore_ascii_case("default") {
            return Ok(1);
        }
        let list: List<RunnerGroup> = self
            .call_json(
                "actions_get_runner_group",
                Method::GET,
                "_apis/runtime/runnergroups/",
                &[("groupName", name.to_string())],
                None,
                Retry::Idempotent,
            )
            .await?;
        list.value
            .first()
            .map(|g| g.id)
            .ok_or_else(|| ScaleSetError::Config(format!("no runner group named `{name}`")))
    }

    pub async fn get_scale_set(
        &self,
        runner_group_id: u64,
        name: &str,
    ) -> Result<Option<ScaleSet>, ScaleSetError> {
        let list: List<ScaleSet> = self
            .call_json(
                "actions_get_scale_set",
                Method::GET,
                SCALE_SETS,
                &[
                    ("runnerGroupId", runner_group_id.to_string()),
                    ("name", name.to_string()),
                ],
                None,
                Retry::Idempotent,
            )
            .await?;
        match list.value.len() {
            0 | 1 => Ok(list.value.into_iter().next()),
            n => Err(ScaleSetError::Decode {
                endpoint: "actions_get_scale_set",
                message: format!("{n} scale sets are named `{name}`"),
            }),
        }
    }

    pub async fn get_scale_set_by_id(&self, id: u64) -> Result<Option<ScaleSet>, ScaleSetError> {
        match self
            .call_json(
                "actions_get_scale_set",
                Method::GET,
                &format!("{SCALE_SETS}/{id}"),
                &[],
                None,
                Retry::Idempotent,
            )
            .await
        {
            Ok(set) => Ok(Some(set)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The scale set named `name` in `runner_group`, created (with the
    /// labels, and runner updates disabled) when it does not exist, and its
    /// labels brought in line when they differ.
    pub async fn ensure_scale_set(
        &self,
        name: &str,
        runner_group: &str,
        labels: &[String],
    ) -> Result<ScaleSet, ScaleSetError> {
        let group = self.runner_group_id(runner_group).await?;
        let label_json: Vec<Value> = labels
            .iter()
            .map(|l| json!({"name": l, "type": "System"}))
            .collect();
        if let Some(existing) = self.get_scale_set(group, name).await? {
            let have: std::collections::BTreeSet<String> = existing
                .labels
                .iter()
                .map(|l| l.name.to_ascii_lowercase())
                .collect();
            let want: std::collections::BTreeSet<String> =
                labels.iter().map(|l| l.to_ascii_lowercase()).collect();
            if have == want {
                return Ok(existing);
            }
            tracing::info!(scale_set = name, ?labels, "updating the scale set's labels");
            return self
                .call_json(
                    "actions_update_scale_set",
                    Method::PATCH,
                    &format!("{SCALE_SETS}/{}", existing.id),
                    &[],
                    Some(json!({"labels": label_json})),
                    Retry::Idempotent,
                )
                .await;
        }
        let created = self
            .call_json::<ScaleSet>(
                "actions_create_scale_set",
                Method::POST,
                SCALE_SETS,
                &[],
                Some(json!({
                    "name": name,
                    "runnerGroupId": group,
                    "labels": label_json,
                    "RunnerSetting": {"disableUpdate": true},
                })),
                Retry::Once,
            )
            .await;
        match created {
            Ok(set) => {
                tracing::info!(scale_set = name, id = set.id, "scale set created");
                Ok(set)
            }
            // Someone else (the orchestrator, another replica) created it first.
            Err(e) if e.status() == Some(409) => {
                self.get_scale_set(group, name)
                    .await?
                    .ok_or_else(|| ScaleSetError::Decode {
                        endpoint: "actions_create_scale_set",
                        message: format!("`{name}` exists (409) but cannot be found"),
                    })
            }
            Err(e) => Err(e),
        }
    }

    // ---- Sessions and the message queue --------------------------------------

    /// Opens the scale set's message session. `409` (another session holds
    /// it) is [`ScaleSetError::SessionConflict`].
    pub async fn create_session(
        &self,
        scale_set_id: u64,
        owner: &str,
    ) -> Result<Session, ScaleSetError> {
        match self
            .call_json(
                "actions_create_session",
                Method::POST,
                &format!("{SCALE_SETS}/{scale_set_id}/sessions"),
                &[],
                Some(json!({"ownerName": owner})),
                Retry::Once,
            )
            .await
        {
            Err(ScaleSetError::Service {
                status: 409,
                message,
                ..
            }) => Err(ScaleSetError::SessionConflict(message)),
            other => other,
        }
    }

    /// A new queue token for the session; [`ScaleSetError::SessionGone`]
    /// when the session no longer exists.
    pub async fn refresh_session(
        &self,
        scale_set_id: u64,
        session_id: &str,
    ) -> Result<Session, ScaleSetError> {
        match self
            .call_json(
                "actions_refresh_session",
                Method::PATCH,
                &format!("{SCALE_SETS}/{scale_set_id}/sessions/{session_id}"),
                &[],
                None,
                Retry::Idempotent,
            )
            .await
        {
            Err(ScaleSetError::Service {
                status: 404,
                message,
                ..
            }) => Err(ScaleSetError::SessionGone(message)),
            other => other,
        }
    }

    /// Deletes the session; one that is already gone is fine.
    pub async fn delete_session(
        &self,
        scale_set_id: u64,
        session_id: &str,
    ) -> Result<(), ScaleSetError> {
        match self
            .call(
                "actions_delete_session",
                Method::DELETE,
                &format!("{SCALE_SETS}/{scale_set_id}/sessions/{session_id}"),
                &[],
                None,
                Retry::Idempotent,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One long poll: `Some` message (200), `None` when nothing came (202).
    pub async fn get_message(
        &self,
        session: &Session,
        last_message_id: u64,
        max_capacity: u32,
    ) -> Result<Option<Message>, ScaleSetError> {
        let endpoint = "actions_get_message";
        let mut url =
            Url::parse(&session.message_queue_url).map_err(|e| ScaleSetError::Decode {
                endpoint,
                message: format!("the message queue URL is not a URL: {e}"),
            })?;
        if last_message_id > 0 {
            url.query_pairs_mut()
                .append_pair("lastMessageId", &last_message_id.to_string());
        }
        let sent = self
            .inner
            .http
            .get(url)
            .timeout(POLL_TIMEOUT)
            .header(
                "Accept",
                format!("application/json; api-version={API_VERSION}"),
            )
            .header("X-ScaleSetMaxCapacity", max_capacity.to_string())
            .bearer_auth(session.message_queue_access_token.expose())
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                self.count(endpoint, "202");
                Ok(None)
            }
            other => match self.settle(endpoint, other).await {
                Ok(bytes) => parse_message(&bytes).map(Some),
                Err(e) => Err(queue_error(e)),
            },
        }
    }

    /// Acknowledges (deletes) a message.
    pub async fn delete_message(
        &self,
        session: &Session,
        message_id: u64,
    ) -> Result<(), ScaleSetError> {
        let endpoint = "actions_delete_message";
        let mut url =
            Url::parse(&session.message_queue_url).map_err(|e| ScaleSetError::Decode {
                endpoint,
                message: format!("the message queue URL is not a URL: {e}"),
            })?;
        let path = format!("{}/{message_id}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let sent = self
            .inner
            .http
            .delete(url)
            .bearer_auth(session.message_queue_access_token.expose())
            .send()
            .await;
        self.settle(endpoint, sent)
            .await
            .map(drop)
            .map_err(queue_error)
    }

    /// Acquires offered jobs (older GHES); returns the runner request ids acquired.
    pub async fn acquire_jobs(
        &self,
        scale_set_id: u64,
        session: &Session,
        request_ids: &[i64],
    ) -> Result<Vec<i64>, ScaleSetError> {
        let endpoint = "actions_acquire_jobs";
        let admin = self.admin().await?;
        let url = service_url(
            &admin.url,
            &format!("{SCALE_SETS}/{scale_set_id}/acquirejobs"),
            &[],
        )?;
        let sent = self
            .inner
            .http
            .post(url)
            .bearer_auth(session.message_queue_access_token.expose())
            .json(&request_ids)
            .send()
            .await;
        let bytes = self.settle(endpoint, sent).await.map_err(queue_error)?;
        Ok(decode::<List<i64>>(endpoint, &bytes)?.value)
    }

    // ---- Runners ---------------------------------------------------------------

    /// Mints a JIT runner of the scale set. A name already taken (a retry
    /// after a lost answer) has its stale registration removed first, so a
    /// retry never leaves a second registration behind.
    pub async fn generate_jitconfig(
        &self,
        scale_set_id: u64,
        name: &str,
        work_folder: &str,
    ) -> Result<JitConfig, ScaleSetError> {
        let path = format!("{SCALE_SETS}/{scale_set_id}/generatejitconfig");
        let body = json!({"name": name, "workFolder": work_folder});
        let mint = || {
            self.call_json::<JitAnswer>(
                "actions_generate_jitconfig",
                Method::POST,
                &path,
                &[],
                Some(body.clone()),
                Retry::Once,
            )
        };
        let answer = match mint().await {
            Err(e) if e.status() == Some(409) => {
                if let Some(stale) = self.get_runner_by_name(name).await? {
                    self.remove_runner(stale.id).await?;
                }
                mint().await?
            }
            other => other?,
        };
        Ok(JitConfig {
            runner_id: answer.runner.id,
            runner_name: answer.runner.name,
            encoded: Secret::new(answer.encoded_jit_config),
        })
    }

    pub async fn get_runner_by_name(
        &self,
        name: &str,
    ) -> Result<Option<RunnerReference>, ScaleSetError> {
        let list: List<RunnerReference> = self
            .call_json(
                "actions_get_runner",
                Method::GET,
                AGENTS,
                &[("agentName", name.to_string())],
                None,
                Retry::Idempotent,
            )
            .await?;
        Ok(list.value.into_iter().find(|r| r.name == name))
    }

    /// The runners registered for a scale set.
    pub async fn list_runners(
        &self,
        scale_set_id: u64,
    ) -> Result<Vec<RunnerReference>, ScaleSetError> {
        let list: List<RunnerReference> = self
            .call_json(
                "actions_list_runners",
                Method::GET,
                AGENTS,
                &[],
                None,
                Retry::Idempotent,
            )
            .await?;
        Ok(list
            .value
            .into_iter()
            .filter(|r| r.runner_scale_set_id == scale_set_id)
            .collect())
    }

    /// Removes a runner registration. One already gone is fine; one running
    /// a job is [`ScaleSetError::RunnerBusy`] (the service refuses, which
    /// is what makes removing an idle runner safe against a job arriving).
    pub async fn remove_runner(&self, runner_id: u64) -> Result<(), ScaleSetError> {
        match self
            .call(
                "actions_remove_runner",
                Method::DELETE,
                &format!("{AGENTS}/{runner_id}"),
                &[],
                None,
                Retry::Idempotent,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) if e.type_key() == Some("JobStillRunningException") => {
                Err(ScaleSetError::RunnerBusy(runner_id))
            }
            Err(e) => Err(e),
        }
    }
}

/// Queue calls answer 401 when the *queue* token expired, and 404 when the
/// session is gone.
fn queue_error(e: ScaleSetError) -> ScaleSetError {
    match e {
        ScaleSetError::Service { status: 401, .. } => ScaleSetError::QueueTokenExpired,
        ScaleSetError::Service {
            status: 404,
            message,
            ..
        } => ScaleSetError::SessionGone(message),
        other => other,
    }
}

fn service_error(endpoint: &'static str, status: StatusCode, bytes: &[u8]) -> ScaleSetError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).ok();
    ScaleSetError::Service {
        endpoint,
        status: status.as_u16(),
        type_key: body
            .as_ref()
            .and_then(|b| b.type_key.clone())
            .unwrap_or_default(),
        message: body
            .and_then(|b| b.message)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string()),
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    endpoint: &'static str,
    bytes: &[u8],
) -> Result<T, ScaleSetError> {
    serde_json::from_slice(bytes).map_err(|e| ScaleSetError::Decode {
        endpoint,
        message: e.to_string(),
    })
}

/// `base` + `path`, with the query pairs and `api-version`.
fn service_url(base: &str, path: &str, query: &[(&str, String)]) -> Result<Url, ScaleSetError> {
    let joined = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let mut url = Url::parse(&joined).map_err(|e| ScaleSetError::Decode {
        endpoint: "actions_service_url",
        message: format!("the Actions service URL is not a URL: {e}"),
    })?;
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
        pairs.append_pair("api-version", API_VERSION);
    }
    Ok(url)
}

/// The `exp` of a JWT, read without verifying it.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp > 0.0).then(|| UNIX_EPOCH + Duration::from_secs(exp as u64))
}

/// The first retry of an idempotent call waits up to this long (a quarter
/// of it at least), each next one twice as long.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(400);
/// The longest wait between retries.
const RETRY_MAX_DELAY: Duration = Duration::from_millis(6400);

/// Waits before retry `attempt` (see [`crate::github::backoff`]).
async fn backoff(attempt: u32) {
    let wait = crate::github::backoff::backoff(RETRY_BASE_DELAY, RETRY_MAX_DELAY, attempt);
    tokio::time::sleep(wait).await;
}

/// reqwest's errors include the URL (and with it the session id); keep
/// only the kind of failure.
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
    use crate::config::Scope;

    #[test]
    fn config_urls_name_an_org_or_a_repository() {
        let org = ConfigUrl::parse("https://github.com/acme/").unwrap();
        assert_eq!(org.scope, Scope::Org("acme".into()));
        assert_eq!(org.url, "https://github.com/acme");
        assert_eq!(org.display_scope(), "acme");
        let repo = ConfigUrl::parse("https://ghes.example/acme/widgets").unwrap();
        assert_eq!(repo.display_scope(), "acme/widgets");
        assert!(ConfigUrl::parse("https://github.com/enterprises/big").is_err());
        assert!(ConfigUrl::parse("https://github.com/").is_err());
        assert!(ConfigUrl::parse("not a url").is_err());
    }

    #[test]
    fn service_urls_carry_the_api_version_and_encode_queries() {
        let url = service_url(
            "http://h:1/_services/actions/",
            "_apis/runtime/runnerscalesets",
            &[("name", "a b&c".into())],
        )
        .unwrap();
        assert_eq!(
            url.path(),
            "/_services/actions/_apis/runtime/runnerscalesets"
        );
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            q,
            [
                ("name".to_string(), "a b&c".to_string()),
                ("api-version".to_string(), API_VERSION.to_string())
            ]
        );
    }

    #[test]
    fn jwt_expiry_is_read_from_the_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"exp": 2000000000, "scope": "acme"}"#);
        let token = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig");
        assert_eq!(
            jwt_expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("no-dots"), None);
        assert_eq!(jwt_expiry("a.b.c"), None);
    }

    #[test]
    fn service_errors_keep_the_exception_type() {
        let e = service_error(
            "actions_remove_runner",
            StatusCode::BAD_REQUEST,
            br#"{"message": "busy", "typeKey": "JobStillRunningException"}"#,
        );
        assert_eq!(e.type_key(), Some("JobStillRunningException"));
        assert_eq!(e.status(), Some(400));
        assert!(!e.is_transient());
        assert!(matches!(
            queue_error(service_error("q", StatusCode::UNAUTHORIZED, b"")),
            ScaleSetError::QueueTokenExpired
        ));
    }
}
