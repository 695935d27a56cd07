//! Request-body policy: what a container, network or volume create, an exec,
//! a network connect or disconnect, and a build's query may ask for.
//!
//! A Docker client that may create containers may otherwise own the host:
//! one `"Privileged": true`, one bind mount of `/`, one `"PidMode": "host"`
//! is enough. So a create body is read strictly ([`super::json`]) and every
//! field is either known to be harmless, checked, or refused: an unknown
//! field (say, one a later Docker release adds) is refused rather than
//! waved through, so the policy fails closed.
//!
//! # Container create (`POST /containers/create`)
//!
//! * The top level holds the container's `Config` fields plus `HostConfig`
//!   and `NetworkingConfig`. Docker also reads **`HostConfig` fields written
//!   at the top level** (a deprecated form its decoder still honours when
//!   `HostConfig` is absent), so any such field there is refused.
//! * `Labels` must hold the managed label (`berth.managed=true`): every
//!   container made through the proxy is one berth owns, and only those
//!   can later be started, attached, inspected or removed through it.
//! * `HostConfig`:
//!   * `Privileged` must not be true; `Capabilities` (the whole set,
//!     API 1.40+) must not be set; `CapAdd` only names capabilities in the
//!     allowlist (Docker's default set) and never `ALL`; `CapDrop` must hold
//!     `ALL` (switch `require_drop_all_capabilities`).
//!   * Namespaces: `PidMode`, `UTSMode` and `UsernsMode` must be empty
//!     (`host` shares the host's, `container:…` another container's);
//!     `IpcMode` may be empty, `private`, `none` or `shareable`;
//!     `CgroupnsMode` empty or `private`; `Cgroup` empty; `NetworkMode` not
//!     `container:…`, and not `host` unless `allow_host_network`.
//!   * Host paths and devices: `Binds` and bind `Mounts` only from
//!     `allowed_bind_sources` (empty by default); named volumes (`Binds`
//!     entries `NAME:TARGET[:ro|rw]`, `volume` mounts with a `Source`) are
//!     returned as [`BodyRef`]s, which the server must find existing,
//!     managed and plain (`local`, no options or a tmpfs) before it forwards
//!     the create; a `volume` mount must not carry
//!     `VolumeOptions.DriverConfig` (an inline driver binds any host path
//!     when Docker creates the volume); `tmpfs` mounts are fine; a mount
//!     holds only the API 1.41 fields. Anonymous volumes (the image's, or
//!     `Volumes`) stay allowed: `local`, without options. `VolumesFrom`,
//!     `VolumeDriver`, `Devices`, `DeviceRequests`, `DeviceCgroupRules`
//!     must be empty.
//!   * Confinement: `SecurityOpt` may hold only `no-new-privileges`
//!     (`:true`/`=true`) and the entries in `allowed_security_opts`, so
//!     `seccomp=unconfined`, `apparmor=unconfined`, `label=disable`, a
//!     custom seccomp profile and `no-new-privileges=false` are refused; and
//!     it must hold `no-new-privileges` (switch `require_no_new_privileges`).
//!     `MaskedPaths` and `ReadonlyPaths` must not be set (an empty list
//!     unmasks `/proc/kcore` and friends).
//!   * `CgroupParent` must be empty (it would move the container out of
//!     Docker's cgroup tree and its limits); `Sysctls` keys only from
//!     `allowed_sysctls`; `Runtime` only from `allowed_runtimes`;
//!     `OomKillDisable` not true; `OomScoreAdj` not negative; no real-time
//!     CPU time; `LogConfig.Type` only from `allowed_log_drivers` (berth
//!     reads the logs back); no `PortBindings`, `PublishAllPorts` or
//!     `Links`.
//!   * Resource limits, DNS, extra hosts, tmpfs, restart policy, init and
//!     the like are harmless and pass.
//! * `NetworkingConfig.EndpointsConfig` must not name `host` (unless
//!   allowed) nor a `container:…` network, and each endpoint is plain: no
//!   `Links`, no `DriverOpts`.
//!
//! # Network create (`POST /networks/create`)
//!
//! `Labels` must hold the managed label; `Driver` only from
//! `allowed_drivers` (`bridge`); `Options` keys only from `allowed_options`
//! (a bridge's `com.docker.network.bridge.name` could adopt an existing
//! host bridge); `IPAM.Driver` only `default`; no `Ingress`, `ConfigOnly`,
//! `ConfigFrom` or `Scope`.
//!
//! # Container jobs
//!
//! * Volume create: managed, the `local` driver, and no `DriverOpts` or
//!   exactly a tmpfs (`type=tmpfs`, `device=tmpfs`, `o` of
//!   `allowed_tmpfs_options`): the local driver's other options mount a
//!   host path, a device or a network share.
//! * Exec create: not `Privileged` (an exec otherwise keeps its container's
//!   confinement); exec start: how to attach, nothing else.
//! * Network connect/disconnect: `Container` is a [`BodyRef`] the server
//!   checks and rewrites to the full ID; the endpoint is plain.
//! * Build ([`check_image_build`]): the query's `labels` hold the managed
//!   label, `networkmode` is allowed, `version` is the classic builder, `t`
//!   lies under an allowed prefix. The tar body is streamed, not read.

use super::json::{Fields, Json, go_fold};
use super::policy::{
    ContainerCreatePolicy, NetworkCreatePolicy, Policy, TargetKind, is_object_ref,
};
use super::target::Target;

/// An object a body names, which the server must find managed (through
/// the engine) before the call is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRef {
    /// [`TargetKind::ManagedVolume`] or [`TargetKind::ManagedContainer`].
    pub kind: TargetKind,
    /// The name or ID as the body gives it (a valid object reference).
    pub reference: String,
    /// Where the body names it, for messages.
    pub field: String,
    /// The top-level field to set to the full ID the check found, so the
    /// engine acts on exactly the object that was checked.
    pub rewrite: Option<&'static str>,
    /// A missing object is a denial (a volume mount: Docker would create
    /// the volume); otherwise the engine's own 404 is the answer.
    pub must_exist: bool,
}

impl BodyRef {
    fn volume(name: &str, field: String) -> BodyRef {
        BodyRef {
            kind: TargetKind::ManagedVolume,
            reference: name.to_owned(),
            field,
            rewrite: None,
            must_exist: true,
        }
    }
}

/// Docker's volume name rule (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`).
pub(crate) fn is_volume_name(s: &str) -> bool {
    s.len() >= 2 && is_object_ref(s)
}

/// `Config` fields (and the wrapper's own) that may stand at the top level
/// of a create body.
const TOP_LEVEL_FIELDS: &[&str] = &[
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "Shell",
    "HostConfig",
    "NetworkingConfig",
];

/// `HostConfig` fields that grant nothing beyond the container itself.
const HARMLESS_HOST_FIELDS: &[&str] = &[
    // Limits (they only ever restrict).
    "CpuShares",
    "Memory",
    "NanoCpus",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CpuPeriod",
    "CpuQuota",
    "CpusetCpus",
    "CpusetMems",
    "KernelMemory",
    "KernelMemoryTCP",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "PidsLimit",
    "Ulimits",
    "CpuCount",
    "CpuPercent",
    "IOMaximumIOps",
    "IOMaximumBandwidth",
    "ShmSize",
    "StorageOpt",
    // Name resolution.
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    // Lifecycle and process.
    "RestartPolicy",
    "AutoRemove",
    "Init",
    "ReadonlyRootfs",
    "Tmpfs",
    "GroupAdd",
    "ConsoleSize",
    "Isolation",
    "ContainerIDFile",
    "CapDrop",
];

/// `HostConfig` fields this module checks.
const CHECKED_HOST_FIELDS: &[&str] = &[
    "Privileged",
    "Capabilities",
    "CapAdd",
    "PidMode",
    "IpcMode",
    "UTSMode",
    "UsernsMode",
    "CgroupnsMode",
    "Cgroup",
    "NetworkMode",
    "Binds",
    "Mounts",
    "VolumesFrom",
    "VolumeDriver",
    "Devices",
    "DeviceRequests",
    "DeviceCgroupRules",
    "SecurityOpt",
    "MaskedPaths",
    "ReadonlyPaths",
    "CgroupParent",
    "Sysctls",
    "Runtime",
    "OomKillDisable",
    "OomScoreAdj",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "LogConfig",
    "PortBindings",
    "PublishAllPorts",
    "Links",
];

/// Every `HostConfig` field name Docker knows (API 1.41 and later), for
/// the top-level check.
fn is_host_field(folded: &str) -> bool {
    HARMLESS_HOST_FIELDS
        .iter()
        .chain(CHECKED_HOST_FIELDS)
        .chain(&["Annotations", "Resources"])
        .any(|f| go_fold(f) == folded)
}

fn listed(list: &[&str], folded: &str) -> bool {
    list.iter().any(|f| go_fold(f) == folded)
}

type Check = Result<(), String>;

fn string_of<'a>(v: &'a Json, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{what} must be a string, not {}", v.kind()))
}

fn strings_of<'a>(v: &'a Json, what: &str) -> Result<Vec<&'a str>, String> {
    let items = v
        .as_array()
        .ok_or_else(|| format!("{what} must be an array, not {}", v.kind()))?;
    items
        .iter()
        .map(|i| string_of(i, &format!("each entry of {what}")))
        .collect()
}

fn is_true(v: Option<&Json>, what: &str) -> Result<bool, String> {
    match v {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("{what} must be a boolean, not {}", v.kind())),
    }
}

/// A list or map field that must be absent, null or empty.
fn must_be_empty(v: Option<&Json>, what: &str) -> Check {
    let empty = match v {
        None => true,
        Some(Json::Array(a)) => a.is_empty(),
        Some(Json::Object(o)) => o.is_empty(),
        Some(Json::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    if empty {
        Ok(())
    } else {
        Err(format!("{what} is not allowed"))
    }
}

fn number(v: Option<&Json>, what: &str) -> Result<f64, String> {
    match v {
        None => Ok(0.0),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("{what} must be a number, not {}", v.kind())),
    }
}

/// The managed label must be among `labels`.
fn check_managed_label(labels: Option<&Json>, policy: &Policy, what: &str) -> Check {
    let (key, value) = policy.managed();
    let missing = || format!("{what} must hold the label {}", policy.managed_label);
    let labels = labels.ok_or_else(missing)?;
    let object = labels
        .as_object()
        .ok_or_else(|| format!("{what} must be an object, not {}", labels.kind()))?;
    for (_, v) in object {
        string_of(v, &format!("each value of {what}"))?;
    }
    match labels.member(key).and_then(Json::as_str) {
        Some(v) if v == value => Ok(()),
        _ => Err(missing()),
    }
}

/// Checks a container-create body; returns the volumes it mounts, which
/// must exist and be managed.
pub fn check_container_create(body: &Json, policy: &Policy) -> Result<Vec<BodyRef>, String> {
    let top = Fields::new(body, "the body")?;
    for (folded, key, _) in top.iter() {
        if listed(TOP_LEVEL_FIELDS, folded) {
            continue;
        }
        if is_host_field(folded) {
            return Err(format!(
                "`{key}` is a HostConfig field at the top level of the body, where Docker would apply it"
            ));
        }
        return Err(format!("the body field `{key}` is not allowed"));
    }
    check_managed_label(top.get("Labels"), policy, "Labels")?;
    let rules = &policy.container_create;
    let mut refs = Vec::new();
    match top.get("HostConfig") {
        Some(hc) => refs = check_host_config(&Fields::new(hc, "HostConfig")?, rules)?,
        None => {
            if rules.require_drop_all_capabilities || rules.require_no_new_privileges {
                return Err(
                    "HostConfig is missing (the policy requires CapDrop ALL and no-new-privileges)"
                        .into(),
                );
            }
        }
    }
    if let Some(nc) = top.get("NetworkingConfig") {
        let nc = Fields::new(nc, "NetworkingConfig")?;
        if let Some(endpoints) = nc.get("EndpointsConfig") {
            let object = endpoints.as_object().ok_or_else(|| {
                format!(
                    "NetworkingConfig.EndpointsConfig must be an object, not {}",
                    endpoints.kind()
                )
            })?;
            for (network, endpoint) in object {
                check_network_name(network, rules, "NetworkingConfig.EndpointsConfig")?;
                check_endpoint(
                    endpoint,
                    &format!("NetworkingConfig.EndpointsConfig[{network}]"),
                )?;
            }
        }
    }
    Ok(refs)
}

/// `EndpointSettings` fields (per-network settings of a container) that
/// are harmless: names, addresses and priorities on a network berth made.
const ENDPOINT_FIELDS: &[&str] = &[
    "IPAMConfig",
    "Aliases",
    "MacAddress",
    "NetworkID",
    "EndpointID",
    "Gateway",
    "IPAddress",
    "IPPrefixLen",
    "IPv6Gateway",
    "GlobalIPv6Address",
    "GlobalIPv6PrefixLen",
    "DNSNames",
    "GwPriority",
];

/// An endpoint's settings: the harmless fields, and no `Links` (legacy
/// links, refused in HostConfig too) nor `DriverOpts` (passed to the network
/// driver as generic options).
fn check_endpoint(v: &Json, what: &str) -> Check {
    if v.is_null() {
        return Ok(());
    }
    let endpoint = Fields::new(v, what)?;
    for (folded, key, value) in endpoint.iter() {
        if listed(&["Links", "DriverOpts"], folded) {
            must_be_empty(Some(value), &format!("{what}.{key}"))?;
        } else if !listed(ENDPOINT_FIELDS, folded) {
            return Err(format!("{what}.{key} is not allowed"));
        }
    }
    Ok(())
}

fn check_network_name(name: &str, rules: &ContainerCreatePolicy, what: &str) -> Check {
    if name.starts_with("container:") {
        return Err(format!(
            "{what} `{name}` joins another container's network namespace"
        ));
    }
    if name == "host" && !rules.allow_host_network {
        return Err(format!(
            "{what} `host` shares the host's network namespace (allow_host_network is off)"
        ));
    }
    Ok(())
}

/// What a `HostConfig.Mounts` entry may hold (API 1.41).
const MOUNT_FIELDS: &[&str] = &[
    "Type",
    "Source",
    "Target",
    "ReadOnly",
    "Consistency",
    "BindOptions",
    "VolumeOptions",
    "TmpfsOptions",
];

fn check_host_config(
    hc: &Fields<'_>,
    rules: &ContainerCreatePolicy,
) -> Result<Vec<BodyRef>, String> {
    for (folded, key, _) in hc.iter() {
        if !listed(HARMLESS_HOST_FIELDS, folded) && !listed(CHECKED_HOST_FIELDS, folded) {
            return Err(format!("HostConfig.{key} is not allowed by the policy"));
        }
    }

    if is_true(hc.get("Privileged"), "HostConfig.Privileged")? {
        return Err("HostConfig.Privileged is true".into());
    }
    if hc.get("Capabilities").is_some() {
        return Err("HostConfig.Capabilities (the whole capability set) is not allowed".into());
    }
    if let Some(add) = hc.get("CapAdd") {
        for cap in strings_of(add, "HostConfig.CapAdd")? {
            let upper = cap.trim().to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            let allowed = bare != "ALL"
                && rules.allowed_capabilities.iter().any(|a| {
                    let a = a.to_ascii_uppercase();
                    a.strip_prefix("CAP_").unwrap_or(&a) == bare
                });
            if !allowed {
                return Err(format!(
                    "HostConfig.CapAdd `{cap}` is not in the capability allowlist"
                ));
            }
        }
    }
    if rules.require_drop_all_capabilities {
        let drops = match hc.get("CapDrop") {
            Some(v) => strings_of(v, "HostConfig.CapDrop")?,
            None => Vec::new(),
        };
        if !drops.iter().any(|d| d.trim().eq_ignore_ascii_case("ALL")) {
            return Err("HostConfig.CapDrop must hold ALL".into());
        }
    }

    // Namespaces.
    let mode = |name: &str| -> Result<String, String> {
        match hc.get(name) {
            None => Ok(String::new()),
            Some(v) => string_of(v, &format!("HostConfig.{name}")).map(str::to_owned),
        }
    };
    for field in ["PidMode", "UTSMode", "UsernsMode"] {
        let value = mode(field)?;
        if !value.is_empty() {
            return Err(format!(
                "HostConfig.{field} `{value}` shares a namespace of the host or another container"
            ));
        }
    }
    let ipc = mode("IpcMode")?;
    if !matches!(ipc.as_str(), "" | "private" | "none" | "shareable") {
        return Err(format!(
            "HostConfig.IpcMode `{ipc}` shares the IPC namespace of the host or another container"
        ));
    }
    let cgroupns = mode("CgroupnsMode")?;
    if !matches!(cgroupns.as_str(), "" | "private") {
        return Err(format!(
            "HostConfig.CgroupnsMode `{cgroupns}` shares the host's cgroup namespace"
        ));
    }
    let cgroup = mode("Cgroup")?;
    if !cgroup.is_empty() {
        return Err(format!(
            "HostConfig.Cgroup `{cgroup}` joins another container's cgroup"
        ));
    }
    let network = mode("NetworkMode")?;
    check_network_name(&network, rules, "HostConfig.NetworkMode")?;

    // Host paths, volumes and devices.
    let mut refs = Vec::new();
    if let Some(binds) = hc.get("Binds") {
        for bind in strings_of(binds, "HostConfig.Binds")? {
            let source = bind.split(':').next().unwrap_or_default();
            if !bind.contains(':') {
                return Err(format!("HostConfig.Binds `{bind}` is not SOURCE:TARGET"));
            }
            if source.starts_with('/') {
                if !bind_allowed(source, rules) {
                    return Err(format!(
                        "HostConfig.Binds `{bind}`: host path `{source}` is not in the bind allowlist"
                    ));
                }
                continue;
            }
            // Docker reads any other source as a volume name:
            // `NAME:TARGET[:MODE]`, split at every `:`.
            let parts: Vec<&str> = bind.split(':').collect();
            let (target, mode) = match parts.as_slice() {
                [_, target] => (*target, ""),
                [_, target, mode] => (*target, *mode),
                _ => {
                    return Err(format!(
                        "HostConfig.Binds `{bind}` is not VOLUME:TARGET[:MODE]"
                    ));
                }
            };
            if !is_volume_name(source) {
                return Err(format!(
                    "HostConfig.Binds `{bind}`: `{source}` is neither a host path nor a volume name"
                ));
            }
            if !target.starts_with('/') {
                return Err(format!(
                    "HostConfig.Binds `{bind}`: the target must be an absolute path"
                ));
            }
            if !matches!(mode, "" | "ro" | "rw") {
                return Err(format!(
                    "HostConfig.Binds `{bind}`: mode `{mode}` is not allowed on a volume (only ro or rw)"
                ));
            }
            refs.push(BodyRef::volume(
                source,
                format!("HostConfig.Binds `{bind}`"),
            ));
        }
    }
    if let Some(mounts) = hc.get("Mounts") {
        let list = mounts
            .as_array()
            .ok_or_else(|| format!("HostConfig.Mounts must be an array, not {}", mounts.kind()))?;
        for (i, m) in list.iter().enumerate() {
            let what = format!("HostConfig.Mounts[{i}]");
            let m = Fields::new(m, &what)?;
            for (folded, key, _) in m.iter() {
                if !listed(MOUNT_FIELDS, folded) {
                    return Err(format!("{what}.{key} is not allowed"));
                }
            }
            let kind = match m.get("Type") {
                Some(v) => string_of(v, &format!("{what}.Type"))?,
                None => "",
            };
            let source = match m.get("Source") {
                Some(v) => string_of(v, &format!("{what}.Source"))?,
                None => "",
            };
            match kind {
                "tmpfs" if source.is_empty() => {}
                "bind" if bind_allowed(source, rules) => {}
                "bind" => {
                    return Err(format!(
                        "{what}: bind of `{source}` is not in the bind allowlist"
                    ));
                }
                "volume" => {
                    check_volume_mount(&m, source, &what)?;
                    refs.push(BodyRef::volume(source, what));
                }
                other => {
                    return Err(format!(
                        "{what}: a `{other}` mount is not allowed (only tmpfs, managed volumes and allowlisted binds)"
                    ));
                }
            }
        }
    }
    for field in [
        "VolumesFrom",
        "VolumeDriver",
        "Devices",
        "DeviceRequests",
        "DeviceCgroupRules",
        "Links",
        "PortBindings",
    ] {
        must_be_empty(hc.get(field), &format!("HostConfig.{field}"))?;
    }
    if is_true(hc.get("PublishAllPorts"), "HostConfig.PublishAllPorts")? {
        return Err("HostConfig.PublishAllPorts is not allowed".into());
    }

    // Confinement.
    let mut no_new_privileges = false;
    if let Some(opts) = hc.get("SecurityOpt") {
        for opt in strings_of(opts, "HostConfig.SecurityOpt")? {
            if matches!(
                opt,
                "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"
            ) {
                no_new_privileges = true;
            } else if !rules.allowed_security_opts.iter().any(|a| a == opt) {
                return Err(format!(
                    "HostConfig.SecurityOpt `{opt}` is not allowed{}",
                    security_opt_why(opt)
                ));
            }
        }
    }
    if rules.require_no_new_privileges && !no_new_privileges {
        return Err("HostConfig.SecurityOpt must hold no-new-privileges".into());
    }
    for field in ["MaskedPaths", "ReadonlyPaths"] {
        if hc.get(field).is_some() {
            return Err(format!(
                "HostConfig.{field} would replace Docker's masked /proc paths"
            ));
        }
    }

    // Cgroups, kernel, runtime.
    let parent = mode("CgroupParent")?;
    if !parent.is_empty() {
        return Err(format!(
            "HostConfig.CgroupParent `{parent}` moves the container out of Docker's cgroup"
        ));
    }
    if let Some(sysctls) = hc.get("Sysctls") {
        let object = sysctls.as_object().ok_or_else(|| {
            format!(
                "HostConfig.Sysctls must be an object, not {}",
                sysctls.kind()
            )
        })?;
        for (key, _) in object {
            if !rules.allowed_sysctls.iter().any(|a| a == key) {
                return Err(format!(
                    "HostConfig.Sysctls `{key}` is not in the sysctl allowlist"
                ));
            }
        }
    }
    let runtime = mode("Runtime")?;
    if !runtime.is_empty() && !rules.allowed_runtimes.contains(&runtime) {
        return Err(format!("HostConfig.Runtime `{runtime}` is not allowed"));
    }
    if is_true(hc.get("OomKillDisable"), "HostConfig.OomKillDisable")? {
        return Err("HostConfig.OomKillDisable is true".into());
    }
    if number(hc.get("OomScoreAdj"), "HostConfig.OomScoreAdj")? < 0.0 {
        return Err("HostConfig.OomScoreAdj is negative".into());
    }
    for field in ["CpuRealtimePeriod", "CpuRealtimeRuntime"] {
        if number(hc.get(field), &format!("HostConfig.{field}"))? != 0.0 {
            return Err(format!("HostConfig.{field} (real-time CPU) is not allowed"));
        }
    }
    if let Some(log) = hc.get("LogConfig") {
        let log = Fields::new(log, "HostConfig.LogConfig")?;
        let driver = match log.get("Type") {
            Some(v) => string_of(v, "HostConfig.LogConfig.Type")?,
            None => "",
        };
        if !driver.is_empty() && !rules.allowed_log_drivers.iter().any(|d| d == driver) {
            return Err(format!(
                "HostConfig.LogConfig.Type `{driver}` is not an allowed log driver"
            ));
        }
    }
    Ok(refs)
}

/// A `volume` mount: of a named volume (which the server then finds
/// managed), and without an inline volume driver.
fn check_volume_mount(m: &Fields<'_>, source: &str, what: &str) -> Check {
    if source.is_empty() {
        return Err(format!(
            "{what}: a volume mount needs a Source, the name of a managed volume (anonymous volume mounts are not allowed)"
        ));
    }
    if !is_volume_name(source) {
        return Err(format!("{what}: `{source}` is not a volume name"));
    }
    for field in ["BindOptions", "TmpfsOptions"] {
        if m.get(field).is_some() {
            return Err(format!("{what}.{field} does not belong on a volume mount"));
        }
    }
    if let Some(options) = m.get("VolumeOptions") {
        let what = format!("{what}.VolumeOptions");
        let options = Fields::new(options, &what)?;
        for (folded, key, _) in options.iter() {
            if !listed(&["NoCopy", "Labels", "DriverConfig"], folded) {
                return Err(format!("{what}.{key} is not allowed"));
            }
        }
        if options.get("DriverConfig").is_some() {
            return Err(format!(
                "{what}.DriverConfig is not allowed (an inline volume driver and its options can mount any host path)"
            ));
        }
    }
    Ok(())
}

fn bind_allowed(source: &str, rules: &ContainerCreatePolicy) -> bool {
    source.starts_with('/')
        && !source.split('/').any(|s| s == "..")
        && rules.allowed_bind_sources.iter().any(|a| a == source)
}

fn security_opt_why(opt: &str) -> &'static str {
    let (key, value) = opt
        .split_once('=')
        .or_else(|| opt.split_once(':'))
        .unwrap_or((opt, ""));
    match (key, value) {
        ("seccomp", "unconfined") => " (it turns seccomp off)",
        ("seccomp", _) => " (a custom seccomp profile)",
        ("apparmor", "unconfined") => " (it turns AppArmor off)",
        ("label", "disable") => " (it turns SELinux labelling off)",
        ("label", _) => " (a custom SELinux label)",
        ("no-new-privileges", _) => " (it allows gaining privileges)",
        _ => "",
    }
}

/// Checks a network-create body.
pub fn check_network_create(body: &Json, policy: &Policy) -> Check {
    const FIELDS: &[&str] = &[
        "Name",
        "CheckDuplicate",
        "Driver",
        "Internal",
        "Attachable",
        "EnableIPv6",
        "IPAM",
        "Options",
        "Labels",
    ];
    let rules: &NetworkCreatePolicy = &policy.network_create;
    let top = Fields::new(body, "the body")?;
    for (folded, key, _) in top.iter() {
        if !listed(FIELDS, folded) {
            return Err(format!("the network field `{key}` is not allowed"));
        }
    }
    check_managed_label(top.get("Labels"), policy, "Labels")?;
    let driver = match top.get("Driver") {
        Some(v) => string_of(v, "Driver")?,
        None => "",
    };
    let driver = if driver.is_empty() { "bridge" } else { driver };
    if !rules.allowed_drivers.iter().any(|d| d == driver) {
        return Err(format!("network driver `{driver}` is not allowed"));
    }
    if let Some(options) = top.get("Options") {
        let object = options
            .as_object()
            .ok_or_else(|| format!("Options must be an object, not {}", options.kind()))?;
        for (key, _) in object {
            if !rules.allowed_options.iter().any(|o| o == key) {
                return Err(format!("network option `{key}` is not allowed"));
            }
        }
    }
    if let Some(ipam) = top.get("IPAM") {
        let ipam = Fields::new(ipam, "IPAM")?;
        if let Some(d) = ipam.get("Driver") {
            let d = string_of(d, "IPAM.Driver")?;
            if !d.is_empty() && d != "default" {
                return Err(format!("IPAM driver `{d}` is not allowed"));
            }
        }
    }
    Ok(())
}

/// Checks a volume-create body: managed, the `local` driver, and either
/// no options (a directory under Docker's data root) or exactly a tmpfs.
/// The local driver's other options mount whatever `device` names: a host
/// path (`o=bind`), a block device, an NFS export.
pub fn check_volume_create(body: &Json, policy: &Policy) -> Check {
    let top = Fields::new(body, "the body")?;
    for (folded, key, _) in top.iter() {
        if !listed(&["Name", "Driver", "DriverOpts", "Labels"], folded) {
            return Err(format!("the volume field `{key}` is not allowed"));
        }
    }
    check_managed_label(top.get("Labels"), policy, "Labels")?;
    if let Some(name) = top.get("Name") {
        let name = string_of(name, "Name")?;
        if !name.is_empty() && !is_volume_name(name) {
            return Err(format!("Name `{name}` is not a volume name"));
        }
    }
    let driver = match top.get("Driver") {
        Some(v) => string_of(v, "Driver")?,
        None => "",
    };
    check_volume_driver(driver, top.get("DriverOpts"), policy)
}

/// A volume's driver and its options (`DriverOpts` of a create, `Options`
/// of an inspect): the local driver, and no options or a tmpfs.
pub(crate) fn check_volume_driver(driver: &str, opts: Option<&Json>, policy: &Policy) -> Check {
    if !matches!(driver, "" | "local") {
        return Err(format!(
            "Driver `{driver}` is not allowed (only the local driver)"
        ));
    }
    let Some(opts) = opts.filter(|o| !o.is_null()) else {
        return Ok(());
    };
    let object = opts
        .as_object()
        .ok_or_else(|| format!("DriverOpts must be an object, not {}", opts.kind()))?;
    if object.is_empty() {
        return Ok(());
    }
    let (mut kind, mut device, mut o) = (None, None, None);
    for (key, value) in object {
        let value = string_of(value, &format!("DriverOpts.{key}"))?;
        match key.as_str() {
            "type" => kind = Some(value),
            "device" => device = Some(value),
            "o" => o = Some(value),
            other => {
                return Err(format!(
                    "DriverOpts.{other} is not allowed (only type, device and o of a tmpfs)"
                ));
            }
        }
    }
    if kind != Some("tmpfs") {
        return Err(format!(
            "DriverOpts.type `{}` is not allowed (only tmpfs)",
            kind.unwrap_or_default()
        ));
    }
    if device != Some("tmpfs") {
        return Err(format!(
            "DriverOpts.device `{}` is not allowed (a tmpfs volume's device is `tmpfs`)",
            device.unwrap_or_default()
        ));
    }
    check_tmpfs_options(
        o.unwrap_or_default(),
        &policy.volume_create.allowed_tmpfs_options,
    )
}

/// `o` of a tmpfs volume: comma-separated `key=value` options, each key
/// allowed, each value plain (digits, letters, `%`). Everything else, the
/// mount flags in particular (`bind`, `rbind`, `remount`…), is refused.
fn check_tmpfs_options(o: &str, allowed: &[String]) -> Check {
    if o.is_empty() {
        return Ok(());
    }
    let names = allowed.join(", ");
    for option in o.split(',') {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        if !allowed.iter().any(|a| a == key) {
            return Err(format!(
                "DriverOpts.o option `{option}` is not allowed (only {names})"
            ));
        }
        if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '%') {
            return Err(format!(
                "DriverOpts.o option `{option}` needs a plain value"
            ));
        }
    }
    Ok(())
}

/// Checks an exec-create body (`POST /containers/{id}/exec`). An exec runs
/// with its container's confinement (capabilities, seccomp, no new
/// privileges), except that `Privileged` gives it every capability and
/// device: that is refused; user, environment, command and directory are
/// the container's own business.
pub fn check_exec_create(body: &Json) -> Check {
    const FIELDS: &[&str] = &[
        "User",
        "Privileged",
        "Tty",
        "ConsoleSize",
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "Detach",
        "DetachKeys",
        "Env",
        "WorkingDir",
        "Cmd",
    ];
    let top = Fields::new(body, "the body")?;
    for (folded, key, _) in top.iter() {
        if !listed(FIELDS, folded) {
            return Err(format!("the exec field `{key}` is not allowed"));
        }
    }
    if is_true(top.get("Privileged"), "Privileged")? {
        return Err("Privileged is true (an exec with every capability)".into());
    }
    Ok(())
}

/// Checks an exec-start body (`POST /exec/{id}/start`): only how to
/// attach. bollard also sends `OutputCapacity`, its own setting, which
/// Docker ignores.
pub fn check_exec_start(body: &Json) -> Check {
    let top = Fields::new(body, "the body")?;
    for (folded, key, _) in top.iter() {
        if !listed(&["Detach", "Tty", "ConsoleSize", "OutputCapacity"], folded) {
            return Err(format!("the exec start field `{key}` is not allowed"));
        }
    }
    Ok(())
}

/// The `Container` of a network connect/disconnect body: a reference the
/// server checks and replaces by the full ID it finds.
fn connect_container(top: &Fields<'_>) -> Result<BodyRef, String> {
    let container = match top.get("Container") {
        Some(v) => string_of(v, "Container")?,
        None => "",
    };
    if !is_object_ref(container) {
        return Err(format!(
            "Container `{container}` is not a container ID or name"
        ));
    }
    Ok(BodyRef {
        kind: TargetKind::ManagedContainer,
        reference: container.to_owned(),
        field: "Container".into(),
        rewrite: Some("Container"),
        must_exist: false,
    })
}

/// Checks a network-connect body: the container (managed, checked by the
/// server) and a plain endpoint (see [`check_endpoint`]).
pub fn check_network_connect(body: &Json) -> Result<Vec<BodyRef>, String> {
    let top = Fields::new(body, "the body")?;
    for (folded, key, _) in top.iter() {
        if !listed(&["Container", "EndpointConfig"], folded) {
            return Err(format!("the network connect field `{key}` is not allowed"));
        }
    }
    if let Some(endpoint) = top.get("EndpointConfig") {
        check_endpoint(endpoint, "EndpointConfig")?;
    }
    Ok(vec![connect_container(&top)?])
}

/// Checks a network-disconnect body: the container (managed, checked by
/// the server) and `Force`.
pub fn check_network_disconnect(body: &Json) -> Result<Vec<BodyRef>, String> {
    let top = Fields::new(body, "the body")?;
    for (folded, key, _) in top.iter() {
        if !listed(&["Container", "Force"], folded) {
            return Err(format!(
                "the network disconnect field `{key}` is not allowed"
            ));
        }
    }
    Ok(vec![connect_container(&top)?])
}

/// Checks the query of an image build (`POST /build`) beyond the rule's
/// parameter list: `labels` must hold the managed label, `networkmode` be
/// allowed, `version` be the classic builder (BuildKit needs `/session`,
/// which is denied), and the tag `t` lie under an allowed prefix.
pub fn check_image_build(target: &Target, policy: &Policy) -> Check {
    let rules = &policy.image_build;
    let labels = target.param("labels").unwrap_or_default();
    let labels = Json::parse(labels.as_bytes())
        .map_err(|e| format!("query parameter `labels` is not strict JSON: {e}"))?;
    check_managed_label(Some(&labels), policy, "query parameter `labels`")?;
    if let Some(mode) = target.param("networkmode") {
        let mode = if mode.is_empty() { "default" } else { mode };
        if !rules.allowed_network_modes.iter().any(|m| m == mode) {
            return Err(format!(
                "query parameter `networkmode` `{mode}` is not allowed (only {})",
                rules.allowed_network_modes.join(", ")
            ));
        }
    }
    if let Some(version) = target.param("version")
        && !matches!(version, "" | "1")
    {
        return Err(format!(
            "query parameter `version` `{version}` is not allowed (only the classic builder, 1)"
        ));
    }
    if let Some(tag) = target.param("t") {
        let repository = match (tag.rfind(':'), tag.rfind('/')) {
            (Some(colon), slash) if slash.is_none_or(|s| s < colon) => &tag[..colon],
            _ => tag,
        };
        let under = rules
            .allowed_tag_prefixes
            .iter()
            .any(|p| repository.starts_with(p.as_str()) && repository.len() > p.len());
        if tag.contains('@') || !under {
            return Err(format!(
                "query parameter `t` `{tag}` is not under an allowed tag prefix ({})",
                rules.allowed_tag_prefixes.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_body() -> serde_json::Value {
        serde_json::json!({
            "Image": "sha256:abc",
            "User": "1001:1001",
            "Labels": {"berth.managed": "true", "berth.job": "x"},
            "Env": ["A=B"],
            "AttachStdin": true,
            "OpenStdin": true,
            "StdinOnce": true,
            "HostConfig": {
                "NanoCpus": 1_000_000_000u64,
                "Memory": 268435456,
                "MemorySwap": 268435456,
                "PidsLimit": 512,
                "Privileged": false,
                "CapDrop": ["ALL"],
                "CapAdd": ["CAP_CHOWN"],
                "SecurityOpt": ["no-new-privileges:true"],
                "ReadonlyRootfs": true,
                "Tmpfs": {"/tmp": "rw,size=64m"},
                "IpcMode": "private",
                "NetworkMode": "berth",
                "ExtraHosts": ["host.docker.internal:host-gateway"],
                "PublishAllPorts": false,
                "Init": true,
                "RestartPolicy": {"Name": "no"},
                "AutoRemove": false
            }
        })
    }

    fn check(v: &serde_json::Value) -> Result<Vec<BodyRef>, String> {
        check_with(v, &Policy::default())
    }

    fn check_with(v: &serde_json::Value, p: &Policy) -> Result<Vec<BodyRef>, String> {
        check_container_create(&Json::parse(v.to_string().as_bytes()).unwrap(), p)
    }

    fn with(path: &[&str], value: serde_json::Value) -> serde_json::Value {
        let mut body = ok_body();
        let mut at = &mut body;
        for p in &path[..path.len() - 1] {
            at = at.get_mut(*p).unwrap();
        }
        at[path[path.len() - 1]] = value;
        body
    }

    #[test]
    fn berths_body_passes() {
        check(&ok_body()).unwrap();
    }

    #[test]
    fn refusals() {
        use serde_json::json;
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                with(&["HostConfig", "Privileged"], json!(true)),
                "Privileged",
            ),
            (with(&["HostConfig", "privileged"], json!(true)), "both"),
            (with(&["HostConfig", "PidMode"], json!("host")), "PidMode"),
            (
                with(&["HostConfig", "PidMode"], json!("container:x")),
                "PidMode",
            ),
            (with(&["HostConfig", "IpcMode"], json!("host")), "IpcMode"),
            (with(&["HostConfig", "UTSMode"], json!("host")), "UTSMode"),
            (
                with(&["HostConfig", "UsernsMode"], json!("host")),
                "UsernsMode",
            ),
            (
                with(&["HostConfig", "CgroupnsMode"], json!("host")),
                "CgroupnsMode",
            ),
            (
                with(&["HostConfig", "NetworkMode"], json!("host")),
                "allow_host_network",
            ),
            (
                with(&["HostConfig", "NetworkMode"], json!("container:x")),
                "another container",
            ),
            (
                with(&["HostConfig", "Binds"], json!(["/:/host"])),
                "allowlist",
            ),
            (
                with(&["HostConfig", "Binds"], json!(["vol:data"])),
                "absolute path",
            ),
            (
                with(&["HostConfig", "Binds"], json!(["./vol:/data"])),
                "neither a host path nor a volume name",
            ),
            (
                with(
                    &["HostConfig", "Mounts"],
                    json!([{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/s"}]),
                ),
                "allowlist",
            ),
            (
                with(
                    &["HostConfig", "Mounts"],
                    json!([{"Type": "volume", "Source": "v", "Target": "/v"}]),
                ),
                "not a volume name",
            ),
            (
                with(&["HostConfig", "VolumesFrom"], json!(["other"])),
                "VolumesFrom",
            ),
            (
                with(
                    &["HostConfig", "Devices"],
                    json!([{"PathOnHost": "/dev/sda"}]),
                ),
                "Devices",
            ),
            (
                with(&["HostConfig", "DeviceRequests"], json!([{"Count": -1}])),
                "DeviceRequests",
            ),
            (
                with(&["HostConfig", "DeviceCgroupRules"], json!(["a *:* rwm"])),
                "DeviceCgroupRules",
            ),
            (
                with(&["HostConfig", "CapAdd"], json!(["SYS_ADMIN"])),
                "CapAdd",
            ),
            (with(&["HostConfig", "CapAdd"], json!(["ALL"])), "CapAdd"),
            (with(&["HostConfig", "CapDrop"], json!([])), "CapDrop"),
            (
                with(&["HostConfig", "Capabilities"], json!(["CAP_SYS_ADMIN"])),
                "Capabilities",
            ),
            (
                with(
                    &["HostConfig", "SecurityOpt"],
                    json!(["no-new-privileges:true", "seccomp=unconfined"]),
                ),
                "seccomp off",
            ),
            (
                with(
                    &["HostConfig", "SecurityOpt"],
                    json!(["no-new-privileges:true", "apparmor:unconfined"]),
                ),
                "AppArmor",
            ),
            (
                with(
                    &["HostConfig", "SecurityOpt"],
                    json!(["no-new-privileges:true", "label=disable"]),
                ),
                "SELinux",
            ),
            (
                with(
                    &["HostConfig", "SecurityOpt"],
                    json!(["no-new-privileges=false"]),
                ),
                "gaining",
            ),
            (
                with(&["HostConfig", "SecurityOpt"], json!([])),
                "must hold no-new-privileges",
            ),
            (
                with(&["HostConfig", "MaskedPaths"], json!([])),
                "MaskedPaths",
            ),
            (
                with(&["HostConfig", "CgroupParent"], json!("/")),
                "CgroupParent",
            ),
            (
                with(
                    &["HostConfig", "Sysctls"],
                    json!({"kernel.shm_rmid_forced": "1"}),
                ),
                "Sysctls",
            ),
            (with(&["HostConfig", "Runtime"], json!("kata")), "Runtime"),
            (
                with(&["HostConfig", "OomScoreAdj"], json!(-1000)),
                "OomScoreAdj",
            ),
            (
                with(&["HostConfig", "LogConfig"], json!({"Type": "syslog"})),
                "log driver",
            ),
            (
                with(
                    &["HostConfig", "PortBindings"],
                    json!({"80/tcp": [{"HostPort": "80"}]}),
                ),
                "PortBindings",
            ),
            (
                with(&["HostConfig", "SomethingNew"], json!(true)),
                "not allowed by the policy",
            ),
            (
                with(&["HostConfig", "Privileged"], json!("true")),
                "boolean",
            ),
            (
                with(&["Labels"], json!({"berth.managed": "false"})),
                "label",
            ),
            (with(&["Labels"], json!({})), "label"),
            (with(&["Privileged"], json!(true)), "top level"),
            (with(&["Binds"], json!(["/:/h"])), "top level"),
            (
                with(
                    &["NetworkingConfig"],
                    json!({"EndpointsConfig": {"host": {}}}),
                ),
                "host",
            ),
            (with(&["Unknown"], json!(1)), "not allowed"),
            (
                with(&["HostConfig", "Networ\u{212A}Mode"], json!("host")),
                "both",
            ),
        ];
        for (body, expect) in cases {
            let err = check(&body).expect_err(&body.to_string());
            assert!(err.contains(expect), "{err} (wanted `{expect}`) for {body}");
        }
    }

    #[test]
    fn volume_mounts_name_the_volumes_to_check() {
        use serde_json::json;
        let mut body = with(
            &["HostConfig", "Binds"],
            json!(["job-work:/__w", "job-tools:/__t:ro"]),
        );
        body["HostConfig"]["Mounts"] = json!([
            {"Type": "volume", "Source": "job-home", "Target": "/github/home",
             "ReadOnly": false, "VolumeOptions": {"NoCopy": true, "Labels": {"a": "b"}, "DriverConfig": null}},
            {"Type": "tmpfs", "Target": "/run", "TmpfsOptions": {"SizeBytes": 1048576}}
        ]);
        body["Volumes"] = json!({"/anonymous": {}});
        let refs = check(&body).unwrap();
        let named: Vec<(&str, &str)> = refs
            .iter()
            .map(|r| (r.reference.as_str(), r.field.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("job-work", "HostConfig.Binds `job-work:/__w`"),
                ("job-tools", "HostConfig.Binds `job-tools:/__t:ro`"),
                ("job-home", "HostConfig.Mounts[0]")
            ]
        );
        assert!(
            refs.iter().all(|r| r.kind == TargetKind::ManagedVolume
                && r.must_exist
                && r.rewrite.is_none())
        );
        // berth's own body names none.
        assert!(check(&ok_body()).unwrap().is_empty());
    }

    #[test]
    fn volume_mount_refusals() {
        use serde_json::json;
        let mount = |m: serde_json::Value| with(&["HostConfig", "Mounts"], json!([m]));
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                mount(json!({"Type": "volume", "Source": "v1", "Target": "/v",
                             "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"o": "bind", "device": "/"}}}})),
                "VolumeOptions.DriverConfig is not allowed",
            ),
            (
                mount(json!({"Type": "volume", "Source": "v1", "Target": "/v",
                             "VolumeOptions": {"DriverConfig": {}}})),
                "DriverConfig",
            ),
            (
                mount(json!({"Type": "volume", "Target": "/v"})),
                "anonymous volume mounts are not allowed",
            ),
            (
                mount(json!({"Type": "volume", "Source": "v1", "Target": "/v",
                             "VolumeOptions": {"Subpath": "x"}})),
                "VolumeOptions.Subpath is not allowed",
            ),
            (
                mount(json!({"Type": "volume", "Source": "v1", "Target": "/v",
                             "BindOptions": {"Propagation": "rshared"}})),
                "BindOptions does not belong",
            ),
            (
                mount(json!({"Type": "volume", "Source": "../v", "Target": "/v"})),
                "not a volume name",
            ),
            (
                mount(json!({"Type": "image", "Source": "busybox", "Target": "/v"})),
                "a `image` mount is not allowed",
            ),
            (
                mount(json!({"Type": "npipe", "Source": "x", "Target": "/v"})),
                "not allowed",
            ),
            (
                mount(json!({"Type": "tmpfs", "Target": "/v", "ImageOptions": {}})),
                "HostConfig.Mounts[0].ImageOptions is not allowed",
            ),
            (
                with(&["HostConfig", "Binds"], json!(["vol:/data:rshared"])),
                "mode `rshared` is not allowed on a volume",
            ),
            (
                with(&["HostConfig", "Binds"], json!(["vol:/data:ro:z"])),
                "not VOLUME:TARGET[:MODE]",
            ),
            (
                with(&["HostConfig", "Binds"], json!(["/data"])),
                "not SOURCE:TARGET",
            ),
            (
                with(&["HostConfig", "VolumeDriver"], json!("local-persist")),
                "VolumeDriver",
            ),
        ];
        for (body, expect) in cases {
            let err = check(&body).expect_err(&body.to_string());
            assert!(err.contains(expect), "{err} (wanted `{expect}`) for {body}");
        }
    }

    #[test]
    fn endpoint_settings() {
        use serde_json::json;
        let endpoints = |e: serde_json::Value| {
            with(
                &["NetworkingConfig"],
                json!({"EndpointsConfig": {"berth-job-1": e}}),
            )
        };
        check(&endpoints(
            json!({"Aliases": ["postgres"], "IPAMConfig": null}),
        ))
        .unwrap();
        check(&endpoints(json!(null))).unwrap();
        let err = check(&endpoints(
            json!({"DriverOpts": {"com.docker.network.endpoint.sysctls": "x"}}),
        ))
        .unwrap_err();
        assert!(
            err.contains("EndpointsConfig[berth-job-1].DriverOpts is not allowed"),
            "{err}"
        );
        let err = check(&endpoints(json!({"Links": ["other:alias"]}))).unwrap_err();
        assert!(err.contains("Links is not allowed"), "{err}");
        let err = check(&endpoints(json!({"Something": 1}))).unwrap_err();
        assert!(err.contains("Something is not allowed"), "{err}");
    }

    fn parsed(v: serde_json::Value) -> Json {
        Json::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn volume_create() {
        use serde_json::json;
        let p = Policy::default();
        let managed = json!({"berth.managed": "true", "berth.job": "7"});
        let ok = [
            json!({"Name": "berth-job-7-work", "Labels": managed}),
            json!({"Name": "berth-job-7-work", "Driver": "local", "DriverOpts": {}, "Labels": managed}),
            json!({"Labels": managed, "DriverOpts": {"type": "tmpfs", "device": "tmpfs"}}),
            json!({"Name": "t1", "Labels": managed, "Driver": "local",
                   "DriverOpts": {"type": "tmpfs", "device": "tmpfs", "o": "size=64m,uid=1001,gid=1001,mode=1777,nr_inodes=10k"}}),
            json!({"name": "t2", "labels": managed, "driveropts": {"type": "tmpfs", "device": "tmpfs", "o": "size=50%"}}),
        ];
        for body in ok {
            check_volume_create(&parsed(body.clone()), &p)
                .unwrap_or_else(|e| panic!("{e}: {body}"));
        }
        let tmpfs = |o: &str| json!({"Labels": managed, "DriverOpts": {"type": "tmpfs", "device": "tmpfs", "o": o}});
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                json!({"Name": "x1"}),
                "Labels must hold the label berth.managed=true",
            ),
            (
                json!({"Name": "x1", "Labels": {"berth.managed": "yes"}}),
                "Labels must hold",
            ),
            (
                json!({"Labels": managed, "DriverOpts": {"type": "none", "o": "bind", "device": "/etc"}}),
                "DriverOpts.type `none` is not allowed",
            ),
            (
                json!({"Labels": managed, "DriverOpts": {"o": "bind", "type": "tmpfs", "device": "tmpfs"}}),
                "DriverOpts.o option `bind` is not allowed",
            ),
            (tmpfs("size=1m,bind"), "option `bind` is not allowed"),
            (tmpfs("rbind"), "option `rbind` is not allowed"),
            (tmpfs("remount,size=1m"), "option `remount` is not allowed"),
            (tmpfs("size=1m,,"), "option `` is not allowed"),
            (tmpfs("size="), "needs a plain value"),
            (tmpfs("size=1m=bind"), "needs a plain value"),
            (tmpfs("mode=0777 "), "needs a plain value"),
            (
                json!({"Labels": managed, "DriverOpts": {"type": "tmpfs", "device": "/dev/sda1"}}),
                "DriverOpts.device `/dev/sda1` is not allowed",
            ),
            (
                json!({"Labels": managed, "DriverOpts": {"type": "tmpfs"}}),
                "DriverOpts.device `` is not allowed",
            ),
            (
                json!({"Labels": managed, "DriverOpts": {"type": "nfs", "o": "addr=10.0.0.1", "device": ":/export"}}),
                "DriverOpts.type `nfs` is not allowed",
            ),
            (
                json!({"Labels": managed, "DriverOpts": {"type": "tmpfs", "o": "addr=10.0.0.1", "device": "tmpfs"}}),
                "option `addr=10.0.0.1` is not allowed",
            ),
            (
                json!({"Labels": managed, "DriverOpts": {"type": "tmpfs", "device": "tmpfs", "size": "1G"}}),
                "DriverOpts.size is not allowed",
            ),
            (
                json!({"Labels": managed, "DriverOpts": {"type": "tmpfs", "device": "tmpfs", "o": 1}}),
                "DriverOpts.o must be a string",
            ),
            (
                json!({"Labels": managed, "DriverOpts": "x"}),
                "DriverOpts must be an object",
            ),
            (
                json!({"Labels": managed, "Driver": "nfs"}),
                "Driver `nfs` is not allowed",
            ),
            (
                json!({"Labels": managed, "Driver": "rexray/ebs"}),
                "Driver `rexray/ebs` is not allowed",
            ),
            (
                json!({"Labels": managed, "Name": "/etc"}),
                "Name `/etc` is not a volume name",
            ),
            (
                json!({"Labels": managed, "ClusterVolumeSpec": {}}),
                "the volume field `ClusterVolumeSpec` is not allowed",
            ),
            (
                json!({"Labels": managed, "Driver": "local", "driver": "nfs"}),
                "both",
            ),
        ];
        for (body, expect) in cases {
            let err = check_volume_create(&parsed(body.clone()), &p).expect_err(&body.to_string());
            assert!(err.contains(expect), "{err} (wanted `{expect}`) for {body}");
        }
        // An empty allowlist still allows a tmpfs without options.
        let mut strict = Policy::default();
        strict.volume_create.allowed_tmpfs_options.clear();
        check_volume_create(&parsed(tmpfs("")), &strict).unwrap();
        assert!(check_volume_create(&parsed(tmpfs("size=1m")), &strict).is_err());
    }

    #[test]
    fn exec_bodies() {
        use serde_json::json;
        check_exec_create(&parsed(json!({
            "User": "0", "Privileged": false, "Tty": false, "AttachStdin": false,
            "AttachStdout": true, "AttachStderr": true, "Detach": false, "DetachKeys": "",
            "Env": ["A=B", "GITHUB_ACTIONS=true"], "WorkingDir": "/__w/r/r",
            "Cmd": ["sh", "-e", "/__w/_temp/step.sh"], "ConsoleSize": [24, 80]
        })))
        .unwrap();
        check_exec_create(&parsed(json!({"Cmd": ["id"]}))).unwrap();
        let err =
            check_exec_create(&parsed(json!({"Cmd": ["id"], "Privileged": true}))).unwrap_err();
        assert!(err.contains("Privileged is true"), "{err}");
        let err =
            check_exec_create(&parsed(json!({"Cmd": ["id"], "privileged": true}))).unwrap_err();
        assert!(err.contains("Privileged is true"), "{err}");
        let err =
            check_exec_create(&parsed(json!({"Cmd": ["id"], "Privileged": "true"}))).unwrap_err();
        assert!(err.contains("boolean"), "{err}");
        let err = check_exec_create(&parsed(json!({"Cmd": ["id"], "CapAdd": ["SYS_ADMIN"]})))
            .unwrap_err();
        assert!(
            err.contains("the exec field `CapAdd` is not allowed"),
            "{err}"
        );
        let err = check_exec_create(&parsed(json!(["id"]))).unwrap_err();
        assert!(err.contains("must be an object"), "{err}");

        check_exec_start(&parsed(
            json!({"Detach": false, "Tty": false, "OutputCapacity": null}),
        ))
        .unwrap();
        check_exec_start(&parsed(json!({}))).unwrap();
        let err =
            check_exec_start(&parsed(json!({"Detach": false, "Privileged": true}))).unwrap_err();
        assert!(err.contains("`Privileged` is not allowed"), "{err}");
    }

    #[test]
    fn network_connect_bodies() {
        use serde_json::json;
        let refs = check_network_connect(&parsed(json!({
            "Container": "berth-job-7-svc",
            "EndpointConfig": {"Aliases": ["redis"]}
        })))
        .unwrap();
        assert_eq!(
            refs,
            [BodyRef {
                kind: TargetKind::ManagedContainer,
                reference: "berth-job-7-svc".into(),
                field: "Container".into(),
                rewrite: Some("Container"),
                must_exist: false,
            }]
        );
        let refs =
            check_network_disconnect(&parsed(json!({"Container": "abc", "Force": true}))).unwrap();
        assert_eq!(refs[0].reference, "abc");
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({}), "Container `` is not a container ID or name"),
            (
                json!({"Container": "../x"}),
                "is not a container ID or name",
            ),
            (json!({"Container": "x?y"}), "is not a container ID or name"),
            (json!({"Container": 1}), "Container must be a string"),
            (
                json!({"Container": "c1", "EndpointConfig": {"DriverOpts": {"a": "b"}}}),
                "EndpointConfig.DriverOpts is not allowed",
            ),
            (
                json!({"Container": "c1", "EndpointConfig": {"Links": ["foreign:db"]}}),
                "EndpointConfig.Links is not allowed",
            ),
            (
                json!({"Container": "c1", "Force": true}),
                "`Force` is not allowed",
            ),
        ];
        for (body, expect) in cases {
            let err = check_network_connect(&parsed(body.clone())).expect_err(&body.to_string());
            assert!(err.contains(expect), "{err} (wanted `{expect}`) for {body}");
        }
        let err =
            check_network_disconnect(&parsed(json!({"Container": "c1", "EndpointConfig": {}})))
                .unwrap_err();
        assert!(err.contains("`EndpointConfig` is not allowed"), "{err}");
    }

    #[test]
    fn image_build_query() {
        let p = Policy::default();
        let labels = "labels=%7B%22berth.managed%22%3A%22true%22%7D";
        let check = |q: &str| {
            let target = Target::parse(&format!("/build?{q}")).unwrap();
            check_image_build(&target, &p)
        };
        for q in [
            labels.to_owned(),
            format!("{labels}&t=berth-job/checkout-action:7&networkmode=bridge&version=1"),
            format!("{labels}&t=berth-job/a/b&networkmode=none"),
            format!("{labels}&networkmode=default&version="),
            format!("{labels}&networkmode="),
        ] {
            check(&q).unwrap_or_else(|e| panic!("{e}: {q}"));
        }
        let cases = [
            ("t=berth-job/x", "`labels` is not strict JSON"),
            (
                "labels=%7B%7D",
                "query parameter `labels` must hold the label berth.managed=true",
            ),
            ("labels=%5B%5D", "must be an object"),
            (
                "labels=%7B%22berth.managed%22%3A%22false%22%7D",
                "must hold the label",
            ),
            (
                "labels=%7B%22a%22%3A1%7D",
                "each value of query parameter `labels` must be a string",
            ),
        ];
        for (q, expect) in cases {
            let err = check(q).expect_err(q);
            assert!(err.contains(expect), "{err} (wanted `{expect}`) for {q}");
        }
        let cases = [
            ("networkmode=host", "`networkmode` `host` is not allowed"),
            (
                "networkmode=container:abc",
                "`networkmode` `container:abc` is not allowed",
            ),
            ("networkmode=berth", "`networkmode` `berth` is not allowed"),
            ("version=2", "`version` `2` is not allowed"),
            (
                "t=ubuntu:22.04",
                "`t` `ubuntu:22.04` is not under an allowed tag prefix",
            ),
            ("t=berth:latest", "not under"),
            ("t=berth-worker-local:latest", "not under"),
            ("t=berth-job", "not under"),
            ("t=berth-job/", "not under"),
            ("t=berth-job.evil.io/x", "not under"),
            ("t=berth-job/x@sha256:abc", "not under"),
            ("t=docker.io/library/berth-job/x", "not under"),
        ];
        for (q, expect) in cases {
            let q = format!("{labels}&{q}");
            let err = check(&q).expect_err(&q);
            assert!(err.contains(expect), "{err} (wanted `{expect}`) for {q}");
        }
        let mut none = Policy::default();
        none.image_build.allowed_tag_prefixes.clear();
        let target = Target::parse(&format!("/build?{labels}&t=berth-job/x")).unwrap();
        assert!(check_image_build(&target, &none).is_err());
    }

    #[test]
    fn switches() {
        let mut p = Policy::default();
        p.container_create.allow_host_network = true;
        p.container_create.allowed_bind_sources = vec!["/srv/cache".into()];
        check_with(
            &with(&["HostConfig", "NetworkMode"], serde_json::json!("host")),
            &p,
        )
        .unwrap();
        check_with(
            &with(
                &["HostConfig", "Binds"],
                serde_json::json!(["/srv/cache:/cache:ro"]),
            ),
            &p,
        )
        .unwrap();
        check_with(
            &with(&["HostConfig", "Binds"], serde_json::json!(["/srv:/cache"])),
            &p,
        )
        .unwrap_err();
    }

    #[test]
    fn networks() {
        let p = Policy::default();
        let check = |v: serde_json::Value| {
            check_network_create(&Json::parse(v.to_string().as_bytes()).unwrap(), &p)
        };
        check(serde_json::json!({"Name": "berth", "Driver": "bridge", "CheckDuplicate": true, "Labels": {"berth.managed": "true"}})).unwrap();
        check(serde_json::json!({"Name": "berth", "Labels": {}})).unwrap_err();
        // A per-job network: internal, bridge, managed.
        check(serde_json::json!({
            "Name": "berth-job-7", "Driver": "bridge", "Internal": true, "Attachable": false,
            "CheckDuplicate": true, "EnableIPv6": false,
            "Options": {"com.docker.network.bridge.enable_icc": "true"},
            "Labels": {"berth.managed": "true", "berth.job": "7"}
        }))
        .unwrap();
        check(serde_json::json!({"Name": "b", "Driver": "macvlan", "Labels": {"berth.managed": "true"}})).unwrap_err();
        check(serde_json::json!({"Name": "b", "Options": {"com.docker.network.bridge.name": "docker0"}, "Labels": {"berth.managed": "true"}})).unwrap_err();
        check(
            serde_json::json!({"Name": "b", "Ingress": true, "Labels": {"berth.managed": "true"}}),
        )
        .unwrap_err();
    }
}
