//! The Actions service's runner scale-set API, as actions/scaleset and ARC
//! call it: runner groups, scale sets, message sessions, the message long
//! poll, acks, `acquirejobs`, scale-set JIT configs and agents.
//!
//! All of it lives under `/_services/actions/` (the URL that
//! `POST /actions/runner-registration` hands back) and, except the message
//! queue, is authorised by the admin JWT from that call. The message queue
//! and `acquirejobs` take the session's `messageQueueAccessToken`.
//!
//! Job events are collected per scale set; a poll bundles everything pending
//! into one `RunnerScaleSetJobMessages` message whose `body` is a JSON
//! *string* holding the array of job messages, with `statistics` computed at
//! that moment. A message stays in the queue, and is returned to any poll
//! whose `lastMessageId` is below its id, until it is deleted (acked).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{AdminClaims, random_token};
use crate::config::ScaleSetFlow;
use crate::error::{Error, Result};
use crate::sim::Shared;
use crate::state::{
    Job, JobStatus, QueueMessage, Runner, ScaleSet, ScaleSetSession, Scope, World, lock, now, ts,
};

/// Go's zero time, what the service sends for times that have not happened.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn actions_err(status: StatusCode, type_key: &'static str, message: impl Into<String>) -> Error {
    Error::Actions {
        status,
        type_key,
        message: message.into(),
    }
}

fn scale_set_not_found(id: u64) -> Error {
    actions_err(
        StatusCode::NOT_FOUND,
        "RunnerScaleSetNotFoundException",
        format!("runner scale set {id} not found"),
    )
}

/// Parses a GitHub config URL path (`acme`, `acme/widgets`) into a scope.
pub(crate) fn scope_from_config_url(url: &str) -> Result<Scope> {
    let parsed = url::Url::parse(url.trim_end_matches('/'))
        .map_err(|e| Error::BadRequest(format!("invalid config url {url:?}: {e}")))?;
    let parts: Vec<&str> = parsed
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [org] => Ok(Scope::Org(org.to_string())),
        ["enterprises", _] => Err(Error::NotFound(
            "enterprise scale sets are not simulated".into(),
        )),
        [owner, repo] => Ok(Scope::Repo(owner.to_string(), repo.to_string())),
        _ => Err(Error::BadRequest(format!(
            "config url {url:?} names neither an organisation nor a repository"
        ))),
    }
}

impl Shared {
    fn admin(&self, headers: &HeaderMap) -> Result<AdminClaims> {
        let token = bearer(headers).ok_or_else(|| {
            actions_err(
                StatusCode::UNAUTHORIZED,
                "VssUnauthorizedException",
                "missing bearer token",
            )
        })?;
        self.signer.verify_admin(token)
    }

    /// Assigns a freshly queued job to the first scale set its labels name.
    pub(crate) fn assign_to_scale_set(&self, w: &mut World, job_id: u64) {
        let Some(job) = w.jobs.get(&job_id) else {
            return;
        };
        if job.scale_set_id.is_some() {
            return;
        }
        let wanted: Vec<&String> = job
            .labels
            .iter()
            .filter(|l| !l.eq_ignore_ascii_case("self-hosted"))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let found = w.scale_sets.values().find(|ss| {
            ss.scope.covers(&job.owner, &job.repo)
                && wanted
                    .iter()
                    .all(|l| ss.labels.iter().any(|(_, n)| n.eq_ignore_ascii_case(l)))
        });
        let Some((ss_id, flow)) = found.map(|ss| (ss.id, ss.flow)) else {
            return;
        };
        let j = w.jobs.get_mut(&job_id).expect("job exists");
        j.scale_set_id = Some(ss_id);
        let kind = match flow {
            ScaleSetFlow::Assigned => "JobAssigned",
            ScaleSetFlow::Acquire => "JobAvailable",
        };
        let mut msg = self.job_message(&w.jobs[&job_id], kind);
        if flow == ScaleSetFlow::Acquire {
            msg["acquireJobUrl"] = format!(
                "{}_apis/runtime/runnerscalesets/{ss_id}/acquirejobs",
                self.actions_url()
            )
            .into();
        }
        self.push_scale_set_message(w, ss_id, msg);
    }

    /// The fields every scale-set job message carries.
    pub(crate) fn job_message(&self, job: &Job, kind: &str) -> Value {
        let slug: String = job
            .workflow_name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let assigned = job.scale_set_id.map(|_| ts(job.created_at));
        json!({
            "messageType": kind,
            "runnerRequestId": job.runner_request_id,
            "repositoryName": job.repo,
            "ownerName": job.owner,
            "jobId": job.id.to_string(),
            "jobWorkflowRef": format!("{}/{}/.github/workflows/{slug}.yml@refs/heads/{}", job.owner, job.repo, job.head_branch),
            "jobDisplayName": job.name,
            "workflowRunId": job.run_id,
            "eventName": "push",
            "requestLabels": job.labels,
            "queueTime": ts(job.created_at),
            "scaleSetAssignTime": assigned.unwrap_or_else(|| ZERO_TIME.into()),
            "runnerAssignTime": job.started_at.map(ts).unwrap_or_else(|| ZERO_TIME.into()),
            "finishTime": job.completed_at.map(ts).unwrap_or_else(|| ZERO_TIME.into()),
        })
    }

    /// Adds a job message to a scale set's pending batch and wakes its poller.
    pub(crate) fn push_scale_set_message(&self, w: &mut World, ss_id: u64, msg: Value) {
        if let Some(ss) = w.scale_sets.get_mut(&ss_id) {
            ss.pending.push(msg);
            ss.notify.notify_waiters();
        }
    }

    /// A scale set as the service shows it.
    fn scale_set_json(&self, w: &World, ss: &ScaleSet) -> Value {
        json!({
            "id": ss.id,
            "name": ss.name,
            "runnerGroupId": ss.runner_group_id,
            "runnerGroupName": self.group_name(ss.runner_group_id),
            "labels": ss.labels.iter().map(|(t, n)| json!({"type": t, "name": n})).collect::<Vec<_>>(),
            "RunnerSetting": ss.runner_setting,
            "createdOn": ts(ss.created_on),
            "runnerJitConfigUrl": format!("{}_apis/runtime/runnerscalesets/{}/generatejitconfig", self.actions_url(), ss.id),
            "statistics": statistics(w, ss.id),
        })
    }

    fn session_json(&self, w: &World, ss: &ScaleSet, s: &ScaleSetSession) -> Value {
        json!({
            "sessionId": s.id,
            "ownerName": s.owner_name,
            "runnerScaleSet": self.scale_set_json(w, ss),
            "messageQueueUrl": format!("{}_apis/runtime/runnerscalesets/{}/messages?sessionId={}", self.actions_url(), ss.id, s.id),
            "messageQueueAccessToken": s.queue_token,
            "statistics": statistics(w, ss.id),
        })
    }
}

/// Statistics of a scale set, as in every message and session.
pub(crate) fn statistics(w: &World, ss_id: u64) -> Value {
    let flow = w.scale_sets.get(&ss_id).map(|s| s.flow).unwrap_or_default();
    let mut available = 0;
    let mut acquired = 0;
    let mut assigned = 0;
    let mut running = 0;
    for j in w.jobs.values().filter(|j| j.scale_set_id == Some(ss_id)) {
        match j.status {
            JobStatus::Queued => {
                if flow == ScaleSetFlow::Acquire && !j.scale_set_acquired {
                    available += 1;
                } else {
                    assigned += 1;
                    if j.scale_set_acquired {
                        acquired += 1;
                    }
                }
            }
            JobStatus::InProgress => {
                assigned += 1;
                running += 1;
            }
            _ => {}
        }
    }
    let runners: Vec<&Runner> = w
        .runners
        .values()
        .filter(|r| r.scale_set_id == Some(ss_id))
        .collect();
    let busy = runners.iter().filter(|r| r.job_id.is_some()).count();
    json!({
        "totalAvailableJobs": available,
        "totalAcquiredJobs": acquired,
        "totalAssignedJobs": assigned,
        "totalRunningJobs": running,
        "totalRegisteredRunners": runners.len(),
        "totalBusyRunners": busy,
        "totalIdleRunners": runners.len() - busy,
    })
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// Routes under `/_services/actions`.
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_apis/runtime/runnergroups", get(runner_groups))
        .route("/_apis/runtime/runnergroups/", get(runner_groups))
        .route(
            "/_apis/runtime/runnerscalesets",
            get(list_scale_sets).post(create_scale_set),
        )
        .route(
            "/_apis/runtime/runnerscalesets/{id}",
            get(get_scale_set)
                .patch(update_scale_set)
                .delete(delete_scale_set),
        )
        .route(
            "/_apis/runtime/runnerscalesets/{id}/sessions",
            post(create_session),
        )
        .route(
            "/_apis/runtime/runnerscalesets/{id}/sessions/{sid}",
            patch(refresh_session).delete(delete_session),
        )
        .route(
            "/_apis/runtime/runnerscalesets/{id}/messages",
            get(get_message),
        )
        .route(
            "/_apis/runtime/runnerscalesets/{id}/messages/{mid}",
            axum::routing::delete(delete_message),
        )
        .route(
            "/_apis/runtime/runnerscalesets/{id}/acquirejobs",
            post(acquire_jobs),
        )
        .route(
            "/_apis/runtime/runnerscalesets/{id}/generatejitconfig",
            post(generate_jit),
        )
        .route(
            "/_apis/distributedtask/pools/{pool}/agents",
            get(list_agents),
        )
        .route(
            "/_apis/distributedtask/pools/{pool}/agents/{id}",
            get(get_agent).delete(delete_agent),
        )
}

#[derive(Deserialize)]
struct GroupQuery {
    #[serde(rename = "groupName")]
    group_name: Option<String>,
}

async fn runner_groups(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<GroupQuery>,
) -> Result<Json<Value>> {
    s.admin(&headers)?;
    let groups: Vec<Value> = s
        .cfg
        .runner_groups
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            q.group_name
                .as_deref()
                .is_none_or(|g| g.eq_ignore_ascii_case(n))
        })
        .map(|(i, n)| json!({"id": i + 1, "name": n, "size": 0, "isDefaultGroup": i == 0}))
        .collect();
    Ok(Json(json!({"count": groups.len(), "value": groups})))
}

#[derive(Deserialize)]
struct ScaleSetQuery {
    #[serde(rename = "runnerGroupId")]
    runner_group_id: Option<u64>,
    name: Option<String>,
}

async fn list_scale_sets(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<ScaleSetQuery>,
) -> Result<Json<Value>> {
    let claims = s.admin(&headers)?;
    let scope = scope_from_config_url(&format!("http://x/{}", claims.scope))?;
    let w = lock(&s.world);
    let list: Vec<Value> = w
        .scale_sets
        .values()
        .filter(|ss| ss.scope.same(&scope))
        .filter(|ss| q.runner_group_id.is_none_or(|g| g == ss.runner_group_id))
        .filter(|ss| {
            q.name
                .as_deref()
                .is_none_or(|n| n.eq_ignore_ascii_case(&ss.name))
        })
        .map(|ss| s.scale_set_json(&w, ss))
        .collect();
    Ok(Json(json!({"count": list.len(), "value": list})))
}

async fn create_scale_set(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>> {
    let claims = s.admin(&headers)?;
    let scope = scope_from_config_url(&format!("http://x/{}", claims.scope))?;
    let name = body["name"].as_str().unwrap_or("").trim().to_string();
    if name.is_empty() {
        return Err(actions_err(
            StatusCode::BAD_REQUEST,
            "ArgumentException",
            "name is required",
        ));
    }
    let group = body["runnerGroupId"]
        .as_u64()
        .filter(|g| *g > 0)
        .unwrap_or(1);
    if group as usize > s.cfg.runner_groups.len() {
        return Err(actions_err(
            StatusCode::NOT_FOUND,
            "RunnerGroupNotFoundException",
            format!("runner group {group} not found"),
        ));
    }
    let mut labels: Vec<(String, String)> = body["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| {
                    let n = l["name"].as_str()?.to_string();
                    let t = l["type"]
                        .as_str()
                        .filter(|t| !t.is_empty())
                        .unwrap_or("System");
                    Some((t.to_string(), n))
                })
                .collect()
        })
        .unwrap_or_default();
    if labels.is_empty() {
        labels.push(("System".into(), name.clone()));
    }
    let mut w = lock(&s.world);
    if w.scale_sets.values().any(|ss| {
        ss.scope.same(&scope) && ss.runner_group_id == group && ss.name.eq_ignore_ascii_case(&name)
    }) {
        return Err(actions_err(
            StatusCode::CONFLICT,
            "RunnerScaleSetExistsException",
            format!("a runner scale set named {name} already exists in runner group {group}"),
        ));
    }
    w.ids.scale_set += 1;
    let id = w.ids.scale_set;
    let flow = *lock(&s.default_flow);
    w.scale_sets.insert(
        id,
        ScaleSet {
            id,
            name,
            scope,
            runner_group_id: group,
            labels,
            runner_setting: if body["RunnerSetting"].is_object() {
                body["RunnerSetting"].clone()
            } else {
                json!({})
            },
            created_on: now(),
            flow,
            session: None,
            pending: Vec::new(),
            queue: VecDeque::new(),
            next_message_id: 0,
            notify: Arc::new(tokio::sync::Notify::new()),
        },
    );
    // Jobs already queued for these labels now belong to the new scale set.
    let queued: Vec<u64> = w
        .jobs
        .values()
        .filter(|j| j.status == JobStatus::Queued && j.scale_set_id.is_none() && j.offer.is_none())
        .map(|j| j.id)
        .collect();
    for j in queued {
        s.assign_to_scale_set(&mut w, j);
    }
    Ok(Json(s.scale_set_json(&w, &w.scale_sets[&id])))
}

fn scoped<'w>(w: &'w World, claims: &AdminClaims, id: u64) -> Result<&'w ScaleSet> {
    let scope = scope_from_config_url(&format!("http://x/{}", claims.scope))?;
    w.scale_sets
        .get(&id)
        .filter(|ss| ss.scope.same(&scope))
        .ok_or_else(|| scale_set_not_found(id))
}

async fn get_scale_set(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>> {
    let claims = s.admin(&headers)?;
    let w = lock(&s.world);
    let ss = scoped(&w, &claims, id)?;
    Ok(Json(s.scale_set_json(&w, ss)))
}

async fn update_scale_set(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Result<Json<Value>> {
    let claims = s.admin(&headers)?;
    let mut w = lock(&s.world);
    scoped(&w, &claims, id)?;
    let ss = w.scale_sets.get_mut(&id).expect("checked");
    if let Some(n) = body["name"].as_str().filter(|n| !n.is_empty()) {
        ss.name = n.to_string();
    }
    if let Some(g) = body["runnerGroupId"].as_u64().filter(|g| *g > 0) {
        ss.runner_group_id = g;
    }
    if let Some(labels) = body["labels"].as_array().filter(|a| !a.is_empty()) {
        ss.labels = labels
            .iter()
            .filter_map(|l| {
                Some((
                    l["type"].as_str().unwrap_or("System").to_string(),
                    l["name"].as_str()?.to_string(),
                ))
            })
            .collect();
    }
    if body["RunnerSetting"].is_object() {
        ss.runner_setting = body["RunnerSetting"].clone();
    }
    Ok(Json(s.scale_set_json(&w, &w.scale_sets[&id])))
}

async fn delete_scale_set(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<StatusCode> {
    let claims = s.admin(&headers)?;
    let mut w = lock(&s.world);
    scoped(&w, &claims, id)?;
    if let Some(ss) = w.scale_sets.remove(&id) {
        ss.notify.notify_waiters();
    }
    w.runners
        .retain(|_, r| r.scale_set_id != Some(id) || r.job_id.is_some());
    for j in w.jobs.values_mut() {
        if j.scale_set_id == Some(id)
            && j.status != JobStatus::Completed
            && j.status != JobStatus::InProgress
        {
            j.scale_set_id = None;
        }
    }
    s.jobs_changed.notify_waiters();
    Ok(StatusCode::NO_CONTENT)
}

async fn create_session(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>> {
    let claims = s.admin(&headers)?;
    let mut w = lock(&s.world);
    scoped(&w, &claims, id)?;
    let owner = body
        .as_ref()
        .and_then(|b| b["ownerName"].as_str().map(String::from))
        .unwrap_or_default();
    let lifetime = s.cfg.queue_token_lifetime;
    let ss = w.scale_sets.get_mut(&id).expect("checked");
    // A session nobody polled for `session_idle_timeout` is gone (its listener died).
    let idle = s.cfg.session_idle_timeout;
    if ss
        .session
        .as_ref()
        .is_some_and(|x| x.last_seen + idle <= Instant::now())
    {
        ss.session = None;
    }
    if let Some(existing) = &ss.session {
        return Err(actions_err(
            StatusCode::CONFLICT,
            "TaskAgentSessionConflictException",
            format!(
                "The scale set {} already has an active session for owner {}.",
                ss.name, existing.owner_name
            ),
        ));
    }
    ss.session = Some(ScaleSetSession {
        id: Uuid::new_v4(),
        owner_name: owner,
        queue_token: random_token("mq_", 40),
        token_expires: Instant::now() + lifetime,
        created_at: now(),
        last_max_capacity: None,
        polls: 0,
        last_seen: Instant::now(),
    });
    let ss = &w.scale_sets[&id];
    Ok(Json(s.session_json(
        &w,
        ss,
        ss.session.as_ref().expect("just set"),
    )))
}

async fn refresh_session(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, sid)): Path<(u64, Uuid)>,
) -> Result<Json<Value>> {
    let claims = s.admin(&headers)?;
    let mut w = lock(&s.world);
    scoped(&w, &claims, id)?;
    let lifetime = s.cfg.queue_token_lifetime;
    let ss = w.scale_sets.get_mut(&id).expect("checked");
    let session = ss.session.as_mut().filter(|x| x.id == sid).ok_or_else(|| {
        actions_err(
            StatusCode::NOT_FOUND,
            "TaskAgentSessionExpiredException",
            format!("session {sid} not found"),
        )
    })?;
    session.queue_token = random_token("mq_", 40);
    session.token_expires = Instant::now() + lifetime;
    session.last_seen = Instant::now();
    let ss = &w.scale_sets[&id];
    Ok(Json(s.session_json(
        &w,
        ss,
        ss.session.as_ref().expect("exists"),
    )))
}

async fn delete_session(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, sid)): Path<(u64, Uuid)>,
) -> Result<StatusCode> {
    let claims = s.admin(&headers)?;
    let mut w = lock(&s.world);
    scoped(&w, &claims, id)?;
    let ss = w.scale_sets.get_mut(&id).expect("checked");
    if ss.session.as_ref().is_some_and(|x| x.id == sid) {
        ss.session = None;
        ss.notify.notify_waiters();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(actions_err(
            StatusCode::NOT_FOUND,
            "TaskAgentSessionExpiredException",
            format!("session {sid} not found"),
        ))
    }
}

#[derive(Deserialize)]
struct MessageQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<Uuid>,
    #[serde(rename = "lastMessageId")]
    last_message_id: Option<u64>,
}

/// Checks the queue token of scale set `id`; returns the session id.
fn queue_auth(w: &World, id: u64, headers: &HeaderMap) -> Result<Uuid> {
    let ss = w
        .scale_sets
        .get(&id)
        .ok_or_else(|| scale_set_not_found(id))?;
    let token = bearer(headers).unwrap_or("");
    let session = ss
        .session
        .as_ref()
        .filter(|x| x.queue_token == token)
        .ok_or_else(|| {
            actions_err(
                StatusCode::UNAUTHORIZED,
                "VssUnauthorizedException",
                "message queue token is not valid",
            )
        })?;
    if session.token_expires <= Instant::now() {
        return Err(actions_err(
            StatusCode::UNAUTHORIZED,
            "VssUnauthorizedException",
            "message queue token expired",
        ));
    }
    Ok(session.id)
}

async fn get_message(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<MessageQuery>,
) -> Result<Response> {
    let last = q.last_message_id.unwrap_or(0);
    let capacity = headers
        .get("x-scalesetmaxcapacity")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    let notify = {
        let mut w = lock(&s.world);
        let sid = queue_auth(&w, id, &headers)?;
        if q.session_id.is_some_and(|q| q != sid) {
            return Err(actions_err(
                StatusCode::NOT_FOUND,
                "TaskAgentSessionExpiredException",
                "session not found",
            ));
        }
        let ss = w.scale_sets.get_mut(&id).expect("checked");
        if let Some(sess) = ss.session.as_mut() {
            sess.polls += 1;
            sess.last_seen = Instant::now();
            if capacity.is_some() {
                sess.last_max_capacity = capacity;
            }
        }
        ss.notify.clone()
    };
    let deadline = Instant::now() + s.cfg.poll_timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut w = lock(&s.world);
            queue_auth(&w, id, &headers)?;
            let stats = statistics(&w, id);
            let ss = w.scale_sets.get_mut(&id).expect("checked");
            if !ss.queue.iter().any(|m| m.id > last) && !ss.pending.is_empty() {
                ss.next_message_id += 1;
                let batch = std::mem::take(&mut ss.pending);
                ss.queue.push_back(QueueMessage {
                    id: ss.next_message_id,
                    body: Value::Array(batch).to_string(),
                    statistics: stats,
                });
            }
            if let Some(m) = ss.queue.iter().find(|m| m.id > last) {
                let body = json!({
                    "messageId": m.id,
                    "messageType": "RunnerScaleSetJobMessages",
                    "body": m.body,
                    "statistics": m.statistics,
                });
                return Ok((StatusCode::OK, Json(body)).into_response());
            }
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline.into()) => return Ok(StatusCode::ACCEPTED.into_response()),
            _ = s.shutdown.cancelled() => return Ok(StatusCode::ACCEPTED.into_response()),
        }
    }
}

async fn delete_message(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, mid)): Path<(u64, u64)>,
) -> Result<StatusCode> {
    let mut w = lock(&s.world);
    queue_auth(&w, id, &headers)?;
    let ss = w.scale_sets.get_mut(&id).expect("checked");
    ss.queue.retain(|m| m.id != mid);
    Ok(StatusCode::NO_CONTENT)
}

async fn acquire_jobs(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Json(ids): Json<Vec<u64>>,
) -> Result<Json<Value>> {
    let mut w = lock(&s.world);
    queue_auth(&w, id, &headers)?;
    let mut acquired = Vec::new();
    let mut newly = Vec::new();
    for rid in ids {
        let Some(job) = w
            .jobs
            .values_mut()
            .find(|j| j.runner_request_id == rid && j.scale_set_id == Some(id))
        else {
            continue;
        };
        if job.status != JobStatus::Queued {
            continue;
        }
        if !job.scale_set_acquired {
            job.scale_set_acquired = true;
            newly.push(job.id);
        }
        acquired.push(rid);
    }
    for jid in newly {
        let msg = s.job_message(&w.jobs[&jid], "JobAssigned");
        s.push_scale_set_message(&mut w, id, msg);
    }
    s.jobs_changed.notify_waiters();
    Ok(Json(json!({"count": acquired.len(), "value": acquired})))
}

async fn generate_jit(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Result<Json<Value>> {
    let claims = s.admin(&headers)?;
    let name = body["name"].as_str().unwrap_or("").trim().to_string();
    if name.is_empty() {
        return Err(actions_err(
            StatusCode::BAD_REQUEST,
            "ArgumentException",
            "name is required",
        ));
    }
    let work_folder = body["workFolder"]
        .as_str()
        .filter(|w| !w.is_empty())
        .unwrap_or("_work")
        .to_string();
    let (scope, labels, group) = {
        let w = lock(&s.world);
        let ss = scoped(&w, &claims, id)?;
        (
            ss.scope.clone(),
            ss.labels.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
            ss.runner_group_id,
        )
    };
    let (runner, jit) = s
        .register_runner(crate::runner_protocol::NewRunner {
            name,
            scope,
            labels,
            group_id: group,
            scale_set_id: Some(id),
            work_folder,
        })
        .map_err(|e| match e {
            Error::Conflict(m) => actions_err(StatusCode::CONFLICT, "AgentExistsException", m),
            other => other,
        })?;
    Ok(Json(json!({
        "runner": {"id": runner.id, "name": runner.name, "runnerScaleSetId": id},
        "encodedJITConfig": jit,
    })))
}

fn agent_json(r: &Runner, idle: std::time::Duration) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "runnerScaleSetId": r.scale_set_id.unwrap_or(0),
        "status": if r.online(idle) { "online" } else { "offline" },
        "enabled": true,
        "ephemeral": r.ephemeral,
        "labels": r.labels.iter().map(|l| json!({"name": l, "type": "user"})).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
struct AgentQuery {
    #[serde(rename = "agentName")]
    agent_name: Option<String>,
}

fn agent_visible(claims: &AdminClaims, r: &Runner) -> bool {
    scope_from_config_url(&format!("http://x/{}", claims.scope))
        .map(|s| s.same(&r.scope))
        .unwrap_or(false)
}

async fn list_agents(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<AgentQuery>,
) -> Result<Json<Value>> {
    let claims = s.admin(&headers)?;
    let w = lock(&s.world);
    let list: Vec<Value> = w
        .runners
        .values()
        .filter(|r| agent_visible(&claims, r))
        .filter(|r| {
            q.agent_name
                .as_deref()
                .is_none_or(|n| n.eq_ignore_ascii_case(&r.name))
        })
        .map(|r| agent_json(r, s.cfg.runner_idle_timeout))
        .collect();
    Ok(Json(json!({"count": list.len(), "value": list})))
}

fn agent_not_found(id: u64) -> Error {
    actions_err(
        StatusCode::NOT_FOUND,
        "AgentNotFoundException",
        format!("runner {id} not found"),
    )
}

async fn get_agent(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_pool, id)): Path<(u64, u64)>,
) -> Result<Json<Value>> {
    let claims = s.admin(&headers)?;
    let w = lock(&s.world);
    let r = w
        .runners
        .get(&id)
        .filter(|r| agent_visible(&claims, r))
        .ok_or_else(|| agent_not_found(id))?;
    Ok(Json(agent_json(r, s.cfg.runner_idle_timeout)))
}

async fn delete_agent(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_pool, id)): Path<(u64, u64)>,
) -> Result<StatusCode> {
    let claims = s.admin(&headers)?;
    {
        let w = lock(&s.world);
        w.runners
            .get(&id)
            .filter(|r| agent_visible(&claims, r))
            .ok_or_else(|| agent_not_found(id))?;
    }
    s.delete_runner(id).map_err(|e| match e {
        Error::Validation { message, .. } => {
            actions_err(StatusCode::BAD_REQUEST, "JobStillRunningException", message)
        }
        other => other,
    })?;
    Ok(StatusCode::NO_CONTENT)
}
