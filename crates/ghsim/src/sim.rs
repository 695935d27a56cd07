//! Starting and stopping a simulator: [`Simulator::start`] takes a bound
//! listener (tokio-rs/mini-redis's `run(listener, shutdown)` pattern, so
//! tests bind port 0 and read the address), spawns the HTTP server, the
//! webhook delivery worker and the timer sweeper, and returns a [`SimHandle`].
//! The server stops when [`SimHandle::shutdown`] is called or the last handle
//! is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::{KeyPair, KeyPurpose, TokenSigner, cached_key};
use crate::config::{ScaleSetFlow, SimConfig, WebhookTarget};
use crate::error::{Error, Result};
use crate::faults::FaultRule;
use crate::state::{Account, World};
use crate::webhooks::{Outgoing, WebhookFaultRule};

/// State shared by every handler and task of one simulator.
pub struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) addr: SocketAddr,
    base_url: String,
    public_url: String,
    /// The App key of the configuration (what `app_private_key_pem` hands out).
    pub(crate) app_key: Arc<KeyPair>,
    /// Every key App JWTs may be signed with: GitHub lets an App have several
    /// private keys at once, so that one can be rotated without downtime.
    pub(crate) app_keys: Mutex<Vec<Arc<KeyPair>>>,
    pub(crate) runner_key: Arc<KeyPair>,
    pub(crate) signer: TokenSigner,
    pub(crate) world: Mutex<World>,
    /// Something changed that a waiting runner may care about.
    pub(crate) jobs_changed: Notify,
    /// A job completed.
    pub(crate) job_done: Notify,
    /// A delivery was recorded.
    pub(crate) deliveries_changed: Notify,
    pub(crate) webhook_target: Mutex<Option<WebhookTarget>>,
    pub(crate) webhook_faults: Mutex<Vec<WebhookFaultRule>>,
    pub(crate) webhook_tx: mpsc::UnboundedSender<Outgoing>,
    pub(crate) faults: Mutex<Vec<FaultRule>>,
    pub(crate) default_flow: Mutex<ScaleSetFlow>,
    pub(crate) shutdown: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl Shared {
    /// `http://127.0.0.1:PORT` (what the host side uses).
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }
    /// The URL handed to runners.
    pub fn public_url(&self) -> String {
        self.public_url.clone()
    }
    /// REST API root, GHES style.
    pub fn api_url(&self) -> String {
        format!("{}/api/v3", self.base_url)
    }
    /// Actions service root (with trailing slash).
    pub fn actions_url(&self) -> String {
        format!("{}/_services/actions/", self.base_url)
    }
    /// Runner broker root (with trailing slash), public.
    pub fn broker_url(&self) -> String {
        format!("{}/_services/broker/", self.public_url)
    }
    /// Run service root (with trailing slash), public.
    pub fn run_url(&self) -> String {
        format!("{}/_services/run/", self.public_url)
    }
    /// Runner OAuth token endpoint, public.
    pub fn token_url(&self) -> String {
        format!("{}/_services/vstoken/_apis/oauth2/token", self.public_url)
    }
}

/// Entry point.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Starts a simulator on `listener`. Must be called within a tokio runtime.
    pub fn start(config: SimConfig, listener: TcpListener) -> Result<SimHandle> {
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let public_url = config
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| base_url.clone());
        let app_key = match &config.app_key_pem {
            Some(pem) => Arc::new(KeyPair::from_pem(pem)?),
            None => cached_key(KeyPurpose::App)?,
        };
        let runner_key = cached_key(KeyPurpose::Runner)?;
        let mut world = World::default();
        if config.accounts.is_empty() {
            return Err(Error::Config("at least one account is needed".into()));
        }
        for a in &config.accounts {
            world.accounts.push(Account {
                login: a.login.clone(),
                id: a.account_id,
                kind: a.kind,
                installation_id: a.installation_id,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            addr,
            base_url,
            public_url,
            app_keys: Mutex::new(vec![app_key.clone()]),
            app_key,
            runner_key,
            signer: TokenSigner::default(),
            world: Mutex::new(world),
            jobs_changed: Notify::new(),
            job_done: Notify::new(),
            deliveries_changed: Notify::new(),
            webhook_target: Mutex::new(config.webhook.clone()),
            webhook_faults: Mutex::new(Vec::new()),
            webhook_tx: tx,
            faults: Mutex::new(config.faults.clone()),
            default_flow: Mutex::new(config.scale_set_flow),
            shutdown: shutdown.clone(),
            cfg: config,
        });
        tokio::spawn(crate::webhooks::delivery_worker(shared.clone(), rx));
        tokio::spawn(crate::engine::sweeper(shared.clone()));
        let app = router(shared.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!("ghsim server stopped: {e}");
            }
        });
        tracing::info!(url = %shared.base_url, "ghsim listening");
        Ok(SimHandle {
            sim: shared,
            _guard: Arc::new(ShutdownGuard(shutdown)),
        })
    }

    /// Binds `127.0.0.1:0` and starts.
    pub async fn start_local(config: SimConfig) -> Result<SimHandle> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start(config, listener)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let rest = crate::rest::router();
    Router::new()
        .merge(rest.clone())
        .nest("/api/v3", rest)
        .nest("/_services/actions", crate::scaleset::router())
        .merge(crate::runner_protocol::router())
        .merge(crate::control::router())
        .fallback(crate::faults::not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::faults::fault_layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::faults::rate_limit_layer,
        ))
        .with_state(shared)
}

#[derive(Debug)]
struct ShutdownGuard(CancellationToken);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A running simulator. Clones share it; it stops when the last clone is
/// dropped or [`SimHandle::shutdown`] is called. Control methods are in
/// [`crate::control`].
#[derive(Debug, Clone)]
pub struct SimHandle {
    pub(crate) sim: Arc<Shared>,
    _guard: Arc<ShutdownGuard>,
}

impl SimHandle {
    /// Listen URL, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> String {
        self.sim.base_url()
    }
    /// Listen address.
    pub fn addr(&self) -> SocketAddr {
        self.sim.addr
    }
    /// REST API root (`{base}/api/v3`; the root also serves the API).
    pub fn api_url(&self) -> String {
        self.sim.api_url()
    }
    /// URL put into everything handed to runners.
    pub fn public_url(&self) -> String {
        self.sim.public_url()
    }
    /// GitHub "web" URL of an org or repository, usable as a scale-set config URL.
    pub fn github_url(&self, path: &str) -> String {
        format!("{}/{}", self.sim.base_url(), path.trim_start_matches('/'))
    }
    /// Actions service root.
    pub fn actions_url(&self) -> String {
        self.sim.actions_url()
    }
    /// App id.
    pub fn app_id(&self) -> u64 {
        self.sim.cfg.app_id
    }
    /// App client id.
    pub fn client_id(&self) -> String {
        self.sim.cfg.client_id.clone()
    }
    /// App private key (PKCS#1 PEM).
    pub fn app_private_key_pem(&self) -> String {
        self.sim.app_key.private_pem.clone()
    }
    /// The installation id of `login`, if installed.
    pub fn installation_id(&self, login: &str) -> Option<u64> {
        self.sim.cfg.installation_for(login)
    }
    /// `(login, installation id)` of every installation.
    pub fn installation_ids(&self) -> Vec<(String, u64)> {
        self.sim
            .cfg
            .accounts
            .iter()
            .map(|a| (a.login.clone(), a.installation_id))
            .collect()
    }
    /// The configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.sim.cfg
    }
    /// Stops the server and its tasks.
    pub fn shutdown(&self) {
        self.sim.shutdown.cancel();
    }
    /// Whether it has been stopped.
    pub fn is_shut_down(&self) -> bool {
        self.sim.shutdown.is_cancelled()
    }
}
