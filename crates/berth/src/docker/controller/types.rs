//! What the controller returns: container state, managed containers, events,
//! and log options. Plain data, no bollard types, so callers do not depend on
//! the Docker client.

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

/// A container's state as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// A state this version of berth does not know (kept verbatim).
    Other(String),
}

impl ContainerStatus {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Whether the container's process has ended (it will not run again:
    /// workers have no restart policy).
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Exited | Self::Dead)
    }
}

/// The parts of `docker inspect` berth acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// The image ID the container was created from.
    pub image: String,
    pub status: ContainerStatus,
    pub running: bool,
    /// Set once the container has finished (`exited` or `dead`).
    pub exit_code: Option<i64>,
    /// The kernel's OOM killer ended a process of the container.
    pub oom_killed: bool,
    /// Docker's error for the container (e.g. why it failed to start).
    pub error: Option<String>,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub labels: BTreeMap<String, String>,
}

/// One container labelled `berth.managed=true`, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub status: ContainerStatus,
    pub created: OffsetDateTime,
}

/// What happened to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEventKind {
    Start,
    /// The container's main process ended, with its exit code when Docker
    /// gave one (137 after SIGKILL, including the OOM killer's).
    Die {
        exit_code: Option<i64>,
    },
    /// The OOM killer struck inside the container (a `die` follows if the
    /// main process was killed).
    Oom,
    /// The container was removed.
    Destroy,
    /// Any other action (not subscribed to today; kept for forward
    /// compatibility).
    Other(String),
}

/// One Docker event about a berth container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub kind: ContainerEventKind,
    pub container_id: String,
    /// The container's name, when Docker gave it.
    pub name: Option<String>,
    /// The container's `berth.*` labels (Docker sends labels mixed with other
    /// attributes; only berth's are kept).
    pub labels: BTreeMap<String, String>,
    /// When it happened, per the Docker daemon's clock. Pass the time of the
    /// last event handled as `since` when re-subscribing.
    pub time: OffsetDateTime,
}

impl ContainerEvent {
    /// Builds an event from Docker's `Action`, actor id, attributes and time.
    pub(crate) fn from_parts(
        action: &str,
        container_id: String,
        attributes: &HashMap<String, String>,
        time: OffsetDateTime,
    ) -> Self {
        let kind = match action {
            "start" => ContainerEventKind::Start,
            "die" => ContainerEventKind::Die {
                exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
            },
            "oom" => ContainerEventKind::Oom,
            "destroy" => ContainerEventKind::Destroy,
            other => ContainerEventKind::Other(other.to_owned()),
        };
        let labels = attributes
            .iter()
            .filter(|(k, _)| k.starts_with("berth."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self {
            kind,
            container_id,
            name: attributes.get("name").cloned(),
            labels,
            time,
        }
    }
}

/// What [`Controller::logs`](super::Controller::logs) returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOptions {
    /// Only output from this time on (whole seconds: Docker's granularity, so
    /// a resumed read can repeat lines of that second). `None`: from the first
    /// byte.
    pub since: Option<OffsetDateTime>,
    /// Keep the stream open and yield new output until the container exits.
    pub follow: bool,
    /// Prefix every line with Docker's RFC 3339 timestamp and a space.
    pub timestamps: bool,
}

impl LogOptions {
    /// Everything logged so far, then the stream ends.
    pub fn all() -> Self {
        Self::default()
    }

    /// Everything from the first byte, then new output until the container
    /// exits.
    pub fn follow() -> Self {
        Self {
            follow: true,
            ..Self::default()
        }
    }
}

/// Parses one of Docker's RFC 3339 timestamps; Docker's "zero time"
/// (`0001-01-01T00:00:00Z`, meaning never) and garbage give `None`.
pub(crate) fn parse_docker_time(s: &str) -> Option<OffsetDateTime> {
    if s.starts_with("0001-01-01") {
        return None;
    }
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_times() {
        let t = parse_docker_time("2024-05-01T10:20:30.123456789Z").expect("parsed");
        assert_eq!(t.nanosecond(), 123_456_789);
        assert_eq!(parse_docker_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_docker_time(""), None);
    }

    #[test]
    fn die_event_keeps_exit_code_and_berth_labels() {
        let attributes = HashMap::from([
            ("exitCode".to_owned(), "3".to_owned()),
            ("name".to_owned(), "berth-x".to_owned()),
            ("image".to_owned(), "img".to_owned()),
            ("berth.job".to_owned(), "x".to_owned()),
        ]);
        let e =
            ContainerEvent::from_parts("die", "id".into(), &attributes, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(e.kind, ContainerEventKind::Die { exit_code: Some(3) });
        assert_eq!(e.name.as_deref(), Some("berth-x"));
        assert_eq!(e.labels.len(), 1);
    }
}
