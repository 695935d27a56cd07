//! The request corpus: allowed and denied requests, bypass attempts
//! included, sent byte for byte through the socket proxy to the real Docker
//! engine.
//!
//! Between the proxy and the engine sits a [`Tap`] that records every
//! request line reaching the engine. An allowed request must reach it and
//! succeed there; a denied one must not reach it at all (the only traffic a
//! denied container- or network-scoped call may cause is the proxy's own
//! managed-label inspect). At the end the engine is asked directly whether
//! anything a denied request tried (exec, privileged or bind-mounted
//! containers, removing a foreign container) happened anyway.
//!
//! Needs the Docker engine (`DOCKER_HOST` or /var/run/docker.sock) and
//! busybox at /bin/busybox.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proxies::socket::{Policy, Running};
use serde_json::{Value, json};
use support::{
    Addr, Tap, docker_socket, enc, managed_filter, post_json, request, send, send_head, test_image,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Forwarded; the engine answered with one of these statuses.
    Allow(&'static [u16]),
    /// 403 naming this rule; never forwarded.
    Deny(&'static str),
    /// Refused by the HTTP parser (400) before any policy; never forwarded.
    Malformed,
    /// The managed-label check found no such object: 404, not forwarded.
    NotFound,
    /// Whatever the answer, no request reaching the engine holds this.
    NotForwarded(&'static str),
}

struct Case {
    name: String,
    request: Vec<u8>,
    expect: Expect,
}

fn case(name: impl Into<String>, request: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        request,
        expect,
    }
}

fn get(target: &str) -> Vec<u8> {
    request("GET", target, &[], None)
}

fn method(m: &str, target: &str) -> Vec<u8> {
    request(m, target, &[], None)
}

/// Removes this run's containers and network, pass or fail.
struct Cleanup {
    label: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for label in [self.label.clone(), format!("{}-evil", self.label)] {
            let out = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label=berth.test={label}"))
                .output();
            let Ok(out) = out else { continue };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .output();
            }
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
        let out = std::process::Command::new("docker")
            .args(["volume", "ls", "-q", "--filter"])
            .arg(format!("label=berth.test={}", self.label))
            .output();
        if let Ok(out) = out {
            for volume in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = std::process::Command::new("docker")
                    .args(["volume", "rm", "-f", volume])
                    .output();
            }
        }
    }
}

struct Fixture {
    image: String,
    run: String,
    engine: Addr,
}

impl Fixture {
    fn label(&self) -> String {
        format!("corpus-{}", self.run)
    }

    /// A container-create body berth itself would send (hardened, managed).
    fn hardened(&self, cmd: &[&str]) -> Value {
        json!({
            "Image": self.image,
            "Cmd": cmd,
            "Labels": {"berth.managed": "true", "berth.test": self.label()},
            "HostConfig": {
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges:true"],
                "NetworkMode": "none",
                "Init": true
            }
        })
    }

    /// A hardened body with one change; such containers are labelled so the
    /// end of the test can tell whether any was created.
    fn evil(&self, path: &[&str], value: Value) -> Value {
        let mut body = self.hardened(&["sleep", "300"]);
        body["Labels"]["berth.test"] = json!(format!("{}-evil", self.label()));
        let mut at = &mut body;
        for p in &path[..path.len() - 1] {
            at = at.get_mut(*p).unwrap();
        }
        at[path[path.len() - 1]] = value;
        body
    }

    /// Creates and starts a container directly on the engine.
    async fn direct_container(&self, name: &str, managed: bool) -> String {
        let mut labels = json!({"berth.test": self.label()});
        if managed {
            labels["berth.managed"] = json!("true");
        }
        let body = json!({
            "Image": self.image,
            "Cmd": ["sleep", "300"],
            "Labels": labels,
            "HostConfig": {"NetworkMode": "none", "Init": true}
        });
        let created = send(
            &self.engine,
            &post_json(&format!("/containers/create?name={name}"), &body),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.text());
        let id = created.json()["Id"].as_str().unwrap().to_owned();
        let started = send(
            &self.engine,
            &method("POST", &format!("/containers/{id}/start")),
        )
        .await;
        assert_eq!(started.status, 204, "{}", started.text());
        id
    }

    async fn inspect(&self, reference: &str) -> Option<Value> {
        let a = send(&self.engine, &get(&format!("/containers/{reference}/json"))).await;
        (a.status == 200).then(|| a.json())
    }

    async fn count_labelled(&self, label: &str) -> usize {
        let filter = enc(&format!(r#"{{"label":["berth.test={label}"]}}"#));
        let a = send(
            &self.engine,
            &get(&format!("/containers/json?all=1&filters={filter}")),
        )
        .await;
        a.json().as_array().unwrap().len()
    }
}

fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

fn is_managed_check(line: &str) -> bool {
    let Some(target) = line.strip_prefix("GET ") else {
        return false;
    };
    ["/containers/", "/exec/", "/images/"]
        .iter()
        .any(|p| target.starts_with(p) && target.ends_with("/json"))
        || (["/networks/", "/volumes/"]
            .iter()
            .any(|p| target.starts_with(p))
            && !target.contains('?'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_through_the_proxy_against_the_real_engine() {
    let image = test_image().await;
    let fx = Fixture {
        image,
        run: run_id(),
        engine: Addr::Unix(docker_socket()),
    };
    let network = format!("berth-proxy-corpus-{}", fx.run);
    let _cleanup = Cleanup {
        label: fx.label(),
        network: network.clone(),
    };
    let tap = Tap::start(&docker_socket()).await;
    let proxy = Running::start(Policy::default(), &tap.docker_host(), "127.0.0.1:0")
        .await
        .unwrap();
    let via = Addr::from_docker_host(proxy.docker_host());

    let m_name = format!("berth-proxy-corpus-{}-managed", fx.run);
    let u_name = format!("berth-proxy-corpus-{}-foreign", fx.run);
    let m = fx.direct_container(&m_name, true).await;
    let u = fx.direct_container(&u_name, false).await;
    let created = format!("berth-proxy-corpus-{}-created", fx.run);
    let volume = format!("berth-proxy-corpus-{}-vol", fx.run);
    // A volume berth does not own, made directly on the engine.
    let foreign_volume = format!("berth-proxy-corpus-{}-foreign-vol", fx.run);
    let made = send(
        &fx.engine,
        &post_json(
            "/volumes/create",
            &json!({"Name": foreign_volume, "Labels": {"berth.test": fx.label()}}),
        ),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let labels = enc(r#"{"berth.managed":"true"}"#);
    let folded = format!("berth-proxy-corpus-{}-folded", fx.run);
    let chunked_name = format!("berth-proxy-corpus-{}-chunked", fx.run);

    use Expect::*;
    let lf = managed_filter();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut cases = vec![
        // --- allowed: engine ---------------------------------------------------
        case("ping", get("/_ping"), Allow(&[200])),
        case("ping HEAD", method("HEAD", "/_ping"), Allow(&[200])),
        case("ping versioned", get("/v1.41/_ping"), Allow(&[200])),
        case("version", get("/version"), Allow(&[200])),
        case("info versioned", get("/v1.41/info"), Allow(&[200])),
        case("doubled and trailing slashes", get("//v1.41//version/"), Allow(&[200])),
        case("encoded letter", get("/v1.41/%76ersion"), Allow(&[200])),
        case("image list", get("/v1.41/images/json"), Allow(&[200])),
        case(
            "image inspect by repo:tag",
            get(&format!("/v1.41/images/{}/json", fx.image)),
            Allow(&[200]),
        ),
        case(
            "image pull is forwarded (no registry here: the engine fails it)",
            method("POST", "/v1.41/images/create?fromImage=nosuch.invalid%2Fx&tag=1"),
            Allow(&[404, 500]),
        ),
        case(
            "container list with the managed filter",
            get(&format!("/v1.41/containers/json?all=1&filters={lf}")),
            Allow(&[200]),
        ),
        case(
            "events window with the managed filter",
            get(&format!(
                "/v1.41/events?since={}&until={}&filters={lf}",
                now - 60,
                now - 1
            )),
            Allow(&[200]),
        ),
        // --- allowed: a managed container by ID, name, prefix --------------------
        case("inspect managed by ID", get(&format!("/v1.41/containers/{m}/json")), Allow(&[200])),
        case(
            "inspect managed by name",
            get(&format!("/v1.41/containers/{m_name}/json")),
            Allow(&[200]),
        ),
        case(
            "inspect managed by ID prefix",
            get(&format!("/containers/{}/json", &m[..12])),
            Allow(&[200]),
        ),
        case(
            "logs of a managed container",
            get(&format!("/v1.41/containers/{m}/logs?stdout=1&stderr=1")),
            Allow(&[200]),
        ),
        // --- allowed: berth's container lifecycle --------------------------------
        case(
            "create hardened and managed",
            post_json(
                &format!("/v1.41/containers/create?name={created}"),
                &fx.hardened(&["sleep", "300"]),
            ),
            Allow(&[201]),
        ),
        case("start", method("POST", &format!("/v1.41/containers/{created}/start")), Allow(&[204])),
        case(
            "kill",
            method("POST", &format!("/v1.41/containers/{created}/kill?signal=KILL")),
            Allow(&[204]),
        ),
        case(
            "wait",
            method(
                "POST",
                &format!("/v1.41/containers/{created}/wait?condition=not-running"),
            ),
            Allow(&[200]),
        ),
        case(
            "stop a stopped container",
            method("POST", &format!("/v1.41/containers/{created}/stop?t=1")),
            Allow(&[204, 304]),
        ),
        case(
            "remove",
            method("DELETE", &format!("/v1.41/containers/{created}?force=1&v=1")),
            Allow(&[204]),
        ),
        case(
            "remove again: not found, from the managed check",
            method("DELETE", &format!("/v1.41/containers/{created}?force=1")),
            NotFound,
        ),
        case(
            "create with lower-case field names (Go folds them; so does the proxy)",
            post_json(
                &format!("/v1.41/containers/create?name={folded}"),
                &json!({
                    "image": fx.image,
                    "cmd": ["true"],
                    "labels": {"berth.managed": "true", "berth.test": fx.label()},
                    "hostconfig": {"capdrop": ["ALL"], "securityopt": ["no-new-privileges"]}
                }),
            ),
            Allow(&[201]),
        ),
        case("chunked create body", {
            let body = fx.hardened(&["true"]).to_string();
            let (a, b) = body.split_at(body.len() / 2);
            format!(
                "POST /v1.41/containers/create?name={chunked_name} HTTP/1.1\r\nHost: d\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
            .into_bytes()
        }, Allow(&[201])),
        // --- allowed: berth's network --------------------------------------------
        case(
            "network list by name",
            get(&format!(
                "/v1.41/networks?filters={}",
                enc(&format!(r#"{{"name":["{network}"]}}"#))
            )),
            Allow(&[200]),
        ),
        case(
            "network create (managed bridge)",
            post_json(
                "/v1.41/networks/create",
                &json!({"Name": network, "Driver": "bridge", "CheckDuplicate": true,
                        "Labels": {"berth.managed": "true", "berth.test": fx.label()}}),
            ),
            Allow(&[201]),
        ),
        case("network inspect", get(&format!("/v1.41/networks/{network}")), Allow(&[200])),
        case("network remove", method("DELETE", &format!("/v1.41/networks/{network}")), Allow(&[204])),
        // --- allowed: container jobs ---------------------------------------------
        case(
            "exec create on a managed container",
            post_json(&format!("/v1.41/containers/{m}/exec"), &json!({"Cmd": ["id"], "AttachStdout": true})),
            Allow(&[201]),
        ),
        case(
            "volume create (tmpfs, managed)",
            post_json(
                "/v1.41/volumes/create",
                &json!({"Name": volume, "Driver": "local",
                        "DriverOpts": {"type": "tmpfs", "device": "tmpfs", "o": "size=8m,mode=1777"},
                        "Labels": {"berth.managed": "true", "berth.test": fx.label()}}),
            ),
            Allow(&[201]),
        ),
        case("volume list with the managed filter", get(&format!("/v1.41/volumes?filters={lf}")), Allow(&[200])),
        case("volume inspect", get(&format!("/v1.41/volumes/{volume}")), Allow(&[200])),
        case("volume remove", method("DELETE", &format!("/v1.41/volumes/{volume}?force=1")), Allow(&[204])),
        case("volume remove again: not found", method("DELETE", &format!("/v1.41/volumes/{volume}")), NotFound),
        case("exec inspect of no such exec: not found", get(&format!("/v1.41/exec/{}/json", "0".repeat(64))), NotFound),
        // --- denied: endpoints outside the table -------------------------------
        case("exec start without the upgrade", post_json("/v1.41/exec/0123abcd/start", &json!({"Detach": true})), Deny("upgrade")),
        case("build without the managed label", method("POST", "/v1.41/build?t=x"), Deny("image_build")),
        case("commit", method("POST", &format!("/v1.41/commit?container={m}")), Deny("no-rule")),
        case("swarm inspect", get("/v1.41/swarm"), Deny("no-rule")),
        case("swarm init", post_json("/swarm/init", &json!({})), Deny("no-rule")),
        case("services", get("/v1.41/services"), Deny("no-rule")),
        case("nodes", get("/v1.41/nodes"), Deny("no-rule")),
        case("secrets", get("/v1.41/secrets"), Deny("no-rule")),
        case("configs", get("/v1.41/configs"), Deny("no-rule")),
        case("plugins", get("/v1.41/plugins"), Deny("no-rule")),
        case("container prune", method("POST", "/v1.41/containers/prune"), Deny("method")),
        case("image prune", method("POST", "/v1.41/images/prune"), Deny("method")),
        case("volume prune", method("POST", "/v1.41/volumes/prune"), Deny("method")),
        case("network prune", method("POST", "/v1.41/networks/prune"), Deny("method")),
        case("volume list without the managed filter", get("/v1.41/volumes"), Deny("volume_list")),
        case("volume create without the managed label", post_json("/v1.41/volumes/create", &json!({"Name": "x"})), Deny("volume_create")),
        case("archive upload", method("PUT", &format!("/v1.41/containers/{m}/archive?path=/")), Deny("no-rule")),
        case("archive download", get(&format!("/v1.41/containers/{m}/archive?path=/etc")), Deny("no-rule")),
        case("export", get(&format!("/v1.41/containers/{m}/export")), Deny("no-rule")),
        case("update", post_json(&format!("/v1.41/containers/{m}/update"), &json!({"Memory": 0})), Deny("no-rule")),
        case("rename", method("POST", &format!("/v1.41/containers/{m}/rename?name=x")), Deny("no-rule")),
        case("attach over websocket", get(&format!("/v1.41/containers/{m}/attach/ws")), Deny("no-rule")),
        case("buildkit session", method("POST", "/session"), Deny("no-rule")),
        case("image delete of an unmanaged image", method("DELETE", &format!("/v1.41/images/{}?force=1", fx.image)), Deny("image_remove")),
        case("image load", method("POST", "/v1.41/images/load"), Deny("method")),
        case("network connect to the default bridge", post_json("/v1.41/networks/bridge/connect", &json!({"Container": m})), Deny("network_connect")),
        case("system df", get("/v1.41/system/df"), Deny("no-rule")),
        // --- denied: objects berth does not own --------------------------------
        case("inspect a foreign container", get(&format!("/v1.41/containers/{u}/json")), Deny("container_inspect")),
        case("inspect a foreign container by name", get(&format!("/v1.41/containers/{u_name}/json")), Deny("container_inspect")),
        case("stop a foreign container", method("POST", &format!("/v1.41/containers/{u}/stop")), Deny("container_stop")),
        case("remove a foreign container", method("DELETE", &format!("/v1.41/containers/{u}?force=1")), Deny("container_remove")),
        case("logs of a foreign container", get(&format!("/containers/{u}/logs?stdout=1")), Deny("container_logs")),
        case("attach to a foreign container", request("POST", &format!("/v1.41/containers/{u}/attach?stream=1&stdin=1"), &[("Connection", "Upgrade"), ("Upgrade", "tcp")], None), Deny("container_attach")),
        case("remove the default bridge network", method("DELETE", "/v1.41/networks/bridge"), Deny("network_remove")),
        case("inspect the host network", get("/v1.41/networks/host"), Deny("network_inspect")),
        case("exec create on a foreign container", post_json(&format!("/containers/{u}/exec"), &json!({"Cmd": ["touch", "/pwned"]})), Deny("exec_create")),
        case("exec create on a foreign container by name", post_json(&format!("/v1.41/containers/{u_name}/exec"), &json!({"Cmd": ["id"]})), Deny("exec_create")),
        case("inspect a foreign volume", get(&format!("/v1.41/volumes/{foreign_volume}")), Deny("volume_inspect")),
        case("remove a foreign volume", method("DELETE", &format!("/v1.41/volumes/{foreign_volume}?force=1")), Deny("volume_remove")),
        case("mount a foreign volume", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "Mounts"], json!([{"Type": "volume", "Source": foreign_volume, "Target": "/v"}]))), Deny("container_create")),
        case("bind a foreign volume", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "Binds"], json!([format!("{foreign_volume}:/v")]))), Deny("container_create")),
        case("mount a volume that does not exist (Docker would create it)", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "Binds"], json!([format!("{foreign_volume}-missing:/v")]))), Deny("container_create")),
        // --- denied: create bodies -----------------------------------------------
        case("privileged", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "Privileged"], json!(true))), Deny("container_create")),
        case("bind mount of /", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "Binds"], json!(["/:/host"]))), Deny("container_create")),
        case("mount of the docker socket", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "Mounts"], json!([{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/var/run/docker.sock"}]))), Deny("container_create")),
        case("host pid", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "PidMode"], json!("host"))), Deny("container_create")),
        case("host network", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "NetworkMode"], json!("host"))), Deny("container_create")),
        case("host userns", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "UsernsMode"], json!("host"))), Deny("container_create")),
        case("SYS_ADMIN", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "CapAdd"], json!(["SYS_ADMIN"]))), Deny("container_create")),
        case("seccomp unconfined", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "SecurityOpt"], json!(["no-new-privileges:true", "seccomp=unconfined"]))), Deny("container_create")),
        case("devices", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "Devices"], json!([{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem", "CgroupPermissions": "rwm"}]))), Deny("container_create")),
        case("missing managed label", post_json("/v1.41/containers/create", &{
            let mut b = fx.evil(&["Image"], json!(fx.image));
            b["Labels"].as_object_mut().unwrap().remove("berth.managed");
            b
        }), Deny("container_create")),
        case("HostConfig field at the top level", post_json("/v1.41/containers/create", &fx.evil(&["Privileged"], json!(true))), Deny("container_create")),
        case("case variant next to the real field", {
            let mut b = fx.evil(&["Image"], json!(fx.image));
            b["HostConfig"]["privileged"] = json!(true);
            post_json("/v1.41/containers/create", &b)
        }, Deny("container_create")),
        case("Kelvin-sign NetworkMode", {
            let mut b = fx.evil(&["Image"], json!(fx.image));
            b["HostConfig"].as_object_mut().unwrap().remove("NetworkMode");
            b["HostConfig"]["Networ\u{212A}Mode"] = json!("host");
            post_json("/v1.41/containers/create", &b)
        }, Deny("container_create")),
        case("duplicate key, the later one privileged", {
            let b = fx.evil(&["Image"], json!(fx.image)).to_string();
            let b = b.replacen("\"HostConfig\":{", "\"HostConfig\":{\"Privileged\":false,\"Privileged\":true,", 1);
            request("POST", "/v1.41/containers/create", &[("Content-Type", "application/json")], Some(b.as_bytes()))
        }, Deny("container_create")),
        case("form content type", request("POST", "/v1.41/containers/create", &[("Content-Type", "application/x-www-form-urlencoded")], Some(fx.evil(&["Image"], json!(fx.image)).to_string().as_bytes())), Deny("container_create")),
        case("body over the limit", {
            let mut b = fx.evil(&["Image"], json!(fx.image));
            b["Env"] = json!([format!("PAD={}", "x".repeat(1_100_000))]);
            post_json("/v1.41/containers/create", &b)
        }, Deny("body-size")),
        case("a name that looks like a full ID", post_json(&format!("/v1.41/containers/create?name={}", "a".repeat(64)), &fx.evil(&["Image"], json!(fx.image))), Deny("container_create")),
        case("network create with the host driver", post_json("/v1.41/networks/create", &json!({"Name": "x", "Driver": "host", "Labels": {"berth.managed": "true"}})), Deny("network_create")),
        case("network create adopting docker0", post_json("/v1.41/networks/create", &json!({"Name": "x", "Options": {"com.docker.network.bridge.name": "docker0"}, "Labels": {"berth.managed": "true"}})), Deny("network_create")),
        case("network create without the label", post_json("/v1.41/networks/create", &json!({"Name": "x"})), Deny("network_create")),
        case("volume create binding a host path", post_json("/v1.41/volumes/create", &json!({"Name": format!("{volume}-bind"), "DriverOpts": {"type": "none", "o": "bind", "device": "/"}, "Labels": {"berth.managed": "true", "berth.test": fx.label()}})), Deny("volume_create")),
        case("volume create with a tmpfs bind option", post_json("/v1.41/volumes/create", &json!({"Name": format!("{volume}-bind"), "DriverOpts": {"type": "tmpfs", "o": "bind", "device": "tmpfs"}, "Labels": {"berth.managed": "true", "berth.test": fx.label()}})), Deny("volume_create")),
        case("volume create with another driver", post_json("/v1.41/volumes/create", &json!({"Name": format!("{volume}-nfs"), "Driver": "nfs", "Labels": {"berth.managed": "true"}})), Deny("volume_create")),
        case("mount with an inline volume driver", post_json("/v1.41/containers/create", &fx.evil(&["HostConfig", "Mounts"], json!([{"Type": "volume", "Source": format!("{volume}-inline"), "Target": "/h", "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}}}]))), Deny("container_create")),
        case("privileged exec", post_json(&format!("/v1.41/containers/{m}/exec"), &json!({"Cmd": ["id"], "Privileged": true})), Deny("exec_create")),
        case("build with host networking", request("POST", &format!("/v1.41/build?labels={labels}&networkmode=host"), &[("Content-Type", "application/x-tar")], Some(b"")), Deny("image_build")),
        case("build from a remote context", method("POST", &format!("/v1.41/build?labels={labels}&remote=https%3A%2F%2Fexample.com%2Fx.git")), Deny("image_build")),
        case("build with a form body (Go would read remote from it)", request("POST", &format!("/v1.41/build?labels={labels}"), &[("Content-Type", "application/x-www-form-urlencoded")], Some(b"remote=https://example.com/x.git")), Deny("image_build")),
        case("build tagging an image outside the prefix", request("POST", &format!("/v1.41/build?labels={labels}&t=berth%3Alatest"), &[("Content-Type", "application/x-tar")], Some(b"")), Deny("image_build")),
        case("build with BuildKit", request("POST", &format!("/v1.41/build?labels={labels}&version=2"), &[("Content-Type", "application/x-tar")], Some(b"")), Deny("image_build")),
        // --- denied: bodies where none belongs, old APIs ---------------------------
        case("start with a HostConfig body on an old API", post_json(&format!("/v1.23/containers/{m}/start"), &json!({"Privileged": true})), Deny("api-version")),
        case("start with a body", post_json(&format!("/v1.41/containers/{m}/start"), &json!({"Privileged": true})), Deny("container_start")),
        case("wait with a form body", request("POST", &format!("/v1.41/containers/{m}/wait"), &[("Content-Type", "application/x-www-form-urlencoded")], Some(b"condition=removed")), Deny("container_wait")),
        // --- denied: path tricks ---------------------------------------------------
        case("encoded letters spelling exec (matched as exec, and without a body)", method("POST", &format!("/v1.41/containers/{m}/%65%78%65%63")), Deny("exec_create")),
        case("encoded letters spelling update", method("POST", &format!("/v1.41/containers/{m}/%75%70%64%61%74%65")), Deny("no-rule")),
        case("encoded slash", method("POST", &format!("/v1.41/containers%2F{m}%2Fexec")), Deny("request-target")),
        case("encoded slash, lower case", get("/v1.41/containers%2fjson"), Deny("request-target")),
        case("dot-dot segment", get(&format!("/v1.41/containers/{m}/../../exec/x/json")), Deny("request-target")),
        case("encoded dot-dot", get("/v1.41/containers/%2e%2e/json"), Deny("request-target")),
        case("double encoding", get("/v1.41/containers%252Fjson"), Deny("request-target")),
        case("encoded NUL", get("/v1.41/_ping%00"), Deny("request-target")),
        case("encoded backslash", get("/v1.41/containers%5Cjson"), Deny("request-target")),
        case("encoded question mark", get(&format!("/v1.41/containers/{m}%3F/json")), Deny("request-target")),
        case("upper-case route", get(&format!("/v1.41/CONTAINERS/json?filters={lf}")), Deny("no-rule")),
        case("capitalised route word", get(&format!("/Containers/{m}/json")), Deny("no-rule")),
        case("upper-case ping", get("/v1.41/_PING"), Deny("no-rule")),
        case("malformed version", get("/v1/containers/json"), Deny("request-target")),
        case("three-part version", get("/v1.41.0/_ping"), Deny("request-target")),
        case("double version prefix", get("/v1.41/v1.41/_ping"), Deny("no-rule")),
        case("absolute-form target", get("http://docker/v1.41/containers/json"), Deny("request-target")),
        case("asterisk-form target", method("OPTIONS", "*"), Deny("request-target")),
        case("raw backslash", get("/v1.41\\containers\\json"), Deny("request-target")),
        case("fragment (the HTTP parser drops it; only /_ping is forwarded)", get("/_ping#/../../containers/x/exec"), NotForwarded("#")),
        // --- denied: query tricks -------------------------------------------------
        case("list without the managed filter", get("/v1.41/containers/json?all=1"), Deny("container_list")),
        case("list filtering on managed=false", get(&format!("/v1.41/containers/json?filters={}", enc(r#"{"label":["berth.managed=false"]}"#))), Deny("container_list")),
        case("duplicate filters, the first one empty", get(&format!("/v1.41/containers/json?filters=&filters={lf}")), Deny("request-target")),
        case("duplicate via an encoded name", get(&format!("/v1.41/containers/json?filters={lf}&%66ilters=")), Deny("request-target")),
        case("semicolon separator", get(&format!("/v1.41/containers/json?all=1;filters={lf}")), Deny("request-target")),
        case("events without a filter", get("/v1.41/events"), Deny("events")),
        case("filters with a repeated key", get(&format!("/v1.41/events?filters={}", enc(r#"{"label":["berth.managed=true"],"label":["x=y"]}"#))), Deny("events")),
        case("image import is not a pull", method("POST", "/v1.41/images/create?fromSrc=-&repo=evil"), Deny("image_pull")),
        case("pull and import at once", method("POST", "/v1.41/images/create?fromImage=busybox&fromSrc=-"), Deny("image_pull")),
        case("unknown query parameter", get(&format!("/v1.41/containers/{m}/json?size=1&x=1")), Deny("container_inspect")),
        // --- denied: methods and upgrades -------------------------------------------
        case("OPTIONS", method("OPTIONS", "/v1.41/_ping"), Deny("method")),
        case("TRACE", method("TRACE", "/_ping"), Deny("method")),
        case("PATCH", method("PATCH", &format!("/v1.41/containers/{m}/json")), Deny("method")),
        case("unknown method", method("BREW", "/_ping"), Deny("method")),
        case("POST to a GET route", method("POST", "/v1.41/info"), Deny("method")),
        case("attach without the upgrade handshake", method("POST", &format!("/v1.41/containers/{m}/attach?stream=1&stdin=1")), Deny("upgrade")),
        case("upgrade to h2c on ping", request("GET", "/_ping", &[("Connection", "Upgrade"), ("Upgrade", "h2c")], None), Deny("upgrade")),
        case("request smuggling: length and chunked", {
            let smuggled = format!("POST /v1.41/containers/{m}/exec HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{{\"Cmd\":[\"id\"]}}");
            let body = format!("0\r\n\r\n{smuggled}");
            format!("POST /v1.41/containers/{m}/start HTTP/1.1\r\nHost: d\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}", body.len()).into_bytes()
        }, NotForwarded("/exec")),
        case("request smuggling: two lengths", format!("POST /v1.41/containers/{m}/start HTTP/1.1\r\nHost: d\r\nConnection: close\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n").into_bytes(), Malformed),
    ];
    let allowed = cases
        .iter()
        .filter(|c| matches!(c.expect, Allow(_)))
        .count();
    let denied = cases.len() - allowed;
    assert!(
        cases.len() >= 60 && allowed >= 20 && denied >= 40,
        "{allowed} allowed, {denied} denied"
    );

    let mut failures = Vec::new();
    for c in cases.drain(..) {
        let before = tap.len();
        let answer = send(&via, &c.request).await;
        // The engine saw the forwarded request before the proxy answered.
        let reached: Vec<String> = tap.seen()[before..].to_vec();
        let forwarded: Vec<&String> = reached.iter().filter(|l| !is_managed_check(l)).collect();
        let problem = match c.expect {
            Allow(statuses) => {
                if !statuses.contains(&answer.status) {
                    Some(format!(
                        "status {} (wanted {statuses:?}): {}",
                        answer.status,
                        answer.message()
                    ))
                } else if forwarded.is_empty() && reached.is_empty() {
                    Some("never reached the engine".to_owned())
                } else {
                    None
                }
            }
            Deny(rule) => {
                let message = answer.message();
                if answer.status != 403 {
                    Some(format!("status {} (wanted 403): {message}", answer.status))
                } else if !message.contains(&format!("rule `{rule}`")) {
                    Some(format!("message does not name rule `{rule}`: {message}"))
                } else if !forwarded.is_empty() {
                    Some(format!("reached the engine: {forwarded:?}"))
                } else {
                    None
                }
            }
            Malformed => {
                if answer.status != 400 && answer.status != 403 {
                    Some(format!("status {} (wanted 400/403)", answer.status))
                } else if !reached.is_empty() {
                    Some(format!("reached the engine: {reached:?}"))
                } else {
                    None
                }
            }
            NotForwarded(needle) => {
                if reached.iter().any(|l| l.contains(needle)) {
                    Some(format!("reached the engine: {reached:?}"))
                } else {
                    None
                }
            }
            NotFound => {
                if answer.status != 404 {
                    Some(format!(
                        "status {} (wanted 404): {}",
                        answer.status,
                        answer.message()
                    ))
                } else if !forwarded.is_empty() {
                    Some(format!("reached the engine: {forwarded:?}"))
                } else {
                    None
                }
            }
        };
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "corpus failures:\n{}",
        failures.join("\n")
    );

    // What the denied requests tried did not happen.
    assert_eq!(
        fx.count_labelled(&format!("{}-evil", fx.label())).await,
        0,
        "a denied create made a container"
    );
    let foreign = fx
        .inspect(&u)
        .await
        .expect("the foreign container survived");
    assert!(
        foreign["ExecIDs"].is_null(),
        "an exec was created: {foreign}"
    );
    assert_eq!(foreign["State"]["Running"], json!(true));
    let managed = fx.inspect(&m).await.unwrap();
    assert_eq!(
        managed["ExecIDs"].as_array().map(Vec::len),
        Some(1),
        "only the allowed exec was created: {managed}"
    );
    let volumes = send(
        &fx.engine,
        &get(&format!(
            "/volumes?filters={}",
            enc(&format!(r#"{{"label":["berth.test={}"]}}"#, fx.label()))
        )),
    )
    .await
    .json();
    let names: Vec<&str> = volumes["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["Name"].as_str())
        .collect();
    assert_eq!(
        names,
        [foreign_volume.as_str()],
        "only the foreign volume is left"
    );
    // What the allowed ones did, did.
    assert!(
        fx.inspect(&created).await.is_none(),
        "removed through the proxy"
    );
    let folded_labels = fx
        .inspect(&folded)
        .await
        .expect("created through the proxy");
    assert_eq!(
        folded_labels["Config"]["Labels"]["berth.managed"],
        json!("true")
    );
    assert!(fx.inspect(&chunked_name).await.is_some());

    // Every decision was counted.
    let metrics = proxy.proxy().metrics().encode();
    for line in [
        r#"berth_socket_proxy_requests_total{decision="deny",rule="no-rule"}"#,
        r#"berth_socket_proxy_requests_total{decision="deny",rule="container_create"}"#,
        r#"berth_socket_proxy_requests_total{decision="allow",rule="container_create"} 3"#,
        r#"berth_socket_proxy_managed_checks_total{kind="container",result="cached"}"#,
        r#"berth_socket_proxy_requests_total{decision="not_found",rule="container_remove"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    proxy.stop().await;
}

/// Attach with stdin through the proxy: the upgrade, bytes both ways, the
/// half-close (the container's `cat` ends when berth's side closes), and a
/// following log stream that ends when the container does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_upgrade_and_follow_streams_pass_through() {
    let image = test_image().await;
    let fx = Fixture {
        image,
        run: run_id(),
        engine: Addr::Unix(docker_socket()),
    };
    let _cleanup = Cleanup {
        label: fx.label(),
        network: format!("berth-proxy-none-{}", fx.run),
    };
    let proxy = Running::start(
        Policy::default(),
        &format!("unix://{}", docker_socket().display()),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let via = Addr::from_docker_host(proxy.docker_host());

    let mut body = fx.hardened(&["cat"]);
    body["AttachStdin"] = json!(true);
    body["OpenStdin"] = json!(true);
    body["StdinOnce"] = json!(true);
    let created = send(&via, &post_json("/v1.41/containers/create", &body)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["Id"].as_str().unwrap().to_owned();

    let attach = format!(
        "POST /v1.41/containers/{id}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    );
    let (head, mut stream, mut output) = send_head(&via, attach.as_bytes()).await;
    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("tcp"));

    let started = send(
        &via,
        &method("POST", &format!("/v1.41/containers/{id}/start")),
    )
    .await;
    assert_eq!(started.status, 204, "{}", started.text());
    // Follow the logs from now on; the stream ends when the container does.
    let logs_via = via.clone();
    let logs_id = id.clone();
    let logs = tokio::spawn(async move {
        send(
            &logs_via,
            &get(&format!(
                "/v1.41/containers/{logs_id}/logs?follow=1&stdout=1&stderr=1"
            )),
        )
        .await
    });

    stream
        .write_all(b"hello through the proxy\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap(); // half-close: cat sees end of input
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut output))
        .await
        .expect("the attach stream ends when the container does")
        .unwrap();
    let text = String::from_utf8_lossy(&output);
    assert!(text.contains("hello through the proxy"), "{text:?}");

    let waited = send(
        &via,
        &method(
            "POST",
            &format!("/v1.41/containers/{id}/wait?condition=not-running"),
        ),
    )
    .await;
    assert_eq!(waited.status, 200);
    assert_eq!(
        waited.json()["StatusCode"],
        json!(0),
        "cat saw the end of its input"
    );
    let logs = tokio::time::timeout(Duration::from_secs(15), logs)
        .await
        .expect("the followed log stream ends")
        .unwrap();
    assert_eq!(logs.status, 200);
    assert!(
        logs.text().contains("hello through the proxy"),
        "{:?}",
        logs.text()
    );

    let removed = send(
        &via,
        &method("DELETE", &format!("/v1.41/containers/{id}?force=1")),
    )
    .await;
    assert_eq!(removed.status, 204);
    proxy.stop().await;
}

/// A name is re-resolved on every call, and the call goes to the ID that
/// was checked: removing a managed container and creating a foreign one
/// under the same name does not let the foreign one through the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_name_is_checked_again() {
    let image = test_image().await;
    let fx = Fixture {
        image,
        run: run_id(),
        engine: Addr::Unix(docker_socket()),
    };
    let _cleanup = Cleanup {
        label: fx.label(),
        network: format!("berth-proxy-none-{}", fx.run),
    };
    let proxy = Running::start(
        Policy::default(),
        &format!("unix://{}", docker_socket().display()),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let via = Addr::from_docker_host(proxy.docker_host());
    let name = format!("berth-proxy-reuse-{}", fx.run);

    let managed = fx.direct_container(&name, true).await;
    let ok = send(&via, &get(&format!("/v1.41/containers/{name}/json"))).await;
    assert_eq!(ok.status, 200);
    let ok = send(&via, &get(&format!("/v1.41/containers/{managed}/json"))).await;
    assert_eq!(ok.status, 200);
    let gone = send(
        &fx.engine,
        &method("DELETE", &format!("/containers/{managed}?force=1")),
    )
    .await;
    assert_eq!(gone.status, 204);
    let foreign = fx.direct_container(&name, false).await;
    assert_ne!(foreign, managed);

    // Within the cache lifetime: by name and by the new ID, denied.
    let denied = send(
        &via,
        &method("POST", &format!("/v1.41/containers/{name}/stop?t=0")),
    )
    .await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    let denied = send(
        &via,
        &method("DELETE", &format!("/v1.41/containers/{foreign}?force=1")),
    )
    .await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    // The old ID is gone, not re-pointed.
    let old = send(&via, &get(&format!("/v1.41/containers/{managed}/json"))).await;
    assert_eq!(old.status, 404, "{}", old.text());
    assert!(fx.inspect(&foreign).await.unwrap()["State"]["Running"] == json!(true));
    proxy.stop().await;
}
