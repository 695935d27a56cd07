//! Shared helpers for ghsim's integration tests: a fast simulator config,
//! App JWTs and installation tokens, schema validators for the fixtures,
//! a webhook receiver, a hand-driven runner, and the `ghsim-runner` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ghsim::auth::{KeyPair, now_secs, sign_app_jwt, sign_assertion};
use ghsim::runner_protocol::{
    AcquireJobRequest, BrokerMessage, BrokerSession, JitConfig, JobRequest, JobRequestRef,
    TokenResponse,
};
use ghsim::{SimConfig, SimHandle, Simulator};
use serde_json::{Value, json};

/// The repository's fixtures folder (`fixtures/`, real GitHub data with its
/// provenance in `fixtures/PROVENANCE.md`), or `GHSIM_FIXTURES`.
pub fn fixtures() -> PathBuf {
    if let Ok(p) = std::env::var("GHSIM_FIXTURES") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn read_json(p: impl AsRef<Path>) -> Value {
    let p = fixtures().join(p);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A config with short timers.
pub fn fast_config() -> SimConfig {
    SimConfig {
        poll_timeout: Duration::from_millis(400),
        offer_timeout: Duration::from_secs(5),
        environment_auto_approve: None,
        ..SimConfig::default()
    }
}

pub async fn start(cfg: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(cfg, listener).unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A good App JWT.
pub fn app_jwt(sim: &SimHandle) -> String {
    let key = KeyPair::from_pem(&sim.app_private_key_pem()).unwrap();
    let now = now_secs();
    sign_app_jwt(&key, &sim.app_id().to_string(), now - 60, now + 540).unwrap()
}

/// An installation token for `acme` obtained over REST.
pub async fn token(sim: &SimHandle, login: &str) -> String {
    let id = sim.installation_id(login).unwrap();
    let r = http()
        .post(format!(
            "{}/app/installations/{id}/access_tokens",
            sim.api_url()
        ))
        .bearer_auth(app_jwt(sim))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Mints a repo JIT config over REST; returns (runner json, encoded).
pub async fn mint_jit(
    sim: &SimHandle,
    tok: &str,
    repo: &str,
    name: &str,
    labels: &[&str],
) -> (Value, String) {
    let r = http()
        .post(format!(
            "{}/repos/{repo}/actions/runners/generate-jitconfig",
            sim.api_url()
        ))
        .bearer_auth(tok)
        .json(
            &json!({"name": name, "runner_group_id": 1, "labels": labels, "work_folder": "_work"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    (
        v["runner"].clone(),
        v["encoded_jit_config"].as_str().unwrap().to_string(),
    )
}

// ---------------------------------------------------------------- schemas

/// Validator for one octokit webhook schema (`queued`, `in_progress`, …), `common/*` refs resolved from the fixtures.
pub fn webhook_validator(action: &str) -> jsonschema::Validator {
    struct Retriever(PathBuf);
    impl jsonschema::Retrieve for Retriever {
        fn retrieve(
            &self,
            uri: &jsonschema::Uri<String>,
        ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
            let name = uri
                .path()
                .as_str()
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            let p = self.0.join("common").join(&name);
            Ok(serde_json::from_str(
                &std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?,
            )?)
        }
    }
    let dir = fixtures().join("webhooks/schemas");
    let schema = read_json(format!("webhooks/schemas/{action}.schema.json"));
    jsonschema::options()
        .with_retriever(Retriever(dir))
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema {action}: {e}"))
}

pub fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not validate:\n{}\n{}",
        errors.join("\n"),
        instance
    );
}

/// OpenAPI 3.0 → JSON Schema: `nullable: true` becomes `anyOf [.., null]`.
fn openapi_to_jsonschema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, val) in m {
                if k == "nullable" || k == "example" || k == "examples" {
                    continue;
                }
                out.insert(k.clone(), openapi_to_jsonschema(val));
            }
            if m.get("nullable") == Some(&Value::Bool(true)) {
                json!({"anyOf": [Value::Object(out), {"type": "null"}]})
            } else {
                Value::Object(out)
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(openapi_to_jsonschema).collect()),
        other => other.clone(),
    }
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.trim_start_matches('#');
            resolve(
                doc,
                doc.pointer(ptr).unwrap_or_else(|| panic!("unresolved {r}")),
            )
        }
        None => v,
    }
}

/// A validator for the response of `method path` with `status` in an OpenAPI excerpt;
/// `None` when that response has no JSON body.
pub fn openapi_validator(
    file: &str,
    path: &str,
    method: &str,
    status: u16,
) -> Option<jsonschema::Validator> {
    let doc = read_json(format!("openapi/{file}"));
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{file}: no operation {method} {path}");
    let resp = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{file}: {method} {path} has no {status} response"));
    let resp = resolve(&doc, resp);
    let schema = resp
        .get("content")?
        .get("application/json")?
        .get("schema")?;
    let root = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "components": openapi_to_jsonschema(&doc["components"]),
        "allOf": [openapi_to_jsonschema(schema)],
    });
    Some(
        jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{file} {method} {path} {status}: {e}")),
    )
}

/// A validator for the component schema `name` of an OpenAPI excerpt (for
/// answers GitHub gives that the operation does not document, such as a
/// 401 or 404 `basic-error`).
pub fn component_validator(file: &str, name: &str) -> jsonschema::Validator {
    let doc = read_json(format!("openapi/{file}"));
    assert!(
        doc["components"]["schemas"][name].is_object(),
        "{file}: no schema {name}"
    );
    let root = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "components": openapi_to_jsonschema(&doc["components"]),
        "allOf": [{"$ref": format!("#/components/schemas/{name}")}],
    });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{file} {name}: {e}"))
}

/// Checks a REST answer against its OpenAPI response (status must be documented).
pub async fn check_openapi(
    resp: reqwest::Response,
    file: &str,
    path: &str,
    method: &str,
) -> (u16, Value) {
    let status = resp.status().as_u16();
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-used",
        "x-ratelimit-resource",
    ] {
        assert!(
            resp.headers().contains_key(h),
            "{method} {path}: no {h} header"
        );
    }
    let text = resp.text().await.unwrap();
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    match openapi_validator(file, path, method, status) {
        Some(v) => assert_valid(&v, &body, &format!("{method} {path} -> {status}")),
        None => assert!(
            text.is_empty(),
            "{method} {path} -> {status}: expected no body, got {text}"
        ),
    }
    (status, body)
}

// ---------------------------------------------------------------- webhook receiver

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn header(&self, h: &str) -> String {
        self.headers
            .get(h)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start() -> (Receiver, String) {
        let r = Receiver::default();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State(r): State<Receiver>, headers: HeaderMap, body: Bytes| async move {
                        r.got.lock().unwrap().push(Received { headers, body });
                        StatusCode::ACCEPTED
                    },
                ),
            )
            .with_state(r.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (r, url)
    }

    pub fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` deliveries satisfy `pred`.
    pub async fn wait(&self, n: usize, pred: impl Fn(&Received) -> bool) -> Vec<Received> {
        for _ in 0..200 {
            let got: Vec<Received> = self.all().into_iter().filter(|r| pred(r)).collect();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "timed out waiting for {n} deliveries; have {:?}",
            self.all()
                .iter()
                .map(|r| r.json()["action"].clone())
                .collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------- hand-driven runner

/// A runner driven step by step over the runner protocol (no binary).
pub struct ManualRunner {
    pub jit: JitConfig,
    pub token: String,
    pub session: String,
}

impl ManualRunner {
    pub async fn connect(encoded: &str) -> ManualRunner {
        let jit = JitConfig::decode(encoded).unwrap();
        let key = jit.rsa.to_key_pair().unwrap();
        let d = &jit.credentials.data;
        let assertion = sign_assertion(&key, &d.client_id, &d.authorization_url).unwrap();
        let t: TokenResponse = http()
            .post(&d.authorization_url)
            .form(&[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let s: BrokerSession = http()
            .post(format!("{}session", jit.runner.server_url_v2))
            .bearer_auth(&t.access_token)
            .json(&json!({"ownerName": "test", "agent": {"version": "test"}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ManualRunner {
            jit,
            token: t.access_token,
            session: s.session_id.unwrap().to_string(),
        }
    }

    /// One poll: the job request offered, if any.
    pub async fn poll(&self) -> Option<JobRequestRef> {
        let r = http()
            .get(format!("{}message", self.jit.runner.server_url_v2))
            .bearer_auth(&self.token)
            .query(&[("sessionId", self.session.as_str())])
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            return None;
        }
        assert_eq!(r.status(), 200);
        let m: BrokerMessage = r.json().await.unwrap();
        Some(serde_json::from_str(&m.body).unwrap())
    }

    /// Acquires; returns status and the job when 200.
    pub async fn acquire(&self, r: &JobRequestRef) -> (u16, Option<JobRequest>) {
        let resp = http()
            .post(format!("{}acquirejob", r.run_service_url))
            .bearer_auth(&self.token)
            .json(&AcquireJobRequest {
                job_message_id: r.runner_request_id.clone(),
                runner_os: "Linux".into(),
                billing_owner_id: String::new(),
            })
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        (
            s,
            if s == 200 {
                Some(resp.json().await.unwrap())
            } else {
                None
            },
        )
    }
}

// ---------------------------------------------------------------- the stand-in binary

pub struct RunnerProcess {
    pub child: tokio::process::Child,
    pub dir: tempfile::TempDir,
}

pub fn spawn_runner(encoded: &str) -> RunnerProcess {
    let dir = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ghsim-runner"))
        .arg("run")
        .arg("--jitconfig")
        .arg(encoded)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    RunnerProcess { child, dir }
}

impl RunnerProcess {
    /// Waits for exit (bounded); returns (code, stderr).
    pub async fn finish(self) -> (i32, String) {
        let out = tokio::time::timeout(Duration::from_secs(20), self.child.wait_with_output())
            .await
            .expect("runner did not exit in time")
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
