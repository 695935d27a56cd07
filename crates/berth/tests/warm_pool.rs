//! Warm pools against the real Docker engine: containers made ahead of
//! demand are taken by jobs and refilled, kept by the orphan reconciler,
//! adopted after a `kill -9`, replaced when the pool's configuration changes,
//! and removed on graceful shutdown.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use berth::store::{JobState, Store};
use common::{Berth, ServeProcess, World, eventually, write_config};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

/// Warm containers of this world's berth, by `docker ps`.
fn warm_containers(world: &World) -> BTreeSet<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc"])
        .arg("--filter")
        .arg(format!("label=berth.instance={}", world.instance))
        .args(["--filter", "label=berth.warm"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn inspect(id: &str) -> Value {
    let out = Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap();
    let all: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    all[0].clone()
}

async fn recorded(store: &Store) -> BTreeSet<String> {
    store
        .warm_list()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.container_id)
        .collect()
}

async fn open_store(world: &World) -> Store {
    Store::connect(&format!(
        "sqlite://{}",
        world.dir.path().join("berth.db").display()
    ))
    .await
    .unwrap()
}

/// Waits until the store records exactly `n` warm containers and Docker has
/// exactly those (running when `started`); returns them.
async fn wait_warm(world: &World, store: &Store, n: usize, started: bool) -> BTreeSet<String> {
    let started_at = Instant::now();
    loop {
        let rows = recorded(store).await;
        let docker = warm_containers(world);
        let running = docker
            .iter()
            .all(|id| inspect(id)["State"]["Running"] == started);
        if rows.len() == n && rows == docker && running {
            return rows;
        }
        assert!(
            started_at.elapsed() < LIMIT,
            "expected {n} warm containers: store {rows:?}, docker {docker:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The same hardening a cold worker gets (tests/worker_hardening.rs checks
/// those from outside and inside), and no job identity on the container.
fn assert_hardened_warm(c: &Value) {
    let host = &c["HostConfig"];
    assert_eq!(c["Config"]["User"], "1001:1001");
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(host["Privileged"], false);
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(host["Memory"], 256 * 1024 * 1024);
    assert_eq!(host["NanoCpus"], 1_000_000_000i64);
    assert_eq!(host["Init"], true);
    assert!(c["Mounts"].as_array().unwrap().is_empty());
    assert_eq!(c["Config"]["OpenStdin"], true);
    assert_eq!(c["Config"]["StdinOnce"], true);
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["berth.managed"], "true");
    assert_eq!(labels["berth.pool"], "linux");
    assert!(labels["berth.warm"].is_string(), "{labels}");
    for key in ["berth.job", "berth.runner", "berth.github-job-id"] {
        assert!(
            labels[key].is_null(),
            "a warm container has no {key}: {labels}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_take_warm_containers_and_the_pool_refills() {
    let world = World::new().await;
    // max_runners = 2: while a job runs, the pool holds one warm container
    // (busy + warm ≤ max_runners).
    let berth = Berth::start(
        &world,
        world.config("warm = 2\nwarm_started = true\nmax_runners = 2"),
    )
    .await;
    // Its own connection: berth closes its store on shutdown.
    let store = open_store(&world).await;
    let first = wait_warm(&world, &store, 2, true).await;
    for id in &first {
        assert_hardened_warm(&inspect(id));
    }

    // A warm container of this instance that the store does not record (as
    // a crash between its create and its record leaves): an orphan.
    let stray = Command::new("docker")
        .args(["create", "--name"])
        .arg(format!("berth-warm-stray-{}", &world.instance[5..17]))
        .args([
            "--label",
            "berth.managed=true",
            "--label",
            "berth.pool=linux",
        ])
        .args(["--label", "berth.warm=0000"])
        .arg("--label")
        .arg(format!("berth.instance={}", world.instance))
        .arg(&world.image_id)
        .output()
        .unwrap();
    assert!(stray.status.success(), "{stray:?}");
    let stray = String::from_utf8(stray.stdout).unwrap().trim().to_string();

    let gh_job = world.queue(&["echo ran warm", "sleep 2"]);
    let running = berth.wait_state(gh_job, JobState::Running, LIMIT).await;
    let container = running.container_id.clone().unwrap();
    assert!(
        first.contains(&container),
        "the job's container {container} was not one of the warm ones {first:?}"
    );
    // The JIT config reached the runner over stdin, never the container's
    // configuration.
    let shown = inspect(&container).to_string();
    for secret in world.sim.issued_secrets() {
        assert!(
            !shown.contains(&secret),
            "a credential is in docker inspect"
        );
    }
    // The take woke the refill; as long as the job holds its slot, the
    // refill must not go past max_runners (one busy, one warm).
    let watching = Instant::now();
    while berth.job(gh_job).await.unwrap().state.is_active() {
        assert!(
            recorded(&store).await.len() <= 1,
            "warm + busy > max_runners"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(watching.elapsed() > Duration::from_millis(1500));
    let job = berth.wait_terminal(gh_job, LIMIT).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert!(world.sim.job_log(gh_job).unwrap().contains("ran warm"));

    // Refilled to two, without the one the job used.
    let second = wait_warm(&world, &store, 2, true).await;
    assert!(!second.contains(&container));
    assert_eq!(first.intersection(&second).count(), 1);
    let metrics = berth.ctx.metrics.encode();
    assert!(
        metrics.contains("berth_warm_handoffs_total{pool=\"linux\",outcome=\"hit\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("berth_warm_containers{pool=\"linux\"} 2"));

    // The orphan reconciler (grace 5 s, every 2 s) removed the stray and
    // kept the recorded ones.
    eventually("the stray warm container removed", LIMIT, || async {
        !warm_containers(&world).contains(&stray)
    })
    .await;
    assert_eq!(wait_warm(&world, &store, 2, true).await, second);

    // A warm container that dies waiting is struck off and replaced.
    let victim = second.iter().next().unwrap().clone();
    let killed = Command::new("docker")
        .args(["kill", &victim])
        .output()
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    eventually("the dead warm container replaced", LIMIT, || async {
        let now = recorded(&store).await;
        now.len() == 2 && !now.contains(&victim) && !warm_containers(&world).contains(&victim)
    })
    .await;

    // Graceful shutdown removes the warm containers.
    berth.stop().await;
    assert!(world.containers().is_empty(), "{:?}", world.containers());
    assert!(recorded(&store).await.is_empty());
}

/// `berth serve` as a real process (so `kill -9` is a real crash).
async fn fingerprints(store: &Store) -> BTreeSet<String> {
    store
        .warm_list()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.fingerprint)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_containers_survive_a_crash_and_follow_the_configuration() {
    let world = World::new().await;
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    world.point_webhooks_at(&format!("http://{listen}"));
    let config = write_config(&world, &listen, "warm = 2");
    // Migrated before berth starts: two processes migrating one SQLite file
    // at once would race.
    let store = open_store(&world).await;
    let first = ServeProcess::start(&world, &config, 1);
    let made = wait_warm(&world, &store, 2, false).await;
    let old_print = fingerprints(&store).await;

    // A crash leaves them recorded; the next start adopts them, and makes
    // no others: nothing is left unaccounted for.
    first.kill_9();
    assert_eq!(warm_containers(&world), made);
    let second = ServeProcess::start(&world, &config, 2);
    eventually("berth listening", LIMIT, || async {
        std::net::TcpStream::connect(&listen).is_ok()
    })
    .await;
    // Past the orphan grace (5 s) and a few reconcile passes (every 2 s):
    // live warm containers of its own pool are not orphans.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(wait_warm(&world, &store, 2, false).await, made);

    // Another crash, and a start with a different pool configuration: the
    // old warm containers are removed, new ones made with a new fingerprint.
    second.kill_9();
    let config = write_config(&world, &listen, "warm = 2\npids_limit = 300");
    let third = ServeProcess::start(&world, &config, 3);
    eventually("warm containers with a new fingerprint", LIMIT, || async {
        let now = fingerprints(&store).await;
        !now.is_empty() && now.is_disjoint(&old_print)
    })
    .await;
    let remade = wait_warm(&world, &store, 2, false).await;
    assert!(remade.is_disjoint(&made), "{remade:?} vs {made:?}");
    let new_print = fingerprints(&store).await;
    assert_eq!(new_print.len(), 1);
    assert!(new_print.is_disjoint(&old_print));
    for id in &remade {
        assert_eq!(inspect(id)["HostConfig"]["PidsLimit"], 300);
    }

    // A job runs in one of them (created, not started: started at hand-off).
    let gh_job = world.queue(&["echo cold start skipped"]);
    let waiting = Instant::now();
    let job = loop {
        if let Some(job) = store.job_get_by_github_id(gh_job as i64).await.unwrap()
            && job.state.is_terminal()
        {
            break job;
        }
        assert!(waiting.elapsed() < LIMIT, "the job did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert!(remade.contains(job.container_id.as_deref().unwrap()));
    wait_warm(&world, &store, 2, false).await;

    // SIGTERM: the warm containers go with it.
    third.terminate();
    assert!(world.containers().is_empty(), "{:?}", world.containers());
    assert!(recorded(&store).await.is_empty());
}

/// berth dies right after recording a warm container on its job, before the
/// JIT config reaches it: after a restart the job still completes once, and
/// every container left is a recorded warm one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_hand_off_is_recovered() {
    let world = World::new().await;
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    world.point_webhooks_at(&format!("http://{listen}"));
    let config = write_config(&world, &listen, "warm = 1");
    // Short leases, as tests/crash_recovery.rs has them.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("lease = 10", "lease = 5");
    std::fs::write(&config, text).unwrap();
    let store = open_store(&world).await;
    let mut first = ServeProcess::start_with(&world, &config, 1, "after_warm_take");
    let warm = wait_warm(&world, &store, 1, false).await;
    let gh_job = world.queue(&["echo recovered"]);
    let aborted = Instant::now();
    while first.child.try_wait().unwrap().is_none() {
        assert!(aborted.elapsed() < LIMIT, "the failpoint was not reached");
        std::thread::sleep(Duration::from_millis(50));
    }
    let taken = store
        .job_get_by_github_id(gh_job as i64)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.state, JobState::Starting);
    assert!(warm.contains(taken.container_id.as_deref().unwrap()));

    let _second = ServeProcess::start(&world, &config, 2);
    let waiting = Instant::now();
    let job = loop {
        if let Some(job) = store.job_get_by_github_id(gh_job as i64).await.unwrap()
            && job.state.is_terminal()
        {
            break job;
        }
        assert!(waiting.elapsed() < LIMIT, "the job did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(job.attempts, 2, "{job:?}");
    assert_eq!(
        world.sim.job(gh_job).unwrap().conclusion.as_deref(),
        Some("success")
    );
    // The half-handed-off container is gone; what is left is the refilled
    // warm pool, recorded; no runner registration is left behind.
    let left = wait_warm(&world, &store, 1, false).await;
    assert!(left.is_disjoint(&warm));
    eventually("every container recorded", LIMIT, || async {
        world.containers().into_iter().collect::<BTreeSet<_>>() == recorded(&store).await
    })
    .await;
    eventually("no runner registration left", LIMIT, || async {
        world.berth_runners().is_empty()
    })
    .await;
}

/// Webhook → runner process up, cold against warm, in one run.
///
/// One `berth serve` (in this process, through the socket proxy like every
/// test) with three pools on the same image and limits: `cold` (no warm
/// pool), `created` (2 warm, created only) and `started` (2 warm, started
/// and waiting on stdin). Jobs go one at a time, the three modes taking turns
/// (the first of each round rotating), so drift hits them alike; before a
/// warm job its pool is full again (steady state, not a burst). The clock
/// starts just before the simulator queues the job and sends its
/// `workflow_job` webhook, and is read at four points: berth has written the
/// JIT config to the container (the job's `started_at`); the runner process
/// started (the stand-in reports the moment its `main` began with its first
/// request; containers share the host's clock); that first request (an
/// OAuth token) reached the simulator; the runner opened its broker session
/// (connected, asking for work).
///
/// `cargo nextest run -p berth --test warm_pool --run-ignored only bench`
/// (`BENCH_JOBS`, default 30 per mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark: run it on purpose"]
async fn bench_warm_vs_cold() {
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let world = World::new().await;
    let pool = |name: &str, extra: &str| {
        format!(
            "\n[[pool]]\nname = \"{name}\"\nscope = \"org:acme\"\nlabels = [\"self-hosted\", \"{name}\"]\n\
             image = \"{image}\"\ncpus = 1\nmemory = \"256m\"\nidle_timeout = 60\n{extra}\n",
            image = world.image_id
        )
    };
    // The harness's first pool (`linux`) is the cold one.
    let extra = format!(
        "warm = 0\n{}{}",
        pool("created", "warm = 2"),
        pool("started", "warm = 2\nwarm_started = true")
    );
    let path = world.dir.path().join("berth.toml");
    std::fs::write(&path, world.config_toml("127.0.0.1:0", &extra)).unwrap();
    let config = berth::config::Config::load(
        Some(&path),
        Vec::<(String, String)>::new(),
        berth::config::Role::Serve,
    )
    .unwrap()
    .config;
    let berth = Berth::start(&world, config).await;
    let store = berth.store().clone();

    let modes = ["linux", "created", "started"];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut sessions: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut handed: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut process: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for round in 0..jobs {
        for k in 0..modes.len() {
            let m = (round + k) % modes.len();
            let mode = modes[m];
            if mode != "linux" {
                let started_at = Instant::now();
                while store
                    .warm_list()
                    .await
                    .unwrap()
                    .iter()
                    .filter(|w| w.pool == mode)
                    .count()
                    < 2
                {
                    assert!(started_at.elapsed() < LIMIT, "{mode} not refilled");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let t0 = time::OffsetDateTime::now_utc();
            let gh_job = world.queue_spec(ghsim::JobSpec {
                repository: "acme/widgets".into(),
                labels: vec!["self-hosted".into(), mode.into()],
                steps: vec!["true".into()],
                ..ghsim::JobSpec::default()
            });
            let job = berth.wait_terminal(gh_job, LIMIT).await;
            assert_eq!(job.state, JobState::Completed, "{job:?}");
            let runner = job.runner_name.clone().unwrap();
            let ms = |at: Option<time::OffsetDateTime>| {
                let at = at.unwrap_or_else(|| panic!("runner {runner} never connected"));
                (at - t0).as_seconds_f64() * 1000.0
            };
            // `started_at` is recorded right after the JIT config was
            // written to the container (berth's part of the hand-off); the
            // store keeps milliseconds.
            handed[m].push(ms(job.started_at));
            process[m].push(ms(world.sim.runner_process_started_at(&runner)));
            samples[m].push(ms(world.sim.runner_first_contact_at(&runner)));
            sessions[m].push(ms(world.sim.runner_session_at(&runner)));
        }
    }
    let metrics = berth.ctx.metrics.encode();
    berth.stop().await;

    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (at(0.5), at(0.95), mean, v[0], v[v.len() - 1])
    };
    for (what, samples) in [
        (
            "JIT config written to the container (berth's part)",
            &mut handed,
        ),
        ("runner process started (its main())", &mut process),
        ("runner's first request (an OAuth token)", &mut samples),
        ("runner connected (broker session open)", &mut sessions),
    ] {
        let results: Vec<_> = samples.iter_mut().map(stats).collect();
        let (cold_p50, cold_p95, ..) = results[0];
        println!("\nwebhook -> {what}, {jobs} jobs per mode, ms");
        println!("| mode | p50 | p95 | mean | min | max | p50 vs cold | p95 vs cold |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (mode, (p50, p95, mean, min, max)) in ["cold", "warm, created", "warm, started"]
            .iter()
            .zip(&results)
        {
            println!(
                "| {mode} | {p50:.1} | {p95:.1} | {mean:.1} | {min:.1} | {max:.1} | {:.3} | {:.3} |",
                p50 / cold_p50,
                p95 / cold_p95
            );
        }
    }
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("berth_warm_handoffs_total"))
    {
        println!("{line}");
    }
}

/// The pool names its image by a tag; re-pointing the tag at another image
/// replaces the warm containers (the refill compares image IDs every 5 s),
/// with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retagged_image_replaces_the_warm_containers() {
    let world = World::new().await;
    let tag = format!("berth-warm-retag-{}:v1", &world.instance[5..17]);
    let tagged = Command::new("docker")
        .args(["tag", &world.image_id, &tag])
        .output()
        .unwrap();
    assert!(tagged.status.success(), "{tagged:?}");
    let mut config = world.config("warm = 1");
    config.pools[0].image = tag.clone();
    config.pools[0].pull_policy = berth::docker::image_policy::PullPolicy::Never;
    config.docker.allowed_images = vec!["berth-warm-retag-".into()];
    let berth = Berth::start(&world, config).await;
    let store = open_store(&world).await;
    let first = wait_warm(&world, &store, 1, false).await;
    let old = first.iter().next().unwrap().clone();
    assert_eq!(inspect(&old)["Image"], world.image_id);

    // Another image under the same tag (a commit of the warm container: same
    // files, new ID).
    let committed = Command::new("docker")
        .args(["commit", &old, &tag])
        .output()
        .unwrap();
    assert!(committed.status.success(), "{committed:?}");
    let new_image = String::from_utf8(committed.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(new_image, world.image_id);

    eventually(
        "the warm container remade from the new image",
        LIMIT,
        || async {
            let now = recorded(&store).await;
            now.len() == 1
                && !now.contains(&old)
                && now
                    .iter()
                    .all(|id| inspect(id)["Image"] == new_image.as_str())
        },
    )
    .await;
    assert!(!warm_containers(&world).contains(&old));
    berth.stop().await;
    let _ = Command::new("docker")
        .args(["rmi", "-f", &tag, &new_image])
        .output();
}
