//! The API's TLS configuration when `[api] tls_cert` and `tls_key` are set (the
//! handshake itself runs per connection in [`crate::http::serve`], with a timeout).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

/// The fix of an API certificate or key file that cannot be opened.
const FILE_FIX: &str = "put the PEM file there, readable by the user tandem runs as, or \
     correct the path; remove both api.tls_cert and api.tls_key to serve plain HTTP";

/// Build the server TLS config from PEM files (certificate chain, private key).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| {
            format!(
                "api.tls_cert: cannot open {} — fix: {FILE_FIX}",
                cert.display()
            )
        })?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| {
        format!(
            "api.tls_cert: {} is not a PEM certificate chain",
            cert.display()
        )
    })?;
    if certs.is_empty() {
        anyhow::bail!("api.tls_cert: {} holds no certificate", cert.display());
    }
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| {
            format!(
                "api.tls_key: cannot open {} — fix: {FILE_FIX}",
                key.display()
            )
        })?,
    ))
    .with_context(|| format!("api.tls_key: {} is not a PEM private key", key.display()))?
    .with_context(|| format!("api.tls_key: {} holds no private key", key.display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .with_context(|| {
        format!(
            "api.tls_key: {} does not match {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(cfg))
}
