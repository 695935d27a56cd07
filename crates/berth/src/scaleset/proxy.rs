//! `berth proxy --config FILE`: standalone listeners for every
//! `[[scale_set]]` of the file, delegating to the orchestrator at
//! `[orchestrator] url` with a `delegate`-scope token.
//!
//! The proxy holds no state of its own: the Actions service keeps the
//! statistics and the orchestrator keeps the runners, so a proxy can be
//! killed and restarted (or moved) at any time. It needs the GitHub App
//! (`[github]`) for the Actions service, and nothing else: no store, no
//! Docker, and never a runner credential (the orchestrator mints those).
//!
//! Its secrets (the App key, the orchestrator token) are read at start;
//! those in files or in Vault are read again every `vault.refresh_interval`
//! and on SIGHUP (crate::secrets).
//!
//! It serves `/metrics` (the `berth_scaleset_*` families and its calls to
//! GitHub) and `/healthz` on `[server] listen`; when that address is taken
//! (an orchestrator on the same host, say) it logs a warning and runs
//! without them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::delegator::HttpDelegator;
use super::listener::{self, Timing};
use super::registry::Registry;
use crate::config::Config;
use crate::observability::Metrics;
use crate::secrets::{SecretSpec, Secrets};

/// Time limit of one call to the orchestrator.
const ORCHESTRATOR_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the proxy until `shutdown`; `metrics_listener` serves `/metrics`;
/// each signal on `hangups` (SIGHUP) re-reads the secrets.
pub async fn run(
    config: Config,
    metrics_listener: Option<tokio::net::TcpListener>,
    hangups: Option<tokio::signal::unix::Signal>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    metrics.init_scale_sets(config.scale_sets.iter().map(|s| s.name.as_str()));
    // Every secret is read before anything uses it; the file- and
    // Vault-backed ones are kept current (and re-read on SIGHUP) below.
    let secrets = Arc::new(Secrets::new(&config, metrics.clone())?);
    let key = secrets
        .add(SecretSpec::app_private_key(&config).context("github.private_key_path is required")?)
        .await?;
    let github = crate::service::github_client(&config, key, metrics.clone())?;
    let registry = Arc::new(
        Registry::new(&config, Some(&github), &metrics).context("setting up the scale sets")?,
    );
    let orchestrator = config
        .orchestrator
        .as_ref()
        .context("[orchestrator] is required for `berth proxy`")?;
    let token = secrets
        .add(
            SecretSpec::orchestrator_token(&config)
                .context("orchestrator.token or orchestrator.token_file is required")?,
        )
        .await?;
    let refresher = secrets
        .is_refreshable()
        .then(|| tokio::spawn(secrets.clone().run(shutdown.clone(), None)));
    if let Some(hangups) = hangups {
        secrets.refresh_on_signal(hangups);
    }
    let delegator = Arc::new(HttpDelegator::new(
        &orchestrator.url,
        token,
        ORCHESTRATOR_TIMEOUT,
    )?);
    let server = metrics_listener.map(|l| {
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let app = Router::new()
                .route(
                    "/metrics",
                    get(move || {
                        let metrics = metrics.clone();
                        async move {
                            (
                                [(
                                    header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                metrics.encode(),
                            )
                                .into_response()
                        }
                    }),
                )
                .route("/healthz", get(|| async { "ok" }));
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
        })
    });
    tracing::info!(
        orchestrator = %orchestrator.url,
        scale_sets = ?config.scale_sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "berth proxy running"
    );
    let result = listener::run_all(
        config.scale_sets.clone(),
        registry,
        delegator,
        metrics,
        Timing::default(),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    if let Some(refresher) = refresher {
        let _ = refresher.await;
    }
    if let Some(server) = server {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    tracing::info!("berth proxy stopped");
    result.context("a scale-set listener failed")
}
