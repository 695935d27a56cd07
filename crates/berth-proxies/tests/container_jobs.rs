//! Container jobs through the socket proxy, against the real engine: the
//! calls berth makes for a job that runs in a container (the runner's
//! container hooks): a per-job network and tmpfs volume, a job container
//! mounting the volume, `docker exec` with its output streamed back and its
//! exit code read from the exec's inspect, network connect and disconnect,
//! an image built for a Dockerfile action and removed again; and the
//! denials around them, each checked on the engine as well (what a denied
//! call tried did not happen, and it never reached the engine).
//!
//! Needs the Docker engine (`DOCKER_HOST` or /var/run/docker.sock) and
//! busybox at /bin/busybox.

mod support;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_proxies::socket::{Policy, Running};
use serde_json::{Value, json};
use support::{
    Addr, Answer, Tap, docker_socket, enc, post_json, request, send, send_head, test_image,
};
use tokio::io::AsyncReadExt;

fn get(target: &str) -> Vec<u8> {
    request("GET", target, &[], None)
}

fn method(m: &str, target: &str) -> Vec<u8> {
    request(m, target, &[], None)
}

fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Removes everything labelled `berth.test=<label>` (containers first,
/// then networks, volumes and images), pass or fail.
struct Cleanup {
    label: String,
}

fn labelled(args: &[&str], label: &str) -> Vec<String> {
    Command::new("docker")
        .args(args)
        .arg("--filter")
        .arg(format!("label=berth.test={label}"))
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let l = &self.label;
        for (list, remove) in [
            (&["ps", "-aq"][..], &["rm", "-f", "-v"][..]),
            (&["network", "ls", "-q"], &["network", "rm"]),
            (&["volume", "ls", "-q"], &["volume", "rm", "-f"]),
            (&["image", "ls", "-q"], &["image", "rm", "-f"]),
        ] {
            let ids = labelled(list, l);
            if !ids.is_empty() {
                let _ = Command::new("docker").args(remove).args(&ids).output();
            }
        }
    }
}

/// The 403 of a rule, with its reason.
fn assert_denied(answer: &Answer, rule: &str, reason: &str) {
    let message = answer.message();
    assert_eq!(answer.status, 403, "{message}");
    assert!(
        message.contains(&format!("denied by rule `{rule}`")) && message.contains(reason),
        "wanted rule `{rule}` and `{reason}` in: {message}"
    );
}

/// Docker's multiplexed stream: (stdout, stderr).
fn demux(mut raw: &[u8]) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while raw.len() >= 8 {
        let size = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        let end = (8 + size).min(raw.len());
        match raw[0] {
            2 => err.extend_from_slice(&raw[8..end]),
            _ => out.extend_from_slice(&raw[8..end]),
        }
        raw = &raw[end..];
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

struct Job {
    via: Addr,
    engine: Addr,
    tap: Tap,
    image: String,
    label: String,
    run: String,
}

impl Job {
    fn managed(&self) -> Value {
        json!({"berth.managed": "true", "berth.test": self.label})
    }

    /// A container-create body as berth sends it (hardened, managed).
    fn container(&self, cmd: &[&str], host: Value) -> Value {
        let mut hc = json!({
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "Init": true,
        });
        for (k, v) in host.as_object().unwrap() {
            hc[k] = v.clone();
        }
        json!({"Image": self.image, "Cmd": cmd, "Labels": self.managed(), "HostConfig": hc})
    }

    /// Sends through the proxy; asserts that a denied request never
    /// reached the engine (only the proxy's own inspects may have).
    async fn denied(&self, request: &[u8], rule: &str, reason: &str) {
        let before = self.tap.len();
        let answer = send(&self.via, request).await;
        assert_denied(&answer, rule, reason);
        let reached: Vec<String> = self.tap.seen()[before..]
            .iter()
            .filter(|l| !is_inspect(l))
            .cloned()
            .collect();
        assert!(
            reached.is_empty(),
            "a denied request reached the engine: {reached:?}"
        );
    }

    /// Creates (and starts) a container directly on the engine, without the
    /// managed label.
    async fn foreign_container(&self, name: &str) -> String {
        let body = json!({
            "Image": self.image,
            "Cmd": ["sleep", "300"],
            "Labels": {"berth.test": self.label},
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

    /// Runs an exec through the proxy: start over the upgrade, the output
    /// streamed back; returns (stdout, stderr, the exec's inspect).
    async fn exec(&self, container: &str, cmd: &[&str]) -> (String, String, Value) {
        let created = send(
            &self.via,
            &post_json(
                &format!("/v1.41/containers/{container}/exec"),
                &json!({"Cmd": cmd, "AttachStdout": true, "AttachStderr": true, "User": "0"}),
            ),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.text());
        let exec = created.json()["Id"].as_str().unwrap().to_owned();
        let body = r#"{"Detach":false,"Tty":false}"#;
        let start = format!(
            "POST /v1.41/exec/{exec}/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (head, mut stream, mut raw) = send_head(&self.via, start.as_bytes()).await;
        assert_eq!(head.status, 101, "exec start: {head:?}");
        assert_eq!(head.header("upgrade"), Some("tcp"));
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
            .await
            .expect("the exec's stream ends when its process does")
            .unwrap();
        let (stdout, stderr) = demux(&raw);
        // The exit code: the exec's inspect, once it has ended.
        let deadline = Instant::now() + Duration::from_secs(10);
        let inspect = loop {
            let a = send(&self.via, &get(&format!("/v1.41/exec/{exec}/json"))).await;
            assert_eq!(a.status, 200, "{}", a.text());
            let v = a.json();
            if v["Running"] == json!(false) && !v["ExitCode"].is_null() {
                break v;
            }
            assert!(Instant::now() < deadline, "the exec did not end: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (stdout, stderr, inspect)
    }
}

fn is_inspect(line: &str) -> bool {
    let Some(target) = line.strip_prefix("GET ") else {
        return false;
    };
    ["/containers/", "/exec/", "/images/"]
        .iter()
        .any(|p| target.starts_with(p) && target.ends_with("/json"))
        || ["/networks/", "/volumes/"]
            .iter()
            .any(|p| target.starts_with(p))
}

async fn job() -> (Job, Running, Cleanup) {
    let image = test_image().await;
    let run = run_id();
    let label = format!("jobs-{run}");
    let cleanup = Cleanup {
        label: label.clone(),
    };
    let tap = Tap::start(&docker_socket()).await;
    let proxy = Running::start(Policy::default(), &tap.docker_host(), "127.0.0.1:0")
        .await
        .unwrap();
    let job = Job {
        via: Addr::from_docker_host(proxy.docker_host()),
        engine: Addr::Unix(docker_socket()),
        tap,
        image,
        label,
        run,
    };
    (job, proxy, cleanup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_job_through_the_proxy() {
    let (job, proxy, _cleanup) = job().await;
    let (via, run) = (&job.via, &job.run);

    // A tmpfs volume and an internal per-job network.
    let volume = format!("berth-proxy-jobs-{run}-work");
    let made = send(
        via,
        &post_json(
            "/v1.41/volumes/create",
            &json!({"Name": volume, "Driver": "local",
                    "DriverOpts": {"type": "tmpfs", "device": "tmpfs", "o": "size=16m,mode=1777"},
                    "Labels": job.managed()}),
        ),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let listed = send(
        via,
        &get(&format!(
            "/v1.41/volumes?filters={}",
            enc(r#"{"label":["berth.managed=true"]}"#)
        )),
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!(listed.text().contains(&volume), "{}", listed.text());
    let inspected = send(via, &get(&format!("/v1.41/volumes/{volume}"))).await;
    assert_eq!(inspected.status, 200, "{}", inspected.text());
    assert_eq!(inspected.json()["Options"]["type"], json!("tmpfs"));

    let network = format!("berth-proxy-jobs-{run}");
    let made = send(
        via,
        &post_json(
            "/v1.41/networks/create",
            &json!({"Name": network, "Driver": "bridge", "Internal": true,
                    "CheckDuplicate": true, "Labels": job.managed()}),
        ),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let network_id = made.json()["Id"].as_str().unwrap().to_owned();

    // The job container mounts the volume twice: as a `volume` mount and
    // as a `NAME:TARGET:ro` bind.
    let name = format!("berth-proxy-jobs-{run}-job");
    let created = send(
        via,
        &post_json(
            &format!("/v1.41/containers/create?name={name}"),
            &job.container(
                &["sleep", "300"],
                json!({
                    "NetworkMode": "bridge",
                    "Mounts": [{"Type": "volume", "Source": volume, "Target": "/work",
                                "VolumeOptions": {"NoCopy": true}}],
                    "Binds": [format!("{volume}:/data:ro")],
                }),
            ),
        ),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let container = created.json()["Id"].as_str().unwrap().to_owned();
    let started = send(
        via,
        &method("POST", &format!("/v1.41/containers/{name}/start")),
    )
    .await;
    assert_eq!(started.status, 204, "{}", started.text());

    // docker exec: output streamed back, exit code from the inspect.
    let (stdout, stderr, inspect) = job
        .exec(
            &name,
            &[
                "sh",
                "-c",
                "echo hello-from-exec > /work/out && cat /data/out && echo to-stderr >&2 && exit 3",
            ],
        )
        .await;
    assert_eq!(stdout, "hello-from-exec\n", "stderr: {stderr}");
    assert_eq!(stderr, "to-stderr\n");
    assert_eq!(inspect["ExitCode"], json!(3));
    assert_eq!(inspect["ContainerID"], json!(container));
    let exec = inspect["ID"].as_str().unwrap().to_owned();
    // Resize is forwarded (the engine answers for a finished, TTY-less exec).
    let before = job.tap.len();
    let resized = send(
        via,
        &method("POST", &format!("/v1.41/exec/{exec}/resize?h=24&w=80")),
    )
    .await;
    assert_ne!(resized.status, 403, "{}", resized.text());
    assert!(
        job.tap.seen()[before..]
            .iter()
            .any(|l| l.starts_with(&format!("POST /v1.41/exec/{exec}/resize"))),
        "resize was not forwarded"
    );
    // A second inspect of the same exec comes from the cache.
    let again = send(via, &get(&format!("/v1.41/exec/{exec}/json"))).await;
    assert_eq!(again.status, 200);
    let metrics = proxy.proxy().metrics().encode();
    assert!(
        metrics.contains(r#"berth_socket_proxy_managed_checks_total{kind="exec",result="cached"}"#),
        "{metrics}"
    );

    // Connect by name (forwarded by full ID), with an alias; disconnect.
    let connected = send(
        via,
        &post_json(
            &format!("/v1.41/networks/{network}/connect"),
            &json!({"Container": name, "EndpointConfig": {"Aliases": ["job"]}}),
        ),
    )
    .await;
    assert_eq!(connected.status, 200, "{}", connected.text());
    let seen = send(via, &get(&format!("/v1.41/containers/{container}/json")))
        .await
        .json();
    let endpoint = &seen["NetworkSettings"]["Networks"][&network];
    assert_eq!(endpoint["NetworkID"], json!(network_id), "{seen}");
    assert!(
        endpoint["Aliases"]
            .as_array()
            .unwrap()
            .contains(&json!("job")),
        "{endpoint}"
    );
    let disconnected = send(
        via,
        &post_json(
            &format!("/v1.41/networks/{network_id}/disconnect"),
            &json!({"Container": container, "Force": false}),
        ),
    )
    .await;
    assert_eq!(disconnected.status, 200, "{}", disconnected.text());
    let seen = send(via, &get(&format!("/v1.41/containers/{container}/json")))
        .await
        .json();
    assert!(
        seen["NetworkSettings"]["Networks"].get(&network).is_none(),
        "{seen}"
    );

    // --- the denials ------------------------------------------------------------
    // A volume that binds a host path.
    let bind_volume = format!("berth-proxy-jobs-{run}-bind");
    job.denied(
        &post_json(
            "/v1.41/volumes/create",
            &json!({"Name": bind_volume, "DriverOpts": {"type": "none", "o": "bind", "device": "/etc"},
                    "Labels": job.managed()}),
        ),
        "volume_create",
        "DriverOpts.type `none` is not allowed",
    )
    .await;
    let gone = send(&job.engine, &get(&format!("/volumes/{bind_volume}"))).await;
    assert_eq!(gone.status, 404, "the bind volume exists: {}", gone.text());

    // Exec in, or of, a container berth does not own.
    let foreign = job
        .foreign_container(&format!("berth-proxy-jobs-{run}-foreign"))
        .await;
    job.denied(
        &post_json(
            &format!("/v1.41/containers/{foreign}/exec"),
            &json!({"Cmd": ["touch", "/pwned"]}),
        ),
        "exec_create",
        "is not labelled berth.managed=true",
    )
    .await;
    let foreign_exec = send(
        &job.engine,
        &post_json(
            &format!("/containers/{foreign}/exec"),
            &json!({"Cmd": ["touch", "/pwned"], "AttachStdout": true}),
        ),
    )
    .await;
    assert_eq!(foreign_exec.status, 201, "{}", foreign_exec.text());
    let foreign_exec = foreign_exec.json()["Id"].as_str().unwrap().to_owned();
    job.denied(
        &get(&format!("/v1.41/exec/{foreign_exec}/json")),
        "exec_inspect",
        &format!("runs in container `{foreign}`, which is not labelled"),
    )
    .await;
    job.denied(
        &request(
            "POST",
            &format!("/v1.41/exec/{foreign_exec}/start"),
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "tcp"),
                ("Content-Type", "application/json"),
            ],
            Some(br#"{"Detach":false,"Tty":false}"#),
        ),
        "exec_start",
        "which is not labelled",
    )
    .await;
    let untouched = send(&job.engine, &get(&format!("/exec/{foreign_exec}/json")))
        .await
        .json();
    assert_eq!(untouched["Running"], json!(false), "{untouched}");
    assert_eq!(
        untouched["Pid"],
        json!(0),
        "the foreign exec ran: {untouched}"
    );

    // Mounts of volumes berth does not own, or that the proxy would not
    // have made (labelled managed elsewhere, binding a host path).
    let unmanaged = format!("berth-proxy-jobs-{run}-unmanaged");
    let forged = format!("berth-proxy-jobs-{run}-forged");
    for (name, labels, opts) in [
        (&unmanaged, json!({"berth.test": job.label}), json!({})),
        (
            &forged,
            job.managed(),
            json!({"type": "none", "o": "bind", "device": "/etc"}),
        ),
    ] {
        let made = send(
            &job.engine,
            &post_json(
                "/volumes/create",
                &json!({"Name": name, "Labels": labels, "DriverOpts": opts}),
            ),
        )
        .await;
        assert_eq!(made.status, 201, "{}", made.text());
    }
    let evil_name = format!("berth-proxy-jobs-{run}-evil");
    let mount = |source: &str| {
        post_json(
            &format!("/v1.41/containers/create?name={evil_name}"),
            &job.container(
                &["sleep", "1"],
                json!({"Mounts": [{"Type": "volume", "Source": source, "Target": "/v"}]}),
            ),
        )
    };
    job.denied(
        &mount(&unmanaged),
        "container_create",
        &format!("HostConfig.Mounts[0]: volume `{unmanaged}` is not labelled berth.managed=true"),
    )
    .await;
    job.denied(
        &mount(&forged),
        "container_create",
        &format!("volume `{forged}` may not be mounted: DriverOpts.type `none` is not allowed"),
    )
    .await;
    job.denied(
        &mount(&format!("{volume}-missing")),
        "container_create",
        "does not exist",
    )
    .await;
    let absent = send(&job.engine, &get(&format!("/containers/{evil_name}/json"))).await;
    assert_eq!(absent.status, 404, "a denied create made a container");
    let absent = send(&job.engine, &get(&format!("/volumes/{volume}-missing"))).await;
    assert_eq!(absent.status, 404, "a denied create made a volume");

    // A foreign container on the job network.
    job.denied(
        &post_json(
            &format!("/v1.41/networks/{network}/connect"),
            &json!({"Container": foreign}),
        ),
        "network_connect",
        &format!("Container: container `{foreign}` is not labelled"),
    )
    .await;

    // A build whose RUN steps would share the host's network.
    job.denied(
        &request(
            "POST",
            &format!(
                "/v1.41/build?labels={}&networkmode=host",
                enc(r#"{"berth.managed":"true"}"#)
            ),
            &[("Content-Type", "application/x-tar")],
            Some(b""),
        ),
        "image_build",
        "`networkmode` `host` is not allowed",
    )
    .await;

    // --- remove everything through the proxy -------------------------------------
    let removed = send(
        via,
        &method("DELETE", &format!("/v1.41/containers/{name}?force=1&v=1")),
    )
    .await;
    assert_eq!(removed.status, 204, "{}", removed.text());
    let removed = send(via, &method("DELETE", &format!("/v1.41/volumes/{volume}"))).await;
    assert_eq!(removed.status, 204, "{}", removed.text());
    let removed = send(
        via,
        &method("DELETE", &format!("/v1.41/networks/{network}")),
    )
    .await;
    assert_eq!(removed.status, 204, "{}", removed.text());
    job.denied(
        &method("DELETE", &format!("/v1.41/volumes/{unmanaged}")),
        "volume_remove",
        "is not labelled",
    )
    .await;
    assert_eq!(
        send(&job.engine, &get(&format!("/volumes/{unmanaged}")))
            .await
            .status,
        200,
        "the foreign volume survived"
    );

    let metrics = proxy.proxy().metrics().encode();
    for rule in [
        "volume_create",
        "volume_list",
        "volume_inspect",
        "volume_remove",
        "exec_create",
        "exec_start",
        "exec_inspect",
        "exec_resize",
        "network_connect",
        "network_disconnect",
    ] {
        assert!(
            metrics.contains(&format!("decision=\"allow\",rule=\"{rule}\"")),
            "no allowed {rule} in\n{metrics}"
        );
    }
    proxy.stop().await;
}

/// A build context: a tar of `files`.
fn context(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A Dockerfile action's image: built through the proxy (classic builder,
/// managed label, a tag under `berth-job/`), inspected, and removed by the
/// proxy by image ID; a build context over the limit is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_action_image_is_built_and_removed_through_the_proxy() {
    let (job, proxy, _cleanup) = job().await;
    let via = &job.via;
    let tag = format!("berth-job/proxy-test-{}:1", job.run);
    let labels = enc(&json!({"berth.managed": "true", "berth.test": job.label}).to_string());
    let dockerfile = format!(
        "FROM {}\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt > /built\n",
        job.image
    );
    let tar = context(&[
        ("Dockerfile", dockerfile.as_bytes()),
        ("hello.txt", b"built through the proxy\n"),
    ]);
    let built = send(
        via,
        &request(
            "POST",
            &format!(
                "/v1.41/build?t={}&labels={labels}&dockerfile=Dockerfile&rm=1&forcerm=1&networkmode=none&version=1&q=0&nocache=0&target=&platform=",
                enc(&tag)
            ),
            &[("Content-Type", "application/x-tar")],
            Some(&tar),
        ),
    )
    .await;
    let output = built.text();
    assert_eq!(built.status, 200, "{output}");
    assert!(!output.contains("errorDetail"), "{output}");
    assert!(output.contains("Successfully tagged"), "{output}");

    let inspected = send(via, &get(&format!("/v1.41/images/{tag}/json"))).await;
    assert_eq!(inspected.status, 200, "{}", inspected.text());
    let image = inspected.json();
    assert_eq!(image["Config"]["Labels"]["berth.managed"], json!("true"));
    let image_id = image["Id"].as_str().unwrap().to_owned();

    // Removing an image berth does not own is denied, and it stays.
    job.denied(
        &method("DELETE", &format!("/v1.41/images/{}?force=1", job.image)),
        "image_remove",
        &format!("image `{}` is not labelled berth.managed=true", job.image),
    )
    .await;
    assert_eq!(
        send(&job.engine, &get(&format!("/images/{}/json", job.image)))
            .await
            .status,
        200
    );
    // Nor may a build re-tag an image outside `berth-job/`.
    job.denied(
        &request(
            "POST",
            &format!("/v1.41/build?t={}&labels={labels}", enc(&job.image)),
            &[("Content-Type", "application/x-tar")],
            Some(&tar),
        ),
        "image_build",
        "is not under an allowed tag prefix",
    )
    .await;

    // The job's image goes, by name; the proxy forwards its ID.
    let before = job.tap.len();
    let removed = send(via, &method("DELETE", &format!("/v1.41/images/{tag}"))).await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert!(removed.text().contains("Untagged"), "{}", removed.text());
    assert!(
        job.tap.seen()[before..]
            .iter()
            .any(|l| *l == format!("DELETE /v1.41/images/{image_id}")),
        "{:?}",
        job.tap.seen()
    );
    assert_eq!(
        send(&job.engine, &get(&format!("/images/{image_id}/json")))
            .await
            .status,
        404
    );
    let again = send(via, &method("DELETE", &format!("/v1.41/images/{tag}"))).await;
    assert_eq!(again.status, 404, "{}", again.text());
    proxy.stop().await;

    // A context over the limit: refused from its Content-Length, and cut
    // off while streaming when it comes chunked.
    let mut small = Policy::default();
    small.limits.max_build_context_bytes = 4096;
    let proxy = Running::start(small, &job.tap.docker_host(), "127.0.0.1:0")
        .await
        .unwrap();
    let small_via = Addr::from_docker_host(proxy.docker_host());
    let big = context(&[
        ("Dockerfile", dockerfile.as_bytes()),
        ("hello.txt", &vec![b'x'; 64 * 1024]),
    ]);
    let big_tag = format!("berth-job/proxy-test-{}:big", job.run);
    let target = format!("/v1.41/build?t={}&labels={labels}", enc(&big_tag));
    let answer = send(
        &small_via,
        &request(
            "POST",
            &target,
            &[("Content-Type", "application/x-tar")],
            Some(&big),
        ),
    )
    .await;
    assert_denied(&answer, "body-size", "over 4096 bytes");
    let mut chunked = format!(
        "POST {target} HTTP/1.1\r\nHost: d\r\nConnection: close\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in big.chunks(1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = send(&small_via, &chunked).await;
    assert_denied(&answer, "body-size", "over 4096 bytes");
    assert_eq!(
        send(&job.engine, &get(&format!("/images/{big_tag}/json")))
            .await
            .status,
        404,
        "a cut-off context built an image"
    );
    proxy.stop().await;
}
