//! The middle layer's one error type.
//!
//! The components between the edges (dispatch, the job lifecycle, the
//! reconcilers) call the store, Docker, GitHub and the Actions service, each
//! with its own error type. [`Error`] wraps them all, so that a caller can
//! ask one question, [`Error::is_transient`] (will trying again later
//! help?), and count failures by [`Error::kind`] (a metric label), without
//! sorting four error types by hand.

use crate::docker::controller::DockerError;
use crate::github::GithubError;
use crate::scaleset::ScaleSetError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Github(#[from] GithubError),
    #[error(transparent)]
    ScaleSet(#[from] ScaleSetError),
    /// Something the configuration does not allow or no longer has (a job's
    /// pool removed, no GitHub App, a duration out of range).
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            // A statement or a connection that failed may work next time; a
            // corrupt row or a refused transition will not.
            Error::Store(e) => matches!(e, StoreError::Query { .. } | StoreError::Connect { .. }),
            Error::Docker(e) => e.is_transient(),
            Error::Github(e) => e.is_transient(),
            Error::ScaleSet(e) => e.is_transient(),
            Error::Config(_) => false,
        }
    }

    /// Where it failed, as a metric label: `store`, `docker`, `github`,
    /// `scale_set` or `config`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Store(_) => "store",
            Error::Docker(_) => "docker",
            Error::Github(_) => "github",
            Error::ScaleSet(_) => "scale_set",
            Error::Config(_) => "config",
        }
    }
}

/// Every [`Error::kind`], for metrics created at zero.
pub const KINDS: [&str; 5] = ["store", "docker", "github", "scale_set", "config"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transience_and_kind_follow_the_wrapped_error() {
        let refused = Error::from(GithubError::Http {
            endpoint: "generate_jitconfig",
            status: 422,
            message: "bad labels".into(),
        });
        assert!(!refused.is_transient());
        assert_eq!(refused.kind(), "github");
        let outage = Error::from(GithubError::Http {
            endpoint: "generate_jitconfig",
            status: 502,
            message: "bad gateway".into(),
        });
        assert!(outage.is_transient());
        let conflict = Error::from(ScaleSetError::SessionConflict("held".into()));
        assert!(conflict.is_transient());
        assert_eq!(conflict.kind(), "scale_set");
        let config = Error::Config("pool `x` is no longer configured".into());
        assert!(!config.is_transient());
        assert_eq!(config.to_string(), "pool `x` is no longer configured");
        assert!(KINDS.contains(&config.kind()));
    }
}
