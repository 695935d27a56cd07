//! Secrets: where berth's secrets come from, and keeping them current while
//! berth runs.
//!
//! # Sources
//!
//! Every secret berth keeps (the GitHub App's private key, the webhook
//! secret, a proxy's orchestrator token) is given one of three ways, each a
//! [`SecretSource`]:
//!
//! * **inline**: the value itself in a key such as `github.webhook_secret`,
//!   usually from the environment (`BERTH_GITHUB__WEBHOOK_SECRET`); it cannot
//!   change while berth runs;
//! * **a file**: the path in a `…_file` / `…_path` key;
//! * **Vault or OpenBao**: a [`VaultRef`], `vault://MOUNT/PATH#FIELD`, in the
//!   same `…_file` / `…_path` key: field FIELD of the KV version 2 secret
//!   PATH under the mount MOUNT, read with the connection of `[vault]`
//!   ([`vault::VaultClient`]).
//!
//! A reference in the key that already names where the secret lives, rather
//! than a `[secrets]` table mapping names to paths, keeps one place per
//! secret: the configuration reads the same whether the secret is a mounted
//! file or a Vault path, and moving a secret into Vault changes one value.
//!
//! # Live secrets and rotation
//!
//! Components never copy a secret out of the configuration: they hold a
//! [`LiveSecret`] and read it on each use (the App's key for each new JWT,
//! the webhook secret for each delivery), so a new value takes effect at
//! once, without a restart. A replaced value stays accepted for an overlap
//! ([`LiveSecret::accepted`]): the webhook secret's is
//! `github.webhook_secret_overlap`, so deliveries GitHub signed with the old
//! secret are accepted until the new one is set in the App's settings.
//!
//! [`Secrets`] reads every secret at start, where an unreadable one stops
//! berth with an error naming its configuration key and its path or
//! reference (never its value), and then re-reads the file- and
//! Vault-backed ones every `vault.refresh_interval` (sooner when a Vault
//! answer carries a shorter lease), and all of them at once on SIGHUP
//! ([`Secrets::request_refresh`]). A secret that cannot be read later keeps
//! its last good value: the failure is logged, counted in
//! `berth_secret_refresh_failures_total{secret}` and alerted on
//! (`BerthSecretRefreshFailing`); each success sets
//! `berth_secret_last_refresh_timestamp_seconds{secret}`. A new value is
//! checked before it replaces the old one (a blank secret, a key that is not
//! an RSA PEM key are refused the same way).

pub mod vault;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::observability::Metrics;
use crate::supervise::ComponentHandle;
pub use vault::VaultClient;

/// How soon a secret that could not be read is tried again (or sooner, at
/// `vault.refresh_interval`).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// The default of `vault.refresh_interval`, also used for file-backed
/// secrets when there is no `[vault]`.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// What can go wrong reading a secret. Messages name the file, the Vault
/// address and path, or the reference; never a secret value or a token.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read {}: {source}", .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A request to Vault failed or was refused.
    #[error("Vault at {address}: {operation} {path}: {message}")]
    Vault {
        address: String,
        operation: &'static str,
        path: String,
        message: String,
    },
    /// Vault answered, but the secret is not what the reference says.
    #[error("{reference}: {message}")]
    Field {
        reference: VaultRef,
        message: String,
    },
    /// The value was read but cannot be used (blank, not a PEM key).
    #[error("{from}: {message}")]
    Unusable { from: String, message: String },
    /// A secret of the configuration could not be read: names the key and
    /// where it points.
    #[error("cannot read {key} ({from}): {cause}")]
    Unreadable {
        key: &'static str,
        from: String,
        cause: String,
    },
    #[error("{0}")]
    Config(String),
}

impl SecretsError {
    /// What went wrong, for a message that names the source already (a
    /// file's error without its path again).
    fn cause(&self) -> String {
        match self {
            SecretsError::File { source, .. } => source.to_string(),
            SecretsError::Unusable { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// `vault://MOUNT/PATH#FIELD`: field FIELD of the KV version 2 secret PATH
/// in the secrets engine mounted at MOUNT (one path segment).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VaultRef {
    mount: String,
    path: String,
    field: String,
}

/// The scheme of a [`VaultRef`].
pub const VAULT_SCHEME: &str = "vault://";

impl VaultRef {
    pub fn mount(&self) -> &str {
        &self.mount
    }
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn field(&self) -> &str {
        &self.field
    }
}

impl FromStr for VaultRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected =
            "expected vault://MOUNT/PATH#FIELD, e.g. vault://secret/berth/github#private_key";
        let rest = s
            .strip_prefix(VAULT_SCHEME)
            .ok_or_else(|| format!("`{s}` is not a Vault reference: {expected}"))?;
        let (location, field) = rest
            .split_once('#')
            .ok_or_else(|| format!("`{s}` names no field: {expected}"))?;
        let (mount, path) = location
            .split_once('/')
            .ok_or_else(|| format!("`{s}` names no secret under its mount: {expected}"))?;
        let path = path.trim_end_matches('/');
        let plain = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && !part
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '%'))
        };
        if !plain(mount) {
            return Err(format!("`{s}`: the mount `{mount}` is not a path segment"));
        }
        if path.is_empty() || !path.split('/').all(plain) {
            return Err(format!(
                "`{s}`: the path `{path}` has an empty, `.` or `..` segment, a space or one of ? # %"
            ));
        }
        if !plain(field) {
            return Err(format!(
                "`{s}`: the field `{field}` is empty or not plain text"
            ));
        }
        Ok(VaultRef {
            mount: mount.into(),
            path: path.into(),
            field: field.into(),
        })
    }
}

impl fmt::Display for VaultRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VAULT_SCHEME}{}/{}#{}",
            self.mount, self.path, self.field
        )
    }
}

impl fmt::Debug for VaultRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a `…_file` / `…_path` key says a secret is: a file, or (when the
/// value starts with `vault://`) a Vault reference. A malformed reference
/// is refused when the configuration is loaded, naming the key.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretLocation {
    File(PathBuf),
    Vault(VaultRef),
}

impl SecretLocation {
    /// The file, when the secret is in one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            SecretLocation::File(path) => Some(path),
            SecretLocation::Vault(_) => None,
        }
    }

    pub fn vault(&self) -> Option<&VaultRef> {
        match self {
            SecretLocation::Vault(r) => Some(r),
            SecretLocation::File(_) => None,
        }
    }
}

impl FromStr for SecretLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with(VAULT_SCHEME) {
            s.parse().map(SecretLocation::Vault)
        } else {
            Ok(SecretLocation::File(PathBuf::from(s)))
        }
    }
}

impl<'de> Deserialize<'de> for SecretLocation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SecretLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretLocation::File(path) => write!(f, "{}", path.display()),
            SecretLocation::Vault(r) => write!(f, "{r}"),
        }
    }
}

impl fmt::Debug for SecretLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where one secret's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Given in the configuration itself (usually the environment); it
    /// cannot change while berth runs.
    Inline(Secret),
    File(PathBuf),
    Vault(VaultRef),
}

impl SecretSource {
    /// The source of a secret configured by an inline key and a location
    /// key (which the configuration check allows only one of).
    pub fn of(inline: Option<&Secret>, location: Option<&SecretLocation>) -> Option<SecretSource> {
        match (inline, location) {
            (Some(secret), _) => Some(SecretSource::Inline(secret.clone())),
            (None, Some(SecretLocation::File(path))) => Some(SecretSource::File(path.clone())),
            (None, Some(SecretLocation::Vault(r))) => Some(SecretSource::Vault(r.clone())),
            (None, None) => None,
        }
    }

    /// Whether reading it again may give another value.
    pub fn is_refreshable(&self) -> bool {
        !matches!(self, SecretSource::Inline(_))
    }
}

/// Names the source without its value: a path, a reference, or "the
/// configured value".
impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("the configured value"),
            SecretSource::File(path) => write!(f, "{}", path.display()),
            SecretSource::Vault(r) => write!(f, "{r}"),
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
            SecretSource::Vault(r) => f.debug_tuple("Vault").field(r).finish(),
        }
    }
}

/// Reads a secret file; one trailing newline (`\n` or `\r\n`) is dropped.
pub fn read_file(path: &Path) -> Result<Secret, SecretsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretsError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Secret::new(trimmed))
}

/// What a secret's value must look like before it replaces the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Any text that is not blank (tokens, the webhook secret).
    NonBlank,
    /// An RSA private key in PEM (the GitHub App's key).
    RsaPrivateKeyPem,
}

impl Shape {
    /// Why `value` cannot be used, if it cannot.
    pub fn check(self, value: &Secret) -> Result<(), String> {
        if value.expose().trim().is_empty() {
            return Err("is empty".into());
        }
        match self {
            Shape::NonBlank => Ok(()),
            Shape::RsaPrivateKeyPem => {
                jsonwebtoken::EncodingKey::from_rsa_pem(value.expose().as_bytes())
                    .map(drop)
                    // jsonwebtoken names the parsing problem, never the key bytes.
                    .map_err(|e| format!("is not a valid RSA PEM private key: {e}"))
            }
        }
    }
}

/// A secret that may change while berth runs. Clones share the value;
/// readers take the current value on each use.
#[derive(Clone)]
pub struct LiveSecret {
    inner: Arc<RwLock<Versions>>,
}

struct Versions {
    current: Secret,
    /// Counts replacements, so a reader can cache what it derives from the
    /// value (the App's parsed key) and notice a change.
    version: u64,
    /// The value before the current one, accepted until the instant.
    previous: Option<(Secret, Instant)>,
    overlap: Duration,
}

impl LiveSecret {
    /// A secret whose replaced values are forgotten at once.
    pub fn new(value: Secret) -> Self {
        Self::with_overlap(value, Duration::ZERO)
    }

    /// A secret whose previous value stays accepted for `overlap` after it
    /// is replaced.
    pub fn with_overlap(value: Secret, overlap: Duration) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Versions {
                current: value,
                version: 0,
                previous: None,
                overlap,
            })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Versions> {
        // A writer never panics while holding the lock; a poisoned lock
        // still holds a whole value.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The value to use now.
    pub fn current(&self) -> Secret {
        self.read().current.clone()
    }

    /// 0 at first, one more at each replacement.
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// The values to accept now: the current one first, then the previous
    /// one while its overlap lasts.
    pub fn accepted(&self) -> Vec<Secret> {
        let versions = self.read();
        let mut values = vec![versions.current.clone()];
        if let Some((previous, until)) = &versions.previous
            && Instant::now() < *until
        {
            values.push(previous.clone());
        }
        values
    }

    /// When the previous value stops being accepted, while it still is.
    pub fn previous_accepted_until(&self) -> Option<Instant> {
        let versions = self.read();
        versions
            .previous
            .as_ref()
            .map(|(_, until)| *until)
            .filter(|until| Instant::now() < *until)
    }

    /// Makes `value` the current value; the one it replaces is accepted for
    /// the overlap. Returns whether the value changed.
    pub fn replace(&self, value: Secret) -> bool {
        let mut versions = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if versions.current == value {
            return false;
        }
        let old = std::mem::replace(&mut versions.current, value);
        versions.previous = if versions.overlap.is_zero() {
            None
        } else {
            Some((old, Instant::now() + versions.overlap))
        };
        versions.version += 1;
        true
    }
}

impl fmt::Debug for LiveSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions = self.read();
        f.debug_struct("LiveSecret")
            .field("value", &"<redacted>")
            .field("version", &versions.version)
            .field("previous_accepted", &versions.previous.is_some())
            .finish()
    }
}

/// One secret of the configuration: what it is called, where it comes
/// from, what its value must look like.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    /// The secret's name, the `secret` label of its metrics:
    /// `github.webhook_secret`, `github.private_key`, `orchestrator.token`.
    pub name: &'static str,
    /// The configuration key its source was given in (for messages).
    pub key: &'static str,
    pub source: SecretSource,
    pub shape: Shape,
    /// How long a replaced value stays accepted.
    pub overlap: Duration,
}

impl SecretSpec {
    /// The GitHub App's private key (`github.private_key` or
    /// `github.private_key_path`), if configured.
    pub fn app_private_key(config: &Config) -> Option<SecretSpec> {
        let github = &config.github;
        let source = SecretSource::of(
            github.private_key.as_ref(),
            github.private_key_path.as_ref(),
        )?;
        Some(SecretSpec {
            name: "github.private_key",
            key: if github.private_key.is_some() {
                "github.private_key"
            } else {
                "github.private_key_path"
            },
            source,
            shape: Shape::RsaPrivateKeyPem,
            overlap: Duration::ZERO,
        })
    }

    /// The webhook secret (`github.webhook_secret` or
    /// `github.webhook_secret_file`), if configured; a replaced value is
    /// accepted for `github.webhook_secret_overlap`.
    pub fn webhook_secret(config: &Config) -> Option<SecretSpec> {
        let github = &config.github;
        let source = SecretSource::of(
            github.webhook_secret.as_ref(),
            github.webhook_secret_file.as_ref(),
        )?;
        Some(SecretSpec {
            name: "github.webhook_secret",
            key: if github.webhook_secret.is_some() {
                "github.webhook_secret"
            } else {
                "github.webhook_secret_file"
            },
            source,
            shape: Shape::NonBlank,
            overlap: github.webhook_secret_overlap,
        })
    }

    /// A standalone proxy's orchestrator token, if configured.
    pub fn orchestrator_token(config: &Config) -> Option<SecretSpec> {
        let orchestrator = config.orchestrator.as_ref()?;
        let source = SecretSource::of(
            orchestrator.token.as_ref(),
            orchestrator.token_file.as_ref(),
        )?;
        Some(SecretSpec {
            name: "orchestrator.token",
            key: if orchestrator.token.is_some() {
                "orchestrator.token"
            } else {
                "orchestrator.token_file"
            },
            source,
            shape: Shape::NonBlank,
            overlap: Duration::ZERO,
        })
    }
}

/// A secret [`Secrets`] keeps current.
struct Entry {
    spec: SecretSpec,
    live: LiveSecret,
    /// When it is next read again.
    due: Mutex<Instant>,
}

/// Every secret of a running berth, and the Vault connection they are read
/// with: reads them at start, re-reads them when due or asked to.
pub struct Secrets {
    vault: Option<VaultClient>,
    refresh_interval: Duration,
    metrics: Metrics,
    entries: Mutex<Vec<Arc<Entry>>>,
    /// A refresh of everything was asked for (SIGHUP).
    wake: Notify,
    /// One pass at a time: the component's and a direct call's.
    pass: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries().iter().map(|e| e.spec.name).collect();
        f.debug_struct("Secrets")
            .field("vault", &self.vault)
            .field("refresh_interval", &self.refresh_interval)
            .field("secrets", &names)
            .finish()
    }
}

impl Secrets {
    /// The secrets of `config`, none read yet; connects nothing (the Vault
    /// client logs in at the first read).
    pub fn new(config: &Config, metrics: Metrics) -> Result<Secrets, SecretsError> {
        let vault = config
            .vault
            .as_ref()
            .map(|v| VaultClient::new(v, Some(metrics.clone())))
            .transpose()?;
        Ok(Secrets {
            vault,
            refresh_interval: config
                .vault
                .as_ref()
                .map_or(DEFAULT_REFRESH_INTERVAL, |v| v.refresh_interval),
            metrics,
            entries: Mutex::new(Vec::new()),
            wake: Notify::new(),
            pass: tokio::sync::Mutex::new(()),
        })
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the secret of `spec` now and keeps it current from then on.
    /// An error names the configuration key and the path or reference.
    pub async fn add(&self, spec: SecretSpec) -> Result<LiveSecret, SecretsError> {
        let unreadable = |e: SecretsError| SecretsError::Unreadable {
            key: spec.key,
            from: spec.source.to_string(),
            cause: e.cause(),
        };
        let (value, lease) = self.read(&spec.source).await.map_err(unreadable)?;
        spec.shape
            .check(&value)
            .map_err(|message| unreadable(SecretsError::Config(message)))?;
        let live = LiveSecret::with_overlap(value, spec.overlap);
        if spec.source.is_refreshable() {
            self.metrics.init_secret(spec.name);
            self.metrics.secret_refreshed(spec.name);
            let entry = Entry {
                due: Mutex::new(Instant::now() + self.next_read_after(lease)),
                spec,
                live: live.clone(),
            };
            self.entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::new(entry));
        }
        Ok(live)
    }

    /// Whether anything is there to keep current (a file- or Vault-backed
    /// secret).
    pub fn is_refreshable(&self) -> bool {
        !self.entries().is_empty()
    }

    /// The Vault connection, if `[vault]` is configured.
    pub fn vault(&self) -> Option<&VaultClient> {
        self.vault.as_ref()
    }

    /// Asks the refresher to re-read every secret now (SIGHUP).
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// Asks for a refresh of everything at each signal of `signal` (SIGHUP
    /// in `berth serve` and `berth proxy`), for the life of the process.
    pub fn refresh_on_signal(self: &Arc<Self>, mut signal: tokio::signal::unix::Signal) {
        let secrets = Arc::downgrade(self);
        tokio::spawn(async move {
            while signal.recv().await.is_some() {
                let Some(secrets) = secrets.upgrade() else {
                    return;
                };
                if secrets.is_refreshable() {
                    tracing::info!("SIGHUP: re-reading every secret");
                    secrets.request_refresh();
                } else {
                    tracing::info!(
                        "SIGHUP: no secret comes from a file or Vault, nothing to re-read"
                    );
                }
            }
        });
    }

    /// The value of `source` and, from Vault, the lease it came with.
    async fn read(
        &self,
        source: &SecretSource,
    ) -> Result<(Secret, Option<Duration>), SecretsError> {
        match source {
            SecretSource::Inline(value) => Ok((value.clone(), None)),
            SecretSource::File(path) => read_file(path).map(|v| (v, None)),
            SecretSource::Vault(reference) => {
                let vault = self.vault.as_ref().ok_or_else(|| {
                    SecretsError::Config(format!("{reference} needs a [vault] section"))
                })?;
                let read = vault.read(reference).await?;
                Ok((read.value, read.lease))
            }
        }
    }

    /// How long until a value read with `lease` is read again: the refresh
    /// interval, or two thirds of a shorter lease.
    fn next_read_after(&self, lease: Option<Duration>) -> Duration {
        match lease {
            Some(lease) if !lease.is_zero() => self
                .refresh_interval
                .min(lease * 2 / 3)
                .max(Duration::from_secs(1)),
            _ => self.refresh_interval,
        }
    }

    /// Re-reads every secret that is due (every one when `everything`),
    /// keeping the last good value of any that cannot be read. Returns the
    /// failures, each naming the secret and where it comes from.
    pub async fn refresh(&self, everything: bool) -> Result<(), String> {
        let _pass = self.pass.lock().await;
        let mut problems = Vec::new();
        if let Some(vault) = &self.vault
            && let Err(e) = vault.keep_token_alive().await
        {
            tracing::error!(error = %e, "cannot renew the Vault token or log in again");
            problems.push(e.to_string());
        }
        let now = Instant::now();
        for entry in self.entries() {
            let due = *entry.due.lock().unwrap_or_else(|e| e.into_inner());
            if !everything && due > now {
                continue;
            }
            if let Err(problem) = self.refresh_one(&entry).await {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    async fn refresh_one(&self, entry: &Entry) -> Result<(), String> {
        let spec = &entry.spec;
        let read = self.read(&spec.source).await.and_then(|(value, lease)| {
            spec.shape
                .check(&value)
                .map(|()| (value, lease))
                .map_err(|message| SecretsError::Unusable {
                    from: spec.source.to_string(),
                    message,
                })
        });
        let set_due = |after: Duration| {
            *entry.due.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + after;
        };
        match read {
            Ok((value, lease)) => {
                set_due(self.next_read_after(lease));
                self.metrics.secret_refreshed(spec.name);
                if entry.live.replace(value) {
                    tracing::info!(
                        secret = spec.name,
                        source = %spec.source,
                        previous_accepted_for_seconds = spec.overlap.as_secs_f64(),
                        "secret changed: the new value is in use"
                    );
                } else {
                    tracing::debug!(secret = spec.name, source = %spec.source, "secret re-read, unchanged");
                }
                Ok(())
            }
            Err(e) => {
                set_due(self.refresh_interval.min(RETRY_AFTER_FAILURE));
                self.metrics.secret_refresh_failed(spec.name);
                tracing::error!(
                    secret = spec.name,
                    key = spec.key,
                    source = %spec.source,
                    error = %e.cause(),
                    "cannot refresh a secret: the last good value stays in use"
                );
                Err(format!("{} ({}): {}", spec.name, spec.source, e.cause()))
            }
        }
    }

    /// When the next re-read or Vault token renewal is due.
    async fn next_due(&self) -> Instant {
        let mut next = Instant::now() + self.refresh_interval;
        for entry in self.entries() {
            next = next.min(*entry.due.lock().unwrap_or_else(|e| e.into_inner()));
        }
        if let Some(vault) = &self.vault
            && let Some(at) = vault.next_token_action().await
        {
            next = next.min(at);
        }
        next
    }

    /// The `secrets` component: re-reads each secret when it is due and
    /// everything on [`Secrets::request_refresh`], renewing the Vault token
    /// on the way, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        status: Option<ComponentHandle>,
    ) {
        loop {
            let next = self.next_due().await;
            let everything = tokio::select! {
                _ = tokio::time::sleep_until(next) => false,
                _ = self.wake.notified() => true,
                _ = shutdown.cancelled() => return,
            };
            if let Some(status) = &status {
                status.pass_started();
            }
            let result = tokio::select! {
                r = self.refresh(everything) => r,
                _ = shutdown.cancelled() => return,
            };
            if let Some(status) = &status {
                status.pass_finished(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_references_are_parsed_and_printed_back() {
        let r: VaultRef = "vault://secret/berth/github#private_key".parse().unwrap();
        assert_eq!(
            (r.mount(), r.path(), r.field()),
            ("secret", "berth/github", "private_key")
        );
        assert_eq!(r.to_string(), "vault://secret/berth/github#private_key");
        assert_eq!(format!("{r:?}"), "vault://secret/berth/github#private_key");
        for bad in [
            "vault://secret#field",
            "vault://secret/#field",
            "vault://secret/a/b",
            "vault://secret/a#",
            "vault:///a#f",
            "vault://secret/a//b#f",
            "vault://secret/a/../b#f",
            "vault://secret/a b#f",
            "vault://secret/a?x=1#f",
            "file:///a#f",
        ] {
            assert!(bad.parse::<VaultRef>().is_err(), "{bad}");
        }
        assert_eq!(
            "/run/secrets/key".parse::<SecretLocation>().unwrap(),
            SecretLocation::File("/run/secrets/key".into())
        );
        assert!(matches!(
            "vault://kv/app#token".parse::<SecretLocation>().unwrap(),
            SecretLocation::Vault(_)
        ));
        assert!("vault://kv#token".parse::<SecretLocation>().is_err());
    }

    #[test]
    fn secrets_are_never_printed() {
        let value = "hunter2-very-secret";
        let live = LiveSecret::with_overlap(Secret::new(value), Duration::from_secs(60));
        live.replace(Secret::new("another-secret-value"));
        let source = SecretSource::Inline(Secret::new(value));
        for text in [
            format!("{live:?}"),
            format!("{source:?}"),
            source.to_string(),
            format!("{:?}", SecretSource::of(Some(&Secret::new(value)), None)),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("another-secret"), "{text}");
        }
        let error = Shape::RsaPrivateKeyPem
            .check(&Secret::new("-----BEGIN RSA PRIVATE KEY-----\nhunter2\n"))
            .unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
        assert_eq!(
            Shape::NonBlank.check(&Secret::new(" \n")).unwrap_err(),
            "is empty"
        );
    }

    #[test]
    fn a_replaced_value_is_accepted_for_the_overlap_only() {
        let overlap = Duration::from_millis(200);
        let live = LiveSecret::with_overlap(Secret::new("old"), overlap);
        assert_eq!(live.accepted(), [Secret::new("old")]);
        assert!(
            !live.replace(Secret::new("old")),
            "the same value is no change"
        );
        assert_eq!(live.version(), 0);
        assert!(live.replace(Secret::new("new")));
        assert_eq!(live.version(), 1);
        assert_eq!(live.current(), Secret::new("new"));
        assert_eq!(live.accepted(), [Secret::new("new"), Secret::new("old")]);
        assert!(live.previous_accepted_until().is_some());
        std::thread::sleep(overlap + Duration::from_millis(50));
        assert_eq!(live.accepted(), [Secret::new("new")]);
        assert!(live.previous_accepted_until().is_none());

        let no_overlap = LiveSecret::new(Secret::new("a"));
        no_overlap.replace(Secret::new("b"));
        assert_eq!(no_overlap.accepted(), [Secret::new("b")]);
    }

    /// The refresher with a file: a changed file is taken (the old value
    /// accepted for the overlap), a missing or blank one keeps the last
    /// good value and is counted.
    #[tokio::test]
    async fn a_file_secret_is_read_again_and_a_failure_keeps_the_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook.secret");
        std::fs::write(&path, "first-value\n").unwrap();
        let metrics = Metrics::new();
        let secrets = Secrets::new(&Config::default(), metrics.clone()).unwrap();
        let spec = SecretSpec {
            name: "github.webhook_secret",
            key: "github.webhook_secret_file",
            source: SecretSource::File(path.clone()),
            shape: Shape::NonBlank,
            overlap: Duration::from_secs(60),
        };
        let live = secrets.add(spec.clone()).await.unwrap();
        assert!(secrets.is_refreshable());
        assert_eq!(live.current(), Secret::new("first-value"));

        std::fs::write(&path, "second-value").unwrap();
        secrets.refresh(false).await.unwrap();
        assert_eq!(live.current(), Secret::new("first-value"), "not due yet");
        secrets.refresh(true).await.unwrap();
        assert_eq!(
            live.accepted(),
            [Secret::new("second-value"), Secret::new("first-value")]
        );

        let failures = r#"berth_secret_refresh_failures_total{secret="github.webhook_secret"}"#;
        std::fs::write(&path, "  \n").unwrap();
        let blank = secrets.refresh(true).await.unwrap_err();
        assert_eq!(
            blank,
            format!("github.webhook_secret ({}): is empty", path.display())
        );
        std::fs::remove_file(&path).unwrap();
        let missing = secrets.refresh(true).await.unwrap_err();
        assert!(
            missing.starts_with(&format!(
                "github.webhook_secret ({}): No such file",
                path.display()
            )),
            "{missing}"
        );
        assert_eq!(live.current(), Secret::new("second-value"));
        assert!(metrics.encode().contains(&format!("{failures} 2")));

        // At start, the same failure is an error naming the key and the path.
        let error = secrets.add(spec).await.unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "cannot read github.webhook_secret_file ({}): No such file",
                path.display()
            )),
            "{error}"
        );
    }

    #[test]
    fn files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "value\r\n").unwrap();
        assert_eq!(read_file(&path).unwrap(), Secret::new("value"));
        std::fs::write(&path, "value\n\n").unwrap();
        assert_eq!(read_file(&path).unwrap(), Secret::new("value\n"));
        let missing = read_file(&dir.path().join("missing")).unwrap_err();
        assert!(
            missing.to_string().starts_with("cannot read /"),
            "{missing}"
        );
    }
}
