//! The client-facing side: accept h2c connections, manage each with the
//! transport's server driver (SPEC §2), and proxy every stream upstream.

pub mod grpc;
pub mod passthrough;
mod pump;
mod stream;

pub use stream::{Upstream, forward};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use goaway_transport::server::ServerConnection;
use goaway_transport::tcp;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{Agent, workers};

/// Accepts connections until `stop` turns true, then drops the listener so
/// new connections are refused.
pub async fn accept_loop(
    listener: TcpListener,
    agent: Arc<Agent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) if workers::open_connections(&agent.workers) >= agent.max_connections => {
                    // Closed at once rather than left in the backlog: the
                    // client sees a reset and tries another endpoint.
                    drop(tcp);
                    agent.metrics.connection_refused();
                    tracing::warn!(%peer, limit = agent.max_connections, "connection limit reached; closing new connection");
                }
                Ok((tcp, peer)) => hand_off(tcp, peer, &agent),
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!("listener closed; new connections are refused");
}

/// Moves an accepted connection to the least loaded worker thread, where
/// it lives until closed.
fn hand_off(tcp: TcpStream, peer: SocketAddr, agent: &Arc<Agent>) {
    let worker = workers::least_loaded(&agent.workers).clone();
    let seat = worker.enter();
    // Re-registered with the worker's own reactor below.
    let tcp = match tcp.into_std() {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::warn!(error = %e, "could not hand the connection to a worker");
            return;
        }
    };
    let agent = agent.clone();
    let span = tracing::debug_span!("conn", %peer);
    let handle = worker.handle.clone();
    let fut = async move {
        let _seat = seat;
        match TcpStream::from_std(tcp) {
            Ok(tcp) => serve_connection(tcp, peer, agent, worker.upstream.clone()).await,
            Err(e) => tracing::warn!(error = %e, "could not register the connection"),
        }
    }
    .instrument(span);
    handle.spawn(fut);
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    agent: Arc<Agent>,
    upstream: Arc<Upstream>,
) {
    // TLS and HTTP/1.x are passed through to the app untouched.
    let deadline = tokio::time::Instant::now() + agent.handshake_timeout;
    match passthrough::sniff(&tcp, deadline).await {
        None => return,
        Some(passthrough::Sniffed::Http2) => {}
        Some(other) => {
            passthrough::splice(tcp, peer, other, agent, upstream).await;
            return;
        }
    }
    // Two phases in two functions, so the task's storage holds one phase's
    // state at a time: the handshake's h2 codec, then the connection.
    // (No named binding for the connection between the two awaits: rustc
    // would keep storage for it beside the second phase.)
    let Some(serving) = handshake(tcp, &agent, deadline)
        .await
        .map(|conn| serve(conn, peer, agent.clone(), upstream))
    else {
        return;
    };
    serving.await;
}

/// The HTTP/2 handshake, within what is left of `--handshake-timeout`
/// after the first bytes were looked at.
async fn handshake(
    tcp: TcpStream,
    agent: &Agent,
    deadline: tokio::time::Instant,
) -> Option<ServerConnection<TcpStream>> {
    let mut config = agent.server_config();
    config.handshake_timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    if let Err(e) = tcp::configure_accepted(&tcp, &config.params) {
        tracing::debug!(error = %e, "could not set socket options");
    }
    match ServerConnection::handshake(tcp, &config).await {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            None
        }
    }
}

/// Not an `async fn`: those move their arguments into a second copy
/// inside the future, and the connection is most of a task's size.
#[allow(clippy::manual_async_fn)]
fn serve(
    mut conn: ServerConnection<TcpStream>,
    peer: SocketAddr,
    agent: Arc<Agent>,
    upstream: Arc<Upstream>,
) -> impl Future<Output = ()> + Send {
    async move {
        let handle = conn.handle();
        let _registration = agent.connections.register(peer, handle.clone());
        agent.drain.adopt(&handle);
        tracing::debug!("connection accepted");
        // The streams run inside this task (see the transport's
        // `serve_streams`).
        let leftover = conn
            .serve_streams(|stream| forward(stream, upstream.clone()))
            .await;
        // Streams still counted now were cut off by the close.
        let stats = handle.stats();
        agent
            .metrics
            .connection_duration
            .observe(stats.age.as_secs_f64());
        let reason = conn.outcome().cloned();
        if let Some(r) = &reason
            && r.is_hard_close()
        {
            agent.drain.record_cut(stats.active_streams);
        }
        tracing::debug!(
            reason = reason.as_ref().map_or("unknown", |r| r.as_str()),
            streams = stats.streams_total,
            "connection closed"
        );
        drop(conn);
        leftover.finish().await;
    }
}
