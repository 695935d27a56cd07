//! The GitHub REST API subset berth calls, served both at the root
//! (api.github.com style) and under `/api/v3` (GHES style, which is what a
//! scale-set client derives from a non-github.com config URL).
//!
//! Answers follow the OpenAPI excerpts in the fixtures: same fields, same
//! status codes, and GitHub's `{message, documentation_url}` errors.
//! Authentication is the App JWT for the App endpoints (the App's own
//! webhook delivery log included) and an installation
//! token (`Authorization: Bearer|token …`) everywhere else.

mod actions;
mod apps;
mod hook_deliveries;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;

use crate::error::{Error, Result};
use crate::sim::Shared;
use crate::state::{Account, lock};

/// REST routes (without the `/api/v3` prefix).
pub(crate) fn router() -> Router<Arc<Shared>> {
    apps::router()
        .merge(actions::router())
        .merge(hook_deliveries::router())
}

/// The credential of an `Authorization: Bearer|token X` header.
pub(crate) fn credential(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        Some(rest.trim())
    } else {
        None
    }
}

impl Shared {
    /// Requires a valid App JWT.
    pub(crate) fn app_auth(&self, headers: &HeaderMap) -> Result<()> {
        let token = credential(headers)
            .ok_or_else(|| Error::Unauthorized("A JSON web token could not be decoded".into()))?;
        let keys = lock(&self.app_keys).clone();
        let mut refused = None;
        for key in &keys {
            match crate::auth::verify_app_jwt(token, key, self.cfg.app_id, &self.cfg.client_id) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        Err(refused
            .unwrap_or_else(|| Error::Unauthorized("A JSON web token could not be decoded".into())))
    }

    /// Requires a valid installation token; returns its installation's account.
    pub(crate) fn installation_auth(&self, headers: &HeaderMap) -> Result<Account> {
        let token = credential(headers)
            .ok_or_else(|| Error::Unauthorized("Requires authentication".into()))?;
        let w = lock(&self.world);
        let t = w
            .install_tokens
            .get(token)
            .ok_or_else(|| Error::Unauthorized("Bad credentials".into()))?;
        if t.expires_at <= crate::state::now() {
            return Err(Error::Unauthorized("Bad credentials".into()));
        }
        w.account_by_installation(t.installation_id)
            .cloned()
            .ok_or_else(|| Error::Unauthorized("Bad credentials".into()))
    }

    /// Requires an installation token that covers `owner`.
    pub(crate) fn owner_auth(&self, headers: &HeaderMap, owner: &str) -> Result<Account> {
        let acct = self.installation_auth(headers)?;
        if !acct.login.eq_ignore_ascii_case(owner) {
            return Err(Error::not_found());
        }
        Ok(acct)
    }
}
