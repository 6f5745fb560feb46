//! docs/design.md §4 on tokio's paused clock: a Channel against hand-driven
//! servers.

mod support;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use goaway_transport::client::{Channel, ChannelConfig, Connectivity};
use goaway_transport::server::ServerConfig;
use goaway_transport::test_util::frame::{code, kind};
use goaway_transport::{ClientParams, Counters};
use std::sync::Arc;
use support::*;
use tokio::time::Instant;

fn channel(
    params: ClientParams,
) -> (
    Channel,
    tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>,
    PipeConnector,
    Arc<Counters>,
) {
    let (connector, rx) = PipeConnector::new();
    let counters = Arc::new(Counters::default());
    let ch = Channel::new(
        connector.clone(),
        ChannelConfig {
            params,
            counters: counters.clone(),
            ..ChannelConfig::default()
        },
    );
    (ch, rx, connector, counters)
}

fn keepalive(time: u64, timeout: u64, permit: bool) -> ClientParams {
    ClientParams {
        time: Some(secs(time)),
        timeout: secs(timeout),
        permit_without_stream: permit,
    }
}

fn far() -> Instant {
    Instant::now() + secs(3600)
}

#[tokio::test(start_paused = true)]
async fn keepalive_pings_at_time_and_closes_at_time_plus_timeout() {
    let (ch, mut rx, _c, counters) = channel(keepalive(10, 2, true));
    ch.connect();
    let mut server = RawServer::accept(rx.recv().await.unwrap(), None).await;
    let start = Instant::now();
    let f = server.peer.next_interesting().await.unwrap();
    assert_eq!(f.ping().map(|p| p.0), Some(false));
    assert_at(start.elapsed(), secs(10));
    // Unanswered: the client closes at 12s and reconnects (eager channel).
    let rest = server.peer.until_eof().await;
    assert!(rest.iter().all(|f| f.kind() != kind::PING));
    assert_at(start.elapsed(), secs(12));
    assert_eq!(counters.ping_timeouts.load(Ordering::Relaxed), 1);
    let _again = RawServer::accept(rx.recv().await.unwrap(), None).await;
    // Counted once the client has read the server's SETTINGS.
    tokio::time::sleep(ms(1)).await;
    assert_eq!(counters.upstream_connects.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn answered_keepalive_repeats_every_time() {
    let (ch, mut rx, _c, _) = channel(keepalive(10, 2, true));
    ch.connect();
    let mut server = RawServer::accept(rx.recv().await.unwrap(), None).await;
    let start = Instant::now();
    for i in 1..=3 {
        let f = server.peer.next_interesting().await.unwrap();
        let (ack, payload) = f.ping().unwrap();
        assert!(!ack);
        assert_at(start.elapsed(), secs(10 * i));
        server.peer.ping_ack(payload).await;
    }
}

#[tokio::test(start_paused = true)]
async fn keepalive_goes_dormant_without_streams_and_pings_when_one_starts() {
    let (ch, mut rx, _c, _) = channel(keepalive(10, 2, false));
    ch.connect();
    let mut server = RawServer::accept(rx.recv().await.unwrap(), None).await;
    let start = Instant::now();
    // No stream for 100s: no ping at all.
    let quiet = tokio::time::timeout(secs(100), server.peer.next_interesting()).await;
    assert!(quiet.is_err(), "unexpected frame {quiet:?}");
    // A stream starts: HEADERS, then an immediate ping.
    let _stream = ch.start(|| get("/x"), false, far()).await.unwrap();
    let headers = server.peer.next_interesting().await.unwrap();
    assert_eq!(headers.kind(), kind::HEADERS);
    let ping = server.peer.next_interesting().await.unwrap();
    assert!(ping.ping().is_some());
    assert_at(start.elapsed(), secs(100));
}

#[tokio::test(start_paused = true)]
async fn goaway_retries_unprocessed_streams_on_a_new_connection() {
    let (ch, mut rx, _c, counters) = channel(ClientParams::default());
    let ch2 = ch.clone();
    // Two requests in flight on the first connection.
    let a = tokio::spawn({
        let ch = ch.clone();
        async move { ch.send(|| get("/a"), Bytes::new(), far()).await }
    });
    let mut first = RawServer::accept(rx.recv().await.unwrap(), None).await;
    assert_eq!(first.next_request().await, Some(1));
    let b = tokio::spawn(async move { ch2.send(|| get("/b"), Bytes::new(), far()).await });
    assert_eq!(first.next_request().await, Some(3));
    // The server processed stream 1 only.
    first.goaway(1, code::NO_ERROR, b"max_age").await;
    // New streams must not use this connection: /b is retried elsewhere.
    let mut second = RawServer::accept(rx.recv().await.unwrap(), None).await;
    let retried = second.next_request().await.unwrap();
    second.respond(retried, true).await;
    first.respond(1, true).await;
    assert_eq!(a.await.unwrap().unwrap().status(), 200);
    assert_eq!(b.await.unwrap().unwrap().status(), 200);
    assert_eq!(counters.upstream_retries.load(Ordering::Relaxed), 1);
    assert_eq!(
        counters.upstream_goaways_received.load(Ordering::Relaxed),
        1
    );
    // Later streams go to the new connection too.
    let c = tokio::spawn({
        let ch = ch.clone();
        async move { ch.send(|| get("/c"), Bytes::new(), far()).await }
    });
    let id = second.next_request().await.unwrap();
    second.respond(id, true).await;
    assert_eq!(c.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn refused_stream_is_retried() {
    let (ch, mut rx, _c, counters) = channel(ClientParams::default());
    let task = tokio::spawn({
        let ch = ch.clone();
        async move {
            ch.send(|| get("/a"), Bytes::from_static(b"body"), far())
                .await
        }
    });
    let mut server = RawServer::accept(rx.recv().await.unwrap(), None).await;
    let id = server.next_request().await.unwrap();
    server
        .peer
        .send(kind::RST_STREAM, 0, id, &code::REFUSED_STREAM.to_be_bytes())
        .await;
    let again = server.next_request().await.unwrap();
    assert!(again > id);
    server.respond(again, true).await;
    assert_eq!(task.await.unwrap().unwrap().status(), 200);
    assert_eq!(counters.upstream_retries.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn processed_stream_is_not_retried_when_the_connection_drops() {
    let (ch, mut rx, _c, counters) = channel(ClientParams::default());
    let task = tokio::spawn({
        let ch = ch.clone();
        async move { ch.send(|| get("/a"), Bytes::new(), far()).await }
    });
    let mut server = RawServer::accept(rx.recv().await.unwrap(), None).await;
    assert_eq!(server.next_request().await, Some(1));
    server.goaway(1, code::NO_ERROR, b"").await;
    drop(server);
    assert!(task.await.unwrap().is_err());
    assert_eq!(counters.upstream_retries.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn too_many_pings_doubles_keepalive_for_new_connections() {
    let (ch, mut rx, _c, _) = channel(keepalive(10, 2, true));
    ch.connect();
    let mut server = RawServer::accept(rx.recv().await.unwrap(), None).await;
    assert_eq!(ch.keepalive_time(), Some(secs(10)));
    server
        .goaway(0, code::ENHANCE_YOUR_CALM, b"too_many_pings")
        .await;
    drop(server);
    let mut next = RawServer::accept(rx.recv().await.unwrap(), None).await;
    assert_eq!(ch.keepalive_time(), Some(secs(20)));
    let start = Instant::now();
    let f = next.peer.next_interesting().await.unwrap();
    assert!(f.ping().is_some());
    assert_at(start.elapsed(), secs(20));
    // Other debug data does not count.
    next.goaway(0, code::ENHANCE_YOUR_CALM, b"calm down").await;
    drop(next);
    let _third = RawServer::accept(rx.recv().await.unwrap(), None).await;
    assert_eq!(ch.keepalive_time(), Some(secs(20)));
}

#[tokio::test(start_paused = true)]
async fn reconnects_with_grpc_backoff_and_reports_connectivity() {
    let (ch, mut rx, connector, counters) = channel(ClientParams::default());
    let mut states = ch.watch_state();
    connector.refuse.store(true, Ordering::SeqCst);
    let start = Instant::now();
    ch.connect();
    let mut failures = Vec::new();
    while failures.len() < 5 {
        states.changed().await.unwrap();
        if *states.borrow() == Connectivity::TransientFailure {
            failures.push(start.elapsed().as_secs_f64());
        }
    }
    assert_eq!(
        counters.upstream_connect_failures.load(Ordering::Relaxed),
        5
    );
    // Gaps: 1s, then 1.6s, 2.56s, 4.1s each ±20%.
    let gaps: Vec<f64> = failures.windows(2).map(|w| w[1] - w[0]).collect();
    assert!((gaps[0] - 1.0).abs() < 0.01, "{gaps:?}");
    for (gap, nominal) in gaps[1..].iter().zip([1.6, 2.56, 4.096]) {
        assert!(
            *gap >= nominal * 0.8 - 0.01 && *gap <= nominal * 1.2 + 0.01,
            "{gaps:?}"
        );
    }
    // The upstream comes back: READY.
    connector.refuse.store(false, Ordering::SeqCst);
    let server =
        tokio::spawn(async move { RawServer::accept(rx.recv().await.unwrap(), None).await });
    loop {
        states.changed().await.unwrap();
        if *states.borrow() == Connectivity::Ready {
            break;
        }
    }
    let _server = server.await.unwrap();
    ch.shutdown();
    assert_eq!(ch.state(), Connectivity::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn upstream_down_fails_within_the_deadline_and_then_fast() {
    let (ch, _rx, connector, _) = channel(ClientParams::default());
    connector.refuse.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let err = ch
        .start(|| get("/x"), true, Instant::now() + secs(3))
        .await
        .err()
        .expect("no upstream");
    assert!(err.to_string().contains("refused"), "{err}");
    // Attempts at 0, 1 and ~2.6s all failed; it gave up at its deadline.
    assert!(start.elapsed() <= secs(3) + ms(1), "{:?}", start.elapsed());
    // Later the backoff is long: a request whose deadline comes before the
    // next attempt fails at once instead of waiting.
    tokio::time::sleep(secs(30)).await;
    for _ in 0..6 {
        let _ = ch
            .start(|| get("/x"), true, Instant::now() + secs(60))
            .await;
    }
    let t = Instant::now();
    assert!(
        ch.start(|| get("/x"), true, Instant::now() + ms(100))
            .await
            .is_err()
    );
    assert!(t.elapsed() < ms(101));
}

#[tokio::test(start_paused = true)]
async fn request_waits_for_a_restarting_upstream() {
    let (ch, mut rx, connector, _) = channel(ClientParams::default());
    connector.refuse.store(true, Ordering::SeqCst);
    let task = tokio::spawn({
        let ch = ch.clone();
        async move {
            ch.send(|| get("/a"), Bytes::new(), Instant::now() + secs(20))
                .await
        }
    });
    tokio::time::sleep(ms(1500)).await;
    connector.refuse.store(false, Ordering::SeqCst);
    let mut server = RawServer::accept(rx.recv().await.unwrap(), None).await;
    let id = server.next_request().await.unwrap();
    server.respond(id, true).await;
    assert_eq!(task.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_streams_opens_more_connections() {
    let (ch, mut rx, _c, counters) = channel(ClientParams::default());
    ch.connect();
    let mut servers = vec![RawServer::accept(rx.recv().await.unwrap(), Some(2)).await];
    tokio::time::sleep(ms(1)).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let ch = ch.clone();
        streams.push(tokio::spawn(async move {
            ch.start(|| get("/x"), false, far()).await.map(|s| s.guard)
        }));
        tokio::time::sleep(ms(1)).await;
        while let Ok(io) = rx.try_recv() {
            servers.push(RawServer::accept(io, Some(2)).await);
        }
    }
    let mut guards = Vec::new();
    for s in streams {
        guards.push(s.await.unwrap().unwrap());
    }
    assert_eq!(servers.len(), 3, "2+2+1 streams need three connections");
    assert_eq!(counters.upstream_connects.load(Ordering::Relaxed), 3);
    assert_eq!(ch.ready_connections(), 3);
}

#[tokio::test(start_paused = true)]
async fn works_against_our_own_server() {
    // The client and server sides together, over a pipe.
    let (ch, mut rx, _c, _) = channel(keepalive(10, 2, false));
    tokio::spawn(async move {
        while let Some(io) = rx.recv().await {
            tokio::spawn(async move {
                let mut conn = goaway_transport::server::ServerConnection::handshake(
                    io,
                    &ServerConfig::default(),
                )
                .await
                .unwrap();
                while let Some(s) = conn.accept().await {
                    tokio::spawn(respond_ok(s));
                }
            });
        }
    });
    for _ in 0..10 {
        let resp = ch
            .send(|| get("/x"), Bytes::from_static(b"hi"), far())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(ch.state(), Connectivity::Ready);
}

#[tokio::test(start_paused = true)]
async fn server_that_never_sends_settings_is_a_connect_failure_not_a_hang() {
    let (ch, mut rx, _c, counters) = channel(ClientParams::default());
    let start = Instant::now();
    let task = tokio::spawn({
        let ch = ch.clone();
        async move {
            ch.start(|| get("/x"), true, Instant::now() + secs(30))
                .await
        }
    });
    // Accept at the TCP level, then say nothing at all: the attempt fails
    // at its connect deadline (20s), and the stream at its own (30s).
    let _silent = rx.recv().await.unwrap();
    let _silent_too = tokio::spawn(async move {
        while let Some(io) = rx.recv().await {
            std::mem::forget(io)
        }
    });
    let err = task.await.unwrap().err().expect("no usable connection");
    assert!(start.elapsed() <= secs(30) + ms(2), "{:?}", start.elapsed());
    assert!(err.to_string().contains("timed out after 20s"), "{err}");
    assert_eq!(counters.upstream_connects.load(Ordering::Relaxed), 0);
    assert!(counters.upstream_connect_failures.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(start_paused = true)]
async fn stream_limit_is_known_before_the_first_stream() {
    // Ten streams at once on a fresh channel against a server allowing
    // two per connection: five connections, none over its limit.
    let (ch, mut rx, _c, counters) = channel(ClientParams::default());
    let mut streams = Vec::new();
    for _ in 0..10 {
        let ch = ch.clone();
        streams.push(tokio::spawn(async move {
            ch.start(|| get("/x"), false, far()).await.map(|s| s.guard)
        }));
    }
    let mut servers = Vec::new();
    while servers.len() < 5 {
        let io = tokio::time::timeout(secs(5), rx.recv())
            .await
            .expect("more connections")
            .unwrap();
        servers.push(tokio::spawn(async move {
            let mut s = RawServer::accept(io, Some(2)).await;
            let mut ids = Vec::new();
            while let Ok(Some(id)) = tokio::time::timeout(secs(1), s.next_request()).await {
                ids.push(id);
            }
            ids.len()
        }));
    }
    let mut guards = Vec::new();
    for s in streams {
        guards.push(s.await.unwrap().unwrap());
    }
    let mut per_conn = Vec::new();
    for s in servers {
        per_conn.push(s.await.unwrap());
    }
    assert_eq!(per_conn.iter().sum::<usize>(), 10, "{per_conn:?}");
    assert!(per_conn.iter().all(|n| *n <= 2), "{per_conn:?}");
    assert_eq!(counters.upstream_connects.load(Ordering::Relaxed), 5);
}
