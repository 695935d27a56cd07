//! What the socket proxy costs: container create + start (+ wait + remove),
//! `GET /_ping` and container inspect (by ID and by name), directly on the Docker socket, through berth's socket
//! proxy, and through HAProxy with an equivalent path allowlist (the
//! approach of the widely used docker-socket-proxy image), in one run.
//!
//! ```sh
//! cargo bench -p berth-proxies --bench socket_proxy_latency
//! # knobs: BENCH_CYCLES (default 40), BENCH_PINGS (default 1000)
//! ```
//!
//! Each path gets one keep-alive connection (as a Docker client keeps a
//! pool); the paths take turns cycle by cycle so that drift in the
//! engine's speed hits all of them alike. berth's proxy runs in this
//! process on its own two-thread runtime, HAProxy as its own process.
//! Needs the Docker engine, busybox at /bin/busybox, and `haproxy` on the
//! PATH for the third column (skipped without it). Results and method are
//! recorded in docs/PERFORMANCE.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_proxies::socket::{Policy, Running};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: &support::Addr) -> Conn {
        let io = addr.connect().await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn { sender }
    }

    async fn call(&mut self, method: Method, target: &str, body: Option<String>) -> (u16, Bytes) {
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header("host", "docker");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(req).await.expect("request");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    }
}

struct Timing {
    create_start: Duration,
    cycle: Duration,
}

/// create → start → wait → remove of a container running `true`.
async fn cycle(conn: &mut Conn, body: &str) -> Timing {
    let t0 = Instant::now();
    let (status, created) = conn
        .call(
            Method::POST,
            "/v1.41/containers/create",
            Some(body.to_owned()),
        )
        .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
    let id: serde_json::Value = serde_json::from_slice(&created).unwrap();
    let id = id["Id"].as_str().unwrap().to_owned();
    let (status, _) = conn
        .call(Method::POST, &format!("/v1.41/containers/{id}/start"), None)
        .await;
    assert_eq!(status, 204);
    let create_start = t0.elapsed();
    let (status, _) = conn
        .call(
            Method::POST,
            &format!("/v1.41/containers/{id}/wait?condition=not-running"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = conn
        .call(
            Method::DELETE,
            &format!("/v1.41/containers/{id}?force=1&v=1"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    Timing {
        create_start,
        cycle: t0.elapsed(),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy in front of the socket with the same endpoints allowed as berth's
/// built-in policy, by method and path regex (no body or label checks: it
/// cannot do those).
struct HaProxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    fn start(socket: &std::path::Path) -> Option<HaProxy> {
        Command::new("haproxy").arg("-v").output().ok()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let id = "[a-zA-Z0-9][a-zA-Z0-9_.-]*";
        let config = format!(
            r#"global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend docker
    bind 127.0.0.1:{port}
    acl get_path path,url_dec -m reg ^(/v[0-9.]+)?/(_ping|version|info|events|images/json|images/.+/json|containers/json|containers/{id}/(json|logs)|networks|networks/{id})$
    acl head_path path,url_dec -m reg ^(/v[0-9.]+)?/_ping$
    acl post_path path,url_dec -m reg ^(/v[0-9.]+)?/(images/create|containers/create|containers/{id}/(start|attach|wait|stop|kill)|networks/create)$
    acl delete_path path,url_dec -m reg ^(/v[0-9.]+)?/(containers|networks)/{id}$
    http-request allow if METH_GET get_path
    http-request allow if METH_HEAD head_path
    http-request allow if METH_POST post_path
    http-request allow if {{ method DELETE }} delete_path
    http-request deny
    default_backend engine
backend engine
    server engine {socket}
"#,
            socket = socket.display()
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .ok()?;
        if !check.status.success() {
            eprintln!("haproxy config: {}", String::from_utf8_lossy(&check.stderr));
            return None;
        }
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(HaProxy {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
struct Stats {
    mean: f64,
    median: f64,
    p90: f64,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Stats {
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
        median: at(0.5),
        p90: at(0.9),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn main() {
    // `cargo test --benches` runs benches with `--bench`-less args; only
    // measure when asked to.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("berth-proxy")
        .enable_all()
        .build()
        .unwrap();
    let socket = support::docker_socket();
    let proxy = proxy_rt
        .block_on(Running::start(
            Policy::default(),
            &format!("unix://{}", socket.display()),
            "127.0.0.1:0",
        ))
        .expect("start the proxy");
    let haproxy = HaProxy::start(&socket);
    if haproxy.is_none() {
        eprintln!("haproxy not available: its column is skipped");
    }

    let cycles = env_usize("BENCH_CYCLES", 40);
    let pings = env_usize("BENCH_PINGS", 1000);
    client.block_on(async {
        let image = support::test_image().await;
        let mut paths: Vec<(&str, support::Addr)> = vec![
            ("direct", support::Addr::Unix(socket.clone())),
            (
                "berth socket-proxy",
                support::Addr::from_docker_host(proxy.docker_host()),
            ),
        ];
        if let Some(h) = &haproxy {
            paths.push((
                "haproxy",
                support::Addr::Tcp(format!("127.0.0.1:{}", h.port)),
            ));
        }
        let mut conns = Vec::new();
        for (_, addr) in &paths {
            conns.push(Conn::open(addr).await);
        }
        let (_, version) = conns[0].call(Method::GET, "/version", None).await;
        let version: serde_json::Value = serde_json::from_slice(&version).unwrap();
        let body = json!({
            "Image": image,
            "Cmd": ["true"],
            "Labels": {"berth.managed": "true", "berth.test": "bench"},
            "HostConfig": {
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges:true"],
                "NetworkMode": "none"
            }
        })
        .to_string();

        // Warm up every path (connections, caches, the engine).
        for conn in &mut conns {
            for _ in 0..3 {
                cycle(conn, &body).await;
            }
        }
        let mut create_start: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
        let mut full: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
        for round in 0..cycles {
            for k in 0..paths.len() {
                // Rotate who goes first each round.
                let i = (k + round) % paths.len();
                let t = cycle(&mut conns[i], &body).await;
                create_start[i].push(t.create_start);
                full[i].push(t.cycle);
            }
        }
        // Small calls: the proxy's own cost shows here. Inspect by full ID
        // is the managed-label check's cache hit; by name it is re-checked
        // (one extra inspect through the engine) every time.
        let name = format!("berth-bench-{}", std::process::id());
        let (status, created) = conns[0]
            .call(
                Method::POST,
                &format!("/v1.41/containers/create?name={name}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 201);
        let id: serde_json::Value = serde_json::from_slice(&created).unwrap();
        let id = id["Id"].as_str().unwrap().to_owned();
        let small = [
            ("GET /_ping", "/v1.41/_ping".to_owned()),
            (
                "inspect by ID (cached)",
                format!("/v1.41/containers/{id}/json"),
            ),
            (
                "inspect by name (checked)",
                format!("/v1.41/containers/{name}/json"),
            ),
        ];
        let mut small_samples: Vec<Vec<Vec<Duration>>> =
            vec![vec![Vec::new(); paths.len()]; small.len()];
        for (s, (_, target)) in small.iter().enumerate() {
            for _ in 0..pings {
                for (i, conn) in conns.iter_mut().enumerate() {
                    let t0 = Instant::now();
                    let (status, _) = conn.call(Method::GET, target, None).await;
                    assert_eq!(status, 200);
                    small_samples[s][i].push(t0.elapsed());
                }
            }
        }
        let (status, _) = conns[0]
            .call(
                Method::DELETE,
                &format!("/v1.41/containers/{id}?force=1"),
                None,
            )
            .await;
        assert_eq!(status, 204);

        println!("socket proxy latency, one run");
        println!("machine: {}", machine());
        println!(
            "engine: Docker {} (API {}), {} cycles and {} of each small call per path",
            version["Version"].as_str().unwrap_or("?"),
            version["ApiVersion"].as_str().unwrap_or("?"),
            cycles,
            pings
        );
        let mut tables = vec![
            ("create+start", &create_start),
            ("create+start+wait+remove", &full),
        ];
        for (s, (title, _)) in small.iter().enumerate() {
            tables.push((title, &small_samples[s]));
        }
        for (title, samples) in tables {
            println!();
            println!(
                "{title:<28} {:>10} {:>10} {:>10} {:>14}",
                "mean ms", "median ms", "p90 ms", "ratio (median)"
            );
            let base = stats(&samples[0]);
            for (i, (name, _)) in paths.iter().enumerate() {
                let s = stats(&samples[i]);
                println!(
                    "{name:<28} {:>10.3} {:>10.3} {:>10.3} {:>14.3}",
                    s.mean,
                    s.median,
                    s.p90,
                    s.median / base.median
                );
            }
        }
    });
    client.block_on(async {
        let _ = proxy_rt.spawn(async move { proxy.stop().await }).await;
    });
}
