//! Serving the webhook over TLS (rustls + hyper, HTTP/1.1).
//!
//! The API server is the only client meant to call it, but any pod can
//! reach the port, so what one connection may hold is bounded
//! ([`Config`]):
//! - a slot: at most `max_connections` at once. One more is closed at
//!   accept, logged and counted in
//!   `goaway_operator_webhook_connections_refused_total`, rather than
//!   queued behind slots a slow client holds, where the API server's
//!   timeout would run out unseen; an API server's own connections (its
//!   calls in flight and its pool of idle ones, 25 at most each) stay far
//!   below the default;
//! - the TLS handshake, then each request's headers, each within its
//!   timeout. hyper starts the header clock whenever the connection waits
//!   for a request, after the handshake or the previous response, so it is
//!   the keep-alive idle timeout too: a connection may hold a slot idle
//!   that long anyway, so a shorter header timeout would buy nothing;
//! - the body, read by the handler within the API server's timeout, up to
//!   [`MAX_REVIEW_BYTES`](super::MAX_REVIEW_BYTES).
//!
//! Each connection runs in its own task, so a slow one cannot stall the
//! accept loop or another. On shutdown the listener closes first, then
//! in-flight reviews get up to [`DRAIN_TIMEOUT`] to finish; the server's
//! [`drain_rs::Watch`] is released only then.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::metrics::Metrics;
use crate::tls::CertStore;
use crate::{Error, Result};

/// Connections served at once, by default. An API server keeps at most 25
/// idle connections to the webhook plus one per call in flight; each
/// connection costs tens of KiB, and a request's body up to
/// [`MAX_REVIEW_BYTES`](super::MAX_REVIEW_BYTES) while it is reviewed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// A TLS handshake must finish within this: the API server's own limit
/// (client-go's transport: 10 s).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers must be complete this long after the connection
/// started waiting for them; an idle keep-alive connection is closed
/// after as long. The API server sends its headers at once; it closes its
/// own idle connections after 90 s, and a connection closed sooner costs
/// it one TLS handshake on its next call.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight reviews get after shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server needs from the rest of the operator.
pub struct Context {
    /// The serving certificate, swapped in place on renewal.
    pub certs: Arc<CertStore>,
    /// Where connections are counted.
    pub metrics: Arc<Metrics>,
}

/// The server's limits (see the module's doc).
#[derive(Clone, Debug)]
pub struct Config {
    /// Most connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long a connection may wait for a complete request head, idle
    /// between requests included.
    pub header_read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// Serves `router` on `listener` with the certificate in `ctx` until
/// `shutdown` is signalled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    ctx: Context,
    config: Config,
    shutdown: drain_rs::Watch,
) -> Result<()> {
    let mut tls = ServerConfig::builder_with_provider(ctx.certs.provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(ctx.certs);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    info!(addr = ?listener.local_addr().ok(), max_connections = config.max_connections, "webhook listening");
    let mut signalled = pin!(shutdown.signaled());
    let release = loop {
        let (tcp, peer) = match crate::lifecycle::accept_until(&listener, &mut signalled).await {
            Ok(accepted) => accepted,
            Err(release) => break release,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            ctx.metrics.webhook_connection_refused();
            warn!(%peer, limit = config.max_connections, "connection limit reached; closing new connection");
            continue;
        };
        let io = Slot::new(tcp, permit, ctx.metrics.clone());
        let acceptor = acceptor.clone();
        let http = http.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let handshake_timeout = config.handshake_timeout;
        let connection = async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => return debug!(%error, "TLS handshake failed"),
                Err(_) => return debug!("TLS handshake timed out"),
            };
            let conn = http.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(conn).await {
                debug!(%error, "webhook connection ended with an error");
            }
        };
        tokio::spawn(connection.instrument(debug_span!("webhook_connection", %peer)));
    };
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown());
    if release.release_after(drained).await.is_err() {
        warn!("webhook connections still open after the drain timeout");
    }
    Ok(())
}

/// A connection holding one of the server's slots. Fields drop in order:
/// the slot is free again before the socket is closed.
struct Slot<S> {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    io: S,
}

impl<S> Slot<S> {
    fn new(io: S, permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.webhook_connection(true);
        Slot {
            _permit: permit,
            metrics,
            io,
        }
    }
}

impl<S> Drop for Slot<S> {
    fn drop(&mut self) {
        self.metrics.webhook_connection(false);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Slot<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Slot<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
