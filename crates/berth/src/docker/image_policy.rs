//! Which worker images a pool may run, and when berth pulls them.
//!
//! A job runs untrusted code inside whatever image its pool names, and it
//! gets a JIT runner credential; so the image must be exactly the one an
//! operator reviewed. An image is accepted when it is pinned by digest
//! (`name@sha256:…`), is a local image ID (`sha256:…`, for images built on
//! the host), or belongs to a repository on the `docker.allowed_images`
//! allowlist (`ghcr.io/acme/` allows every image under that prefix, tags
//! included). Anything else fails the job with the reason, before a runner
//! is minted; `berth config check` warns about it.

use serde::Deserialize;

/// When berth pulls a pool's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Never pull: the image must be on the Docker host.
    Never,
    /// Pull when the Docker host does not have it.
    #[default]
    IfNotPresent,
    /// Pull before every job (a digest-pinned image is then only checked).
    Always,
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Whether `image` is pinned: `name@sha256:<64 hex>` or `sha256:<64 hex>`.
pub fn is_pinned(image: &str) -> bool {
    match image.rsplit_once("@sha256:") {
        Some((name, digest)) => !name.is_empty() && is_sha256_hex(digest),
        None => image.strip_prefix("sha256:").is_some_and(is_sha256_hex),
    }
}

/// The repository part of a reference: `ghcr.io/acme/worker` of
/// `ghcr.io/acme/worker:1.2@sha256:…`.
pub fn repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A tag is a `:` after the last `/` (a `:` before it is a registry port).
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

/// Checks `image` against the rules above; the error says what to do.
pub fn check(image: &str, allowed_repositories: &[String]) -> Result<(), String> {
    if is_pinned(image) {
        return Ok(());
    }
    let repo = repository(image);
    let allowed = allowed_repositories.iter().any(|prefix| {
        let prefix = prefix.trim_end_matches('*');
        !prefix.is_empty()
            && (repo == prefix.trim_end_matches('/')
                || (prefix.ends_with('/') && repo.starts_with(prefix)))
    });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "the worker image `{image}` is neither pinned by digest (name@sha256:…) nor in docker.allowed_images"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pinned_images() {
        assert!(is_pinned(&format!("ghcr.io/acme/worker@sha256:{DIGEST}")));
        assert!(is_pinned(&format!("worker:1.0@sha256:{DIGEST}")));
        assert!(is_pinned(&format!("sha256:{DIGEST}")));
        assert!(!is_pinned("ubuntu:latest"));
        assert!(!is_pinned("ghcr.io/acme/worker@sha256:abc"));
        assert!(!is_pinned(&format!("@sha256:{DIGEST}")));
        assert!(!is_pinned(&format!("sha256:{}", DIGEST.to_uppercase())));
    }

    #[test]
    fn repositories() {
        assert_eq!(repository("ghcr.io/acme/worker:1.2"), "ghcr.io/acme/worker");
        assert_eq!(repository("localhost:5000/worker"), "localhost:5000/worker");
        assert_eq!(
            repository("localhost:5000/worker:tag"),
            "localhost:5000/worker"
        );
        assert_eq!(repository(&format!("w@sha256:{DIGEST}")), "w");
    }

    #[test]
    fn allowlist() {
        let allowed = vec![
            "ghcr.io/acme/".to_string(),
            "registry.local/worker".to_string(),
        ];
        assert!(check("ghcr.io/acme/worker:latest", &allowed).is_ok());
        assert!(check("registry.local/worker:2", &allowed).is_ok());
        assert!(check("registry.local/worker-evil:2", &allowed).is_err());
        assert!(check("ghcr.io/acmeevil/worker:1", &allowed).is_err());
        let err = check("ubuntu:latest", &allowed).unwrap_err();
        assert!(
            err.contains("ubuntu:latest") && err.contains("allowed_images"),
            "{err}"
        );
        assert!(check(&format!("ubuntu@sha256:{DIGEST}"), &[]).is_ok());
    }
}
