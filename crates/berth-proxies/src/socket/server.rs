//! The socket proxy's HTTP server: filter, check, forward, stream.
//!
//! Each request goes through [`Filter::check_head`]; its body is read up to
//! the plan's limit (a body-less call must have an empty body) and checked;
//! a container- or network-scoped call is checked for the managed label
//! (see below); then the **canonical** request is forwarded over a pooled
//! connection to the engine and the answer streamed back untouched (logs
//! and events with `follow`, `wait`, and any other long answer flow through
//! as the engine sends them).
//!
//! **Managed-label checks.** The proxy inspects the named container or
//! network through the engine, and forwards the call with the reference
//! replaced by the **full ID** the inspect returned. So the object checked
//! is the object acted upon, even when the request named it by a name or an
//! ID prefix that could be re-pointed meanwhile. Results are cached by full
//! ID only (labels cannot change after creation and IDs are never reused),
//! for `managed_cache_seconds`; a request by name or prefix is always
//! inspected afresh, so a container removed and re-created under the same
//! name is always looked at again. A container that does not exist is a
//! 404 with Docker's own message, which berth treats as "already gone".
//!
//! **Upgrades.** Attach (`Connection: Upgrade`, `Upgrade: tcp`) is
//! forwarded with the same handshake; when the engine answers `101`, the
//! proxy answers `101` and then splices the two upgraded connections
//! byte for byte in both directions, passing a half-close on (berth closes
//! its write side after the JIT config; Docker then closes the container's
//! stdin).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use super::filter::{Denial, Filter, Plan, Scope};
use super::metrics::Metrics;
use super::policy::{Policy, PolicyError, TargetKind};
pub use crate::transport::ProxyBody;
use crate::transport::{
    self, Drain, ListenAddr, Listener, Socket, TransportError, end_to_end, full,
};

/// How long a managed-label inspect may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most cached managed-label results.
const CACHE_MAX: usize = 4096;

/// An error starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A bad `--listen`, `--docker` or `--metrics` address, or one that
    /// cannot be bound.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// The Docker engine the proxy forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl DockerAddr {
    /// `unix:///path` (or `unix:/path`, or a bare absolute path),
    /// `tcp://host:port` or `http://host:port`.
    pub fn parse(addr: &str) -> Result<DockerAddr, TransportError> {
        let bad = |reason: &str| TransportError::address(addr, reason);
        if let Some(rest) = addr
            .strip_prefix("tcp://")
            .or_else(|| addr.strip_prefix("http://"))
        {
            if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
                return Err(bad("expected host:port after the scheme"));
            }
            return Ok(DockerAddr::Tcp(rest.to_owned()));
        }
        let path = addr
            .strip_prefix("unix://")
            .or_else(|| addr.strip_prefix("unix:"))
            .unwrap_or(addr);
        if !path.starts_with('/') {
            return Err(bad(
                "expected unix:///PATH, tcp://HOST:PORT or http://HOST:PORT",
            ));
        }
        Ok(DockerAddr::Unix(PathBuf::from(path)))
    }

    fn authority(&self) -> &str {
        match self {
            DockerAddr::Unix(_) => "docker",
            DockerAddr::Tcp(a) => a,
        }
    }
}

impl Connection for Socket {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Opens connections to the engine for the pooled client.
#[derive(Clone)]
struct Connector(Arc<DockerAddr>);

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Socket>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Socket>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.0.clone();
        Box::pin(async move {
            let stream = match &*addr {
                DockerAddr::Unix(path) => Socket::Unix(UnixStream::connect(path).await?),
                DockerAddr::Tcp(a) => {
                    let s = TcpStream::connect(a).await?;
                    s.set_nodelay(true)?;
                    Socket::Tcp(s)
                }
            };
            Ok(TokioIo::new(stream))
        })
    }
}

/// A managed-label result, cached by full ID.
#[derive(Debug, Clone, Copy)]
struct Cached {
    managed: bool,
    until: Instant,
}

struct Inner {
    filter: Filter,
    docker: DockerAddr,
    client: Client<Connector, Full<Bytes>>,
    metrics: Metrics,
    cache: Mutex<HashMap<(TargetKind, String), Cached>>,
    cache_ttl: Duration,
}

/// The socket proxy: cheap to clone, one per listener.
#[derive(Clone)]
pub struct SocketProxy {
    inner: Arc<Inner>,
}

fn json_answer(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn is_full_id(reference: &str) -> bool {
    reference.len() == 64
        && reference
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl SocketProxy {
    /// A proxy enforcing `policy` in front of the engine at `docker`.
    pub fn new(policy: Policy, docker: DockerAddr) -> Result<SocketProxy, ProxyError> {
        let cache_ttl = Duration::from_secs(policy.limits.managed_cache_seconds);
        let filter = Filter::new(policy)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(Connector(Arc::new(docker.clone())));
        Ok(SocketProxy {
            inner: Arc::new(Inner {
                filter,
                docker,
                client,
                metrics: Metrics::default(),
                cache: Mutex::default(),
                cache_ttl,
            }),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn policy(&self) -> &Policy {
        self.inner.filter.policy()
    }

    fn upstream_uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme("http")
            .authority(self.inner.docker.authority())
            .path_and_query(path_and_query)
            .build()
    }

    fn deny(&self, method: &str, denial: &Denial) -> Response<ProxyBody> {
        self.inner.metrics.decision("deny", &denial.rule);
        tracing::warn!(
            decision = "deny",
            method,
            path = %denial.path,
            rule = %denial.rule,
            reason = %denial.reason,
            "socket-proxy request denied"
        );
        json_answer(StatusCode::FORBIDDEN, &denial.message())
    }

    fn upstream_failed(&self, plan: &Plan, error: &dyn std::fmt::Display) -> Response<ProxyBody> {
        self.inner.metrics.upstream_errors.inc();
        tracing::error!(
            method = %plan.method,
            path = %plan.path(),
            rule = %plan.rule,
            error = %error,
            "the Docker engine did not answer"
        );
        json_answer(
            StatusCode::BAD_GATEWAY,
            &format!("berth socket-proxy: the Docker engine did not answer: {error}"),
        )
    }

    /// Handles one request; never fails (errors are answers).
    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let method = req.method().as_str().to_owned();
        let raw_target = req.uri().to_string();
        let plan = match self
            .inner
            .filter
            .check_head(&method, &raw_target, req.headers())
        {
            Ok(plan) => plan,
            Err(denial) => return self.deny(&method, &denial),
        };
        let downstream_upgrade = plan.upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();

        // The body, up to the plan's limit.
        let limit = usize::try_from(plan.max_body).unwrap_or(usize::MAX);
        let collected =
            tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await;
        let body = match collected {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return self.deny(&method, &self.inner.filter.body_too_large(&plan));
            }
            Ok(Err(e)) => {
                tracing::info!(method, path = %plan.path(), error = %e, "reading the request body failed");
                return json_answer(
                    StatusCode::BAD_REQUEST,
                    "berth socket-proxy: the request body could not be read",
                );
            }
            Err(_) => {
                return json_answer(
                    StatusCode::REQUEST_TIMEOUT,
                    "berth socket-proxy: the request body did not arrive in time",
                );
            }
        };
        if let Err(denial) = self.inner.filter.check_body(&plan, &parts.headers, &body) {
            return self.deny(&method, &denial);
        }

        // The managed label of the container or network it names.
        let resolved = match &plan.scope {
            None => None,
            Some(scope) => match self.check_scope(&plan, scope).await {
                Ok(id) => Some(id),
                Err(answer) => return *answer,
            },
        };

        self.inner.metrics.decision("allow", &plan.rule);
        tracing::info!(
            decision = "allow",
            method,
            path = %plan.path(),
            rule = %plan.rule,
            "socket-proxy request allowed"
        );

        let forward = plan.forward(resolved.as_deref());
        let uri = match self.upstream_uri(&forward) {
            Ok(uri) => uri,
            Err(e) => return self.upstream_failed(&plan, &e),
        };
        let mut upstream = Request::new(Full::new(body));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.headers_mut() = end_to_end(&parts.headers);
        upstream.headers_mut().remove(header::HOST);
        upstream.headers_mut().remove(header::CONTENT_LENGTH);
        if plan.upgrade {
            let h = upstream.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        }

        let mut response = match self.inner.client.request(upstream).await {
            Ok(r) => r,
            Err(e) => return self.upstream_failed(&plan, &e),
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(downstream) = downstream_upgrade
        {
            let upstream = hyper::upgrade::on(&mut response);
            let (rule, path) = (plan.rule.clone(), plan.path());
            tokio::spawn(async move {
                match tokio::try_join!(downstream, upstream) {
                    Ok((down, up)) => {
                        let mut down = TokioIo::new(down);
                        let mut up = TokioIo::new(up);
                        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
                            Ok((sent, received)) => {
                                tracing::debug!(rule, path, sent, received, "upgraded stream ended")
                            }
                            Err(e) => {
                                tracing::debug!(rule, path, error = %e, "upgraded stream ended")
                            }
                        }
                    }
                    Err(e) => tracing::warn!(rule, path, error = %e, "the upgrade failed"),
                }
            });
            let mut answer = Response::new(full(Bytes::new()));
            *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *answer.headers_mut() = end_to_end(response.headers());
            answer
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            answer
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("tcp"));
            return answer;
        }

        let (mut parts, body) = response.into_parts();
        parts.headers = end_to_end(&parts.headers);
        Response::from_parts(parts, body.boxed())
    }

    /// Checks that the container/network a plan names carries the managed
    /// label; returns its full ID, or the answer to give instead.
    async fn check_scope(
        &self,
        plan: &Plan,
        scope: &Scope,
    ) -> Result<String, Box<Response<ProxyBody>>> {
        let kind_name = match scope.kind {
            TargetKind::ManagedNetwork => "network",
            _ => "container",
        };
        let key = (scope.kind, scope.reference.clone());
        if is_full_id(&scope.reference) {
            let cached = self
                .inner
                .cache
                .lock()
                .expect("cache lock")
                .get(&key)
                .copied()
                .filter(|c| c.until > Instant::now());
            if let Some(c) = cached {
                self.count_check(kind_name, "cached");
                return self.managed_or_deny(
                    plan,
                    kind_name,
                    &scope.reference,
                    c.managed,
                    &scope.reference,
                );
            }
        }
        self.count_check(kind_name, "inspected");

        let path = match scope.kind {
            TargetKind::ManagedNetwork => format!("/networks/{}", scope.reference),
            _ => format!("/containers/{}/json", scope.reference),
        };
        let uri = self
            .upstream_uri(&path)
            .map_err(|e| Box::new(self.upstream_failed(plan, &e)))?;
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri;
        let inspect = async {
            let response = self
                .inner
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = match tokio::time::timeout(CHECK_TIMEOUT, inspect).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(Box::new(self.upstream_failed(plan, &e))),
            Err(_) => {
                return Err(Box::new(
                    self.upstream_failed(plan, &"the inspect timed out"),
                ));
            }
        };
        if !status.is_success() {
            // Not found (or ambiguous): answer as Docker did, so callers
            // see the engine's own status and message. Not a denial: berth
            // removes containers that may be gone already.
            self.inner.metrics.decision("not_found", &plan.rule);
            tracing::info!(
                decision = "not_found",
                method = %plan.method,
                path = %plan.path(),
                rule = %plan.rule,
                status = status.as_u16(),
                reason = "the inspect failed",
                "socket-proxy request not forwarded"
            );
            let mut answer = Response::new(full(body));
            *answer.status_mut() = status;
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Err(Box::new(answer));
        }
        let inspected: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            Box::new(self.upstream_failed(plan, &format!("unreadable inspect answer: {e}")))
        })?;
        let id = inspected
            .get("Id")
            .and_then(|v| v.as_str())
            .filter(|id| is_full_id(id))
            .ok_or_else(|| {
                Box::new(self.upstream_failed(plan, &"the inspect answer has no full ID"))
            })?
            .to_owned();
        let labels = match scope.kind {
            TargetKind::ManagedNetwork => inspected.get("Labels"),
            _ => inspected.get("Config").and_then(|c| c.get("Labels")),
        };
        let (label, value) = self.policy().managed();
        let managed = labels.and_then(|l| l.get(label)).and_then(|v| v.as_str()) == Some(value);
        if !self.inner.cache_ttl.is_zero() {
            let mut cache = self.inner.cache.lock().expect("cache lock");
            let now = Instant::now();
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, c| c.until > now);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(
                (scope.kind, id.clone()),
                Cached {
                    managed,
                    until: now + self.inner.cache_ttl,
                },
            );
        }
        self.managed_or_deny(plan, kind_name, &scope.reference, managed, &id)
    }

    fn managed_or_deny(
        &self,
        plan: &Plan,
        kind: &str,
        reference: &str,
        managed: bool,
        id: &str,
    ) -> Result<String, Box<Response<ProxyBody>>> {
        if managed {
            return Ok(id.to_owned());
        }
        let denial = Denial {
            rule: plan.rule.clone(),
            path: plan.path(),
            reason: format!(
                "{kind} `{reference}` is not labelled {}",
                self.policy().managed_label
            ),
        };
        Err(Box::new(self.deny(&plan.method, &denial)))
    }

    fn count_check(&self, kind: &'static str, result: &'static str) {
        self.inner
            .metrics
            .managed_checks
            .get_or_create(&super::metrics::CheckLabels { kind, result })
            .inc();
    }

    /// Asks the engine `GET /_ping`; for the start-up log line.
    pub async fn ping_engine(&self) -> Result<(), String> {
        let uri = self.upstream_uri("/_ping").map_err(|e| e.to_string())?;
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri;
        let answer = tokio::time::timeout(CHECK_TIMEOUT, self.inner.client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("status {}", answer.status()))
        }
    }

    /// Serves connections from `listener` until `shutdown` completes, then
    /// lets open requests finish for a few seconds (see [`transport::serve`]).
    pub async fn serve(self, listener: Listener, shutdown: impl Future<Output = ()> + Send) {
        transport::serve(
            listener,
            shutdown,
            |stream: Socket, _peer, drain: &Drain| {
                let proxy = self.clone();
                let drain = drain.clone();
                async move {
                    let service = service_fn(move |req| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, Infallible>(proxy.handle(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    transport::drive(conn, &drain, std::future::pending()).await;
                }
            },
        )
        .await
    }
}

/// A proxy running in this process (tests, benchmarks, embedding).
pub struct Running {
    proxy: SocketProxy,
    docker_host: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts a proxy with `policy` on `listen`, in front of `docker`.
    pub async fn start(policy: Policy, docker: &str, listen: &str) -> Result<Running, ProxyError> {
        let proxy = SocketProxy::new(policy, DockerAddr::parse(docker)?)?;
        let listener = Listener::bind(&ListenAddr::parse(listen)?).await?;
        let docker_host = listener.docker_host();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(proxy.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(Running {
            proxy,
            docker_host,
            stop: Some(stop),
            task,
        })
    }

    /// The address to give a Docker client: `tcp://127.0.0.1:PORT`.
    pub fn docker_host(&self) -> &str {
        &self.docker_host
    }

    pub fn proxy(&self) -> &SocketProxy {
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
    proxy: SocketProxy,
    shutdown: impl Future<Output = ()> + Send,
) {
    let encode = move || proxy.metrics().encode();
    crate::metrics_endpoint::serve(listener, encode, shutdown).await
}

/// `berth socket-proxy`: loads the policy, listens, serves until
/// `shutdown`. Logs go through `tracing` (berth installs its JSON logger).
pub async fn run(
    listen: &str,
    docker: &str,
    policy_file: Option<&std::path::Path>,
    metrics: Option<&str>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    let policy = match policy_file {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default(),
    };
    let rules = policy.rules.len();
    let proxy = SocketProxy::new(policy, DockerAddr::parse(docker)?)?;
    // Metrics first: once the proxy's socket exists, everything answers.
    let metrics_listener = match metrics {
        Some(addr) => Some(transport::bind_tcp(addr).await?),
        None => None,
    };
    let listener = Listener::bind(&ListenAddr::parse(listen)?).await?;
    tracing::info!(
        listen = %listener.docker_host(),
        docker,
        policy = %policy_file.map_or("built-in".to_owned(), |p| p.display().to_string()),
        rules,
        metrics = metrics.unwrap_or("-"),
        "berth socket-proxy listening"
    );
    match proxy.ping_engine().await {
        Ok(()) => tracing::info!(docker, "the Docker engine answers"),
        Err(e) => tracing::warn!(docker, error = %e, "the Docker engine does not answer yet"),
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = metrics_listener.map(|l| {
        let mut stop = stop_rx.clone();
        tokio::spawn(serve_metrics(l, proxy.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    proxy.serve(listener, shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("berth socket-proxy stopped");
    Ok(())
}
