//! The transport against Python grpcio (gRPC C-core), over real sockets.
//! Bounds are generous; what is asserted is behaviour, not speed.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use goaway_tests::{Proc, grpc_peer, grpc_peer_command, grpc_server};
use serde_json::Value;

fn echo_server(policy: &str) -> Result<(Proc, u16)> {
    echo_server_with(policy, &[])
}

/// The echo server answering through `ServerConnection::serve` with a
/// `tower::Service`, as a tonic or hyper application would.
fn tower_echo_server(policy: &str) -> Result<(Proc, u16)> {
    echo_server_with(policy, &["--tower"])
}

fn echo_server_with(policy: &str, flags: &[&str]) -> Result<(Proc, u16)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_transport-echo-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--policy-yaml", policy]);
    cmd.args(flags);
    let p = Proc::spawn("echo-server", &mut cmd)?;
    let v = p.json_where(Duration::from_secs(20), |v| v.get("port").is_some())?;
    Ok((p, v["port"].as_u64().unwrap() as u16))
}

fn closed_reasons(server: &Proc) -> Vec<String> {
    server
        .drain_json()
        .iter()
        .filter(|v| v["event"] == "closed")
        .map(|v| v["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn grpcio_client_pinging_too_often_gets_too_many_pings() -> Result<()> {
    // Server defaults: minTime 5m, no pings without streams.
    too_many_pings(echo_server("")?)
}

fn too_many_pings((server, port): (Proc, u16)) -> Result<()> {
    let target = format!("127.0.0.1:{port}");
    let mut cmd = grpc_peer_command(&[
        "client",
        "--target",
        &target,
        "--option",
        "grpc.keepalive_time_ms=100",
        "--option",
        "grpc.keepalive_permit_without_calls=1",
        "--option",
        "grpc.http2.max_pings_without_data=0",
        // C-core sends at most one ping a second without data; the first
        // after a call is exempt, so strikes 1-3 need four more seconds.
        "--seconds",
        "8",
        "idle",
    ])?;
    cmd.env("GRPC_VERBOSITY", "ERROR");
    let client = Proc::spawn_capturing("grpcio-client", &mut cmd)?;
    let result = client_result(client)?;
    // The client saw the exact debug data (C-core logs it when it backs off).
    assert!(
        result.1.contains("too_many_pings"),
        "grpcio did not report too_many_pings; stderr:\n{}",
        result.1
    );
    // The server closed that connection for it.
    std::thread::sleep(Duration::from_millis(300));
    let reasons = closed_reasons(&server);
    assert!(reasons.iter().any(|r| r == "too_many_pings"), "{reasons:?}");
    // The first call, made before the strikes, worked. (A call running
    // when the third strike lands fails with the GOAWAY, as on grpc-go.)
    assert!(result.0["ok"].as_u64().unwrap() >= 1, "{}", result.0);
    Ok(())
}

fn client_result(mut client: Proc) -> Result<(Value, String)> {
    client.wait_output(Duration::from_secs(60))?;
    let stderr = client.stderr();
    let value = client.finish_json(Duration::from_secs(5))?;
    Ok((value, stderr))
}

#[test]
fn grpcio_client_within_policy_is_left_alone() -> Result<()> {
    let (server, port) = echo_server("enforcement: {minTime: 100ms, permitWithoutStream: true}")?;
    let target = format!("127.0.0.1:{port}");
    let mut cmd = grpc_peer_command(&[
        "client",
        "--target",
        &target,
        "--option",
        "grpc.keepalive_time_ms=300",
        "--option",
        "grpc.keepalive_permit_without_calls=1",
        "--option",
        "grpc.http2.max_pings_without_data=0",
        "--seconds",
        "2",
        "idle",
    ])?;
    cmd.env("GRPC_VERBOSITY", "ERROR");
    let (result, stderr) = client_result(Proc::spawn_capturing("grpcio-client", &mut cmd)?)?;
    assert!(!stderr.contains("too_many_pings"), "{stderr}");
    assert_eq!(result["ok"], 2, "{result}");
    let reasons = closed_reasons(&server);
    assert!(
        !reasons.iter().any(|r| r == "too_many_pings"),
        "{reasons:?}"
    );
    Ok(())
}

#[test]
fn grpcio_call_loop_sees_no_failures_across_max_age_drains() -> Result<()> {
    call_loop_across_max_age_drains(echo_server("server: {maxConnectionAge: 500ms}")?)
}

#[test]
fn tower_service_sees_no_failures_across_max_age_drains() -> Result<()> {
    call_loop_across_max_age_drains(tower_echo_server("server: {maxConnectionAge: 500ms}")?)
}

/// A tower service behind the transport: streamed bodies both ways with
/// flow control (4 MiB each way, beyond every default window) and the
/// trailers it writes reach a grpcio client unchanged.
#[test]
fn tower_service_streams_large_bidi_calls_to_grpcio() -> Result<()> {
    let (_server, port) = tower_echo_server("")?;
    let target = format!("127.0.0.1:{port}");
    let client = grpc_peer(
        "grpcio-client",
        &[
            "client",
            "--target",
            &target,
            "--shape",
            "bidi",
            "--messages",
            "4",
            "--size",
            "1048576",
            "call",
        ],
    )?;
    let result = client.finish_json(Duration::from_secs(60))?;
    assert_eq!(result["code"], "OK", "{result}");
    assert_eq!(result["echo_ok"], true, "{result}");
    assert_eq!(result["response_bytes"], 4 * 1_048_576, "{result}");
    Ok(())
}

#[test]
fn tower_service_behind_enforcement_sends_too_many_pings() -> Result<()> {
    too_many_pings(tower_echo_server("")?)
}

fn call_loop_across_max_age_drains((server, port): (Proc, u16)) -> Result<()> {
    let target = format!("127.0.0.1:{port}");
    let client = grpc_peer(
        "grpcio-client",
        &["client", "--target", &target, "--seconds", "5", "loop"],
    )?;
    let result = client.finish_json(Duration::from_secs(60))?;
    assert_eq!(result["failed"], 0, "{result}");
    assert!(result["ok"].as_u64().unwrap() > 100, "{result}");
    std::thread::sleep(Duration::from_millis(300));
    let reasons = closed_reasons(&server);
    let drained = reasons.iter().filter(|r| *r == "drained").count();
    // 5s of 0.5s±10% connections: about nine; at least five for slack.
    assert!(drained >= 5, "only {drained} max-age drains: {reasons:?}");
    Ok(())
}

#[test]
fn grpcio_client_answers_our_keepalive_pings() -> Result<()> {
    let (server, port) = echo_server("server: {time: 200ms, timeout: 1s}")?;
    let target = format!("127.0.0.1:{port}");
    let client = grpc_peer(
        "grpcio-client",
        &["client", "--target", &target, "--seconds", "2", "idle"],
    )?;
    let result = client.finish_json(Duration::from_secs(60))?;
    assert_eq!(result["ok"], 2, "{result}");
    // The client is gone once it has printed its result; its connection's
    // line follows as soon as the server has seen the close.
    let closed = server.json_where(Duration::from_secs(10), |v| v["event"] == "closed")?;
    // Idle for 2 s with a ping due 200 ms after the last read: the server
    // pinged, and every ping was answered within its 1 s timeout (one left
    // unanswered would have closed the connection as ping_timeout).
    assert!(closed["pings_sent"].as_u64().unwrap() >= 4, "{closed}");
    assert_ne!(closed["reason"], "ping_timeout", "{closed}");
    Ok(())
}

#[test]
fn our_client_keeps_calling_across_grpcio_max_connection_age() -> Result<()> {
    let (_server, port) = grpc_server(&[
        "--option",
        "grpc.max_connection_age_ms=500",
        "--option",
        "grpc.max_connection_age_grace_ms=5000",
    ])?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_transport-echo-client"));
    cmd.args(["--target", &format!("127.0.0.1:{port}"), "--seconds", "5"]);
    let result = Proc::spawn("echo-client", &mut cmd)?.finish_json(Duration::from_secs(60))?;
    assert_eq!(result["failed"], 0, "{result}");
    assert!(result["ok"].as_u64().unwrap() > 100, "{result}");
    assert!(result["connects"].as_u64().unwrap() >= 5, "{result}");
    assert!(
        result["goaways_received"].as_u64().unwrap() >= 5,
        "{result}"
    );
    Ok(())
}

#[test]
fn our_client_keepalive_is_accepted_by_grpcio() -> Result<()> {
    // grpcio permits a ping every 10s with calls by default... and our
    // upstream keepalive at 10s with permitWithoutStream: no GOAWAY.
    let (_server, port) = grpc_server(&[
        "--option",
        "grpc.http2.min_ping_interval_without_data_ms=100",
        "--option",
        "grpc.keepalive_permit_without_calls=1",
    ])?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_transport-echo-client"));
    cmd.args([
        "--target",
        &format!("127.0.0.1:{port}"),
        "--seconds",
        "2",
        "--policy-yaml",
        "upstream: {time: 200ms, timeout: 1s, permitWithoutStream: true}",
    ]);
    let result = Proc::spawn("echo-client", &mut cmd)?.finish_json(Duration::from_secs(60))?;
    assert_eq!(result["failed"], 0, "{result}");
    assert_eq!(result["connects"], 1, "{result}");
    assert_eq!(result["goaways_received"], 0, "{result}");
    Ok(())
}
