//! Workers as berth runs them, checked on real containers: from outside
//! (`docker inspect`) and from inside (a job's steps probe their own
//! process and try to reach the Docker API).

mod common;

use std::time::Duration;

use berth::store::JobState;
use common::{Berth, World};
use serde_json::Value;

const PROBE: &[&str] = &[
    "echo uid=$(id -u) gid=$(id -g)",
    "grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status",
    "test -e /var/run/docker.sock && echo docker-socket=present || echo docker-socket=absent",
    "ls /run /var/run 2>/dev/null | grep -i docker && echo docker-files=present || echo docker-files=absent",
    // The Docker API over TCP on the host (2375/2376) and through the
    // host-gateway name: both must be unreachable.
    "for target in 'host.docker.internal 2375' 'host.docker.internal 2376' '172.17.0.1 2375' 'host.docker.internal PROXY_PORT'; do set -- $target; if nc -w 2 $1 $2 </dev/null >/dev/null 2>&1; then echo docker-api=$1:$2-reachable; else echo docker-api=$1:$2-unreachable; fi; done",
    // The probe itself works: the simulator, on the host, is reachable.
    // The probe itself works: the simulator, on the host, is reachable (SIM_PORT is filled in).
    "nc -w 2 host.docker.internal SIM_PORT </dev/null >/dev/null 2>&1 && echo probe=works || echo probe=broken",
    "touch $HOME/probe-home 2>/dev/null && echo rootfs=writable || echo rootfs=read-only",
    "touch /tmp/probe && echo tmp=writable",
    "touch $HOME/_work/probe && echo work=writable",
    "grep -c . /proc/mounts | sed 's/^/mounts=/'; grep -E ' /(etc|home|host|srv|root|var/lib)' /proc/mounts | grep -v -E 'tmpfs|overlay|/etc/(hosts|hostname|resolv.conf)' || echo host-paths=none",
    "sleep 2",
];

async fn run_probe(read_only: bool, warm: bool) -> (String, Value) {
    let world = World::new().await;
    let mut config = world.config("");
    config.pools[0].read_only_rootfs = read_only;
    config.pools[0].pids_limit = 256;
    if warm {
        // Started ahead and waiting on stdin: the hand-off that differs most
        // from a cold start.
        config.pools[0].warm = 1;
        config.pools[0].warm_started = true;
    }
    let berth = Berth::start(&world, config).await;
    if warm {
        common::eventually("a warm container", Duration::from_secs(30), || async {
            berth.store().warm_list().await.unwrap().len() == 1
        })
        .await;
    }
    let sim_port = world
        .sim
        .public_url()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let steps: Vec<String> = PROBE
        .iter()
        .map(|s| s.replace("SIM_PORT", &sim_port))
        .collect();
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let gh_job = world.queue(&steps);
    let running = berth
        .wait_state(gh_job, JobState::Running, Duration::from_secs(60))
        .await;
    let out = std::process::Command::new("docker")
        .args(["inspect", running.container_id.as_deref().unwrap()])
        .output()
        .unwrap();
    let inspect: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = berth.wait_terminal(gh_job, Duration::from_secs(60)).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    let log = world.sim.job_log(gh_job).unwrap();
    berth.stop().await;
    (log, inspect[0].clone())
}

fn assert_hardened_from_outside(c: &Value) {
    let host = &c["HostConfig"];
    assert_eq!(c["Config"]["User"], "1001:1001");
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert!(host["CapAdd"].is_null() || host["CapAdd"].as_array().unwrap().is_empty());
    assert_eq!(host["Privileged"], false);
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(host["PidsLimit"], 256);
    assert_eq!(host["Memory"], 256 * 1024 * 1024);
    assert_eq!(host["MemorySwap"], 256 * 1024 * 1024);
    assert_eq!(host["NanoCpus"], 1_000_000_000i64);
    assert!(
        host["Binds"].is_null() || host["Binds"].as_array().unwrap().is_empty(),
        "{host}"
    );
    assert!(
        c["Mounts"].as_array().unwrap().is_empty(),
        "no volumes or host paths: {}",
        c["Mounts"]
    );
    assert!(host["Devices"].is_null() || host["Devices"].as_array().unwrap().is_empty());
    assert_ne!(host["NetworkMode"], "host");
    assert_eq!(host["PidMode"], "");
    assert_eq!(host["IpcMode"], "private");
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["berth.managed"], "true");
    assert!(labels["berth.pool"].is_string(), "{labels}");
    // A warm container was made before its job existed: the store, not its
    // labels, says which job it runs.
    let keys: &[&str] = if labels["berth.warm"].is_string() {
        &[]
    } else {
        &["berth.job", "berth.repository", "berth.github-job-id"]
    };
    for key in keys {
        assert!(labels[key].is_string(), "label {key} missing: {labels}");
    }
}

fn assert_hardened_from_inside(log: &str) {
    assert!(log.contains("uid=1001 gid=1001"), "{log}");
    assert!(log.contains("CapEff:\t0000000000000000"), "{log}");
    assert!(log.contains("CapPrm:\t0000000000000000"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    assert!(log.contains("docker-socket=absent"), "{log}");
    assert!(log.contains("docker-files=absent"), "{log}");
    assert!(
        !log.contains("-reachable"),
        "a worker reached a Docker API: {log}"
    );
    assert_eq!(log.matches("-unreachable").count(), 4, "{log}");
    assert!(
        log.contains("probe=works"),
        "the reachability probe itself is broken: {log}"
    );
    assert!(log.contains("host-paths=none"), "{log}");
    assert!(
        log.contains("tmp=writable") && log.contains("work=writable"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_are_hardened_and_cannot_reach_docker() {
    let (log, inspect) = run_probe(false, false).await;
    assert_hardened_from_outside(&inspect);
    assert_hardened_from_inside(&log);
    assert_eq!(inspect["HostConfig"]["ReadonlyRootfs"], false);
    assert!(log.contains("rootfs=writable"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_workers_get_tmpfs_work_folders() {
    let (log, inspect) = run_probe(true, false).await;
    assert_hardened_from_outside(&inspect);
    assert_hardened_from_inside(&log);
    assert_eq!(inspect["HostConfig"]["ReadonlyRootfs"], true);
    let tmpfs = &inspect["HostConfig"]["Tmpfs"];
    assert!(
        tmpfs["/tmp"].is_string() && tmpfs["/home/runner/_work"].is_string(),
        "{tmpfs}"
    );
    assert!(log.contains("rootfs=read-only"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_workers_are_hardened_alike() {
    let (log, inspect) = run_probe(true, true).await;
    assert!(
        inspect["Config"]["Labels"]["berth.warm"].is_string(),
        "the job did not run in a warm container: {}",
        inspect["Config"]["Labels"]
    );
    assert_hardened_from_outside(&inspect);
    assert_hardened_from_inside(&log);
    assert_eq!(inspect["HostConfig"]["ReadonlyRootfs"], true);
    assert!(log.contains("rootfs=read-only"), "{log}");
}
