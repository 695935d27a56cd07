//! What the egress proxy costs on loopback: request latency and bulk
//! throughput directly to an upstream, through a CONNECT tunnel, and
//! through plain-HTTP forwarding, in one run.
//!
//! ```sh
//! cargo bench -p berth-proxies --bench egress_proxy_latency
//! # knobs: BENCH_REQUESTS (default 2000), BENCH_BULK_MIB (default 128),
//! #        BENCH_BULK_ROUNDS (default 5)
//! ```
//!
//! The upstream is a minimal keep-alive HTTP/1.1 server in this process
//! (`GET /` answers 2 bytes, `GET /bulk` answers BENCH_BULK_MIB MiB); the
//! proxy runs in this process too, allowing `127.0.0.1` on the upstream's
//! port by a CIDR entry (so no DNS). The paths take turns request by
//! request, so drift hits all of them alike. Results and method are
//! recorded in docs/PERFORMANCE.md.

use std::time::{Duration, Instant};

use berth_proxies::egress::{Allowlist, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reads one request head; `None` at EOF.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn upstream(bulk_bytes: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let zeros = vec![0u8; CHUNK];
                while let Some(head) = read_head(&mut s, &mut buf).await {
                    if head.starts_with("GET /bulk") {
                        let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {bulk_bytes}\r\n\r\n");
                        if s.write_all(h.as_bytes()).await.is_err() {
                            return;
                        }
                        let mut left = bulk_bytes;
                        while left > 0 {
                            let n = left.min(CHUNK);
                            if s.write_all(&zeros[..n]).await.is_err() {
                                return;
                            }
                            left -= n;
                        }
                    } else if s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Reads one response (head + content-length body); returns the body length.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let head = read_head(s, buf).await.expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut have = buf.len().min(len);
    buf.drain(..have);
    let mut chunk = vec![0u8; CHUNK];
    while have < len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "short body");
        have += n;
    }
    len
}

/// One of the three ways to reach the upstream.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Connect,
    Http,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Connect => "CONNECT tunnel",
            Path::Http => "HTTP forward",
        }
    }
}

struct Target {
    up: u16,
    proxy: String,
}

impl Target {
    /// Opens a connection ready for origin- or absolute-form requests.
    async fn open(&self, path: Path) -> TcpStream {
        let mut s = match path {
            Path::Direct => TcpStream::connect(("127.0.0.1", self.up)).await.unwrap(),
            _ => TcpStream::connect(&self.proxy).await.unwrap(),
        };
        s.set_nodelay(true).unwrap();
        if path == Path::Connect {
            let up = self.up;
            s.write_all(
                format!("CONNECT 127.0.0.1:{up} HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut buf = Vec::new();
            let head = read_head(&mut s, &mut buf).await.unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        s
    }

    fn request(&self, path: Path, resource: &str) -> String {
        let up = self.up;
        match path {
            Path::Http => format!(
                "GET http://127.0.0.1:{up}{resource} HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n\r\n"
            ),
            _ => format!("GET {resource} HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n\r\n"),
        }
    }
}

fn stats(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (mean, at(0.5), at(0.9))
}

fn main() {
    let requests = env_usize("BENCH_REQUESTS", 2000);
    let bulk_mib = env_usize("BENCH_BULK_MIB", 128);
    let bulk_rounds = env_usize("BENCH_BULK_ROUNDS", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let up = upstream(bulk_mib * 1024 * 1024).await;
        let list = Allowlist::from_toml(
            &format!("[[allow]]\ncidr = \"127.0.0.1\"\nports = [{up}]\n"),
            "bench",
        )
        .unwrap();
        let proxy = Running::start(list, "127.0.0.1:0").await.unwrap();
        let target = Target {
            up,
            proxy: proxy.addr().to_owned(),
        };
        let paths = [Path::Direct, Path::Connect, Path::Http];

        // 1. A new connection per request (what a short-lived tool does).
        let mut fresh: Vec<Vec<f64>> = vec![Vec::new(); 3];
        // 2. A request on a connection already open (keep-alive / tunnel).
        let mut reused: Vec<Vec<f64>> = vec![Vec::new(); 3];
        let mut open: Vec<(TcpStream, Vec<u8>)> = Vec::new();
        for &p in &paths {
            open.push((target.open(p).await, Vec::new()));
        }
        for i in 0..requests + 50 {
            for k in 0..3 {
                let (j, p) = ((i + k) % 3, paths[(i + k) % 3]);
                let started = Instant::now();
                let mut s = target.open(p).await;
                s.write_all(target.request(p, "/").as_bytes())
                    .await
                    .unwrap();
                read_response(&mut s, &mut Vec::new()).await;
                let took = started.elapsed();
                drop(s);
                let (s, buf) = &mut open[j];
                let started = Instant::now();
                s.write_all(target.request(p, "/").as_bytes())
                    .await
                    .unwrap();
                read_response(s, buf).await;
                let took2 = started.elapsed();
                if i >= 50 {
                    fresh[j].push(took.as_secs_f64() * 1e6);
                    reused[j].push(took2.as_secs_f64() * 1e6);
                }
            }
        }

        // 3. Bulk download on a fresh connection per round.
        let mut bulk: Vec<Vec<f64>> = vec![Vec::new(); 3];
        for round in 0..bulk_rounds + 1 {
            for k in 0..3 {
                let j = (round + k) % 3;
                let p = paths[j];
                let mut s = target.open(p).await;
                let started = Instant::now();
                s.write_all(target.request(p, "/bulk").as_bytes())
                    .await
                    .unwrap();
                let n = read_response(&mut s, &mut Vec::new()).await;
                let secs = started.elapsed().as_secs_f64();
                if round > 0 {
                    bulk[j].push(n as f64 / secs / (1024.0 * 1024.0));
                }
            }
        }

        println!("requests per path: {requests}; bulk: {bulk_rounds} x {bulk_mib} MiB per path\n");
        println!("| measure | path | mean | median | p90 | ratio (median) |");
        println!("| --- | --- | ---: | ---: | ---: | ---: |");
        for (label, table) in [
            ("new connection + GET (µs)", &fresh),
            ("GET on an open connection (µs)", &reused),
        ] {
            let base = stats(table[0].clone()).1;
            for (j, p) in paths.iter().enumerate() {
                let (mean, median, p90) = stats(table[j].clone());
                let l = if j == 0 { label } else { "" };
                println!(
                    "| {l} | {} | {mean:.1} | {median:.1} | {p90:.1} | {:.2} |",
                    p.name(),
                    median / base
                );
            }
        }
        let base = stats(bulk[0].clone()).1;
        for (j, p) in paths.iter().enumerate() {
            let (mean, median, _) = stats(bulk[j].clone());
            let l = if j == 0 { "bulk download (MiB/s)" } else { "" };
            println!(
                "| {l} | {} | {mean:.0} | {median:.0} | | {:.2} |",
                p.name(),
                median / base
            );
        }
        drop(open);
        tokio::time::sleep(Duration::from_millis(10)).await;
        proxy.stop().await;
    });
}
