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
//! **Managed-label checks.** The proxy inspects the named container,
//! network, volume or image through the engine (an exec: the exec, then its
//! container), and forwards the call with the reference replaced by the
//! **full ID** the inspect returned (an image's `sha256:` ID, a volume's
//! name). The volumes a container create mounts and the container a
//! network connect names are checked the same way; the latter is forwarded
//! by full ID in the body. So the object checked
//! is the object acted upon, even when the request named it by a name or an
//! ID prefix that could be re-pointed meanwhile. Results are cached by full
//! ID only (labels cannot change after creation and IDs are never reused;
//! a volume, which has only a reusable name, is never cached), for
//! `managed_cache_seconds`; a request by name or prefix is always
//! inspected afresh, so a container removed and re-created under the same
//! name is always looked at again. A container that does not exist is a
//! 404 with Docker's own message, which berth treats as "already gone".
//!
//! **Build contexts** are streamed to the engine (never buffered), cut off
//! at `max_build_context_bytes`.
//!
//! **Upgrades.** Attach and exec start (`Connection: Upgrade`, `Upgrade:
//! tcp`; exec start with its JSON body) are forwarded with the same
//! handshake; when the engine answers `101`, the
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
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use super::body::{BodyRef, check_volume_driver};
use super::filter::{Denial, Filter, Plan, Scope};
use super::json::Json;
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
#[derive(Debug, Clone)]
struct Cached {
    managed: bool,
    /// An exec's container.
    container: Option<String>,
    until: Instant,
}

/// What the proxy sends the engine: a checked body, or a build context
/// streamed through (and cut off at its limit).
type UpstreamBody = Either<Full<Bytes>, Limited<Incoming>>;

fn upstream_bytes(bytes: Bytes) -> UpstreamBody {
    Either::Left(Full::new(bytes))
}

/// What a managed-label check found.
enum Found {
    Object {
        /// The full ID (a volume's name) to forward in place of the
        /// reference.
        id: String,
        managed: bool,
        /// An exec's container.
        container: Option<String>,
        /// Why a volume must not be mounted even though it is managed (it
        /// was made outside the proxy with a driver or options the proxy
        /// would have refused).
        unmountable: Option<String>,
    },
    /// No such object: the engine's answer.
    Missing(StatusCode, Bytes),
}

struct Inner {
    filter: Filter,
    docker: DockerAddr,
    client: Client<Connector, UpstreamBody>,
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

/// An object's immutable identity, under which its check may be cached:
/// the full ID of a container, network or exec, an image's `sha256:` ID.
/// A volume has only its name, which can be reused, so none.
fn is_cacheable(kind: TargetKind, reference: &str) -> bool {
    match kind {
        TargetKind::ManagedImage => reference.strip_prefix("sha256:").is_some_and(is_full_id),
        TargetKind::ManagedVolume | TargetKind::None => false,
        _ => is_full_id(reference),
    }
}

/// Where the engine describes an object.
fn inspect_path(kind: TargetKind, reference: &str) -> String {
    match kind {
        TargetKind::ManagedNetwork => format!("/networks/{reference}"),
        TargetKind::ManagedVolume => format!("/volumes/{reference}"),
        TargetKind::ManagedExec => format!("/exec/{reference}/json"),
        TargetKind::ManagedImage => format!("/images/{reference}/json"),
        TargetKind::ManagedContainer | TargetKind::None => {
            format!("/containers/{reference}/json")
        }
    }
}

/// Whether a streamed body was cut off at its limit.
fn over_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(error);
    while let Some(e) = at {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        at = e.source();
    }
    false
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
        let limit = usize::try_from(plan.max_body).unwrap_or(usize::MAX);

        // A build context is streamed: checked are its length (as declared,
        // and as it passes) and content type, not its bytes.
        if plan.body.is_streamed() {
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > plan.max_body) {
                return self.deny(&method, &self.inner.filter.body_too_large(&plan));
            }
            if let Err(denial) = self.inner.filter.check_body(&plan, &parts.headers, &[]) {
                return self.deny(&method, &denial);
            }
            let stream = Either::Right(Limited::new(body, limit));
            return self
                .forward(&method, &plan, &parts, None, stream, downstream_upgrade)
                .await;
        }

        // The body, up to the plan's limit.
        let collected =
            tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await;
        let mut body = match collected {
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
        let refs = match self.inner.filter.check_body(&plan, &parts.headers, &body) {
            Ok(refs) => refs,
            Err(denial) => return self.deny(&method, &denial),
        };

        // The managed label of the object it names in the path…
        let resolved = match &plan.scope {
            None => None,
            Some(scope) => match self.check_scope(&plan, scope).await {
                Ok(id) => Some(id),
                Err(answer) => return *answer,
            },
        };
        // … and of those its body names; a body naming a container by name
        // or prefix is forwarded naming it by the full ID checked.
        let mut rewrites = Vec::new();
        for r in &refs {
            match self.check_ref(&plan, r).await {
                Ok(id) => {
                    if let Some(field) = r.rewrite
                        && id != r.reference
                    {
                        rewrites.push((field, id));
                    }
                }
                Err(answer) => return *answer,
            }
        }
        if !rewrites.is_empty() {
            let Ok(mut json) = Json::parse(&body) else {
                return self.upstream_failed(&plan, &"the checked body no longer parses");
            };
            for (field, id) in rewrites {
                json.set_field(field, Json::String(id));
            }
            body = Bytes::from(json.to_bytes());
        }

        self.forward(
            &method,
            &plan,
            &parts,
            resolved.as_deref(),
            upstream_bytes(body),
            downstream_upgrade,
        )
        .await
    }

    /// Forwards an allowed request (the canonical target, `resolved` in
    /// place of the scoped reference) and streams the answer back, splicing
    /// an upgraded connection.
    async fn forward(
        &self,
        method: &str,
        plan: &Plan,
        parts: &http::request::Parts,
        resolved: Option<&str>,
        body: UpstreamBody,
        downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<ProxyBody> {
        self.inner.metrics.decision("allow", &plan.rule);
        tracing::info!(
            decision = "allow",
            method,
            path = %plan.path(),
            rule = %plan.rule,
            "socket-proxy request allowed"
        );

        let forward = plan.forward(resolved);
        let uri = match self.upstream_uri(&forward) {
            Ok(uri) => uri,
            Err(e) => return self.upstream_failed(plan, &e),
        };
        let mut upstream = Request::new(body);
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
            Err(e) if over_limit(&e) => {
                return self.deny(method, &self.inner.filter.body_too_large(plan));
            }
            Err(e) => return self.upstream_failed(plan, &e),
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

    /// Checks that the object a plan names in its path carries the managed
    /// label (an exec: that its container does); returns its full ID, or
    /// the answer to give instead. A missing object is the engine's 404.
    async fn check_scope(
        &self,
        plan: &Plan,
        scope: &Scope,
    ) -> Result<String, Box<Response<ProxyBody>>> {
        let kind = scope.kind.object();
        match self.lookup(plan, scope.kind, &scope.reference).await? {
            Found::Missing(status, body) => Err(Box::new(self.not_found(plan, status, body))),
            Found::Object {
                id, managed: true, ..
            } => Ok(id),
            Found::Object {
                container: Some(container),
                ..
            } => Err(self.deny_reason(
                plan,
                format!(
                    "{kind} `{}` runs in container `{container}`, which is not labelled {}",
                    scope.reference,
                    self.policy().managed_label
                ),
            )),
            Found::Object { .. } if scope.kind == TargetKind::ManagedExec => Err(self.deny_reason(
                plan,
                format!(
                    "{kind} `{}` runs in a container that is not labelled {}",
                    scope.reference,
                    self.policy().managed_label
                ),
            )),
            Found::Object { .. } => Err(self.deny_reason(
                plan,
                format!(
                    "{kind} `{}` is not labelled {}",
                    scope.reference,
                    self.policy().managed_label
                ),
            )),
        }
    }

    /// Checks an object a body names (a mounted volume, a connected
    /// container); returns its full ID, or the answer to give instead.
    async fn check_ref(
        &self,
        plan: &Plan,
        r: &BodyRef,
    ) -> Result<String, Box<Response<ProxyBody>>> {
        let kind = r.kind.object();
        match self.lookup(plan, r.kind, &r.reference).await? {
            Found::Missing(..) if r.must_exist => Err(self.deny_reason(
                plan,
                format!(
                    "{}: {kind} `{}` does not exist (only an existing managed {kind} may be named)",
                    r.field, r.reference
                ),
            )),
            Found::Missing(status, body) => Err(Box::new(self.not_found(plan, status, body))),
            Found::Object { managed: false, .. } => Err(self.deny_reason(
                plan,
                format!(
                    "{}: {kind} `{}` is not labelled {}",
                    r.field,
                    r.reference,
                    self.policy().managed_label
                ),
            )),
            Found::Object {
                unmountable: Some(why),
                ..
            } => Err(self.deny_reason(
                plan,
                format!(
                    "{}: {kind} `{}` may not be mounted: {why}",
                    r.field, r.reference
                ),
            )),
            Found::Object { id, .. } => Ok(id),
        }
    }

    /// The engine's own answer for an object that does not exist; the
    /// call is not forwarded. Not a denial: berth removes objects that may
    /// be gone already.
    fn not_found(&self, plan: &Plan, status: StatusCode, body: Bytes) -> Response<ProxyBody> {
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
        answer
    }

    fn deny_reason(&self, plan: &Plan, reason: String) -> Box<Response<ProxyBody>> {
        let denial = Denial {
            rule: plan.rule.clone(),
            path: plan.path(),
            reason,
        };
        Box::new(self.deny(&plan.method, &denial))
    }

    fn cached(&self, kind: TargetKind, reference: &str) -> Option<Cached> {
        if !is_cacheable(kind, reference) {
            return None;
        }
        let cached = self
            .inner
            .cache
            .lock()
            .expect("cache lock")
            .get(&(kind, reference.to_owned()))
            .cloned()
            .filter(|c| c.until > Instant::now());
        if cached.is_some() {
            self.count_check(kind.object(), "cached");
        }
        cached
    }

    fn remember(&self, kind: TargetKind, id: &str, managed: bool, container: Option<&str>) {
        if self.inner.cache_ttl.is_zero() || !is_cacheable(kind, id) {
            return;
        }
        let mut cache = self.inner.cache.lock().expect("cache lock");
        let now = Instant::now();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            (kind, id.to_owned()),
            Cached {
                managed,
                container: container.map(str::to_owned),
                until: now + self.inner.cache_ttl,
            },
        );
    }

    /// `GET path` on the engine: (status, body), or the answer to give
    /// when the engine does not answer.
    async fn inspect(
        &self,
        plan: &Plan,
        path: &str,
    ) -> Result<(StatusCode, Bytes), Box<Response<ProxyBody>>> {
        let uri = self
            .upstream_uri(path)
            .map_err(|e| Box::new(self.upstream_failed(plan, &e)))?;
        let mut request = Request::new(upstream_bytes(Bytes::new()));
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
        match tokio::time::timeout(CHECK_TIMEOUT, inspect).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Box::new(self.upstream_failed(plan, &e))),
            Err(_) => Err(Box::new(
                self.upstream_failed(plan, &"the inspect timed out"),
            )),
        }
    }

    /// Finds an object and whether it is managed: from the cache (by full
    /// ID), or by inspecting it. An exec is managed when its container is;
    /// the container is looked up by its full ID (and so cached).
    async fn lookup(
        &self,
        plan: &Plan,
        kind: TargetKind,
        reference: &str,
    ) -> Result<Found, Box<Response<ProxyBody>>> {
        if kind != TargetKind::ManagedExec {
            return self.lookup_object(plan, kind, reference).await;
        }
        if let Some(c) = self.cached(kind, reference) {
            return Ok(Found::Object {
                id: reference.to_owned(),
                managed: c.managed,
                container: c.container,
                unmountable: None,
            });
        }
        self.count_check(kind.object(), "inspected");
        let (status, body) = self.inspect(plan, &inspect_path(kind, reference)).await?;
        if !status.is_success() {
            return Ok(Found::Missing(status, body));
        }
        let unreadable = |what: &str| Box::new(self.upstream_failed(plan, &what));
        let inspected: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| unreadable("unreadable exec inspect answer"))?;
        let full = |field: &str| {
            inspected
                .get(field)
                .and_then(|v| v.as_str())
                .filter(|id| is_full_id(id))
                .map(str::to_owned)
        };
        let (Some(id), Some(container)) = (full("ID"), full("ContainerID")) else {
            return Err(unreadable("the exec inspect answer has no full IDs"));
        };
        let managed = match self
            .lookup_object(plan, TargetKind::ManagedContainer, &container)
            .await?
        {
            Found::Object { managed, .. } => managed,
            Found::Missing(status, body) => return Ok(Found::Missing(status, body)),
        };
        self.remember(kind, &id, managed, Some(&container));
        Ok(Found::Object {
            id,
            managed,
            container: Some(container),
            unmountable: None,
        })
    }

    /// [`Self::lookup`] of a container, network, volume or image.
    async fn lookup_object(
        &self,
        plan: &Plan,
        kind: TargetKind,
        reference: &str,
    ) -> Result<Found, Box<Response<ProxyBody>>> {
        if let Some(c) = self.cached(kind, reference) {
            return Ok(Found::Object {
                id: reference.to_owned(),
                managed: c.managed,
                container: c.container,
                unmountable: None,
            });
        }
        self.count_check(kind.object(), "inspected");
        let (status, body) = self.inspect(plan, &inspect_path(kind, reference)).await?;
        if !status.is_success() {
            // Not found (or ambiguous): the engine's own status and message.
            return Ok(Found::Missing(status, body));
        }
        let unreadable = |what: &str| Box::new(self.upstream_failed(plan, &what));
        let inspected: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| unreadable(&format!("unreadable inspect answer: {e}")))?;
        let text = |field: &str| inspected.get(field).and_then(|v| v.as_str());
        let id = match kind {
            // A volume has no ID: its name is the reference.
            TargetKind::ManagedVolume => text("Name").filter(|n| *n == reference),
            TargetKind::ManagedImage => text("Id").filter(|id| is_cacheable(kind, id)),
            _ => text("Id").filter(|id| is_full_id(id)),
        }
        .ok_or_else(|| unreadable("the inspect answer has no full ID"))?
        .to_owned();
        let labels = match kind {
            TargetKind::ManagedNetwork | TargetKind::ManagedVolume => inspected.get("Labels"),
            _ => inspected.get("Config").and_then(|c| c.get("Labels")),
        };
        let (label, value) = self.policy().managed();
        let managed = labels.and_then(|l| l.get(label)).and_then(|v| v.as_str()) == Some(value);
        let unmountable = if kind == TargetKind::ManagedVolume {
            // Labels can be set by anyone who creates a volume elsewhere:
            // a mounted volume must also be what the proxy would create.
            let driver = text("Driver").unwrap_or_default();
            let options = inspected
                .get("Options")
                .map(|o| Json::parse(o.to_string().as_bytes()))
                .transpose()
                .map_err(|_| unreadable("unreadable volume options"))?;
            check_volume_driver(driver, options.as_ref(), self.policy()).err()
        } else {
            None
        };
        self.remember(kind, &id, managed, None);
        Ok(Found::Object {
            id,
            managed,
            container: None,
            unmountable,
        })
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
        let mut request = Request::new(upstream_bytes(Bytes::new()));
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
