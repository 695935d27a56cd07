//! The store's one error type.

use super::BackendKind;
use super::types::JobState;

/// Everything the store can fail with. Each variant names what failed: the
/// operation (a [`Store`](super::Store) method name), the backend, or the
/// column holding a value the code does not understand.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names neither SQLite nor PostgreSQL.
    #[error(
        "unsupported store URL {url:?}: expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl {
        /// The URL with any password removed.
        url: String,
    },

    /// The URL has the right scheme but its options do not parse.
    #[error("invalid {backend} store URL {url:?}: {source}")]
    InvalidUrl {
        backend: BackendKind,
        /// The URL with any password removed.
        url: String,
        #[source]
        source: sqlx::Error,
    },

    /// The database could not be opened or reached.
    #[error("cannot connect to the {backend} store at {url:?}: {source}")]
    Connect {
        backend: BackendKind,
        /// The URL with any password removed.
        url: String,
        #[source]
        source: sqlx::Error,
    },

    /// The schema migrations failed at connect.
    #[error("cannot migrate the {backend} store schema: {source}")]
    Migrate {
        backend: BackendKind,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// The database's schema was migrated by a newer berth: this binary
    /// does not know its newest migration (store::schema).
    #[error(
        "the {backend} store at {location:?} has schema version {version}, newer than this berth \
         knows (latest {latest}): it was written by a newer berth. Run that version, or restore \
         a backup taken before the upgrade (docs/operations.md, Upgrades)"
    )]
    SchemaTooNew {
        backend: BackendKind,
        /// The URL with any password removed, or a file's path.
        location: String,
        /// The database's newest migration.
        version: i64,
        /// This binary's newest migration.
        latest: i64,
    },

    /// A statement failed (connection lost, constraint violated, …).
    #[error("store operation {op} failed: {source}")]
    Query {
        /// The `Store` method that ran the statement, e.g. `job_claim`.
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A row holds a value the code cannot read back (an unknown state name,
    /// labels that are not a JSON array, …). Only a manual edit or a newer
    /// berth writing the same database produces one.
    #[error("corrupt {table} row {key}: column {column}: {detail}")]
    Corrupt {
        table: &'static str,
        key: String,
        column: &'static str,
        detail: String,
    },

    /// A caller asked for a state change the state machine does not have
    /// (a bug in the caller, not a lost race: lost races return `false`).
    #[error("invalid job transition {from:?} -> {to}: {reason}")]
    InvalidTransition {
        from: Vec<JobState>,
        to: JobState,
        reason: &'static str,
    },
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Wraps a failed statement of operation `op`, for `map_err`.
    pub(crate) fn query(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { op, source }
    }
}
