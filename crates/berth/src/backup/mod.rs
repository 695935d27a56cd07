//! `berth backup` and `berth restore`: a consistent copy of the store taken
//! while `berth serve` runs, and putting one back (docs/operations.md,
//! Backup and restore).
//!
//! # SQLite: `VACUUM INTO`
//!
//! The backup opens the database file read-only (it never migrates it: a
//! backup must not change what it copies) and runs `VACUUM INTO` a
//! temporary file beside the destination. `VACUUM INTO` reads the database
//! in one read transaction, so the copy is the state of one moment,
//! transactionally consistent, while `berth serve` keeps committing in WAL
//! mode; it is also compacted. SQLite's C backup API would give the same
//! snapshot, but sqlx exposes no safe handle to it, and this crate allows
//! no `unsafe`. The copy is then checked (`PRAGMA quick_check`, its schema
//! version, its jobs counted), fsynced and renamed into place, so the
//! destination is either the whole backup or untouched.
//!
//! The restore replaces the store file the same way: the backup is checked
//! to be a berth store this binary can run (its schema not newer), copied
//! with `VACUUM INTO` beside the store, fsynced; the old database's `-wal`,
//! `-shm` and `-journal` files are removed (SQLite would otherwise replay
//! the old WAL onto the new file), then the copy is renamed over it. It
//! holds the store's `.lock` (crate::store::SoleReplica) throughout: a
//! running `berth serve` holds it, so the restore refuses to run under one,
//! and a `berth serve` started meanwhile refuses to start. (SQLite records
//! no heartbeat; the lock is the one reliable sign of a live process, and
//! it is released by kill -9 too.)
//!
//! # PostgreSQL: `pg_dump` and `pg_restore`
//!
//! When the PostgreSQL client tools are installed (on `PATH` or under
//! `/usr/lib/postgresql/*/bin`), the backup runs `pg_dump --format=custom`
//! inside a snapshot berth exported from a read-only repeatable-read
//! transaction, in which it also read the schema version and counted the
//! jobs: the figures printed are those of the dump. The restore runs
//! `pg_restore --clean --if-exists --no-owner --single-transaction` (all or
//! nothing), after checking the archive's schema version and that no
//! replica has recorded a heartbeat for 10 s. Without the tools, both refuse
//! and point at docs/operations.md, which also describes base backups
//! (`pg_basebackup`, point-in-time recovery) for larger installations.
//! The connection settings reach the tools through the libpq environment
//! (`PGHOST`, `PGPASSWORD`, …), never their command line, which `ps` shows.
//!
//! # After restoring an older backup
//!
//! The store then knows less than the world: containers it never heard of,
//! runner registrations it does not hold, jobs it has as running whose
//! containers are gone. Nothing here repairs that: `berth serve`'s
//! reconcilers do, as after any crash (crate::reconcile): unknown
//! containers are removed, unknown offline `berth-` registrations deleted,
//! and active jobs whose workers are gone are finished from GitHub's view
//! of them or requeued.

mod postgres;
mod sqlite;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::store::{BackendKind, StoreError};

/// What [`backup`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The store's URL, without its password.
    pub store: String,
    /// The backup file.
    pub path: PathBuf,
    /// `sqlite` (a database file) or `pg_dump-custom` (`pg_restore` reads it).
    pub format: &'static str,
    /// The store's schema version when copied.
    pub schema_version: i64,
    /// Jobs in the backup.
    pub jobs: u64,
    /// The backup's size in bytes.
    pub bytes: u64,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
}

/// What [`restore`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The store's URL, without its password.
    pub store: String,
    /// The backup restored.
    pub from: PathBuf,
    /// The backup's schema version.
    pub schema_version: i64,
    /// This binary's schema version: `berth serve` migrates the restored
    /// store to it at start when it is newer than the backup's.
    pub latest_schema_version: i64,
    /// Jobs in the restored store.
    pub jobs: u64,
    /// Whether a store was there before (and was replaced).
    pub replaced: bool,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
}

/// Everything a backup or a restore can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The URL names no backend this module copies.
    #[error("cannot back up or restore the store at {url:?}: {reason}")]
    Unsupported { url: String, reason: &'static str },

    /// The destination is there and `--force` was not given.
    #[error("{what} {} already exists: pass --force to replace it", path.display())]
    Exists { what: &'static str, path: PathBuf },

    /// The SQLite store to back up is not there.
    #[error("there is no SQLite store at {}: nothing to back up", path.display())]
    NoStore { path: PathBuf },

    /// A file is not a berth store (or not a database at all).
    #[error("{} is not a berth store: {detail}", path.display())]
    NotAStore { path: PathBuf, detail: String },

    /// A copy failed SQLite's integrity check.
    #[error("{} failed SQLite's integrity check: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },

    /// A `berth serve` holds the SQLite store.
    #[error(
        "a berth serve{} is using the SQLite store {}: stop it before restoring (a restore under \
         a running berth would be overwritten by it, or corrupt it)",
        holder.as_ref().map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        database.display()
    )]
    InUse {
        database: PathBuf,
        holder: Option<String>,
    },

    /// The SQLite store's lock file cannot be opened or locked.
    #[error("cannot take the store's lock: {reason}")]
    Lock { reason: String },

    /// Replicas of `berth serve` recorded a heartbeat on the PostgreSQL store lately.
    #[error(
        "{live} berth serve replica(s) recorded a heartbeat in the store at {url:?} in the last \
         {secs} s: stop every replica before restoring"
    )]
    ReplicasLive { url: String, live: i64, secs: u64 },

    /// The PostgreSQL target has migrations the backup does not: restoring
    /// over it would leave their tables behind, and the next start would
    /// fail to create them again.
    #[error(
        "the store at {url:?} is at schema version {target}, newer than the backup's \
         ({backup}): pg_restore --clean would leave the newer tables behind. Restore into an \
         empty database or schema and point store.url at it (docs/operations.md, Backup and \
         restore)"
    )]
    TargetNewer {
        url: String,
        target: i64,
        backup: i64,
    },

    /// A PostgreSQL client tool is not installed.
    #[error(
        "{tool} is not installed (looked on PATH and in /usr/lib/postgresql/*/bin), so berth \
         cannot {doing} this PostgreSQL store itself: install the PostgreSQL client tools, or \
         use pg_dump/pg_restore or a base backup as docs/operations.md (Backup and restore) \
         describes"
    )]
    ToolMissing {
        tool: &'static str,
        doing: &'static str,
    },

    /// A PostgreSQL client tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: &'static str,
        status: String,
        stderr: String,
    },

    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A statement on a database failed.
    #[error("{what}: {source}")]
    Database {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// The store refused (a newer schema, a bad URL, no connection).
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = BackupError> = std::result::Result<T, E>;

impl BackupError {
    /// Wraps a failed file operation, for `map_err`.
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
        let path = path.to_path_buf();
        move |source| BackupError::Io { what, path, source }
    }

    /// Wraps a failed statement, for `map_err`.
    fn database(what: &'static str) -> impl FnOnce(sqlx::Error) -> BackupError {
        move |source| BackupError::Database { what, source }
    }
}

/// Writes a consistent copy of the store at `store_url` to `out` (refused
/// when `out` exists, unless `force`).
pub async fn backup(store_url: &str, out: &Path, force: bool) -> Result<BackupReport> {
    match backend_of(store_url)? {
        BackendKind::Sqlite => sqlite::backup(store_url, out, force).await,
        BackendKind::Postgres => postgres::backup(store_url, out, force).await,
    }
}

/// Replaces the store at `store_url` with the backup at `from` (refused
/// when a store is there, unless `force`, and always while `berth serve`
/// runs on it).
pub async fn restore(store_url: &str, from: &Path, force: bool) -> Result<RestoreReport> {
    match backend_of(store_url)? {
        BackendKind::Sqlite => sqlite::restore(store_url, from, force).await,
        BackendKind::Postgres => postgres::restore(store_url, from, force).await,
    }
}

fn backend_of(url: &str) -> Result<BackendKind> {
    if url.starts_with("sqlite:") {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(BackupError::Unsupported {
                url: crate::service::redact_url(url),
                reason: "an in-memory store lives and dies with its process",
            });
        }
        Ok(BackendKind::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(BackendKind::Postgres)
    } else {
        Err(BackupError::Unsupported {
            url: crate::service::redact_url(url),
            reason: "expected sqlite://PATH or postgres://USER@HOST/DB",
        })
    }
}

fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Sqlite => "sqlite",
        BackendKind::Postgres => "postgres",
    }
}

/// Refuses an existing `path` unless `force`.
fn refuse_existing(what: &'static str, path: &Path, force: bool) -> Result<()> {
    if !force && path.symlink_metadata().is_ok() {
        return Err(BackupError::Exists {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// A file being written beside its destination, removed unless installed:
/// the destination only ever holds a complete file.
struct PendingFile {
    path: PathBuf,
    installed: bool,
}

impl PendingFile {
    /// A fresh name beside `dest` (the same folder, so the rename is atomic);
    /// the file itself is not created. Fails if the folder is missing.
    fn beside(dest: &Path) -> Result<PendingFile> {
        let dir = folder_of(dest);
        if !dir.is_dir() {
            return Err(BackupError::Io {
                what: "cannot write into the folder of",
                path: dest.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the folder does not exist",
                ),
            });
        }
        let name = dest
            .file_name()
            .map_or_else(|| "berth".to_owned(), |n| n.to_string_lossy().into_owned());
        let path = dir.join(format!(
            ".{name}.{}-{}.tmp",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        Ok(PendingFile {
            path,
            installed: false,
        })
    }

    /// Owner-only permissions: a store holds job output and token hashes.
    fn restrict(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
            .map_err(BackupError::io("cannot set the permissions of", &self.path))
    }

    /// Flushes the file to disk and renames it to `dest` (replacing it),
    /// then flushes the folder so the rename itself survives a power loss.
    fn install(mut self, dest: &Path) -> Result<()> {
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(BackupError::io("cannot flush", &self.path))?;
        std::fs::rename(&self.path, dest).map_err(BackupError::io("cannot rename to", dest))?;
        self.installed = true;
        let dir = folder_of(dest);
        std::fs::File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(BackupError::io("cannot flush the folder", &dir))?;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.installed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The folder holding `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn millis_since(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_file_and_server_stores_are_copied() {
        assert_eq!(
            backend_of("sqlite:///srv/berth.db").unwrap(),
            BackendKind::Sqlite
        );
        assert_eq!(
            backend_of("postgresql://berth@db/berth").unwrap(),
            BackendKind::Postgres
        );
        for url in [
            "sqlite::memory:",
            "sqlite://x.db?mode=memory",
            "mysql://a@b/c",
        ] {
            assert!(
                matches!(backend_of(url), Err(BackupError::Unsupported { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn a_pending_file_is_removed_unless_installed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("backup.db");
        let pending = PendingFile::beside(&dest).unwrap();
        assert_eq!(pending.path.parent(), Some(dir.path()));
        std::fs::write(&pending.path, "partial").unwrap();
        let path = pending.path.clone();
        drop(pending);
        assert!(!path.exists());

        let pending = PendingFile::beside(&dest).unwrap();
        std::fs::write(&pending.path, "whole").unwrap();
        pending.restrict().unwrap();
        pending.install(&dest).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "whole");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        assert!(matches!(
            refuse_existing("backup", &dest, false),
            Err(BackupError::Exists { .. })
        ));
        assert!(refuse_existing("backup", &dest, true).is_ok());
        assert!(matches!(
            PendingFile::beside(&dir.path().join("missing/backup.db")),
            Err(BackupError::Io { .. })
        ));
    }
}
