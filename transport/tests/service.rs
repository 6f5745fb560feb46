//! `ServerConnection::serve`: a `tower::Service` behind the connection
//! rules, driven by h2's own client over an in-memory pipe.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use goaway_transport::server::{RequestBody, ServerConfig, ServerConnection};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::io::DuplexStream;

/// Serves `service` on one end of a pipe; returns an h2 client on the other.
async fn connect<S, B>(service: S) -> h2::client::SendRequest<Bytes>
where
    S: tower::Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (client, server): (DuplexStream, DuplexStream) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut conn = ServerConnection::handshake(server, &ServerConfig::default())
            .await
            .unwrap();
        conn.serve(service).await;
    });
    let (send, conn) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(conn);
    send
}

fn post(path: &str) -> Request<()> {
    Request::post(format!("http://test{path}"))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

#[tokio::test]
async fn request_data_and_trailers_reach_the_service_and_the_response_comes_back() {
    let service = tower::service_fn(|req: Request<RequestBody>| async move {
        let path = req.uri().path().to_string();
        let collected = req.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let body = collected.to_bytes();
        let text = format!(
            "{path} {} bytes, trailer x-end={}",
            body.len(),
            trailers
                .get("x-end")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        );
        let mut response_trailers = HeaderMap::new();
        response_trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body =
            Full::new(Bytes::from(text)).with_trailers(async { Some(Ok(response_trailers)) });
        Ok::<_, Infallible>(Response::new(body))
    });
    let mut client = connect(service).await;
    let (response, mut send) = client
        .send_request(post("/echo.Echo/Unary"), false)
        .unwrap();
    // More than the default 64 KiB window: the service reading releases it.
    send.send_data(Bytes::from(vec![7u8; 200_000]), false)
        .unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-end", HeaderValue::from_static("yes"));
    send.send_trailers(trailers).unwrap();

    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8(text).unwrap(),
        "/echo.Echo/Unary 200000 bytes, trailer x-end=yes"
    );
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn a_failing_service_resets_the_stream_with_internal_error() {
    let service = tower::service_fn(|_req: Request<RequestBody>| async {
        Err::<Response<Full<Bytes>>, _>(std::io::Error::other("no"))
    });
    let mut client = connect(service).await;
    let (response, _) = client.send_request(post("/x"), true).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.reason(), Some(h2::Reason::INTERNAL_ERROR), "{err}");
    // The connection still serves.
    let (response, _) = client.send_request(post("/y"), true).unwrap();
    let err = response.await.unwrap_err();
    assert_eq!(err.reason(), Some(h2::Reason::INTERNAL_ERROR), "{err}");
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_client_reset_drops_the_service_call() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let service = tower::service_fn(move |_req: Request<RequestBody>| {
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    });
    let mut client = connect(service).await;
    let (_response, mut send) = client.send_request(post("/slow"), false).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!dropped.load(Ordering::SeqCst), "dropped before the reset");
    send.send_reset(h2::Reason::CANCEL);
    for _ in 0..200 {
        if dropped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the service call outlived the client's reset");
}

/// An endless response body that counts the chunks it was asked for.
struct Endless(Arc<AtomicUsize>);

const CHUNK: usize = 16 * 1024;

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![1u8; CHUNK])))))
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_stops_the_response_body() {
    let polled = Arc::new(AtomicUsize::new(0));
    let counter = polled.clone();
    let service = tower::service_fn(move |_req: Request<RequestBody>| {
        let body = Endless(counter.clone());
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let mut client = connect(service).await;
    let (response, _) = client.send_request(post("/stream"), true).unwrap();
    let _response = response.await.unwrap();
    // Nothing is read: the stream's 64 KiB window fills and the body is
    // no longer polled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let chunks = polled.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(polled.load(Ordering::SeqCst), chunks, "still polled");
    assert!(
        chunks * CHUNK <= 65_535 + 2 * CHUNK,
        "{chunks} chunks of {CHUNK} bytes taken for a 64 KiB window"
    );
}
