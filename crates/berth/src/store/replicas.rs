//! Replicas and their heartbeats: how the leases of a replica that died are
//! released within seconds rather than when each lease runs out.
//!
//! A claim's lease (`lease_owner`, `lease_expires_at`) is what keeps two
//! replicas from provisioning the same job; a dead holder's leases are
//! otherwise recovered only once they expire (`dispatch.lease`, a minute by
//! default). Two faster signals say a holder is dead:
//!
//! * on SQLite there is one process by design: the moment a new process
//!   holds the database, every lease of another owner is certainly dead
//!   ([`Store::leases_release_others`], at start-up);
//! * on PostgreSQL each replica records a heartbeat every few seconds
//!   ([`Store::replica_heartbeat`]); the leases of a replica whose heartbeat
//!   is older than a few beats are released by whichever replica notices
//!   ([`Store::leases_release_dead_replicas`]).
//!
//! The first signal holds only while SQLite really has one process: a
//! second `berth serve` on the same file would release the first one's
//! leases as a dead predecessor's. [`SoleReplica`] makes sure it does not
//! start.
//!
//! "Released" means the lease is made to expire now: the lease reconciler
//! then finishes the job's hand-off exactly as after a lease ran out (adopt a
//! running worker, else release and requeue). A replica that is in fact alive
//! but was too slow loses only the race: its next conditional update fails
//! and it cleans up what it made.

use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use time::OffsetDateTime;

use super::clock::to_millis;
use super::{Result, Store, StoreError};

/// The one `berth serve` of a SQLite store: an exclusive lock on
/// `<database>.lock`, held while it lives. The operating system releases
/// it when the process ends, however it ends (kill -9 included), so a
/// restart never waits for it.
#[derive(Debug)]
pub struct SoleReplica {
    _file: std::fs::File,
}

/// Why [`SoleReplica::lock`] did not take the lock.
#[derive(Debug, thiserror::Error)]
pub enum SoleReplicaError {
    /// Another process holds it: a `berth serve` (or a `berth restore`).
    #[error(
        "another berth serve{} already uses the SQLite store {}: SQLite serves one replica; for \
         several, use PostgreSQL (store.url = \"postgres://…\", see docs/operations.md, Several \
         replicas on PostgreSQL)",
        holder.as_ref().map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        database.display()
    )]
    Held {
        database: PathBuf,
        /// The holder's process id, as it wrote it in the lock file.
        holder: Option<String>,
    },
    /// The URL or the lock file is unusable.
    #[error("{0}")]
    Unusable(String),
}

impl SoleReplica {
    /// Takes the lock of the SQLite store at `url`; `Ok(None)` for a
    /// PostgreSQL or in-memory store, which need none. The error says who
    /// holds it and what to do instead.
    pub fn acquire(url: &str) -> std::result::Result<Option<SoleReplica>, String> {
        Self::lock(url).map_err(|e| e.to_string())
    }

    /// [`SoleReplica::acquire`] with the reason it failed, for callers that
    /// word a held lock their own way (`berth restore`).
    pub fn lock(url: &str) -> std::result::Result<Option<SoleReplica>, SoleReplicaError> {
        use std::str::FromStr;
        if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
            return Ok(None);
        }
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(|e| {
            SoleReplicaError::Unusable(format!("store.url is not a SQLite URL: {e}"))
        })?;
        let database = options.get_filename().to_path_buf();
        let mut lock_path = database.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                SoleReplicaError::Unusable(format!("cannot open {}: {e}", lock_path.display()))
            })?;
        use rustix::fs::{FlockOperation, flock};
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                // Who holds it, for the message a second process prints.
                let _ = file.set_len(0);
                let _ = write!(file, "{}", std::process::id());
                let _ = file.flush();
                Ok(Some(SoleReplica { _file: file }))
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut holder = String::new();
                let _ = file.rewind();
                let _ = file.read_to_string(&mut holder);
                let holder = Some(holder.trim().to_owned()).filter(|pid| !pid.is_empty());
                Err(SoleReplicaError::Held { database, holder })
            }
            Err(e) => Err(SoleReplicaError::Unusable(format!(
                "cannot lock {}: {e}",
                lock_path.display()
            ))),
        }
    }
}

impl Store {
    /// Records that replica `id` is alive at `now`.
    pub async fn replica_heartbeat(&self, id: &str, now: OffsetDateTime) -> Result<()> {
        let now = to_millis(now);
        on_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO replicas (id, started_at, heartbeat_at) VALUES ($1, $2, $2)
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            )
            .bind(id)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(StoreError::query("replica_heartbeat"))?;
        Ok(())
    }

    /// Marks replica `id` stopped (a clean shutdown): its leases, if any
    /// are left, are released by the next replica that looks.
    pub async fn replica_stopped(&self, id: &str) -> Result<()> {
        on_writer!(self, pool => {
            sqlx::query("UPDATE replicas SET heartbeat_at = 0 WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(StoreError::query("replica_stopped"))?;
        Ok(())
    }

    /// Makes every live lease held by a replica whose heartbeat is older
    /// than `stale_before` expire at `now`, and forgets replicas silent
    /// since `forget_before`. Returns the leases released.
    pub async fn leases_release_dead_replicas(
        &self,
        stale_before: OffsetDateTime,
        forget_before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<u64> {
        let released = on_writer!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET lease_expires_at = $2
                 WHERE lease_expires_at > $2
                   AND lease_owner IN (SELECT id FROM replicas WHERE heartbeat_at < $1)",
            )
            .bind(to_millis(stale_before))
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(StoreError::query("leases_release_dead_replicas"))?;
        // Only replicas that hold no lease any more are forgotten.
        on_writer!(self, pool => {
            sqlx::query(
                "DELETE FROM replicas WHERE heartbeat_at < $1
                   AND id NOT IN (SELECT lease_owner FROM jobs
                                  WHERE lease_owner IS NOT NULL AND lease_expires_at > $2)",
            )
            .bind(to_millis(forget_before))
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(StoreError::query("replicas_forget"))?;
        Ok(released)
    }

    /// Makes every live lease not held by `me` expire at `now`. Only for a
    /// backend with one process (SQLite), at start-up: any other holder is
    /// a predecessor that died.
    pub async fn leases_release_others(&self, me: &str, now: OffsetDateTime) -> Result<u64> {
        let released = on_writer!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET lease_expires_at = $2
                 WHERE lease_expires_at > $2 AND lease_owner IS NOT NULL AND lease_owner <> $1",
            )
            .bind(me)
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(StoreError::query("leases_release_others"))?;
        // Host leases too: the hosts are this process's to watch at once.
        let hosts = on_writer!(self, pool => {
            sqlx::query(
                "UPDATE docker_hosts SET lease_owner = NULL, lease_expires_at = NULL
                 WHERE lease_owner IS NOT NULL AND lease_owner <> $1",
            )
            .bind(me)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(StoreError::query("leases_release_others"))?;
        Ok(released + hosts)
    }
}
