//! What a container job may ask for, decided before anything is sent to
//! Docker: the image allowlist, the `options:` of a container (the runner's
//! `createOptions`, a `docker create` command line), and the mounts.
//!
//! Everything here is a pure function of the pool's [`ContainerPolicy`] and
//! the hook's input, so each rule is unit-tested on its own. A refusal is a
//! [`Refused`] naming the rule it broke; the hook prints it in the job's log.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::ContainerPolicy;

/// A request the pool's policy does not allow: `rule` is the name an
/// operator finds in docs/container-jobs.md.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (berth policy: {rule})")]
pub struct Refused {
    pub rule: &'static str,
    pub message: String,
}

fn refused(rule: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        rule,
        message: message.into(),
    }
}

/// Capabilities that reach the host kernel or other containers: never
/// given to a job's container, whatever the pool says.
const FORBIDDEN_CAPABILITIES: &[&str] = &[
    "ALL",
    "SYS_ADMIN",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_PTRACE",
    "SYS_BOOT",
    "SYS_TIME",
    "DAC_READ_SEARCH",
    "NET_ADMIN",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "BPF",
    "PERFMON",
    "SYSLOG",
    "LINUX_IMMUTABLE",
];

/// A capability name as Docker takes it (`CHOWN`), or why it cannot be given.
pub fn capability(name: &str) -> Result<String, String> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.trim_start_matches("CAP_").to_owned();
    if bare.is_empty() || !bare.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return Err(format!("`{name}` is not a capability name"));
    }
    if FORBIDDEN_CAPABILITIES.contains(&bare.as_str()) {
        return Err(format!(
            "`{name}` cannot be given to a job's containers: it reaches the host"
        ));
    }
    Ok(bare)
}

/// `image` with Docker Hub's implied parts written out, so that `postgres`,
/// `postgres:latest` and `docker.io/library/postgres:latest` are one image
/// for the allowlist. A digest is kept; a missing tag becomes `latest`.
pub fn normalize_image(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let tagged = {
        let last = name.rsplit('/').next().unwrap_or(name);
        if last.contains(':') || digest.is_some() {
            name.to_owned()
        } else {
            format!("{name}:latest")
        }
    };
    let first = tagged.split('/').next().unwrap_or("");
    let has_registry = tagged.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        tagged
    } else if tagged.contains('/') {
        format!("docker.io/{tagged}")
    } else {
        format!("docker.io/library/{tagged}")
    };
    match digest {
        Some(d) => format!("{full}@{d}"),
        None => full,
    }
}

/// Checks `image` against the pool's `containers.images`: an entry matches
/// the image as written or written out ([`normalize_image`]).
pub fn check_image(image: &str, policy: &ContainerPolicy) -> Result<(), Refused> {
    let image = image.trim();
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return Err(refused(
            "images",
            format!("`{image}` is not an image reference"),
        ));
    }
    let written_out = normalize_image(image);
    let allowed = policy.images.iter().any(|pattern| {
        crate::names::glob(pattern, image)
            || crate::names::glob(pattern, &written_out)
            || crate::names::glob(&normalize_image(pattern), &written_out)
    });
    if allowed {
        Ok(())
    } else {
        Err(refused(
            "images",
            format!(
                "the image `{image}` is not among the images this pool's jobs may use (pool.containers.images)"
            ),
        ))
    }
}

/// Checks a Dockerfile action's `FROM` images against the pool's
/// `containers.images` (a build pulls them): every stage's base must be an
/// allowed image, an earlier stage or `scratch`; a base spelled with a
/// build argument (`FROM $BASE`) is refused, since it cannot be checked.
pub fn check_dockerfile(text: &str, policy: &ContainerPolicy) -> Result<(), Refused> {
    let mut stages: Vec<String> = Vec::new();
    let mut found = false;
    // Continuation lines joined, comments dropped.
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    for line in joined.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        found = true;
        let mut words = words.filter(|w| !w.starts_with("--"));
        let image = words.next().unwrap_or("");
        if image.contains('$') {
            return Err(refused(
                "builds",
                format!(
                    "`FROM {image}` names its base through a build argument, which berth cannot check"
                ),
            ));
        }
        let lower = image.to_ascii_lowercase();
        if lower != "scratch" && !stages.contains(&lower) {
            check_image(image, policy)
                .map_err(|e| refused("builds", format!("the Dockerfile's base: {}", e.message)))?;
        }
        if let (Some(as_kw), Some(name)) = (words.next(), words.next())
            && as_kw.eq_ignore_ascii_case("AS")
        {
            stages.push(name.to_ascii_lowercase());
        }
    }
    if found {
        Ok(())
    } else {
        Err(refused("builds", "the Dockerfile has no FROM line"))
    }
}

/// A health check from `--health-*` options (Docker's `HealthConfig`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// `["CMD-SHELL", cmd]`, or `["NONE"]` for `--no-healthcheck`.
    pub test: Option<Vec<String>>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<i64>,
    pub start_period: Option<Duration>,
}

impl Health {
    pub fn is_set(&self) -> bool {
        *self != Health::default()
    }
}

/// The `options:` of a container that berth honours. Anything else is
/// refused by [`parse_create_options`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateOptions {
    pub env: BTreeMap<String, String>,
    pub cpus: Option<f64>,
    pub memory_bytes: Option<i64>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub hostname: Option<String>,
    pub entrypoint: Option<String>,
    pub health: Health,
    pub shm_size: Option<i64>,
    /// `--tmpfs PATH[:OPTIONS]`.
    pub tmpfs: BTreeMap<String, String>,
    /// `--cap-add`, each among the pool's `containers.capabilities`.
    pub cap_add: Vec<String>,
    /// `--label` values are accepted and ignored (berth's labels are berth's).
    pub ignored: Vec<String>,
}

/// Options refused outright, each with the rule it would break.
const REFUSED_OPTIONS: &[(&str, &str, &str)] = &[
    (
        "--privileged",
        "privileged",
        "privileged containers are never run",
    ),
    ("--device", "devices", "host devices are not given to jobs"),
    (
        "--network",
        "networks",
        "a job's containers share the job's own network",
    ),
    (
        "--net",
        "networks",
        "a job's containers share the job's own network",
    ),
    (
        "--network-alias",
        "networks",
        "services are reached by their name",
    ),
    (
        "--pid",
        "namespaces",
        "host namespaces are not shared with jobs",
    ),
    (
        "--ipc",
        "namespaces",
        "host namespaces are not shared with jobs",
    ),
    (
        "--uts",
        "namespaces",
        "host namespaces are not shared with jobs",
    ),
    (
        "--userns",
        "namespaces",
        "host namespaces are not shared with jobs",
    ),
    (
        "--cgroupns",
        "namespaces",
        "host namespaces are not shared with jobs",
    ),
    (
        "--security-opt",
        "security-opt",
        "berth sets the security options",
    ),
    (
        "--sysctl",
        "sysctls",
        "kernel settings are not changed for jobs",
    ),
    (
        "--runtime",
        "runtime",
        "containers run with the host's default runtime",
    ),
    (
        "--volume",
        "mounts",
        "mounts come from the workflow's `volumes:`; host paths are never mounted",
    ),
    (
        "-v",
        "mounts",
        "mounts come from the workflow's `volumes:`; host paths are never mounted",
    ),
    (
        "--mount",
        "mounts",
        "mounts come from the workflow's `volumes:`; host paths are never mounted",
    ),
    (
        "--volumes-from",
        "mounts",
        "other containers' volumes are not shared",
    ),
    (
        "--publish",
        "ports",
        "ports are not published on the Docker host; reach services by name",
    ),
    (
        "-p",
        "ports",
        "ports are not published on the Docker host; reach services by name",
    ),
    (
        "--publish-all",
        "ports",
        "ports are not published on the Docker host; reach services by name",
    ),
    (
        "-P",
        "ports",
        "ports are not published on the Docker host; reach services by name",
    ),
    (
        "--cap-drop",
        "capabilities",
        "berth drops every capability itself",
    ),
    ("--group-add", "user", "supplementary groups are not added"),
    ("--oom-kill-disable", "limits", "limits cannot be lifted"),
    ("--pids-limit", "limits", "the pool sets the process limit"),
    ("--ulimit", "limits", "the pool sets the limits"),
    ("--cgroup-parent", "limits", "the pool sets the limits"),
    (
        "--restart",
        "lifecycle",
        "a job's containers live as long as the job",
    ),
    (
        "--rm",
        "lifecycle",
        "berth removes a job's containers itself",
    ),
    ("--init", "lifecycle", "berth chooses the init process"),
    ("--log-driver", "logging", "berth chooses the log driver"),
    ("--add-host", "networks", "host entries are berth's"),
    ("--dns", "networks", "name resolution is berth's"),
];

/// Parses a container's `options:` (the runner's `createOptions`) under the
/// pool's policy: the options berth honours are returned, any other is
/// refused naming the option and the rule.
pub fn parse_create_options(
    options: Option<&str>,
    policy: &ContainerPolicy,
) -> Result<CreateOptions, Refused> {
    let mut out = CreateOptions::default();
    let Some(text) = options.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(out);
    };
    let words = shlex::split(text).ok_or_else(|| {
        refused(
            "create-options",
            format!("cannot read the container options `{text}` (unbalanced quotes?)"),
        )
    })?;
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (word.clone(), None),
        };
        if let Some((_, rule, why)) = REFUSED_OPTIONS.iter().find(|(f, _, _)| *f == flag) {
            return Err(refused(
                rule,
                format!("the container option `{flag}` is not allowed: {why}"),
            ));
        }
        let switch = |name: &str| flag == name && inline.is_none();
        if switch("--no-healthcheck") {
            out.health.test = Some(vec!["NONE".to_owned()]);
            continue;
        }
        let mut value = || -> Result<String, Refused> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => words.next().ok_or_else(|| {
                    refused(
                        "create-options",
                        format!("the container option `{flag}` needs a value"),
                    )
                }),
            }
        };
        match flag.as_str() {
            "-e" | "--env" => {
                let v = value()?;
                let (k, val) = v.split_once('=').unwrap_or((v.as_str(), ""));
                out.env.insert(k.to_owned(), val.to_owned());
            }
            "--cpus" => {
                let v = value()?;
                let cpus: f64 = v.parse().ok().filter(|c: &f64| *c > 0.0).ok_or_else(|| {
                    refused("create-options", format!("`--cpus {v}` is not a CPU count"))
                })?;
                out.cpus = Some(cpus);
            }
            "-m" | "--memory" => {
                let v = value()?;
                out.memory_bytes = Some(bytes(&v).ok_or_else(|| {
                    refused("create-options", format!("`--memory {v}` is not a size"))
                })?);
            }
            "--shm-size" => {
                let v = value()?;
                out.shm_size = Some(bytes(&v).ok_or_else(|| {
                    refused("create-options", format!("`--shm-size {v}` is not a size"))
                })?);
            }
            "-u" | "--user" => out.user = Some(value()?),
            "-w" | "--workdir" => out.workdir = Some(value()?),
            "-h" | "--hostname" => out.hostname = Some(value()?),
            "--entrypoint" => out.entrypoint = Some(value()?),
            "--health-cmd" => out.health.test = Some(vec!["CMD-SHELL".to_owned(), value()?]),
            "--health-interval" => out.health.interval = Some(duration(&flag, &value()?)?),
            "--health-timeout" => out.health.timeout = Some(duration(&flag, &value()?)?),
            "--health-start-period" => out.health.start_period = Some(duration(&flag, &value()?)?),
            "--health-retries" => {
                let v = value()?;
                out.health.retries = Some(v.parse().map_err(|_| {
                    refused(
                        "create-options",
                        format!("`--health-retries {v}` is not a number"),
                    )
                })?);
            }
            "--tmpfs" => {
                let v = value()?;
                let (path, opts) = v.split_once(':').unwrap_or((v.as_str(), ""));
                if !path.starts_with('/') {
                    return Err(refused(
                        "create-options",
                        format!("`--tmpfs {v}` needs an absolute path"),
                    ));
                }
                out.tmpfs.insert(path.to_owned(), opts.to_owned());
            }
            "--cap-add" => {
                let v = value()?;
                let cap = capability(&v).map_err(|why| refused("capabilities", why))?;
                let allowed = policy
                    .capabilities
                    .iter()
                    .any(|c| capability(c).is_ok_and(|c| c == cap));
                if !allowed {
                    return Err(refused(
                        "capabilities",
                        format!("the capability `{cap}` is not among pool.containers.capabilities"),
                    ));
                }
                out.cap_add.push(cap);
            }
            "-l" | "--label" | "--name" => {
                let v = value()?;
                out.ignored.push(format!("{flag} {v}"));
            }
            _ => {
                return Err(refused(
                    "create-options",
                    format!(
                        "the container option `{flag}` is not supported by berth (supported: --env, --cpus, --memory, --user, --workdir, --hostname, --entrypoint, --health-*, --no-healthcheck, --shm-size, --tmpfs, --cap-add)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Docker's duration syntax (`10s`, `1m30s`, `500ms`).
fn duration(flag: &str, text: &str) -> Result<Duration, Refused> {
    let bad = || {
        refused(
            "create-options",
            format!("`{flag} {text}` is not a duration (e.g. 10s)"),
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(seconds);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// `512m`, `2g`, `1024` (bytes); Docker's units are powers of 1024.
fn bytes(text: &str) -> Option<i64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (number, unit) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1024),
        'm' => (&t[..t.len() - 1], 1024 * 1024),
        'g' => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    let n: f64 = number.parse().ok()?;
    (n > 0.0).then_some((n * unit as f64) as i64)
}

/// Where a mount of the hook's input comes from, once translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// One of the job's own volumes (`work`, `temp`, `workspace`…).
    JobVolume(&'static str),
    /// The worker image's read-only externals (`/__e`).
    Externals,
    /// A named volume of the workflow, made for this job only.
    UserVolume(String),
}

/// A mount the container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: MountSource,
    pub target: String,
    pub read_only: bool,
}

/// One mount of the hook's input (`sourceVolumePath` → `targetVolumePath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// The worker's folders that berth backs with the job's volumes, and the
/// volume behind each: the runner names these folders as mount sources.
pub fn job_volume_folders(work_folder: &str, repository: &str) -> Vec<(String, &'static str)> {
    let w = work_folder.trim_end_matches('/');
    let repo = repository.rsplit('/').next().unwrap_or(repository);
    vec![
        (w.to_owned(), "work"),
        (format!("{w}/_temp"), "temp"),
        (format!("{w}/_temp/_github_home"), "home"),
        (format!("{w}/_temp/_github_workflow"), "workflow"),
        (format!("{w}/_temp/_runner_file_commands"), "file-commands"),
        (format!("{w}/{repo}/{repo}"), "workspace"),
    ]
}

/// A plain absolute path: no `..`, `.`, or empty segment.
fn plain_absolute(path: &str) -> bool {
    path.starts_with('/')
        && path
            .split('/')
            .skip(1)
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        || path == "/"
}

/// Translates the runner's mounts into the job's volumes.
///
/// - a source that is one of the job's folders ([`job_volume_folders`])
///   becomes that volume; one below such a folder whose target sits at
///   the same place below an earlier mount's target is already visible
///   through it and is dropped (`_work/_actions` → `/__w/_actions`);
/// - the runner's externals folder becomes the read-only externals volume;
/// - the Docker socket is dropped when the runner adds it (`system`), and
///   refused when the workflow asks for it;
/// - a name (no `/`) is a workflow's named volume, made for this job only;
/// - any other host path is refused: berth mounts nothing of the host.
pub fn translate_mounts(
    requested: &[RequestedMount],
    system: bool,
    folders: &[(String, &'static str)],
    externals_folder: &str,
) -> Result<Vec<Mount>, Refused> {
    let mut out: Vec<(String, Mount)> = Vec::new();
    for m in requested {
        let source = m.source.trim_end_matches('/');
        let source = if source.starts_with("//") {
            &source[1..]
        } else {
            source
        };
        let target = m.target.trim_end_matches('/').to_owned();
        if !plain_absolute(&target) || target == "/" {
            return Err(refused(
                "mounts",
                format!(
                    "the mount target `{}` is not a plain absolute path",
                    m.target
                ),
            ));
        }
        if source == "/var/run/docker.sock" || source.ends_with("/docker.sock") {
            if system {
                continue;
            }
            return Err(refused(
                "docker-socket",
                "the Docker socket is never given to a job (container jobs run through berth's hook instead)",
            ));
        }
        if !source.contains('/') {
            if source.is_empty()
                || !source
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(refused(
                    "mounts",
                    format!("`{source}` is not a volume name"),
                ));
            }
            out.push((
                String::new(),
                Mount {
                    source: MountSource::UserVolume(source.to_owned()),
                    target,
                    read_only: m.read_only,
                },
            ));
            continue;
        }
        if !plain_absolute(source) {
            return Err(refused(
                "host-mounts",
                format!("the mount source `{}` is not a plain path", m.source),
            ));
        }
        if source == externals_folder.trim_end_matches('/') {
            out.push((
                source.to_owned(),
                Mount {
                    source: MountSource::Externals,
                    target,
                    read_only: true,
                },
            ));
            continue;
        }
        if let Some((_, volume)) = folders.iter().find(|(f, _)| f == source) {
            out.push((
                source.to_owned(),
                Mount {
                    source: MountSource::JobVolume(volume),
                    target,
                    read_only: m.read_only,
                },
            ));
            continue;
        }
        // Below a folder already mounted, at the same place below its target?
        let covered = out.iter().any(|(src, mount)| {
            !src.is_empty()
                && source.strip_prefix(src.as_str()).is_some_and(|rest| {
                    rest.starts_with('/') && target == format!("{}{rest}", mount.target)
                })
        });
        if covered {
            continue;
        }
        return Err(refused(
            "host-mounts",
            format!(
                "the host path `{}` cannot be mounted: berth mounts nothing of the Docker host into a job",
                m.source
            ),
        ));
    }
    // The worker's folders nest (`_work/_temp/_github_home` inside
    // `_work/_temp` inside `_work`), each a volume of its own: below a
    // mounted folder, the folders nested in it are mounted at the same
    // place, so the container sees the worker's tree.
    let mut nested: Vec<Mount> = Vec::new();
    for (source, mount) in &out {
        if !matches!(mount.source, MountSource::JobVolume(_)) {
            continue;
        }
        for (folder, kind) in folders {
            let Some(rest) = folder.strip_prefix(source.as_str()) else {
                continue;
            };
            if !rest.starts_with('/') {
                continue;
            }
            let target = format!("{}{rest}", mount.target);
            let taken = out.iter().any(|(_, m)| m.target == target)
                || nested.iter().any(|m| m.target == target);
            if !taken {
                nested.push(Mount {
                    source: MountSource::JobVolume(kind),
                    target,
                    read_only: mount.read_only,
                });
            }
        }
    }
    let mut mounts: Vec<Mount> = out.into_iter().map(|(_, m)| m).collect();
    mounts.extend(nested);
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(images: &[&str]) -> ContainerPolicy {
        ContainerPolicy {
            images: images.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn images_match_patterns_as_written_or_written_out() {
        let p = policy(&[
            "postgres:*",
            "node:22*",
            "ghcr.io/acme/*",
            "redis@sha256:abc",
        ]);
        assert!(check_image("postgres:16", &p).is_ok());
        assert!(check_image("docker.io/library/postgres:16-alpine", &p).is_ok());
        assert!(check_image("node:22-bookworm", &p).is_ok());
        assert!(check_image("ghcr.io/acme/tools:1", &p).is_ok());
        assert!(check_image("redis@sha256:abc", &p).is_ok());
        let e = check_image("node:20", &p).unwrap_err();
        assert_eq!(e.rule, "images");
        assert!(e.to_string().contains("`node:20`"), "{e}");
        assert!(check_image("redis:7", &p).is_err());
        assert!(check_image("evil.io/postgres:16", &p).is_err());
        assert!(check_image("postgres", &policy(&["postgres:latest"])).is_ok());
        assert!(check_image("anything", &policy(&[])).is_err());
    }

    #[test]
    fn create_options_keep_what_berth_honours() {
        let p = ContainerPolicy::default();
        let o = parse_create_options(
            Some("--cpus 1 -e A=b --health-cmd \"pg_isready -U x\" --health-interval=2s --health-retries 5 --memory 512m --tmpfs /run:size=64m --cap-add CHOWN --label x=y"),
            &p,
        )
        .unwrap();
        assert_eq!(o.cpus, Some(1.0));
        assert_eq!(o.env["A"], "b");
        assert_eq!(
            o.health.test,
            Some(vec!["CMD-SHELL".to_owned(), "pg_isready -U x".to_owned()])
        );
        assert_eq!(o.health.interval, Some(Duration::from_secs(2)));
        assert_eq!(o.health.retries, Some(5));
        assert_eq!(o.memory_bytes, Some(512 * 1024 * 1024));
        assert_eq!(o.tmpfs["/run"], "size=64m");
        assert_eq!(o.cap_add, vec!["CHOWN"]);
        assert_eq!(duration("--x", "1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            duration("--x", "500ms").unwrap(),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn create_options_refuse_with_the_rule() {
        let p = ContainerPolicy::default();
        for (options, rule) in [
            ("--privileged", "privileged"),
            ("--cpus 1 --privileged", "privileged"),
            ("-v /etc:/host-etc", "mounts"),
            ("--network=host", "networks"),
            ("--pid host", "namespaces"),
            ("--cap-add SYS_ADMIN", "capabilities"),
            ("--cap-add NET_RAW", "capabilities"),
            ("--device /dev/kmsg", "devices"),
            ("--security-opt seccomp=unconfined", "security-opt"),
            ("--frobnicate", "create-options"),
            ("--cpus", "create-options"),
            ("--cpus \"1", "create-options"),
        ] {
            let e = parse_create_options(Some(options), &p).unwrap_err();
            assert_eq!(e.rule, rule, "{options}: {e}");
            assert!(e.to_string().contains(rule), "{e}");
        }
    }

    #[test]
    fn dockerfile_bases_must_be_allowed() {
        let p = policy(&["alpine:3*", "ghcr.io/acme/*"]);
        assert!(check_dockerfile("FROM alpine:3.20\nRUN true\n", &p).is_ok());
        assert!(check_dockerfile(
            "from --platform=linux/amd64 ghcr.io/acme/base:1 AS build\nFROM scratch\nCOPY --from=build /x /x\nFROM build\n",
            &p
        )
        .is_ok());
        for (text, why) in [
            ("FROM ubuntu:24.04\n", "ubuntu"),
            ("FROM $BASE\n", "build argument"),
            ("RUN true\n", "no FROM"),
            ("FROM alpine:3.20 AS a\nFROM debian:12\n", "debian"),
        ] {
            let e = check_dockerfile(text, &p).unwrap_err();
            assert_eq!(e.rule, "builds");
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn capabilities_that_reach_the_host_are_never_given() {
        assert_eq!(capability("cap_chown").unwrap(), "CHOWN");
        assert!(capability("SYS_ADMIN").is_err());
        assert!(capability("all").is_err());
        assert!(capability("NET_ADMIN").is_err());
        assert!(capability("x y").is_err());
    }

    fn m(source: &str, target: &str) -> RequestedMount {
        RequestedMount {
            source: source.into(),
            target: target.into(),
            read_only: false,
        }
    }

    #[test]
    fn the_runners_mounts_become_the_jobs_volumes() {
        let folders = job_volume_folders("/home/runner/_work", "acme/app");
        let system = [
            m("/var/run/docker.sock", "/var/run/docker.sock"),
            m("/home/runner/_work", "/__w"),
            m("/home/runner/externals", "/__e"),
            m("/home/runner/_work/_temp", "/__w/_temp"),
            m("/home/runner/_work/_actions", "/__w/_actions"),
            m("/home/runner/_work/_tool", "/__w/_tool"),
            m("/home/runner/_work/_temp/_github_home", "/github/home"),
            m(
                "/home/runner/_work/_temp/_github_workflow",
                "/github/workflow",
            ),
        ];
        let mounts = translate_mounts(&system, true, &folders, "/home/runner/externals").unwrap();
        let got: Vec<(MountSource, &str)> = mounts
            .iter()
            .map(|m| (m.source.clone(), m.target.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (MountSource::JobVolume("work"), "/__w"),
                (MountSource::Externals, "/__e"),
                (MountSource::JobVolume("temp"), "/__w/_temp"),
                (MountSource::JobVolume("home"), "/github/home"),
                (MountSource::JobVolume("workflow"), "/github/workflow"),
                // Nested as in the worker.
                (MountSource::JobVolume("home"), "/__w/_temp/_github_home"),
                (
                    MountSource::JobVolume("workflow"),
                    "/__w/_temp/_github_workflow"
                ),
                (
                    MountSource::JobVolume("file-commands"),
                    "/__w/_temp/_runner_file_commands"
                ),
                (MountSource::JobVolume("workspace"), "/__w/app/app"),
            ]
        );
        assert!(
            mounts
                .iter()
                .find(|m| m.target == "/__e")
                .unwrap()
                .read_only
        );

        let action = [
            m("/home/runner/_work/app/app", "/github/workspace"),
            m(
                "/home/runner/_work/_temp/_runner_file_commands",
                "/github/file_commands",
            ),
        ];
        let mounts = translate_mounts(&action, true, &folders, "/home/runner/externals").unwrap();
        assert_eq!(mounts[0].source, MountSource::JobVolume("workspace"));
        assert_eq!(mounts[1].source, MountSource::JobVolume("file-commands"));
    }

    #[test]
    fn host_paths_and_the_socket_are_refused() {
        let folders = job_volume_folders("/home/runner/_work", "acme/app");
        for (mount, rule) in [
            (m("/etc", "/host-etc"), "host-mounts"),
            (m("/home/runner/_work/../../etc", "/x"), "host-mounts"),
            (m("/home/runner/_work/_tool", "/elsewhere"), "host-mounts"),
            (
                m("/var/run/docker.sock", "/var/run/docker.sock"),
                "docker-socket",
            ),
            (m("cache", "relative"), "mounts"),
        ] {
            let e = translate_mounts(
                std::slice::from_ref(&mount),
                false,
                &folders,
                "/home/runner/externals",
            )
            .unwrap_err();
            assert_eq!(e.rule, rule, "{mount:?}: {e}");
        }
        let named = translate_mounts(&[m("cache", "/cache")], false, &folders, "/e").unwrap();
        assert_eq!(named[0].source, MountSource::UserVolume("cache".into()));
    }
}
