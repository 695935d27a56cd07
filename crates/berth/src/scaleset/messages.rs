//! What the Actions service says about a scale set: statistics, sessions,
//! scale sets, and the job messages of the long poll.
//!
//! A poll answers one `RunnerScaleSetJobMessages` message whose `body` is a
//! JSON *string* holding an array of job messages (`JobAvailable`,
//! `JobAssigned`, `JobStarted`, `JobCompleted`); unknown kinds are skipped,
//! as actions/scaleset does. Times the service has not reached yet come as
//! Go's zero time (`0001-01-01T00:00:00Z`) and are read as `None`.

use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;

use super::ScaleSetError;
use crate::config::Secret;

/// A scale set's counters, sent with every message and session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Statistics {
    /// Jobs offered to the scale set and not acquired yet (older GHES).
    pub total_available_jobs: u32,
    pub total_acquired_jobs: u32,
    /// Jobs assigned to the scale set and not completed, running ones
    /// included: what the scale set is sized on.
    pub total_assigned_jobs: u32,
    pub total_running_jobs: u32,
    pub total_registered_runners: u32,
    pub total_busy_runners: u32,
    pub total_idle_runners: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Label {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A runner scale set.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSet {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub runner_group_id: u64,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub statistics: Option<Statistics>,
}

/// A message session. The queue token is a credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub session_id: String,
    #[serde(default)]
    pub owner_name: String,
    pub message_queue_url: String,
    pub message_queue_access_token: Secret,
    #[serde(default)]
    pub statistics: Option<Statistics>,
}

/// A runner registration as the service lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerReference {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub runner_scale_set_id: u64,
}

/// The kinds of job message berth acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobMessageKind {
    /// Older GHES: offered to the scale set; acquire it to have it assigned.
    Available,
    /// Assigned to the scale set: a runner of the scale set will take it.
    Assigned,
    /// A runner took it.
    Started,
    /// It ended (succeeded, failed or canceled), with or without a runner.
    Completed,
}

/// One job message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobMessage {
    #[serde(skip, default = "placeholder_kind")]
    pub kind: JobMessageKind,
    pub runner_request_id: i64,
    #[serde(default)]
    pub repository_name: String,
    #[serde(default)]
    pub owner_name: String,
    /// GitHub's job id as a decimal string; opaque.
    #[serde(default)]
    pub job_id: String,
    #[serde(default)]
    pub job_workflow_ref: String,
    #[serde(default)]
    pub job_display_name: String,
    #[serde(default)]
    pub workflow_run_id: i64,
    #[serde(default)]
    pub event_name: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub request_labels: Vec<String>,
    #[serde(default, deserialize_with = "go_time")]
    pub queue_time: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "go_time")]
    pub scale_set_assign_time: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "go_time")]
    pub runner_assign_time: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "go_time")]
    pub finish_time: Option<OffsetDateTime>,
    /// `JobStarted`, `JobCompleted`: the runner.
    #[serde(default)]
    pub runner_id: Option<u64>,
    #[serde(default)]
    pub runner_name: Option<String>,
    /// `JobCompleted`: `succeeded`, `failed`, `canceled`, …
    #[serde(default)]
    pub result: Option<String>,
}

fn placeholder_kind() -> JobMessageKind {
    JobMessageKind::Assigned
}

impl JobMessage {
    /// `owner/name`, when the message names both.
    pub fn repository(&self) -> Option<String> {
        (!self.owner_name.is_empty() && !self.repository_name.is_empty())
            .then(|| format!("{}/{}", self.owner_name, self.repository_name))
    }

    /// The runner that took the job, if the message names one.
    pub fn runner(&self) -> Option<&str> {
        self.runner_name.as_deref().filter(|n| !n.is_empty())
    }

    /// GitHub's conclusion for a `JobCompleted` result.
    pub fn conclusion(&self) -> Option<&'static str> {
        let result = self.result.as_deref()?;
        Some(match result.to_ascii_lowercase().as_str() {
            "succeeded" | "success" | "succeededwithissues" => "success",
            "canceled" | "cancelled" | "abandoned" => "cancelled",
            "skipped" => "skipped",
            _ => "failure",
        })
    }
}

/// One answer of the long poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub message_id: u64,
    pub statistics: Option<Statistics>,
    pub jobs: Vec<JobMessage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMessage {
    message_id: u64,
    message_type: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    statistics: Option<Statistics>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kind {
    message_type: String,
}

/// Parses a poll answer, body string and all.
pub fn parse_message(bytes: &[u8]) -> Result<Message, ScaleSetError> {
    let decode = |message: String| ScaleSetError::Decode {
        endpoint: "get_message",
        message,
    };
    let raw: RawMessage = serde_json::from_slice(bytes).map_err(|e| decode(e.to_string()))?;
    if raw.message_type != "RunnerScaleSetJobMessages" {
        return Err(decode(format!(
            "unsupported message type `{}`",
            raw.message_type
        )));
    }
    let mut jobs = Vec::new();
    if !raw.body.trim().is_empty() {
        let items: Vec<serde_json::Value> = serde_json::from_str(&raw.body)
            .map_err(|e| decode(format!("the body is not a JSON array: {e}")))?;
        for item in items {
            let kind: Kind =
                serde_json::from_value(item.clone()).map_err(|e| decode(e.to_string()))?;
            let kind = match kind.message_type.as_str() {
                "JobAvailable" => JobMessageKind::Available,
                "JobAssigned" => JobMessageKind::Assigned,
                "JobStarted" => JobMessageKind::Started,
                "JobCompleted" => JobMessageKind::Completed,
                _ => continue,
            };
            let mut job: JobMessage = serde_json::from_value(item)
                .map_err(|e| decode(format!("a {kind:?} message: {e}")))?;
            job.kind = kind;
            jobs.push(job);
        }
    }
    Ok(Message {
        message_id: raw.message_id,
        statistics: raw.statistics,
        jobs,
    })
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// RFC 3339, with Go's zero time (and anything before year 2) as `None`.
fn go_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    if text.starts_with("0001-") || text.is_empty() {
        return Ok(None);
    }
    let parsed = OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).ok();
    Ok(parsed.filter(|t| t.year() > 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &str = r#"{
        "messageId": 7,
        "messageType": "RunnerScaleSetJobMessages",
        "statistics": {"totalAvailableJobs": 0, "totalAcquiredJobs": 1, "totalAssignedJobs": 2,
                       "totalRunningJobs": 1, "totalRegisteredRunners": 2, "totalBusyRunners": 1,
                       "totalIdleRunners": 1},
        "body": "[{\"messageType\":\"JobAssigned\",\"runnerRequestId\":41,\"repositoryName\":\"widgets\",\"ownerName\":\"acme\",\"jobId\":\"9001\",\"jobWorkflowRef\":\"acme/widgets/.github/workflows/ci.yml@refs/heads/main\",\"jobDisplayName\":\"build\",\"workflowRunId\":77,\"eventName\":\"push\",\"requestLabels\":[\"berth-linux\"],\"queueTime\":\"2025-01-02T03:04:05.123456Z\",\"scaleSetAssignTime\":\"2025-01-02T03:04:06Z\",\"runnerAssignTime\":\"0001-01-01T00:00:00Z\",\"finishTime\":\"0001-01-01T00:00:00Z\"},{\"messageType\":\"JobStarted\",\"runnerRequestId\":40,\"runnerId\":12,\"runnerName\":\"berth-linux-abc-1\",\"queueTime\":\"2025-01-02T03:04:00Z\",\"runnerAssignTime\":\"2025-01-02T03:04:09Z\"},{\"messageType\":\"SomethingNew\",\"runnerRequestId\":1},{\"messageType\":\"JobCompleted\",\"runnerRequestId\":39,\"result\":\"canceled\",\"runnerId\":0,\"runnerName\":\"\",\"requestLabels\":null}]"
    }"#;

    #[test]
    fn parses_the_batched_body_and_skips_unknown_kinds() {
        let m = parse_message(MESSAGE.as_bytes()).unwrap();
        assert_eq!(m.message_id, 7);
        assert_eq!(m.statistics.unwrap().total_assigned_jobs, 2);
        assert_eq!(m.jobs.len(), 3);
        let assigned = &m.jobs[0];
        assert_eq!(assigned.kind, JobMessageKind::Assigned);
        assert_eq!(assigned.runner_request_id, 41);
        assert_eq!(assigned.repository().as_deref(), Some("acme/widgets"));
        assert_eq!(assigned.job_id, "9001");
        assert_eq!(assigned.request_labels, ["berth-linux"]);
        assert!(assigned.queue_time.is_some());
        assert_eq!(assigned.runner_assign_time, None, "Go's zero time");
        let started = &m.jobs[1];
        assert_eq!(started.kind, JobMessageKind::Started);
        assert_eq!(started.runner(), Some("berth-linux-abc-1"));
        let startup = started.runner_assign_time.unwrap() - started.queue_time.unwrap();
        assert_eq!(startup.whole_seconds(), 9);
        let completed = &m.jobs[2];
        assert_eq!(completed.kind, JobMessageKind::Completed);
        assert_eq!(completed.conclusion(), Some("cancelled"));
        assert_eq!(
            completed.runner(),
            None,
            "an empty runner name is no runner"
        );
    }

    #[test]
    fn refuses_other_message_types_and_bad_bodies() {
        let other = r#"{"messageId": 1, "messageType": "RunnerJobRequest", "body": "[]"}"#;
        assert!(parse_message(other.as_bytes()).is_err());
        let bad = r#"{"messageId": 1, "messageType": "RunnerScaleSetJobMessages", "body": "{"}"#;
        assert!(parse_message(bad.as_bytes()).is_err());
        let empty = r#"{"messageId": 3, "messageType": "RunnerScaleSetJobMessages", "body": ""}"#;
        assert!(parse_message(empty.as_bytes()).unwrap().jobs.is_empty());
    }

    #[test]
    fn session_debug_hides_the_queue_token() {
        let s: Session = serde_json::from_str(
            r#"{"sessionId": "5b6c", "ownerName": "x", "messageQueueUrl": "http://q",
                "messageQueueAccessToken": "mq_secret_value"}"#,
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("mq_secret_value"));
    }
}
