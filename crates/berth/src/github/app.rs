//! GitHub App authentication: the RS256 JWT that proves berth is the App.
//!
//! GitHub accepts a JWT whose `iat` is at most 60 s in the future and whose
//! `exp` is at most 10 minutes after `iat`. Clocks drift, so `iat` is set 60 s
//! in the past and `exp` 9 minutes ahead, as GitHub's documentation advises.
//!
//! The private key is a [`LiveSecret`]: each JWT is signed with the key in
//! use at that moment, so a key rotated in its file or in Vault
//! (crate::secrets) is used from the next JWT on, without a restart. The
//! parsed key is cached until the secret's version changes.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::GithubError;
use crate::config::Secret;
use crate::secrets::LiveSecret;

/// Signs App JWTs. Holds the private key; its `Debug` output never shows it.
pub struct AppAuth {
    issuer: String,
    key: LiveSecret,
    /// The parsed key and the version of `key` it was parsed from.
    parsed: Mutex<(u64, EncodingKey)>,
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
        Self::live(issuer, LiveSecret::new(pem.clone()))
    }

    /// Signs with whatever key `key` holds when a JWT is made.
    pub fn live(issuer: impl Into<String>, key: LiveSecret) -> Result<Self, GithubError> {
        let version = key.version();
        let parsed = parse(&key.current())?;
        Ok(Self {
            issuer: issuer.into(),
            key,
            parsed: Mutex::new((version, parsed)),
        })
    }

    /// The parsed key of the current version of the secret.
    fn encoding_key(&self) -> Result<EncodingKey, GithubError> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        let version = self.key.version();
        if parsed.0 != version {
            *parsed = (version, parse(&self.key.current())?);
            tracing::info!(issuer = %self.issuer, "signing GitHub App JWTs with the new private key");
        }
        Ok(parsed.1.clone())
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
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &self.encoding_key()?,
        )
        .map_err(|e| GithubError::Config(format!("cannot sign the App JWT: {e}")))
    }
}

fn parse(pem: &Secret) -> Result<EncodingKey, GithubError> {
    EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|e| {
        // jsonwebtoken's message names the parsing problem, never the key bytes.
        GithubError::Config(format!(
            "the GitHub App private key is not a valid RSA PEM key: {e}"
        ))
    })
}
