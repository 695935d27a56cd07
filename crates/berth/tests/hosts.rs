//! Operating the fleet's hosts against a live `berth serve` (real HTTP on
//! loopback, real SQLite, real containers): `GET /v1/hosts` and
//! `/v1/fleet`, cordon, uncordon and drain over HTTP and with `berth hosts`
//! (the real binary), and who may do what.

mod common;

use std::process::Output;
use std::time::Duration;

use berth::store::{ApiTokenScope, HostAdmin, JobState};
use common::{Berth, World, eventually};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

/// `METHOD path` with `token` as a bearer (none: no header): the status and
/// the JSON body.
async fn call(
    berth: &Berth,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = berth.http().request(method, format!("{}{path}", berth.url));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    (status, body)
}

async fn get(berth: &Berth, path: &str, token: Option<&str>) -> (u16, Value) {
    call(berth, reqwest::Method::GET, path, token).await
}

async fn post(berth: &Berth, path: &str, token: Option<&str>) -> (u16, Value) {
    call(berth, reqwest::Method::POST, path, token).await
}

/// The `default` host as `GET /v1/hosts/default` shows it.
async fn default_host(berth: &Berth) -> Value {
    let (status, host) = get(berth, "/v1/hosts/default", Some(&berth.admin_token)).await;
    assert_eq!(status, 200, "{host}");
    host
}

/// Waits until the `default` host is up and this replica holds its lease
/// (the implicit host is recorded `up` at start, before the lease is taken).
async fn wait_up(berth: &Berth) {
    eventually("the default host is up and watched", LIMIT, || async {
        let host = default_host(berth).await;
        host["health"] == "up" && host["owner"].is_string()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_are_listed_cordoned_uncordoned_and_drained_over_http() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    let admin = Some(berth.admin_token.as_str());
    let (read, _) = berth::api::auth::create_token(berth.store(), "viewer", ApiTokenScope::Read)
        .await
        .unwrap();
    let read = Some(read.as_str());
    wait_up(&berth).await;

    // The one implicit host, `default`, with every slot the configuration allows.
    let (status, list) = get(&berth, "/v1/hosts", read).await;
    assert_eq!(status, 200, "{list}");
    let hosts = list["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{list}");
    let host = &hosts[0];
    let slots = berth.ctx.config.dispatch.global_max_runners;
    assert_eq!(host["name"], "default");
    assert_eq!(host["health"], "up");
    assert_eq!(host["admin"], "active");
    assert_eq!(host["slots"], slots);
    assert_eq!(host["busy"], 0);
    assert_eq!(host["free"], slots);
    assert_eq!(host["warm"], 0);
    assert_eq!(host["drained"], false);
    assert_eq!(host["owner"], berth.ctx.replica_id.as_str());
    assert!(host["last_probe_at"].is_string(), "{host}");
    assert!(host["engine_version"].is_string(), "{host}");

    // Who may do what, and names that are not a host's.
    assert_eq!(get(&berth, "/v1/hosts", None).await.0, 401);
    assert_eq!(get(&berth, "/v1/fleet", None).await.0, 401);
    assert_eq!(post(&berth, "/v1/hosts/default/cordon", None).await.0, 401);
    for action in ["cordon", "uncordon", "drain"] {
        let (status, body) = post(&berth, &format!("/v1/hosts/default/{action}"), read).await;
        assert_eq!(status, 403, "{action}: {body}");
    }
    assert_eq!(default_host(&berth).await["admin"], "active");
    let too_long = "h".repeat(64);
    for bad in ["bad%20name", "a%2Fb", too_long.as_str()] {
        let (status, body) = get(&berth, &format!("/v1/hosts/{bad}"), read).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("not a host name"),
            "{body}"
        );
        let (status, _) = post(&berth, &format!("/v1/hosts/{bad}/drain"), admin).await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, body) = get(&berth, "/v1/hosts/nowhere", read).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("nowhere"),
        "{body}"
    );
    assert_eq!(post(&berth, "/v1/hosts/nowhere/cordon", admin).await.0, 404);

    // Cordoned: a new job stays queued, and the fleet says it waits with no
    // free slot.
    let (status, cordoned) = post(&berth, "/v1/hosts/default/cordon", admin).await;
    assert_eq!(status, 200, "{cordoned}");
    assert_eq!(cordoned["admin"], "cordoned");
    assert_eq!(cordoned["free"], 0);
    let stored = berth.store().host_get("default").await.unwrap().unwrap();
    assert_eq!(stored.admin, HostAdmin::Cordoned);
    let gh_job = world.queue(&["echo after-uncordon"]);
    let queued = berth.wait_state(gh_job, JobState::Queued, LIMIT).await;
    berth.ctx.wake_dispatcher();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = berth.job(gh_job).await.unwrap();
    assert_eq!(still.state, JobState::Queued, "{still:?}");
    assert_eq!(still.attempts, 0, "never claimed: {still:?}");
    let (status, fleet) = get(&berth, "/v1/fleet", read).await;
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(fleet["waiting"]["linux"], 1, "{fleet}");
    assert_eq!(fleet["free_slots"], 0, "{fleet}");
    assert_eq!(fleet["placement"], "spread");
    assert_eq!(fleet["hosts"][0]["admin"], "cordoned");
    let desired = &fleet["desired"][0];
    assert_eq!(desired["host_labels"], "", "{fleet}");
    assert_eq!(desired["demand"], 1, "{fleet}");
    assert_eq!(desired["desired_hosts"], 1, "{fleet}");
    assert_eq!(desired["available_hosts"], 0, "{fleet}");

    // Uncordoned: the job is placed on the host and runs.
    let (status, active) = post(&berth, "/v1/hosts/default/uncordon", admin).await;
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["admin"], "active");
    // Uncordoning wakes the dispatcher: the waiting job may already hold a
    // slot when the answer counts them.
    let free = active["free"].as_u64().unwrap();
    assert!(
        free == u64::from(slots) || free + 1 == u64::from(slots),
        "{active}"
    );
    let done = berth.wait_terminal(gh_job, LIMIT).await;
    assert_eq!(done.id, queued.id);
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    assert_eq!(done.host.as_deref(), Some("default"));

    // Drained: an idle host has nothing left on it at once.
    let (status, draining) = post(&berth, "/v1/hosts/default/drain", admin).await;
    assert_eq!(status, 200, "{draining}");
    assert_eq!(draining["admin"], "draining");
    assert_eq!(draining["drained"], true, "{draining}");
    assert_eq!(draining["free"], 0);
    let (_, fleet) = get(&berth, "/v1/fleet", read).await;
    assert_eq!(fleet["free_slots"], 0, "{fleet}");
    assert_eq!(fleet["hosts"][0]["drained"], true, "{fleet}");
    let (status, active) = post(&berth, "/v1/hosts/default/uncordon", admin).await;
    assert_eq!(status, 200);
    assert_eq!(active["drained"], false, "{active}");
    berth.stop().await;
}

/// Runs `berth ARGS` against the berth at `url` with `token` in `BERTH_TOKEN`.
async fn cli(url: &str, token: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env("BERTH_URL", url)
        .env("BERTH_TOKEN", token)
        .env_remove("BERTH_TOKEN_FILE")
        .env_remove("BERTH_CA_CERT")
        .kill_on_drop(true);
    tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("the command finished")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Warm containers of this world's berth, by `docker ps`.
fn warm_containers(world: &World) -> usize {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=berth.instance={}", world.instance))
        .args(["--filter", "label=berth.warm"])
        .output()
        .unwrap();
    text(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_list_and_drain_hosts_from_the_command_line() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("warm = 1")).await;
    let admin = berth.admin_token.clone();
    let (read, _) = berth::api::auth::create_token(berth.store(), "viewer", ApiTokenScope::Read)
        .await
        .unwrap();
    wait_up(&berth).await;
    eventually("a warm container is ready", LIMIT, || async {
        default_host(&berth).await["warm"] == 1
    })
    .await;

    // The table, one line per host, then the fleet.
    let out = cli(&berth.url, &read, &["hosts", "list"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATE",
            "ADMIN",
            "LABELS",
            "SLOTS",
            "USED/FREE",
            "WARM",
            "LAST",
            "PROBE",
            "OWNER"
        ],
        "{table}"
    );
    let slots = berth.ctx.config.dispatch.global_max_runners;
    let (slots_cell, used_cell) = (slots.to_string(), format!("0/{slots}"));
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("default "))
        .unwrap_or_else(|| panic!("the default host is listed: {table}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..7],
        [
            "default",
            "up",
            "active",
            "-",
            slots_cell.as_str(),
            used_cell.as_str(),
            "1"
        ],
        "{table}"
    );
    assert!(row[7].ends_with('s') && row[8] == "ago", "{table}");
    assert_eq!(row[9], berth.ctx.replica_id, "{table}");
    assert!(
        table.contains(&format!("free slots: {slots}\n"))
            && table.contains("jobs waiting: linux 0\n")
            && table.contains("hosts needed: 0 for no host labels (1 available)"),
        "{table}"
    );
    let out = cli(&berth.url, &read, &["hosts", "list", "--json"]).await;
    let json: Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(json["hosts"][0]["name"], "default", "{json}");
    assert_eq!(json["hosts"][0]["warm"], 1, "{json}");

    // Only an admin token drains, and only a configured host.
    let out = cli(&berth.url, &read, &["hosts", "drain", "default"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
    let out = cli(&berth.url, &admin, &["hosts", "cordon", "nowhere"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("404") && text(&out.stderr).contains("nowhere"),
        "{}",
        text(&out.stderr)
    );

    // Draining with a job running: the wait gives up at its timeout while
    // the job runs, and succeeds once the job finished and the warm
    // container is gone.
    let gh_job = world.queue(&["sleep 4", "echo drained-around-me"]);
    berth.wait_state(gh_job, JobState::Running, LIMIT).await;
    let out = cli(
        &berth.url,
        &admin,
        &["hosts", "drain", "default", "--wait", "--timeout", "1"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("1 job running, "),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("host default is not drained after 1s: 1 job running"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&berth.url, &admin, &["hosts", "drain", "default", "--wait"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("1 job running")),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("host default is drained"),
        "{lines:?}"
    );
    // Drained counts slots: the job's slot is free once its worker exited,
    // and the job itself is settled a moment later.
    let done = berth.wait_terminal(gh_job, LIMIT).await;
    assert_eq!(
        done.state,
        JobState::Completed,
        "a running job finishes: {done:?}"
    );
    // Its removal may still be finishing in Docker for a moment: a started
    // warm container that is removed dies, and the exit handler strikes
    // its row (which `drained` counts) before Docker is done.
    eventually(
        "the warm container is removed",
        Duration::from_secs(10),
        || async { warm_containers(&world) == 0 },
    )
    .await;
    assert!(berth.store().warm_list().await.unwrap().is_empty());
    let out = cli(&berth.url, &read, &["hosts", "list"]).await;
    assert!(
        text(&out.stdout).contains(" draining (drained) "),
        "{}",
        text(&out.stdout)
    );

    // Uncordoned: the host takes jobs, and its warm pool is refilled.
    let out = cli(&berth.url, &admin, &["hosts", "uncordon", "default"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "host default uncordoned: it takes jobs again"
    );
    eventually("the warm pool is refilled", LIMIT, || async {
        warm_containers(&world) == 1
    })
    .await;
    let out = cli(
        &berth.url,
        &admin,
        &["hosts", "cordon", "default", "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let host: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(host["admin"], "cordoned");
    berth.stop().await;
}
