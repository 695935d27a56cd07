//! Container jobs end to end (docs/container-jobs.md): the runner stand-in
//! drives `berth hook` in a real worker exactly as the runner drives its
//! container hooks, and berth runs the job container, a service and a
//! container action on the real engine, through the socket proxy.
//!
//! The images: the local worker image with the hook serves as the job
//! container's image, the service's (busybox `httpd`) and the container
//! action's; the pool allows it by its `berth-worker-local:` tag only.

mod common;

use std::time::Duration;

use berth::store::JobState;
use common::{Berth, World, eventually};
use ghsim::{ActionStep, ContainerSpec, JobSpec, ScriptStep, Services, StepInput};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

/// The pool's container-jobs settings: images of the local worker image
/// only, never pulled.
const POOL: &str = r#"
container_jobs = true
[pool.containers]
images = ["berth-worker-local:*"]
pull_policy = "never"
cpus = 1
memory = "256m"
pids_limit = 256
max_services = 2
service_health_timeout = 30
workspace_size = "64m"
allow_builds = true
"#;

/// The local image's tag (`berth-worker-local:<hash>`), as a workflow names it.
fn image_tag(world: &World) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .RepoTags}}",
            &world.image_id,
        ])
        .output()
        .unwrap();
    let tags: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    tags.into_iter()
        .find(|t| t.starts_with("berth-worker-local:") && !t.ends_with(":latest"))
        .expect("the local image has its content tag")
}

fn step(run: &str) -> StepInput {
    StepInput::Script(ScriptStep {
        run: run.into(),
        ..Default::default()
    })
}

/// Containers, networks, volumes and images carrying every label filter
/// of `filters` (`key=value`).
fn objects(filters: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for kind in [
        &["ps", "-aq"][..],
        &["network", "ls", "-q"],
        &["volume", "ls", "-q"],
        &["images", "-q"],
    ] {
        let mut cmd = std::process::Command::new("docker");
        cmd.args(kind);
        for f in filters {
            cmd.args(["--filter", &format!("label={f}")]);
        }
        let out = cmd.output().unwrap();
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| format!("{} {l}", kind[0])),
        );
    }
    found
}

/// Docker objects of any kind labelled `berth.job=<id>`.
fn job_objects(job_id: &str) -> Vec<String> {
    objects(&[format!("berth.job={job_id}")])
}

fn web_service(tag: &str) -> ContainerSpec {
    ContainerSpec {
        image: tag.to_owned(),
        entrypoint: Some("/bin/busybox".into()),
        command: Some("httpd -f -p 8080 -h /home/runner".into()),
        options: Some(
            "--health-cmd \"wget -q -O /dev/null http://127.0.0.1:8080/run.sh\" --health-interval 1s --health-retries 20"
                .into(),
        ),
        ports: vec!["8080".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_job_with_a_service_and_a_container_action_runs_and_leaves_nothing() {
    let world = World::with_container_hooks().await;
    let berth = Berth::start_reachable(&world, POOL, |_| {}).await;
    let tag = image_tag(&world);

    let gh_job = world.queue_spec(JobSpec {
        repository: "acme/widgets".into(),
        labels: common::LABELS.iter().map(|s| s.to_string()).collect(),
        container: Some(ContainerSpec {
            image: tag.clone(),
            env: [("GREETING".to_string(), "hello-from-env".to_string())].into(),
            ..Default::default()
        }),
        services: Services(vec![("web".into(), web_service(&tag))]),
        steps: vec![
            // The service, by its image's name (the runner does not tell
            // hooks the workflow's service id), from the job container.
            step("wget -q -O - http://berth-worker-local:8080/run.sh | head -n 1 | sed 's/^/service says: /'"),
            // The worker's checkout, in the shared workspace.
            step("cat \"$GITHUB_WORKSPACE/.ghsim-checkout\" | sed 's/^/checkout: /'; echo \"env: $GREETING\""),
            step("echo written-by-the-job > \"$GITHUB_WORKSPACE/out.txt\"; test -f /__e/README && echo externals-visible"),
            // A container action reads what the job wrote.
            StepInput::Action(ActionStep {
                uses: format!("docker://{tag}"),
                entrypoint: Some("/bin/cat".into()),
                args: vec!["/github/workspace/out.txt".into()],
                ..Default::default()
            }),
            // A Dockerfile action, built by berth from the action's folder.
            StepInput::Action(ActionStep {
                uses: "./.github/actions/shout".into(),
                dockerfile: Some(format!(
                    "FROM {tag}\nENTRYPOINT [\"/bin/sh\", \"-c\", \"echo built-action-says-$(cat /github/workspace/out.txt)\"]\n"
                )),
                ..Default::default()
            }),
        ],
        ..Default::default()
    });

    let running = berth.wait_state(gh_job, JobState::Running, LIMIT).await;
    // The hook credential is in the runner's process only: nothing
    // `docker inspect` shows of the worker holds it, nor does the store.
    let worker = running.container_id.clone().unwrap();
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &worker])
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.contains("ACTIONS_RUNNER_CONTAINER_HOOKS"),
        "{inspect}"
    );
    assert!(
        !inspect.contains("bhk_"),
        "a hook credential in docker inspect"
    );
    assert!(!inspect.contains("BERTH_HOOK_TOKEN"), "{inspect}");
    let job = berth.wait_terminal(gh_job, LIMIT).await;
    let log = world.sim.job_log(gh_job).unwrap_or_default();
    assert_eq!(job.state, JobState::Completed, "{job:?}\n{log}");
    assert_eq!(
        world.sim.job(gh_job).unwrap().conclusion.as_deref(),
        Some("success"),
        "{log}"
    );
    for expected in [
        "service says: #!/bin/sh",
        "checkout: ",
        "env: hello-from-env",
        "externals-visible",
        "written-by-the-job",
        "built-action-says-written-by-the-job",
    ] {
        assert!(log.contains(expected), "missing `{expected}` in\n{log}");
    }

    // The API shows what the hook made.
    let got: Value = berth
        .http()
        .get(format!("{}/v1/jobs/{}/containers", berth.url, job.id))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let roles: Vec<&str> = got["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    for role in ["job", "service", "action"] {
        assert!(roles.contains(&role), "{role} missing: {got}");
    }
    // ...and so do the dashboard's job page and `berth jobs show`.
    let page = berth
        .http()
        .get(format!("{}/jobs/{}", berth.url, job.id))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<table id=\"containers\">"), "{page}");
    assert!(
        page.contains("<td>service</td>") && page.contains("<td>action</td>"),
        "{page}"
    );
    let shown = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["jobs", "show", &job.id.to_string()])
        .env("BERTH_URL", &berth.url)
        .env("BERTH_TOKEN", &berth.admin_token)
        .env_remove("BERTH_TOKEN_FILE")
        .env_remove("BERTH_CA_CERT")
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("ROLE") && shown.contains("service") && shown.contains("removed"),
        "{shown}"
    );

    // Nothing of the job is left: containers, its network, its volumes.
    let id = running.id.to_string();
    eventually("the job's objects removed", Duration::from_secs(20), || {
        let id = id.clone();
        async move { job_objects(&id).is_empty() }
    })
    .await;
    eventually("no worker left", Duration::from_secs(15), || async {
        world.containers().is_empty()
    })
    .await;

    let metrics = berth.metrics().await;
    for line in [
        "berth_hook_commands_total{command=\"prepare_job\",outcome=\"ok\"} 1",
        "berth_hook_commands_total{command=\"run_container_step\",outcome=\"ok\"} 2",
        "berth_hook_commands_total{command=\"build\",outcome=\"ok\"} 1",
        "berth_hook_commands_total{command=\"cleanup_job\",outcome=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    berth.stop().await;
    remove_externals(&world);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_refusals_name_the_rule_and_the_credential_is_scoped_to_its_job() {
    let world = World::with_container_hooks().await;
    let berth = Berth::start_reachable(&world, POOL, |_| {}).await;
    let tag = image_tag(&world);
    let spec = |container: ContainerSpec, services: Services| JobSpec {
        repository: "acme/widgets".into(),
        labels: common::LABELS.iter().map(|s| s.to_string()).collect(),
        container: Some(container),
        services,
        steps: vec![step("echo should-not-run")],
        ..Default::default()
    };
    let outside = world.queue_spec(spec(
        ContainerSpec::image("alpine:3.20"),
        Services::default(),
    ));
    let privileged = world.queue_spec(spec(
        ContainerSpec::image(&tag),
        Services(vec![(
            "db".into(),
            ContainerSpec {
                options: Some("--privileged".into()),
                ..web_service(&tag)
            },
        )]),
    ));
    let host_bind = world.queue_spec(spec(
        ContainerSpec {
            volumes: vec!["/etc:/host-etc".into()],
            ..ContainerSpec::image(&tag)
        },
        Services::default(),
    ));
    for (gh_job, rule) in [
        (outside, "berth policy: images"),
        (privileged, "berth policy: privileged"),
        (host_bind, "berth policy: host-mounts"),
    ] {
        let job = berth.wait_terminal(gh_job, LIMIT).await;
        let log = world.sim.job_log(gh_job).unwrap_or_default();
        assert_eq!(
            world.sim.job(gh_job).unwrap().conclusion.as_deref(),
            Some("failure"),
            "{job:?}\n{log}"
        );
        assert!(log.contains(rule), "`{rule}` not in\n{log}");
        assert!(!log.contains("should-not-run"), "{log}");
    }

    // The credential: a job that sleeps in its container, and one more.
    let sleeper = |marker: &str| {
        let mut s = spec(ContainerSpec::image(&tag), Services::default());
        s.steps = vec![step(&format!("echo {marker}; sleep 30"))];
        s
    };
    let first = world.queue_spec(sleeper("first"));
    let second = world.queue_spec(sleeper("second"));
    let a = berth.wait_state(first, JobState::Running, LIMIT).await;
    let b = berth.wait_state(second, JobState::Running, LIMIT).await;
    // Both job containers exist once their steps run.
    for (gh, marker) in [(first, "first"), (second, "second")] {
        eventually("the step runs", LIMIT, || async {
            world.sim.job_log(gh).unwrap_or_default().contains(marker)
        })
        .await;
    }
    // The runners as they ran: a JIT runner takes whichever job it is
    // offered, so which runner holds which job is read back, not assumed.
    let runner_a = berth
        .store()
        .job_get(a.id)
        .await
        .unwrap()
        .unwrap()
        .runner_name
        .unwrap();
    let runner_b = berth
        .store()
        .job_get(b.id)
        .await
        .unwrap()
        .unwrap()
        .runner_name
        .unwrap();
    let credential = berth::container_jobs::credential::issue(&berth.ctx, &runner_a)
        .await
        .unwrap();
    let container_b = format!("{runner_b}-job");
    let call = |credential: String, state: Value| {
        let url = format!("{}/v1/hook/run_script_step", berth.url);
        async move {
            let body = serde_json::json!({
                "command": "run_script_step",
                "responseFile": null,
                "state": state,
                "args": {"entryPoint": "sh", "entryPointArgs": ["-c", "echo via-hook"],
                         "environmentVariables": {}, "prependPath": [], "workingDirectory": "/"}
            });
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth(credential)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    // Its own job container: allowed, output streamed, exit code 0.
    let (status, body) = call(credential.clone(), Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("via-hook") && body.contains(r#""exit_code":0"#),
        "{body}"
    );
    // Another job's container: 403.
    let (status, body) = call(
        credential.clone(),
        serde_json::json!({"container": container_b}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // An unknown credential: 401.
    let (status, _) = call("bhk_unknown".into(), Value::Null).await;
    assert_eq!(status, 401);
    // Once the job ended, its credential works no more.
    let holder = berth
        .store()
        .job_get_by_runner_name(&runner_a)
        .await
        .unwrap()
        .unwrap();
    berth.store().job_request_cancel(holder.id).await.unwrap();
    berth.ctx.wake_reconciler();
    berth
        .wait_terminal(holder.github_job_id as u64, LIMIT)
        .await;
    let (status, body) = call(credential, Value::Null).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("has ended"), "{body}");
    berth.wait_terminal(second, LIMIT).await;
    for job in [a.id, b.id] {
        let id = job.to_string();
        eventually("the job's objects removed", Duration::from_secs(30), || {
            let id = id.clone();
            async move { job_objects(&id).is_empty() }
        })
        .await;
    }
    berth.stop().await;
    remove_externals(&world);
}

/// Removes the worker image's externals volume of this test's berth: it
/// outlives jobs on purpose (one per image and installation, removed by the
/// reconciler once no pool uses the image).
fn remove_externals(world: &World) {
    let out = std::process::Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            "label=berth.role=externals",
            "--filter",
        ])
        .arg(format!("label=berth.instance={}", world.instance))
        .output()
        .unwrap();
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f", name])
            .output();
    }
}

/// Containers, networks and the jobs' volumes and images of this test's
/// berth (its externals volume aside).
fn instance_objects(world: &World) -> Vec<String> {
    let instance = format!("berth.instance={}", world.instance);
    let mut found: Vec<String> = objects(std::slice::from_ref(&instance))
        .into_iter()
        .filter(|o| !o.starts_with("volume "))
        .collect();
    found.extend(objects(&[instance, "berth.role=work".into()]));
    found
}

/// The ID of the running container with `role` of this test's berth.
fn container_with_role(world: &World, role: &str) -> Option<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=berth.instance={}", world.instance))
        .arg("--filter")
        .arg(format!("label=berth.role={role}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
}

/// A worker killed mid-job, and then berth killed with `kill -9` mid-step:
/// every container, network and volume of both jobs is gone after a
/// reconcile pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_worker_or_of_berth_mid_job_leaves_nothing() {
    use common::ServeProcess;
    let world = World::with_container_hooks().await;
    let tag = image_tag(&world);
    let port = common::free_port();
    let config = world.dir.path().join("berth.toml");
    std::fs::write(
        &config,
        world.config_toml_with(
            &format!("0.0.0.0:{port}"),
            &format!("worker_url = \"http://host.docker.internal:{port}\""),
            POOL,
        ),
    )
    .unwrap();
    world.point_webhooks_at(&format!("http://127.0.0.1:{port}"));
    let store = berth::store::Store::connect(&format!(
        "sqlite://{}",
        world.dir.path().join("berth.db").display()
    ))
    .await
    .unwrap();
    let mut serve = ServeProcess::start(&world, &config, 1);
    common::wait_listening(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).await;
    let sleeper = |marker: &str| JobSpec {
        repository: "acme/widgets".into(),
        labels: common::LABELS.iter().map(|s| s.to_string()).collect(),
        container: Some(ContainerSpec::image(&tag)),
        services: Services(vec![("web".into(), web_service(&tag))]),
        steps: vec![step(&format!("echo {marker}; sleep 600"))],
        ..Default::default()
    };
    let step_started = |gh: u64, marker: &'static str| {
        let world = &world;
        async move {
            eventually("the step runs", LIMIT, || async {
                world.sim.job_log(gh).unwrap_or_default().contains(marker)
            })
            .await
        }
    };

    // 1. The worker is killed mid-step.
    let first = world.queue_spec(sleeper("first-running"));
    step_started(first, "first-running").await;
    let job = common::wait_for_job(&store, first, LIMIT, "running", |j| {
        j.state == JobState::Running
    })
    .await;
    let worker = job.container_id.clone().unwrap();
    assert!(container_with_role(&world, "job").is_some());
    std::process::Command::new("docker")
        .args(["kill", &worker])
        .status()
        .unwrap();
    let done =
        common::wait_for_job(&store, first, LIMIT, "terminal", |j| j.state.is_terminal()).await;
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    let id = done.id.to_string();
    eventually(
        "the first job's objects removed",
        Duration::from_secs(30),
        || {
            let id = id.clone();
            async move { job_objects(&id).is_empty() }
        },
    )
    .await;

    // 2. berth is killed with kill -9 mid-step, then started again.
    let second = world.queue_spec(sleeper("second-running"));
    step_started(second, "second-running").await;
    let job = common::wait_for_job(&store, second, LIMIT, "running", |j| {
        j.state == JobState::Running
    })
    .await;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    // Without berth the hook's step stream broke: the runner fails the
    // step, its cleanup_job cannot reach berth, and the worker ends.
    let _again = ServeProcess::start(&world, &config, 2);
    common::wait_listening(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).await;
    let done =
        common::wait_for_job(&store, second, LIMIT, "terminal", |j| j.state.is_terminal()).await;
    assert!(done.state.is_terminal(), "{done:?}");
    let id = job.id.to_string();
    eventually(
        "the second job's objects removed after a reconcile pass",
        Duration::from_secs(30),
        || {
            let id = id.clone();
            async move { job_objects(&id).is_empty() }
        },
    )
    .await;
    eventually(
        "nothing of this berth left",
        Duration::from_secs(30),
        || async { instance_objects(&world).is_empty() },
    )
    .await;
    drop(_again);
    remove_externals(&world);
}
