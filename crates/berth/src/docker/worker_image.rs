//! The local worker image: a worker image built on this machine with no
//! registry and no network, for tests and `berth demo`.
//!
//! # Why it exists
//!
//! berth runs each job in a container made from a pool's worker image. In
//! production that image holds the real actions runner (`deploy/worker/`). The
//! real runner cannot be downloaded here and the Docker engine has no registry,
//! so tests and the demo use an image assembled from files already on this
//! machine:
//!
//! - the runner stand-in (`ghsim-runner`, from the `ghsim` crate) installed as
//!   `/home/runner/bin/Runner.Listener`, with the shared libraries it links
//!   against and the dynamic loader (resolved with `ldd`);
//! - a shell and the tools job steps use, in one of two ways (the
//!   [`Shell`] of [`ImageSources`]):
//!   - Debian's `busybox-static` as `/bin/busybox` with a symlink per applet,
//!     so job steps have `/bin/sh`, `cat`, `wget`, `nc`…, when it is
//!     installed (or named by `$BERTH_BUSYBOX`);
//!   - otherwise the host's own tools: its `/bin/sh` (dash on Debian) and the
//!     coreutils, `grep` and `sed` programs in [`HOST_TOOLS`] (plus those of
//!     [`OPTIONAL_HOST_TOOLS`] it has), each with its shared libraries and
//!     the dynamic loader resolved with `ldd` as for the stand-in. Every real
//!     file is copied once, at its own path (symlinks followed), and each
//!     tool's name in `/bin` links to it. So `berth demo` needs nothing but a
//!     Rust toolchain and a Docker engine;
//! - `/etc/passwd`, `/etc/group` with the non-root user `runner` (1001:1001),
//!   `/etc/nsswitch.conf`, `/etc/hosts`, `/tmp` (1777);
//! - `/home/runner/run.sh`, which starts the listener as the real runner's
//!   `run.sh` does, and `/home/runner/entrypoint.sh`, the image's ENTRYPOINT.
//!   The entrypoint is the very file `deploy/worker/entrypoint.sh` that the
//!   production image ships, so every test of this image also tests the
//!   production entrypoint.
//!
//! # The JIT config contract
//!
//! berth delivers the runner's JIT config over the container's stdin: the
//! container is created with `OpenStdin` and `StdinOnce`; berth attaches,
//! starts it, writes the base64 config and a newline, and closes stdin. The
//! entrypoint reads that one line, exports it as
//! `ACTIONS_RUNNER_INPUT_JITCONFIG` for the runner process only, and execs
//! `run.sh`. So the config is never in the container's env, command or labels
//! (nothing `docker inspect` shows), and delivery needs no writable file
//! system. With no line (end of input) the entrypoint exits 66 with a message.
//! `docs/worker-image.md` has the full contract for custom images.
//!
//! # How it is built
//!
//! The whole root file system is one deterministic tar archive built in
//! memory (sorted entries, fixed owners and timestamps) and imported as a
//! single-layer image (`POST /images/create?fromSrc=-`), with `changes` for
//! `USER`, `WORKDIR`, `ENV` and `ENTRYPOINT`. The image is tagged
//! `berth-worker-local:<short content hash>` and `berth-worker-local:latest`.
//! The hash covers the archive (every file, mode and owner) and the config
//! changes, so a rebuilt stand-in gives a new tag, the busybox and host-tools
//! images never share one, and building again with
//! unchanged inputs costs one image inspect. Pools pin the returned image ID
//! (`sha256:…`); Docker's import stamps a creation time into the image config,
//! so the ID of a re-import differs even when the tag is the same.
//!
//! The image works under berth's hardening: read-only root file system with
//! tmpfs on `/tmp` and `/home/runner/_work`, all capabilities dropped,
//! `no-new-privileges`, user 1001. It has no init process; run it with
//! `HostConfig.Init` (Docker's `--init`) so the runner gets signals.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{CreateImageOptionsBuilder, TagImageOptionsBuilder};
use bytes::Bytes;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

/// The repository every local worker image is tagged in.
pub const LOCAL_IMAGE_REPOSITORY: &str = "berth-worker-local";
/// The moving tag that always names the most recently built local image.
pub const LATEST_TAG: &str = "latest";
/// Environment variable naming the runner stand-in binary; it wins over every
/// other place the locator looks.
pub const RUNNER_STANDIN_ENV: &str = "BERTH_RUNNER_STANDIN";
/// File name of the runner stand-in built by the `ghsim` crate.
pub const RUNNER_STANDIN_NAME: &str = "ghsim-runner";
/// Where Debian's `busybox-static` puts its binary (before and after usrmerge).
pub const BUSYBOX_PATHS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];
/// Environment variable naming the busybox to use instead of [`BUSYBOX_PATHS`]:
/// a path (an error if it is not a usable static busybox), or empty or `none`
/// for no busybox at all, so the image is built from the host's tools.
pub const BUSYBOX_ENV: &str = "BERTH_BUSYBOX";

/// Where the host's tools are looked for when there is no busybox, in order.
pub const HOST_TOOL_DIRS: [&str; 4] = ["/bin", "/usr/bin", "/sbin", "/usr/sbin"];
/// The host tools the image must have when it is built without busybox: the
/// shell, what the entrypoint and `run.sh` run (`dirname`), what the demo's
/// and berth's tests' job steps run, and a few everyday ones. All come from
/// packages every Debian system has (`dash`, `coreutils`, `grep`, `sed`) and
/// their equivalents elsewhere.
pub const HOST_TOOLS: [&str; 47] = [
    "sh",
    "base64",
    "basename",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "du",
    "echo",
    "env",
    "expr",
    "false",
    "grep",
    "head",
    "id",
    "ln",
    "ls",
    "mkdir",
    "mktemp",
    "mv",
    "nproc",
    "od",
    "printf",
    "pwd",
    "readlink",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tee",
    "test",
    "timeout",
    "touch",
    "tr",
    "true",
    "uname",
    "uniq",
    "wc",
];
/// Further host tools taken when the host has them (`findutils`, `hostname`,
/// `procps`, a netcat), for job steps that like them.
pub const OPTIONAL_HOST_TOOLS: [&str; 6] = ["find", "xargs", "hostname", "ps", "kill", "nc"];

/// The runner user's name, uid and gid, as in GitHub's own runner images.
pub const RUNNER_USER: &str = "runner";
pub const RUNNER_UID: u64 = 1001;
pub const RUNNER_GID: u64 = 1001;
/// The runner's home and root folder (holds `run.sh`, `bin/`, `entrypoint.sh`).
pub const RUNNER_HOME: &str = "/home/runner";
/// The runner's work folder; give it a tmpfs when the root file system is read-only.
pub const RUNNER_WORK_FOLDER: &str = "/home/runner/_work";
/// The image's entrypoint.
pub const ENTRYPOINT_PATH: &str = "/home/runner/entrypoint.sh";
/// Where the runner binary (here the stand-in) lives in the image.
pub const RUNNER_LISTENER_PATH: &str = "/home/runner/bin/Runner.Listener";
/// Exit status of the entrypoint when stdin holds no JIT config (EX_NOINPUT).
pub const ENTRYPOINT_NO_CONFIG_EXIT: i64 = 66;

/// The entrypoint, shared byte for byte with the production image.
pub const ENTRYPOINT_SCRIPT: &str = include_str!("../../../../deploy/worker/entrypoint.sh");

/// `run.sh` as the production image has it (there it comes from the runner
/// tarball): start the listener in `run` mode with the caller's arguments.
pub const RUN_SCRIPT: &str = "#!/bin/sh\n\
# Starts the runner, as the actions runner's run.sh does: `run.sh [--jitconfig B64]`,\n\
# or with the config in ACTIONS_RUNNER_INPUT_JITCONFIG.\n\
cd \"$(dirname -- \"$0\")\"\n\
exec ./bin/Runner.Listener run \"$@\"\n";

/// Applets the image must have, whatever else the host's busybox offers.
pub const REQUIRED_APPLETS: [&str; 13] = [
    "sh", "cat", "echo", "ls", "env", "id", "sleep", "mkdir", "rm", "wget", "nc", "dirname",
    "printf",
];

/// The `PATH` inside the image.
const IMAGE_PATH: &str = "/home/runner/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// Time limits for each Docker call. Import gets longest: the body is the
/// whole root file system.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const INSPECT_TIMEOUT: Duration = Duration::from_secs(15);
const TAG_TIMEOUT: Duration = Duration::from_secs(15);
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);
/// bollard's own per-request limit, a backstop behind the ones above (seconds).
const CLIENT_TIMEOUT_SECS: u64 = 320;

/// Serialises builds in this process, so concurrent callers (parallel tests,
/// the demo) import once and all get the same image ID.
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What can go wrong while locating inputs or building the image.
#[derive(Debug, thiserror::Error)]
pub enum WorkerImageError {
    #[error(
        "the runner stand-in `{RUNNER_STANDIN_NAME}` was not found; tried {}. \
         Build it with `cargo build -p ghsim --bins`, or set {RUNNER_STANDIN_ENV} to its path",
        list_paths(.tried)
    )]
    StandinNotFound { tried: Vec<PathBuf> },

    #[error("{RUNNER_STANDIN_ENV} names {path}, which is not a file")]
    StandinEnvNotAFile { path: PathBuf },

    #[error("busybox was not found at {}", list_paths(.tried))]
    BusyboxNotFound { tried: Vec<PathBuf> },

    #[error("{BUSYBOX_ENV} is empty or `none`: no busybox")]
    BusyboxDisabled,

    #[error("{BUSYBOX_ENV} names {path}, which is not a file")]
    BusyboxEnvNotAFile { path: PathBuf },

    #[error("{path} is not a usable static busybox ({detail})")]
    BusyboxUnusable { path: PathBuf, detail: String },

    #[error(
        "no shell for the local worker image: {busybox}, and the host's tools are incomplete \
         ({} not found in {}). Install Debian's `busybox-static` package \
         (apt-get install busybox-static) or set {BUSYBOX_ENV} to a static busybox; \
         or install the missing tools (coreutils, grep, sed, a /bin/sh)",
        .missing.join(", "),
        list_paths(.dirs)
    )]
    NoShell {
        /// Why busybox is not used.
        busybox: String,
        /// The host tools of [`HOST_TOOLS`] that were not found.
        missing: Vec<String>,
        /// Where they were looked for.
        dirs: Vec<PathBuf>,
    },

    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },

    #[error("cannot resolve the shared libraries of {binary} with ldd: {detail}")]
    Ldd { binary: PathBuf, detail: String },

    #[error("{binary} needs the shared library {library}, which is not installed on this machine")]
    MissingLibrary { binary: PathBuf, library: String },

    #[error("cannot assemble the image archive: {0}")]
    Archive(#[source] io::Error),

    #[error("cannot connect to the Docker engine at {address}: {source}")]
    Connect {
        address: String,
        source: bollard::errors::Error,
    },

    #[error("Docker {operation} failed: {source}")]
    Docker {
        operation: String,
        source: bollard::errors::Error,
    },

    #[error("Docker {operation} did not finish within {}s", .after.as_secs())]
    Timeout { operation: String, after: Duration },

    #[error("the image import finished but {reference} is not in the engine")]
    ImportLost { reference: String },

    #[error("assembling the root file system stopped unexpectedly: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn list_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing".to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A worker image present in the Docker engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerImage {
    /// `berth-worker-local:<short content hash>`.
    pub reference: String,
    /// The image ID (`sha256:…`): what a pool pins.
    pub id: String,
    /// `true` when this call imported the image, `false` when it already existed.
    pub built: bool,
}

/// The files the local image is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSources {
    /// The runner stand-in, installed as `Runner.Listener`.
    pub runner: PathBuf,
    /// The shell and tools for job steps.
    pub shell: Shell,
    /// A berth binary, installed as `/usr/local/bin/berth` with the
    /// container hook script [`HOOK_SCRIPT`](crate::container_jobs::volumes::HOOK_SCRIPT),
    /// for pools with `container_jobs`. Optional: it makes the image larger.
    pub hook: Option<PathBuf>,
}

impl ImageSources {
    /// Finds the inputs on this machine (see [`locate_runner_standin`] and
    /// [`locate_shell`]). Blocking: it may run `busybox --list-full` and `ldd`.
    pub fn locate() -> Result<Self, WorkerImageError> {
        Ok(Self {
            runner: locate_runner_standin()?,
            shell: locate_shell()?,
            hook: None,
        })
    }

    /// [`locate`](Self::locate), with the berth binary for the container
    /// hook: `$BERTH_HOOK_BINARY`, else the berth next to the stand-in.
    pub fn locate_with_hook() -> Result<Self, WorkerImageError> {
        let mut sources = Self::locate()?;
        let berth = match std::env::var_os(HOOK_BINARY_ENV) {
            Some(path) => PathBuf::from(path),
            None => sources.runner.with_file_name("berth"),
        };
        if !berth.is_file() {
            return Err(WorkerImageError::StandinEnvNotAFile { path: berth });
        }
        sources.hook = Some(berth);
        Ok(sources)
    }
}

/// Names the berth binary [`ImageSources::locate_with_hook`] installs.
pub const HOOK_BINARY_ENV: &str = "BERTH_HOOK_BINARY";

/// The container hook script: the runner starts it with `bash` or `sh`
/// (actions/runner `GetDefaultShellForScript`) and it execs `berth hook`,
/// which inherits the hook input on stdin.
pub const HOOK_SCRIPT_BODY: &str = "#!/bin/sh\n# berth's container hook (docs/container-jobs.md): the runner runs this\n# file for every container operation with its input on stdin.\nexec /usr/local/bin/berth hook \"$@\"\n";

/// Where the image's `/bin/sh` and the tools job steps use come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shell {
    /// A statically linked busybox: `/bin/busybox` and a symlink per applet.
    Busybox(PathBuf),
    /// The host's own programs, with their shared libraries.
    HostTools(HostTools),
}

impl std::fmt::Display for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shell::Busybox(path) => write!(f, "busybox ({})", path.display()),
            Shell::HostTools(host) => {
                let sh = host.tools.iter().find(|t| t.name == "sh");
                match sh {
                    Some(sh) if sh.found != sh.real => write!(
                        f,
                        "the host's tools ({} → {} and {} more)",
                        sh.found.display(),
                        sh.real.display(),
                        host.tools.len() - 1
                    ),
                    Some(sh) => write!(
                        f,
                        "the host's tools ({} and {} more)",
                        sh.found.display(),
                        host.tools.len() - 1
                    ),
                    None => write!(f, "the host's tools ({})", host.tools.len()),
                }
            }
        }
    }
}

/// The host programs an image without busybox is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTools {
    /// Every tool found, in the order of [`HOST_TOOLS`] then
    /// [`OPTIONAL_HOST_TOOLS`].
    pub tools: Vec<HostTool>,
    /// Why busybox is not used (shown to the user; not part of the image).
    pub instead_of_busybox: String,
}

/// One host program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTool {
    /// Its name in the image's `/bin` (`sh`, `cat`…).
    pub name: String,
    /// Where it was found (`/bin/sh`).
    pub found: PathBuf,
    /// The real file behind it, every symlink resolved (`/usr/bin/dash`): the
    /// image holds this file at this path, and `/bin/<name>` links to it.
    pub real: PathBuf,
}

impl HostTools {
    /// Looks for every tool of [`HOST_TOOLS`] (required) and
    /// [`OPTIONAL_HOST_TOOLS`] (taken when found) in `dirs`, in order; the
    /// first file of that name wins. `instead_of_busybox` says why busybox is
    /// not used, for the messages.
    pub fn locate_in(
        dirs: &[&Path],
        instead_of_busybox: impl Into<String>,
    ) -> Result<Self, WorkerImageError> {
        let instead_of_busybox = instead_of_busybox.into();
        let find = |name: &str| -> Option<HostTool> {
            dirs.iter().find_map(|dir| {
                let found = dir.join(name);
                let real = std::fs::canonicalize(&found).ok()?;
                real.is_file().then(|| HostTool {
                    name: name.to_owned(),
                    found,
                    real,
                })
            })
        };
        let mut tools = Vec::new();
        let mut missing = Vec::new();
        for name in HOST_TOOLS {
            match find(name) {
                Some(tool) => tools.push(tool),
                None => missing.push(name.to_owned()),
            }
        }
        if !missing.is_empty() {
            return Err(WorkerImageError::NoShell {
                busybox: instead_of_busybox,
                missing,
                dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            });
        }
        tools.extend(OPTIONAL_HOST_TOOLS.iter().filter_map(|name| find(name)));
        Ok(Self {
            tools,
            instead_of_busybox,
        })
    }

    /// [`HostTools::locate_in`] the usual places, [`HOST_TOOL_DIRS`].
    pub fn locate(instead_of_busybox: impl Into<String>) -> Result<Self, WorkerImageError> {
        let dirs: Vec<&Path> = HOST_TOOL_DIRS.iter().map(Path::new).collect();
        Self::locate_in(&dirs, instead_of_busybox)
    }
}

/// Finds the runner stand-in binary. In order:
/// 1. `$BERTH_RUNNER_STANDIN` (an error if set but not a file);
/// 2. next to the current executable (an installed `berth` beside
///    `ghsim-runner`, or `target/debug/berth` beside `target/debug/ghsim-runner`);
/// 3. the cargo target folders found from the current executable's
///    ancestors: an ancestor named `debug` or `release` (tests run from
///    `target/debug/deps/`), `debug` and `release` in an ancestor named
///    `target`, and `target/debug`, `target/release` in any other ancestor.
pub fn locate_runner_standin() -> Result<PathBuf, WorkerImageError> {
    if let Some(path) = std::env::var_os(RUNNER_STANDIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(WorkerImageError::StandinEnvNotAFile { path })
        };
    }
    let exe = std::env::current_exe().ok();
    let tried = standin_candidates(exe.as_deref());
    match tried.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(WorkerImageError::StandinNotFound { tried }),
    }
}

/// The places [`locate_runner_standin`] looks, given the current executable,
/// most specific first and without duplicates.
fn standin_candidates(current_exe: Option<&Path>) -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !candidates.contains(&p) {
            candidates.push(p);
        }
    };
    let Some(exe_dir) = current_exe.and_then(Path::parent) else {
        return candidates;
    };
    push(exe_dir.join(RUNNER_STANDIN_NAME));
    let in_folder = |folder: &Path, profile: &str| folder.join(profile).join(RUNNER_STANDIN_NAME);
    for ancestor in exe_dir.ancestors() {
        match ancestor.file_name().and_then(|n| n.to_str()) {
            Some("debug" | "release") => push(ancestor.join(RUNNER_STANDIN_NAME)),
            Some("target") => {
                push(in_folder(ancestor, "debug"));
                push(in_folder(ancestor, "release"));
            }
            Some("deps") => {}
            _ => {
                push(in_folder(&ancestor.join("target"), "debug"));
                push(in_folder(&ancestor.join("target"), "release"));
            }
        }
    }
    candidates
}

/// Finds a busybox: the path in `$BERTH_BUSYBOX` when it is set (an error
/// if that is not a file; [`WorkerImageError::BusyboxDisabled`] when it is
/// empty or `none`), else Debian's static busybox at `/bin/busybox` or
/// `/usr/bin/busybox`. Whether it is usable is [`locate_shell`]'s question.
pub fn locate_busybox() -> Result<PathBuf, WorkerImageError> {
    busybox_at(std::env::var_os(BUSYBOX_ENV).as_deref(), &BUSYBOX_PATHS)
}

/// [`locate_busybox`] with the variable's value and the default places given.
fn busybox_at(env: Option<&OsStr>, defaults: &[&str]) -> Result<PathBuf, WorkerImageError> {
    match env {
        Some(value) if value.is_empty() || value == "none" => {
            Err(WorkerImageError::BusyboxDisabled)
        }
        Some(value) => {
            let path = PathBuf::from(value);
            if path.is_file() {
                Ok(path)
            } else {
                Err(WorkerImageError::BusyboxEnvNotAFile { path })
            }
        }
        None => {
            let tried: Vec<PathBuf> = defaults.iter().map(PathBuf::from).collect();
            match tried.iter().find(|p| p.is_file()) {
                Some(found) => Ok(found.clone()),
                None => Err(WorkerImageError::BusyboxNotFound { tried }),
            }
        }
    }
}

/// Chooses the image's shell: a usable static busybox when there is one
/// (see [`locate_busybox`]), else the host's own tools ([`HostTools`]), with
/// a log line saying why. A busybox named by `$BERTH_BUSYBOX` must be usable:
/// no quiet fallback from an explicit choice. The error, when neither works,
/// names both what is wrong with busybox and every missing host tool.
/// Blocking: runs `busybox --list-full` and `ldd`.
pub fn locate_shell() -> Result<Shell, WorkerImageError> {
    let env = std::env::var_os(BUSYBOX_ENV);
    let dirs: Vec<&Path> = HOST_TOOL_DIRS.iter().map(Path::new).collect();
    shell_from(env.as_deref(), &BUSYBOX_PATHS, &dirs)
}

/// [`locate_shell`] with the variable's value and the places to look given.
fn shell_from(
    env: Option<&OsStr>,
    busybox_paths: &[&str],
    tool_dirs: &[&Path],
) -> Result<Shell, WorkerImageError> {
    let explicit = env.is_some_and(|v| !v.is_empty() && v != "none");
    let instead = match busybox_at(env, busybox_paths) {
        Ok(path) => match busybox_applets(&path) {
            Ok(_) => return Ok(Shell::Busybox(path)),
            Err(e) if explicit => return Err(e),
            Err(e) => e.to_string(),
        },
        Err(e @ WorkerImageError::BusyboxEnvNotAFile { .. }) => return Err(e),
        Err(e) => e.to_string(),
    };
    let host = HostTools::locate_in(tool_dirs, instead)?;
    tracing::info!(
        reason = %host.instead_of_busybox,
        tools = host.tools.len(),
        "building the local worker image from the host's tools, not busybox"
    );
    Ok(Shell::HostTools(host))
}

/// Connects to a Docker engine and negotiates the API version (the engine
/// here speaks 1.41, older than bollard's default).
///
/// `address` is `unix:///path`, `unix:/path`, a bare socket path, or
/// `tcp://host:port` / `http://host:port`; `None` means `DOCKER_HOST`, else the
/// local socket.
pub async fn connect(address: Option<&str>) -> Result<Docker, WorkerImageError> {
    let shown = address
        .map(str::to_owned)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
    let connect_error = |source| WorkerImageError::Connect {
        address: shown.clone(),
        source,
    };
    let api = bollard::API_DEFAULT_VERSION;
    let docker = match address {
        None => Docker::connect_with_defaults(),
        Some(a) if a.starts_with("tcp://") || a.starts_with("http://") => {
            Docker::connect_with_http(a, CLIENT_TIMEOUT_SECS, api)
        }
        Some(a) => {
            let path = a
                .strip_prefix("unix://")
                .or_else(|| a.strip_prefix("unix:"))
                .unwrap_or(a);
            Docker::connect_with_unix(path, CLIENT_TIMEOUT_SECS, api)
        }
    }
    .map_err(connect_error)?
    .with_timeout(Duration::from_secs(CLIENT_TIMEOUT_SECS));
    let negotiated = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
        .await
        .map_err(|_| WorkerImageError::Timeout {
            operation: format!("version negotiation with {shown}"),
            after: CONNECT_TIMEOUT,
        })?;
    negotiated.map_err(connect_error)
}

/// Locates the inputs on this machine and builds (or finds) the local worker
/// image. What tests and `berth demo` call.
pub async fn ensure_local_worker_image(docker: &Docker) -> Result<WorkerImage, WorkerImageError> {
    let sources = tokio::task::spawn_blocking(ImageSources::locate).await??;
    build_worker_image(docker, &sources).await
}

/// [`ensure_local_worker_image`] with the container hook (for pools with
/// `container_jobs`; see [`ImageSources::locate_with_hook`]).
pub async fn ensure_local_worker_image_with_hook(
    docker: &Docker,
) -> Result<WorkerImage, WorkerImageError> {
    let sources = tokio::task::spawn_blocking(ImageSources::locate_with_hook).await??;
    build_worker_image(docker, &sources).await
}

/// Builds the local worker image from `sources`, or returns the existing one.
///
/// The root file system is assembled first (local files only); when
/// `berth-worker-local:<hash>` already exists the only Docker call is that one
/// inspect (plus a tag, if `latest` has moved elsewhere). Otherwise the archive
/// is imported, and both tags are set.
pub async fn build_worker_image(
    docker: &Docker,
    sources: &ImageSources,
) -> Result<WorkerImage, WorkerImageError> {
    let sources = sources.clone();
    let rootfs = tokio::task::spawn_blocking(move || Rootfs::assemble(&sources)).await??;
    let reference = rootfs.reference();

    let _serialised = BUILD_LOCK.lock().await;
    if let Some(existing) = inspect_image(docker, &reference).await? {
        let id = existing.id.unwrap_or_default();
        let latest = format!("{LOCAL_IMAGE_REPOSITORY}:{LATEST_TAG}");
        if !existing.repo_tags.unwrap_or_default().contains(&latest) {
            tag_latest(docker, &id).await?;
        }
        return Ok(WorkerImage {
            reference,
            id,
            built: false,
        });
    }

    import(docker, &rootfs).await?;
    let Some(imported) = inspect_image(docker, &reference).await? else {
        return Err(WorkerImageError::ImportLost { reference });
    };
    let id = imported.id.unwrap_or_default();
    tag_latest(docker, &id).await?;
    Ok(WorkerImage {
        reference,
        id,
        built: true,
    })
}

/// Runs one Docker call under a time limit, naming the call in any error.
async fn docker_call<T>(
    operation: impl Into<String>,
    limit: Duration,
    call: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, WorkerImageError> {
    let operation = operation.into();
    match tokio::time::timeout(limit, call).await {
        Err(_) => Err(WorkerImageError::Timeout {
            operation,
            after: limit,
        }),
        Ok(Err(source)) => Err(WorkerImageError::Docker { operation, source }),
        Ok(Ok(value)) => Ok(value),
    }
}

/// Inspects an image; `None` when the engine does not have it.
async fn inspect_image(
    docker: &Docker,
    reference: &str,
) -> Result<Option<bollard::models::ImageInspect>, WorkerImageError> {
    let result = docker_call(
        format!("image inspect of {reference}"),
        INSPECT_TIMEOUT,
        docker.inspect_image(reference),
    )
    .await;
    match result {
        Ok(image) => Ok(Some(image)),
        Err(WorkerImageError::Docker {
            source:
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                },
            ..
        }) => Ok(None),
        Err(other) => Err(other),
    }
}

/// Imports the archive as a single-layer image tagged with its content hash.
async fn import(docker: &Docker, rootfs: &Rootfs) -> Result<(), WorkerImageError> {
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(LOCAL_IMAGE_REPOSITORY)
        .tag(&rootfs.short_hash())
        .message(&rootfs.message)
        .changes(rootfs.changes.clone())
        .build();
    let body = bollard::body_full(rootfs.tar.clone());
    let stream = docker.create_image(Some(options), Some(body), None);
    docker_call(
        format!("image import of {}", rootfs.reference()),
        IMPORT_TIMEOUT,
        stream.try_collect::<Vec<_>>(),
    )
    .await?;
    Ok(())
}

/// Points `berth-worker-local:latest` at `id`.
async fn tag_latest(docker: &Docker, id: &str) -> Result<(), WorkerImageError> {
    let options = TagImageOptionsBuilder::default()
        .repo(LOCAL_IMAGE_REPOSITORY)
        .tag(LATEST_TAG)
        .build();
    docker_call(
        format!("tag of {id} as {LOCAL_IMAGE_REPOSITORY}:{LATEST_TAG}"),
        TAG_TIMEOUT,
        docker.tag_image(id, Some(options)),
    )
    .await
}

/// The image's root file system as a deterministic tar archive, with the
/// config changes applied on import and the content hash of both.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The uncompressed tar archive of the whole file system.
    pub tar: Bytes,
    /// Dockerfile-style instructions applied on import (`USER`, `ENV`…).
    pub changes: Vec<String>,
    /// Hex SHA-256 over `changes` and `tar`.
    pub content_hash: String,
    /// The import's commit message (the image history's comment).
    pub message: String,
}

impl Rootfs {
    /// Reads the inputs and lays out the file system. Blocking: file reads,
    /// `ldd` and `busybox --list-full`.
    ///
    /// With busybox the archive is exactly what it was before the host-tools
    /// variant existed, so existing tags stay valid.
    pub fn assemble(sources: &ImageSources) -> Result<Self, WorkerImageError> {
        let mut fs = Tree::default();
        let root = Owner::ROOT;
        let runner = Owner::RUNNER;

        for dir in ["bin", "etc", "home", "lib", "sbin", "usr/bin", "usr/sbin"] {
            fs.dir(dir, 0o755, root);
        }
        fs.dir("tmp", 0o1777, root);
        fs.dir("home/runner", 0o755, runner);
        // Docker gives a tmpfs mounted here this folder's mode but root as its
        // owner; 1777 keeps a plain `--tmpfs /home/runner/_work` writable for
        // the runner (berth may also pass `uid=1001,gid=1001`).
        fs.dir("home/runner/_work", 0o1777, runner);
        fs.dir("home/runner/bin", 0o755, root);

        // Users and name resolution.
        let passwd = format!(
            "root:x:0:0:root:/root:/bin/sh\n\
             {RUNNER_USER}:x:{RUNNER_UID}:{RUNNER_GID}:{RUNNER_USER}:{RUNNER_HOME}:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        );
        let group = format!("root:x:0:\n{RUNNER_USER}:x:{RUNNER_GID}:\nnogroup:x:65534:\n");
        fs.file("etc/passwd", 0o644, root, passwd.into_bytes());
        fs.file("etc/group", 0o644, root, group.into_bytes());
        fs.file(
            "etc/nsswitch.conf",
            0o644,
            root,
            b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec(),
        );
        // Docker mounts its own /etc/hosts, /etc/hostname and /etc/resolv.conf
        // over these; the defaults serve any other runtime.
        fs.file(
            "etc/hosts",
            0o644,
            root,
            b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_vec(),
        );

        // The shell and its tools.
        let mut libraries = BTreeSet::new();
        let message = match &sources.shell {
            Shell::Busybox(busybox) => {
                fs.file("bin/busybox", 0o755, root, read(busybox)?);
                for applet in busybox_applets(busybox)? {
                    if applet != "bin/busybox" {
                        fs.symlink(&applet, "/bin/busybox");
                    }
                }
                "berth local worker image (runner stand-in + busybox)"
            }
            Shell::HostTools(host) => {
                // Each real file once, at its own path, with its libraries;
                // then each tool's name in /bin links to its file (a
                // multi-call binary still sees the name it was called by).
                let reals: BTreeSet<&Path> = host.tools.iter().map(|t| t.real.as_path()).collect();
                for real in &reals {
                    fs.file(&image_path(real), 0o755, root, read(real)?);
                    libraries.extend(shared_libraries(real)?);
                }
                for tool in &host.tools {
                    let link = format!("bin/{}", tool.name);
                    if image_path(&tool.real) != link && !fs.nodes.contains_key(&link) {
                        fs.symlink(&link, &tool.real.to_string_lossy());
                    }
                }
                "berth local worker image (runner stand-in + the host's tools)"
            }
        };

        // The runner, its libraries and loader, and the scripts.
        fs.file(
            rel(RUNNER_LISTENER_PATH),
            0o755,
            root,
            read(&sources.runner)?,
        );
        libraries.extend(shared_libraries(&sources.runner)?);
        if matches!(sources.shell, Shell::HostTools(_)) {
            // glibc before 2.34 loads the `files` NSS module (for `id -un`,
            // `ls -l`) with dlopen, which ldd does not show.
            for extra in nss_files_modules(&libraries) {
                libraries.extend(shared_libraries(&extra)?);
                libraries.insert(extra);
            }
        }
        // One copy of each real file: `ldd` may name one library by two
        // paths (`/lib/…` for one binary, `/usr/lib/…` for another); the
        // later paths link to the first.
        let mut copied: BTreeMap<PathBuf, String> = BTreeMap::new();
        for library in libraries {
            let real =
                std::fs::canonicalize(&library).map_err(|source| WorkerImageError::Read {
                    path: library.clone(),
                    source,
                })?;
            match copied.get(&real) {
                Some(first) => fs.symlink(&image_path(&library), &format!("/{first}")),
                None => {
                    fs.file(&image_path(&library), 0o755, root, read(&library)?);
                    copied.insert(real, image_path(&library));
                }
            }
        }
        if let Some(berth) = &sources.hook {
            // The hook's berth is statically linked to nothing the stand-in
            // does not already bring but glibc, so only its own libraries.
            for library in shared_libraries(berth)? {
                let path = image_path(&library);
                if !fs.nodes.contains_key(&path) {
                    fs.file(&path, 0o755, root, read(&library)?);
                }
            }
            fs.dir("usr/local/bin", 0o755, root);
            fs.file("usr/local/bin/berth", 0o755, root, read(berth)?);
            fs.file(
                rel(crate::container_jobs::volumes::HOOK_SCRIPT),
                0o755,
                root,
                HOOK_SCRIPT_BODY.into(),
            );
            // The runner's externals (its bundled node in the real image):
            // a marker, so that the job container's `/__e` can be checked.
            fs.dir("home/runner/externals", 0o755, runner);
            fs.file(
                "home/runner/externals/README",
                0o644,
                runner,
                b"berth local worker image: stand-in for the runner's externals\n".to_vec(),
            );
        }
        fs.file("home/runner/run.sh", 0o755, root, RUN_SCRIPT.into());
        fs.file(rel(ENTRYPOINT_PATH), 0o755, root, ENTRYPOINT_SCRIPT.into());

        let changes = image_changes();
        let tar = Bytes::from(fs.into_tar().map_err(WorkerImageError::Archive)?);
        let mut hasher = Sha256::new();
        for change in &changes {
            hasher.update(change.as_bytes());
            hasher.update(b"\n");
        }
        hasher.update(&tar);
        let content_hash = hex::encode(hasher.finalize());
        Ok(Self {
            tar,
            changes,
            content_hash,
            message: message.to_owned(),
        })
    }

    /// The first 12 hex digits of the content hash: the image's tag.
    pub fn short_hash(&self) -> String {
        self.content_hash[..12].to_owned()
    }

    /// `berth-worker-local:<short hash>`.
    pub fn reference(&self) -> String {
        format!("{LOCAL_IMAGE_REPOSITORY}:{}", self.short_hash())
    }
}

/// The image config, as Dockerfile instructions for `changes`. The user is
/// numeric so that "not root" can be checked from the config alone.
fn image_changes() -> Vec<String> {
    vec![
        format!("USER {RUNNER_UID}:{RUNNER_GID}"),
        format!("WORKDIR {RUNNER_HOME}"),
        format!("ENV HOME={RUNNER_HOME} PATH={IMAGE_PATH}"),
        format!("ENTRYPOINT [\"{ENTRYPOINT_PATH}\"]"),
    ]
}

fn rel(absolute: &str) -> &str {
    absolute.trim_start_matches('/')
}

/// A host path as the archive names it (relative to `/`).
fn image_path(host: &Path) -> String {
    rel(&host.to_string_lossy()).to_owned()
}

/// `libnss_files.so.2` beside each `libc.so.6` among `libraries`, where the
/// host has it.
fn nss_files_modules(libraries: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    libraries
        .iter()
        .filter(|l| l.file_name().is_some_and(|n| n == "libc.so.6"))
        .filter_map(|libc| libc.parent())
        .map(|dir| dir.join("libnss_files.so.2"))
        .filter(|module| module.is_file() && !libraries.contains(module))
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, WorkerImageError> {
    std::fs::read(path).map_err(|source| WorkerImageError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The applet paths busybox offers (`bin/sh`, `usr/bin/env`…), relative to `/`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, WorkerImageError> {
    let unusable = |detail: String| WorkerImageError::BusyboxUnusable {
        path: busybox.to_owned(),
        detail,
    };
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| unusable(format!("cannot run it: {e}")))?;
    if !output.status.success() {
        return Err(unusable(format!(
            "`--list-full` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect();
    let missing: Vec<&str> = REQUIRED_APPLETS
        .iter()
        .copied()
        .filter(|name| !applets.iter().any(|a| a.rsplit('/').next() == Some(*name)))
        .collect();
    if !missing.is_empty() {
        return Err(unusable(format!(
            "it lacks the applets {}",
            missing.join(", ")
        )));
    }
    if shared_libraries(busybox)?.is_empty() {
        Ok(applets)
    } else {
        Err(unusable("it is dynamically linked".to_owned()))
    }
}

/// The shared libraries `binary` loads, the dynamic loader included, as
/// absolute paths on this machine (the image keeps the same paths, where the
/// loader finds them without an `ld.so.cache`). Empty for a static binary.
///
/// Uses `ldd`, which may run the binary's loader: only call it on trusted
/// binaries (the stand-in we build, busybox).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, WorkerImageError> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| WorkerImageError::Ldd {
            binary: binary.to_owned(),
            detail: format!("cannot run ldd (Debian package libc-bin): {e}"),
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.contains("not a dynamic executable")
        || stderr.contains("not a dynamic executable")
        || stdout.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(WorkerImageError::Ldd {
            binary: binary.to_owned(),
            detail: format!("{} {}", stdout.trim(), stderr.trim()),
        });
    }
    parse_ldd(binary, &stdout)
}

/// Parses `ldd` output lines:
/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` (a library),
/// `/lib64/ld-linux-x86-64.so.2 (0x…)` (the loader),
/// `linux-vdso.so.1 (0x…)` (provided by the kernel, skipped),
/// `libfoo.so => not found` (an error).
fn parse_ldd(binary: &Path, output: &str) -> Result<Vec<PathBuf>, WorkerImageError> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(WorkerImageError::MissingLibrary {
                        binary: binary.to_owned(),
                        library: name.trim().to_owned(),
                    });
                }
                target.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            let path = PathBuf::from(path);
            if !libraries.contains(&path) {
                libraries.push(path);
            }
        }
    }
    Ok(libraries)
}

/// Owner of an archive entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    uid: u64,
    gid: u64,
}

impl Owner {
    const ROOT: Owner = Owner { uid: 0, gid: 0 };
    const RUNNER: Owner = Owner {
        uid: RUNNER_UID,
        gid: RUNNER_GID,
    };
}

#[derive(Debug, Clone)]
enum Node {
    Dir {
        mode: u32,
        owner: Owner,
    },
    File {
        mode: u32,
        owner: Owner,
        data: Vec<u8>,
    },
    Symlink {
        target: String,
    },
}

/// The file system being assembled, keyed by path relative to `/`. A sorted
/// map, so the archive's entry order never depends on insertion order.
#[derive(Debug, Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    fn dir(&mut self, path: &str, mode: u32, owner: Owner) {
        self.parents(path);
        self.nodes
            .insert(path.to_owned(), Node::Dir { mode, owner });
    }

    fn file(&mut self, path: &str, mode: u32, owner: Owner, data: Vec<u8>) {
        self.parents(path);
        self.nodes
            .insert(path.to_owned(), Node::File { mode, owner, data });
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.nodes.insert(
            path.to_owned(),
            Node::Symlink {
                target: target.to_owned(),
            },
        );
    }

    /// Adds any missing parent folder as root-owned 0755.
    fn parents(&mut self, path: &str) {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            let key = dir.to_string_lossy().into_owned();
            self.nodes.entry(key).or_insert(Node::Dir {
                mode: 0o755,
                owner: Owner::ROOT,
            });
            parent = dir.parent();
        }
    }

    /// Writes the tree as a tar archive: every entry with a fixed timestamp,
    /// numeric owners and no user names, so equal inputs give equal bytes.
    fn into_tar(self) -> io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, node) in self.nodes {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            match node {
                Node::Dir { mode, owner } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(mode);
                    header.set_uid(owner.uid);
                    header.set_gid(owner.gid);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), io::empty())?;
                }
                Node::File { mode, owner, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(mode);
                    header.set_uid(owner.uid);
                    header.set_gid(owner.gid);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, &path, data.as_slice())?;
                }
                Node::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_uid(0);
                    header.set_gid(0);
                    header.set_size(0);
                    builder.append_link(&mut header, &path, &target)?;
                }
            }
        }
        builder.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar: &[u8]) -> BTreeMap<String, (tar::EntryType, u32, u64, Option<String>)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let path = e
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_owned();
                let h = e.header();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned());
                (
                    path,
                    (h.entry_type(), h.mode().unwrap(), h.uid().unwrap(), link),
                )
            })
            .collect()
    }

    #[test]
    fn parses_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        let libs = parse_ldd(Path::new("x"), out).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let err = parse_ldd(Path::new("x"), "\tlibnope.so.3 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libnope.so.3"), "{err}");
    }

    #[test]
    fn standin_candidates_cover_test_and_run_layouts() {
        let from_test = standin_candidates(Some(Path::new("/w/target/debug/deps/worker-123")));
        let expected: Vec<PathBuf> = [
            "/w/target/debug/deps/ghsim-runner",
            "/w/target/debug/ghsim-runner",
            "/w/target/release/ghsim-runner",
            "/target/debug/ghsim-runner",
            "/target/release/ghsim-runner",
        ]
        .map(PathBuf::from)
        .into();
        assert_eq!(from_test, expected);

        let installed = standin_candidates(Some(Path::new("/usr/local/bin/berth")));
        assert_eq!(installed[0], Path::new("/usr/local/bin/ghsim-runner"));
        assert!(standin_candidates(None).is_empty());
    }

    #[test]
    fn missing_standin_error_names_every_path_tried() {
        let err = WorkerImageError::StandinNotFound {
            tried: vec!["/a/ghsim-runner".into(), "/b/ghsim-runner".into()],
        };
        let msg = err.to_string();
        assert!(msg.contains("/a/ghsim-runner, /b/ghsim-runner"), "{msg}");
        assert!(msg.contains("cargo build -p ghsim --bins"), "{msg}");
        assert!(msg.contains(RUNNER_STANDIN_ENV), "{msg}");
    }

    /// Uses the host's busybox and a copy of `/bin/true` (dynamically linked)
    /// as the runner: the layout, owners, modes and hashing, without Docker.
    #[test]
    fn rootfs_layout_is_deterministic_and_hash_covers_the_runner() {
        let Ok(busybox) = locate_busybox() else {
            eprintln!("skipped: no busybox on this machine");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let runner = dir.path().join("runner");
        std::fs::copy("/bin/true", &runner).unwrap();
        let sources = ImageSources {
            runner: runner.clone(),
            shell: Shell::Busybox(busybox),
            hook: None,
        };

        let first = Rootfs::assemble(&sources).unwrap();
        let again = Rootfs::assemble(&sources).unwrap();
        assert_eq!(first.content_hash, again.content_hash);
        assert_eq!(first.tar, again.tar);
        assert!(first.reference().starts_with("berth-worker-local:"));
        assert_eq!(first.short_hash().len(), 12);

        let e = entries(&first.tar);
        use tar::EntryType::*;
        assert_eq!(e["tmp"].0, Directory);
        assert_eq!(e["tmp"].1, 0o1777);
        assert_eq!(e["home/runner"].2, RUNNER_UID);
        assert_eq!(e["home/runner/_work"].2, RUNNER_UID);
        assert_eq!(e["home/runner/bin/Runner.Listener"].1, 0o755);
        assert_eq!(
            e["home/runner/bin/Runner.Listener"].2, 0,
            "root owns the binaries"
        );
        assert_eq!(e["home/runner/entrypoint.sh"].1, 0o755);
        assert_eq!(e["home/runner/run.sh"].1, 0o755);
        assert_eq!(e["bin/busybox"].0, Regular);
        for applet in [
            "bin/sh",
            "bin/cat",
            "usr/bin/env",
            "usr/bin/wget",
            "usr/bin/nc",
        ] {
            let (kind, _, _, target) = &e[applet];
            assert_eq!(*kind, Symlink, "{applet}");
            assert_eq!(target.as_deref(), Some("/bin/busybox"), "{applet}");
        }
        assert!(
            e.contains_key("lib64/ld-linux-x86-64.so.2"),
            "the loader is included"
        );
        assert!(
            e.keys().any(|k| k.ends_with("/libc.so.6")),
            "libc is included"
        );
        assert!(first.changes.contains(&"USER 1001:1001".to_owned()));

        let mut changed = std::fs::read(&runner).unwrap();
        changed.push(0);
        std::fs::write(&runner, changed).unwrap();
        let rebuilt = Rootfs::assemble(&sources).unwrap();
        assert_ne!(first.content_hash, rebuilt.content_hash);
    }

    fn host_dirs() -> Vec<&'static Path> {
        HOST_TOOL_DIRS.iter().map(Path::new).collect()
    }

    #[test]
    fn without_a_usable_busybox_the_shell_is_the_hosts_tools() {
        let dirs = host_dirs();
        let host = |shell: Shell| match shell {
            Shell::HostTools(host) => host,
            other => panic!("expected the host's tools, got {other:?}"),
        };

        // Switched off by the variable, empty or `none`.
        for off in ["", "none"] {
            let chosen = host(shell_from(Some(OsStr::new(off)), &BUSYBOX_PATHS, &dirs).unwrap());
            assert!(
                chosen.instead_of_busybox.contains(BUSYBOX_ENV),
                "{chosen:?}"
            );
            let sh = chosen.tools.iter().find(|t| t.name == "sh").unwrap();
            assert_eq!(sh.found, Path::new("/bin/sh"));
            assert!(sh.real.is_absolute() && sh.real.is_file(), "{sh:?}");
            for name in HOST_TOOLS {
                assert!(chosen.tools.iter().any(|t| t.name == name), "{name}");
            }
            assert!(
                Shell::HostTools(chosen.clone())
                    .to_string()
                    .starts_with("the host's tools (/bin/sh"),
                "{}",
                Shell::HostTools(chosen)
            );
        }

        // Not installed, or not a static busybox: the host's tools, saying why.
        let chosen = host(shell_from(None, &["/nonexistent/busybox"], &dirs).unwrap());
        assert_eq!(
            chosen.instead_of_busybox,
            "busybox was not found at /nonexistent/busybox"
        );
        let chosen = host(shell_from(None, &["/bin/true"], &dirs).unwrap());
        assert!(
            chosen
                .instead_of_busybox
                .contains("/bin/true is not a usable static busybox"),
            "{chosen:?}"
        );

        // Named explicitly: no quiet fallback.
        let err = shell_from(Some(OsStr::new("/nonexistent")), &BUSYBOX_PATHS, &dirs).unwrap_err();
        assert!(
            matches!(err, WorkerImageError::BusyboxEnvNotAFile { .. }),
            "{err}"
        );
        let err = shell_from(Some(OsStr::new("/bin/true")), &BUSYBOX_PATHS, &dirs).unwrap_err();
        assert!(
            matches!(err, WorkerImageError::BusyboxUnusable { .. }),
            "{err}"
        );
    }

    #[test]
    fn with_neither_busybox_nor_the_tools_the_error_names_what_is_missing() {
        let empty = tempfile::tempdir().unwrap();
        let err = shell_from(None, &["/nonexistent/busybox"], &[empty.path()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("busybox was not found at /nonexistent/busybox"),
            "{msg}"
        );
        assert!(msg.contains("sh, base64, basename, cat"), "{msg}");
        assert!(
            msg.contains(&format!("not found in {}", empty.path().display())),
            "{msg}"
        );
        assert!(msg.contains("apt-get install busybox-static"), "{msg}");
        assert!(msg.contains(BUSYBOX_ENV), "{msg}");

        // A folder with only some of them: just the others are missing.
        std::os::unix::fs::symlink("/bin/sh", empty.path().join("sh")).unwrap();
        let Err(WorkerImageError::NoShell { missing, .. }) =
            HostTools::locate_in(&[empty.path()], "none")
        else {
            panic!("expected NoShell");
        };
        assert!(!missing.contains(&"sh".to_owned()), "{missing:?}");
        assert_eq!(missing.len(), HOST_TOOLS.len() - 1);
    }

    /// The host-tools variant: `/bin/<tool>` for every tool, each a real file
    /// or a symlink to one in the image, with the loader and libraries; no
    /// setuid bits; deterministic; another hash than the busybox variant.
    #[test]
    fn host_tools_rootfs_has_every_tool_resolved_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let runner = dir.path().join("runner");
        std::fs::copy("/bin/true", &runner).unwrap();
        let sources = ImageSources {
            runner,
            shell: Shell::HostTools(HostTools::locate("test").unwrap()),
            hook: None,
        };
        let first = Rootfs::assemble(&sources).unwrap();
        let again = Rootfs::assemble(&sources).unwrap();
        assert_eq!(first.tar, again.tar);
        assert_eq!(first.content_hash, again.content_hash);
        assert!(first.message.contains("host's tools"), "{}", first.message);

        let e = entries(&first.tar);
        use tar::EntryType::*;
        let resolve = |path: &str| -> String {
            match &e[path] {
                (Symlink, _, _, Some(target)) => target.trim_start_matches('/').to_owned(),
                _ => path.to_owned(),
            }
        };
        for name in HOST_TOOLS {
            let path = format!("bin/{name}");
            assert!(e.contains_key(&path), "{path} missing");
            let real = resolve(&path);
            let (kind, mode, uid, _) = &e[&real];
            assert_eq!(*kind, Regular, "{path} -> {real}");
            assert_eq!((*mode, *uid), (0o755, 0), "{real}");
        }
        for (path, (kind, mode, _, target)) in &e {
            if *kind == Symlink {
                let target = target.as_deref().unwrap().trim_start_matches('/');
                assert_eq!(e[target].0, Regular, "{path} -> {target}");
            } else {
                assert_eq!(mode & 0o6000, 0, "{path} has mode {mode:o}");
            }
        }
        assert!(e.contains_key("lib64/ld-linux-x86-64.so.2"), "the loader");
        let libc_copies = e
            .iter()
            .filter(|(k, v)| k.ends_with("/libc.so.6") && v.0 == Regular)
            .count();
        assert_eq!(libc_copies, 1, "libc, once (other paths link to it)");
        assert!(!e.contains_key("bin/busybox"));
        assert_eq!(e["home/runner/entrypoint.sh"].1, 0o755);
        assert_eq!(e["tmp"].1, 0o1777);

        if let Ok(busybox) = locate_busybox() {
            let with_busybox = Rootfs::assemble(&ImageSources {
                shell: Shell::Busybox(busybox),
                ..sources.clone()
            })
            .unwrap();
            assert_ne!(with_busybox.content_hash, first.content_hash);
            assert_ne!(with_busybox.reference(), first.reference());
        }
    }
}
