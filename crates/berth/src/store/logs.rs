//! Job logs: each job's output, kept up to a size cap.

use uuid::Uuid;

use super::{Backend, JobLogs, JobLogsState, Result, Store, StoreError};

/// Appends to a job's log, keeping at most `$3` (the cap) bytes: `$2` is the
/// chunk and `$4` its length. SQLite's `||` makes text of two blobs, which
/// the CAST turns back into the same bytes; `substr` of an empty blob is
/// NULL, hence the COALESCE.
const APPEND_SQLITE: &str = "
INSERT INTO job_logs (job_id, content, size, truncated)
VALUES ($1, COALESCE(substr($2, 1, $3), X''), min($4, $3), $4 > $3)
ON CONFLICT (job_id) DO UPDATE SET
    content   = CASE WHEN job_logs.size >= $3 THEN job_logs.content
                     ELSE CAST(job_logs.content || COALESCE(substr($2, 1, $3 - job_logs.size), X'') AS BLOB) END,
    size      = CASE WHEN job_logs.size >= $3 THEN job_logs.size
                     ELSE min(job_logs.size + $4, $3) END,
    truncated = job_logs.truncated OR job_logs.size + $4 > $3
RETURNING size, truncated";

/// The same on PostgreSQL, where `bytea || bytea` is plain concatenation.
const APPEND_POSTGRES: &str = "
INSERT INTO job_logs (job_id, content, size, truncated)
VALUES ($1, substring($2 FROM 1 FOR $3::integer), LEAST($4, $3), $4 > $3)
ON CONFLICT (job_id) DO UPDATE SET
    content   = CASE WHEN job_logs.size >= $3 THEN job_logs.content
                     ELSE job_logs.content || substring($2 FROM 1 FOR ($3 - job_logs.size)::integer) END,
    size      = CASE WHEN job_logs.size >= $3 THEN job_logs.size
                     ELSE LEAST(job_logs.size + $4, $3) END,
    truncated = job_logs.truncated OR job_logs.size + $4 > $3
RETURNING size, truncated";

/// The guard of [`Store::job_logs_append_as_host_owner`]: the append
/// happens only while `$6` holds an unexpired lease (at `$7`) on host `$5`.
const HOST_OWNER_GUARD: &str = "WHERE EXISTS (SELECT 1 FROM docker_hosts
    WHERE name = $5 AND lease_owner = $6 AND lease_expires_at > $7)";

/// An append statement turned into its guarded form: `INSERT … SELECT …
/// WHERE <guard> ON CONFLICT …` instead of `INSERT … VALUES (…) ON CONFLICT …`.
fn guarded(append: &str) -> String {
    let (head, rest) = append.split_once("VALUES (").expect("append statement");
    let (values, tail) = rest.split_once(")\nON CONFLICT").expect("append statement");
    format!("{head}SELECT {values}\n{HOST_OWNER_GUARD}\nON CONFLICT{tail}")
}

static APPEND_SQLITE_GUARDED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| guarded(APPEND_SQLITE));
static APPEND_POSTGRES_GUARDED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| guarded(APPEND_POSTGRES));

impl Store {
    /// [`Store::job_logs_append`], done only while `owner` holds the lease
    /// on `host` (by the store's clock): log capture is once-per-host work,
    /// and a replica that lost the lease without noticing must not append
    /// what its successor appends too. `None`: the lease is not `owner`'s,
    /// nothing was written.
    pub async fn job_logs_append_as_host_owner(
        &self,
        id: Uuid,
        bytes: &[u8],
        cap: u64,
        host: &str,
        owner: &str,
    ) -> Result<Option<JobLogsState>> {
        let op = "job_logs_append_as_host_owner";
        let cap = i64::try_from(cap)
            .unwrap_or(i64::MAX)
            .min(i64::from(i32::MAX));
        let len = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let now = super::clock::to_millis(self.now());
        let sql = match self.backend {
            Backend::Sqlite { .. } => APPEND_SQLITE_GUARDED.as_str(),
            Backend::Postgres(_) => APPEND_POSTGRES_GUARDED.as_str(),
        };
        let written: Option<(i64, bool)> = on_writer!(self, pool => {
            sqlx::query_as(sql)
                .bind(id.to_string())
                .bind(bytes)
                .bind(cap)
                .bind(len)
                .bind(host)
                .bind(owner)
                .bind(now)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query(op))?;
        Ok(written.map(|(size, truncated)| JobLogsState { size, truncated }))
    }

    /// Appends `bytes` to the job's log, keeping at most `cap` bytes in all.
    ///
    /// Cap semantics: the log keeps the *first* `cap` bytes of the output.
    /// A chunk that would go past the cap is cut at the cap, later chunks
    /// are dropped, and the log is marked truncated (so a reader can say the
    /// end is missing). The cap is per call, so a caller should pass the same
    /// one every time. The job must exist. One statement: concurrent appends
    /// never lose each other's bytes nor exceed the cap.
    pub async fn job_logs_append(&self, id: Uuid, bytes: &[u8], cap: u64) -> Result<JobLogsState> {
        let op = "job_logs_append";
        // Larger caps would not fit PostgreSQL's int4 substring() (nor be a
        // sensible size for one row).
        let cap = i64::try_from(cap)
            .unwrap_or(i64::MAX)
            .min(i64::from(i32::MAX));
        let len = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let sql = match self.backend {
            Backend::Sqlite { .. } => APPEND_SQLITE,
            Backend::Postgres(_) => APPEND_POSTGRES,
        };
        let (size, truncated): (i64, bool) = on_writer!(self, pool => {
            sqlx::query_as(sql)
                .bind(id.to_string())
                .bind(bytes)
                .bind(cap)
                .bind(len)
                .fetch_one(pool)
                .await
        })
        .map_err(StoreError::query(op))?;
        Ok(JobLogsState { size, truncated })
    }

    /// The job's whole log; `None` when nothing was ever appended.
    pub async fn job_logs_get(&self, id: Uuid) -> Result<Option<JobLogs>> {
        self.job_logs_get_from(id, 0).await
    }

    /// The job's log from byte `offset` on (empty when there is nothing past
    /// it), for following a log as it grows; `size` is the whole log's.
    pub async fn job_logs_get_from(&self, id: Uuid, offset: u64) -> Result<Option<JobLogs>> {
        let offset = i64::try_from(offset)
            .unwrap_or(i64::MAX)
            .min(i64::from(i32::MAX));
        let sql = match self.backend {
            Backend::Sqlite { .. } => {
                "SELECT substr(content, $2 + 1), size, truncated FROM job_logs WHERE job_id = $1"
            }
            Backend::Postgres(_) => {
                "SELECT substring(content FROM ($2 + 1)::integer), size, truncated
                 FROM job_logs WHERE job_id = $1"
            }
        };
        let row: Option<(Vec<u8>, i64, bool)> = on_reader!(self, pool => {
            sqlx::query_as(sql)
                .bind(id.to_string())
                .bind(offset)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("job_logs_get"))?;
        Ok(row.map(|(content, size, truncated)| JobLogs {
            content,
            size,
            truncated,
        }))
    }
}
