//! Intake: the two doors into berth's queue — GitHub `workflow_job` webhooks
//! and the delegate API used by `berth proxy` and anything else that can name
//! a job. Both only accept work durably; dispatching happens elsewhere.
//!
//! Intake is idempotent on GitHub's job id: a redelivered webhook, a webhook
//! and a delegate call for the same job, or a retried delegate call all end
//! in one job row, so never in two runners.

pub mod webhook;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::context::Context;
use crate::lifecycle::binding;
use crate::names;
use crate::observability::Metrics;
use crate::store::{GithubStatus, IntakeWrite, Job, JobSource, NewJob, StoreError};
use webhook::{Action, WebhookError, WorkflowJobEvent};

/// What became of a request at intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Accepted {
    /// A new job was queued.
    Queued { id: uuid::Uuid },
    /// The delivery or the job was seen before; nothing changed.
    Duplicate { id: Option<uuid::Uuid> },
    /// A status update for a known job was recorded.
    Recorded { id: uuid::Uuid },
    /// Deliberately not acted on, with the reason.
    Ignored { reason: String },
    /// GitHub's `ping` event.
    Pong,
}

impl Accepted {
    fn metric(&self) -> &'static str {
        match self {
            Accepted::Queued { .. } | Accepted::Recorded { .. } | Accepted::Pong => "accepted",
            Accepted::Duplicate { .. } => "duplicate",
            Accepted::Ignored { .. } => "ignored",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no pool serves this job: {0}")]
    NoPool(String),
    #[error("the store is unavailable: {0}")]
    Store(#[from] StoreError),
}

/// The headers of a webhook delivery berth reads.
#[derive(Debug, Default, Clone)]
pub struct DeliveryHeaders<'a> {
    pub event: Option<&'a str>,
    pub delivery_id: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Verifies, parses and records one webhook delivery.
pub async fn accept_webhook(
    ctx: &Arc<Context>,
    headers: DeliveryHeaders<'_>,
    body: &[u8],
) -> Result<Accepted, IntakeError> {
    let result = accept_webhook_inner(ctx, &headers, body).await;
    let outcome = match &result {
        Ok(accepted) => accepted.metric(),
        Err(IntakeError::Unauthorized(_)) => "unauthorized",
        Err(IntakeError::Invalid(_) | IntakeError::NoPool(_)) => "invalid",
        Err(IntakeError::Store(_)) => "error",
    };
    ctx.metrics
        .webhook_deliveries
        .get_or_create(&Metrics::outcome(outcome))
        .inc();
    result
}

async fn accept_webhook_inner(
    ctx: &Arc<Context>,
    headers: &DeliveryHeaders<'_>,
    body: &[u8],
) -> Result<Accepted, IntakeError> {
    let secret = ctx.webhook_secret.as_ref().ok_or_else(|| {
        IntakeError::Unauthorized(
            "webhooks are not accepted: no webhook secret is configured".into(),
        )
    })?;
    verify_with_any(&secret.accepted(), body, headers.signature).map_err(|e| match e {
        WebhookError::Malformed(m) => IntakeError::Invalid(m),
        other => IntakeError::Unauthorized(other.to_string()),
    })?;
    match headers.event {
        Some("ping") => return Ok(Accepted::Pong),
        Some("workflow_job") => {}
        Some(other) => {
            return Ok(Accepted::Ignored {
                reason: format!("berth acts on workflow_job events, not `{other}`"),
            });
        }
        None => return Err(IntakeError::Invalid("missing X-GitHub-Event header".into())),
    }
    let Some(event) =
        webhook::parse_workflow_job(body).map_err(|e| IntakeError::Invalid(e.to_string()))?
    else {
        return Ok(Accepted::Ignored {
            reason: "workflow_job action berth does not act on".into(),
        });
    };
    let delivery = headers.delivery_id.filter(|d| !d.is_empty());
    // Not covered by the signature: bounded before anything is stored.
    if let Some(id) = delivery {
        names::check_delivery_id(id).map_err(IntakeError::Invalid)?;
    }
    let (accepted, delivery_new) = apply_event(ctx, &event, delivery).await?;
    // Processing is idempotent; the delivery log only tells a redelivery apart.
    if let Some(delivery) = delivery {
        let new = match delivery_new {
            Some(new) => new,
            None => ctx.store.delivery_record(delivery, ctx.store.now()).await?,
        };
        if !new {
            let id = match &accepted {
                Accepted::Queued { id } | Accepted::Recorded { id } => Some(*id),
                Accepted::Duplicate { id } => *id,
                _ => None,
            };
            return Ok(Accepted::Duplicate { id });
        }
    }
    Ok(accepted)
}

/// Checks the signature against each accepted secret: the current one,
/// then, during a rotation's overlap, the previous one. The error is the
/// current secret's.
fn verify_with_any(
    secrets: &[crate::config::Secret],
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), WebhookError> {
    let mut first_error = None;
    for (i, secret) in secrets.iter().enumerate() {
        match webhook::verify_signature(secret.expose().as_bytes(), body, signature) {
            Ok(()) => {
                if i > 0 {
                    tracing::debug!(
                        "webhook signed with the previous webhook secret (rotation overlap)"
                    );
                }
                return Ok(());
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(WebhookError::BadSignature))
}

/// Applies what one `workflow_job` event says, in a span carrying the
/// job's correlation fields. A `queued` event records `delivery` in the
/// same commit as the job and says whether it was new; otherwise the
/// second value is `None` and the caller records the delivery.
async fn apply_event(
    ctx: &Arc<Context>,
    event: &WorkflowJobEvent,
    delivery: Option<&str>,
) -> Result<(Accepted, Option<bool>), IntakeError> {
    let span = tracing::info_span!(
        "webhook",
        repository = %event.repository,
        workflow = event.workflow.as_deref().unwrap_or(""),
        run_id = event.run_id,
        job_id = event.job_id,
        action = ?event.action,
    );
    apply_event_inner(ctx, event, delivery)
        .instrument(span)
        .await
}

async fn apply_event_inner(
    ctx: &Arc<Context>,
    event: &WorkflowJobEvent,
    delivery: Option<&str>,
) -> Result<(Accepted, Option<bool>), IntakeError> {
    let accepted = match event.action {
        Action::Queued => {
            return queue_from_event(ctx, event, GithubStatus::Queued, delivery).await;
        }
        Action::Waiting => record(ctx, event, GithubStatus::Waiting).await,
        Action::InProgress => {
            // A job first heard of here (its `queued` delivery was lost) is
            // queued now, so a berth runner that took it can be bound to it.
            if event
                .runner_name
                .as_deref()
                .is_some_and(|r| r.starts_with("berth-"))
            {
                queue_from_event(ctx, event, GithubStatus::Queued, None).await?;
            }
            let accepted = record(ctx, event, GithubStatus::InProgress).await?;
            if let Some(runner) = &event.runner_name {
                binding::runner_took_job(ctx, event.job_id, runner).await;
            }
            Ok(accepted)
        }
        Action::Completed => {
            let accepted = record(ctx, event, GithubStatus::Completed).await?;
            if let Some(runner) = &event.runner_name {
                binding::runner_took_job(ctx, event.job_id, runner).await;
            }
            if let Some(job) = ctx.store.job_get_by_github_id(event.job_id).await?
                && job.scale_set.is_none()
            {
                binding::job_completed(ctx, &job).await;
            }
            Ok(accepted)
        }
    };
    Ok((accepted?, None))
}

/// Queues the job an event names, recording `delivery` in the same commit
/// (then the second value says whether the delivery was new).
async fn queue_from_event(
    ctx: &Arc<Context>,
    event: &WorkflowJobEvent,
    status: GithubStatus,
    delivery: Option<&str>,
) -> Result<(Accepted, Option<bool>), IntakeError> {
    if let Some(set) = scale_set_serving(ctx, event) {
        let reason = format!("scale set `{set}` serves this job");
        tracing::info!(reason = %reason, "job ignored");
        return Ok((Accepted::Ignored { reason }, None));
    }
    let Some(pool) = ctx.config.pool_for(&event.repository, &event.labels) else {
        let reason = format!(
            "no pool serves labels {:?} of repository {}",
            event.labels, event.repository
        );
        tracing::info!(reason = %reason, "job ignored");
        return Ok((Accepted::Ignored { reason }, None));
    };
    let new_job = NewJob {
        github_job_id: event.job_id,
        run_id: event.run_id,
        repository: event.repository.clone(),
        workflow: event.workflow.clone(),
        job_name: event.job_name.clone(),
        labels: event.labels.clone(),
        pool: pool.name.clone(),
        source: JobSource::Webhook,
        scale_set: None,
        github_status: Some(status),
        timeout_secs: Some(pool.job_timeout.as_secs() as i64),
    };
    // One write for both, so a webhook costs one (group) commit.
    let written = ctx
        .store
        .intake_commit(IntakeWrite {
            job: Some(new_job),
            delivery_id: delivery.map(str::to_owned),
        })
        .await?;
    let Some((job, inserted)) = written.job else {
        return Err(IntakeError::Store(StoreError::Query {
            op: "job_insert",
            source: sqlx::Error::RowNotFound,
        }));
    };
    let accepted = if inserted {
        crate::failpoint::hit("after_accept");
        crate::job_span!(job).in_scope(|| tracing::info!("job queued"));
        ctx.wake_dispatcher();
        Accepted::Queued { id: job.id }
    } else {
        Accepted::Duplicate { id: Some(job.id) }
    };
    Ok((accepted, written.delivery_new))
}

/// The scale set GitHub assigns this job to, if it is one of berth's: a
/// job whose labels (`self-hosted` aside) are all labels of a scale set
/// covering its repository. Its runners come from the scale set, not from
/// webhooks.
fn scale_set_serving<'c>(ctx: &'c Context, event: &WorkflowJobEvent) -> Option<&'c str> {
    let wanted: Vec<&String> = event
        .labels
        .iter()
        .filter(|l| !l.eq_ignore_ascii_case("self-hosted"))
        .collect();
    if wanted.is_empty() {
        return None;
    }
    ctx.config
        .scale_sets
        .iter()
        .find(|set| {
            let covers = crate::config::ConfigUrl::parse(&set.github_config_url)
                .is_ok_and(|c| c.scope.covers(&event.repository));
            let labels = crate::scaleset::registry::labels_of(set);
            covers
                && wanted
                    .iter()
                    .all(|w| labels.iter().any(|l| l.eq_ignore_ascii_case(w)))
        })
        .map(|set| set.name.as_str())
}

async fn record(
    ctx: &Arc<Context>,
    event: &WorkflowJobEvent,
    status: GithubStatus,
) -> Result<Accepted, IntakeError> {
    // A scale-set runner's key is a runner request id, not a GitHub job id:
    // a webhook never speaks of it (JobStarted/JobCompleted do).
    let before = ctx.store.job_get_by_github_id(event.job_id).await?;
    if before.as_ref().is_some_and(|job| job.scale_set.is_some()) {
        return Ok(Accepted::Ignored {
            reason: "the id belongs to a scale-set runner, which webhooks do not track".into(),
        });
    }
    // Whether GitHub's conclusion is new, so that each job is counted once
    // in `berth_jobs_concluded_total` however often the event arrives. (The
    // same read as above: one round trip to the store, not two.)
    let concluded_before = if status == GithubStatus::Completed {
        before.map(|j| j.github_conclusion.is_some())
    } else {
        None
    };
    let changed = ctx
        .store
        .job_record_github_status(
            event.job_id,
            status,
            event.conclusion.as_deref(),
            event.runner_name.as_deref(),
            event.runner_id,
        )
        .await?;
    let job = ctx.store.job_get_by_github_id(event.job_id).await?;
    if let (Some(false), Some(job)) = (concluded_before, &job)
        && let Some(conclusion) = &job.github_conclusion
    {
        ctx.metrics.job_concluded(&job.pool, conclusion);
    }
    match job {
        Some(job) if changed => Ok(Accepted::Recorded { id: job.id }),
        Some(job) => Ok(Accepted::Duplicate { id: Some(job.id) }),
        None => Ok(Accepted::Ignored {
            reason: "a job berth does not track".into(),
        }),
    }
}

/// The body of `POST /v1/jobs/delegate`.
///
/// For a job named by GitHub (webhook-style), `repository`, `run_id` and
/// `labels` are required and `github_job_id` is the job's id. For a runner
/// of a scale set (`scale_set` set; what `berth proxy` sends), the key
/// `github_job_id` is the assigned job's `runnerRequestId` or a buffer key
/// (see `crate::scaleset`), and the rest may be empty: a runner made for the
/// buffer belongs to no job yet. The orchestrator's own `[[scale_set]]`
/// entry decides the pool and the labels.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DelegateRequest {
    /// `owner/name`.
    #[serde(default)]
    pub repository: String,
    /// The idempotency key: GitHub's job id, or for a scale set the runner
    /// request id or a buffer key.
    #[serde(deserialize_with = "whole_number")]
    pub github_job_id: i64,
    #[serde(default, deserialize_with = "whole_number")]
    pub run_id: i64,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub workflow: Option<String>,
    #[serde(default)]
    pub job_name: Option<String>,
    /// The pool to run in; chosen from the labels when absent (for a scale
    /// set: its configured pool, which this must match if given).
    #[serde(default)]
    pub pool: Option<String>,
    /// The scale set whose runner this is: the orchestrator mints it
    /// through the Actions service for that scale set.
    #[serde(default)]
    pub scale_set: Option<String>,
}

/// An integer that JSON may also write as a whole float (`42.0`): JSON
/// Schema's `integer`, which the API description promises.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        // i64::MAX as f64 rounds up to 2^63, which does not fit: hence `<`.
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(D::Error::custom(format!("{n} is not a 64-bit integer"))),
    }
}

/// [`whole_number`], or `null`.
pub(crate) fn whole_number_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] i64);
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
}

impl DelegateRequest {
    fn validate(&self) -> Result<(), IntakeError> {
        let bad = |m: &str| Err(IntakeError::Invalid(m.to_string()));
        if let Some(set) = &self.scale_set {
            // A scale-set runner: only the key and the scale set are needed.
            if set.chars().all(names::is_blank) {
                return bad("`scale_set` must not be blank");
            }
            if self.run_id < 0 {
                return bad("`run_id` must not be negative");
            }
            let repository = if self.repository.is_empty() {
                Ok(())
            } else if self.repository.contains('/') {
                names::split_repository(&self.repository).map(drop)
            } else {
                names::check_owner(&self.repository)
            };
            if let Err(e) = repository {
                return bad(&format!(
                    "`repository` must be `owner/name`, `owner` or empty: {e}"
                ));
            }
        } else {
            if let Err(e) = names::split_repository(&self.repository) {
                return bad(&format!("`repository` must be `owner/name`: {e}"));
            }
            if self.run_id <= 0 {
                return bad("`run_id` must be a positive integer");
            }
            if self.labels.is_empty() {
                return bad("`labels` must hold 1 to 100 labels");
            }
        }
        if self.github_job_id <= 0 {
            return bad("`github_job_id` must be a positive integer");
        }
        if let Err(e) = names::check_labels(&self.labels) {
            return bad(&format!("`labels`: {e}"));
        }
        if let Some(pool) = &self.pool
            && pool.chars().count() > names::MAX_LABEL_CHARS
        {
            return bad("`pool` is not the name of a pool");
        }
        if let Some(set) = &self.scale_set
            && set.chars().count() > names::MAX_LABEL_CHARS
        {
            return bad("`scale_set` is not the name of a scale set");
        }
        // The store keeps these as text, which PostgreSQL refuses with NUL.
        let texts = [
            Some(self.repository.as_str()),
            self.workflow.as_deref(),
            self.job_name.as_deref(),
            self.pool.as_deref(),
            self.scale_set.as_deref(),
        ];
        if texts
            .into_iter()
            .flatten()
            .chain(self.labels.iter().map(String::as_str))
            .any(|t| t.contains('\0'))
        {
            return bad("text fields must not contain NUL characters");
        }
        Ok(())
    }
}

/// Accepts a delegated job. Returns the job and whether it is new.
pub async fn accept_delegate(
    ctx: &Arc<Context>,
    request: DelegateRequest,
) -> Result<(Job, bool), IntakeError> {
    accept_delegate_from(ctx, request, JobSource::Delegate).await
}

/// [`accept_delegate`], recording where the job came from (a listener
/// inside `berth serve` delegates as [`JobSource::ScaleSet`]).
pub async fn accept_delegate_from(
    ctx: &Arc<Context>,
    request: DelegateRequest,
    source: JobSource,
) -> Result<(Job, bool), IntakeError> {
    let result = accept_delegate_inner(ctx, request, source).await;
    let outcome = match &result {
        Ok((_, true)) => "accepted",
        Ok((_, false)) => "duplicate",
        Err(IntakeError::Store(_)) => "error",
        Err(_) => "invalid",
    };
    ctx.metrics
        .delegation_requests
        .get_or_create(&Metrics::outcome(outcome))
        .inc();
    result
}

async fn accept_delegate_inner(
    ctx: &Arc<Context>,
    mut request: DelegateRequest,
    source: JobSource,
) -> Result<(Job, bool), IntakeError> {
    request.validate()?;
    request.workflow = request.workflow.map(names::bounded_text);
    request.job_name = request.job_name.map(names::bounded_text);
    if let Some(name) = request.scale_set.clone() {
        let set = ctx
            .config
            .scale_sets
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                IntakeError::NoPool(format!(
                    "no scale set named `{name}` is configured on this orchestrator"
                ))
            })?;
        if request.pool.as_deref().is_some_and(|p| p != set.pool) {
            return Err(IntakeError::Invalid(format!(
                "scale set `{name}` runs in pool `{}` here, not `{}`",
                set.pool,
                request.pool.as_deref().unwrap_or_default()
            )));
        }
        request.pool = Some(set.pool.clone());
        if request.repository.is_empty() {
            request.repository = crate::config::ConfigUrl::parse(&set.github_config_url)
                .map(|c| c.display_scope())
                .unwrap_or_default();
        }
        if request.labels.is_empty() {
            request.labels = crate::scaleset::registry::labels_of(set);
        }
    }
    let pool = match &request.pool {
        Some(name) => {
            let pool = ctx
                .config
                .pool(name)
                .ok_or_else(|| IntakeError::NoPool(format!("no pool named `{name}`")))?;
            // A scale set's runners are the scale set's business; a job
            // names a pool only for a repository the pool serves.
            if request.scale_set.is_none() && !pool.scope.covers(&request.repository) {
                return Err(IntakeError::Invalid(format!(
                    "pool `{name}` serves {}, which does not cover repository {}",
                    pool.scope, request.repository
                )));
            }
            pool
        }
        None => ctx
            .config
            .pool_for(&request.repository, &request.labels)
            .ok_or_else(|| {
                IntakeError::NoPool(format!(
                    "no pool serves labels {:?} of repository {}",
                    request.labels, request.repository
                ))
            })?,
    };
    let (job, inserted) = ctx
        .store
        .job_insert(NewJob {
            github_job_id: request.github_job_id,
            run_id: request.run_id,
            repository: request.repository,
            workflow: request.workflow,
            job_name: request.job_name,
            labels: request.labels,
            pool: pool.name.clone(),
            source,
            scale_set: request.scale_set,
            github_status: None,
            timeout_secs: Some(pool.job_timeout.as_secs() as i64),
        })
        .await?;
    if inserted {
        crate::job_span!(job).in_scope(|| tracing::info!("delegated job queued"));
        ctx.wake_dispatcher();
    }
    Ok((job, inserted))
}
