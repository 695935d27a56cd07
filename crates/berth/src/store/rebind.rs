//! Moving a runner to the job GitHub gave it.
//!
//! A JIT runner takes any queued job whose labels match, so the runner berth
//! registered for job X may be given job Y. The store then follows GitHub in
//! one transaction: Y takes over X's runner and container (and X's state),
//! and X takes Y's own runner if Y had one (running, or still being
//! provisioned: provisioning follows the runner), or goes back to the queue. Each UPDATE is guarded by the values just read, so a concurrent
//! change of either job makes the whole move roll back and nothing changes.

use uuid::Uuid;

use super::clock::to_millis;
use super::jobs::JobRow;
use super::{JobState, Result, Store, StoreError};

/// What [`Store::job_take_runner`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebound {
    /// The job the runner was registered for.
    pub started_for: Uuid,
    /// That job's state now: the state of the taker's former runner, or `queued`.
    pub started_for_state: JobState,
    /// The job that took the runner.
    pub taken_by: Uuid,
}

const ACTIVE_RUNNER: &str = "SELECT * FROM jobs WHERE runner_name = $1
    AND state IN ('provisioning', 'starting', 'running') ORDER BY created_at DESC LIMIT 1";
const BY_GITHUB_ID: &str = "SELECT * FROM jobs WHERE github_job_id = $1";
const TAKER: &str = "UPDATE jobs
    SET state = $2, container_id = $3, runner_name = $4, runner_id = $5, started_at = $6,
        lease_owner = $7, lease_expires_at = $8, updated_at = $9, host = $12
    WHERE id = $1 AND state = $10 AND runner_name IS NOT DISTINCT FROM $11";
const GIVER_GETS_RUNNER: &str = "UPDATE jobs
    SET state = $2, container_id = $3, runner_name = $4, runner_id = $5, started_at = $6,
        lease_owner = $7, lease_expires_at = $8, updated_at = $9, host = $12
    WHERE id = $1 AND state = $10 AND runner_name = $11";
const GIVER_REQUEUED: &str = "UPDATE jobs
    SET state = 'queued', container_id = NULL, runner_name = NULL, runner_id = NULL,
        started_at = NULL, lease_owner = NULL, lease_expires_at = NULL, host = NULL,
        queued_at = $2, updated_at = $2, error = $3
    WHERE id = $1 AND state = $4 AND runner_name = $5";

impl Store {
    /// GitHub says runner `runner_name` took the job with GitHub id
    /// `github_job_id`. When berth registered that runner for another live
    /// job, the two jobs trade places (see the module doc). `None` when
    /// nothing had to move: the runner ran its own job, the runner or the
    /// taker is unknown or finished, or a concurrent change won.
    pub async fn job_take_runner(
        &self,
        github_job_id: i64,
        runner_name: &str,
    ) -> Result<Option<Rebound>> {
        let op = "job_take_runner";
        let now = to_millis(self.now());
        let outcome = on_writer!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                let giver = sqlx::query_as::<_, JobRow>(ACTIVE_RUNNER)
                    .bind(runner_name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let taker = sqlx::query_as::<_, JobRow>(BY_GITHUB_ID)
                    .bind(github_job_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let (Some(giver), Some(taker)) = (giver, taker) else {
                    return Ok::<_, sqlx::Error>(None);
                };
                let taker_state = taker.state.clone();
                if giver.id == taker.id
                    || !matches!(taker_state.as_str(), "queued" | "provisioning" | "starting" | "running")
                {
                    return Ok(None);
                }
                let took = sqlx::query(TAKER)
                    .bind(&taker.id)
                    .bind(&giver.state)
                    .bind(&giver.container_id)
                    .bind(&giver.runner_name)
                    .bind(giver.runner_id)
                    .bind(giver.started_at)
                    .bind(&giver.lease_owner)
                    .bind(giver.lease_expires_at)
                    .bind(now)
                    .bind(&taker.state)
                    .bind(&taker.runner_name)
                    .bind(&giver.host)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                // A taker with a runner of its own (running, or still being
                // provisioned) hands it to the giver; provisioning follows the
                // runner, so it goes on for the giver.
                let taker_has_runner = taker_state != "queued" && taker.runner_name.is_some();
                let gave = if taker_has_runner {
                    sqlx::query(GIVER_GETS_RUNNER)
                        .bind(&giver.id)
                        .bind(&taker.state)
                        .bind(&taker.container_id)
                        .bind(&taker.runner_name)
                        .bind(taker.runner_id)
                        .bind(taker.started_at)
                        .bind(&taker.lease_owner)
                        .bind(taker.lease_expires_at)
                        .bind(now)
                        .bind(&giver.state)
                        .bind(runner_name)
                        .bind(&taker.host)
                        .execute(&mut *tx)
                        .await?
                } else {
                    let reason = format!("runner `{runner_name}` took job {github_job_id} instead");
                    sqlx::query(GIVER_REQUEUED)
                        .bind(&giver.id)
                        .bind(now)
                        .bind(reason)
                        .bind(&giver.state)
                        .bind(runner_name)
                        .execute(&mut *tx)
                        .await?
                }
                .rows_affected()
                    == 1;
                if !(took && gave) {
                    tx.rollback().await?;
                    return Ok(None);
                }
                tx.commit().await?;
                let giver_state = if taker_has_runner { taker_state.as_str() } else { "queued" };
                Ok(Some((giver.id, giver_state.to_string(), taker.id)))
            }
            .await
        });
        if outcome.is_err() {
            self.after_failed_transaction().await;
        }
        let outcome = outcome.map_err(StoreError::query(op))?;
        let Some((giver, giver_state, taker)) = outcome else {
            return Ok(None);
        };
        let parse = |id: &str| {
            id.parse::<Uuid>().map_err(|_| StoreError::Corrupt {
                table: "jobs",
                key: id.to_string(),
                column: "id",
                detail: "not a UUID".into(),
            })
        };
        Ok(Some(Rebound {
            started_for: parse(&giver)?,
            started_for_state: giver_state.parse().expect("a state name"),
            taken_by: parse(&taker)?,
        }))
    }
}
