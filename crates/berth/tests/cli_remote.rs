//! The operator commands (`berth jobs`, `berth logs`, `berth pools`) as a
//! user runs them: the real binary against a `berth serve` with real jobs in
//! real containers.

mod common;

use std::process::Output;
use std::time::Duration;

use berth::store::{ApiTokenScope, JobState};
use common::{Berth, World};

const JOB_LIMIT: Duration = Duration::from_secs(60);

/// Runs `berth ARGS` against the berth at `url` with `token` in `BERTH_TOKEN`.
async fn cli(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env("BERTH_URL", url)
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_TOKEN_FILE")
        .env_remove("BERTH_CA_CERT")
        .kill_on_drop(true);
    if let Some(token) = token {
        cmd.env("BERTH_TOKEN", token);
    }
    tokio::time::timeout(JOB_LIMIT, cmd.output())
        .await
        .expect("the command finished")
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_list_show_follow_and_cancel_jobs_from_the_command_line() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    let (read, _) = berth::api::auth::create_token(berth.store(), "cli", ApiTokenScope::Read)
        .await
        .unwrap();
    let read = Some(read.as_str());
    let admin = Some(berth.admin_token.as_str());

    // A finished job: listed, shown and its output read.
    let done = world.queue(&["echo hello"]);
    let done = berth.wait_terminal(done, JOB_LIMIT).await;
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    let id = done.id.to_string();

    let out = cli(&berth.url, read, &["jobs", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let header = table.lines().next().unwrap();
    for column in ["ID", "STATE", "POOL", "REPOSITORY", "WAIT", "DURATION"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("the job is listed: {table}"));
    assert!(
        row.contains("completed") && row.contains("linux") && row.contains("acme/widgets"),
        "{row}"
    );

    let out = cli(&berth.url, read, &["jobs", "list", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert!(
        json["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id.as_str() && j["state"] == "completed"),
        "{json}"
    );
    let out = cli(&berth.url, read, &["jobs", "list", "--state", "queued"]).await;
    assert!(out.status.success());
    assert!(!stdout(&out).contains(&id), "filters reach the API");

    let out = cli(&berth.url, read, &["jobs", "show", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("state") && l.ends_with("completed"))
            && shown.contains(&done.github_job_id.to_string())
            && shown.contains(done.container_id.as_deref().unwrap()),
        "{shown}"
    );

    let out = cli(&berth.url, read, &["logs", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // The worker container's output (step output goes to GitHub, as with
    // the real runner).
    let logs = stdout(&out);
    assert!(
        logs.contains(&format!("acquired job {}", done.github_job_id))
            && logs.contains("succeeded"),
        "{logs}"
    );

    let out = cli(&berth.url, read, &["pools"]).await;
    let pools = stdout(&out);
    assert!(
        pools
            .lines()
            .any(|l| l.starts_with("linux") && l.contains("self-hosted,linux")),
        "{pools}"
    );

    // `logs -f` on a running job streams until the job ends.
    let live = world.queue(&["echo begin", "sleep 2", "echo live-end"]);
    let running = berth.wait_state(live, JobState::Running, JOB_LIMIT).await;
    let out = cli(&berth.url, read, &["logs", "-f", &running.id.to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("ran job {live}")),
        "{}",
        stdout(&out)
    );
    assert!(berth.job(live).await.unwrap().state.is_terminal());

    // Cancelling needs the admin scope, and ends the job.
    let long = world.queue(&["sleep 60"]);
    let running = berth.wait_state(long, JobState::Running, JOB_LIMIT).await;
    let long_id = running.id.to_string();
    let out = cli(&berth.url, read, &["jobs", "cancel", &long_id]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    let out = cli(&berth.url, admin, &["jobs", "cancel", &long_id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("cancel requested"),
        "{}",
        stdout(&out)
    );
    let cancelled = berth.wait_terminal(long, JOB_LIMIT).await;
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:?}");

    // Errors say what is wrong.
    let out = cli(&berth.url, None, &["jobs", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("401") && stderr(&out).contains("BERTH_TOKEN"),
        "{}",
        stderr(&out)
    );
    let out = cli(&berth.url, read, &["jobs", "show", "not-a-job"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not-a-job"), "{}", stderr(&out));
    let url = berth.url.clone();
    berth.stop().await;

    let out = cli(&url, read, &["pools"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach berth"),
        "{}",
        stderr(&out)
    );
}
