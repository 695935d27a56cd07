//! Secrets out of alerts before they are stored, logged or shown.
//!
//! A Falco alert quotes what the process did: its command line, the file
//! or address it touched, sometimes its environment. That is where a job's
//! secrets are (`curl -H "Authorization: token ghp_…"`, `FOO_TOKEN=… ./x`),
//! and berth keeps alerts with the job and shows them to everyone who may
//! read jobs. So the text is scrubbed of what looks secret: known token
//! formats, credentials in URLs and headers, `NAME=value` pairs whose name
//! says secret, and any value berth itself holds secret.

use std::sync::LazyLock;

use regex::Regex;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Token formats worth recognising by their shape alone.
static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        // GitHub: personal, OAuth, user-to-server, server-to-server, refresh, fine-grained.
        r"\bgh[pousr]_[A-Za-z0-9]{20,}\b|\bgithub_pat_[A-Za-z0-9_]{20,}",
        // berth's API tokens and hook credentials.
        r"|\bberth_[A-Za-z0-9_-]{20,}|\bbhk_[A-Za-z0-9_-]{20,}",
        // JSON Web Tokens (GitHub App JWTs, OIDC tokens).
        r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+",
        // AWS access key ids, Slack tokens, private key blocks.
        r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bxox[abprs]-[A-Za-z0-9-]{10,}",
        r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[^-]*(?:-----END [A-Z ]*PRIVATE KEY-----)?",
    ))
    .expect("token pattern")
});

/// `Authorization: Bearer x`, `-u user:password` style credentials, and
/// `scheme://user:password@host`: the part after the marker goes.
static CREDENTIAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)(authorization:\s*(?:bearer|token|basic)\s+)[^\s'\x22]+",
        r"|(?i)(://[^/\s:@'\x22]+:)[^@\s'\x22]+(@)",
    ))
    .expect("credential pattern")
});

/// `NAME=value` or `NAME: value` where NAME says secret.
static SECRET_PAIR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b([A-Za-z0-9_.-]*(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|private[_-]?key|credential|auth)[A-Za-z0-9_.-]*\s*[=:]\s*)('[^']*'|\x22[^\x22]*\x22|[^\s,;&'\x22]+)",
    )
    .expect("secret pair pattern")
});

/// `text` with every secret-looking part replaced by [`REDACTED`], and
/// every value of `known` (secrets berth holds) too.
pub fn redact(text: &str, known: &[&str]) -> String {
    let mut out = TOKEN.replace_all(text, REDACTED).into_owned();
    out = CREDENTIAL
        .replace_all(&out, |c: &regex::Captures| {
            match (c.get(1), c.get(2), c.get(3)) {
                (Some(header), _, _) => format!("{}{REDACTED}", header.as_str()),
                (None, Some(user), Some(at)) => {
                    format!("{}{REDACTED}{}", user.as_str(), at.as_str())
                }
                _ => REDACTED.to_string(),
            }
        })
        .into_owned();
    out = SECRET_PAIR
        .replace_all(&out, |c: &regex::Captures| {
            if c[2].contains(REDACTED) {
                c[0].to_string()
            } else {
                format!("{}{REDACTED}", &c[1])
            }
        })
        .into_owned();
    for secret in known.iter().filter(|s| s.len() >= 8) {
        if out.contains(secret) {
            out = out.replace(secret, REDACTED);
        }
    }
    out
}

/// [`redact`] applied to every string in an alert's output fields (and to
/// the names of fields, which can carry arguments).
pub fn redact_fields(
    fields: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    fields
        .iter()
        .map(|(k, v)| (redact(k, known), redact_value(v, known)))
        .collect()
}

fn redact_value(value: &serde_json::Value, known: &[&str]) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(redact(s, known)),
        Value::Array(items) => Value::Array(items.iter().map(|v| redact_value(v, known)).collect()),
        Value::Object(map) => Value::Object(redact_fields(map, known)),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shapes_credentials_and_secret_pairs_are_redacted() {
        let cases = [
            (
                "curl -H 'Authorization: token ghp_0123456789abcdefghijABCDEFGHIJ012345' https://api.github.com",
                "ghp_0123456789",
            ),
            (
                "git clone https://x-access-token:ghs_s3cr3tvalue@github.com/a/b",
                "s3cr3tvalue",
            ),
            (
                "curl -H \"Authorization: Bearer abc.def.ghi\" http://x",
                "abc.def.ghi",
            ),
            (
                "env AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG ./deploy",
                "wJalrXUtnFEMI",
            ),
            (
                "NPM_TOKEN='npm_abcdef123456' npm publish",
                "npm_abcdef123456",
            ),
            ("mysql --password=hunter22 -u root", "hunter22"),
            ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
            (
                "berth_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA used",
                "berth_AAAA",
            ),
            (
                "jwt eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIxMjMifQ.c2lnbmF0dXJlLWhlcmU",
                "eyJpc3MiOiIxMjMifQ",
            ),
        ];
        for (text, secret) in cases {
            let out = redact(text, &[]);
            assert!(!out.contains(secret), "{text} -> {out}");
            assert!(out.contains(REDACTED), "{text} -> {out}");
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in [
            "Terminal shell in a berth worker (user=runner process=bash cmdline=bash -i)",
            "connection=10.0.0.2:41234->169.254.169.254:80 process=curl",
            "cmdline=cargo build --release --locked",
            "file=/etc/shadow container_id=0a1b2c3d4e5f",
        ] {
            assert_eq!(redact(text, &[]), text);
        }
    }

    #[test]
    fn secrets_berth_holds_are_redacted_whatever_their_shape() {
        let out = redact(
            "echo plain-webhook-secret-value >x",
            &["plain-webhook-secret-value"],
        );
        assert_eq!(out, format!("echo {REDACTED} >x"));
        let fields = serde_json::json!({
            "proc.cmdline": "curl -u admin:pa55word http://x",
            "proc.env": ["GITHUB_TOKEN=ghs_abcdefghijklmnopqrstuvwxyz", "HOME=/home/runner"],
            "evt.num": 42,
        });
        let out = redact_fields(fields.as_object().unwrap(), &[]);
        let text = serde_json::Value::Object(out).to_string();
        assert!(!text.contains("ghs_abcdefghijklmnopqrstuvwxyz"), "{text}");
        assert!(text.contains("HOME=/home/runner"), "{text}");
        assert!(text.contains("42"), "{text}");
    }
}
