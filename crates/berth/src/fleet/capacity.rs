//! The fleet's capacity, for operators and autoscalers: per host its state,
//! slots, busy slots and warm containers; per pool the jobs waiting; and per
//! host label set the number of hosts the work in hand needs.
//!
//! # The desired-hosts formula
//!
//! For each set of host labels some pool asks for (`host_labels`, sorted;
//! the empty set for pools that ask for none):
//!
//! ```text
//! demand(L)        = Σ over pools with host_labels = L of
//!                    min(active jobs + queued jobs, max_runners) × host_slots
//! slots_per_host(L) = the largest max_runners among hosts offering L
//!                     (none configured: dispatch.global_max_runners)
//! desired_hosts(L) = ceil(demand(L) / slots_per_host(L))
//! ```
//!
//! Active jobs hold a slot, queued ones want one, and a pool never runs more
//! than its `max_runners`, so more hosts would not help it. A host offering
//! several label sets is counted in each (a `gpu` host may also run jobs
//! that ask for nothing): the figure errs towards capacity.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::store::{HostAdmin, HostHealth, JobState, StoreError};

/// One host, as `GET /v1/hosts` and `berth hosts list` show it (read back
/// by the CLI).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    pub url: String,
    pub labels: Vec<String>,
    pub health: HostHealth,
    pub admin: HostAdmin,
    pub slots: u32,
    pub busy: i64,
    /// Slots a job could take now: 0 unless `up` and `active`.
    pub free: i64,
    pub warm: i64,
    pub weight: f64,
    /// The replica holding the host lease (watching it), if any holds it.
    pub owner: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_probe_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub down_since: Option<time::OffsetDateTime>,
    pub engine_version: Option<String>,
    pub free_disk_bytes: Option<i64>,
    pub probe_error: Option<String>,
    /// Draining and nothing left on it: safe to remove.
    pub drained: bool,
}

/// What a label set needs (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesiredHosts {
    /// The host labels, sorted, joined with `,` (empty: no labels).
    pub host_labels: String,
    pub demand: i64,
    pub slots_per_host: u32,
    pub desired_hosts: i64,
    /// Hosts offering these labels that are up and active now.
    pub available_hosts: i64,
}

/// `GET /v1/fleet`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    pub placement: crate::config::Placement,
    pub hosts: Vec<HostView>,
    pub free_slots: i64,
    /// Queued jobs per pool: waiting for a slot.
    pub waiting: BTreeMap<String, i64>,
    pub desired: Vec<DesiredHosts>,
}

impl FleetView {
    /// The jobs waiting per pool (`linux 3`) and the hosts needed per label
    /// set (`2 for gpu (1 available)`), each name passed through `escape`
    /// (HTML for the dashboard, printable text for the CLI).
    pub fn summary(&self, escape: impl Fn(&str) -> String) -> (Vec<String>, Vec<String>) {
        let waiting = self
            .waiting
            .iter()
            .map(|(pool, n)| format!("{} {n}", escape(pool)))
            .collect();
        let needed = self
            .desired
            .iter()
            .map(|d| {
                let labels = if d.host_labels.is_empty() {
                    "no host labels".to_string()
                } else {
                    escape(&d.host_labels)
                };
                format!(
                    "{} for {labels} ({} available)",
                    d.desired_hosts, d.available_hosts
                )
            })
            .collect();
        (waiting, needed)
    }
}

/// Reads the fleet's state from the store.
pub async fn view(ctx: &Context) -> Result<FleetView, StoreError> {
    let records: BTreeMap<String, crate::store::HostRecord> = ctx
        .store
        .host_list()
        .await?
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    let mut busy: BTreeMap<String, i64> = BTreeMap::new();
    for (host, _pool, n) in ctx.store.host_busy().await? {
        *busy.entry(host).or_default() += n;
    }
    let mut warm: BTreeMap<String, i64> = BTreeMap::new();
    for row in ctx.store.warm_list().await? {
        let host = row
            .host
            .unwrap_or_else(|| ctx.fleet.first().name().to_string());
        *warm.entry(host).or_default() += 1;
    }
    let now = ctx.store.now();
    let mut hosts = Vec::new();
    for host in ctx.fleet.hosts() {
        let name = host.name();
        let record = records.get(name);
        let health = record.map_or(HostHealth::Unknown, |r| r.health);
        let admin = record.map_or(HostAdmin::Active, |r| r.admin);
        let slots = host.config.max_runners;
        let busy_here = busy.get(name).copied().unwrap_or(0);
        let warm_here = warm.get(name).copied().unwrap_or(0);
        let takes_jobs = health == HostHealth::Up && admin == HostAdmin::Active;
        let owner = record
            .filter(|r| r.lease_expires_at.is_some_and(|t| t > now))
            .and_then(|r| r.lease_owner.clone());
        hosts.push(HostView {
            name: name.to_string(),
            url: host.config.url.clone(),
            labels: host.config.labels.clone(),
            health,
            admin,
            slots,
            busy: busy_here,
            free: if takes_jobs {
                (i64::from(slots) - busy_here).max(0)
            } else {
                0
            },
            warm: warm_here,
            weight: host.config.weight,
            owner,
            last_probe_at: record.and_then(|r| r.last_probe_at),
            down_since: record.and_then(|r| r.down_since),
            engine_version: record.and_then(|r| r.engine_version.clone()),
            free_disk_bytes: record.and_then(|r| r.free_disk_bytes),
            probe_error: record.and_then(|r| r.probe_error.clone()),
            drained: admin == HostAdmin::Draining && busy_here == 0 && warm_here == 0,
        });
    }

    let counts = ctx.store.job_counts().await?;
    let of = |pool: &str, states: &[JobState]| -> i64 {
        counts
            .iter()
            .filter(|c| c.pool == pool && states.contains(&c.state))
            .map(|c| c.count)
            .sum()
    };
    let mut waiting = BTreeMap::new();
    let mut demand: BTreeMap<String, (BTreeSet<String>, i64)> = BTreeMap::new();
    for pool in &ctx.config.pools {
        let queued = of(&pool.name, &[JobState::Queued]);
        waiting.insert(pool.name.clone(), queued);
        // Each job takes the pool's `host_slots` of its host's slots.
        let wanted = (of(&pool.name, JobState::ACTIVE) + queued).min(i64::from(pool.max_runners))
            * i64::from(pool.host_slots.max(1));
        let labels: BTreeSet<String> = pool
            .host_labels
            .iter()
            .map(|l| l.to_ascii_lowercase())
            .collect();
        let key = labels.iter().cloned().collect::<Vec<_>>().join(",");
        demand.entry(key).or_insert_with(|| (labels, 0)).1 += wanted;
    }
    let mut desired = Vec::new();
    for (key, (labels, demand)) in demand {
        let wanted: Vec<String> = labels.into_iter().collect();
        let offering: Vec<&HostView> = hosts
            .iter()
            .filter(|h| {
                ctx.fleet
                    .get(&h.name)
                    .is_some_and(|c| c.config.offers(&wanted))
            })
            .collect();
        let slots_per_host = offering
            .iter()
            .map(|h| h.slots)
            .max()
            .unwrap_or(ctx.config.dispatch.global_max_runners)
            .max(1);
        desired.push(DesiredHosts {
            host_labels: key,
            demand,
            slots_per_host,
            desired_hosts: (demand + i64::from(slots_per_host) - 1) / i64::from(slots_per_host),
            available_hosts: offering
                .iter()
                .filter(|h| h.health == HostHealth::Up && h.admin == HostAdmin::Active)
                .count() as i64,
        });
    }
    Ok(FleetView {
        placement: ctx.config.fleet.placement,
        free_slots: hosts.iter().map(|h| h.free).sum(),
        hosts,
        waiting,
        desired,
    })
}

/// Sets the fleet's gauges from a view (at each `/metrics` scrape).
pub fn publish(ctx: &Context, view: &FleetView) {
    let m = &ctx.metrics;
    for host in &view.hosts {
        m.set_host(
            &host.name,
            host.health == HostHealth::Up,
            host.admin != HostAdmin::Active,
            i64::from(host.slots),
            host.busy,
            host.warm,
        );
    }
    m.fleet_free_slots.set(view.free_slots);
    for (pool, n) in &view.waiting {
        m.fleet_jobs_waiting
            .get_or_create(&crate::observability::Metrics::pool(pool))
            .set(*n);
    }
    for d in &view.desired {
        m.fleet_desired_hosts
            .get_or_create(&crate::observability::metrics::HostLabelsLabels {
                host_labels: d.host_labels.clone(),
            })
            .set(d.desired_hosts);
    }
}
