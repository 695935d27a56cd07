//! API authentication: bearer tokens with scopes.
//!
//! A token is 32 random bytes, shown once when created. The store keeps only
//! its SHA-256 (tokens are high-entropy, so a fast hash is enough: nothing can
//! be brute-forced from it). A request's token is hashed and looked up by
//! hash; the stored hash is then compared in constant time as a second guard.
//!
//! # Lifecycle
//!
//! A token may carry an expiry (`berth token create --expires-in 90d`) and may
//! be revoked (`POST /v1/tokens/{id}/revoke`); either way it is refused with
//! 401 from then on, and its row stays for the listing. When it was last
//! used is recorded, but not on every request: that would turn every read
//! into a write (and on SQLite, every request would queue for the one
//! writer). [`authorize`] records it only when the stored time is unset or
//! older than [`LAST_USED_RESOLUTION`], in a task of its own, off the
//! request's path: at most about once a minute per token.
//!
//! # Dashboard sessions
//!
//! A browser cannot send a bearer header, so the dashboard keeps a token in
//! a cookie. Not the token typed in: [`create_session`] makes a new `read`
//! token for the cookie (`session_of` naming the one it was made from),
//! which lives [`SESSION_LIFETIME`] at most. So a cookie that leaks is worth
//! a few hours of reading, never an `admin` token, and revoking the token
//! one signed in with ends its sessions too.

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use time::OffsetDateTime;

use crate::store::{ApiToken, ApiTokenScope, NewApiToken, Store};

/// Every token starts with this, so secret scanners can recognise one.
pub const TOKEN_PREFIX: &str = "berth_";

/// Why a request is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (send `Authorization: Bearer <token>`)")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
    #[error("this token expired (make a new one with `berth token create`)")]
    Expired,
    #[error("this token was revoked")]
    Revoked,
    #[error("this token's scope `{have}` does not allow this request (needs {need})")]
    Forbidden {
        have: ApiTokenScope,
        need: &'static str,
    },
    #[error("the token store is unavailable")]
    Unavailable,
}

/// A new random token (`berth_…`).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Hex SHA-256 of a token, as stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// How stale the recorded `last_used_at` may get before a request records
/// it again.
pub const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);

/// How long a dashboard session lasts (at most: never past the expiry of
/// the token it was made from).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The name of every dashboard session token.
pub const SESSION_NAME: &str = "dashboard session";

/// Creates a token with `scope` that does not expire, stores its hash and
/// returns the token itself.
pub async fn create_token(
    store: &Store,
    name: &str,
    scope: ApiTokenScope,
) -> Result<(String, ApiToken), crate::store::StoreError> {
    create_token_expiring(store, name, scope, None).await
}

/// Creates a token with `scope` that stops working at `expires_at` (never
/// for `None`), stores its hash and returns the token itself.
pub async fn create_token_expiring(
    store: &Store,
    name: &str,
    scope: ApiTokenScope,
    expires_at: Option<OffsetDateTime>,
) -> Result<(String, ApiToken), crate::store::StoreError> {
    let token = generate_token();
    let stored = store
        .api_token_insert(NewApiToken {
            name: name.to_string(),
            scope,
            token_hash: hash_token(&token),
            expires_at,
            session_of: None,
        })
        .await?;
    Ok((token, stored))
}

/// Creates a dashboard session for someone who signed in with `parent`: a
/// `read` token (whatever `parent`'s scope) expiring after
/// [`SESSION_LIFETIME`] or with `parent`, whichever comes first. A session
/// made from a session hangs off the same original token, so revoking that
/// one still ends them all.
pub async fn create_session(
    store: &Store,
    parent: &ApiToken,
) -> Result<(String, ApiToken), crate::store::StoreError> {
    let lifetime_end = store.now() + SESSION_LIFETIME;
    let expires_at = match parent.expires_at {
        Some(parent_end) if parent_end < lifetime_end => parent_end,
        _ => lifetime_end,
    };
    let token = generate_token();
    let stored = store
        .api_token_insert(NewApiToken {
            name: SESSION_NAME.to_string(),
            scope: ApiTokenScope::Read,
            token_hash: hash_token(&token),
            expires_at: Some(expires_at),
            session_of: Some(parent.session_of.unwrap_or(parent.id)),
        })
        .await?;
    Ok((token, stored))
}

/// What a request may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `POST /v1/jobs/delegate`: `delegate` or `admin`.
    Delegate,
    /// Reading jobs, logs, metrics: `read` or `admin`.
    Read,
    /// Changing jobs: `admin`.
    Admin,
    /// `POST /v1/security/events`: `security` or `admin`.
    Security,
}

impl Need {
    fn allows(self, scope: ApiTokenScope) -> bool {
        match self {
            Need::Delegate => matches!(scope, ApiTokenScope::Delegate | ApiTokenScope::Admin),
            Need::Read => matches!(scope, ApiTokenScope::Read | ApiTokenScope::Admin),
            Need::Admin => scope == ApiTokenScope::Admin,
            Need::Security => matches!(scope, ApiTokenScope::Security | ApiTokenScope::Admin),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Need::Delegate => "the `delegate` or `admin` scope",
            Need::Read => "the `read` or `admin` scope",
            Need::Admin => "the `admin` scope",
            Need::Security => "the `security` or `admin` scope",
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110, 11.1): `bearer` and `BEARER` work too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The password of an `Authorization: Basic …` value (any user name).
fn basic_password(value: &str) -> Option<String> {
    let (scheme, encoded) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// Checks the request's bearer token against the store: known, not
/// revoked, not expired, with a scope that allows `need`. On success, the
/// token's `last_used_at` is brought up to date if it is stale (see the
/// module documentation). For [`Need::Security`] the token may also come as
/// the password of Basic authentication, the one way Falco's `http_output`
/// can send it (docs/runtime-security.md).
pub async fn authorize(
    store: &Store,
    headers: &HeaderMap,
    need: Need,
) -> Result<ApiToken, AuthError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing)?;
    let basic;
    let token = match bearer_token(value) {
        Some(token) => token,
        // Falco's http_output cannot send a header, but libcurl turns a
        // URL's `user:password@` into Basic authentication.
        None if need == Need::Security => {
            basic = basic_password(value).ok_or(AuthError::Missing)?;
            basic.as_str()
        }
        None => return Err(AuthError::Missing),
    };
    let presented = hash_token(token);
    let stored = store
        .api_token_find_by_hash(&presented)
        .await
        .map_err(|_| AuthError::Unavailable)?
        .ok_or(AuthError::Invalid)?;
    if !bool::from(stored.token_hash.as_bytes().ct_eq(presented.as_bytes())) {
        return Err(AuthError::Invalid);
    }
    if stored.is_revoked() {
        return Err(AuthError::Revoked);
    }
    let now = store.now();
    if stored.is_expired_at(now) {
        return Err(AuthError::Expired);
    }
    if !need.allows(stored.scope) {
        return Err(AuthError::Forbidden {
            have: stored.scope,
            need: need.describe(),
        });
    }
    if last_used_is_stale(stored.last_used_at, now) {
        let store = store.clone();
        let id = stored.id;
        tokio::spawn(async move {
            if let Err(e) = store.api_token_touch(id).await {
                tracing::warn!(token_id = %id, error = %e, "cannot record when a token was used");
            }
        });
    }
    Ok(stored)
}

/// Whether `last_used_at` should be recorded again at `now`.
fn last_used_is_stale(last_used_at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    match last_used_at {
        None => true,
        Some(at) => now - at >= LAST_USED_RESOLUTION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() > 40);
        assert_eq!(hash_token(&a).len(), 64);
        assert!(!hash_token(&a).contains(&a[TOKEN_PREFIX.len()..]));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "BeArEr  abc "] {
            assert_eq!(bearer_token(value), Some("abc"), "{value}");
        }
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
    }

    #[test]
    fn last_used_is_recorded_about_once_a_minute() {
        let now = OffsetDateTime::now_utc();
        assert!(last_used_is_stale(None, now));
        assert!(!last_used_is_stale(Some(now), now));
        assert!(!last_used_is_stale(
            Some(now - Duration::from_secs(59)),
            now
        ));
        assert!(last_used_is_stale(Some(now - Duration::from_secs(60)), now));
        // A clock that went backwards does not record on every request.
        assert!(!last_used_is_stale(Some(now + Duration::from_secs(5)), now));
    }

    #[test]
    fn scopes() {
        assert!(Need::Delegate.allows(ApiTokenScope::Delegate));
        assert!(!Need::Delegate.allows(ApiTokenScope::Read));
        assert!(Need::Read.allows(ApiTokenScope::Admin));
        assert!(!Need::Read.allows(ApiTokenScope::Delegate));
        assert!(!Need::Admin.allows(ApiTokenScope::Read));
        assert!(Need::Security.allows(ApiTokenScope::Security));
        assert!(Need::Security.allows(ApiTokenScope::Admin));
        assert!(!Need::Read.allows(ApiTokenScope::Security));
        assert!(!Need::Delegate.allows(ApiTokenScope::Security));
        assert!(!Need::Security.allows(ApiTokenScope::Read));
    }
}
