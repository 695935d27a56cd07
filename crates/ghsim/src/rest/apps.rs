//! App endpoints: `GET /app`, installation lookups, installation tokens.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::auth::random_token;
use crate::config::AccountKind;
use crate::error::{Error, Result};
use crate::objects;
use crate::sim::Shared;
use crate::state::{InstallToken, lock, now, ts};

pub(super) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/app", get(get_app))
        .route("/app/installations", get(list_installations))
        .route("/app/installations/{id}", get(get_installation))
        .route("/app/installations/{id}/access_tokens", post(create_token))
        .route("/repos/{owner}/{repo}/installation", get(repo_installation))
        .route("/orgs/{org}/installation", get(org_installation))
}

async fn get_app(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Result<Json<Value>> {
    s.app_auth(&headers)?;
    Ok(Json(objects::app(&s)))
}

async fn list_installations(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    s.app_auth(&headers)?;
    let accounts = lock(&s.world).accounts.clone();
    Ok(Json(Value::Array(
        accounts
            .iter()
            .map(|a| objects::installation(&s, a))
            .collect(),
    )))
}

async fn get_installation(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>> {
    s.app_auth(&headers)?;
    let acct = lock(&s.world)
        .account_by_installation(id)
        .cloned()
        .ok_or_else(Error::not_found)?;
    Ok(Json(objects::installation(&s, &acct)))
}

async fn create_token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<(StatusCode, Json<Value>)> {
    s.app_auth(&headers)?;
    let (token, expires) = s.mint_installation_token(id)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "expires_at": ts(expires),
            "permissions": objects::app_permissions(),
            "repository_selection": "all",
        })),
    ))
}

impl Shared {
    /// Mints an installation token (also used by the control API).
    pub fn mint_installation_token(
        &self,
        installation_id: u64,
    ) -> Result<(String, time::OffsetDateTime)> {
        let mut w = lock(&self.world);
        if w.account_by_installation(installation_id).is_none() {
            return Err(Error::not_found());
        }
        let token = random_token("ghs_", 36);
        let expires_at = now() + self.cfg.installation_token_lifetime;
        w.install_tokens.insert(
            token.clone(),
            InstallToken {
                installation_id,
                expires_at,
            },
        );
        Ok((token, expires_at))
    }
}

async fn repo_installation(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, _repo)): Path<(String, String)>,
) -> Result<Json<Value>> {
    s.app_auth(&headers)?;
    let acct = lock(&s.world)
        .account(&owner)
        .cloned()
        .ok_or_else(Error::not_found)?;
    Ok(Json(objects::installation(&s, &acct)))
}

async fn org_installation(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Result<Json<Value>> {
    s.app_auth(&headers)?;
    let acct = lock(&s.world)
        .account(&org)
        .filter(|a| a.kind == AccountKind::Organization)
        .cloned()
        .ok_or_else(Error::not_found)?;
    Ok(Json(objects::installation(&s, &acct)))
}
