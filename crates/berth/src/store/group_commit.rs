//! Group commit for intake: many concurrent accepts, one transaction.
//!
//! Every accepted webhook or delegate call must be durable before berth
//! answers it, and on SQLite durability costs a commit (an fsync of the WAL
//! with `synchronous = FULL`). One commit per request caps intake at the
//! disk's fsync rate, and SQLite has a single writer anyway. So on SQLite
//! intake writes go to one committer task: it takes the first waiting
//! request, then every other request already waiting (up to
//! [`MAX_BATCH`]), applies them in arrival order inside one transaction,
//! commits once, and only then answers each request. There is no timer:
//! while one batch commits, the next one gathers, so an idle berth answers
//! as fast as before and a busy one commits many accepts per fsync.
//!
//! Each request is applied exactly as it would be alone, in order, so
//! duplicate semantics do not change: of two deliveries of one GitHub job
//! in the same batch, the first inserts and the second reads that row back.
//! If the batch fails as a whole (a statement error), it is rolled back and
//! every request is retried in a transaction of its own, so one bad request
//! cannot fail its neighbours.
//!
//! On PostgreSQL a request is one transaction on the pool: the server
//! already runs many transactions at once and groups their WAL flushes.

use std::collections::{HashMap, HashSet};

use sqlx::QueryBuilder;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::clock::to_millis;
use super::jobs::JobRow;
use super::{Backend, GithubStatus, Job, NewJob, Result, Store, StoreError};

/// The most requests committed together. Large enough that a burst of
/// thousands of deliveries needs few fsyncs, small enough that a batch's
/// transaction stays short (a few milliseconds).
pub const MAX_BATCH: usize = 512;

/// How many requests may wait for the committer before callers wait to send.
const QUEUE_DEPTH: usize = 8 * MAX_BATCH;

/// One intake write: queue a job (idempotent on its GitHub job id) and/or
/// remember a webhook delivery id (idempotent on the id).
#[derive(Debug, Clone, Default)]
pub struct IntakeWrite {
    pub job: Option<NewJob>,
    pub delivery_id: Option<String>,
}

/// What an [`IntakeWrite`] did, once it is committed.
#[derive(Debug, Clone, Default)]
pub struct IntakeWritten {
    /// The job's row and whether this write inserted it (`false`: it existed).
    pub job: Option<(Job, bool)>,
    /// Whether the delivery id was new (`false`: a redelivery).
    pub delivery_new: Option<bool>,
}

struct Request {
    write: IntakeWrite,
    at: OffsetDateTime,
    reply: oneshot::Sender<Result<IntakeWritten>>,
}

/// The sending side of the SQLite committer task; the task ends when the
/// last [`Store`] clone (and so the last sender) is dropped.
#[derive(Clone)]
pub(super) struct Committer(mpsc::Sender<Request>);

impl Committer {
    /// Starts the committer task on the SQLite writer pool, committing up
    /// to `max_batch` requests at a time (1: each on its own).
    pub(super) fn start(writer: sqlx::SqlitePool, max_batch: usize) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_committer(writer, rx, max_batch.max(1)));
        Committer(tx)
    }
}

async fn run_committer(
    writer: sqlx::SqlitePool,
    mut rx: mpsc::Receiver<Request>,
    max_batch: usize,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let started = std::time::Instant::now();
        let committed = commit_sqlite(&writer, &batch).await;
        tracing::debug!(
            writes = batch.len(),
            micros = started.elapsed().as_micros() as u64,
            ok = committed.is_ok(),
            "group commit"
        );
        match committed {
            Ok(results) => {
                for (request, written) in batch.drain(..).zip(results) {
                    let _ = request.reply.send(Ok(written));
                }
            }
            Err(e) if batch.len() == 1 => {
                let request = batch.pop().expect("one request");
                let _ = request.reply.send(Err(e));
            }
            Err(_) => {
                // Retry one by one so the error lands on its own request.
                for request in batch.drain(..) {
                    let result = commit_sqlite(&writer, std::slice::from_ref(&request))
                        .await
                        .map(|mut r| r.pop().unwrap_or_default());
                    let _ = request.reply.send(result);
                }
            }
        }
    }
}

const INSERT_JOB: &str = "
INSERT INTO jobs (id, github_job_id, run_id, repository, workflow, job_name,
                  labels, pool, source, scale_set, github_status, timeout_secs,
                  state, created_at, updated_at, queued_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'queued', $13, $13, $13)
ON CONFLICT (github_job_id) DO NOTHING
RETURNING *";

const SELECT_JOB: &str = "SELECT * FROM jobs WHERE github_job_id = $1";

const INSERT_DELIVERY: &str = "
INSERT INTO webhook_deliveries (delivery_id, received_at) VALUES ($1, $2)
ON CONFLICT (delivery_id) DO NOTHING";

/// Applies `$writes` (`(&IntakeWrite, OffsetDateTime)` pairs) in order
/// inside one open transaction `$tx`; the body is compiled once per backend.
macro_rules! apply_writes {
    ($tx:expr, $writes:expr) => {{
        let mut results = Vec::new();
        for (write, at) in $writes {
            let write: &IntakeWrite = write;
            let mut written = IntakeWritten::default();
            let at = to_millis(at);
            if let Some(job) = &write.job {
                let labels = serde_json::to_string(&job.labels).expect("a list of strings is JSON");
                let inserted = sqlx::query_as::<_, JobRow>(INSERT_JOB)
                    .bind(Uuid::now_v7().to_string())
                    .bind(job.github_job_id)
                    .bind(job.run_id)
                    .bind(&job.repository)
                    .bind(&job.workflow)
                    .bind(&job.job_name)
                    .bind(&labels)
                    .bind(&job.pool)
                    .bind(job.source.as_str())
                    .bind(&job.scale_set)
                    .bind(job.github_status.map(GithubStatus::as_str))
                    .bind(job.timeout_secs)
                    .bind(at)
                    .fetch_optional(&mut *$tx)
                    .await
                    .map_err(StoreError::query("job_insert"))?;
                let (row, new) = match inserted {
                    Some(row) => (row, true),
                    // The conflicting row is committed or earlier in this
                    // transaction: either way this transaction sees it.
                    None => (
                        sqlx::query_as::<_, JobRow>(SELECT_JOB)
                            .bind(job.github_job_id)
                            .fetch_one(&mut *$tx)
                            .await
                            .map_err(StoreError::query("job_insert"))?,
                        false,
                    ),
                };
                written.job = Some((row.into_job()?, new));
            }
            if let Some(delivery) = &write.delivery_id {
                let done = sqlx::query(INSERT_DELIVERY)
                    .bind(delivery)
                    .bind(at)
                    .execute(&mut *$tx)
                    .await
                    .map_err(StoreError::query("delivery_record"))?;
                written.delivery_new = Some(done.rows_affected() == 1);
            }
            results.push(written);
        }
        results
    }};
}

/// Commits `requests` in one transaction, each applied as if alone and in
/// order, with one statement for all their jobs and one for all their
/// delivery ids (plus one to read back jobs that already existed): on
/// SQLite every statement is a round trip to the connection's worker
/// thread, and profiling showed those hand-offs, not SQLite, dominating
/// intake when each request ran its own statements.
async fn commit_sqlite(
    writer: &sqlx::SqlitePool,
    requests: &[Request],
) -> Result<Vec<IntakeWritten>> {
    let result = commit_sqlite_once(writer, requests).await;
    if result.is_err() {
        super::reset_sqlite_writer(writer).await;
    }
    result
}

async fn commit_sqlite_once(
    writer: &sqlx::SqlitePool,
    requests: &[Request],
) -> Result<Vec<IntakeWritten>> {
    let op = StoreError::query("intake_commit");
    let mut tx = writer.begin().await.map_err(op)?;
    let mut results = vec![IntakeWritten::default(); requests.len()];

    let jobs: Vec<(usize, &NewJob, i64)> = requests
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.write.job.as_ref().map(|job| (i, job, to_millis(r.at))))
        .collect();
    if !jobs.is_empty() {
        let mut insert = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO jobs (id, github_job_id, run_id, repository, workflow, job_name,
                               labels, pool, source, scale_set, github_status, timeout_secs,
                               state, created_at, updated_at, queued_at) ",
        );
        // Rows go in in order, so of two requests for one GitHub job the
        // earlier inserts and the later conflicts: as if one by one.
        insert.push_values(&jobs, |mut row, (_, job, at)| {
            row.push_bind(Uuid::now_v7().to_string())
                .push_bind(job.github_job_id)
                .push_bind(job.run_id)
                .push_bind(job.repository.as_str())
                .push_bind(job.workflow.as_deref())
                .push_bind(job.job_name.as_deref())
                .push_bind(serde_json::to_string(&job.labels).expect("a list of strings is JSON"))
                .push_bind(job.pool.as_str())
                .push_bind(job.source.as_str())
                .push_bind(job.scale_set.as_deref())
                .push_bind(job.github_status.map(GithubStatus::as_str))
                .push_bind(job.timeout_secs)
                .push("'queued'")
                .push_bind(*at)
                .push_bind(*at)
                .push_bind(*at);
        });
        insert.push(" ON CONFLICT (github_job_id) DO NOTHING RETURNING *");
        let inserted: Vec<JobRow> = insert
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query("job_insert"))?;
        let mut new_rows: HashMap<i64, Job> = HashMap::with_capacity(inserted.len());
        for row in inserted {
            let job = row.into_job()?;
            new_rows.insert(job.github_job_id, job);
        }
        let existing_ids: Vec<i64> = jobs
            .iter()
            .map(|(_, job, _)| job.github_job_id)
            .filter(|id| !new_rows.contains_key(id))
            .collect();
        let mut existing: HashMap<i64, Job> = HashMap::new();
        if !existing_ids.is_empty() {
            let mut select =
                QueryBuilder::<sqlx::Sqlite>::new("SELECT * FROM jobs WHERE github_job_id IN (");
            let mut ids = select.separated(", ");
            for id in &existing_ids {
                ids.push_bind(*id);
            }
            select.push(")");
            let rows: Vec<JobRow> = select
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::query("job_insert"))?;
            for row in rows {
                let job = row.into_job()?;
                existing.insert(job.github_job_id, job);
            }
        }
        let mut claimed = HashSet::new();
        for (i, job, _) in &jobs {
            let id = job.github_job_id;
            results[*i].job = Some(match new_rows.get(&id) {
                // The first request for a job inserted in this batch inserted it.
                Some(row) if claimed.insert(id) => (row.clone(), true),
                Some(row) => (row.clone(), false),
                None => (
                    existing.get(&id).cloned().ok_or(StoreError::Query {
                        op: "job_insert",
                        source: sqlx::Error::RowNotFound,
                    })?,
                    false,
                ),
            });
        }
    }

    let deliveries: Vec<(usize, &str, i64)> = requests
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.write
                .delivery_id
                .as_deref()
                .map(|d| (i, d, to_millis(r.at)))
        })
        .collect();
    if !deliveries.is_empty() {
        let mut insert = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO webhook_deliveries (delivery_id, received_at) ",
        );
        insert.push_values(&deliveries, |mut row, (_, id, at)| {
            row.push_bind(*id).push_bind(*at);
        });
        insert.push(" ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id");
        let new: Vec<(String,)> = insert
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::query("delivery_record"))?;
        let mut new: HashSet<String> = new.into_iter().map(|(id,)| id).collect();
        for (i, id, _) in &deliveries {
            // The first request carrying a new id recorded it.
            results[*i].delivery_new = Some(new.remove(*id));
        }
    }
    tx.commit()
        .await
        .map_err(StoreError::query("intake_commit"))?;
    Ok(results)
}

impl Store {
    /// Applies one intake write and returns once it is committed: on
    /// SQLite together with whatever other intake writes are waiting (see
    /// the module documentation), on PostgreSQL in its own transaction.
    pub async fn intake_commit(&self, write: IntakeWrite) -> Result<IntakeWritten> {
        self.intake_commit_at(write, self.now()).await
    }

    /// [`Store::intake_commit`], stamping the rows with `at`.
    pub(super) async fn intake_commit_at(
        &self,
        write: IntakeWrite,
        at: OffsetDateTime,
    ) -> Result<IntakeWritten> {
        match &self.backend {
            Backend::Sqlite { committer, .. } => {
                let (reply, answer) = oneshot::channel();
                let closed = || StoreError::Query {
                    op: "intake_commit",
                    source: sqlx::Error::PoolClosed,
                };
                committer
                    .0
                    .send(Request { write, at, reply })
                    .await
                    .map_err(|_| closed())?;
                answer.await.map_err(|_| closed())?
            }
            Backend::Postgres(pool) => {
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(StoreError::query("intake_commit"))?;
                let mut results = apply_writes!(tx, std::iter::once((&write, at)));
                tx.commit()
                    .await
                    .map_err(StoreError::query("intake_commit"))?;
                Ok(results.pop().unwrap_or_default())
            }
        }
    }
}
