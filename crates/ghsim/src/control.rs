//! The control API: how tests and `berth demo` drive the simulated GitHub —
//! queue jobs, read jobs/logs/runners/deliveries/scale sets, cancel, inject
//! faults, redeliver webhooks.
//!
//! Every operation is a method on [`SimHandle`] (usable in-process from
//! Rust); the `/_sim/...` HTTP routes are thin wrappers over those methods,
//! for the `ghsim` binary and other languages.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{AccountKind, ScaleSetFlow, WebhookTarget};
use crate::engine::JobSpec;
use crate::error::{Error, Result};
use crate::faults::FaultRule;
use crate::runner_protocol::NewRunner;
use crate::scaleset::{scope_from_config_url, statistics};
use crate::sim::{Shared, SimHandle};
use crate::state::{Delivery, Job, Runner, StepState, lock, ts};
use crate::webhooks::WebhookFaultRule;

/// A job as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// GitHub job id.
    pub id: u64,
    /// Workflow run id.
    pub run_id: u64,
    /// `owner/name`.
    pub repository: String,
    /// Job name.
    pub name: String,
    /// Workflow name.
    pub workflow_name: String,
    /// `runs-on` labels.
    pub labels: Vec<String>,
    /// Priority (higher first).
    pub priority: i64,
    /// `waiting`, `queued`, `in_progress`, `completed`.
    pub status: String,
    /// `success`, `failure`, `cancelled` once completed.
    pub conclusion: Option<String>,
    /// Runner that took it.
    pub runner_id: Option<u64>,
    /// Runner that took it.
    pub runner_name: Option<String>,
    /// Its runner group.
    pub runner_group_id: Option<u64>,
    /// Its runner group.
    pub runner_group_name: Option<String>,
    /// Scale set it is assigned to.
    pub scale_set_id: Option<u64>,
    /// Id used by runners and scale-set messages.
    pub runner_request_id: u64,
    /// Runner it is currently offered to (not yet acquired).
    pub offered_to: Option<u64>,
    /// How many times it was offered to a runner.
    pub offers: u32,
    /// Cancellation was requested.
    pub cancel_requested: bool,
    /// Deployment environment.
    pub environment: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub completed_at: Option<String>,
    /// Steps with status, conclusion and output.
    pub steps: Vec<StepState>,
}

impl JobView {
    pub(crate) fn of(j: &Job) -> Self {
        JobView {
            id: j.id,
            run_id: j.run_id,
            repository: format!("{}/{}", j.owner, j.repo),
            name: j.name.clone(),
            workflow_name: j.workflow_name.clone(),
            labels: j.labels.clone(),
            priority: j.priority,
            status: j.status.as_str().into(),
            conclusion: j.conclusion.clone(),
            runner_id: j.runner_id,
            runner_name: j.runner_name.clone(),
            runner_group_id: j.runner_group_id,
            runner_group_name: j.runner_group_name.clone(),
            scale_set_id: j.scale_set_id,
            runner_request_id: j.runner_request_id,
            offered_to: j.offer.as_ref().map(|o| o.runner_id),
            offers: j.offers,
            cancel_requested: j.cancel_requested,
            environment: j.environment.clone(),
            created_at: ts(j.created_at),
            started_at: j.started_at.map(ts),
            completed_at: j.completed_at.map(ts),
            steps: j.step_states.clone(),
        }
    }
}

/// A runner as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerView {
    /// Runner id.
    pub id: u64,
    /// Runner name.
    pub name: String,
    /// `org:acme` or `repo:acme/widgets`.
    pub scope: String,
    /// Labels.
    pub labels: Vec<String>,
    /// `online` while it has a broker session.
    pub status: String,
    /// Holds a job.
    pub busy: bool,
    /// JIT runners are ephemeral.
    pub ephemeral: bool,
    /// Scale set it belongs to.
    pub scale_set_id: Option<u64>,
    /// Runner group.
    pub runner_group_id: u64,
    /// The job it holds.
    pub job_id: Option<u64>,
    /// Version reported when it connected.
    pub version: Option<String>,
    /// Jobs completed.
    pub jobs_done: u32,
    /// RFC 3339.
    pub created_at: String,
}

impl RunnerView {
    pub(crate) fn of(r: &Runner, idle: Duration) -> Self {
        RunnerView {
            id: r.id,
            name: r.name.clone(),
            scope: r.scope.label(),
            labels: r.labels.clone(),
            status: if r.online(idle) { "online" } else { "offline" }.into(),
            busy: r.job_id.is_some(),
            ephemeral: r.ephemeral,
            scale_set_id: r.scale_set_id,
            runner_group_id: r.group_id,
            job_id: r.job_id,
            version: r.version.clone(),
            jobs_done: r.jobs_done,
            created_at: ts(r.created_at),
        }
    }
}

/// A scale set with its session and queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleSetView {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// `org:acme` / `repo:acme/widgets`.
    pub scope: String,
    /// Runner group.
    pub runner_group_id: u64,
    /// Label names.
    pub labels: Vec<String>,
    /// `assigned` or `acquire`.
    pub flow: ScaleSetFlow,
    /// Current statistics.
    pub statistics: Value,
    /// The message session, if one is open.
    pub session: Option<SessionView>,
    /// Job messages not yet bundled into a message.
    pub pending_job_messages: usize,
    /// Ids of messages not yet acked.
    pub unacked_message_ids: Vec<u64>,
}

/// A scale-set session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// `ownerName` given at creation.
    pub owner_name: String,
    /// Last `X-ScaleSetMaxCapacity` seen.
    pub last_max_capacity: Option<u32>,
    /// Message polls so far.
    pub polls: u64,
    /// The queue token has expired.
    pub token_expired: bool,
}

/// One installation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallationInfo {
    /// Installation id.
    pub id: u64,
    /// Account login.
    pub account: String,
    /// `Organization` / `User`.
    pub kind: AccountKind,
}

/// What `ghsim` prints and `GET /_sim/info` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimInfo {
    /// Listen URL.
    pub base_url: String,
    /// REST root.
    pub api_url: String,
    /// URL handed to runners.
    pub public_url: String,
    /// Actions service root.
    pub actions_url: String,
    /// App id.
    pub app_id: u64,
    /// App client id.
    pub client_id: String,
    /// Installations.
    pub installations: Vec<InstallationInfo>,
}

/// `POST /_sim/runners/jit` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JitRequest {
    /// `acme` (org) or `acme/widgets` (repo).
    pub scope: String,
    /// Runner name.
    pub name: String,
    /// Labels.
    pub labels: Vec<String>,
    /// Work folder (default `_work`).
    #[serde(default)]
    pub work_folder: Option<String>,
}

impl SimHandle {
    /// Facts about this simulator.
    pub fn info(&self) -> SimInfo {
        info(&self.sim)
    }

    /// Adds a private key to the App (PKCS#1 or PKCS#8 PEM): JWTs signed
    /// with it are accepted from now on, as on GitHub, where an App may have
    /// several keys while one is rotated.
    pub fn add_app_key(&self, pem: &str) -> Result<()> {
        let key = crate::auth::KeyPair::from_pem(pem)?;
        lock(&self.sim.app_keys).push(Arc::new(key));
        Ok(())
    }

    /// Deletes a private key of the App: JWTs signed with it are refused
    /// (401) from now on. Installation tokens minted before stay valid.
    pub fn remove_app_key(&self, pem: &str) -> Result<()> {
        let key = crate::auth::KeyPair::from_pem(pem)?;
        let mut keys = lock(&self.sim.app_keys);
        let before = keys.len();
        keys.retain(|k| k.private_pem != key.private_pem);
        if keys.len() == before {
            return Err(Error::Config("the App has no such private key".into()));
        }
        Ok(())
    }

    /// Queues a job (see [`JobSpec`]).
    pub fn queue_job(&self, spec: JobSpec) -> Result<JobView> {
        Ok(JobView::of(&self.sim.queue_job(spec)?))
    }

    /// One job.
    pub fn job(&self, id: u64) -> Option<JobView> {
        lock(&self.sim.world).jobs.get(&id).map(JobView::of)
    }

    /// All jobs, oldest first.
    pub fn jobs(&self) -> Vec<JobView> {
        lock(&self.sim.world)
            .jobs
            .values()
            .map(JobView::of)
            .collect()
    }

    /// The job's log: every output line, in order.
    pub fn job_log(&self, id: u64) -> Option<String> {
        lock(&self.sim.world).jobs.get(&id).map(|j| {
            let mut s = j.log.join("\n");
            if !s.is_empty() {
                s.push('\n');
            }
            s
        })
    }

    /// Cancels a job (running ones are told to stop).
    pub fn cancel_job(&self, id: u64) -> Result<JobView> {
        Ok(JobView::of(&self.sim.cancel_job(id)?))
    }

    /// Approves a `waiting` job.
    pub fn approve_job(&self, id: u64) -> Result<JobView> {
        Ok(JobView::of(&self.sim.approve_job(id)?))
    }

    /// Waits until the job is completed (or `timeout`); returns its last state.
    pub async fn wait_job_completed(&self, id: u64, timeout: Duration) -> Option<JobView> {
        self.wait_job(id, timeout, |j| j.status == "completed")
            .await
    }

    /// Waits until `pred` holds for the job (or `timeout`); returns its last state.
    pub async fn wait_job(
        &self,
        id: u64,
        timeout: Duration,
        pred: impl Fn(&JobView) -> bool,
    ) -> Option<JobView> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let j = self.job(id)?;
            if pred(&j) || tokio::time::Instant::now() >= deadline {
                return Some(j);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every registered runner.
    pub fn runners(&self) -> Vec<RunnerView> {
        lock(&self.sim.world)
            .runners
            .values()
            .map(|r| RunnerView::of(r, self.sim.cfg.runner_idle_timeout))
            .collect()
    }

    /// Deletes a runner registration.
    pub fn delete_runner(&self, id: u64) -> Result<()> {
        self.sim.delete_runner(id)
    }

    /// Registers a JIT runner directly (no REST round trip); returns it and its encoded JIT config.
    pub fn create_jit_runner(&self, req: JitRequest) -> Result<(RunnerView, String)> {
        let scope = scope_from_config_url(&format!("http://x/{}", req.scope))?;
        let (r, jit) = self.sim.register_runner(NewRunner {
            name: req.name,
            scope,
            labels: req.labels,
            group_id: 1,
            scale_set_id: None,
            work_folder: req.work_folder.unwrap_or_else(|| "_work".into()),
        })?;
        Ok((RunnerView::of(&r, self.sim.cfg.runner_idle_timeout), jit))
    }

    /// Every credential the simulator handed out: encoded JIT configs,
    /// installation tokens, registration tokens and runner access tokens.
    /// Tests search logs, responses and files for them.
    pub fn issued_secrets(&self) -> Vec<String> {
        let w = lock(&self.sim.world);
        let mut secrets = w.issued_jit_configs.clone();
        secrets.extend(w.install_tokens.keys().cloned());
        secrets.extend(w.reg_tokens.keys().cloned());
        secrets.extend(w.runner_tokens.keys().cloned());
        secrets
    }

    /// When the runner `name` first opened a broker session (its process
    /// was up), if it did; remembered after the runner is gone.
    pub fn runner_session_at(&self, name: &str) -> Option<time::OffsetDateTime> {
        lock(&self.sim.world).runner_sessions.get(name).copied()
    }

    /// When the runner `name` first asked for a token (its process was
    /// running), if it did; remembered after the runner is gone.
    pub fn runner_first_contact_at(&self, name: &str) -> Option<time::OffsetDateTime> {
        lock(&self.sim.world)
            .runner_first_contacts
            .get(name)
            .copied()
    }

    /// When the runner `name`'s process started, as the stand-in reported
    /// it with its first request; remembered after the runner is gone.
    pub fn runner_process_started_at(&self, name: &str) -> Option<time::OffsetDateTime> {
        lock(&self.sim.world)
            .runner_process_starts
            .get(name)
            .copied()
    }

    /// Every recorded webhook delivery, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.sim.world).deliveries.clone()
    }

    /// Waits until `pred` holds for the deliveries (or `timeout`).
    pub async fn wait_deliveries(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Delivery]) -> bool,
    ) -> bool {
        crate::webhooks::wait_deliveries(&self.sim, timeout, pred).await
    }

    /// Re-sends a delivery (same GUID and body).
    pub fn redeliver(&self, guid: &str) -> Result<()> {
        self.sim.redeliver(guid).ok_or_else(Error::not_found)
    }

    /// Sets (or clears) the webhook target.
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        *lock(&self.sim.webhook_target) = target;
    }

    /// Adds a delivery fault rule.
    pub fn add_webhook_fault(&self, rule: WebhookFaultRule) {
        lock(&self.sim.webhook_faults).push(rule);
    }

    /// Removes every delivery fault rule.
    pub fn clear_webhook_faults(&self) {
        lock(&self.sim.webhook_faults).clear();
    }

    /// Adds a request fault rule.
    pub fn add_fault(&self, rule: FaultRule) {
        lock(&self.sim.faults).push(rule);
    }

    /// Removes every request fault rule.
    pub fn clear_faults(&self) {
        lock(&self.sim.faults).clear();
    }

    /// Active request fault rules.
    pub fn faults(&self) -> Vec<FaultRule> {
        lock(&self.sim.faults).clone()
    }

    /// Requests answered by a fault so far.
    pub fn fault_hits(&self) -> u64 {
        lock(&self.sim.world).fault_hits
    }

    /// Every scale set.
    pub fn scale_sets(&self) -> Vec<ScaleSetView> {
        scale_sets(&self.sim)
    }

    /// Switches one scale set's flow.
    pub fn set_scale_set_flow(&self, id: u64, flow: ScaleSetFlow) -> Result<()> {
        let mut w = lock(&self.sim.world);
        let ss = w.scale_sets.get_mut(&id).ok_or_else(Error::not_found)?;
        ss.flow = flow;
        Ok(())
    }

    /// Flow of scale sets created from now on.
    pub fn set_default_scale_set_flow(&self, flow: ScaleSetFlow) {
        *lock(&self.sim.default_flow) = flow;
    }

    /// Mints an installation access token without a JWT.
    pub fn installation_token(&self, installation_id: u64) -> Result<String> {
        Ok(self.sim.mint_installation_token(installation_id)?.0)
    }
}

fn info(s: &Shared) -> SimInfo {
    SimInfo {
        base_url: s.base_url(),
        api_url: s.api_url(),
        public_url: s.public_url(),
        actions_url: s.actions_url(),
        app_id: s.cfg.app_id,
        client_id: s.cfg.client_id.clone(),
        installations: s
            .cfg
            .accounts
            .iter()
            .map(|a| InstallationInfo {
                id: a.installation_id,
                account: a.login.clone(),
                kind: a.kind,
            })
            .collect(),
    }
}

fn scale_sets(s: &Shared) -> Vec<ScaleSetView> {
    let w = lock(&s.world);
    w.scale_sets
        .values()
        .map(|ss| ScaleSetView {
            id: ss.id,
            name: ss.name.clone(),
            scope: ss.scope.label(),
            runner_group_id: ss.runner_group_id,
            labels: ss.labels.iter().map(|(_, n)| n.clone()).collect(),
            flow: ss.flow,
            statistics: statistics(&w, ss.id),
            session: ss.session.as_ref().map(|x| SessionView {
                id: x.id.to_string(),
                owner_name: x.owner_name.clone(),
                last_max_capacity: x.last_max_capacity,
                polls: x.polls,
                token_expired: x.token_expires <= std::time::Instant::now(),
            }),
            pending_job_messages: ss.pending.len(),
            unacked_message_ids: ss.queue.iter().map(|m| m.id).collect(),
        })
        .collect()
}

/// `/_sim` routes.
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/_sim/info",
            get(|State(s): State<Arc<Shared>>| async move { Json(info(&s)) }),
        )
        .route("/_sim/jobs", post(queue_job).get(list_jobs))
        .route("/_sim/jobs/{id}", get(get_job))
        .route("/_sim/jobs/{id}/logs", get(job_logs))
        .route("/_sim/jobs/{id}/cancel", post(cancel_job))
        .route("/_sim/jobs/{id}/approve", post(approve_job))
        .route("/_sim/runners", get(list_runners))
        .route("/_sim/runners/jit", post(create_jit))
        .route("/_sim/runners/{id}", delete(delete_runner))
        .route("/_sim/deliveries", get(list_deliveries))
        .route("/_sim/deliveries/{guid}/redeliver", post(redeliver))
        .route("/_sim/webhook", put(set_webhook).delete(clear_webhook))
        .route(
            "/_sim/webhook/faults",
            get(list_webhook_faults)
                .post(add_webhook_fault)
                .delete(clear_webhook_faults),
        )
        .route(
            "/_sim/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route(
            "/_sim/scalesets",
            get(|State(s): State<Arc<Shared>>| async move { Json(scale_sets(&s)) }),
        )
        .route("/_sim/scalesets/flow", put(set_default_flow))
        .route("/_sim/scalesets/{id}/flow", put(set_flow))
        .route("/_sim/installations/{id}/token", post(installation_token))
}

async fn queue_job(
    State(s): State<Arc<Shared>>,
    Json(spec): Json<JobSpec>,
) -> Result<(StatusCode, Json<JobView>)> {
    Ok((StatusCode::CREATED, Json(JobView::of(&s.queue_job(spec)?))))
}

async fn list_jobs(State(s): State<Arc<Shared>>) -> Json<Vec<JobView>> {
    Json(lock(&s.world).jobs.values().map(JobView::of).collect())
}

async fn get_job(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> Result<Json<JobView>> {
    let w = lock(&s.world);
    let j = w.jobs.get(&id).ok_or_else(Error::not_found)?;
    Ok(Json(JobView::of(j)))
}

async fn job_logs(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> Result<Response> {
    let w = lock(&s.world);
    let j = w.jobs.get(&id).ok_or_else(Error::not_found)?;
    let mut text = j.log.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    Ok(([("content-type", "text/plain; charset=utf-8")], text).into_response())
}

async fn cancel_job(
    State(s): State<Arc<Shared>>,
    Path(id): Path<u64>,
) -> Result<(StatusCode, Json<JobView>)> {
    Ok((StatusCode::ACCEPTED, Json(JobView::of(&s.cancel_job(id)?))))
}

async fn approve_job(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> Result<Json<JobView>> {
    Ok(Json(JobView::of(&s.approve_job(id)?)))
}

async fn list_runners(State(s): State<Arc<Shared>>) -> Json<Vec<RunnerView>> {
    Json(
        lock(&s.world)
            .runners
            .values()
            .map(|r| RunnerView::of(r, s.cfg.runner_idle_timeout))
            .collect(),
    )
}

async fn create_jit(
    State(s): State<Arc<Shared>>,
    Json(req): Json<JitRequest>,
) -> Result<(StatusCode, Json<Value>)> {
    let scope = scope_from_config_url(&format!("http://x/{}", req.scope))?;
    let (r, jit) = s.register_runner(NewRunner {
        name: req.name,
        scope,
        labels: req.labels,
        group_id: 1,
        scale_set_id: None,
        work_folder: req.work_folder.unwrap_or_else(|| "_work".into()),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"runner": RunnerView::of(&r, s.cfg.runner_idle_timeout), "encoded_jit_config": jit}),
        ),
    ))
}

async fn delete_runner(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> Result<StatusCode> {
    s.delete_runner(id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct DeliveryQuery {
    job_id: Option<u64>,
    action: Option<String>,
}

async fn list_deliveries(
    State(s): State<Arc<Shared>>,
    Query(q): Query<DeliveryQuery>,
) -> Json<Vec<Delivery>> {
    Json(
        lock(&s.world)
            .deliveries
            .iter()
            .filter(|d| q.job_id.is_none_or(|j| j == d.job_id))
            .filter(|d| q.action.as_deref().is_none_or(|a| a == d.action))
            .cloned()
            .collect(),
    )
}

async fn redeliver(State(s): State<Arc<Shared>>, Path(guid): Path<String>) -> Result<StatusCode> {
    s.redeliver(&guid).ok_or_else(Error::not_found)?;
    Ok(StatusCode::ACCEPTED)
}

async fn set_webhook(State(s): State<Arc<Shared>>, Json(t): Json<WebhookTarget>) -> StatusCode {
    *lock(&s.webhook_target) = Some(t);
    StatusCode::NO_CONTENT
}

async fn clear_webhook(State(s): State<Arc<Shared>>) -> StatusCode {
    *lock(&s.webhook_target) = None;
    StatusCode::NO_CONTENT
}

async fn list_webhook_faults(State(s): State<Arc<Shared>>) -> Json<Vec<WebhookFaultRule>> {
    Json(lock(&s.webhook_faults).clone())
}

async fn add_webhook_fault(
    State(s): State<Arc<Shared>>,
    Json(r): Json<WebhookFaultRule>,
) -> StatusCode {
    lock(&s.webhook_faults).push(r);
    StatusCode::CREATED
}

async fn clear_webhook_faults(State(s): State<Arc<Shared>>) -> StatusCode {
    lock(&s.webhook_faults).clear();
    StatusCode::NO_CONTENT
}

async fn list_faults(State(s): State<Arc<Shared>>) -> Json<Value> {
    let hits = lock(&s.world).fault_hits;
    Json(json!({"rules": *lock(&s.faults), "hits": hits}))
}

async fn add_fault(State(s): State<Arc<Shared>>, Json(r): Json<FaultRule>) -> StatusCode {
    lock(&s.faults).push(r);
    StatusCode::CREATED
}

async fn clear_faults(State(s): State<Arc<Shared>>) -> StatusCode {
    lock(&s.faults).clear();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct FlowBody {
    flow: ScaleSetFlow,
}

async fn set_default_flow(State(s): State<Arc<Shared>>, Json(b): Json<FlowBody>) -> StatusCode {
    *lock(&s.default_flow) = b.flow;
    StatusCode::NO_CONTENT
}

async fn set_flow(
    State(s): State<Arc<Shared>>,
    Path(id): Path<u64>,
    Json(b): Json<FlowBody>,
) -> Result<StatusCode> {
    let mut w = lock(&s.world);
    let ss = w.scale_sets.get_mut(&id).ok_or_else(Error::not_found)?;
    ss.flow = b.flow;
    Ok(StatusCode::NO_CONTENT)
}

async fn installation_token(
    State(s): State<Arc<Shared>>,
    Path(id): Path<u64>,
) -> Result<(StatusCode, Json<Value>)> {
    let (token, exp) = s.mint_installation_token(id)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": ts(exp)})),
    ))
}
