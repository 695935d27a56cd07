//! Upgrading a store from the previous release's schema, on both backends.
//!
//! The previous release's database is built from the migration files of
//! `migrations/<backend>/` up to [`LAST_RELEASED`], applied directly and
//! recorded in `_sqlx_migrations` the way sqlx records them (version,
//! description, success, SHA-384 checksum of the SQL, execution time), so
//! that this binary's migrator, finding them, runs only the newer ones. It
//! holds jobs in every state, written with plain SQL as that schema has
//! them, plus a log, a token and a delivery. The current store then opens
//! it: migrations run forward, everything reads back intact, and the active
//! jobs are claimed and finished through the store's API.
//!
//! PostgreSQL comes from `BERTH_TEST_POSTGRES_URL` (a schema per test),
//! as in tests/store.rs.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth::store::{
    BackendKind, Job, JobChanges, JobFilter, JobState, ManualClock, Placement, PlacementHost,
    Store, StoreOptions, latest_schema_version,
};
use sha2::Digest;
use sqlx::Connection;
use time::OffsetDateTime;
use time::macros::datetime;

/// The last migration of the previous release: later ones are this
/// release's (20261211000000_security_events and anything newer).
const LAST_RELEASED: i64 = 20_261_210_000_002;

/// When the old berth wrote its rows.
const THEN: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

/// One migration file.
struct MigrationFile {
    version: i64,
    description: String,
    sql: String,
}

/// The migration files of `backend` up to [`LAST_RELEASED`], in order,
/// named as sqlx names them (`<VERSION>_<DESCRIPTION>.sql`, the
/// description's `_` read as spaces).
fn previous_release(backend: &str) -> Vec<MigrationFile> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut files: Vec<MigrationFile> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_owned();
            let (version, rest) = name.split_once('_')?;
            let description = rest.strip_suffix(".sql")?.replace('_', " ");
            Some(MigrationFile {
                version: version.parse().ok()?,
                description,
                sql: std::fs::read_to_string(&path).unwrap(),
            })
        })
        .filter(|m| m.version <= LAST_RELEASED)
        .collect();
    files.sort_by_key(|m| m.version);
    assert!(
        files.last().map(|m| m.version) == Some(LAST_RELEASED),
        "{backend}: the previous release's last migration is missing"
    );
    files
}

/// sqlx's migrations table, as sqlx creates it on each backend.
const SQLITE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";
const POSTGRES_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
)";
const RECORD_MIGRATION: &str = "INSERT INTO _sqlx_migrations
    (version, description, success, checksum, execution_time) VALUES ($1, $2, TRUE, $3, -1)";
const RECORD_DURATION: &str = "UPDATE _sqlx_migrations SET execution_time = $1 WHERE version = $2";

/// Applies `migrations` on `$conn` as sqlx does: each file and its record
/// in one transaction, then its duration.
macro_rules! migrate_by_hand {
    ($conn:expr, $table:expr, $migrations:expr) => {{
        let conn = $conn;
        sqlx::raw_sql($table).execute(&mut *conn).await.unwrap();
        for m in $migrations {
            let started = std::time::Instant::now();
            let mut tx = conn.begin().await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.clone()))
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("migration {}: {e}", m.version));
            sqlx::query(RECORD_MIGRATION)
                .bind(m.version)
                .bind(&m.description)
                .bind(sha2::Sha384::digest(m.sql.as_bytes()).to_vec())
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            sqlx::query(RECORD_DURATION)
                .bind(i64::try_from(started.elapsed().as_nanos()).unwrap())
                .bind(m.version)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }};
}

/// A job as the previous release's `jobs` table holds it.
struct OldJob {
    github_job_id: i64,
    state: &'static str,
    cancel_requested: bool,
    attempts: i64,
    lease_owner: Option<&'static str>,
    lease_expires_at: Option<i64>,
    runner_name: Option<String>,
    runner_id: Option<i64>,
    container_id: Option<String>,
    github_status: Option<&'static str>,
    github_conclusion: Option<&'static str>,
    github_runner_name: Option<String>,
    exit_code: Option<i64>,
    error: Option<&'static str>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    exited_at: Option<i64>,
    host: Option<&'static str>,
}

fn ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// Jobs in every state, as the previous release left them mid-flight.
fn old_jobs() -> Vec<OldJob> {
    let then = ms(THEN);
    let minute = 60_000;
    let base = |github_job_id: i64, state: &'static str| OldJob {
        github_job_id,
        state,
        cancel_requested: false,
        attempts: 0,
        lease_owner: None,
        lease_expires_at: None,
        runner_name: None,
        runner_id: None,
        container_id: None,
        github_status: Some("queued"),
        github_conclusion: None,
        github_runner_name: None,
        exit_code: None,
        error: None,
        started_at: None,
        finished_at: None,
        exited_at: None,
        host: None,
    };
    let runner = |n: i64| Some(format!("berth-old-{n}"));
    let container = |n: i64| Some(format!("container-{n}"));
    vec![
        base(1, "queued"),
        OldJob {
            attempts: 1,
            lease_owner: Some("old-replica"),
            lease_expires_at: Some(then + minute),
            runner_name: runner(2),
            host: Some("default"),
            ..base(2, "provisioning")
        },
        OldJob {
            attempts: 1,
            lease_owner: Some("old-replica"),
            lease_expires_at: Some(then + minute),
            runner_name: runner(3),
            runner_id: Some(3),
            container_id: container(3),
            host: Some("default"),
            ..base(3, "starting")
        },
        OldJob {
            attempts: 1,
            runner_name: runner(4),
            runner_id: Some(4),
            container_id: container(4),
            github_status: Some("in_progress"),
            github_runner_name: runner(4),
            started_at: Some(then + 2 * minute),
            host: Some("default"),
            ..base(4, "running")
        },
        OldJob {
            attempts: 1,
            runner_name: runner(5),
            runner_id: Some(5),
            container_id: container(5),
            github_status: Some("completed"),
            github_conclusion: Some("success"),
            github_runner_name: runner(5),
            exit_code: Some(0),
            started_at: Some(then + 2 * minute),
            finished_at: Some(then + 3 * minute),
            exited_at: Some(then + 3 * minute),
            host: Some("default"),
            ..base(5, "completed")
        },
        OldJob {
            attempts: 3,
            exit_code: Some(1),
            error: Some("the worker exited with code 1"),
            github_status: Some("completed"),
            github_conclusion: Some("failure"),
            finished_at: Some(then + 4 * minute),
            ..base(6, "failed")
        },
        OldJob {
            cancel_requested: true,
            error: Some("cancelled on request"),
            finished_at: Some(then + 4 * minute),
            ..base(7, "cancelled")
        },
        OldJob {
            error: Some("GitHub no longer knows this job"),
            finished_at: Some(then + 5 * minute),
            ..base(8, "expired")
        },
    ]
}

fn job_id(github_job_id: i64) -> String {
    format!("00000000-0000-7000-8000-{github_job_id:012}")
}

const INSERT_OLD_JOB: &str = "INSERT INTO jobs (id, github_job_id, run_id, repository, workflow,
        job_name, labels, pool, source, state, cancel_requested, attempts, lease_owner,
        lease_expires_at, runner_name, runner_id, container_id, github_status, github_conclusion,
        github_runner_name, exit_code, error, timeout_secs, created_at, updated_at, queued_at,
        started_at, finished_at, exited_at, host, slots)
    VALUES ($1, $2, 900, 'acme/widgets', 'ci', 'build', '[\"self-hosted\",\"linux\"]', 'linux',
        'webhook', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 3600, $16, $16, $16,
        $17, $18, $19, $20, 1)";
const INSERT_OLD_LOG: &str =
    "INSERT INTO job_logs (job_id, content, size, truncated) VALUES ($1, $2, $3, FALSE)";
const INSERT_OLD_TOKEN: &str = "INSERT INTO api_tokens (id, name, scope, token_hash, created_at)
    VALUES ('00000000-0000-7000-8000-0000000000aa', 'ops', 'admin', 'old-hash', $1)";
const INSERT_OLD_DELIVERY: &str =
    "INSERT INTO webhook_deliveries (delivery_id, received_at) VALUES ('old-delivery', $1)";

/// Writes [`old_jobs`], a log, a token and a delivery on `$conn`.
macro_rules! write_old_rows {
    ($conn:expr) => {{
        let conn = $conn;
        for job in old_jobs() {
            sqlx::query(INSERT_OLD_JOB)
                .bind(job_id(job.github_job_id))
                .bind(job.github_job_id)
                .bind(job.state)
                .bind(job.cancel_requested)
                .bind(job.attempts)
                .bind(job.lease_owner)
                .bind(job.lease_expires_at)
                .bind(job.runner_name.clone())
                .bind(job.runner_id)
                .bind(job.container_id.clone())
                .bind(job.github_status)
                .bind(job.github_conclusion)
                .bind(job.github_runner_name.clone())
                .bind(job.exit_code)
                .bind(job.error)
                .bind(ms(THEN) + job.github_job_id)
                .bind(job.started_at)
                .bind(job.finished_at)
                .bind(job.exited_at)
                .bind(job.host)
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("job {}: {e}", job.github_job_id));
        }
        sqlx::query(INSERT_OLD_LOG)
            .bind(job_id(5))
            .bind(b"built\n".to_vec())
            .bind(6_i64)
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query(INSERT_OLD_TOKEN)
            .bind(ms(THEN))
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query(INSERT_OLD_DELIVERY)
            .bind(ms(THEN))
            .execute(&mut *conn)
            .await
            .unwrap();
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_of_the_previous_release_upgrades_and_its_jobs_finish() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("berth.db").display());
    {
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let mut conn = sqlx::SqliteConnection::connect_with(&options.create_if_missing(true))
            .await
            .unwrap();
        migrate_by_hand!(
            &mut conn,
            SQLITE_MIGRATIONS_TABLE,
            previous_release("sqlite")
        );
        write_old_rows!(&mut conn);
        conn.close().await.unwrap();
    }
    upgrade_and_finish(&url, BackendKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_of_the_previous_release_upgrades_and_its_jobs_finish() {
    let common::PostgresSchema {
        server,
        schema,
        url,
    } = common::postgres_schema_named("berth_upgrade").await;
    {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        migrate_by_hand!(
            &mut conn,
            POSTGRES_MIGRATIONS_TABLE,
            previous_release("postgres")
        );
        write_old_rows!(&mut conn);
        conn.close().await.unwrap();
    }
    upgrade_and_finish(&url, BackendKind::Postgres).await;
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Opens the old store with the current code and checks what it reads and
/// what it can still do.
async fn upgrade_and_finish(url: &str, kind: BackendKind) {
    let clock = ManualClock::new(THEN + Duration::from_secs(600));
    let store = Store::connect_with(
        url,
        StoreOptions {
            clock: Arc::new(clock.clone()),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the current berth opens the previous release's store: {e}"));
    assert_eq!(
        store.schema_version().await.unwrap(),
        latest_schema_version(kind),
        "migrated forward to this release"
    );

    // Every job reads back as the old berth wrote it.
    for old in old_jobs() {
        let job = store
            .job_get_by_github_id(old.github_job_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("job {} lost", old.github_job_id));
        assert_intact(&job, &old);
    }
    let logs = store
        .job_logs_get(job_id(5).parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(logs.content, b"built\n");
    let token = store.api_token_find_by_hash("old-hash").await.unwrap();
    assert_eq!(token.map(|t| t.name), Some("ops".into()));
    assert!(
        !store
            .delivery_record("old-delivery", clock.now())
            .await
            .unwrap(),
        "a delivery accepted before the upgrade is still known"
    );

    // The claims the old berth held ran out: the lease reconciler's calls
    // put them back in the queue.
    let now = clock.now();
    let expired = store.jobs_with_expired_leases(now).await.unwrap();
    let mut expired_ids: Vec<i64> = expired.iter().map(|j| j.github_job_id).collect();
    expired_ids.sort_unstable();
    assert_eq!(expired_ids, vec![2, 3]);
    for job in &expired {
        assert!(
            store
                .job_requeue_if_lease_expired(
                    job.id,
                    &[JobState::Provisioning, JobState::Starting],
                    now,
                    "the claim's lease expired before the worker was running",
                )
                .await
                .unwrap()
        );
    }

    // Every queued job is claimed, started and finished.
    store
        .hosts_register(&["default".to_string()])
        .await
        .unwrap();
    store
        .host_probe_ok("default", "test", None, now)
        .await
        .unwrap();
    let hosts = [PlacementHost {
        name: "default".into(),
        slots: 100,
        weight: 1.0,
        ordinal: 0,
    }];
    let mut claimed = Vec::new();
    loop {
        let placement = Placement {
            hosts: &hosts,
            pack: false,
            slots_per_job: 1,
        };
        let Some(job) = store
            .job_claim(
                "linux",
                10,
                10,
                placement,
                "new-replica",
                now + Duration::from_secs(60),
                now,
            )
            .await
            .unwrap()
        else {
            break;
        };
        let runner = format!("berth-new-{}", job.github_job_id);
        let container = format!("new-container-{}", job.github_job_id);
        let changes = JobChanges::new()
            .runner(runner, job.github_job_id)
            .container_id(container);
        assert!(
            store
                .job_transition(
                    job.id,
                    &[JobState::Provisioning],
                    JobState::Starting,
                    changes
                )
                .await
                .unwrap()
        );
        assert!(
            store
                .job_transition(
                    job.id,
                    &[JobState::Starting],
                    JobState::Running,
                    JobChanges::new().clear_lease(),
                )
                .await
                .unwrap()
        );
        assert!(
            store
                .job_finish(job.id, JobState::Completed, Some(0), None)
                .await
                .unwrap()
        );
        claimed.push(job.github_job_id);
    }
    claimed.sort_unstable();
    assert_eq!(claimed, vec![1, 2, 3], "the queued and requeued jobs ran");
    // The job that was running finishes as its worker's exit says.
    let running = store.job_get_by_github_id(4).await.unwrap().unwrap();
    assert!(
        store
            .job_finish(running.id, JobState::Completed, Some(0), None)
            .await
            .unwrap()
    );
    let all = store.job_list(&JobFilter::default()).await.unwrap();
    assert_eq!(all.len(), 8);
    for job in &all {
        assert!(job.state.is_terminal(), "{job:?}");
    }
    store.close().await;
}

fn assert_intact(job: &Job, old: &OldJob) {
    let what = format!("job {}", old.github_job_id);
    let at =
        |ms: i64| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    assert_eq!(job.id.to_string(), job_id(old.github_job_id), "{what}");
    assert_eq!(job.state.as_str(), old.state, "{what}");
    assert_eq!(job.repository, "acme/widgets", "{what}");
    assert_eq!(job.labels, vec!["self-hosted", "linux"], "{what}");
    assert_eq!(job.pool, "linux", "{what}");
    assert_eq!(job.cancel_requested, old.cancel_requested, "{what}");
    assert_eq!(job.attempts, old.attempts, "{what}");
    assert_eq!(job.lease_owner.as_deref(), old.lease_owner, "{what}");
    assert_eq!(job.lease_expires_at, old.lease_expires_at.map(at), "{what}");
    assert_eq!(job.runner_name, old.runner_name, "{what}");
    assert_eq!(job.runner_id, old.runner_id, "{what}");
    assert_eq!(job.container_id, old.container_id, "{what}");
    assert_eq!(
        job.github_status.map(|s| s.as_str().to_owned()).as_deref(),
        old.github_status,
        "{what}"
    );
    assert_eq!(
        job.github_conclusion.as_deref(),
        old.github_conclusion,
        "{what}"
    );
    assert_eq!(job.github_runner_name, old.github_runner_name, "{what}");
    assert_eq!(job.exit_code, old.exit_code, "{what}");
    assert_eq!(job.error.as_deref(), old.error, "{what}");
    assert_eq!(job.timeout_secs, Some(3600), "{what}");
    assert_eq!(job.created_at, at(ms(THEN) + old.github_job_id), "{what}");
    assert_eq!(job.started_at, old.started_at.map(at), "{what}");
    assert_eq!(job.finished_at, old.finished_at.map(at), "{what}");
    assert_eq!(job.exited_at, old.exited_at.map(at), "{what}");
    assert_eq!(job.host.as_deref(), old.host, "{what}");
    assert_eq!(job.stop_reason, None, "{what}: a column this release added");
}
