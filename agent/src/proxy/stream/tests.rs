//! One proxied stream in process, on tokio's paused clock: a real HTTP/2
//! client (h2) talks to [`forward`] behind the transport's server driver,
//! and the application is played by hand on in-memory pipes — an h2
//! server where it must answer like an app, the transport's raw peer
//! ([`RawServer`]) where it must send exact frames (GOAWAY, RST_STREAM).
//!
//! Covered here: forwarding both ways, resets both ways, the transparent
//! retry of streams the app never processed (its attempt bound and the
//! 64 KiB replay bound), the agent's own answers before a response head
//! and what a client sees when the app fails after one, and the
//! `grpc-timeout` rewrite. The Python interop tests (`agent/tests/*.rs`)
//! remain the outer layer: real gRPC clients and servers through the
//! agent binary.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use goaway_transport::Counters;
use goaway_transport::client::{Channel, ChannelConfig};
use goaway_transport::server::{ServerConfig, ServerConnection};
use goaway_transport::test_util::PipeConnector;
use goaway_transport::test_util::RawServer;
use goaway_transport::test_util::frame::code;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Upstream, forward};
use crate::proxy::forwarded::{self, ForwardedFor};
use crate::proxy::grpc;

/// `--upstream`, as the agent's messages name it.
const APP: &str = "app.test:50051";
/// `--upstream-connect-timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's proxy with one client connection to it.
struct Proxy {
    /// The client's side of its connection to the agent.
    client: h2::client::SendRequest<Bytes>,
    /// The app's end of every connection the agent opens upstream.
    app: mpsc::UnboundedReceiver<DuplexStream>,
    connector: PipeConnector,
    counters: Arc<Counters>,
}

/// The client's address, as the agent sees it.
const CLIENT_IP: &str = "192.0.2.7";

/// Starts the proxy with the agent's own windows (as `run.rs` configures
/// them: they decide how much request body the agent takes in before the
/// app reads any) and connects a client to it from [`CLIENT_IP`].
async fn proxy() -> Proxy {
    proxy_with(ForwardedFor::Append).await
}

/// [`proxy`], with `--forwarded-for` as given.
async fn proxy_with(forwarded_for: ForwardedFor) -> Proxy {
    let client_entry = (forwarded_for == ForwardedFor::Append)
        .then(|| forwarded::entry(CLIENT_IP.parse().unwrap()));
    let (connector, app) = PipeConnector::new();
    let counters = Arc::new(Counters::default());
    let mut client_h2 = h2::client::Builder::new();
    client_h2
        .initial_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::UPSTREAM_CONNECTION_WINDOW);
    let channel = Channel::new(
        connector.clone(),
        ChannelConfig {
            counters: counters.clone(),
            h2: client_h2,
            backoff: crate::UPSTREAM_BACKOFF,
            ..ChannelConfig::default()
        },
    );
    let upstream = Arc::new(Upstream {
        channel,
        addr: APP.into(),
        connect_timeout: CONNECT_TIMEOUT,
        counters: counters.clone(),
    });
    let mut server_h2 = h2::server::Builder::new();
    server_h2
        .initial_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW);
    let config = ServerConfig {
        counters: counters.clone(),
        h2: server_h2,
        ..ServerConfig::default()
    };
    let (client_io, agent_io) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut conn = ServerConnection::handshake(agent_io, &config)
            .await
            .expect("agent handshake");
        let leftover = conn
            .serve_streams(|stream| forward(stream, upstream.clone(), client_entry.clone()))
            .await;
        leftover.finish().await;
    });
    let (client, connection) = h2::client::handshake(client_io)
        .await
        .expect("client handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // Both SETTINGS exchanges done: the client sends with the agent's
    // windows and frame size from the first byte.
    settle().await;
    Proxy {
        client,
        app,
        connector,
        counters,
    }
}

/// Runs a test body, failing it if it waits for something that never
/// comes: on the paused clock such a wait jumps straight to this limit
/// instead of hanging.
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(600), test)
        .await
        .expect("stuck: waited 10 minutes of test clock for something that never came");
}

/// Lets every task run until all wait (the clock only moves then).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A gRPC request head as a gRPC client sends it.
fn grpc_request(path: &str) -> Request<()> {
    Request::builder()
        .method("POST")
        .uri(format!("http://svc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The app as a real HTTP/2 server on the agent's next upstream
/// connection: its calls, in order.
async fn h2_app(
    p: &mut Proxy,
) -> mpsc::UnboundedReceiver<(Request<RecvStream>, SendResponse<Bytes>)> {
    let io = p.app.recv().await.expect("an upstream connection");
    serve_app(io)
}

fn serve_app(
    io: DuplexStream,
) -> mpsc::UnboundedReceiver<(Request<RecvStream>, SendResponse<Bytes>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(io).await.expect("app handshake");
        while let Some(Ok(call)) = conn.accept().await {
            let _ = tx.send(call);
        }
    });
    rx
}

/// The app as a raw HTTP/2 peer on the agent's next upstream connection.
async fn raw_app(p: &mut Proxy) -> RawServer<DuplexStream> {
    let io = p.app.recv().await.expect("an upstream connection");
    RawServer::accept(io, None).await
}

/// A whole body, releasing flow control as it goes.
async fn read_body(body: &mut RecvStream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body data");
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    all
}

/// The error a client's response body ends with.
async fn body_error(body: &mut RecvStream) -> h2::Error {
    loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Some(Err(e)) => return e,
            None => match body.trailers().await {
                Err(e) => return e,
                Ok(t) => panic!("stream ended normally (trailers {t:?}), not in an error"),
            },
        }
    }
}

/// The reset the peer sent on a stream we respond on.
async fn reset_of(respond: &mut SendResponse<Bytes>) -> Reason {
    poll_fn(|cx| respond.poll_reset(cx)).await.expect("a reset")
}

/// The reset the peer sent on a stream we send a body on.
async fn reset_of_body(body: &mut SendStream<Bytes>) -> Reason {
    poll_fn(|cx| body.poll_reset(cx)).await.expect("a reset")
}

/// `grpc-status` and `grpc-message` of a trailers-only response (HEADERS
/// with END_STREAM), asserting it is one.
fn trailers_only_status(r: &Response<RecvStream>) -> (String, String) {
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.body().is_end_stream(), "not trailers-only: {r:?}");
    assert_eq!(r.headers()["content-type"], "application/grpc");
    let h = r.headers();
    (
        h["grpc-status"].to_str().unwrap().to_owned(),
        h.get("grpc-message")
            .map(|m| m.to_str().unwrap().to_owned())
            .unwrap_or_default(),
    )
}

/// The agent's own UNAVAILABLE (trailers-only status 14 naming the
/// upstream); its message.
#[track_caller]
fn agent_unavailable(r: &Response<RecvStream>) -> String {
    let (status, message) = trailers_only_status(r);
    assert_eq!(status, "14", "{message}");
    assert!(
        message.starts_with(&format!("goaway-agent: upstream {APP} unavailable: ")),
        "{message}"
    );
    message
}

/// `len` bytes that differ from one position to the next.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

/// How the app turns a stream away without processing it.
#[derive(Clone, Copy)]
enum Refuse {
    /// GOAWAY with a last-stream-id below the stream.
    GoAway,
    /// RST_STREAM(REFUSED_STREAM).
    Reset,
}

/// Plays an app that turns every stream away unprocessed, on every
/// connection; counts the requests it saw.
fn refuse_everything(
    mut app: mpsc::UnboundedReceiver<DuplexStream>,
    how: Refuse,
) -> Arc<AtomicUsize> {
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Some(io) = app.recv().await {
            let seen = counted.clone();
            tokio::spawn(async move {
                let mut server = RawServer::accept(io, None).await;
                while let Some(id) = server.next_request().await {
                    seen.fetch_add(1, Ordering::SeqCst);
                    match how {
                        Refuse::GoAway => server.goaway(id - 1, code::NO_ERROR, b"").await,
                        Refuse::Reset => server.peer.reset(id, code::REFUSED_STREAM).await,
                    }
                }
            });
        }
    });
    seen
}

#[tokio::test(start_paused = true)]
async fn metadata_messages_and_trailers_pass_through_unchanged_both_ways() {
    bounded(async {
        let mut p = proxy().await;
        let mut request = grpc_request("/pkg.Echo/Say");
        let h = request.headers_mut();
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.insert("grpc-timeout", HeaderValue::from_static("10S"));
        let (response, mut send) = p.client.send_request(request, false).unwrap();
        send.send_data(Bytes::from_static(b"\0\0\0\0\x05hello"), false)
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-request-trailer", HeaderValue::from_static("t1"));
        send.send_trailers(trailers).unwrap();

        let mut calls = h2_app(&mut p).await;
        let (request, mut respond) = calls.recv().await.unwrap();
        let (head, mut body) = request.into_parts();
        assert_eq!(head.method, "POST");
        assert_eq!(head.uri, "http://svc.test/pkg.Echo/Say");
        assert_eq!(head.headers["content-type"], "application/grpc");
        assert_eq!(head.headers["te"], "trailers");
        assert_eq!(head.headers["x-user"], "alice");
        // Not held by the agent: the client's deadline goes up as it was.
        assert_eq!(head.headers["grpc-timeout"], "10S");
        // The one header the agent adds: who the client is.
        assert_eq!(head.headers["x-forwarded-for"], CLIENT_IP);
        assert_eq!(read_body(&mut body).await, b"\0\0\0\0\x05hello");
        let trailers = body.trailers().await.unwrap().expect("request trailers");
        assert_eq!(trailers["x-request-trailer"], "t1");

        let head = Response::builder()
            .header("content-type", "application/grpc+proto")
            .header("x-served-by", "app-0")
            .body(())
            .unwrap();
        let mut out = respond.send_response(head, false).unwrap();
        out.send_data(Bytes::from_static(b"\0\0\0\0\x05world"), false)
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("fine"));
        trailers.insert("x-response-trailer", HeaderValue::from_static("t2"));
        out.send_trailers(trailers).unwrap();

        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/grpc+proto");
        assert_eq!(response.headers()["x-served-by"], "app-0");
        let mut body = response.into_body();
        assert_eq!(read_body(&mut body).await, b"\0\0\0\0\x05world");
        let trailers = body.trailers().await.unwrap().expect("response trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "fine");
        assert_eq!(trailers["x-response-trailer"], "t2");
        assert_eq!(p.counters.upstream_retries.load(Ordering::Relaxed), 0);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_client_address_follows_what_the_client_sent_once_per_attempt() {
    bounded(async {
        let mut p = proxy().await;
        let mut request = grpc_request("/pkg.Echo/Say");
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let (_response, _send) = p.client.send_request(request, true).unwrap();
        // The first attempt is turned away unprocessed; the retry, on a
        // new connection, carries the list as the first did, not the
        // agent's entry twice.
        let mut first = raw_app(&mut p).await;
        let id = first.next_request().await.unwrap();
        first.goaway(id - 1, code::NO_ERROR, b"max_age").await;
        let mut calls = h2_app(&mut p).await;
        let (request, _respond) = calls.recv().await.unwrap();
        let seen: Vec<_> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .collect();
        assert_eq!(seen, [&format!("6.6.6.6, {CLIENT_IP}")]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn with_forwarded_for_off_the_headers_go_up_as_they_came() {
    bounded(async {
        let mut p = proxy_with(ForwardedFor::Off).await;
        let mut request = grpc_request("/pkg.Echo/Say");
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let (_response, _send) = p.client.send_request(request, true).unwrap();
        let mut calls = h2_app(&mut p).await;
        let (request, _respond) = calls.recv().await.unwrap();
        let seen: Vec<_> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .collect();
        assert_eq!(seen, ["6.6.6.6"]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_client_cancel_resets_the_app_stream_before_and_after_the_response_head() {
    bounded(async {
        let mut p = proxy().await;
        // Before the head: the app has the request and has not answered.
        let (_response, mut send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/Slow"), false)
            .unwrap();
        let mut calls = h2_app(&mut p).await;
        let (_request, mut respond) = calls.recv().await.unwrap();
        send.send_reset(Reason::CANCEL);
        assert_eq!(reset_of(&mut respond).await, Reason::CANCEL);

        // After the head: a streaming response the client walks away from.
        let (response, mut send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/Watch"), false)
            .unwrap();
        let (_request, mut respond) = calls.recv().await.unwrap();
        let mut out = respond.send_response(Response::new(()), false).unwrap();
        out.send_data(Bytes::from_static(b"first"), false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        send.send_reset(Reason::CANCEL);
        assert_eq!(reset_of_body(&mut out).await, Reason::CANCEL);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_app_reset_reaches_the_client_with_the_same_code_before_and_after_the_head() {
    bounded(async {
        let mut p = proxy().await;
        let (response, _send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/A"), true)
            .unwrap();
        let mut calls = h2_app(&mut p).await;
        let (_request, mut respond) = calls.recv().await.unwrap();
        respond.send_reset(Reason::ENHANCE_YOUR_CALM);
        let e = response.await.expect_err("a reset, not a response");
        assert_eq!(e.reason(), Some(Reason::ENHANCE_YOUR_CALM), "{e}");

        let (response, _send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/B"), true)
            .unwrap();
        let (_request, mut respond) = calls.recv().await.unwrap();
        let mut out = respond.send_response(Response::new(()), false).unwrap();
        out.send_data(Bytes::from_static(b"partial"), false)
            .unwrap();
        let mut body = response.await.unwrap().into_body();
        assert_eq!(body.data().await.unwrap().unwrap(), "partial");
        out.send_reset(Reason::HTTP_1_1_REQUIRED);
        let e = body_error(&mut body).await;
        assert!(e.is_reset(), "{e}");
        assert_eq!(e.reason(), Some(Reason::HTTP_1_1_REQUIRED), "{e}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_stream_the_app_never_processed_is_retried_and_the_client_gets_the_apps_answer() {
    bounded(async {
        let mut p = proxy().await;
        let (response, mut send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/Idempotent"), false)
            .unwrap();
        send.send_data(Bytes::from_static(b"request body"), true)
            .unwrap();

        // First attempt: REFUSED_STREAM. The connection stays usable, so the
        // second attempt comes on it too, and is beyond the GOAWAY that follows.
        let mut first = raw_app(&mut p).await;
        assert_eq!(first.next_request().await, Some(1));
        first.peer.reset(1, code::REFUSED_STREAM).await;
        assert_eq!(first.next_request().await, Some(3));
        first.goaway(1, code::NO_ERROR, b"max_age").await;

        // Third attempt, on a new connection: the same request, whole.
        let mut calls = h2_app(&mut p).await;
        let (request, mut respond) = calls.recv().await.unwrap();
        let (head, mut body) = request.into_parts();
        assert_eq!(head.uri.path(), "/pkg.Svc/Idempotent");
        assert_eq!(head.headers["content-type"], "application/grpc");
        assert_eq!(read_body(&mut body).await, b"request body");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let head = Response::builder()
            .header("content-type", "application/grpc")
            .header("x-attempt", "3")
            .body(())
            .unwrap();
        let mut out = respond.send_response(head, false).unwrap();
        out.send_data(Bytes::from_static(b"answer"), false).unwrap();
        out.send_trailers(trailers).unwrap();

        let response = response.await.unwrap();
        assert_eq!(response.headers()["x-attempt"], "3");
        let mut body = response.into_body();
        assert_eq!(read_body(&mut body).await, b"answer");
        assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");
        assert_eq!(p.counters.upstream_retries.load(Ordering::Relaxed), 2);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn after_four_goaway_refusals_the_client_gets_unavailable() {
    bounded(async {
        let mut p = proxy().await;
        let app = std::mem::replace(&mut p.app, mpsc::unbounded_channel().1);
        let seen = refuse_everything(app, Refuse::GoAway);
        let (response, _send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/M"), true)
            .unwrap();
        let response = response.await.unwrap();
        agent_unavailable(&response);
        settle().await;
        assert_eq!(seen.load(Ordering::SeqCst), 4, "attempts the app saw");
        assert_eq!(p.counters.upstream_retries.load(Ordering::Relaxed), 3);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn after_four_refused_streams_the_clients_stream_is_refused_too() {
    bounded(async {
        let mut p = proxy().await;
        let app = std::mem::replace(&mut p.app, mpsc::unbounded_channel().1);
        let seen = refuse_everything(app, Refuse::Reset);
        let (response, _send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/M"), true)
            .unwrap();
        // The same code, so the client (which knows nothing was processed)
        // may retry elsewhere.
        let e = response.await.expect_err("a reset, not a response");
        assert!(e.is_reset(), "{e}");
        assert_eq!(e.reason(), Some(Reason::REFUSED_STREAM), "{e}");
        settle().await;
        assert_eq!(seen.load(Ordering::SeqCst), 4, "attempts the app saw");
        assert_eq!(p.counters.upstream_retries.load(Ordering::Relaxed), 3);
    })
    .await;
}

/// Sends a request with `body` (in the agent's 16 KiB frames), lets the
/// agent take all of it in, then has the app turn the stream away with
/// GOAWAY. Returns the client's response future, and the request stream
/// and the refusing app, to keep open.
async fn refuse_after_body(
    p: &mut Proxy,
    body: Bytes,
) -> (
    h2::client::ResponseFuture,
    SendStream<Bytes>,
    RawServer<DuplexStream>,
) {
    let (response, mut send) = p
        .client
        .send_request(grpc_request("/pkg.Svc/Upload"), false)
        .unwrap();
    send.send_data(body, true).unwrap();
    let mut first = raw_app(p).await;
    assert_eq!(first.next_request().await, Some(1));
    // The agent takes in the whole body (its window to the client is
    // larger) although the app's 64 KiB - 1 window lets it pass on less.
    settle().await;
    first.goaway(0, code::NO_ERROR, b"").await;
    (response, send, first)
}

#[tokio::test(start_paused = true)]
async fn a_body_of_64_kib_is_replayed_whole_on_the_retry() {
    bounded(async {
        let mut p = proxy().await;
        let sent = pattern(64 * 1024);
        let (response, _send, _first) = refuse_after_body(&mut p, sent.clone()).await;

        let mut calls = h2_app(&mut p).await;
        let (request, mut respond) = calls.recv().await.unwrap();
        let mut body = request.into_body();
        let got = read_body(&mut body).await;
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the app saw different bytes");
        respond
            .send_response(grpc::trailers_only(grpc::Code::Unavailable, "app"), true)
            .unwrap();
        let response = response.await.unwrap();
        // The app's own answer, not the agent's.
        assert_eq!(trailers_only_status(&response), ("14".into(), "app".into()));
        assert_eq!(p.counters.upstream_retries.load(Ordering::Relaxed), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_body_over_64_kib_is_not_replayed_and_the_client_gets_unavailable() {
    bounded(async {
        // One byte over the bound, in the agent's 16 KiB frames.
        let mut p = proxy().await;
        let (response, _send, _first) = refuse_after_body(&mut p, pattern(64 * 1024 + 1)).await;
        let response = response.await.unwrap();
        agent_unavailable(&response);
        settle().await;
        assert_eq!(p.counters.upstream_retries.load(Ordering::Relaxed), 0);
        assert!(p.app.try_recv().is_err(), "no second upstream connection");
    })
    .await;
}

/// A retry while the body is still fully held in the 64 KiB replay buffer,
/// however many DATA frames it came in (the replay once gave up after
/// four, so five small messages of a client stream were not retried).
#[tokio::test(start_paused = true)]
async fn a_small_body_sent_in_five_frames_is_replayed() {
    bounded(async {
        let mut p = proxy().await;
        let (response, mut send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/Upload"), false)
            .unwrap();
        for i in 0..5u8 {
            send.send_data(Bytes::from(vec![i; 10]), i == 4).unwrap();
        }
        let mut first = raw_app(&mut p).await;
        assert_eq!(first.next_request().await, Some(1));
        settle().await;
        first.goaway(0, code::NO_ERROR, b"").await;

        let mut calls = tokio::time::timeout(Duration::from_secs(1), h2_app(&mut p))
            .await
            .expect("a retry on a new connection");
        let (request, mut respond) = calls.recv().await.unwrap();
        let got = read_body(&mut request.into_body()).await;
        let sent: Vec<u8> = (0..5u8).flat_map(|i| [i; 10]).collect();
        assert_eq!(got, sent);
        respond.send_response(Response::new(()), true).unwrap();
        assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_app_gets_unavailable_within_the_connect_timeout() {
    bounded(async {
        let mut p = proxy().await;
        p.connector.refuse.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let (response, _send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/M"), true)
            .unwrap();
        let response = response.await.unwrap();
        // Sooner when the channel's next attempt would come too late.
        assert!(start.elapsed() <= CONNECT_TIMEOUT, "{:?}", start.elapsed());
        assert!(p.counters.upstream_connect_failures.load(Ordering::Relaxed) >= 1);
        let message = agent_unavailable(&response);
        assert!(message.to_lowercase().contains("refused"), "{message}");

        // Not gRPC: a plain 503.
        let request = Request::builder()
            .method("GET")
            .uri("http://svc.test/healthz")
            .body(())
            .unwrap();
        let (response, _send) = p.client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get("grpc-status").is_none());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_app_back_from_a_long_restart_is_reached_within_a_second() {
    bounded(async {
        let mut p = proxy().await;
        // The app is restarting: its port refuses connections while calls
        // keep coming (and fail) until the agent has tried five times.
        p.connector.refuse.store(true, Ordering::SeqCst);
        let failures = || p.counters.upstream_connect_failures.load(Ordering::Relaxed);
        while failures() < 5 {
            let (response, _send) = p
                .client
                .send_request(grpc_request("/pkg.Svc/M"), true)
                .unwrap();
            agent_unavailable(&response.await.unwrap());
        }
        // Back now. gRPC's own backoff would wait over 5s before the next
        // attempt (1s, 1.6s, 2.56s, 4.1s, then 6.55s ±20%), longer than
        // the call may wait; the agent tries again within a second.
        p.connector.refuse.store(false, Ordering::SeqCst);
        let (response, _send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/M"), true)
            .unwrap();
        let mut calls = h2_app(&mut p).await;
        let (_request, mut respond) = calls.recv().await.unwrap();
        let head = Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .body(())
            .unwrap();
        respond.send_response(head, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(trailers_only_status(&response).0, "0");
    })
    .await;
}

/// Takes the agent's next upstream connection and never answers its
/// handshake.
async fn silent_app(p: &mut Proxy) {
    let io = p.app.recv().await.expect("an upstream connection");
    tokio::spawn(async move {
        let _held = io;
        std::future::pending::<()>().await;
    });
}

#[tokio::test(start_paused = true)]
async fn a_silent_app_gets_unavailable_at_the_connect_timeout() {
    bounded(async {
        let mut p = proxy().await;
        let start = Instant::now();
        let (response, _send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/M"), true)
            .unwrap();
        silent_app(&mut p).await;
        let response = response.await.unwrap();
        assert_at(start.elapsed(), CONNECT_TIMEOUT);
        agent_unavailable(&response);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_the_connect_timeout_gets_deadline_exceeded_at_the_deadline() {
    bounded(async {
        let mut p = proxy().await;
        let start = Instant::now();
        let mut request = grpc_request("/pkg.Svc/M");
        request
            .headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("300m"));
        let (response, _send) = p.client.send_request(request, true).unwrap();
        silent_app(&mut p).await;
        let response = response.await.unwrap();
        assert_at(start.elapsed(), Duration::from_millis(300));
        let (status, message) = trailers_only_status(&response);
        assert_eq!(status, "4");
        assert!(
            message.starts_with(&format!(
                "goaway-agent: deadline exceeded waiting for upstream {APP}: "
            )),
            "{message}"
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_request_held_while_the_app_connects_goes_up_with_the_time_it_has_left() {
    bounded(async {
        let mut p = proxy().await;
        let mut request = grpc_request("/pkg.Svc/M");
        request
            .headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("10S"));
        let (response, _send) = p.client.send_request(request, true).unwrap();
        // The app takes 2 s to answer the handshake.
        let io = p.app.recv().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut calls = serve_app(io);
        let (request, mut respond) = calls.recv().await.unwrap();
        let left = grpc::timeout(request.headers()).expect("a grpc-timeout");
        assert!(
            left <= Duration::from_secs(8) && left > Duration::from_millis(7_990),
            "{left:?} ({:?})",
            request.headers()["grpc-timeout"]
        );
        respond.send_response(Response::new(()), true).unwrap();
        assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn losing_the_app_connection_mid_response_ends_a_grpc_call_with_unavailable() {
    bounded(async {
        let mut p = proxy().await;
        let (response, _send) = p
            .client
            .send_request(grpc_request("/pkg.Svc/Watch"), true)
            .unwrap();
        let mut app = raw_app(&mut p).await;
        assert_eq!(app.next_request().await, Some(1));
        app.respond(1, false).await;
        let mut body = response.await.unwrap().into_body();
        drop(app);
        // Headers already went out: a status in trailers, the agent's own.
        assert!(body.data().await.is_none());
        let trailers = body.trailers().await.unwrap().expect("status trailers");
        assert_eq!(trailers["grpc-status"], "14");
        let message = trailers["grpc-message"].to_str().unwrap();
        assert!(
            message.starts_with(&format!("goaway-agent: upstream {APP} connection lost: ")),
            "{message}"
        );

        // Not gRPC: nothing to say a status with, so the stream is reset.
        let request = Request::builder()
            .method("GET")
            .uri("http://svc.test/download")
            .body(())
            .unwrap();
        let (response, _send) = p.client.send_request(request, true).unwrap();
        let mut app = raw_app(&mut p).await;
        let id = app.next_request().await.unwrap();
        app.respond(id, false).await;
        let mut body = response.await.unwrap().into_body();
        drop(app);
        let e = body_error(&mut body).await;
        assert_eq!(e.reason(), Some(Reason::INTERNAL_ERROR), "{e}");
    })
    .await;
}

/// Asserts `got` is `want` within the timer wheel's millisecond.
#[track_caller]
fn assert_at(got: Duration, want: Duration) {
    assert!(
        got >= want && got <= want + Duration::from_millis(2),
        "expected at {want:?}, got {got:?}"
    );
}
