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
        match commit_sqlite(&writer, &batch).await {
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

async fn commit_sqlite(
    writer: &sqlx::SqlitePool,
    requests: &[Request],
) -> Result<Vec<IntakeWritten>> {
    let mut tx = writer
        .begin()
        .await
        .map_err(StoreError::query("intake_commit"))?;
    let results = apply_writes!(tx, requests.iter().map(|r| (&r.write, r.at)));
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
