//! What a pool's worker looks like: its runner's name, and the container
//! spec (hardening, limits, network, labels). Shared by the hand-off
//! (crate::dispatch::provision) and the warm pools (crate::dispatch::warm),
//! so that a warm container and a cold one are the same container.

use std::collections::BTreeMap;

use crate::config::PoolConfig;
use crate::context::{Context, LABEL_INSTANCE};
use crate::docker::controller::{
    LABEL_GITHUB_JOB_ID, LABEL_HOST, LABEL_JOB, LABEL_POOL, LABEL_REPOSITORY, LABEL_RUNNER,
    WorkerNetwork, WorkerSpec,
};
use crate::store::Job;

/// `berth-<pool>-<job id tail>-<attempt>`: unique per attempt, recognisable
/// by the `berth-` prefix, within GitHub's 64-character limit.
pub fn runner_name(pool: &PoolConfig, job: &Job) -> String {
    let id = job.id.simple().to_string();
    let tail = &id[id.len() - 12..];
    let pool_part: String = pool.name.chars().take(24).collect();
    format!("berth-{pool_part}-{tail}-{}", job.attempts.max(1))
}

/// The container for a job, from its pool's settings and the contract labels.
pub fn worker_spec(ctx: &Context, job: &Job, pool: &PoolConfig, runner_name: &str) -> WorkerSpec {
    let id = job.id.simple().to_string();
    let name = format!("berth-{}-{}", &id[id.len() - 12..], job.attempts.max(1));
    let mut spec = pool_spec(ctx, pool, name);
    if let Some(set) = &job.scale_set {
        spec.labels
            .insert(crate::scaleset::LABEL_SCALE_SET.to_string(), set.clone());
    }
    spec.labels.extend(BTreeMap::from([
        (LABEL_JOB.to_string(), job.id.to_string()),
        (LABEL_POOL.to_string(), job.pool.clone()),
        (LABEL_REPOSITORY.to_string(), job.repository.clone()),
        (
            LABEL_GITHUB_JOB_ID.to_string(),
            job.github_job_id.to_string(),
        ),
        (LABEL_RUNNER.to_string(), runner_name.to_string()),
        (LABEL_HOST.to_string(), ctx.fleet.host_of(job).to_string()),
        (
            LABEL_INSTANCE.to_string(),
            ctx.config.docker.instance.clone(),
        ),
    ]));
    if pool.container_jobs {
        use crate::container_jobs::volumes;
        spec.env.extend(volumes::worker_env(&ctx.config, pool));
        spec.volumes = volumes::worker_mounts(
            &ctx.config.docker.instance,
            pool,
            &job.repository,
            runner_name,
        );
    }
    spec
}

/// A pool's container settings, without any labels but `berth.managed`:
/// shared by job containers and warm ones (crate::dispatch::warm), so both
/// get exactly the same hardening and limits.
pub fn pool_spec(ctx: &Context, pool: &PoolConfig, name: String) -> WorkerSpec {
    let network = if pool.host_network {
        WorkerNetwork::Host
    } else {
        WorkerNetwork::Bridge(ctx.config.docker.network.clone())
    };
    let mut spec = WorkerSpec::new(name, pool.image.clone(), network);
    spec.cpus = pool.cpus;
    spec.memory_bytes = pool.memory.0 as i64;
    spec.pids_limit = pool.pids_limit;
    spec.cap_add = pool.cap_add.clone();
    spec.read_only_rootfs = pool.read_only_rootfs;
    spec.work_folder = if pool.work_folder.starts_with('/') {
        pool.work_folder.clone()
    } else {
        format!("/home/runner/{}", pool.work_folder)
    };
    spec.extra_hosts = ctx.config.docker.extra_hosts.clone();
    spec.env
        .extend(crate::docker::egress::worker_env(&ctx.config.docker));
    spec
}
