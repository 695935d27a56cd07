//! Where a listener delegates runners: the orchestrator, over HTTP from a
//! standalone `berth proxy`, or in-process inside `berth serve`.
//!
//! Both implementations offer the same four operations, and the HTTP one is
//! a thin client of routes whose handlers call the in-process functions
//! ([`super::orchestrator`]), so the two modes cannot drift apart:
//!
//! | operation | HTTP | what it does |
//! |---|---|---|
//! | [`Delegator::delegate`] | `POST /v1/jobs/delegate` | queue one runner (idempotent on its key) |
//! | [`Delegator::runners`] | `GET /v1/scale-sets/{name}/runners` | the scale set's live runners |
//! | [`Delegator::report`] | `POST /v1/scale-sets/{name}/events` | record `JobStarted`/`JobCompleted` |
//! | [`Delegator::retire`] | `POST /v1/scale-sets/{name}/runners/{key}/retire` | remove a runner that has no job |
//!
//! Every route takes a bearer token with the `delegate` (or `admin`) scope.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use url::Url;
use uuid::Uuid;

use super::ScaleSetError;
use super::scaler::Phase;
use crate::context::Context;
use crate::intake::{self, DelegateRequest, IntakeError};
use crate::secrets::LiveSecret;
use crate::store::{JobSource, JobState};

/// A delegation the orchestrator accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delegated {
    /// berth's job id.
    pub id: Uuid,
    /// `false`: the key was known (a retry); nothing new was queued.
    pub created: bool,
}

/// One live runner of a scale set, as the orchestrator has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerSlot {
    /// The delegation key (`github_job_id` of the berth job).
    pub key: i64,
    /// berth's job id.
    pub id: Uuid,
    pub state: JobState,
    pub runner_name: Option<String>,
    pub phase: Phase,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerList {
    pub runners: Vec<RunnerSlot>,
}

/// What a job message says about a runner, for the orchestrator's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Completed,
}

/// `JobStarted` / `JobCompleted`, reduced to what the orchestrator records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEvent {
    pub kind: EventKind,
    pub runner_name: String,
    #[serde(default, deserialize_with = "crate::intake::whole_number_or_null")]
    pub runner_id: Option<i64>,
    #[serde(deserialize_with = "crate::intake::whole_number")]
    pub runner_request_id: i64,
    /// GitHub's job id (opaque, as the service sends it).
    #[serde(default)]
    pub job_id: String,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default, deserialize_with = "crate::intake::whole_number_or_null")]
    pub run_id: Option<i64>,
    #[serde(default)]
    pub workflow: Option<String>,
    #[serde(default)]
    pub job_name: Option<String>,
    /// `completed`: GitHub's conclusion (`success`, `failure`, `cancelled`, …).
    #[serde(default)]
    pub conclusion: Option<String>,
}

/// What became of a retire request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetireOutcome {
    /// Removed (or it was never started).
    Retired,
    /// It has a job, or is being provisioned: not now.
    Busy,
    /// No such live runner.
    Gone,
}

impl RetireOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RetireOutcome::Retired => "retired",
            RetireOutcome::Busy => "busy",
            RetireOutcome::Gone => "gone",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RetireAnswer {
    pub outcome: RetireOutcome,
}

/// The orchestrator, as a listener sees it.
#[async_trait]
pub trait Delegator: Send + Sync + 'static {
    /// `http` or `in-process`, for logs.
    fn kind(&self) -> &'static str;
    /// Queues one runner. Idempotent on `request.github_job_id`.
    async fn delegate(&self, request: &DelegateRequest) -> Result<Delegated, ScaleSetError>;
    /// The scale set's runners that are not finished.
    async fn runners(&self, scale_set: &str) -> Result<Vec<RunnerSlot>, ScaleSetError>;
    /// Records which runner took (or finished) which job.
    async fn report(&self, scale_set: &str, event: &JobEvent) -> Result<(), ScaleSetError>;
    /// Removes the runner with this key if it has no job.
    async fn retire(&self, scale_set: &str, key: i64) -> Result<RetireOutcome, ScaleSetError>;
}

/// Inside `berth serve`: straight to intake and the store.
pub struct InProcessDelegator {
    ctx: Arc<Context>,
}

impl InProcessDelegator {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

fn intake_error(e: IntakeError) -> ScaleSetError {
    let status = match &e {
        IntakeError::Store(_) => 503,
        IntakeError::NoPool(_) => 422,
        IntakeError::Invalid(_) => 400,
        IntakeError::Unauthorized(_) => 401,
    };
    ScaleSetError::Orchestrator {
        endpoint: "delegate",
        status: Some(status),
        message: e.to_string(),
    }
}

#[async_trait]
impl Delegator for InProcessDelegator {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    async fn delegate(&self, request: &DelegateRequest) -> Result<Delegated, ScaleSetError> {
        let (job, created) =
            intake::accept_delegate_from(&self.ctx, request.clone(), JobSource::ScaleSet)
                .await
                .map_err(intake_error)?;
        Ok(Delegated {
            id: job.id,
            created,
        })
    }

    async fn runners(&self, scale_set: &str) -> Result<Vec<RunnerSlot>, ScaleSetError> {
        super::orchestrator::runners(&self.ctx, scale_set).await
    }

    async fn report(&self, scale_set: &str, event: &JobEvent) -> Result<(), ScaleSetError> {
        super::orchestrator::report(&self.ctx, scale_set, event).await
    }

    async fn retire(&self, scale_set: &str, key: i64) -> Result<RetireOutcome, ScaleSetError> {
        super::orchestrator::retire(&self.ctx, scale_set, key).await
    }
}

/// A remote orchestrator, from `berth proxy`.
pub struct HttpDelegator {
    http: reqwest::Client,
    base: Url,
    /// Read at each call: a token rotated in its file or in Vault is used
    /// from the next call on.
    token: LiveSecret,
}

#[derive(Deserialize)]
struct JobId {
    id: Uuid,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
}

impl HttpDelegator {
    /// `url` is the orchestrator's base URL; `token` has the delegate scope.
    pub fn new(url: &str, token: LiveSecret, timeout: Duration) -> Result<Self, ScaleSetError> {
        let base = Url::parse(url.trim_end_matches('/'))
            .map_err(|e| ScaleSetError::Config(format!("orchestrator.url `{url}`: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("berth-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ScaleSetError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, base, token })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("an http(s) URL has a path");
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        url
    }

    async fn send(
        &self,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, bytes::Bytes), ScaleSetError> {
        let response = request
            .bearer_auth(self.token.current().expose())
            .send()
            .await
            .map_err(|e| ScaleSetError::Orchestrator {
                endpoint,
                status: None,
                message: if e.is_timeout() {
                    "timed out".into()
                } else if e.is_connect() {
                    "connection failed".into()
                } else {
                    "request failed".into()
                },
            })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok((status, bytes));
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .ok()
            .and_then(|b| b.error)
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(ScaleSetError::Orchestrator {
            endpoint,
            status: Some(status),
            message,
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        endpoint: &'static str,
        bytes: &[u8],
    ) -> Result<T, ScaleSetError> {
        serde_json::from_slice(bytes).map_err(|e| ScaleSetError::Orchestrator {
            endpoint,
            status: None,
            message: format!("unexpected answer: {e}"),
        })
    }
}

#[async_trait]
impl Delegator for HttpDelegator {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn delegate(&self, request: &DelegateRequest) -> Result<Delegated, ScaleSetError> {
        let endpoint = "delegate";
        let url = self.url(&["v1", "jobs", "delegate"]);
        let (status, bytes) = self
            .send(endpoint, self.http.post(url).json(request))
            .await?;
        let job: JobId = Self::decode(endpoint, &bytes)?;
        Ok(Delegated {
            id: job.id,
            created: status == 202,
        })
    }

    async fn runners(&self, scale_set: &str) -> Result<Vec<RunnerSlot>, ScaleSetError> {
        let endpoint = "scale_set_runners";
        let url = self.url(&["v1", "scale-sets", scale_set, "runners"]);
        let (_, bytes) = self.send(endpoint, self.http.get(url)).await?;
        Ok(Self::decode::<RunnerList>(endpoint, &bytes)?.runners)
    }

    async fn report(&self, scale_set: &str, event: &JobEvent) -> Result<(), ScaleSetError> {
        let url = self.url(&["v1", "scale-sets", scale_set, "events"]);
        self.send("scale_set_events", self.http.post(url).json(event))
            .await
            .map(drop)
    }

    async fn retire(&self, scale_set: &str, key: i64) -> Result<RetireOutcome, ScaleSetError> {
        let endpoint = "scale_set_retire";
        let key = key.to_string();
        let url = self.url(&["v1", "scale-sets", scale_set, "runners", &key, "retire"]);
        let (_, bytes) = self.send(endpoint, self.http.post(url)).await?;
        Ok(Self::decode::<RetireAnswer>(endpoint, &bytes)?.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn urls_escape_the_scale_set_name() {
        let d = HttpDelegator::new(
            "http://orchestrator:8080/base/",
            LiveSecret::new(Secret::new("t")),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            d.url(&["v1", "scale-sets", "a b/c", "runners"]).as_str(),
            "http://orchestrator:8080/base/v1/scale-sets/a%20b%2Fc/runners"
        );
        assert!(
            HttpDelegator::new(
                "nope",
                LiveSecret::new(Secret::new("t")),
                Duration::from_secs(1)
            )
            .is_err()
        );
    }
}
