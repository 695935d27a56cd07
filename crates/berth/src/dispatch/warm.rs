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
//! [`run`] adopts, at start-up, every recorded warm container on its Docker
//! host (a crashed predecessor's included: it becomes this replica's), then
//! refills every few seconds and after each hand-off. On graceful
//! shutdown it removes the warm containers this replica owns. After a crash
//! they stay recorded, so the next start adopts or replaces them; none is
//! left unaccounted for.
//!
//! # Limits
//!
//! Warm containers are not runners: they do not count against a pool's
//! `max_runners` (or `dispatch.global_max_runners`) when a job is claimed.
//! But the refill never makes one that would take a pool past `max_runners`
//! containers (`warm + active jobs ≤ max_runners`), nor berth past
//! `global_max_runners`, so under full load the warm pools shrink to nothing
//! rather than add containers the host was not sized for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::PoolConfig;
use crate::context::{Context, LABEL_INSTANCE};
use crate::docker::controller::{ContainerStatus, LABEL_POOL, LABEL_WARM, WorkerSpec};
use crate::lifecycle::resources;
use crate::observability::Metrics;
use crate::store::WarmContainer;
use crate::supervise::ComponentHandle;

/// How often the refill loop checks every pool when nothing wakes it (an
/// image re-tag is noticed within this long).
const REFILL_EVERY: Duration = Duration::from_secs(5);

/// How long after a hand-off the refill waits. Creating and starting a
/// container keeps the engine and the CPU busy for hundreds of
/// milliseconds; doing that while the runner that was just handed its config
/// starts would slow exactly the start the warm pool is there to speed up.
pub const REFILL_SETTLE: Duration = Duration::from_millis(300);

/// The warm pools' shared state: each pool's current fingerprint (what a job
/// may take) and the refill loop's wake-up.
#[derive(Default)]
pub struct WarmPools {
    fingerprints: std::sync::Mutex<HashMap<String, String>>,
    wake: Notify,
}

impl WarmPools {
    /// The fingerprint warm containers of `pool` must have to be taken, once
    /// the refill loop has computed it.
    pub fn fingerprint(&self, pool: &str) -> Option<String> {
        self.fingerprints
            .lock()
            .expect("warm fingerprints")
            .get(pool)
            .cloned()
    }

    fn set_fingerprint(&self, pool: &str, fingerprint: Option<String>) {
        let mut map = self.fingerprints.lock().expect("warm fingerprints");
        match fingerprint {
            Some(f) => map.insert(pool.to_string(), f),
            None => map.remove(pool),
        };
    }

    /// Asks the refill loop to run now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Takes a warm container of the job's pool for the job holding
/// `runner_name`, recording it on the job. `None`: the pool has no warm pool
/// or none is ready (the caller creates a container as usual).
pub async fn take(ctx: &Context, pool: &PoolConfig, runner_name: &str) -> Option<(String, bool)> {
    if pool.warm == 0 {
        return None;
    }
    let fingerprint = ctx.warm.fingerprint(&pool.name)?;
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

/// The spec of a warm container of `pool` (name and labels apart, the same
/// spec a job of the pool gets).
pub fn warm_spec(ctx: &Context, pool: &PoolConfig, fingerprint: &str) -> WorkerSpec {
    let suffix = format!("{:08x}", rand::random::<u32>());
    let pool_part: String = pool.name.chars().take(24).collect();
    let mut spec = super::spec::pool_spec(ctx, pool, format!("berth-warm-{pool_part}-{suffix}"));
    spec.labels.extend(BTreeMap::from([
        (LABEL_POOL.to_string(), pool.name.clone()),
        (LABEL_WARM.to_string(), fingerprint.to_string()),
        (
            LABEL_INSTANCE.to_string(),
            ctx.config.docker.instance.clone(),
        ),
    ]));
    spec
}

/// Hash of the image ID and the pool's create body without its labels.
pub fn fingerprint(ctx: &Context, pool: &PoolConfig, image_id: &str) -> String {
    let spec = super::spec::pool_spec(ctx, pool, "berth-fingerprint".into());
    fingerprint_spec(spec, &ctx.config.docker.host, image_id, pool.warm_started)
}

/// The Docker host is part of it: replicas sharing a store but driving
/// different hosts must never take each other's warm containers.
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

/// Adopts what the store records, then keeps every pool's warm pool filled
/// until `shutdown`; then removes this replica's warm containers.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken, status: ComponentHandle) {
    let mut adopted = false;
    loop {
        status.pass_started();
        let mut result = Ok(());
        if !adopted {
            match adopt(&ctx).await {
                Ok(()) => adopted = true,
                Err(e) => {
                    tracing::warn!(error = %e, "adopting warm containers failed; retrying");
                    result = Err(format!("adopting warm containers: {e}"));
                }
            }
        }
        if let Err(e) = refill_once(&ctx, &shutdown).await {
            tracing::warn!(error = %e, "refilling the warm pools failed; retrying");
            result = Err(format!("refilling: {e}"));
        }
        status.pass_finished(result);
        tokio::select! {
            _ = tokio::time::sleep(REFILL_EVERY) => {}
            _ = ctx.warm.wake.notified() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    remove_own(&ctx).await;
}

/// Once, at start-up: the recorded warm containers on this replica's Docker
/// host (of this instance) become this replica's, whoever made them: a
/// crashed predecessor's are kept if their fingerprint matches, else
/// replaced, and removed at this replica's shutdown. Rows of other hosts are
/// left to the replicas there.
async fn adopt(ctx: &Context) -> Result<(), String> {
    let rows = ctx.store.warm_list().await.map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Ok(());
    }
    let here: std::collections::HashSet<String> = ctx
        .docker
        .list_managed()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| ctx.owns(&c.labels))
        .map(|c| c.id)
        .collect();
    let mut adopted = 0;
    for row in rows.iter().filter(|r| here.contains(&r.container_id)) {
        if ctx
            .store
            .warm_adopt(&row.container_id, &ctx.replica_id)
            .await
            .map_err(|e| e.to_string())?
        {
            adopted += 1;
        }
    }
    if adopted > 0 {
        tracing::info!(adopted, "adopted recorded warm containers");
    }
    Ok(())
}

/// One pass: drop dead or stale warm containers, create missing ones.
pub async fn refill_once(ctx: &Context, shutdown: &CancellationToken) -> Result<(), String> {
    // The store first, then Docker: a row is written after its container
    // exists, so every row read here has its container in the list below.
    let rows = ctx.store.warm_list().await.map_err(|e| e.to_string())?;
    if rows.is_empty() && ctx.config.pools.iter().all(|p| p.warm == 0) {
        // No warm pool, nothing left of one: no Docker list, no job count.
        return Ok(());
    }
    let containers: HashMap<String, ContainerStatus> = ctx
        .docker
        .list_managed()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| ctx.owns(&c.labels))
        .map(|c| (c.id, c.status))
        .collect();
    let mut busy: HashMap<String, i64> = HashMap::new();
    for count in ctx.store.job_counts().await.map_err(|e| e.to_string())? {
        if count.state.is_active() {
            *busy.entry(count.pool).or_default() += count.count;
        }
    }

    let mut current: HashMap<&str, String> = HashMap::new();
    for pool in ctx.config.pools.iter().filter(|p| p.warm > 0) {
        match ctx.docker.image_id(&pool.image).await {
            Ok(Some(id)) => {
                current.insert(&pool.name, fingerprint(ctx, pool, &id));
            }
            // No image (yet: a job's pull brings it): no warm pool for now,
            // and nothing made from an image no longer there can be taken.
            Ok(None) => {}
            // A Docker hiccup says nothing about the image: keep what was
            // known, rather than throw the warm containers away.
            Err(e) => {
                tracing::warn!(pool = %pool.name, error = %e, "inspecting the worker image failed");
                if let Some(known) = ctx.warm.fingerprint(&pool.name) {
                    current.insert(&pool.name, known);
                }
            }
        }
        ctx.warm
            .set_fingerprint(&pool.name, current.get(pool.name.as_str()).cloned());
    }

    let mut ready: HashMap<&str, u32> = HashMap::new();
    for row in &rows {
        let current_print = current.get(row.pool.as_str()) == Some(&row.fingerprint);
        // Another replica's rows are its to replace (it may run another
        // configuration during a rolling upgrade, or drive another Docker
        // host); one that dies is struck off by whichever watcher sees it
        // exit (crate::lifecycle::exit).
        if row.owner == ctx.replica_id {
            let alive = matches!(
                containers.get(&row.container_id),
                Some(ContainerStatus::Created | ContainerStatus::Running)
            );
            if !alive || !current_print {
                discard(ctx, &row.container_id, if alive { "stale" } else { "gone" }).await;
                continue;
            }
        }
        if current_print {
            *ready.entry(row.pool.as_str()).or_default() += 1;
        }
    }

    // The host's cap: every container berth keeps (busy or warm) within
    // `dispatch.global_max_runners`, as each pool's within its `max_runners`.
    let mut global_room = i64::from(ctx.config.dispatch.global_max_runners)
        - busy.values().sum::<i64>()
        - ready.values().map(|n| i64::from(*n)).sum::<i64>();
    for pool in &ctx.config.pools {
        let have = ready.get(pool.name.as_str()).copied().unwrap_or(0);
        let Some(fingerprint) = current.get(pool.name.as_str()) else {
            ctx.metrics
                .warm_containers
                .get_or_create(&Metrics::pool(&pool.name))
                .set(i64::from(have));
            continue;
        };
        let active = busy.get(&pool.name).copied().unwrap_or(0);
        let room = (i64::from(pool.max_runners) - active - i64::from(have)).max(0);
        let want = i64::from(pool.warm.saturating_sub(have))
            .min(room)
            .min(global_room.max(0));
        global_room -= want;
        let mut made = 0;
        for _ in 0..want {
            if shutdown.is_cancelled() {
                break;
            }
            match make(ctx, pool, fingerprint).await {
                Ok(()) => made += 1,
                Err(e) => {
                    tracing::warn!(pool = %pool.name, error = %e, "creating a warm container failed");
                    break;
                }
            }
        }
        ctx.metrics
            .warm_containers
            .get_or_create(&Metrics::pool(&pool.name))
            .set(i64::from(have) + made);
    }
    Ok(())
}

/// Creates (and maybe starts) one warm container and records it.
async fn make(ctx: &Context, pool: &PoolConfig, fingerprint: &str) -> Result<(), String> {
    let spec = warm_spec(ctx, pool, fingerprint);
    let id = ctx
        .docker
        .create_worker(&spec)
        .await
        .map_err(|e| e.to_string())?;
    let ready = async {
        if pool.warm_started {
            ctx.docker
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
            })
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(e) = ready.await {
        // Not recorded: nobody can take it, so removing it is safe.
        resources::remove_container(ctx, &id).await;
        return Err(e);
    }
    tracing::debug!(pool = %pool.name, container_id = %id, started = pool.warm_started, "warm container ready");
    Ok(())
}

/// Removes a warm container, if it is still free: the row's deletion is the
/// claim on it, so one a dispatcher took meanwhile is left to its job.
async fn discard(ctx: &Context, container_id: &str, why: &str) {
    match ctx.store.warm_delete(container_id).await {
        Ok(true) => {
            tracing::info!(container_id, why, "removing a warm container");
            resources::remove_container(ctx, container_id).await;
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
    let own: Vec<_> = rows
        .into_iter()
        .filter(|r| r.owner == ctx.replica_id)
        .collect();
    let removals = own
        .iter()
        .map(|row| discard(ctx, &row.container_id, "shutdown"));
    futures::future::join_all(removals).await;
    for pool in &ctx.config.pools {
        ctx.metrics
            .warm_containers
            .get_or_create(&Metrics::pool(&pool.name))
            .set(0);
    }
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
