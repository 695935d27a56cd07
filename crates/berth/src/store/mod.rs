//! Store: one jobs table that is both the durable queue and the job state
//! machine, on SQLite (default) or PostgreSQL (several replicas).
//!
//! # Why the queue is the state
//!
//! A job is one row of `jobs`. Being queued is just `state = 'queued'`;
//! claiming it is changing that state. There is no second structure (a
//! channel, a queue table, a broker) that could disagree with the row after a
//! crash: whatever was committed is the whole truth, and a restarted berth
//! reads it back and carries on.
//!
//! # Why every change is one conditional UPDATE
//!
//! Each state change is a single `UPDATE … WHERE id = ? AND state IN (…)`
//! (the states it may move from) and reports whether a row changed. So two
//! actors racing on the same job (a dispatcher and a reconciler, two
//! replicas, a webhook and a Docker event) cannot both win: the loser gets
//! `false` and a job untouched by it. And since each step is one atomic
//! commit, a crash between two steps leaves the job in a state the
//! reconcilers know how to finish (see `crate::reconcile`).
//!
//! # Claims are leases
//!
//! [`Store::job_claim`] moves the oldest queued job of a pool to
//! `provisioning` and records who holds it (`lease_owner`) until when
//! (`lease_expires_at`). The holder renews the lease while it works
//! ([`Store::job_lease_renew`], which fails once the lease has run out); if
//! the holder dies, the lease runs out and a reconciler finds the job with
//! [`Store::jobs_with_expired_leases`] and requeues it
//! ([`Store::job_requeue_if_lease_expired`]). Limits are checked inside the
//! claim: a pool's active jobs (provisioning, starting, running) stay under
//! its `max_runners`, all active jobs under the global limit.
//!
//! # Backends
//!
//! [`Store::connect`] picks the backend from the URL: `sqlite://PATH` (created
//! if missing; WAL journal, busy timeout, foreign keys on) or
//! `postgres://…`. Each has its migrations (`migrations/sqlite`,
//! `migrations/postgres`, run at connect, forward only; a database a newer
//! berth migrated is refused, see `schema`). The SQL is shared wherever the
//! two dialects agree (placeholders are `$1`, `$2`, … on both); the claim and
//! the log append differ, and are written out for each backend.
//!
//! On SQLite every write goes through one writer connection, and intake
//! writes (a webhook's job and delivery id, a delegate call's job) are
//! committed in groups: all requests waiting at the moment share one
//! transaction and one fsync, and each is answered after that commit
//! (`group_commit`). `synchronous = FULL` stays: an accepted webhook
//! survives a crash of berth and a power loss alike.
//!
//! Timestamps are stored as integer milliseconds since the Unix epoch and
//! read back as [`time::OffsetDateTime`].
//!
//! Nothing secret is stored: no JIT runner config, no token in clear (API
//! tokens are kept as hashes).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;

/// Runs `$body` with `$pool` bound to the pool that writes: the single
/// writer connection on SQLite, the pool on PostgreSQL. `$body` is compiled
/// once per backend, so it can use sqlx generically.
macro_rules! on_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { writer: $pool, .. } => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}

/// Like [`on_writer!`], for statements that only read: on SQLite they go to
/// the reader connections, which WAL lets run alongside the writer.
macro_rules! on_reader {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { reader: $pool, .. } => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}

mod clock;
mod deliveries;
mod error;
mod group_commit;
mod hooks;
mod hosts;
mod jobs;
mod logs;
mod rebind;
mod replicas;
mod scaleset;
pub(crate) mod schema;
mod security;
mod tokens;
mod types;
mod warm;

pub use clock::{Clock, ManualClock, SystemClock, truncate_to_millis};
pub use error::{Result, StoreError};
pub use group_commit::{IntakeWrite, IntakeWritten, MAX_BATCH as GROUP_COMMIT_MAX_BATCH};
pub use hooks::JobContainer;
pub use hosts::{HealthChange, HostRecord};
pub use jobs::{Placement, PlacementHost};
pub use rebind::Rebound;
pub use replicas::{SoleReplica, SoleReplicaError};
pub use scaleset::ListenerLease;
pub use schema::latest_schema_version;
pub use security::{NewSecurityEvent, SecurityEvent};
pub use types::{
    ApiToken, ApiTokenScope, GithubStatus, HostAdmin, HostHealth, Job, JobChanges, JobCount,
    JobFilter, JobLogs, JobLogsState, JobSource, JobState, NewApiToken, NewJob, UnknownName,
};
pub use warm::WarmContainer;

/// How long a SQLite statement waits for another process's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// The same on PostgreSQL, where the wait is also for a server that may be
/// down: short, so that the intake answers 503 well within GitHub's 10 s
/// webhook timeout (the delivery is then redelivered) and a database
/// outage shorter than the heartbeat's allowance
/// (reconcile::replicas::DEAD_AFTER) is ridden through.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A PostgreSQL connection idle for this long is pinged before it is used
/// again (a server restart or a firewall may have cut it meanwhile). One
/// in steady use is not: sqlx's default pings before every use, one more
/// round trip per statement (`berth bench placement` measured it). A
/// connection cut while in use fails that statement, and sqlx drops it.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Sqlite => "SQLite",
            BackendKind::Postgres => "PostgreSQL",
        })
    }
}

/// Options of [`Store::connect_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Source of the timestamps the store stamps itself.
    pub clock: Arc<dyn Clock>,
    /// PostgreSQL pool size; on SQLite, the number of reader connections
    /// (there is always exactly one writer).
    pub max_connections: u32,
    /// On SQLite, commit concurrent intake writes together (see
    /// `group_commit`); `false` commits each on its own.
    pub group_commit: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            clock: Arc::new(SystemClock),
            max_connections: 10,
            group_commit: true,
        }
    }
}

/// The durable queue and job state, plus webhook delivery ids, job logs and
/// API tokens. Cheap to clone (the pools are shared).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    clock: Arc<dyn Clock>,
}

#[derive(Clone)]
enum Backend {
    /// SQLite allows one writer at a time. Funnelling every write through a
    /// pool of one connection makes berth's writers queue in-process, in
    /// order, instead of spinning on SQLITE_BUSY; reads use the other pool
    /// and run alongside (WAL). For an in-memory database both are the same
    /// single connection.
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
        /// Intake writes, committed in groups on `writer` (see `group_commit`).
        committer: group_commit::Committer,
    },
    Postgres(PgPool),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind())
            .field("clock", &self.clock)
            .finish()
    }
}

impl Store {
    /// Runs `sql`, a `DELETE` of at most `$2` rows older than `$1` (the
    /// retention deletes: crate::reconcile::retention), and returns how many
    /// rows went.
    pub(super) async fn delete_batch(
        &self,
        op: &'static str,
        sql: &'static str,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64> {
        on_writer!(self, pool => {
            sqlx::query(sql)
                .bind(clock::to_millis(before))
                .bind(i64::from(limit))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(StoreError::query(op))
    }
}

impl Store {
    /// Opens the store at `url` and brings its schema up to date.
    ///
    /// `sqlite://PATH` (the file is created if missing; `sqlite::memory:` for
    /// a private in-memory database) or `postgres://USER@HOST[:PORT]/DB`
    /// (also `postgresql://`; connection options as query parameters, e.g.
    /// `?options[search_path]=berth`).
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, StoreOptions::default()).await
    }

    /// [`Store::connect`] with a clock and pool size.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Store> {
        let backend = if url.starts_with("sqlite:") {
            connect_sqlite(url, &options).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            connect_postgres(url, &options).await?
        } else {
            return Err(StoreError::UnsupportedUrl { url: redact(url) });
        };
        Ok(Store {
            backend,
            clock: options.clock,
        })
    }

    /// Which database this store runs on.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// The store's clock's "now".
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        on_reader!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await.map(drop)
        })
        .map_err(StoreError::query("ping"))
    }

    /// Closes every connection, waiting for statements in flight. Later calls fail.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { writer, reader, .. } => {
                reader.close().await;
                writer.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

/// Closes SQLite's writer connection after a transaction on it failed, so
/// that the next write starts on a fresh connection.
///
/// Why: when a COMMIT fails because the disk is full, SQLite may already
/// have rolled the transaction back, sqlx's ROLLBACK then fails too, and
/// sqlx's count of open transactions stays off by one. The connection then
/// looks healthy while every later write lands in a transaction that is
/// never committed: berth would answer 202 for webhooks it does not keep
/// (the fault campaign's disk-full scenario found this; tests/chaos.rs).
/// Closing the connection rolls back whatever SQLite still has open, and
/// the pool opens a new one on the next write.
pub(crate) async fn reset_sqlite_writer(writer: &sqlx::SqlitePool) {
    // The pool has one writer connection: this waits for the failed
    // transaction's connection to come back, then closes it.
    match tokio::time::timeout(ACQUIRE_TIMEOUT, writer.acquire()).await {
        Ok(Ok(mut connection)) => {
            connection.close_on_drop();
            tracing::warn!("a write transaction failed: reopening the SQLite writer connection");
        }
        _ => tracing::warn!("could not reopen the SQLite writer connection after a failed write"),
    }
}

impl Store {
    /// After a failed write transaction: on SQLite, [`reset_sqlite_writer`].
    pub(crate) async fn after_failed_transaction(&self) {
        if let Backend::Sqlite { writer, .. } = &self.backend {
            reset_sqlite_writer(writer).await;
        }
    }
}

async fn connect_sqlite(url: &str, options: &StoreOptions) -> Result<Backend> {
    let backend = BackendKind::Sqlite;
    let connect_options = SqliteConnectOptions::from_str(url)
        .map_err(|source| StoreError::InvalidUrl {
            backend,
            url: redact(url),
            source,
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit survives a power loss, not just a crash of berth;
        // an accepted webhook is answered only after that commit.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let connect_error = |source| StoreError::Connect {
        backend,
        url: redact(url),
        source,
    };
    // A `:memory:` or `mode=memory` database lives as long as a connection to
    // it: keep exactly one, forever, for both roles.
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");

    // No ping before each use (sqlx's default): a connection to a local
    // file cannot be cut, and the ping is one more hop to sqlx's worker
    // thread per statement.
    let mut writer_options = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false);
    if in_memory {
        writer_options = writer_options
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    let writer = writer_options
        .connect_with(connect_options.clone())
        .await
        .map_err(connect_error)?;
    let applied = {
        let mut conn = writer.acquire().await.map_err(connect_error)?;
        schema::applied_sqlite(&mut conn)
            .await
            .map_err(StoreError::query("schema_check"))?
    };
    schema::check_not_newer(backend, &applied.unwrap_or_default(), &redact(url))?;
    schema::SQLITE_MIGRATIONS
        .run(&writer)
        .await
        .map_err(|source| StoreError::Migrate { backend, source })?;

    let reader = if in_memory {
        writer.clone()
    } else {
        SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(connect_options.create_if_missing(false).read_only(true))
            .await
            .map_err(connect_error)?
    };
    let max_batch = if options.group_commit {
        group_commit::MAX_BATCH
    } else {
        1
    };
    let committer = group_commit::Committer::start(writer.clone(), max_batch);
    Ok(Backend::Sqlite {
        writer,
        reader,
        committer,
    })
}

async fn connect_postgres(url: &str, options: &StoreOptions) -> Result<Backend> {
    let backend = BackendKind::Postgres;
    let connect_options =
        PgConnectOptions::from_str(url).map_err(|source| StoreError::InvalidUrl {
            backend,
            url: redact(url),
            source,
        })?;
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(PG_ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(connect_options)
        .await
        .map_err(|source| StoreError::Connect {
            backend,
            url: redact(url),
            source,
        })?;
    let applied = {
        let mut conn = pool.acquire().await.map_err(|source| StoreError::Connect {
            backend,
            url: redact(url),
            source,
        })?;
        schema::applied_postgres(&mut conn)
            .await
            .map_err(StoreError::query("schema_check"))?
    };
    schema::check_not_newer(backend, &applied.unwrap_or_default(), &redact(url))?;
    schema::POSTGRES_MIGRATIONS
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate { backend, source })?;
    Ok(Backend::Postgres(pool))
}

/// `url` without its password, for error messages.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only fails for URLs that cannot have a password at all.
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => url.split('@').next_back().unwrap_or_default().to_owned(),
    }
}
