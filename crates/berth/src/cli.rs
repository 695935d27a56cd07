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
        other => Err(anyhow::anyhow!("`{other:?}` is not available in this build yet")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth: {err:#}");
            ExitCode::from(1)
        }
    }
}
