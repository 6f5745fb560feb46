//! Serving the webhook over TLS (rustls + hyper, HTTP/1.1).
//!
//! Each connection's handshake runs in its own task so a slow client
//! cannot stall the accept loop. On shutdown the listener closes first,
//! then in-flight reviews get up to [`DRAIN_TIMEOUT`] to finish; the
//! server's [`drain::Watch`] is released only then.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::tls::CertStore;
use crate::{Error, Result};

/// A TLS handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight reviews get after shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` with the certificate in `certs` until
/// `shutdown` is signalled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    certs: Arc<CertStore>,
    shutdown: drain::Watch,
) -> Result<()> {
    let mut config = ServerConfig::builder_with_provider(certs.provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let graceful = GracefulShutdown::new();
    info!(addr = ?listener.local_addr().ok(), "webhook listening");
    let mut signalled = pin!(shutdown.signaled());
    let release = loop {
        let (tcp, peer) = tokio::select! {
            release = &mut signalled => break release,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => return debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(conn).await {
                debug!(%peer, %error, "webhook connection ended with an error");
            }
        });
    };
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown());
    if release.release_after(drained).await.is_err() {
        warn!("webhook connections still open after the drain timeout");
    }
    Ok(())
}
