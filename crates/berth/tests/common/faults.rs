//! Fault injection for the chaos tests: a PostgreSQL server of the test's
//! own (to stop, restart, promote), a TCP relay that can cut a link, and a
//! small file system that can be filled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

fn repo_path(path: &str) -> PathBuf {
    PathBuf::from(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR")))
}

/// A PostgreSQL cluster of this test alone, made by
/// `scripts/postgres-test-server` in a folder of its own (so that stopping
/// it disturbs no other test). Stopped when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("berth-pg-")
            .tempdir()
            .unwrap();
        let port = super::free_port();
        let mut pg = PrivatePostgres { dir, port };
        pg.run("start");
        pg
    }

    fn run(&mut self, action: &str) {
        let out = Command::new(repo_path("scripts/postgres-test-server"))
            .arg(action)
            .arg(self.dir.path())
            .env("BERTH_TEST_POSTGRES_PORT", self.port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postgres-test-server {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if action == "start" {
            let port: u16 = std::fs::read_to_string(self.dir.path().join("port"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            self.port = port;
        }
    }

    /// The server's URL, database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://berth@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: sessions are cut).
    pub fn stop(&mut self) {
        self.run("stop");
    }

    /// Starts it again on the same port.
    pub fn start_again(&mut self) {
        self.run("start");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `psql -c sql` as the superuser.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(pg_bin("psql"))
            .args([
                "-qAt",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Lets standbys stream from this server (loopback, trust), with
    /// commits waiting for a standby's flush when `synchronous`.
    pub fn serve_standbys(&self, synchronous: bool) {
        let hba = self.data().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text.push_str("host replication all 127.0.0.1/32 trust\n");
        std::fs::write(&hba, text).unwrap();
        if synchronous {
            self.psql("ALTER SYSTEM SET synchronous_standby_names = '*'");
            // The test server runs with synchronous_commit off (speed); a
            // role's setting wins over the server's for its sessions.
            self.psql("ALTER ROLE berth SET synchronous_commit = 'on'");
        }
        self.psql("SELECT pg_reload_conf()");
    }

    /// A streaming standby of `primary` (pg_basebackup -R), started on a
    /// port of its own.
    pub fn standby_of(primary: &PrivatePostgres) -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("berth-pg-standby-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        as_postgres(&["chown", "postgres:"], dir.path(), true);
        let out = postgres_user(Command::new(pg_bin("pg_basebackup")))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-D",
            ])
            .arg(&data)
            .arg("-p")
            .arg(primary.port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut standby = PrivatePostgres {
            dir,
            port: super::free_port(),
        };
        standby.run("start");
        standby
    }

    /// Promotes a standby to a primary, waiting until it takes writes.
    pub fn promote(&self) {
        let out = postgres_user(Command::new(pg_bin("pg_ctl")))
            .args(["-w", "promote", "-D"])
            .arg(self.data())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl promote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server as a crash would (`-m immediate`: no checkpoint,
    /// sessions cut).
    pub fn crash(&self) {
        let _ = postgres_user(Command::new(pg_bin("pg_ctl")))
            .args(["-m", "immediate", "-w", "stop", "-D"])
            .arg(self.data())
            .output();
    }
}

/// A PostgreSQL program of the newest installed version.
fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `command` run as the `postgres` user when the tests run as root
/// (PostgreSQL's programs refuse root).
fn postgres_user(command: Command) -> Command {
    if nix_is_root() {
        let mut wrapped = Command::new("runuser");
        wrapped.args(["-u", "postgres", "--"]);
        wrapped.arg(command.get_program());
        wrapped.args(command.get_args());
        wrapped
    } else {
        command
    }
}

fn as_postgres(command: &[&str], path: &Path, only_as_root: bool) {
    if only_as_root && !nix_is_root() {
        return;
    }
    let status = Command::new(command[0])
        .args(&command[1..])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "{command:?} {}", path.display());
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(repo_path("scripts/postgres-test-server"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A TCP relay from a loopback port to `upstream` that can be cut: while
/// cut, every relayed connection is dropped and new ones are accepted but
/// never answered (a partition, not a refusal: the client finds out by
/// timing out, as across a dead network).
pub struct Relay {
    pub addr: String,
    cut: Arc<AtomicBool>,
    cut_now: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let cut_now = Arc::new(Notify::new());
        let upstream = upstream.to_string();
        let task = {
            let (cut, cut_now) = (cut.clone(), cut_now.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    if cut.load(Ordering::SeqCst) {
                        // Accepted, never answered.
                        held.push(client);
                        continue;
                    }
                    held.clear();
                    let (upstream, cut_now) = (upstream.clone(), cut_now.clone());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut_now.notified() => {
                                let _ = client.shutdown().await;
                            }
                        }
                    });
                }
            })
        };
        Relay {
            addr,
            cut,
            cut_now,
            task,
        }
    }

    /// Cuts the link: relayed connections end, new ones hang.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cut_now.notify_waiters();
    }

    /// Mends the link.
    pub fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tmpfs of `size` mounted on a fresh folder (the tests run as root on
/// CI), unmounted when dropped.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(size: &str) -> SmallFs {
        let dir = tempfile::Builder::new()
            .prefix("berth-smallfs-")
            .tempdir()
            .unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the chaos tests run as root on CI)"
        );
        SmallFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler` until no byte is left.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .output();
        // dd stops at ENOSPC; top up the last blocks byte-wise.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=512", "oflag=append", "conv=notrunc"])
            .arg(format!("of={}", filler.display()))
            .output();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Waits `d`, printing nothing: a named pause in a scenario.
pub async fn hold(d: Duration) {
    tokio::time::sleep(d).await;
}
