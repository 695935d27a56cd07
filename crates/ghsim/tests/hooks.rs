//! The runner stand-in's container hooks, end to end: a simulator, the
//! stand-in (in-process with its settings given, or the `ghsim-runner`
//! binary with them in its environment) and a real hook script written by
//! the test, which records every input it gets on stdin and answers with
//! response files the test prepared.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use ghsim::engine::{ActionStep, ContainerSpec, ScriptStep, Services};
use ghsim::hooks::{self, RunnerEnv};
use ghsim::{JobSpec, JobView, SimHandle, StepInput};
use serde_json::{Value, json};

/// The test hook: records input `n` to `calls/n.json`, notes whether the
/// response file existed and was empty, prints two lines, sources
/// `run/n.sh` if present, copies `responses/n.json` to the response file,
/// sleeps `sleep/n` seconds and exits with `exit/n` (default 0).
const HOOK: &str = r#"#!/bin/sh
dir=$(dirname "$0")
input=$(cat)
n=$(( $(ls "$dir/calls" | wc -l) + 1 ))
printf '%s\n' "$input" > "$dir/calls/$n.json"
rf=$(printf '%s' "$input" | sed -n 's/.*"responseFile":"\([^"]*\)".*/\1/p')
cmd=$(printf '%s' "$input" | sed -n 's/^{"command":"\([a-z_]*\)".*/\1/p')
if [ -f "$rf" ] && [ ! -s "$rf" ]; then echo "$n empty" >> "$dir/response-files"; else echo "$n not-empty-or-missing" >> "$dir/response-files"; fi
pwd > "$dir/cwd/$n"
echo "hook $n: $cmd"
echo "hook $n on stderr" >&2
if [ -f "$dir/run/$n.sh" ]; then . "$dir/run/$n.sh"; fi
if [ -f "$dir/responses/$n.json" ]; then cp "$dir/responses/$n.json" "$rf"; fi
if [ -f "$dir/sleep/$n" ]; then sleep "$(cat "$dir/sleep/$n")"; fi
if [ -f "$dir/exit/$n" ]; then exit "$(cat "$dir/exit/$n")"; fi
exit 0
"#;

struct Hook {
    dir: tempfile::TempDir,
}

impl Hook {
    fn new() -> Hook {
        let dir = tempfile::tempdir().unwrap();
        for d in ["calls", "responses", "run", "sleep", "exit", "cwd"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("hook.sh"), HOOK).unwrap();
        Hook { dir }
    }

    fn path(&self) -> String {
        self.dir
            .path()
            .join("hook.sh")
            .to_string_lossy()
            .into_owned()
    }

    fn respond(&self, n: usize, response: Value) {
        self.write(&format!("responses/{n}.json"), &response.to_string());
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.dir.path().join(rel), text).unwrap();
    }

    /// The inputs the hook got, in order.
    fn calls(&self) -> Vec<Value> {
        (1..)
            .map(|n| self.dir.path().join(format!("calls/{n}.json")))
            .take_while(|p| p.exists())
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    fn commands(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| c["command"].as_str().unwrap().to_string())
            .collect()
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel)).unwrap_or_default()
    }

    fn env(&self) -> RunnerEnv {
        RunnerEnv {
            container_hooks: Some(self.path()),
            ..Default::default()
        }
    }
}

/// A simulator and a runner root.
struct World {
    sim: SimHandle,
    token: String,
    root: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let sim = start(fast_config()).await;
        let token = token(&sim, "acme").await;
        World {
            sim,
            token,
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn work(&self) -> PathBuf {
        self.root.path().join("_work")
    }

    fn workspace(&self) -> PathBuf {
        self.work().join("widgets/widgets")
    }

    /// Queues `spec`, runs the stand-in in-process with `env`, returns the job.
    async fn run(&self, spec: JobSpec, env: RunnerEnv) -> JobView {
        let labels: Vec<&str> = spec.labels.iter().map(String::as_str).collect();
        let job = self.sim.queue_job(spec.clone()).unwrap();
        let (_, jit) = mint_jit(
            &self.sim,
            &self.token,
            "acme/widgets",
            &format!("r{}", job.id),
            &labels,
        )
        .await;
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let opts = ghsim::runner::Options {
            root: self.root.path().to_path_buf(),
            stop,
        };
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            ghsim::runner::run_with_env(&jit, opts, env),
        )
        .await
        .expect("the stand-in finished")
        .expect("the stand-in ran the job");
        assert_eq!(outcome.job_id, job.id.to_string());
        self.sim.job(job.id).unwrap()
    }
}

fn spec(steps: Vec<StepInput>) -> JobSpec {
    JobSpec {
        repository: "acme/widgets".into(),
        labels: vec!["hooks".into()],
        steps,
        ..Default::default()
    }
}

fn run(name: &str, script: &str) -> StepInput {
    StepInput::Named {
        name: Some(name.into()),
        run: script.into(),
    }
}

fn names_and_conclusions(j: &JobView) -> Vec<(String, String)> {
    j.steps
        .iter()
        .map(|s| (s.name.clone(), s.conclusion.clone().unwrap_or_default()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn host(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn a_container_job_goes_through_the_hook_in_the_runners_order() {
    let w = World::new().await;
    let hook = Hook::new();
    let mut s = spec(vec![
        run("sh step", "echo one"),
        StepInput::Script(ScriptStep {
            name: Some("bash step".into()),
            run: "echo $X".into(),
            shell: Some("bash".into()),
            env: [("X".to_string(), "1".to_string())].into(),
        }),
        StepInput::Action(ActionStep {
            uses: "docker://alpine:3.20".into(),
            args: vec!["echo".into(), "hi".into()],
            entrypoint: Some("/bin/sh".into()),
            ..Default::default()
        }),
        StepInput::Action(ActionStep {
            name: Some("local".into()),
            uses: "./.github/actions/hello".into(),
            dockerfile: Some("FROM busybox\n".into()),
            ..Default::default()
        }),
    ]);
    s.container = Some(ContainerSpec {
        image: "node:22".into(),
        env: [("NODE_ENV".to_string(), "test".to_string())].into(),
        options: Some("--cpus 1".into()),
        ports: vec!["8080:80".into()],
        volumes: vec!["cache:/cache".into()],
        ..Default::default()
    });
    s.services = Services(vec![
        (
            "redis".into(),
            ContainerSpec {
                ports: vec!["6379".into()],
                ..ContainerSpec::image("redis:7")
            },
        ),
        ("db".into(), ContainerSpec::image("postgres:16")),
    ]);
    hook.respond(
        1,
        json!({"state": {"network": "net1", "n": 1}, "isAlpine": false,
               "context": {"container": {"id": "c1", "network": "net1"},
                           "services": [{"id": "s1", "network": "net1", "ports": {"6379": "32768"}},
                                        {"id": "s2", "network": "net1", "ports": {}}]}}),
    );
    hook.respond(2, json!({"state": {"n": 2}}));
    // 3: an empty response keeps the state.
    hook.respond(4, json!({"state": {"n": 4}}));
    hook.respond(5, json!({}));
    // Call 2 (the first run step) writes GITHUB_PATH and GITHUB_ENV through
    // the host side of their container paths.
    let work = host(&w.work());
    hook.write(
        "run/2.sh",
        &format!(
            r#"p=$(printf '%s' "$input" | sed -n 's/.*"GITHUB_PATH":"\([^"]*\)".*/\1/p')
e=$(printf '%s' "$input" | sed -n 's/.*"GITHUB_ENV":"\([^"]*\)".*/\1/p')
echo /opt/tool/bin >> "{work}${{p#/__w}}"
echo FOO=bar >> "{work}${{e#/__w}}"
"#
        ),
    );
    let job = w.run(s, hook.env()).await;

    assert_eq!(
        job.conclusion.as_deref(),
        Some("success"),
        "{:?}",
        w.sim.job_log(job.id)
    );
    assert_eq!(
        names_and_conclusions(&job),
        pairs(&[
            ("Initialize containers", "success"),
            ("sh step", "success"),
            ("bash step", "success"),
            ("Run docker://alpine:3.20", "success"),
            ("local", "success"),
            ("Stop containers", "success"),
        ])
    );
    assert_eq!(
        hook.commands(),
        [
            "prepare_job",
            "run_script_step",
            "run_script_step",
            "run_container_step",
            "run_container_step",
            "cleanup_job"
        ]
    );
    let calls = hook.calls();
    // State threading: prepare_job gets none; each call the last one given.
    let states: Vec<Value> = calls.iter().map(|c| c["state"].clone()).collect();
    assert_eq!(
        states,
        [
            Value::Null,
            json!({"network": "net1", "n": 1}),
            json!({"n": 2}),
            json!({"n": 2}),
            json!({"n": 4}),
            json!({"n": 4}),
        ]
    );
    // Response files: created empty before each call, deleted after.
    assert_eq!(
        hook.read("response-files"),
        "1 empty\n2 empty\n3 empty\n4 empty\n5 empty\n6 empty\n"
    );
    let responses = w.work().join("_temp/_runner_hook_responses");
    for c in &calls {
        let rf = c["responseFile"].as_str().unwrap();
        assert!(Path::new(rf).starts_with(&responses), "{rf}");
        assert!(!Path::new(rf).exists(), "{rf} deleted");
    }
    // The hook runs in the workspace.
    for n in 1..=6 {
        assert_eq!(hook.read(&format!("cwd/{n}")).trim(), host(&w.workspace()));
    }

    // prepare_job: the job container and the services.
    let args = &calls[0]["args"];
    let c = &args["container"];
    assert_eq!(c["image"], "node:22");
    assert_eq!(c["createOptions"], "--cpus 1");
    assert_eq!(c["workingDirectory"], "/__w/widgets/widgets");
    assert_eq!(c["entryPoint"], Value::Null);
    assert_eq!(c["entryPointArgs"], json!([]));
    assert_eq!(c["portMappings"], json!(["8080:80"]));
    assert_eq!(
        c["environmentVariables"],
        json!({"NODE_ENV": "test", "HOME": "/github/home"})
    );
    let root = host(w.root.path());
    let mounts: Vec<(String, String, bool)> = c["systemMountVolumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["sourceVolumePath"]
                    .as_str()
                    .unwrap()
                    .replace(&root, "<root>"),
                m["targetVolumePath"].as_str().unwrap().to_string(),
                m["readOnly"].as_bool().unwrap(),
            )
        })
        .collect();
    let m = |s: &str, t: &str, ro: bool| (s.to_string(), t.to_string(), ro);
    assert_eq!(
        mounts,
        [
            m("/var/run/docker.sock", "/var/run/docker.sock", false),
            m("<root>/_work", "/__w", false),
            m("<root>/externals", "/__e", true),
            m("<root>/_work/_temp", "/__w/_temp", false),
            m("<root>/_work/_actions", "/__w/_actions", false),
            m("<root>/_work/_tool", "/__w/_tool", false),
            m("<root>/_work/_temp/_github_home", "/github/home", false),
            m(
                "<root>/_work/_temp/_github_workflow",
                "/github/workflow",
                false
            ),
        ]
    );
    assert_eq!(
        c["userMountVolumes"],
        json!([{"userProvidedValue": "cache:/cache", "sourceVolumePath": "cache", "targetVolumePath": "/cache", "readOnly": false}])
    );
    let images: Vec<&str> = args["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        images,
        ["redis:7", "postgres:16"],
        "in the workflow's order"
    );
    assert_eq!(args["services"][0]["portMappings"], json!(["6379"]));
    assert!(
        args["services"][0].get("contextName").is_none(),
        "the runner sends no service id"
    );

    // run_script_step: sh by default, the script in _work/_temp, container paths.
    let a = &calls[1]["args"];
    assert_eq!(a["entryPoint"], "sh");
    let script = a["entryPointArgs"][1].as_str().unwrap();
    assert_eq!(a["entryPointArgs"][0], "-e");
    assert!(
        script.starts_with("/__w/_temp/") && script.ends_with(".sh"),
        "{script}"
    );
    assert_eq!(
        std::fs::read_to_string(w.work().join(&script["/__w/".len()..])).unwrap(),
        "echo one"
    );
    assert_eq!(a["workingDirectory"], "/__w/widgets/widgets");
    assert_eq!(a["prependPath"], json!([]));
    let env = &a["environmentVariables"];
    assert_eq!(env["GITHUB_WORKSPACE"], "/__w/widgets/widgets");
    assert_eq!(env["GITHUB_EVENT_PATH"], "/github/workflow/event.json");
    assert_eq!(env["RUNNER_TEMP"], "/__w/_temp");
    assert_eq!(env["GITHUB_REPOSITORY"], "acme/widgets");
    assert!(
        env["GITHUB_PATH"]
            .as_str()
            .unwrap()
            .starts_with("/__w/_temp/_runner_file_commands/add_path_")
    );
    assert!(env.get("GHSIM_RUN_SERVICE_URL").is_none());
    // shell: bash, the step's env, GITHUB_ENV and GITHUB_PATH of the step before.
    let a = &calls[2]["args"];
    assert_eq!(a["entryPoint"], "bash");
    assert_eq!(
        a["entryPointArgs"].as_array().unwrap()[..5],
        [
            json!("--noprofile"),
            json!("--norc"),
            json!("-e"),
            json!("-o"),
            json!("pipefail")
        ]
    );
    assert_eq!(a["environmentVariables"]["X"], "1");
    assert_eq!(a["environmentVariables"]["FOO"], "bar");
    assert_eq!(a["prependPath"], json!(["/opt/tool/bin"]));

    // run_container_step: docker://.
    let a = &calls[3]["args"];
    assert_eq!(a["image"], "alpine:3.20");
    assert_eq!(a["dockerfile"], Value::Null);
    assert_eq!(a["entryPoint"], "/bin/sh");
    assert_eq!(a["entryPointArgs"], json!(["echo", "hi"]));
    assert_eq!(a["workingDirectory"], "/github/workspace");
    assert!(a.get("prependPath").is_none());
    let env = &a["environmentVariables"];
    assert_eq!(env["HOME"], "/github/home");
    assert_eq!(env["GITHUB_WORKSPACE"], "/github/workspace");
    assert_eq!(env["GITHUB_EVENT_PATH"], "/github/workflow/event.json");
    assert_eq!(env["RUNNER_TEMP"], "/github/runner_temp");
    assert_eq!(env["INPUT_ARGS"], "echo hi");
    assert_eq!(env["INPUT_ENTRYPOINT"], "/bin/sh");
    assert_eq!(env["FOO"], "bar");
    assert!(
        env["GITHUB_ENV"]
            .as_str()
            .unwrap()
            .starts_with("/github/file_commands/set_env_")
    );
    let targets: Vec<&str> = a["systemMountVolumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["targetVolumePath"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            "/var/run/docker.sock",
            "/github/runner_temp",
            "/github/home",
            "/github/workflow",
            "/github/file_commands",
            "/github/workspace"
        ]
    );
    // run_container_step: the Dockerfile action from the simulated checkout.
    let a = &calls[4]["args"];
    let action = w.workspace().join(".github/actions/hello");
    assert_eq!(a["image"], Value::Null);
    assert_eq!(a["dockerfile"], host(&action.join("Dockerfile")));
    assert_eq!(
        std::fs::read_to_string(action.join("Dockerfile")).unwrap(),
        "FROM busybox\n"
    );
    assert!(
        std::fs::read_to_string(action.join("action.yml"))
            .unwrap()
            .contains("using: docker")
    );
    // cleanup_job.
    assert_eq!(calls[5]["args"], json!({}));

    // The simulated checkout and the event.
    let checkout = std::fs::read_to_string(w.workspace().join(".ghsim-checkout")).unwrap();
    let sha = &calls[1]["args"]["environmentVariables"]["GITHUB_SHA"];
    assert_eq!(
        checkout,
        format!(
            "repository=acme/widgets\nsha={}\nref=refs/heads/main\n",
            sha.as_str().unwrap()
        )
    );
    let event: Value = serde_json::from_str(
        &std::fs::read_to_string(w.work().join("_temp/_github_workflow/event.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(event["repository"]["full_name"], "acme/widgets");

    // The hook's output is the step's log.
    let out = &job.steps[1].output;
    assert_eq!(out[0], format!("##[group]Run '{}'", hook.path()));
    assert!(
        out[1].starts_with("shell: ") && out[1].ends_with(" -e {0}"),
        "{out:?}"
    );
    assert!(
        out.contains(&"hook 2: run_script_step".to_string()),
        "{out:?}"
    );
    assert!(out.contains(&"hook 2 on stderr".to_string()), "{out:?}");
    assert!(
        job.steps[0]
            .output
            .contains(&"hook 1: prepare_job".to_string())
    );
    assert!(
        job.steps[5]
            .output
            .contains(&"hook 6: cleanup_job".to_string())
    );
}

#[tokio::test]
async fn a_failing_hook_fails_its_step_and_containers_are_still_stopped() {
    let w = World::new().await;
    let hook = Hook::new();
    let mut s = spec(vec![run("a", "true"), run("b", "true")]);
    s.container = Some(ContainerSpec::image("alpine"));
    hook.respond(1, json!({"isAlpine": true, "state": {"k": "v"}}));
    hook.write("exit/2", "3");
    let job = w.run(s, hook.env()).await;
    assert_eq!(job.conclusion.as_deref(), Some("failure"));
    assert_eq!(
        names_and_conclusions(&job),
        pairs(&[
            ("Initialize containers", "success"),
            ("a", "failure"),
            ("b", "skipped"),
            ("Stop containers", "success"),
        ])
    );
    assert_eq!(
        hook.commands(),
        ["prepare_job", "run_script_step", "cleanup_job"]
    );
    assert_eq!(hook.calls()[2]["state"], json!({"k": "v"}));
    let out = job.steps[1].output.join("\n");
    assert!(
        out.contains(&format!(
            "hook 2 on stderr\n##[error]Process completed with exit code 3.\n##[error]{}\n##[debug]The hook script at '{}' running command 'run_script_step' did not execute successfully",
            hooks::HOOK_FAILED_MESSAGE,
            hook.path()
        )),
        "{out}"
    );
    // As on the runner, a failed call's response file is left behind.
    let rf = hook.calls()[1]["responseFile"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(Path::new(&rf).exists());
}

#[tokio::test]
async fn prepare_job_responses_are_validated_like_the_runner() {
    // A job container needs isAlpine: "Initialize containers" fails, the
    // steps are skipped, cleanup_job still runs (without the state of the
    // rejected response).
    let w = World::new().await;
    let hook = Hook::new();
    let mut s = spec(vec![run("a", "true")]);
    s.container = Some(ContainerSpec::image("alpine"));
    hook.respond(1, json!({"state": {"a": 1}}));
    let job = w.run(s, hook.env()).await;
    assert_eq!(job.conclusion.as_deref(), Some("failure"));
    assert_eq!(
        names_and_conclusions(&job),
        pairs(&[
            ("Initialize containers", "failure"),
            ("a", "skipped"),
            ("Stop containers", "success"),
        ])
    );
    let out = job.steps[0].output.join("\n");
    assert!(
        out.ends_with(&format!(
            "##[error]{}\n##[debug]{}",
            hooks::HOOK_FAILED_MESSAGE,
            hooks::IS_ALPINE_MISSING_MESSAGE
        )),
        "{out}"
    );
    assert_eq!(hook.commands(), ["prepare_job", "cleanup_job"]);
    assert_eq!(hook.calls()[1]["state"], Value::Null);
    let rf = hook.calls()[0]["responseFile"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !Path::new(&rf).exists(),
        "read and deleted before the check"
    );

    // Services only: no response at all fails too (the runner dereferences it).
    let hook = Hook::new();
    let mut s = spec(vec![run("a", "true")]);
    s.services = Services(vec![("redis".into(), ContainerSpec::image("redis"))]);
    let job = w.run(s, hook.env()).await;
    assert_eq!(job.steps[0].conclusion.as_deref(), Some("failure"));
    assert!(
        job.steps[0]
            .output
            .contains(&format!("##[error]{}", hooks::NULL_REFERENCE_MESSAGE)),
        "{:?}",
        job.steps[0].output
    );
    assert_eq!(hook.commands(), ["prepare_job", "cleanup_job"]);
    // With an answer, the services-only job's run steps run on the host.
    let hook = Hook::new();
    let mut s = spec(vec![run("a", "echo on the host; pwd")]);
    s.services = Services(vec![("redis".into(), ContainerSpec::image("redis"))]);
    hook.respond(
        1,
        json!({"context": {"services": [{"id": "s", "ports": {"6379": "1"}}]}}),
    );
    let job = w.run(s, hook.env()).await;
    assert_eq!(
        job.conclusion.as_deref(),
        Some("success"),
        "{:?}",
        job.steps
    );
    assert_eq!(
        job.steps[1].output,
        ["on the host".to_string(), host(&w.workspace())]
    );
    assert_eq!(hook.commands(), ["prepare_job", "cleanup_job"]);
}

#[tokio::test]
async fn require_job_container_fails_jobs_without_one() {
    let w = World::new().await;
    let hook = Hook::new();
    let env = RunnerEnv {
        require_job_container: true,
        ..hook.env()
    };
    let job = w.run(spec(vec![run("a", "echo never")]), env.clone()).await;
    assert_eq!(job.conclusion.as_deref(), Some("failure"));
    assert_eq!(names_and_conclusions(&job), pairs(&[("a", "skipped")]));
    assert_eq!(
        w.sim.job_log(job.id).unwrap(),
        format!("##[error]{}\n", hooks::REQUIRE_JOB_CONTAINER_MESSAGE)
    );
    assert!(hook.commands().is_empty());
    // Services are no job container either; nothing runs, not even cleanup.
    let mut s = spec(vec![run("a", "echo never")]);
    s.services = Services(vec![("redis".into(), ContainerSpec::image("redis"))]);
    let job = w.run(s, env.clone()).await;
    assert_eq!(job.conclusion.as_deref(), Some("failure"));
    assert!(
        job.steps
            .iter()
            .all(|s| s.conclusion.as_deref() == Some("skipped"))
    );
    assert!(hook.commands().is_empty());
    // With a job container the job runs.
    let mut s = spec(vec![run("a", "true")]);
    s.container = Some(ContainerSpec::image("alpine"));
    hook.respond(1, json!({"isAlpine": false}));
    let job = w.run(s, env).await;
    assert_eq!(job.conclusion.as_deref(), Some("success"));
    assert_eq!(
        hook.commands(),
        ["prepare_job", "run_script_step", "cleanup_job"]
    );
}

#[tokio::test]
async fn without_the_job_variable_or_the_env_var_no_hook_runs() {
    let w = World::new().await;
    let hook = Hook::new();
    let steps = || {
        vec![
            run("host", "echo on the host"),
            StepInput::Action(ActionStep {
                uses: "docker://alpine".into(),
                ..Default::default()
            }),
        ]
    };
    // The job does not allow container hooks.
    let mut s = spec(steps());
    s.container = Some(ContainerSpec::image("alpine"));
    s.allow_container_hooks = Some(false);
    let job = w.run(s, hook.env()).await;
    let expect = pairs(&[
        ("Initialize containers", "success"),
        ("host", "success"),
        ("Run docker://alpine", "failure"),
        ("Stop containers", "success"),
    ]);
    assert_eq!(names_and_conclusions(&job), expect);
    assert_eq!(job.steps[1].output, ["on the host"]);
    assert!(
        job.steps[2].output[0]
            .contains("the container action 'docker://alpine' needs container hooks"),
        "{:?}",
        job.steps[2].output
    );
    assert!(job.steps[0].output[0].contains("container hooks are not enabled"));
    assert!(hook.commands().is_empty());
    assert!(
        !w.workspace().join(".ghsim-checkout").exists(),
        "no checkout without hooks"
    );
    // The job allows them, but no hook is configured.
    let mut s = spec(steps());
    s.container = Some(ContainerSpec::image("alpine"));
    let job = w.run(s, RunnerEnv::default()).await;
    assert_eq!(names_and_conclusions(&job), expect);
    assert!(hook.commands().is_empty());
    // A plain job with hooks configured runs exactly as before.
    let job = w
        .run(spec(vec![run("plain", "echo plain")]), hook.env())
        .await;
    assert_eq!(names_and_conclusions(&job), pairs(&[("plain", "success")]));
    assert_eq!(job.steps[0].output, ["plain"]);
    assert!(hook.commands().is_empty());
}

#[tokio::test]
async fn a_bad_hook_path_fails_like_the_runner() {
    let w = World::new().await;
    let hook = Hook::new();
    std::fs::copy(hook.path(), hook.dir.path().join("hook.txt")).unwrap();
    let missing = hook
        .dir
        .path()
        .join("nope.sh")
        .to_string_lossy()
        .into_owned();
    let txt = hook
        .dir
        .path()
        .join("hook.txt")
        .to_string_lossy()
        .into_owned();
    for (path, detail) in [
        (
            missing.clone(),
            format!(
                "File not found at '{missing}'. Set ACTIONS_RUNNER_CONTAINER_HOOKS to the path of an existing file."
            ),
        ),
        (
            txt.clone(),
            format!(
                "Invalid file extension at '{txt}'. ACTIONS_RUNNER_CONTAINER_HOOKS must be a path to a file with one of the following extensions: .js, .sh, .ps1"
            ),
        ),
    ] {
        let mut s = spec(vec![run("a", "true")]);
        s.container = Some(ContainerSpec::image("alpine"));
        let env = RunnerEnv {
            container_hooks: Some(path),
            ..Default::default()
        };
        let job = w.run(s, env).await;
        assert_eq!(
            names_and_conclusions(&job),
            pairs(&[
                ("Initialize containers", "failure"),
                ("a", "skipped"),
                ("Stop containers", "failure"),
            ])
        );
        assert_eq!(
            job.steps[0].output,
            [
                format!("##[error]{}", hooks::HOOK_FAILED_MESSAGE),
                format!("##[debug]{detail}")
            ]
        );
    }
    assert!(hook.commands().is_empty());
}

#[tokio::test]
async fn cancelling_kills_the_hook_and_still_cleans_up() {
    let w = World::new().await;
    let hook = Hook::new();
    let mut s = spec(vec![run("long", "sleep 60"), run("after", "true")]);
    s.container = Some(ContainerSpec::image("alpine"));
    hook.respond(1, json!({"isAlpine": false}));
    hook.write("sleep/2", "30");
    let job = w.sim.queue_job(s).unwrap();
    let (_, jit) = mint_jit(&w.sim, &w.token, "acme/widgets", "cancel", &["hooks"]).await;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let opts = ghsim::runner::Options {
        root: w.root.path().to_path_buf(),
        stop,
    };
    let env = hook.env();
    let runner = tokio::spawn(async move { ghsim::runner::run_with_env(&jit, opts, env).await });
    let running = w
        .sim
        .wait_job(job.id, Duration::from_secs(20), |j| {
            j.steps.get(1).is_some_and(|s| s.status == "in_progress")
        })
        .await
        .unwrap();
    assert_eq!(running.steps[1].status, "in_progress");
    // Let the hook get going, then cancel.
    for _ in 0..100 {
        if hook.calls().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.sim.cancel_job(job.id).unwrap();
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(20), runner)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the hook was killed"
    );
    assert_eq!(outcome.conclusion, "canceled");
    let done = w.sim.job(job.id).unwrap();
    assert_eq!(done.conclusion.as_deref(), Some("cancelled"));
    assert_eq!(
        names_and_conclusions(&done),
        pairs(&[
            ("Initialize containers", "success"),
            ("long", "cancelled"),
            ("after", "skipped"),
            ("Stop containers", "success"),
        ])
    );
    assert_eq!(
        hook.commands(),
        ["prepare_job", "run_script_step", "cleanup_job"]
    );
}

/// The `ghsim-runner` binary reads the settings from its environment.
#[tokio::test]
async fn the_binary_reads_the_hook_settings_from_its_environment() {
    let w = World::new().await;
    let hook = Hook::new();
    let mut s = spec(vec![run("a", "true")]);
    s.container = Some(ContainerSpec::image("alpine"));
    hook.respond(1, json!({"isAlpine": false}));
    let job = w.sim.queue_job(s).unwrap();
    let (_, jit) = mint_jit(&w.sim, &w.token, "acme/widgets", "binary", &["hooks"]).await;
    let runner = |jit: &str, env: BTreeMap<&str, String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ghsim-runner"));
        cmd.arg("run")
            .arg("--jitconfig")
            .arg(jit)
            .env("RUNNER_ROOT", w.root.path())
            .env_remove(hooks::HOOKS_ENV)
            .env_remove(hooks::REQUIRE_JOB_CONTAINER_ENV)
            .envs(env)
            .kill_on_drop(true);
        cmd
    };
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        runner(&jit, [(hooks::HOOKS_ENV, hook.path())].into()).output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = w.sim.job(job.id).unwrap();
    assert_eq!(done.conclusion.as_deref(), Some("success"));
    assert_eq!(
        hook.commands(),
        ["prepare_job", "run_script_step", "cleanup_job"]
    );
    assert!(w.workspace().join(".ghsim-checkout").exists());

    // ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER from the environment.
    let job = w.sim.queue_job(spec(vec![run("a", "true")])).unwrap();
    let (_, jit2) = mint_jit(&w.sim, &w.token, "acme/widgets", "binary2", &["hooks"]).await;
    let mut cmd = runner(
        &jit2,
        [(hooks::REQUIRE_JOB_CONTAINER_ENV, "true".to_string())].into(),
    );
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = w.sim.job(job.id).unwrap();
    assert_eq!(done.conclusion.as_deref(), Some("failure"));
    assert!(
        w.sim
            .job_log(job.id)
            .unwrap()
            .contains(hooks::REQUIRE_JOB_CONTAINER_MESSAGE)
    );
}
