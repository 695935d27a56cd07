//! Schema versions: which migrations a database has, and refusing one that
//! a newer berth wrote.
//!
//! Migrations are versioned and forward-only: each file of
//! `migrations/<backend>/` is named by a timestamp (its version), applied
//! once in order, and recorded by sqlx in `_sqlx_migrations`. A database's
//! schema version is the newest version recorded there.
//!
//! A database whose newest version this binary does not know was migrated
//! by a newer berth: it may have columns, states or tables whose meaning
//! this code would get wrong, and an older migration set cannot undo them.
//! So connecting refuses it before anything is read or written, with the
//! versions and the two ways out (run the newer berth, or restore a backup
//! taken before the upgrade). sqlx's own error for the case ("migration V
//! was previously applied but is missing in the resolved migrations") names
//! neither cause nor remedy. The same check guards `berth backup` and
//! `berth restore` (crate::backup), which must not copy or install a store
//! this binary could not run.

use sqlx::migrate::Migrator;
use sqlx::{PgConnection, SqliteConnection};

use super::{BackendKind, Result, Store, StoreError};

/// The SQLite migrations, compiled into the binary.
pub(crate) static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
/// The PostgreSQL migrations, compiled into the binary.
pub(crate) static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The migrations of a backend.
pub(crate) fn migrations(kind: BackendKind) -> &'static Migrator {
    match kind {
        BackendKind::Sqlite => &SQLITE_MIGRATIONS,
        BackendKind::Postgres => &POSTGRES_MIGRATIONS,
    }
}

/// The newest schema version this binary knows for `kind`: the version of
/// its last migration.
pub fn latest_schema_version(kind: BackendKind) -> i64 {
    migrations(kind)
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or_default()
}

/// Fails with [`StoreError::SchemaTooNew`] when `applied` (the versions a
/// database records) has one newer than this binary's newest. `location`
/// names the database in the message (a redacted URL or a file).
pub(crate) fn check_not_newer(kind: BackendKind, applied: &[i64], location: &str) -> Result<()> {
    let latest = latest_schema_version(kind);
    match applied.iter().max() {
        Some(&version) if version > latest => Err(StoreError::SchemaTooNew {
            backend: kind,
            location: location.to_owned(),
            version,
            latest,
        }),
        _ => Ok(()),
    }
}

/// The migration versions recorded in a SQLite database, oldest first;
/// `None` when it has no migration table (a new or foreign database).
pub(crate) async fn applied_sqlite(conn: &mut SqliteConnection) -> sqlx::Result<Option<Vec<i64>>> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master
                        WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(conn)
        .await
        .map(Some)
}

/// [`applied_sqlite`] for PostgreSQL (the table is looked up on the
/// connection's `search_path`, as sqlx's migrator does).
pub(crate) async fn applied_postgres(conn: &mut PgConnection) -> sqlx::Result<Option<Vec<i64>>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(conn)
        .await
        .map(Some)
}

impl Store {
    /// The store's schema version: the newest migration applied to it
    /// (after [`Store::connect`], the binary's
    /// [`latest_schema_version`]).
    pub async fn schema_version(&self) -> Result<i64> {
        on_reader!(self, pool => {
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations")
                .fetch_one(pool)
                .await
        })
        .map_err(StoreError::query("schema_version"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_version_is_the_last_migration_file() {
        for kind in [BackendKind::Sqlite, BackendKind::Postgres] {
            let latest = latest_schema_version(kind);
            assert!(latest >= 20_261_211_000_000, "{kind}: {latest}");
            let versions: Vec<i64> = migrations(kind).iter().map(|m| m.version).collect();
            assert_eq!(versions.last(), Some(&latest), "{kind}: in order");
        }
    }

    #[test]
    fn only_a_newer_version_is_refused() {
        let kind = BackendKind::Sqlite;
        let latest = latest_schema_version(kind);
        assert!(check_not_newer(kind, &[], "x").is_ok());
        assert!(check_not_newer(kind, &[20_250_101_000_000, latest], "x").is_ok());
        let err = check_not_newer(kind, &[latest, latest + 1], "/srv/berth.db").unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, StoreError::SchemaTooNew { version, .. } if version == latest + 1),
            "{err:?}"
        );
        for part in [
            format!("schema version {}", latest + 1),
            format!("(latest {latest})"),
            "newer berth".into(),
            "restore a backup taken before the upgrade".into(),
            "/srv/berth.db".into(),
        ] {
            assert!(message.contains(&part), "{part}: {message}");
        }
    }
}
