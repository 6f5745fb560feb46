//! Hostile peers against the real binary, with a grpcio app behind it and
//! a well-behaved grpcio client calling through it the whole time. Each
//! attack checks: the agent stays alive (`/healthz` 200), the good
//! client's calls all succeed, the agent's RSS grows by at most a stated
//! bound, and the attacker is closed with the code that applies, read
//! from the GOAWAY or RST_STREAM frames it receives.
//!
//! Counts are small so the suite stays in CI; the README's "Hostile
//! peers" table quotes the figures these tests print (`--nocapture`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{agent, spawn_grpc_client};
use goaway_tests::agent::{Agent, wait_for};
use goaway_tests::h2raw::{
    Frame, PREFACE, RawConn, RssPeak, code, cpu_of, flag, grpc_request_block, hpack, kind, rss_of,
};
use goaway_tests::{Proc, grpc_frame, grpc_server};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// How long the good client calls; every attack fits well inside it.
const GOOD_CLIENT_SECONDS: &str = "10";

/// An app, the agent in front of it, and a good client calling through
/// it; RSS is measured from the moment the good client's calls flow.
struct Bed {
    app: Proc,
    app_port: u16,
    agent: Agent,
    good: Proc,
    base_rss: u64,
    peak: RssPeak,
}

impl Bed {
    fn start(agent_args: &[&str]) -> Result<Bed> {
        let (app, app_port) = grpc_server(&[])?;
        let agent = agent(app_port).args(agent_args.iter().copied()).start()?;
        let good = spawn_grpc_client(
            &agent.target(),
            &[
                "--seconds",
                GOOD_CLIENT_SECONDS,
                "--timeout",
                "5",
                "--interval-ms",
                "5",
                "loop",
            ],
        )?;
        wait_for(
            Duration::from_secs(30),
            "the good client's calls to flow",
            || Ok(agent.metrics()?.value("goaway_streams_total")? >= 5.0),
        )?;
        let base_rss = agent.rss_bytes()?;
        let peak = RssPeak::start(agent.proc.pid());
        Ok(Bed {
            app,
            app_port,
            agent,
            good,
            base_rss,
            peak,
        })
    }

    fn listen(&self) -> SocketAddr {
        self.agent.listen
    }

    /// After the attack: the agent serves, the good client (still calling
    /// when the attack ended) saw no failure, RSS grew at most `bound`.
    /// Returns the peak growth.
    fn check(self, attack: &str, bound: u64) -> Result<u64> {
        let Bed {
            agent,
            mut good,
            base_rss,
            peak,
            app: _app,
            ..
        } = self;
        ensure!(
            good.wait(Duration::ZERO).is_err(),
            "{attack}: the good client finished before the attack did; \
             the attack did not overlap its calls"
        );
        let (status, _) = agent.get("/healthz")?;
        ensure!(status == 200, "{attack}: /healthz answered {status}");
        let growth = peak.peak().saturating_sub(base_rss);
        let summary = good.finish_json(Duration::from_secs(60))?;
        eprintln!(
            "{attack}: good client {summary}; agent RSS base {} KiB, peak growth {} KiB (bound {} KiB)",
            base_rss / KIB,
            growth / KIB,
            bound / KIB
        );
        ensure!(
            summary["failed"] == 0,
            "{attack}: good client calls failed: {summary}"
        );
        ensure!(
            summary["ok"].as_u64().unwrap_or(0) > 10,
            "{attack}: the good client made too few calls: {summary}"
        );
        ensure!(
            growth <= bound,
            "{attack}: agent RSS grew by {} KiB, bound {} KiB",
            growth / KIB,
            bound / KIB
        );
        Ok(growth)
    }
}

/// A gRPC unary request on `stream`: HEADERS, then DATA with END_STREAM.
fn unary(stream: u32, extra: &[(&str, &str)], message: &[u8]) -> [Frame; 2] {
    [
        Frame::new(
            kind::HEADERS,
            flag::END_HEADERS,
            stream,
            grpc_request_block("/echo.Echo/Unary", extra),
        ),
        Frame::new(kind::DATA, flag::END_STREAM, stream, grpc_frame(message)),
    ]
}

fn expect_goaway(attack: &str, seen: Option<(u32, u32, String)>, want: u32) -> Result<String> {
    let (_, got, debug) = seen.with_context(|| format!("{attack}: no GOAWAY received"))?;
    ensure!(
        got == want,
        "{attack}: GOAWAY code {got:#x} ({debug:?}), want {want:#x}"
    );
    Ok(debug)
}

#[test]
fn rapid_reset_is_answered_with_enhance_your_calm() -> Result<()> {
    let bed = Bed::start(&[])?;
    let mut c = RawConn::handshake(bed.listen())?;
    let block = grpc_request_block("/echo.Echo/Unary", &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut streams = 0u32;
    // Bursts of 100 HEADERS+RST_STREAM pairs, at most 20,000 streams.
    while streams < 20_000 && Instant::now() < deadline && c.goaway().is_none() {
        let burst: Vec<Frame> = (0..100)
            .flat_map(|_| {
                streams += 1;
                let id = 2 * streams - 1;
                [
                    Frame::new(kind::HEADERS, flag::END_HEADERS, id, block.clone()),
                    Frame::rst(id, code::CANCEL),
                ]
            })
            .collect();
        if c.send_all(&burst).is_err() {
            break;
        }
    }
    let sent = c.sent;
    let seen = c.finish(Duration::from_secs(10));
    let debug = expect_goaway("rapid reset", seen.goaway(), code::ENHANCE_YOUR_CALM)?;
    ensure!(debug == "too_many_resets", "debug data {debug:?}");
    ensure!(seen.closed, "the attacker's connection stayed open");
    eprintln!(
        "rapid reset: {streams} streams ({} KiB) written before GOAWAY(ENHANCE_YOUR_CALM, {debug:?}); last stream id {}",
        sent as u64 / KIB,
        seen.goaway().map(|g| g.0).unwrap_or(0)
    );
    bed.check("rapid reset", 8 * MIB)?;
    Ok(())
}

#[test]
fn continuation_flood_is_closed_after_five_continuations() -> Result<()> {
    let bed = Bed::start(&[])?;
    let mut c = RawConn::handshake(bed.listen())?;
    // Half a header block, then empty CONTINUATIONs that never end it.
    let block = grpc_request_block("/echo.Echo/Unary", &[]);
    c.send(&Frame::new(kind::HEADERS, 0, 1, block))?;
    let cont = Frame::new(kind::CONTINUATION, 0, 1, []);
    for _ in 0..5 {
        c.send(&cont)?;
    }
    // h2 allows max(5, 1.25 × header list limit / frame size) of them.
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        c.goaway().is_none() && !c.closed(),
        "closed before the sixth CONTINUATION: GOAWAY {:?}",
        c.goaway()
    );
    let mut extra = 0;
    while extra < 10_000 && c.send(&cont).is_ok() && c.goaway().is_none() {
        extra += 1;
        if extra == 1 {
            c.wait_until(Duration::from_secs(5), |s| s.goaway().is_some());
        }
    }
    let sent = c.sent;
    let seen = c.finish(Duration::from_secs(10));
    let debug = expect_goaway("CONTINUATION flood", seen.goaway(), code::ENHANCE_YOUR_CALM)?;
    ensure!(debug == "too_many_continuations", "debug data {debug:?}");
    ensure!(
        extra <= 1,
        "{extra} CONTINUATIONs past the fifth were taken"
    );
    eprintln!(
        "CONTINUATION flood: GOAWAY(ENHANCE_YOUR_CALM, {debug:?}) on the sixth, after {sent} bytes"
    );
    bed.check("CONTINUATION flood", 8 * MIB)?;
    Ok(())
}

#[test]
fn ping_flood_gets_too_many_pings() -> Result<()> {
    let bed = Bed::start(&[])?;
    let mut c = RawConn::handshake(bed.listen())?;
    let mut pings = 0u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pings < 10_000 && Instant::now() < deadline && c.goaway().is_none() {
        let burst: Vec<Frame> = (0..10).map(|i| Frame::new_ping(pings + i)).collect();
        if c.send_all(&burst).is_err() {
            break;
        }
        pings += 10;
    }
    let seen = c.finish(Duration::from_secs(10));
    let debug = expect_goaway("ping flood", seen.goaway(), code::ENHANCE_YOUR_CALM)?;
    ensure!(debug == "too_many_pings", "debug data {debug:?}");
    let acks = seen
        .of_kind(kind::PING)
        .filter(|f| f.flags() & flag::ACK != 0)
        .count();
    let m = bed.agent.metrics()?;
    ensure!(m.value("goaway_goaways_sent_total{reason=\"too_many_pings\"}")? == 1.0);
    eprintln!(
        "ping flood: {pings} PINGs written, {acks} ACKed, GOAWAY(ENHANCE_YOUR_CALM, {debug:?})"
    );
    bed.check("ping flood", 8 * MIB)?;
    Ok(())
}

#[test]
fn settings_flood_costs_only_the_attackers_own_acks() -> Result<()> {
    let bed = Bed::start(&[])?;
    let mut c = RawConn::handshake(bed.listen())?;
    let mut frames = 0u32;
    let deadline = Instant::now() + Duration::from_secs(3);
    // Values that make h2 do work: the initial window (re-applied to
    // every stream) and the HPACK table size.
    while frames < 50_000 && Instant::now() < deadline && c.goaway().is_none() {
        let burst: Vec<Frame> = (0..100)
            .map(|i| {
                Frame::settings(&[
                    (0x4, 65_535 + (frames + i) % 1000),
                    (0x1, 4096 * ((frames + i) % 2)),
                    (0x3, 100),
                ])
            })
            .collect();
        if c.send_all(&burst).is_err() {
            break;
        }
        frames += 100;
    }
    // The connection still serves a call afterwards.
    c.send_all(&unary(1, &[], b"after the flood"))?;
    let answered = c.wait_until(Duration::from_secs(10), |s| {
        s.frames.iter().any(|f| {
            f.stream_id() == 1 && f.kind() == kind::HEADERS && f.flags() & flag::END_STREAM != 0
        })
    });
    let acks = c.seen(|s| {
        s.of_kind(kind::SETTINGS)
            .filter(|f| f.flags() & flag::ACK != 0)
            .count()
    });
    let goaway = c.goaway();
    drop(c);
    eprintln!(
        "SETTINGS flood: {frames} frames written, {acks} ACKed, GOAWAY {goaway:?}, call answered afterwards: {answered}"
    );
    ensure!(goaway.is_none(), "SETTINGS flood: GOAWAY {goaway:?}");
    ensure!(
        answered,
        "the call after the SETTINGS flood was not answered"
    );
    bed.check("SETTINGS flood", 8 * MIB)?;
    Ok(())
}

#[test]
fn slowloris_handshakes_are_closed_at_the_handshake_timeout() -> Result<()> {
    let bed = Bed::start(&["--handshake-timeout", "1s"])?;
    let start = Instant::now();
    let mut conns = (0..40)
        .map(|_| RawConn::connect(bed.listen()))
        .collect::<Result<Vec<_>>>()?;
    // One preface byte per socket every 250ms: 6s for the 24 bytes.
    let mut at = 0;
    while Instant::now() < start + Duration::from_secs(6) && !conns.iter().all(RawConn::closed) {
        for c in conns.iter_mut().filter(|c| !c.closed()) {
            let _ = c.write(&PREFACE[at % PREFACE.len()..][..1]);
        }
        at += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let elapsed = start.elapsed();
    let open = conns.iter().filter(|c| !c.closed()).count();
    eprintln!("slowloris: 40 sockets, {open} still open after {elapsed:?}, {at} bytes each");
    ensure!(
        open == 0,
        "{open} of 40 slow handshakes still open after {elapsed:?}"
    );
    // Closed by the timer, not at once.
    ensure!(at >= 3, "closed after {at} bytes, before the timeout");
    drop(conns);
    bed.check("slowloris", 8 * MIB)?;
    Ok(())
}

/// `--handshake-timeout` covers the preface and the first SETTINGS: h2's
/// server handshake ends with the preface, and a client that sent nothing
/// more used to keep its connection (about 12 KiB) until keepalive
/// (`server.time`, 2h by default) found it silent.
#[test]
fn a_preface_without_settings_is_closed_at_the_handshake_timeout() -> Result<()> {
    let bed = Bed::start(&["--handshake-timeout", "1s"])?;
    let mut conns = (0..20)
        .map(|_| RawConn::connect(bed.listen()))
        .collect::<Result<Vec<_>>>()?;
    for c in &mut conns {
        c.write(PREFACE)?;
    }
    let closed = conns
        .iter()
        .all(|c| c.wait_until(Duration::from_secs(6), |s| s.closed));
    let open = conns.iter().filter(|c| !c.closed()).count();
    eprintln!("preface then silence: {open} of 20 still open after 6s");
    drop(conns);
    ensure!(
        closed,
        "{open} of 20 connections that sent the preface and no SETTINGS are still open"
    );
    bed.check("preface without SETTINGS", 8 * MIB)?;
    Ok(())
}

#[test]
fn streams_past_max_concurrent_streams_are_refused_one_by_one() -> Result<()> {
    let bed = Bed::start(&["--max-concurrent-streams", "10"])?;
    let mut c = RawConn::handshake(bed.listen())?;
    ensure!(
        c.wait_until(Duration::from_secs(5), |s| s
            .of_kind(kind::SETTINGS)
            .any(|f| f.flags() & flag::ACK == 0)),
        "no SETTINGS from the agent"
    );
    // 40 calls the app holds for a second each, all at once.
    let frames: Vec<Frame> = (0..40u32)
        .flat_map(|i| unary(2 * i + 1, &[("x-sleep-ms", "1000")], b"held"))
        .collect();
    c.send_all(&frames)?;
    let done = |s: &goaway_tests::h2raw::Seen| {
        (0..40u32).all(|i| {
            let id = 2 * i + 1;
            s.frames.iter().any(|f| {
                f.stream_id() == id
                    && (f.kind() == kind::RST_STREAM
                        || (f.kind() == kind::HEADERS && f.flags() & flag::END_STREAM != 0))
            })
        })
    };
    ensure!(
        c.wait_until(Duration::from_secs(20), done),
        "not every stream was answered or refused"
    );
    let (refused, answered, echoed) = c.seen(|s| {
        let refused = s
            .frames
            .iter()
            .filter(|f| f.rst_code() == Some(code::REFUSED_STREAM))
            .count();
        let answered = s
            .frames
            .iter()
            .filter(|f| f.kind() == kind::HEADERS && f.flags() & flag::END_STREAM != 0)
            .count();
        let echoed = s
            .of_kind(kind::DATA)
            .filter(|f| f.payload == grpc_frame(b"held"))
            .count();
        (refused, answered, echoed)
    });
    // The connection survives: one more call on it succeeds.
    c.send_all(&unary(81, &[], b"after"))?;
    let after = c.wait_until(Duration::from_secs(10), |s| {
        s.frames.iter().any(|f| {
            f.stream_id() == 81 && f.kind() == kind::DATA && f.payload == grpc_frame(b"after")
        })
    });
    let goaway = c.goaway();
    drop(c);
    eprintln!(
        "streams past --max-concurrent-streams 10: 40 sent, {refused} RST_STREAM(REFUSED_STREAM), {answered} answered ({echoed} echoed), call afterwards ok: {after}, GOAWAY {goaway:?}"
    );
    ensure!(refused == 30, "{refused} refused, want 30");
    ensure!(
        answered == 10 && echoed == 10,
        "{answered} answered, {echoed} echoed"
    );
    ensure!(
        after && goaway.is_none(),
        "the connection did not survive the refusals"
    );
    bed.check("streams past the limit", 8 * MIB)?;
    Ok(())
}

/// One malformed input after a clean handshake, and what must happen.
struct Malformed {
    name: &'static str,
    bytes: Vec<u8>,
    /// The GOAWAY code, or `None` when the connection must survive.
    want: Option<u32>,
}

fn malformed_inputs() -> Vec<Malformed> {
    let block = grpc_request_block("/echo.Echo/Unary", &[]);
    let headers = |id| Frame::new(kind::HEADERS, flag::END_HEADERS, id, block.clone()).encode();
    let mut bad_hpack = Vec::new();
    bad_hpack.push(0xff); // indexed field, index far past both tables
    bad_hpack.extend_from_slice(&[0xff, 0xff, 0x7f]);
    let mut stream_backwards = headers(5);
    stream_backwards.extend(headers(3));
    vec![
        Malformed {
            name: "DATA on stream 0",
            bytes: Frame::new(kind::DATA, 0, 0, b"x".to_vec()).encode(),
            want: Some(code::PROTOCOL_ERROR),
        },
        Malformed {
            name: "HEADERS on an even stream",
            bytes: headers(2),
            want: Some(code::PROTOCOL_ERROR),
        },
        Malformed {
            name: "stream ids going backwards",
            bytes: stream_backwards,
            want: Some(code::PROTOCOL_ERROR),
        },
        Malformed {
            name: "RST_STREAM on an idle stream",
            bytes: Frame::rst(99, code::CANCEL).encode(),
            want: Some(code::PROTOCOL_ERROR),
        },
        Malformed {
            name: "CONTINUATION without HEADERS",
            bytes: Frame::new(kind::CONTINUATION, flag::END_HEADERS, 1, block.clone()).encode(),
            want: Some(code::PROTOCOL_ERROR),
        },
        // RFC 9113 §6.5 and §6.7 say FRAME_SIZE_ERROR; h2 0.4 answers
        // every payload it cannot load with PROTOCOL_ERROR. Either closes
        // the connection, which is what matters here.
        Malformed {
            name: "SETTINGS of 7 bytes",
            bytes: Frame::new(kind::SETTINGS, 0, 0, vec![0; 7]).encode(),
            want: Some(code::PROTOCOL_ERROR),
        },
        Malformed {
            name: "PING of 7 bytes",
            bytes: Frame::new(kind::PING, 0, 0, vec![0; 7]).encode(),
            want: Some(code::PROTOCOL_ERROR),
        },
        Malformed {
            name: "WINDOW_UPDATE of 0 on the connection",
            bytes: Frame::window_update(0, 0).encode(),
            want: Some(code::PROTOCOL_ERROR),
        },
        Malformed {
            name: "connection window past 2^31-1",
            bytes: [
                Frame::window_update(0, 0x7fff_ffff).encode(),
                Frame::window_update(0, 0x7fff_ffff).encode(),
            ]
            .concat(),
            want: Some(code::FLOW_CONTROL_ERROR),
        },
        Malformed {
            name: "frame longer than SETTINGS_MAX_FRAME_SIZE",
            bytes: Frame::new(kind::DATA, 0, 1, vec![0; 16_385]).encode(),
            want: Some(code::FRAME_SIZE_ERROR),
        },
        Malformed {
            name: "length field larger than the bytes sent",
            // 16 MiB announced, 4 bytes sent: the agent waits for the rest
            // (and the next attacker byte is never sent), or refuses it.
            bytes: Frame::new(kind::PING, 0, 0, vec![0; 4]).encode_with_len(0xff_ffff),
            want: Some(code::FRAME_SIZE_ERROR),
        },
        // RFC 9113 §4.3 says COMPRESSION_ERROR; h2 0.4 sends
        // PROTOCOL_ERROR for HPACK it cannot decode.
        Malformed {
            name: "undecodable HPACK",
            bytes: Frame::new(kind::HEADERS, flag::END_HEADERS, 1, bad_hpack).encode(),
            want: Some(code::PROTOCOL_ERROR),
        },
        Malformed {
            name: "PRIORITY on stream 0",
            bytes: Frame::new(kind::PRIORITY, 0, 0, vec![0; 5]).encode(),
            want: Some(code::PROTOCOL_ERROR),
        },
        Malformed {
            name: "unknown frame type (ignored, RFC 9113 §4.1)",
            bytes: Frame::new(0xfa, 0xff, 7, vec![1; 100]).encode(),
            want: None,
        },
    ]
}

#[test]
fn malformed_frames_close_only_their_own_connection() -> Result<()> {
    let bed = Bed::start(&[])?;
    // A raw bystander open through it all; checked at the end.
    let mut bystander = RawConn::handshake(bed.listen())?;
    let mut wrong = Vec::new();
    for m in malformed_inputs() {
        let mut c = RawConn::handshake(bed.listen())?;
        let _ = c.write(&m.bytes);
        match m.want {
            Some(want) => {
                let seen = c.finish(Duration::from_secs(10));
                let got = seen.goaway();
                eprintln!(
                    "malformed: {}: GOAWAY {got:?}, closed {}",
                    m.name, seen.closed
                );
                match got {
                    Some((_, code, _)) if code == want && seen.closed => {}
                    _ => wrong.push(format!(
                        "{}: want GOAWAY {want:#x} and close, got {got:?} (closed: {})",
                        m.name, seen.closed
                    )),
                }
            }
            None => {
                // Still serving: a call on it succeeds.
                c.send_all(&unary(1, &[], b"still here"))?;
                let ok = c.wait_until(Duration::from_secs(10), |s| {
                    s.frames.iter().any(|f| {
                        f.stream_id() == 1
                            && f.kind() == kind::DATA
                            && f.payload == grpc_frame(b"still here")
                    })
                });
                eprintln!("malformed: {}: connection still serves: {ok}", m.name);
                if !ok || c.goaway().is_some() {
                    wrong.push(format!("{}: connection did not survive", m.name));
                }
            }
        }
    }
    bystander.send_all(&unary(1, &[], b"bystander"))?;
    let ok = bystander.wait_until(Duration::from_secs(10), |s| {
        s.frames.iter().any(|f| {
            f.stream_id() == 1 && f.kind() == kind::DATA && f.payload == grpc_frame(b"bystander")
        })
    });
    ensure!(ok, "the bystander's call failed");
    ensure!(bystander.goaway().is_none(), "the bystander got a GOAWAY");
    drop(bystander);
    if !wrong.is_empty() {
        bail!("malformed inputs handled wrongly:\n{}", wrong.join("\n"));
    }
    bed.check("malformed frames", 8 * MIB)?;
    Ok(())
}

#[test]
fn idle_connections_past_max_connections_are_refused() -> Result<()> {
    const LIMIT: usize = 20;
    let bed = Bed::start(&["--max-connections", &LIMIT.to_string()])?;
    let before = bed.agent.metrics()?.value("goaway_connections_open")? as usize;
    let mut conns = Vec::new();
    for _ in 0..3 * LIMIT {
        conns.push(RawConn::handshake_or_closed(bed.listen())?);
    }
    std::thread::sleep(Duration::from_secs(1));
    let closed = conns.iter().filter(|c| c.closed()).count();
    let open = conns.len() - closed;
    let m = bed.agent.metrics()?;
    let refused = m.value("goaway_connections_refused_total")? as usize;
    eprintln!(
        "idle flood: --max-connections {LIMIT}, {before} open before, {} attempted: {open} kept, {closed} closed at once, goaway_connections_refused_total {refused}",
        conns.len()
    );
    ensure!(
        open == LIMIT - before,
        "{open} kept open, want {}",
        LIMIT - before
    );
    ensure!(refused == closed, "{refused} counted, {closed} closed");
    // Room again once the flood goes away.
    drop(conns);
    wait_for(
        Duration::from_secs(10),
        "the flood's connections to close",
        || Ok(bed.agent.metrics()?.value("goaway_connections_open")? as usize <= before),
    )?;
    let mut fresh = RawConn::handshake(bed.listen())?;
    fresh.send_all(&unary(1, &[], b"fresh"))?;
    ensure!(
        fresh.wait_until(Duration::from_secs(10), |s| s
            .frames
            .iter()
            .any(|f| f.kind() == kind::DATA && f.payload == grpc_frame(b"fresh"))),
        "a new connection after the flood was not served"
    );
    drop(fresh);
    bed.check("idle connection flood", 8 * MIB)?;
    Ok(())
}

/// Frame size every test peer here uses (the HTTP/2 default).
const FRAME: usize = 16_384;

/// The largest unfinished header block the agent keeps at the default
/// 64 KiB header list limit: HEADERS and five CONTINUATIONs of 16 KiB,
/// decoding to just under 64 KiB of complete fields and then a literal
/// whose value never ends.
fn header_bomb(frames: usize) -> Vec<Frame> {
    let mut block = grpc_request_block("/echo.Echo/Unary", &[]);
    // RFC 9113 §6.5.2 size: name + value + 32 per field.
    let mut decoded = 6 * 40;
    let value = vec![b'v'; 1000];
    let mut i = 0;
    while decoded + 1038 < 63 * 1024 {
        hpack::literal(&mut block, &format!("x-f{i:03}"), &value);
        decoded += 1038;
        i += 1;
    }
    hpack::literal_prefix(&mut block, "x-bomb", 1 << 20);
    block.resize(frames * FRAME, b'b');
    block
        .chunks(FRAME)
        .enumerate()
        .map(|(n, chunk)| {
            let k = if n == 0 {
                kind::HEADERS
            } else {
                kind::CONTINUATION
            };
            Frame::new(k, 0, 1, chunk.to_vec())
        })
        .collect()
}

#[test]
fn unfinished_header_blocks_cost_at_most_the_header_limit_each() -> Result<()> {
    const N: u64 = 32;
    // What one connection may hold: 96 KiB of raw header block, up to
    // 64 KiB decoded, the idle connection (12 KiB) and h2's buffers.
    const PER_CONNECTION: u64 = 256 * KIB;
    let bed = Bed::start(&[])?;
    let bomb = header_bomb(6);
    let mut conns = Vec::new();
    for _ in 0..N {
        let mut c = RawConn::handshake(bed.listen())?;
        let _ = c.send_all(&bomb);
        conns.push(c);
    }
    std::thread::sleep(Duration::from_secs(1));
    let held = rss_of(bed.agent.proc.pid())?.saturating_sub(bed.base_rss);
    let dropped = conns
        .iter()
        .filter(|c| c.closed() || c.goaway().is_some())
        .count();
    eprintln!(
        "header bomb: {N} connections holding {} KiB unfinished header blocks each: agent RSS +{} KiB ({} KiB per connection, bound {} KiB); {dropped} closed",
        6 * FRAME as u64 / KIB,
        held / KIB,
        held / N / KIB,
        PER_CONNECTION / KIB
    );
    ensure!(
        held <= N * PER_CONNECTION,
        "{N} unfinished header blocks cost {} KiB, bound {} KiB",
        held / KIB,
        N * PER_CONNECTION / KIB
    );
    let goaways: Vec<_> = conns.iter().filter_map(RawConn::goaway).collect();
    ensure!(
        dropped == 0,
        "{dropped} bombs were refused ({goaways:?}): not the largest tolerated block"
    );

    // One more CONTINUATION is past what the agent keeps.
    let mut pusher = RawConn::handshake(bed.listen())?;
    let mut sent_frames = 0;
    for f in header_bomb(17) {
        if pusher.send(&f).is_err() || pusher.goaway().is_some() {
            break;
        }
        sent_frames += 1;
        if sent_frames >= 7 {
            pusher.wait_until(Duration::from_secs(2), |s| s.goaway().is_some());
        }
    }
    let sent = pusher.sent;
    let seen = pusher.finish(Duration::from_secs(10));
    let debug = expect_goaway(
        "header bomb past the limit",
        seen.goaway(),
        code::ENHANCE_YOUR_CALM,
    )?;
    eprintln!(
        "header bomb past the limit: GOAWAY(ENHANCE_YOUR_CALM, {debug:?}) after {} KiB",
        sent as u64 / KIB
    );
    ensure!(debug == "too_many_continuations", "debug data {debug:?}");
    ensure!(sent < 256 * 1024, "{sent} bytes written before the GOAWAY");
    drop(conns);
    bed.check("header bomb", N * PER_CONNECTION)?;
    Ok(())
}

/// The app's call counters (`echo.Echo/Stats`), read over a raw
/// connection straight to the app.
struct AppStats {
    conn: RawConn,
    next: u32,
}

impl AppStats {
    fn connect(port: u16) -> Result<AppStats> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        Ok(AppStats {
            conn: RawConn::handshake(addr)?,
            next: 1,
        })
    }

    /// (calls started, calls cancelled by their client, calls ok).
    fn get(&mut self) -> Result<(u64, u64, u64)> {
        let id = self.next;
        self.next += 2;
        let req = [
            Frame::new(
                kind::HEADERS,
                flag::END_HEADERS,
                id,
                grpc_request_block("/echo.Echo/Stats", &[]),
            ),
            Frame::new(kind::DATA, flag::END_STREAM, id, grpc_frame(b"")),
        ];
        self.conn.send_all(&req)?;
        let got = |s: &goaway_tests::h2raw::Seen| {
            s.frames
                .iter()
                .find(|f| f.stream_id() == id && f.kind() == kind::DATA)
                .map(|f| f.payload.clone())
        };
        ensure!(
            self.conn
                .wait_until(Duration::from_secs(10), |s| got(s).is_some()),
            "no Stats answer from the app"
        );
        let body = self.conn.seen(got).context("Stats answer")?;
        // Give the window back, or the app stalls after 64 KiB of answers.
        self.conn
            .send(&Frame::window_update(0, body.len() as u32))?;
        let msgs = goaway_tests::grpc_unframe(&body)?;
        let v: serde_json::Value =
            serde_json::from_slice(msgs.first().context("empty Stats answer")?)?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok((n("calls"), n("cancelled"), n("ok")))
    }
}

/// Rapid reset paced under h2's counters: each stream is cancelled only
/// after the agent has forwarded it and the app has started the call, one
/// at a time, so h2's pending-accept reset limit never applies. What it
/// costs is one started-and-cancelled call per stream at the app; the
/// agent must carry every cancel through so nothing piles up.
#[test]
fn slow_rapid_reset_cancels_reach_the_app() -> Result<()> {
    const MAX_STREAMS: u32 = 2_000;
    let bed = Bed::start(&[])?;
    let mut stats = AppStats::connect(bed.app_port)?;
    let mut c = RawConn::handshake(bed.listen())?;
    let (calls0, cancelled0, _) = stats.get()?;
    let (agent_cpu0, app_cpu0) = (cpu_of(bed.agent.proc.pid())?, cpu_of(bed.app.pid())?);
    let start = Instant::now();
    let mut streams = 0u32;
    while streams < MAX_STREAMS && start.elapsed() < Duration::from_secs(4) && c.goaway().is_none()
    {
        let id = 2 * streams + 1;
        // x-echo-* makes the app send its initial metadata as soon as the
        // call starts: HEADERS on the stream mean the app has it.
        c.send_all(&unary(
            id,
            &[("x-sleep-ms", "60000"), ("x-echo-started", "1")],
            b"reset me",
        ))?;
        ensure!(
            c.wait_until(Duration::from_secs(10), |s| s
                .frames
                .iter()
                .any(|f| f.stream_id() == id && f.kind() == kind::HEADERS)),
            "the app never started stream {id}"
        );
        c.send(&Frame::rst(id, code::CANCEL))?;
        streams += 1;
    }
    let elapsed = start.elapsed();
    let agent_cpu = cpu_of(bed.agent.proc.pid())? - agent_cpu0;
    let app_cpu = cpu_of(bed.app.pid())? - app_cpu0;
    // Every cancel reaches the app: its in-flight calls drain back to the
    // good client's one.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (calls, cancelled, ok) = loop {
        let (calls, cancelled, ok) = stats.get()?;
        let all_cancelled = cancelled - cancelled0 >= u64::from(streams);
        if (all_cancelled && calls - ok - cancelled <= 1) || Instant::now() > deadline {
            break (calls, cancelled, ok);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let goaway = c.goaway();
    drop(c);
    eprintln!(
        "slow rapid reset: {streams} streams forwarded then cancelled in {elapsed:?} ({:.0}/s); app: {} calls started, {} cancelled, {} in flight after; CPU during the attack (debug build, the good client's calls included): agent {agent_cpu:?} ({:.0} µs per stream), app {app_cpu:?} ({:.0} µs per stream); GOAWAY to the attacker {goaway:?}",
        f64::from(streams) / elapsed.as_secs_f64(),
        calls - calls0,
        cancelled - cancelled0,
        calls - ok - cancelled,
        agent_cpu.as_micros() as f64 / f64::from(streams),
        app_cpu.as_micros() as f64 / f64::from(streams),
    );
    ensure!(streams >= 20, "only {streams} streams in 4s");
    ensure!(
        cancelled - cancelled0 >= u64::from(streams),
        "{streams} streams cancelled, the app saw {} cancellations",
        cancelled - cancelled0
    );
    ensure!(
        calls - ok - cancelled <= 1,
        "{} calls still running at the app",
        calls - ok - cancelled
    );
    bed.check("slow rapid reset", 8 * MIB)?;
    Ok(())
}
