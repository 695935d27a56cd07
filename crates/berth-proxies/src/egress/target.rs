//! Destination normalisation: one canonical `host:port` per request, or a
//! refusal.
//!
//! The proxy decides on the canonical form and connects to **that form**,
//! never to the bytes the client sent: whatever ambiguity a client puts into
//! a host name is either resolved here, in one place, or refused, so the
//! name that was checked is the name that is resolved. The rules:
//!
//! * **Hosts are parsed as a browser parses them** (the WHATWG URL host
//!   parser, from the `url` crate): percent-encoding is decoded, Unicode is
//!   mapped and turned into punycode (IDNA/UTS 46, so `ＧＩＴＨＵＢ.com` is
//!   `github.com` and `gíthub.com` is `xn--gthub-zsa.com`), letters are
//!   lower-cased, and every numeric IPv4 spelling (`127.1`, `0x7f.1`,
//!   `2130706433`, `017700000001`) becomes the dotted-quad it means. A
//!   name that *looks* like a number but is not a valid address
//!   (`1.2.3.4.5`, `example.0x10`) is refused.
//! * **One trailing dot is dropped** (`github.com.` is `github.com`); empty
//!   labels (`a..b`, `github.com..`) are refused.
//! * **Domain labels hold letters, digits, `-` and `_` only** after that
//!   mapping, at most 63 bytes each and 253 in all. Anything a resolver
//!   might read differently (`*`, `!`, `,`…) is refused.
//! * **IPv4-mapped IPv6 addresses** (`[::ffff:127.0.0.1]`,
//!   `[::ffff:7f00:1]`) become the IPv4 address they carry, so one address
//!   has one form. Other IPv6 literals are written in RFC 5952 form.
//! * **Userinfo is refused** (`user@host`, `allowed.com@evil.com`): the
//!   classic way to make a checker and a client disagree on the host, and
//!   credentials never belong in a proxy's target.
//! * **The port** is decimal digits only, 1–65535; a CONNECT authority must
//!   carry one, an `http://` URI defaults to 80. A bare IPv6 address without
//!   brackets is refused (its last group would read as a port).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest authority accepted (far beyond a real host name: 253 + port).
pub const MAX_AUTHORITY_LEN: usize = 512;
/// Longest domain name (RFC 1035), without the trailing dot.
const MAX_DOMAIN_LEN: usize = 253;
/// Longest label.
const MAX_LABEL_LEN: usize = 63;

/// A normalised host: a domain name (lower-case ASCII, punycode, no
/// trailing dot) or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Domain(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// A normalised destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a host or authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the destination is empty")]
    Empty,
    #[error("the destination is longer than {MAX_AUTHORITY_LEN} bytes")]
    TooLong,
    #[error("the destination holds a space, a control character or a non-ASCII byte")]
    BadByte,
    #[error("the destination carries userinfo (`user@host`), which is never allowed")]
    Userinfo,
    #[error("a port is required (`host:port`)")]
    MissingPort,
    #[error("the port `{0}` is not a number from 1 to 65535")]
    BadPort(String),
    #[error("`{0}` is not a valid host: {1}")]
    BadHost(String, String),
}

/// Parses and normalises a host (no port): a domain, an IPv4 address in
/// any of its spellings, or a bracketed IPv6 address. Used for the
/// allowlist's entries and for request targets alike, so both sides are
/// compared in the same form.
pub fn normalise_host(raw: &str) -> Result<Host, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::Empty);
    }
    let bad = |why: &str| TargetError::BadHost(raw.to_owned(), why.to_owned());
    if raw.contains('@') {
        return Err(TargetError::Userinfo);
    }
    // The WHATWG parser accepts a few bytes only because browsers strip them
    // earlier; a proxy sees them raw, so they are refused here.
    if raw
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\' || b == b'/' || b == b'#')
    {
        return Err(TargetError::BadByte);
    }
    if !raw.starts_with('[') && raw.contains(':') {
        return Err(bad("an IPv6 address must be in brackets"));
    }
    let parsed = url::Host::parse(raw).map_err(|e| bad(&e.to_string()))?;
    let host = match parsed {
        url::Host::Ipv4(a) => Host::Ip(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Host::Ip(canonical_v6(a)),
        url::Host::Domain(d) => Host::Domain(check_domain(&d).map_err(|why| bad(&why))?),
    };
    Ok(host)
}

/// An IPv4-mapped address is its IPv4 address; anything else stays.
fn canonical_v6(a: Ipv6Addr) -> IpAddr {
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

/// Checks an IDNA-mapped domain and drops one trailing dot.
fn check_domain(d: &str) -> Result<String, String> {
    let d = d.strip_suffix('.').unwrap_or(d);
    if d.is_empty() {
        return Err("the name is empty".into());
    }
    if d.len() > MAX_DOMAIN_LEN {
        return Err(format!("longer than {MAX_DOMAIN_LEN} bytes"));
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err("it has an empty label".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!("a label is longer than {MAX_LABEL_LEN} bytes"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("`{c}` is not allowed in a host name"));
        }
    }
    // Lower-case already (IDNA maps case); kept explicit because the
    // allowlist compares bytes.
    Ok(d.to_ascii_lowercase())
}

/// Parses an authority `host[:port]` (a CONNECT target, an absolute URI's
/// authority or a `Host` header). `default_port` is used when there is no
/// port; `None` makes the port mandatory.
pub fn parse_authority(raw: &str, default_port: Option<u16>) -> Result<Target, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::Empty);
    }
    if raw.len() > MAX_AUTHORITY_LEN {
        return Err(TargetError::TooLong);
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TargetError::BadByte);
    }
    if raw.contains('@') {
        return Err(TargetError::Userinfo);
    }
    let (host, port) = if raw.starts_with('[') {
        let end = raw
            .find(']')
            .ok_or_else(|| TargetError::BadHost(raw.to_owned(), "no closing `]`".into()))?;
        let (host, rest) = raw.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    return Err(TargetError::BadHost(
                        raw.to_owned(),
                        "unexpected text after `]`".into(),
                    ));
                }
            },
        }
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        }
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => default_port.ok_or(TargetError::MissingPort)?,
    };
    Ok(Target {
        host: normalise_host(host)?,
        port,
    })
}

/// Decimal digits, 1–65535; no sign, no spaces, no empty port.
pub fn parse_port(p: &str) -> Result<u16, TargetError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::BadPort(p.to_owned()));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(TargetError::BadPort(p.to_owned())),
        Ok(port) => Ok(port),
    }
}

/// Whether an address is one a public destination never has: loopback,
/// private, link-local (cloud metadata at 169.254.169.254), carrier-grade
/// NAT, multicast, reserved, unspecified, documentation and benchmarking
/// ranges, unique-local and site-local IPv6, and IPv6 forms that carry
/// such an IPv4 address (mapped, compatible, NAT64, 6to4). A resolved
/// name that lands on one of these is refused unless a CIDR entry of the
/// allowlist covers it: that is the DNS-rebinding defence.
pub fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => special_v4(a),
        IpAddr::V6(a) => special_v6(a),
    }
}

fn special_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_broadcast()
        || a.is_documentation()
        || a.is_multicast()
        || o[0] == 0                                  // 0.0.0.0/8 "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64)       // 100.64.0.0/10 CGNAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)    // 192.0.0.0/24 IETF
        || (o[0] == 198 && (o[1] & 0xfe) == 18)       // 198.18.0.0/15 benchmarking
        || o[0] >= 240 // 240.0.0.0/4 reserved
}

fn special_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    if let Some(v4) = a.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00                  // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80                  // fe80::/10 link local
        || (s[0] & 0xffc0) == 0xfec0                  // fec0::/10 site local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8)         // documentation
        // ::a.b.c.d (IPv4-compatible, deprecated): treated as its IPv4 address.
        || (s[..6] == [0; 6] && special_v4(embedded(s[6], s[7])))
        // 64:ff9b::/96 NAT64 and 64:ff9b:1::/48 local-use NAT64.
        || (s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] && special_v4(embedded(s[6], s[7])) || s[2] == 1))
        // 2002::/16 6to4 carries an IPv4 address in bits 16..48.
        || (s[0] == 0x2002 && special_v4(embedded(s[1], s[2])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> String {
        normalise_host(s).unwrap().to_string()
    }

    #[test]
    fn spellings_of_one_host_normalise_to_one_form() {
        assert_eq!(host("GitHub.COM"), "github.com");
        assert_eq!(host("github.com."), "github.com");
        assert_eq!(host("git%68ub.com"), "github.com");
        assert_eq!(host("ＧＩＴＨＵＢ.com"), "github.com");
        assert_eq!(host("gíthub.com"), "xn--gthub-zsa.com");
        assert_eq!(host("127.1"), "127.0.0.1");
        assert_eq!(host("0x7f.1"), "127.0.0.1");
        assert_eq!(host("2130706433"), "127.0.0.1");
        assert_eq!(host("017700000001"), "127.0.0.1");
        assert_eq!(host("127.0.0.1."), "127.0.0.1");
        assert_eq!(host("[::ffff:127.0.0.1]"), "127.0.0.1");
        assert_eq!(host("[::FFFF:7f00:1]"), "127.0.0.1");
        assert_eq!(host("[0:0::1]"), "[::1]");
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        for bad in [
            "",
            "a..b",
            "github.com..",
            ".",
            "user@github.com",
            "a b",
            "1.2.3.4.5",
            "example.0x10",
            "::1",
            "[::1",
            "*.github.com",
            "git hub.com",
            "a/b",
            "a\\b",
            "%00",
            "github.com%00",
            "x!.com",
        ] {
            assert!(normalise_host(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn authorities() {
        let t = parse_authority("GitHub.com:443", None).unwrap();
        assert_eq!(t.to_string(), "github.com:443");
        assert_eq!(parse_authority("github.com", Some(80)).unwrap().port, 80);
        assert_eq!(
            parse_authority("[::1]:8080", None).unwrap().to_string(),
            "[::1]:8080"
        );
        assert_eq!(parse_authority("[::1]", Some(80)).unwrap().port, 80);
        assert_eq!(
            parse_authority("github.com", None),
            Err(TargetError::MissingPort)
        );
        for bad in [
            "github.com:",
            "github.com:0",
            "github.com:65536",
            "github.com:+443",
            "github.com: 443",
            "github.com:0x1bb",
            "[::1]x",
            "[::1]:",
            "::1:443",
            "a@b:443",
        ] {
            assert!(parse_authority(bad, None).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn special_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "::127.0.0.1",
        ] {
            assert!(is_special(ip.parse().unwrap()), "{ip} is not special");
        }
        for ip in [
            "140.82.112.3",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::8c52:7003",
        ] {
            assert!(!is_special(ip.parse().unwrap()), "{ip} is special");
        }
    }
}
