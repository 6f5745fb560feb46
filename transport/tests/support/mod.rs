//! Test support: a server harness over `tokio::io::duplex`, driven by the
//! crate's raw HTTP/2 peer (`goaway_transport::test_util`).
#![allow(dead_code, unused_imports, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use goaway_transport::server::{CloseReason, ConnectionHandle, Incoming, ServerConfig};
pub use goaway_transport::test_util::{PipeConnector, RawPeer, RawServer};
use tokio::io::DuplexStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server connection running in its own task.
pub struct TestServer {
    pub handle: ConnectionHandle,
    pub done: JoinHandle<CloseReason>,
}

/// Starts a server connection over an in-memory pipe and returns the
/// client end. `on_stream` runs in its own task for every accepted stream.
pub async fn serve<F, Fut>(
    config: ServerConfig,
    jitter: f64,
    on_stream: F,
) -> (RawPeer<DuplexStream>, TestServer)
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(1 << 20);
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(async move {
        let mut conn = goaway_transport::test_util::handshake_with_jitter(server, &config, jitter)
            .await
            .expect("handshake");
        let _ = tx.send(conn.handle());
        while let Some(stream) = conn.accept().await {
            tokio::spawn(on_stream(stream));
        }
        conn.outcome().cloned().expect("outcome once closed")
    });
    let mut peer = RawPeer::new(client);
    // The server handshake needs the preface before it yields a handle.
    peer.handshake().await;
    let handle = rx.await.expect("server started");
    (peer, TestServer { handle, done })
}

/// Answers every stream with 200 and END_STREAM at once.
pub async fn respond_ok(stream: Incoming) {
    let (_req, mut respond, _guard) = stream.into_parts();
    respond
        .send_response(http::Response::new(()), true)
        .expect("send response");
}

/// Holds every stream open (and counted active) for `d`, then answers.
pub fn hold_for(
    d: Duration,
) -> impl Fn(Incoming) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static
{
    move |stream: Incoming| {
        Box::pin(async move {
            let (_req, mut respond, guard) = stream.into_parts();
            tokio::time::sleep(d).await;
            let _ = respond.send_response(http::Response::new(()), true);
            drop(guard);
        })
    }
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Asserts `got` is `want` within the timer wheel's millisecond.
#[track_caller]
pub fn assert_at(got: Duration, want: Duration) {
    assert!(
        got >= want && got <= want + Duration::from_millis(2),
        "expected at {want:?}, got {got:?}"
    );
}

/// A request head for tests.
pub fn get(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://test{path}"))
        .body(())
        .unwrap()
}
