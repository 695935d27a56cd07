//! The egress proxy's HTTP server: decide, resolve, connect, relay.
//!
//! Two kinds of request are proxied, and nothing else:
//!
//! * `CONNECT host:port` (HTTPS and any other TLS): the authority is
//!   normalised and checked, the name resolved, every resolved address
//!   checked, the upstream connected **before** the client is told `200`,
//!   then bytes are relayed both ways untouched (the proxy never sees
//!   inside TLS, so it needs no certificates and breaks no pinning);
//! * `GET http://host/path` and the other methods with an absolute-form
//!   `http://` URI (plain HTTP): the URI's authority is checked, and a
//!   `Host` header, when present, must name the same host and port (a
//!   server behind the upstream would otherwise route on a host the proxy
//!   never checked). The request is sent in origin form over a fresh
//!   connection, hop-by-hop and `Proxy-*` headers removed.
//!
//! Everything else (origin-form requests, `https://` absolute URIs,
//! denied destinations) is answered `403` with a one-line body naming the
//! host and the reason, and no upstream connection is ever opened for it.
//!
//! **What is connected is what was checked.** The checked form is the
//! normalised [`Target`]; the proxy resolves that name itself and connects
//! to one of the addresses it checked, so neither a second resolution
//! (DNS rebinding) nor a different reading of the name can move it.
//!
//! **Limits.** At most `max_connections` client connections at once (more
//! get `503` and are closed); a request head over `max_header_bytes` gets
//! `431`; resolving and connecting take at most `connect_timeout_seconds`;
//! a connection or tunnel with no byte in either direction for
//! `idle_timeout_seconds` is closed.
//!
//! **Reload.** [`EgressProxy::reload`] (SIGHUP in `berth egress-proxy`)
//! reads the allowlist again; a file with errors is refused and the old
//! allowlist stays. New requests use the new list; tunnels already open
//! stay open (they were allowed when asked for), so a reload drops nothing.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::allowlist::{Allowlist, AllowlistError, Refusal};
use super::metrics::Metrics;
use super::target::{Host, Target, parse_authority};
pub use crate::transport::ProxyBody;
use crate::transport::{
    self, Drain, ListenAddr, Listener, SHUTDOWN_GRACE, Socket, TransportError, end_to_end, full,
};

/// An error starting the egress proxy.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Allowlist(#[from] AllowlistError),
    /// A bad `--listen` or `--metrics` address, or one that cannot be bound.
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

struct Inner {
    allowlist: RwLock<Arc<Allowlist>>,
    /// Where [`EgressProxy::reload`] reads from.
    path: Option<PathBuf>,
    metrics: Metrics,
    /// `max_connections` permits, fixed at start.
    permits: Arc<Semaphore>,
    max_connections: usize,
}

/// The egress proxy: cheap to clone.
#[derive(Clone)]
pub struct EgressProxy {
    inner: Arc<Inner>,
}

fn text_answer(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(format!("berth egress-proxy: {message}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // The client must not keep a connection whose request was refused in an
    // unknown state (a CONNECT body may follow).
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A refusal on the wire: what to answer and how to count it.
struct Denied {
    status: StatusCode,
    reason: &'static str,
    /// What the client asked for, as it asked (escaped) or normalised.
    host: String,
    message: String,
}

impl Denied {
    fn new(host: impl Into<String>, refusal: Refusal) -> Denied {
        Denied {
            status: StatusCode::FORBIDDEN,
            reason: refusal.reason,
            host: host.into(),
            message: refusal.message,
        }
    }
}

/// Writes what a client sent in a form fit for a log line and an answer.
fn escaped(raw: &str) -> String {
    raw.chars().take(300).flat_map(char::escape_debug).collect()
}

/// The last moment something moved on a connection, shared by the client
/// side and the upstream side so either keeps the other alive.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
    /// Completes once nothing moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle + Duration::from_millis(10)).await;
        }
    }
}

/// A stream that records activity and, on the upstream side, counts bytes.
struct Metered<S> {
    inner: S,
    activity: Activity,
    /// (read, written) counters: upstream reads are `received`, writes `sent`.
    counters: Option<(Counter, Counter)>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.activity.touch();
            if let Some((read, _)) = &this.counters {
                read.inc_by(n as u64);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result
            && *n > 0
        {
            this.activity.touch();
            if let Some((_, written)) = &this.counters {
                written.inc_by(*n as u64);
            }
        }
        result
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Held for as long as a client connection (and any tunnel it became) is
/// open: its `max_connections` permit and its place in the gauge.
struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    proxy: EgressProxy,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.proxy.inner.metrics.connections.dec();
    }
}

/// What a request handler knows of its connection.
#[derive(Clone)]
struct Conn {
    peer: Arc<str>,
    activity: Activity,
    /// Held, never read: dropping the last clone frees the permit.
    _guard: Arc<ConnGuard>,
    /// Asked to finish: the proxy is shutting down.
    drain: Drain,
}

impl EgressProxy {
    /// A proxy enforcing `allowlist`; `path` is what [`reload`](Self::reload)
    /// reads again.
    pub fn new(allowlist: Allowlist, path: Option<PathBuf>) -> EgressProxy {
        let max_connections = allowlist.limits.max_connections;
        EgressProxy {
            inner: Arc::new(Inner {
                allowlist: RwLock::new(Arc::new(allowlist)),
                path,
                metrics: Metrics::default(),
                permits: Arc::new(Semaphore::new(max_connections)),
                max_connections,
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The allowlist in force now.
    pub fn allowlist(&self) -> Arc<Allowlist> {
        self.inner.allowlist.read().expect("allowlist lock").clone()
    }

    /// Replaces the allowlist for new requests; open tunnels are untouched.
    pub fn set_allowlist(&self, allowlist: Allowlist) {
        if allowlist.limits.max_connections != self.inner.max_connections {
            tracing::warn!(
                running = self.inner.max_connections,
                file = allowlist.limits.max_connections,
                "limits.max_connections takes effect at the next start"
            );
        }
        *self.inner.allowlist.write().expect("allowlist lock") = Arc::new(allowlist);
    }

    /// Reads the allowlist file again. On an error the old allowlist stays
    /// in force and the error is returned (and logged, and counted).
    pub fn reload(&self) -> Result<usize, AllowlistError> {
        let Some(path) = &self.inner.path else {
            return Ok(self.allowlist().entries.len());
        };
        match Allowlist::from_file(path) {
            Ok(list) => {
                let n = list.entries.len();
                self.set_allowlist(list);
                self.count_reload("ok");
                tracing::info!(allowlist = %path.display(), entries = n, "egress allowlist reloaded");
                Ok(n)
            }
            Err(e) => {
                self.count_reload("error");
                tracing::error!(allowlist = %path.display(), error = %e, "egress allowlist NOT reloaded: the old one stays in force");
                Err(e)
            }
        }
    }

    fn count_reload(&self, result: &'static str) {
        self.inner
            .metrics
            .reloads
            .get_or_create(&super::metrics::ResultLabels { result })
            .inc();
    }

    fn deny(
        &self,
        kind: &'static str,
        conn: &Conn,
        method: &Method,
        d: Denied,
    ) -> Response<ProxyBody> {
        self.inner.metrics.decision(kind, "deny", d.reason);
        tracing::warn!(
            decision = "deny",
            kind,
            method = %method,
            host = %d.host,
            reason = d.reason,
            detail = %d.message,
            client = %conn.peer,
            "egress request denied"
        );
        text_answer(d.status, &format!("denied {}: {}", d.host, d.message))
    }

    /// Checks a target, resolves it, and connects to a checked address.
    async fn open(
        &self,
        kind: &'static str,
        conn: &Conn,
        method: &Method,
        target: &Target,
    ) -> Result<Metered<TcpStream>, Response<ProxyBody>> {
        let list = self.allowlist();
        let entry = match list.check(target) {
            Ok(e) => e.written.clone(),
            Err(refusal) => {
                return Err(self.deny(
                    kind,
                    conn,
                    method,
                    Denied::new(target.to_string(), refusal),
                ));
            }
        };
        let limit = list.limits.connect_timeout();
        let deadline = tokio::time::Instant::now() + limit;
        let candidates: Vec<SocketAddr> = match &target.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
            Host::Domain(name) => {
                match tokio::time::timeout_at(
                    deadline,
                    tokio::net::lookup_host((name.as_str(), target.port)),
                )
                .await
                {
                    Ok(Ok(addrs)) => addrs.collect(),
                    Ok(Err(e)) => {
                        return Err(self.upstream_failed(
                            kind,
                            conn,
                            target,
                            "dns",
                            &format!("cannot resolve it: {e}"),
                        ));
                    }
                    Err(_) => {
                        return Err(self.upstream_failed(
                            kind,
                            conn,
                            target,
                            "timeout",
                            "resolving it timed out",
                        ));
                    }
                }
            }
        };
        let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = candidates
            .into_iter()
            .map(|a| SocketAddr::new(super::allowlist::canonical(a.ip()), a.port()))
            .partition(|a| list.address_allowed(a.ip(), a.port()));
        if allowed.is_empty() {
            let shown: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
            let refusal = Refusal {
                reason: "private-address",
                message: format!(
                    "it resolves only to addresses no public destination has ({}); a `cidr` entry must allow them",
                    shown.join(", ")
                ),
            };
            return Err(self.deny(kind, conn, method, Denied::new(target.to_string(), refusal)));
        }
        let mut last_error = String::new();
        for addr in &allowed {
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    self.inner.metrics.decision(kind, "allow", "allowed");
                    tracing::info!(
                        decision = "allow",
                        kind,
                        method = %method,
                        host = %target,
                        address = %addr,
                        entry = %entry,
                        client = %conn.peer,
                        "egress request allowed"
                    );
                    let metrics = &self.inner.metrics;
                    return Ok(Metered {
                        inner: stream,
                        activity: conn.activity.clone(),
                        counters: Some((
                            metrics.bytes_counter("received"),
                            metrics.bytes_counter("sent"),
                        )),
                    });
                }
                Ok(Err(e)) => last_error = format!("{addr}: {e}"),
                Err(_) => {
                    return Err(self.upstream_failed(
                        kind,
                        conn,
                        target,
                        "timeout",
                        &format!("connecting timed out after {limit:?}"),
                    ));
                }
            }
        }
        Err(self.upstream_failed(
            kind,
            conn,
            target,
            "connect",
            &format!("cannot connect: {last_error}"),
        ))
    }

    fn upstream_failed(
        &self,
        kind: &'static str,
        conn: &Conn,
        target: &Target,
        reason: &'static str,
        message: &str,
    ) -> Response<ProxyBody> {
        // Allowed, but not reached: counted as an upstream error, not a
        // decision the allowlist made.
        self.inner.metrics.upstream_error(reason);
        tracing::warn!(kind, host = %target, reason, detail = message, client = %conn.peer, "egress upstream unreachable");
        let status = if reason == "timeout" {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        text_answer(status, &format!("{target}: {message}"))
    }

    /// Handles one request; never fails (errors are answers).
    async fn handle(&self, req: Request<Incoming>, conn: Conn) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            self.connect(req, conn).await
        } else {
            self.forward(req, conn).await
        }
    }

    async fn connect(&self, mut req: Request<Incoming>, conn: Conn) -> Response<ProxyBody> {
        const KIND: &str = "connect";
        let method = Method::CONNECT;
        let raw = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| req.uri().to_string());
        let target = match parse_authority(&raw, None) {
            Ok(t) => t,
            Err(e) => {
                return self.deny(
                    KIND,
                    &conn,
                    &method,
                    Denied::new(escaped(&raw), Refusal::bad_target(&e)),
                );
            }
        };
        let upstream = match self.open(KIND, &conn, &method, &target).await {
            Ok(s) => s,
            Err(answer) => return answer,
        };
        // The tunnel starts once hyper has sent the 200 and handed over the
        // connection; it holds the connection's permit until it ends.
        let on_upgrade = hyper::upgrade::on(&mut req);
        let idle = self.allowlist().limits.idle_timeout();
        tokio::spawn(async move {
            let client = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "the CONNECT upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = upstream;
            tokio::select! {
                result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(e) = result {
                        tracing::debug!(host = %target, error = %e, "tunnel ended with an error");
                    }
                }
                () = conn.activity.idle(idle) => {
                    tracing::info!(host = %target, client = %conn.peer, idle_seconds = idle.as_secs(), "tunnel closed: idle");
                }
                () = async { conn.drain.requested().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {}
            }
            let _ = upstream.shutdown().await;
            drop(conn);
        });
        Response::new(full(Bytes::new()))
    }

    async fn forward(&self, req: Request<Incoming>, conn: Conn) -> Response<ProxyBody> {
        const KIND: &str = "http";
        let method = req.method().clone();
        let uri = req.uri().clone();
        let Some(authority) = uri.authority() else {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(escaped)
                .unwrap_or_else(|| "-".into());
            let refusal = Refusal {
                reason: "method",
                message: "only CONNECT host:port and absolute-form http:// requests are proxied"
                    .into(),
            };
            return self.deny(KIND, &conn, &method, Denied::new(host, refusal));
        };
        if uri.scheme_str() != Some("http") {
            let refusal = Refusal {
                reason: "method",
                message: format!(
                    "scheme `{}` is not proxied: use CONNECT for https",
                    uri.scheme_str().unwrap_or("")
                ),
            };
            return self.deny(
                KIND,
                &conn,
                &method,
                Denied::new(escaped(authority.as_str()), refusal),
            );
        }
        let target = match parse_authority(authority.as_str(), Some(80)) {
            Ok(t) => t,
            Err(e) => {
                return self.deny(
                    KIND,
                    &conn,
                    &method,
                    Denied::new(escaped(authority.as_str()), Refusal::bad_target(&e)),
                );
            }
        };
        // The Host header, when sent, must name the same destination: the
        // upstream (or a server behind it) routes on it.
        let hosts: Vec<HeaderValue> = req
            .headers()
            .get_all(header::HOST)
            .iter()
            .cloned()
            .collect();
        let host_header = match hosts.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            _ => {
                let refusal = Refusal {
                    reason: "host-mismatch",
                    message: "more than one Host header".into(),
                };
                return self.deny(
                    KIND,
                    &conn,
                    &method,
                    Denied::new(target.to_string(), refusal),
                );
            }
        };
        if let Some(h) = &host_header {
            let same = h
                .to_str()
                .ok()
                .and_then(|h| parse_authority(h, Some(80)).ok())
                .is_some_and(|t| t == target);
            if !same {
                let refusal = Refusal {
                    reason: "host-mismatch",
                    message: format!(
                        "the Host header `{}` does not name {target}",
                        escaped(&String::from_utf8_lossy(h.as_bytes()))
                    ),
                };
                return self.deny(
                    KIND,
                    &conn,
                    &method,
                    Denied::new(target.to_string(), refusal),
                );
            }
        }

        let upstream = match self.open(KIND, &conn, &method, &target).await {
            Ok(s) => s,
            Err(answer) => return answer,
        };
        let (mut sender, connection) =
            match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
                Ok(pair) => pair,
                Err(e) => {
                    return self.upstream_failed(KIND, &conn, &target, "connect", &e.to_string());
                }
            };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });

        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = parts.method;
        *outgoing.uri_mut() = match path.parse::<Uri>() {
            Ok(u) => u,
            Err(_) => Uri::from_static("/"),
        };
        *outgoing.headers_mut() = end_to_end(&parts.headers);
        if host_header.is_none() {
            // HTTP/1.0 without Host: name the checked destination.
            if let Ok(v) = HeaderValue::from_str(&authority_for_host(&target)) {
                outgoing.headers_mut().insert(header::HOST, v);
            }
        }
        match sender.send_request(outgoing).await {
            Ok(answer) => {
                let (mut parts, body) = answer.into_parts();
                parts.headers = end_to_end(&parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => self.upstream_failed(
                KIND,
                &conn,
                &target,
                "connect",
                &format!("the upstream did not answer: {e}"),
            ),
        }
    }

    /// Serves connections from `listener` until `shutdown` completes, then
    /// lets open requests and tunnels finish for a few seconds (see
    /// [`transport::serve`]).
    pub async fn serve(self, listener: Listener, shutdown: impl Future<Output = ()> + Send) {
        transport::serve(listener, shutdown, |stream, peer, drain| {
            self.connection(stream, peer, drain)
        })
        .await
    }

    /// What to do with an accepted connection: refuse it when
    /// `max_connections` are open, serve it otherwise.
    fn connection(
        &self,
        stream: Socket,
        peer: String,
        drain: &Drain,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
            self.inner.metrics.connections_rejected.inc();
            tracing::warn!(client = %peer, max_connections = self.inner.max_connections, "egress connection refused: too many open");
            return Box::pin(refuse_busy(stream));
        };
        self.inner.metrics.connections.inc();
        let limits = self.allowlist().limits.clone();
        let activity = Activity::new();
        let conn = Conn {
            peer: peer.into(),
            activity: activity.clone(),
            _guard: Arc::new(ConnGuard {
                _permit: permit,
                proxy: self.clone(),
            }),
            drain: drain.clone(),
        };
        let proxy = self.clone();
        Box::pin(async move {
            let io = Metered {
                inner: stream,
                activity: activity.clone(),
                counters: None,
            };
            let handler_conn = conn.clone();
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                let conn = handler_conn.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req, conn).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout())
                .max_buf_size(limits.max_header_bytes)
                // A client may close its sending side once the request
                // is out (nc does); the answer must still reach it.
                .half_close(true)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let idle = async {
                activity.idle(limits.idle_timeout()).await;
                tracing::info!(client = %conn.peer, idle_seconds = limits.idle_timeout_seconds, "egress connection closed: idle");
            };
            transport::drive(served, &conn.drain, idle).await;
            drop(conn);
        })
    }
}

/// `host:port` for a `Host` header (the port left out when it is 80).
fn authority_for_host(target: &Target) -> String {
    if target.port == 80 {
        target.host.to_string()
    } else {
        target.to_string()
    }
}

/// Answers `503` to a connection over `max_connections` and closes it.
async fn refuse_busy(mut stream: Socket) {
    let body = "berth egress-proxy: too many connections, try again later\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A proxy running in this process (tests, benchmarks, embedding).
pub struct Running {
    proxy: EgressProxy,
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts a proxy with `allowlist` on `listen` (`host:port`, port 0 for
    /// any, or `unix:PATH`).
    pub async fn start(allowlist: Allowlist, listen: &str) -> Result<Running, EgressError> {
        Running::start_with(EgressProxy::new(allowlist, None), listen).await
    }

    /// Starts `proxy` on `listen`.
    pub async fn start_with(proxy: EgressProxy, listen: &str) -> Result<Running, EgressError> {
        let listener = Listener::bind(&ListenAddr::parse(listen)?).await?;
        let addr = listener.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(proxy.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(Running {
            proxy,
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// `IP:PORT` (or `unix:PATH`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://IP:PORT`: what `HTTP_PROXY`/`HTTPS_PROXY` are set to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn proxy(&self) -> &EgressProxy {
        &self.proxy
    }

    /// Stops accepting, lets open requests finish briefly, and returns.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the proxy's metrics at `GET /metrics` until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    proxy: EgressProxy,
    shutdown: impl Future<Output = ()> + Send,
) {
    let encode = move || proxy.metrics().encode();
    crate::metrics_endpoint::serve(listener, encode, shutdown).await
}

/// `berth egress-proxy`: loads the allowlist, listens, reloads it on
/// SIGHUP, serves until `shutdown`. Logs go through `tracing` (berth
/// installs its JSON logger).
pub async fn run(
    listen: &str,
    allow: &std::path::Path,
    metrics: Option<&str>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), EgressError> {
    let allowlist = Allowlist::from_file(allow)?;
    let entries = allowlist.entries.len();
    // Before anything listens: a SIGHUP that arrives once clients can
    // connect must reload, not kill the process (its default action).
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let proxy = EgressProxy::new(allowlist, Some(allow.to_path_buf()));
    let metrics_listener = match metrics {
        Some(addr) => Some(transport::bind_tcp(addr).await?),
        None => None,
    };
    let listener = Listener::bind(&ListenAddr::parse(listen)?).await?;
    tracing::info!(
        listen,
        allowlist = %allow.display(),
        entries,
        metrics = metrics.unwrap_or("-"),
        "berth egress-proxy listening"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = metrics_listener.map(|l| {
        let mut stop = stop_rx.clone();
        tokio::spawn(serve_metrics(l, proxy.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    let reloader = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the egress allowlist");
                let _ = proxy.reload();
            }
        })
    };
    proxy.serve(listener, shutdown).await;
    reloader.abort();
    let _ = stop_tx.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("berth egress-proxy stopped");
    Ok(())
}
