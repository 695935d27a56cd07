//! The jobs table: intake, the claim, state transitions and the queries the
//! reconcilers run.

use std::collections::BTreeSet;

use sqlx::QueryBuilder;
use time::OffsetDateTime;
use uuid::Uuid;

use super::clock::{from_millis, to_millis};
use super::types::{Column, Value};
use super::{
    Backend, GithubStatus, Job, JobChanges, JobCount, JobFilter, JobSource, JobState, NewJob,
    Result, Store, StoreError,
};

/// The key of the PostgreSQL advisory lock that serializes claims (see
/// [`Store::job_claim`]). Any constant works as long as nothing else in the
/// database uses it; this one spells "berth" plus 1 in ASCII. The claim
/// function (migration `20261209000000_claim_in_the_database`) spells it
/// out in decimal.
const CLAIM_LOCK_KEY: i64 = 0x0062_6572_7468_0001;

/// The claim with placement, one statement for both backends apart from
/// the JSON functions and PostgreSQL's row locking (`{offered}` and
/// `{lock}` below). On PostgreSQL it runs inside the database, in the
/// function `berth_claim` (see [`Store::job_claim`]); a test checks that
/// the function's statement is this one. It takes the pool's oldest claimable job and, in the
/// same statement, the host it goes to:
///
/// * `offered` is the pool's hosts (`$7`, a JSON array of `{name, slots,
///   weight, ordinal}` for the hosts whose labels the pool needs) that are
///   `up` and `active` in `docker_hosts`;
/// * `busy` sums the slots of each host's active jobs whose worker has not
///   exited (`jobs.slots`: what each took when it was claimed);
/// * `placed` is the one host with room for `$9` more slots (the pool's
///   `host_slots`: 1, or more for a pool whose jobs run several containers)
///   that the strategy prefers: `$8` true is `pack` (configuration order),
///   false `spread` (lowest load after placing: (busy + $9) / (slots ×
///   weight), then configuration order).
///
/// No job is claimed when no host has room, nor past the pool's (`$5`) or
/// the global (`$6`) limit.
const CLAIM: &str = "
WITH candidate AS (
    SELECT id FROM jobs
    WHERE state = 'queued' AND pool = $1 AND NOT cancel_requested
    ORDER BY queued_at, id
    LIMIT 1 {lock}
), offered AS (
    {offered}
), busy AS (
    SELECT host, SUM(slots) AS n FROM jobs
    WHERE state IN ('provisioning', 'starting', 'running') AND exited_at IS NULL
      AND host IS NOT NULL
    GROUP BY host
), placed AS (
    SELECT o.name FROM offered o
    JOIN docker_hosts h ON h.name = o.name AND h.health = 'up' AND h.admin = 'active'
    LEFT JOIN busy b ON b.host = o.name
    WHERE COALESCE(b.n, 0) + $9 <= o.slots
    ORDER BY CASE WHEN $8 THEN o.ordinal ELSE 0 END,
             (COALESCE(b.n, 0) + $9 * 1.0) / (o.slots * o.weight),
             o.ordinal
    LIMIT 1
)
UPDATE jobs
SET state = 'provisioning',
    host = (SELECT name FROM placed),
    slots = $9,
    lease_owner = $2,
    lease_expires_at = $3,
    attempts = attempts + 1,
    updated_at = $4
WHERE id = (SELECT id FROM candidate)
  AND state = 'queued'
  AND EXISTS (SELECT 1 FROM placed)
  AND (SELECT COUNT(*) FROM jobs
       WHERE pool = $1 AND state IN ('provisioning', 'starting', 'running')
         AND exited_at IS NULL) < $5
  AND (SELECT COUNT(*) FROM jobs
       WHERE state IN ('provisioning', 'starting', 'running') AND exited_at IS NULL) < $6
RETURNING *";

/// `offered` on SQLite (its JSON1 functions). Writers are serialized (one
/// writer connection in this process, and one process per database file),
/// so the statement reads the counts and updates with no write in between.
const OFFERED_SQLITE: &str = "
    SELECT json_extract(value, '$.name') AS name,
           json_extract(value, '$.slots') AS slots,
           json_extract(value, '$.weight') AS weight,
           json_extract(value, '$.ordinal') AS ordinal
    FROM json_each($7)";

/// `offered` on PostgreSQL (in `berth_claim`).
#[cfg(test)]
const OFFERED_POSTGRES: &str = "
    SELECT name, slots, weight, ordinal
    FROM jsonb_to_recordset($7::jsonb)
         AS o(name TEXT, slots BIGINT, weight DOUBLE PRECISION, ordinal BIGINT)";

static CLAIM_SQLITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    CLAIM
        .replace("{lock}", "")
        .replace("{offered}", OFFERED_SQLITE)
});

/// The claim on PostgreSQL, as `berth_claim` runs it: `FOR UPDATE SKIP
/// LOCKED` keeps it off a queued row that another transaction (a cancel
/// request, say) is changing.
#[cfg(test)]
static CLAIM_POSTGRES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    CLAIM
        .replace("{lock}", "FOR UPDATE SKIP LOCKED")
        .replace("{offered}", OFFERED_POSTGRES)
});

/// The claim on PostgreSQL: the claim lock and [`CLAIM`] in one call.
const CLAIM_CALL_POSTGRES: &str = "SELECT * FROM berth_claim($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// A host a claim may place a job on (see [`Store::job_claim`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlacementHost {
    pub name: String,
    /// Its job slots (`[[docker_host]] max_runners`).
    pub slots: u32,
    pub weight: f64,
    /// Its position in the configuration (`pack` fills lower first).
    pub ordinal: u32,
}

/// Where and how a claim places its job.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// The hosts that offer every label the pool needs.
    pub hosts: &'a [PlacementHost],
    /// `true`: `pack`; `false`: `spread`.
    pub pack: bool,
    /// Slots one job of the pool takes on its host (`pool.host_slots`).
    pub slots_per_job: u32,
}

/// Records a GitHub status only if it is later than the stored one: $6 is
/// the new status's rank, `github_status_rank` the stored one's (a generated
/// column). An event of the same status may still fill in what an earlier
/// one lacked (conclusion, runner), never overwrite it.
const RECORD_GITHUB_STATUS: &str = "
UPDATE jobs
SET github_status      = $2,
    github_conclusion  = CASE WHEN github_status_rank < $6 THEN COALESCE($3, github_conclusion)
                              ELSE COALESCE(github_conclusion, $3) END,
    github_runner_name = CASE WHEN github_status_rank < $6 THEN COALESCE($4, github_runner_name)
                              ELSE COALESCE(github_runner_name, $4) END,
    github_runner_id   = CASE WHEN github_status_rank < $6 THEN COALESCE($5, github_runner_id)
                              ELSE COALESCE(github_runner_id, $5) END,
    updated_at         = $7
WHERE github_job_id = $1
  AND (github_status_rank < $6
       OR (github_status_rank = $6
           AND ((github_conclusion IS NULL AND $3 IS NOT NULL)
                OR (github_runner_name IS NULL AND $4 IS NOT NULL)
                OR (github_runner_id IS NULL AND $5 IS NOT NULL))))";

impl Store {
    /// Adds a queued job, unless one with the same GitHub job id exists: then
    /// returns that one, unchanged. `inserted` says which happened.
    ///
    /// Safe under races: of concurrent inserts of one GitHub job exactly one
    /// inserts (`ON CONFLICT DO NOTHING`), and the others read its row.
    ///
    /// On SQLite the insert is committed together with other intake writes
    /// waiting at the same moment (see [`Store::intake_commit`]).
    pub async fn job_insert(&self, job: NewJob) -> Result<(Job, bool)> {
        let written = self
            .intake_commit(super::IntakeWrite {
                job: Some(job),
                delivery_id: None,
            })
            .await?;
        written.job.ok_or(StoreError::Query {
            op: "job_insert",
            source: sqlx::Error::RowNotFound,
        })
    }

    pub async fn job_get(&self, id: Uuid) -> Result<Option<Job>> {
        self.job_select_one(
            "job_get",
            "SELECT * FROM jobs WHERE id = $1",
            id.to_string(),
        )
        .await
    }

    pub async fn job_get_by_github_id(&self, github_job_id: i64) -> Result<Option<Job>> {
        let row = on_reader!(self, pool => {
            sqlx::query_as::<_, JobRow>("SELECT * FROM jobs WHERE github_job_id = $1")
                .bind(github_job_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::query("job_get_by_github_id"))?;
        row.map(JobRow::into_job).transpose()
    }

    /// The job berth registered the runner `name` for (newest, should a name
    /// ever repeat).
    pub async fn job_get_by_runner_name(&self, name: &str) -> Result<Option<Job>> {
        self.job_select_one(
            "job_get_by_runner_name",
            "SELECT * FROM jobs WHERE runner_name = $1 ORDER BY created_at DESC LIMIT 1",
            name.to_owned(),
        )
        .await
    }

    /// The job GitHub says the runner `name` took (see `Job::github_runner_name`).
    pub async fn job_get_by_github_runner_name(&self, name: &str) -> Result<Option<Job>> {
        self.job_select_one(
            "job_get_by_github_runner_name",
            "SELECT * FROM jobs WHERE github_runner_name = $1 ORDER BY created_at DESC LIMIT 1",
            name.to_owned(),
        )
        .await
    }

    pub async fn job_get_by_container_id(&self, container_id: &str) -> Result<Option<Job>> {
        self.job_select_one(
            "job_get_by_container_id",
            "SELECT * FROM jobs WHERE container_id = $1 ORDER BY created_at DESC LIMIT 1",
            container_id.to_owned(),
        )
        .await
    }

    /// Jobs matching `filter`, newest first.
    pub async fn job_list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let rows = on_reader!(self, pool => {
            let mut sql = QueryBuilder::new("SELECT * FROM jobs WHERE TRUE");
            if !filter.states.is_empty() {
                sql.push(" AND state IN (");
                let mut states = sql.separated(", ");
                for state in &filter.states {
                    states.push_bind(state.as_str());
                }
                states.push_unseparated(")");
            }
            if let Some(pool_name) = &filter.pool {
                sql.push(" AND pool = ").push_bind(pool_name.clone());
            }
            if let Some(repository) = &filter.repository {
                sql.push(" AND repository = ").push_bind(repository.clone());
            }
            sql.push(" ORDER BY created_at DESC, id DESC");
            if let Some(limit) = filter.limit {
                sql.push(" LIMIT ").push_bind(i64::from(limit));
            }
            sql.build_query_as::<JobRow>().fetch_all(pool).await
        })
        .map_err(StoreError::query("job_list"))?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// How many jobs each pool has in each state (only pairs with at least
    /// one job), sorted by pool then state name.
    pub async fn job_counts(&self) -> Result<Vec<JobCount>> {
        let rows: Vec<(String, String, i64)> = on_reader!(self, pool => {
            sqlx::query_as(
                "SELECT pool, state, COUNT(*) FROM jobs GROUP BY pool, state ORDER BY pool, state",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("job_counts"))?;
        rows.into_iter()
            .map(|(pool, state, count)| {
                let state = state.parse().map_err(|e| StoreError::Corrupt {
                    table: "jobs",
                    key: format!("pool {pool}"),
                    column: "state",
                    detail: format!("{e}"),
                })?;
                Ok(JobCount { pool, state, count })
            })
            .collect()
    }

    /// Claims the oldest queued job of `pool` for `owner` until `lease_until`
    /// and places it on one of `placement.hosts`: moves it to
    /// `provisioning` with its `host`, counts an attempt, and returns it.
    /// `None` when the pool has no claimable job (queued and not asked to
    /// cancel), when no offered host is up, active and has a free slot, or
    /// when `pool` already has `max_active_in_pool` active jobs, or all
    /// pools together `global_max_active` (active = provisioning, starting,
    /// running, until the worker exits).
    ///
    /// Concurrent claimers, in this process or in other replicas, never get
    /// the same job and never push a count past its limit:
    ///
    /// - SQLite runs one write at a time, so the single `UPDATE … WHERE id =
    ///   (SELECT oldest) AND counts < limits` sees every earlier claim.
    /// - PostgreSQL runs writers concurrently under READ COMMITTED, where two
    ///   claims could both count 9 of 10 (of a pool, or of a host's slots)
    ///   and both go ahead. So a claim first
    ///   takes a transaction-scoped advisory lock (one for all pools, since
    ///   the global limit spans pools), and its UPDATE, whose snapshot is taken
    ///   after the lock, sees every claim committed before it. This is
    ///   simpler and steadier under contention than SERIALIZABLE (which would
    ///   abort and retry concurrent claimers). Both run inside the database,
    ///   in one call of the function `berth_claim` (one statement in a
    ///   PL/pgSQL function sees a fresh snapshot) committed on its own, so
    ///   the lock is held only while the database works, never across a
    ///   round trip to berth: claims are a fraction of a millisecond, so
    ///   serializing them costs little. `FOR UPDATE SKIP LOCKED` keeps the
    ///   claim off rows other transactions hold, and `AND state = 'queued'`
    ///   re-checks the row when it changed under us.
    ///
    /// Other transitions need no lock: only a claim makes a job active. And
    /// only claims take the lock, before any row lock, so it cannot deadlock.
    #[allow(clippy::too_many_arguments)]
    pub async fn job_claim(
        &self,
        pool: &str,
        max_active_in_pool: u32,
        global_max_active: u32,
        placement: Placement<'_>,
        owner: &str,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<Job>> {
        if placement.hosts.is_empty() {
            return Ok(None);
        }
        let hosts = serde_json::to_string(placement.hosts).map_err(|e| StoreError::Query {
            op: "job_claim",
            source: sqlx::Error::Encode(Box::new(e)),
        })?;
        let args = ClaimArgs {
            pool,
            max_active_in_pool,
            global_max_active,
            owner,
            lease_until,
            now,
            placement: Some((&hosts, placement.pack, placement.slots_per_job.max(1))),
        };
        let err = StoreError::query("job_claim");
        let row = match &self.backend {
            Backend::Sqlite { writer, .. } => claim_query(CLAIM_SQLITE.as_str(), args)
                .fetch_all(writer)
                .await
                .map_err(err)?
                .pop(),
            Backend::Postgres(pg) => claim_query(CLAIM_CALL_POSTGRES, args)
                .fetch_optional(pg)
                .await
                .map_err(err)?,
        };
        row.map(JobRow::into_job).transpose()
    }

    /// `berth bench placement` only (crate::bench::placement): runs `sql`
    /// (SQLite, PostgreSQL), a claim without placement taking `$1`–`$6` as
    /// [`Store::job_claim`] does, the way claims ran before the fleet: on
    /// SQLite's writer connection; on PostgreSQL in a transaction that takes
    /// the claim lock, then runs `sql`, then commits. The bench times the
    /// claim from before the fleet with it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn job_claim_unplaced(
        &self,
        sql: (&'static str, &'static str),
        pool: &str,
        max_active_in_pool: u32,
        global_max_active: u32,
        owner: &str,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<Job>> {
        let args = ClaimArgs {
            pool,
            max_active_in_pool,
            global_max_active,
            owner,
            lease_until,
            now,
            placement: None,
        };
        self.claim_with("job_claim_unplaced", sql, args).await
    }

    /// Runs a claim statement (`sql`: SQLite's, PostgreSQL's): on SQLite's
    /// writer connection; on PostgreSQL in a transaction that first takes
    /// the claim lock.
    async fn claim_with(
        &self,
        op: &'static str,
        sql: (&'static str, &'static str),
        args: ClaimArgs<'_>,
    ) -> Result<Option<Job>> {
        let err = StoreError::query;
        let row = match &self.backend {
            Backend::Sqlite { writer, .. } => claim_query(sql.0, args)
                .fetch_all(writer)
                .await
                .map_err(err(op))?
                .pop(),
            Backend::Postgres(pg) => {
                let mut tx = pg.begin().await.map_err(err(op))?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(CLAIM_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(err(op))?;
                let row = claim_query(sql.1, args)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(err(op))?;
                tx.commit().await.map_err(err(op))?;
                row
            }
        };
        row.map(JobRow::into_job).transpose()
    }

    /// Records that the worker container `container_id` of an active job
    /// exited: from now on the job holds no worker slot (claims do not count
    /// it), while its end is still being recorded. `false` when no active
    /// job has that container or its exit was recorded already.
    pub async fn job_worker_exited(&self, container_id: &str, at: OffsetDateTime) -> Result<bool> {
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET exited_at = $2
                 WHERE container_id = $1 AND exited_at IS NULL
                   AND state IN ('provisioning', 'starting', 'running')",
            )
            .bind(container_id)
            .bind(to_millis(at))
            .execute(pool)
            .await
            .map(|done| done.rows_affected() > 0)
        })
        .map_err(StoreError::query("job_worker_exited"))
    }

    /// Extends `owner`'s lease on an active job to `until`. `false` when the
    /// job is not active, someone else holds it, or the lease already ran out
    /// (by the store's clock): a reconciler may be requeueing the job, so the
    /// former holder must stop working on it.
    pub async fn job_lease_renew(
        &self,
        id: Uuid,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET lease_expires_at = $3, updated_at = $4
                 WHERE id = $1 AND lease_owner = $2 AND lease_expires_at > $4
                   AND state IN ('provisioning', 'starting', 'running')",
            )
            .bind(id.to_string())
            .bind(owner)
            .bind(to_millis(until))
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("job_lease_renew"))
    }

    /// Moves the job to `to` and applies `changes`, if it is in one of
    /// `from`. Returns whether it did; `false` leaves the job untouched.
    ///
    /// Moving to `running` stamps `started_at`, to a terminal state stamps
    /// `finished_at` and drops the lease, unless `changes` says otherwise.
    /// Errors (a caller bug) for a move the state machine lacks: into
    /// `queued` (use [`Store::job_requeue`]) or `provisioning` (only
    /// [`Store::job_claim`], which checks the limits), backwards, or out of a
    /// terminal state.
    pub async fn job_transition(
        &self,
        id: Uuid,
        from: &[JobState],
        to: JobState,
        changes: JobChanges,
    ) -> Result<bool> {
        check_transition(from, to)?;
        let now = self.now();
        let mut changes = changes;
        if to == JobState::Running && !changes.sets(Column::StartedAt) {
            changes = changes.started_at(now);
        }
        if to.is_terminal() {
            if !changes.sets(Column::FinishedAt) {
                changes = changes.finished_at(now);
            }
            changes = changes.clear_lease();
        }
        self.job_update(
            "job_transition",
            JobKey::Id(id),
            from,
            to,
            &changes,
            now,
            None,
        )
        .await
    }

    /// [`Store::job_transition`] of whichever job holds the runner
    /// `runner_name` now. Provisioning works on a runner: if GitHub gives the
    /// runner to another job meanwhile ([`Store::job_take_runner`]), the
    /// rest of its provisioning applies to that job.
    pub async fn job_transition_by_runner(
        &self,
        runner_name: &str,
        from: &[JobState],
        to: JobState,
        changes: JobChanges,
    ) -> Result<bool> {
        check_transition(from, to)?;
        let now = self.now();
        let mut changes = changes;
        if to == JobState::Running && !changes.sets(Column::StartedAt) {
            changes = changes.started_at(now);
        }
        self.job_update(
            "job_transition_by_runner",
            JobKey::Runner(runner_name),
            from,
            to,
            &changes,
            now,
            None,
        )
        .await
    }

    /// [`Store::job_lease_renew`] of whichever job holds the runner `runner_name`.
    pub async fn job_lease_renew_by_runner(
        &self,
        runner_name: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET lease_expires_at = $3, updated_at = $4
                 WHERE runner_name = $1 AND lease_owner = $2 AND lease_expires_at > $4
                   AND state IN ('provisioning', 'starting')",
            )
            .bind(runner_name)
            .bind(owner)
            .bind(to_millis(until))
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("job_lease_renew_by_runner"))
    }

    /// Ends the job in `state` (terminal) from whatever non-terminal state
    /// it is in, recording the exit code and error. Idempotent: once a job
    /// is terminal, another finish returns `false` and changes nothing.
    ///
    /// `exit_code: None` keeps one recorded earlier. `error: None` keeps an
    /// earlier error on a failure, and clears it (say, a requeue reason) on
    /// `completed`.
    pub async fn job_finish(
        &self,
        id: Uuid,
        state: JobState,
        exit_code: Option<i64>,
        error: Option<&str>,
    ) -> Result<bool> {
        self.finish("job_finish", FINISH, id, None, state, exit_code, error)
            .await
    }

    /// [`Store::job_finish`], but only while the job still holds the runner
    /// `runner_name` (`None`: still holds none). An outcome decided on a
    /// snapshot of the job is for the runner the snapshot saw: should GitHub
    /// have given that runner to another job meanwhile
    /// ([`Store::job_take_runner`]), the job is not the one that runner's
    /// end says anything about, and nothing changes.
    pub async fn job_finish_holding(
        &self,
        id: Uuid,
        runner_name: Option<&str>,
        state: JobState,
        exit_code: Option<i64>,
        error: Option<&str>,
    ) -> Result<bool> {
        self.finish(
            "job_finish_holding",
            FINISH_HOLDING,
            id,
            Some(runner_name),
            state,
            exit_code,
            error,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        op: &'static str,
        sql: &'static str,
        id: Uuid,
        holding: Option<Option<&str>>,
        state: JobState,
        exit_code: Option<i64>,
        error: Option<&str>,
    ) -> Result<bool> {
        if !state.is_terminal() {
            return Err(StoreError::InvalidTransition {
                from: JobState::NON_TERMINAL.to_vec(),
                to: state,
                reason: "job_finish needs a terminal state",
            });
        }
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            let mut query = sqlx::query(sql)
                .bind(id.to_string())
                .bind(state.as_str())
                .bind(exit_code)
                .bind(error)
                .bind(now);
            if let Some(runner_name) = holding {
                query = query.bind(runner_name);
            }
            query.execute(pool).await.map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query(op))
    }

    /// Puts the job back in its pool's queue, if it is in one of `from`
    /// (non-terminal states): drops the lease, the runner, the container and
    /// `started_at`, records `reason` in `error`, and sets `queued_at` to now
    /// (so it queues behind the jobs already waiting). `attempts` is kept.
    pub async fn job_requeue(&self, id: Uuid, from: &[JobState], reason: &str) -> Result<bool> {
        self.requeue("job_requeue", JobKey::Id(id), from, reason, None)
            .await
    }

    /// [`Store::job_requeue`], but only while the job still holds the runner
    /// `runner_name` (see [`Store::job_finish_holding`]).
    pub async fn job_requeue_holding(
        &self,
        id: Uuid,
        runner_name: Option<&str>,
        from: &[JobState],
        reason: &str,
    ) -> Result<bool> {
        let key = JobKey::IdHolding(id, runner_name);
        self.requeue("job_requeue_holding", key, from, reason, None)
            .await
    }

    /// [`Store::job_requeue`], but only while the job's lease is still
    /// expired at `now`: if its holder renewed it meanwhile, nothing changes.
    /// The lease-expiry reconciler uses this, so it never requeues a job
    /// whose dispatcher is still alive.
    pub async fn job_requeue_if_lease_expired(
        &self,
        id: Uuid,
        from: &[JobState],
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<bool> {
        self.requeue(
            "job_requeue_if_lease_expired",
            JobKey::Id(id),
            from,
            reason,
            Some(now),
        )
        .await
    }

    /// Asks for the job to be cancelled: claims skip it from now on, and the
    /// lifecycle stops what runs. `false` when the job is unknown, already
    /// terminal, or already asked to cancel.
    pub async fn job_request_cancel(&self, id: Uuid) -> Result<bool> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET cancel_requested = TRUE, updated_at = $2
                 WHERE id = $1 AND NOT cancel_requested
                   AND state IN ('queued', 'provisioning', 'starting', 'running')",
            )
            .bind(id.to_string())
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("job_request_cancel"))
    }

    /// Records what GitHub says about a job (from a `workflow_job` webhook
    /// or a scale-set message), keyed by GitHub's job id; `runner_name` and
    /// `runner_id` are the runner GitHub says took it (stored as
    /// `github_runner_name`/`github_runner_id`).
    ///
    /// Only moves forward (queued < waiting < in_progress < completed):
    /// GitHub may deliver events late, twice or out of order, and an older
    /// status than the stored one changes nothing. The same status again
    /// only fills in values still missing. Returns whether the row changed;
    /// the job's `state` is never touched here.
    pub async fn job_record_github_status(
        &self,
        github_job_id: i64,
        status: GithubStatus,
        conclusion: Option<&str>,
        runner_name: Option<&str>,
        runner_id: Option<i64>,
    ) -> Result<bool> {
        let now = to_millis(self.now());
        on_writer!(self, pool => {
            sqlx::query(RECORD_GITHUB_STATUS)
                .bind(github_job_id)
                .bind(status.as_str())
                .bind(conclusion)
                .bind(runner_name)
                .bind(runner_id)
                .bind(status.rank())
                .bind(now)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query("job_record_github_status"))
    }

    /// Deletes at most `limit` terminal jobs that finished before `before`,
    /// oldest first, with their logs. Returns how many.
    pub async fn jobs_prune_finished(&self, before: OffsetDateTime, limit: u32) -> Result<u64> {
        self.delete_batch(
            "jobs_prune_finished",
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs
                 WHERE state IN ('completed', 'failed', 'cancelled', 'expired')
                   AND finished_at < $1
                 ORDER BY finished_at
                 LIMIT $2)",
            before,
            limit,
        )
        .await
    }

    /// Deletes the logs of at most `limit` terminal jobs that finished
    /// before `before` (the jobs stay). Returns how many.
    pub async fn job_logs_prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64> {
        self.delete_batch(
            "job_logs_prune",
            "DELETE FROM job_logs WHERE job_id IN (
                 SELECT l.job_id FROM job_logs l JOIN jobs j ON j.id = l.job_id
                 WHERE j.state IN ('completed', 'failed', 'cancelled', 'expired')
                   AND j.finished_at < $1
                 LIMIT $2)",
            before,
            limit,
        )
        .await
    }

    // ---- Reconciler queries ------------------------------------------------

    /// Active jobs whose lease ran out at `now` (their holder died or hung),
    /// oldest expiry first.
    pub async fn jobs_with_expired_leases(&self, now: OffsetDateTime) -> Result<Vec<Job>> {
        self.job_select_many(
            "jobs_with_expired_leases",
            "SELECT * FROM jobs
             WHERE lease_expires_at <= $1 AND state IN ('provisioning', 'starting', 'running')
             ORDER BY lease_expires_at",
            to_millis(now),
        )
        .await
    }

    /// Jobs in any of `states`, oldest first.
    pub async fn jobs_in_states(&self, states: &[JobState]) -> Result<Vec<Job>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let rows = on_reader!(self, pool => {
            let mut sql = QueryBuilder::new("SELECT * FROM jobs WHERE state IN (");
            let mut list = sql.separated(", ");
            for state in states {
                list.push_bind(state.as_str());
            }
            list.push_unseparated(") ORDER BY created_at, id");
            sql.build_query_as::<JobRow>().fetch_all(pool).await
        })
        .map_err(StoreError::query("jobs_in_states"))?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// Jobs queued since before `before` (candidates to check against GitHub
    /// and expire), longest waiting first.
    pub async fn jobs_queued_before(&self, before: OffsetDateTime) -> Result<Vec<Job>> {
        self.job_select_many(
            "jobs_queued_before",
            "SELECT * FROM jobs WHERE state = 'queued' AND queued_at < $1 ORDER BY queued_at, id",
            to_millis(before),
        )
        .await
    }

    /// Running jobs whose deadline (`started_at + timeout_secs`) passed at `now`.
    pub async fn jobs_running_past_timeout(&self, now: OffsetDateTime) -> Result<Vec<Job>> {
        self.job_select_many(
            "jobs_running_past_timeout",
            "SELECT * FROM jobs
             WHERE state = 'running' AND started_at + timeout_secs * 1000 <= $1
             ORDER BY started_at",
            to_millis(now),
        )
        .await
    }

    /// Non-terminal jobs someone asked to cancel.
    pub async fn jobs_cancel_requested(&self) -> Result<Vec<Job>> {
        let rows = on_reader!(self, pool => {
            sqlx::query_as::<_, JobRow>(
                "SELECT * FROM jobs
                 WHERE cancel_requested AND state IN ('queued', 'provisioning', 'starting', 'running')
                 ORDER BY created_at, id",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(StoreError::query("jobs_cancel_requested"))?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// Container ids of non-terminal jobs: a `berth.managed` container not in
    /// this set belongs to no live job (an orphan, once past a grace period).
    pub async fn active_container_ids(&self) -> Result<BTreeSet<String>> {
        self.names(
            "active_container_ids",
            "SELECT container_id FROM jobs
             WHERE container_id IS NOT NULL
               AND state IN ('queued', 'provisioning', 'starting', 'running')",
        )
        .await
    }

    /// Runner names tied to non-terminal jobs, both the runners berth
    /// registered for them and the runners GitHub says took them: a `berth-`
    /// runner registration not in this set is unknown.
    pub async fn active_runner_names(&self) -> Result<BTreeSet<String>> {
        self.names(
            "active_runner_names",
            "SELECT runner_name FROM jobs
             WHERE runner_name IS NOT NULL
               AND state IN ('queued', 'provisioning', 'starting', 'running')
             UNION
             SELECT github_runner_name FROM jobs
             WHERE github_runner_name IS NOT NULL
               AND state IN ('queued', 'provisioning', 'starting', 'running')",
        )
        .await
    }

    // ---- Helpers -----------------------------------------------------------

    async fn job_select_one(
        &self,
        op: &'static str,
        sql: &'static str,
        key: String,
    ) -> Result<Option<Job>> {
        let row = on_reader!(self, pool => {
            sqlx::query_as::<_, JobRow>(sql).bind(key).fetch_optional(pool).await
        })
        .map_err(StoreError::query(op))?;
        row.map(JobRow::into_job).transpose()
    }

    async fn job_select_many(
        &self,
        op: &'static str,
        sql: &'static str,
        at: i64,
    ) -> Result<Vec<Job>> {
        let rows = on_reader!(self, pool => {
            sqlx::query_as::<_, JobRow>(sql).bind(at).fetch_all(pool).await
        })
        .map_err(StoreError::query(op))?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn names(&self, op: &'static str, sql: &'static str) -> Result<BTreeSet<String>> {
        let names: Vec<String> = on_reader!(self, pool => {
            sqlx::query_scalar(sql).fetch_all(pool).await
        })
        .map_err(StoreError::query(op))?;
        Ok(names.into_iter().collect())
    }

    async fn requeue(
        &self,
        op: &'static str,
        key: JobKey<'_>,
        from: &[JobState],
        reason: &str,
        only_if_lease_expired_at: Option<OffsetDateTime>,
    ) -> Result<bool> {
        if let Some(&terminal) = from.iter().find(|s| s.is_terminal()) {
            return Err(StoreError::InvalidTransition {
                from: vec![terminal],
                to: JobState::Queued,
                reason: "a terminal job is never requeued",
            });
        }
        let now = self.now();
        let changes = JobChanges::new()
            .clear_lease()
            .clear_runner()
            .clear_container_id()
            .error(reason)
            .set(Column::StartedAt, Value::Int(None))
            .set(Column::ExitedAt, Value::Int(None))
            .set(Column::Host, Value::Text(None))
            .set(Column::QueuedAt, Value::Int(Some(to_millis(now))));
        let guard = only_if_lease_expired_at.map(to_millis);
        self.job_update(op, key, from, JobState::Queued, &changes, now, guard)
            .await
    }

    /// `UPDATE jobs SET state = to, updated_at = now, <changes>
    ///  WHERE id = id AND state IN (from) [AND lease_expires_at <= expired_at]`:
    /// the one statement behind every transition with a variable set of columns.
    #[allow(clippy::too_many_arguments)]
    async fn job_update(
        &self,
        op: &'static str,
        key: JobKey<'_>,
        from: &[JobState],
        to: JobState,
        changes: &JobChanges,
        now: OffsetDateTime,
        lease_expired_at: Option<i64>,
    ) -> Result<bool> {
        if from.is_empty() {
            return Ok(false);
        }
        on_writer!(self, pool => {
            let mut sql = QueryBuilder::new("UPDATE jobs SET state = ");
            sql.push_bind(to.as_str());
            sql.push(", updated_at = ").push_bind(to_millis(now));
            for (column, value) in &changes.sets {
                sql.push(", ").push(column.name()).push(" = ");
                match value {
                    Value::Text(text) => sql.push_bind(text.clone()),
                    Value::Int(int) => sql.push_bind(*int),
                };
            }
            match key {
                JobKey::Id(id) => sql.push(" WHERE id = ").push_bind(id.to_string()),
                JobKey::Runner(name) => sql.push(" WHERE runner_name = ").push_bind(name.to_string()),
                JobKey::IdHolding(id, runner_name) => sql
                    .push(" WHERE id = ")
                    .push_bind(id.to_string())
                    .push(" AND runner_name IS NOT DISTINCT FROM ")
                    .push_bind(runner_name.map(str::to_string)),
            };
            sql.push(" AND state IN (");
            let mut states = sql.separated(", ");
            for state in from {
                states.push_bind(state.as_str());
            }
            states.push_unseparated(")");
            if let Some(at) = lease_expired_at {
                sql.push(" AND lease_expires_at <= ").push_bind(at);
            }
            sql.build().execute(pool).await.map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::query(op))
    }
}

/// Whether `from → to` is a move `job_transition` may make (see its doc).
fn check_transition(from: &[JobState], to: JobState) -> Result<()> {
    let invalid = |reason| {
        Err(StoreError::InvalidTransition {
            from: from.to_vec(),
            to,
            reason,
        })
    };
    match to {
        JobState::Queued => return invalid("requeue with job_requeue"),
        // Staying in `provisioning` (to record the runner) is allowed; entering it is the claim's.
        JobState::Provisioning if from.iter().any(|s| *s != JobState::Provisioning) => {
            return invalid("only job_claim moves a job to provisioning");
        }
        _ => {}
    }
    if from.is_empty() {
        return invalid("no state to move from");
    }
    for &state in from {
        if state.is_terminal() {
            return invalid("a terminal job never changes state");
        }
        // Only `provisioning` may stay where it is (to record its runner).
        let backwards = state.step() > to.step()
            || (state.step() == to.step() && !(state == to && to == JobState::Provisioning));
        if !to.is_terminal() && (state == JobState::Queued || backwards) {
            return invalid("a queued job must be claimed first, and jobs only move forward");
        }
    }
    Ok(())
}

/// A claim statement with its arguments bound, for either database.
fn claim_query<'q, DB>(
    sql: &'static str,
    args: ClaimArgs<'q>,
) -> sqlx::query::QueryAs<'q, DB, JobRow, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    JobRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let query = sqlx::query_as::<DB, JobRow>(sql)
        .bind(args.pool)
        .bind(args.owner)
        .bind(to_millis(args.lease_until))
        .bind(to_millis(args.now))
        .bind(i64::from(args.max_active_in_pool))
        .bind(i64::from(args.global_max_active));
    match args.placement {
        Some((hosts, pack, slots)) => query.bind(hosts).bind(pack).bind(i64::from(slots)),
        None => query,
    }
}

/// What a claim statement binds: `$1`–`$6`, and `$7` (the offered hosts as
/// JSON) and `$8` (`pack`) when it places.
#[derive(Debug, Clone, Copy)]
struct ClaimArgs<'a> {
    pool: &'a str,
    max_active_in_pool: u32,
    global_max_active: u32,
    owner: &'a str,
    lease_until: OffsetDateTime,
    now: OffsetDateTime,
    placement: Option<(&'a str, bool, u32)>,
}

/// Which row an update addresses.
#[derive(Debug, Clone, Copy)]
enum JobKey<'a> {
    Id(Uuid),
    /// The job with this id, while it holds this runner (`None`: none).
    IdHolding(Uuid, Option<&'a str>),
    /// The job holding this runner.
    Runner(&'a str),
}

/// `job_finish`: from any non-terminal state. `job_finish_holding` adds the
/// runner the caller saw. (A macro: sqlx wants the whole statement static.)
macro_rules! finish_sql {
    () => {
        "UPDATE jobs
     SET state = $2,
         exit_code = COALESCE($3, exit_code),
         error = CASE WHEN $2 = 'completed' THEN $4 ELSE COALESCE($4, error) END,
         finished_at = $5,
         updated_at = $5,
         lease_owner = NULL,
         lease_expires_at = NULL
     WHERE id = $1 AND state IN ('queued', 'provisioning', 'starting', 'running')"
    };
}
const FINISH: &str = finish_sql!();
const FINISH_HOLDING: &str = concat!(finish_sql!(), " AND runner_name IS NOT DISTINCT FROM $6");

/// A `jobs` row as stored; [`JobRow::into_job`] checks and converts it.
#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
    pub(super) id: String,
    pub(super) github_job_id: i64,
    pub(super) run_id: i64,
    pub(super) repository: String,
    pub(super) workflow: Option<String>,
    pub(super) job_name: Option<String>,
    pub(super) labels: String,
    pub(super) pool: String,
    pub(super) source: String,
    pub(super) scale_set: Option<String>,
    pub(super) state: String,
    pub(super) cancel_requested: bool,
    pub(super) attempts: i64,
    pub(super) lease_owner: Option<String>,
    pub(super) lease_expires_at: Option<i64>,
    pub(super) runner_name: Option<String>,
    pub(super) runner_id: Option<i64>,
    pub(super) container_id: Option<String>,
    pub(super) github_status: Option<String>,
    pub(super) github_conclusion: Option<String>,
    pub(super) github_runner_name: Option<String>,
    pub(super) github_runner_id: Option<i64>,
    pub(super) exit_code: Option<i64>,
    pub(super) error: Option<String>,
    pub(super) timeout_secs: Option<i64>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) queued_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) finished_at: Option<i64>,
    pub(super) exited_at: Option<i64>,
    pub(super) host: Option<String>,
    pub(super) stop_reason: Option<String>,
}

impl JobRow {
    pub(super) fn into_job(self) -> Result<Job> {
        let key = self.id.clone();
        let corrupt = |column: &'static str, detail: String| StoreError::Corrupt {
            table: "jobs",
            key: key.clone(),
            column,
            detail,
        };
        let time = |column: &'static str, ms: i64| {
            from_millis(ms).ok_or_else(|| corrupt(column, format!("timestamp {ms} out of range")))
        };
        let optional_time =
            |column: &'static str, ms: Option<i64>| ms.map(|ms| time(column, ms)).transpose();
        Ok(Job {
            id: Uuid::parse_str(&self.id).map_err(|e| corrupt("id", e.to_string()))?,
            github_job_id: self.github_job_id,
            run_id: self.run_id,
            repository: self.repository,
            workflow: self.workflow,
            job_name: self.job_name,
            labels: serde_json::from_str(&self.labels)
                .map_err(|e| corrupt("labels", format!("not a JSON array of strings: {e}")))?,
            pool: self.pool,
            source: self
                .source
                .parse::<JobSource>()
                .map_err(|e| corrupt("source", e.to_string()))?,
            scale_set: self.scale_set,
            state: self
                .state
                .parse()
                .map_err(|e: super::UnknownName| corrupt("state", e.to_string()))?,
            cancel_requested: self.cancel_requested,
            attempts: self.attempts,
            lease_owner: self.lease_owner,
            lease_expires_at: optional_time("lease_expires_at", self.lease_expires_at)?,
            runner_name: self.runner_name,
            runner_id: self.runner_id,
            container_id: self.container_id,
            github_status: self
                .github_status
                .map(|s| s.parse())
                .transpose()
                .map_err(|e: super::UnknownName| corrupt("github_status", e.to_string()))?,
            github_conclusion: self.github_conclusion,
            github_runner_name: self.github_runner_name,
            github_runner_id: self.github_runner_id,
            exit_code: self.exit_code,
            error: self.error,
            timeout_secs: self.timeout_secs,
            created_at: time("created_at", self.created_at)?,
            updated_at: time("updated_at", self.updated_at)?,
            queued_at: time("queued_at", self.queued_at)?,
            started_at: optional_time("started_at", self.started_at)?,
            finished_at: optional_time("finished_at", self.finished_at)?,
            exited_at: optional_time("exited_at", self.exited_at)?,
            stop_reason: self.stop_reason,
            host: self.host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statement of `berth_claim` (the newest PostgreSQL migration that
    /// defines it) is [`CLAIM`] with PostgreSQL's parts, under the claim
    /// lock: changing the claim needs a migration that replaces the function.
    #[test]
    fn the_postgres_claim_function_runs_the_shared_claim() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let function = files
            .iter()
            .rev()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .find(|text| text.contains("FUNCTION berth_claim("))
            .expect("a migration defines berth_claim");
        let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        let body = words(&function);
        let lock = format!("BEGIN PERFORM pg_advisory_xact_lock({CLAIM_LOCK_KEY}); RETURN QUERY ");
        assert!(body.contains(&lock), "{body}");
        let statement = format!("{lock}{};", words(&CLAIM_POSTGRES));
        assert!(
            body.contains(&statement),
            "berth_claim differs from CLAIM:\n{body}\n\nexpected:\n{statement}"
        );
    }
}
