//! A fleet: the Docker hosts jobs run on, and who looks after each.
//!
//! # Hosts
//!
//! Each `[[docker_host]]` (or, without any, the one `docker.host`, named
//! `default`) gets a [`Controller`] of its own. A job is placed on a host by
//! its claim (crate::store::Store::job_claim): the host must offer every
//! label the pool asks for (`host_labels`), be `up` and `active`, and have
//! a free slot; `fleet.placement` picks among those. From then on every
//! Docker call for the job goes to its host ([`Fleet::docker_of`]), and its
//! containers carry `berth.host`.
//!
//! # Owners
//!
//! Some work must happen once per host, whatever the number of replicas:
//! following its event stream (exits), capturing its workers' output,
//! probing it, refilling its warm containers, removing its orphans. One
//! replica does it: the holder of the host's lease in the store
//! ([`owner::run`]), renewed every third of `fleet.host_lease`. A replica
//! that dies stops renewing; within one lease period another takes the
//! lease, re-attaches to the running workers' output and follows their
//! exits. docs/architecture.md says why nothing is done twice.
//!
//! Work that follows a job rather than a host (provisioning, timeouts,
//! cancellations) stays with whichever replica holds the job's own lease.

pub mod capacity;
pub mod owner;

use std::collections::BTreeSet;
use std::sync::Mutex;

use anyhow::Context as _;

use crate::config::{Config, DockerHostConfig, PoolConfig};
use crate::docker::controller::{ClientTls, Controller, ErrorHook};
use crate::store::{Job, PlacementHost};

/// One host: its configuration and its controller.
pub struct Host {
    pub config: DockerHostConfig,
    pub docker: Controller,
    /// Its position in the configuration (`pack` fills lower first).
    pub ordinal: u32,
}

impl Host {
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// Every host of the installation, in configuration order, and the ones
/// this replica owns now.
pub struct Fleet {
    hosts: Vec<Host>,
    owned: Mutex<BTreeSet<String>>,
}

/// A job's or a container's host is not (or no longer) configured.
#[derive(Debug, thiserror::Error)]
#[error("docker host `{0}` is not configured")]
pub struct UnknownHost(pub String);

impl Fleet {
    /// Connects to every host. With one implicit host (no
    /// `[[docker_host]]`) an engine that does not answer is an error, as
    /// always; in a fleet a host that does not answer is connected lazily
    /// and left to its probes (it is `down` until it answers).
    pub async fn connect(config: &Config, on_error: ErrorHook) -> anyhow::Result<Self> {
        let mut hosts = Vec::new();
        let timeout = config.docker.call_timeout;
        for (ordinal, host) in config.hosts().into_iter().enumerate() {
            let tls = client_tls(&host);
            let docker = if config.docker_hosts.is_empty() {
                Controller::connect(&host.url, timeout)
                    .await
                    .with_context(|| format!("connecting to Docker at {}", host.url))?
            } else {
                match Controller::connect_with(
                    &host.url,
                    tls.as_ref(),
                    timeout.min(ANSWER_AT_START),
                )
                .await
                {
                    Ok(docker) => docker,
                    Err(e) => {
                        tracing::warn!(host = %host.name, url = %host.url, error = %e,
                            "a Docker host does not answer; it gets no jobs until it does");
                        Controller::connect_lazy(&host.url, tls.as_ref(), timeout)
                            .with_context(|| format!("docker_host `{}`", host.name))?
                    }
                }
            };
            hosts.push(Host {
                docker: docker.with_error_hook(on_error.clone()),
                ordinal: u32::try_from(ordinal).unwrap_or(u32::MAX),
                config: host,
            });
        }
        Ok(Self::new(hosts))
    }

    pub fn new(hosts: Vec<Host>) -> Self {
        Self {
            hosts,
            owned: Mutex::default(),
        }
    }

    /// Every host, in configuration order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.config.name.clone()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.config.name == name)
    }

    /// The host of jobs recorded without one (before berth had fleets):
    /// the first.
    pub fn first(&self) -> &Host {
        &self.hosts[0]
    }

    /// The controller of host `name`.
    pub fn docker(&self, name: &str) -> Result<&Controller, UnknownHost> {
        self.get(name)
            .map(|h| &h.docker)
            .ok_or_else(|| UnknownHost(name.to_string()))
    }

    /// The name of the host a job was placed on.
    pub fn host_of<'a>(&'a self, job: &'a Job) -> &'a str {
        job.host.as_deref().unwrap_or_else(|| self.first().name())
    }

    /// The controller of the host a job was placed on.
    pub fn docker_of(&self, job: &Job) -> Result<&Controller, UnknownHost> {
        self.docker(self.host_of(job))
    }

    /// The hosts a pool's jobs may be placed on: those offering every label
    /// in its `host_labels`.
    pub fn placement_for(&self, pool: &PoolConfig) -> Vec<PlacementHost> {
        self.hosts
            .iter()
            .filter(|h| h.config.offers(&pool.host_labels))
            .map(|h| PlacementHost {
                name: h.config.name.clone(),
                slots: h.config.max_runners,
                weight: h.config.weight,
                ordinal: h.ordinal,
            })
            .collect()
    }

    /// Whether this replica holds host `name`'s lease now.
    pub fn owns(&self, name: &str) -> bool {
        self.owned.lock().expect("owned hosts").contains(name)
    }

    /// The hosts this replica holds the lease of, in configuration order.
    pub fn owned(&self) -> Vec<&Host> {
        let owned = self.owned.lock().expect("owned hosts");
        self.hosts
            .iter()
            .filter(|h| owned.contains(h.name()))
            .collect()
    }

    fn set_owned(&self, name: &str, owned: bool) {
        let mut set = self.owned.lock().expect("owned hosts");
        if owned {
            set.insert(name.to_string());
        } else {
            set.remove(name);
        }
    }
}

/// How long `berth serve` waits at start for a fleet host to answer before
/// leaving it to its probes.
const ANSWER_AT_START: std::time::Duration = std::time::Duration::from_secs(3);

fn client_tls(host: &DockerHostConfig) -> Option<ClientTls> {
    match (&host.tls_ca, &host.tls_cert, &host.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    }
}
