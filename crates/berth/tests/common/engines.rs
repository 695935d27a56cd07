//! More Docker hosts on this machine, for fleet tests: each an extra
//! `dockerd` with its own data root, exec root, pidfile, socket and bridge.
//!
//! * Its own bridge (`ip link add … type bridge`), passed with `--bridge`:
//!   never `--bridge=none`, which was seen to take the main engine's
//!   `docker0` away. `--iptables=false`: the main engine owns the host's
//!   iptables chains; workers reach the host through their bridge's address,
//!   which needs no NAT.
//! * An empty `--config-file`: the host's `daemon.json` names the main
//!   engine's data root and storage driver. Extra engines use `vfs`, which
//!   works anywhere (the worker image is small).
//! * Stopped by its pidfile when dropped, also after a failed assertion; its
//!   bridge and folder go with it. A bridge left by a crashed run is removed
//!   before it is made again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// One extra Docker engine.
pub struct ExtraEngine {
    /// `unix:///…/docker.sock`.
    pub host: String,
    /// The bridge's address, which its containers reach the host at.
    pub gateway: String,
    /// Its bridge interface.
    pub bridge: String,
    pidfile: PathBuf,
    dir: Option<tempfile::TempDir>,
    child: Child,
    /// More `dockerd` arguments (e.g. a TLS listener).
    extra_args: Vec<String>,
    /// `10.N.` : the address pool its networks come from.
    pool_prefix: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl ExtraEngine {
    /// Starts an engine and waits until it answers.
    pub async fn start() -> ExtraEngine {
        Self::start_with(Vec::new()).await
    }

    /// [`ExtraEngine::start`] with more `dockerd` arguments.
    pub async fn start_with(extra_args: Vec<String>) -> ExtraEngine {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() % 4000) * 8 + n % 8;
        // Interface names are at most 15 bytes.
        let bridge = format!("bth{tag}");
        // Distinct subnets for the engines of concurrent test processes.
        let gateway = format!("10.{}.{}.1", 213 + (tag / 250) % 40, tag % 250);
        let dir = tempfile::Builder::new()
            .prefix("berth-engine-")
            .tempdir()
            .unwrap();
        let _ = ip(&["link", "del", &bridge]);
        assert!(
            ip(&["link", "add", &bridge, "type", "bridge"]),
            "create bridge {bridge}"
        );
        assert!(ip(&[
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            &bridge
        ]));
        assert!(ip(&["link", "set", &bridge, "up"]));
        let config = dir.path().join("daemon.json");
        std::fs::write(&config, "{}").unwrap();
        let socket = dir.path().join("docker.sock");
        let pidfile = dir.path().join("docker.pid");
        // Its own pool for the networks it creates: the default pools are
        // shared with the main engine (and every other test's engines), and
        // run out when many engines each make networks.
        let mut extra_args = extra_args;
        let pool_prefix = format!("10.{}.", 100 + tag % 100);
        extra_args.push(format!(
            "--default-address-pool=base={pool_prefix}0.0/16,size=24"
        ));
        let child = spawn_dockerd(dir.path(), &bridge, &extra_args);
        let mut engine = ExtraEngine {
            host: format!("unix://{}", socket.display()),
            gateway,
            bridge,
            pidfile,
            dir: Some(dir),
            child,
            extra_args,
            pool_prefix,
        };
        engine.wait_up().await;
        engine
    }

    async fn wait_up(&mut self) {
        let started = Instant::now();
        loop {
            let up = Command::new("docker")
                .args([
                    "-H",
                    &self.host,
                    "version",
                    "--format",
                    "{{.Server.APIVersion}}",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if up {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the extra engine did not answer: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the engine (SIGTERM, as `systemctl stop docker` does: it stops
    /// its containers and exits) and waits until it is gone. Its data stays.
    pub fn stop(&mut self) {
        self.signal_and_wait();
    }

    /// Starts the engine again on the same data, socket and bridge.
    ///
    /// A `dockerd` restarted on its old data root was seen to delete the
    /// main engine's `docker0` here (whatever it restores, on a machine with
    /// one kernel network namespace for all engines): the main engine's
    /// containers then lose their gateway. So `docker0` is put back as it
    /// was, and the test fails loudly if it cannot be.
    pub async fn start_again(&mut self) {
        let dir = self
            .dir
            .as_ref()
            .expect("engine folder")
            .path()
            .to_path_buf();
        let docker0 = Docker0::snapshot();
        self.child = spawn_dockerd(&dir, &self.bridge, &self.extra_args);
        self.wait_up().await;
        if let Some(docker0) = docker0 {
            docker0.restore();
            // The engine restores its networks after it answers: look again.
            tokio::time::sleep(Duration::from_secs(1)).await;
            docker0.restore();
        }
    }

    /// Freezes the engine (SIGSTOP): it stops answering, its containers
    /// keep running, as with a hung engine or a partitioned host.
    pub fn pause(&self) {
        let _ = Command::new("kill")
            .args(["-STOP", &self.pid().to_string()])
            .status();
    }

    /// Lets a paused engine go on (SIGCONT).
    pub fn resume(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status();
    }

    /// Its containers, then its networks: the engine deletes the bridge of
    /// each network it removes, which a stopped engine leaves behind.
    fn remove_networks(&self) {
        let docker = |args: &[&str]| {
            Command::new("docker")
                .args(["-H", &self.host])
                .args(args)
                .stderr(Stdio::null())
                .output()
                .ok()
        };
        if let Some(out) = docker(&["ps", "-aq"]) {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                docker(&args);
            }
        }
        docker(&["network", "prune", "-f"]);
    }

    /// By its pidfile (dockerd writes it), else the child we started.
    fn pid(&self) -> u32 {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .unwrap_or(self.child.id())
    }

    fn signal_and_wait(&mut self) {
        self.resume();
        let pid = self.pid();
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What dockerd logged.
    pub fn log(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path().join("dockerd.log")).ok())
            .unwrap_or_default()
    }
}

impl Drop for ExtraEngine {
    fn drop(&mut self) {
        self.resume();
        self.remove_networks();
        self.signal_and_wait();
        // What the engine could not remove itself (it was stopped with
        // networks in use): bridges with an address from its pool.
        for bridge in bridges_in(&self.pool_prefix) {
            let _ = ip(&["link", "del", &bridge]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        if let Some(dir) = self.dir.take() {
            // Mounts dockerd left under its roots would fail the removal.
            let _ = Command::new("umount")
                .args(["-R", "-l"])
                .arg(dir.path().join("exec"))
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("umount")
                .args(["-R", "-l"])
                .arg(dir.path().join("data"))
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
}

/// Bridge interfaces (`br-…`) with an IPv4 address starting `prefix`.
fn bridges_in(prefix: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let name = words.get(1)?;
            let inet = words.iter().position(|w| *w == "inet")?;
            let address = words.get(inet + 1)?;
            (name.starts_with("br-") && address.starts_with(prefix)).then(|| name.to_string())
        })
        .collect()
}

/// The main engine's default bridge, as it was.
struct Docker0 {
    addresses: Vec<String>,
}

impl Docker0 {
    fn snapshot() -> Option<Docker0> {
        let out = Command::new("ip")
            .args(["-o", "addr", "show", "dev", "docker0"])
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        let addresses: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet")?;
                words.next().map(str::to_string)
            })
            .collect();
        (!addresses.is_empty()).then_some(Docker0 { addresses })
    }

    fn restore(&self) {
        if std::path::Path::new("/sys/class/net/docker0").exists() {
            return;
        }
        assert!(
            ip(&["link", "add", "docker0", "type", "bridge"]),
            "re-create docker0"
        );
        for address in &self.addresses {
            assert!(
                ip(&["addr", "add", address, "dev", "docker0"]),
                "docker0 {address}"
            );
        }
        assert!(ip(&["link", "set", "docker0", "up"]), "docker0 up");
    }
}

/// `dockerd` on the folder `dir` (its config, roots, pidfile, socket and
/// log) and the bridge `bridge`.
fn spawn_dockerd(dir: &std::path::Path, bridge: &str, extra_args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("dockerd.log"))
        .unwrap();
    Command::new("dockerd")
        .arg("--config-file")
        .arg(dir.join("daemon.json"))
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("--pidfile")
        .arg(dir.join("docker.pid"))
        .arg("--host")
        .arg(format!("unix://{}", dir.join("docker.sock").display()))
        .args(["--bridge", bridge, "--iptables=false", "--ip6tables=false"])
        .args(["--storage-driver", "vfs"])
        .args(extra_args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start dockerd")
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
