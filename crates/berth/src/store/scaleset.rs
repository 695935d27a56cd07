//! What a scale-set runner ran.
//!
//! In scale-set mode a berth job is a runner, created before anyone knows
//! which GitHub job it will take (runners of a scale set are fungible). When
//! `JobStarted` says which job it took, that job's repository, run, workflow
//! and name are written onto the runner's berth job, so the job JSON shows
//! what ran in the container.
//!
//! And which replica listens for a scale set: GitHub allows one message
//! session per scale set, so on PostgreSQL the replicas elect the listener
//! through a lease ([`Store::scale_set_lease_take`]; `scaleset::election`).

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::clock::{from_millis, to_millis};
use super::{Result, Store, StoreError};

impl Store {
    /// Records the GitHub job a scale-set runner took. Only touches jobs
    /// that came through a scale set; `None` values keep what is stored.
    pub async fn job_record_scale_set_run(
        &self,
        id: Uuid,
        repository: Option<&str>,
        run_id: Option<i64>,
        workflow: Option<&str>,
        job_name: Option<&str>,
    ) -> Result<bool> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE jobs
                 SET repository = COALESCE($2, repository),
                     run_id = COALESCE($3, run_id),
                     workflow = COALESCE($4, workflow),
                     job_name = COALESCE($5, job_name),
                     updated_at = $6
                 WHERE id = $1 AND scale_set IS NOT NULL",
            )
            .bind(id.to_string())
            .bind(repository)
            .bind(run_id)
            .bind(workflow)
            .bind(job_name)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("job_record_scale_set_run"))
    }
}

/// What [`Store::scale_set_lease_take`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerLease {
    /// This replica holds the scale set's listener lease now.
    /// `previous_session` is the message session a holder whose lease ran
    /// out left behind, if it recorded one: delete it before opening one.
    Taken { previous_session: Option<String> },
    /// Another replica holds it until `until`.
    HeldBy {
        holder: String,
        until: OffsetDateTime,
    },
}

impl Store {
    /// Takes the listener lease of `scale_set` for `holder` until
    /// `now + ttl`: when nobody holds it, when `holder` already does, or
    /// when the holder's lease ran out. Each step is one conditional
    /// statement (insert if absent, or compare-and-swap on the holder and
    /// expiry read), so two replicas racing for it never both win.
    pub async fn scale_set_lease_take(
        &self,
        scale_set: &str,
        holder: &str,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<ListenerLease> {
        let until = to_millis(now + ttl);
        let op = "scale_set_lease_take";
        for _ in 0..3 {
            let inserted = on_writer!(self, pool => {
                sqlx::query(
                    "INSERT INTO scale_set_leases (scale_set, holder, session_id, expires_at)
                     VALUES ($1, $2, NULL, $3) ON CONFLICT (scale_set) DO NOTHING",
                )
                .bind(scale_set)
                .bind(holder)
                .bind(until)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
            })
            .map_err(StoreError::query(op))?;
            if inserted {
                return Ok(ListenerLease::Taken {
                    previous_session: None,
                });
            }
            let row: Option<(String, Option<String>, i64)> = on_writer!(self, pool => {
                sqlx::query_as(
                    "SELECT holder, session_id, expires_at FROM scale_set_leases WHERE scale_set = $1",
                )
                .bind(scale_set)
                .fetch_optional(pool)
                .await
            })
            .map_err(StoreError::query(op))?;
            let Some((current, session, expires_at)) = row else {
                continue;
            };
            if current != holder && expires_at > to_millis(now) {
                return Ok(ListenerLease::HeldBy {
                    holder: current,
                    until: from_millis(expires_at).unwrap_or(now),
                });
            }
            let swapped = on_writer!(self, pool => {
                sqlx::query(
                    "UPDATE scale_set_leases
                     SET holder = $2, expires_at = $3,
                         session_id = CASE WHEN holder = $2 THEN session_id ELSE NULL END
                     WHERE scale_set = $1 AND holder = $4 AND expires_at = $5",
                )
                .bind(scale_set)
                .bind(holder)
                .bind(until)
                .bind(&current)
                .bind(expires_at)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
            })
            .map_err(StoreError::query(op))?;
            if swapped {
                return Ok(ListenerLease::Taken {
                    previous_session: if current == holder { None } else { session },
                });
            }
        }
        // Lost three races in a row: someone else is taking it.
        Ok(ListenerLease::HeldBy {
            holder: String::new(),
            until: now,
        })
    }

    /// Extends `holder`'s lease on `scale_set` to `now + ttl`; `false` when
    /// it no longer holds it (another replica took it over).
    pub async fn scale_set_lease_renew(
        &self,
        scale_set: &str,
        holder: &str,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<bool> {
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE scale_set_leases SET expires_at = $3 WHERE scale_set = $1 AND holder = $2",
            )
            .bind(scale_set)
            .bind(holder)
            .bind(to_millis(now + ttl))
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("scale_set_lease_renew"))
    }

    /// Records the message session `holder` opened for `scale_set` (`None`
    /// once it deleted it); `false` when it no longer holds the lease.
    pub async fn scale_set_lease_record_session(
        &self,
        scale_set: &str,
        holder: &str,
        session_id: Option<&str>,
    ) -> Result<bool> {
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE scale_set_leases SET session_id = $3 WHERE scale_set = $1 AND holder = $2",
            )
            .bind(scale_set)
            .bind(holder)
            .bind(session_id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("scale_set_lease_record_session"))
    }

    /// Gives the lease up (a clean stop): another replica may take it at
    /// once. The session is forgotten, as a stopping listener deletes it.
    pub async fn scale_set_lease_release(&self, scale_set: &str, holder: &str) -> Result<bool> {
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE scale_set_leases SET expires_at = 0, session_id = NULL
                 WHERE scale_set = $1 AND holder = $2",
            )
            .bind(scale_set)
            .bind(holder)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("scale_set_lease_release"))
    }
}
