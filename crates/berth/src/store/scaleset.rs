//! What a scale-set runner ran.
//!
//! In scale-set mode a berth job is a runner, created before anyone knows
//! which GitHub job it will take (runners of a scale set are fungible). When
//! `JobStarted` says which job it took, that job's repository, run, workflow
//! and name are written onto the runner's berth job, so the job JSON shows
//! what ran in the container.

use uuid::Uuid;

use super::clock::to_millis;
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
