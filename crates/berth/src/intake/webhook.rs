//! GitHub `workflow_job` webhooks: signature check and parsing.
//!
//! The signature is checked over the raw body before anything is parsed, so a
//! forged delivery costs one HMAC and changes nothing. Only the fields berth
//! acts on are read; everything else in GitHub's payload is ignored, so new
//! fields GitHub adds never break intake.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// GitHub caps webhook payloads at 25 MB; larger bodies are refused with 413.
pub const MAX_WEBHOOK_BYTES: usize = 25 * 1024 * 1024;

/// Why a delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing X-Hub-Signature-256 header")]
    MissingSignature,
    #[error("X-Hub-Signature-256 does not match the body")]
    BadSignature,
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(secret, body),
/// in constant time (`Mac::verify_slice`).
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(WebhookError::BadSignature)?;
    let expected = hex::decode(hex_sig).map_err(|_| WebhookError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::BadSignature)
}

/// The signature header value for `body` (used by tests and the simulator's peers).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What happened to a job, as a `workflow_job` delivery tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Queued,
    Waiting,
    InProgress,
    Completed,
}

/// The parts of a `workflow_job` event berth acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowJobEvent {
    pub action: Action,
    pub job_id: i64,
    pub run_id: i64,
    pub repository: String,
    pub workflow: Option<String>,
    pub job_name: Option<String>,
    pub labels: Vec<String>,
    pub runner_name: Option<String>,
    pub runner_id: Option<i64>,
    pub conclusion: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    action: String,
    workflow_job: Option<JobPayload>,
    repository: Option<RepositoryPayload>,
}

#[derive(Deserialize)]
struct JobPayload {
    id: i64,
    run_id: i64,
    name: Option<String>,
    workflow_name: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    runner_name: Option<String>,
    runner_id: Option<i64>,
    conclusion: Option<String>,
}

#[derive(Deserialize)]
struct RepositoryPayload {
    full_name: String,
}

/// Parses a `workflow_job` payload. `Ok(None)` for actions berth does not act on.
pub fn parse_workflow_job(body: &[u8]) -> Result<Option<WorkflowJobEvent>, WebhookError> {
    let payload: Payload =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    let action = match payload.action.as_str() {
        "queued" => Action::Queued,
        "waiting" => Action::Waiting,
        "in_progress" => Action::InProgress,
        "completed" => Action::Completed,
        _ => return Ok(None),
    };
    let job = payload
        .workflow_job
        .ok_or_else(|| WebhookError::Malformed("missing field `workflow_job`".into()))?;
    let repository = payload
        .repository
        .ok_or_else(|| WebhookError::Malformed("missing field `repository`".into()))?
        .full_name;
    crate::names::split_repository(&repository)
        .map_err(|e| WebhookError::Malformed(format!("`repository.full_name`: {e}")))?;
    crate::names::check_labels(&job.labels)
        .map_err(|e| WebhookError::Malformed(format!("`workflow_job.labels`: {e}")))?;
    // The store keeps these as text, which PostgreSQL refuses with NUL.
    let texts = [
        Some(repository.as_str()),
        job.name.as_deref(),
        job.workflow_name.as_deref(),
        job.runner_name.as_deref(),
        job.conclusion.as_deref(),
    ];
    if texts
        .into_iter()
        .flatten()
        .chain(job.labels.iter().map(String::as_str))
        .any(|t| t.contains('\0'))
    {
        return Err(WebhookError::Malformed(
            "text fields must not contain NUL characters".into(),
        ));
    }
    Ok(Some(WorkflowJobEvent {
        action,
        job_id: job.id,
        run_id: job.run_id,
        repository,
        workflow: job
            .workflow_name
            .filter(|s| !s.is_empty())
            .map(crate::names::bounded_text),
        job_name: job
            .name
            .filter(|s| !s.is_empty())
            .map(crate::names::bounded_text),
        labels: job.labels,
        runner_name: job
            .runner_name
            .filter(|s| !s.is_empty())
            .map(crate::names::bounded_text),
        runner_id: job.runner_id.filter(|id| *id > 0),
        conclusion: job.conclusion,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/webhooks/");
        std::fs::read(format!("{root}{path}")).unwrap()
    }

    #[test]
    fn signature_test_vector_from_github_docs() {
        let v: serde_json::Value =
            serde_json::from_slice(&fixture("signature-test-vector.json")).unwrap();
        let secret = v["secret"].as_str().unwrap().as_bytes();
        let payload = v["payload"].as_str().unwrap().as_bytes();
        let header = v["x_hub_signature_256"].as_str().unwrap();
        assert_eq!(sign(secret, payload), header);
        assert_eq!(verify_signature(secret, payload, Some(header)), Ok(()));
        assert_eq!(
            verify_signature(b"wrong", payload, Some(header)),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(secret, b"Hello, World?", Some(header)),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(secret, payload, None),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify_signature(secret, payload, Some("sha1=abc")),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn signed_fixture_deliveries_verify_and_parse() {
        let v: serde_json::Value =
            serde_json::from_slice(&fixture("signed-deliveries.synthetic.json")).unwrap();
        let secret = v["secret"].as_str().unwrap().as_bytes();
        for d in v["deliveries"].as_array().unwrap() {
            let body = fixture(d["body_file"].as_str().unwrap());
            let header = d["headers"]["X-Hub-Signature-256"].as_str().unwrap();
            verify_signature(secret, &body, Some(header)).unwrap();
            let event = parse_workflow_job(&body).unwrap().unwrap();
            assert!(event.job_id > 0 && event.repository.contains('/'));
        }
    }

    #[test]
    fn parses_in_progress_runner_binding() {
        let e = parse_workflow_job(&fixture("examples/in_progress.payload.json"))
            .unwrap()
            .unwrap();
        assert_eq!(e.action, Action::InProgress);
        assert_eq!(e.job_id, 289782451);
        assert_eq!(e.runner_name.as_deref(), Some("GitHub Actions 5"));
        assert_eq!(e.workflow.as_deref(), Some("CodeQL"));
    }

    #[test]
    fn malformed_payloads_are_named() {
        assert!(matches!(
            parse_workflow_job(b"{"),
            Err(WebhookError::Malformed(_))
        ));
        let err = parse_workflow_job(br#"{"action":"queued","repository":{"full_name":"a/b"}}"#)
            .unwrap_err();
        assert_eq!(
            err,
            WebhookError::Malformed("missing field `workflow_job`".into())
        );
        let err = parse_workflow_job(br#"{"action":"queued","workflow_job":{"id":"x","run_id":1},"repository":{"full_name":"a/b"}}"#).unwrap_err();
        assert!(err.to_string().contains("id"), "{err}");
        assert_eq!(
            parse_workflow_job(br#"{"action":"something_new"}"#),
            Ok(None)
        );
    }
}
