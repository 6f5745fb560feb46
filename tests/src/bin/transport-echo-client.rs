//! Test fixture: a unary gRPC call loop on `goaway_transport::client`.
//! Prints one JSON summary: calls ok/failed, connections, GOAWAYs
//! received, transparent retries.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use goaway_tests::{grpc_frame, grpc_unframe};
use goaway_transport::client::{Channel, ChannelConfig};
use goaway_transport::policy::Strictness;
use goaway_transport::{Counters, Policy};
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    target: String,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The policy as YAML text (its `upstream` part applies).
    #[arg(long, default_value = "")]
    policy_yaml: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (policy, _) = Policy::load(&args.policy_yaml, Strictness::Permissive)?;
    let counters = Arc::new(Counters::default());
    let channel = Channel::tcp(
        args.target.clone(),
        ChannelConfig {
            params: policy.client_params(),
            counters: counters.clone(),
            ..ChannelConfig::default()
        },
    );
    let end = Instant::now() + Duration::from_secs_f64(args.seconds);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    let payload = b"hello from goaway";
    while Instant::now() < end {
        match call(&channel, &args.target, payload).await {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(e.to_string());
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "ok": ok,
            "failed": failed,
            "errors": errors,
            "connects": counters.upstream_connects.load(Relaxed),
            "goaways_received": counters.upstream_goaways_received.load(Relaxed),
            "retries": counters.upstream_retries.load(Relaxed),
        })
    );
    Ok(())
}

async fn call(channel: &Channel, target: &str, payload: &[u8]) -> anyhow::Result<()> {
    let uri = format!("http://{target}/echo.Echo/Unary");
    let request = || {
        http::Request::builder()
            .method("POST")
            .uri(&uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("static request")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let resp = channel
        .send(request, Bytes::from(grpc_frame(payload)), deadline)
        .await?;
    anyhow::ensure!(resp.status() == 200, "HTTP status {}", resp.status());
    let mut body = resp.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing");
    anyhow::ensure!(
        status == "0",
        "grpc-status {status}: {:?}",
        trailers.get("grpc-message")
    );
    let messages = grpc_unframe(&data)?;
    anyhow::ensure!(messages == [payload.to_vec()], "echo mismatch");
    Ok(())
}
