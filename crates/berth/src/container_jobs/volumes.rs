//! The volumes a container job's worker is made with, and its settings.
//!
//! The runner in the worker writes the job's files below its work folder
//! and names those folders as the sources of the job container's mounts
//! (`_work` → `/__w`, `_work/_temp/_github_home` → `/github/home`, the
//! workspace → `/github/workspace`…). berth mounts nothing of the Docker
//! host, so each of those folders is a volume of its own, mounted into the
//! worker at the folder and into the job's containers at the target the
//! runner asks for. Docker engines before API 1.45 cannot mount a part of a
//! volume, hence one volume per folder rather than one for the work folder.
//!
//! The volumes are tmpfs (memory, capped at `containers.workspace_size`,
//! owned by the worker's user): a job's files never touch the host's disk
//! and vanish with the job. The runner's externals (its bundled Node, which
//! JavaScript actions run with inside the job container) come from one
//! read-only volume per worker image and host, filled by Docker from the
//! image the first time a worker mounts it.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::policy::job_volume_folders;
use crate::config::{Config, PoolConfig};
use crate::docker::controller::{
    Controller, DockerError, LABEL_JOB, LABEL_ROLE, LABEL_RUNNER, VolumeMount,
};

/// The hook the worker images ship: a script the runner starts with `bash`
/// or `sh` (it takes only `.js`, `.sh` or `.ps1`), which execs `berth hook`.
pub const HOOK_SCRIPT: &str = "/home/runner/berth-hook.sh";

/// Where the runner keeps its externals in the worker images.
pub const EXTERNALS_FOLDER: &str = "/home/runner/externals";

/// The small volumes' cap: `$HOME`, the event file, file commands.
const SMALL_VOLUME_BYTES: u64 = 64 * 1024 * 1024;

/// The name of the worker's volume `kind` (`work`, `temp`, `workspace`…).
pub fn volume_name(runner: &str, kind: &str) -> String {
    format!("{runner}-{kind}")
}

/// The externals volume of a worker image, for one berth installation
/// (`docker.instance`): each installation's reconciler removes only its own.
pub fn externals_volume(instance: &str, image: &str) -> String {
    let digest = hex::encode(Sha256::digest(format!("{instance}\n{image}").as_bytes()));
    format!("berth-externals-{}", &digest[..16])
}

/// The worker's work folder as an absolute path.
pub fn work_folder(pool: &PoolConfig) -> String {
    if pool.work_folder.starts_with('/') {
        pool.work_folder.clone()
    } else {
        format!("/home/runner/{}", pool.work_folder)
    }
}

/// The worker's mounts for a container-jobs pool: its folders' volumes and
/// the externals.
pub fn worker_mounts(
    instance: &str,
    pool: &PoolConfig,
    repository: &str,
    runner: &str,
) -> Vec<VolumeMount> {
    let mut mounts: Vec<VolumeMount> = job_volume_folders(&work_folder(pool), repository)
        .into_iter()
        .map(|(folder, kind)| VolumeMount {
            name: volume_name(runner, kind),
            target: folder,
            read_only: false,
        })
        .collect();
    mounts.push(VolumeMount {
        name: externals_volume(instance, &pool.image),
        target: EXTERNALS_FOLDER.to_owned(),
        read_only: true,
    });
    mounts
}

/// The worker's environment for a container-jobs pool: the runner's hook
/// settings and the URL `berth hook` calls. The credential is not here: it
/// comes over stdin (docs/worker-image.md).
pub fn worker_env(config: &Config, pool: &PoolConfig) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        (
            "ACTIONS_RUNNER_CONTAINER_HOOKS".to_owned(),
            HOOK_SCRIPT.to_owned(),
        ),
        (
            "ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER".to_owned(),
            pool.containers.require_job_container.to_string(),
        ),
    ]);
    if let Some(url) = &config.server.worker_url {
        env.insert(
            "BERTH_HOOK_URL".to_owned(),
            url.trim_end_matches('/').to_owned(),
        );
    }
    env
}

/// Creates the worker's volumes (idempotent), labelled with the job and the
/// runner so that the reconcilers find them once the job is over.
pub async fn create_worker_volumes(
    docker: &Controller,
    pool: &PoolConfig,
    labels: &BTreeMap<String, String>,
    mounts: &[VolumeMount],
    uid_gid: (u32, u32),
) -> Result<(), DockerError> {
    let instance = labels
        .get(crate::context::LABEL_INSTANCE)
        .cloned()
        .unwrap_or_default();
    let externals = externals_volume(&instance, &pool.image);
    for mount in mounts {
        if mount.name == externals {
            let labels = BTreeMap::from([
                (LABEL_ROLE.to_owned(), "externals".to_owned()),
                (crate::context::LABEL_INSTANCE.to_owned(), instance.clone()),
            ]);
            docker.volume_create(&mount.name, &labels, None).await?;
            continue;
        }
        let mut labels: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| k.starts_with("berth."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_ROLE.to_owned(), "work".to_owned());
        let small = ["home", "workflow", "file-commands"]
            .iter()
            .any(|kind| mount.name.ends_with(&format!("-{kind}")));
        let size = if small {
            SMALL_VOLUME_BYTES
        } else {
            pool.containers.workspace_size.0
        };
        debug_assert!(labels.contains_key(LABEL_JOB) && labels.contains_key(LABEL_RUNNER));
        docker
            .volume_create(
                &mount.name,
                &labels,
                Some((size, uid_gid.0, uid_gid.1, "0755")),
            )
            .await?;
    }
    Ok(())
}
