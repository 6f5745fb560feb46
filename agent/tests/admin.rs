//! The admin API (docs/design.md §5.2) of a real agent while real clients
//! use it: health, readiness, `/metrics` names and counters,
//! `/connections`, `/policy`; and the connection management of
//! docs/design.md §3 that the metrics count (keepalive pings, ping
//! enforcement, max age) against grpcio clients.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use common::{BIN, agent, collect_until_exit, events, grpc_client};
use goaway_tests::agent::{Agent, wait_for};
use goaway_tests::{Proc, Scratch, grpc_peer_command, grpc_server, h2_peer};
use serde_json::Value;

/// A core set of the agent's metrics (docs/design.md §5.3 lists every
/// one).
const SPEC_METRICS: [&str; 13] = [
    "goaway_connections_open",
    "goaway_connections_total",
    "goaway_streams_active",
    "goaway_streams_total",
    "goaway_goaways_sent_total",
    "goaway_pings_sent_total",
    "goaway_ping_timeouts_total",
    "goaway_ping_strikes_total",
    "goaway_connection_duration_seconds",
    "goaway_drain_duration_seconds",
    "goaway_upstream_connects_total",
    "goaway_upstream_goaways_received_total",
    "goaway_policy_reloads_total",
];

fn agent_with_policy(app_port: u16, policy: &str) -> Result<(Agent, Scratch)> {
    let dir = Scratch::new("admin")?;
    let file = dir.write("policy.yaml", policy)?;
    Ok((agent(app_port).policy(file).start()?, dir))
}

#[test]
fn healthz_and_readyz_answer_200_while_serving() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    assert_eq!(agent.get("/healthz")?.0, 200);
    assert_eq!(agent.readyz()?, 200);
    assert_eq!(agent.get("/no-such-endpoint")?.0, 404);
    Ok(())
}

#[test]
fn readyz_follows_the_app_with_readiness_checks_upstream() -> Result<()> {
    let (server, port) = grpc_server(&[])?;
    let agent = agent(port).args(["--readiness-checks-upstream"]).start()?;
    assert_eq!(agent.readyz()?, 200);
    drop(server);
    // The app is gone: nothing accepts on its port any more.
    wait_for(Duration::from_secs(10), "/readyz to fail", || {
        Ok(agent.readyz()? == 503)
    })?;
    let (status, body) = agent.get("/readyz")?;
    assert_eq!(status, 503);
    assert!(body.contains("refused"), "{body}");
    // The reason is in the log once, at WARN, and in the metric: the
    // kubelet's probe Event has only the status code.
    let warned = agent.log_events("not ready: the app stopped accepting connections");
    assert_eq!(warned.len(), 1, "{}", agent.log());
    assert_eq!(warned[0]["level"], "WARN", "{}", warned[0]);
    assert!(
        warned[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused")),
        "{}",
        warned[0]
    );
    assert_eq!(
        agent
            .metrics()?
            .value("goaway_readiness{state=\"upstream_refused\"}")?,
        1.0
    );
    assert_eq!(
        agent
            .metrics()?
            .value("goaway_readiness{state=\"ready\"}")?,
        0.0
    );
    // Without the flag the agent answers for itself only
    // (docs/design.md §5.2: 200 while serving), whatever the app does.
    let plain = agent_at_dead_upstream()?;
    assert_eq!(plain.readyz()?, 200);
    Ok(())
}

#[test]
fn log_level_changes_at_runtime_with_the_drain_token() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).env("GOAWAY_DRAIN_TOKEN", "s3cret").start()?;
    let api = agent.api();
    let (status, body) = agent.get("/log-level")?;
    assert_eq!((status, body.trim()), (200, "h2=warn,info"), "{body}");
    // Without the token: refused, and nothing changes.
    assert_eq!(api.put("/log-level", &[], "debug")?.0, 401);
    assert_eq!(agent.get("/log-level")?.1.trim(), "h2=warn,info");
    let auth = [("Authorization", "Bearer s3cret")];
    let (status, body) = api.put("/log-level", &auth, "nonsense=[")?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.put("/log-level", &auth, &"a=info,".repeat(200))?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 1024"), "{body}");
    // A field matcher built to blow up a regular expression is plain text
    // (compiled, it kept a worker busy for minutes); the filter in force
    // after it answers at once.
    let hostile = format!(
        "goaway_agent[conn{{peer={}}}]=trace,h2=warn,info",
        "(a|b)*a".to_string() + &"(a|b)".repeat(24)
    );
    let (status, body) = api.put("/log-level", &auth, &hostile)?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("(a|b)*a(a|b)"), "{body}");
    let (status, body) = api.put("/log-level", &auth, "h2=warn,info")?;
    assert_eq!((status, body.trim()), (200, "h2=warn,info"), "{body}");
    // Debug lines appear only once the filter says so.
    let accepted = || agent.log().matches("connection accepted").count();
    grpc_client(&agent.target(), &["call"])?;
    assert_eq!(accepted(), 0, "debug logged at info:\n{}", agent.log());
    let (status, body) = api.put("/log-level", &auth, "goaway_agent=debug,info")?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(agent.get("/log-level")?.1.trim(), body.trim());
    grpc_client(&agent.target(), &["call"])?;
    wait_for(Duration::from_secs(10), "a debug line", || {
        Ok(accepted() >= 1)
    })?;
    Ok(())
}

fn agent_at_dead_upstream() -> Result<Agent> {
    agent(goaway_tests::free_port()).start()
}

#[test]
fn metrics_expose_every_name_the_spec_lists() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    let (status, _) = agent.get("/metrics")?;
    assert_eq!(status, 200);
    let m = agent.metrics()?;
    let missing: Vec<_> = SPEC_METRICS.iter().filter(|n| !m.has(n)).collect();
    assert!(missing.is_empty(), "missing {missing:?} in:\n{}", m.text);
    for reason in [
        "max_age",
        "max_idle",
        "too_many_pings",
        "graceful_stop",
        "rebalance",
    ] {
        m.value(&format!("goaway_goaways_sent_total{{reason=\"{reason}\"}}"))?;
    }
    for result in ["ok", "error"] {
        m.value(&format!(
            "goaway_policy_reloads_total{{result=\"{result}\"}}"
        ))?;
    }
    assert!(
        m.has("goaway_connection_duration_seconds_bucket"),
        "not a histogram:\n{}",
        m.text
    );
    Ok(())
}

#[test]
fn metrics_counters_move_as_calls_run() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    let before = agent.metrics()?;
    let r = grpc_client(&agent.target(), &["--seconds", "1", "loop"])?;
    assert_eq!(r["failed"], 0, "{r}");
    let calls = r["ok"].as_f64().unwrap();
    assert!(calls > 10.0, "{r}");
    // The client has exited; its connection closes.
    wait_for(Duration::from_secs(5), "the connection to close", || {
        Ok(agent.metrics()?.value("goaway_connections_open")? == 0.0)
    })?;
    let after = agent.metrics()?;
    let delta = |name: &str| -> Result<f64> { Ok(after.value(name)? - before.value(name)?) };
    assert_eq!(delta("goaway_streams_total")?, calls);
    assert_eq!(delta("goaway_connections_total")?, 1.0);
    assert_eq!(delta("goaway_connection_duration_seconds_count")?, 1.0);
    assert_eq!(after.value("goaway_streams_active")?, 0.0);
    assert!(after.value("goaway_upstream_connects_total")? >= 1.0);
    Ok(())
}

#[test]
fn max_connection_age_moves_grpcio_clients_without_failed_calls() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let (agent, _dir) = agent_with_policy(port, "server: {maxConnectionAge: 500ms}")?;
    let r = grpc_client(&agent.target(), &["--seconds", "4", "loop"])?;
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["ok"].as_u64().unwrap() > 50, "{r}");
    let m = agent.metrics()?;
    // Four seconds of half-second connections: about eight; three for slack.
    assert!(
        m.value("goaway_goaways_sent_total{reason=\"max_age\"}")? >= 3.0,
        "{}",
        m.text
    );
    assert!(m.value("goaway_connections_total")? >= 3.0, "{}", m.text);
    Ok(())
}

#[test]
fn connections_lists_each_client_connection_with_its_fields() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    let idle_a = h2_peer(
        "h2-idle",
        &[
            "client",
            "--target",
            &agent.target(),
            "--seconds",
            "30",
            "idle",
        ],
    )?;
    let idle_b = h2_peer(
        "h2-idle",
        &[
            "client",
            "--target",
            &agent.target(),
            "--seconds",
            "30",
            "idle",
        ],
    )?;
    let ports: Vec<u64> = [&idle_a, &idle_b]
        .iter()
        .map(|p| p.json_where(Duration::from_secs(20), |v| v["event"] == "connected"))
        .map(|v| v.map(|v| v["local_port"].as_u64().unwrap()))
        .collect::<Result<_>>()?;
    let call = common::spawn_grpc_client(
        &agent.target(),
        &["--timeout", "60", "--metadata", "x-sleep-ms=3000", "call"],
    )?;
    let mut conns = Vec::new();
    wait_for(
        Duration::from_secs(20),
        "three connections, one busy",
        || {
            conns = agent.connections()?;
            Ok(conns.len() == 3 && conns.iter().any(|c| c["active_streams"] == 1))
        },
    )?;
    for c in &conns {
        for field in [
            "peer",
            "age_seconds",
            "idle_seconds",
            "active_streams",
            "pings_sent",
            "pings_received",
            "strikes",
            "state",
        ] {
            assert!(c.get(field).is_some(), "{field} missing: {c}");
        }
        assert_eq!(c["state"], "open", "{c}");
        assert!(c["age_seconds"].as_f64().unwrap() >= 0.0, "{c}");
    }
    let peer_of = |port: u64| -> Option<&Value> {
        conns
            .iter()
            .find(|c| c["peer"].as_str() == Some(&format!("127.0.0.1:{port}")))
    };
    for port in &ports {
        let c =
            peer_of(*port).unwrap_or_else(|| panic!("no entry for peer port {port}: {conns:?}"));
        assert_eq!(c["active_streams"], 0, "{c}");
    }
    let busy: Vec<_> = conns.iter().filter(|c| c["active_streams"] == 1).collect();
    assert_eq!(busy.len(), 1, "{conns:?}");
    assert_eq!(
        busy[0]["idle_seconds"], 0.0,
        "a connection with a stream is not idle: {conns:?}"
    );
    let r = call.finish_json(Duration::from_secs(30))?;
    assert_eq!(r["code"], "OK", "{r}");
    // One gone: one fewer entry.
    drop(idle_a);
    wait_for(Duration::from_secs(10), "the entry to go", || {
        Ok(agent.connections()?.len() == 1)
    })?;
    Ok(())
}

#[test]
fn keepalive_pings_go_to_idle_clients_and_are_counted() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let (agent, _dir) = agent_with_policy(port, "server: {time: 500ms, timeout: 5s}")?;
    let idle = h2_peer(
        "h2-idle",
        &[
            "client",
            "--target",
            &agent.target(),
            "--seconds",
            "3",
            "idle",
        ],
    )?;
    // Waited for rather than slept for: Python starts slowly on a loaded
    // machine, and the client's 3 seconds start when it has connected.
    let mut conns = Vec::new();
    wait_for(Duration::from_secs(20), "two keepalive pings", || {
        conns = agent.connections()?;
        Ok(conns.len() == 1 && conns[0]["pings_sent"].as_u64() >= Some(2))
    })?;
    let sent = conns[0]["pings_sent"].as_u64().unwrap();
    let seen = collect_until_exit(idle, Duration::from_secs(20))?;
    let pings = events(&seen, "ping").len() as u64;
    assert!(
        pings >= 2,
        "the client saw {pings} pings in 3s at a 500ms keepalive"
    );
    assert!(sent >= 2, "{conns:?}");
    assert!(agent.metrics()?.value("goaway_pings_sent_total")? >= sent as f64);
    // The client answered every ping: no timeouts.
    assert_eq!(agent.metrics()?.value("goaway_ping_timeouts_total")?, 0.0);
    Ok(())
}

#[test]
fn policy_shows_the_effective_policy_with_defaults_filled_in() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let (agent, dir) = agent_with_policy(
        port,
        "server:\n  maxConnectionAge: 90s\nenforcement:\n  permitWithoutStream: true\n",
    )?;
    let p = agent.policy()?;
    assert_eq!(p["server"]["maxConnectionAge"], "1m30s", "{p}");
    assert_eq!(p["enforcement"]["permitWithoutStream"], true, "{p}");
    // Defaults (docs/design.md §2.1).
    assert_eq!(p["server"]["time"], "2h0m0s", "{p}");
    assert_eq!(p["server"]["timeout"], "20s", "{p}");
    assert_eq!(p["server"]["maxConnectionIdle"], "infinite", "{p}");
    assert_eq!(p["enforcement"]["minTime"], "5m0s", "{p}");
    assert_eq!(p["drain"]["delay"], "0s", "{p}");
    assert_eq!(p["drain"]["timeout"], "30s", "{p}");
    assert_eq!(p["drain"]["goawayAckTimeout"], "5s", "{p}");
    let file = dir.path().join("policy.yaml");
    assert_eq!(p["source"]["file"], file.display().to_string(), "{p}");

    // No file: all defaults.
    let plain = agent_without_policy(port)?;
    let p = plain.policy()?;
    assert_eq!(p["server"]["maxConnectionAge"], "infinite", "{p}");
    assert_eq!(p["enforcement"]["permitWithoutStream"], false, "{p}");
    Ok(())
}

fn agent_without_policy(port: u16) -> Result<Agent> {
    agent(port).start()
}

#[test]
fn grpcio_client_pinging_too_often_gets_too_many_pings() -> Result<()> {
    // Defaults: minTime 5m, no pings without streams.
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    let mut cmd = grpc_peer_command(&[
        "client",
        "--target",
        &agent.target(),
        "--option",
        "grpc.keepalive_time_ms=100",
        "--option",
        "grpc.keepalive_permit_without_calls=1",
        "--option",
        "grpc.http2.max_pings_without_data=0",
        // C-core pings at most once a second without data; strikes 1-3
        // need four more seconds after the first call.
        "--seconds",
        "8",
        "idle",
    ])?;
    cmd.env("GRPC_VERBOSITY", "ERROR");
    let mut client = Proc::spawn_capturing("grpcio-client", &mut cmd)?;
    client.wait_output(Duration::from_secs(60))?;
    let stderr = client.stderr();
    let r = client.finish_json(Duration::from_secs(5))?;
    assert!(
        stderr.contains("too_many_pings"),
        "grpcio did not report too_many_pings; stderr:\n{stderr}"
    );
    assert!(r["ok"].as_u64().unwrap() >= 1, "{r}");
    let m = agent.metrics()?;
    assert!(
        m.value("goaway_goaways_sent_total{reason=\"too_many_pings\"}")? >= 1.0,
        "{}",
        m.text
    );
    assert!(m.value("goaway_ping_strikes_total")? >= 3.0, "{}", m.text);
    Ok(())
}

#[test]
fn flags_can_come_from_the_environment() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let mut cmd = Command::new(BIN);
    cmd.args(["run"])
        .env("GOAWAY_LOG_FORMAT", "json")
        .env("GOAWAY_LISTEN", "127.0.0.1:0")
        .env("GOAWAY_ADMIN", "127.0.0.1:0")
        .env("GOAWAY_UPSTREAM", format!("127.0.0.1:{port}"))
        .env_remove("GOAWAY_DRAIN_TOKEN");
    let agent = Agent::attach(Proc::spawn_capturing("goaway-agent", &mut cmd)?)?;
    let r = grpc_client(&agent.target(), &["call"])?;
    assert_eq!(r["code"], "OK", "{r}");
    Ok(())
}

/// Parses `text` with the official Prometheus Python client.
fn parse_with_prometheus_client(format: &str, text: &str) -> Result<Value> {
    use std::io::Write;
    goaway_tests::require_python_module("prometheus_client", "prometheus-client")?;
    let script = goaway_tests::repo_root().join("tests/python/parse_metrics.py");
    let mut child = Command::new(goaway_tests::python())
        .arg(script)
        .arg(format)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "prometheus_client rejected the {format} text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn metrics_parse_with_prometheus_client_in_both_formats() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    let r = grpc_client(&agent.target(), &["--seconds", "0.5", "loop"])?;
    assert_eq!(r["failed"], 0, "{r}");
    let url = agent.api().url("/metrics");

    // Without an Accept header: Prometheus text format 0.0.4.
    let (status, classic) = goaway_tests::agent::http("GET", &url, &[])?;
    assert_eq!(status, 200);
    // prometheus_client's classic parser also reads OpenMetrics, so check
    // the format itself: counters declared by their `_total` name, no EOF.
    assert!(
        classic.contains("# TYPE goaway_connections_total counter\n"),
        "{classic}"
    );
    assert!(!classic.contains("# EOF"), "{classic}");
    let parsed = parse_with_prometheus_client("classic", &classic)?;
    // And with it, as Prometheus asks: OpenMetrics.
    let (status, om) = goaway_tests::agent::http(
        "GET",
        &url,
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    )?;
    assert_eq!(status, 200);
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    let parsed_om = parse_with_prometheus_client("openmetrics", &om)?;

    for parsed in [&parsed, &parsed_om] {
        let samples = parsed["samples"].as_object().unwrap();
        let families = parsed["families"].as_object().unwrap();
        for name in SPEC_METRICS {
            // A sample by that name (counters, gauges, labelled or not), or
            // a family (the histogram's samples are _bucket, _sum, _count).
            assert!(
                samples
                    .keys()
                    .any(|k| k == name || k.starts_with(&format!("{name}{{")))
                    || families.contains_key(name),
                "{name} missing from {parsed}"
            );
        }
        let streams = samples["goaway_streams_total"].as_f64().unwrap();
        assert!(streams >= r["ok"].as_f64().unwrap(), "{parsed}");
    }
    assert_eq!(
        parsed["families"]["goaway_connection_duration_seconds"],
        "histogram"
    );
    assert_eq!(parsed["families"]["goaway_connections_open"], "gauge");
    Ok(())
}
