//! `berth backup` and `berth restore` (crate::backup), through the binary:
//! a consistent copy while the store is written, the refusals (an existing
//! file, a running berth, a newer schema, a file that is no store), both
//! backends; and the whole story on SQLite with Docker and the simulator:
//! back up while serving, run more jobs, kill -9, restore the older backup,
//! start again, and the reconcilers bring berth and GitHub back in line.

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use berth::store::{
    GithubStatus, JobFilter, JobSource, JobState, NewJob, SoleReplica, Store, latest_schema_version,
};
use common::{ServeProcess, World, free_port, wait_for_job, write_config};
use serde_json::Value;
use sqlx::Connection;

const LIMIT: Duration = Duration::from_secs(90);

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
    let common::PostgresSchema {
        server,
        schema,
        url,
    } = common::postgres_schema_named("berth_backup").await;
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

/// The disaster-recovery story on SQLite, with Docker and the simulator:
///
/// 1. berth serves; job A completes; job D is running when `berth backup`
///    runs (while serving);
/// 2. after the backup D completes, B starts a long sleep, C completes;
/// 3. kill -9; the backup is restored over the store; berth starts again.
///
/// The backup knows A (completed) and D (running), not B nor C. Then:
/// B's worker container is removed (an orphan), its runner registration
/// goes, D is ended from GitHub's view (its container is gone), and every
/// job berth knows agrees with GitHub. The times to each are printed.
///
/// The simulator fails a job whose runner stopped renewing its lock after
/// `job_lock_timeout` (10 s here; GitHub takes minutes) and only then
/// lets its registration go: GitHub refuses to delete a runner that is
/// running a job. So B's registration is gone that long after its
/// container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_an_older_backup_converges_with_docker_and_github() {
    let sim_config = ghsim::SimConfig {
        job_lock_timeout: Duration::from_secs(10),
        runner_idle_timeout: Duration::from_secs(5),
        ..ghsim::SimConfig::default()
    };
    let world = World::with_sim(sim_config).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(&world, &listen, "");
    world.point_webhooks_at(&format!("http://{listen}"));
    let database = world.dir.path().join("berth.db");
    let url = sqlite_url(&database);

    let first = ServeProcess::start(&world, &config, 1);
    common::wait_listening(&listen, Duration::from_secs(20)).await;
    let store = Store::connect(&url).await.unwrap();
    let a = world.queue(&["echo a"]);
    wait_for_job(&store, a, LIMIT, "completed", |j| {
        j.state == JobState::Completed
    })
    .await;
    let d = world.queue(&["sleep 10", "echo d"]);
    wait_for_job(&store, d, LIMIT, "running its job", |j| {
        j.state == JobState::Running && j.github_runner_name.is_some()
    })
    .await;

    let backup = world.dir.path().join("backup.db");
    let out = berth(
        &[
            "backup",
            "--config",
            text(&config),
            "--out",
            text(&backup),
            "--json",
        ],
        "",
    )
    .await;
    let report = json_of(&out);
    assert_eq!(report["jobs"], 2, "A and D: {report}");

    wait_for_job(&store, d, LIMIT, "completed", |j| {
        j.state == JobState::Completed
    })
    .await;
    let b = world.queue(&["sleep 300"]);
    let b_job = wait_for_job(&store, b, LIMIT, "running its job", |j| {
        j.state == JobState::Running && j.github_runner_name.is_some()
    })
    .await;
    let c = world.queue(&["echo c"]);
    wait_for_job(&store, c, LIMIT, "completed", |j| {
        j.state == JobState::Completed
    })
    .await;
    let b_container = b_job.container_id.clone().unwrap();
    let b_runner = b_job.runner_name.clone().unwrap();
    store.close().await;
    first.kill_9();
    assert!(world.containers().contains(&b_container));
    assert!(world.berth_runners().contains(&b_runner));
    // E is queued on GitHub while berth is down: its delivery fails, and
    // nothing of it can be in any backup. The delivery catch-up has GitHub
    // redeliver it once berth is back (reconcile::delivery_catchup).
    let e = world.queue(&["echo e"]);
    common::eventually("E's delivery failed", Duration::from_secs(20), || async {
        world
            .sim
            .deliveries()
            .iter()
            .any(|d| d.job_id == e && d.status.is_none())
    })
    .await;

    let out = berth(
        &[
            "restore",
            "--config",
            text(&config),
            "--from",
            text(&backup),
            "--force",
            "--json",
        ],
        "",
    )
    .await;
    let restored = json_of(&out);
    assert_eq!(restored["jobs"], 2);

    let started = Instant::now();
    let _second = ServeProcess::start(&world, &config, 2);
    common::wait_listening(&listen, Duration::from_secs(20)).await;
    let store = Store::connect(&url).await.unwrap();

    let listening = started.elapsed();

    // Each check below, polled together until all hold; the time each
    // first held is its figure.
    // * D was running in the backup and its container is gone: it ends,
    //   as GitHub says it did.
    // * B's worker, which the backup never knew, is removed, and no
    //   container of this berth is left.
    // * No `berth-` registration is left (B's goes once GitHub has failed
    //   B for its lost runner).
    // * berth's view and GitHub's agree: every job berth knows has ended,
    //   with GitHub's status and conclusion.
    let mut d_ended = None;
    let mut b_removed = None;
    let mut containers_gone = None;
    let mut runners_gone = None;
    let mut agreed = None;
    loop {
        let now = Some(started.elapsed());
        let jobs = store.job_list(&JobFilter::default()).await.unwrap();
        let d_job = jobs.iter().find(|j| j.github_job_id == d as i64).unwrap();
        if d_ended.is_none() && d_job.state.is_terminal() {
            assert_eq!(d_job.state, JobState::Completed, "{d_job:?}");
            d_ended = now;
        }
        let containers = world.containers();
        if b_removed.is_none() && !containers.contains(&b_container) {
            b_removed = now;
        }
        if containers_gone.is_none() && containers.is_empty() {
            containers_gone = now;
        }
        if runners_gone.is_none() && world.berth_runners().is_empty() {
            runners_gone = now;
        }
        let agree = jobs.iter().all(|job| {
            let remote = world.sim.job(job.github_job_id as u64).unwrap();
            job.state.is_terminal()
                && remote.status == "completed"
                && job.github_status == Some(GithubStatus::Completed)
                && job.github_conclusion == remote.conclusion
        });
        if agreed.is_none() && agree {
            agreed = now;
        }
        if [d_ended, b_removed, containers_gone, runners_gone, agreed]
            .iter()
            .all(Option::is_some)
        {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "not converged after {LIMIT:?}: D ended {d_ended:?}, B removed {b_removed:?}, \
             containers gone {containers_gone:?}, runners gone {runners_gone:?} \
             ({:?}), agreed {agreed:?}: {jobs:?}",
            world.berth_runners()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        world.sim.job(d).unwrap().conclusion.as_deref(),
        Some("success")
    );
    // B and C, which the backup never knew, are over on GitHub (B failed:
    // its runner was removed under it); berth does not run them again.
    for unknown in [b, c] {
        assert_eq!(world.sim.job(unknown).unwrap().status, "completed");
        if let Some(job) = store.job_get_by_github_id(unknown as i64).await.unwrap() {
            assert!(job.state.is_terminal(), "{job:?}");
        }
    }
    let a_job = store.job_get_by_github_id(a as i64).await.unwrap().unwrap();
    assert_eq!(a_job.state, JobState::Completed);
    // No job GitHub still had queued is lost: E ran.
    let e_done = world.sim.wait_job_completed(e, LIMIT).await.unwrap();
    assert_eq!(e_done.conclusion.as_deref(), Some("success"), "{e_done:?}");
    let e_job = common::wait_for_job(&store, e, LIMIT, "E completed in berth", |j| {
        j.state == JobState::Completed
    })
    .await;
    assert!(e_job.runner_name.is_some());
    let secs = |d: Option<Duration>| d.unwrap().as_secs_f64();
    eprintln!(
        "converged after restoring an older backup, from berth serve's start: listening \
         {:.1} s; D (running in the backup, its container gone) ended as on GitHub {:.1} s; \
         B's unknown container removed {:.1} s; no container left {:.1} s; berth and GitHub \
         agree {:.1} s; no runner registration left {:.1} s (the simulator fails a job whose \
         runner is gone after 10 s, and only then lets its registration go)",
        listening.as_secs_f64(),
        secs(d_ended),
        secs(b_removed),
        secs(containers_gone),
        secs(agreed),
        secs(runners_gone),
    );
    store.close().await;
}
