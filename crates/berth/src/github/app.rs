//! GitHub App authentication: the RS256 JWT that proves berth is the App.
//!
//! GitHub accepts a JWT whose `iat` is at most 60 s in the future and whose
//! `exp` is at most 10 minutes after `iat`. Clocks drift, so `iat` is set 60 s
//! in the past and `exp` 9 minutes ahead, as GitHub's documentation advises.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::GithubError;
use crate::config::Secret;

/// Signs App JWTs. Holds the private key; its `Debug` output never shows it.
pub struct AppAuth {
    issuer: String,
    key: EncodingKey,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iat: u64,
    exp: u64,
    iss: &'a str,
}

impl AppAuth {
    /// `issuer` is the App id or its client id; `pem` the App's private key.
    pub fn new(issuer: impl Into<String>, pem: &Secret) -> Result<Self, GithubError> {
        let key = EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|e| {
            // jsonwebtoken's message names the parsing problem, never the key bytes.
            GithubError::Config(format!(
                "the GitHub App private key is not a valid RSA PEM key: {e}"
            ))
        })?;
        Ok(Self {
            issuer: issuer.into(),
            key,
        })
    }

    /// A fresh App JWT, valid for 9 minutes.
    pub fn jwt(&self) -> Result<String, GithubError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let claims = Claims {
            iat: now.saturating_sub(60),
            exp: now + 9 * 60,
            iss: &self.issuer,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| GithubError::Config(format!("cannot sign the App JWT: {e}")))
    }
}
