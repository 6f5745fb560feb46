//! One client's behaviour never fails another client's call: clients that
//! stop reading stall only their own streams, even when they share the
//! agent's upstream connection with a well-behaved client; oversized
//! request headers are refused per stream, checked against the app's own
//! advertised limit.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{agent, collect_until_exit, events, grpc_client};
use goaway_tests::agent::wait_for;
use goaway_tests::{Proc, grpc_server, h2_peer};

/// A hyper-h2 client that asks for a long server stream of small messages
/// and never opens its flow-control windows.
fn stalled_reader(target: &str, seconds: u64) -> Result<Proc> {
    h2_peer(
        "h2-noread",
        &[
            "client",
            "--target",
            target,
            "--path",
            "/echo.Echo/ServerStream",
            // 200,000 messages of 8 bytes: the app writes many small DATA
            // frames, which h2 counts against its per-connection budget
            // for as long as nobody takes them.
            "--body",
            "200000:8",
            "--seconds",
            &seconds.to_string(),
            "noread",
        ],
    )
}

#[test]
fn stalled_readers_do_not_fail_calls_sharing_their_upstream_connection() -> Result<()> {
    let (_app, port) = grpc_server(&[])?;
    // One worker and one upstream connection: every stream below shares
    // the agent's single connection to the app.
    let agent = agent(port)
        .args(["--worker-threads", "1", "--upstream-max-connections", "1"])
        .start()?;
    // Six: together they hold more than 1 MiB of the app's data, so a
    // connection-level window of that size would stall everyone.
    let stallers = (0..6)
        .map(|_| stalled_reader(&agent.target(), 25))
        .collect::<Result<Vec<_>>>()?;
    wait_for(
        Duration::from_secs(30),
        "the stalled streams to open",
        || Ok(agent.metrics()?.value("goaway_streams_active")? >= 6.0),
    )?;
    // Let the app fill every window those streams have.
    std::thread::sleep(Duration::from_secs(2));

    let bystander = grpc_client(
        &agent.target(),
        &["--seconds", "6", "--timeout", "5", "loop"],
    )?;
    assert_eq!(
        bystander["failed"], 0,
        "bystander calls failed: {bystander}"
    );
    assert!(bystander["ok"].as_u64().unwrap_or(0) > 10, "{bystander}");

    let m = agent.metrics()?;
    assert_eq!(
        m.value("goaway_upstream_connects_total")?,
        1.0,
        "the shared upstream connection was replaced:\n{}",
        agent.log()
    );
    assert_eq!(m.value("goaway_upstream_connect_failures_total")?, 0.0);
    assert!(
        m.value("goaway_streams_active")? >= 6.0,
        "the stalled streams were cut instead of stalled"
    );
    assert!(
        agent.log_events("upstream connection dropped").is_empty(),
        "{}",
        agent.log()
    );
    for s in stallers {
        let seen = collect_until_exit(s, Duration::from_secs(30))?;
        let done = events(&seen, "done");
        assert_eq!(done.len(), 1, "{seen:?}");
        assert_eq!(
            done[0]["closed"], false,
            "a stalled client was cut: {seen:?}"
        );
        let received = done[0]["received"].as_u64().unwrap_or(0);
        assert!(received > 0 && received <= 65_535, "{seen:?}");
    }
    Ok(())
}

#[test]
fn stalled_reader_memory_stays_bounded_by_the_stream_window() -> Result<()> {
    let (_app, port) = grpc_server(&[])?;
    let agent = agent(port)
        .args(["--worker-threads", "1", "--upstream-max-connections", "1"])
        .start()?;
    let base = agent.rss_bytes()?;
    let stallers = (0..8)
        .map(|_| stalled_reader(&agent.target(), 15))
        .collect::<Result<Vec<_>>>()?;
    wait_for(
        Duration::from_secs(30),
        "the stalled streams to open",
        || Ok(agent.metrics()?.value("goaway_streams_active")? >= 8.0),
    )?;
    std::thread::sleep(Duration::from_secs(4));
    let held = agent.rss_bytes()?.saturating_sub(base);
    // Each stalled stream may hold its 256 KiB upstream window in the
    // agent (and no more); 8 of them, with room for allocator slack.
    assert!(
        held < 16 << 20,
        "agent grew by {} KiB for 8 stalled streams",
        held >> 10
    );
    for s in stallers {
        collect_until_exit(s, Duration::from_secs(30))?;
    }
    Ok(())
}

/// One unary call with a metadata entry of `size` bytes.
fn call_with_metadata(target: &str, size: usize) -> Result<serde_json::Value> {
    let big = format!("x-big={}", "m".repeat(size));
    grpc_client(
        target,
        &[
            "--option",
            "grpc.max_metadata_size=4194304",
            "--metadata",
            &big,
            "call",
        ],
    )
}

fn app_calls(target: &str) -> Result<u64> {
    let stats = grpc_client(target, &["--shape", "stats", "call"])?;
    Ok(stats["stats"]["calls"].as_u64().unwrap_or(0))
}

#[test]
fn request_headers_over_the_apps_advertised_limit_are_refused_by_the_agent() -> Result<()> {
    // C-core advertises grpc.max_metadata_size as SETTINGS_MAX_HEADER_LIST_SIZE.
    let (_app, port) = grpc_server(&["--option", "grpc.max_metadata_size=16384"])?;
    let agent = agent(port).start()?;
    let direct = format!("127.0.0.1:{port}");
    let before = app_calls(&direct)?;

    // Over C-core's hard limit (it advertises 16384 × 1.25).
    let refused = call_with_metadata(&agent.target(), 30_000)?;
    assert_eq!(refused["code"], "RESOURCE_EXHAUSTED", "{refused}");
    let details = refused["details"].as_str().unwrap_or("");
    assert!(
        details.contains("accepts at most 20480"),
        "the client is not told why: {details}"
    );
    // The app never saw it (Stats does not count itself).
    assert_eq!(app_calls(&direct)?, before);

    // Under the app's limit, calls pass as before on the same agent.
    let ok = call_with_metadata(&agent.target(), 8_000)?;
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["echo_ok"], true, "{ok}");
    // ...and the app counts it: the count above could have told.
    assert_eq!(app_calls(&direct)?, before + 1);
    Ok(())
}

#[test]
fn request_headers_over_the_agents_own_limit_fail_only_that_call() -> Result<()> {
    let (_app, port) = grpc_server(&["--option", "grpc.max_metadata_size=4194304"])?;
    let agent = agent(port)
        .args(["--max-header-list-size", "8192"])
        .start()?;
    let refused = call_with_metadata(&agent.target(), 10_000)?;
    assert_ne!(refused["code"], "OK", "{refused}");
    // The agent advertised its limit and h2 enforced it on that stream; a
    // client that then behaves keeps calling.
    let ok = grpc_client(&agent.target(), &["--seconds", "1", "loop"])?;
    assert_eq!(ok["failed"], 0, "{ok}");
    let m = agent.metrics()?;
    assert_eq!(m.value("goaway_upstream_connect_failures_total")?, 0.0);
    Ok(())
}
