//! The simulator's one error type.
//!
//! GitHub has three error dialects and the simulator speaks all of them:
//! the REST API answers `{message, documentation_url}`, the Actions service
//! (scale sets, agents) answers a .NET-style exception object
//! `{message, typeName, typeKey, …}`, and the runner broker answers
//! `{source, errorKind, statusCode, errorMessage}`. Every handler returns
//! [`Error`]; the variant decides the status code and, for the two non-REST
//! dialects, the variant carries what the body needs.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Where GitHub's REST error bodies point.
pub const DOCS_URL: &str = "https://docs.github.com/rest";

/// Every failure in the simulator, its HTTP handlers and the runner stand-in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 404 `{message: "Not Found"}` (REST).
    #[error("not found: {0}")]
    NotFound(String),
    /// 401 (REST and Actions service).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403 (REST).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 409 (REST).
    #[error("conflict: {0}")]
    Conflict(String),
    /// 422 with the `errors` list (REST validation-error-simple).
    #[error("validation failed: {message}")]
    Validation {
        /// Top-level message.
        message: String,
        /// One string per problem.
        errors: Vec<String>,
    },
    /// 400 (REST).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An Actions-service exception (`typeKey` like `AgentExistsException`).
    #[error("{type_key}: {message}")]
    Actions {
        /// HTTP status.
        status: StatusCode,
        /// Short exception name, e.g. `AgentNotFoundException`.
        type_key: &'static str,
        /// Human readable message.
        message: String,
    },
    /// A runner-broker error (`errorKind` like `RunnerNotFound`).
    #[error("{kind}: {message}")]
    Broker {
        /// HTTP status.
        status: StatusCode,
        /// `errorKind` value.
        kind: &'static str,
        /// Human readable message.
        message: String,
    },
    /// Bad simulator configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Key parsing, signing or verification that is not the caller's fault.
    #[error("crypto: {0}")]
    Crypto(String),
    /// I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP client errors (webhook delivery, the runner stand-in).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// JSON (de)serialisation.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A runner-level failure of the stand-in, with the exit code it maps to.
    #[error("{message}")]
    Runner {
        /// Process exit code.
        code: i32,
        /// What went wrong (printed on stderr).
        message: String,
    },
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A 404 with GitHub's usual message.
    pub fn not_found() -> Self {
        Error::NotFound("Not Found".into())
    }

    /// A 422 with one error string.
    pub fn validation(message: impl Into<String>, error: impl Into<String>) -> Self {
        Error::Validation {
            message: message.into(),
            errors: vec![error.into()],
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::BadRequest(_) | Error::Json(_) => StatusCode::BAD_REQUEST,
            Error::Actions { status, .. } | Error::Broker { status, .. } => *status,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Error::NotFound(m)
            | Error::Unauthorized(m)
            | Error::Forbidden(m)
            | Error::Conflict(m)
            | Error::BadRequest(m) => json!({"message": m, "documentation_url": DOCS_URL}),
            Error::Validation { message, errors } => {
                json!({"message": message, "documentation_url": DOCS_URL, "errors": errors})
            }
            Error::Actions {
                type_key, message, ..
            } => json!({
                "$id": "1",
                "innerException": null,
                "message": message,
                "typeName": format!("GitHub.DistributedTask.WebApi.{type_key}, GitHub.DistributedTask.WebApi"),
                "typeKey": type_key,
                "errorCode": 0,
                "eventId": 3000,
            }),
            Error::Broker { kind, message, .. } => json!({
                "source": "ghsim-broker",
                "errorKind": kind,
                "statusCode": status.as_u16(),
                "errorMessage": message,
            }),
            other => json!({"message": other.to_string(), "documentation_url": DOCS_URL}),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED && !matches!(self, Error::Actions { .. }) {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
