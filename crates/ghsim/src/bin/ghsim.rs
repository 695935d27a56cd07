//! `ghsim`: runs the GitHub simulator until SIGTERM/SIGINT.
//!
//! Prints one JSON line (base URL, API URL, public URL, app id, client id,
//! installations) once it listens, so scripts can read where it is.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ghsim::{SimConfig, Simulator, WebhookTarget};

#[derive(Parser, Debug)]
#[command(name = "ghsim", version, about = "A GitHub simulator for berth")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// URL handed to runners (e.g. http://host.docker.internal:PORT); default: the listen URL.
    #[arg(long)]
    public_url: Option<String>,
    /// Write the App private key (PEM) to this file.
    #[arg(long)]
    app_key_out: Option<PathBuf>,
    /// Use this App private key (PEM file) instead of a generated one.
    #[arg(long)]
    app_key: Option<PathBuf>,
    /// Deliver workflow_job webhooks here.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Webhook HMAC secret.
    #[arg(long)]
    webhook_secret: Option<String>,
    /// Long-poll timeout in milliseconds.
    #[arg(long, default_value_t = 3000)]
    poll_timeout_ms: u64,
    /// Requeue a job offered to a runner and not acquired within this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    offer_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ghsim=info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = SimConfig {
        public_url: args.public_url.clone(),
        poll_timeout: Duration::from_millis(args.poll_timeout_ms),
        offer_timeout: Duration::from_millis(args.offer_timeout_ms),
        ..SimConfig::default()
    };
    if let Some(p) = &args.app_key {
        config.app_key_pem = Some(std::fs::read_to_string(p)?);
    }
    if let Some(url) = &args.webhook_url {
        config.webhook = Some(WebhookTarget {
            url: url.clone(),
            secret: args.webhook_secret.clone(),
        });
    }
    // Signal handlers first, so a SIGTERM right after the JSON line is handled.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let sim = Simulator::start(config, listener)?;
    if let Some(p) = &args.app_key_out {
        std::fs::write(p, sim.app_private_key_pem())?;
    }
    let mut info = serde_json::to_value(sim.info())?;
    if let Some(p) = &args.app_key_out {
        info["app_key_file"] = p.display().to_string().into();
    }
    println!("{info}");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    sim.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
