//! The Docker controller: the only place in berth that talks to Docker.
//!
//! It creates one hardened, single-use container per job, hands the runner
//! its JIT config, watches the container end, keeps its output and removes it.
//! Everything else in berth goes through [`Controller`], so the rules below
//! hold for every container berth makes.
//!
//! # Why it works this way
//!
//! **The JIT config travels over stdin.** The JIT config is a credential: whoever
//! holds it can register a runner and take a job. Anything in a container's
//! env, command, labels or mounts is visible to everyone who can run
//! `docker inspect` (and is kept in the engine's state on disk). So a worker is
//! created with `OpenStdin` + `StdinOnce`; [`Controller::start_with_secret`]
//! attaches to its stdin, starts it, writes the config and a newline, and
//! closes stdin. The worker image's entrypoint reads that one line (see
//! [`worker_image`](super::worker_image)). The config never reaches Docker's
//! API in a request body, so it cannot appear in an error message either.
//!
//! **Hardening is not optional.** [`WorkerSpec`] has no field for bind
//! mounts, devices, privileged mode or host namespaces (other than host
//! networking, which a pool must ask for), and
//! [`WorkerSpec::create_body`] always drops every capability, sets
//! `no-new-privileges`, runs Docker's init as PID 1, sets CPU, memory (no
//! swap) and process limits, and refuses a root user. What the spec can
//! express is validated before anything is sent.
//!
//! **Exits come from the events API, not polling.** [`Controller::events`]
//! streams `start`, `die` (with the exit code), `oom` and `destroy` for
//! containers labelled `berth.managed=true` over one long-lived connection:
//! berth learns of an exit at once, with no per-container polling load on the
//! engine. The stream ends when the connection does; the caller re-subscribes
//! with `since` = the time of the last event it handled, and Docker replays
//! what was missed. Docker keeps only a bounded buffer of past events, so after
//! a long gap (or a crash) the caller also reconciles with
//! [`Controller::list_managed`] and [`Controller::inspect`].
//! [`Controller::wait_exit`] is the per-container fallback.
//!
//! **Every call has a time limit.** A Docker engine that hangs (overloaded,
//! disk stalls, a socket proxy that stopped answering) must not hang the
//! dispatcher or the reconcilers. Each request gets `call_timeout` (stop gets
//! the grace period on top); long-running streams (events, logs with follow,
//! wait) get it for the response headers only. Errors are one enum,
//! [`DockerError`], whose [`is_transient`](DockerError::is_transient) tells
//! the dispatcher whether a bounded retry makes sense, and a missing image is
//! its own variant so the job fails with that reason.
//!
//! **Errors are counted by the caller.** Metrics live elsewhere; pass a hook
//! with [`Controller::with_error_hook`] and it is called with the name of the
//! Docker call (`container_create`, `events`…) for every failed call.

mod error;
mod job_objects;
mod spec;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::{Future, ready};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, EventsOptions, ListContainersOptions,
    ListNetworksOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

pub use error::DockerError;
pub use job_objects::{LabelledObject, OutputChunk, RunState};
pub use spec::{
    DEFAULT_USER, DEFAULT_WORK_FOLDER, LABEL_GITHUB_JOB_ID, LABEL_HOST, LABEL_JOB, LABEL_MANAGED,
    LABEL_POOL, LABEL_REPOSITORY, LABEL_ROLE, LABEL_RUNNER, LABEL_WARM, NAME_PREFIX, TmpfsSizes,
    VolumeMount, WorkerNetwork, WorkerSpec,
};
pub use types::{
    ContainerEvent, ContainerEventKind, ContainerInfo, ContainerStatus, LogOptions,
    ManagedContainer,
};

/// The oldest Docker API berth works with (Docker Engine 20.10): `--init`,
/// `host-gateway` and the event filters it relies on.
pub const MIN_API_VERSION: &str = "1.41";
const MIN_API: (usize, usize) = (1, 41);

/// How long [`Controller::ensure_network`] waits after creating the network
/// for a simultaneous create by another replica to become visible.
pub const NETWORK_SETTLE: Duration = Duration::from_millis(500);

/// Called with the Docker call's name (`container_create`, `events`…) each
/// time a call fails; berth's metrics count these.
pub type ErrorHook = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The client certificate berth presents to a TLS engine, and the CA its
/// certificate must chain to (PEM files).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// What [`Controller::probe`] learns.
#[derive(Debug, Clone)]
pub struct EngineProbe {
    pub version: String,
    pub data_root: Option<String>,
}

/// A connection to one Docker engine. Cheap to clone (the connection pool is
/// shared); see the [module docs](self) for the design.
#[derive(Clone)]
pub struct Controller {
    docker: Docker,
    host: String,
    call_timeout: Duration,
    error_hook: Option<ErrorHook>,
    /// Serialises [`Controller::ensure_network`] calls of this controller.
    network_lock: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("host", &self.host)
            .field("call_timeout", &self.call_timeout)
            .field("api_version", &self.api_version())
            .field("error_hook", &self.error_hook.is_some())
            .finish()
    }
}

impl Controller {
    /// Connects to the engine at `host` and negotiates the API version.
    ///
    /// `host` is `unix:///path/to/docker.sock` (or a bare absolute path),
    /// `tcp://host:port` or `http://host:port` (e.g. berth's socket proxy).
    /// Fails with [`DockerError::UnsupportedApi`] below API 1.41, and with
    /// [`DockerError::Timeout`] when the engine does not answer within
    /// `call_timeout`.
    pub async fn connect(host: &str, call_timeout: Duration) -> Result<Self, DockerError> {
        Self::connect_with(host, None, call_timeout).await
    }

    /// [`connect`](Self::connect), over mutual TLS when `tls` is given
    /// (`https://host:port` or `tcp://host:port`: an engine or proxy that
    /// checks berth's client certificate).
    pub async fn connect_with(
        host: &str,
        tls: Option<&ClientTls>,
        call_timeout: Duration,
    ) -> Result<Self, DockerError> {
        let unnegotiated = Self::client(host, tls, call_timeout, bollard::API_DEFAULT_VERSION)?;
        let docker =
            match tokio::time::timeout(call_timeout, unnegotiated.negotiate_version()).await {
                Err(_) => {
                    return Err(DockerError::Timeout {
                        op: "version",
                        after: call_timeout,
                    });
                }
                Ok(result) => {
                    result.map_err(|e| DockerError::from_bollard("version", e, call_timeout))?
                }
            };
        let version = docker.client_version();
        if (version.major_version, version.minor_version) < MIN_API {
            return Err(DockerError::UnsupportedApi {
                version: version.to_string(),
            });
        }
        tracing::debug!(host, api_version = %version, "connected to Docker");
        Ok(Self::from_client(docker, host, call_timeout))
    }

    /// A controller for an engine that may not answer yet (a fleet host
    /// that is down when berth starts): no version negotiation, API
    /// [`MIN_API_VERSION`], which every engine berth supports speaks.
    pub fn connect_lazy(
        host: &str,
        tls: Option<&ClientTls>,
        call_timeout: Duration,
    ) -> Result<Self, DockerError> {
        let min_api = bollard::ClientVersion {
            major_version: MIN_API.0,
            minor_version: MIN_API.1,
        };
        Ok(Self::from_client(
            Self::client(host, tls, call_timeout, &min_api)?,
            host,
            call_timeout,
        ))
    }

    fn from_client(docker: Docker, host: &str, call_timeout: Duration) -> Self {
        Self {
            docker,
            host: host.to_owned(),
            call_timeout,
            error_hook: None,
            network_lock: Arc::default(),
        }
    }

    fn client(
        host: &str,
        tls: Option<&ClientTls>,
        call_timeout: Duration,
        api: &bollard::ClientVersion,
    ) -> Result<Docker, DockerError> {
        if call_timeout.is_zero() {
            return Err(DockerError::InvalidSpec(
                "call_timeout must be greater than zero".into(),
            ));
        }
        let header_secs = whole_seconds(call_timeout);
        let invalid = |reason: &str| DockerError::InvalidHost {
            host: host.to_owned(),
            reason: reason.to_owned(),
        };
        let connected = if let Some(tls) = tls {
            let rest = host
                .strip_prefix("https://")
                .or_else(|| host.strip_prefix("tcp://"))
                .ok_or_else(|| {
                    invalid("with TLS, expected https://host:port or tcp://host:port")
                })?;
            if rest.is_empty() || rest.contains('/') {
                return Err(invalid("expected host:port after the scheme"));
            }
            Docker::connect_with_ssl(host, &tls.key, &tls.cert, &tls.ca, header_secs, api)
        } else if let Some(rest) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            if rest.is_empty() || rest.contains('/') {
                return Err(invalid("expected host:port after the scheme"));
            }
            Docker::connect_with_http(host, header_secs, api)
        } else {
            let path = host.strip_prefix("unix://").unwrap_or(host);
            if !path.starts_with('/') {
                return Err(invalid("not a unix socket path nor a tcp/http address"));
            }
            Docker::connect_with_unix(path, header_secs, api)
        };
        connected.map_err(|e| DockerError::from_bollard("connect", e, call_timeout))
    }

    /// What a health probe learns of the engine: its version, and where it
    /// keeps its data (for the free-disk figure).
    pub async fn probe(&self) -> Result<EngineProbe, DockerError> {
        let result = async {
            let version = self.call("version", self.docker.version()).await?;
            let info = self.call("info", self.docker.info()).await?;
            Ok(EngineProbe {
                version: version.version.unwrap_or_default(),
                data_root: info.docker_root_dir,
            })
        }
        .await;
        self.report(result)
    }

    /// Sets the hook called with the call's name on every failed Docker call
    /// (not for specs refused before any call, nor for answers the controller
    /// treats as success, such as removing a container that is already gone).
    pub fn with_error_hook(mut self, hook: ErrorHook) -> Self {
        self.error_hook = Some(hook);
        self
    }

    /// The host this controller talks to, as given to [`connect`](Self::connect).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The time limit of each Docker call.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The negotiated API version, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// Checks that the engine answers (`GET /_ping`); for readiness probes.
    pub async fn ping(&self) -> Result<(), DockerError> {
        let result = self.call("ping", self.docker.ping()).await.map(drop);
        self.report(result)
    }

    /// Makes sure berth's bridge network `name` exists and returns its ID.
    ///
    /// Idempotent, and safe for concurrent callers: calls on one controller
    /// (and its clones) take turns, and the create asks Docker to refuse a
    /// duplicate name. Engines before API 1.44 check that outside their
    /// create lock, so two replicas creating at the same moment can both
    /// succeed; hence the rule every caller follows: *the* network is the
    /// oldest of that name. A caller that created one waits
    /// [`NETWORK_SETTLE`] for a simultaneous create to show, then keeps the
    /// oldest and removes its own copy if that lost. A network berth creates
    /// is labelled `berth.managed=true`.
    pub async fn ensure_network(&self, name: &str) -> Result<String, DockerError> {
        self.ensure_network_with(name, false).await
    }

    /// [`ensure_network`](Self::ensure_network), and when `internal` is set
    /// the network is created `Internal` (no route out of it: workers
    /// reach the outside only through the egress proxy attached to it), and
    /// an existing network of that name that is not internal is an error
    /// ([`DockerError::Conflict`]) rather than silently used, since workers
    /// on it could bypass the proxy.
    pub async fn ensure_network_with(
        &self,
        name: &str,
        internal: bool,
    ) -> Result<String, DockerError> {
        spec::validate_network_name(name)?;
        let _one_at_a_time = self.network_lock.lock().await;
        let mut result = self.ensure_network_inner(name, internal).await;
        if internal && let Ok(id) = &result {
            result = match self.network_is_internal(id).await {
                Ok(true) => Ok(id.clone()),
                Ok(false) => Err(DockerError::Conflict {
                    op: "network_create",
                    message: format!(
                        "network {name} exists and is not internal, so workers on it could bypass the \
                         egress proxy; remove it (berth re-creates it internal) or set docker.network \
                         to an internal network"
                    ),
                }),
                Err(e) => Err(e),
            };
        }
        self.report(result)
    }

    /// Whether the network with this full ID is `Internal`.
    async fn network_is_internal(&self, id: &str) -> Result<bool, DockerError> {
        // Listing (filtered by ID) rather than inspecting: the socket proxy
        // allows the list for any network, the inspect only for berth's own.
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([("id".to_owned(), vec![id.to_owned()])])),
        };
        let networks = self
            .call("network_list", self.docker.list_networks(Some(options)))
            .await?;
        Ok(networks
            .iter()
            .any(|n| n.id.as_deref() == Some(id) && n.internal == Some(true)))
    }

    async fn ensure_network_inner(
        &self,
        name: &str,
        internal: bool,
    ) -> Result<String, DockerError> {
        match self.networks_named(name).await?.as_slice() {
            [] => {}
            [only] => return Ok(only.clone()),
            // Duplicates left by an earlier race: settle on the oldest.
            [oldest, ..] => return Ok(oldest.clone()),
        }
        // bollard's request type follows the newest API, which dropped
        // `CheckDuplicate` (newer engines always refuse duplicates). Engines
        // speaking 1.41 need it, so the body is sent as written here.
        let body = serde_json::json!({
            "Name": name,
            "Driver": "bridge",
            "CheckDuplicate": true,
            "Internal": internal,
            "Labels": { LABEL_MANAGED: "true" },
        });
        let body = Bytes::from(body.to_string());
        let docker = self.docker.clone().with_request_modifier(move |request| {
            if request.uri().path().ends_with("/networks/create") {
                let (parts, _) = request.into_parts();
                http::Request::from_parts(parts, bollard::body_full(body.clone()))
            } else {
                request
            }
        });
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            ..Default::default()
        };
        let mine = match self
            .call("network_create", docker.create_network(request))
            .await
        {
            Ok(created) => Some(created.id),
            // Created by someone else meanwhile: use theirs.
            Err(DockerError::Conflict { .. }) => None,
            Err(e) => return Err(e),
        };
        if mine.is_some() {
            // A create that started earlier elsewhere may not be visible yet
            // (the engine stamps the time before setting the bridge up).
            tokio::time::sleep(NETWORK_SETTLE).await;
        }

        let Some(oldest) = self.networks_named(name).await?.into_iter().next() else {
            return Err(DockerError::Conflict {
                op: "network_create",
                message: format!("network {name} was reported as existing but cannot be found"),
            });
        };
        match mine {
            Some(mine) if mine != oldest => {
                // Lost a simultaneous create: drop our copy; every caller
                // settles on the oldest.
                let removed = self
                    .call("network_remove", self.docker.remove_network(&mine))
                    .await;
                if let Err(e) = removed {
                    tracing::warn!(network = name, id = %mine, error = %e, "could not remove a duplicate network");
                }
            }
            Some(mine) => tracing::info!(network = name, id = %mine, "created the berth network"),
            None => {}
        }
        Ok(oldest)
    }

    /// IDs of the networks called exactly `name`, oldest first (ties by ID).
    async fn networks_named(&self, name: &str) -> Result<Vec<String>, DockerError> {
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([("name".to_owned(), vec![name.to_owned()])])),
        };
        let networks = self
            .call("network_list", self.docker.list_networks(Some(options)))
            .await?;
        let mut found: Vec<(Option<OffsetDateTime>, String)> = Vec::new();
        // The name filter matches substrings; only an exact name counts.
        for network in networks
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
        {
            let labels = network.labels.clone().unwrap_or_default();
            if labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
                tracing::warn!(network = name, "using a network that berth did not create");
            }
            // `Created`'s Rust type depends on bollard's features; its JSON
            // form is always RFC 3339.
            let created = serde_json::to_value(&network).ok().and_then(|v| {
                v.get("Created")
                    .and_then(|c| c.as_str())
                    .and_then(types::parse_docker_time)
            });
            if let Some(id) = network.id {
                found.push((created, id));
            }
        }
        // `None` (unknown time) sorts first; Docker always sets it.
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    /// Creates (does not start) a worker container and returns its ID.
    ///
    /// The spec is validated first ([`WorkerSpec::validate`]); a refused spec
    /// is [`DockerError::InvalidSpec`] and nothing is sent. A missing image
    /// is [`DockerError::ImageMissing`] (berth never pulls here); a name in
    /// use is [`DockerError::Conflict`] (e.g. a retry after a create whose
    /// answer was lost: inspect the name to find it).
    pub async fn create_worker(&self, spec: &WorkerSpec) -> Result<String, DockerError> {
        let body = spec.create_body()?;
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let result = match self
            .call(
                "container_create",
                self.docker.create_container(Some(options), body),
            )
            .await
        {
            Ok(created) => {
                for warning in &created.warnings {
                    tracing::warn!(container = %spec.name, warning, "Docker warned on create");
                }
                tracing::debug!(container = %spec.name, id = %created.id, "created worker");
                Ok(created.id)
            }
            Err(DockerError::NotFound { message, .. })
                if message.to_ascii_lowercase().contains("image") =>
            {
                Err(DockerError::ImageMissing {
                    image: spec.image.clone(),
                })
            }
            Err(e) => Err(e),
        };
        self.report(result)
    }

    /// Starts a created worker and delivers `secret` (the runner's base64 JIT
    /// config) as one line on its stdin, then closes stdin.
    ///
    /// Attach and start (side by side: the entrypoint's `read` waits for
    /// us either way), then write `secret` + `\n` and close our write half.
    /// Docker then closes the container's stdin (`StdinOnce`): the
    /// entrypoint reads exactly one line, then end of input. Returns once the
    /// bytes are handed to the connection. The secret is never logged and
    /// never part of an error.
    ///
    /// Not idempotent: after a failure the container's stdin may be spent, so
    /// remove the container and create a new one rather than calling again.
    pub async fn start_with_secret(
        &self,
        container_id: &str,
        secret: &[u8],
    ) -> Result<(), DockerError> {
        check_container_ref(container_id)?;
        if !secret_lines_ok(secret) {
            return Err(DockerError::InvalidSpec(
                "the secret must be one or two non-empty lines (the JIT config, then a container job's hook credential)".into(),
            ));
        }
        let result = self.deliver_inner(container_id, secret, true).await;
        self.report(result)
    }

    /// Starts a created worker without giving it anything: its entrypoint
    /// blocks reading stdin (kept open by `OpenStdin`) until
    /// [`deliver_secret`](Self::deliver_secret). This is a warm container
    /// started ahead of demand.
    pub async fn start_waiting(&self, container_id: &str) -> Result<(), DockerError> {
        check_container_ref(container_id)?;
        let result = self
            .call(
                "container_start",
                self.docker.start_container(container_id, None),
            )
            .await;
        self.report(result)
    }

    /// Delivers `secret` to a worker that is already running and waiting on
    /// stdin ([`start_waiting`](Self::start_waiting)): attach, write the line,
    /// close. With `StdinOnce`, Docker closes the container's stdin when this
    /// first attached client ends its input, so the entrypoint reads exactly
    /// one line. The same rules as [`start_with_secret`](Self::start_with_secret)
    /// apply: never logged, not idempotent.
    pub async fn deliver_secret(
        &self,
        container_id: &str,
        secret: &[u8],
    ) -> Result<(), DockerError> {
        check_container_ref(container_id)?;
        if !secret_lines_ok(secret) {
            return Err(DockerError::InvalidSpec(
                "the secret must be one or two non-empty lines (the JIT config, then a container job's hook credential)".into(),
            ));
        }
        let result = self.deliver_inner(container_id, secret, false).await;
        self.report(result)
    }

    async fn deliver_inner(
        &self,
        container_id: &str,
        secret: &[u8],
        start: bool,
    ) -> Result<(), DockerError> {
        let options = AttachContainerOptions {
            stdin: true,
            stream: true,
            ..Default::default()
        };
        let attach = self.call(
            "container_attach",
            self.docker.attach_container(container_id, Some(options)),
        );
        // Attach and start on two connections at once: either order is safe
        // (the entrypoint blocks reading stdin, kept open by `OpenStdin`, until
        // our line comes), so the container runs one round trip sooner.
        let AttachContainerResults { output, mut input } = if start {
            let start = self.call(
                "container_start",
                self.docker.start_container(container_id, None),
            );
            tokio::try_join!(attach, start)?.0
        } else {
            attach.await?
        };

        let write = async {
            input.write_all(secret).await?;
            input.write_all(b"\n").await?;
            input.flush().await?;
            input.shutdown().await
        };
        match tokio::time::timeout(self.call_timeout, write).await {
            Err(_) => {
                return Err(DockerError::Timeout {
                    op: "container_stdin",
                    after: self.call_timeout,
                });
            }
            Ok(Err(e)) => {
                // An io::Error carries no payload bytes, only its kind.
                return Err(DockerError::Transport {
                    op: "container_stdin",
                    message: format!("writing to the container's stdin failed: {e}"),
                });
            }
            Ok(Ok(())) => {}
        }

        // Done: the bytes and the end of input are in the connection. Docker
        // reads them to the end, passes them on and closes the container's
        // stdin (`StdinOnce`), whether or not we keep the connection open.
        // It ends the session only when the container stops: do not wait.
        drop(output);
        tracing::debug!(
            container = container_id,
            "started worker and delivered its config"
        );
        Ok(())
    }

    /// Streams `start`, `die`, `oom` and `destroy` events of containers
    /// labelled `berth.managed=true`, from `since` (inclusive) on; `None`
    /// means from now.
    ///
    /// The stream runs until the connection ends; it then yields an error or
    /// simply ends. To miss nothing, re-subscribe with `since` set to the
    /// [`time`](ContainerEvent::time) of the last event handled: events of
    /// that instant may come twice, so handle them idempotently. Docker keeps
    /// only a bounded number of past events; after a long disconnection also
    /// reconcile with [`list_managed`](Self::list_managed).
    pub fn events(
        &self,
        since: Option<OffsetDateTime>,
    ) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![format!("{LABEL_MANAGED}=true")]),
            (
                "event".to_owned(),
                ["start", "die", "oom", "destroy"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        let options = EventsOptions {
            since: since.map(|t| format!("{}.{:09}", t.unix_timestamp(), t.nanosecond())),
            until: None,
            filters: Some(filters),
        };
        let hook = self.error_hook.clone();
        let after = self.call_timeout;
        self.docker
            .events(Some(options))
            .filter_map(move |item| {
                ready(match item {
                    // Only workers' events: a container job's own containers
                    // (`berth.role`) starting and dying say nothing of its worker.
                    Ok(message) => container_event(message)
                        .filter(|e| !e.labels.contains_key(LABEL_ROLE))
                        .map(Ok),
                    Err(e) => Some(Err(report_with(
                        hook.as_ref(),
                        DockerError::from_bollard("events", e, after),
                    ))),
                })
            })
            .boxed()
    }

    /// Waits until the container is not running and returns its exit code;
    /// the fallback when the events stream cannot be used. No time limit
    /// beyond the response headers: wrap it in a timeout when needed. A
    /// container that was never started counts as not running (code 0).
    pub async fn wait_exit(&self, container_id: &str) -> Result<i64, DockerError> {
        check_container_ref(container_id)?;
        let options = WaitContainerOptions {
            condition: "not-running".to_owned(),
        };
        let mut waiting = self.docker.wait_container(container_id, Some(options));
        let result = match waiting.next().await {
            Some(Ok(answer)) => Ok(answer.status_code),
            // bollard turns a non-zero exit code into an error.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(DockerError::from_bollard(
                "container_wait",
                e,
                self.call_timeout,
            )),
            None => Err(DockerError::Protocol {
                op: "container_wait",
                message: "the wait ended without an exit code".into(),
            }),
        };
        self.report(result)
    }

    /// The container's state, exit code, OOM flag and labels.
    pub async fn inspect(&self, container_id: &str) -> Result<ContainerInfo, DockerError> {
        check_container_ref(container_id)?;
        let result = self
            .call(
                "container_inspect",
                self.docker.inspect_container(container_id, None),
            )
            .await
            .map(container_info);
        self.report(result)
    }

    /// Every worker container (labelled `berth.managed=true`, without
    /// `berth.role`), running or not.
    pub async fn list_managed(&self) -> Result<Vec<ManagedContainer>, DockerError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_MANAGED}=true")],
            )])),
            ..Default::default()
        };
        let result = self
            .call("container_list", self.docker.list_containers(Some(options)))
            .await
            .map(|containers| {
                containers
                    .into_iter()
                    .map(managed_container)
                    // A container job's own containers are not workers
                    // (crate::container_jobs removes them with their job).
                    .filter(|c| !c.labels.contains_key(LABEL_ROLE))
                    .collect()
            });
        self.report(result)
    }

    /// The container's stdout and stderr, interleaved as Docker recorded
    /// them. With [`LogOptions::follow`] the stream stays open until the
    /// container exits, so starting it right after the container starts
    /// captures the job's output from the first byte (Docker keeps it all).
    pub fn logs(
        &self,
        container_id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<Bytes, DockerError>> {
        if let Err(e) = check_container_ref(container_id) {
            return stream::once(ready(Err(e))).boxed();
        }
        let since = options.since.map_or(0, |t| {
            i32::try_from(t.unix_timestamp().max(0)).unwrap_or(i32::MAX)
        });
        let query = LogsOptions {
            follow: options.follow,
            stdout: true,
            stderr: true,
            since,
            timestamps: options.timestamps,
            ..Default::default()
        };
        let hook = self.error_hook.clone();
        let after = self.call_timeout;
        self.docker
            .logs(container_id, Some(query))
            .map_ok(LogOutput::into_bytes)
            .map_err(move |e| {
                report_with(
                    hook.as_ref(),
                    DockerError::from_bollard("container_logs", e, after),
                )
            })
            .boxed()
    }

    /// Stops the container: its stop signal (SIGTERM unless the image says
    /// otherwise), then SIGKILL after `grace` (whole seconds, rounded up).
    /// Stopping a container that is not running succeeds.
    pub async fn stop(&self, container_id: &str, grace: Duration) -> Result<(), DockerError> {
        check_container_ref(container_id)?;
        let grace_secs = i32::try_from(whole_seconds(grace)).unwrap_or(i32::MAX);
        // Docker answers only once the container has stopped.
        let limit = grace + self.call_timeout;
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(whole_seconds(limit) + 1));
        let options = StopContainerOptions {
            t: Some(grace_secs),
            signal: None,
        };
        let result = self
            .call_within(
                "container_stop",
                limit,
                docker.stop_container(container_id, Some(options)),
            )
            .await;
        self.report(result)
    }

    /// Removes the container, killing it if it runs, with its anonymous
    /// volumes. Idempotent: a container that is already gone, or being
    /// removed by someone else, is a success.
    pub async fn remove(&self, container_id: &str) -> Result<(), DockerError> {
        check_container_ref(container_id)?;
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        let result = match self
            .call(
                "container_remove",
                self.docker.remove_container(container_id, Some(options)),
            )
            .await
        {
            Ok(()) | Err(DockerError::NotFound { .. }) => Ok(()),
            Err(DockerError::Conflict { message, .. })
                if message.contains("already in progress") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.report(result)
    }

    /// The image's ID (`sha256:…`), or `None` when the engine does not have it.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        if image.is_empty()
            || image
                .chars()
                .any(|c| c.is_whitespace() || c == '?' || c == '#')
        {
            return Err(DockerError::InvalidSpec(format!(
                "`{image}` is not an image reference"
            )));
        }
        let result = match self
            .call("image_inspect", self.docker.inspect_image(image))
            .await
        {
            Ok(found) => Ok(found.id),
            Err(DockerError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        };
        self.report(result)
    }

    /// Pulls `image` from its registry (`POST /images/create?fromImage=`),
    /// waiting at most `limit`. Registry errors come back as `Api` errors
    /// carrying Docker's message.
    pub async fn pull_image(&self, image: &str, limit: Duration) -> Result<(), DockerError> {
        self.pull_image_with(image, None, limit).await
    }

    /// [`pull_image`](Self::pull_image) with registry `credentials` (a
    /// container job's `credentials:`), which go to Docker in the
    /// `X-Registry-Auth` header and nowhere else.
    pub async fn pull_image_with(
        &self,
        image: &str,
        credentials: Option<bollard::auth::DockerCredentials>,
        limit: Duration,
    ) -> Result<(), DockerError> {
        use futures::TryStreamExt;
        if image.is_empty()
            || image
                .chars()
                .any(|c| c.is_whitespace() || c == '?' || c == '#')
        {
            return Err(DockerError::InvalidSpec(format!(
                "`{image}` is not an image reference"
            )));
        }
        let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let stream = self.docker.create_image(Some(options), None, credentials);
        let result = self
            .call_within("image_pull", limit, stream.try_collect::<Vec<_>>())
            .await
            .map(drop);
        self.report(result)
    }

    /// Runs one Docker call under `call_timeout`.
    async fn call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, DockerError> {
        self.call_within(op, self.call_timeout, call).await
    }

    /// Runs one Docker call under `limit`, classifying its error.
    async fn call_within<T>(
        &self,
        op: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, DockerError> {
        match tokio::time::timeout(limit, call).await {
            Err(_) => Err(DockerError::Timeout { op, after: limit }),
            Ok(result) => result.map_err(|e| DockerError::from_bollard(op, e, limit)),
        }
    }

    /// Passes a public method's result through, telling the hook of a failure.
    fn report<T>(&self, result: Result<T, DockerError>) -> Result<T, DockerError> {
        result.map_err(|e| report_with(self.error_hook.as_ref(), e))
    }
}

fn report_with(hook: Option<&ErrorHook>, error: DockerError) -> DockerError {
    if let (Some(hook), Some(op)) = (hook, error.op()) {
        hook(op);
    }
    error
}

/// What goes to a worker's stdin: the JIT config, and for a container job
/// its hook credential as a second line (docs/worker-image.md). No `\r`, no
/// empty line, at most two lines.
fn secret_lines_ok(secret: &[u8]) -> bool {
    let lines: Vec<&[u8]> = secret.split(|b| *b == b'\n').collect();
    !secret.contains(&b'\r') && lines.len() <= 2 && lines.iter().all(|l| !l.is_empty())
}

/// Whole seconds, rounded up, at least 1 (bollard and Docker count seconds).
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// A container ID or name goes into the request path unescaped: allow only
/// what IDs and names are made of.
fn check_container_ref(reference: &str) -> Result<(), DockerError> {
    let mut chars = reference.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DockerError::InvalidSpec(format!(
            "`{reference}` is not a container ID or name"
        )))
    }
}

fn container_event(message: bollard::models::EventMessage) -> Option<ContainerEvent> {
    let actor = message.actor?;
    let id = actor.id?;
    let time = message
        .time_nano
        .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).ok())
        .or_else(|| {
            message
                .time
                .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        })
        .unwrap_or_else(OffsetDateTime::now_utc);
    Some(ContainerEvent::from_parts(
        message.action.as_deref().unwrap_or_default(),
        id,
        &actor.attributes.unwrap_or_default(),
        time,
    ))
}

fn container_info(c: bollard::models::ContainerInspectResponse) -> ContainerInfo {
    let state = c.state.unwrap_or_default();
    let status = state
        .status
        .map_or(ContainerStatus::Other(String::new()), |s| {
            ContainerStatus::parse(s.as_ref())
        });
    let exit_code = if status.is_finished() {
        state.exit_code
    } else {
        None
    };
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        image: c.image.unwrap_or_default(),
        running: state.running.unwrap_or(false),
        exit_code,
        oom_killed: state.oom_killed.unwrap_or(false),
        error: state.error.filter(|e| !e.is_empty()),
        started_at: state
            .started_at
            .as_deref()
            .and_then(types::parse_docker_time),
        finished_at: state
            .finished_at
            .as_deref()
            .and_then(types::parse_docker_time),
        labels: sorted(c.config.and_then(|config| config.labels)),
        status,
    }
}

fn managed_container(c: bollard::models::ContainerSummary) -> ManagedContainer {
    let name = c
        .names
        .and_then(|names| names.into_iter().next())
        .map(|n| n.trim_start_matches('/').to_owned())
        .unwrap_or_default();
    ManagedContainer {
        id: c.id.unwrap_or_default(),
        name,
        labels: sorted(c.labels),
        status: c.state.map_or(ContainerStatus::Other(String::new()), |s| {
            ContainerStatus::parse(s.as_ref())
        }),
        created: c
            .created
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    }
}

fn sorted(labels: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    labels.unwrap_or_default().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_seconds_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
    }

    #[test]
    fn container_refs_cannot_escape_the_path() {
        assert!(check_container_ref("berth-abc").is_ok());
        assert!(check_container_ref("0123abcdef").is_ok());
        for bad in ["", "../images", "a/b", "a?b", "a b", "-x"] {
            assert!(check_container_ref(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn refuses_malformed_hosts() {
        for host in [
            "ssh://x",
            "relative.sock",
            "tcp://",
            "tcp://h:1/path",
            "https://h:1",
        ] {
            let e = Controller::connect(host, Duration::from_secs(1))
                .await
                .expect_err(host);
            assert!(matches!(e, DockerError::InvalidHost { .. }), "{host}: {e}");
        }
    }
}
