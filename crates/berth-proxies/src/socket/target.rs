//! Request-target normalisation: one canonical form per request, or a refusal.
//!
//! The proxy decides on the canonical form and forwards **that form**, never
//! the bytes the client sent. Whatever ambiguity a client puts into a
//! request target (doubled slashes, percent-encodings, a trailing slash) is
//! therefore either resolved here, in one place, or refused; Docker never
//! sees a path the policy did not see. The rules:
//!
//! * **Origin form only.** The target must start with `/`. Absolute form
//!   (`http://host/…`), authority form (`CONNECT host:port`) and asterisk
//!   form (`OPTIONS *`) are refused: no Docker client sends them, and an
//!   absolute-form target's host part means nothing to a socket proxy.
//! * **Printable ASCII only** (`!`..`~`) in the raw target, no `#`: a
//!   fragment is never sent by a client, and raw spaces, controls and
//!   non-ASCII bytes are not valid in a request target.
//! * **Doubled slashes collapse and a trailing slash is dropped**: `//` and
//!   `/x/` carry no meaning in Docker's routes, and collapsing them is
//!   unambiguous.
//! * **Percent-encoding is decoded exactly once.** An encoded `/`, `\`,
//!   `.`, `%` (double encoding), NUL or any other byte that is not allowed
//!   raw is refused: an encoded separator is the classic way to make a
//!   proxy and a server disagree on where segments end, and no Docker
//!   client needs one.
//! * **Path characters are those Docker's routes and names use**: letters,
//!   digits, `.`, `_`, `-`, `:` and `@` (IDs, container and network names,
//!   image references with tags and digests). Anything else (`\`, `;`,
//!   `+`, quotes…) is refused.
//! * **Dot segments (`.` and `..`) are refused**, not resolved: only an
//!   attempt to escape a route produces them.
//! * **Case is kept.** Docker's router is case-sensitive (`/CONTAINERS/json`
//!   is a 404 there) and container names are case-sensitive, so nothing is
//!   lower-cased: a case variant of a route word simply matches no rule and
//!   is denied.
//! * **The API version prefix** `/vMAJOR.MINOR` is recognised in the first
//!   segment only, as Docker's router does; a malformed one (`/v1`,
//!   `/v1.41.0`, `/v1.x`) is refused.
//! * **The query string** is parsed the way Go's `url.ParseQuery` does
//!   (`&`-separated, `+` is a space, `%XX` decoded once), except that
//!   whatever Go would treat differently or ambiguously is refused: a `;`
//!   (Go rejects it, older Go split on it), an invalid escape, an empty key,
//!   a control character, invalid UTF-8 and, above all, **a repeated
//!   parameter** (Go's `Form.Get` takes the first value; a proxy that looked
//!   at another one would be bypassed). The forwarded query is re-encoded
//!   from the decoded pairs.

use std::fmt;

/// Most path segments a target may have.
const MAX_SEGMENTS: usize = 32;
/// Most query parameters a target may have.
const MAX_PARAMS: usize = 32;
/// Longest raw target accepted.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// A Docker API version from a `/vMAJOR.MINOR` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    pub major: u16,
    pub minor: u16,
}

impl ApiVersion {
    /// Parses `1.41` (no `v`).
    pub fn parse(s: &str) -> Option<ApiVersion> {
        let (major, minor) = s.split_once('.')?;
        let digits = |p: &str| {
            (!p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u16>().ok())
                .flatten()
        };
        Some(ApiVersion {
            major: digits(major)?,
            minor: digits(minor)?,
        })
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why a request target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request target is not in origin form (it must start with `/`)")]
    NotOriginForm,
    #[error("the request target is longer than {MAX_TARGET_LEN} bytes")]
    TooLong,
    #[error("the request target holds a byte that is not printable ASCII")]
    NotPrintable,
    #[error("the request target holds a fragment (`#`)")]
    Fragment,
    #[error("the path holds `{0}`, which no Docker API path uses")]
    BadPathChar(char),
    #[error("the path holds an invalid percent-escape")]
    BadEscape,
    #[error("the path holds an encoded `{0}`")]
    EncodedForbidden(char),
    #[error("the path holds a `.` or `..` segment")]
    DotSegment,
    #[error("malformed API version prefix `{0}`")]
    BadVersion(String),
    #[error("the path is empty")]
    EmptyPath,
    #[error("the path has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("the query holds `;`")]
    QuerySemicolon,
    #[error("the query holds an invalid percent-escape")]
    QueryBadEscape,
    #[error("a query parameter is not valid UTF-8")]
    QueryNotUtf8,
    #[error("a query parameter holds a control character")]
    QueryControl,
    #[error("a query parameter has an empty name")]
    QueryEmptyKey,
    #[error("the query parameter `{0}` is repeated")]
    QueryDuplicate(String),
    #[error("the query has more than {MAX_PARAMS} parameters")]
    QueryTooMany,
}

/// A request target in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The API version of a `/vX.Y/…` request.
    pub version: Option<ApiVersion>,
    /// The decoded path segments after the version prefix; none is empty,
    /// `.` or `..`, and each holds only [path characters](is_path_char).
    pub segments: Vec<String>,
    /// The decoded query parameters, in order; no name repeats.
    pub query: Vec<(String, String)>,
}

/// Characters a canonical path segment may hold.
pub fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@')
}

impl Target {
    /// Parses and normalises a raw request target (path and query).
    pub fn parse(raw: &str) -> Result<Target, TargetError> {
        if raw.len() > MAX_TARGET_LEN {
            return Err(TargetError::TooLong);
        }
        if !raw.starts_with('/') {
            return Err(TargetError::NotOriginForm);
        }
        if let Some(b) = raw.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
            let _ = b;
            return Err(TargetError::NotPrintable);
        }
        if raw.contains('#') {
            return Err(TargetError::Fragment);
        }
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };

        let mut segments = Vec::new();
        for raw_segment in path.split('/').filter(|s| !s.is_empty()) {
            if segments.len() == MAX_SEGMENTS {
                return Err(TargetError::TooManySegments);
            }
            segments.push(decode_segment(raw_segment)?);
        }
        let version = match segments.first() {
            Some(first) if is_version_like(first) => {
                let v = ApiVersion::parse(&first[1..])
                    .ok_or_else(|| TargetError::BadVersion(first.clone()))?;
                segments.remove(0);
                Some(v)
            }
            _ => None,
        };
        if segments.is_empty() {
            return Err(TargetError::EmptyPath);
        }
        let query = match query {
            Some(q) => parse_query(q)?,
            None => Vec::new(),
        };
        Ok(Target {
            version,
            segments,
            query,
        })
    }

    /// The canonical path, with the version prefix if there was one.
    pub fn path(&self) -> String {
        let mut out = String::new();
        if let Some(v) = self.version {
            out.push_str(&format!("/v{v}"));
        }
        for s in &self.segments {
            out.push('/');
            out.push_str(s);
        }
        out
    }

    /// The canonical query string (without `?`), empty when there is none.
    pub fn query_string(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.query.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(&encode_component(k));
            out.push('=');
            out.push_str(&encode_component(v));
        }
        out
    }

    /// What the proxy forwards: canonical path and query.
    pub fn path_and_query(&self) -> String {
        let mut out = self.path();
        if !self.query.is_empty() {
            out.push('?');
            out.push_str(&self.query_string());
        }
        out
    }

    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `v` followed by a digit: Docker's router treats the first segment as a
/// version prefix when it is `v` + `[0-9.]+`; anything starting that way is
/// taken as a (possibly malformed) version.
fn is_version_like(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars.next() == Some('v') && segment.len() > 1 && chars.all(|c| c.is_ascii_digit() || c == '.')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_segment(raw: &str) -> Result<String, TargetError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::BadEscape);
            };
            let decoded = h * 16 + l;
            let c = char::from(decoded);
            // An encoded `.` is refused even though a raw one is fine: only
            // an attempt to build a dot segment behind a decoder's back
            // encodes it.
            if matches!(decoded, b'/' | b'\\' | b'.' | b'%' | 0) || !decoded.is_ascii() {
                return Err(TargetError::EncodedForbidden(if decoded.is_ascii() {
                    c
                } else {
                    char::REPLACEMENT_CHARACTER
                }));
            }
            if !is_path_char(c) {
                return Err(TargetError::EncodedForbidden(c));
            }
            out.push(c);
            i += 3;
        } else {
            let c = char::from(b);
            if !is_path_char(c) {
                return Err(TargetError::BadPathChar(c));
            }
            out.push(c);
            i += 1;
        }
    }
    if out == "." || out == ".." {
        return Err(TargetError::DotSegment);
    }
    Ok(out)
}

/// Go's `url.QueryUnescape` (`+` is a space), strictly.
fn decode_query_component(raw: &str) -> Result<String, TargetError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(TargetError::QueryBadEscape);
                };
                out.push(h * 16 + l);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let s = String::from_utf8(out).map_err(|_| TargetError::QueryNotUtf8)?;
    if s.chars().any(char::is_control) {
        return Err(TargetError::QueryControl);
    }
    Ok(s)
}

fn parse_query(raw: &str) -> Result<Vec<(String, String)>, TargetError> {
    if raw.contains(';') {
        return Err(TargetError::QuerySemicolon);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        let key = decode_query_component(k)?;
        let value = decode_query_component(v)?;
        if key.is_empty() {
            return Err(TargetError::QueryEmptyKey);
        }
        if out.iter().any(|(existing, _)| *existing == key) {
            return Err(TargetError::QueryDuplicate(key));
        }
        if out.len() == MAX_PARAMS {
            return Err(TargetError::QueryTooMany);
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Everything but RFC 3986's unreserved characters is encoded.
const QUERY_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_ENCODE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> String {
        Target::parse(raw)
            .unwrap_or_else(|e| panic!("{raw}: {e}"))
            .path_and_query()
    }

    fn refused(raw: &str) -> TargetError {
        Target::parse(raw).expect_err(raw)
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canon("/v1.41/containers/json"), "/v1.41/containers/json");
        assert_eq!(canon("/containers/json"), "/containers/json");
        assert_eq!(canon("//containers///json/"), "/containers/json");
        assert_eq!(canon("/v1.41//_ping/"), "/v1.41/_ping");
        assert_eq!(canon("/%63ontainers/json"), "/containers/json");
        assert_eq!(
            canon("/images/busybox%3Alatest/json"),
            "/images/busybox:latest/json"
        );
        assert_eq!(
            canon("/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"),
            "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
        );
        assert_eq!(canon("/x?a=b+c&&d"), "/x?a=b%20c&d=");
        assert_eq!(canon("/x?a=1?b=2"), "/x?a=1%3Fb%3D2");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            refused("http://h/containers/json"),
            TargetError::NotOriginForm
        );
        assert_eq!(refused("*"), TargetError::NotOriginForm);
        assert_eq!(refused("/containers/json#x"), TargetError::Fragment);
        assert_eq!(refused("/containers /json"), TargetError::NotPrintable);
        assert_eq!(refused("/containers\\json"), TargetError::BadPathChar('\\'));
        assert_eq!(
            refused("/containers%2Fjson"),
            TargetError::EncodedForbidden('/')
        );
        assert_eq!(
            refused("/containers%2fjson"),
            TargetError::EncodedForbidden('/')
        );
        assert_eq!(
            refused("/containers%5Cjson"),
            TargetError::EncodedForbidden('\\')
        );
        assert_eq!(
            refused("/x/%2e%2e/exec"),
            TargetError::EncodedForbidden('.')
        );
        assert_eq!(refused("/x%00"), TargetError::EncodedForbidden('\0'));
        assert_eq!(refused("/x%252F"), TargetError::EncodedForbidden('%'));
        assert_eq!(refused("/x%3Fa"), TargetError::EncodedForbidden('?'));
        assert_eq!(refused("/x%zz"), TargetError::BadEscape);
        assert_eq!(refused("/x%2"), TargetError::BadEscape);
        assert_eq!(refused("/containers/../exec"), TargetError::DotSegment);
        assert_eq!(refused("/containers/./json"), TargetError::DotSegment);
        assert_eq!(
            refused("/v1/containers/json"),
            TargetError::BadVersion("v1".into())
        );
        assert_eq!(
            refused("/v1.41.0/containers/json"),
            TargetError::BadVersion("v1.41.0".into())
        );
        assert_eq!(refused("/v1.41"), TargetError::EmptyPath);
        assert_eq!(refused("/"), TargetError::EmptyPath);
        assert_eq!(refused("/x?a=1;b=2"), TargetError::QuerySemicolon);
        assert_eq!(
            refused("/x?a=1&a=2"),
            TargetError::QueryDuplicate("a".into())
        );
        assert_eq!(
            refused("/x?a=1&%61=2"),
            TargetError::QueryDuplicate("a".into())
        );
        assert_eq!(refused("/x?a=%zz"), TargetError::QueryBadEscape);
        assert_eq!(refused("/x?a=%ff"), TargetError::QueryNotUtf8);
        assert_eq!(refused("/x?a=%0a"), TargetError::QueryControl);
        assert_eq!(refused("/x?=1"), TargetError::QueryEmptyKey);
    }

    #[test]
    fn versions() {
        let t = Target::parse("/v1.24/info").unwrap();
        assert_eq!(
            t.version,
            Some(ApiVersion {
                major: 1,
                minor: 24
            })
        );
        assert!(ApiVersion::parse("1.41") > ApiVersion::parse("1.9"));
        assert!(ApiVersion::parse("1.041").is_some());
        assert!(ApiVersion::parse("1.").is_none());
        assert!(ApiVersion::parse("1.4444").is_none());
    }
}
