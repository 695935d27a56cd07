//! The Docker hosts of a fleet, as the replicas share them: health from
//! probes, the operator's cordon and drain, and the host lease.
//!
//! A host's configuration (URL, labels, slots) lives in the configuration
//! file; this table holds what changes while berth runs. The claim reads it
//! (only `up`, `active` hosts get jobs: [`Store::job_claim`]).
//!
//! The host lease names the one replica that does a host's once-per-host
//! work: watching its events, capturing its workers' output, probing and
//! reconciling it (crate::fleet). It is taken with one conditional UPDATE
//! (free, expired, or already ours) and renewed the same way; writes that
//! must happen once per host check it in the same statement
//! ([`Store::job_logs_append_as_host_owner`]), so a replica that lost its
//! lease without noticing (paused, partitioned) cannot write over its
//! successor.

use time::OffsetDateTime;

use super::clock::{from_millis, to_millis};
use super::{HostAdmin, HostHealth, Result, Store, StoreError, UnknownName};

/// A host as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub name: String,
    pub health: HostHealth,
    pub admin: HostAdmin,
    /// The replica holding the host lease, while one holds it.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<OffsetDateTime>,
    pub last_probe_at: Option<OffsetDateTime>,
    pub last_up_at: Option<OffsetDateTime>,
    pub down_since: Option<OffsetDateTime>,
    /// The engine's version (`28.5.1`), from the last good probe.
    pub engine_version: Option<String>,
    /// Free bytes on the engine's data root, where the engine says where
    /// that is and berth can see it.
    pub free_disk_bytes: Option<i64>,
    /// Why the last probe failed (cleared by a good one).
    pub probe_error: Option<String>,
}

type Row = (
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

macro_rules! host_columns {
    () => {
        "name, health, admin, lease_owner, lease_expires_at, last_probe_at, \
         last_up_at, down_since, engine_version, free_disk_bytes, probe_error"
    };
}

fn from_row(row: Row) -> Result<HostRecord> {
    let (name, health, admin, lease_owner, lease, probe, up, down, version, disk, error) = row;
    let corrupt = |column: &'static str, detail: String| StoreError::Corrupt {
        table: "docker_hosts",
        key: name.clone(),
        column,
        detail,
    };
    let time = |ms: Option<i64>| ms.and_then(from_millis);
    Ok(HostRecord {
        health: health
            .parse()
            .map_err(|e: UnknownName| corrupt("health", e.to_string()))?,
        admin: admin
            .parse()
            .map_err(|e: UnknownName| corrupt("admin", e.to_string()))?,
        name,
        lease_owner,
        lease_expires_at: time(lease),
        last_probe_at: time(probe),
        last_up_at: time(up),
        down_since: time(down),
        engine_version: version,
        free_disk_bytes: disk,
        probe_error: error,
    })
}

/// How a probe changed a host's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthChange {
    pub before: HostHealth,
    pub after: HostHealth,
}

impl HealthChange {
    pub fn went_down(self) -> bool {
        self.before != HostHealth::Down && self.after == HostHealth::Down
    }

    pub fn came_up(self) -> bool {
        self.before != HostHealth::Up && self.after == HostHealth::Up
    }
}

impl Store {
    /// Makes sure every host in `names` has a row (new ones `unknown`,
    /// `active`); existing rows are left as they are.
    pub async fn hosts_register(&self, names: &[String]) -> Result<()> {
        let now = to_millis(self.now());
        for name in names {
            on_writer!(self, pool => {
                sqlx::query(
                    "INSERT INTO docker_hosts (name, updated_at) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(now)
                .execute(pool)
                .await
                .map(drop)
            })
            .map_err(StoreError::query("hosts_register"))?;
        }
        Ok(())
    }

    /// Every recorded host, by name.
    pub async fn host_list(&self) -> Result<Vec<HostRecord>> {
        let rows: Vec<Row> = on_reader!(self, pool => {
            sqlx::query_as(concat!("SELECT ", host_columns!(), " FROM docker_hosts ORDER BY name"))
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::query("host_list"))?;
        rows.into_iter().map(from_row).collect()
    }

    pub async fn host_get(&self, name: &str) -> Result<Option<HostRecord>> {
        let row: Option<Row> = on_writer!(self, pool => {
            sqlx::query_as(concat!("SELECT ", host_columns!(), " FROM docker_hosts WHERE name = $1"))
                .bind(name)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("host_get"))?;
        row.map(from_row).transpose()
    }

    /// Takes or renews the lease on host `name` for `owner` until `until`:
    /// succeeds when nobody holds it, its holder's lease expired by `now`,
    /// or `owner` holds it already. One conditional UPDATE, so of replicas
    /// trying at once exactly one wins.
    pub async fn host_lease_acquire(
        &self,
        name: &str,
        owner: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool> {
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE docker_hosts SET lease_owner = $2, lease_expires_at = $3, updated_at = $4
                 WHERE name = $1
                   AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at <= $4)",
            )
            .bind(name)
            .bind(owner)
            .bind(to_millis(until))
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("host_lease_acquire"))
    }

    /// Gives the lease up (graceful shutdown), if `owner` holds it.
    pub async fn host_lease_release(&self, name: &str, owner: &str) -> Result<bool> {
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE docker_hosts SET lease_owner = NULL, lease_expires_at = NULL
                 WHERE name = $1 AND lease_owner = $2",
            )
            .bind(name)
            .bind(owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("host_lease_release"))
    }

    /// Records a probe that the engine answered: the host is `up`.
    pub async fn host_probe_ok(
        &self,
        name: &str,
        engine_version: &str,
        free_disk_bytes: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<HealthChange> {
        let before = self.host_health(name).await?;
        let now = to_millis(now);
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE docker_hosts
                 SET health = 'up', last_probe_at = $2, last_up_at = $2, failing_since = NULL,
                     down_since = NULL, engine_version = $3, free_disk_bytes = $4,
                     probe_error = NULL, updated_at = $2
                 WHERE name = $1",
            )
            .bind(name)
            .bind(now)
            .bind(engine_version)
            .bind(free_disk_bytes)
            .execute(pool)
            .await
            .map(drop)
        })
        .map_err(StoreError::query("host_probe_ok"))?;
        Ok(HealthChange {
            before,
            after: HostHealth::Up,
        })
    }

    /// Records a probe that failed with `error`. The host turns `down` once
    /// its probes have failed since `down_before` or earlier (the grace is
    /// over); until then it keeps its health.
    pub async fn host_probe_failed(
        &self,
        name: &str,
        error: &str,
        now: OffsetDateTime,
        down_before: OffsetDateTime,
    ) -> Result<HealthChange> {
        let before = self.host_health(name).await?;
        let (now, limit) = (to_millis(now), to_millis(down_before));
        let error = crate::names::cut_at(error, 500).unwrap_or_else(|| error.to_string());
        let after: Option<(String,)> = on_writer!(self, pool => {
            sqlx::query_as(
                "UPDATE docker_hosts
                 SET last_probe_at = $2, probe_error = $3,
                     failing_since = COALESCE(failing_since, $2),
                     health = CASE WHEN COALESCE(failing_since, $2) <= $4 THEN 'down' ELSE health END,
                     down_since = CASE WHEN COALESCE(failing_since, $2) <= $4
                                       THEN COALESCE(down_since, $2) ELSE down_since END,
                     updated_at = $2
                 WHERE name = $1
                 RETURNING health",
            )
            .bind(name)
            .bind(now)
            .bind(&error)
            .bind(limit)
            .fetch_optional(pool)
            .await
        })
        .map_err(StoreError::query("host_probe_failed"))?;
        let after = match after {
            Some((health,)) => health
                .parse()
                .map_err(|e: UnknownName| StoreError::Corrupt {
                    table: "docker_hosts",
                    key: name.to_string(),
                    column: "health",
                    detail: e.to_string(),
                })?,
            None => before,
        };
        Ok(HealthChange { before, after })
    }

    async fn host_health(&self, name: &str) -> Result<HostHealth> {
        Ok(self
            .host_get(name)
            .await?
            .map_or(HostHealth::Unknown, |h| h.health))
    }

    /// Sets what the operator asks of host `name`. `false` when no such host
    /// is recorded.
    pub async fn host_set_admin(&self, name: &str, admin: HostAdmin) -> Result<bool> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query("UPDATE docker_hosts SET admin = $2, updated_at = $3 WHERE name = $1")
                .bind(name)
                .bind(admin.as_str())
                .bind(now)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("host_set_admin"))
    }

    /// Busy slots (the slots of active jobs whose worker has not exited)
    /// per host and pool.
    pub async fn host_busy(&self) -> Result<Vec<(String, String, i64)>> {
        on_reader!(self, pool => {
            sqlx::query_as(
                "SELECT host, pool, CAST(SUM(slots) AS BIGINT) FROM jobs
                 WHERE state IN ('provisioning', 'starting', 'running') AND exited_at IS NULL
                   AND host IS NOT NULL
                 GROUP BY host, pool ORDER BY host, pool",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("host_busy"))
    }

    /// The active jobs placed on host `name` (a down host's, to settle).
    pub async fn jobs_active_on_host(&self, name: &str) -> Result<Vec<super::Job>> {
        let rows = on_reader!(self, pool => {
            sqlx::query_as::<_, super::jobs::JobRow>(
                "SELECT * FROM jobs
                 WHERE host = $1 AND state IN ('provisioning', 'starting', 'running')
                 ORDER BY created_at, id",
            )
            .bind(name)
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("jobs_active_on_host"))?;
        rows.into_iter()
            .map(super::jobs::JobRow::into_job)
            .collect()
    }
}
