//! Proxy correctness, black-box: a gRPC user must not be able to tell the
//! agent is there. Real `goaway-agent run` processes between Python
//! grpcio (gRPC C-core) clients and servers, and hyper-h2 peers where a
//! test needs frame-level control. Bounds are generous; what is asserted
//! is behaviour (codes, contents, counts), never speed.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::{agent, collect_until_exit, events, grpc_client, spawn_grpc_client};
use goaway_tests::agent::wait_for;
use goaway_tests::{Proc, free_port, grpc_server, h2_peer, h2_upstream};
use serde_json::{Value, json};

const SHAPES: [&str; 4] = ["unary", "client_stream", "server_stream", "bidi"];

#[test]
fn all_four_call_shapes_pass_messages_metadata_and_trailers_through() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    for shape in SHAPES {
        let r = grpc_client(
            &agent.target(),
            &[
                "--shape",
                shape,
                "--messages",
                "5",
                "--size",
                "1000",
                "--metadata",
                "x-echo-trace=abc-123",
                "--metadata",
                "x-echo-blob-bin=00ff10",
                "call",
            ],
        )?;
        assert_eq!(r["code"], "OK", "{shape}: {r}");
        assert_eq!(r["echo_ok"], true, "{shape}: messages changed: {r}");
        let messages = if shape == "server_stream" || shape == "bidi" {
            5
        } else {
            1
        };
        assert_eq!(r["responses"], messages, "{shape}: {r}");
        let sent = json!({"x-echo-trace": "abc-123", "x-echo-blob-bin": "00ff10"});
        assert_eq!(
            r["initial_metadata"], sent,
            "{shape}: response headers: {r}"
        );
        assert_eq!(r["trailing_metadata"], sent, "{shape}: trailers: {r}");
    }
    // Every call went through the agent.
    assert!(agent.metrics()?.value("goaway_streams_total")? >= 4.0);
    Ok(())
}

/// One call through the agent and the same call straight to the app.
fn proxied_and_direct(agent_target: &str, app_port: u16, args: &[&str]) -> Result<(Value, Value)> {
    let mut proxied = grpc_client(agent_target, args)?;
    let mut direct = grpc_client(&format!("127.0.0.1:{app_port}"), args)?;
    for v in [&mut proxied, &mut direct] {
        v.as_object_mut().unwrap().remove("elapsed_ms");
    }
    Ok((proxied, direct))
}

#[test]
fn status_codes_and_messages_reach_the_client_unchanged() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    // Codes an app returns, with a message that is not plain ASCII.
    for (code, name) in [
        ("3", "INVALID_ARGUMENT"),
        ("5", "NOT_FOUND"),
        ("7", "PERMISSION_DENIED"),
        ("8", "RESOURCE_EXHAUSTED"),
        ("13", "INTERNAL"),
        ("14", "UNAVAILABLE"),
    ] {
        let args = [
            "--metadata",
            &format!("x-status={code}"),
            "--metadata",
            "x-message=no%20such%20key%3A%20caf%C3%A9%20100%25%20sure",
            "--metadata",
            "x-echo-why=because",
            "call",
        ];
        let (proxied, direct) = proxied_and_direct(&agent.target(), port, &args)?;
        assert_eq!(proxied["code"], name, "{proxied}");
        assert_eq!(
            proxied["details"], "no such key: café 100% sure",
            "{proxied}"
        );
        assert_eq!(proxied, direct, "the agent changed what the client sees");
    }
    // A status after messages travels in trailers, not trailers-only.
    let args = [
        "--shape",
        "server_stream",
        "--messages",
        "3",
        "--metadata",
        "x-status=9",
        "--metadata",
        "x-message=late%20failure",
        "--metadata",
        "x-echo-k=v",
        "call",
    ];
    let (proxied, direct) = proxied_and_direct(&agent.target(), port, &args)?;
    assert_eq!(proxied["code"], "FAILED_PRECONDITION", "{proxied}");
    assert_eq!(proxied["details"], "late failure", "{proxied}");
    assert_eq!(proxied["responses"], 3, "{proxied}");
    assert_eq!(proxied["trailing_metadata"]["x-echo-k"], "v", "{proxied}");
    assert_eq!(proxied, direct, "the agent changed what the client sees");
    Ok(())
}

/// The app learns the client's address from the last `x-forwarded-for`
/// entry, which the agent wrote after whatever the client claimed; with
/// `--forwarded-for off` it gets the headers as they came.
#[test]
fn the_app_sees_the_client_address_after_what_the_client_claimed() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let report = [
        "--metadata",
        "x-report-peer=1",
        "--metadata",
        "x-forwarded-for=6.6.6.6",
        "call",
    ];
    let agent = agent(port).start()?;
    let r = grpc_client(&agent.target(), &report)?;
    assert_eq!(r["code"], "OK", "{r}");
    let md = &r["initial_metadata"];
    assert_eq!(md["x-forwarded-for-seen"], "6.6.6.6, 127.0.0.1", "{r}");
    assert!(md["x-peer"].as_str().unwrap().contains("127.0.0.1"), "{r}");

    let off = common::agent(port)
        .args(["--forwarded-for", "off"])
        .start()?;
    let r = grpc_client(&off.target(), &report)?;
    assert_eq!(
        r["initial_metadata"]["x-forwarded-for-seen"], "6.6.6.6",
        "{r}"
    );
    Ok(())
}

#[test]
fn grpc_timeout_reaches_the_app_and_an_expired_deadline_ends_the_call() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    // The app sees the client's deadline (less the time in transit).
    let r = grpc_client(
        &agent.target(),
        &[
            "--timeout",
            "3",
            "--metadata",
            "x-report-deadline=1",
            "call",
        ],
    )?;
    assert_eq!(r["code"], "OK", "{r}");
    let left: u64 = r["initial_metadata"]["x-time-remaining-ms"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the app saw no deadline: {r}"));
    assert!(
        (1000..=3000).contains(&left),
        "app saw {left}ms of a 3s deadline"
    );

    // A call the app holds longer than the deadline fails with
    // DEADLINE_EXCEEDED, on time, and the app sees it end.
    let r = grpc_client(
        &agent.target(),
        &["--timeout", "0.5", "--metadata", "x-sleep-ms=20000", "call"],
    )?;
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    assert!(r["elapsed_ms"].as_u64().unwrap() < 3000, "{r}");
    let mut stats = Value::Null;
    wait_for(
        Duration::from_secs(5),
        "the app to see the call end",
        || {
            stats = grpc_client(&agent.target(), &["--shape", "stats", "call"])?;
            Ok(stats["stats"]["cancelled"].as_u64() == Some(1))
        },
    )
    .map_err(|e| e.context(format!("app stats: {stats}")))?;
    Ok(())
}

#[test]
fn grpcio_client_cancel_reaches_the_app_for_unary_and_streaming_calls() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    for shape in ["unary", "server_stream"] {
        let r = grpc_client(
            &agent.target(),
            &["--shape", shape, "--cancel-after-ms", "300", "cancel"],
        )?;
        assert_eq!(r["client_cancelled"], true, "{r}");
        let before = r["stats_before"]["cancelled"].as_u64().unwrap();
        let after = r["stats_after"]["cancelled"].as_u64().unwrap();
        assert_eq!(
            after,
            before + 1,
            "{shape}: the app never saw the cancel: {r}"
        );
        assert!(r["server_saw_cancel_ms"].as_u64().unwrap() < 3000, "{r}");
    }
    Ok(())
}

#[test]
fn client_rst_stream_cancel_resets_the_upstream_stream() -> Result<()> {
    // The app holds the request; the client resets it with CANCEL.
    let (upstream, port) = h2_upstream(&["--hold-ms", "20000"])?;
    let agent = agent(port).start()?;
    let client = h2_peer(
        "h2-client",
        &[
            "client",
            "--target",
            &agent.target(),
            "--cancel-after-ms",
            "500",
            "request",
        ],
    )?;
    let seen = collect_until_exit(client, Duration::from_secs(30))?;
    assert_eq!(events(&seen, "cancelled").len(), 1, "{seen:?}");
    let mut resets = Vec::new();
    wait_for(Duration::from_secs(5), "the app to see RST_STREAM", || {
        resets.extend(events(&upstream.drain_json(), "reset"));
        Ok(!resets.is_empty())
    })?;
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(resets[0]["code"], 8, "want CANCEL: {resets:?}");
    Ok(())
}

#[test]
fn upstream_rst_stream_reaches_the_client_with_the_same_code() -> Result<()> {
    let (_upstream, port) = h2_upstream(&[])?;
    let agent = agent(port).start()?;
    // CANCEL, INTERNAL_ERROR, ENHANCE_YOUR_CALM; before and after the
    // response headers.
    for (code, when) in [
        (8, "after-headers"),
        (2, "after-headers"),
        (11, "after-headers"),
        (8, "before-headers"),
    ] {
        let code_header = format!("x-rst-code={code}");
        let when_header = format!("x-rst-when={when}");
        let client = h2_peer(
            "h2-client",
            &[
                "client",
                "--target",
                &agent.target(),
                "--header",
                &code_header,
                "--header",
                &when_header,
                "request",
            ],
        )?;
        let seen = collect_until_exit(client, Duration::from_secs(30))?;
        let resets = events(&seen, "reset");
        assert_eq!(resets.len(), 1, "{code} {when}: {seen:?}");
        assert_eq!(resets[0]["code"], code, "{code} {when}: {seen:?}");
        let responses = events(&seen, "response");
        if when == "after-headers" {
            assert_eq!(responses.len(), 1, "{code} {when}: {seen:?}");
            assert!(!events(&seen, "data").is_empty(), "{code} {when}: {seen:?}");
        }
    }
    // And what a grpcio user sees: CANCEL is CANCELLED.
    let r = grpc_client(
        &agent.target(),
        &[
            "--metadata",
            "x-rst-code=8",
            "--metadata",
            "x-rst-when=before-headers",
            "call",
        ],
    )?;
    assert_eq!(r["code"], "CANCELLED", "{r}");
    Ok(())
}

#[test]
fn sixteen_mib_messages_pass_in_every_call_shape() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    let size = (16 << 20).to_string();
    for (shape, messages) in [
        ("unary", 1),
        ("client_stream", 2),
        ("server_stream", 2),
        ("bidi", 2),
    ] {
        let r = grpc_client(
            &agent.target(),
            &[
                "--shape",
                shape,
                "--size",
                &size,
                "--messages",
                &messages.to_string(),
                "--timeout",
                "120",
                "call",
            ],
        )?;
        assert_eq!(r["code"], "OK", "{shape}: {r}");
        assert_eq!(r["echo_ok"], true, "{shape}: {r}");
        let want_bytes = match shape {
            "client_stream" => 2 * (16u64 << 20),
            "unary" => 16 << 20,
            _ => messages * (16 << 20),
        };
        assert_eq!(r["response_bytes"], want_bytes, "{shape}: {r}");
    }
    Ok(())
}

#[test]
fn a_thousand_concurrent_streams_on_one_client_connection_all_succeed() -> Result<()> {
    let (_server, port) = grpc_server(&["--workers", "1100"])?;
    let agent = agent(port).start()?;
    let client = spawn_grpc_client(
        &agent.target(),
        &[
            "--count",
            "1000",
            "--timeout",
            "120",
            "--metadata",
            "x-sleep-ms=4000",
            "futures",
        ],
    )?;
    // Watch the connection while the calls are in flight.
    let mut most_active = 0;
    let mut most_connections = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let conns = agent.connections()?;
        most_connections = most_connections.max(conns.len());
        for c in &conns {
            most_active = most_active.max(c["active_streams"].as_u64().unwrap_or(0));
        }
        if most_active >= 1000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = client.finish_json(Duration::from_secs(120))?;
    assert_eq!(r["ok"], 1000, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(most_connections, 1, "grpcio used one connection");
    assert!(
        most_active >= 900,
        "at most {most_active} streams were open at once"
    );
    assert!(agent.metrics()?.value("goaway_streams_total")? >= 1000.0);
    Ok(())
}

#[test]
fn upstream_max_concurrent_streams_is_respected_by_opening_more_connections() -> Result<()> {
    // The app allows 10 streams per connection and holds each for 1s.
    let (upstream, port) = h2_upstream(&["--max-concurrent-streams", "10", "--hold-ms", "1000"])?;
    let agent = agent(port).start()?;
    let r = grpc_client(
        &agent.target(),
        &["--count", "50", "--timeout", "60", "futures"],
    )?;
    assert_eq!(r["ok"], 50, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    let seen = upstream.drain_json();
    let connections = events(&seen, "connection").len();
    let most_active = events(&seen, "request")
        .iter()
        .filter_map(|e| e["active"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(
        most_active <= 10,
        "the app's limit was exceeded: {most_active}"
    );
    assert!(events(&seen, "error").is_empty(), "{seen:?}");
    // 50 streams held together need at least 5 connections of 10.
    assert!(
        connections >= 5,
        "only {connections} upstream connections for 50 concurrent streams"
    );
    let m = agent.metrics()?;
    assert!(m.value("goaway_upstream_connects_total")? >= 5.0);
    // Streams sent before a new connection's SETTINGS arrived may be
    // refused; each refusal was retried (and none failed, above).
    let refused = events(&seen, "refused").len() as f64;
    assert_eq!(m.value("goaway_upstream_retries_total")?, refused);
    Ok(())
}

#[test]
fn client_that_stops_reading_does_not_make_the_agent_buffer() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    // 2 GiB of responses requested by a client that never opens its
    // 64 KiB flow-control windows.
    let client = h2_peer(
        "h2-noread",
        &[
            "client",
            "--target",
            &agent.target(),
            "--path",
            "/echo.Echo/ServerStream",
            "--body",
            "2048:1048576",
            "--seconds",
            "6",
            "noread",
        ],
    )?;
    // (Waited for, not slept for: a loaded machine starts Python slowly.)
    wait_for(Duration::from_secs(20), "the stream to open", || {
        Ok(agent.metrics()?.value("goaway_streams_active")? >= 1.0)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let early = agent.rss_bytes()?;
    let active_early = agent.metrics()?.value("goaway_streams_active")?;
    std::thread::sleep(Duration::from_secs(4));
    let late = agent.rss_bytes()?;
    let seen = collect_until_exit(client, Duration::from_secs(30))?;
    let done = events(&seen, "done");
    let received = done[0]["received"].as_u64().unwrap();
    assert!(received > 0, "the stream never started: {seen:?}");
    assert!(
        received <= 65_535,
        "sent past the client's window: {received}"
    );
    assert_eq!(done[0]["closed"], false, "{seen:?}");
    assert_eq!(active_early, 1.0, "the stream should be open and stalled");
    let growth = late.saturating_sub(early);
    assert!(
        growth < 32 << 20,
        "agent memory grew by {} MiB while the client did not read (from {} MiB)",
        growth >> 20,
        early >> 20
    );
    assert!(late < 256 << 20, "agent RSS {} MiB", late >> 20);
    Ok(())
}

/// An app that restarts gracefully: the grpc-go way (GracefulStop:
/// two-step GOAWAY, streams between the GOAWAYs served, exit after the
/// last one), then a new process on the same port.
///
/// (grpcio's `server.stop(grace)` is not used here: it cancels calls that
/// reach it after it decided to stop — even ones a client sent before
/// seeing its GOAWAY — and a direct grpcio client sees those fail just
/// the same; see the README's limitations.)
fn graceful_app(port: u16) -> Result<Proc> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_goaway-agent"));
    cmd.args([
        "demo-backend",
        "--graceful",
        "--min-ms",
        "1",
        "--max-ms",
        "5",
    ])
    .args(["--listen", &format!("127.0.0.1:{port}")]);
    let p = Proc::spawn("graceful-app", &mut cmd)?;
    wait_for(Duration::from_secs(10), "the app to listen", || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    })?;
    Ok(p)
}

#[test]
fn app_restart_causes_zero_failed_calls() -> Result<()> {
    let app_port = free_port();
    let mut first = graceful_app(app_port)?;
    let agent = agent(app_port).start()?;
    let client = spawn_grpc_client(
        &agent.target(),
        &[
            "--seconds",
            "7",
            "--timeout",
            "20",
            "--interval-ms",
            "5",
            "loop",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    // The app stops gracefully and a new process takes the port; calls
    // made meanwhile wait for it (within --upstream-connect-timeout).
    first.signal("TERM")?;
    first.wait(Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(300));
    let _second = graceful_app(app_port)?;
    let r = client.finish_json(Duration::from_secs(60))?;
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["ok"].as_u64().unwrap() > 50, "{r}");
    let m = agent.metrics()?;
    assert!(m.value("goaway_upstream_connects_total")? >= 2.0);
    assert!(m.value("goaway_upstream_goaways_received_total")? >= 1.0);
    Ok(())
}

#[test]
fn app_max_connection_age_goaways_cause_zero_failed_calls() -> Result<()> {
    let (_server, port) = grpc_server(&[
        "--option",
        "grpc.max_connection_age_ms=500",
        "--option",
        "grpc.max_connection_age_grace_ms=5000",
    ])?;
    let agent = agent(port).start()?;
    let r = grpc_client(
        &agent.target(),
        &["--seconds", "5", "--threads", "4", "concurrent"],
    )?;
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["ok"].as_u64().unwrap() > 100, "{r}");
    let m = agent.metrics()?;
    // About ten ages in 5s; at least three for slack.
    assert!(
        m.value("goaway_upstream_goaways_received_total")? >= 3.0,
        "{}",
        m.text
    );
    assert!(
        m.value("goaway_upstream_connects_total")? >= 3.0,
        "{}",
        m.text
    );
    Ok(())
}

#[test]
fn upstream_down_is_a_trailers_only_unavailable_within_the_connect_timeout() -> Result<()> {
    let dead = free_port();
    let agent = agent(dead)
        .args(["--upstream-connect-timeout", "1s"])
        .start()?;
    let r = grpc_client(&agent.target(), &["--timeout", "30", "call"])?;
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    let details = r["details"].as_str().unwrap();
    assert!(
        details.contains(&dead.to_string()),
        "the message should say why: {details:?}"
    );
    assert!(r["elapsed_ms"].as_u64().unwrap() < 3000, "{r}");

    // On the wire: one HEADERS frame with END_STREAM carrying the status.
    let client = h2_peer(
        "h2-client",
        &["client", "--target", &agent.target(), "request"],
    )?;
    let seen = collect_until_exit(client, Duration::from_secs(30))?;
    let responses = events(&seen, "response");
    assert_eq!(responses.len(), 1, "{seen:?}");
    assert_eq!(
        responses[0]["end_stream"], true,
        "not trailers-only: {seen:?}"
    );
    assert_eq!(responses[0]["headers"][":status"], "200", "{seen:?}");
    assert_eq!(responses[0]["headers"]["grpc-status"], "14", "{seen:?}");
    assert!(
        responses[0]["headers"]["grpc-message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(events(&seen, "data").is_empty(), "{seen:?}");
    Ok(())
}

#[test]
fn upstream_that_accepts_but_never_speaks_http2_is_unavailable_not_a_hang() -> Result<()> {
    // A listener nobody accepts on: TCP connects, no SETTINGS ever come.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = silent.local_addr()?.port();
    let agent = agent(port)
        .args(["--upstream-connect-timeout", "1s"])
        .start()?;
    let r = grpc_client(&agent.target(), &["--timeout", "10", "call"])?;
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    assert!(!r["details"].as_str().unwrap().is_empty(), "{r}");
    assert!(r["elapsed_ms"].as_u64().unwrap() < 3000, "{r}");
    drop(silent);
    Ok(())
}
