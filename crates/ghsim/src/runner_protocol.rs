//! The runner ⇄ simulator protocol: the JIT config a runner starts from, and
//! the token, broker and run-service endpoints it talks to.
//!
//! It follows the real runner's "v2" flow (actions/runner `BrokerHttpClient`,
//! `RunServiceHttpClient`, `VssOAuthJwtBearerClientCredential`), trimmed to
//! what a runner needs to take one job:
//!
//! 1. `POST {authorizationUrl}` (form: `grant_type=client_credentials`,
//!    `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
//!    `client_assertion=<RS256 JWT, sub=iss=clientId, aud=authorizationUrl>`)
//!    → `{access_token, token_type, expires_in}`.
//! 2. `POST {serverUrlV2}session` → `{sessionId, …}` (409 when the runner
//!    already has one; the runner is "online" while it has one).
//! 3. `GET {serverUrlV2}message?sessionId=…` long poll → 200
//!    `{messageId, messageType:"RunnerJobRequest", body:"{runner_request_id, run_service_url, …}"}`
//!    or 202 when nothing came; 404 `RunnerNotFound` when the registration
//!    was deleted.
//! 4. `POST {run_service_url}acquirejob {jobMessageId}` → the job (409 when
//!    another runner took it, 404 when it is gone).
//! 5. While running: `POST …renewjob` (answers `cancelRequested`),
//!    `POST …steps` (step status), `POST …logs` (output lines).
//! 6. `POST …completejob {conclusion, stepResults}`, then `DELETE {serverUrlV2}session`.
//!
//! The steps/logs endpoints and `cancelRequested` are this simulator's
//! simplifications of the real timeline, results and cancellation services.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{RsaParams, random_token, verify_assertion};
use crate::engine::{ContainerSpec, Services};
use crate::error::{Error, Result};
use crate::scaleset::bearer;
use crate::sim::Shared;
use crate::state::{Job, Runner, RunnerToken, Scope, lock, now};

/// `.runner`: the runner's settings (actions/runner `RunnerSettings`, camelCase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSettings {
    /// Runner id.
    pub agent_id: u64,
    /// Runner name.
    pub agent_name: String,
    /// Runner group id.
    pub pool_id: u64,
    /// Runner group name.
    pub pool_name: String,
    /// One job, then gone.
    pub ephemeral: bool,
    /// Pipelines service URL (v1 flow; unused by the stand-in).
    pub server_url: String,
    /// GitHub URL of the runner's scope.
    pub git_hub_url: String,
    /// Work folder, relative to the runner root.
    pub work_folder: String,
    /// Use the broker (v2) flow.
    #[serde(rename = "useV2Flow")]
    pub use_v2_flow: bool,
    /// Broker URL (v2 flow).
    #[serde(rename = "serverUrlV2")]
    pub server_url_v2: String,
}

/// `.credentials`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    /// Always `OAuth`.
    pub scheme: String,
    /// OAuth client data.
    pub data: CredentialData,
}

/// `.credentials` `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialData {
    /// OAuth client id (also the assertion's `sub`/`iss`).
    pub client_id: String,
    /// Token endpoint (also the assertion's `aud`).
    pub authorization_url: String,
    /// `"False"`.
    pub require_fips_cryptography: String,
}

/// A decoded JIT config: the three files a runner writes to its root.
#[derive(Debug, Clone, PartialEq)]
pub struct JitConfig {
    /// `.runner`.
    pub runner: RunnerSettings,
    /// `.credentials`.
    pub credentials: Credentials,
    /// `.credentials_rsaparams`.
    pub rsa: RsaParams,
}

impl JitConfig {
    /// base64(JSON map of file name → base64(file JSON)), the real format.
    pub fn encode(&self) -> Result<String> {
        fn file<T: Serialize>(v: &T) -> Result<String> {
            Ok(STANDARD.encode(serde_json::to_vec(v)?))
        }
        let mut map = BTreeMap::new();
        map.insert(".runner", file(&self.runner)?);
        map.insert(".credentials", file(&self.credentials)?);
        map.insert(".credentials_rsaparams", file(&self.rsa)?);
        Ok(STANDARD.encode(serde_json::to_vec(&map)?))
    }

    /// Decodes the real format; clear errors for every malformed part.
    pub fn decode(encoded: &str) -> Result<Self> {
        let bad = |m: String| Error::Config(format!("invalid JIT config: {m}"));
        let outer = STANDARD
            .decode(encoded.trim())
            .map_err(|e| bad(format!("not base64: {e}")))?;
        let map: BTreeMap<String, String> = serde_json::from_slice(&outer)
            .map_err(|e| bad(format!("not a JSON map of files: {e}")))?;
        fn file<T: serde::de::DeserializeOwned>(
            map: &BTreeMap<String, String>,
            name: &str,
        ) -> Result<T> {
            let b64 = map
                .get(name)
                .ok_or_else(|| Error::Config(format!("invalid JIT config: no {name} file")))?;
            let bytes = STANDARD.decode(b64).map_err(|e| {
                Error::Config(format!("invalid JIT config: {name} is not base64: {e}"))
            })?;
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::Config(format!("invalid JIT config: {name}: {e}")))
        }
        Ok(JitConfig {
            runner: file(&map, ".runner")?,
            credentials: file(&map, ".credentials")?,
            rsa: file(&map, ".credentials_rsaparams")?,
        })
    }
}

/// OAuth token response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds.
    pub expires_in: u64,
}

/// `POST session` body / answer (trimmed `TaskAgentSession`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSession {
    /// Session id (answer).
    #[serde(default)]
    pub session_id: Option<Uuid>,
    /// Owner (host name).
    #[serde(default)]
    pub owner_name: String,
    /// The runner (`{id, name, version, osDescription}`).
    #[serde(default)]
    pub agent: Value,
}

/// A broker message (`TaskAgentMessage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerMessage {
    /// Id.
    pub message_id: u64,
    /// `RunnerJobRequest`.
    pub message_type: String,
    /// JSON string of a [`JobRequestRef`].
    pub body: String,
}

/// Body of a `RunnerJobRequest` message (snake_case as in the real runner).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequestRef {
    /// Id of this message.
    pub id: String,
    /// The job request to acquire.
    pub runner_request_id: String,
    /// Where to acquire it.
    pub run_service_url: String,
    /// Unused.
    #[serde(default)]
    pub billing_owner_id: String,
}

/// `acquirejob` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcquireJobRequest {
    /// `runner_request_id` from the message.
    pub job_message_id: String,
    /// `Linux`.
    #[serde(default)]
    pub runner_os: String,
    /// Unused.
    #[serde(default)]
    pub billing_owner_id: String,
}

/// One step to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStep {
    /// Step id.
    pub id: Uuid,
    /// 1-based. With a job container or services, the job's step list has
    /// `Initialize containers` just before the first of these steps and
    /// `Stop containers` just after the last (the runner's own steps).
    pub number: u32,
    /// Display name.
    pub name: String,
    /// Shell script for `/bin/sh -c` (empty for an action step).
    pub script: String,
    /// What the step runs, as the real `ActionStep.reference`: `{type:
    /// "script"}`, `{type: "containerRegistry", image}` or `{type:
    /// "repository", repositoryType: "self", path}` / `{type: "repository",
    /// repositoryType: "GitHub", name, ref, path?}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<StepReference>,
    /// The step's inputs (`ActionStep.inputs`): `script` and `shell` for a
    /// run step, the `with:` values (`args`, `entrypoint`) for an action.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Step environment (`ActionStep.environment`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Simulator only: the `Dockerfile` of a Dockerfile action, which the
    /// stand-in's simulated checkout writes into the action's directory (on
    /// GitHub it comes from the repository).
    #[serde(
        default,
        rename = "ghsimDockerfile",
        skip_serializing_if = "Option::is_none"
    )]
    pub ghsim_dockerfile: Option<String>,
}

/// `ActionStep.reference` (the real `ActionStepDefinitionReference`, with
/// its `type` as a string).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReference {
    /// `script`, `containerRegistry`, `repository`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Image of a `containerRegistry` reference (without `docker://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `owner/repo` of a `repository` reference (not for `self`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Ref of a `repository` reference (not for `self`).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// `self` (the job's repository) or `GitHub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_type: Option<String>,
    /// Path of the action inside the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl StepReference {
    /// The reference of a `uses:` value.
    pub fn of_uses(uses: &str) -> StepReference {
        if let Some(image) = uses.strip_prefix("docker://") {
            return StepReference {
                kind: "containerRegistry".into(),
                image: Some(image.to_string()),
                ..Default::default()
            };
        }
        if let Some(path) = uses.strip_prefix("./") {
            return StepReference {
                kind: "repository".into(),
                repository_type: Some("self".into()),
                path: Some(path.trim_end_matches('/').to_string()),
                ..Default::default()
            };
        }
        let (what, git_ref) = uses.split_once('@').unwrap_or((uses, ""));
        let mut parts = what.splitn(3, '/');
        let owner = parts.next().unwrap_or("");
        let repo = parts.next().unwrap_or("");
        StepReference {
            kind: "repository".into(),
            name: Some(format!("{owner}/{repo}")),
            git_ref: Some(git_ref.to_string()),
            repository_type: Some("GitHub".into()),
            path: parts.next().map(String::from),
            ..Default::default()
        }
    }
}

/// A variable of the job message (`variables`: name → `{value, isSecret}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VariableValue {
    /// The value.
    pub value: String,
    /// A secret (never here).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_secret: bool,
}

/// The variable GitHub sets on a job when the runner may use its container
/// hooks (actions/runner `Constants.Runner.Features.AllowRunnerContainerHooks`).
pub const ALLOW_CONTAINER_HOOKS: &str = "DistributedTask.AllowRunnerContainerHooks";

/// The acquired job (a trimmed `AgentJobRequestMessage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    /// `PipelineAgentJobRequest`.
    pub message_type: String,
    /// Plan id; echo it back in every run-service call.
    pub plan_id: Uuid,
    /// The GitHub job id (decimal string).
    pub job_id: String,
    /// Job name.
    pub job_display_name: String,
    /// The runner request id.
    pub request_id: u64,
    /// `owner/name`.
    pub repository: String,
    /// Steps in order.
    pub steps: Vec<JobStep>,
    /// Environment variables for every step (`GITHUB_*`, `CI`, …).
    pub environment: BTreeMap<String, String>,
    /// Renew the job lock at least this often, ms.
    pub renew_interval_ms: u64,
    /// The job container (`container:` of the workflow, as a mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_container: Option<ContainerSpec>,
    /// The service containers (`services:`), in order.
    #[serde(default, skip_serializing_if = "Services::is_empty")]
    pub job_service_containers: Services,
    /// Job variables; GitHub sends [`ALLOW_CONTAINER_HOOKS`] `"true"`.
    #[serde(default)]
    pub variables: BTreeMap<String, VariableValue>,
}

/// A step's status (`steps`, `completejob`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepUpdate {
    /// 1-based.
    pub number: u32,
    /// `in_progress`, `completed`.
    pub status: String,
    /// `success`, `failure`, `skipped`, `cancelled` (or runner `TaskResult` names).
    #[serde(default)]
    pub conclusion: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub completed_at: Option<String>,
}

/// Identifies the job in run-service calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    /// Plan id from [`JobRequest`].
    pub plan_id: Uuid,
    /// Job id from [`JobRequest`].
    pub job_id: String,
}

/// `steps` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepsBody {
    /// Plan id.
    pub plan_id: Uuid,
    /// Job id.
    pub job_id: String,
    /// Changed steps.
    pub steps: Vec<StepUpdate>,
}

/// `logs` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsBody {
    /// Plan id.
    pub plan_id: Uuid,
    /// Job id.
    pub job_id: String,
    /// Step number the lines belong to.
    pub step_number: u32,
    /// Output lines, without newlines.
    pub lines: Vec<String>,
}

/// `completejob` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteJobBody {
    /// Plan id.
    pub plan_id: Uuid,
    /// Job id.
    pub job_id: String,
    /// `succeeded`, `failed`, `canceled`.
    pub conclusion: String,
    /// Final step states.
    #[serde(default)]
    pub step_results: Vec<StepUpdate>,
    /// Job outputs (unused).
    #[serde(default)]
    pub outputs: Value,
}

/// `renewjob` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewResponse {
    /// RFC 3339.
    pub locked_until: String,
    /// The job was cancelled: stop the step and complete as `canceled`.
    pub cancel_requested: bool,
}

/// What registering a runner needs.
#[derive(Debug, Clone)]
pub(crate) struct NewRunner {
    pub name: String,
    pub scope: Scope,
    pub labels: Vec<String>,
    pub group_id: u64,
    pub scale_set_id: Option<u64>,
    pub work_folder: String,
}

impl Shared {
    /// Registers a JIT runner and returns it with its encoded JIT config.
    pub(crate) fn register_runner(&self, n: NewRunner) -> Result<(Runner, String)> {
        let mut w = lock(&self.world);
        if w.runners
            .values()
            .any(|r| r.scope.same(&n.scope) && r.name.eq_ignore_ascii_case(&n.name))
        {
            return Err(Error::Conflict(format!(
                "Already exists - A runner with the name {} already exists.",
                n.name
            )));
        }
        let mut labels = n.labels.clone();
        if !labels.iter().any(|l| l.eq_ignore_ascii_case("self-hosted")) {
            labels.insert(0, "self-hosted".into());
        }
        w.ids.runner += 1;
        let runner = Runner {
            id: w.ids.runner,
            name: n.name.clone(),
            scope: n.scope.clone(),
            labels,
            group_id: n.group_id,
            ephemeral: true,
            scale_set_id: n.scale_set_id,
            work_folder: n.work_folder.clone(),
            client_id: Uuid::new_v4().to_string(),
            session_id: None,
            version: None,
            job_id: None,
            created_at: now(),
            jobs_done: 0,
            last_seen: None,
        };
        for l in runner.labels.clone() {
            w.label_id(&l);
        }
        w.runners.insert(runner.id, runner.clone());
        drop(w);
        let jit = JitConfig {
            runner: RunnerSettings {
                agent_id: runner.id,
                agent_name: runner.name.clone(),
                pool_id: runner.group_id,
                pool_name: self.group_name(runner.group_id),
                ephemeral: true,
                server_url: format!("{}/_services/pipelines/", self.public_url()),
                git_hub_url: format!("{}/{}", self.public_url(), runner.scope.path()),
                work_folder: runner.work_folder.clone(),
                use_v2_flow: true,
                server_url_v2: self.broker_url(),
            },
            credentials: Credentials {
                scheme: "OAuth".into(),
                data: CredentialData {
                    client_id: runner.client_id.clone(),
                    authorization_url: self.token_url(),
                    require_fips_cryptography: "False".into(),
                },
            },
            rsa: self.runner_key.rsa_params(),
        };
        let encoded = jit.encode()?;
        lock(&self.world).issued_jit_configs.push(encoded.clone());
        Ok((runner, encoded))
    }

    /// Deletes a runner registration (422 when it is running a job).
    pub fn delete_runner(&self, id: u64) -> Result<()> {
        let mut w = lock(&self.world);
        let r = w.runners.get(&id).ok_or_else(Error::not_found)?;
        if r.job_id.is_some() {
            return Err(Error::validation(
                format!(
                    "Bad request - Runner \"{}\" is still running a job\"",
                    r.name
                ),
                "runner is busy",
            ));
        }
        w.runners.remove(&id);
        for j in w.jobs.values_mut() {
            if j.offer.as_ref().is_some_and(|o| o.runner_id == id) {
                j.offer = None;
            }
        }
        self.jobs_changed.notify_waiters();
        Ok(())
    }

    /// Authenticates a runner call; `touch` records that the runner was heard from.
    fn runner_auth(&self, headers: &HeaderMap, touch: bool) -> Result<u64> {
        let token = bearer(headers)
            .ok_or_else(|| Error::Unauthorized("missing runner access token".into()))?;
        let mut w = lock(&self.world);
        let t = w
            .runner_tokens
            .get(token)
            .ok_or_else(|| Error::Unauthorized("unknown runner access token".into()))?;
        if t.expires <= Instant::now() {
            return Err(Error::Unauthorized("runner access token expired".into()));
        }
        let runner_id = t.runner_id;
        if let Some(r) = w.runners.get_mut(&runner_id).filter(|_| touch) {
            r.last_seen = Some(Instant::now());
        }
        if !w.runners.contains_key(&runner_id) {
            return Err(Error::Broker {
                status: StatusCode::NOT_FOUND,
                kind: "RunnerNotFound",
                message: format!("runner {runner_id} is not registered"),
            });
        }
        Ok(runner_id)
    }
}

/// Routes for the token endpoint, the broker and the run service.
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_services/vstoken/_apis/oauth2/token", post(token))
        .route(
            "/_services/broker/session",
            post(create_session).delete(delete_session),
        )
        .route("/_services/broker/message", get(get_message))
        .route("/_services/run/acquirejob", post(acquire_job))
        .route("/_services/run/renewjob", post(renew_job))
        .route("/_services/run/steps", post(update_steps))
        .route("/_services/run/logs", post(append_logs))
        .route("/_services/run/completejob", post(complete_job))
        // Log batches can be large (up to ~1 MiB of lines plus one long line).
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

async fn token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Response {
    let arrived = time::OffsetDateTime::now_utc();
    let process_started = headers
        .get(crate::runner::PROCESS_STARTED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i128>().ok())
        .and_then(|ns| time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok());
    let err = |code: StatusCode, e: &str, d: String| {
        (code, Json(json!({"error": e, "error_description": d}))).into_response()
    };
    if f.grant_type != "client_credentials"
        || f.client_assertion_type.as_deref()
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return err(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "expected client_credentials with a jwt-bearer client assertion".into(),
        );
    }
    let Some(assertion) = f.client_assertion else {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_assertion missing".into(),
        );
    };
    let client_id = match verify_assertion(&assertion, &s.runner_key, &s.token_url()) {
        Ok(c) => c,
        Err(e) => return err(StatusCode::UNAUTHORIZED, "invalid_client", e.to_string()),
    };
    let mut w = lock(&s.world);
    let Some((runner_id, name)) = w
        .runners
        .values()
        .find(|r| r.client_id == client_id)
        .map(|r| (r.id, r.name.clone()))
    else {
        return err(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            format!("no runner with client id {client_id} (registration deleted?)"),
        );
    };
    if let Some(started) = process_started {
        w.runner_process_starts
            .entry(name.clone())
            .or_insert(started);
    }
    w.runner_first_contacts.entry(name).or_insert(arrived);
    let token = random_token("rt_", 40);
    let lifetime = s.cfg.runner_token_lifetime;
    w.runner_tokens.insert(
        token.clone(),
        RunnerToken {
            runner_id,
            expires: Instant::now() + lifetime,
        },
    );
    Json(TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: lifetime.as_secs(),
    })
    .into_response()
}

async fn create_session(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Option<Json<BrokerSession>>,
) -> Result<Json<BrokerSession>> {
    let id = s.runner_auth(&headers, false)?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let mut w = lock(&s.world);
    let r = w.runners.get_mut(&id).ok_or_else(Error::not_found)?;
    if r.online(s.cfg.runner_idle_timeout) {
        return Err(Error::Conflict(format!(
            "runner {} already has a session",
            r.name
        )));
    }
    let sid = Uuid::new_v4();
    r.session_id = Some(sid);
    let name = r.name.clone();
    r.last_seen = Some(Instant::now());
    r.version = body.agent["version"]
        .as_str()
        .map(String::from)
        .or_else(|| Some("unknown".into()));
    let agent = json!({"id": r.id, "name": r.name, "version": r.version});
    w.runner_sessions
        .entry(name)
        .or_insert_with(time::OffsetDateTime::now_utc);
    drop(w);
    s.jobs_changed.notify_waiters();
    Ok(Json(BrokerSession {
        session_id: Some(sid),
        owner_name: body.owner_name,
        agent,
    }))
}

async fn delete_session(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Result<StatusCode> {
    let id = s.runner_auth(&headers, true)?;
    let mut w = lock(&s.world);
    if let Some(r) = w.runners.get_mut(&id) {
        r.session_id = None;
    }
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct MessageQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<Uuid>,
}

fn broker_message(s: &Shared, job: &Job) -> BrokerMessage {
    let body = JobRequestRef {
        id: Uuid::new_v4().to_string(),
        runner_request_id: job.runner_request_id.to_string(),
        run_service_url: s.run_url(),
        billing_owner_id: String::new(),
    };
    BrokerMessage {
        message_id: job.runner_request_id,
        message_type: "RunnerJobRequest".into(),
        body: serde_json::to_string(&body).unwrap_or_default(),
    }
}

async fn get_message(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<MessageQuery>,
) -> Result<Response> {
    let deadline = Instant::now() + s.cfg.poll_timeout;
    loop {
        let notified = s.jobs_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let id = s.runner_auth(&headers, true)?;
        {
            let w = lock(&s.world);
            let r = &w.runners[&id];
            if r.session_id.is_none() || (q.session_id.is_some() && r.session_id != q.session_id) {
                return Err(Error::Broker {
                    status: StatusCode::NOT_FOUND,
                    kind: "RunnerSessionInvalid",
                    message: "no such session".into(),
                });
            }
        }
        if let Some(job) = s.next_offer(id)? {
            return Ok(Json(broker_message(&s, &job)).into_response());
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline.into()) => return Ok(StatusCode::ACCEPTED.into_response()),
            _ = s.shutdown.cancelled() => return Ok(StatusCode::ACCEPTED.into_response()),
        }
    }
}

fn job_id_of(job_id: &str) -> Result<u64> {
    job_id
        .parse()
        .map_err(|_| Error::BadRequest(format!("jobId {job_id:?} is not a job id")))
}

async fn acquire_job(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<AcquireJobRequest>,
) -> Result<Json<JobRequest>> {
    let id = s.runner_auth(&headers, true)?;
    let request_id: u64 = body
        .job_message_id
        .parse()
        .map_err(|_| Error::BadRequest("jobMessageId is not a runner request id".into()))?;
    let job = s.acquire_job(id, request_id)?;
    let runner_name = job.runner_name.clone().unwrap_or_default();
    let mut env = BTreeMap::new();
    for (k, v) in [
        ("CI", "true".to_string()),
        ("GITHUB_ACTIONS", "true".to_string()),
        ("GITHUB_REPOSITORY", format!("{}/{}", job.owner, job.repo)),
        ("GITHUB_REPOSITORY_OWNER", job.owner.clone()),
        ("GITHUB_RUN_ID", job.run_id.to_string()),
        ("GITHUB_RUN_ATTEMPT", job.run_attempt.to_string()),
        ("GITHUB_JOB", job.name.clone()),
        ("GITHUB_WORKFLOW", job.workflow_name.clone()),
        ("GITHUB_REF", format!("refs/heads/{}", job.head_branch)),
        ("GITHUB_SHA", job.head_sha.clone()),
        ("GITHUB_SERVER_URL", s.public_url()),
        ("RUNNER_NAME", runner_name),
        ("GHSIM_JOB_ID", job.id.to_string()),
    ] {
        env.insert(k.to_string(), v);
    }
    let renew = (s.cfg.job_lock_timeout.as_millis() as u64 / 4).clamp(50, 250);
    // With containers, step 1 is the runner's "Initialize containers".
    let first = if job.container.is_some() || !job.services.is_empty() {
        2
    } else {
        1
    };
    let mut variables = BTreeMap::new();
    if job.allow_container_hooks {
        variables.insert(
            ALLOW_CONTAINER_HOOKS.to_string(),
            VariableValue {
                value: "true".into(),
                is_secret: false,
            },
        );
    }
    Ok(Json(JobRequest {
        message_type: "PipelineAgentJobRequest".into(),
        plan_id: job.plan_id,
        job_id: job.id.to_string(),
        job_display_name: job.name.clone(),
        request_id: job.runner_request_id,
        repository: format!("{}/{}", job.owner, job.repo),
        steps: job
            .steps
            .iter()
            .enumerate()
            .map(|(i, st)| job_step(first + i as u32, st))
            .collect(),
        environment: env,
        renew_interval_ms: renew,
        job_container: job.container.clone(),
        job_service_containers: job.services.clone(),
        variables,
    }))
}

/// A queued step as the job message carries it.
fn job_step(number: u32, st: &crate::state::StepSpec) -> JobStep {
    let mut inputs = BTreeMap::new();
    let reference = match &st.uses {
        None => {
            inputs.insert("script".to_string(), st.run.clone());
            if let Some(shell) = &st.shell {
                inputs.insert("shell".to_string(), shell.clone());
            }
            StepReference {
                kind: "script".into(),
                ..Default::default()
            }
        }
        Some(uses) => {
            if !st.args.is_empty() {
                inputs.insert("args".to_string(), st.args.join(" "));
            }
            if let Some(e) = &st.entrypoint {
                inputs.insert("entrypoint".to_string(), e.clone());
            }
            StepReference::of_uses(uses)
        }
    };
    JobStep {
        id: Uuid::new_v4(),
        number,
        name: st.name.clone(),
        script: st.run.clone(),
        reference: Some(reference),
        inputs,
        environment: st.env.clone(),
        ghsim_dockerfile: st.dockerfile.clone(),
    }
}

async fn renew_job(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<JobRef>,
) -> Result<Json<RenewResponse>> {
    let id = s.runner_auth(&headers, true)?;
    let (cancel, lock_for) = s.renew_job(id, job_id_of(&body.job_id)?)?;
    let until = now() + lock_for;
    Ok(Json(RenewResponse {
        locked_until: crate::state::ts(until),
        cancel_requested: cancel,
    }))
}

async fn update_steps(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<StepsBody>,
) -> Result<StatusCode> {
    let id = s.runner_auth(&headers, true)?;
    s.update_steps(id, job_id_of(&body.job_id)?, &body.steps)?;
    Ok(StatusCode::OK)
}

async fn append_logs(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<LogsBody>,
) -> Result<StatusCode> {
    let id = s.runner_auth(&headers, true)?;
    s.append_log(id, job_id_of(&body.job_id)?, body.step_number, body.lines)?;
    Ok(StatusCode::OK)
}

async fn complete_job(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<CompleteJobBody>,
) -> Result<StatusCode> {
    let id = s.runner_auth(&headers, true)?;
    s.complete_job(
        id,
        job_id_of(&body.job_id)?,
        &body.conclusion,
        &body.step_results,
    )?;
    Ok(StatusCode::OK)
}
