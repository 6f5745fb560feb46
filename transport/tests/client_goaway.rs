//! A client meeting a server's two-step drain (RFC 9113 §6.8) on tokio's
//! paused clock: streams opened before the first GOAWAY reach the server
//! before the ACK of its PING, so the second GOAWAY covers them.
//!
//! The second test is the failure seen with grpc-java apps, reproduced
//! with a raw server that behaves as Netty does: it refuses a stream above
//! its second GOAWAY and then takes that stream's DATA for a connection
//! error, closing the connection with the streams it had accepted.

mod support;

use bytes::Bytes;
use goaway_transport::client::{Channel, ChannelConfig, Connectivity};
use goaway_transport::test_util::frame::{MAX_STREAM_ID, code, kind};
use http::Request;
use support::*;
use tokio::io::DuplexStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

const SHUTDOWN_PING: [u8; 8] = *b"drain-1\0";

fn far() -> Instant {
    Instant::now() + secs(3600)
}

fn post(path: &str) -> Request<()> {
    Request::post(format!("http://app{path}")).body(()).unwrap()
}

/// A channel whose first connection is up, and the server end of it.
async fn connected() -> (
    Channel,
    RawServer<DuplexStream>,
    UnboundedReceiver<DuplexStream>,
) {
    let (connector, mut rx) = PipeConnector::new();
    let ch = Channel::new(connector, ChannelConfig::default());
    ch.connect();
    let server = RawServer::accept(rx.recv().await.unwrap(), None).await;
    let mut state = ch.watch_state();
    while *state.borrow_and_update() != Connectivity::Ready {
        state.changed().await.unwrap();
    }
    (ch, server, rx)
}

#[tokio::test(start_paused = true)]
async fn a_stream_opened_before_a_goaway_is_written_before_its_ping_is_acknowledged() {
    let (ch, mut server, _rx) = connected().await;
    // The first GOAWAY and its PING reach the client's socket together,
    // while a stream is being opened: its HEADERS are queued, not written.
    server
        .goaway(MAX_STREAM_ID, code::NO_ERROR, b"max_age")
        .await;
    server.peer.ping(SHUTDOWN_PING).await;
    let _stream = ch.start(|| post("/a"), false, far()).await.unwrap();

    let headers = server.peer.next_interesting().await.unwrap();
    assert_eq!(
        (headers.kind(), headers.header.stream_id),
        (kind::HEADERS, 1),
        "the stream's HEADERS before the ACK, got {headers:?}"
    );
    let ack = server.peer.next_interesting().await.unwrap();
    assert_eq!(ack.ping(), Some((true, SHUTDOWN_PING)));
}

/// The server side of one connection, draining as Netty does.
struct NettyLike {
    server: RawServer<DuplexStream>,
    /// Streams whose HEADERS came before the PING ACK.
    accepted: Vec<u32>,
    /// The second GOAWAY's last stream id, once sent.
    last: Option<u32>,
}

impl NettyLike {
    /// Reads everything the client sends until it goes quiet, then answers
    /// every accepted stream. DATA on a refused stream is a connection
    /// error: the connection is closed at once, unanswered, as Netty does
    /// ("Stream does not exist"), and false is returned.
    async fn drain(&mut self) -> bool {
        while let Ok(Some(f)) = tokio::time::timeout(ms(100), self.server.peer.next_frame()).await {
            let id = f.header.stream_id;
            match f.kind() {
                kind::PING if f.ping() == Some((true, SHUTDOWN_PING)) => {
                    let last = self.accepted.iter().copied().max().unwrap_or(0);
                    self.server.goaway(last, code::NO_ERROR, b"max_age").await;
                    self.last = Some(last);
                }
                kind::HEADERS => match self.last {
                    Some(last) if id > last => {
                        self.server.peer.reset(id, code::REFUSED_STREAM).await;
                    }
                    _ => self.accepted.push(id),
                },
                kind::DATA if self.last.is_some_and(|last| id > last) => return false,
                _ => {}
            }
        }
        for id in self.accepted.clone() {
            self.server.respond(id, true).await;
        }
        true
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_that_kills_the_connection_over_a_refused_stream_fails_no_call() {
    let (ch, mut server, _rx) = connected().await;
    // One call in flight: its HEADERS are on the wire, its body to come.
    let first = ch.start(|| post("/first"), false, far()).await.unwrap();
    let id = server.next_request().await.unwrap();
    // max_age fires; a second call is opened just as the GOAWAY arrives.
    server
        .goaway(MAX_STREAM_ID, code::NO_ERROR, b"max_age")
        .await;
    server.peer.ping(SHUTDOWN_PING).await;
    let second = ch.start(|| post("/second"), false, far()).await.unwrap();
    let (mut a, mut b) = (first.body, second.body);
    a.send_data(Bytes::from_static(b"one"), true).unwrap();
    b.send_data(Bytes::from_static(b"two"), true).unwrap();

    let mut netty = NettyLike {
        server,
        accepted: vec![id],
        last: None,
    };
    let served = tokio::spawn(async move { (netty.drain().await, netty.accepted) });
    let (first, second) = tokio::join!(first.response, second.response);
    let (closed_cleanly, accepted) = served.await.unwrap();
    assert!(closed_cleanly, "the server saw DATA on a stream it refused");
    assert_eq!(accepted, [1, 3], "both streams before the ACK");
    assert_eq!(first.unwrap().status(), 200);
    assert_eq!(second.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_headers_never_left_counts_as_unprocessed() {
    let (ch, server, _rx) = connected().await;
    // The server goes away before the client has written anything of the
    // stream it is opening.
    drop(server);
    let stream = ch.start(|| post("/a"), true, far()).await.unwrap();
    let id = stream.response.stream_id();
    let err = stream.response.await.expect_err("the connection is gone");
    assert!(
        stream.guard.is_unprocessed(&err, id),
        "never sent, so never processed: {err}"
    );
}
