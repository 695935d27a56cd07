//! The local worker image against the real Docker engine.
//!
//! Every container here carries the label `berth.test=worker-image` and is
//! removed when its test ends, pass or fail. The runner stand-in is found by
//! the library's locator (`cargo build --workspace --bins` puts it in
//! `target/debug/`), or named by `BERTH_RUNNER_STANDIN`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use base64::Engine as _;
use berth::docker::worker_image::{
    self, BUSYBOX_ENV, ENTRYPOINT_NO_CONFIG_EXIT, ENTRYPOINT_PATH, ENTRYPOINT_SCRIPT, HostTools,
    ImageSources, LATEST_TAG, LOCAL_IMAGE_REPOSITORY, RUNNER_LISTENER_PATH, Rootfs, Shell,
    WorkerImage,
};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures::{FutureExt, StreamExt};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

const TEST_LABEL: &str = "berth.test";
const TEST_LABEL_VALUE: &str = "worker-image";
/// The longest any single Docker call or container run may take here.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The image, built once per test binary and shared by the tests that only use it.
static IMAGE: tokio::sync::OnceCell<WorkerImage> = tokio::sync::OnceCell::const_new();

/// Held by the test that checks where `berth-worker-local:latest` points and
/// by the tests that build the image without busybox (which moves `latest`
/// when this machine has busybox), so they never overlap: here for threads
/// in one process (`cargo test`), and across processes by nextest's test
/// group `local-image-latest` (`.config/nextest.toml`).
static LATEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn docker() -> Docker {
    worker_image::connect(None)
        .await
        .expect("these tests need a Docker engine")
}

async fn local_image(docker: &Docker) -> WorkerImage {
    IMAGE
        .get_or_try_init(|| worker_image::ensure_local_worker_image(docker))
        .await
        .unwrap_or_else(|e| panic!("building the local worker image: {e}"))
        .clone()
}

/// Awaits `future` for at most [`CALL_TIMEOUT`], failing the test with `what`.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {CALL_TIMEOUT:?}"))
}

/// berth's hardening: read-only root with tmpfs work folders, no
/// capabilities, no privilege escalation, no network, Docker's init.
fn hardened() -> HostConfig {
    let tmpfs = "rw,nosuid,nodev,exec,size=64m".to_owned();
    HostConfig {
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([
            ("/tmp".to_owned(), tmpfs.clone()),
            (worker_image::RUNNER_WORK_FOLDER.to_owned(), tmpfs),
        ])),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
        network_mode: Some("none".to_owned()),
        init: Some(true),
        ..Default::default()
    }
}

/// A container of the local image under [`hardened`], with stdin open as
/// berth creates workers, and optionally another entrypoint and command.
fn worker(image: &WorkerImage, entrypoint: Option<&[&str]>, cmd: &[&str]) -> ContainerCreateBody {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ContainerCreateBody {
        image: Some(image.id.clone()),
        entrypoint: entrypoint.map(strings),
        cmd: (!cmd.is_empty()).then(|| strings(cmd)),
        labels: Some(HashMap::from([(
            TEST_LABEL.to_owned(),
            TEST_LABEL_VALUE.to_owned(),
        )])),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(hardened()),
        ..Default::default()
    }
}

/// What a finished container left behind.
#[derive(Debug)]
struct Finished {
    exit_code: i64,
    /// stdout and stderr, interleaved as the attach stream delivered them.
    output: String,
    /// `docker inspect` of the container, as JSON.
    inspect: String,
}

/// Creates the container, attaches, starts it, writes `stdin` and closes
/// stdin (berth's delivery), collects the output and exit code, and removes
/// the container whatever happens.
async fn run(docker: &Docker, config: ContainerCreateBody, stdin: &[u8]) -> Finished {
    let created = within("container create", docker.create_container(None, config))
        .await
        .expect("container create");
    let id = created.id;
    let outcome = AssertUnwindSafe(drive(docker, &id, stdin))
        .catch_unwind()
        .await;
    let remove = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let removed = within(
        "container remove",
        docker.remove_container(&id, Some(remove)),
    )
    .await;
    match outcome {
        Ok(finished) => {
            removed.unwrap_or_else(|e| panic!("removing container {id}: {e}"));
            finished
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn drive(docker: &Docker, id: &str, stdin: &[u8]) -> Finished {
    let attach = AttachContainerOptionsBuilder::default()
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .stream(true)
        .build();
    let mut attached = within("attach", docker.attach_container(id, Some(attach)))
        .await
        .expect("attach");
    within("start", docker.start_container(id, None))
        .await
        .expect("start");
    within("writing stdin", async {
        attached.input.write_all(stdin).await?;
        attached.input.flush().await?;
        attached.input.shutdown().await
    })
    .await
    .expect("writing and closing stdin");

    let mut output = String::new();
    within("reading output", async {
        while let Some(chunk) = attached.output.next().await {
            match chunk.expect("attach stream") {
                LogOutput::StdOut { message } | LogOutput::StdErr { message } => {
                    output.push_str(&String::from_utf8_lossy(&message));
                }
                _ => {}
            }
        }
    })
    .await;
    // The wait answers with an error for a non-zero exit; the code is read
    // from the inspect below either way.
    let _ = within("wait", docker.wait_container(id, None).next()).await;
    let inspected = within("inspect", docker.inspect_container(id, None))
        .await
        .expect("inspect");
    let state = inspected.state.clone().expect("container state");
    assert_eq!(
        state.running,
        Some(false),
        "container still running; output so far:\n{output}"
    );
    Finished {
        exit_code: state.exit_code.expect("exit code"),
        output,
        inspect: serde_json::to_string(&inspected).expect("inspect as JSON"),
    }
}

/// The image built as on a machine without busybox: the host's `/bin/sh`
/// and tools (what `BERTH_BUSYBOX=` or no busybox installed gives).
async fn host_tools_image(docker: &Docker) -> WorkerImage {
    let runner = worker_image::locate_runner_standin().unwrap_or_else(|e| panic!("{e}"));
    let host =
        HostTools::locate("busybox made unavailable by the test").unwrap_or_else(|e| panic!("{e}"));
    let sources = ImageSources {
        runner,
        shell: Shell::HostTools(host),
        hook: None,
    };
    let image = worker_image::build_worker_image(docker, &sources)
        .await
        .unwrap_or_else(|e| panic!("building the image from the host's tools: {e}"));

    // Never the busybox image's tag, whatever this machine's default is.
    let default = ImageSources::locate().unwrap_or_else(|e| panic!("{e}"));
    if let Shell::Busybox(busybox) = default.shell {
        let with_busybox = tokio::task::spawn_blocking(move || {
            Rootfs::assemble(&ImageSources {
                shell: Shell::Busybox(busybox),
                ..sources
            })
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(with_busybox.reference(), image.reference);
    }
    image
}

#[tokio::test]
async fn building_again_is_one_inspect_and_content_changes_give_a_new_tag() {
    let _latest = LATEST.lock().await;
    let docker = docker().await;
    let sources = ImageSources::locate().unwrap_or_else(|e| panic!("{e}"));

    let first = worker_image::build_worker_image(&docker, &sources)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(first.id.starts_with("sha256:"), "{first:?}");
    assert!(
        first
            .reference
            .starts_with(&format!("{LOCAL_IMAGE_REPOSITORY}:")),
        "{first:?}"
    );

    let started = Instant::now();
    let second = worker_image::build_worker_image(&docker, &sources)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = started.elapsed();
    assert!(!second.built, "the second build found the image");
    assert_eq!(second.id, first.id);
    assert_eq!(second.reference, first.reference);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");

    // A changed stand-in is a new image with a new tag.
    let dir = tempfile::tempdir().unwrap();
    let changed_runner = dir.path().join("ghsim-runner");
    let mut bytes = std::fs::read(&sources.runner).unwrap();
    bytes.extend_from_slice(b"\0changed");
    std::fs::write(&changed_runner, bytes).unwrap();
    let changed_sources = ImageSources {
        runner: changed_runner,
        ..sources.clone()
    };
    let changed = worker_image::build_worker_image(&docker, &changed_sources)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let latest = format!("{LOCAL_IMAGE_REPOSITORY}:{LATEST_TAG}");

    // Back to the original: found by its tag, and `latest` follows it again.
    let again = worker_image::build_worker_image(&docker, &sources).await;
    let remove = RemoveImageOptionsBuilder::default().force(true).build();
    let _ = within(
        "image remove",
        docker.remove_image(&changed.reference, Some(remove), None),
    )
    .await;
    let again = again.unwrap_or_else(|e| panic!("{e}"));

    assert!(changed.built);
    assert_ne!(changed.reference, first.reference);
    assert_ne!(changed.id, first.id);
    assert!(!again.built);
    assert_eq!(again.id, first.id);
    let latest_id = within("image inspect", docker.inspect_image(&latest))
        .await
        .expect("latest tag")
        .id;
    assert_eq!(latest_id.as_deref(), Some(first.id.as_str()));
}

#[tokio::test]
async fn image_config_runs_the_entrypoint_as_the_non_root_runner_user() {
    let docker = docker().await;
    let image = local_image(&docker).await;
    check_image_config(&docker, &image).await;
}

async fn check_image_config(docker: &Docker, image: &WorkerImage) {
    let inspected = within("image inspect", docker.inspect_image(&image.id))
        .await
        .expect("image inspect");
    let config = inspected.config.expect("image config");

    let user = config.user.unwrap_or_default();
    assert_eq!(user, "1001:1001");
    assert!(!user.is_empty() && !user.starts_with('0') && !user.starts_with("root"));
    assert_eq!(config.entrypoint, Some(vec![ENTRYPOINT_PATH.to_owned()]));
    assert_eq!(
        config.working_dir.as_deref(),
        Some(worker_image::RUNNER_HOME)
    );
    let env = config.env.unwrap_or_default();
    assert!(env.contains(&"HOME=/home/runner".to_owned()), "{env:?}");
    assert!(
        !env.iter().any(|e| e.contains("JITCONFIG")),
        "no config in the image env: {env:?}"
    );
    let labels = config.labels.unwrap_or_default();
    assert!(
        !labels.keys().any(|k| k.starts_with("berth.")),
        "berth.* labels are berth's to set on containers: {labels:?}"
    );
}

#[tokio::test]
async fn runner_starts_under_full_hardening() {
    let docker = docker().await;
    let image = local_image(&docker).await;
    check_runner_starts_under_full_hardening(&docker, &image).await;
}

async fn check_runner_starts_under_full_hardening(docker: &Docker, image: &WorkerImage) {
    let version = run(
        docker,
        worker(image, Some(&[RUNNER_LISTENER_PATH]), &["--version"]),
        b"",
    )
    .await;
    assert_eq!(
        version.exit_code, 0,
        "Runner.Listener --version failed (libraries not resolved?):\n{}",
        version.output
    );

    // What the hardening looks like from inside.
    let probe = r#"
        echo "uid=$(id -u) gid=$(id -g) user=$(id -un)"
        if touch /etc/berth-probe 2>/dev/null; then echo "root-fs=writable"; else echo "root-fs=read-only"; fi
        touch /tmp/probe && echo "tmp=writable"
        touch /home/runner/_work/probe && echo "work=writable"
        grep -E '^(CapEff|NoNewPrivs):' /proc/self/status | tr -s '\t ' ' '
    "#;
    let inside = run(
        docker,
        worker(image, Some(&["/bin/sh", "-c"]), &[probe]),
        b"",
    )
    .await;
    assert_eq!(inside.exit_code, 0, "{}", inside.output);
    for expected in [
        "uid=1001 gid=1001 user=runner",
        "root-fs=read-only",
        "tmp=writable",
        "work=writable",
        "CapEff: 0000000000000000",
        "NoNewPrivs: 1",
    ] {
        assert!(
            inside.output.contains(expected),
            "missing {expected:?} in:\n{}",
            inside.output
        );
    }
}

/// The image's own entrypoint, copied next to a run.sh that reports what it
/// received (a digest, never the value), so the test sees exactly what the
/// runner would get. The copy is byte-checked against the image's file.
#[tokio::test]
async fn entrypoint_hands_the_stdin_line_to_the_runner_and_inspect_never_shows_it() {
    let docker = docker().await;
    let image = local_image(&docker).await;
    check_entrypoint_hands_the_line_to_the_runner(&docker, &image).await;
}

async fn check_entrypoint_hands_the_line_to_the_runner(docker: &Docker, image: &WorkerImage) {
    let mut secret = [0u8; 48];
    rand::thread_rng().fill_bytes(&mut secret);
    let jitconfig = base64::engine::general_purpose::STANDARD.encode(secret);
    let expected_digest = hex::encode(Sha256::digest(jitconfig.as_bytes()));
    let entrypoint_digest = hex::encode(Sha256::digest(ENTRYPOINT_SCRIPT.as_bytes()));

    let script = r#"
        set -eu
        echo "entrypoint-sha256=$(sha256sum /home/runner/entrypoint.sh | cut -d' ' -f1)"
        mkdir /tmp/runner
        cp /home/runner/entrypoint.sh /tmp/runner/entrypoint.sh
        cat > /tmp/runner/run.sh <<'EOF'
#!/bin/sh
echo "args=$*"
echo "config-sha256=$(printf '%s' "$ACTIONS_RUNNER_INPUT_JITCONFIG" | sha256sum | cut -d' ' -f1)"
if tr '\0' '\n' </proc/$$/cmdline | grep -qF -- "$ACTIONS_RUNNER_INPUT_JITCONFIG"; then echo "config-in-cmdline=yes"; else echo "config-in-cmdline=no"; fi
echo "cwd=$(pwd)"
EOF
        chmod 755 /tmp/runner/run.sh /tmp/runner/entrypoint.sh
        exec /tmp/runner/entrypoint.sh --from-cmd
    "#;
    let finished = run(
        docker,
        worker(image, Some(&["/bin/sh", "-c"]), &[script]),
        format!("{jitconfig}\n").as_bytes(),
    )
    .await;

    assert_eq!(finished.exit_code, 0, "{}", finished.output);
    for expected in [
        format!("entrypoint-sha256={entrypoint_digest}"),
        "args=--from-cmd".to_owned(),
        format!("config-sha256={expected_digest}"),
        "config-in-cmdline=no".to_owned(),
        "cwd=/tmp/runner".to_owned(),
    ] {
        assert!(
            finished.output.contains(&expected),
            "missing {expected:?} in:\n{}",
            finished.output
        );
    }
    assert_no_part_of(&jitconfig, &finished.inspect, "docker inspect");
    assert_no_part_of(&jitconfig, &finished.output, "the container output");
}

/// The whole default path: the image's entrypoint, its run.sh and the
/// runner stand-in. The line is no valid JIT config, so the runner itself
/// must reject it: a failure that is not the entrypoint's own.
#[tokio::test]
async fn default_entrypoint_passes_the_line_through_run_sh_to_the_runner() {
    let docker = docker().await;
    let image = local_image(&docker).await;
    check_default_entrypoint_reaches_the_runner(&docker, &image).await;
}

async fn check_default_entrypoint_reaches_the_runner(docker: &Docker, image: &WorkerImage) {
    let finished = run(
        docker,
        worker(image, None, &[]),
        b"bm90IGEgSklUIGNvbmZpZw==\n",
    )
    .await;
    assert_ne!(finished.exit_code, 0, "{}", finished.output);
    assert_ne!(
        finished.exit_code, ENTRYPOINT_NO_CONFIG_EXIT,
        "{}",
        finished.output
    );
    assert!(
        !finished.output.contains("berth-entrypoint:"),
        "the entrypoint accepted the line: {}",
        finished.output
    );
}

#[tokio::test]
async fn entrypoint_without_a_line_on_stdin_fails_with_a_message() {
    let docker = docker().await;
    let image = local_image(&docker).await;
    check_entrypoint_without_a_line_fails(&docker, &image).await;
}

async fn check_entrypoint_without_a_line_fails(docker: &Docker, image: &WorkerImage) {
    // The image's real entrypoint; stdin is closed before any line.
    let finished = run(docker, worker(image, None, &[]), b"").await;
    assert_eq!(
        finished.exit_code, ENTRYPOINT_NO_CONFIG_EXIT,
        "{}",
        finished.output
    );
    assert!(
        finished
            .output
            .contains("no JIT runner configuration on stdin"),
        "{}",
        finished.output
    );
}

/// A machine without busybox: the image is built from the host's `/bin/sh`
/// and tools, and the runner, the production entrypoint (under that shell)
/// and job steps all work under berth's hardening (read-only root, user
/// 1001, every capability dropped, `no-new-privileges`).
#[tokio::test]
async fn without_busybox_the_host_tools_image_works_under_the_hardening() {
    let _latest = LATEST.lock().await;
    let docker = docker().await;
    let image = host_tools_image(&docker).await;
    check_image_config(&docker, &image).await;
    check_runner_starts_under_full_hardening(&docker, &image).await;
    check_entrypoint_hands_the_line_to_the_runner(&docker, &image).await;
    check_default_entrypoint_reaches_the_runner(&docker, &image).await;
    check_entrypoint_without_a_line_fails(&docker, &image).await;

    // The shell is the host's, not busybox.
    let shell = run(
        &docker,
        worker(
            &image,
            Some(&["/bin/sh", "-c"]),
            &["test ! -e /bin/busybox && echo no-busybox; ls -l /bin/sh"],
        ),
        b"",
    )
    .await;
    assert_eq!(shell.exit_code, 0, "{}", shell.output);
    assert!(shell.output.contains("no-busybox"), "{}", shell.output);
}

/// `berth demo` end to end as a new user runs it on a machine without
/// busybox (`BERTH_BUSYBOX=` stands for "not installed"): every sample job
/// succeeds in its hardened container, and the demo says what it used.
#[tokio::test]
async fn without_busybox_berth_demo_runs_end_to_end() {
    let _latest = LATEST.lock().await;
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    demo.arg("demo")
        .env(BUSYBOX_ENV, "")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let limit = Duration::from_secs(300);
    let out = tokio::time::timeout(limit, demo.output())
        .await
        .unwrap_or_else(|_| panic!("berth demo took longer than {limit:?}"))
        .expect("running berth demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    for expected in [
        format!(
            "no busybox ({BUSYBOX_ENV} is empty or `none`: no busybox): using the host's own tools"
        ),
        "runner stand-in + the host's tools (/bin/sh".to_owned(),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    for expected in [
        "all 5 jobs succeeded, each in its own container; nothing left behind",
        "uid=1001(runner) gid=1001(runner)",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "no Docker socket here",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

/// Fails when any 12-character piece of `secret` appears in `haystack`.
fn assert_no_part_of(secret: &str, haystack: &str, what: &str) {
    let chars: Vec<char> = secret.chars().collect();
    for window in chars.windows(12) {
        let piece: String = window.iter().collect();
        assert!(
            !haystack.contains(&piece),
            "{what} contains part of the JIT config ({piece})"
        );
    }
}
