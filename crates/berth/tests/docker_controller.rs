//! The Docker controller against the real Docker engine.
//!
//! Each test runs its own containers from a tiny image built here (a static
//! busybox, imported from an in-memory tar). The image's entrypoint runs the
//! shell script in the `TEST_SCRIPT` env var, so every test picks what its
//! container does without the controller needing a command field.
//!
//! Every container carries `berth.test=docker-controller` and a per-test
//! `berth.test-case` label; a [`Cleanup`] guard removes the test's containers
//! (and networks) when the test ends, pass or fail.
//!
//! Needs a Docker engine at `DOCKER_HOST` (a `unix://` address) or
//! `/var/run/docker.sock`, and busybox at `/bin/busybox` (Debian's
//! `busybox-static`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth::docker::controller::{LABEL_JOB, LABEL_MANAGED};
use berth::docker::{
    ContainerEventKind, ContainerStatus, Controller, DockerError, LogOptions, TmpfsSizes,
    WorkerNetwork, WorkerSpec,
};
use bollard::Docker;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

const TEST_LABEL: &str = "berth.test";
const TEST_LABEL_VALUE: &str = "docker-controller";
const CASE_LABEL: &str = "berth.test-case";
const IMAGE_REPOSITORY: &str = "berth-test-controller";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for anything a test waits on.
const PATIENCE: Duration = Duration::from_secs(20);

const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "printf",
    "sleep",
    "id",
    "grep",
    "test",
    "touch",
    "stat",
    "sha256sum",
    "ls",
    "true",
    "wc",
];

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn socket_path() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned())
}

async fn controller() -> Controller {
    Controller::connect(&format!("unix://{}", socket_path()), CALL_TIMEOUT)
        .await
        .expect("connect to the Docker engine")
}

/// A plain bollard client, to look at containers independently of the
/// controller under test.
async fn raw_docker() -> Docker {
    Docker::connect_with_unix(&socket_path(), 30, bollard::API_DEFAULT_VERSION)
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("negotiate")
}

struct TestImages {
    /// busybox only.
    plain: String,
    /// The same, with `VOLUME /data` (every container gets an anonymous volume).
    with_volume: String,
}

static IMAGES: OnceCell<TestImages> = OnceCell::const_new();

/// Builds (once per run, and only when the content changed) the test images.
async fn images() -> &'static TestImages {
    IMAGES
        .get_or_init(|| async {
            let tar = rootfs_tar();
            let entrypoint = r#"ENTRYPOINT ["/bin/sh", "-c", "eval \"$TEST_SCRIPT\""]"#.to_owned();
            let base = vec!["ENV PATH=/bin".to_owned(), entrypoint];
            let mut volume = base.clone();
            volume.push("VOLUME /data".to_owned());
            TestImages {
                plain: import_image(&tar, base).await,
                with_volume: import_image(&tar, volume).await,
            }
        })
        .await
}

fn rootfs_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .or_else(|_| std::fs::read("/usr/bin/busybox"))
        .expect("busybox-static at /bin/busybox");
    let mut builder = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, uid: u64, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    for (dir, mode, uid) in [
        ("bin", 0o755, 0),
        ("etc", 0o755, 0),
        ("home", 0o755, 0),
        ("home/runner", 0o755, 1001),
        ("tmp", 0o1777, 0),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, uid, 0);
        builder
            .append_data(&mut h, dir, std::io::empty())
            .expect("dir");
    }
    let mut h = header(tar::EntryType::Regular, 0o755, 0, busybox.len() as u64);
    builder
        .append_data(&mut h, "bin/busybox", busybox.as_slice())
        .expect("busybox");
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        builder
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("applet");
    }
    builder.into_inner().expect("tar")
}

async fn import_image(tar: &[u8], changes: Vec<String>) -> String {
    let mut hash = Sha256::new();
    hash.update(tar);
    for change in &changes {
        hash.update(change.as_bytes());
    }
    let tag = hex::encode(&hash.finalize()[..6]);
    let reference = format!("{IMAGE_REPOSITORY}:{tag}");
    let docker = raw_docker().await;
    if docker.inspect_image(&reference).await.is_ok() {
        return reference;
    }
    let options = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".to_owned()),
        repo: Some(IMAGE_REPOSITORY.to_owned()),
        tag: Some(tag),
        changes,
        ..Default::default()
    };
    docker
        .create_image(
            Some(options),
            Some(bollard::body_full(tar.to_vec().into())),
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .expect("import the test image");
    reference
}

/// Removes the test case's containers and networks when dropped, even when
/// the test panicked.
struct Cleanup {
    case: String,
    networks: Vec<String>,
}

impl Cleanup {
    fn new(case: &str) -> Self {
        Self {
            case: case.to_owned(),
            networks: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let case = self.case.clone();
        let networks = std::mem::take(&mut self.networks);
        // Drop cannot await; clean up on a thread with its own runtime.
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let docker = raw_docker().await;
                let filters =
                    HashMap::from([("label".to_owned(), vec![format!("{CASE_LABEL}={case}")])]);
                let options = bollard::query_parameters::ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                };
                for c in docker
                    .list_containers(Some(options))
                    .await
                    .unwrap_or_default()
                {
                    if let Some(id) = c.id {
                        let remove = bollard::query_parameters::RemoveContainerOptions {
                            force: true,
                            v: true,
                            link: false,
                        };
                        let _ = docker.remove_container(&id, Some(remove)).await;
                    }
                }
                for name in networks {
                    // By ID: a name can be ambiguous if duplicates were made.
                    let filters = HashMap::from([("name".to_owned(), vec![name.clone()])]);
                    let options = bollard::query_parameters::ListNetworksOptions {
                        filters: Some(filters),
                    };
                    for network in docker
                        .list_networks(Some(options))
                        .await
                        .unwrap_or_default()
                    {
                        if let (Some(id), Some(true)) =
                            (network.id, network.name.map(|n| n == name))
                        {
                            let _ = docker.remove_network(&id).await;
                        }
                    }
                }
            });
        });
        let _ = cleaner.join();
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique suffix for container and network names.
fn unique(case: &str) -> String {
    format!(
        "{case}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A valid spec for `case` whose container runs `script`.
fn spec(case: &str, image: &str, script: &str) -> WorkerSpec {
    let id = unique(case);
    let mut spec = WorkerSpec::new(
        format!("berth-t-{id}"),
        image,
        WorkerNetwork::Bridge("bridge".into()),
    );
    spec.labels.insert(LABEL_JOB.into(), id);
    spec.labels
        .insert(TEST_LABEL.into(), TEST_LABEL_VALUE.into());
    spec.labels.insert(CASE_LABEL.into(), case.into());
    spec.cpus = 0.5;
    spec.memory_bytes = 64 * 1024 * 1024;
    spec.pids_limit = 64;
    spec.env.insert("TEST_SCRIPT".into(), script.into());
    spec
}

/// The container's whole output, once it has exited.
async fn output(controller: &Controller, id: &str) -> String {
    let chunks: Vec<bytes::Bytes> = tokio::time::timeout(
        PATIENCE,
        controller.logs(id, LogOptions::follow()).try_collect(),
    )
    .await
    .expect("logs in time")
    .expect("logs");
    String::from_utf8_lossy(&chunks.concat()).into_owned()
}

async fn wait_exit(controller: &Controller, id: &str) -> i64 {
    tokio::time::timeout(PATIENCE, controller.wait_exit(id))
        .await
        .expect("exit in time")
        .expect("wait")
}

/// `GET /containers/{id}/json` verbatim: everything `docker inspect` shows,
/// including fields bollard's types do not know.
async fn raw_inspect_json(id: &str) -> String {
    let mut socket = tokio::net::UnixStream::connect(socket_path())
        .await
        .expect("socket");
    let request = format!("GET /v1.41/containers/{id}/json HTTP/1.0\r\nHost: docker\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8(answer).expect("utf-8");
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    answer
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn created_worker_is_hardened() {
    let case = "hardened";
    let mut cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;

    let network = format!("berth-t-{}", unique(case));
    cleanup.networks.push(network.clone());
    // Concurrent ensures, from two controllers as from two replicas starting
    // at once on one engine, agree on one network.
    let other = self::controller().await;
    let ids: Vec<String> = futures::future::try_join_all(
        [&controller, &other, &controller, &other].map(|c| c.ensure_network(&network)),
    )
    .await
    .expect("ensure network");
    let network_id = ids[0].clone();
    assert!(ids.iter().all(|id| *id == network_id), "{ids:?}");
    assert_eq!(
        controller
            .ensure_network(&network)
            .await
            .expect("idempotent"),
        network_id
    );
    let docker = raw_docker().await;
    let same_name = docker
        .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
            filters: Some(HashMap::from([("name".to_owned(), vec![network.clone()])])),
        }))
        .await
        .expect("list networks");
    assert_eq!(same_name.len(), 1, "duplicates left: {same_name:?}");
    let inspected = docker
        .inspect_network(&network, None)
        .await
        .expect("network");
    assert_eq!(inspected.driver.as_deref(), Some("bridge"));
    assert_eq!(
        inspected
            .labels
            .unwrap_or_default()
            .get(LABEL_MANAGED)
            .map(String::as_str),
        Some("true")
    );

    let script = "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
                  test -S /var/run/docker.sock && echo docker-socket || echo no-docker-socket";
    let mut s = spec(case, &images.plain, script);
    s.cap_add = vec!["CHOWN".into(), "net_bind_service".into()];
    s.cpus = 0.25;
    s.memory_bytes = 48 * 1024 * 1024;
    s.pids_limit = 32;
    s.network = WorkerNetwork::Bridge(network.clone());
    s.extra_hosts = vec!["host.docker.internal:host-gateway".into()];
    s.labels.insert("berth.pool".into(), "linux".into());
    let id = controller.create_worker(&s).await.expect("create");

    let c = docker.inspect_container(&id, None).await.expect("inspect");
    let config = c.config.expect("config");
    let hc = c.host_config.expect("host config");
    assert_eq!(config.user.as_deref(), Some("1001:1001"));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
    let mut caps = hc.cap_add.expect("cap add");
    caps.sort();
    assert_eq!(caps, ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]);
    assert_eq!(
        hc.security_opt,
        Some(vec!["no-new-privileges:true".to_owned()])
    );
    assert_eq!(hc.privileged, Some(false));
    assert_eq!(hc.pids_limit, Some(32));
    assert_eq!(hc.memory, Some(48 * 1024 * 1024));
    assert_eq!(hc.memory_swap, Some(48 * 1024 * 1024));
    assert_eq!(hc.nano_cpus, Some(250_000_000));
    assert_eq!(hc.init, Some(true));
    assert!(hc.binds.unwrap_or_default().is_empty(), "no binds");
    assert!(hc.mounts.unwrap_or_default().is_empty(), "no mounts");
    assert!(c.mounts.unwrap_or_default().is_empty(), "nothing mounted");
    assert!(hc.devices.unwrap_or_default().is_empty(), "no devices");
    assert_eq!(hc.network_mode.as_deref(), Some(network.as_str()));
    assert_eq!(
        hc.extra_hosts,
        Some(vec!["host.docker.internal:host-gateway".to_owned()])
    );
    assert_eq!(hc.readonly_rootfs, Some(false));
    assert_eq!(
        hc.restart_policy
            .and_then(|p| p.name)
            .map(|n| n.to_string()),
        Some("no".to_owned())
    );
    assert_eq!(config.open_stdin, Some(true));
    assert_eq!(config.stdin_once, Some(true));
    let labels = config.labels.expect("labels");
    for (key, value) in &s.labels {
        assert_eq!(labels.get(key), Some(value), "label {key}");
    }
    let networks = c
        .network_settings
        .and_then(|n| n.networks)
        .expect("networks");
    assert!(networks.contains_key(&network), "{networks:?}");

    let info = controller.inspect(&id).await.expect("controller inspect");
    assert_eq!(info.status, ContainerStatus::Created);
    assert_eq!(info.exit_code, None);
    assert_eq!(info.labels, s.labels);
    assert_eq!(info.name, s.name);

    // What the process really gets: uid 1001, no effective capabilities
    // (only the two added ones in its bounding set), no_new_privs, no socket.
    controller
        .start_with_secret(&id, b"unused")
        .await
        .expect("start");
    assert_eq!(wait_exit(&controller, &id).await, 0);
    let out = output(&controller, &id).await;
    assert!(out.starts_with("1001\n1001\n"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000401"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("no-docker-socket"), "{out}");
}

#[tokio::test]
async fn read_only_rootfs_with_tmpfs_and_host_network() {
    let case = "read-only";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;

    let script = "touch /probe 2>/dev/null && echo rootfs-writable || echo rootfs-read-only; \
                  touch /tmp/a && echo tmp-writable; \
                  touch /home/runner/_work/a && echo work-writable; \
                  stat -c 'work-owner=%u:%g' /home/runner/_work";
    let mut s = spec(case, &images.plain, script);
    s.read_only_rootfs = true;
    s.tmpfs = TmpfsSizes {
        tmp_bytes: 8 * 1024 * 1024,
        work_bytes: 16 * 1024 * 1024,
    };
    s.network = WorkerNetwork::Host;
    let id = controller.create_worker(&s).await.expect("create");

    let docker = raw_docker().await;
    let hc = docker
        .inspect_container(&id, None)
        .await
        .expect("inspect")
        .host_config
        .expect("host config");
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.network_mode.as_deref(), Some("host"));
    let tmpfs = hc.tmpfs.expect("tmpfs");
    assert!(tmpfs["/tmp"].contains("size=8388608"), "{tmpfs:?}");
    let work = &tmpfs["/home/runner/_work"];
    assert!(
        work.contains("uid=1001,gid=1001") && work.contains("size=16777216"),
        "{work}"
    );

    controller
        .start_with_secret(&id, b"x")
        .await
        .expect("start");
    assert_eq!(wait_exit(&controller, &id).await, 0);
    let out = output(&controller, &id).await;
    assert_eq!(
        out,
        "rootfs-read-only\ntmp-writable\nwork-writable\nwork-owner=1001:1001\n"
    );
}

#[tokio::test]
async fn secret_reaches_stdin_and_nothing_docker_shows() {
    use rand::Rng;
    let case = "secret";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;

    let secret: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(3000)
        .map(char::from)
        .collect();
    // Read late (the controller has long let go of the connection), then
    // check that stdin ends after the one line.
    let script = "sleep 1; IFS= read -r line; printf %s \"$line\" | sha256sum; \
                  echo \"length=${#line}\"; IFS= read -r more && echo more-input || echo end-of-input";
    let s = spec(case, &images.plain, script);
    let id = controller.create_worker(&s).await.expect("create");
    controller
        .start_with_secret(&id, secret.as_bytes())
        .await
        .expect("start with secret");
    assert_eq!(wait_exit(&controller, &id).await, 0);

    let out = output(&controller, &id).await;
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    assert!(
        out.contains(&digest),
        "the container read other bytes: {out}"
    );
    assert!(
        out.contains("length=3000") && out.contains("end-of-input"),
        "{out}"
    );

    // No part of the secret in anything `docker inspect` shows.
    let raw = raw_inspect_json(&id).await;
    let docker = raw_docker().await;
    let typed = serde_json::to_string(&docker.inspect_container(&id, None).await.expect("inspect"))
        .expect("serialize");
    for window in secret.as_bytes().windows(12) {
        let part = std::str::from_utf8(window).expect("ascii");
        assert!(!raw.contains(part), "inspect shows part of the secret");
        assert!(!typed.contains(part), "inspect shows part of the secret");
        assert!(!out.contains(part), "the log shows part of the secret");
    }

    // Refused: a secret of more than two lines, an empty line, a CR.
    for bad in [&b"a\nb\nc"[..], b"a\n", b"\nb", b"a\r\nb", b""] {
        assert!(matches!(
            controller.start_with_secret(&id, bad).await,
            Err(DockerError::InvalidSpec(_))
        ));
    }
}

/// A warm container: started with nothing on stdin, it waits in its `read`
/// for as long as it takes; the secret delivered later is the one line it
/// reads, then its input ends. Nothing of it shows in `docker inspect`.
#[tokio::test]
async fn a_started_worker_waits_for_its_secret() {
    let case = "waiting";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;
    let script = "IFS= read -r line; printf %s \"$line\" | sha256sum; \
                  IFS= read -r more && echo more-input || echo end-of-input";
    let s = spec(case, &images.plain, script);
    let id = controller.create_worker(&s).await.expect("create");
    controller.start_waiting(&id).await.expect("start");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        controller.inspect(&id).await.expect("inspect").running,
        "a started worker with no input must keep waiting"
    );
    let secret = "d2FybS1zZWNyZXQtZm9yLXRoZS1ydW5uZXI";
    controller
        .deliver_secret(&id, secret.as_bytes())
        .await
        .expect("deliver");
    assert_eq!(wait_exit(&controller, &id).await, 0);
    let out = output(&controller, &id).await;
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    assert!(
        out.contains(&digest),
        "the container read other bytes: {out}"
    );
    assert!(out.contains("end-of-input"), "{out}");
    assert!(!raw_inspect_json(&id).await.contains(secret));
}

/// A plain TCP front for the Docker socket, as berth's socket proxy is: each
/// connection is piped to the unix socket, half-closes included.
async fn tcp_front() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut engine) = tokio::net::UnixStream::connect(socket_path()).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn secret_delivery_works_over_tcp() {
    let case = "secret-tcp";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = Controller::connect(&format!("tcp://{}", tcp_front().await), CALL_TIMEOUT)
        .await
        .expect("connect over tcp");

    let secret = "c2VjcmV0LW92ZXItdGNw".repeat(100);
    let script = "sleep 1; IFS= read -r line; printf %s \"$line\" | sha256sum";
    let s = spec(case, &images.plain, script);
    let id = controller.create_worker(&s).await.expect("create");
    controller
        .start_with_secret(&id, secret.as_bytes())
        .await
        .expect("start with secret");
    assert_eq!(wait_exit(&controller, &id).await, 0);
    let out = output(&controller, &id).await;
    assert!(
        out.contains(&hex::encode(Sha256::digest(secret.as_bytes()))),
        "{out}"
    );
}

#[tokio::test]
async fn events_report_start_and_die_with_exit_code() {
    let case = "events";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;

    // `since` in the past: the subscription replays what happened between
    // now and the moment the stream is first polled.
    let since = time::OffsetDateTime::now_utc() - time::Duration::seconds(2);
    let mut events = controller.events(Some(since));
    let s = spec(case, &images.plain, "exit 7");
    let id = controller.create_worker(&s).await.expect("create");
    controller
        .start_with_secret(&id, b"x")
        .await
        .expect("start");

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !seen
        .iter()
        .any(|e: &berth::docker::ContainerEvent| matches!(e.kind, ContainerEventKind::Die { .. }))
    {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("die event in time")
            .expect("stream open")
            .expect("event");
        if event.container_id == id {
            seen.push(event);
        }
    }
    assert_eq!(seen[0].kind, ContainerEventKind::Start, "{seen:?}");
    let die = seen.last().expect("die");
    assert_eq!(die.kind, ContainerEventKind::Die { exit_code: Some(7) });
    assert_eq!(die.name.as_deref(), Some(s.name.as_str()));
    assert_eq!(die.labels.get(LABEL_JOB), s.labels.get(LABEL_JOB));
    assert_eq!(
        die.labels.get(LABEL_MANAGED).map(String::as_str),
        Some("true")
    );

    controller.remove(&id).await.expect("remove");
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("destroy event in time")
            .expect("stream open")
            .expect("event");
        if event.container_id == id && event.kind == ContainerEventKind::Destroy {
            break;
        }
    }

    // Re-subscribing with `since` = the time of an event handled replays
    // from that event on: nothing is missed across a reconnection.
    let mut replay = controller.events(Some(seen[0].time));
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let event = tokio::time::timeout_at(deadline, replay.next())
            .await
            .expect("replay in time")
            .expect("stream open")
            .expect("event");
        if event.container_id == id {
            kinds.push(event.kind);
        }
    }
    assert_eq!(
        kinds,
        [
            ContainerEventKind::Start,
            ContainerEventKind::Die { exit_code: Some(7) },
            ContainerEventKind::Destroy
        ]
    );
}

#[tokio::test]
async fn oom_kill_is_reported() {
    let case = "oom";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;

    let since = time::OffsetDateTime::now_utc() - time::Duration::seconds(2);
    let mut events = controller.events(Some(since));
    // A shell variable far larger than the memory limit.
    let script = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    let mut s = spec(case, &images.plain, script);
    s.memory_bytes = 16 * 1024 * 1024;
    let id = controller.create_worker(&s).await.expect("create");
    controller
        .start_with_secret(&id, b"x")
        .await
        .expect("start");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut kinds = Vec::new();
    while !kinds
        .iter()
        .any(|k| matches!(k, ContainerEventKind::Die { .. }))
    {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .expect("event");
        if event.container_id == id {
            kinds.push(event.kind);
        }
    }
    assert!(kinds.contains(&ContainerEventKind::Oom), "{kinds:?}");
    let info = controller.inspect(&id).await.expect("inspect");
    assert!(info.oom_killed, "{info:?}");
    assert_eq!(info.exit_code, Some(137), "{info:?}");
}

#[tokio::test]
async fn logs_follow_until_exit() {
    let case = "logs";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;

    let script = "echo one; sleep 1; echo two >&2; sleep 1; echo three";
    let s = spec(case, &images.plain, script);
    let id = controller.create_worker(&s).await.expect("create");
    controller
        .start_with_secret(&id, b"x")
        .await
        .expect("start");

    // Following from the start captures everything, and the stream ends
    // when the container exits.
    let started = Instant::now();
    let followed = output(&controller, &id).await;
    assert_eq!(followed, "one\ntwo\nthree\n");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "followed until exit"
    );
    let info = controller.inspect(&id).await.expect("inspect");
    assert_eq!(info.status, ContainerStatus::Exited);
    assert_eq!(info.exit_code, Some(0));
    assert!(!info.oom_killed);
    assert!(info.finished_at >= info.started_at && info.started_at.is_some());

    // Not following, with timestamps.
    let chunks: Vec<bytes::Bytes> = controller
        .logs(
            &id,
            LogOptions {
                timestamps: true,
                ..LogOptions::all()
            },
        )
        .try_collect()
        .await
        .expect("logs");
    let text = String::from_utf8_lossy(&chunks.concat()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, word) in lines.iter().zip(["one", "two", "three"]) {
        let (stamp, rest) = line.split_once(' ').expect("timestamp");
        assert!(
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{line}"
        );
        assert_eq!(rest, word);
    }

    // A container that does not exist.
    let missing: Result<Vec<_>, _> = controller
        .logs("berth-t-does-not-exist", LogOptions::all())
        .try_collect()
        .await;
    assert!(
        matches!(missing, Err(DockerError::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn stop_kills_a_container_that_ignores_sigterm() {
    let case = "stop";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;

    let script = "trap '' TERM; echo ready; while true; do sleep 1; done";
    let s = spec(case, &images.plain, script);
    let id = controller.create_worker(&s).await.expect("create");
    controller
        .start_with_secret(&id, b"x")
        .await
        .expect("start");

    // Wait until the trap is set.
    let mut logs = controller.logs(&id, LogOptions::follow());
    let first = tokio::time::timeout(PATIENCE, logs.next())
        .await
        .expect("ready in time")
        .expect("output")
        .expect("log chunk");
    assert_eq!(&first[..], b"ready\n");

    let started = Instant::now();
    controller
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "waited the grace: {took:?}");
    assert!(took < Duration::from_secs(8), "then killed: {took:?}");
    let info = controller.inspect(&id).await.expect("inspect");
    assert_eq!(info.status, ContainerStatus::Exited);
    assert_eq!(info.exit_code, Some(137), "SIGKILL");

    // Stopping again is fine.
    controller
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop again");
}

#[tokio::test]
async fn remove_leaves_nothing_behind() {
    let case = "remove";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;

    let s = spec(case, &images.with_volume, "sleep 30");
    let id = controller.create_worker(&s).await.expect("create");
    controller
        .start_with_secret(&id, b"x")
        .await
        .expect("start");

    let docker = raw_docker().await;
    let mounts = docker
        .inspect_container(&id, None)
        .await
        .expect("inspect")
        .mounts
        .unwrap_or_default();
    assert_eq!(mounts.len(), 1, "the image's anonymous volume: {mounts:?}");
    assert_eq!(
        mounts[0].typ.as_ref().map(|t| t.to_string()).as_deref(),
        Some("volume")
    );
    let volume = mounts[0].name.clone().expect("volume name");

    let listed = controller.list_managed().await.expect("list");
    let mine = listed.iter().find(|c| c.id == id).expect("listed");
    assert_eq!(mine.name, s.name);
    assert_eq!(mine.status, ContainerStatus::Running);
    assert_eq!(mine.labels, s.labels);

    controller
        .remove(&id)
        .await
        .expect("remove a running container");
    assert!(matches!(
        controller.inspect(&id).await,
        Err(DockerError::NotFound { .. })
    ));
    let volume_gone = docker.inspect_volume(&volume).await;
    assert!(
        matches!(
            volume_gone,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            })
        ),
        "volume left behind: {volume_gone:?}"
    );
    let listed = controller.list_managed().await.expect("list");
    assert!(listed.iter().all(|c| c.id != id));
    controller
        .remove(&id)
        .await
        .expect("removing again is a no-op");
}

#[tokio::test]
async fn missing_image_is_recognised() {
    let case = "missing-image";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let controller = controller().await;

    let missing = "berth-test-controller-missing:never-built";
    let s = spec(case, missing, "true");
    let error = controller.create_worker(&s).await.expect_err("no image");
    assert_eq!(
        error,
        DockerError::ImageMissing {
            image: missing.to_owned()
        }
    );
    assert!(!error.is_transient());
    assert_eq!(controller.image_id(missing).await.expect("inspect"), None);
    let id = controller
        .image_id(&images.plain)
        .await
        .expect("inspect")
        .expect("present");
    assert!(id.starts_with("sha256:"), "{id}");
}

#[tokio::test]
async fn invalid_specs_are_refused_before_docker() {
    let case = "invalid";
    let _cleanup = Cleanup::new(case);
    let images = images().await;
    let errors = Arc::new(AtomicUsize::new(0));
    let counter = errors.clone();
    let controller = controller()
        .await
        .with_error_hook(Arc::new(move |_op: &'static str| {
            counter.fetch_add(1, Ordering::Relaxed);
        }));

    let base = spec(case, &images.plain, "true");
    let mut bad = Vec::new();
    for user in ["root", "0", "0:0", "1001:0", "runner"] {
        let mut s = base.clone();
        s.user = user.into();
        bad.push(s);
    }
    let mut s = base.clone();
    s.cap_add = vec!["SYS_ADMIN".into()];
    bad.push(s);
    let mut s = base.clone();
    s.cap_add = vec!["ALL".into()];
    bad.push(s);
    let mut s = base.clone();
    s.labels.remove(LABEL_MANAGED);
    bad.push(s);
    let mut s = base.clone();
    s.pids_limit = 0;
    bad.push(s);
    let mut s = base.clone();
    s.network = WorkerNetwork::Bridge("host".into());
    bad.push(s);
    let mut s = base.clone();
    s.env
        .insert("ACTIONS_RUNNER_INPUT_JITCONFIG".into(), "x".into());
    bad.push(s);
    let mut s = base.clone();
    s.name = "not-berth".into();
    bad.push(s);

    for s in &bad {
        let result = controller.create_worker(s).await;
        assert!(
            matches!(result, Err(DockerError::InvalidSpec(_))),
            "{s:?}: {result:?}"
        );
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "nothing reached Docker");
    let docker = raw_docker().await;
    let filters = HashMap::from([("label".to_owned(), vec![format!("{CASE_LABEL}={case}")])]);
    let created = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list");
    assert!(created.is_empty(), "{created:?}");
}

#[tokio::test]
async fn failed_calls_reach_the_error_hook() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let controller = controller()
        .await
        .with_error_hook(Arc::new(move |op: &'static str| {
            sink.lock().expect("lock").push(op);
        }));
    let error = controller
        .inspect("berth-t-no-such-container")
        .await
        .expect_err("missing");
    assert!(error.is_not_found(), "{error}");
    let error = controller
        .stop("berth-t-no-such-container", Duration::from_secs(1))
        .await
        .expect_err("missing");
    assert!(error.is_not_found(), "{error}");
    // Success by design: removing what is gone, looking up a missing image.
    controller
        .remove("berth-t-no-such-container")
        .await
        .expect("idempotent remove");
    controller
        .image_id("berth-test-controller-missing:x")
        .await
        .expect("lookup");
    controller.ping().await.expect("ping");
    assert_eq!(
        *seen.lock().expect("lock"),
        ["container_inspect", "container_stop"]
    );
    assert_eq!(controller.api_version(), "1.41");
}

/// A fake engine: answers `/version` (so connecting works) and never answers
/// anything else.
async fn silent_engine() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                if line.contains("/version ") {
                    let body =
                        r#"{"ApiVersion":"1.41","Version":"20.10.0","MinAPIVersion":"1.12"}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                }
                // Hold the connection open without a word.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn call_timeout_is_honoured() {
    let timeout = Duration::from_millis(300);

    // An engine that accepts connections but never answers at all.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mute_address = mute.local_addr().expect("address");
    let started = Instant::now();
    let error = Controller::connect(&format!("tcp://{mute_address}"), timeout)
        .await
        .expect_err("no answer");
    assert_eq!(
        error,
        DockerError::Timeout {
            op: "version",
            after: timeout
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(mute);

    // An engine that negotiates, then hangs on every call.
    let address = silent_engine().await;
    let hooked = Arc::new(AtomicUsize::new(0));
    let counter = hooked.clone();
    let controller = Controller::connect(&format!("http://{address}"), timeout)
        .await
        .expect("negotiated")
        .with_error_hook(Arc::new(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
    let started = Instant::now();
    let error = controller.ping().await.expect_err("hangs");
    let took = started.elapsed();
    assert_eq!(
        error,
        DockerError::Timeout {
            op: "ping",
            after: timeout
        }
    );
    assert!(error.is_transient());
    assert!(took >= timeout && took < Duration::from_secs(2), "{took:?}");
    let error = controller
        .inspect("berth-t-anything")
        .await
        .expect_err("hangs");
    assert!(matches!(
        error,
        DockerError::Timeout {
            op: "container_inspect",
            ..
        }
    ));
    assert_eq!(hooked.load(Ordering::Relaxed), 2);

    // Connection refused is a transient transport error.
    drop(controller);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address")
    };
    let error = Controller::connect(&format!("tcp://{closed}"), timeout)
        .await
        .expect_err("refused");
    assert!(matches!(error, DockerError::Transport { .. }), "{error}");
    assert!(error.is_transient());
}
