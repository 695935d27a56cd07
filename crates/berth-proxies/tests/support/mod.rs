//! Test support: raw HTTP against the proxy and the engine, a test image, and
//! a tap that records every request reaching the engine.
//!
//! No Docker client library on purpose: the corpus sends request targets
//! byte for byte as written (doubled slashes, encodings, bad methods), which
//! a client library would tidy up or refuse.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2_free::content_tag;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// The engine's socket: `DOCKER_HOST` (unix) or the default.
pub fn docker_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// Where to send raw requests.
#[derive(Debug, Clone)]
pub enum Addr {
    Tcp(String),
    Unix(PathBuf),
}

impl Addr {
    /// From `tcp://host:port` or `unix://path`.
    pub fn from_docker_host(host: &str) -> Addr {
        if let Some(a) = host.strip_prefix("tcp://") {
            Addr::Tcp(a.to_owned())
        } else {
            Addr::Unix(PathBuf::from(host.strip_prefix("unix://").unwrap_or(host)))
        }
    }

    pub async fn connect(&self) -> Box<dyn Io> {
        match self {
            Addr::Tcp(a) => Box::new(TcpStream::connect(a).await.expect("connect tcp")),
            Addr::Unix(p) => Box::new(UnixStream::connect(p).await.expect("connect unix")),
        }
    }
}

pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A parsed answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `message` of a JSON error answer.
    pub fn message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| self.text())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line `{status_line}`"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        data = &data[end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// Sends `request` (a complete HTTP/1.1 request; it should carry
/// `Connection: close`) and reads the answer to the end of the connection.
///
/// The request is written while the answer is read, and a failed write is
/// ignored: a proxy may answer (and close) before it has read all of an
/// oversized body.
pub async fn send(addr: &Addr, request: &[u8]) -> Answer {
    let io = addr.connect().await;
    let (mut reader, mut writer) = tokio::io::split(io);
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut raw))
        .await
        .expect("answer within 20 s")
        .ok();
    drop(writing.await);
    let split = find(&raw, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no complete answer head: {:?}",
            String::from_utf8_lossy(&raw)
        )
    });
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..split]));
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends `request` and reads only the answer's head (for upgrades and
/// streams); returns it and the connection.
pub async fn send_head(addr: &Addr, request: &[u8]) -> (Answer, Box<dyn Io>, Vec<u8>) {
    let mut io = addr.connect().await;
    io.write_all(request).await.expect("write request");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), io.read(&mut buf))
            .await
            .expect("answer within 20 s")
            .expect("read");
        assert!(n > 0, "connection closed before the head: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
        if let Some(split) = find(&raw, b"\r\n\r\n") {
            let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..split]));
            let rest = raw[split + 4..].to_vec();
            return (
                Answer {
                    status,
                    headers,
                    body: Vec::new(),
                },
                io,
                rest,
            );
        }
    }
}

/// A request with `Connection: close`; `body` gets a Content-Length.
pub fn request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut bytes = match body {
        Some(b) => {
            out.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(b);
            bytes
        }
        None => {
            out.push_str("\r\n");
            out.into_bytes()
        }
    };
    bytes.shrink_to_fit();
    bytes
}

/// A JSON POST.
pub fn post_json(target: &str, body: &serde_json::Value) -> Vec<u8> {
    request(
        "POST",
        target,
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

/// `s` percent-encoded for a query value.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `filters` selecting berth's managed label.
pub fn managed_filter() -> String {
    enc(r#"{"label":["berth.managed=true"]}"#)
}

// ---------------------------------------------------------------------------
// The test image: a static busybox imported from an in-memory tar.
// ---------------------------------------------------------------------------

pub const IMAGE_REPO: &str = "berth-proxy-test";

mod sha2_free {
    /// A short, stable tag from the content (FNV-1a; no crypto needed).
    pub fn content_tag(data: &[u8]) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in data {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}")
    }
}

fn rootfs_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .or_else(|_| std::fs::read("/usr/bin/busybox"))
        .expect("busybox-static at /bin/busybox");
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "bin/", std::io::empty())
        .unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    builder
        .append_data(&mut file, "bin/busybox", busybox.as_slice())
        .unwrap();
    for applet in ["sh", "sleep", "cat", "echo", "true", "head"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        builder
            .append_link(&mut link, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// The test image's reference (`berth-proxy-test:<content tag>`), imported
/// straight into the engine when it is not there yet.
pub async fn test_image() -> String {
    let tar = rootfs_tar();
    let tag = content_tag(&tar);
    let reference = format!("{IMAGE_REPO}:{tag}");
    let engine = Addr::Unix(docker_socket());
    let found = send(
        &engine,
        &request("GET", &format!("/images/{reference}/json"), &[], None),
    )
    .await;
    if found.status == 200 {
        return reference;
    }
    let answer = send(
        &engine,
        &request(
            "POST",
            &format!("/images/create?fromSrc=-&repo={IMAGE_REPO}&tag={tag}"),
            &[("Content-Type", "application/x-tar")],
            Some(&tar),
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "import: {}", answer.text());
    reference
}

// ---------------------------------------------------------------------------
// The tap: a unix socket in front of the engine that records request lines.
// ---------------------------------------------------------------------------

/// Forwards a unix socket to the engine byte for byte and records the
/// request line (`METHOD TARGET`) of every request passing through.
pub struct Tap {
    pub path: PathBuf,
    seen: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    pub async fn start(engine: &Path) -> Tap {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let engine = engine.to_owned();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let engine = engine.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(server) = UnixStream::connect(&engine).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let upstream = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut parser = RequestParser::default();
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            for line in parser.feed(&buf[..n]) {
                                log.lock().unwrap().push(line);
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let downstream = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        Tap {
            path,
            seen,
            _dir: dir,
            task,
        }
    }

    /// `unix://…` of the tap, for the proxy's `--docker`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Every request line seen so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows HTTP/1.1 request framing on one connection and yields each
/// request line (`METHOD TARGET`); stops at an upgrade.
#[derive(Default)]
struct RequestParser {
    buf: Vec<u8>,
    state: ParseState,
}

#[derive(Default)]
enum ParseState {
    #[default]
    Head,
    Body(usize),
    Chunked,
    Raw,
}

impl RequestParser {
    fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        if matches!(self.state, ParseState::Raw) {
            return lines;
        }
        self.buf.extend_from_slice(data);
        loop {
            match self.state {
                ParseState::Raw => {
                    self.buf.clear();
                    return lines;
                }
                ParseState::Head => {
                    let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                        return lines;
                    };
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end + 4);
                    let mut head_lines = head.split("\r\n");
                    let first = head_lines.next().unwrap_or_default();
                    let mut parts = first.split(' ');
                    if let (Some(m), Some(t)) = (parts.next(), parts.next()) {
                        lines.push(format!("{m} {t}"));
                    }
                    let mut length = 0usize;
                    let mut chunked = false;
                    let mut upgrade = false;
                    for h in head_lines {
                        let Some((k, v)) = h.split_once(':') else {
                            continue;
                        };
                        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                        match k.as_str() {
                            "content-length" => length = v.parse().unwrap_or(0),
                            "transfer-encoding" => chunked = v.contains("chunked"),
                            "upgrade" => upgrade = true,
                            _ => {}
                        }
                    }
                    self.state = if upgrade {
                        ParseState::Raw
                    } else if chunked {
                        ParseState::Chunked
                    } else {
                        ParseState::Body(length)
                    };
                }
                ParseState::Body(n) => {
                    if self.buf.len() < n {
                        self.state = ParseState::Body(n - self.buf.len());
                        self.buf.clear();
                        return lines;
                    }
                    self.buf.drain(..n);
                    self.state = ParseState::Head;
                }
                ParseState::Chunked => {
                    let Some(end) = find(&self.buf, b"\r\n") else {
                        return lines;
                    };
                    let size_text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    let size =
                        usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                            .unwrap_or(0);
                    if size == 0 {
                        // Last chunk, then (no trailers) the final CRLF.
                        if self.buf.len() < end + 4 {
                            return lines;
                        }
                        self.buf.drain(..end + 4);
                        self.state = ParseState::Head;
                    } else {
                        if self.buf.len() < end + 2 + size + 2 {
                            return lines;
                        }
                        self.buf.drain(..end + 2 + size + 2);
                    }
                }
            }
        }
    }
}
