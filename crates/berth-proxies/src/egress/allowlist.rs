//! The egress allowlist: which destinations workers may reach. Deny by
//! default: a destination no entry allows is refused.
//!
//! # Format
//!
//! ```toml
//! # Ports an entry allows when it lists none of its own.
//! default_ports = [443, 80]
//!
//! [limits]                      # new connections use the values of the last
//!                               # (re)load; max_connections is read at start
//! connect_timeout_seconds = 10  # DNS + TCP connect to the upstream
//! idle_timeout_seconds = 300    # a connection or tunnel with no bytes either way
//! max_header_bytes = 16384      # request head (line + headers), at least 8192
//! max_connections = 1024        # client connections at once
//!
//! [[allow]]
//! domain = "github.com"         # exactly this name
//!
//! [[allow]]
//! domain = "*.githubusercontent.com"  # any name below it (not the name itself)
//! ports = [443]
//!
//! [[allow]]
//! cidr = "10.20.0.0/16"         # or one address: "10.20.0.5", "fd00::5"
//! ports = [5000]
//! ```
//!
//! Every entry has exactly one of `domain` or `cidr`. Domains are
//! normalised the way request hosts are ([`super::target`]), so an entry may
//! be written in Unicode, upper case or with a trailing dot.
//!
//! **Domain entries** allow names. The addresses a name resolves to must be
//! public: loopback, private, link-local (cloud metadata), CGNAT, multicast
//! and reserved addresses ([`super::target::is_special`]) are refused unless
//! a `cidr` entry covers the address and port. That closes DNS rebinding: an
//! allowed name whose record is pointed at `127.0.0.1` or
//! `169.254.169.254` reaches nothing.
//!
//! **CIDR entries** allow IP literals (`CONNECT 10.20.0.5:5000`) and open
//! the addresses they cover to allowed names. An IP literal is allowed only
//! by a CIDR entry, never by a domain entry. A CIDR entry allows every
//! address in it, private or not: `0.0.0.0/0` opens everything, so write
//! the narrowest range that works.
//!
//! Unknown keys are errors; every error names the file, the line and the
//! key.

use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::target::{Host, Target, TargetError, is_special, normalise_host};

/// Ports an entry allows when it lists none and the file sets no
/// `default_ports`: HTTPS and HTTP.
pub const DEFAULT_PORTS: [u16; 2] = [443, 80];

/// A problem with an allowlist file: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}{}: {key}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct AllowlistError {
    /// The file (or `<inline>`).
    pub source_name: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key at fault, e.g. `allow[2].domain`.
    pub key: String,
    pub message: String,
}

/// The connection limits (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub connect_timeout_seconds: u64,
    pub idle_timeout_seconds: u64,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout_seconds: 10,
            idle_timeout_seconds: 300,
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
        }
    }
}

impl Limits {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_seconds)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }
}

/// hyper's smallest read buffer; a header cap below it cannot be enforced.
pub const MIN_HEADER_BYTES: usize = 8192;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default_ports: Option<Spanned<Vec<u32>>>,
    #[serde(default)]
    limits: Option<Spanned<Limits>>,
    #[serde(default)]
    allow: Vec<Spanned<RawEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    domain: Option<Spanned<String>>,
    cidr: Option<Spanned<String>>,
    ports: Option<Spanned<Vec<u32>>>,
}

/// What an entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Exactly this name.
    Exact(String),
    /// Any name ending in `.suffix` (not the suffix itself).
    Suffix(String),
    /// Any address in the network.
    Cidr(IpNet),
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub matcher: Matcher,
    pub ports: Vec<u16>,
    /// The entry as written, for logs and answers.
    pub written: String,
}

impl Entry {
    fn matches_host(&self, host: &Host) -> bool {
        match (&self.matcher, host) {
            (Matcher::Exact(name), Host::Domain(d)) => name == d,
            // `suffix` starts with `.`: `evilexample.com` does not end in
            // `.example.com`, and `example.com` itself is longer than nothing.
            (Matcher::Suffix(suffix), Host::Domain(d)) => {
                d.len() > suffix.len() && d.ends_with(suffix.as_str())
            }
            (Matcher::Cidr(net), Host::Ip(ip)) => net.contains(ip),
            _ => false,
        }
    }
}

/// A whole allowlist. See the [module docs](self) for the file format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowlist {
    pub entries: Vec<Entry>,
    pub limits: Limits,
}

/// Why a destination is refused, before any connection is tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A short, fixed reason for metrics: `bad-target`, `not-allowed`,
    /// `port-not-allowed`, `private-address`, `host-mismatch`, `method`.
    pub reason: &'static str,
    /// The sentence the client reads.
    pub message: String,
}

impl Refusal {
    pub fn bad_target(e: &TargetError) -> Refusal {
        Refusal {
            reason: "bad-target",
            message: e.to_string(),
        }
    }
}

impl Allowlist {
    /// Reads and checks a file.
    pub fn from_file(path: &Path) -> Result<Allowlist, AllowlistError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| AllowlistError {
            source_name: name.clone(),
            line: None,
            key: "(file)".into(),
            message: format!("cannot read it: {e}"),
        })?;
        Allowlist::from_toml(&text, &name)
    }

    /// Parses and checks TOML; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Allowlist, AllowlistError> {
        let line_of =
            |span: Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
        let err = |span: Option<Range<usize>>, key: String, message: String| AllowlistError {
            source_name: source_name.to_owned(),
            line: span.map(line_of),
            key,
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| {
            // toml's message names the key; its span gives the line.
            let message = e.message().trim().to_owned();
            err(e.span(), "(syntax)".into(), message)
        })?;

        let check_ports =
            |ports: &Spanned<Vec<u32>>, key: String| -> Result<Vec<u16>, AllowlistError> {
                let span = ports.span();
                if ports.get_ref().is_empty() {
                    return Err(err(Some(span), key, "must list at least one port".into()));
                }
                ports
                    .get_ref()
                    .iter()
                    .map(|&p| match u16::try_from(p) {
                        Ok(p) if p > 0 => Ok(p),
                        _ => Err(err(
                            Some(span.clone()),
                            key.clone(),
                            format!("{p} is not a port (1-65535)"),
                        )),
                    })
                    .collect()
            };

        let default_ports = match &file.default_ports {
            Some(p) => check_ports(p, "default_ports".into())?,
            None => DEFAULT_PORTS.to_vec(),
        };
        let limits = match file.limits {
            Some(l) => {
                let span = l.span();
                let l = l.into_inner();
                let bad = |key: &str, m: &str| {
                    Err(err(Some(span.clone()), format!("limits.{key}"), m.into()))
                };
                if l.connect_timeout_seconds == 0 {
                    return bad("connect_timeout_seconds", "must be at least 1");
                }
                if l.idle_timeout_seconds == 0 {
                    return bad("idle_timeout_seconds", "must be at least 1");
                }
                if l.max_header_bytes < MIN_HEADER_BYTES {
                    return bad("max_header_bytes", "must be at least 8192");
                }
                if l.max_connections == 0 {
                    return bad("max_connections", "must be at least 1");
                }
                l
            }
            None => Limits::default(),
        };

        let mut entries = Vec::with_capacity(file.allow.len());
        for (i, raw) in file.allow.into_iter().enumerate() {
            let key = |k: &str| format!("allow[{}]{k}", i + 1);
            let span = raw.span();
            let raw = raw.into_inner();
            let ports = match &raw.ports {
                Some(p) => check_ports(p, key(".ports"))?,
                None => default_ports.clone(),
            };
            let (matcher, written) = match (raw.domain, raw.cidr) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(err(
                        Some(span),
                        key(""),
                        "needs exactly one of `domain` or `cidr`".into(),
                    ));
                }
                (Some(domain), None) => {
                    let span = domain.span();
                    let written = domain.into_inner();
                    (
                        parse_domain(&written).map_err(|m| err(Some(span), key(".domain"), m))?,
                        written,
                    )
                }
                (None, Some(cidr)) => {
                    let span = cidr.span();
                    let written = cidr.into_inner();
                    (
                        parse_cidr(&written).map_err(|m| err(Some(span), key(".cidr"), m))?,
                        written,
                    )
                }
            };
            entries.push(Entry {
                matcher,
                ports,
                written,
            });
        }
        Ok(Allowlist { entries, limits })
    }

    /// Whether the destination may be asked for. `Ok` names the entry that
    /// allows it; the addresses it resolves to are checked later with
    /// [`Allowlist::address_allowed`].
    pub fn check(&self, target: &Target) -> Result<&Entry, Refusal> {
        let mut host_matched = false;
        for entry in &self.entries {
            if entry.matches_host(&target.host) {
                if entry.ports.contains(&target.port) {
                    return Ok(entry);
                }
                host_matched = true;
            }
        }
        Err(if host_matched {
            Refusal {
                reason: "port-not-allowed",
                message: format!(
                    "port {} of {} is not in the allowlist",
                    target.port, target.host
                ),
            }
        } else if let Host::Ip(_) = target.host {
            Refusal {
                reason: "not-allowed",
                message: format!(
                    "{} is an IP address no `cidr` entry of the allowlist covers",
                    target.host
                ),
            }
        } else {
            Refusal {
                reason: "not-allowed",
                message: format!("{} is not in the allowlist", target.host),
            }
        })
    }

    /// Whether the proxy may connect to `ip:port` for an allowed
    /// destination: any public address, and a loopback, private,
    /// link-local or otherwise special one only when a `cidr` entry covers
    /// it (and the port).
    pub fn address_allowed(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical(ip);
        !is_special(ip) || self.cidr_allows(ip, port)
    }

    fn cidr_allows(&self, ip: IpAddr, port: u16) -> bool {
        self.entries.iter().any(|e| {
            matches!(&e.matcher, Matcher::Cidr(net) if net.contains(&ip)) && e.ports.contains(&port)
        })
    }
}

/// An IPv4-mapped IPv6 address is its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_domain(written: &str) -> Result<Matcher, String> {
    let (wild, name) = match written.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, written),
    };
    if name.contains('*') {
        return Err(format!(
            "`{written}`: `*` is allowed only as a whole first label (`*.example.com`)"
        ));
    }
    match normalise_host(name) {
        Ok(Host::Domain(d)) => {
            if wild && !d.contains('.') {
                return Err(format!("`{written}` would allow a whole top-level domain"));
            }
            Ok(if wild {
                Matcher::Suffix(format!(".{d}"))
            } else {
                Matcher::Exact(d)
            })
        }
        Ok(Host::Ip(_)) => Err(format!("`{written}` is an IP address: write it as `cidr`")),
        Err(e) => Err(format!("`{written}`: {e}")),
    }
}

fn parse_cidr(written: &str) -> Result<Matcher, String> {
    let net = match written.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match written.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "`{written}` is not an address or a CIDR (`10.0.0.0/8`, `fd00::/8`)"
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "`{written}` has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    // An IPv4-mapped network is its IPv4 network: addresses are compared in
    // that form.
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("prefix ≤ 32"),
            None => net,
        },
        _ => net,
    };
    Ok(Matcher::Cidr(net))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::target::parse_authority;

    const FILE: &str = r#"
default_ports = [443]

[[allow]]
domain = "GitHub.com."

[[allow]]
domain = "*.githubusercontent.com"
ports = [443, 80]

[[allow]]
cidr = "127.0.0.1"
ports = [8080]
"#;

    fn t(s: &str) -> Target {
        parse_authority(s, None).unwrap()
    }

    #[test]
    fn matching() {
        let a = Allowlist::from_toml(FILE, "test").unwrap();
        assert!(a.check(&t("github.com:443")).is_ok());
        assert_eq!(
            a.check(&t("github.com:80")).unwrap_err().reason,
            "port-not-allowed"
        );
        assert_eq!(
            a.check(&t("api.github.com:443")).unwrap_err().reason,
            "not-allowed"
        );
        assert!(a.check(&t("raw.githubusercontent.com:80")).is_ok());
        assert!(a.check(&t("a.b.githubusercontent.com:443")).is_ok());
        assert!(a.check(&t("githubusercontent.com:443")).is_err());
        assert!(a.check(&t("evilgithubusercontent.com:443")).is_err());
        assert!(a.check(&t("127.0.0.1:8080")).is_ok());
        assert!(a.check(&t("127.0.0.2:8080")).is_err());
        assert!(a.check(&t("[::ffff:127.0.0.1]:8080")).is_ok());
        assert!(a.address_allowed("127.0.0.1".parse().unwrap(), 8080));
        assert!(a.address_allowed("::ffff:127.0.0.1".parse().unwrap(), 8080));
        assert!(!a.address_allowed("127.0.0.1".parse().unwrap(), 443));
        assert!(!a.address_allowed("169.254.169.254".parse().unwrap(), 443));
        assert!(a.address_allowed("140.82.112.3".parse().unwrap(), 443));
    }

    #[test]
    fn errors_name_line_and_key() {
        let cases = [
            ("[[allow]]\ndomain = \"a..b\"\n", "line 2: allow[1].domain"),
            (
                "[[allow]]\ncidr = \"10.0.0.1/8\"\n",
                "line 2: allow[1].cidr",
            ),
            ("[[allow]]\ncidr = \"nope\"\n", "line 2: allow[1].cidr"),
            (
                "\n[[allow]]\ndomain = \"a.com\"\nports = [0]\n",
                "line 4: allow[1].ports",
            ),
            (
                "[[allow]]\ndomain = \"a.com\"\ncidr = \"10.0.0.0/8\"\n",
                "line 1: allow[1]",
            ),
            ("[[allow]]\nports = [443]\n", "line 1: allow[1]"),
            ("[[allow]]\ndomain = \"*.com\"\n", "allow[1].domain"),
            ("[[allow]]\ndomain = \"a.*.com\"\n", "allow[1].domain"),
            ("[[allow]]\ndomain = \"127.0.0.1\"\n", "write it as `cidr`"),
            ("\n\n[[allow]]\nhost = \"a.com\"\n", "line 4"),
            (
                "[limits]\nmax_header_bytes = 10\n",
                "limits.max_header_bytes",
            ),
            ("default_ports = []\n", "default_ports"),
        ];
        for (text, want) in cases {
            let e = Allowlist::from_toml(text, "f.toml")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("f.toml"), "{e}");
            assert!(e.contains(want), "{text:?}: `{e}` lacks `{want}`");
        }
    }
}
