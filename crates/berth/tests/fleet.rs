//! A fleet of Docker hosts on this machine: extra engines, each reached
//! through its own berth socket proxy (tests/common/engines.rs).

mod common;
mod scaleset_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth::docker::{Controller, WorkerNetwork, WorkerSpec};
use common::engines::ExtraEngine;
use common::{Berth, World};

/// The harness itself: two extra engines, each with the worker image built
/// into it, run a hardened worker through their own socket proxy; the main
/// engine never sees those containers; dropping an engine stops it and
/// removes its bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extra_engines_run_workers_through_their_own_socket_proxies() {
    let engines = [ExtraEngine::start().await, ExtraEngine::start().await];
    assert_ne!(engines[0].host, engines[1].host);
    let main = berth::docker::worker_image::connect(None).await.unwrap();
    for engine in &engines {
        let docker = berth::docker::worker_image::connect(Some(&engine.host))
            .await
            .unwrap();
        let image = berth::docker::worker_image::ensure_local_worker_image(&docker)
            .await
            .unwrap_or_else(|e| panic!("building the worker image: {e}\n{}", engine.log()));
        let proxy = berth_proxies::socket::Running::start(
            berth_proxies::socket::Policy::default(),
            &engine.host,
            "127.0.0.1:0",
        )
        .await
        .unwrap();
        let controller = Controller::connect(proxy.docker_host(), Duration::from_secs(30))
            .await
            .unwrap();
        controller.ensure_network("berth-fleet").await.unwrap();
        let mut spec = WorkerSpec::new(
            format!("berth-fleet-{}", uuid::Uuid::new_v4().simple()),
            image.id.clone(),
            WorkerNetwork::Bridge("berth-fleet".into()),
        );
        spec.labels.insert(
            berth::docker::controller::LABEL_JOB.into(),
            uuid::Uuid::now_v7().to_string(),
        );
        spec.memory_bytes = 64 << 20;
        let id = controller.create_worker(&spec).await.unwrap();
        // Not a JIT config: the runner stand-in refuses it and exits.
        controller
            .start_with_secret(&id, b"not-a-jit-config")
            .await
            .unwrap();
        let code = tokio::time::timeout(Duration::from_secs(30), controller.wait_exit(&id))
            .await
            .expect("the worker exits")
            .unwrap();
        assert_ne!(code, 0);
        assert!(
            main.inspect_container(&id, None).await.is_err(),
            "the main engine does not have the extra engine's container"
        );
        controller.remove(&id).await.unwrap();
        proxy.stop().await;
    }
    let bridges: Vec<String> = engines.iter().map(|e| e.bridge.clone()).collect();
    drop(engines);
    for bridge in bridges {
        let exists = std::process::Command::new("ip")
            .args(["link", "show", &bridge])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(!exists, "bridge {bridge} was removed");
    }
    let docker0 = std::process::Command::new("ip")
        .args(["link", "show", "docker0"])
        .status()
        .unwrap();
    assert!(docker0.success(), "the main engine keeps its docker0");
}

/// One extra engine as a fleet host: the local worker image built into it
/// (tagged `berth-worker-local:latest`, the name every host's pool uses),
/// and berth's socket proxy in front of it.
struct FleetHost {
    name: &'static str,
    engine: ExtraEngine,
    proxy: berth_proxies::socket::Running,
}

impl FleetHost {
    async fn start(name: &'static str) -> FleetHost {
        let engine = ExtraEngine::start().await;
        let docker = berth::docker::worker_image::connect(Some(&engine.host))
            .await
            .unwrap();
        berth::docker::worker_image::ensure_local_worker_image(&docker)
            .await
            .unwrap_or_else(|e| panic!("building the worker image: {e}\n{}", engine.log()));
        let proxy = berth_proxies::socket::Running::start(
            berth_proxies::socket::Policy::default(),
            &engine.host,
            "127.0.0.1:0",
        )
        .await
        .unwrap();
        FleetHost {
            name,
            engine,
            proxy,
        }
    }

    /// A `[[docker_host]]` table for it.
    fn toml(&self, labels: &[&str], slots: u32) -> String {
        docker_host_toml(self.name, self.proxy.docker_host(), labels, slots)
    }

    /// Containers of `instance` on this host: (id, running, labels).
    fn containers(&self, instance: &str) -> Vec<(String, bool, BTreeMap<String, String>)> {
        containers_on(&self.engine.host, instance)
    }
}

fn docker_host_toml(name: &str, url: &str, labels: &[&str], slots: u32) -> String {
    format!(
        "\n[[docker_host]]\nname = \"{name}\"\nurl = \"{url}\"\nlabels = {labels:?}\nmax_runners = {slots}\n"
    )
}

/// Containers of `instance` on the engine at `host`: (id, running, labels).
fn containers_on(host: &str, instance: &str) -> Vec<(String, bool, BTreeMap<String, String>)> {
    let out = std::process::Command::new("docker")
        .args(["-H", host, "ps", "-a", "--no-trunc", "--format", "{{.ID}}"])
        .args(["--filter", &format!("label=berth.instance={instance}")])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    ids.into_iter()
        .filter_map(|id| {
            let out = std::process::Command::new("docker")
                .args(["-H", host, "inspect", "--format"])
                .arg("{{json .State.Running}} {{json .Config.Labels}}")
                .arg(&id)
                .output()
                .ok()?;
            let text = String::from_utf8(out.stdout).ok()?;
            let (running, labels) = text.trim().split_once(' ')?;
            Some((
                id,
                running == "true",
                serde_json::from_str(labels).unwrap_or_default(),
            ))
        })
        .collect()
}

/// The world's configuration turned into a fleet's: the pool's image by the
/// name every host has, fast probes, then `extra` (`[[docker_host]]`
/// tables, more pools). Docker calls may take 10 s and a host is down after
/// 15 s without an answer: tolerant of a loaded machine, where an engine on
/// `vfs` can be slow to answer.
fn fleet_toml(world: &World, listen: &str, extra: &str) -> String {
    fleet_toml_with(world, listen, extra, 10, 15)
}

/// [`fleet_toml`] for tests of a host going down: Docker calls time out
/// after 3 s and a host is down after 3 s without an answer.
fn fleet_toml_quick_down(world: &World, listen: &str, extra: &str) -> String {
    fleet_toml_with(world, listen, extra, 3, 3)
}

fn fleet_toml_with(
    world: &World,
    listen: &str,
    extra: &str,
    call_timeout: u32,
    down_after: u32,
) -> String {
    world
        .config_toml(listen, "")
        .replace(
            &format!("image = \"{}\"", world.image_id),
            "image = \"berth-worker-local:latest\"\npull_policy = \"never\"",
        )
        .replace(
            "network = \"berth-test\"",
            &format!(
                "network = \"berth-test\"\nallowed_images = [\"berth-worker-local\"]\ncall_timeout = {call_timeout}"
            ),
        )
        + &format!("\n[fleet]\nprobe_interval = 0.5\ndown_after = {down_after}\nhost_lease = 3\n")
        + extra
}

/// A second pool, for jobs that ask for `label` and need hosts offering
/// `host_label`.
fn pool_toml(name: &str, label: &str, host_label: &str) -> String {
    format!(
        "\n[[pool]]\nname = \"{name}\"\nscope = \"org:acme\"\nlabels = [\"self-hosted\", \"{label}\"]\nimage = \"berth-worker-local:latest\"\npull_policy = \"never\"\ncpus = 1\nmemory = \"256m\"\nhost_labels = [\"{host_label}\"]\n"
    )
}

fn load(world: &World, toml: &str) -> berth::config::Config {
    let path = world.dir.path().join("fleet.toml");
    std::fs::write(&path, toml).unwrap();
    berth::config::Config::load(
        Some(&path),
        Vec::<(String, String)>::new(),
        berth::config::Role::Serve,
    )
    .unwrap_or_else(|e| panic!("{e}\n{toml}"))
    .config
}

fn queue_for(world: &World, label: &str, steps: &[&str]) -> u64 {
    world.queue_spec(ghsim::JobSpec::new(
        "acme/widgets",
        &["self-hosted", label],
        steps,
    ))
}

/// Waits until berth's store says host `name` is `health`.
async fn wait_health(berth: &Berth, name: &str, health: berth::store::HostHealth) {
    common::eventually(
        &format!("{name} is {health}"),
        Duration::from_secs(30),
        || async {
            berth
                .store()
                .host_get(name)
                .await
                .unwrap()
                .is_some_and(|h| h.health == health)
        },
    )
    .await;
}

/// Waits until `hosts` run nothing of this test's berth and no runner
/// registration of it is left.
async fn wait_nothing_left(world: &World, hosts: &[&FleetHost]) {
    common::eventually(
        "what berth left on the hosts is removed",
        Duration::from_secs(60),
        || async {
            hosts
                .iter()
                .all(|h| h.containers(&world.instance).is_empty())
        },
    )
    .await;
    common::eventually("no registration left", Duration::from_secs(60), || async {
        world.berth_runners().is_empty()
    })
    .await;
}

/// The jobs and hosts as berth sees them, for a failure's message.
async fn fleet_state(berth: &Berth) -> String {
    let jobs = berth
        .store()
        .job_list(&berth::store::JobFilter::default())
        .await
        .unwrap();
    let hosts = berth.store().host_list().await.unwrap();
    let mut out = String::new();
    for j in jobs {
        out += &format!(
            "job {} pool={} state={} host={:?} error={:?}\n",
            j.github_job_id, j.pool, j.state, j.host, j.error
        );
    }
    for h in hosts {
        out += &format!("{h:?}\n");
    }
    out
}

async fn metrics_text(berth: &Berth) -> String {
    reqwest::get(format!("{}/metrics", berth.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A burst over three hosts with different labels and slots: every job
/// lands on a host offering its pool's `host_labels`, no host ever runs
/// more jobs than its slots, containers carry `berth.host`, and a `gpu`
/// job that finds the one `gpu` host full waits (and shows in the capacity
/// signal) instead of going elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_over_three_hosts_lands_by_labels_and_slots() {
    let world = World::new().await;
    let hosts = [
        FleetHost::start("zone-a-1").await,
        FleetHost::start("zone-b-1").await,
        FleetHost::start("gpu-1").await,
    ];
    let toml = fleet_toml(
        &world,
        "127.0.0.1:0",
        &(hosts[0].toml(&["zone-a"], 2)
            + &hosts[1].toml(&["zone-b"], 1)
            + &hosts[2].toml(&["gpu", "zone-a"], 1)
            + &pool_toml("gpu", "gpu", "gpu")),
    );
    let berth = Berth::start(&world, load(&world, &toml)).await;
    world.point_webhooks_at(&berth.url);
    let slots = BTreeMap::from([("zone-a-1", 2usize), ("zone-b-1", 1), ("gpu-1", 1)]);

    let linux: Vec<u64> = (0..5).map(|_| world.queue(&["sleep 2"])).collect();
    let gpu: Vec<u64> = (0..2)
        .map(|_| queue_for(&world, "gpu", &["sleep 3"]))
        .collect();

    let mut gpu_waited = false;
    let mut desired_gpu_hosts = 0.0f64;
    let started = std::time::Instant::now();
    loop {
        // No host over its slots, and each running container says where it is.
        for host in &hosts {
            let running: Vec<_> = host
                .containers(&world.instance)
                .into_iter()
                .filter(|(_, running, labels)| *running && !labels.contains_key("berth.warm"))
                .collect();
            assert!(
                running.len() <= slots[host.name],
                "{} runs {} jobs with {} slots",
                host.name,
                running.len(),
                slots[host.name]
            );
            for (id, _, labels) in &running {
                assert_eq!(
                    labels.get("berth.host").map(String::as_str),
                    Some(host.name),
                    "{id}"
                );
                if labels.get("berth.pool").map(String::as_str) == Some("gpu") {
                    assert_eq!(host.name, "gpu-1", "a gpu job ran on {}", host.name);
                }
            }
        }
        let text = metrics_text(&berth).await;
        if scaleset_common::sample(&text, "berth_fleet_jobs_waiting{pool=\"gpu\"}") >= 1.0 {
            gpu_waited = true;
            desired_gpu_hosts = desired_gpu_hosts.max(scaleset_common::sample(
                &text,
                "berth_fleet_desired_hosts{host_labels=\"gpu\"}",
            ));
        }
        let mut all_done = true;
        for id in linux.iter().chain(&gpu) {
            all_done &= world.sim.job(*id).is_some_and(|j| j.status == "completed");
        }
        if all_done {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            panic!("the burst did not finish:\n{}", fleet_state(&berth).await);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(gpu_waited, "the second gpu job waited for the one gpu slot");
    assert_eq!(
        desired_gpu_hosts, 2.0,
        "two gpu jobs at once want two gpu hosts"
    );

    for id in linux.iter().chain(&gpu) {
        let job = world.sim.job(*id).unwrap();
        if job.conclusion.as_deref() != Some("success") {
            panic!("{job:?}\n{}", fleet_state(&berth).await);
        }
    }
    // The jobs record their host, within the pool's labels.
    for id in &gpu {
        let job = berth.job(*id).await.unwrap();
        assert_eq!(job.host.as_deref(), Some("gpu-1"), "{job:?}");
    }
    for id in &linux {
        let job = berth.job(*id).await.unwrap();
        assert!(job.host.is_some(), "{job:?}");
    }
    wait_nothing_left(&world, &hosts.iter().collect::<Vec<_>>()).await;
    berth.stop().await;
}

/// A host's engine stops while a job runs there: the host turns `down`,
/// gets no new jobs (one that needs it waits; others run elsewhere), its
/// job ends in a terminal state with its registration removed; when the
/// engine starts again, the waiting job runs there and whatever berth left
/// on the host is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_whose_engine_stops_mid_job_is_settled_and_cleaned_when_it_returns() {
    let world = World::new().await;
    let mut edge = FleetHost::start("edge-1").await;
    let toml = fleet_toml_quick_down(
        &world,
        "127.0.0.1:0",
        &(docker_host_toml("main", world.proxy.docker_host(), &[], 4)
            + &edge.toml(&["edge"], 2)
            + &pool_toml("edge", "edge", "edge")),
    );
    let berth = Berth::start(&world, load(&world, &toml)).await;
    world.point_webhooks_at(&berth.url);

    let first = queue_for(&world, "edge", &["sleep 120"]);
    let running = common::wait_for_job(
        berth.store(),
        first,
        Duration::from_secs(60),
        "running",
        |j| j.state == berth::store::JobState::Running,
    )
    .await;
    assert_eq!(running.host.as_deref(), Some("edge-1"));
    let runner = running.runner_name.clone().unwrap();
    // The runner has taken the job on GitHub: stopped before that, the job
    // would rightly go back to the queue instead (its runner never took it).
    common::eventually(
        "the job taken on GitHub",
        Duration::from_secs(60),
        || async { world.sim.job(first).unwrap().status == "in_progress" },
    )
    .await;

    edge.engine.stop();
    let stopped = std::time::Instant::now();
    wait_health(&berth, "edge-1", berth::store::HostHealth::Down).await;
    let settled = berth.wait_terminal(first, Duration::from_secs(60)).await;
    // The figures of docs/RELIABILITY.md ("Docker engine stops").
    eprintln!(
        "FIGURE docker_engine_stop stop_to_job_settled_seconds {:.1}",
        stopped.elapsed().as_secs_f64()
    );
    println!(
        "job on the stopped host: {:?} {:?}",
        settled.state, settled.error
    );
    common::eventually(
        "its registration is removed",
        Duration::from_secs(30),
        || async { !world.berth_runners().contains(&runner) },
    )
    .await;

    // While edge-1 is down: an edge job waits, a linux job runs on main.
    let waiting = queue_for(&world, "edge", &["echo back"]);
    let elsewhere = world.queue(&["echo elsewhere"]);
    let done = world
        .sim
        .wait_job_completed(elsewhere, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.conclusion.as_deref(), Some("success"));
    assert_eq!(
        berth.job(elsewhere).await.unwrap().host.as_deref(),
        Some("main")
    );
    let job = berth.job(waiting).await.unwrap();
    assert_eq!(job.state, berth::store::JobState::Queued, "{job:?}");
    let text = metrics_text(&berth).await;
    assert_eq!(
        scaleset_common::sample(&text, "berth_host_up{host=\"edge-1\"}"),
        0.0
    );
    assert!(scaleset_common::sample(&text, "berth_fleet_jobs_waiting{pool=\"edge\"}") >= 1.0);

    edge.engine.start_again().await;
    let restarted = std::time::Instant::now();
    let back = world
        .sim
        .wait_job_completed(waiting, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(back.conclusion.as_deref(), Some("success"));
    assert_eq!(
        berth.job(waiting).await.unwrap().host.as_deref(),
        Some("edge-1")
    );
    eprintln!(
        "FIGURE docker_engine_stop back_to_waiting_job_done_seconds {:.1}",
        restarted.elapsed().as_secs_f64()
    );
    wait_nothing_left(&world, &[&edge]).await;
    eprintln!(
        "FIGURE docker_engine_stop back_to_nothing_left_seconds {:.1}",
        restarted.elapsed().as_secs_f64()
    );
    berth.stop().await;
}

/// A host whose engine stops answering (frozen: its containers keep
/// running, as on a partitioned host) is marked down after the grace; the
/// job that was running there is settled from GitHub's view (it completed
/// there, so it is completed, with no exit code ever seen); when the engine
/// answers again the container left there is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_stops_answering_has_its_job_settled_from_githubs_view() {
    let world = World::new().await;
    let edge = FleetHost::start("edge-1").await;
    let toml = fleet_toml_quick_down(
        &world,
        "127.0.0.1:0",
        &(edge.toml(&["edge"], 2) + &pool_toml("edge", "edge", "edge")),
    );
    let berth = Berth::start(&world, load(&world, &toml)).await;
    world.point_webhooks_at(&berth.url);

    let id = queue_for(&world, "edge", &["sleep 2", "echo done"]);
    common::wait_for_job(berth.store(), id, Duration::from_secs(60), "running", |j| {
        j.state == berth::store::JobState::Running
    })
    .await;
    edge.engine.pause();
    let completed = world
        .sim
        .wait_job_completed(id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(completed.conclusion.as_deref(), Some("success"));
    let settled = berth.wait_terminal(id, Duration::from_secs(60)).await;
    let host = berth.store().host_get("edge-1").await.unwrap().unwrap();
    assert_eq!(host.health, berth::store::HostHealth::Down, "{host:?}");
    assert_eq!(
        settled.state,
        berth::store::JobState::Completed,
        "{settled:?}"
    );
    assert_eq!(settled.exit_code, None, "no exit was seen: {settled:?}");

    edge.engine.resume();
    wait_health(&berth, "edge-1", berth::store::HostHealth::Up).await;
    wait_nothing_left(&world, &[&edge]).await;
    berth.stop().await;
}

/// Three replicas on one PostgreSQL share two hosts. The first replica
/// holds the scale set's listener and both host leases; it is killed (-9)
/// in the middle of a burst of webhook and scale-set jobs. The others take
/// over the listener and the hosts within their lease bounds, re-attach to
/// the running workers, and every job completes; no job ever has two live
/// containers, no host runs more than its slots, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_hosts_and_take_over_after_kill_9() {
    use berth::scaleset::election::{LEASE_TTL, TRY_EVERY};
    let world = World::new().await;
    let hosts = [FleetHost::start("h1").await, FleetHost::start("h2").await];
    let store_url = common::postgres_schema().await;
    let config = |listen: &str, name: &str| {
        let sqlite = format!(
            "url = \"sqlite://{}\"",
            world.dir.path().join("berth.db").display()
        );
        let toml = fleet_toml(
            &world,
            listen,
            &(hosts[0].toml(&[], 3)
                + &hosts[1].toml(&[], 3)
                + &scaleset_common::scale_set_toml(&world, "")),
        )
        .replace(&sqlite, &format!("url = \"{store_url}\""));
        assert!(toml.contains("postgres"), "{toml}");
        let path = world.dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        path
    };
    let store = berth::store::Store::connect(&store_url).await.unwrap();
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", common::free_port()))
        .collect();
    let replica_a = common::ServeProcess::start(&world, &config(&addrs[0], "a.toml"), 1);
    common::wait_listening(&addrs[0], Duration::from_secs(30)).await;
    let session = || {
        world
            .sim
            .scale_sets()
            .first()
            .and_then(|s| s.session.clone())
    };
    common::eventually("replica A listens", Duration::from_secs(60), || async {
        session().is_some_and(|s| s.polls > 0)
    })
    .await;
    let first_session = session().unwrap().id;
    let lease_owners = || async {
        store
            .host_list()
            .await
            .unwrap()
            .into_iter()
            .filter(|h| h.lease_expires_at.is_some_and(|t| t > store.now()))
            .filter_map(|h| h.lease_owner)
            .collect::<Vec<_>>()
    };
    common::eventually(
        "replica A owns both hosts",
        Duration::from_secs(30),
        || async {
            let owners = lease_owners().await;
            owners.len() == 2 && owners[0] == owners[1]
        },
    )
    .await;
    let owner_a = lease_owners().await[0].clone();
    let replica_b = common::ServeProcess::start(&world, &config(&addrs[1], "b.toml"), 2);
    let replica_c = common::ServeProcess::start(&world, &config(&addrs[2], "c.toml"), 3);
    common::wait_listening(&addrs[1], Duration::from_secs(30)).await;
    common::wait_listening(&addrs[2], Duration::from_secs(30)).await;
    world.point_webhooks_at(&format!("http://{}", addrs[2]));

    // Watch the hosts throughout: one live container per job and per
    // runner at most, and no host over its slots. A container counts for
    // the job holding it in the store: GitHub may give a runner another job
    // than the one it was started for (its `berth.job` label), and berth
    // follows (crate::lifecycle::binding), so the label alone would count
    // the runner's first job twice once that job has a runner of its own
    // again. Who holds what is read in one query, a consistent snapshot.
    let watching = tokio_util::sync::CancellationToken::new();
    // Also on a failed assertion: the runtime waits for the blocking watcher.
    let _stop_watching = watching.clone().drop_guard();
    let watcher = {
        let (instance, engines) = (
            world.instance.clone(),
            hosts
                .iter()
                .map(|h| h.engine.host.clone())
                .collect::<Vec<_>>(),
        );
        let stop = watching.clone();
        let (store, runtime) = (store.clone(), tokio::runtime::Handle::current());
        // Container ids and runner names (they never collide) to the job holding them.
        let holders = move || -> BTreeMap<String, String> {
            let active = berth::store::JobFilter {
                states: berth::store::JobState::ACTIVE.to_vec(),
                ..Default::default()
            };
            runtime
                .block_on(store.job_list(&active))
                .unwrap_or_default()
                .into_iter()
                .flat_map(|job| {
                    let id = job.id.to_string();
                    [job.container_id, job.runner_name]
                        .into_iter()
                        .flatten()
                        .map(move |key| (key, id.clone()))
                })
                .collect()
        };
        tokio::task::spawn_blocking(move || {
            let mut violations = Vec::new();
            // Docker is listed before the store is read, so a worker whose
            // job ended in between shows as running and held by nobody: an
            // unheld container counts for its label's job only when it was
            // already unheld and running in the sample before.
            let mut unheld_before = BTreeSet::new();
            while !stop.is_cancelled() {
                let mut live = Vec::new();
                for engine in &engines {
                    let running: Vec<_> = containers_on(engine, &instance)
                        .into_iter()
                        .filter(|(_, running, labels)| {
                            *running && !labels.contains_key("berth.warm")
                        })
                        .collect();
                    if running.len() > 3 {
                        violations.push(format!("{engine} runs {} jobs", running.len()));
                    }
                    live.extend(running.into_iter().map(|c| (engine.clone(), c)));
                }
                let holders = holders();
                let mut per_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
                let mut per_runner: BTreeMap<String, usize> = BTreeMap::new();
                let mut unheld = BTreeSet::new();
                for (engine, (id, _, labels)) in live {
                    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
                    *per_runner.entry(label("berth.runner")).or_default() += 1;
                    // Held by its container id, or, still being created, by
                    // its runner's name (provisioning follows the runner).
                    let held_by = holders
                        .get(&id)
                        .or_else(|| holders.get(&label("berth.runner")));
                    let job = match held_by {
                        Some(job) => job.clone(),
                        None => {
                            unheld.insert(id.clone());
                            if !unheld_before.contains(&id) {
                                continue;
                            }
                            label("berth.job")
                        }
                    };
                    per_job.entry(job).or_default().push(format!(
                        "{} on {engine} (started for {}, runner {}, held by {held_by:?})",
                        &id[..12],
                        label("berth.job"),
                        label("berth.runner"),
                    ));
                }
                violations.extend(
                    per_runner
                        .into_iter()
                        .filter(|(_, n)| *n > 1)
                        .map(|(runner, n)| format!("runner {runner} has {n} live containers")),
                );
                violations.extend(
                    per_job
                        .into_iter()
                        .filter(|(_, live)| live.len() > 1)
                        .map(|(job, live)| format!("job {job} has live containers {live:?}")),
                );
                unheld_before = unheld;
                std::thread::sleep(Duration::from_millis(200));
            }
            violations
        })
    };

    let mut ids: Vec<u64> = (0..6).map(|_| world.queue(&["sleep 3"])).collect();
    ids.extend((0..3).map(|_| scaleset_common::queue(&world, &["sleep 3"])));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let killed = std::time::Instant::now();
    replica_a.kill_9();

    let mut hosts_taken = None;
    let mut listener_taken = None;
    while hosts_taken.is_none() || listener_taken.is_none() {
        if hosts_taken.is_none() {
            let owners = lease_owners().await;
            if owners.len() == 2 && owners.iter().all(|o| *o != owner_a) {
                hosts_taken = Some(killed.elapsed());
            }
        }
        if listener_taken.is_none()
            && session().is_some_and(|s| s.id != first_session && s.polls > 0)
        {
            listener_taken = Some(killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no takeover: hosts {hosts_taken:?}, listener {listener_taken:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (hosts_taken, listener_taken) = (hosts_taken.unwrap(), listener_taken.unwrap());
    println!(
        "after kill -9: host leases taken over in {hosts_taken:?}, listener in {listener_taken:?}"
    );
    let host_lease = Duration::from_secs(3);
    assert!(
        hosts_taken <= 2 * host_lease + Duration::from_secs(1),
        "{hosts_taken:?}"
    );
    assert!(
        listener_taken < LEASE_TTL + TRY_EVERY + Duration::from_secs(5),
        "{listener_taken:?}"
    );

    for id in &ids {
        let Some(job) = world
            .sim
            .wait_job_completed(*id, Duration::from_secs(120))
            .await
        else {
            panic!("job {id} did not complete\n{}", store_state(&store).await);
        };
        if job.conclusion.as_deref() != Some("success") {
            // What the hosts run, for the failure's report.
            for h in &hosts {
                for c in containers_on(&h.engine.host, &world.instance) {
                    let logs = std::process::Command::new("docker")
                        .args(["-H", &h.engine.host, "logs", "--tail", "20", &c.0])
                        .output()
                        .map(|o| {
                            String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned()
                        })
                        .unwrap_or_default();
                    eprintln!("on {}: {c:?}\n{logs}", h.engine.host);
                }
            }
        }
        assert_eq!(
            job.conclusion.as_deref(),
            Some("success"),
            "{job:?}\n{}",
            store_state(&store).await
        );
    }
    common::eventually(
        "every berth job is finished",
        Duration::from_secs(60),
        || async {
            store
                .job_list(&berth::store::JobFilter::default())
                .await
                .unwrap()
                .iter()
                .all(|j| j.state.is_terminal())
        },
    )
    .await;
    wait_nothing_left(&world, &hosts.iter().collect::<Vec<_>>()).await;
    watching.cancel();
    let violations = watcher.await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    replica_b.terminate();
    replica_c.terminate();
}

async fn store_state(store: &berth::store::Store) -> String {
    let mut out = String::new();
    for j in store
        .job_list(&berth::store::JobFilter::default())
        .await
        .unwrap()
    {
        out += &format!(
            "job {} pool={} state={} host={:?} runner={:?} container={:?} lease={:?} error={:?}\n",
            j.github_job_id,
            j.pool,
            j.state,
            j.host,
            j.runner_name,
            j.container_id.as_deref().map(|c| &c[..12]),
            j.lease_owner,
            j.error
        );
    }
    out
}

/// PEM files of a test CA, a server certificate for 127.0.0.1 and a client
/// certificate, all signed by that CA.
struct TestPki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn test_pki(dir: &std::path::Path, tag: &str) -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("berth test CA {tag}"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(vec!["berth".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, pem: &str| {
        let path = dir.join(format!("{tag}-{name}"));
        std::fs::write(&path, pem).unwrap();
        path
    };
    TestPki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
    }
}

/// A host reached over mutual TLS (`https://…` with `tls_ca`, `tls_cert`,
/// `tls_key`): berth verifies the engine's certificate and presents its
/// own, and runs a worker there with the JIT config over the TLS-attached
/// stdin; a client certificate from another CA is refused by the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_over_mutual_tls_runs_workers_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path(), "ok");
    let stranger = test_pki(dir.path(), "stranger");
    let port = common::free_port();
    let engine = ExtraEngine::start_with(vec![
        "--tlsverify".into(),
        format!("--tlscacert={}", pki.ca.display()),
        format!("--tlscert={}", pki.server_cert.display()),
        format!("--tlskey={}", pki.server_key.display()),
        format!("--host=tcp://127.0.0.1:{port}"),
    ])
    .await;
    let docker = berth::docker::worker_image::connect(Some(&engine.host))
        .await
        .unwrap();
    let image = berth::docker::worker_image::ensure_local_worker_image(&docker)
        .await
        .unwrap_or_else(|e| panic!("building the worker image: {e}\n{}", engine.log()));

    let url = format!("https://127.0.0.1:{port}");
    let tls = berth::docker::controller::ClientTls {
        ca: pki.ca.clone(),
        cert: pki.client_cert.clone(),
        key: pki.client_key.clone(),
    };
    let controller = Controller::connect_with(&url, Some(&tls), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("connecting over TLS: {e}\n{}", engine.log()));
    let probe = controller.probe().await.unwrap();
    assert!(!probe.version.is_empty());
    controller.ensure_network("berth-fleet").await.unwrap();
    let mut spec = WorkerSpec::new(
        format!("berth-tls-{}", uuid::Uuid::new_v4().simple()),
        image.id.clone(),
        WorkerNetwork::Bridge("berth-fleet".into()),
    );
    spec.labels.insert(
        berth::docker::controller::LABEL_JOB.into(),
        uuid::Uuid::now_v7().to_string(),
    );
    spec.memory_bytes = 64 << 20;
    let id = controller.create_worker(&spec).await.unwrap();
    controller
        .start_with_secret(&id, b"not-a-jit-config")
        .await
        .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(30), controller.wait_exit(&id))
        .await
        .expect("the worker exits")
        .unwrap();
    assert_ne!(code, 0, "the stand-in refuses a bad config: it read stdin");
    controller.remove(&id).await.unwrap();

    // A client certificate the engine's CA did not sign: refused.
    let other = berth::docker::controller::ClientTls {
        ca: pki.ca.clone(),
        cert: stranger.client_cert.clone(),
        key: stranger.client_key.clone(),
    };
    let refused = match Controller::connect_with(&url, Some(&other), Duration::from_secs(10)).await
    {
        Ok(c) => c.probe().await.map(drop),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "a stranger's certificate is refused");
    // An engine certificate berth's CA did not sign: refused by berth.
    let wrong_ca = berth::docker::controller::ClientTls {
        ca: stranger.ca.clone(),
        cert: pki.client_cert.clone(),
        key: pki.client_key.clone(),
    };
    let refused =
        match Controller::connect_with(&url, Some(&wrong_ca), Duration::from_secs(10)).await {
            Ok(c) => c.probe().await.map(drop),
            Err(e) => Err(e),
        };
    assert!(
        refused.is_err(),
        "an engine certificate from another CA is refused"
    );
}

/// The fault campaign's engine restart (docs/RELIABILITY.md): a host's
/// Docker engine is restarted mid-burst, which kills the containers
/// running on it. berth re-subscribes to the engine's events, and every
/// job ends as GitHub ended it (the killed ones failed by GitHub for their
/// lost runner, the others completed); nothing is left on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_restarted_mid_burst_ends_every_job_as_github_says() {
    let world = World::with_sim(ghsim::SimConfig {
        job_lock_timeout: Duration::from_secs(10),
        runner_idle_timeout: Duration::from_secs(5),
        ..ghsim::SimConfig::default()
    })
    .await;
    let mut edge = FleetHost::start("edge-1").await;
    // A down_after longer than the restart: the host is never marked down,
    // berth just finds its engine again.
    let toml = fleet_toml_with(
        &world,
        "127.0.0.1:0",
        &(edge.toml(&["edge"], 3) + &pool_toml("edge", "edge", "edge")),
        3,
        30,
    );
    let berth = Berth::start(&world, load(&world, &toml)).await;
    world.point_webhooks_at(&berth.url);
    let ids: Vec<u64> = (0..5)
        .map(|_| queue_for(&world, "edge", &["sleep 4"]))
        .collect();
    common::eventually("two jobs running", Duration::from_secs(60), || async {
        let mut running = 0;
        for id in &ids {
            if berth
                .job(*id)
                .await
                .is_some_and(|j| j.state == berth::store::JobState::Running)
            {
                running += 1;
            }
        }
        running >= 2
    })
    .await;
    edge.engine.stop();
    let restarted = std::time::Instant::now();
    edge.engine.start_again().await;
    let mut outcomes = BTreeMap::new();
    for id in &ids {
        let job = berth.wait_terminal(*id, Duration::from_secs(120)).await;
        let remote = world
            .sim
            .wait_job_completed(*id, Duration::from_secs(120))
            .await
            .unwrap();
        let expected = match remote.conclusion.as_deref() {
            Some("success") => berth::store::JobState::Completed,
            Some("cancelled") => berth::store::JobState::Cancelled,
            _ => berth::store::JobState::Failed,
        };
        assert_eq!(remote.status, "completed", "{job:?}\n{remote:?}");
        assert_eq!(job.state, expected, "{job:?}\n{remote:?}");
        *outcomes
            .entry(remote.conclusion.unwrap_or_default())
            .or_insert(0) += 1;
    }
    eprintln!(
        "FIGURE docker_engine_restart restart_to_all_settled_seconds {:.1}",
        restarted.elapsed().as_secs_f64()
    );
    eprintln!("FIGURE docker_engine_restart outcomes {outcomes:?}");
    wait_nothing_left(&world, &[&edge]).await;
    berth.stop().await;
}
