//! The API's HTTP server: the accept loop, TLS, and the limits that keep a
//! hostile client from taking the API down.
//!
//! GitHub must reach the webhook path, so the API faces the internet, and
//! anyone may open connections to it. Every resource a connection can hold
//! is bounded here, before the router sees a request:
//!
//! * **Connections.** At most `server.max_connections` are open. At the cap
//!   the connection that has been idle longest (no request in progress) is
//!   closed to make room, so idle or stalled connections cannot lock others
//!   out; only when every connection is busy does the accept loop wait, and
//!   new clients queue in the kernel's backlog until one ends. Accept errors
//!   (`EMFILE` and the like) back off from 5 ms to 1 s
//!   ([`AcceptBackoff`]) instead of spinning.
//! * **Time.** A connection must finish its TLS handshake within
//!   `tls_handshake_timeout`, send its first request's headers within
//!   `header_timeout`, and is closed once idle for `idle_timeout` between
//!   requests. A request's body must arrive whole within `body_timeout` and,
//!   after its first [`BODY_RATE_GRACE`], at `body_min_rate` bytes a second
//!   at least ([`LimitedBody`]); a body that fails either is answered 408.
//! * **Size.** A `Content-Length` above `max_body_bytes` is answered 413
//!   before one byte of the body is read.
//!
//! Closed connections are counted by reason in
//! `berth_api_connections_closed_total`; open ones in
//! `berth_api_connections`.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode, header};
use berth_proxies::transport::AcceptBackoff;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::ServerConfig;
use crate::observability::Metrics;
use crate::observability::metrics::ReasonLabels;

/// How long a body may take before its rate is checked: a client's first
/// packets may be slow for reasons of its own (TCP slow start, a proxy).
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// How long open connections get to finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// File descriptors kept for berth itself (the store, Docker, GitHub, logs)
/// on top of the API's connections.
const RESERVED_FDS: u64 = 256;

/// The limits of [`serve`], from `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub body_min_rate: u64,
    pub tls_handshake_timeout: Duration,
    pub max_body_bytes: u64,
}

impl Limits {
    pub fn from_config(server: &ServerConfig) -> Limits {
        Limits {
            max_connections: server.max_connections,
            header_timeout: server.header_timeout,
            idle_timeout: server.idle_timeout,
            body_timeout: server.body_timeout,
            body_min_rate: server.body_min_rate,
            tls_handshake_timeout: server.tls_handshake_timeout,
            max_body_bytes: server.max_body_bytes,
        }
    }
}

/// Raises the soft limit on open files to the hard limit (the soft one is
/// often 1,024, less than a busy API needs) and returns the new soft limit.
/// With fewer descriptors than `max_connections` needs, a warning says so.
pub fn raise_open_files_limit(max_connections: usize) -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
            limit = getrlimit(Resource::Nofile);
        }
    }
    let soft = limit.current?;
    let needed = max_connections as u64 + RESERVED_FDS;
    if soft < needed {
        tracing::warn!(
            open_files_limit = soft,
            needed,
            "the open-files limit is below server.max_connections plus what berth itself needs; \
             raise it (LimitNOFILE= in systemd, --ulimit nofile= in Docker) or lower max_connections"
        );
    } else {
        tracing::debug!(open_files_limit = soft, "open-files limit");
    }
    Some(soft)
}

/// Serves `router` on `listener` (over TLS with `tls`) within `limits`
/// until `shutdown`; then open connections get [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let server = Arc::new(Server {
        router,
        limits,
        metrics,
        epoch: Instant::now(),
        connections: Connections::default(),
        shutdown: shutdown.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut backoff = AcceptBackoff::new();
    loop {
        // At the cap: make room, or wait for a connection to end.
        while server.connections.len() >= server.limits.max_connections {
            if let Some(evicted) = server.connections.evict_longest_idle() {
                evicted.close.cancel();
                continue;
            }
            let ended = server.connections.ended.notified();
            tokio::select! {
                () = ended => {}
                () = shutdown.cancelled() => break,
                // A connection may turn idle without ending.
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let _ = stream.set_nodelay(true);
                let conn = server.connections.open(&server);
                let server = server.clone();
                let tls = tls.clone();
                tasks.spawn(async move {
                    server.connection(stream, tls, conn, peer).await;
                });
            }
            Err(e) => {
                let wait = backoff.failed();
                tracing::warn!(
                    error = %e,
                    wait_ms = wait.as_millis() as u64,
                    "accepting an API connection failed; waiting before the next accept"
                );
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    Ok(())
}

/// What every connection task shares.
struct Server {
    router: Router,
    limits: Limits,
    metrics: Metrics,
    /// Idle times are milliseconds since this instant.
    epoch: Instant,
    connections: Connections,
    shutdown: CancellationToken,
}

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy)]
enum Closed {
    TlsHandshake,
    HeaderTimeout,
    IdleTimeout,
    Evicted,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::TlsHandshake => "tls_handshake_timeout",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::Evicted => "evicted",
        }
    }
}

impl Server {
    fn millis_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn closed(&self, why: Closed, peer: std::net::SocketAddr) {
        tracing::debug!(%peer, reason = why.label(), "API connection closed by the server");
        self.metrics.api_connection_closed(why.label());
    }

    async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        tls: Option<TlsAcceptor>,
        conn: ConnGuard,
        peer: std::net::SocketAddr,
    ) {
        match tls {
            None => self.http(stream, conn, peer, false).await,
            Some(acceptor) => {
                let handshake = tokio::select! {
                    r = tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(stream)) => r,
                    () = conn.state.close.cancelled() => return self.closed(Closed::Evicted, peer),
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        // The header timeout starts once the handshake is done.
                        conn.state
                            .idle_since_ms
                            .store(self.millis_since_epoch(), Ordering::Relaxed);
                        // rustls only completes a handshake with a client
                        // certificate that the client CA verified.
                        let verified = stream.get_ref().1.peer_certificates().is_some();
                        self.http(stream, conn, peer, verified).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => self.closed(Closed::TlsHandshake, peer),
                }
            }
        }
    }

    /// Serves HTTP/1 or HTTP/2 on one connection until it ends, times out,
    /// is evicted, or the server shuts down.
    async fn http<I>(
        self: &Arc<Self>,
        io: I,
        conn: ConnGuard,
        peer: std::net::SocketAddr,
        client_certificate: bool,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = conn.state.clone();
        let server = self.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            if client_certificate {
                request
                    .extensions_mut()
                    .insert(super::security::VerifiedClientCertificate);
            }
            let busy = Busy::start(&server, &state);
            let server = server.clone();
            async move { Ok::<_, std::convert::Infallible>(server.answer(request, busy).await) }
        });
        let mut builder = Builder::new(TokioExecutor::new());
        builder.http2().max_concurrent_streams(100);
        let http = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(http);
        let state = &conn.state;
        let mut draining: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let (deadline, why) = match self.idle_deadline(state) {
                Some((at, why)) => (at, Some(why)),
                // Busy: look again later; the end of a request does not wake us.
                None => (now + Duration::from_millis(500), None),
            };
            let wake = draining.map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                result = http.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "API connection ended with an error");
                    }
                    return;
                }
                () = state.close.cancelled() => return self.closed(Closed::Evicted, peer),
                () = self.shutdown.cancelled(), if draining.is_none() => {
                    http.as_mut().graceful_shutdown();
                    draining = Some(Instant::now() + SHUTDOWN_GRACE);
                }
                () = tokio::time::sleep_until(wake) => {
                    if draining.is_some_and(|d| Instant::now() >= d) {
                        return;
                    }
                    if let Some(why) = why
                        && Instant::now() >= deadline
                        && self.idle_deadline(state).is_some_and(|(at, _)| Instant::now() >= at)
                    {
                        return self.closed(why, peer);
                    }
                }
            }
        }
    }

    /// When an idle connection is to be closed, and why; `None` while a
    /// request is in progress.
    fn idle_deadline(&self, state: &ConnState) -> Option<(Instant, Closed)> {
        if state.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.epoch + Duration::from_millis(state.idle_since_ms.load(Ordering::Acquire));
        Some(if state.served.load(Ordering::Acquire) == 0 {
            (since + self.limits.header_timeout, Closed::HeaderTimeout)
        } else {
            (since + self.limits.idle_timeout, Closed::IdleTimeout)
        })
    }

    /// One request: refused when its declared body is too large, otherwise
    /// passed to the router with its body under [`LimitedBody`].
    async fn answer(&self, request: Request<Incoming>, busy: Busy) -> Response<Body> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body_bytes) {
            self.metrics.api_request_refused("body_too_large");
            tokio::spawn(discard(request.into_body()));
            let message = format!(
                "the request body is larger than this server takes ({} bytes)",
                self.limits.max_body_bytes
            );
            return busy.guard(refusal(StatusCode::PAYLOAD_TOO_LARGE, &message));
        }
        let request = request.map(|body| {
            Body::new(LimitedBody::new(
                body,
                self.limits.body_timeout,
                self.limits.body_min_rate,
                self.metrics.api_requests_refused.clone(),
            ))
        });
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        busy.guard(response)
    }
}

/// How long a refused body is still read (and thrown away): a client sends
/// its whole body before it reads the answer, and a connection closed under
/// it would show it a reset instead of the 413.
const LINGER: Duration = Duration::from_secs(2);

/// Reads and discards `body` for at most [`LINGER`]; nothing is kept.
async fn discard(mut body: Incoming) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// A JSON error answer, as the router gives.
fn refusal(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(
        serde_json::json!({ "error": message }).to_string(),
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    // Whatever body follows is not read: the connection cannot be reused.
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// The open connections, for the cap and eviction.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    /// Notified whenever a connection ends.
    ended: Notify,
}

struct ConnState {
    /// Requests in progress (HTTP/2 may have several).
    in_flight: AtomicUsize,
    /// When the connection last became idle (opened, or its last request
    /// ended), in milliseconds since [`Server::epoch`].
    idle_since_ms: AtomicU64,
    /// Requests answered so far.
    served: AtomicU64,
    /// Cancelled to evict the connection.
    close: CancellationToken,
}

impl Connections {
    fn len(&self) -> usize {
        self.open
            .lock()
            .expect("connections lock")
            .values()
            .filter(|c| !c.close.is_cancelled())
            .count()
    }

    fn open(&self, server: &Arc<Server>) -> ConnGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(server.millis_since_epoch()),
            served: AtomicU64::new(0),
            close: CancellationToken::new(),
        });
        self.open
            .lock()
            .expect("connections lock")
            .insert(id, state.clone());
        server.metrics.api_connections.inc();
        ConnGuard {
            id,
            state,
            server: Arc::downgrade(server),
        }
    }

    /// The connection idle longest, marked for closing; `None` when every
    /// open connection has a request in progress.
    fn evict_longest_idle(&self) -> Option<Arc<ConnState>> {
        let open = self.open.lock().expect("connections lock");
        let victim = open
            .values()
            .filter(|c| !c.close.is_cancelled() && c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|c| c.idle_since_ms.load(Ordering::Acquire))?
            .clone();
        victim.close.cancel();
        Some(victim)
    }
}

/// Removes its connection from [`Connections`] when the connection's task
/// ends, however it ends.
struct ConnGuard {
    id: u64,
    state: Arc<ConnState>,
    server: std::sync::Weak<Server>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(server) = self.server.upgrade() {
            server
                .connections
                .open
                .lock()
                .expect("connections lock")
                .remove(&self.id);
            server.metrics.api_connections.dec();
            server.connections.ended.notify_waiters();
        }
    }
}

/// A request in progress on a connection, from its headers being read to
/// its answer's body being sent (or dropped): while one exists the
/// connection is neither idle nor evictable.
struct Busy {
    state: Arc<ConnState>,
    server: std::sync::Weak<Server>,
}

impl Busy {
    fn start(server: &Arc<Server>, state: &Arc<ConnState>) -> Busy {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy {
            state: state.clone(),
            server: Arc::downgrade(server),
        }
    }

    /// Keeps the request busy until `response`'s body is done.
    fn guard(self, response: Response<Body>) -> Response<Body> {
        response.map(|body| {
            Body::new(BusyBody {
                inner: body,
                _busy: self,
            })
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(server) = self.server.upgrade() {
            self.state
                .idle_since_ms
                .store(server.millis_since_epoch(), Ordering::Release);
        }
        self.state.served.fetch_add(1, Ordering::AcqRel);
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that holds its request's [`Busy`] until it is done.
struct BusyBody {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyTimedOut {
    /// Not whole within `body_timeout`.
    Deadline,
    /// Slower than `body_min_rate`.
    TooSlow,
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyTimedOut::Deadline => "the request body did not arrive in time",
            BodyTimedOut::TooSlow => "the request body arrived too slowly",
        })
    }
}

impl StdError for BodyTimedOut {}

impl BodyTimedOut {
    fn label(self) -> &'static str {
        match self {
            BodyTimedOut::Deadline => "body_timeout",
            BodyTimedOut::TooSlow => "body_too_slow",
        }
    }

    /// The cut-off in `error`'s chain of sources, if that is what it is.
    pub fn find(error: &(dyn StdError + 'static)) -> Option<BodyTimedOut> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<BodyTimedOut>() {
                return Some(*found);
            }
            next = e.source();
        }
        None
    }
}

/// A request body that must arrive whole within a deadline and, after
/// [`BODY_RATE_GRACE`], at a minimum average rate: at any time `t` after the
/// start, `received >= min_rate * (t - start - grace)`.
pub struct LimitedBody {
    inner: Incoming,
    started: Instant,
    deadline: Instant,
    min_rate: u64,
    received: u64,
    timer: Pin<Box<Sleep>>,
    failed: bool,
    /// `berth_api_requests_refused_total`, counting cut-offs.
    refused: Family<ReasonLabels, Counter>,
}

impl LimitedBody {
    fn new(
        inner: Incoming,
        timeout: Duration,
        min_rate: u64,
        refused: Family<ReasonLabels, Counter>,
    ) -> LimitedBody {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut body = LimitedBody {
            inner,
            started,
            deadline,
            min_rate,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            failed: false,
            refused,
        };
        let next = body.next_check();
        body.timer.as_mut().reset(next);
        body
    }

    /// When the body is cut off unless more arrives first.
    fn next_check(&self) -> Instant {
        if self.min_rate == 0 {
            return self.deadline;
        }
        let allowed = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        (self.started + BODY_RATE_GRACE + allowed).min(self.deadline)
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if let Some(Ok(f)) = &frame
                && let Some(data) = f.data_ref()
            {
                self.received += data.len() as u64;
                let next = self.next_check();
                self.timer.as_mut().reset(next);
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(self.timer.as_mut().poll(cx));
        self.failed = true;
        let why = if Instant::now() >= self.deadline {
            BodyTimedOut::Deadline
        } else {
            BodyTimedOut::TooSlow
        };
        self.refused
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .inc();
        Poll::Ready(Some(Err(Box::new(why))))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
