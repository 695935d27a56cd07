//! The `berth` command line: one binary for every part of the system.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, EXIT_CONFIG, Role};

pub mod progress;
pub mod remote;

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
    /// Run standalone proxy runner(s) delegating to a remote orchestrator:
    /// a scale-set listener per `[[scale_set]]` of the file.
    Proxy {
        /// The TOML configuration file (`[github]`, `[[scale_set]]`, `[orchestrator]`).
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
        /// Serve Prometheus metrics at `GET /metrics` on this `host:port`.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Run the egress proxy: workers reach only the destinations of its allowlist.
    EgressProxy {
        /// `host:port` or `unix:PATH`.
        #[arg(long)]
        listen: String,
        /// The TOML allowlist (see docs/egress-proxy.md); reloaded on SIGHUP.
        #[arg(long)]
        allow: PathBuf,
        /// Serve Prometheus metrics at `GET /metrics` on this `host:port`.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Run the whole system on this machine against the built-in GitHub simulator.
    Demo,
    /// The runner's container hook (`ACTIONS_RUNNER_CONTAINER_HOOKS`), run
    /// in a worker: reads the runner's hook input on stdin and has berth do
    /// it (docs/container-jobs.md).
    Hook,
    /// Measure berth against a baseline in the same run (see docs/PERFORMANCE.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Worker images.
    #[command(subcommand)]
    WorkerImage(WorkerImageCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write a consistent copy of the store while `berth serve` keeps
    /// running (SQLite: a snapshot file; PostgreSQL: `pg_dump`).
    Backup {
        /// The configuration naming the store (`store.url`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where to write the backup.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Replace an existing file at PATH.
        #[arg(long)]
        force: bool,
        /// What was written as JSON instead of sentences.
        #[arg(long)]
        json: bool,
    },
    /// Replace the store with a backup (`berth serve` must be stopped);
    /// refuses a backup of a newer schema than this berth knows.
    Restore {
        /// The configuration naming the store (`store.url`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The backup to restore (a file `berth backup` wrote).
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        /// Replace the store that is there.
        #[arg(long)]
        force: bool,
        /// What was restored as JSON instead of sentences.
        #[arg(long)]
        json: bool,
    },
    /// Jobs of a running orchestrator.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// A job's output; with `-f`, live until the job ends.
    Logs {
        /// The berth job id.
        job: String,
        /// Keep streaming until the job ends.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// The orchestrator's pools with their queued and active jobs.
    Pools {
        #[command(flatten)]
        remote: remote::Remote,
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The orchestrator's Docker hosts: list them, cordon, uncordon or
    /// drain one.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Whether the orchestrator is ready, and each component's status: up
    /// or down, its last pass, result, duration, failures in a row.
    /// Exits 1 when a required component is down.
    Status {
        #[command(flatten)]
        remote: remote::Remote,
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first: state, pool, repository, queue wait, duration.
    List {
        #[command(flatten)]
        filter: remote::ListFilter,
        #[command(flatten)]
        remote: remote::Remote,
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything berth knows about one job.
    Show {
        /// The berth job id.
        id: String,
        #[command(flatten)]
        remote: remote::Remote,
        #[arg(long)]
        json: bool,
    },
    /// Ask berth to cancel a job (needs an `admin` token).
    Cancel {
        /// The berth job id.
        id: String,
        #[command(flatten)]
        remote: remote::Remote,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Every host: health, admin state, labels, slots used and free, warm
    /// containers, last probe, the replica watching it; then the fleet's
    /// free slots, waiting jobs and hosts needed.
    List {
        #[command(flatten)]
        remote: remote::Remote,
        /// The API's JSON (`GET /v1/hosts`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// No new jobs on the host; running jobs and warm containers stay
    /// (needs an `admin` token).
    Cordon {
        /// The host's name (`default` without `[[docker_host]]`).
        name: String,
        #[command(flatten)]
        remote: remote::Remote,
        /// The API's JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// The host takes jobs again (needs an `admin` token).
    Uncordon {
        /// The host's name.
        name: String,
        #[command(flatten)]
        remote: remote::Remote,
        /// The API's JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// No new jobs on the host, its warm containers removed, its running
    /// jobs left to finish (needs an `admin` token).
    Drain {
        /// The host's name.
        name: String,
        /// Wait until nothing is left on the host, printing what still is.
        #[arg(long)]
        wait: bool,
        /// With `--wait`: give up (exit 1) after this many seconds.
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<u64>,
        #[command(flatten)]
        remote: remote::Remote,
        /// The API's JSON instead of sentences (with `--wait`, the host
        /// once drained; progress goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Trivial jobs through the whole pipeline (webhook → queue → JIT config →
    /// container → runner stand-in → cleanup), and the same containers
    /// straight through the Docker API, at the same concurrency.
    Pipeline {
        /// Jobs to run each way.
        #[arg(long, default_value_t = 200)]
        jobs: usize,
        /// Jobs in flight at once, each way.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Rounds the jobs are split into; each runs both ways, alternating
        /// which goes first, so drift in the machine favours neither.
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Jobs berth keeps queued on a parked pool meanwhile (for the RSS figure).
        #[arg(long, default_value_t = 1000)]
        track: usize,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The berth binary to run as `berth serve` (default: this one).
        #[arg(long)]
        berth: Option<PathBuf>,
    },
    /// Signed webhook deliveries at `berth serve` on SQLite: deliveries/s
    /// accepted durably and their latency, with and without group commit.
    Intake {
        /// Distinct deliveries to send.
        #[arg(long, default_value_t = 50_000)]
        deliveries: usize,
        /// Keep-alive connections sending at once.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Skip the run with group commit off.
        #[arg(long)]
        no_baseline: bool,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The berth binary to run as `berth serve` (default: this one).
        #[arg(long)]
        berth: Option<PathBuf>,
    },
    /// Claims with placement: jobs claimed per second by replica processes
    /// on one PostgreSQL and their latency, against the claim from before
    /// the fleet in the same run, on PostgreSQL and on SQLite.
    Placement {
        /// Queued jobs each run claims.
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        /// Hosts offering the pool's label (one more, without it, must get no job).
        #[arg(long, default_value_t = 3)]
        hosts: u32,
        /// Job slots of each host.
        #[arg(long, default_value_t = 1)]
        slots: u32,
        /// Replica processes claiming at once on PostgreSQL: one run per count.
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        replicas: Vec<usize>,
        /// Rounds; each runs every configuration, alternating which claim goes first.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// `pack` placement instead of `spread`.
        #[arg(long)]
        pack: bool,
        /// The PostgreSQL server; each run creates a database of its own there and drops it.
        #[arg(long, env = "BERTH_TEST_POSTGRES_URL")]
        postgres: Option<String>,
        /// Skip the SQLite runs.
        #[arg(long)]
        no_sqlite: bool,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The berth binary whose claimers run (default: this one).
        #[arg(long)]
        berth: Option<PathBuf>,
        /// Internal: run as one of the bench's replica processes (a JSON spec).
        #[arg(long, hide = true)]
        claimer: Option<String>,
    },
    /// Container jobs: a step and a `prepare_job` through `berth hook`
    /// against the same Docker work done directly, in the same run.
    Hook {
        /// Steps through each path.
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// `prepare_job` runs (a job container and a service with a health
        /// check) through each path.
        #[arg(long, default_value_t = 10)]
        prepares: usize,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration: print every problem (naming the key and the file) and exit 64 if any.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Check it for `berth proxy` rather than `berth serve`.
        #[arg(long)]
        proxy: bool,
        /// Only check the file: do not connect to the Docker hosts or Vault
        /// (by default each Docker host must answer and each `vault://`
        /// secret must be readable, else exit 69).
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token in the store of the configuration (so the first
    /// `admin` token needs no API); it is printed once and only its hash is
    /// stored.
    Create {
        #[arg(long, value_parser = ["delegate", "read", "admin", "security"])]
        scope: String,
        /// A name to recognise the token by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Make the token stop working after this long: `90d`, `12h`,
        /// `30m`, `3600s`. Without it the token works until revoked.
        #[arg(long, value_name = "DURATION", value_parser = parse_expires_in)]
        expires_in: Option<std::time::Duration>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The orchestrator's API tokens (needs an `admin` token): name, scope,
    /// state, when created and last used, when they expire.
    List {
        #[command(flatten)]
        remote: remote::Remote,
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Include dashboard sessions (the tokens `/login` makes).
        #[arg(long)]
        sessions: bool,
    },
    /// Revoke an API token and its dashboard sessions (needs an `admin`
    /// token); it is refused from then on.
    Revoke {
        /// The token's id (from `berth token list`), not the token itself.
        id: String,
        #[command(flatten)]
        remote: remote::Remote,
        /// The API's JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

/// Longest `--expires-in` taken: 100 years, far past any sensible token
/// and well inside what a timestamp can hold.
const MAX_EXPIRES_IN: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

/// Parses `--expires-in`: a whole number and a unit, `d`, `h`, `m` or `s`
/// (`90d`, `12h`, `30m`, `3600s`). Errors name the value given.
pub fn parse_expires_in(value: &str) -> Result<std::time::Duration, String> {
    let bad = |why: &str| {
        format!(
            "`{value}` is not a duration ({why}; write a number and d, h, m or s: `90d`, `12h`, `30m`, `3600s`)"
        )
    };
    let text = value.trim();
    let Some(unit) = text.chars().last() else {
        return Err(bad("it is empty"));
    };
    let seconds_per_unit: u64 = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        c if c.is_ascii_digit() => return Err(bad("no unit")),
        c => return Err(bad(&format!("unknown unit `{c}`"))),
    };
    let number = &text[..text.len() - unit.len_utf8()];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the number must be a whole number"));
    }
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per_unit))
        .map(std::time::Duration::from_secs)
        .filter(|d| *d <= MAX_EXPIRES_IN)
        .ok_or_else(|| bad("at most 100 years"))?;
    if seconds.is_zero() {
        return Err(bad("it must be more than zero"));
    }
    Ok(seconds)
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
        Command::Serve { config } => return serve(config.as_deref()).await,
        Command::Proxy { config } => return proxy(&config).await,
        Command::Hook => {
            let code = crate::container_jobs::client::run().await;
            return ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1));
        }
        Command::Config(ConfigCommand::Check {
            config,
            proxy,
            offline,
        }) => {
            let role = if proxy { Role::Proxy } else { Role::Serve };
            return config_check(config.as_deref(), role, offline).await;
        }
        Command::Token(TokenCommand::Create {
            scope,
            name,
            expires_in,
            config,
        }) => token_create(config.as_deref(), &scope, &name, expires_in).await,
        Command::Backup {
            config,
            out,
            force,
            json,
        } => backup(config.as_deref(), &out, force, json).await,
        Command::Restore {
            config,
            from,
            force,
            json,
        } => restore(config.as_deref(), &from, force, json).await,
        Command::Token(TokenCommand::List {
            remote,
            json,
            sessions,
        }) => remote::tokens_list(&remote, sessions, json).await,
        Command::Token(TokenCommand::Revoke { id, remote, json }) => {
            remote::token_revoke(&remote, &id, json).await
        }
        Command::WorkerImage(WorkerImageCommand::Build { docker }) => {
            build_worker_image(docker.as_deref()).await
        }
        Command::Demo => crate::demo::run().await,
        Command::Bench(BenchCommand::Pipeline {
            jobs,
            concurrency,
            rounds,
            track,
            json,
            berth,
        }) => crate::bench::pipeline::run(crate::bench::pipeline::PipelineOptions {
            jobs,
            concurrency,
            rounds,
            track,
            json,
            berth,
        })
        .await
        .and_then(|report| report.check()),
        Command::Bench(BenchCommand::Intake {
            deliveries,
            connections,
            no_baseline,
            json,
            berth,
        }) => crate::bench::intake::run(crate::bench::intake::IntakeOptions {
            deliveries,
            connections,
            baseline: !no_baseline,
            json,
            berth,
        })
        .await
        .map(drop),
        Command::Bench(BenchCommand::Hook {
            steps,
            prepares,
            json,
        }) => {
            crate::bench::hook::run(crate::bench::hook::HookOptions {
                steps,
                prepares,
                json,
            })
            .await
        }
        Command::Bench(BenchCommand::Placement {
            claimer: Some(spec),
            ..
        }) => crate::bench::placement::claimer(&spec).await,
        Command::Bench(BenchCommand::Placement {
            jobs,
            hosts,
            slots,
            replicas,
            rounds,
            pack,
            postgres,
            no_sqlite,
            json,
            berth,
            claimer: None,
        }) => crate::bench::placement::run(crate::bench::placement::PlacementOptions {
            jobs,
            hosts,
            slots,
            replicas,
            rounds,
            pack,
            postgres,
            sqlite: !no_sqlite,
            json,
            berth,
        })
        .await
        .and_then(|report| report.check()),
        Command::SocketProxy {
            listen,
            docker,
            policy,
            metrics,
        } => socket_proxy(&listen, &docker, policy.as_deref(), metrics.as_deref()).await,
        Command::EgressProxy {
            listen,
            allow,
            metrics,
        } => return egress_proxy(&listen, &allow, metrics.as_deref()).await,
        Command::Jobs(JobsCommand::List {
            filter,
            remote,
            json,
        }) => remote::jobs_list(&remote, &filter, json).await,
        Command::Jobs(JobsCommand::Show { id, remote, json }) => {
            remote::jobs_show(&remote, &id, json).await
        }
        Command::Jobs(JobsCommand::Cancel { id, remote, json }) => {
            remote::jobs_cancel(&remote, &id, json).await
        }
        Command::Logs {
            job,
            follow,
            remote,
        } => remote::logs(&remote, &job, follow).await,
        Command::Pools { remote, json } => remote::pools(&remote, json).await,
        Command::Hosts(HostsCommand::List { remote, json }) => {
            remote::hosts_list(&remote, json).await
        }
        Command::Hosts(HostsCommand::Cordon { name, remote, json }) => {
            remote::host_admin(&remote, &name, remote::HostAction::Cordon, json).await
        }
        Command::Hosts(HostsCommand::Uncordon { name, remote, json }) => {
            remote::host_admin(&remote, &name, remote::HostAction::Uncordon, json).await
        }
        Command::Hosts(HostsCommand::Drain {
            name,
            wait,
            timeout,
            remote,
            json,
        }) => {
            let timeout = timeout.map(std::time::Duration::from_secs);
            remote::host_drain(&remote, &name, wait, timeout, json).await
        }
        Command::Status { remote, json } => remote::status(&remote, json).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads a configuration from the file and the process environment; on
/// problems prints them and returns the exit code to use.
fn load_config(path: Option<&Path>, role: Role) -> Result<Config, ExitCode> {
    match Config::load(path, std::env::vars(), role) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("berth: warning: {w}");
            }
            Ok(loaded.config)
        }
        Err(e) => {
            eprintln!("berth: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// Exit code of `config check` when a Docker host does not answer or a
/// Vault secret cannot be read (sysexits' EX_UNAVAILABLE).
const EXIT_HOST_UNAVAILABLE: u8 = 69;

async fn config_check(path: Option<&Path>, role: Role, offline: bool) -> ExitCode {
    match load_config(path, role) {
        Ok(config) => {
            println!(
                "configuration OK: {} pool(s), {} scale set(s), {} docker host(s), store {}",
                config.pools.len(),
                config.scale_sets.len(),
                config.hosts().len(),
                crate::service::redact_url(&config.store.url)
            );
            if offline {
                return ExitCode::SUCCESS;
            }
            let mut reached = read_vault_secrets(&config).await;
            if role == Role::Serve {
                reached &= reach_hosts(&config).await;
            }
            if reached {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_HOST_UNAVAILABLE)
            }
        }
        Err(code) => code,
    }
}

/// Logs in to Vault and reads every secret `config` gives as a `vault://`
/// reference, printing what was read (never a value); `false` when one
/// could not be read or is not what it must be.
async fn read_vault_secrets(config: &Config) -> bool {
    use crate::secrets::{SecretSource, SecretSpec, VaultClient};
    let Some(vault) = &config.vault else {
        return true;
    };
    let client = match VaultClient::new(vault, None) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("berth: {e}");
            return false;
        }
    };
    let specs = [
        SecretSpec::app_private_key(config),
        SecretSpec::webhook_secret(config),
        SecretSpec::orchestrator_token(config),
    ];
    let mut all = true;
    for spec in specs.into_iter().flatten() {
        let SecretSource::Vault(reference) = &spec.source else {
            continue;
        };
        let checked = client.read(reference).await.and_then(|read| {
            spec.shape
                .check(&read.value)
                .map(|()| read.version)
                .map_err(crate::secrets::SecretsError::Config)
        });
        match checked {
            Ok(version) => println!(
                "{}: read {reference}{}",
                spec.key,
                version.map_or(String::new(), |v| format!(" (version {v})"))
            ),
            Err(e) => {
                all = false;
                eprintln!("berth: {} ({reference}): {e}", spec.key);
            }
        }
    }
    all
}

/// Connects to every Docker host of `config` and prints what answered;
/// `false` when any did not.
async fn reach_hosts(config: &Config) -> bool {
    let timeout = config
        .docker
        .call_timeout
        .min(std::time::Duration::from_secs(10));
    let mut all = true;
    for host in config.hosts() {
        let tls = match (&host.tls_ca, &host.tls_cert, &host.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some(crate::docker::controller::ClientTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let answer =
            match crate::docker::Controller::connect_with(&host.url, tls.as_ref(), timeout).await {
                Ok(docker) => docker.probe().await.map(|p| (p, docker.api_version())),
                Err(e) => Err(e),
            };
        match answer {
            Ok((probe, api)) => println!(
                "docker host `{}` ({}): Docker {} (API {api}), {} slot(s), labels [{}]",
                host.name,
                host.url,
                probe.version,
                host.max_runners,
                host.labels.join(", ")
            ),
            Err(e) => {
                all = false;
                eprintln!(
                    "berth: docker host `{}` ({}) does not answer: {e}",
                    host.name, host.url
                );
            }
        }
    }
    all
}

/// `berth serve`: refuses to start on a bad configuration (exit 64) or a
/// secret it cannot read (exit 1, naming the key and where it points);
/// re-reads its secrets on SIGHUP; stops on SIGTERM or SIGINT, leaving
/// running jobs running.
async fn serve(path: Option<&Path>) -> ExitCode {
    let config = match load_config(path, Role::Serve) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log_level = crate::observability::logging::init(&config.logs.level);
    // Before anything else: a SIGHUP that arrives while berth starts must
    // not kill it (the signal's default action); it is acted on once the
    // secrets are read.
    let hangups = match hangup_signal() {
        Ok(signal) => signal,
        Err(code) => return code,
    };
    // Held until the process ends: on SQLite this is the only replica.
    let _sole_replica = match crate::store::SoleReplica::acquire(&config.store.url) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!(error = %e, "berth cannot start");
            eprintln!("berth: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&config.server.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth: cannot listen on {}: {e}", config.server.listen);
            return ExitCode::from(1);
        }
    };
    // Before anything else: clients may connect from the moment the port is
    // open, while the store and the hosts are still being reached.
    crate::api::server::raise_open_files_limit(config.server.max_connections);
    let ctx = match crate::service::build(config, Some(log_level)).await {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "berth cannot start");
            eprintln!("berth: {e:#}");
            return ExitCode::from(1);
        }
    };
    ctx.secrets.refresh_on_signal(hangups);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match crate::service::run(ctx, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `berth proxy`: the scale-set listeners of the file, delegating to the
/// orchestrator. Exit 64 on a bad configuration, 1 when a secret cannot be
/// read at start or a listener fails in a way retrying cannot fix; SIGHUP
/// re-reads the secrets; SIGTERM or SIGINT deletes the sessions and exits 0.
async fn proxy(path: &Path) -> ExitCode {
    let config = match load_config(Some(path), Role::Proxy) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::observability::logging::init(&config.logs.level);
    let hangups = match hangup_signal() {
        Ok(signal) => signal,
        Err(code) => return code,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let metrics_listener = match tokio::net::TcpListener::bind(&config.server.listen).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(listen = %config.server.listen, error = %e, "/metrics is not served: cannot listen (set [server] listen to a free address)");
            None
        }
    };
    match crate::scaleset::proxy::run(config, metrics_listener, Some(hangups), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "berth proxy failed");
            eprintln!("berth: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `berth socket-proxy`: JSON logs (level from `BERTH_LOGS__LEVEL`, default
/// `info`), stops on SIGTERM or SIGINT. See `docs/socket-proxy.md`.
async fn socket_proxy(
    listen: &str,
    docker: &str,
    policy: Option<&Path>,
    metrics: Option<&str>,
) -> anyhow::Result<()> {
    let level = std::env::var("BERTH_LOGS__LEVEL").unwrap_or_else(|_| "info".into());
    crate::observability::logging::init(&level);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    berth_proxies::socket::run(listen, docker, policy, metrics, shutdown.cancelled_owned()).await?;
    Ok(())
}

/// `berth egress-proxy`: JSON logs (level from `BERTH_LOGS__LEVEL`, default
/// `info`); a bad allowlist exits 64 naming the line and key, like `berth
/// config check`; SIGHUP reloads the allowlist; SIGTERM or SIGINT stops it.
/// See `docs/egress-proxy.md`.
async fn egress_proxy(listen: &str, allow: &Path, metrics: Option<&str>) -> ExitCode {
    // Checked before anything else, so a bad file is reported on stderr
    // plainly, with the configuration exit code.
    if let Err(e) = berth_proxies::egress::Allowlist::from_file(allow) {
        eprintln!("berth: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let level = std::env::var("BERTH_LOGS__LEVEL").unwrap_or_else(|_| "info".into());
    crate::observability::logging::init(&level);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match berth_proxies::egress::run(listen, allow, metrics, shutdown.cancelled_owned()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(berth_proxies::egress::EgressError::Allowlist(e)) => {
            eprintln!("berth: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = %e, "berth egress-proxy failed");
            eprintln!("berth: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGHUP, caught (it re-reads the secrets) rather than ending the process.
fn hangup_signal() -> Result<tokio::signal::unix::Signal, ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).map_err(|e| {
        eprintln!("berth: cannot install a SIGHUP handler: {e}");
        ExitCode::from(1)
    })
}

/// Cancels `token` on SIGTERM or SIGINT.
pub async fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    token.cancel();
}

async fn token_create(
    path: Option<&Path>,
    scope: &str,
    name: &str,
    expires_in: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let config = load_config(path, Role::Serve)
        .map_err(|_| anyhow::anyhow!("fix the configuration first"))?;
    let scope: crate::store::ApiTokenScope = scope.parse()?;
    let store = crate::store::Store::connect(&config.store.url).await?;
    let expires_at = expires_in.map(|d| store.now() + d);
    let created = crate::api::auth::create_token_expiring(&store, name, scope, expires_at).await;
    store.close().await;
    let (token, stored) = created?;
    let until = match stored.expires_at {
        Some(at) => format!(
            ", expires {}",
            at.format(&time::format_description::well_known::Rfc3339)?
        ),
        None => String::new(),
    };
    eprintln!(
        "berth: created {} token `{}` ({}{until}); it is shown once:",
        stored.scope, stored.name, stored.id
    );
    println!("{token}");
    Ok(())
}

/// `berth backup`: a copy of the store of the configuration (crate::backup).
async fn backup(path: Option<&Path>, out: &Path, force: bool, json: bool) -> anyhow::Result<()> {
    let config = load_config(path, Role::Serve)
        .map_err(|_| anyhow::anyhow!("fix the configuration first"))?;
    let report = crate::backup::backup(&config.store.url, out, force).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("backup written: {}", report.path.display());
    println!("  store:          {}", report.store);
    println!("  format:         {}", report.format);
    println!("  schema version: {}", report.schema_version);
    println!("  jobs:           {}", report.jobs);
    println!("  size:           {} bytes", report.bytes);
    println!("  took:           {} ms", report.took_ms);
    Ok(())
}

/// `berth restore`: the store of the configuration replaced by a backup
/// (crate::backup), and what the operator must know next.
async fn restore(path: Option<&Path>, from: &Path, force: bool, json: bool) -> anyhow::Result<()> {
    let config = load_config(path, Role::Serve)
        .map_err(|_| anyhow::anyhow!("fix the configuration first"))?;
    let report = crate::backup::restore(&config.store.url, from, force).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("restored: {}", report.store);
    println!("  from:           {}", report.from.display());
    let migrate = if report.schema_version < report.latest_schema_version {
        format!(
            " (berth serve migrates it to {} at start)",
            report.latest_schema_version
        )
    } else {
        String::new()
    };
    println!("  schema version: {}{migrate}", report.schema_version);
    println!("  jobs:           {}", report.jobs);
    println!("  took:           {} ms", report.took_ms);
    println!(
        "Next: start berth serve. Its reconcilers remove the worker containers and the offline \
         runner registrations this backup does not know, and finish or requeue, from GitHub's \
         view, the jobs it has as active whose containers are gone (docs/operations.md, Backup \
         and restore)."
    );
    Ok(())
}

/// `berth worker-image build`: builds (or finds) the local worker image and
/// prints its reference and the image ID a pool pins.
async fn build_worker_image(docker: Option<&str>) -> anyhow::Result<()> {
    use crate::docker::worker_image;

    let progress = progress::Progress::new();
    let sources = worker_image::ImageSources::locate()?;
    progress.say(&format!(
        "building the local worker image from {} and {}",
        sources.runner.display(),
        sources.shell
    ));
    progress.status("connecting to Docker");
    let docker = worker_image::connect(docker).await?;
    progress.status("assembling the root filesystem and importing it into Docker");
    let image = worker_image::build_worker_image(&docker, &sources).await?;
    progress.finish();
    let how = if image.built {
        "built"
    } else {
        "already present"
    };
    progress.say(&format!("image {how}"));
    println!("image: {}", image.reference);
    println!("id:    {}", image.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_durations_take_days_hours_minutes_and_seconds() {
        let secs = |v: &str| parse_expires_in(v).map(|d| d.as_secs());
        assert_eq!(secs("90d"), Ok(90 * 86_400));
        assert_eq!(secs("12h"), Ok(12 * 3_600));
        assert_eq!(secs("30m"), Ok(30 * 60));
        assert_eq!(secs("3600s"), Ok(3600));
        assert_eq!(secs(" 1d "), Ok(86_400));
        for bad in [
            "",
            "d",
            "90",
            "90x",
            "-5d",
            "1.5h",
            "0s",
            "h12",
            "99999999999999999999d",
            "36501d",
        ] {
            let err = parse_expires_in(bad).expect_err(bad);
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
        }
        assert!(
            parse_expires_in("90x")
                .unwrap_err()
                .contains("unknown unit `x`")
        );
    }
}
