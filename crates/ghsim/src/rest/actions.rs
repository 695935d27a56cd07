//! Actions endpoints: self-hosted runners (JIT, registration and remove
//! tokens, list/get/delete), workflow jobs, run cancellation, and
//! `POST /actions/runner-registration` (the first hop of the scale-set token chain).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{AdminClaims, now_secs, random_token};
use crate::config::AccountKind;
use crate::error::{Error, Result};
use crate::objects;
use crate::runner_protocol::NewRunner;
use crate::scaleset::scope_from_config_url;
use crate::sim::Shared;
use crate::state::{Scope, ScopedToken, lock, now, ts};

pub(super) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
            post(repo_jit),
        )
        .route(
            "/orgs/{org}/actions/runners/generate-jitconfig",
            post(org_jit),
        )
        .route(
            "/repos/{owner}/{repo}/actions/runners/registration-token",
            post(repo_reg),
        )
        .route(
            "/orgs/{org}/actions/runners/registration-token",
            post(org_reg),
        )
        .route(
            "/repos/{owner}/{repo}/actions/runners/remove-token",
            post(repo_remove),
        )
        .route("/orgs/{org}/actions/runners/remove-token", post(org_remove))
        .route("/repos/{owner}/{repo}/actions/runners", get(repo_list))
        .route("/orgs/{org}/actions/runners", get(org_list))
        .route(
            "/repos/{owner}/{repo}/actions/runners/{id}",
            get(repo_get).delete(repo_delete),
        )
        .route(
            "/orgs/{org}/actions/runners/{id}",
            get(org_get).delete(org_delete),
        )
        .route("/repos/{owner}/{repo}/actions/jobs/{id}", get(get_job))
        .route(
            "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
            get(list_run_jobs),
        )
        .route(
            "/repos/{owner}/{repo}/actions/runs/{run_id}/cancel",
            post(cancel_run),
        )
        .route("/actions/runner-registration", post(runner_registration))
}

/// Checks the token and resolves the scope of an org path.
fn org_scope(s: &Shared, headers: &HeaderMap, org: &str) -> Result<Scope> {
    let acct = s.owner_auth(headers, org)?;
    if acct.kind != AccountKind::Organization {
        return Err(Error::not_found());
    }
    Ok(Scope::Org(acct.login))
}

/// Checks the token and resolves the scope of a repository path.
fn repo_scope(s: &Shared, headers: &HeaderMap, owner: &str, repo: &str) -> Result<Scope> {
    let acct = s.owner_auth(headers, owner)?;
    let r = lock(&s.world)
        .repo(&acct.login, repo)
        .ok_or_else(Error::not_found)?;
    Ok(Scope::Repo(acct.login, r.name))
}

fn invalid(detail: impl Into<String>) -> Error {
    let d = detail.into();
    Error::Validation {
        message: format!("Invalid request.\n\n{d}"),
        errors: vec![d],
    }
}

fn jit(s: &Shared, scope: Scope, body: &[u8]) -> Result<Response> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| Error::BadRequest("Problems parsing JSON".into()))?;
    if !v.is_object() {
        return Err(Error::BadRequest("Problems parsing JSON".into()));
    }
    let name = match &v["name"] {
        Value::String(n) if !n.trim().is_empty() => n.trim().to_string(),
        Value::Null => return Err(invalid("\"name\" wasn't supplied.")),
        _ => {
            return Err(invalid(
                "For 'properties/name', the value is not a non-empty string.",
            ));
        }
    };
    let group = match &v["runner_group_id"] {
        Value::Null => return Err(invalid("\"runner_group_id\" wasn't supplied.")),
        g => g.as_u64().ok_or_else(|| {
            invalid("For 'properties/runner_group_id', the value is not an integer.")
        })?,
    };
    if group == 0 || group as usize > s.cfg.runner_groups.len() {
        return Err(invalid(format!("Runner group {group} does not exist.")));
    }
    let labels = match &v["labels"] {
        Value::Null => return Err(invalid("\"labels\" wasn't supplied.")),
        Value::Array(a) => a,
        _ => {
            return Err(invalid(
                "For 'properties/labels', the value is not an array.",
            ));
        }
    };
    if labels.is_empty() || labels.len() > 100 {
        return Err(invalid(format!(
            "For 'properties/labels', {} items is not between 1 and 100.",
            labels.len()
        )));
    }
    let mut names = Vec::new();
    for l in labels {
        match l.as_str().map(str::trim) {
            Some(n) if !n.is_empty() && n.len() <= 256 && !n.contains(',') => {
                names.push(n.to_string())
            }
            _ => return Err(invalid(format!("For 'items', {l} is not a valid label."))),
        }
    }
    let work_folder = match &v["work_folder"] {
        Value::Null => "_work".to_string(),
        Value::String(w) if !w.is_empty() => w.clone(),
        _ => {
            return Err(invalid(
                "For 'properties/work_folder', the value is not a non-empty string.",
            ));
        }
    };
    let (runner, encoded) = s.register_runner(NewRunner {
        name,
        scope,
        labels: names,
        group_id: group,
        scale_set_id: None,
        work_folder,
    })?;
    let runner_json = objects::runner(&mut lock(&s.world), &runner, s.cfg.runner_idle_timeout);
    Ok((
        StatusCode::CREATED,
        Json(json!({"runner": runner_json, "encoded_jit_config": encoded})),
    )
        .into_response())
}

async fn repo_jit(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response> {
    let scope = repo_scope(&s, &headers, &owner, &repo)?;
    jit(&s, scope, &body)
}

async fn org_jit(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(org): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let scope = org_scope(&s, &headers, &org)?;
    jit(&s, scope, &body)
}

fn scoped_token(s: &Shared, scope: Scope, remove: bool) -> Response {
    let token = random_token("", 29).to_ascii_uppercase();
    let expires_at = now() + s.cfg.registration_token_lifetime;
    lock(&s.world).reg_tokens.insert(
        token.clone(),
        ScopedToken {
            scope,
            expires_at,
            remove,
        },
    );
    (
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": ts(expires_at)})),
    )
        .into_response()
}

async fn repo_reg(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
) -> Result<Response> {
    Ok(scoped_token(
        &s,
        repo_scope(&s, &headers, &owner, &repo)?,
        false,
    ))
}

async fn org_reg(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Result<Response> {
    Ok(scoped_token(&s, org_scope(&s, &headers, &org)?, false))
}

async fn repo_remove(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
) -> Result<Response> {
    Ok(scoped_token(
        &s,
        repo_scope(&s, &headers, &owner, &repo)?,
        true,
    ))
}

async fn org_remove(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Result<Response> {
    Ok(scoped_token(&s, org_scope(&s, &headers, &org)?, true))
}

#[derive(Deserialize)]
struct ListQuery {
    per_page: Option<usize>,
    page: Option<usize>,
    name: Option<String>,
}

fn list(s: &Shared, scope: &Scope, q: &ListQuery, path: &str) -> Response {
    let per_page = q.per_page.unwrap_or(30).clamp(1, 100);
    let page = q.page.unwrap_or(1).max(1);
    let mut w = lock(&s.world);
    let all: Vec<_> = w
        .runners
        .values()
        .filter(|r| r.scope.same(scope))
        .filter(|r| q.name.as_deref().is_none_or(|n| n == r.name))
        .cloned()
        .collect();
    let total = all.len();
    let runners: Vec<Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| objects::runner(&mut w, r, s.cfg.runner_idle_timeout))
        .collect();
    drop(w);
    let mut resp = Json(json!({"total_count": total, "runners": runners})).into_response();
    let last = total.div_ceil(per_page).max(1);
    let url = |p: usize| format!("<{}{path}?per_page={per_page}&page={p}>", s.api_url());
    let mut links = Vec::new();
    if page < last {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", url(page - 1)));
        links.push(format!("{}; rel=\"first\"", url(1)));
    }
    if !links.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
            resp.headers_mut().insert("link", v);
        }
    }
    resp
}

async fn repo_list(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    let scope = repo_scope(&s, &headers, &owner, &repo)?;
    Ok(list(
        &s,
        &scope,
        &q,
        &format!("/repos/{owner}/{repo}/actions/runners"),
    ))
}

async fn org_list(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    let scope = org_scope(&s, &headers, &org)?;
    Ok(list(
        &s,
        &scope,
        &q,
        &format!("/orgs/{org}/actions/runners"),
    ))
}

fn get_runner(s: &Shared, scope: &Scope, id: u64) -> Result<Json<Value>> {
    let mut w = lock(&s.world);
    let r = w
        .runners
        .get(&id)
        .filter(|r| r.scope.same(scope))
        .cloned()
        .ok_or_else(Error::not_found)?;
    Ok(Json(objects::runner(&mut w, &r, s.cfg.runner_idle_timeout)))
}

fn delete_runner(s: &Shared, scope: &Scope, id: u64) -> Result<StatusCode> {
    {
        let w = lock(&s.world);
        w.runners
            .get(&id)
            .filter(|r| r.scope.same(scope))
            .ok_or_else(Error::not_found)?;
    }
    s.delete_runner(id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn repo_get(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo, id)): Path<(String, String, u64)>,
) -> Result<Json<Value>> {
    get_runner(&s, &repo_scope(&s, &headers, &owner, &repo)?, id)
}

async fn org_get(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((org, id)): Path<(String, u64)>,
) -> Result<Json<Value>> {
    get_runner(&s, &org_scope(&s, &headers, &org)?, id)
}

async fn repo_delete(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo, id)): Path<(String, String, u64)>,
) -> Result<StatusCode> {
    delete_runner(&s, &repo_scope(&s, &headers, &owner, &repo)?, id)
}

async fn org_delete(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((org, id)): Path<(String, u64)>,
) -> Result<StatusCode> {
    delete_runner(&s, &org_scope(&s, &headers, &org)?, id)
}

async fn get_job(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo, id)): Path<(String, String, u64)>,
) -> Result<Json<Value>> {
    repo_scope(&s, &headers, &owner, &repo)?;
    let w = lock(&s.world);
    let job = w
        .jobs
        .get(&id)
        .filter(|j| j.owner.eq_ignore_ascii_case(&owner) && j.repo.eq_ignore_ascii_case(&repo))
        .ok_or_else(Error::not_found)?;
    Ok(Json(objects::workflow_job(&s, job)))
}

async fn list_run_jobs(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo, run_id)): Path<(String, String, u64)>,
) -> Result<Json<Value>> {
    repo_scope(&s, &headers, &owner, &repo)?;
    let w = lock(&s.world);
    let jobs: Vec<Value> = w
        .jobs
        .values()
        .filter(|j| {
            j.run_id == run_id
                && j.owner.eq_ignore_ascii_case(&owner)
                && j.repo.eq_ignore_ascii_case(&repo)
        })
        .map(|j| objects::workflow_job(&s, j))
        .collect();
    Ok(Json(json!({"total_count": jobs.len(), "jobs": jobs})))
}

async fn cancel_run(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo, run_id)): Path<(String, String, u64)>,
) -> Result<(StatusCode, Json<Value>)> {
    repo_scope(&s, &headers, &owner, &repo)?;
    s.cancel_run(&owner, &repo, run_id)?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))))
}

#[derive(Deserialize)]
struct RegistrationBody {
    url: String,
    #[serde(default)]
    runner_event: Option<String>,
}

async fn runner_registration(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("RemoteAuth "))
        .map(str::trim)
        .ok_or_else(|| Error::Unauthorized("Requires RemoteAuth <registration token>".into()))?;
    let body: RegistrationBody = serde_json::from_slice(&body)
        .map_err(|_| Error::BadRequest("Problems parsing JSON".into()))?;
    if body
        .runner_event
        .as_deref()
        .is_some_and(|e| e != "register")
    {
        return Err(Error::validation(
            "Invalid request.",
            "runner_event must be register",
        ));
    }
    let scope = scope_from_config_url(&body.url)?;
    let t = lock(&s.world)
        .reg_tokens
        .get(token)
        .cloned()
        .ok_or_else(|| Error::Unauthorized("Bad credentials".into()))?;
    if t.remove || t.expires_at <= now() {
        return Err(Error::Unauthorized("Bad credentials".into()));
    }
    if !t.scope.same(&scope) {
        return Err(Error::Forbidden(format!(
            "the registration token is for {}, not {}",
            t.scope.label(),
            scope.label()
        )));
    }
    let iat = now_secs();
    let admin = s.signer.sign_admin(&AdminClaims {
        iss: "ghsim".into(),
        scope: t.scope.path(),
        iat,
        exp: iat + s.cfg.admin_token_lifetime.as_secs() as i64,
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"url": s.actions_url(), "token": admin, "token_schema": "OAuthAccessToken"})),
    )
        .into_response())
}
