//! [`DockerError`]: the one error type of the controller.
//!
//! Every variant that comes from a Docker call names the call (`op`, e.g.
//! `container_create`) so that logs, metrics and job failure reasons say what
//! failed. Messages come from the Docker engine or the transport; they never
//! hold a secret, because no secret is ever sent to Docker in a request (the
//! JIT config travels over the container's attached stdin only).

use std::time::Duration;

/// What can go wrong when berth talks to Docker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    /// The configured Docker host is not a form berth understands.
    #[error(
        "invalid Docker host `{host}`: {reason} \
         (use unix:///path/to/docker.sock, tcp://host:port or http://host:port)"
    )]
    InvalidHost { host: String, reason: String },

    /// The engine speaks an API older than berth needs.
    #[error(
        "the Docker engine speaks API {version}; berth needs API {} (Docker Engine 20.10) or newer",
        super::MIN_API_VERSION
    )]
    UnsupportedApi { version: String },

    /// The worker image is not in the engine. berth never pulls implicitly:
    /// the job fails with this reason.
    #[error("image `{image}` is not present in the Docker engine")]
    ImageMissing { image: String },

    /// The container (or network) named in the call does not exist.
    #[error("Docker {op}: not found: {message}")]
    NotFound { op: &'static str, message: String },

    /// Docker did not answer within the call timeout.
    #[error("Docker {op} did not answer within {after:?}")]
    Timeout { op: &'static str, after: Duration },

    /// The call conflicts with the current state, e.g. a container name that
    /// is already in use.
    #[error("Docker {op}: conflict: {message}")]
    Conflict { op: &'static str, message: String },

    /// A [`WorkerSpec`](super::WorkerSpec) or argument breaks berth's rules;
    /// nothing was sent to Docker.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// Any other error status from the Docker API.
    #[error("Docker {op} failed with HTTP {status}: {message}")]
    Api {
        op: &'static str,
        status: u16,
        message: String,
    },

    /// The connection to Docker failed or broke (refused, reset, closed).
    #[error("Docker {op}: connection failed: {message}")]
    Transport { op: &'static str, message: String },

    /// Docker answered something berth could not understand.
    #[error("Docker {op}: unexpected answer: {message}")]
    Protocol { op: &'static str, message: String },
}

impl DockerError {
    /// Whether retrying the same call later may succeed: timeouts, broken
    /// connections, 5xx and 429 answers. The caller decides how often (the
    /// dispatcher does a few retries with backoff); everything else fails the
    /// job at once.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The Docker call this error came from; `None` for errors raised before
    /// any call (invalid host or spec). `ImageMissing` is a create error.
    pub fn op(&self) -> Option<&'static str> {
        match self {
            Self::NotFound { op, .. }
            | Self::Timeout { op, .. }
            | Self::Conflict { op, .. }
            | Self::Api { op, .. }
            | Self::Transport { op, .. }
            | Self::Protocol { op, .. } => Some(op),
            Self::ImageMissing { .. } => Some("container_create"),
            Self::UnsupportedApi { .. } => Some("version"),
            Self::InvalidHost { .. } | Self::InvalidSpec(_) => None,
        }
    }

    /// Whether this is a "not found" answer (container or network gone).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Classifies a bollard error from the call `op`.
    pub(crate) fn from_bollard(
        op: &'static str,
        error: bollard::errors::Error,
        after: Duration,
    ) -> Self {
        use bollard::errors::Error as B;
        match error {
            B::DockerResponseServerError {
                status_code,
                message,
            } => match status_code {
                404 => Self::NotFound { op, message },
                409 => Self::Conflict { op, message },
                status => Self::Api {
                    op,
                    status,
                    message,
                },
            },
            B::RequestTimeoutError => Self::Timeout { op, after },
            B::DockerStreamError { error } => Self::Api {
                op,
                status: 500,
                message: error,
            },
            B::JsonDataError { message, .. } => Self::Protocol { op, message },
            e @ (B::JsonSerdeError { .. }
            | B::StrParseError { .. }
            | B::APIVersionParseError {}
            | B::HttpHeaderNotFoundError(_)
            | B::HttpHeaderToStrError { .. }) => Self::Protocol {
                op,
                message: with_sources(&e),
            },
            e => Self::Transport {
                op,
                message: with_sources(&e),
            },
        }
    }
}

/// An error's message followed by its causes, `a: b: c`. hyper's own messages
/// are terse ("client error (Connect)"); the cause says what really happened.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_status_codes() {
        let e = |status_code| {
            DockerError::from_bollard(
                "container_start",
                bollard::errors::Error::DockerResponseServerError {
                    status_code,
                    message: "m".into(),
                },
                Duration::from_secs(1),
            )
        };
        assert!(e(404).is_not_found());
        assert!(matches!(e(409), DockerError::Conflict { .. }));
        assert!(e(500).is_transient());
        assert!(e(503).is_transient());
        assert!(e(429).is_transient());
        assert!(!e(400).is_transient());
        assert!(!e(409).is_transient());
        assert_eq!(e(400).op(), Some("container_start"));
    }

    #[test]
    fn timeouts_and_transport_are_transient() {
        let t = DockerError::from_bollard(
            "ping",
            bollard::errors::Error::RequestTimeoutError,
            Duration::from_secs(2),
        );
        assert_eq!(
            t,
            DockerError::Timeout {
                op: "ping",
                after: Duration::from_secs(2)
            }
        );
        assert!(t.is_transient());
        let io = DockerError::from_bollard(
            "ping",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
            Duration::from_secs(2),
        );
        assert!(matches!(io, DockerError::Transport { .. }));
        assert!(io.is_transient());
        assert!(!DockerError::InvalidSpec("x".into()).is_transient());
        assert!(!DockerError::ImageMissing { image: "i".into() }.is_transient());
    }
}
