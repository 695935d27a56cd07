//! Runtime security: the Falco alerts kept with each job, and the mark that
//! has berth stop a job on its own (see crate::security and
//! docs/runtime-security.md).

use time::OffsetDateTime;
use uuid::Uuid;

use super::clock::{from_millis, to_millis};
use super::jobs::JobRow;
use super::{Job, Result, Store, StoreError};

/// A Falco alert about one of a job's containers, as stored (secrets
/// already redacted by crate::security before it gets here).
///
/// Serializes as an element of the job's `security_events` in the HTTP API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SecurityEvent {
    pub id: Uuid,
    pub job_id: Uuid,
    /// The container Falco saw (its full id when berth knows it).
    pub container_id: String,
    pub rule: String,
    /// Falco's priority name (`Critical`, `Warning`, …).
    pub priority: String,
    /// What the policy decided: `kill` or `alert`.
    pub action: String,
    /// What berth did: `killed` (it stopped the job) or `recorded`.
    pub outcome: String,
    /// When Falco saw it.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The Falco host (its `hostname`).
    pub hostname: Option<String>,
    pub output: String,
    pub output_fields: serde_json::Map<String, serde_json::Value>,
}

/// A security event to record; `dedupe_key` tells a redelivery apart.
#[derive(Debug, Clone)]
pub struct NewSecurityEvent {
    pub dedupe_key: String,
    pub event: SecurityEvent,
}

#[derive(sqlx::FromRow)]
struct SecurityEventRow {
    id: String,
    job_id: String,
    container_id: String,
    rule: String,
    priority: String,
    action: String,
    outcome: String,
    event_time: i64,
    received_at: i64,
    hostname: Option<String>,
    output: String,
    output_fields: String,
}

impl SecurityEventRow {
    fn into_event(self) -> Result<SecurityEvent> {
        let corrupt = |column: &'static str, detail: String| StoreError::Corrupt {
            table: "security_events",
            key: self.id.clone(),
            column,
            detail,
        };
        let time = |column: &'static str, ms: i64| {
            from_millis(ms).ok_or_else(|| corrupt(column, format!("timestamp {ms} out of range")))
        };
        Ok(SecurityEvent {
            id: Uuid::parse_str(&self.id).map_err(|e| corrupt("id", e.to_string()))?,
            job_id: Uuid::parse_str(&self.job_id).map_err(|e| corrupt("job_id", e.to_string()))?,
            time: time("event_time", self.event_time)?,
            received_at: time("received_at", self.received_at)?,
            output_fields: serde_json::from_str(&self.output_fields)
                .map_err(|e| corrupt("output_fields", e.to_string()))?,
            container_id: self.container_id,
            rule: self.rule,
            priority: self.priority,
            action: self.action,
            outcome: self.outcome,
            hostname: self.hostname,
            output: self.output,
        })
    }
}

/// A container id prefix as a half-open range of ids: Docker ids are
/// lowercase hex, so every id starting with `prefix` sorts from `prefix`
/// up to `prefix` + `g`. Unlike `LIKE 'prefix%'`, a range uses the plain
/// index on both backends (PostgreSQL's `LIKE` needs a special operator class).
fn id_range(prefix: &str) -> (String, String) {
    let prefix = prefix.to_ascii_lowercase();
    let end = format!("{prefix}g");
    (prefix, end)
}

impl Store {
    /// The job whose worker, or one of whose hook containers (container
    /// jobs), has an id starting with `container_id` (Falco reports the
    /// 12-character short id). The newest job first, should a prefix ever
    /// match more than one.
    pub async fn job_by_container_prefix(&self, container_id: &str) -> Result<Option<Job>> {
        let (from, to) = id_range(container_id);
        let row = on_reader!(self, pool => {
            sqlx::query_as::<_, JobRow>(
                "SELECT * FROM jobs
                 WHERE (container_id >= $1 AND container_id < $2)
                    OR id IN (SELECT job_id FROM job_containers
                              WHERE container_id >= $1 AND container_id < $2)
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(from)
            .bind(to)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("job_by_container_prefix"))?;
        row.map(JobRow::into_job).transpose()
    }

    /// Records a security event unless one with the same `dedupe_key` was
    /// recorded already. Returns whether it was new.
    pub async fn security_event_record(&self, new: &NewSecurityEvent) -> Result<bool> {
        let e = &new.event;
        let fields = serde_json::Value::Object(e.output_fields.clone()).to_string();
        on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO security_events
                     (id, dedupe_key, job_id, container_id, rule, priority, action, outcome,
                      event_time, received_at, hostname, output, output_fields)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (dedupe_key) DO NOTHING",
            )
            .bind(e.id.to_string())
            .bind(&new.dedupe_key)
            .bind(e.job_id.to_string())
            .bind(&e.container_id)
            .bind(&e.rule)
            .bind(&e.priority)
            .bind(&e.action)
            .bind(&e.outcome)
            .bind(to_millis(e.time))
            .bind(to_millis(e.received_at))
            .bind(&e.hostname)
            .bind(&e.output)
            .bind(&fields)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("security_event_record"))
    }

    /// The stored event with this `dedupe_key`, if any.
    pub async fn security_event_by_key(&self, dedupe_key: &str) -> Result<Option<SecurityEvent>> {
        let row: Option<SecurityEventRow> = on_reader!(self, pool => {
            sqlx::query_as(
                "SELECT id, job_id, container_id, rule, priority, action, outcome, event_time,
                        received_at, hostname, output, output_fields
                 FROM security_events WHERE dedupe_key = $1",
            )
            .bind(dedupe_key)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("security_event_by_key"))?;
        row.map(SecurityEventRow::into_event).transpose()
    }

    /// A job's security events, oldest first.
    pub async fn security_events_of_job(&self, job_id: Uuid) -> Result<Vec<SecurityEvent>> {
        let rows: Vec<SecurityEventRow> = on_reader!(self, pool => {
            sqlx::query_as(
                "SELECT id, job_id, container_id, rule, priority, action, outcome, event_time,
                        received_at, hostname, output, output_fields
                 FROM security_events WHERE job_id = $1 ORDER BY event_time, id",
            )
            .bind(job_id.to_string())
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("security_events_of_job"))?;
        rows.into_iter().map(SecurityEventRow::into_event).collect()
    }

    /// Marks an active job to be stopped by berth for `reason`: it is
    /// cancelled like a requested cancel, and ends `failed` with `reason`.
    /// Returns whether this call marked it (false: already marked, or the
    /// job is no longer active), so that the response acts once.
    pub async fn job_stop_for(&self, id: Uuid, reason: &str) -> Result<bool> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET cancel_requested = TRUE, stop_reason = $2, updated_at = $3
                 WHERE id = $1 AND stop_reason IS NULL
                   AND state IN ('queued', 'provisioning', 'starting', 'running')",
            )
            .bind(id.to_string())
            .bind(reason)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("job_stop_for"))
    }
}

#[cfg(test)]
mod tests {
    use super::id_range;

    #[test]
    fn a_prefix_range_holds_exactly_the_ids_starting_with_it() {
        let (from, to) = id_range("0A1b2c3D4e5f");
        let inside = "0a1b2c3d4e5fffffffffffffffffffffffffffffffffffffffffffffffffffff";
        let before = "0a1b2c3d4e5effffffffffffffffffffffffffffffffffffffffffffffffffff";
        let after = "0a1b2c3d4e60000000000000000000000000000000000000000000000000000";
        assert!(from.as_str() <= inside && inside < to.as_str());
        assert!(before < from.as_str());
        assert!(after >= to.as_str());
    }
}
