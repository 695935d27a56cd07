//! The `berth` command line: one binary for every part of the system.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// berth: every GitHub Actions job in a fresh, single-use, locked-down Docker container.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the orchestration service (API, dispatcher, watcher, reconcilers).
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run standalone proxy runner(s) delegating to a remote orchestrator.
    Proxy {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the least-privilege Docker socket proxy.
    SocketProxy {
        /// `host:port` or `unix:PATH`.
        #[arg(long)]
        listen: String,
        /// The Docker engine to forward to.
        #[arg(long, default_value = "unix:///var/run/docker.sock")]
        docker: String,
        /// A TOML policy file; the built-in least-privilege policy otherwise.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Run the egress proxy with a domain allowlist.
    EgressProxy {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        allow: PathBuf,
    },
    /// Run the whole system on this machine against the built-in GitHub simulator.
    Demo,
    /// Worker images.
    #[command(subcommand)]
    WorkerImage(WorkerImageCommand),
}

#[derive(Debug, Subcommand)]
pub enum WorkerImageCommand {
    /// Build the local worker image (runner stand-in + shell) with no registry and no network.
    Build {
        /// Docker engine address (`unix:///…` or `tcp://…`); DOCKER_HOST or the local socket otherwise.
        #[arg(long)]
        docker: Option<String>,
    },
}

/// Runs a parsed command line and maps the outcome to the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result: anyhow::Result<()> = match cli.command {
        Command::WorkerImage(WorkerImageCommand::Build { docker }) => {
            build_worker_image(docker.as_deref()).await
        }
        other => Err(anyhow::anyhow!(
            "`{other:?}` is not available in this build yet"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// `berth worker-image build`: builds (or finds) the local worker image and
/// prints its reference and the image ID a pool pins.
async fn build_worker_image(docker: Option<&str>) -> anyhow::Result<()> {
    use crate::docker::worker_image;

    let sources = worker_image::ImageSources::locate()?;
    eprintln!(
        "berth: building the local worker image from {} and {}…",
        sources.runner.display(),
        sources.busybox.display()
    );
    let docker = worker_image::connect(docker).await?;
    let image = worker_image::build_worker_image(&docker, &sources).await?;
    let how = if image.built {
        "built"
    } else {
        "already present"
    };
    eprintln!("berth: image {how}");
    println!("image: {}", image.reference);
    println!("id:    {}", image.id);
    Ok(())
}
