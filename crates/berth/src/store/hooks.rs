//! Container jobs: the per-runner hook credentials and the containers the
//! hook made for each job (see crate::container_jobs and
//! docs/container-jobs.md).

use time::OffsetDateTime;
use uuid::Uuid;

use super::clock::{from_millis, to_millis};
use super::{Job, Result, Store, StoreError};

/// A container berth made for a job through its hook.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobContainer {
    pub container_id: String,
    pub job_id: Uuid,
    pub host: String,
    /// `job`, `service` or `action`.
    pub role: String,
    pub name: String,
    pub image: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub removed_at: Option<OffsetDateTime>,
}

#[derive(sqlx::FromRow)]
struct JobContainerRow {
    container_id: String,
    job_id: String,
    host: String,
    role: String,
    name: String,
    image: String,
    created_at: i64,
    removed_at: Option<i64>,
}

impl JobContainerRow {
    fn into_container(self) -> Result<JobContainer> {
        let corrupt = |column: &'static str, detail: String| StoreError::Corrupt {
            table: "job_containers",
            key: self.container_id.clone(),
            column,
            detail,
        };
        let job_id = Uuid::parse_str(&self.job_id).map_err(|e| corrupt("job_id", e.to_string()))?;
        let created_at = from_millis(self.created_at)
            .ok_or_else(|| corrupt("created_at", self.created_at.to_string()))?;
        Ok(JobContainer {
            container_id: self.container_id,
            job_id,
            host: self.host,
            role: self.role,
            name: self.name,
            image: self.image,
            created_at,
            removed_at: self.removed_at.and_then(from_millis),
        })
    }
}

impl Store {
    /// Records the hash of the hook credential handed to `runner_name`.
    pub async fn hook_credential_insert(&self, token_hash: &str, runner_name: &str) -> Result<()> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO hook_credentials (token_hash, runner_name, created_at)
                 VALUES ($1, $2, $3)",
            )
            .bind(token_hash)
            .bind(runner_name)
            .bind(now)
            .execute(pool)
            .await
            .map(drop)
        })
        .map_err(StoreError::query("hook_credential_insert"))
    }

    /// The job a hook credential acts for: the job now holding the runner
    /// the credential was handed to, whatever its state (the caller refuses
    /// jobs that are not active). `None` for an unknown credential.
    pub async fn hook_credential_job(&self, token_hash: &str) -> Result<Option<Job>> {
        let runner: Option<(String,)> = on_reader!(self, pool => {
            sqlx::query_as("SELECT runner_name FROM hook_credentials WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("hook_credential_job"))?;
        match runner {
            Some((runner,)) => self.job_get_by_runner_name(&runner).await,
            None => Ok(None),
        }
    }

    /// Deletes the credentials of runners no active job holds, made before
    /// `before` (so a credential recorded just before its job's runner name
    /// is visible is never taken for a stale one). Returns how many went.
    pub async fn hook_credentials_prune(&self, before: OffsetDateTime) -> Result<u64> {
        let before = to_millis(before);
        on_writer!(self, pool => {
            sqlx::query(
                "DELETE FROM hook_credentials
                 WHERE created_at < $1
                   AND NOT EXISTS (
                       SELECT 1 FROM jobs
                       WHERE jobs.runner_name = hook_credentials.runner_name
                         AND jobs.state IN ('provisioning', 'starting', 'running'))",
            )
            .bind(before)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(StoreError::query("hook_credentials_prune"))
    }

    /// Records a container the hook made for `job_id`.
    pub async fn job_container_insert(&self, container: &JobContainer) -> Result<()> {
        on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO job_containers
                     (container_id, job_id, host, role, name, image, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (container_id) DO NOTHING",
            )
            .bind(&container.container_id)
            .bind(container.job_id.to_string())
            .bind(&container.host)
            .bind(&container.role)
            .bind(&container.name)
            .bind(&container.image)
            .bind(to_millis(container.created_at))
            .execute(pool)
            .await
            .map(drop)
        })
        .map_err(StoreError::query("job_container_insert"))
    }

    /// Notes that berth removed the container.
    pub async fn job_container_removed(&self, container_id: &str) -> Result<()> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE job_containers SET removed_at = $2
                 WHERE container_id = $1 AND removed_at IS NULL",
            )
            .bind(container_id)
            .bind(now)
            .execute(pool)
            .await
            .map(drop)
        })
        .map_err(StoreError::query("job_container_removed"))
    }

    /// The containers the hook made for `job_id`, oldest first.
    pub async fn job_containers(&self, job_id: Uuid) -> Result<Vec<JobContainer>> {
        let rows: Vec<JobContainerRow> = on_reader!(self, pool => {
            sqlx::query_as(
                "SELECT container_id, job_id, host, role, name, image, created_at, removed_at
                 FROM job_containers WHERE job_id = $1 ORDER BY created_at, container_id",
            )
            .bind(job_id.to_string())
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("job_containers"))?;
        rows.into_iter()
            .map(JobContainerRow::into_container)
            .collect()
    }
}
