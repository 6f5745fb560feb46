//! The client-facing side: accept h2c connections, manage each with the
//! transport's server driver (docs/design.md §3), and proxy every stream
//! upstream. The accept loop and every connection it accepts hold the drain's
//! watch ([`crate::drain`]): the loop closes the listener when the drain
//! signals, and each connection sends its GOAWAY.

pub mod forwarded;
pub mod grpc;
pub mod passthrough;
mod pump;
mod stream;

pub use stream::{Upstream, forward};

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use goaway_transport::server::ServerConnection;
use goaway_transport::tcp;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::{Agent, workers};

/// Accepts connections until the drain asks for the listener to close
/// (its GOAWAY step, see [`crate::drain`]), then drops it so that new
/// connections are refused, and `watch` with it. Every connection accepted
/// is handed a clone of `watch`, and gets its GOAWAY from it.
pub async fn accept_loop(listener: TcpListener, agent: Arc<Agent>, watch: drain_rs::Watch) {
    agent.drain.listener_opened();
    let mut closing = pin!(agent.drain.closing_listener());
    loop {
        tokio::select! {
            biased;
            () = &mut closing => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) if workers::open_connections(&agent.workers) >= agent.config.max_connections => {
                    // Closed at once rather than left in the backlog: the
                    // client sees a reset and tries another endpoint.
                    drop(tcp);
                    agent.metrics.connection_refused();
                    tracing::warn!(%peer, limit = agent.config.max_connections, "connection limit reached; closing new connection");
                }
                Ok((tcp, peer)) => {
                    agent.drain.accepted();
                    hand_off(tcp, peer, &agent, watch.clone());
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    agent.drain.listener_closed();
    drop(watch);
    tracing::info!("listener closed; new connections are refused");
}

/// Moves an accepted connection to the least loaded worker thread, where
/// it lives until closed, holding `watch` until then.
fn hand_off(tcp: TcpStream, peer: SocketAddr, agent: &Arc<Agent>, watch: drain_rs::Watch) {
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
            Ok(tcp) => serve_connection(tcp, peer, agent, worker.upstream.clone(), watch).await,
            Err(e) => tracing::warn!(error = %e, "could not register the connection"),
        }
    }
    .instrument(span);
    handle.spawn(fut);
}

/// Serves one accepted connection. The drain waits for it from the start:
/// one still in its handshake when the drain signals gets its GOAWAY once
/// the handshake is done.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    agent: Arc<Agent>,
    upstream: Arc<Upstream>,
    watch: drain_rs::Watch,
) {
    // TLS and HTTP/1.x are passed through to the app untouched.
    let deadline = tokio::time::Instant::now() + agent.config.handshake_timeout;
    match passthrough::sniff(&tcp, deadline).await {
        None => return,
        Some(passthrough::Sniffed::Http2) => {}
        Some(other) => {
            // No GOAWAY for it: the drain need not wait for it, and
            // closes it when it has finished.
            drop(watch);
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
        .map(|conn| serve(conn, peer, agent.clone(), upstream, watch))
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
    watch: drain_rs::Watch,
) -> impl Future<Output = ()> + Send {
    async move {
        let handle = conn.handle();
        let _registration = agent.connections.register(peer, handle.clone());
        tracing::debug!("connection accepted");
        agent.bounce_if_rebalancing(peer, &handle);
        // The streams run inside this task (see the transport's
        // `serve_streams`). The drain's GOAWAY reaches the connection
        // through a clone of `watch`; `watch` itself is held, and the
        // drain waits, until the connection is gone.
        let client = (agent.config.forwarded_for == forwarded::ForwardedFor::Append)
            .then(|| forwarded::entry(peer.ip()));
        let leftover = {
            let serving = pin!(conn.serve_streams(|stream| forward(
                stream,
                upstream.clone(),
                client.clone()
            )));
            agent
                .drain
                .watch_connection(watch.clone(), &handle, serving)
                .await
        };
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
        drop(watch);
    }
}
