//! Falco's alerts as they arrive: parsed, checked, and keyed.
//!
//! Falco's `json_output` format (the body of its `http_output`, and of
//! falcosidekick's webhook output, which adds a `uuid`) is one object per
//! alert:
//!
//! ```json
//! {"hostname": "ci-host-1", "output": "…", "priority": "Critical",
//!  "rule": "Berth terminal shell in worker", "source": "syscall",
//!  "tags": ["berth"], "time": "2026-12-07T10:15:30.123456789Z",
//!  "output_fields": {"container.id": "0a1b2c3d4e5f", "proc.cmdline": "…"}}
//! ```
//!
//! `output_fields` holds each field of the rule's output under its name as
//! written there (`container.label[berth.job]`). Samples of each rule
//! berth ships are in `fixtures/falco/` with their source.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Most events one request may carry.
pub const MAX_BATCH: usize = 500;
/// Longest rule name accepted (Falco's own rules are far shorter).
const MAX_RULE_CHARS: usize = 200;
/// `output` is cut to this many bytes before it is stored.
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024;
/// Most output fields kept per event.
const MAX_OUTPUT_FIELDS: usize = 64;

/// Falco's priorities, lowest first (so they compare by severity). In the
/// configuration they are written as in Falco's rule files: lowercase,
/// capitalised or uppercase, `info` for `informational`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[serde(alias = "Debug", alias = "DEBUG")]
    Debug,
    #[serde(
        alias = "Informational",
        alias = "INFORMATIONAL",
        alias = "info",
        alias = "Info",
        alias = "INFO"
    )]
    Informational,
    #[serde(alias = "Notice", alias = "NOTICE")]
    Notice,
    #[serde(alias = "Warning", alias = "WARNING")]
    Warning,
    #[serde(alias = "Error", alias = "ERROR")]
    Error,
    #[serde(alias = "Critical", alias = "CRITICAL")]
    Critical,
    #[serde(alias = "Alert", alias = "ALERT")]
    Alert,
    #[serde(alias = "Emergency", alias = "EMERGENCY")]
    Emergency,
}

impl Priority {
    pub const ALL: [Priority; 8] = [
        Priority::Debug,
        Priority::Informational,
        Priority::Notice,
        Priority::Warning,
        Priority::Error,
        Priority::Critical,
        Priority::Alert,
        Priority::Emergency,
    ];

    /// The name as Falco writes it (`Critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Debug => "Debug",
            Priority::Informational => "Informational",
            Priority::Notice => "Notice",
            Priority::Warning => "Warning",
            Priority::Error => "Error",
            Priority::Critical => "Critical",
            Priority::Alert => "Alert",
            Priority::Emergency => "Emergency",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    /// As Falco writes it (`Critical`), in lowercase or in uppercase, and
    /// `info` for `Informational` (Falco's rule files say `INFO`): the
    /// forms the API description lists.
    fn from_str(s: &str) -> Result<Self, String> {
        if matches!(s, "info" | "Info" | "INFO") {
            return Ok(Priority::Informational);
        }
        Priority::ALL
            .into_iter()
            .find(|p| {
                let name = p.as_str();
                s == name || s == name.to_ascii_lowercase() || s == name.to_ascii_uppercase()
            })
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a Falco priority (one of: emergency, alert, critical, error, warning, notice, informational, debug)"
                )
            })
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FalcoEvent {
    pub rule: String,
    pub priority: Priority,
    pub time: OffsetDateTime,
    pub output: String,
    pub output_fields: serde_json::Map<String, serde_json::Value>,
    pub hostname: Option<String>,
    /// Tells a redelivery of this alert from a new one (see [`dedupe_key`]).
    pub dedupe_key: String,
}

/// The alert as Falco sends it; unknown fields (`source`, `tags`, newer
/// additions) are ignored.
#[derive(Deserialize)]
struct Wire {
    rule: String,
    priority: String,
    time: String,
    #[serde(default)]
    output: String,
    #[serde(default)]
    output_fields: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    hostname: Option<String>,
    /// falcosidekick's id of the alert.
    #[serde(default)]
    uuid: Option<String>,
}

/// Parses a request body: one alert (an object) or a batch (an array of
/// them). Any malformed alert refuses the whole body, naming it, so that
/// nothing of a bad request is acted on.
pub fn parse_body(body: &[u8]) -> Result<Vec<FalcoEvent>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                return Err("the batch is empty".into());
            }
            if items.len() > MAX_BATCH {
                return Err(format!(
                    "a batch holds at most {MAX_BATCH} events, not {}",
                    items.len()
                ));
            }
            items
        }
        object @ serde_json::Value::Object(_) => vec![object],
        _ => return Err("the body must be a Falco event (an object) or an array of them".into()),
    };
    let single = items.len() == 1;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            parse_event(item).map_err(|e| {
                if single {
                    format!("invalid Falco event: {e}")
                } else {
                    format!("invalid Falco event at index {i}: {e}")
                }
            })
        })
        .collect()
}

fn parse_event(value: serde_json::Value) -> Result<FalcoEvent, String> {
    let wire: Wire = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let rule = wire.rule;
    if rule.is_empty() {
        return Err("`rule` is empty".into());
    }
    if rule.chars().count() > MAX_RULE_CHARS || rule.contains('\0') {
        return Err(format!(
            "`rule` must be at most {MAX_RULE_CHARS} characters, without NUL"
        ));
    }
    let priority = wire
        .priority
        .parse::<Priority>()
        .map_err(|e| format!("`priority`: {e}"))?;
    let time = OffsetDateTime::parse(&wire.time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`time` is not an RFC 3339 time: {e}"))?;
    if wire.output_fields.len() > MAX_OUTPUT_FIELDS {
        return Err(format!(
            "`output_fields` holds more than {MAX_OUTPUT_FIELDS} fields"
        ));
    }
    let dedupe_key = dedupe_key(
        wire.uuid.as_deref(),
        wire.hostname.as_deref(),
        &rule,
        &wire.time,
        &wire.output,
    );
    Ok(FalcoEvent {
        rule,
        priority,
        time,
        output: strip_nul(truncate(wire.output, MAX_OUTPUT_BYTES)),
        output_fields: wire.output_fields,
        hostname: wire
            .hostname
            .map(|h| strip_nul(truncate(h, 255)))
            .filter(|h| !h.is_empty()),
        dedupe_key,
    })
}

/// The key that makes a redelivered alert act once: falcosidekick's `uuid`
/// when it sent one; otherwise a hash of what Falco itself wrote (the same
/// alert sent again is byte for byte the same, while two alerts of one rule
/// differ at least in their nanosecond `time`).
pub fn dedupe_key(
    uuid: Option<&str>,
    hostname: Option<&str>,
    rule: &str,
    time: &str,
    output: &str,
) -> String {
    if let Some(uuid) = uuid.map(str::trim).filter(|u| !u.is_empty()) {
        let mut hash = Sha256::new();
        hash.update(uuid.as_bytes());
        return format!("uuid:{}", hex::encode(hash.finalize()));
    }
    let mut hash = Sha256::new();
    for part in [hostname.unwrap_or(""), rule, time, output] {
        hash.update(part.len().to_be_bytes());
        hash.update(part.as_bytes());
    }
    format!("falco:{}", hex::encode(hash.finalize()))
}

impl FalcoEvent {
    /// The container Falco saw, when it is one (Falco writes `host` for
    /// events outside containers): 12 to 64 hex digits, lowercased.
    pub fn container_id(&self) -> Option<String> {
        let id = self.output_fields.get("container.id")?.as_str()?.trim();
        let hex = (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| id.to_ascii_lowercase())
    }

    /// A container label from the output fields, under either of the names
    /// Falco's fields have (`container.label[NAME]`, `container.label.NAME`).
    pub fn label(&self, name: &str) -> Option<&str> {
        [
            format!("container.label[{name}]"),
            format!("container.label.{name}"),
        ]
        .iter()
        .find_map(|key| self.output_fields.get(key)?.as_str())
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "<NA>")
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// PostgreSQL refuses NUL in text.
fn strip_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(extra: &str) -> String {
        format!(
            r#"{{"hostname":"ci-1","output":"shell","priority":"Critical","rule":"Berth terminal shell in worker","source":"syscall","tags":["berth"],"time":"2026-12-07T10:15:30.123456789Z","output_fields":{{"container.id":"0A1B2C3D4E5F","container.label[berth.job]":"j-1"{extra}}}}}"#
        )
    }

    #[test]
    fn one_event_or_a_batch() {
        let one = parse_body(event("").as_bytes()).unwrap();
        assert_eq!(one.len(), 1);
        let e = &one[0];
        assert_eq!(e.priority, Priority::Critical);
        assert_eq!(e.container_id().as_deref(), Some("0a1b2c3d4e5f"));
        assert_eq!(e.label("berth.job"), Some("j-1"));
        assert_eq!(e.time.nanosecond(), 123_456_789);
        let batch = format!("[{},{}]", event(""), event(""));
        assert_eq!(parse_body(batch.as_bytes()).unwrap().len(), 2);
    }

    #[test]
    fn malformed_bodies_are_refused_naming_what_is_wrong() {
        for (body, wanted) in [
            ("{", "not JSON"),
            ("42", "an object"),
            ("[]", "empty"),
            (
                r#"{"priority":"Critical","time":"2026-12-07T10:15:30Z"}"#,
                "rule",
            ),
            (
                r#"{"rule":"r","priority":"Dire","time":"2026-12-07T10:15:30Z"}"#,
                "not a Falco priority",
            ),
            (
                r#"{"rule":"r","priority":"Critical","time":"yesterday"}"#,
                "RFC 3339",
            ),
            (
                r#"{"rule":"","priority":"Critical","time":"2026-12-07T10:15:30Z"}"#,
                "empty",
            ),
            (
                r#"{"rule":"r","priority":"cRiTiCaL","time":"2026-12-07T10:15:30Z"}"#,
                "not a Falco priority",
            ),
        ] {
            let e = parse_body(body.as_bytes()).unwrap_err();
            assert!(e.contains(wanted), "{body}: {e}");
        }
        let batch = format!(r#"[{},{{"rule":"r"}}]"#, event(""));
        assert!(
            parse_body(batch.as_bytes())
                .unwrap_err()
                .contains("index 1")
        );
    }

    #[test]
    fn the_same_alert_has_the_same_key_and_another_alert_another() {
        let a = parse_body(event("").as_bytes()).unwrap().remove(0);
        let again = parse_body(event("").as_bytes()).unwrap().remove(0);
        assert_eq!(a.dedupe_key, again.dedupe_key);
        let later = event("").replace(".123456789Z", ".123456790Z");
        let b = parse_body(later.as_bytes()).unwrap().remove(0);
        assert_ne!(a.dedupe_key, b.dedupe_key);
        // falcosidekick's uuid wins over the fields.
        let with_uuid = event("").replacen('{', r#"{"uuid":"5a7e","#, 1);
        let c = parse_body(with_uuid.as_bytes()).unwrap().remove(0);
        assert!(c.dedupe_key.starts_with("uuid:"));
    }

    #[test]
    fn host_events_and_odd_ids_name_no_container() {
        for id in ["host", "", "0a1b2c", "zzzzzzzzzzzz"] {
            let body = event("").replace("0A1B2C3D4E5F", id);
            let e = parse_body(body.as_bytes()).unwrap().remove(0);
            assert_eq!(e.container_id(), None, "{id}");
        }
    }

    #[test]
    fn priorities_parse_in_any_case_and_order_by_severity() {
        assert_eq!("info".parse::<Priority>().unwrap(), Priority::Informational);
        assert_eq!("CRITICAL".parse::<Priority>().unwrap(), Priority::Critical);
        assert!(Priority::Emergency > Priority::Critical);
        assert!(Priority::Warning < Priority::Error);
    }
}
