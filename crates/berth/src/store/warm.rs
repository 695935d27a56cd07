//! Warm containers: created ahead of demand, waiting for a job.
//!
//! A warm container has no job, no runner and no credential, so nothing on
//! the container itself (its labels are fixed at create) can say whether it
//! is still waiting or already handed to a job. This table is that record:
//!
//! * a row means "warm and free": the orphan reconciler leaves the container
//!   alone, and any replica may take it;
//! * [`Store::warm_take`] deletes the row and writes the container's id onto
//!   the claimed job **in one transaction**, so at every instant a warm
//!   container is accounted for by exactly one of the two tables, and two
//!   dispatchers (replicas) can never take the same one;
//! * rows survive a crash, so a restarted berth adopts the warm containers
//!   whose fingerprint still matches its configuration, and removes the rest.

use time::OffsetDateTime;

use super::clock::{from_millis, to_millis};
use super::{BackendKind, Result, Store, StoreError};

/// A warm container as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmContainer {
    pub container_id: String,
    pub pool: String,
    /// Hash of the image ID and the pool's container settings at create.
    pub fingerprint: String,
    /// The replica that created or last adopted it.
    pub owner: String,
    /// Started ahead (its entrypoint blocks reading stdin) or only created.
    pub started: bool,
    pub created_at: OffsetDateTime,
    /// The Docker host it is on (`None`: recorded before berth had fleets,
    /// on the one host there was).
    pub host: Option<String>,
}

type Row = (String, String, String, String, i64, i64, Option<String>);

fn from_row(
    (container_id, pool, fingerprint, owner, started, created, host): Row,
) -> WarmContainer {
    WarmContainer {
        container_id,
        pool,
        fingerprint,
        owner,
        started: started != 0,
        created_at: from_millis(created).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        host,
    }
}

impl Store {
    /// Records a warm container once it is ready to be taken (created, and
    /// started if the pool wants it started).
    pub async fn warm_insert(&self, warm: &WarmContainer) -> Result<()> {
        on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO warm_containers
                   (container_id, pool, fingerprint, owner, started, created_at, host)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&warm.container_id)
            .bind(&warm.pool)
            .bind(&warm.fingerprint)
            .bind(&warm.owner)
            .bind(i64::from(warm.started))
            .bind(to_millis(warm.created_at))
            .bind(&warm.host)
            .execute(pool)
            .await
            .map(drop)
        })
        .map_err(StoreError::query("warm_insert"))
    }

    /// Every warm container recorded, oldest first.
    pub async fn warm_list(&self) -> Result<Vec<WarmContainer>> {
        let rows: Vec<Row> = on_reader!(self, pool => {
            sqlx::query_as(
                "SELECT container_id, pool, fingerprint, owner, started, created_at, host
                 FROM warm_containers ORDER BY created_at, container_id",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("warm_list"))?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Forgets a warm container (it is being removed). `true` if the row was
    /// there: only the caller that deleted it may remove the container, so a
    /// container a dispatcher just took is never removed under it.
    pub async fn warm_delete(&self, container_id: &str) -> Result<bool> {
        on_writer!(self, pool => {
            sqlx::query("DELETE FROM warm_containers WHERE container_id = $1")
                .bind(container_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("warm_delete"))
    }

    /// Makes `owner` the owner of a warm container (a restarted replica
    /// adopting what a crashed one left on its Docker host; graceful
    /// shutdown removes the containers its replica owns). `true` if it
    /// changed hands.
    pub async fn warm_adopt(&self, container_id: &str, owner: &str) -> Result<bool> {
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE warm_containers SET owner = $2 WHERE container_id = $1 AND owner <> $2",
            )
            .bind(container_id)
            .bind(owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("warm_adopt"))
    }

    /// Takes the oldest warm container of `pool` with `fingerprint` for the
    /// job holding the runner `runner_name` (state `provisioning`): deletes
    /// its row and sets the job's `container_id`, in one transaction.
    /// Returns the container and whether it was started, or `None` when the
    /// pool has none (or the job is no longer provisioning: nothing changes).
    pub async fn warm_take(
        &self,
        pool_name: &str,
        fingerprint: &str,
        runner_name: &str,
    ) -> Result<Option<(String, bool)>> {
        // PostgreSQL: replicas taking at once skip each other's row instead
        // of queueing on it. SQLite has one writer: the statement is atomic.
        let pick = match self.kind() {
            BackendKind::Postgres => {
                "DELETE FROM warm_containers WHERE container_id = (
                     SELECT container_id FROM warm_containers
                     WHERE pool = $1 AND fingerprint = $2
                     ORDER BY created_at, container_id LIMIT 1
                     FOR UPDATE SKIP LOCKED)
                 RETURNING container_id, started"
            }
            BackendKind::Sqlite => {
                "DELETE FROM warm_containers WHERE container_id = (
                     SELECT container_id FROM warm_containers
                     WHERE pool = $1 AND fingerprint = $2
                     ORDER BY created_at, container_id LIMIT 1)
                 RETURNING container_id, started"
            }
        };
        let now = to_millis(self.now());
        let taken = on_writer!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                let taken: Option<(String, i64)> = sqlx::query_as(pick)
                    .bind(pool_name)
                    .bind(fingerprint)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((container_id, started)) = taken else {
                    return Ok(None);
                };
                let bound = sqlx::query(
                    "UPDATE jobs SET container_id = $1, updated_at = $2
                     WHERE runner_name = $3 AND state = 'provisioning'",
                )
                .bind(&container_id)
                .bind(now)
                .bind(runner_name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if bound != 1 {
                    // The job moved on (lease lost, cancelled): the
                    // container stays warm for the next one.
                    tx.rollback().await?;
                    return Ok(None);
                }
                tx.commit().await?;
                Ok(Some((container_id, started != 0)))
            }
            .await
        });
        if taken.is_err() {
            self.after_failed_transaction().await;
        }
        taken.map_err(StoreError::query("warm_take"))
    }
}
