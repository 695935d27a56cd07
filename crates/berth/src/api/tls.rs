//! Optional TLS for the API (rustls, with the `ring` provider).
//!
//! The server (`api::server`) handshakes each connection with this acceptor,
//! within `server.tls_handshake_timeout`, and then serves it like a plain
//! one. A failed handshake only drops that connection.
//!
//! With a client CA (`server.tls_client_ca`), clients *may* present a
//! certificate: one that does not verify fails the handshake, and a
//! verified one marks the connection's requests
//! ([`VerifiedClientCertificate`](super::security::VerifiedClientCertificate)),
//! which the security-events endpoint requires. Other clients connect as
//! before: asking every client for a certificate would break browsers and
//! `berth` CLI users for the sake of one endpoint.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A TLS acceptor from PEM files; errors name the file and what is wrong.
pub fn acceptor(
    cert_path: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca_path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: not a PEM certificate: {e}", ca_path.display()))?;
            for ca in cas {
                roots
                    .add(ca)
                    .map_err(|e| format!("{}: not a CA certificate: {e}", ca_path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in the file", ca_path.display()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{}: {e}", ca_path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{}: the key does not fit the certificate: {e}",
            key_path.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
