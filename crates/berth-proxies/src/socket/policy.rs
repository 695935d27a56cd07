//! The socket proxy's policy: which Docker API calls are allowed, and what a
//! create body may ask for. Loaded from TOML; [`Policy::default`] is the
//! built-in least-privilege policy, and `deploy/socket-proxy.policy.toml`
//! is the same policy written out (a test keeps them equal).
//!
//! # Format
//!
//! ```toml
//! managed_label = "berth.managed=true"
//!
//! [limits]
//! max_body_bytes = 1048576       # JSON request bodies (creates, exec, connect)
//! max_build_context_bytes = 268435456 # a build's context (tar), streamed
//! managed_cache_seconds = 5      # how long an inspected object is trusted
//! min_api_version = "1.24"       # versioned requests below this are denied
//!
//! [container_create]             # the body policy of rules with body = "container_create"
//! allow_host_network = false
//! allowed_bind_sources = []      # host paths (exact) that Binds/Mounts may name
//! allowed_capabilities = ["CHOWN", …]
//! allowed_security_opts = []     # beyond the no-new-privileges forms
//! allowed_sysctls = []
//! allowed_runtimes = ["runc"]
//! allowed_log_drivers = ["json-file", "local", "journald"]
//! require_drop_all_capabilities = true
//! require_no_new_privileges = true
//!
//! [network_create]               # the body policy of rules with body = "network_create"
//! allowed_drivers = ["bridge"]
//! allowed_options = [ … ]
//!
//! [volume_create]                # the body policy of rules with body = "volume_create"
//! allowed_tmpfs_options = ["size", "uid", "gid", "mode", "nr_inodes"]
//!
//! [image_build]                  # the query policy of rules with body = "image_build"
//! allowed_network_modes = ["default", "bridge", "none"]
//! allowed_tag_prefixes = ["berth-job/"]
//!
//! [[rule]]                       # one per allowed call; first match wins
//! name = "container_start"
//! methods = ["POST"]
//! path = "/containers/{id}/start" # literal segments, {x} = one ID/name segment,
//!                                 # {x*} = one or more image-reference segments
//! query = ["detachKeys"]          # the parameters it may carry (others are denied)
//! require_query = []              # parameters it must carry
//! body = "none"                   # none | container_create | network_create |
//!                                 # volume_create | exec_create | exec_start |
//!                                 # network_connect | network_disconnect | image_build
//! target = "managed_container"    # none | managed_container | managed_network |
//!                                 # managed_volume | managed_exec | managed_image
//! upgrade = false                 # the HTTP upgrade of attach and exec start
//! label_filter = false            # `filters` must hold label=<managed_label>
//! ```
//!
//! Every section may be left out and then takes the built-in values; a file
//! without any `[[rule]]` uses the built-in rule table (write `rule = []` to
//! allow nothing). Unknown keys are errors.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::target::{ApiVersion, is_path_char};

/// A whole policy. See the [module docs](self) for the TOML format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `KEY=VALUE`: the label berth puts on every container, network,
    /// volume and built image it creates. Creates and builds must carry it,
    /// calls scoped to such an object (an exec: to its container) are
    /// allowed only on objects that carry it, and list/events calls with
    /// `label_filter` must filter on it.
    #[serde(default = "default_managed_label")]
    pub managed_label: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub container_create: ContainerCreatePolicy,
    #[serde(default)]
    pub network_create: NetworkCreatePolicy,
    #[serde(default)]
    pub volume_create: VolumeCreatePolicy,
    #[serde(default)]
    pub image_build: ImageBuildPolicy,
    /// The allowed calls; a request no rule matches is denied.
    #[serde(rename = "rule", default = "default_rules")]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest JSON request body accepted (bytes).
    pub max_body_bytes: u64,
    /// Largest build context (`POST /build`'s tar body) accepted (bytes).
    /// It is streamed to the engine, not held in memory.
    pub max_build_context_bytes: u64,
    /// How long the result of a managed-label inspect is reused (seconds;
    /// 0 disables the cache).
    pub managed_cache_seconds: u64,
    /// Versioned requests (`/vX.Y/…`) below this API version are denied.
    /// Docker still honours a request body on `start` before API 1.24 (a
    /// whole HostConfig, privileged included), so never set it lower.
    pub min_api_version: String,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_build_context_bytes: 256 * 1024 * 1024,
            managed_cache_seconds: 5,
            min_api_version: "1.24".into(),
        }
    }
}

/// What a container-create body may ask for. See [`super::body`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerCreatePolicy {
    /// `NetworkMode = "host"` (berth pools may ask for it).
    pub allow_host_network: bool,
    /// Host paths that `Binds` and bind `Mounts` may name (exact match).
    pub allowed_bind_sources: Vec<String>,
    /// Capabilities `CapAdd` may name (without `CAP_`, any case).
    pub allowed_capabilities: Vec<String>,
    /// `SecurityOpt` entries allowed besides `no-new-privileges[:=]true`.
    pub allowed_security_opts: Vec<String>,
    /// `Sysctls` keys allowed.
    pub allowed_sysctls: Vec<String>,
    /// `Runtime` values allowed (an empty `Runtime` is the engine's default).
    pub allowed_runtimes: Vec<String>,
    /// `LogConfig.Type` values allowed (empty is the engine's default).
    pub allowed_log_drivers: Vec<String>,
    /// `CapDrop` must hold `ALL`.
    pub require_drop_all_capabilities: bool,
    /// `SecurityOpt` must hold `no-new-privileges` (`:true`, `=true`).
    pub require_no_new_privileges: bool,
}

/// Docker's default capability set: adding these back after dropping `ALL`
/// never gives a container more than a default `docker run` has.
pub const DOCKER_DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

impl Default for ContainerCreatePolicy {
    fn default() -> Self {
        ContainerCreatePolicy {
            allow_host_network: false,
            allowed_bind_sources: Vec::new(),
            allowed_capabilities: DOCKER_DEFAULT_CAPABILITIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            allowed_security_opts: Vec::new(),
            allowed_sysctls: Vec::new(),
            allowed_runtimes: vec!["runc".into()],
            allowed_log_drivers: vec!["json-file".into(), "local".into(), "journald".into()],
            require_drop_all_capabilities: true,
            require_no_new_privileges: true,
        }
    }
}

/// What a network-create body may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkCreatePolicy {
    /// `Driver` values allowed (an empty `Driver` is `bridge`).
    pub allowed_drivers: Vec<String>,
    /// `Options` keys allowed.
    pub allowed_options: Vec<String>,
}

impl Default for NetworkCreatePolicy {
    fn default() -> Self {
        NetworkCreatePolicy {
            allowed_drivers: vec!["bridge".into()],
            allowed_options: vec![
                "com.docker.network.bridge.enable_icc".into(),
                "com.docker.network.bridge.enable_ip_masquerade".into(),
                "com.docker.network.driver.mtu".into(),
            ],
        }
    }
}

/// What a volume-create body may ask for. See [`super::body`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumeCreatePolicy {
    /// The mount options (`key=value`, without the value) that `o` of a
    /// tmpfs volume may hold. Empty: tmpfs volumes only without `o`.
    pub allowed_tmpfs_options: Vec<String>,
}

impl Default for VolumeCreatePolicy {
    fn default() -> Self {
        VolumeCreatePolicy {
            allowed_tmpfs_options: ["size", "uid", "gid", "mode", "nr_inodes"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// What the query of an image build may ask for (the parameters themselves
/// are the rule's `query`). See [`super::body`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageBuildPolicy {
    /// `networkmode` values allowed (an empty one is `default`).
    pub allowed_network_modes: Vec<String>,
    /// Repository prefixes (each ending in `/`) that the tag `t` must start
    /// with. Empty: builds may not tag.
    pub allowed_tag_prefixes: Vec<String>,
}

impl Default for ImageBuildPolicy {
    fn default() -> Self {
        ImageBuildPolicy {
            allowed_network_modes: vec!["default".into(), "bridge".into(), "none".into()],
            allowed_tag_prefixes: vec!["berth-job/".into()],
        }
    }
}

/// What a rule does with the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyKind {
    /// The request must have no body.
    #[default]
    None,
    /// A container-create body, checked against `[container_create]`.
    ContainerCreate,
    /// A network-create body, checked against `[network_create]`.
    NetworkCreate,
    /// A volume-create body, checked against `[volume_create]`.
    VolumeCreate,
    /// An exec-create body: anything but `Privileged`.
    ExecCreate,
    /// An exec-start body (`Detach`, `Tty`, `ConsoleSize`).
    ExecStart,
    /// A network-connect body: a managed `Container`, a plain endpoint.
    NetworkConnect,
    /// A network-disconnect body: a managed `Container`.
    NetworkDisconnect,
    /// A build context (a tar, streamed up to `max_build_context_bytes`);
    /// the query is checked against `[image_build]`.
    ImageBuild,
}

impl BodyKind {
    /// Whether the body is streamed to the engine rather than read and
    /// checked (a build context).
    pub fn is_streamed(self) -> bool {
        self == BodyKind::ImageBuild
    }
}

/// What object a rule's `{…}` placeholder names, and so must be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    #[default]
    None,
    /// A container labelled with the managed label.
    ManagedContainer,
    /// A network labelled with the managed label.
    ManagedNetwork,
    /// A volume labelled with the managed label.
    ManagedVolume,
    /// An exec instance whose container is labelled with the managed label.
    ManagedExec,
    /// An image labelled with the managed label (the `{x*}` placeholder).
    ManagedImage,
}

impl TargetKind {
    /// The object's name in messages and metrics.
    pub fn object(self) -> &'static str {
        match self {
            TargetKind::None | TargetKind::ManagedContainer => "container",
            TargetKind::ManagedNetwork => "network",
            TargetKind::ManagedVolume => "volume",
            TargetKind::ManagedExec => "exec",
            TargetKind::ManagedImage => "image",
        }
    }
}

/// One allowed call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Names the rule in logs, metrics and denials.
    pub name: String,
    pub methods: Vec<String>,
    /// The path without the version prefix; see the module docs.
    pub path: String,
    /// Query parameters the call may carry.
    #[serde(default)]
    pub query: Vec<String>,
    /// Query parameters the call must carry (non-empty).
    #[serde(default)]
    pub require_query: Vec<String>,
    #[serde(default)]
    pub body: BodyKind,
    #[serde(default)]
    pub target: TargetKind,
    /// The call is an HTTP upgrade (`Upgrade: tcp`), as attach and exec
    /// start are.
    #[serde(default)]
    pub upgrade: bool,
    /// The `filters` parameter must filter on the managed label.
    #[serde(default)]
    pub label_filter: bool,
}

fn default_managed_label() -> String {
    "berth.managed=true".into()
}

#[allow(clippy::too_many_arguments)]
fn rule(
    name: &str,
    methods: &[&str],
    path: &str,
    query: &[&str],
    require_query: &[&str],
    body: BodyKind,
    target: TargetKind,
    upgrade: bool,
    label_filter: bool,
) -> Rule {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    Rule {
        name: name.into(),
        methods: strings(methods),
        path: path.into(),
        query: strings(query),
        require_query: strings(require_query),
        body,
        target,
        upgrade,
        label_filter,
    }
}

fn simple(name: &str, methods: &[&str], path: &str, query: &[&str]) -> Rule {
    rule(
        name,
        methods,
        path,
        query,
        &[],
        BodyKind::None,
        TargetKind::None,
        false,
        false,
    )
}

fn container(name: &str, method: &str, path: &str, query: &[&str]) -> Rule {
    rule(
        name,
        &[method],
        path,
        query,
        &[],
        BodyKind::None,
        TargetKind::ManagedContainer,
        false,
        false,
    )
}

/// The built-in rule table: exactly the calls berth's Docker controller
/// makes, plus read-only calls an operator's tooling expects.
pub fn default_rules() -> Vec<Rule> {
    use BodyKind as B;
    use TargetKind as T;
    vec![
        // Engine: health, version negotiation, capacity.
        simple("ping", &["GET", "HEAD"], "/_ping", &[]),
        simple("version", &["GET"], "/version", &[]),
        simple("info", &["GET"], "/info", &[]),
        // berth's watcher: start/die/oom/destroy of managed containers.
        rule(
            "events",
            &["GET"],
            "/events",
            &["since", "until", "filters"],
            &[],
            B::None,
            T::None,
            false,
            true,
        ),
        // Images: read, and pull by reference. `fromSrc` (import) is not a
        // pull: it creates an image from arbitrary bytes and is denied.
        simple(
            "image_list",
            &["GET"],
            "/images/json",
            &["all", "filters", "digests", "shared-size", "manifests"],
        ),
        simple("image_inspect", &["GET"], "/images/{name*}/json", &[]),
        rule(
            "image_pull",
            &["POST"],
            "/images/create",
            &["fromImage", "tag", "platform"],
            &["fromImage"],
            B::None,
            T::None,
            false,
            false,
        ),
        // Images built for container jobs (Dockerfile actions): the build
        // (see `[image_build]`), and their removal, only of managed images
        // and forwarded by image ID.
        rule(
            "image_build",
            &["POST"],
            "/build",
            &[
                "t",
                "dockerfile",
                "labels",
                "buildargs",
                "target",
                "platform",
                "pull",
                "q",
                "nocache",
                "rm",
                "forcerm",
                "networkmode",
                "memory",
                "memswap",
                "cpushares",
                "cpusetcpus",
                "cpuperiod",
                "cpuquota",
                "shmsize",
                "version",
            ],
            &["labels"],
            B::ImageBuild,
            T::None,
            false,
            false,
        ),
        rule(
            "image_remove",
            &["DELETE"],
            "/images/{name*}",
            &["force", "noprune"],
            &[],
            B::None,
            T::ManagedImage,
            false,
            false,
        ),
        // Containers: berth's reconciler lists its own.
        rule(
            "container_list",
            &["GET"],
            "/containers/json",
            &["all", "limit", "size", "filters"],
            &[],
            B::None,
            T::None,
            false,
            true,
        ),
        rule(
            "container_create",
            &["POST"],
            "/containers/create",
            &["name", "platform"],
            &[],
            B::ContainerCreate,
            T::None,
            false,
            false,
        ),
        container(
            "container_inspect",
            "GET",
            "/containers/{id}/json",
            &["size"],
        ),
        container(
            "container_logs",
            "GET",
            "/containers/{id}/logs",
            &[
                "follow",
                "stdout",
                "stderr",
                "since",
                "until",
                "timestamps",
                "tail",
                "details",
            ],
        ),
        container(
            "container_start",
            "POST",
            "/containers/{id}/start",
            &["detachKeys"],
        ),
        // The JIT config reaches the worker's stdin over this stream.
        rule(
            "container_attach",
            &["POST"],
            "/containers/{id}/attach",
            &["stream", "stdin", "stdout", "stderr", "logs", "detachKeys"],
            &[],
            B::None,
            T::ManagedContainer,
            true,
            false,
        ),
        container(
            "container_wait",
            "POST",
            "/containers/{id}/wait",
            &["condition"],
        ),
        container(
            "container_stop",
            "POST",
            "/containers/{id}/stop",
            &["t", "signal"],
        ),
        container(
            "container_kill",
            "POST",
            "/containers/{id}/kill",
            &["signal"],
        ),
        container(
            "container_remove",
            "DELETE",
            "/containers/{id}",
            &["v", "force", "link"],
        ),
        // Exec in container jobs' containers (the runner's container hooks):
        // create on a managed container, then start (an upgrade, like
        // attach), inspect (the exit code) and resize the exec, each only
        // when the exec's container is managed.
        rule(
            "exec_create",
            &["POST"],
            "/containers/{id}/exec",
            &[],
            &[],
            B::ExecCreate,
            T::ManagedContainer,
            false,
            false,
        ),
        rule(
            "exec_start",
            &["POST"],
            "/exec/{id}/start",
            &[],
            &[],
            B::ExecStart,
            T::ManagedExec,
            true,
            false,
        ),
        rule(
            "exec_inspect",
            &["GET"],
            "/exec/{id}/json",
            &[],
            &[],
            B::None,
            T::ManagedExec,
            false,
            false,
        ),
        rule(
            "exec_resize",
            &["POST"],
            "/exec/{id}/resize",
            &["h", "w"],
            &[],
            B::None,
            T::ManagedExec,
            false,
            false,
        ),
        // Container jobs' volumes: list, create (local or tmpfs, see
        // `[volume_create]`), inspect and remove berth's own.
        rule(
            "volume_list",
            &["GET"],
            "/volumes",
            &["filters"],
            &[],
            B::None,
            T::None,
            false,
            true,
        ),
        rule(
            "volume_create",
            &["POST"],
            "/volumes/create",
            &[],
            &[],
            B::VolumeCreate,
            T::None,
            false,
            false,
        ),
        rule(
            "volume_inspect",
            &["GET"],
            "/volumes/{name}",
            &[],
            &[],
            B::None,
            T::ManagedVolume,
            false,
            false,
        ),
        rule(
            "volume_remove",
            &["DELETE"],
            "/volumes/{name}",
            &["force"],
            &[],
            B::None,
            T::ManagedVolume,
            false,
            false,
        ),
        // berth's bridge network: find it, create it, drop a duplicate.
        simple("network_list", &["GET"], "/networks", &["filters"]),
        rule(
            "network_inspect",
            &["GET"],
            "/networks/{id}",
            &["verbose", "scope"],
            &[],
            B::None,
            T::ManagedNetwork,
            false,
            false,
        ),
        rule(
            "network_create",
            &["POST"],
            "/networks/create",
            &[],
            &[],
            B::NetworkCreate,
            T::None,
            false,
            false,
        ),
        rule(
            "network_remove",
            &["DELETE"],
            "/networks/{id}",
            &[],
            &[],
            B::None,
            T::ManagedNetwork,
            false,
            false,
        ),
        // Container jobs: a managed container joins or leaves a managed
        // (per-job) network.
        rule(
            "network_connect",
            &["POST"],
            "/networks/{id}/connect",
            &[],
            &[],
            B::NetworkConnect,
            T::ManagedNetwork,
            false,
            false,
        ),
        rule(
            "network_disconnect",
            &["POST"],
            "/networks/{id}/disconnect",
            &[],
            &[],
            B::NetworkDisconnect,
            T::ManagedNetwork,
            false,
            false,
        ),
    ]
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            managed_label: default_managed_label(),
            limits: Limits::default(),
            container_create: ContainerCreatePolicy::default(),
            network_create: NetworkCreatePolicy::default(),
            volume_create: VolumeCreatePolicy::default(),
            image_build: ImageBuildPolicy::default(),
            rules: default_rules(),
        }
    }
}

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid policy TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid policy: {0}")]
    Invalid(String),
}

impl Policy {
    /// Parses a policy from TOML and validates it.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads and validates a policy file.
    pub fn from_file(path: &std::path::Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::from_toml(&text)
    }

    /// The managed label as (key, value).
    pub fn managed(&self) -> (&str, &str) {
        self.managed_label
            .split_once('=')
            .unwrap_or((&self.managed_label, ""))
    }

    /// The minimum API version.
    pub fn min_api_version(&self) -> Result<ApiVersion, PolicyError> {
        ApiVersion::parse(&self.limits.min_api_version).ok_or_else(|| {
            PolicyError::Invalid(format!(
                "limits.min_api_version `{}` is not MAJOR.MINOR",
                self.limits.min_api_version
            ))
        })
    }

    /// Checks everything the types cannot: patterns, names, methods.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |m: String| Err(PolicyError::Invalid(m));
        let (key, value) = self.managed();
        if key.is_empty() || value.is_empty() || !self.managed_label.contains('=') {
            return invalid(format!(
                "managed_label `{}` must be KEY=VALUE",
                self.managed_label
            ));
        }
        self.min_api_version()?;
        let mut names = BTreeSet::new();
        for r in &self.rules {
            let what = format!("rule `{}`", r.name);
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return invalid(format!("{what}: a name is letters, digits, `_` and `-`"));
            }
            if !names.insert(r.name.as_str()) {
                return invalid(format!("{what} is defined twice"));
            }
            if r.methods.is_empty() {
                return invalid(format!("{what}: no methods"));
            }
            for m in &r.methods {
                if !matches!(m.as_str(), "GET" | "HEAD" | "POST" | "PUT" | "DELETE") {
                    return invalid(format!("{what}: method `{m}` is not one Docker's API uses"));
                }
            }
            let pattern = Pattern::parse(&r.path)
                .map_err(|e| PolicyError::Invalid(format!("{what}: {e}")))?;
            let has_many = pattern.0.contains(&Seg::Many);
            let has_one = pattern.0.contains(&Seg::One);
            match r.target {
                TargetKind::None => {}
                TargetKind::ManagedImage => {
                    if !has_many || has_one {
                        return invalid(format!(
                            "{what}: an image target check needs one `{{name*}}` placeholder and no `{{id}}` in the path"
                        ));
                    }
                }
                _ => {
                    if pattern.one_placeholder().is_none() || has_many {
                        return invalid(format!(
                            "{what}: a target check needs exactly one `{{id}}` placeholder in the path"
                        ));
                    }
                }
            }
            for q in r.require_query.iter() {
                if !r.query.contains(q) {
                    return invalid(format!(
                        "{what}: required parameter `{q}` is not in `query`"
                    ));
                }
            }
            if r.label_filter && !r.query.iter().any(|q| q == "filters") {
                return invalid(format!("{what}: label_filter needs `filters` in `query`"));
            }
            if r.upgrade && !matches!(r.body, BodyKind::None | BodyKind::ExecStart) {
                return invalid(format!(
                    "{what}: an upgrade rule takes no body (but exec_start's)"
                ));
            }
        }
        for o in &self.volume_create.allowed_tmpfs_options {
            if o.is_empty()
                || !o
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return invalid(format!(
                    "volume_create.allowed_tmpfs_options: `{o}` is not an option name"
                ));
            }
        }
        for p in &self.image_build.allowed_tag_prefixes {
            // Without the `/`, a prefix `berth` would also allow
            // `berth.example.com/…` (a registry) and `berth-worker` (another
            // repository).
            let chars_ok = p.chars().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, '.' | '_' | '-' | '/' | ':')
            });
            if p.len() < 2 || !p.ends_with('/') || p.starts_with('/') || !chars_ok {
                return invalid(format!(
                    "image_build.allowed_tag_prefixes: `{p}` must be a repository path ending in `/`"
                ));
            }
        }
        for m in &self.image_build.allowed_network_modes {
            if m.is_empty() {
                return invalid("image_build.allowed_network_modes: an empty mode".into());
            }
        }
        Ok(())
    }
}

/// One segment of a rule's path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Literal(String),
    /// `{x}`: one container/network/exec ID or container/network/volume name.
    One,
    /// `{x*}`: one or more segments of an image reference.
    Many,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern(pub(crate) Vec<Seg>);

/// Docker's object name rule (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), which IDs
/// also satisfy.
pub(crate) fn is_object_ref(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 255
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A segment of an image reference: `[a-zA-Z0-9][a-zA-Z0-9_.:@-]*`.
fn is_image_ref_segment(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '@'))
}

impl Pattern {
    pub(crate) fn parse(path: &str) -> Result<Pattern, String> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(format!("path `{path}` must start with `/`"));
        };
        let mut segs = Vec::new();
        for s in rest.split('/') {
            let seg = if let Some(inner) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if inner.ends_with('*') {
                    Seg::Many
                } else {
                    Seg::One
                }
            } else if !s.is_empty() && s.chars().all(is_path_char) && s != "." && s != ".." {
                Seg::Literal(s.to_owned())
            } else {
                return Err(format!("path `{path}`: `{s}` is not a valid segment"));
            };
            segs.push(seg);
        }
        if segs.iter().filter(|s| **s == Seg::Many).count() > 1 {
            return Err(format!("path `{path}`: at most one `{{x*}}`"));
        }
        Ok(Pattern(segs))
    }

    /// The index of the only `{x}` placeholder, if there is exactly one.
    pub(crate) fn one_placeholder(&self) -> Option<usize> {
        let mut found = self.0.iter().enumerate().filter(|(_, s)| **s == Seg::One);
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// The canonical segments the placeholder of a target rule covers in
    /// `len` matched segments: the one `{x}`, or the `{x*}` run.
    pub(crate) fn placeholder_range(&self, len: usize) -> Option<std::ops::Range<usize>> {
        if let Some(i) = self.0.iter().position(|s| *s == Seg::Many) {
            let after = self.0.len() - i - 1;
            return (len >= self.0.len()).then(|| i..len - after);
        }
        self.one_placeholder().map(|i| i..i + 1)
    }

    /// Whether the canonical segments match.
    pub(crate) fn matches(&self, segments: &[String]) -> bool {
        let one = |p: &Seg, s: &str| match p {
            Seg::Literal(l) => l == s,
            Seg::One => is_object_ref(s),
            Seg::Many => false,
        };
        match self.0.iter().position(|s| *s == Seg::Many) {
            None => {
                self.0.len() == segments.len()
                    && self.0.iter().zip(segments).all(|(p, s)| one(p, s))
            }
            Some(i) => {
                let after = self.0.len() - i - 1;
                if segments.len() < self.0.len() {
                    return false;
                }
                let middle_end = segments.len() - after;
                self.0[..i]
                    .iter()
                    .zip(&segments[..i])
                    .all(|(p, s)| one(p, s))
                    && self.0[i + 1..]
                        .iter()
                        .zip(&segments[middle_end..])
                        .all(|(p, s)| one(p, s))
                    && segments[i..middle_end]
                        .iter()
                        .all(|s| is_image_ref_segment(s))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn default_policy_is_valid() {
        Policy::default().validate().unwrap();
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("/images/{name*}/json").unwrap();
        assert!(p.matches(&segs("/images/busybox/json")));
        assert!(p.matches(&segs("/images/ghcr.io/acme/worker:1@sha256:ab/json")));
        assert!(!p.matches(&segs("/images/json")));
        assert!(!p.matches(&segs("/images/busybox/history")));
        let p = Pattern::parse("/containers/{id}/start").unwrap();
        assert!(p.matches(&segs("/containers/berth-1/start")));
        assert!(!p.matches(&segs("/containers/-x/start")));
        assert!(!p.matches(&segs("/containers/a:b/start")));
        assert!(!p.matches(&segs("/containers/a/b/start")));
        assert_eq!(p.one_placeholder(), Some(1));
        assert!(Pattern::parse("containers").is_err());
        assert!(Pattern::parse("/a/{x*}/{y*}").is_err());
        assert!(Pattern::parse("/a//b").is_err());
        assert!(Pattern::parse("/a/../b").is_err());
        let p = Pattern::parse("/images/{name*}").unwrap();
        assert_eq!(p.placeholder_range(2), Some(1..2));
        assert_eq!(p.placeholder_range(4), Some(1..4));
        assert_eq!(p.placeholder_range(1), None);
        let p = Pattern::parse("/images/{name*}/json").unwrap();
        assert_eq!(p.placeholder_range(5), Some(1..4));
        let p = Pattern::parse("/exec/{id}/start").unwrap();
        assert_eq!(p.placeholder_range(3), Some(1..2));
    }

    #[test]
    fn validation() {
        let mut p = Policy::default();
        p.rules[0].methods = vec!["get".into()];
        assert!(p.validate().is_err());
        let mut p = Policy::default();
        p.rules.push(p.rules[0].clone());
        assert!(p.validate().is_err());
        let p = Policy {
            managed_label: "berth.managed".into(),
            ..Policy::default()
        };
        assert!(p.validate().is_err());
        let mut p = Policy::default();
        p.limits.min_api_version = "one".into();
        assert!(p.validate().is_err());
        assert!(Policy::from_toml("unknown = 1").is_err());
        assert!(Policy::from_toml("[limits]\nmax_body = 1").is_err());
    }

    #[test]
    fn validation_of_the_container_job_parts() {
        let invalid = |p: &Policy| p.validate().unwrap_err().to_string();
        for bad in ["berth", "berth-job", "/berth/", "Berth/", "berth@x/", "/"] {
            let mut p = Policy::default();
            p.image_build.allowed_tag_prefixes = vec![bad.into()];
            assert!(
                invalid(&p).contains("must be a repository path ending in `/`"),
                "{bad}"
            );
        }
        let mut p = Policy::default();
        p.image_build.allowed_tag_prefixes = vec!["registry.local:5000/berth/".into()];
        p.validate().unwrap();
        for bad in ["size=1m", "", "a,b", "Size"] {
            let mut p = Policy::default();
            p.volume_create.allowed_tmpfs_options = vec![bad.into()];
            assert!(invalid(&p).contains("is not an option name"), "{bad}");
        }
        let mut p = Policy::default();
        p.image_build.allowed_network_modes = vec![String::new()];
        assert!(invalid(&p).contains("an empty mode"));

        let by_name = |name: &str| {
            default_rules()
                .into_iter()
                .find(|r| r.name == name)
                .unwrap()
        };
        let with_rules = |rules: Vec<Rule>| Policy {
            rules,
            ..Policy::default()
        };
        let p = with_rules(vec![Rule {
            path: "/images/{id}".into(),
            ..by_name("image_remove")
        }]);
        assert!(invalid(&p).contains("an image target check needs one `{name*}`"));
        let p = with_rules(vec![Rule {
            path: "/volumes/{name*}".into(),
            ..by_name("volume_remove")
        }]);
        assert!(invalid(&p).contains("exactly one `{id}`"));
        let p = with_rules(vec![Rule {
            body: BodyKind::ContainerCreate,
            ..by_name("exec_start")
        }]);
        assert!(invalid(&p).contains("an upgrade rule takes no body"));
        with_rules(vec![by_name("exec_start"), by_name("container_attach")])
            .validate()
            .unwrap();

        let p = Policy::from_toml(
            "[volume_create]\nallowed_tmpfs_options = []\n[image_build]\nallowed_tag_prefixes = []\n",
        )
        .unwrap();
        assert!(p.volume_create.allowed_tmpfs_options.is_empty());
        assert_eq!(
            p.image_build.allowed_network_modes,
            ["default", "bridge", "none"]
        );
        assert!(Policy::from_toml("[image_build]\nallow_remote = true\n").is_err());
        assert!(
            Policy::from_toml(
                "[[rule]]\nname = \"x\"\nmethods = [\"GET\"]\npath = \"/x\"\nbody = \"build\"\n"
            )
            .is_err()
        );
    }

    #[test]
    fn sections_default_and_rules_default() {
        let p = Policy::from_toml("[container_create]\nallow_host_network = true\n").unwrap();
        assert!(p.container_create.allow_host_network);
        assert_eq!(p.rules, default_rules());
        let p = Policy::from_toml("rule = []\n").unwrap();
        assert!(p.rules.is_empty());
    }
}
