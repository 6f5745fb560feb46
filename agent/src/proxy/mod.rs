//! The client-facing side: accept h2c connections, manage each with the
//! transport's server driver (SPEC §2), and proxy every stream upstream.

pub mod grpc;
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

use crate::Agent;

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
                Ok((tcp, peer)) => {
                    let span = tracing::debug_span!("conn", %peer);
                    tokio::spawn(serve_connection(tcp, peer, agent.clone()).instrument(span));
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
    tracing::info!("listener closed; new connections are refused");
}

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, agent: Arc<Agent>) {
    let handshake = async {
        let config = agent.server_config();
        if let Err(e) = tcp::configure_accepted(&tcp, &config.params) {
            tracing::debug!(error = %e, "could not set socket options");
        }
        ServerConnection::handshake(tcp, &config).await
    };
    let mut conn = match handshake.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    let handle = conn.handle();
    let _registration = agent.registry.register(peer, handle.clone());
    agent.drain.adopt(&handle);
    tracing::debug!("connection accepted");
    while let Some(stream) = conn.accept().await {
        tokio::spawn(forward(stream, agent.upstream.clone()));
    }
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
}
