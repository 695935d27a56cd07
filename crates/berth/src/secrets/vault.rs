//! A thin client of Vault's (and OpenBao's) HTTP API: the four endpoints
//! berth needs to read KV version 2 secrets with a token it keeps alive.
//!
//! * `POST /v1/auth/{mount}/login`: AppRole login (role id + secret id);
//! * `GET /v1/auth/token/lookup-self`: the TTL of a token read from a file;
//! * `POST /v1/auth/token/renew-self`: renewal;
//! * `GET /v1/{mount}/data/{path}`: a KV version 2 secret.
//!
//! Why not `vaultrs`: it covers all of Vault's API, and brings a large
//! dependency tree (its own HTTP client stack, a templating layer) for these
//! four calls; reqwest, serde_json and rustls are in berth already.
//!
//! **The token.** A token is renewed at about two thirds of its TTL. When
//! renewal is refused (the token was revoked, or is not renewable), or the
//! renewal grants less than the token's TTL (it is reaching its max TTL),
//! berth logs in again: with AppRole, a new login; with a token file, the
//! file is read again (whatever keeps it current, such as Vault Agent, has
//! written a new token by then). A token without a TTL (a root token) is
//! never renewed. A read answered 403 logs in again once and retries, so an
//! expired token heals at the next read. Logins and renewals are counted in
//! `berth_vault_token_operations_total{operation,outcome}`.
//!
//! **What is never shown.** The token, the role id, the secret id and the
//! secrets are never in a log line, an error or `Debug` output: errors name
//! the address, the operation and the path, and what Vault said (Vault's
//! error messages do not repeat credentials).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::{SecretsError, VaultRef};
use crate::config::{Secret, VaultAuth, VaultConfig};
use crate::observability::Metrics;

/// A token whose renewal or login failed (Vault unreachable) is tried
/// again this soon; a token that expired meanwhile is replaced by a login
/// at the next read.
const TOKEN_RETRY: Duration = Duration::from_secs(15);

/// How berth gets a token.
enum Login {
    TokenFile(PathBuf),
    AppRole {
        mount: String,
        role_id: RoleId,
        secret_id_file: PathBuf,
    },
}

enum RoleId {
    Inline(Secret),
    File(PathBuf),
}

/// The token in use and what Vault said about its life.
struct ClientToken {
    token: Secret,
    renewable: bool,
    /// The TTL the token was granted (at login, or its creation TTL); a
    /// renewal that grants less means the token is reaching its max TTL.
    granted: Duration,
    /// When to renew it or log in again; `None`: it never expires.
    act_at: Option<Instant>,
    /// A renewal granted less than `granted`: log in again next time.
    at_max_ttl: bool,
}

impl ClientToken {
    fn new(token: Secret, ttl: Duration, granted: Duration, renewable: bool) -> Self {
        Self {
            token,
            renewable,
            granted,
            act_at: act_at(ttl),
            at_max_ttl: false,
        }
    }
}

/// Two thirds into `ttl` from now; `None` for a token without a TTL.
fn act_at(ttl: Duration) -> Option<Instant> {
    (!ttl.is_zero()).then(|| Instant::now() + ttl * 2 / 3)
}

/// A KV version 2 secret's field, as read.
pub struct KvRead {
    pub value: Secret,
    /// The lease Vault gave the answer, if any (KV version 2 gives none).
    pub lease: Option<Duration>,
    /// The secret's version.
    pub version: Option<u64>,
}

/// A Vault (or OpenBao) server and berth's token for it.
pub struct VaultClient {
    http: reqwest::Client,
    address: String,
    base: url::Url,
    namespace: Option<String>,
    login: Login,
    metrics: Option<Metrics>,
    token: tokio::sync::Mutex<Option<ClientToken>>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field(
                "auth",
                &match &self.login {
                    Login::TokenFile(path) => format!("token file {}", path.display()),
                    Login::AppRole { mount, .. } => format!("approle at auth/{mount}"),
                },
            )
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct AuthAnswer {
    auth: Option<AuthInfo>,
}

#[derive(Deserialize)]
struct AuthInfo {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct LookupAnswer {
    data: LookupData,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    creation_ttl: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct KvAnswer {
    #[serde(default)]
    lease_duration: u64,
    data: Option<KvData>,
}

#[derive(Deserialize)]
struct KvData {
    data: Option<serde_json::Map<String, serde_json::Value>>,
    metadata: Option<KvMetadata>,
}

#[derive(Deserialize)]
struct KvMetadata {
    version: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    errors: Vec<String>,
}

/// Why a request failed: Vault refused it (an answer), or did not answer.
enum Failure {
    Refused { status: StatusCode, message: String },
    Unanswered(String),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Refused { status, message } if message.is_empty() => {
                format!("HTTP {}", status.as_u16())
            }
            Failure::Refused { status, message } => format!("HTTP {}: {message}", status.as_u16()),
            Failure::Unanswered(message) => message.clone(),
        }
    }
}

impl VaultClient {
    /// A client for `[vault]`; reads no file and connects nothing yet.
    pub fn new(config: &VaultConfig, metrics: Option<Metrics>) -> Result<Self, SecretsError> {
        let address = config.address.trim_end_matches('/').to_string();
        let base = url::Url::parse(&address)
            .map_err(|e| SecretsError::Config(format!("vault.address `{address}`: {e}")))?;
        let mut http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                SecretsError::Config(format!(
                    "vault.ca_cert: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                SecretsError::Config(format!(
                    "vault.ca_cert: {} is not PEM certificates: {e}",
                    path.display()
                ))
            })?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http
            .build()
            .map_err(|e| SecretsError::Config(format!("cannot build the Vault client: {e}")))?;
        let missing = |key: &str| SecretsError::Config(format!("vault.{key} is required"));
        let login = match config.auth {
            VaultAuth::Token => Login::TokenFile(
                config
                    .token_file
                    .clone()
                    .ok_or_else(|| missing("token_file"))?,
            ),
            VaultAuth::Approle => Login::AppRole {
                mount: config.approle_mount.trim_matches('/').to_string(),
                role_id: match (&config.role_id, &config.role_id_file) {
                    (Some(id), _) => RoleId::Inline(id.clone()),
                    (None, Some(path)) => RoleId::File(path.clone()),
                    (None, None) => return Err(missing("role_id")),
                },
                secret_id_file: config
                    .secret_id_file
                    .clone()
                    .ok_or_else(|| missing("secret_id_file"))?,
            },
        };
        if let Some(metrics) = &metrics {
            metrics.init_vault_token_operations();
        }
        Ok(Self {
            http,
            address,
            base,
            namespace: config.namespace.clone(),
            login,
            metrics,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The server's address, as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("an http(s) URL has a path");
            path.pop_if_empty();
            path.push("v1");
            for segment in segments {
                for part in segment.split('/') {
                    path.push(part);
                }
            }
        }
        url
    }

    fn error(&self, operation: &'static str, path: &str, failure: &Failure) -> SecretsError {
        SecretsError::Vault {
            address: self.address.clone(),
            operation,
            path: path.to_string(),
            message: failure.message(),
        }
    }

    fn count(&self, operation: &'static str, ok: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.vault_token_operation(operation, ok);
        }
    }

    /// One request: `path` below `/v1/`, with `token` if given.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<serde_json::Value>,
    ) -> Result<T, Failure> {
        let mut request = self
            .http
            .request(method, self.url(&[path]))
            .header("X-Vault-Request", "true");
        if let Some(namespace) = &self.namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token.expose());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        // A pooled connection Vault has closed meanwhile (it restarted, or
        // an idle timeout) fails the request before any answer: once more,
        // on a fresh connection, so the error is about Vault, not the pool.
        let again = request.try_clone();
        let response = match request.send().await {
            Err(e) if !e.is_timeout() && !e.is_connect() => match again {
                Some(again) => again.send().await,
                None => Err(e),
            },
            other => other,
        }
        .map_err(|e| Failure::Unanswered(describe_transport_error(&e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Unanswered(describe_transport_error(&e)))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorAnswer>(&bytes)
                .map(|a| {
                    a.errors
                        .iter()
                        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            return Err(Failure::Refused { status, message });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Unanswered(format!("unexpected answer: {e}")))
    }

    /// Gets a token: logs in with AppRole, or reads the token file and
    /// asks Vault about the token.
    async fn log_in(&self) -> Result<ClientToken, SecretsError> {
        let result = match &self.login {
            Login::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => self.app_role_login(mount, role_id, secret_id_file).await,
            Login::TokenFile(path) => self.token_file_login(path).await,
        };
        self.count("login", result.is_ok());
        match &result {
            Ok(token) => tracing::info!(
                vault = %self.address,
                renewable = token.renewable,
                ttl_seconds = token.granted.as_secs(),
                "logged in to Vault"
            ),
            Err(e) => tracing::warn!(vault = %self.address, error = %e, "cannot log in to Vault"),
        }
        result
    }

    async fn app_role_login(
        &self,
        mount: &str,
        role_id: &RoleId,
        secret_id_file: &std::path::Path,
    ) -> Result<ClientToken, SecretsError> {
        let role_id = match role_id {
            RoleId::Inline(id) => id.clone(),
            RoleId::File(path) => super::read_file(path)?,
        };
        let secret_id = super::read_file(secret_id_file)?;
        let path = format!("auth/{mount}/login");
        let body = serde_json::json!({
            "role_id": role_id.expose().trim(),
            "secret_id": secret_id.expose().trim(),
        });
        let answer: AuthAnswer = self
            .call(Method::POST, &path, None, Some(body))
            .await
            .map_err(|f| self.error("AppRole login at", &path, &f))?;
        let auth = answer.auth.ok_or_else(|| {
            self.error(
                "AppRole login at",
                &path,
                &Failure::Unanswered("the answer has no token".into()),
            )
        })?;
        let ttl = Duration::from_secs(auth.lease_duration);
        Ok(ClientToken::new(
            Secret::new(auth.client_token),
            ttl,
            ttl,
            auth.renewable,
        ))
    }

    async fn token_file_login(&self, path: &std::path::Path) -> Result<ClientToken, SecretsError> {
        let token = super::read_file(path)?;
        let token = Secret::new(token.expose().trim());
        let lookup = "auth/token/lookup-self";
        let answer: LookupAnswer = self
            .call(Method::GET, lookup, Some(&token), None)
            .await
            .map_err(|f| {
                self.error(
                    "looking up the token of",
                    &format!("{} at {lookup}", path.display()),
                    &f,
                )
            })?;
        let ttl = Duration::from_secs(answer.data.ttl);
        let granted = Duration::from_secs(answer.data.creation_ttl.max(answer.data.ttl));
        Ok(ClientToken::new(token, ttl, granted, answer.data.renewable))
    }

    /// A token to use now: the current one, or a new login.
    async fn token(&self) -> Result<Secret, SecretsError> {
        let mut slot = self.token.lock().await;
        if let Some(current) = slot.as_ref() {
            return Ok(current.token.clone());
        }
        let fresh = self.log_in().await?;
        let token = fresh.token.clone();
        *slot = Some(fresh);
        Ok(token)
    }

    /// Forgets `token` (Vault refused it), unless another task has
    /// replaced it already.
    async fn forget(&self, token: &Secret) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.token == *token) {
            *slot = None;
        }
    }

    /// When [`keep_token_alive`](Self::keep_token_alive) has something to
    /// do next.
    pub async fn next_token_action(&self) -> Option<Instant> {
        self.token.lock().await.as_ref().and_then(|t| t.act_at)
    }

    /// Renews the token when two thirds of its TTL have passed, or logs in
    /// again when renewal is refused or the token reaches its max TTL. A
    /// failure leaves the token as it is and is tried again shortly.
    pub async fn keep_token_alive(&self) -> Result<(), SecretsError> {
        let mut slot = self.token.lock().await;
        let Some(current) = slot.as_mut() else {
            // Not logged in yet: the next read does.
            return Ok(());
        };
        if current.act_at.is_none_or(|at| at > Instant::now()) {
            return Ok(());
        }
        if current.renewable && !current.at_max_ttl {
            let path = "auth/token/renew-self";
            let renewed: Result<AuthAnswer, Failure> = self
                .call(
                    Method::POST,
                    path,
                    Some(&current.token),
                    Some(serde_json::json!({})),
                )
                .await;
            match renewed {
                Ok(AuthAnswer { auth: Some(auth) }) => {
                    self.count("renew", true);
                    let ttl = Duration::from_secs(auth.lease_duration);
                    current.act_at = act_at(ttl);
                    current.renewable = auth.renewable;
                    current.at_max_ttl = ttl < current.granted;
                    tracing::debug!(
                        vault = %self.address,
                        ttl_seconds = ttl.as_secs(),
                        at_max_ttl = current.at_max_ttl,
                        "renewed the Vault token"
                    );
                    return Ok(());
                }
                Ok(AuthAnswer { auth: None }) => {
                    self.count("renew", false);
                    tracing::warn!(vault = %self.address, "Vault renewed the token without saying for how long; logging in again");
                }
                Err(failure @ Failure::Refused { .. }) => {
                    self.count("renew", false);
                    tracing::warn!(
                        vault = %self.address,
                        error = %failure.message(),
                        "Vault refused to renew the token; logging in again"
                    );
                }
                Err(failure @ Failure::Unanswered(_)) => {
                    self.count("renew", false);
                    current.act_at = Some(Instant::now() + TOKEN_RETRY);
                    return Err(self.error("renewing the token at", path, &failure));
                }
            }
        }
        match self.log_in().await {
            Ok(fresh) => {
                *current = fresh;
                Ok(())
            }
            Err(e) => {
                current.act_at = Some(Instant::now() + TOKEN_RETRY);
                Err(e)
            }
        }
    }

    /// Reads the field of a KV version 2 secret. A 403 (the token expired
    /// or was revoked) logs in again once.
    pub async fn read(&self, reference: &VaultRef) -> Result<KvRead, SecretsError> {
        let path = format!("{}/data/{}", reference.mount(), reference.path());
        let token = self.token().await?;
        let answer = match self
            .call::<KvAnswer>(Method::GET, &path, Some(&token), None)
            .await
        {
            Err(Failure::Refused { status, .. }) if status == StatusCode::FORBIDDEN => {
                self.forget(&token).await;
                let token = self.token().await?;
                self.call(Method::GET, &path, Some(&token), None).await
            }
            other => other,
        }
        .map_err(|f| self.error("reading", &path, &f))?;
        let field_error = |message: &str| SecretsError::Field {
            reference: reference.clone(),
            message: message.to_string(),
        };
        let data = answer
            .data
            .ok_or_else(|| field_error("the answer has no data (is the mount KV version 2?)"))?;
        let fields = data
            .data
            .ok_or_else(|| field_error("the secret's latest version is deleted or destroyed"))?;
        let value = match fields.get(reference.field()) {
            Some(serde_json::Value::String(value)) => Secret::new(value.clone()),
            Some(_) => return Err(field_error("the field is not a string")),
            None => {
                let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
                names.sort_unstable();
                return Err(field_error(&format!(
                    "the secret has no field `{}` (it has: {})",
                    reference.field(),
                    names.join(", ")
                )));
            }
        };
        Ok(KvRead {
            value,
            lease: (answer.lease_duration > 0).then(|| Duration::from_secs(answer.lease_duration)),
            version: data.metadata.and_then(|m| m.version),
        })
    }
}

/// What went wrong with a request that got no answer, from the innermost
/// cause (such as `Connection refused`); never the request itself.
fn describe_transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    let mut innermost = None;
    let mut cause = std::error::Error::source(e);
    while let Some(inner) = cause {
        innermost = Some(inner);
        cause = inner.source();
    }
    match innermost {
        Some(inner) => format!("{kind}: {inner}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(auth: VaultAuth) -> VaultConfig {
        VaultConfig {
            address: "http://127.0.0.1:8200/".into(),
            ca_cert: None,
            namespace: Some("team".into()),
            auth,
            token_file: Some("/run/vault/token".into()),
            role_id: Some(Secret::new("role-id-hunter2")),
            role_id_file: None,
            secret_id_file: Some("/run/vault/secret-id".into()),
            approle_mount: "approle".into(),
            refresh_interval: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn urls_are_built_from_segments_and_debug_shows_no_credentials() {
        let client = VaultClient::new(&config(VaultAuth::Approle), None).unwrap();
        assert_eq!(
            client.url(&["secret/data/berth/github"]).as_str(),
            "http://127.0.0.1:8200/v1/secret/data/berth/github"
        );
        assert_eq!(
            client.url(&["secret/data/a b"]).as_str(),
            "http://127.0.0.1:8200/v1/secret/data/a%20b"
        );
        let debug = format!("{client:?}");
        assert!(debug.contains("approle at auth/approle"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let token = VaultClient::new(&config(VaultAuth::Token), None).unwrap();
        assert!(format!("{token:?}").contains("token file /run/vault/token"));
    }
}
