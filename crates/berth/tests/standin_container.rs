//! Issue 2's end-to-end acceptance on the real Docker engine: the runner
//! stand-in, in a hardened worker container, runs a two-step job against the
//! GitHub simulator, with its JIT config minted over REST and delivered on
//! stdin, exactly as `berth demo` does (both call `berth::demo`).
//!
//! Networking: the simulator listens on the default bridge's gateway address
//! (`docker0`, 172.17.0.1 here) and hands runners `http://host.docker.internal:<port>`;
//! workers get `ExtraHosts ["host.docker.internal:host-gateway"]`. The host's
//! `INPUT` chain accepts traffic from `docker0` on this machine (iptables nft
//! and legacy: policy ACCEPT), so containers reach that port; see
//! `berth::demo::start_simulator` for why that address and what a stricter
//! host firewall needs.
//!
//! Every container here carries `berth.test=standin-container` and is removed
//! when the test ends, pass or fail (and at its start, should an earlier run
//! have been killed). The runner stand-in is found like the demo finds it:
//! `cargo build --workspace --bins` puts it in `target/debug/`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use berth::demo::standin::{self as demo, Engine, StandinOptions, StandinRun};
use berth::docker::worker_image;
use bollard::Docker;
use futures::FutureExt;
use ghsim::{SimHandle, StepInput};
use serde_json::Value;

const TEST_LABEL: &str = "berth.test";
const TEST_LABEL_VALUE: &str = "standin-container";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_runs_a_two_step_job_in_a_hardened_container() {
    let engine = Engine::connect()
        .await
        .expect("this test needs a Docker engine");
    sweep(&engine.docker).await;
    let outcome = AssertUnwindSafe(scenario(&engine)).catch_unwind().await;
    sweep(&engine.docker).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Removes this test's containers, whatever state they are in.
async fn sweep(docker: &Docker) {
    demo::remove_labelled_containers(docker, TEST_LABEL, TEST_LABEL_VALUE)
        .await
        .expect("removing the test's containers");
}

async fn scenario(engine: &Engine) {
    let docker = &engine.docker;
    let image = worker_image::ensure_local_worker_image(docker)
        .await
        .unwrap_or_else(|e| panic!("building the local worker image: {e}"));
    let sim = demo::start_simulator(docker)
        .await
        .expect("starting the simulator");
    let port = sim.addr().port();
    assert_eq!(
        sim.public_url(),
        format!("http://host.docker.internal:{port}"),
        "runners must be handed the host alias, not a loopback address"
    );

    let nonce = format!("{:016x}", rand::random::<u64>());
    let step = |name: &str, run: String| StepInput::Named {
        name: Some(name.to_owned()),
        run,
    };
    let options = StandinOptions {
        steps: vec![
            step("first", format!("echo first-{nonce}; echo uid=$(id -u)")),
            step(
                "second",
                format!("echo second-{nonce}; grep -E '^(CapEff|NoNewPrivs):' /proc/self/status"),
            ),
        ],
        labels: HashMap::from([(TEST_LABEL.to_owned(), TEST_LABEL_VALUE.to_owned())]),
        timeout: Duration::from_secs(90),
    };
    let progress = |line: &str| eprintln!("standin-container: {line}");
    let run = demo::run_standin_job(engine, &sim, &image, &options, &progress)
        .await
        .unwrap_or_else(|e| panic!("running the job: {e:#}"));

    // The job: completed with success, taken by the runner minted for it.
    let job = &run.job;
    assert_eq!(job.status, "completed", "{run:?}\n{}", run.container_output);
    assert_eq!(
        job.conclusion.as_deref(),
        Some("success"),
        "container output:\n{}",
        run.container_output
    );
    assert_eq!(
        job.runner_name.as_deref(),
        Some(run.runner.runner_name.as_str())
    );
    assert_eq!(job.runner_id, Some(run.runner.runner_id));
    assert!(
        run.runner.runner_name.starts_with("berth-"),
        "{}",
        run.runner.runner_name
    );

    // Both steps' output, through the control API over HTTP.
    let http = reqwest::Client::new();
    let control = sim.base_url();
    let job_json: Value = http
        .get(format!("{control}/_sim/jobs/{}", job.id))
        .send()
        .await
        .expect("GET /_sim/jobs/{id}")
        .error_for_status()
        .expect("GET /_sim/jobs/{id} status")
        .json()
        .await
        .expect("job JSON");
    let steps = job_json["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{job_json}");
    let step_output = |i: usize| -> String {
        assert_eq!(steps[i]["conclusion"], "success", "step {i}: {}", steps[i]);
        steps[i]["output"]
            .as_array()
            .expect("step output")
            .iter()
            .map(|l| l.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let first = step_output(0);
    let second = step_output(1);
    assert!(first.contains(&format!("first-{nonce}")), "{first}");
    assert!(first.contains("uid=1001"), "{first}");
    assert!(second.contains(&format!("second-{nonce}")), "{second}");
    assert!(!first.contains("second-"), "step outputs are kept apart");
    // The hardening as the job saw it.
    assert!(
        second.contains("CapEff:\t0000000000000000"),
        "capabilities left: {second}"
    );
    assert!(second.contains("NoNewPrivs:\t1"), "{second}");

    let log = http
        .get(format!("{control}/_sim/jobs/{}/logs", job.id))
        .send()
        .await
        .expect("GET /_sim/jobs/{id}/logs")
        .error_for_status()
        .expect("GET /_sim/jobs/{id}/logs status")
        .text()
        .await
        .expect("log text");
    let at_first = log.find(&format!("first-{nonce}")).expect("first in log");
    let at_second = log.find(&format!("second-{nonce}")).expect("second in log");
    assert!(
        at_first < at_second,
        "steps out of order in the log:\n{log}"
    );
    assert_eq!(run.log, log, "the log the demo reads is the control API's");

    // The runner is gone: from the REST runner list (checked by the run),
    // from the control API's list, and its id no longer resolves.
    assert!(
        !run.runners_after.contains(&run.runner.runner_name),
        "REST still lists {}: {:?}",
        run.runner.runner_name,
        run.runners_after
    );
    assert_runner_gone(&http, &sim, &run).await;

    // The container exited 0, and has been removed.
    assert_eq!(
        run.exit_code, 0,
        "container output:\n{}",
        run.container_output
    );
    let gone = docker.inspect_container(&run.container_id, None).await;
    assert!(
        matches!(
            gone,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            })
        ),
        "the container is still there: {gone:?}"
    );

    assert_hardened_and_no_secret_in_inspect(&run);
}

async fn assert_runner_gone(http: &reqwest::Client, sim: &SimHandle, run: &StandinRun) {
    let runners: Value = http
        .get(format!("{}/_sim/runners", sim.base_url()))
        .send()
        .await
        .expect("GET /_sim/runners")
        .json()
        .await
        .expect("runners JSON");
    let listed: Vec<&Value> = match &runners {
        Value::Array(list) => list.iter().collect(),
        other => other["runners"]
            .as_array()
            .expect("a runner list")
            .iter()
            .collect(),
    };
    assert!(
        !listed.iter().any(
            |r| r["name"] == run.runner.runner_name.as_str() || r["id"] == run.runner.runner_id
        ),
        "the control API still lists the runner: {runners}"
    );
    assert!(
        !sim.runners().iter().any(|r| r.id == run.runner.runner_id),
        "SimHandle::runners still has it"
    );
}

/// `docker inspect` after create, while running and after exit: the
/// hardening is there, and no part of the JIT config ever is.
fn assert_hardened_and_no_secret_in_inspect(run: &StandinRun) {
    let stages: Vec<&str> = run.inspections.iter().map(|i| i.stage).collect();
    assert_eq!(stages, ["created", "running", "exited"]);

    let running: Value = serde_json::from_str(&run.inspections[1].json).expect("inspect JSON");
    let config = &running["Config"];
    let host = &running["HostConfig"];
    assert_eq!(config["User"], "1001:1001", "{config}");
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]), "{host}");
    assert!(
        host["SecurityOpt"]
            .as_array()
            .expect("SecurityOpt")
            .iter()
            .any(|o| o
                .as_str()
                .is_some_and(|o| o.starts_with("no-new-privileges"))),
        "{host}"
    );
    assert_eq!(host["ReadonlyRootfs"], true, "{host}");
    assert_eq!(host["Privileged"], false, "{host}");
    assert!(
        host["Binds"].is_null() || host["Binds"] == serde_json::json!([]),
        "nothing from the host is mounted: {host}"
    );
    assert_eq!(
        host["ExtraHosts"],
        serde_json::json!(["host.docker.internal:host-gateway"]),
        "{host}"
    );
    assert_eq!(config["Labels"][TEST_LABEL], TEST_LABEL_VALUE, "{config}");
    assert_eq!(config["Labels"]["berth.managed"], "true", "{config}");
    assert_eq!(
        config["Labels"]["berth.runner"],
        run.runner.runner_name.as_str(),
        "{config}"
    );
    assert_eq!(config["OpenStdin"], true, "{config}");

    // The config, its files and their contents: no 16-character piece of any
    // of them in any inspect, nor in the container's own output.
    let secrets = demo::jit_config_parts(run.runner.encoded.expose());
    assert!(
        secrets.len() >= 7,
        "the JIT config should hold three files: {} parts",
        secrets.len()
    );
    for inspection in &run.inspections {
        for secret in &secrets {
            assert_no_piece_of(secret, &inspection.json, inspection.stage);
        }
    }
    assert!(
        run.container_output
            .contains(&format!("ghsim-runner: ran job {}", run.job.id)),
        "the runner's own output was collected: {}",
        run.container_output
    );
    for secret in &secrets {
        assert_no_piece_of(secret, &run.container_output, "the container output");
    }
    assert!(run.inspections_showing_the_jit_config().is_empty());
}

/// Fails when any 16-character piece of `secret` appears in `haystack`.
fn assert_no_piece_of(secret: &str, haystack: &str, what: &str) {
    let chars: Vec<char> = secret.chars().collect();
    for window in chars.windows(16) {
        let piece: String = window.iter().collect();
        // JSON punctuation and field names are no secret.
        if piece.chars().filter(|c| c.is_ascii_alphanumeric()).count() < 12 {
            continue;
        }
        assert!(
            !haystack.contains(&piece),
            "{what} contains part of the JIT config ({piece:?})"
        );
    }
}
