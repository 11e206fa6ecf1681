//! HTTPS for the API when `[api] tls_cert` and `tls_key` are set.
//!
//! TCP connections are accepted by a background task and each TLS handshake runs in
//! its own task (with a timeout), so a slow or broken client never holds up the others;
//! finished streams are handed to axum through the [`axum::serve::Listener`] trait.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Build the server TLS config from PEM files (certificate chain, private key).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("api.tls_cert: cannot open {}", cert.display()))?,
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
        std::fs::File::open(key)
            .with_context(|| format!("api.tls_key: cannot open {}", key.display()))?,
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

/// A listener that yields TLS streams whose handshake has completed.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (stream, remote) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, remote)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "API TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%remote, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ended (cannot happen while we hold the receiver): park.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client address of an HTTPS connection, for `ConnectInfo` (the audit log).
#[derive(Debug, Clone, Copy)]
pub struct TlsClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> TlsClientAddr {
        TlsClientAddr(*stream.remote_addr())
    }
}
