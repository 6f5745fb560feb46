//! docs/design.md §3, rule by rule, on tokio's paused clock with a raw HTTP/2
//! peer that asserts the exact frames it receives.

mod support;

use std::time::Duration;

use goaway_transport::server::{CloseReason, ServerConfig};
use goaway_transport::test_util::frame::{self, code, kind};
use goaway_transport::{GoAwayReason, Policy, ServerParams};
use support::*;
use tokio::time::Instant;

fn params(yaml: &str) -> ServerParams {
    let (p, _) = Policy::load(yaml, goaway_transport::policy::Strictness::Permissive).unwrap();
    p.server_params()
}

fn config(yaml: &str) -> ServerConfig {
    ServerConfig {
        params: params(yaml),
        ..ServerConfig::default()
    }
}

// ---------------------------------------------------------------- keepalive

#[tokio::test(start_paused = true)]
async fn silent_client_gets_ping_at_time_then_close_at_time_plus_timeout() {
    let (mut peer, server) =
        serve(config("server: {time: 10s, timeout: 3s}"), 1.0, respond_ok).await;
    let ping = peer.next_interesting().await.unwrap();
    assert_eq!(ping.ping().map(|(ack, _)| ack), Some(false), "{ping:?}");
    assert_at(peer.elapsed(), secs(10));
    // No ACK: the connection is closed (no GOAWAY needed) at time+timeout.
    let rest = peer.until_eof().await;
    assert!(rest.iter().all(|f| f.kind() != kind::GOAWAY), "{rest:?}");
    assert_at(peer.elapsed(), secs(13));
    assert_eq!(server.done.await.unwrap(), CloseReason::PingTimeout);
    assert_eq!(server.handle.stats().pings_sent, 1);
}

#[tokio::test(start_paused = true)]
async fn answered_pings_repeat_every_time_not_time_plus_timeout() {
    let (mut peer, server) =
        serve(config("server: {time: 10s, timeout: 3s}"), 1.0, respond_ok).await;
    let mut at = Vec::new();
    while at.len() < 4 {
        let f = peer.next_interesting().await.unwrap();
        let (ack, payload) = f.ping().expect("only pings expected");
        assert!(!ack);
        at.push(peer.elapsed());
        peer.ping_ack(payload).await;
    }
    for (i, t) in at.iter().enumerate() {
        assert_at(*t, secs(10 * (i as u64 + 1)));
    }
    assert_eq!(server.handle.stats().pings_sent, 4);
}

#[tokio::test(start_paused = true)]
async fn no_ping_while_frames_keep_arriving() {
    let (mut peer, server) =
        serve(config("server: {time: 10s, timeout: 3s}"), 1.0, respond_ok).await;
    for _ in 0..12 {
        tokio::time::sleep(secs(5)).await;
        // Any frame counts as activity; an empty SETTINGS is the gentlest.
        peer.send(kind::SETTINGS, 0, 0, &[]).await;
        let f = peer.next_frame().await.unwrap();
        assert_eq!(
            f.kind(),
            kind::SETTINGS,
            "expected only the SETTINGS ACK, got {f:?}"
        );
    }
    assert_eq!(server.handle.stats().pings_sent, 0);
    // Once the client stops, the ping comes `time` after its last frame.
    let f = peer.next_interesting().await.unwrap();
    assert!(f.ping().is_some());
    assert_at(peer.elapsed(), secs(60 + 10));
}

// -------------------------------------------------------- ping enforcement

#[tokio::test(start_paused = true)]
async fn fourth_early_ping_gets_too_many_pings_and_close() {
    let (mut peer, server) = serve(
        config("enforcement: {minTime: 10s}"),
        1.0,
        hold_for(secs(3600)),
    )
    .await;
    // A stream is open, so minTime is the rule.
    peer.request(1, false).await;
    for i in 0..3u8 {
        peer.ping([i; 8]).await;
        let ack = peer.next_interesting().await.unwrap();
        assert_eq!(ack.ping(), Some((true, [i; 8])));
        tokio::time::sleep(secs(1)).await;
    }
    assert_eq!(server.handle.stats().strikes, 2);
    peer.ping([3; 8]).await;
    let frames = peer.until_eof().await;
    let goaways: Vec<_> = frames.iter().filter_map(|f| f.goaway()).collect();
    assert_eq!(
        goaways,
        [(1, code::ENHANCE_YOUR_CALM, "too_many_pings".to_string())]
    );
    assert_eq!(server.done.await.unwrap(), CloseReason::TooManyPings);
}

#[tokio::test(start_paused = true)]
async fn three_early_pings_are_tolerated() {
    let (mut peer, server) = serve(
        config("enforcement: {minTime: 10s}"),
        1.0,
        hold_for(secs(3600)),
    )
    .await;
    peer.request(1, false).await;
    for i in 0..3u8 {
        peer.ping([i; 8]).await;
        assert_eq!(
            peer.next_interesting().await.unwrap().ping(),
            Some((true, [i; 8]))
        );
    }
    // A late ping is fine and the connection stays up.
    tokio::time::sleep(secs(11)).await;
    peer.ping([9; 8]).await;
    assert_eq!(
        peer.next_interesting().await.unwrap().ping(),
        Some((true, [9; 8]))
    );
    assert!(!server.handle.is_closed());
    assert_eq!(server.handle.stats().strikes, 2);
}

#[tokio::test(start_paused = true)]
async fn headers_or_data_sent_exempts_the_next_ping() {
    let (mut peer, server) = serve(config("enforcement: {minTime: 10s}"), 1.0, respond_ok).await;
    // Two early pings: strikes 1... then the server answers a request
    // (HEADERS sent), which exempts the next ping and clears the strikes.
    peer.ping([0; 8]).await;
    peer.ping([1; 8]).await;
    peer.ping([2; 8]).await;
    for _ in 0..3 {
        assert!(peer.next_interesting().await.unwrap().ping().is_some());
    }
    // With no stream open and permitWithoutStream false, these are strikes
    // under the 2h rule too.
    assert_eq!(server.handle.stats().strikes, 2);
    peer.request(1, true).await;
    let headers = peer.next_interesting().await.unwrap();
    assert_eq!(headers.kind(), kind::HEADERS);
    peer.ping([3; 8]).await;
    assert_eq!(
        peer.next_interesting().await.unwrap().ping(),
        Some((true, [3; 8]))
    );
    assert_eq!(server.handle.stats().strikes, 0);
    assert!(!server.handle.is_closed());
}

#[tokio::test(start_paused = true)]
async fn without_streams_pings_under_two_hours_are_strikes() {
    // minTime is tiny, but with no stream open the interval is 2h.
    let (mut peer, server) = serve(config("enforcement: {minTime: 1s}"), 1.0, respond_ok).await;
    for i in 0..3u8 {
        peer.ping([i; 8]).await;
        assert!(peer.next_interesting().await.unwrap().ping().is_some());
        tokio::time::sleep(secs(3600)).await;
    }
    peer.ping([3; 8]).await;
    let goaway = peer
        .until_eof()
        .await
        .iter()
        .find_map(|f| f.goaway())
        .expect("GOAWAY");
    assert_eq!(
        goaway,
        (0, code::ENHANCE_YOUR_CALM, "too_many_pings".into())
    );
    assert_eq!(server.done.await.unwrap(), CloseReason::TooManyPings);
}

#[tokio::test(start_paused = true)]
async fn permit_without_stream_applies_min_time_instead() {
    let (mut peer, server) = serve(
        config("enforcement: {minTime: 60s, permitWithoutStream: true}"),
        1.0,
        respond_ok,
    )
    .await;
    for i in 0..6u8 {
        peer.ping([i; 8]).await;
        assert!(peer.next_interesting().await.unwrap().ping().is_some());
        tokio::time::sleep(secs(60)).await;
    }
    assert_eq!(server.handle.stats().strikes, 0);
    assert!(!server.handle.is_closed());
}

// ------------------------------------------------------------------ max age

#[tokio::test(start_paused = true)]
async fn max_age_sends_two_step_goaway_and_grace_counts_from_the_first() {
    let (mut peer, server) = serve(
        config("server: {maxConnectionAge: 10s, maxConnectionAgeGrace: 5s}"),
        1.0,
        hold_for(secs(3600)),
    )
    .await;
    peer.request(1, false).await;
    let first = peer.next_interesting().await.unwrap();
    assert_eq!(
        first.goaway(),
        Some((frame::MAX_STREAM_ID, code::NO_ERROR, "max_age".into()))
    );
    assert_at(peer.elapsed(), secs(10));
    let ping = peer.next_interesting().await.unwrap();
    let (ack, payload) = ping.ping().expect("PING after the first GOAWAY");
    assert!(!ack);
    peer.ping_ack(payload).await;
    let second = peer.next_interesting().await.unwrap();
    assert_eq!(second.goaway(), Some((1, code::NO_ERROR, "max_age".into())));
    // The stream is still open; the grace period ends 5s after the first
    // GOAWAY (not after the second), and the connection is cut.
    let rest = peer.until_eof().await;
    assert!(rest.iter().all(|f| f.kind() != kind::GOAWAY));
    assert_at(peer.elapsed(), secs(15));
    assert_eq!(server.done.await.unwrap(), CloseReason::AgeGraceElapsed);
}

#[tokio::test(start_paused = true)]
async fn max_age_closes_after_the_last_stream_finishes() {
    let (mut peer, server) = serve(
        config("server: {maxConnectionAge: 10s}"),
        1.0,
        hold_for(secs(12)),
    )
    .await;
    peer.request(1, true).await;
    let first = peer.next_interesting().await.unwrap();
    assert_eq!(first.goaway().unwrap().2, "max_age");
    let (_, payload) = peer.next_interesting().await.unwrap().ping().unwrap();
    peer.ping_ack(payload).await;
    assert_eq!(
        peer.next_interesting().await.unwrap().goaway().unwrap().0,
        1
    );
    // The response comes at 12s, then the connection closes.
    let resp = peer.next_interesting().await.unwrap();
    assert_eq!(resp.kind(), kind::HEADERS);
    assert_at(peer.elapsed(), secs(12));
    assert!(peer.until_eof().await.is_empty());
    assert_eq!(
        server.done.await.unwrap(),
        CloseReason::Drained(GoAwayReason::MaxAge)
    );
}

#[tokio::test(start_paused = true)]
async fn keepalive_pings_stop_once_age_has_fired() {
    let (mut peer, server) = serve(
        config("server: {time: 5s, timeout: 1s, maxConnectionAge: 12s}"),
        1.0,
        hold_for(secs(3600)),
    )
    .await;
    peer.request(1, false).await;
    let mut keepalive_pings = 0;
    let mut saw_goaway = false;
    // Answer everything for 60s and count keepalive pings after the GOAWAY.
    let deadline = Instant::now() + secs(60);
    while let Ok(Some(f)) = tokio::time::timeout_at(deadline, peer.next_interesting()).await {
        if f.goaway().is_some() {
            saw_goaway = true;
        }
        if let Some((false, payload)) = f.ping() {
            if saw_goaway {
                keepalive_pings += 1;
            }
            peer.ping_ack(payload).await;
        }
    }
    assert!(saw_goaway);
    // Only the drain's own PING follows the GOAWAY.
    assert_eq!(keepalive_pings, 1);
    assert_eq!(
        server.handle.stats().pings_sent,
        2,
        "keepalive pings at 5s and 10s only"
    );
}

#[tokio::test(start_paused = true)]
async fn age_jitter_is_uniform_in_0_9_to_1_1_and_not_constant() {
    let mut at = Vec::new();
    for _ in 0..40 {
        let (mut peer, _server) = serve(
            config("server: {maxConnectionAge: 100s}"),
            goaway_transport::test_util::age_jitter(),
            respond_ok,
        )
        .await;
        let f = peer.next_interesting().await.unwrap();
        assert_eq!(f.goaway().unwrap().2, "max_age");
        at.push(peer.elapsed().as_secs_f64());
    }
    assert!(at.iter().all(|t| (90.0..110.002).contains(t)), "{at:?}");
    let min = at.iter().cloned().fold(f64::MAX, f64::min);
    let max = at.iter().cloned().fold(f64::MIN, f64::max);
    // 40 uniform draws over 20s: a spread under 5s would be a broken RNG.
    assert!(max - min > 5.0, "not jittered: {at:?}");
    let below = at.iter().filter(|t| **t < 100.0).count();
    assert!(
        (5..=35).contains(&below),
        "lopsided: {below} of 40 below the mean"
    );
}

#[test]
fn age_jitter_draws_stay_in_range() {
    let draws: Vec<f64> = (0..100_000)
        .map(|_| goaway_transport::test_util::age_jitter())
        .collect();
    assert!(draws.iter().all(|f| (0.9..1.1).contains(f)));
    let mean = draws.iter().sum::<f64>() / draws.len() as f64;
    assert!((mean - 1.0).abs() < 0.002, "mean {mean}");
    // Each tenth of the range holds about a tenth of the draws.
    let mut buckets = [0usize; 10];
    for f in &draws {
        buckets[(((f - 0.9) / 0.02) as usize).min(9)] += 1;
    }
    assert!(
        buckets.iter().all(|&b| (9_000..11_000).contains(&b)),
        "{buckets:?}"
    );
}

// ----------------------------------------------------------------- max idle

#[tokio::test(start_paused = true)]
async fn idle_connection_gets_goaway_after_max_idle() {
    let (mut peer, server) =
        serve(config("server: {maxConnectionIdle: 10s}"), 1.0, respond_ok).await;
    let f = peer.next_interesting().await.unwrap();
    assert_eq!(
        f.goaway(),
        Some((frame::MAX_STREAM_ID, code::NO_ERROR, "max_idle".into()))
    );
    assert_at(peer.elapsed(), secs(10));
    let (_, payload) = peer.next_interesting().await.unwrap().ping().unwrap();
    peer.ping_ack(payload).await;
    assert_eq!(
        peer.next_interesting().await.unwrap().goaway(),
        Some((0, code::NO_ERROR, "max_idle".into()))
    );
    assert!(peer.until_eof().await.is_empty());
    assert_eq!(
        server.done.await.unwrap(),
        CloseReason::Drained(GoAwayReason::MaxIdle)
    );
}

#[tokio::test(start_paused = true)]
async fn connection_with_a_stream_open_never_idles_out() {
    let (mut peer, server) = serve(
        config("server: {maxConnectionIdle: 10s}"),
        1.0,
        hold_for(secs(30)),
    )
    .await;
    tokio::time::sleep(secs(5)).await;
    peer.request(1, true).await;
    // The stream is open from 5s to 35s; idle counts again from 35s.
    let resp = peer.next_interesting().await.unwrap();
    assert_eq!(resp.kind(), kind::HEADERS);
    assert_at(peer.elapsed(), secs(35));
    let f = peer.next_interesting().await.unwrap();
    assert_eq!(f.goaway().unwrap().2, "max_idle");
    assert_at(peer.elapsed(), secs(45));
    drop(server);
}

// ------------------------------------------------------- drain and GOAWAYs

#[tokio::test(start_paused = true)]
async fn second_goaway_follows_the_ping_ack_at_once() {
    let (mut peer, server) = serve(config(""), 1.0, respond_ok).await;
    peer.request(1, true).await;
    assert_eq!(peer.next_interesting().await.unwrap().kind(), kind::HEADERS);
    server.handle.drain(GoAwayReason::GracefulStop, None);
    let first = peer.next_interesting().await.unwrap();
    assert_eq!(
        first.goaway(),
        Some((frame::MAX_STREAM_ID, code::NO_ERROR, "graceful_stop".into()))
    );
    let (ack, payload) = peer.next_interesting().await.unwrap().ping().unwrap();
    assert!(!ack);
    tokio::time::sleep(ms(300)).await;
    peer.ping_ack(payload).await;
    let second = peer.next_interesting().await.unwrap();
    assert_eq!(
        second.goaway(),
        Some((1, code::NO_ERROR, "graceful_stop".into()))
    );
    assert_at(second.at - first.at, ms(300));
    assert!(peer.until_eof().await.is_empty());
    assert_eq!(
        server.done.await.unwrap(),
        CloseReason::Drained(GoAwayReason::GracefulStop)
    );
}

#[tokio::test(start_paused = true)]
async fn second_goaway_is_sent_after_ack_timeout_when_ping_goes_unanswered() {
    let (mut peer, server) = serve(config("drain: {goawayAckTimeout: 2s}"), 1.0, respond_ok).await;
    server.handle.drain(GoAwayReason::GracefulStop, None);
    let first = peer.next_interesting().await.unwrap();
    assert_eq!(first.goaway().unwrap().0, frame::MAX_STREAM_ID);
    assert!(peer.next_interesting().await.unwrap().ping().is_some());
    let second = peer.next_interesting().await.unwrap();
    assert_eq!(
        second.goaway(),
        Some((0, code::NO_ERROR, "graceful_stop".into()))
    );
    assert_at(second.at - first.at, secs(2));
    assert!(peer.until_eof().await.is_empty());
    assert_eq!(
        server.done.await.unwrap(),
        CloseReason::Drained(GoAwayReason::GracefulStop)
    );
}

#[tokio::test(start_paused = true)]
async fn streams_between_the_two_goaways_are_served() {
    let (mut peer, server) = serve(config(""), 1.0, respond_ok).await;
    server.handle.drain(GoAwayReason::GracefulStop, None);
    assert_eq!(
        peer.next_interesting().await.unwrap().goaway().unwrap().0,
        frame::MAX_STREAM_ID
    );
    let (_, payload) = peer.next_interesting().await.unwrap().ping().unwrap();
    // Requests already in flight when the GOAWAY arrived.
    peer.request(1, true).await;
    peer.request(3, true).await;
    let mut answered = Vec::new();
    while answered.len() < 2 {
        let f = peer.next_interesting().await.unwrap();
        assert_eq!(f.kind(), kind::HEADERS, "{f:?}");
        answered.push(f.header.stream_id);
    }
    assert_eq!(answered, [1, 3]);
    peer.ping_ack(payload).await;
    assert_eq!(
        peer.next_interesting().await.unwrap().goaway().unwrap().0,
        3
    );
    assert!(peer.until_eof().await.is_empty());
    assert_eq!(server.handle.stats().streams_total, 2);
}

#[tokio::test(start_paused = true)]
async fn drain_is_idempotent_and_keeps_the_first_reason() {
    let (mut peer, server) = serve(config(""), 1.0, respond_ok).await;
    server.handle.drain(GoAwayReason::GracefulStop, None);
    server.handle.drain(GoAwayReason::MaxAge, None);
    server.handle.drain(GoAwayReason::GracefulStop, None);
    let frames = peer.until_eof().await;
    let goaways: Vec<_> = frames.iter().filter_map(|f| f.goaway()).collect();
    assert_eq!(
        goaways,
        [
            (
                frame::MAX_STREAM_ID,
                code::NO_ERROR,
                "graceful_stop".to_string()
            ),
            (0, code::NO_ERROR, "graceful_stop".to_string())
        ]
    );
    let pings = frames.iter().filter(|f| f.ping().is_some()).count();
    assert_eq!(pings, 1);
    assert_eq!(
        server.done.await.unwrap(),
        CloseReason::Drained(GoAwayReason::GracefulStop)
    );
}

#[tokio::test(start_paused = true)]
async fn drain_deadline_hard_closes_streams_still_open() {
    let (mut peer, server) = serve(config(""), 1.0, hold_for(secs(3600))).await;
    peer.request(1, false).await;
    tokio::task::yield_now().await;
    let deadline = Instant::now() + secs(7);
    server
        .handle
        .drain(GoAwayReason::GracefulStop, Some(deadline));
    let frames = peer.until_eof().await;
    assert_eq!(frames.iter().filter(|f| f.goaway().is_some()).count(), 2);
    assert_at(peer.elapsed(), secs(7));
    assert_eq!(server.done.await.unwrap(), CloseReason::DrainTimeout);
}

// ------------------------------------------------------- reload, bad input

#[tokio::test(start_paused = true)]
async fn new_params_rearm_keepalive_on_a_live_connection() {
    let (mut peer, server) = serve(config(""), 1.0, respond_ok).await;
    tokio::time::sleep(secs(100)).await;
    server.handle.update_params(params("server: {time: 30s}"));
    let f = peer.next_interesting().await.unwrap();
    assert!(f.ping().is_some());
    // 30s after the last read (the handshake at 0s), so at once: the
    // connection has been silent for 100s already.
    assert_at(peer.elapsed(), secs(100));
}

#[tokio::test(start_paused = true)]
async fn new_params_rearm_age_and_idle() {
    let (mut peer, server) = serve(config(""), 1.0, respond_ok).await;
    tokio::time::sleep(secs(5)).await;
    server
        .handle
        .update_params(params("server: {maxConnectionIdle: 20s}"));
    let f = peer.next_interesting().await.unwrap();
    assert_eq!(f.goaway().unwrap().2, "max_idle");
    assert_at(peer.elapsed(), secs(20));
}

#[tokio::test(start_paused = true)]
async fn malformed_frame_closes_only_that_connection() {
    let (mut bad, bad_server) = serve(config(""), 1.0, respond_ok).await;
    let (mut good, good_server) = serve(config(""), 1.0, respond_ok).await;
    // PING on a stream is a connection error (RFC 9113 §6.7).
    bad.send(kind::PING, 0, 1, &[0; 8]).await;
    let frames = bad.until_eof().await;
    let goaway = frames.iter().find_map(|f| f.goaway()).expect("GOAWAY");
    assert_eq!(goaway.1, code::PROTOCOL_ERROR);
    assert!(matches!(
        bad_server.done.await.unwrap(),
        CloseReason::Error(_)
    ));
    // The other connection is untouched.
    good.request(1, true).await;
    assert_eq!(good.next_interesting().await.unwrap().kind(), kind::HEADERS);
    assert!(!good_server.handle.is_closed());
}

#[tokio::test(start_paused = true)]
async fn truncated_preface_times_out_the_handshake() {
    let (mut client, server) = tokio::io::duplex(1024);
    let task = tokio::spawn(async move {
        goaway_transport::server::ServerConnection::handshake(server, &ServerConfig::default())
            .await
    });
    use tokio::io::AsyncWriteExt;
    client.write_all(&frame::PREFACE[..10]).await.unwrap();
    let start = Instant::now();
    let res = task.await.unwrap();
    assert!(matches!(
        res,
        Err(goaway_transport::Error::HandshakeTimeout)
    ));
    assert_at(
        start.elapsed(),
        goaway_transport::server::DEFAULT_HANDSHAKE_TIMEOUT,
    );
}

#[tokio::test(start_paused = true)]
async fn stats_report_streams_pings_and_state() {
    let (mut peer, server) = serve(
        config("enforcement: {minTime: 1h}"),
        1.0,
        hold_for(secs(10)),
    )
    .await;
    peer.request(1, true).await;
    peer.request(3, true).await;
    tokio::time::sleep(ms(10)).await;
    let s = server.handle.stats();
    assert_eq!(s.active_streams, 2);
    assert_eq!(s.streams_total, 2);
    assert_eq!(s.idle, Duration::ZERO);
    peer.ping([1; 8]).await;
    peer.ping([2; 8]).await;
    tokio::time::sleep(secs(20)).await;
    let s = server.handle.stats();
    assert_eq!(s.active_streams, 0);
    assert_eq!(s.pings_received, 2);
    assert_eq!(s.strikes, 1);
    assert_eq!(s.state, goaway_transport::ConnState::Open);
    assert_at(s.idle, secs(10) + ms(10));
    assert_at(s.age, secs(20) + ms(10));
}
