//! The demo's application: a gRPC echo server on plain h2, written the way
//! many real services are — no keepalive policy, no GOAWAY on SIGTERM.
//! SIGTERM stops it on the spot, with whatever connections it has open.
//!
//! With `--graceful` it shuts down like a grpc-go server's `GracefulStop`
//! instead (connections managed by the transport: two-step GOAWAY, streams
//! finish, then exit); the agent's app-restart test uses that.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, HeaderValue, Response};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// `goaway-agent demo-backend` (hidden).
#[derive(Clone, Debug, Args)]
pub struct BackendArgs {
    /// Where to listen.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Shortest time spent on a call.
    #[arg(long, default_value_t = 20)]
    pub min_ms: u64,
    /// Longest time spent on a call.
    #[arg(long, default_value_t = 80)]
    pub max_ms: u64,
    /// On SIGTERM, stop like grpc-go's GracefulStop instead of at once.
    #[arg(long)]
    pub graceful: bool,
}

/// Serves until SIGTERM, then exits at once (or drains, `--graceful`).
pub async fn run(args: BackendArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    if args.graceful {
        return run_graceful(listener, args).await;
    }
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                // No graceful stop: open connections die with the process.
                std::process::exit(0);
            }
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let args = args.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        let args = args.clone();
                        tokio::spawn(async move {
                            let _ = echo(req, respond, &args).await;
                        });
                    }
                });
            }
        }
    }
}

/// GracefulStop semantics: on SIGTERM the listener closes, every
/// connection gets the two-step GOAWAY, streams finish, then the process
/// exits.
async fn run_graceful(listener: TcpListener, args: BackendArgs) -> Result<()> {
    use goaway_transport::GoAwayReason;
    use goaway_transport::server::{ServerConfig, ServerConnection};

    let config = ServerConfig::default();
    let (conns_tx, mut conns_rx) = tokio::sync::mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut term = signal(SignalKind::terminate())?;
    let mut open = 0usize;
    let mut handles = Vec::new();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            Some(h) = conns_rx.recv() => { open += 1; handles.push(h); }
            Some(()) = done_rx.recv() => open -= 1,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let (args, config, conns_tx, done_tx) = (args.clone(), config.clone(), conns_tx.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = ServerConnection::handshake(tcp, &config).await else { return };
                    let _ = conns_tx.send(conn.handle());
                    while let Some(stream) = conn.accept().await {
                        let args = args.clone();
                        tokio::spawn(async move {
                            let (req, respond, _guard) = stream.into_parts();
                            let _ = echo(req, respond, &args).await;
                        });
                    }
                    let _ = done_tx.send(());
                });
            }
        }
    }
    drop(listener);
    while let Ok(h) = conns_rx.try_recv() {
        open += 1;
        handles.push(h);
    }
    for h in &handles {
        h.drain(GoAwayReason::GracefulStop, None);
    }
    while open > 0 {
        if done_rx.recv().await.is_none() {
            break;
        }
        open -= 1;
    }
    Ok(())
}

async fn echo(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    args: &BackendArgs,
) -> Result<(), h2::Error> {
    let mut body = req.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let spread = args.max_ms.saturating_sub(args.min_ms);
    let work = args.min_ms
        + if spread > 0 {
            rand::random_range(0..=spread)
        } else {
            0
        };
    tokio::time::sleep(Duration::from_millis(work)).await;
    let mut head = Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut send = respond.send_response(head, false)?;
    send.send_data(Bytes::from(data), false)?;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    send.send_trailers(trailers)?;
    Ok(())
}
