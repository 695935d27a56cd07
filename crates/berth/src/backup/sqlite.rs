//! SQLite backup (`VACUUM INTO` from a read-only connection) and restore
//! (the same copy, then an atomic rename under the store's lock); the
//! module docs of crate::backup say why.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

use super::{BackupError, BackupReport, PendingFile, RestoreReport, Result};
use crate::store::{BackendKind, SoleReplica, SoleReplicaError, latest_schema_version};

/// How long a read waits for a writer's lock (a checkpoint may hold one).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn backup(url: &str, out: &Path, force: bool) -> Result<BackupReport> {
    let started = Instant::now();
    let database = database_path(url)?;
    if !database.is_file() {
        return Err(BackupError::NoStore { path: database });
    }
    super::refuse_existing("backup", out, force)?;
    let pending = PendingFile::beside(out)?;
    let mut live = open_read_only(&database).await?;
    check_store(&mut live, &database).await?;
    copy_into(&mut live, &pending.path).await?;
    live.close().await.ok();
    // What was written, read back from the copy itself.
    let (schema_version, jobs) = verify_copy(&pending.path).await?;
    pending.restrict()?;
    pending.install(out)?;
    let bytes = std::fs::metadata(out)
        .map_err(BackupError::io("cannot read", out))?
        .len();
    Ok(BackupReport {
        backend: super::backend_name(BackendKind::Sqlite),
        store: crate::service::redact_url(url),
        path: out.to_path_buf(),
        format: "sqlite",
        schema_version,
        jobs,
        bytes,
        took_ms: super::millis_since(started),
    })
}

pub(super) async fn restore(url: &str, from: &Path, force: bool) -> Result<RestoreReport> {
    let started = Instant::now();
    let database = database_path(url)?;
    // Held until the end: no berth serve runs on the store meanwhile.
    let _lock = SoleReplica::lock(url).map_err(|e| match e {
        SoleReplicaError::Held { database, holder } => BackupError::InUse { database, holder },
        SoleReplicaError::Unusable(reason) => BackupError::Lock { reason },
    })?;
    if !from.is_file() {
        return Err(BackupError::Io {
            what: "cannot read the backup",
            path: from.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let mut backup = open_read_only(from).await?;
    let (schema_version, _) = check_store(&mut backup, from).await?;
    quick_check(&mut backup, from).await?;
    let replaced = database.exists();
    if replaced {
        super::refuse_existing("the store", &database, force)?;
    }
    let pending = PendingFile::beside(&database)?;
    copy_into(&mut backup, &pending.path).await?;
    backup.close().await.ok();
    let (_, jobs) = verify_copy(&pending.path).await?;
    pending.restrict()?;
    // The old database's journals go first: SQLite would replay an old WAL
    // onto the new file.
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = database.clone().into_os_string();
        side.push(suffix);
        let side = PathBuf::from(side);
        match std::fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::io("cannot remove", &side)(e)),
        }
    }
    pending.install(&database)?;
    Ok(RestoreReport {
        backend: super::backend_name(BackendKind::Sqlite),
        store: crate::service::redact_url(url),
        from: from.to_path_buf(),
        schema_version,
        latest_schema_version: latest_schema_version(BackendKind::Sqlite),
        jobs,
        replaced,
        took_ms: super::millis_since(started),
    })
}

/// The database file of a `sqlite:` URL.
fn database_path(url: &str) -> Result<PathBuf> {
    SqliteConnectOptions::from_str(url)
        .map(|options| options.get_filename().to_path_buf())
        .map_err(|_| BackupError::Unsupported {
            url: crate::service::redact_url(url),
            reason: "store.url is not a SQLite URL",
        })
}

/// A read-only connection to the database file at `path`: never created,
/// never migrated, never written.
async fn open_read_only(path: &Path) -> Result<SqliteConnection> {
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(BUSY_TIMEOUT)
        .connect()
        .await
        .map_err(|e| BackupError::NotAStore {
            path: path.to_path_buf(),
            detail: format!("cannot open it as a SQLite database: {e}"),
        })
}

/// Checks that the database on `conn` is a berth store whose schema this
/// binary knows; returns its schema version and its jobs.
async fn check_store(conn: &mut SqliteConnection, path: &Path) -> Result<(i64, u64)> {
    let not_a_store = |detail: String| BackupError::NotAStore {
        path: path.to_path_buf(),
        detail,
    };
    let applied = crate::store::schema::applied_sqlite(conn)
        .await
        .map_err(|e| not_a_store(e.to_string()))?
        .filter(|versions| !versions.is_empty())
        .ok_or_else(|| not_a_store("it has no schema migrations (_sqlx_migrations)".into()))?;
    crate::store::schema::check_not_newer(
        BackendKind::Sqlite,
        &applied,
        &path.display().to_string(),
    )?;
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| not_a_store(format!("it has no jobs table: {e}")))?;
    let version = applied.iter().copied().max().unwrap_or_default();
    Ok((version, u64::try_from(jobs).unwrap_or_default()))
}

/// `PRAGMA quick_check`: the file's structure is sound.
async fn quick_check(conn: &mut SqliteConnection, path: &Path) -> Result<()> {
    let problems: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_all(conn)
        .await
        .map_err(|e| BackupError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(BackupError::Corrupt {
        path: path.to_path_buf(),
        detail: problems.into_iter().take(5).collect::<Vec<_>>().join("; "),
    })
}

/// `VACUUM INTO dest`: one read transaction's view of the database on
/// `conn`, compacted, written to the new file `dest`.
async fn copy_into(conn: &mut SqliteConnection, dest: &Path) -> Result<()> {
    let dest_text = dest.to_str().ok_or_else(|| BackupError::Io {
        what: "cannot write to",
        path: dest.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "SQLite needs a path that is valid UTF-8",
        ),
    })?;
    sqlx::query("VACUUM INTO $1")
        .bind(dest_text)
        .execute(conn)
        .await
        .map_err(BackupError::database("VACUUM INTO the copy"))?;
    Ok(())
}

/// Opens the copy at `path`, checks it, and returns its schema version and
/// jobs.
async fn verify_copy(path: &Path) -> Result<(i64, u64)> {
    let mut copy = open_read_only(path).await?;
    quick_check(&mut copy, path).await?;
    let checked = check_store(&mut copy, path).await;
    copy.close().await.ok();
    checked
}
