//! Warm pools: per pool, `warm = N` hardened containers created (and with
//! `warm_started`, started and blocked reading stdin) before any job needs
//! them, so a claimed job skips the container create, and the start too.
//!
//! # What a warm container is
//!
//! The same container a cold job gets, made from the same [`WorkerSpec`]
//! (so the same hardening), except for its labels: `berth.managed`,
//! `berth.instance`, `berth.pool` and `berth.warm=<fingerprint>`, and no
//! `berth.job`, `berth.runner` or repository. It holds no credential: the JIT
//! config is minted for the job that takes it and written to its stdin at
//! hand-off, exactly as for a cold container.
//!
//! # Who knows which container is whose
//!
//! Labels cannot change after create, so the store keeps the binding: a
//! row in `warm_containers` means "warm, free"; taking one deletes that row
//! and writes the id onto the job in one transaction
//! ([`Store::warm_take`](crate::store::Store::warm_take)). So every warm
//! container is, at any instant, either in the warm table or on a job; the
//! orphan reconciler treats both as owned and removes a `berth.warm`
//! container in neither (a crash between create and record) after its grace.
//!
//! # Fingerprints
//!
//! The fingerprint hashes the Docker host, the image's ID (not its name: a
//! re-tagged image is a new image) and the pool's whole create body apart
//! from name and labels.
//! A job only takes a warm container whose fingerprint is the pool's current
//! one; the refill loop removes the others and makes new ones. So changing a
//! pool's image or settings (and restarting berth), or re-pointing its tag,
//! replaces its warm containers.
//!
//! # Lifecycle
//!
//! [`run`] adopts every recorded warm container on the hosts its replica
//! owns (a crashed predecessor's included: it becomes this replica's), and
//! refills every few seconds and after each hand-off. On graceful
//! shutdown it removes the warm containers this replica owns. After a crash
//! they stay recorded, so the next start adopts or replaces them; none is
//! left unaccounted for.
//!
//! # Hosts
//!
//! `warm` is per host: every `up`, `active` host that offers the pool's
//! `host_labels` keeps up to `warm` of the pool's containers, so a job finds
//! one wherever it is placed. The replica owning a host (crate::fleet)
//! refills it and adopts the rows recorded there; a cordoned host keeps what
//! it has, a draining or down host keeps none.
//!
//! # Limits
//!
//! Warm containers are not runners: they do not count against a pool's
//! `max_runners`, a host's slots (or `dispatch.global_max_runners`) when a
//! job is claimed. But the refill never makes one that would take a pool
//! past `max_runners` containers over the fleet (`warm + active jobs ≤
//! max_runners`), a host past its slots, nor berth past
//! `global_max_runners`, so under full load the warm pools shrink to nothing
//! rather than add containers the hosts were not sized for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::PoolConfig;
use crate::context::{Context, LABEL_INSTANCE};
use crate::docker::controller::{
    ContainerStatus, Controller, LABEL_HOST, LABEL_POOL, LABEL_WARM, WorkerSpec,
};
use crate::fleet::Host;
use crate::lifecycle::resources;
use crate::observability::Metrics;
use crate::store::{HostAdmin, HostHealth, HostRecord, WarmContainer};
use crate::supervise::ComponentHandle;

/// How often the refill loop checks every pool when nothing wakes it (an
/// image re-tag is noticed within this long).
const REFILL_EVERY: Duration = Duration::from_secs(5);

/// How long after a hand-off the refill waits. Creating and starting a
/// container keeps the engine and the CPU busy for hundreds of
/// milliseconds; doing that while the runner that was just handed its config
/// starts would slow exactly the start the warm pool is there to speed up.
pub const REFILL_SETTLE: Duration = Duration::from_millis(300);

/// The warm pools' shared state: each (host, pool)'s current fingerprint
/// (what a job placed on the host may take) and the refill loop's wake-up.
#[derive(Default)]
pub struct WarmPools {
    fingerprints: std::sync::Mutex<HashMap<(String, String), String>>,
    wake: Notify,
}

impl WarmPools {
    /// The fingerprint warm containers of `pool` on `host` must have to be
    /// taken, once the refill loop (of the host's owner) has computed it.
    pub fn fingerprint(&self, host: &str, pool: &str) -> Option<String> {
        self.fingerprints
            .lock()
            .expect("warm fingerprints")
            .get(&(host.to_string(), pool.to_string()))
            .cloned()
    }

    fn set_fingerprint(&self, host: &str, pool: &str, fingerprint: Option<String>) {
        let mut map = self.fingerprints.lock().expect("warm fingerprints");
        let key = (host.to_string(), pool.to_string());
        match fingerprint {
            Some(f) => map.insert(key, f),
            None => map.remove(&key),
        };
    }

    /// Asks the refill loop to run now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Takes a warm container of the job's pool on `host` for the job holding
/// `runner_name`, recording it on the job. `None`: the pool has no warm pool
/// there or none is ready (the caller creates a container as usual).
///
/// The fingerprint is the host's owner's; another replica computes it the
/// same way from the same configuration and the host's image ID.
pub async fn take(
    ctx: &Context,
    host: &str,
    pool: &PoolConfig,
    runner_name: &str,
) -> Option<(String, bool)> {
    if pool.warm == 0 {
        return None;
    }
    let fingerprint = match ctx.warm.fingerprint(host, &pool.name) {
        Some(known) => known,
        None => {
            let docker = ctx.fleet.docker(host).ok()?;
            let image_id = docker.image_id(&pool.image).await.ok()??;
            fingerprint(ctx, host, pool, &image_id)
        }
    };
    let taken = match ctx
        .store
        .warm_take(&pool.name, &fingerprint, runner_name)
        .await
    {
        Ok(taken) => taken,
        Err(e) => {
            tracing::warn!(error = %e, "taking a warm container failed; creating one");
            None
        }
    };
    // The refill is woken when the hand-off is over (crate::dispatch::provision).
    ctx.metrics.warm_handoff(&pool.name, taken.is_some());
    taken
}

/// The spec of a warm container of `pool` on `host` (name and labels apart,
/// the same spec a job of the pool gets).
pub fn warm_spec(ctx: &Context, host: &str, pool: &PoolConfig, fingerprint: &str) -> WorkerSpec {
    let suffix = format!("{:08x}", rand::random::<u32>());
    let pool_part: String = pool.name.chars().take(24).collect();
    let mut spec = super::spec::pool_spec(ctx, pool, format!("berth-warm-{pool_part}-{suffix}"));
    spec.labels.extend(BTreeMap::from([
        (LABEL_POOL.to_string(), pool.name.clone()),
        (LABEL_WARM.to_string(), fingerprint.to_string()),
        (LABEL_HOST.to_string(), host.to_string()),
        (
            LABEL_INSTANCE.to_string(),
            ctx.config.docker.instance.clone(),
        ),
    ]));
    spec
}

/// Hash of the host, the image ID and the pool's create body without its
/// labels.
pub fn fingerprint(ctx: &Context, host: &str, pool: &PoolConfig, image_id: &str) -> String {
    let spec = super::spec::pool_spec(ctx, pool, "berth-fingerprint".into());
    let url = ctx.fleet.get(host).map_or("", |h| h.config.url.as_str());
    fingerprint_spec(spec, &format!("{host}\0{url}"), image_id, pool.warm_started)
}

/// The Docker host is part of it: a job placed on one host must never take
/// a warm container on another.
fn fingerprint_spec(mut spec: WorkerSpec, host: &str, image_id: &str, started: bool) -> String {
    // Labels are left out of the hash, but the spec needs one to be valid.
    spec.labels.insert(LABEL_WARM.to_string(), "-".into());
    // A spec Docker would refuse cannot be fingerprinted; its creates fail
    // and say why, so the hash only has to differ from every valid one.
    let mut body = match spec.create_body() {
        Ok(body) => serde_json::to_value(body).unwrap_or_default(),
        Err(e) => serde_json::Value::String(e.to_string()),
    };
    if let Some(map) = body.as_object_mut() {
        map.remove("Labels");
    }
    let mut hash = Sha256::new();
    hash.update(host.as_bytes());
    hash.update([0]);
    hash.update(image_id.as_bytes());
    hash.update([0]);
    hash.update(canonical(&body).as_bytes());
    // Whether the container waits started is part of what a hand-off expects.
    hash.update([u8::from(started)]);
    hex::encode(&hash.finalize()[..12])
}

/// JSON with object keys sorted, so the hash does not depend on map order.
fn canonical(value: &serde_json::Value) -> String {
    use serde_json::Value;
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let sorted: BTreeMap<_, _> =
                    map.iter().map(|(k, v)| (k.clone(), sort(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(value).to_string()
}

/// Keeps the warm pools of the hosts this replica owns filled until
/// `shutdown`; then removes this replica's warm containers.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken, status: ComponentHandle) {
    loop {
        status.pass_started();
        let result = refill_once(&ctx, &shutdown).await.map_err(|e| {
            tracing::warn!(error = %e, "refilling the warm pools failed; retrying");
            format!("refilling: {e}")
        });
        status.pass_finished(result);
        tokio::select! {
            _ = tokio::time::sleep(REFILL_EVERY) => {}
            _ = ctx.warm.wake.notified() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    remove_own(&ctx).await;
}

/// The warm containers of pool `pool` to keep on a host: `warm`, within the
/// pool's `max_runners` (warm and active together, over the fleet), the
/// host's slots (the same) and `dispatch.global_max_runners`.
struct Room {
    pool: HashMap<String, i64>,
    host: HashMap<String, i64>,
    global: i64,
}

/// One pass over the owned hosts: adopt their recorded warm containers,
/// drop dead or stale ones, create missing ones.
///
/// `warm` is per host: each `up`, `active` host that offers the pool's
/// `host_labels` keeps up to `warm` of the pool's containers, so a job finds
/// one wherever it is placed. A cordoned host keeps what it has and gets no
/// new ones; a draining or down host keeps none.
pub async fn refill_once(ctx: &Context, shutdown: &CancellationToken) -> Result<(), String> {
    let owned = ctx.fleet.owned();
    // The store first, then Docker: a row is written after its container
    // exists, so every row read here has its container in the list below.
    let rows = ctx.store.warm_list().await.map_err(|e| e.to_string())?;
    if owned.is_empty() || rows.is_empty() && ctx.config.pools.iter().all(|p| p.warm == 0) {
        // No warm pool, nothing left of one: no Docker list, no job count.
        return Ok(());
    }
    let host_of = |row: &WarmContainer| {
        row.host
            .clone()
            .unwrap_or_else(|| ctx.fleet.first().name().to_string())
    };
    let records: HashMap<String, HostRecord> = ctx
        .store
        .host_list()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|h| (h.name.clone(), h))
        .collect();
    let mut room = Room {
        pool: ctx
            .config
            .pools
            .iter()
            .map(|p| (p.name.clone(), i64::from(p.max_runners)))
            .collect(),
        host: ctx
            .fleet
            .hosts()
            .iter()
            .map(|h| (h.name().to_string(), i64::from(h.config.max_runners)))
            .collect(),
        global: i64::from(ctx.config.dispatch.global_max_runners),
    };
    for (host, pool, n) in ctx.store.host_busy().await.map_err(|e| e.to_string())? {
        *room.pool.entry(pool).or_default() -= n;
        *room.host.entry(host).or_default() -= n;
        room.global -= n;
    }
    for row in &rows {
        *room.pool.entry(row.pool.clone()).or_default() -= 1;
        *room.host.entry(host_of(row)).or_default() -= 1;
        room.global -= 1;
    }
    let mut failures = Vec::new();
    for host in owned {
        let name = host.name();
        let mine: Vec<&WarmContainer> = rows.iter().filter(|r| host_of(r) == name).collect();
        let record = records.get(name);
        let keeps =
            record.is_some_and(|r| r.health == HostHealth::Up && r.admin != HostAdmin::Draining);
        if !keeps && mine.is_empty() {
            continue;
        }
        if let Err(e) = refill_host(ctx, host, record, &mine, &mut room, shutdown).await {
            failures.push(format!("host `{name}`: {e}"));
        }
    }
    publish(ctx).await;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

async fn refill_host(
    ctx: &Context,
    host: &Host,
    record: Option<&HostRecord>,
    rows: &[&WarmContainer],
    room: &mut Room,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let name = host.name();
    let health = record.map_or(HostHealth::Unknown, |r| r.health);
    let admin = record.map_or(HostAdmin::Active, |r| r.admin);
    if health == HostHealth::Down {
        // Nothing to ask of it; its containers are the orphan reconciler's
        // when it answers again, their rows struck off now.
        for row in rows {
            let _ = ctx.store.warm_delete(&row.container_id).await;
        }
        return Ok(());
    }
    let containers: HashMap<String, ContainerStatus> = host
        .docker
        .list_managed()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| ctx.owns(&c.labels))
        .map(|c| (c.id, c.status))
        .collect();

    let mut current: HashMap<&str, String> = HashMap::new();
    for pool in ctx.config.pools.iter().filter(|p| p.warm > 0) {
        if !host.config.offers(&pool.host_labels) {
            continue;
        }
        match host.docker.image_id(&pool.image).await {
            Ok(Some(id)) => {
                current.insert(&pool.name, fingerprint(ctx, name, pool, &id));
            }
            // No image (yet: a job's pull brings it): no warm pool for now,
            // and nothing made from an image no longer there can be taken.
            Ok(None) => {}
            // A Docker hiccup says nothing about the image: keep what was
            // known, rather than throw the warm containers away.
            Err(e) => {
                tracing::warn!(host = name, pool = %pool.name, error = %e, "inspecting the worker image failed");
                if let Some(known) = ctx.warm.fingerprint(name, &pool.name) {
                    current.insert(&pool.name, known);
                }
            }
        }
        ctx.warm
            .set_fingerprint(name, &pool.name, current.get(pool.name.as_str()).cloned());
    }

    let mut ready: HashMap<&str, u32> = HashMap::new();
    for row in rows {
        // This replica owns the host, so every row of it is this replica's
        // to keep or replace, whoever made it (a crashed predecessor).
        if row.owner != ctx.replica_id {
            let _ = ctx
                .store
                .warm_adopt(&row.container_id, &ctx.replica_id)
                .await;
        }
        let current_print = current.get(row.pool.as_str()) == Some(&row.fingerprint);
        let alive = matches!(
            containers.get(&row.container_id),
            Some(ContainerStatus::Created | ContainerStatus::Running)
        );
        if alive && current_print && admin == HostAdmin::Draining {
            // A draining host gets no new jobs, so its warm containers go
            // before their rows: `drained` (no rows left) then means no
            // container is left either. A job placed before the drain that
            // takes one meanwhile finds it gone and is requeued.
            tracing::info!(container_id = %row.container_id, "removing a warm container (draining)");
            if resources::remove_container(&host.docker, &row.container_id).await {
                let _ = ctx.store.warm_delete(&row.container_id).await;
            }
            continue;
        }
        if !alive || !current_print || admin == HostAdmin::Draining {
            let why = if !alive {
                "gone"
            } else if current_print {
                "draining"
            } else {
                "stale"
            };
            discard(ctx, &host.docker, &row.container_id, why).await;
            continue;
        }
        *ready.entry(row.pool.as_str()).or_default() += 1;
    }
    if health != HostHealth::Up || admin != HostAdmin::Active {
        return Ok(());
    }

    for pool in &ctx.config.pools {
        let Some(fingerprint) = current.get(pool.name.as_str()) else {
            continue;
        };
        let have = ready.get(pool.name.as_str()).copied().unwrap_or(0);
        let pool_room = room.pool.get(&pool.name).copied().unwrap_or(0);
        let host_room = room.host.get(name).copied().unwrap_or(0);
        let want = i64::from(pool.warm.saturating_sub(have))
            .min(pool_room)
            .min(host_room)
            .min(room.global)
            .max(0);
        for _ in 0..want {
            if shutdown.is_cancelled() {
                break;
            }
            match make(ctx, host, pool, fingerprint).await {
                Ok(()) => {
                    *room.pool.entry(pool.name.clone()).or_default() -= 1;
                    *room.host.entry(name.to_string()).or_default() -= 1;
                    room.global -= 1;
                }
                Err(e) => {
                    tracing::warn!(host = name, pool = %pool.name, error = %e, "creating a warm container failed");
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Sets the warm-container gauges from the store (every host's, whoever
/// owns it).
async fn publish(ctx: &Context) {
    let Ok(rows) = ctx.store.warm_list().await else {
        return;
    };
    let mut per_pool: HashMap<&str, i64> = HashMap::new();
    for row in &rows {
        *per_pool.entry(row.pool.as_str()).or_default() += 1;
    }
    for pool in &ctx.config.pools {
        ctx.metrics
            .warm_containers
            .get_or_create(&Metrics::pool(&pool.name))
            .set(per_pool.get(pool.name.as_str()).copied().unwrap_or(0));
    }
}

/// Creates (and maybe starts) one warm container on `host` and records it.
async fn make(
    ctx: &Context,
    host: &Host,
    pool: &PoolConfig,
    fingerprint: &str,
) -> Result<(), String> {
    let spec = warm_spec(ctx, host.name(), pool, fingerprint);
    let id = host
        .docker
        .create_worker(&spec)
        .await
        .map_err(|e| e.to_string())?;
    let ready = async {
        if pool.warm_started {
            host.docker
                .start_waiting(&id)
                .await
                .map_err(|e| e.to_string())?;
        }
        ctx.store
            .warm_insert(&WarmContainer {
                container_id: id.clone(),
                pool: pool.name.clone(),
                fingerprint: fingerprint.to_string(),
                owner: ctx.replica_id.clone(),
                started: pool.warm_started,
                created_at: ctx.store.now(),
                host: Some(host.name().to_string()),
            })
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(e) = ready.await {
        // Not recorded: nobody can take it, so removing it is safe.
        resources::remove_container(&host.docker, &id).await;
        return Err(e);
    }
    tracing::debug!(host = host.name(), pool = %pool.name, container_id = %id, started = pool.warm_started, "warm container ready");
    Ok(())
}

/// Removes a warm container, if it is still free: the row's deletion is the
/// claim on it, so one a dispatcher took meanwhile is left to its job.
async fn discard(ctx: &Context, docker: &Controller, container_id: &str, why: &str) {
    match ctx.store.warm_delete(container_id).await {
        Ok(true) => {
            tracing::info!(container_id, why, "removing a warm container");
            resources::remove_container(docker, container_id).await;
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(container_id, error = %e, "forgetting a warm container failed"),
    }
}

/// Graceful shutdown: remove the warm containers this replica owns (other
/// replicas keep theirs).
pub async fn remove_own(ctx: &Context) {
    let rows = match ctx.store.warm_list().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "listing warm containers at shutdown failed; the next start adopts them");
            return;
        }
    };
    let removals = rows
        .iter()
        .filter(|r| r.owner == ctx.replica_id)
        .filter_map(|row| {
            let host = row
                .host
                .as_deref()
                .unwrap_or_else(|| ctx.fleet.first().name());
            let docker = ctx.fleet.docker(host).ok()?;
            Some(discard(ctx, docker, &row.container_id, "shutdown"))
        });
    futures::future::join_all(removals).await;
    publish(ctx).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::controller::WorkerNetwork;

    fn spec() -> WorkerSpec {
        let mut spec = WorkerSpec::new("berth-x", "img", WorkerNetwork::Bridge("berth".into()));
        spec.tmpfs.tmp_bytes = 1 << 20;
        spec.read_only_rootfs = true;
        spec
    }

    #[test]
    fn fingerprints_follow_image_and_settings_but_not_names_or_labels() {
        let base = fingerprint_spec(spec(), "h", "sha256:a", true);
        assert_eq!(base, fingerprint_spec(spec(), "h", "sha256:a", true));
        let mut renamed = spec();
        renamed.name = "berth-y".into();
        renamed.labels.insert("berth.pool".into(), "other".into());
        assert_eq!(base, fingerprint_spec(renamed, "h", "sha256:a", true));

        assert_ne!(base, fingerprint_spec(spec(), "h", "sha256:b", true));
        assert_ne!(
            base,
            fingerprint_spec(spec(), "other-host", "sha256:a", true)
        );
        assert_ne!(base, fingerprint_spec(spec(), "h", "sha256:a", false));
        let mut changed = spec();
        changed.pids_limit = 300;
        assert_ne!(base, fingerprint_spec(changed, "h", "sha256:a", true));
        let mut changed = spec();
        changed.memory_bytes *= 2;
        assert_ne!(base, fingerprint_spec(changed, "h", "sha256:a", true));
    }
}
