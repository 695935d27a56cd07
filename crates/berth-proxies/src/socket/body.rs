//! Request-body policy: what a container or network create may ask for.
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
//!     entries without a leading `/`, `volume` mounts — a volume driver can
//!     bind any host path) are refused; `tmpfs` mounts are fine.
//!     `VolumesFrom`, `VolumeDriver`, `Devices`, `DeviceRequests`,
//!     `DeviceCgroupRules` must be empty.
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
//!   allowed) nor a `container:…` network.
//!
//! # Network create (`POST /networks/create`)
//!
//! `Labels` must hold the managed label; `Driver` only from
//! `allowed_drivers` (`bridge`); `Options` keys only from `allowed_options`
//! (a bridge's `com.docker.network.bridge.name` could adopt an existing
//! host bridge); `IPAM.Driver` only `default`; no `Ingress`, `ConfigOnly`,
//! `ConfigFrom` or `Scope`.

use super::json::{Fields, Json, go_fold};
use super::policy::{ContainerCreatePolicy, NetworkCreatePolicy, Policy};

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

/// Checks a container-create body.
pub fn check_container_create(body: &Json, policy: &Policy) -> Check {
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
    match top.get("HostConfig") {
        Some(hc) => check_host_config(&Fields::new(hc, "HostConfig")?, rules)?,
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
            for (network, _) in object {
                check_network_name(network, rules, "NetworkingConfig.EndpointsConfig")?;
            }
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

fn check_host_config(hc: &Fields<'_>, rules: &ContainerCreatePolicy) -> Check {
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

    // Host paths and devices.
    if let Some(binds) = hc.get("Binds") {
        for bind in strings_of(binds, "HostConfig.Binds")? {
            let source = bind.split(':').next().unwrap_or_default();
            if !bind.contains(':') {
                return Err(format!("HostConfig.Binds `{bind}` is not SOURCE:TARGET"));
            }
            if !source.starts_with('/') {
                return Err(format!(
                    "HostConfig.Binds `{bind}` mounts a named volume, which is not allowed"
                ));
            }
            if !bind_allowed(source, rules) {
                return Err(format!(
                    "HostConfig.Binds `{bind}`: host path `{source}` is not in the bind allowlist"
                ));
            }
        }
    }
    if let Some(mounts) = hc.get("Mounts") {
        let list = mounts
            .as_array()
            .ok_or_else(|| format!("HostConfig.Mounts must be an array, not {}", mounts.kind()))?;
        for m in list {
            let m = Fields::new(m, "each entry of HostConfig.Mounts")?;
            let kind = match m.get("Type") {
                Some(v) => string_of(v, "HostConfig.Mounts[].Type")?,
                None => "",
            };
            let source = match m.get("Source") {
                Some(v) => string_of(v, "HostConfig.Mounts[].Source")?,
                None => "",
            };
            match kind {
                "tmpfs" if source.is_empty() => {}
                "bind" if bind_allowed(source, rules) => {}
                "bind" => {
                    return Err(format!(
                        "HostConfig.Mounts: bind of `{source}` is not in the bind allowlist"
                    ));
                }
                other => {
                    return Err(format!(
                        "HostConfig.Mounts: a `{other}` mount is not allowed (only tmpfs and allowlisted binds)"
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

    fn check(v: &serde_json::Value) -> Check {
        check_with(v, &Policy::default())
    }

    fn check_with(v: &serde_json::Value, p: &Policy) -> Check {
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
                with(&["HostConfig", "Binds"], json!(["vol:/data"])),
                "named volume",
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
                "volume",
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
        check(serde_json::json!({"Name": "b", "Driver": "macvlan", "Labels": {"berth.managed": "true"}})).unwrap_err();
        check(serde_json::json!({"Name": "b", "Options": {"com.docker.network.bridge.name": "docker0"}, "Labels": {"berth.managed": "true"}})).unwrap_err();
        check(
            serde_json::json!({"Name": "b", "Ingress": true, "Labels": {"berth.managed": "true"}}),
        )
        .unwrap_err();
    }
}
