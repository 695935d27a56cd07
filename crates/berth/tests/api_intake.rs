//! The HTTP intake: webhook signatures and payload validation, the delegate
//! API with its token scopes. Bad requests must change nothing.

mod common;

use std::time::Duration;

use berth::intake::webhook::sign;
use berth::store::{ApiTokenScope, JobState};
use common::{Berth, WEBHOOK_SECRET, World};
use serde_json::{Value, json};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../fixtures/webhooks/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// The octokit `queued` example, retargeted at berth's pool.
fn queued_payload(job_id: i64) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("examples/queued.payload.json")).unwrap();
    v["workflow_job"]["id"] = json!(job_id);
    v["workflow_job"]["labels"] = json!(["self-hosted", "linux"]);
    v["repository"]["full_name"] = json!("acme/widgets");
    serde_json::to_vec(&v).unwrap()
}

async fn post_webhook(
    berth: &Berth,
    event: &str,
    delivery: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> reqwest::Response {
    let mut req = berth
        .http()
        .post(format!("{}/v1/webhooks/github", berth.url))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(sig) = signature {
        req = req.header("X-Hub-Signature-256", sig);
    }
    req.send().await.unwrap()
}

async fn job_count(berth: &Berth) -> usize {
    berth
        .store()
        .job_list(&Default::default())
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_missing_and_malformed_webhooks_change_nothing() {
    let world = World::new().await;
    // No pool can run anything here: the image does not exist, so nothing is dispatched.
    let mut config = world.config("max_runners = 1");
    config.pools[0].image =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
    let berth = Berth::start(&world, config).await;
    let key = WEBHOOK_SECRET.as_bytes();

    let body = queued_payload(42);
    // Missing and forged signatures: 401.
    let r = post_webhook(&berth, "workflow_job", "d-1", body.clone(), None).await;
    assert_eq!(r.status(), 401);
    let r = post_webhook(
        &berth,
        "workflow_job",
        "d-2",
        body.clone(),
        Some(sign(b"wrong secret", &body)),
    )
    .await;
    assert_eq!(r.status(), 401);
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let r = post_webhook(
        &berth,
        "workflow_job",
        "d-3",
        tampered,
        Some(sign(key, &body)),
    )
    .await;
    assert_eq!(r.status(), 401);
    // Malformed JSON and missing fields, correctly signed: 400 with a message.
    for bad in [
        b"{not json".to_vec(),
        br#"{"action":"queued","repository":{"full_name":"acme/widgets"}}"#.to_vec(),
        br#"{"action":"queued","workflow_job":{"id":"seven","run_id":1},"repository":{"full_name":"acme/widgets"}}"#.to_vec(),
    ] {
        let r = post_webhook(&berth, "workflow_job", "d-4", bad.clone(), Some(sign(key, &bad))).await;
        assert_eq!(r.status(), 400);
        let msg: Value = r.json().await.unwrap();
        assert!(msg["error"].as_str().unwrap().contains("malformed"), "{msg}");
    }
    // Over GitHub's 25 MiB cap: 413.
    let huge = vec![b' '; 25 * 1024 * 1024 + 1];
    let r = post_webhook(
        &berth,
        "workflow_job",
        "d-5",
        huge.clone(),
        Some(sign(key, &huge)),
    )
    .await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        job_count(&berth).await,
        0,
        "refused requests changed the store"
    );

    // ping is answered; other events are acknowledged and ignored.
    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
    let r = post_webhook(&berth, "ping", "d-6", ping.clone(), Some(sign(key, &ping))).await;
    assert_eq!(r.status(), 200);
    let r = post_webhook(&berth, "push", "d-7", ping.clone(), Some(sign(key, &ping))).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "ignored");

    // A job no pool serves is ignored, counted, not an error.
    let mut gpu: Value = serde_json::from_slice(&queued_payload(43)).unwrap();
    gpu["workflow_job"]["labels"] = json!(["self-hosted", "gpu"]);
    let gpu = serde_json::to_vec(&gpu).unwrap();
    let r = post_webhook(
        &berth,
        "workflow_job",
        "d-8",
        gpu.clone(),
        Some(sign(key, &gpu)),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "ignored");
    assert_eq!(job_count(&berth).await, 0);

    // The real thing, then its redelivery and a second delivery of the same job.
    let started = std::time::Instant::now();
    let r = post_webhook(
        &berth,
        "workflow_job",
        "d-9",
        body.clone(),
        Some(sign(key, &body)),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered within milliseconds"
    );
    assert_eq!(r.status(), 202);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["outcome"], "queued");
    let r = post_webhook(
        &berth,
        "workflow_job",
        "d-9",
        body.clone(),
        Some(sign(key, &body)),
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "duplicate");
    let r = post_webhook(
        &berth,
        "workflow_job",
        "d-10",
        body.clone(),
        Some(sign(key, &body)),
    )
    .await;
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["outcome"], "duplicate");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(job_count(&berth).await, 1);
    let metrics = berth.ctx.metrics.encode();
    for outcome in [
        "accepted",
        "duplicate",
        "ignored",
        "invalid",
        "unauthorized",
    ] {
        assert!(
            metrics.contains(&format!(
                "berth_webhook_deliveries_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome} not counted:\n{metrics}"
        );
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_api_needs_a_delegate_token_and_is_idempotent() {
    let world = World::new().await;
    let mut config = world.config("");
    config.pools[0].image =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
    config.dispatch.global_max_runners = 1;
    let berth = Berth::start(&world, config).await;
    let (delegate, _) =
        berth::api::auth::create_token(berth.store(), "proxy", ApiTokenScope::Delegate)
            .await
            .unwrap();
    let (read, _) = berth::api::auth::create_token(berth.store(), "viewer", ApiTokenScope::Read)
        .await
        .unwrap();
    let url = format!("{}/v1/jobs/delegate", berth.url);
    let body = json!({
        "repository": "acme/widgets",
        "github_job_id": 777,
        "run_id": 555,
        "labels": ["self-hosted", "linux"],
        "workflow": "CI",
        "job_name": "build"
    });
    let client = berth.http();
    let post = |token: Option<&str>, body: Value| {
        let mut req = client.post(&url).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(post(None, body.clone()).await.unwrap().status(), 401);
    assert_eq!(
        post(Some("berth_forged"), body.clone())
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(post(Some(&read), body.clone()).await.unwrap().status(), 403);
    for bad in [
        json!({"repository": "no-slash", "github_job_id": 1, "run_id": 1, "labels": ["linux"]}),
        json!({"repository": "a/b", "github_job_id": -1, "run_id": 1, "labels": ["linux"]}),
        json!({"repository": "a/b", "github_job_id": 1, "run_id": 1, "labels": []}),
        json!({"repository": "a/b", "github_job_id": 1, "run_id": 1}),
        json!({"repository": "a/b", "github_job_id": 1, "run_id": 1, "labels": ["linux"], "surprise": true}),
    ] {
        let r = post(Some(&delegate), bad.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.json::<Value>().await.unwrap()["error"].as_str().is_some());
    }
    let r = post(
        Some(&delegate),
        json!({"repository": "acme/widgets", "github_job_id": 9, "run_id": 1, "labels": ["gpu"]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        berth
            .store()
            .job_list(&Default::default())
            .await
            .unwrap()
            .len(),
        0
    );

    let r = post(Some(&delegate), body.clone()).await.unwrap();
    assert_eq!(r.status(), 202);
    let first: Value = r.json().await.unwrap();
    let r = post(Some(&delegate), body.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["github_job_id"], 777);
    assert_eq!(
        berth
            .store()
            .job_list(&Default::default())
            .await
            .unwrap()
            .len(),
        1
    );

    // Reading needs `read`; cancelling needs `admin`.
    let id = first["id"].as_str().unwrap();
    let get = client
        .get(format!("{}/v1/jobs/{id}", berth.url))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let list = client
        .get(format!(
            "{}/v1/jobs?state=queued,provisioning,failed",
            berth.url
        ))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(
        list.json::<Value>().await.unwrap()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let bad_state = client
        .get(format!("{}/v1/jobs?state=bogus", berth.url))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_state.status(), 400);
    let cancel = client
        .post(format!("{}/v1/jobs/{id}/cancel", berth.url))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 403);
    let missing = client
        .get(format!(
            "{}/v1/jobs/0190a5c8-0000-7000-8000-000000000000",
            berth.url
        ))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let job = berth.wait_terminal(777, Duration::from_secs(30)).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.error
            .as_deref()
            .unwrap()
            .contains("not on the Docker host"),
        "{job:?}"
    );
    let metrics = berth.ctx.metrics.encode();
    assert!(
        metrics.contains("berth_job_delegation_requests_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_job_delegation_requests_total{outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    // Refusals count too: no token, a forged one and the wrong scope; five
    // malformed bodies and one no pool serves.
    assert!(
        metrics.contains("berth_job_delegation_requests_total{outcome=\"unauthorized\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_job_delegation_requests_total{outcome=\"invalid\"} 6"),
        "{metrics}"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let world = World::new().await;
    let berth = Berth::start(&world, world.config("")).await;
    let client = berth.http();
    let r = client
        .get(format!("{}/healthz", berth.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/readyz", berth.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["store"], "ok");
    assert_eq!(ready["docker"], "ok");
    // The first reconcile pass lists runners on GitHub, so that family has a series soon.
    common::eventually(
        "GitHub requests counted",
        Duration::from_secs(10),
        || async {
            berth.metrics().await.contains(
                "berth_github_api_requests_total{endpoint=\"list_runners\",status=\"200\"}",
            )
        },
    )
    .await;
    let metrics = berth.metrics().await;
    for name in [
        "berth_job_queue_size",
        "berth_active_worker_containers",
        "berth_container_creation_duration_seconds",
        "berth_job_execution_duration_seconds",
        "berth_github_api_requests",
        "berth_job_delegation_requests",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_can_serve_tls() {
    let world = World::new().await;
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_path = world.dir.path().join("tls.crt");
    let key_path = world.dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut config = world.config("");
    config.server.tls_cert = Some(cert_path);
    config.server.tls_key = Some(key_path);
    let berth = Berth::start(&world, config).await;
    let https = berth.url.replace("http://", "https://");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client.get(format!("{https}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{https}/v1/jobs"))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP gets no answer, and a client that does not trust the certificate refuses it.
    assert!(
        reqwest::get(format!("{}/healthz", berth.url))
            .await
            .is_err()
    );
    assert!(reqwest::get(format!("{https}/healthz")).await.is_err());
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_can_require_a_token() {
    let world = World::new().await;
    let mut config = world.config("");
    config.server.public_metrics = false;
    config.server.public_health = false;
    let berth = Berth::start(&world, config).await;
    let (read, _) =
        berth::api::auth::create_token(berth.store(), "prometheus", ApiTokenScope::Read)
            .await
            .unwrap();
    let (delegate, _) =
        berth::api::auth::create_token(berth.store(), "proxy", ApiTokenScope::Delegate)
            .await
            .unwrap();
    let client = berth.http();
    // (The dashboard at `/` redirects to its login page instead: tests/dashboard.rs.)
    for path in ["/metrics", "/healthz", "/readyz", "/v1/jobs"] {
        let url = format!("{}{path}", berth.url);
        assert_eq!(
            client.get(&url).send().await.unwrap().status(),
            401,
            "{path}"
        );
        assert_eq!(
            client
                .get(&url)
                .bearer_auth(&delegate)
                .send()
                .await
                .unwrap()
                .status(),
            403,
            "{path}"
        );
        assert_eq!(
            client
                .get(&url)
                .bearer_auth(&read)
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    berth.stop().await;
}

/// `berth serve` as a real process with only an API (no pools): the tests
/// below read its memory and open files from /proc while attacking it.
struct LoneApi {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl LoneApi {
    async fn start(server_toml: &str) -> LoneApi {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", common::free_port());
        let config = dir.path().join("berth.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"{addr}\"\n{server_toml}\n[store]\nurl = \"sqlite://{}\"\n\
                 [github]\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n",
                dir.path().join("berth.db").display()
            ),
        )
        .unwrap();
        // Started with the common soft limit of 1,024 open files, which
        // berth raises to the hard limit.
        let child = std::process::Command::new("sh")
            .args(["-c", "ulimit -Sn 1024 && exec \"$0\" serve --config \"$1\""])
            .arg(env!("CARGO_BIN_EXE_berth"))
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        common::wait_listening(&addr, Duration::from_secs(20)).await;
        LoneApi {
            child,
            addr,
            _dir: dir,
        }
    }

    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// The soft and hard limits on open files.
    fn open_files_limits(&self) -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut fields = line["Max open files".len()..].split_whitespace();
        (
            fields.next().unwrap().to_string(),
            fields.next().unwrap().to_string(),
        )
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn metric(&self, text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `/healthz` and a signed ping webhook are both answered within 1 s.
    async fn answers_others_within_1s(&self, scheme: &str, client: &reqwest::Client) {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            client
                .get(format!("{scheme}://{}/healthz", self.addr))
                .send(),
        )
        .await
        .expect("/healthz answered within 1 s")
        .unwrap();
        assert_eq!(r.status(), 200);
        let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
        let signature = sign(WEBHOOK_SECRET.as_bytes(), &body);
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            client
                .post(format!("{scheme}://{}/v1/webhooks/github", self.addr))
                .header("X-GitHub-Event", "ping")
                .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
                .header("X-Hub-Signature-256", signature)
                .header("Content-Type", "application/json")
                .body(body)
                .send(),
        )
        .await
        .expect("a signed webhook answered within 1 s")
        .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

impl Drop for LoneApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `limit` for the server to close `stream`: a read gives EOF
/// or a reset (whatever it answered first is skipped).
async fn closed_by_server(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Slowloris on headers, and twice the connection cap of idle clients that
/// each sent one byte: the API keeps answering others within 1 s, holds no
/// more sockets than its cap, and closes the stalled ones after the
/// header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_clients_cannot_lock_others_out() {
    use tokio::io::AsyncWriteExt;
    let api = LoneApi::start("max_connections = 32\nheader_timeout = 1.5").await;
    let (soft, hard) = api.open_files_limits();
    assert_eq!(
        soft, hard,
        "the soft open-files limit is raised to the hard one"
    );
    let client = reqwest::Client::new();
    api.answers_others_within_1s("http", &client).await;
    let files_before = api.open_files();
    let rss_before = api.rss_kib();
    let mut idle = Vec::new();
    for _ in 0..64 {
        let mut s = tokio::net::TcpStream::connect(&api.addr).await.unwrap();
        s.write_all(b"G").await.unwrap();
        idle.push(s);
    }
    // One client trickles its headers a byte at a time.
    let mut slow = tokio::net::TcpStream::connect(&api.addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed_by_server(&mut slow, Duration::from_secs(1)).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.answers_others_within_1s("http", &client).await;
    let files = api.open_files();
    assert!(
        files <= files_before + 32 + 4,
        "the server holds {files} files (before: {files_before}; cap 32 connections)"
    );
    let rss = api.rss_kib();
    assert!(
        rss < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss} KiB"
    );
    for s in &mut idle {
        assert!(
            closed_by_server(s, Duration::from_secs(4)).await,
            "an idle connection was left open past the header timeout"
        );
    }
    assert!(
        trickle.await.unwrap(),
        "the trickling client was not cut off"
    );
    let text = api.metrics().await;
    let closed = api.metric(
        &text,
        "berth_api_connections_closed_total{reason=\"header_timeout\"}",
    ) + api.metric(
        &text,
        "berth_api_connections_closed_total{reason=\"evicted\"}",
    );
    assert!(closed >= 65.0, "{text}");
    api.answers_others_within_1s("http", &client).await;
}

/// Stalled webhook bodies: a large body that stops arriving, and one that
/// trickles below the minimum rate, are cut off (408) after the body
/// timeout and the rate grace; meanwhile others are answered, memory stays
/// bounded, and a body declared too large is refused before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_oversized_bodies_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let api = LoneApi::start("body_timeout = 2\nbody_min_rate = 4096").await;
    let client = reqwest::Client::new();
    let rss_before = api.rss_kib();
    let head = |len: usize| {
        format!(
            "POST /v1/webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: ping\r\n\
             X-GitHub-Delivery: d\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    let mut stalled = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&api.addr).await.unwrap();
        s.write_all(head(24 << 20).as_bytes()).await.unwrap();
        s.write_all(&vec![b' '; 4 << 20]).await.unwrap();
        stalled.push(s);
    }
    api.answers_others_within_1s("http", &client).await;
    for s in &mut stalled {
        let mut answer = Vec::new();
        use tokio::io::AsyncReadExt;
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "a stalled body was not cut off");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "cut off after {took:?}"
    );
    let rss_after = api.rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Below the minimum rate: cut off after the grace, well before the
    // 2 s timeout would... (the timeout is the shorter here, so use a
    // server whose timeout is long).
    let slow_api = LoneApi::start("body_timeout = 60\nbody_min_rate = 4096").await;
    let mut s = tokio::net::TcpStream::connect(&slow_api.addr)
        .await
        .unwrap();
    s.write_all(head(1 << 20).as_bytes()).await.unwrap();
    let trickle_started = std::time::Instant::now();
    let mut cut_off = false;
    for _ in 0..200 {
        if s.write_all(&[b' '; 100]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if trickle_started.elapsed() > Duration::from_secs(12) {
            break;
        }
    }
    assert!(
        cut_off || closed_by_server(&mut s, Duration::from_secs(2)).await,
        "a body trickling at 1 kB/s was not cut off"
    );
    let text = slow_api.metrics().await;
    assert_eq!(
        slow_api.metric(
            &text,
            "berth_api_requests_refused_total{reason=\"body_too_slow\"}"
        ),
        1.0,
        "{text}"
    );

    // Declared too large: 413 at once, without sending a byte of the body.
    let mut s = tokio::net::TcpStream::connect(&api.addr).await.unwrap();
    s.write_all(head(1 << 30).as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let text = api.metrics().await;
    assert_eq!(
        api.metric(
            &text,
            "berth_api_requests_refused_total{reason=\"body_timeout\"}"
        ),
        4.0,
        "{text}"
    );
}

/// A client that opens a TLS connection and never says hello is closed
/// after the handshake timeout; others are answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_clients_are_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let api = LoneApi::start(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_handshake_timeout = 1\nmax_connections = 16",
        cert_path.display(),
        key_path.display()
    ))
    .await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let rss_before = api.rss_kib();
    let mut silent = Vec::new();
    for _ in 0..32 {
        silent.push(tokio::net::TcpStream::connect(&api.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.answers_others_within_1s("https", &client).await;
    let rss = api.rss_kib();
    assert!(
        rss < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss} KiB"
    );
    let started = std::time::Instant::now();
    for s in &mut silent {
        assert!(
            closed_by_server(s, Duration::from_secs(3)).await,
            "a silent TLS client was left open"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Inputs found by probing: repository names GitHub never uses, a pool
/// whose scope does not cover the repository, a 1.5 MB job name with
/// terminal escapes, a 60 kB delivery id. Each is refused or bounded, and
/// the CLI prints what is stored without raw control characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_or_bounded() {
    let world = World::new().await;
    let mut config = world.config("");
    // No such image: delegated jobs fail at once, nothing keeps running.
    config.pools[0].image =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
    let berth = Berth::start(&world, config).await;
    let client = berth.http();
    let url = format!("{}/v1/jobs/delegate", berth.url);
    let delegate = |body: Value| {
        client
            .post(&url)
            .bearer_auth(&berth.admin_token)
            .json(&body)
            .send()
    };
    for repository in [
        "../x",
        "acme/..",
        "./.",
        "acme/a b",
        "acme/x/../../y",
        "%2e%2e/x",
    ] {
        let r = delegate(
            json!({"repository": repository, "github_job_id": 11, "run_id": 1,
            "labels": ["self-hosted", "linux"]}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 400, "{repository}");
        let error = r.json::<Value>().await.unwrap()["error"].to_string();
        assert!(error.contains("repository"), "{error}");
    }
    // The pool is org:acme: it does not serve another owner's repository.
    let r = delegate(
        json!({"repository": "evil/widgets", "github_job_id": 12, "run_id": 1,
        "labels": ["self-hosted", "linux"], "pool": "linux"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let error = r.json::<Value>().await.unwrap()["error"].to_string();
    assert!(error.contains("does not cover"), "{error}");
    assert_eq!(job_count(&berth).await, 0, "nothing refused was stored");

    // A huge job name with escape sequences: stored cut, printed escaped.
    let name = format!("\u{1b}[2J\u{1b}]0;pwned\u{7}{}", "n".repeat(1_500_000));
    let r = delegate(
        json!({"repository": "acme/widgets", "github_job_id": 13, "run_id": 1,
        "labels": ["self-hosted", "linux"], "job_name": name}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let stored = job["job_name"].as_str().unwrap();
    assert_eq!(stored.chars().count(), 1025, "cut at 1,024 characters");
    assert!(stored.ends_with('…'));
    let id = job["id"].as_str().unwrap().to_string();
    let list = client
        .get(format!("{}/v1/jobs", berth.url))
        .bearer_auth(&berth.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        list.len() < 8_000,
        "the job list stays small: {} bytes",
        list.len()
    );
    for args in [vec!["jobs", "show", id.as_str()], vec!["jobs", "list"]] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(&args)
            .env("BERTH_URL", &berth.url)
            .env("BERTH_TOKEN", &berth.admin_token)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
            "{args:?}: {stdout:?}"
        );
        assert!(stdout.contains("\\u{1b}[2J"), "{args:?}: {stdout}");
    }

    // A signed delivery with a 60 kB delivery id (the id is not signed).
    let body = queued_payload(4_242);
    let signature = sign(WEBHOOK_SECRET.as_bytes(), &body);
    let long_id = "d".repeat(60_000);
    let r = post_webhook(&berth, "workflow_job", &long_id, body, Some(signature)).await;
    assert_eq!(r.status(), 400);
    assert!(
        berth.job(4_242).await.is_none(),
        "no job from a refused delivery"
    );
    assert!(
        berth
            .store()
            .delivery_record(&long_id[..100], berth.store().now())
            .await
            .unwrap(),
        "nothing was recorded for it"
    );

    // The dashboard's pages say how browsers must treat them.
    let login = client
        .get(format!("{}/login", berth.url))
        .send()
        .await
        .unwrap();
    for (header, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(
            login.headers().get(header).and_then(|v| v.to_str().ok()),
            Some(value),
            "{header}"
        );
    }
    berth.stop().await;
}

/// `/readyz` tells an anonymous caller what is down, not the internal
/// error (paths, addresses); a `read` token sees the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_shows_errors_only_to_token_holders() {
    // Docker through a socket proxy that then goes away.
    let proxy = common::socket_proxy().await;
    let api = LoneApi::start(&format!("[docker]\nhost = \"{}\"", proxy.docker_host())).await;
    let ready = reqwest::get(format!("http://{}/readyz", api.addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    proxy.stop().await;
    let r = reqwest::get(format!("http://{}/readyz", api.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["docker"], "unavailable", "{body}");
    assert_eq!(body["store"], "ok", "{body}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["token", "create", "--scope", "read", "--config"])
        .arg(api._dir.path().join("berth.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let body: Value = reqwest::Client::new()
        .get(format!("http://{}/readyz", api.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let detail = body["docker"].as_str().unwrap();
    assert!(detail != "unavailable" && detail != "ok", "{body}");
}

/// SQLite is for one `berth serve`: a second one on the same file is
/// refused with a clear error (it would take the first one's leases as a
/// dead predecessor's), and the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_on_one_sqlite_file_is_refused() {
    let api = LoneApi::start("").await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config"])
        .arg(api._dir.path().join("berth.toml"))
        .env(
            "BERTH_SERVER__LISTEN",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("the second replica exits")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("another berth serve (pid {})", api.child.id()))
            && stderr.contains("PostgreSQL"),
        "{stderr}"
    );
    let r = reqwest::get(format!("http://{}/healthz", api.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the first one still serves");
}
