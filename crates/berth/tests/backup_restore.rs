//! `berth backup` and `berth restore` (crate::backup), through the binary:
//! a consistent copy while the store is written, the refusals (an existing
//! file, a running berth, a newer schema, a file that is no store), both
//! backends.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use berth::store::{
    GithubStatus, JobFilter, JobSource, NewJob, SoleReplica, Store, latest_schema_version,
};
use serde_json::Value;
use sqlx::Connection;

/// Runs the berth binary with `args`, its store at `store_url` (given by
/// the environment, as to `berth token create`; `""`: from the `--config`
/// in `args`), and nothing else from the test's environment but `PATH`
/// (where pg_dump is found).
async fn berth(args: &[&str], store_url: &str) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    if !store_url.is_empty() {
        command.env("BERTH_STORE__URL", store_url);
    }
    command.output().await.unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command succeeded; its stdout as JSON.
fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// Asserts the command failed with exit code 1, saying `says`.
fn assert_refused(out: &Output, says: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(out),
        stderr(out)
    );
    assert!(
        stderr(out).contains(says),
        "expected {says:?} in:\n{}",
        stderr(out)
    );
}

fn new_job(github_job_id: i64) -> NewJob {
    NewJob {
        github_job_id,
        run_id: 1,
        repository: "acme/widgets".into(),
        workflow: Some("ci".into()),
        job_name: Some("build".into()),
        labels: vec!["self-hosted".into(), "linux".into()],
        pool: "linux".into(),
        source: JobSource::Webhook,
        scale_set: None,
        github_status: Some(GithubStatus::Queued),
        timeout_secs: None,
    }
}

async fn insert_jobs(store: &Store, ids: std::ops::RangeInclusive<i64>) {
    for id in ids {
        store.job_insert(new_job(id)).await.unwrap();
    }
}

/// The GitHub job ids of the store's jobs, in order.
async fn github_ids(store: &Store) -> Vec<i64> {
    let mut ids: Vec<i64> = store
        .job_list(&JobFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|j| j.github_job_id)
        .collect();
    ids.sort_unstable();
    ids
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Records a migration newer than this binary knows, as a newer berth would.
const RECORD_FUTURE_MIGRATION: &str = "INSERT INTO _sqlx_migrations
    (version, description, success, checksum, execution_time)
    VALUES ($1, 'from a newer berth', TRUE, $2, 0)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_is_one_moment_of_a_store_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir.path().join("berth.db"));
    let store = Store::connect(&url).await.unwrap();
    insert_jobs(&store, 1..=50).await;
    // A writer keeps committing, one job per transaction, in id order, as
    // berth serve would while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicI64::new(50));
    let writer = tokio::spawn({
        let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let next = written.load(Ordering::Relaxed) + 1;
                store.job_insert(new_job(next)).await.unwrap();
                written.store(next, Ordering::Relaxed);
            }
        }
    });
    while written.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let backup = dir.path().join("backup.db");
    let out = berth(&["backup", "--out", text(&backup), "--json"], &url).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let report = json_of(&out);
    let after = written.load(Ordering::Relaxed);
    let jobs = report["jobs"].as_i64().unwrap();
    assert!((100..=after).contains(&jobs), "{report}, {after} written");
    assert_eq!(report["backend"], "sqlite");
    assert_eq!(report["format"], "sqlite");
    assert_eq!(report["path"], text(&backup));
    assert_eq!(
        report["schema_version"].as_i64(),
        Some(latest_schema_version(berth::store::BackendKind::Sqlite))
    );
    assert_eq!(
        report["bytes"].as_u64(),
        Some(std::fs::metadata(&backup).unwrap().len())
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a backup is its owner's only");

    // One moment: exactly the first `jobs` commits, no gap, nothing torn.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&backup, &copy).unwrap();
    let restored = Store::connect(&sqlite_url(&copy)).await.unwrap();
    assert_eq!(github_ids(&restored).await, (1..=jobs).collect::<Vec<_>>());
    restored.close().await;

    // An existing file is replaced only on request; nothing is left behind.
    let again = berth(&["backup", "--out", text(&backup)], &url).await;
    assert_refused(&again, "already exists: pass --force to replace it");
    let forced = berth(&["backup", "--out", text(&backup), "--force"], &url).await;
    assert!(forced.status.success(), "{}", stderr(&forced));
    let said = stdout(&forced);
    for line in [
        format!("backup written: {}", backup.display()),
        format!("jobs:           {after}"),
        "schema version: ".into(),
        "size:           ".into(),
    ] {
        assert!(said.contains(&line), "{line}: {said}");
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    names.sort();
    assert!(names.is_empty(), "temporary files left: {names:?}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restore_replaces_the_store_only_when_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("berth.db");
    let url = sqlite_url(&database);
    let store = Store::connect(&url).await.unwrap();
    insert_jobs(&store, 1..=3).await;
    let backup = dir.path().join("backup.db");
    json_of(&berth(&["backup", "--out", text(&backup), "--json"], &url).await);
    insert_jobs(&store, 4..=5).await;
    store.close().await;

    // Not under a running berth serve (it holds the store's lock).
    let serving = SoleReplica::acquire(&url).unwrap();
    let out = berth(&["restore", "--from", text(&backup), "--force"], &url).await;
    assert_refused(
        &out,
        &format!(
            "a berth serve (pid {}) is using the SQLite store {}: stop it before restoring",
            std::process::id(),
            database.display()
        ),
    );
    drop(serving);

    // Not over a store unless asked; not from a file that is no store.
    let out = berth(&["restore", "--from", text(&backup)], &url).await;
    assert_refused(&out, "already exists: pass --force to replace it");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "not a database at all").unwrap();
    let out = berth(&["restore", "--from", text(&junk), "--force"], &url).await;
    assert_refused(&out, "is not a berth store");
    let out = berth(
        &["restore", "--from", "/nonexistent/backup.db", "--force"],
        &url,
    )
    .await;
    assert_refused(&out, "cannot read the backup /nonexistent/backup.db");

    // A stale WAL of the old database must not be replayed onto the new one.
    std::fs::write(dir.path().join("berth.db-wal"), "stale").unwrap();
    std::fs::write(dir.path().join("berth.db-shm"), "stale").unwrap();
    let out = berth(
        &["restore", "--from", text(&backup), "--force", "--json"],
        &url,
    )
    .await;
    let report = json_of(&out);
    assert_eq!(report["jobs"], 3);
    assert_eq!(report["replaced"], true);
    assert_eq!(report["from"], text(&backup));
    assert!(!dir.path().join("berth.db-wal").exists());
    assert!(!dir.path().join("berth.db-shm").exists());
    let restored = Store::connect(&url).await.unwrap();
    assert_eq!(github_ids(&restored).await, vec![1, 2, 3]);
    restored.close().await;

    // Into an empty place: no --force needed; the sentences say what next.
    let elsewhere = dir.path().join("fresh.db");
    let out = berth(
        &["restore", "--from", text(&backup)],
        &sqlite_url(&elsewhere),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    for part in [
        "restored: sqlite://",
        "jobs:           3",
        "Next: start berth serve",
        "reconcilers remove the worker containers",
    ] {
        assert!(said.contains(part), "{part}: {said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_of_a_newer_schema_is_neither_backed_up_nor_restored() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer.db");
    let url = sqlite_url(&newer);
    let store = Store::connect(&url).await.unwrap();
    insert_jobs(&store, 1..=1).await;
    store.close().await;
    let future = latest_schema_version(berth::store::BackendKind::Sqlite) + 1;
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(RECORD_FUTURE_MIGRATION)
        .bind(future)
        .bind(vec![0u8; 48])
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let says = format!("has schema version {future}, newer than this berth knows");
    let out = berth(&["backup", "--out", text(&dir.path().join("b.db"))], &url).await;
    assert_refused(&out, &says);
    assert_refused(
        &out,
        "Run that version, or restore a backup taken before the upgrade",
    );
    let target = sqlite_url(&dir.path().join("berth.db"));
    let out = berth(&["restore", "--from", text(&newer)], &target).await;
    assert_refused(&out, &says);
    assert!(!dir.path().join("berth.db").exists());
    // And berth itself refuses to run on it.
    let out = berth(&["token", "create", "--scope", "read"], &url).await;
    assert_refused(&out, &says);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_and_restore_through_pg_dump() {
    let (server, schema, url) = postgres_schema().await;
    let store = Store::connect(&url).await.unwrap();
    insert_jobs(&store, 1..=3).await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("berth.dump");
    let report = json_of(&berth(&["backup", "--out", text(&backup), "--json"], &url).await);
    assert_eq!(report["backend"], "postgres");
    assert_eq!(report["format"], "pg_dump-custom");
    assert_eq!(report["jobs"], 3);
    assert_eq!(
        report["schema_version"].as_i64(),
        Some(latest_schema_version(berth::store::BackendKind::Postgres))
    );
    assert!(report["bytes"].as_u64().unwrap() > 0);
    insert_jobs(&store, 4..=5).await;

    // Not while a replica lives (its heartbeat is fresh), not over a store
    // unless asked.
    store
        .replica_heartbeat("replica-1", time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let out = berth(&["restore", "--from", text(&backup), "--force"], &url).await;
    assert_refused(
        &out,
        "1 berth serve replica(s) recorded a heartbeat in the store",
    );
    store.replica_stopped("replica-1").await.unwrap();
    let out = berth(&["restore", "--from", text(&backup)], &url).await;
    assert_refused(&out, "already exists: pass --force to replace it");
    store.close().await;

    let report = json_of(
        &berth(
            &["restore", "--from", text(&backup), "--force", "--json"],
            &url,
        )
        .await,
    );
    assert_eq!(report["jobs"], 3);
    assert_eq!(report["replaced"], true);
    let restored = Store::connect(&url).await.unwrap();
    assert_eq!(github_ids(&restored).await, vec![1, 2, 3]);

    // A store (and so a dump) of a newer schema is refused both ways.
    let future = latest_schema_version(berth::store::BackendKind::Postgres) + 1;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(RECORD_FUTURE_MIGRATION)
        .bind(future)
        .bind(vec![0u8; 48])
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    restored.close().await;
    let says = format!("has schema version {future}, newer than this berth knows");
    let out = berth(&["backup", "--out", text(&dir.path().join("b.dump"))], &url).await;
    assert_refused(&out, &says);
    let newer = dir.path().join("newer.dump");
    pg_dump_schema(&server, &schema, &newer);
    let out = berth(&["restore", "--from", text(&newer), "--force"], &url).await;
    assert_refused(&out, &says);

    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// `pg_dump` of one schema of the test server, run directly.
fn pg_dump_schema(server: &str, schema: &str, out: &Path) {
    let parsed = url::Url::parse(server).unwrap();
    let status = std::process::Command::new("pg_dump")
        .args(["--format=custom", "--no-password"])
        .arg(format!("--schema={schema}"))
        .arg(format!("--file={}", out.display()))
        .env("PGHOST", parsed.host_str().unwrap())
        .env("PGPORT", parsed.port().unwrap_or(5432).to_string())
        .env("PGUSER", parsed.username())
        .env("PGDATABASE", parsed.path().trim_start_matches('/'))
        .status()
        .unwrap();
    assert!(status.success());
}

/// A schema of its own on the test PostgreSQL server: (server URL, schema,
/// the URL berth uses).
async fn postgres_schema() -> (String, String, String) {
    let server = std::env::var("BERTH_TEST_POSTGRES_URL").expect(
        "BERTH_TEST_POSTGRES_URL is not set: run scripts/test, or eval \"$(scripts/postgres-test-server)\"",
    );
    let schema = format!("berth_backup_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    let separator = if server.contains('?') { '&' } else { '?' };
    let url = format!("{server}{separator}options[search_path]={schema}");
    (server, schema, url)
}
