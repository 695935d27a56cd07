//! The request filter: a pure function from a request to allow or deny.
//!
//! [`Filter::check_head`] looks at the method, the request target and the
//! headers and returns a [`Plan`] (what to forward, what body to expect,
//! which object to check) or a [`Denial`]. [`Filter::check_body`] then
//! checks the body the plan expects. Neither does any I/O, which is what
//! lets the fuzz target and the property tests drive them directly; the
//! managed-label check of container- and network-scoped calls, which needs
//! the engine, is the server's.

use http::HeaderMap;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING, UPGRADE};

use super::body::{self, BodyRef};
use super::json::Json;
use super::policy::{BodyKind, Pattern, Policy, PolicyError, TargetKind};
use super::target::{ApiVersion, Target};

/// A policy compiled for matching.
#[derive(Debug, Clone)]
pub struct Filter {
    policy: Policy,
    patterns: Vec<Pattern>,
    min_version: ApiVersion,
}

/// What the proxy does with an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The rule that allowed it.
    pub rule: String,
    /// The request's method.
    pub method: String,
    /// The canonical target.
    pub target: Target,
    /// The body the request must have.
    pub body: BodyKind,
    /// Largest body accepted (0 for [`BodyKind::None`]).
    pub max_body: u64,
    /// The object whose managed label must be checked.
    pub scope: Option<Scope>,
    /// The request is an HTTP upgrade (attach, exec start).
    pub upgrade: bool,
}

/// A container, network, volume, exec or image reference in the path, to
/// check before forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub kind: TargetKind,
    /// The ID or name as requested (an image reference's segments joined
    /// with `/`).
    pub reference: String,
    /// Which canonical path segments hold it (after the version prefix):
    /// one, or an image reference's run.
    pub segments: std::ops::Range<usize>,
}

impl Plan {
    /// The canonical path, for logs.
    pub fn path(&self) -> String {
        self.target.path()
    }

    /// What to forward: the canonical target, with the scoped reference
    /// replaced by `resolved` (the full ID the check found), so that the
    /// engine acts on exactly the object that was checked.
    pub fn forward(&self, resolved: Option<&str>) -> String {
        match (resolved, &self.scope) {
            (Some(id), Some(scope)) => {
                let mut target = self.target.clone();
                target
                    .segments
                    .splice(scope.segments.clone(), [id.to_owned()]);
                target.path_and_query()
            }
            _ => self.target.path_and_query(),
        }
    }
}

/// A refused request: the rule (or check) that refused it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The rule whose check failed, or the name of the general check
    /// (`request-target`, `request-framing`, `no-rule`, `method`,
    /// `api-version`, `upgrade`, `body-size`).
    pub rule: String,
    /// The canonical path, or `-` when the target could not be parsed.
    pub path: String,
    pub reason: String,
}

impl Denial {
    fn new(rule: &str, path: impl Into<String>, reason: impl Into<String>) -> Denial {
        Denial {
            rule: rule.to_owned(),
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The `message` of the 403 answer (Docker clients print it).
    pub fn message(&self) -> String {
        format!(
            "berth socket-proxy: denied by rule `{}`: {}",
            self.rule, self.reason
        )
    }
}

impl Filter {
    /// Compiles a validated policy.
    pub fn new(policy: Policy) -> Result<Filter, PolicyError> {
        policy.validate()?;
        let patterns = policy
            .rules
            .iter()
            .map(|r| Pattern::parse(&r.path).map_err(PolicyError::Invalid))
            .collect::<Result<_, _>>()?;
        let min_version = policy.min_api_version()?;
        Ok(Filter {
            policy,
            patterns,
            min_version,
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks method, target and headers.
    pub fn check_head(
        &self,
        method: &str,
        raw_target: &str,
        headers: &HeaderMap,
    ) -> Result<Plan, Denial> {
        let target = Target::parse(raw_target)
            .map_err(|e| Denial::new("request-target", "-", e.to_string()))?;
        let path = target.path();
        // Both framings at once is how requests are smuggled past a proxy;
        // no honest client sends it.
        if headers.contains_key(CONTENT_LENGTH) && headers.contains_key(TRANSFER_ENCODING) {
            return Err(Denial::new(
                "request-framing",
                path,
                "the request has both Content-Length and Transfer-Encoding",
            ));
        }
        if let Some(v) = target.version
            && v < self.min_version
        {
            return Err(Denial::new(
                "api-version",
                path,
                format!(
                    "API version {v} is older than the minimum {}",
                    self.min_version
                ),
            ));
        }

        let mut path_matched: Option<&str> = None;
        let mut found = None;
        for (rule, pattern) in self.policy.rules.iter().zip(&self.patterns) {
            if !pattern.matches(&target.segments) {
                continue;
            }
            if rule.methods.iter().any(|m| m == method) {
                found = Some((rule, pattern));
                break;
            }
            path_matched.get_or_insert(&rule.name);
        }
        let Some((rule, pattern)) = found else {
            return Err(match path_matched {
                Some(name) => Denial::new(
                    "method",
                    path,
                    format!(
                        "method {method} is not allowed here (rule `{name}` allows other methods)"
                    ),
                ),
                None => Denial::new(
                    "no-rule",
                    path,
                    format!("no rule allows {method} {}", target.path()),
                ),
            });
        };
        let deny = |reason: String| Denial::new(&rule.name, target.path(), reason);

        // Query parameters: only those the rule names.
        for (key, _) in &target.query {
            if !rule.query.iter().any(|q| q == key) {
                return Err(deny(format!("query parameter `{key}` is not allowed")));
            }
        }
        for key in &rule.require_query {
            if target.param(key).is_none_or(str::is_empty) {
                return Err(deny(format!("query parameter `{key}` is required")));
            }
        }
        // A name that looks like a full ID could later stand in for a
        // removed container's ID (Docker resolves IDs before names).
        if rule.body != BodyKind::None
            && let Some(name) = target.param("name")
            && looks_like_full_id(name)
        {
            return Err(deny(format!(
                "the name `{name}` looks like a full object ID"
            )));
        }
        if rule.label_filter {
            let filters = target.param("filters").unwrap_or_default();
            check_label_filter(filters, &self.policy.managed_label).map_err(deny)?;
        }
        if rule.body == BodyKind::ImageBuild {
            body::check_image_build(&target, &self.policy).map_err(deny)?;
        }

        // Upgrades: exactly `Upgrade: tcp` on an upgrade rule, none elsewhere.
        let upgrade = headers
            .get_all(UPGRADE)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{0}").trim().to_ascii_lowercase())
            .collect::<Vec<_>>();
        let connection_upgrade = headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .unwrap_or_default()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
        if rule.upgrade {
            if upgrade != ["tcp"] || !connection_upgrade {
                return Err(Denial::new(
                    "upgrade",
                    target.path(),
                    format!(
                        "rule `{}` needs the HTTP upgrade handshake (`Connection: Upgrade`, `Upgrade: tcp`)",
                        rule.name
                    ),
                ));
            }
        } else if !upgrade.is_empty() {
            return Err(Denial::new(
                "upgrade",
                target.path(),
                format!("rule `{}` does not allow an HTTP upgrade", rule.name),
            ));
        }

        let scope = match rule.target {
            TargetKind::None => None,
            kind => {
                let segments = pattern
                    .placeholder_range(target.segments.len())
                    .expect("validated: a target rule has one placeholder");
                Some(Scope {
                    kind,
                    reference: target.segments[segments.clone()].join("/"),
                    segments,
                })
            }
        };
        let max_body = match rule.body {
            BodyKind::None => 0,
            BodyKind::ImageBuild => self.policy.limits.max_build_context_bytes,
            _ => self.policy.limits.max_body_bytes,
        };
        Ok(Plan {
            rule: rule.name.clone(),
            method: method.to_owned(),
            target,
            body: rule.body,
            max_body,
            scope,
            upgrade: rule.upgrade,
        })
    }

    /// The denial of a body over the plan's limit.
    pub fn body_too_large(&self, plan: &Plan) -> Denial {
        if plan.body == BodyKind::None {
            Denial::new(&plan.rule, plan.path(), "this call takes no request body")
        } else {
            Denial::new(
                "body-size",
                plan.path(),
                format!("the request body is over {} bytes", plan.max_body),
            )
        }
    }

    /// Checks a request's (complete) body against its plan; returns the
    /// objects the body names that must be found managed. A streamed body
    /// (a build context) is not read: only its framing and content type
    /// are checked, and `body` is what has arrived of it (empty).
    pub fn check_body(
        &self,
        plan: &Plan,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Vec<BodyRef>, Denial> {
        let deny = |rule: &str, reason: String| Denial::new(rule, plan.path(), reason);
        if body.len() as u64 > plan.max_body {
            return Err(self.body_too_large(plan));
        }
        if plan.body == BodyKind::None {
            return Ok(Vec::new());
        }
        // Docker reads the body as JSON only with a JSON content type; with
        // a form content type Go would even read it as query parameters.
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if plan.body == BodyKind::ImageBuild {
            // The same holds for a build: with a form content type Go's
            // ParseForm would take `remote`, `networkmode`… from the body.
            if !media.eq_ignore_ascii_case("application/x-tar") {
                return Err(deny(
                    &plan.rule,
                    format!("the build context must be application/x-tar, not `{content_type}`"),
                ));
            }
            return Ok(Vec::new());
        }
        if !media.eq_ignore_ascii_case("application/json") {
            return Err(deny(
                &plan.rule,
                format!("the body must be application/json, not `{content_type}`"),
            ));
        }
        let json = Json::parse(body)
            .map_err(|e| deny(&plan.rule, format!("the body is not strict JSON: {e}")))?;
        let none = |r: Result<(), String>| r.map(|()| Vec::new());
        let checked = match plan.body {
            BodyKind::ContainerCreate => body::check_container_create(&json, &self.policy),
            BodyKind::NetworkCreate => none(body::check_network_create(&json, &self.policy)),
            BodyKind::VolumeCreate => none(body::check_volume_create(&json, &self.policy)),
            BodyKind::ExecCreate => none(body::check_exec_create(&json)),
            BodyKind::ExecStart => none(body::check_exec_start(&json)),
            BodyKind::NetworkConnect => body::check_network_connect(&json),
            BodyKind::NetworkDisconnect => body::check_network_disconnect(&json),
            BodyKind::None | BodyKind::ImageBuild => Ok(Vec::new()),
        };
        checked.map_err(|reason| deny(&plan.rule, reason))
    }
}

/// 64 hex digits: the form of a full container or network ID.
pub(crate) fn looks_like_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `filters` (Docker's JSON filter map) must select the managed label, so a
/// listing or event stream shows only berth's own objects. Both of Docker's
/// encodings count: `{"label": ["k=v"]}` and `{"label": {"k=v": true}}`.
fn check_label_filter(filters: &str, managed: &str) -> Result<(), String> {
    let missing = || format!("`filters` must select label={managed}");
    if filters.is_empty() {
        return Err(missing());
    }
    let json = Json::parse(filters.as_bytes())
        .map_err(|e| format!("`filters` is not strict JSON: {e}"))?;
    if json.as_object().is_none() {
        return Err("`filters` must be a JSON object".into());
    }
    let ok = match json.member("label") {
        Some(Json::Array(items)) => items.iter().any(|i| i.as_str() == Some(managed)),
        Some(Json::Object(map)) => map
            .iter()
            .any(|(k, v)| k == managed && v.as_bool() == Some(true)),
        _ => false,
    };
    if ok { Ok(()) } else { Err(missing()) }
}

/// Runs the whole pure filter on arbitrary input, as the fuzz target does:
/// the first line is `METHOD TARGET`, the following lines up to an empty
/// line are headers, the rest is the body. Returns whether it was allowed.
/// It must never panic.
pub fn filter_raw(filter: &Filter, input: &[u8]) -> bool {
    let text = String::from_utf8_lossy(input);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(k, v);
        }
    }
    match filter.check_head(method, target, &headers) {
        Ok(plan) => {
            // Whatever is allowed forwards a canonical target that parses
            // back to itself.
            let forward = plan.forward(None);
            let again = Target::parse(&forward).expect("a canonical target parses");
            assert_eq!(again, plan.target, "canonical form is stable");
            filter.check_body(&plan, &headers, body.as_bytes()).is_ok()
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Filter {
        Filter::new(Policy::default()).unwrap()
    }

    fn head(method: &str, target: &str) -> Result<Plan, Denial> {
        filter().check_head(method, target, &HeaderMap::new())
    }

    #[test]
    fn allows_and_denies_by_rule() {
        assert_eq!(head("GET", "/_ping").unwrap().rule, "ping");
        assert_eq!(head("HEAD", "/v1.41/_ping").unwrap().rule, "ping");
        assert_eq!(head("POST", "/_ping").unwrap_err().rule, "method");
        assert_eq!(head("OPTIONS", "/_ping").unwrap_err().rule, "method");
        assert_eq!(
            head("POST", "/containers/x/update").unwrap_err().rule,
            "no-rule"
        );
        assert_eq!(head("GET", "/v1.23/info").unwrap_err().rule, "api-version");
        assert_eq!(head("GET", "/v1.24/info").unwrap().rule, "info");
        let plan = head("POST", "/v1.41/containers/berth-1/start").unwrap();
        assert_eq!(plan.rule, "container_start");
        let scope = plan.scope.clone().unwrap();
        assert_eq!(scope.reference, "berth-1");
        assert_eq!(
            plan.forward(Some("abc123")),
            "/v1.41/containers/abc123/start"
        );
        assert_eq!(
            head("GET", "/containers/json").unwrap_err().rule,
            "container_list"
        );
        let f = r#"{"label":["berth.managed=true"]}"#;
        let enc = percent_encoding::utf8_percent_encode(f, percent_encoding::NON_ALPHANUMERIC);
        head("GET", &format!("/containers/json?all=1&filters={enc}")).unwrap();
        let f = r#"{"label":{"berth.managed=true":true}}"#;
        let enc = percent_encoding::utf8_percent_encode(f, percent_encoding::NON_ALPHANUMERIC);
        head("GET", &format!("/events?filters={enc}")).unwrap();
        assert!(head("POST", "/images/create?fromImage=busybox&tag=1").is_ok());
        assert!(head("POST", "/images/create?fromSrc=-").is_err());
        assert!(head("POST", "/images/create?fromImage=x&fromSrc=-").is_err());
        assert!(head("POST", "/images/create?fromImage=").is_err());
    }

    fn scope(plan: &Plan) -> (TargetKind, String, std::ops::Range<usize>) {
        let s = plan.scope.clone().expect("a scoped rule");
        (s.kind, s.reference, s.segments)
    }

    #[test]
    fn container_job_rules() {
        use TargetKind as T;
        let lf = percent_encoding::utf8_percent_encode(
            r#"{"label":["berth.managed=true"]}"#,
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        // Volumes.
        let plan = head("GET", &format!("/v1.41/volumes?filters={lf}")).unwrap();
        assert_eq!((plan.rule.as_str(), plan.scope), ("volume_list", None));
        let denied = head("GET", "/volumes").unwrap_err();
        assert_eq!(denied.rule, "volume_list");
        assert!(
            denied
                .reason
                .contains("must select label=berth.managed=true")
        );
        let plan = head("POST", "/volumes/create").unwrap();
        assert_eq!(
            (plan.rule.as_str(), plan.body),
            ("volume_create", BodyKind::VolumeCreate)
        );
        let plan = head("GET", "/volumes/berth-job-7-work").unwrap();
        assert_eq!(plan.rule, "volume_inspect");
        assert_eq!(
            scope(&plan),
            (T::ManagedVolume, "berth-job-7-work".into(), 1..2)
        );
        let plan = head("DELETE", "/v1.41/volumes/berth-job-7-work?force=1").unwrap();
        assert_eq!(plan.rule, "volume_remove");
        assert_eq!(
            plan.forward(Some("berth-job-7-work")),
            "/v1.41/volumes/berth-job-7-work?force=1"
        );
        assert_eq!(head("POST", "/volumes/prune").unwrap_err().rule, "method");
        assert_eq!(
            head("DELETE", "/volumes/a?x=1").unwrap_err().rule,
            "volume_remove"
        );
        // Exec.
        let plan = head("POST", "/v1.41/containers/berth-1/exec").unwrap();
        assert_eq!(
            (plan.rule.as_str(), plan.body),
            ("exec_create", BodyKind::ExecCreate)
        );
        assert_eq!(scope(&plan), (T::ManagedContainer, "berth-1".into(), 1..2));
        let id = "ab".repeat(32);
        let plan = head("GET", &format!("/v1.41/exec/{id}/json")).unwrap();
        assert_eq!(plan.rule, "exec_inspect");
        assert_eq!(scope(&plan), (T::ManagedExec, id.clone(), 1..2));
        let plan = head("POST", &format!("/exec/{id}/resize?h=24&w=80")).unwrap();
        assert_eq!(plan.rule, "exec_resize");
        let denied = head("POST", &format!("/exec/{id}/start")).unwrap_err();
        assert_eq!(denied.rule, "upgrade");
        assert!(
            denied
                .reason
                .contains("rule `exec_start` needs the HTTP upgrade")
        );
        assert_eq!(
            head("DELETE", &format!("/exec/{id}")).unwrap_err().rule,
            "no-rule"
        );
        // Networks.
        let plan = head("POST", "/networks/berth-job-7/connect").unwrap();
        assert_eq!(
            (plan.rule.as_str(), plan.body),
            ("network_connect", BodyKind::NetworkConnect)
        );
        assert_eq!(
            scope(&plan),
            (T::ManagedNetwork, "berth-job-7".into(), 1..2)
        );
        let plan = head("POST", "/networks/berth-job-7/disconnect").unwrap();
        assert_eq!(plan.rule, "network_disconnect");
        // Image build and removal.
        let labels = "labels=%7B%22berth.managed%22%3A%22true%22%7D";
        let plan = head(
            "POST",
            &format!("/v1.41/build?t=berth-job/x:1&{labels}&rm=1&version=1"),
        )
        .unwrap();
        assert_eq!(
            (plan.rule.as_str(), plan.body),
            ("image_build", BodyKind::ImageBuild)
        );
        assert_eq!(plan.max_body, 256 * 1024 * 1024);
        assert_eq!(plan.scope, None);
        for (q, reason) in [
            ("t=berth-job/x", "query parameter `labels` is required"),
            (
                &format!("{labels}&networkmode=host") as &str,
                "`networkmode` `host` is not allowed",
            ),
            (
                &format!("{labels}&remote=https://x/y.git"),
                "query parameter `remote` is not allowed",
            ),
            (
                &format!("{labels}&extrahosts=a:1.2.3.4"),
                "query parameter `extrahosts` is not allowed",
            ),
            (
                &format!("{labels}&squash=1"),
                "query parameter `squash` is not allowed",
            ),
            (
                &format!("{labels}&cgroupparent=/"),
                "query parameter `cgroupparent` is not allowed",
            ),
            (
                &format!("{labels}&session=x"),
                "query parameter `session` is not allowed",
            ),
            (
                &format!("{labels}&outputs=x"),
                "query parameter `outputs` is not allowed",
            ),
            (
                &format!("{labels}&version=2"),
                "`version` `2` is not allowed",
            ),
            (
                &format!("{labels}&t=nginx:latest"),
                "not under an allowed tag prefix",
            ),
        ] {
            let denied = head("POST", &format!("/build?{q}")).unwrap_err();
            assert_eq!(denied.rule, "image_build", "{q}");
            assert!(
                denied.reason.contains(reason),
                "{} (wanted {reason})",
                denied.reason
            );
        }
        let plan = head("DELETE", "/v1.41/images/berth-job/checkout:7?force=1").unwrap();
        assert_eq!(plan.rule, "image_remove");
        assert_eq!(
            scope(&plan),
            (T::ManagedImage, "berth-job/checkout:7".into(), 1..3)
        );
        let image = format!("sha256:{}", "c".repeat(64));
        assert_eq!(
            plan.forward(Some(&image)),
            format!("/v1.41/images/{image}?force=1")
        );
        let plan = head("DELETE", "/images/busybox").unwrap();
        assert_eq!(scope(&plan), (T::ManagedImage, "busybox".into(), 1..2));
        assert_eq!(
            head("DELETE", "/images/x?prune=1").unwrap_err().rule,
            "image_remove"
        );
        assert_eq!(
            head("GET", "/images/busybox/json").unwrap().rule,
            "image_inspect"
        );
    }

    #[test]
    fn upgrades() {
        let f = filter();
        let mut h = HeaderMap::new();
        assert_eq!(
            f.check_head("POST", "/containers/x/attach?stdin=1", &h)
                .unwrap_err()
                .rule,
            "upgrade"
        );
        h.insert(CONNECTION, "Upgrade".parse().unwrap());
        h.insert(UPGRADE, "tcp".parse().unwrap());
        assert!(
            f.check_head("POST", "/containers/x/attach?stdin=1", &h)
                .unwrap()
                .upgrade
        );
        assert_eq!(
            f.check_head("GET", "/_ping", &h).unwrap_err().rule,
            "upgrade"
        );
        h.insert(UPGRADE, "h2c".parse().unwrap());
        assert!(f.check_head("POST", "/containers/x/attach", &h).is_err());
        // Exec start: an upgrade that carries its JSON body.
        h.insert(UPGRADE, "tcp".parse().unwrap());
        h.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        let start = f.check_head("POST", "/exec/abc/start", &h).unwrap();
        assert!(start.upgrade);
        assert_eq!(start.body, BodyKind::ExecStart);
        f.check_body(&start, &h, br#"{"Detach":false,"Tty":false}"#)
            .unwrap();
        let denied = f
            .check_body(&start, &h, br#"{"Detach":false,"Cmd":["id"]}"#)
            .unwrap_err();
        assert!(denied.reason.contains("`Cmd` is not allowed"), "{denied:?}");
        assert!(f.check_head("GET", "/exec/abc/json", &h).is_err());
    }

    #[test]
    fn bodies() {
        let f = filter();
        let mut h = HeaderMap::new();
        let start = f.check_head("POST", "/containers/x/start", &h).unwrap();
        assert!(f.check_body(&start, &h, b"").is_ok());
        assert!(f.check_body(&start, &h, b"{\"Privileged\":true}").is_err());
        let create = f.check_head("POST", "/containers/create", &h).unwrap();
        let body = br#"{"Image":"x","Labels":{"berth.managed":"true"},"HostConfig":{"CapDrop":["ALL"],"SecurityOpt":["no-new-privileges"]}}"#;
        assert!(f.check_body(&create, &h, body).is_err(), "no content type");
        h.insert(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert!(f.check_body(&create, &h, body).is_err());
        h.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        f.check_body(&create, &h, body).unwrap();
        assert_eq!(
            f.check_body(&create, &h, &vec![b' '; 2 << 20])
                .unwrap_err()
                .rule,
            "body-size"
        );
    }

    #[test]
    fn container_job_bodies() {
        let f = filter();
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        // Mounts name the volumes the server must find managed.
        let create = f.check_head("POST", "/containers/create", &h).unwrap();
        let body = br#"{"Image":"x","Labels":{"berth.managed":"true"},"HostConfig":{"CapDrop":["ALL"],"SecurityOpt":["no-new-privileges"],"Binds":["job-work:/__w"],"Mounts":[{"Type":"volume","Source":"job-home","Target":"/github/home"}]}}"#;
        let refs = f.check_body(&create, &h, body).unwrap();
        let names: Vec<&str> = refs.iter().map(|r| r.reference.as_str()).collect();
        assert_eq!(names, ["job-work", "job-home"]);
        // Volume create.
        let volume = f.check_head("POST", "/volumes/create", &h).unwrap();
        assert!(
            f.check_body(
                &volume,
                &h,
                br#"{"Name":"v1","Labels":{"berth.managed":"true"}}"#
            )
            .unwrap()
            .is_empty()
        );
        let denied = f
            .check_body(
                &volume,
                &h,
                br#"{"Name":"v1","Labels":{"berth.managed":"true"},"DriverOpts":{"type":"none","o":"bind","device":"/"}}"#,
            )
            .unwrap_err();
        assert_eq!(denied.rule, "volume_create");
        assert!(
            denied.reason.contains("DriverOpts.type `none`"),
            "{denied:?}"
        );
        // Exec create.
        let exec = f.check_head("POST", "/containers/c1/exec", &h).unwrap();
        f.check_body(&exec, &h, br#"{"Cmd":["id"]}"#).unwrap();
        let denied = f
            .check_body(&exec, &h, br#"{"Cmd":["id"],"Privileged":true}"#)
            .unwrap_err();
        assert_eq!(denied.rule, "exec_create");
        assert!(
            f.check_body(&exec, &h, b"").is_err(),
            "exec create needs a body"
        );
        // Network connect names the container.
        let connect = f.check_head("POST", "/networks/n1/connect", &h).unwrap();
        let refs = f
            .check_body(&connect, &h, br#"{"Container":"c1"}"#)
            .unwrap();
        assert_eq!(refs[0].rewrite, Some("Container"));
        // A build context must be a tar: with a form content type Go would
        // read the body as query parameters.
        let labels = "labels=%7B%22berth.managed%22%3A%22true%22%7D";
        let build = f
            .check_head("POST", &format!("/build?{labels}"), &h)
            .unwrap();
        let denied = f.check_body(&build, &h, b"").unwrap_err();
        assert!(
            denied.reason.contains("must be application/x-tar"),
            "{denied:?}"
        );
        h.insert(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert!(f.check_body(&build, &h, b"remote=https://x").is_err());
        h.insert(CONTENT_TYPE, "application/x-tar".parse().unwrap());
        assert!(f.check_body(&build, &h, b"").unwrap().is_empty());
    }

    #[test]
    fn the_container_job_fuzz_seeds_are_allowed() {
        let f = filter();
        for (name, seed) in [
            (
                "volume",
                &include_bytes!("../../fuzz/seeds/request_filter/volume")[..],
            ),
            (
                "exec",
                include_bytes!("../../fuzz/seeds/request_filter/exec"),
            ),
            (
                "build",
                include_bytes!("../../fuzz/seeds/request_filter/build"),
            ),
            (
                "mounts",
                include_bytes!("../../fuzz/seeds/request_filter/mounts"),
            ),
        ] {
            assert!(filter_raw(&f, seed), "seed {name} is denied");
        }
    }

    #[test]
    fn raw_filter_never_panics_on_odd_input() {
        let f = filter();
        for input in [
            &b""[..],
            b"GET",
            b"GET /_ping",
            b"\xff\xfe",
            b"POST /containers/create\ncontent-type: application/json\n\n{\"a\":",
            b"GET /containers/json?filters=%7B",
        ] {
            let _ = filter_raw(&f, input);
        }
        assert!(filter_raw(&f, b"GET /v1.41/_ping"));
    }
}
