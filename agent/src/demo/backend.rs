//! The demo's application: a gRPC echo server on plain h2, written the way
//! many real services are — no keepalive policy, no GOAWAY on SIGTERM.
//! SIGTERM stops it on the spot, with whatever connections it has open.

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
}

/// Serves until SIGTERM, then exits at once.
pub async fn run(args: BackendArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
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
