//! [`WorkerSpec`]: what a worker container is made of, the rules it must
//! follow, and the one function that turns it into Docker's create body.
//!
//! The spec has no field for bind mounts, volumes, devices, privileged mode or
//! host namespaces other than the network, so those cannot even be asked for;
//! what it can express is checked by [`WorkerSpec::validate`] before anything
//! is sent to Docker. The hardening that never varies (all capabilities
//! dropped, `no-new-privileges`, an init process, no restart policy, stdin
//! open for the JIT config) is applied by [`WorkerSpec::create_body`] itself.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};

use super::DockerError;

/// Label every berth container carries; the socket proxy, the reconcilers and
/// [`Controller::list_managed`](super::Controller::list_managed) key on it.
pub const LABEL_MANAGED: &str = "berth.managed";
/// Label naming the berth job a container runs.
pub const LABEL_JOB: &str = "berth.job";
/// Label naming the pool a container belongs to.
pub const LABEL_POOL: &str = "berth.pool";
/// Label with the repository (`owner/name`) of the job.
pub const LABEL_REPOSITORY: &str = "berth.repository";
/// Label with GitHub's job id.
pub const LABEL_GITHUB_JOB_ID: &str = "berth.github-job-id";
/// Label with the JIT runner's name.
pub const LABEL_RUNNER: &str = "berth.runner";
/// Label of a warm container (created ahead of demand, no job yet): the
/// fingerprint of the image and pool settings it was made with. A warm
/// container has no `berth.job`: labels cannot change after create, so which
/// job took it is recorded in berth's store, not on the container.
pub const LABEL_WARM: &str = "berth.warm";
/// The `[[docker_host]]` a container was made on (crate::fleet).
pub const LABEL_HOST: &str = "berth.host";
/// What a container or volume is to a container job (crate::container_jobs):
/// `job`, `service`, `action` (containers), `network`, `volume` (a
/// workflow's named volume), `work` (a worker's shared folders) or
/// `externals`. Workers carry none.
pub const LABEL_ROLE: &str = "berth.role";

/// Container and runner names start with this.
pub const NAME_PREFIX: &str = "berth-";
/// The runner's work folder in berth's worker images.
pub const DEFAULT_WORK_FOLDER: &str = "/home/runner/_work";
/// The default user: the `runner` user of the worker images (and of GitHub's
/// own runner images).
pub const DEFAULT_USER: &str = "1001:1001";

/// Docker's own minimum for a memory limit (6 MiB).
const MIN_MEMORY_BYTES: i64 = 6 * 1024 * 1024;
/// Docker's minimum CPU limit is 0.01 CPU.
const MIN_NANO_CPUS: i64 = 10_000_000;
const MAX_CPUS: f64 = 1024.0;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Linux capabilities Docker knows (without the `CAP_` prefix).
const KNOWN_CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// Capabilities a pool may never add back: each reaches past the container
/// into the host's kernel or devices (mounts and namespaces, modules, raw I/O,
/// `open_by_handle_at`, LSM policy, eBPF and perf, the kernel log, the clock,
/// reboot, process accounting, power management).
const FORBIDDEN_CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "BLOCK_SUSPEND",
    "BPF",
    "DAC_READ_SEARCH",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "PERFMON",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_MODULE",
    "SYS_PACCT",
    "SYS_RAWIO",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// Substrings of environment variable names that suggest a secret. Secrets
/// never go into a container's env (anyone who can `docker inspect` reads
/// it): the JIT config reaches the runner over stdin instead.
const SECRET_LIKE_ENV: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "PRIVATE_KEY",
    "API_KEY",
    "JITCONFIG",
];

/// Which network a worker joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerNetwork {
    /// A user-defined bridge network, normally berth's own (see
    /// [`Controller::ensure_network`](super::Controller::ensure_network)).
    Bridge(String),
    /// The host's network namespace. Only when a pool asks for it: the job
    /// then sees every service listening on the host.
    Host,
}

/// Sizes of the tmpfs mounts a read-only worker gets. tmpfs pages count
/// against the container's memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmpfsSizes {
    /// `/tmp`.
    pub tmp_bytes: u64,
    /// The work folder ([`WorkerSpec::work_folder`]).
    pub work_bytes: u64,
}

impl Default for TmpfsSizes {
    fn default() -> Self {
        Self {
            tmp_bytes: 512 * MIB,
            work_bytes: 2 * GIB,
        }
    }
}

/// Everything the controller needs to create one worker container.
///
/// Start from [`WorkerSpec::new`], which fills safe defaults, and set the
/// pool's values. [`validate`](Self::validate) lists the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    /// Container name: `berth-<short job id>`.
    pub name: String,
    /// Image reference or ID (`sha256:…`); never pulled by the controller.
    pub image: String,
    /// Labels; must hold `berth.managed=true` and `berth.job`. The caller
    /// passes the contract labels (`berth.pool`, `berth.repository`,
    /// `berth.github-job-id`) and `berth.runner`.
    pub labels: BTreeMap<String, String>,
    /// CPU limit in CPUs (`NanoCpus`), at least 0.01.
    pub cpus: f64,
    /// Memory limit in bytes; swap is disabled (`MemorySwap` = `Memory`).
    pub memory_bytes: i64,
    /// Maximum number of processes and threads.
    pub pids_limit: i64,
    /// Capabilities added back after dropping all (`NET_RAW` or `CAP_NET_RAW`).
    /// Note that a non-root user holds them only in its bounding set.
    pub cap_add: Vec<String>,
    /// The network to join.
    pub network: WorkerNetwork,
    /// Read-only root file system, with tmpfs on `/tmp` and the work folder.
    pub read_only_rootfs: bool,
    /// tmpfs sizes, used when `read_only_rootfs` is set.
    pub tmpfs: TmpfsSizes,
    /// The runner's work folder (a tmpfs owned by the user when the root file
    /// system is read-only).
    pub work_folder: String,
    /// Extra `/etc/hosts` entries, `name:address` (address may be
    /// `host-gateway`), e.g. `host.docker.internal:host-gateway`.
    pub extra_hosts: Vec<String>,
    /// Numeric `uid` or `uid:gid`; never root (uid or gid 0). Numeric, so that
    /// a name cannot resolve to root inside the image.
    pub user: String,
    /// Environment variables. Never secrets: names that look like one are
    /// refused.
    pub env: BTreeMap<String, String>,
    /// Named volumes berth made for this worker (container jobs: the work
    /// folders it shares with the job's containers). Never host paths.
    pub volumes: Vec<VolumeMount>,
}

/// A named volume mounted into a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name (berth's own, `berth.managed`).
    pub name: String,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

impl WorkerSpec {
    /// A spec with berth's defaults: user `1001:1001`, 2 CPUs, 4 GiB of
    /// memory, 4096 processes, no capabilities, writable root file system,
    /// work folder `/home/runner/_work`, and only the `berth.managed=true`
    /// label (the caller adds the others, `berth.job` at least).
    pub fn new(name: impl Into<String>, image: impl Into<String>, network: WorkerNetwork) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            labels: BTreeMap::from([(LABEL_MANAGED.to_owned(), "true".to_owned())]),
            cpus: 2.0,
            memory_bytes: 4 * GIB as i64,
            pids_limit: 4096,
            cap_add: Vec::new(),
            network,
            read_only_rootfs: false,
            tmpfs: TmpfsSizes::default(),
            work_folder: DEFAULT_WORK_FOLDER.to_owned(),
            extra_hosts: Vec::new(),
            user: DEFAULT_USER.to_owned(),
            env: BTreeMap::new(),
            volumes: Vec::new(),
        }
    }

    /// Checks every rule; the first broken one is returned as
    /// [`DockerError::InvalidSpec`] with a message naming the field.
    ///
    /// - `name` starts with `berth-` and is a valid Docker name;
    /// - `image` is not empty and has no whitespace;
    /// - labels hold `berth.managed=true` and a non-empty `berth.job`, or
    ///   instead `berth.warm` for a warm container;
    /// - `cpus` ≥ 0.01 (and ≤ 1024), `memory_bytes` ≥ 6 MiB, `pids_limit` ≥ 1:
    ///   limits are mandatory, "unlimited" cannot be expressed;
    /// - `cap_add` names known capabilities, not `ALL` and none of those that
    ///   reach the host kernel (`SYS_ADMIN`, `SYS_MODULE`, `DAC_READ_SEARCH`…);
    /// - a bridge network has a valid name other than `host` or `none`;
    /// - the work folder is an absolute, plain path other than `/` and `/tmp`,
    ///   and tmpfs sizes are non-zero when the root file system is read-only;
    /// - `extra_hosts` are `name:ip` or `name:host-gateway`;
    /// - `user` is a numeric `uid[:gid]` with neither being 0;
    /// - env names are valid and do not look like secrets.
    pub fn validate(&self) -> Result<(), DockerError> {
        self.validate_identity()?;
        self.validate_limits()?;
        self.capabilities()?;
        self.validate_network()?;
        self.validate_filesystem()?;
        self.user_ids()?;
        self.validate_env()
    }

    fn validate_identity(&self) -> Result<(), DockerError> {
        if !self.name.starts_with(NAME_PREFIX) || self.name.len() == NAME_PREFIX.len() {
            return invalid(format!(
                "container name `{}` must start with `{NAME_PREFIX}` (e.g. berth-<short job id>)",
                self.name
            ));
        }
        if !is_docker_name(&self.name) || self.name.len() > 128 {
            return invalid(format!(
                "container name `{}` may hold only letters, digits, `_`, `.` and `-` (at most 128)",
                self.name
            ));
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return invalid(format!(
                "image `{}` is empty or holds whitespace",
                self.image
            ));
        }
        match self.labels.get(LABEL_MANAGED).map(String::as_str) {
            Some("true") => {}
            _ => return invalid(format!("label `{LABEL_MANAGED}=true` is required")),
        }
        let labelled = |key: &str| self.labels.get(key).is_some_and(|v| !v.trim().is_empty());
        // A warm container is made before its job exists; it carries the
        // warm label instead, never both.
        if labelled(LABEL_JOB) == labelled(LABEL_WARM) {
            return invalid(format!(
                "exactly one of the labels `{LABEL_JOB}` (the berth job id) and `{LABEL_WARM}` (a warm container) is required"
            ));
        }
        if let Some(key) = self.labels.keys().find(|k| k.trim().is_empty()) {
            return invalid(format!("label key `{key}` is empty"));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), DockerError> {
        if !self.cpus.is_finite() || self.cpus > MAX_CPUS || self.nano_cpus() < MIN_NANO_CPUS {
            return invalid(format!(
                "cpus must be between 0.01 and {MAX_CPUS}, not {}",
                self.cpus
            ));
        }
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return invalid(format!(
                "memory_bytes must be at least {MIN_MEMORY_BYTES} (6 MiB), not {}",
                self.memory_bytes
            ));
        }
        if self.pids_limit < 1 {
            return invalid(format!(
                "pids_limit must be at least 1, not {} (no unlimited workers)",
                self.pids_limit
            ));
        }
        Ok(())
    }

    fn validate_network(&self) -> Result<(), DockerError> {
        if let WorkerNetwork::Bridge(name) = &self.network {
            validate_network_name(name)?;
        }
        for entry in &self.extra_hosts {
            let Some((host, address)) = entry.split_once(':') else {
                return invalid(format!("extra host `{entry}` must be `name:address`"));
            };
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            let address_ok = address == "host-gateway" || address.parse::<IpAddr>().is_ok();
            if !host_ok || !address_ok {
                return invalid(format!(
                    "extra host `{entry}` must be `name:ip-address` or `name:host-gateway`"
                ));
            }
        }
        Ok(())
    }

    fn validate_filesystem(&self) -> Result<(), DockerError> {
        let folder = &self.work_folder;
        let plain = folder
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '-'));
        let has_dot_dirs = folder.split('/').any(|part| part == ".." || part == ".");
        let trimmed = folder.trim_end_matches('/');
        if !folder.starts_with('/')
            || !plain
            || has_dot_dirs
            || trimmed.is_empty()
            || trimmed == "/tmp"
        {
            return invalid(format!(
                "work_folder `{folder}` must be an absolute path of letters, digits, `_`, `.`, `-` \
                 and `/`, without `.` or `..`, other than `/` and `/tmp`"
            ));
        }
        for v in &self.volumes {
            let target_ok = v.target.starts_with('/')
                && v.target.len() > 1
                && !v.target.split('/').any(|p| p == ".." || p == ".");
            if !is_docker_name(&v.name) || !target_ok {
                return invalid(format!(
                    "volume `{}` at `{}`: the name must be a Docker name and the target a plain absolute path",
                    v.name, v.target
                ));
            }
        }
        if self.read_only_rootfs && (self.tmpfs.tmp_bytes == 0 || self.tmpfs.work_bytes == 0) {
            return invalid(
                "tmpfs sizes must be non-zero when the root file system is read-only".into(),
            );
        }
        Ok(())
    }

    fn validate_env(&self) -> Result<(), DockerError> {
        for (name, value) in &self.env {
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return invalid(format!("env name `{name}` is not a valid variable name"));
            }
            let upper = name.to_ascii_uppercase();
            if let Some(hint) = SECRET_LIKE_ENV.iter().find(|s| upper.contains(*s)) {
                return invalid(format!(
                    "env `{name}` looks like a secret (contains `{hint}`); secrets never go into a \
                     container's env, the JIT config is delivered over stdin"
                ));
            }
            if value.contains('\0') {
                return invalid(format!("env `{name}` holds a NUL byte"));
            }
        }
        Ok(())
    }

    /// The capabilities to add, normalised to Docker's `CAP_` form.
    fn capabilities(&self) -> Result<Vec<String>, DockerError> {
        let mut out: Vec<String> = Vec::with_capacity(self.cap_add.len());
        for raw in &self.cap_add {
            let upper = raw.trim().to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            if bare == "ALL" {
                return invalid("cap_add may not hold `ALL`; name each capability".into());
            }
            if !KNOWN_CAPABILITIES.contains(&bare) {
                return invalid(format!("cap_add: `{raw}` is not a Linux capability"));
            }
            if FORBIDDEN_CAPABILITIES.contains(&bare) {
                return invalid(format!(
                    "cap_add: `{raw}` reaches past the container into the host and is never allowed"
                ));
            }
            let normalised = format!("CAP_{bare}");
            if !out.contains(&normalised) {
                out.push(normalised);
            }
        }
        Ok(out)
    }

    /// `(uid, gid)` from `user`; the gid defaults to the uid.
    pub fn user_ids(&self) -> Result<(u32, u32), DockerError> {
        let user = self.user.trim();
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        if uid == "root" || gid == Some("root") {
            return invalid(
                "user must not be root; workers run as a non-root user (default 1001:1001)".into(),
            );
        }
        let parse = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
        };
        let (Some(uid), Some(gid)) = (parse(uid), gid.map_or(parse(uid), parse)) else {
            return invalid(format!(
                "user `{}` must be a numeric uid or uid:gid (a name could resolve to root inside the image)",
                self.user
            ));
        };
        if uid == 0 || gid == 0 {
            return invalid(format!(
                "user `{}` is root (uid or gid 0); workers run as a non-root user (default 1001:1001)",
                self.user
            ));
        }
        Ok((uid, gid))
    }

    fn nano_cpus(&self) -> i64 {
        // Saturating float-to-int conversion; validated to ≤ 1024 CPUs.
        (self.cpus * 1e9).round() as i64
    }

    /// Validates the spec and builds the body of `POST /containers/create`.
    ///
    /// Public so that the hardening can be checked without a Docker engine
    /// (the socket proxy's policy tests use it too).
    pub fn create_body(&self) -> Result<ContainerCreateBody, DockerError> {
        self.validate()?;
        let (uid, gid) = self.user_ids()?;

        // A volume on the work folder (container jobs) replaces its tmpfs.
        let work_on_volume = self.volumes.iter().any(|v| v.target == self.work_folder);
        let tmpfs = self.read_only_rootfs.then(|| {
            let mut tmpfs = HashMap::from([
                (
                    "/tmp".to_owned(),
                    format!(
                        "rw,nosuid,nodev,exec,size={},mode=1777",
                        self.tmpfs.tmp_bytes
                    ),
                ),
                (
                    self.work_folder.clone(),
                    format!(
                        "rw,nosuid,nodev,exec,size={},uid={uid},gid={gid},mode=0755",
                        self.tmpfs.work_bytes
                    ),
                ),
            ]);
            if work_on_volume {
                tmpfs.remove(&self.work_folder);
            }
            tmpfs
        });
        let mounts = (!self.volumes.is_empty()).then(|| {
            self.volumes
                .iter()
                .map(|v| bollard::models::Mount {
                    target: Some(v.target.clone()),
                    source: Some(v.name.clone()),
                    typ: Some(bollard::models::MountType::VOLUME),
                    read_only: Some(v.read_only),
                    ..Default::default()
                })
                .collect()
        });
        let network_mode = match &self.network {
            WorkerNetwork::Bridge(name) => name.clone(),
            WorkerNetwork::Host => "host".to_owned(),
        };

        let host_config = HostConfig {
            // Limits.
            nano_cpus: Some(self.nano_cpus()),
            memory: Some(self.memory_bytes),
            memory_swap: Some(self.memory_bytes),
            pids_limit: Some(self.pids_limit),
            // Privileges.
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(self.capabilities()?),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            // No host paths, never the Docker socket: nothing is mounted but
            // tmpfs and berth's own named volumes.
            binds: None,
            mounts,
            volumes_from: None,
            devices: None,
            readonly_rootfs: Some(self.read_only_rootfs),
            tmpfs,
            // Namespaces: private IPC; the network as asked.
            ipc_mode: Some("private".to_owned()),
            network_mode: Some(network_mode),
            extra_hosts: Some(self.extra_hosts.clone()),
            publish_all_ports: Some(false),
            // docker-init as PID 1 reaps zombies and forwards signals.
            init: Some(true),
            // Single use: never restarted, removed by berth after the logs are kept.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            auto_remove: Some(false),
            ..Default::default()
        };

        Ok(ContainerCreateBody {
            image: Some(self.image.clone()),
            user: Some(format!("{uid}:{gid}")),
            labels: Some(self.labels.clone().into_iter().collect()),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            // stdin stays open until berth has written the JIT config and closed it.
            attach_stdin: Some(true),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            open_stdin: Some(true),
            stdin_once: Some(true),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        })
    }
}

/// Checks a network name (for a worker's bridge or `ensure_network`).
pub(crate) fn validate_network_name(name: &str) -> Result<(), DockerError> {
    match name {
        "host" => invalid(
            "network `host` is not a bridge; use WorkerNetwork::Host when a pool asks for host networking"
                .into(),
        ),
        "none" => invalid("network `none` leaves the runner unable to reach GitHub".into()),
        _ if !is_docker_name(name) || name.len() > 128 => invalid(format!(
            "network name `{name}` may hold only letters, digits, `_`, `.` and `-`"
        )),
        _ => Ok(()),
    }
}

/// Docker's name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn is_docker_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn invalid<T>(message: String) -> Result<T, DockerError> {
    Err(DockerError::InvalidSpec(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkerSpec {
        let mut spec = WorkerSpec::new(
            "berth-0a1b2c3d",
            "sha256:abc",
            WorkerNetwork::Bridge("berth".into()),
        );
        spec.labels.insert(LABEL_JOB.into(), "0a1b2c3d".into());
        spec
    }

    fn refused(spec: &WorkerSpec) -> String {
        match spec.validate() {
            Err(DockerError::InvalidSpec(m)) => m,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_hardened() {
        let body = spec().create_body().expect("valid");
        let hc = body.host_config.expect("host config");
        assert_eq!(body.user.as_deref(), Some("1001:1001"));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(hc.cap_add, Some(vec![]));
        assert_eq!(
            hc.security_opt,
            Some(vec!["no-new-privileges:true".to_owned()])
        );
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.init, Some(true));
        assert_eq!(hc.binds, None);
        assert_eq!(hc.mounts, None);
        assert_eq!(hc.memory, hc.memory_swap);
        assert_eq!(hc.nano_cpus, Some(2_000_000_000));
        assert_eq!(hc.network_mode.as_deref(), Some("berth"));
        assert_eq!(hc.tmpfs, None);
        assert_eq!(body.open_stdin, Some(true));
        assert_eq!(body.stdin_once, Some(true));
        assert_eq!(body.attach_stdin, Some(true));
    }

    #[test]
    fn read_only_rootfs_gets_tmpfs_owned_by_the_user() {
        let mut s = spec();
        s.read_only_rootfs = true;
        s.user = "2000:3000".into();
        let hc = s.create_body().expect("valid").host_config.expect("hc");
        assert_eq!(hc.readonly_rootfs, Some(true));
        let tmpfs = hc.tmpfs.expect("tmpfs");
        assert!(tmpfs["/tmp"].contains("mode=1777"));
        assert!(tmpfs[DEFAULT_WORK_FOLDER].contains("uid=2000,gid=3000"));
    }

    #[test]
    fn refuses_root_and_names() {
        for user in [
            "root",
            "0",
            "0:0",
            "1001:0",
            "root:root",
            "0:1001",
            "runner",
            "",
            "-1",
            "1001:x",
        ] {
            let mut s = spec();
            s.user = user.into();
            refused(&s);
        }
        let mut s = spec();
        s.user = "1001".into();
        assert_eq!(
            s.create_body().expect("ok").user.as_deref(),
            Some("1001:1001")
        );
    }

    #[test]
    fn refuses_dangerous_or_unknown_capabilities() {
        for cap in [
            "ALL",
            "SYS_ADMIN",
            "cap_sys_module",
            "DAC_READ_SEARCH",
            "NOT_A_CAP",
        ] {
            let mut s = spec();
            s.cap_add = vec![cap.into()];
            refused(&s);
        }
        let mut s = spec();
        s.cap_add = vec!["net_raw".into(), "CAP_NET_RAW".into(), "CHOWN".into()];
        let hc = s.create_body().expect("ok").host_config.expect("hc");
        assert_eq!(
            hc.cap_add,
            Some(vec!["CAP_NET_RAW".into(), "CAP_CHOWN".into()])
        );
    }

    #[test]
    fn refuses_missing_labels_limits_and_bad_names() {
        let mut s = spec();
        s.labels.remove(LABEL_MANAGED);
        refused(&s);
        let mut s = spec();
        s.labels.remove(LABEL_JOB);
        refused(&s);
        // A warm container has the warm label instead of a job; not both.
        let mut s = spec();
        s.labels.remove(LABEL_JOB);
        s.labels.insert(LABEL_WARM.into(), "f00d".into());
        assert!(s.validate().is_ok());
        s.labels.insert(LABEL_JOB.into(), "0a1b2c3d".into());
        refused(&s);
        let mut s = spec();
        s.name = "runner-1".into();
        refused(&s);
        let mut s = spec();
        s.name = "berth-a/b".into();
        refused(&s);
        let mut s = spec();
        s.pids_limit = 0;
        refused(&s);
        let mut s = spec();
        s.memory_bytes = -1;
        refused(&s);
        let mut s = spec();
        s.cpus = 0.0;
        refused(&s);
        let mut s = spec();
        s.cpus = f64::NAN;
        refused(&s);
    }

    #[test]
    fn refuses_bad_networks_hosts_folders_and_env() {
        for net in ["host", "none", "container:abc", ""] {
            let mut s = spec();
            s.network = WorkerNetwork::Bridge(net.into());
            refused(&s);
        }
        for host in ["nocolon", ":1.2.3.4", "a b:1.2.3.4", "x:not-an-ip"] {
            let mut s = spec();
            s.extra_hosts = vec![host.into()];
            refused(&s);
        }
        let mut s = spec();
        s.extra_hosts = vec!["host.docker.internal:host-gateway".into(), "v6:::1".into()];
        s.validate().expect("valid extra hosts");
        for folder in ["relative", "/", "/tmp", "/a/../b", "/a,size=1"] {
            let mut s = spec();
            s.work_folder = folder.into();
            refused(&s);
        }
        for name in [
            "GITHUB_TOKEN",
            "ACTIONS_RUNNER_INPUT_JITCONFIG",
            "db_password",
            "1X",
            "A-B",
        ] {
            let mut s = spec();
            s.env.insert(name.into(), "v".into());
            refused(&s);
        }
    }
}
