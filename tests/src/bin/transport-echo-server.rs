//! Test fixture: a gRPC echo server built directly on
//! `goaway_transport::server`. Echoes each request body back as the
//! response body with `grpc-status: 0`. Prints `{"port": N}` when
//! listening and one JSON line per closed connection. With `--tower` the
//! streams are answered by a `tower::Service` through
//! `ServerConnection::serve`, as a tonic or hyper application would be.

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use goaway_transport::policy::Strictness;
use goaway_transport::server::{Incoming, RequestBody, ServerConfig, ServerConnection};
use goaway_transport::{Policy, tcp};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The policy as YAML text.
    #[arg(long, default_value = "")]
    policy_yaml: String,
    /// Answer with a tower::Service through `ServerConnection::serve`.
    #[arg(long)]
    tower: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (policy, _) = Policy::load(&args.policy_yaml, Strictness::Permissive)?;
    let config = ServerConfig {
        params: policy.server_params(),
        ..ServerConfig::default()
    };
    let listener = TcpListener::bind(&args.listen).await?;
    println!(
        "{}",
        serde_json::json!({"port": listener.local_addr()?.port()})
    );
    loop {
        let (tcp, peer) = listener.accept().await?;
        tcp::configure_accepted(&tcp, &config.params)?;
        let config = config.clone();
        let tower = args.tower;
        tokio::spawn(async move {
            let mut conn = match ServerConnection::handshake(tcp, &config).await {
                Ok(c) => c,
                Err(e) => {
                    println!(
                        "{}",
                        serde_json::json!({"event": "handshake_failed", "error": e.to_string()})
                    );
                    return;
                }
            };
            if tower {
                let service = tower::service_fn(|req: Request<RequestBody>| async move {
                    let body = EchoBody {
                        request: req.into_body(),
                        finished: false,
                    };
                    let response = Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)?;
                    Ok::<_, http::Error>(response)
                });
                conn.serve(service).await;
            } else {
                while let Some(stream) = conn.accept().await {
                    tokio::spawn(echo(stream));
                }
            }
            let stats = conn.handle().stats();
            println!(
                "{}",
                serde_json::json!({
                    "event": "closed",
                    "peer": peer.to_string(),
                    "reason": conn.outcome().map(|r| r.as_str()),
                    "streams": stats.streams_total,
                    "pings_sent": stats.pings_sent,
                    "pings_received": stats.pings_received,
                    "strikes": stats.strikes,
                    "age_ms": stats.age.as_millis() as u64,
                })
            );
        });
    }
}

async fn echo(stream: Incoming) {
    let (req, mut respond, _guard) = stream.into_parts();
    let mut body = req.into_body();
    let head = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("static response");
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    while let Some(chunk) = body.data().await {
        let Ok(chunk): Result<Bytes, _> = chunk else {
            return;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if send.send_data(chunk, false).is_err() {
            return;
        }
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
    // Keep the stream counted until h2 has the trailers queued.
    tokio::time::sleep(Duration::ZERO).await;
}

/// The response body of the tower echo: the request's DATA as it arrives,
/// then `grpc-status: 0`.
struct EchoBody {
    request: RequestBody,
    finished: bool,
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        use std::task::Poll;
        if self.finished {
            return Poll::Ready(None);
        }
        loop {
            match std::task::ready!(std::pin::Pin::new(&mut self.request).poll_frame(cx)) {
                Some(Ok(frame)) if frame.is_data() => return Poll::Ready(Some(Ok(frame))),
                // The request's own trailers are not echoed.
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.finished = true;
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
    }
}
