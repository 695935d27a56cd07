//! The per-job hook credential.
//!
//! Issued at hand-off ([`issue`]): 32 random bytes, `bhk_`-prefixed so that
//! secret scanners know it. The worker gets it over stdin, after the JIT
//! config; the store keeps its SHA-256 bound to the runner's name. It acts
//! for the job that holds that runner ([`job_of`]), and only while that job
//! is active: once the job ends every call is refused, so a leaked
//! credential is worth nothing after its job. It cannot name another job:
//! the job comes from the credential, never from the request.

use base64::Engine;
use rand::RngCore;

use crate::api::auth::hash_token;
use crate::context::Context;
use crate::store::{Job, StoreError};

/// Every hook credential starts with this.
pub const PREFIX: &str = "bhk_";

/// Why a hook call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing hook credential (send `Authorization: Bearer bhk_…`)")]
    Missing,
    #[error("invalid hook credential")]
    Invalid,
    #[error("job {0} has ended: its hook credential no longer works")]
    Ended(uuid::Uuid),
    #[error("the store is unavailable")]
    Unavailable,
}

/// A new credential.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Makes a credential for `runner_name` and records its hash.
pub async fn issue(ctx: &Context, runner_name: &str) -> Result<String, StoreError> {
    let credential = generate();
    ctx.store
        .hook_credential_insert(&hash_token(&credential), runner_name)
        .await?;
    Ok(credential)
}

/// The active job a request's credential acts for.
pub async fn job_of(ctx: &Context, authorization: Option<&str>) -> Result<Job, Refusal> {
    let credential = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(Refusal::Missing)?;
    if !credential.starts_with(PREFIX) || credential.len() > 128 {
        return Err(Refusal::Invalid);
    }
    let job = ctx
        .store
        .hook_credential_job(&hash_token(credential))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "looking up a hook credential failed");
            Refusal::Unavailable
        })?
        .ok_or(Refusal::Invalid)?;
    if !job.state.is_active() {
        return Err(Refusal::Ended(job.id));
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_random_and_recognisable() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43);
        assert!(
            a[PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }
}
