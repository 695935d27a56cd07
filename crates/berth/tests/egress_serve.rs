//! `berth serve` with `docker.egress_proxy` set, end to end: the GitHub
//! simulator listens on the host's loopback only, workers run on berth's
//! internal network, and a job still runs to completion, because the
//! runner's every request to "GitHub" goes through the egress proxy (the
//! proxy variables berth gives each worker). The proxy runs on the host,
//! bound to the internal network's gateway.

mod common;

use std::time::Duration;

use berth::docker::Controller;
use berth::store::JobState;
use berth_proxies::egress::{Allowlist, Running};
use common::{Berth, World};
use ghsim::SimConfig;

const JOB_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_with_workers_behind_the_egress_proxy() {
    let world = World::with_sim_at(SimConfig::default(), "127.0.0.1", "localhost").await;
    let sim_port = url::Url::parse(&world.sim.api_url())
        .unwrap()
        .port()
        .unwrap();

    // berth's internal network, made the way `berth serve` makes it, first,
    // so the proxy can bind to its gateway before berth starts.
    let network = format!("berth-egress-serve-{}", std::process::id());
    let controller = Controller::connect(world.proxy.docker_host(), Duration::from_secs(30))
        .await
        .unwrap();
    let network_id = controller
        .ensure_network_with(&network, true)
        .await
        .unwrap();
    let outcome = tokio::spawn(scenario(world, network.clone(), sim_port)).await;
    let _ = std::process::Command::new("docker")
        .args(["network", "rm", &network_id])
        .output();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(world: World, network: String, sim_port: u16) {
    let inspect = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            &network,
            "-f",
            "{{.Internal}} {{(index .IPAM.Config 0).Gateway}}",
        ])
        .output()
        .unwrap();
    let inspect = String::from_utf8(inspect.stdout).unwrap();
    let (internal, gateway) = inspect.trim().split_once(' ').unwrap();
    assert_eq!(internal, "true");

    // Only the simulator's name and port, and loopback for it.
    let list = Allowlist::from_toml(
        &format!(
            "[[allow]]\ndomain = \"localhost\"\nports = [{sim_port}]\n[[allow]]\ncidr = \"127.0.0.1/32\"\nports = [{sim_port}]\n"
        ),
        "serve",
    )
    .unwrap();
    let proxy = Running::start(list, &format!("{gateway}:0")).await.unwrap();

    let mut config = world.config("");
    config.docker.network = network.clone();
    config.docker.egress_proxy = Some(proxy.url());
    // Even `localhost` goes through the proxy: inside the worker it is
    // the worker itself, the simulator is on the host.
    config.docker.no_proxy = Vec::new();
    let berth = Berth::start(&world, config).await;

    let gh_job = world.queue(&["echo behind-the-egress-proxy"]);
    let job = berth.wait_terminal(gh_job, JOB_LIMIT).await;
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(job.github_conclusion.as_deref(), Some("success"), "{job:?}");

    // The runner's traffic went through the proxy, and only there.
    let metrics = proxy.proxy().metrics().encode();
    let allowed: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("berth_egress_requests_total{") && l.contains(r#"decision="allow""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    if std::env::var_os("EGRESS_SERVE_SHOW").is_some() {
        eprintln!("{metrics}");
    }
    assert!(allowed >= 3, "{metrics}");
    assert!(!metrics.contains(r#"decision="deny""#), "{metrics}");
    berth.stop().await;
    proxy.stop().await;
}
