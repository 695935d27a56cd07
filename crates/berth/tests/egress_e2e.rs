//! The egress proxy end to end with real containers: a worker-like
//! container on berth's internal network (created by the controller, as
//! `berth serve` creates it when `docker.egress_proxy` is set) cannot reach
//! an upstream directly, reaches an allowed one through the egress proxy
//! (plain HTTP and CONNECT), and is refused a denied one.
//!
//! The proxy runs in this process, bound to the internal network's gateway
//! address (the host's side of the bridge), which is the "proxy on the
//! host" deployment of docs/egress-proxy.md. Upstreams are busybox httpd
//! containers on an ordinary bridge network. Everything is labelled
//! `berth.test=egress-e2e` and named `berth-egress-e2e-…`, and removed at
//! the end, even when the test fails.

use std::collections::HashMap;
use std::time::Duration;

use berth::docker::Controller;
use berth_proxies::egress::{Allowlist, Running};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListNetworksOptions,
    LogsOptions, RemoveContainerOptions,
};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

const LABEL: &str = "berth.test";
const LABEL_VALUE: &str = "egress-e2e";
const PREFIX: &str = "berth-egress-e2e";
const IMAGE_REPOSITORY: &str = "berth-egress-test";
const APPLETS: &[&str] = &["sh", "nc", "httpd", "mkdir", "echo", "printf", "cat"];

fn socket_path() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned())
}

async fn docker() -> Docker {
    Docker::connect_with_unix(&socket_path(), 30, bollard::API_DEFAULT_VERSION)
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("negotiate")
}

/// A FROM-scratch image with busybox-static and the applets the test uses,
/// tagged by content so it is imported once.
async fn image(docker: &Docker) -> String {
    let busybox = std::fs::read("/bin/busybox")
        .or_else(|_| std::fs::read("/usr/bin/busybox"))
        .expect("busybox-static at /bin/busybox (scripts/test installs it)");
    let mut builder = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    for (dir, mode) in [("bin", 0o755), ("tmp", 0o1777)] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        builder.append_data(&mut h, dir, std::io::empty()).unwrap();
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    builder
        .append_data(&mut h, "bin/busybox", busybox.as_slice())
        .unwrap();
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        builder
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let changes = vec!["ENV PATH=/bin".to_owned()];
    let tag = hex::encode(&Sha256::digest(&tar)[..6]);
    let reference = format!("{IMAGE_REPOSITORY}:{tag}");
    if docker.inspect_image(&reference).await.is_ok() {
        return reference;
    }
    let options = CreateImageOptions {
        from_src: Some("-".to_owned()),
        repo: Some(IMAGE_REPOSITORY.to_owned()),
        tag: Some(tag),
        changes,
        ..Default::default()
    };
    docker
        .create_image(Some(options), Some(bollard::body_full(tar.into())), None)
        .try_collect::<Vec<_>>()
        .await
        .expect("import the test image");
    reference
}

/// Removes every container labelled for this test and the networks named
/// with its prefix (also what an earlier, interrupted run left).
async fn cleanup(docker: &Docker) {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL}={LABEL_VALUE}")])]);
    let options = ListContainersOptions {
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
            let remove = RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            };
            let _ = docker.remove_container(&id, Some(remove)).await;
        }
    }
    let filters = HashMap::from([("name".to_owned(), vec![PREFIX.to_owned()])]);
    for n in docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .unwrap_or_default()
    {
        if let (Some(id), Some(name)) = (n.id, n.name)
            && name.starts_with(PREFIX)
        {
            let _ = docker.remove_network(&id).await;
        }
    }
}

/// Starts a container on `network` running `script` under busybox sh.
async fn start(
    docker: &Docker,
    image: &str,
    name: &str,
    network: &str,
    script: &str,
    env: &[(&str, String)],
) -> String {
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
        env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(HashMap::from([(LABEL.to_owned(), LABEL_VALUE.to_owned())])),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(name.to_owned()),
        ..Default::default()
    };
    let id = docker
        .create_container(Some(options), body)
        .await
        .expect("create")
        .id;
    docker.start_container(&id, None).await.expect("start");
    id
}

async fn ip_on(docker: &Docker, id: &str, network: &str) -> String {
    let inspect = docker.inspect_container(id, None).await.unwrap();
    inspect
        .network_settings
        .and_then(|s| s.networks)
        .and_then(|n| n.get(network).cloned())
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty())
        .expect("the container's address")
}

async fn output(docker: &Docker, id: &str) -> String {
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        docker.wait_container(id, None).collect::<Vec<_>>(),
    )
    .await;
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let chunks: Vec<_> = docker.logs(id, Some(options)).collect().await;
    chunks
        .into_iter()
        .filter_map(Result::ok)
        .map(|c| c.to_string())
        .collect()
}

#[tokio::test]
async fn workers_reach_only_allowed_upstreams_and_only_through_the_proxy() {
    let docker = docker().await;
    cleanup(&docker).await;
    let result = tokio::spawn(scenario(docker.clone())).await;
    cleanup(&docker).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(docker: Docker) {
    let image = image(&docker).await;
    let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let internal = format!("{PREFIX}-int-{tag}");
    let outside = format!("{PREFIX}-out-{tag}");

    // berth's network, as `berth serve` creates it with an egress proxy
    // configured: internal. Through the socket proxy, as in production.
    let socket_proxy = berth_proxies::socket::Running::start(
        berth_proxies::socket::Policy::default(),
        &format!("unix://{}", socket_path()),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let controller = Controller::connect(socket_proxy.docker_host(), Duration::from_secs(30))
        .await
        .unwrap();
    let internal_id = controller
        .ensure_network_with(&internal, true)
        .await
        .expect("the internal network");
    let inspected = docker.inspect_network(&internal_id, None).await.unwrap();
    assert_eq!(inspected.internal, Some(true));
    let gateway = inspected
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().find_map(|c| c.gateway))
        .expect("the internal network's gateway");

    // The outside world: an ordinary bridge with two upstreams.
    docker
        .create_network(NetworkCreateRequest {
            name: outside.clone(),
            labels: Some(HashMap::from([(LABEL.to_owned(), LABEL_VALUE.to_owned())])),
            ..Default::default()
        })
        .await
        .unwrap();
    // An existing network that is not internal is refused for egress use.
    let refused = controller.ensure_network_with(&outside, true).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("is not internal")),
        "{refused:?}"
    );
    let httpd = |body: &str| {
        format!(
            "mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
        )
    };
    let allowed = start(
        &docker,
        &image,
        &format!("{PREFIX}-allowed-{tag}"),
        &outside,
        &httpd("allowed-upstream"),
        &[],
    )
    .await;
    let denied = start(
        &docker,
        &image,
        &format!("{PREFIX}-denied-{tag}"),
        &outside,
        &httpd("denied-upstream"),
        &[],
    )
    .await;
    let allowed_ip = ip_on(&docker, &allowed, &outside).await;
    let denied_ip = ip_on(&docker, &denied, &outside).await;

    // The proxy on the host, on the internal network's gateway address,
    // allowing the one upstream.
    let list = Allowlist::from_toml(
        &format!("[[allow]]\ncidr = \"{allowed_ip}/32\"\nports = [8080]\n"),
        "e2e",
    )
    .unwrap();
    let proxy = Running::start(list, &format!("{gateway}:0")).await.unwrap();
    let proxy_port = proxy.addr().rsplit(':').next().unwrap().to_owned();

    // Both upstreams answer (from the host, which is on both bridges).
    for ip in [&allowed_ip, &denied_ip] {
        let mut up = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect((ip.as_str(), 8080))
                .await
                .is_ok()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "upstream {ip} did not start");
    }

    // The worker: direct first, then through the proxy.
    let script = r#"
echo "== direct"
printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 1 "$ALLOWED" 8080 || echo "direct-failed"
echo "== http"
printf 'GET http://%s:8080/ HTTP/1.0\r\nHost: %s:8080\r\n\r\n' "$ALLOWED" "$ALLOWED" | nc -w 5 "$PROXY_HOST" "$PROXY_PORT"
echo "== connect"
printf 'CONNECT %s:8080 HTTP/1.1\r\nHost: %s:8080\r\n\r\nGET / HTTP/1.0\r\n\r\n' "$ALLOWED" "$ALLOWED" | nc -w 5 "$PROXY_HOST" "$PROXY_PORT"
echo "== denied"
printf 'GET http://%s:8080/ HTTP/1.0\r\nHost: %s:8080\r\n\r\n' "$DENIED" "$DENIED" | nc -w 5 "$PROXY_HOST" "$PROXY_PORT"
echo "== end"
"#;
    let worker = start(
        &docker,
        &image,
        &format!("{PREFIX}-worker-{tag}"),
        &internal,
        script,
        &[
            ("ALLOWED", allowed_ip.clone()),
            ("DENIED", denied_ip.clone()),
            ("PROXY_HOST", gateway.clone()),
            ("PROXY_PORT", proxy_port),
        ],
    )
    .await;
    let out = output(&docker, &worker).await;
    let section = |name: &str| {
        let start = out
            .find(&format!("== {name}"))
            .unwrap_or_else(|| panic!("no section {name}: {out}"));
        let rest = &out[start..];
        let end = rest[3..].find("== ").map_or(rest.len(), |e| e + 3);
        rest[..end].to_owned()
    };
    if std::env::var_os("EGRESS_E2E_SHOW").is_some() {
        eprintln!("{out}");
    }
    let direct = section("direct");
    assert!(direct.contains("direct-failed"), "{out}");
    assert!(!direct.contains("allowed-upstream"), "{out}");
    let http = section("http");
    assert!(
        http.contains("200 OK") && http.contains("allowed-upstream"),
        "{out}"
    );
    let connect = section("connect");
    assert!(
        connect.contains("HTTP/1.1 200") && connect.contains("allowed-upstream"),
        "{out}"
    );
    let denied_out = section("denied");
    assert!(denied_out.contains("403"), "{out}");
    assert!(
        denied_out.contains(&format!("berth egress-proxy: denied {denied_ip}:8080")),
        "{out}"
    );
    assert!(!denied_out.contains("denied-upstream"), "{out}");
    assert!(out.contains("== end"), "{out}");

    let metrics = proxy.proxy().metrics().encode();
    assert!(
        metrics.contains(
            r#"berth_egress_requests_total{kind="http",decision="allow",reason="allowed"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"berth_egress_requests_total{kind="connect",decision="allow",reason="allowed"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"berth_egress_requests_total{kind="http",decision="deny",reason="not-allowed"} 1"#
        ),
        "{metrics}"
    );
    proxy.stop().await;
    socket_proxy.stop().await;
}
