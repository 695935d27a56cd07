//! API authentication: bearer tokens with scopes.
//!
//! A token is 32 random bytes, shown once when created. The store keeps only
//! its SHA-256 (tokens are high-entropy, so a fast hash is enough: nothing can
//! be brute-forced from it). A request's token is hashed and looked up by
//! hash; the stored hash is then compared in constant time as a second guard.

use axum::http::HeaderMap;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

/// Creates a token with `scope`, stores its hash and returns the token itself.
pub async fn create_token(
    store: &Store,
    name: &str,
    scope: ApiTokenScope,
) -> Result<(String, ApiToken), crate::store::StoreError> {
    let token = generate_token();
    let stored = store
        .api_token_insert(NewApiToken {
            name: name.to_string(),
            scope,
            token_hash: hash_token(&token),
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
}

impl Need {
    fn allows(self, scope: ApiTokenScope) -> bool {
        match self {
            Need::Delegate => matches!(scope, ApiTokenScope::Delegate | ApiTokenScope::Admin),
            Need::Read => matches!(scope, ApiTokenScope::Read | ApiTokenScope::Admin),
            Need::Admin => scope == ApiTokenScope::Admin,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Need::Delegate => "the `delegate` or `admin` scope",
            Need::Read => "the `read` or `admin` scope",
            Need::Admin => "the `admin` scope",
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

/// Checks the request's bearer token against the store.
pub async fn authorize(
    store: &Store,
    headers: &HeaderMap,
    need: Need,
) -> Result<ApiToken, AuthError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing)?;
    let token = bearer_token(value).ok_or(AuthError::Missing)?;
    let presented = hash_token(token);
    let stored = store
        .api_token_find_by_hash(&presented)
        .await
        .map_err(|_| AuthError::Unavailable)?
        .ok_or(AuthError::Invalid)?;
    if !bool::from(stored.token_hash.as_bytes().ct_eq(presented.as_bytes())) {
        return Err(AuthError::Invalid);
    }
    if !need.allows(stored.scope) {
        return Err(AuthError::Forbidden {
            have: stored.scope,
            need: need.describe(),
        });
    }
    Ok(stored)
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
    fn scopes() {
        assert!(Need::Delegate.allows(ApiTokenScope::Delegate));
        assert!(!Need::Delegate.allows(ApiTokenScope::Read));
        assert!(Need::Read.allows(ApiTokenScope::Admin));
        assert!(!Need::Read.allows(ApiTokenScope::Delegate));
        assert!(!Need::Admin.allows(ApiTokenScope::Read));
    }
}
