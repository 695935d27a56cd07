//! The API token lifecycle against a live `berth serve`: tokens listed
//! (over HTTP and with `berth token list`) without ever showing a token or
//! its hash, revoked (`berth token revoke`) and refused from then on,
//! refused once expired, last use recorded about once a minute, and the
//! dashboard's cookie holding a read-only session that ends with the token
//! it was made from.

mod common;

use std::process::Output;
use std::time::Duration;

use berth::api::auth::{create_token, create_token_expiring, hash_token};
use berth::store::{ApiToken, ApiTokenScope, JobSource, JobState, NewApiToken, NewJob};
use common::{Berth, World, eventually};
use serde_json::{Value, json};
use uuid::Uuid;

/// Runs `berth ARGS` against the berth at `url` with `token` in `BERTH_TOKEN`.
async fn cli(url: &str, token: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env("BERTH_URL", url)
        .env("BERTH_TOKEN", token)
        .env_remove("BERTH_TOKEN_FILE")
        .env_remove("BERTH_CA_CERT")
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the command finished")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails if `output` holds any of `secrets` (tokens) or their hashes.
fn assert_no_secrets(what: &str, output: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!output.contains(secret), "{what} shows a token:\n{output}");
        assert!(
            !output.contains(&hash_token(secret)),
            "{what} shows a token's hash:\n{output}"
        );
    }
    assert!(!output.contains("token_hash"), "{what}:\n{output}");
}

/// `METHOD path` with `Authorization: Bearer <token>`: the status and the body.
async fn call(berth: &Berth, method: reqwest::Method, path: &str, token: &str) -> (u16, String) {
    let r = berth
        .http()
        .request(method, format!("{}{path}", berth.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get(berth: &Berth, path: &str, token: &str) -> (u16, String) {
    call(berth, reqwest::Method::GET, path, token).await
}

async fn post(berth: &Berth, path: &str, token: &str) -> (u16, String) {
    call(berth, reqwest::Method::POST, path, token).await
}

async fn stored(berth: &Berth, id: Uuid) -> ApiToken {
    berth.store().api_token_get(id).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_tokens_are_listed_revoked_and_expire_over_http_and_the_cli() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    let admin = berth.admin_token.clone();
    let (reader, reader_row) = create_token(berth.store(), "grafana", ApiTokenScope::Read)
        .await
        .unwrap();
    let (proxy, proxy_row) = create_token(berth.store(), "proxy", ApiTokenScope::Delegate)
        .await
        .unwrap();
    let (expired, _) = create_token_expiring(
        berth.store(),
        "old",
        ApiTokenScope::Read,
        Some(berth.store().now() - Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let secrets = [
        admin.as_str(),
        reader.as_str(),
        proxy.as_str(),
        expired.as_str(),
    ];

    // (d) The scheme is case-insensitive.
    let r = berth
        .http()
        .get(format!("{}/v1/jobs", berth.url))
        .header("Authorization", format!("BEARER {reader}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "BEARER works");

    // (a) Listed over HTTP: every token with its fields, never a secret.
    let (status, body) = get(&berth, "/v1/tokens", &admin).await;
    assert_eq!(status, 200, "{body}");
    assert_no_secrets("GET /v1/tokens", &body, &secrets);
    let list: Value = serde_json::from_str(&body).unwrap();
    let tokens = list["tokens"].as_array().unwrap();
    let names: Vec<&str> = tokens.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["test", "grafana", "proxy", "old"]);
    let grafana = &tokens[1];
    assert_eq!(grafana["id"], reader_row.id.to_string());
    assert_eq!(grafana["scope"], "read");
    for field in [
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "session_of",
    ] {
        assert!(grafana.get(field).is_some(), "{field} in {grafana}");
    }
    assert!(grafana["expires_at"].is_null(), "{grafana}");
    assert!(tokens[3]["expires_at"].is_string(), "{}", tokens[3]);
    // Only `admin` may list.
    let (status, body) = get(&berth, "/v1/tokens", &reader).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = get(&berth, "/v1/tokens?sessions=maybe", &admin).await;
    assert_eq!(status, 400);

    // (a) Listed with the CLI, as JSON and as a table.
    let out = cli(&berth.url, &admin, &["token", "list", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_no_secrets("berth token list --json", &stdout, &secrets);
    let json: Value = serde_json::from_str(&stdout).expect("--json is JSON");
    assert_eq!(json["tokens"].as_array().unwrap().len(), 4, "{json}");
    let out = cli(&berth.url, &admin, &["token", "list"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_no_secrets("berth token list", &table, &secrets);
    let header = table.lines().next().unwrap();
    for column in ["ID", "NAME", "SCOPE", "STATE", "LAST USED", "EXPIRES"] {
        assert!(header.contains(column), "{table}");
    }
    let row = |table: &str, id: Uuid| {
        table
            .lines()
            .find(|l| l.starts_with(&id.to_string()))
            .unwrap_or_else(|| panic!("{id} is listed:\n{table}"))
            .to_string()
    };
    let proxy_line = row(&table, proxy_row.id);
    assert!(
        proxy_line.contains("proxy")
            && proxy_line.contains("delegate")
            && proxy_line.contains("active"),
        "{proxy_line}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("old") && l.contains("expired")),
        "{table}"
    );
    let out = cli(&berth.url, &reader, &["token", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));

    // (c) An expired token is refused, saying so, without repeating it.
    let (status, body) = get(&berth, "/v1/jobs", &expired).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
    assert_no_secrets("the 401", &body, &secrets);
    // One that expires while in use works until then.
    let (short, short_row) = create_token_expiring(
        berth.store(),
        "short",
        ApiTokenScope::Read,
        Some(berth.store().now() + Duration::from_secs(2)),
    )
    .await
    .unwrap();
    assert_eq!(get(&berth, "/v1/jobs", &short).await.0, 200);
    let until = short_row.expires_at.unwrap();
    tokio::time::sleep(Duration::from_millis(
        ((until - berth.store().now()).whole_milliseconds().max(0) + 100) as u64,
    ))
    .await;
    let (status, body) = get(&berth, "/v1/jobs", &short).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");

    // (e) Last use is recorded (off the request's path, so eventually)...
    assert_eq!(stored(&berth, proxy_row.id).await.last_used_at, None);
    let delegate = json!({"repository": "acme/widgets", "github_job_id": 1, "run_id": 1,
        "labels": ["no-such-label"]});
    let r = berth
        .http()
        .post(format!("{}/v1/jobs/delegate", berth.url))
        .bearer_auth(&proxy)
        .json(&delegate)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "authorized, then refused for its labels");
    eventually(
        "the proxy token's use recorded",
        Duration::from_secs(5),
        || async { stored(&berth, proxy_row.id).await.last_used_at.is_some() },
    )
    .await;
    let first_use = stored(&berth, proxy_row.id).await.last_used_at;
    // ...and not again within the minute.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        let r = berth
            .http()
            .post(format!("{}/v1/jobs/delegate", berth.url))
            .bearer_auth(&proxy)
            .json(&delegate)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored(&berth, proxy_row.id).await.last_used_at,
        first_use,
        "rewritten within the minute"
    );
    let (_, body) = get(&berth, "/v1/tokens", &admin).await;
    let list: Value = serde_json::from_str(&body).unwrap();
    let listed = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == proxy_row.id.to_string())
        .unwrap();
    assert!(listed["last_used_at"].is_string(), "{listed}");

    // (b) Revoked with the CLI: refused from then on; the others still work.
    let out = cli(
        &berth.url,
        &admin,
        &["token", "revoke", &reader_row.id.to_string()],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("revoked"),
        "{}",
        text(&out.stdout)
    );
    assert_no_secrets("berth token revoke", &text(&out.stdout), &secrets);
    let (status, body) = get(&berth, "/v1/jobs", &reader).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert_no_secrets("the 401", &body, &secrets);
    assert_eq!(
        get(&berth, "/v1/jobs", &admin).await.0,
        200,
        "admin still works"
    );
    let r = berth
        .http()
        .post(format!("{}/v1/jobs/delegate", berth.url))
        .bearer_auth(&proxy)
        .json(&delegate)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "the proxy token still works");
    let revoked_at = stored(&berth, reader_row.id).await.revoked_at;
    assert!(revoked_at.is_some());

    // Over HTTP: idempotent, the token's record, never a secret.
    let path = format!("/v1/tokens/{}/revoke", reader_row.id);
    let (status, body) = post(&berth, &path, &admin).await;
    assert_eq!(status, 200, "{body}");
    assert_no_secrets("the revoke answer", &body, &secrets);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["id"], reader_row.id.to_string());
    assert_eq!(answer["name"], "grafana");
    assert_eq!(stored(&berth, reader_row.id).await.revoked_at, revoked_at);
    let (status, _) = post(
        &berth,
        &format!("/v1/tokens/{}/revoke", Uuid::now_v7()),
        &admin,
    )
    .await;
    assert_eq!(status, 404);
    // A token pasted as the id: 400, and it does not come back.
    let (status, body) = post(&berth, &format!("/v1/tokens/{proxy}/revoke"), &admin).await;
    assert_eq!(status, 400);
    assert!(!body.contains(&proxy), "{body}");
    let (status, _) = post(
        &berth,
        &format!("/v1/tokens/{}/revoke", proxy_row.id),
        &proxy,
    )
    .await;
    assert_eq!(status, 403, "only admin may revoke");
    // The CLI sends no token as an id at all.
    let out = cli(&berth.url, &admin, &["token", "revoke", &proxy]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a token id"),
        "{}",
        text(&out.stderr)
    );
    assert_no_secrets("berth token revoke", &text(&out.stderr), &secrets);
    assert_eq!(stored(&berth, proxy_row.id).await.revoked_at, None);

    let out = cli(&berth.url, &admin, &["token", "list"]).await;
    let table = text(&out.stdout);
    assert!(row(&table, reader_row.id).contains("revoked"), "{table}");
    berth.stop().await;
}

/// A client that keeps cookies and does not follow redirects.
fn new_browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The session token in a `Set-Cookie` answer of `POST /login`.
fn session_cookie(response: &reqwest::Response) -> (String, String) {
    let header = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    let value = header
        .split(';')
        .next()
        .and_then(|pair| pair.trim().strip_prefix("berth_token="))
        .unwrap_or_else(|| panic!("a berth_token cookie: {header}"))
        .to_string();
    (value, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_cookie_holds_a_read_only_session_revoked_with_its_parent() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    let (ops, ops_row) = create_token(berth.store(), "ops", ApiTokenScope::Admin)
        .await
        .unwrap();
    // A job of a pool this berth does not run: it stays queued, so it can
    // be cancelled whenever the test gets there.
    let (job, _) = berth
        .store()
        .job_insert(NewJob {
            github_job_id: 4242,
            run_id: 1,
            repository: "acme/widgets".into(),
            workflow: None,
            job_name: None,
            labels: vec!["self-hosted".into(), "elsewhere".into()],
            pool: "elsewhere".into(),
            source: JobSource::Delegate,
            scale_set: None,
            github_status: None,
            timeout_secs: None,
        })
        .await
        .unwrap();
    let job_id = job.id.to_string();

    // Signing in with an admin token sets a cookie holding another token.
    let browser = new_browser();
    let r = browser
        .post(format!("{}/login", berth.url))
        .form(&[("token", ops.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let (session, cookie) = session_cookie(&r);
    assert_ne!(session, ops, "the cookie holds the admin token");
    assert!(!cookie.contains(&ops), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "no TLS here: {cookie}");
    let row = berth
        .store()
        .api_token_find_by_hash(&hash_token(&session))
        .await
        .unwrap()
        .expect("the session is a stored token");
    assert_eq!(row.scope, ApiTokenScope::Read, "sessions only read");
    assert_eq!(row.name, "dashboard session");
    assert_eq!(row.session_of, Some(ops_row.id));
    let lifetime = row.expires_at.unwrap() - row.created_at;
    assert!(
        lifetime <= time::Duration::hours(12)
            && lifetime > time::Duration::hours(12) - time::Duration::seconds(1),
        "{lifetime}"
    );

    // It reads the dashboard...
    let r = browser.get(format!("{}/", berth.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(!html.contains(&session) && !html.contains(&ops));
    let r = browser
        .get(format!("{}/jobs/{job_id}", berth.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // ...and the API's reads, but nothing that needs admin.
    assert_eq!(get(&berth, "/v1/jobs", &session).await.0, 200);
    let cancel = format!("/v1/jobs/{job_id}/cancel");
    let (status, body) = post(&berth, &cancel, &session).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(get(&berth, "/v1/tokens", &session).await.0, 403);
    let untouched = berth.store().job_get(job.id).await.unwrap().unwrap();
    assert!(
        !untouched.cancel_requested && untouched.state == JobState::Queued,
        "{untouched:?}"
    );
    let (status, body) = post(&berth, &cancel, &ops).await;
    assert_eq!(status, 202, "the admin token itself may cancel: {body}");

    // Signing in with the session makes another session of the same token.
    let r = new_browser()
        .post(format!("{}/login", berth.url))
        .form(&[("token", session.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let (second, _) = session_cookie(&r);
    let second_row = berth
        .store()
        .api_token_find_by_hash(&hash_token(&second))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second_row.session_of, Some(ops_row.id));

    // Sessions are listed only when asked for.
    let (_, body) = get(&berth, "/v1/tokens", &berth.admin_token).await;
    assert!(!body.contains("dashboard session"), "{body}");
    let (_, body) = get(&berth, "/v1/tokens?sessions=true", &berth.admin_token).await;
    assert_no_secrets("the session list", &body, &[&ops, &session, &second]);
    let list: Value = serde_json::from_str(&body).unwrap();
    let sessions: Vec<&Value> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["session_of"] == ops_row.id.to_string())
        .collect();
    assert_eq!(sessions.len(), 2, "{body}");
    let out = cli(
        &berth.url,
        &berth.admin_token,
        &["token", "list", "--sessions"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.lines().next().unwrap().contains("SESSION OF"),
        "{table}"
    );
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains("dashboard session"))
            .count(),
        2,
        "{table}"
    );

    // Revoking the admin token ends its sessions: the cookie sends the
    // browser back to sign in, the session is refused by the API.
    let (status, body) = post(
        &berth,
        &format!("/v1/tokens/{}/revoke", ops_row.id),
        &berth.admin_token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = browser.get(format!("{}/", berth.url)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    for token in [&session, &second, &ops] {
        let (status, body) = get(&berth, "/v1/jobs", token).await;
        assert_eq!(status, 401, "{body}");
    }
    assert!(stored(&berth, row.id).await.revoked_at.is_some());
    // Signing in with a revoked token makes no session.
    let r = new_browser()
        .post(format!("{}/login", berth.url))
        .form(&[("token", ops.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());

    // Sessions a day past their expiry are deleted by retention, and counted.
    let metrics = berth.ctx.metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l == "berth_retention_pruned_total{what=\"dashboard_sessions\"} 0"),
        "{metrics}"
    );
    let now = berth.store().now();
    let stale = berth
        .store()
        .api_token_insert(NewApiToken {
            name: "dashboard session".into(),
            scope: ApiTokenScope::Read,
            token_hash: hash_token("berth_stale"),
            expires_at: Some(now - Duration::from_secs(2 * 86_400)),
            session_of: Some(ops_row.id),
        })
        .await
        .unwrap();
    berth::reconcile::retention::prune(&berth.ctx)
        .await
        .unwrap();
    assert_eq!(berth.store().api_token_get(stale.id).await.unwrap(), None);
    assert!(
        berth.store().api_token_get(row.id).await.unwrap().is_some(),
        "a session not yet expired stays"
    );
    let metrics = berth.ctx.metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l == "berth_retention_pruned_total{what=\"dashboard_sessions\"} 1"),
        "{metrics}"
    );
    berth.stop().await;
}
