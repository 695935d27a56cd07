//! PostgreSQL backup and restore through `pg_dump` and `pg_restore`, when
//! they are installed; the module docs of crate::backup say why.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use super::{BackupError, BackupReport, PendingFile, RestoreReport, Result};
use crate::store::{BackendKind, StoreError, latest_schema_version};

/// Where Debian and Ubuntu install each major version's tools.
const VERSIONED_TOOLS: &str = "/usr/lib/postgresql";

pub(super) async fn backup(url: &str, out: &Path, force: bool) -> Result<BackupReport> {
    let started = Instant::now();
    let pg_dump = find_tool("pg_dump").ok_or(BackupError::ToolMissing {
        tool: "pg_dump",
        doing: "back up",
    })?;
    super::refuse_existing("backup", out, force)?;
    let target = Target::parse(url)?;
    let mut conn = target.connect().await?;
    // The dump runs in this transaction's snapshot: the version and the
    // count read here are those of the dump.
    let mut snapshot = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(BackupError::database("beginning the backup's snapshot"))?;
    let applied = crate::store::schema::applied_postgres(&mut snapshot)
        .await
        .map_err(BackupError::database("reading the schema version"))?
        .filter(|versions| !versions.is_empty())
        .ok_or_else(|| BackupError::NotAStore {
            path: PathBuf::from(&target.redacted),
            detail: "it has no schema migrations (_sqlx_migrations)".into(),
        })?;
    crate::store::schema::check_not_newer(BackendKind::Postgres, &applied, &target.redacted)?;
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&mut *snapshot)
        .await
        .map_err(BackupError::database("counting the jobs"))?;
    let snapshot_id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *snapshot)
        .await
        .map_err(BackupError::database("exporting the backup's snapshot"))?;
    let pending = PendingFile::beside(out)?;
    let mut args: Vec<OsString> = vec![
        "--format=custom".into(),
        "--no-password".into(),
        format!("--snapshot={snapshot_id}").into(),
    ];
    if let Some(schema) = &target.schema {
        args.push(format!("--schema={schema}").into());
    }
    let mut file = OsString::from("--file=");
    file.push(&pending.path);
    args.push(file);
    run("pg_dump", &pg_dump, &args, &target.environment).await?;
    snapshot.rollback().await.ok();
    conn.close().await.ok();
    pending.restrict()?;
    pending.install(out)?;
    let bytes = std::fs::metadata(out)
        .map_err(BackupError::io("cannot read", out))?
        .len();
    Ok(BackupReport {
        backend: super::backend_name(BackendKind::Postgres),
        store: target.redacted,
        path: out.to_path_buf(),
        format: "pg_dump-custom",
        schema_version: applied.iter().copied().max().unwrap_or_default(),
        jobs: u64::try_from(jobs).unwrap_or_default(),
        bytes,
        took_ms: super::millis_since(started),
    })
}

pub(super) async fn restore(url: &str, from: &Path, force: bool) -> Result<RestoreReport> {
    let started = Instant::now();
    let pg_restore = find_tool("pg_restore").ok_or(BackupError::ToolMissing {
        tool: "pg_restore",
        doing: "restore",
    })?;
    if !from.is_file() {
        return Err(BackupError::Io {
            what: "cannot read the backup",
            path: from.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let target = Target::parse(url)?;
    // The archive's migrations, as pg_restore prints their rows.
    let listing = run(
        "pg_restore",
        &pg_restore,
        &[
            "--data-only".into(),
            "--table=_sqlx_migrations".into(),
            "--file=-".into(),
            from.as_os_str().to_owned(),
        ],
        &[],
    )
    .await?;
    let backup_versions = copied_versions(&listing);
    if backup_versions.is_empty() {
        return Err(BackupError::NotAStore {
            path: from.to_path_buf(),
            detail: "no schema migrations (_sqlx_migrations) in it: is it a \
                     `pg_dump --format=custom` of a berth store?"
                .into(),
        });
    }
    crate::store::schema::check_not_newer(
        BackendKind::Postgres,
        &backup_versions,
        &from.display().to_string(),
    )?;
    let schema_version = backup_versions.iter().copied().max().unwrap_or_default();

    let mut conn = target.connect().await?;
    let live = live_replicas(&mut conn).await?;
    if live > 0 {
        return Err(BackupError::ReplicasLive {
            url: target.redacted,
            live,
            secs: crate::reconcile::replicas::DEAD_AFTER.as_secs(),
        });
    }
    let existing = crate::store::schema::applied_postgres(&mut conn)
        .await
        .map_err(BackupError::database("reading the schema version"))?
        .filter(|versions| !versions.is_empty());
    conn.close().await.ok();
    let replaced = existing.is_some();
    if let Some(existing) = existing {
        if !force {
            return Err(BackupError::Exists {
                what: "a berth store at",
                path: PathBuf::from(&target.redacted),
            });
        }
        if existing.iter().any(|v| !backup_versions.contains(v)) {
            return Err(BackupError::TargetNewer {
                url: target.redacted,
                target: existing.iter().copied().max().unwrap_or_default(),
                backup: schema_version,
            });
        }
    }
    let mut args: Vec<OsString> = vec![
        "--clean".into(),
        "--if-exists".into(),
        "--no-owner".into(),
        "--single-transaction".into(),
        "--no-password".into(),
        format!("--dbname={}", target.database).into(),
    ];
    args.push(from.as_os_str().to_owned());
    run("pg_restore", &pg_restore, &args, &target.environment).await?;

    let mut conn = target.connect().await?;
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&mut conn)
        .await
        .map_err(BackupError::database("counting the restored jobs"))?;
    conn.close().await.ok();
    Ok(RestoreReport {
        backend: super::backend_name(BackendKind::Postgres),
        store: target.redacted,
        from: from.to_path_buf(),
        schema_version,
        latest_schema_version: latest_schema_version(BackendKind::Postgres),
        jobs: u64::try_from(jobs).unwrap_or_default(),
        replaced,
        took_ms: super::millis_since(started),
    })
}

/// A PostgreSQL store: how to reach it with sqlx and with libpq's tools.
struct Target {
    options: PgConnectOptions,
    /// The URL without its password, for messages.
    redacted: String,
    /// The database name (`--dbname` of pg_restore; not secret).
    database: String,
    /// berth's schema when the URL sets `options[search_path]`: the dump
    /// holds that schema only.
    schema: Option<String>,
    /// libpq's variables for the tools: the connection, password included.
    environment: Vec<(&'static str, String)>,
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let redacted = crate::service::redact_url(url);
        let invalid = |source| {
            BackupError::Store(StoreError::InvalidUrl {
                backend: BackendKind::Postgres,
                url: redacted.clone(),
                source,
            })
        };
        let options = PgConnectOptions::from_str(url).map_err(invalid)?;
        let parsed =
            url::Url::parse(url).map_err(|e| invalid(sqlx::Error::Configuration(e.into())))?;
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8_lossy()
                .into_owned()
        };
        let database = options
            .get_database()
            .unwrap_or(options.get_username())
            .to_owned();
        let host = match options.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => options.get_host().to_owned(),
        };
        let mut environment = vec![
            ("PGHOST", host),
            ("PGPORT", options.get_port().to_string()),
            ("PGUSER", options.get_username().to_owned()),
            ("PGDATABASE", database.clone()),
            ("PGAPPNAME", "berth-backup".to_owned()),
        ];
        if let Some(password) = parsed.password() {
            environment.push(("PGPASSWORD", decode(password)));
        }
        if let Some(options_text) = options.get_options() {
            environment.push(("PGOPTIONS", options_text.to_owned()));
        }
        let mut schema = None;
        for (key, value) in parsed.query_pairs() {
            let variable = match &*key {
                "password" => "PGPASSWORD",
                "sslmode" | "ssl-mode" => "PGSSLMODE",
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => "PGSSLROOTCERT",
                "sslcert" | "ssl-cert" => "PGSSLCERT",
                "sslkey" | "ssl-key" => "PGSSLKEY",
                "options[search_path]" => {
                    schema = value
                        .split(',')
                        .map(|s| s.trim().trim_matches('"'))
                        .find(|s| !s.is_empty() && *s != "$user")
                        .map(str::to_owned);
                    continue;
                }
                _ => continue,
            };
            environment.retain(|(name, _)| *name != variable);
            environment.push((variable, value.into_owned()));
        }
        Ok(Target {
            options,
            redacted,
            database,
            schema,
            environment,
        })
    }

    /// One connection, with no migrations run: a backup or a restore
    /// changes nothing but what it restores.
    async fn connect(&self) -> Result<PgConnection> {
        self.options.connect().await.map_err(|source| {
            BackupError::Store(StoreError::Connect {
                backend: BackendKind::Postgres,
                url: self.redacted.clone(),
                source,
            })
        })
    }
}

/// Replicas whose heartbeat is younger than the time after which a replica
/// counts as dead (crate::reconcile::replicas::DEAD_AFTER).
async fn live_replicas(conn: &mut PgConnection) -> Result<i64> {
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('replicas') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(BackupError::database("looking for replicas"))?;
    if !has_table {
        return Ok(0);
    }
    let dead_after =
        i64::try_from(crate::reconcile::replicas::DEAD_AFTER.as_millis()).unwrap_or(i64::MAX);
    let since = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - dead_after;
    sqlx::query_scalar("SELECT COUNT(*) FROM replicas WHERE heartbeat_at > $1")
        .bind(since)
        .fetch_one(conn)
        .await
        .map_err(BackupError::database("looking for live replicas"))
}

/// The first column of the rows of `_sqlx_migrations` that
/// `pg_restore --data-only --file=-` prints (a `COPY … FROM stdin;` block).
fn copied_versions(script: &str) -> Vec<i64> {
    let mut versions = Vec::new();
    let mut in_block = false;
    for line in script.lines() {
        if in_block {
            if line == "\\." {
                in_block = false;
            } else if let Some(Ok(version)) = line.split('\t').next().map(str::parse) {
                versions.push(version);
            }
        } else if line.starts_with("COPY ") && line.contains("_sqlx_migrations") {
            in_block = true;
        }
    }
    versions
}

/// The tool `name`: on `PATH`, else the newest `/usr/lib/postgresql/N/bin`.
fn find_tool(name: &str) -> Option<PathBuf> {
    find_tool_in(name, std::env::var_os("PATH"), Path::new(VERSIONED_TOOLS))
}

fn find_tool_in(name: &str, path: Option<OsString>, versioned: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |candidate: &Path| {
        std::fs::metadata(candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(path) = path
        && let Some(found) = std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| executable(candidate))
    {
        return Some(found);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(versioned)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin").join(name)))
        })
        .collect();
    versions.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    versions
        .into_iter()
        .map(|(_, candidate)| candidate)
        .find(|candidate| executable(candidate))
}

/// Runs `tool` with `args` and the connection in its environment; returns
/// its stdout.
async fn run(
    tool: &'static str,
    program: &Path,
    args: &[OsString],
    environment: &[(&'static str, String)],
) -> Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(BackupError::io("cannot run", program))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        let tail = stderr
            .char_indices()
            .rev()
            .nth(2000)
            .map_or(stderr, |(at, _)| &stderr[at..]);
        return Err(BackupError::ToolFailed {
            tool,
            status: output.status.to_string(),
            stderr: tail.to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_goes_to_the_tools_by_environment() {
        let target = Target::parse(
            "postgres://berth:s%40cret@db.example:5433/ci?sslmode=require&options[search_path]=berth",
        )
        .unwrap();
        let env: std::collections::BTreeMap<_, _> = target.environment.iter().cloned().collect();
        assert_eq!(env["PGHOST"], "db.example");
        assert_eq!(env["PGPORT"], "5433");
        assert_eq!(env["PGUSER"], "berth");
        assert_eq!(env["PGDATABASE"], "ci");
        assert_eq!(env["PGPASSWORD"], "s@cret");
        assert_eq!(env["PGSSLMODE"], "require");
        assert_eq!(env["PGOPTIONS"], "-c search_path=berth");
        assert_eq!(target.schema.as_deref(), Some("berth"));
        assert_eq!(target.database, "ci");
        assert!(!target.redacted.contains("cret"), "{}", target.redacted);

        let plain = Target::parse("postgresql://berth@localhost/berth").unwrap();
        assert!(plain.environment.iter().all(|(k, _)| *k != "PGPASSWORD"));
        assert_eq!(plain.schema, None);
    }

    #[test]
    fn versions_are_read_from_the_archive_rows() {
        let script = "--\n-- Data for Name: _sqlx_migrations\n--\n\n\
            COPY berth_x._sqlx_migrations (version, description, installed_on, success, checksum, execution_time) FROM stdin;\n\
            20250101000000\tinitial\t2026-01-01 00:00:00+00\tt\t\\\\x00\t1\n\
            20261211000000\tsecurity events\t2026-01-01 00:00:00+00\tt\t\\\\x00\t1\n\
            \\.\n\nCOPY other (a) FROM stdin;\n7\n\\.\n";
        assert_eq!(
            copied_versions(script),
            vec![20_250_101_000_000, 20_261_211_000_000]
        );
        assert!(copied_versions("").is_empty());
    }

    #[test]
    fn tools_are_found_on_path_then_in_the_newest_versioned_folder() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let tool = |dir: &Path| {
            std::fs::create_dir_all(dir).unwrap();
            let file = dir.join("pg_dump");
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
            file
        };
        let versioned = root.path().join("postgresql");
        let empty_path = Some(OsString::from(root.path().join("bin")));
        assert_eq!(
            find_tool_in("pg_dump", empty_path.clone(), &versioned),
            None
        );
        tool(&versioned.join("9/bin"));
        let newest = tool(&versioned.join("16/bin"));
        assert_eq!(
            find_tool_in("pg_dump", empty_path, &versioned),
            Some(newest)
        );
        let on_path = tool(&root.path().join("bin"));
        let path = Some(OsString::from(root.path().join("bin")));
        assert_eq!(find_tool_in("pg_dump", path, &versioned), Some(on_path));
        let missing = BackupError::ToolMissing {
            tool: "pg_dump",
            doing: "back up",
        };
        assert!(
            missing
                .to_string()
                .contains("docs/operations.md (Backup and restore)"),
            "{missing}"
        );
    }
}
