//! The drain (docs/design.md §6), black-box: `/drain`, `goaway-agent
//! drain` and SIGTERM against a real agent with grpcio and hyper-h2
//! clients.

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;
use common::{agent, collect_until_exit, events, run_bin, spawn_grpc_client};
use goaway_tests::agent::{Agent, wait_for};
use goaway_tests::{Proc, Scratch, free_port, grpc_server, h2_peer};
use serde_json::Value;

/// An agent in front of a fresh grpcio server, with `policy` (YAML).
fn agent_with_policy(policy: &str) -> Result<(Agent, Proc, Scratch)> {
    let (server, port) = grpc_server(&[])?;
    let dir = Scratch::new("drain")?;
    let file = dir.write("policy.yaml", policy)?;
    let agent = agent(port).policy(file).start()?;
    Ok((agent, server, dir))
}

/// Whether a TCP connection to `addr` is refused (vs accepted).
fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => false,
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
    }
}

/// Waits until `n` client connections are open with `streams` active
/// streams in all.
fn wait_connections(agent: &Agent, n: usize, streams: u64) -> Result<()> {
    let mut last = Vec::new();
    wait_for(Duration::from_secs(20), "client connections", || {
        last = agent.connections()?;
        let active: u64 = last
            .iter()
            .filter_map(|c| c["active_streams"].as_u64())
            .sum();
        Ok(last.len() == n && active == streams)
    })
    .map_err(|e| e.context(format!("/connections: {last:?}")))
}

/// A grpcio call the app holds for `ms`, through `agent`.
fn held_call(agent: &Agent, ms: u64) -> Result<Proc> {
    spawn_grpc_client(
        &agent.target(),
        &[
            "--timeout",
            "60",
            "--metadata",
            &format!("x-sleep-ms={ms}"),
            "call",
        ],
    )
}

/// An HTTP/2 connection with no streams, printing what it receives.
fn idle_h2_client(agent: &Agent) -> Result<Proc> {
    h2_peer(
        "h2-idle",
        &[
            "client",
            "--target",
            &agent.target(),
            "--seconds",
            "30",
            "idle",
        ],
    )
}

#[test]
fn drain_fails_readiness_waits_the_delay_refuses_connections_and_finishes_in_flight_calls()
-> Result<()> {
    let (agent, _server, _dir) = agent_with_policy("drain: {delay: 1s, timeout: 20s}")?;
    let idle = idle_h2_client(&agent)?;
    wait_connections(&agent, 1, 0)?;
    let call = held_call(&agent, 3000)?;
    wait_connections(&agent, 2, 1)?;

    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let api = agent.api();
        let drain = s.spawn(move || api.drain(&[]));
        // Readiness fails at once.
        wait_for(Duration::from_millis(500), "readiness to fail", || {
            Ok(agent.readyz()? == 503)
        })?;
        // During drain.delay the listener still accepts.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!refused(agent.listen), "listener closed before drain.delay");
        // Then it closes.
        wait_for(
            Duration::from_secs(5),
            "new connections to be refused",
            || Ok(refused(agent.listen)),
        )?;
        let closed_after = start.elapsed();
        assert!(
            closed_after >= Duration::from_millis(900),
            "listener closed after {closed_after:?}, before drain.delay"
        );

        // The held call finishes normally.
        let r = call.finish_json(Duration::from_secs(30))?;
        assert_eq!(r["code"], "OK", "{r}");
        assert_eq!(r["echo_ok"], true, "{r}");

        let summary = drain.join().unwrap()?;
        assert_eq!(summary["connections_drained"], 2, "{summary}");
        assert_eq!(summary["connections_hard_closed"], 0, "{summary}");
        assert!(
            summary["streams_completed"].as_u64().unwrap() >= 1,
            "{summary}"
        );
        let duration = summary["duration_seconds"].as_f64().unwrap();
        assert!((1.0..20.0).contains(&duration), "{summary}");
        // No word from an operator: the whole delay, then the GOAWAYs.
        assert_eq!(summary["goaway_on"], "delay", "{summary}");
        assert!(
            summary["goaway_after_seconds"].as_f64().unwrap() >= 1.0,
            "{summary}"
        );
        Ok(())
    })?;
    // The listener closed before the GOAWAYs went out: no connection can
    // be accepted after them.
    let log = agent.log();
    let closed = log.find("listener closed; new connections are refused");
    let goaway = log.find("GOAWAY sent to every connection");
    assert!(
        closed.is_some() && goaway.is_some() && closed < goaway,
        "{log}"
    );

    // The idle connection got GOAWAY graceful_stop (first with the
    // maximum stream id, RFC 9113 §6.8) and was closed.
    let seen = collect_until_exit(idle, Duration::from_secs(40))?;
    let goaways = events(&seen, "goaway");
    assert!(
        !goaways.is_empty(),
        "idle connection got no GOAWAY: {seen:?}"
    );
    assert_eq!(goaways[0]["debug"], "graceful_stop", "{seen:?}");
    assert_eq!(goaways[0]["code"], 0, "{seen:?}");
    assert_eq!(goaways[0]["last_stream_id"], 2_147_483_647u64, "{seen:?}");
    // After the PING round trip, the second GOAWAY names the last stream
    // actually accepted: none.
    assert_eq!(goaways.len(), 2, "{seen:?}");
    assert_eq!(goaways[1]["last_stream_id"], 0, "{seen:?}");
    assert_eq!(
        events(&seen, "closed").len(),
        1,
        "idle connection not closed: {seen:?}"
    );

    let m = agent.metrics()?;
    assert_eq!(
        m.value("goaway_goaways_sent_total{reason=\"graceful_stop\"}")?,
        2.0
    );
    assert!(m.value("goaway_drain_duration_seconds")? >= 1.0);
    assert_eq!(m.value("goaway_connections_open")?, 0.0);
    // The process stays up after the drain.
    assert_eq!(agent.get("/healthz")?.0, 200);
    assert_eq!(agent.readyz()?, 503);
    Ok(())
}

#[test]
fn drain_hard_closes_streams_still_open_at_drain_timeout() -> Result<()> {
    let (agent, _server, _dir) =
        agent_with_policy("drain: {timeout: 1s, goawayAckTimeout: 500ms}")?;
    let call = held_call(&agent, 30_000)?;
    wait_connections(&agent, 1, 1)?;
    let start = Instant::now();
    let summary = agent.drain(&[])?;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "drain took {:?}",
        start.elapsed()
    );
    assert_eq!(summary["connections_hard_closed"], 1, "{summary}");
    assert_eq!(summary["streams_cut"], 1, "{summary}");
    assert_eq!(summary["connections_drained"], 0, "{summary}");
    let r = call.finish_json(Duration::from_secs(30))?;
    assert_ne!(r["code"], "OK", "a cut call cannot succeed: {r}");
    assert!(r["elapsed_ms"].as_u64().unwrap() < 10_000, "{r}");
    assert!(agent.metrics()?.value("goaway_hard_closes_total")? >= 1.0);
    Ok(())
}

#[test]
fn concurrent_drain_requests_share_one_drain_and_later_ones_get_its_summary() -> Result<()> {
    let (agent, _server, _dir) = agent_with_policy("drain: {delay: 500ms}")?;
    let _idle = idle_h2_client(&agent)?;
    wait_connections(&agent, 1, 0)?;
    let bodies: Vec<(u16, String)> = std::thread::scope(|s| {
        let api = agent.api();
        let handles: Vec<_> = (0..5)
            .map(|_| s.spawn(move || api.post("/drain", &[])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Result<_>>()
    })?;
    for (status, body) in &bodies {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body, &bodies[0].1,
            "concurrent callers got different summaries"
        );
    }
    let summary: Value = serde_json::from_str(&bodies[0].1)?;
    assert_eq!(summary["connections_drained"], 1, "{summary}");
    // Idempotent: a later call (GET too) answers the same at once.
    let start = Instant::now();
    let (status, again) = agent.get("/drain")?;
    assert_eq!(status, 200);
    assert_eq!(again, bodies[0].1);
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "the second drain waited the delay again"
    );
    // One drain: one GOAWAY reason count for the one connection.
    let m = agent.metrics()?;
    assert_eq!(
        m.value("goaway_goaways_sent_total{reason=\"graceful_stop\"}")?,
        1.0
    );
    Ok(())
}

#[test]
fn a_drain_with_a_floor_answers_no_sooner_than_it_and_shares_the_drain() -> Result<()> {
    // No delay: the drain itself is over at once.
    let (agent, _server, _dir) = agent_with_policy("drain: {delay: 0s}")?;
    let start = Instant::now();
    let (floored, plain) = std::thread::scope(|s| {
        let api = agent.api();
        let floored = s.spawn(move || api.get("/drain?min=5s").map(|r| (r, start.elapsed())));
        let api = agent.api();
        let plain = s.spawn(move || api.get("/drain").map(|r| (r, start.elapsed())));
        (floored.join().unwrap(), plain.join().unwrap())
    });
    let ((status, floored_body), floored_after) = floored?;
    let ((_, plain_body), plain_after) = plain?;
    assert_eq!(status, 200, "{floored_body}");
    assert!(
        floored_after >= Duration::from_secs(5),
        "answered after {floored_after:?}, before its floor"
    );
    // The caller without a floor is not held by another's (a generous
    // bound: the drain itself has no delay).
    assert!(
        plain_after < Duration::from_secs(4),
        "the plain drain waited {plain_after:?}"
    );
    assert_eq!(floored_body, plain_body, "one drain, one summary");
    // An unreadable floor is ignored: the drain is answered as usual.
    let (status, body) = agent.get("/drain?min=5")?;
    assert_eq!((status, body), (200, plain_body));
    Ok(())
}

/// `/drain` refuses without the token and with a wrong one (and does not
/// start a drain), and accepts the right one.
fn check_drain_token(agent: &Agent, token: &str) -> Result<()> {
    let (status, _) = agent.post("/drain", &[])?;
    assert_eq!(status, 401, "no token");
    let (status, _) = agent.post("/drain", &[("Authorization", "Bearer wrong-token")])?;
    assert_eq!(status, 401, "wrong token");
    let (status, _) = agent.get("/drain")?;
    assert_eq!(status, 401, "GET without token");
    assert_eq!(agent.readyz()?, 200, "a refused request started the drain");
    let bearer = format!("Bearer {token}");
    let summary = agent.drain(&[("Authorization", &bearer)])?;
    assert!(summary.get("connections_drained").is_some(), "{summary}");
    assert_eq!(agent.readyz()?, 503);
    Ok(())
}

#[test]
fn drain_token_from_flag_env_or_file_is_required() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let from_flag = agent(port).args(["--drain-token", "flag-s3cret"]).start()?;
    check_drain_token(&from_flag, "flag-s3cret")?;

    let from_env = agent(port)
        .env("GOAWAY_DRAIN_TOKEN", "env-s3cret")
        .start()?;
    check_drain_token(&from_env, "env-s3cret")?;

    let dir = Scratch::new("token")?;
    // Trailing newline, as `echo` or a Secret volume leaves it.
    let file = dir.write("token", "file-s3cret\n")?;
    let from_file = agent(port)
        .args(["--drain-token-file".to_string(), file.display().to_string()])
        .start()?;
    check_drain_token(&from_file, "file-s3cret")?;
    Ok(())
}

#[test]
fn drain_subcommand_prints_the_summary_and_exits_zero() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).args(["--drain-token", "hook-token"]).start()?;
    let admin = agent.admin.to_string();
    // Without the token: non-zero, saying why, and no drain.
    let (code, _, stderr) = run_bin(&["drain", "--admin", &admin], &[])?;
    assert_ne!(code, 0);
    assert!(stderr.contains("401"), "{stderr}");
    assert_eq!(agent.readyz()?, 200);

    let (code, stdout, stderr) =
        run_bin(&["drain", "--admin", &admin, "--token", "hook-token"], &[])?;
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim())?;
    for field in [
        "connections_drained",
        "streams_completed",
        "connections_hard_closed",
        "duration_seconds",
    ] {
        assert!(
            summary.get(field).is_some(),
            "summary lacks {field}: {stdout}"
        );
    }
    assert_eq!(agent.readyz()?, 503);
    // Again (idempotent), everything from the environment, the address in
    // the `:port` form `run --admin` accepts (an exec hook shares the
    // sidecar's environment).
    let port_only = format!(":{}", agent.admin.port());
    let (code, again, stderr) = run_bin(
        &["drain"],
        &[
            ("GOAWAY_ADMIN", &port_only),
            ("GOAWAY_DRAIN_TOKEN", "hook-token"),
            ("GOAWAY_DRAIN_TIMEOUT", "30s"),
        ],
    )?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again.trim(), stdout.trim());
    Ok(())
}

#[test]
fn drain_subcommand_fails_when_no_agent_answers() -> Result<()> {
    let admin = format!("127.0.0.1:{}", free_port());
    let (code, stdout, stderr) = run_bin(&["drain", "--admin", &admin, "--timeout", "5s"], &[])?;
    assert_ne!(code, 0, "{stdout}");
    assert!(stderr.contains(&admin), "{stderr}");
    // A timeout from the environment that cannot be parsed is refused.
    let (code, _, stderr) = run_bin(
        &["drain", "--admin", &admin],
        &[("GOAWAY_DRAIN_TIMEOUT", "soon")],
    )?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");
    Ok(())
}

#[test]
fn sigterm_without_a_prior_drain_drains_then_exits_zero() -> Result<()> {
    let (mut agent, _server, _dir) = agent_with_policy("drain: {timeout: 20s}")?;
    let call = held_call(&agent, 2000)?;
    wait_connections(&agent, 1, 1)?;
    agent.proc.signal("TERM")?;
    wait_for(Duration::from_secs(2), "readiness to fail", || {
        Ok(agent.readyz().unwrap_or(503) == 503)
    })?;
    wait_for(
        Duration::from_secs(5),
        "new connections to be refused",
        || Ok(refused(agent.listen)),
    )?;
    let r = call.finish_json(Duration::from_secs(30))?;
    assert_eq!(r["code"], "OK", "{r}");
    let status = agent.proc.wait(Duration::from_secs(10))?;
    assert!(status.success(), "{status}");
    let finished = agent.log_events("drain finished");
    assert_eq!(finished.len(), 1, "{}", agent.log());
    assert_eq!(finished[0]["connections_drained"], 1, "{}", agent.log());
    Ok(())
}

#[test]
fn after_a_drain_the_agent_stays_up_until_sigterm_then_exits_zero_at_once() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let mut agent = agent(port).start()?;
    let summary = agent.drain(&[])?;
    assert_eq!(summary["connections_drained"], 0, "{summary}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        agent.proc.wait(Duration::ZERO).is_err(),
        "exited after the drain"
    );
    assert_eq!(agent.get("/healthz")?.0, 200);
    let start = Instant::now();
    agent.proc.signal("TERM")?;
    let status = agent.proc.wait(Duration::from_secs(5))?;
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "took {:?} to exit",
        start.elapsed()
    );
    Ok(())
}

/// A drain that no SIGTERM follows is not an off switch: `--drain-expiry`
/// after it finished the agent serves again — listener open, ready,
/// calls answered, counted and logged — and a later drain and SIGTERM
/// work as before.
#[test]
fn a_drain_that_no_sigterm_follows_expires_and_the_agent_serves_again() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let mut agent = agent(port).args(["--drain-expiry", "2s"]).start()?;
    let summary = agent.drain(&[])?;
    assert_eq!(summary["connections_hard_closed"], 0, "{summary}");
    let drained = Instant::now();
    assert!(refused(agent.listen), "the listener closed");
    assert_eq!(agent.readyz()?, 503);
    wait_for(Duration::from_secs(20), "readiness to return", || {
        Ok(agent.readyz()? == 200)
    })?;
    let took = drained.elapsed();
    assert!(took >= Duration::from_millis(1900), "back after {took:?}");
    let r = common::grpc_client(&agent.target(), &["call"])?;
    assert_eq!(r["code"], "OK", "{r}");
    let m = agent.metrics()?;
    assert_eq!(m.value("goaway_drains_expired_total")?, 1.0);
    assert!(
        agent
            .log()
            .contains("drain expired: no SIGTERM followed it"),
        "{}",
        agent.log()
    );
    // A drain after that drains again (the listener closes) …
    let summary = agent.drain(&[])?;
    assert_eq!(summary["connections_hard_closed"], 0, "{summary}");
    assert!(refused(agent.listen));
    // … and SIGTERM then exits at once, as after any drain.
    agent.proc.signal("TERM")?;
    let status = agent.proc.wait(Duration::from_secs(5))?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[test]
fn rolling_drain_across_two_agents_under_round_robin_load_fails_no_call() -> Result<()> {
    let (_app1, app1) = grpc_server(&[])?;
    let (_app2, app2) = grpc_server(&[])?;
    let listen1 = format!("127.0.0.1:{}", free_port());
    let listen2 = format!("127.0.0.1:{}", free_port());
    let mut agent1 = agent(app1).listen(&listen1).start()?;
    let mut agent2 = agent(app2).listen(&listen2).start()?;
    let target = format!("ipv4:{listen1},{listen2}");
    let client = spawn_grpc_client(
        &target,
        &[
            "--option",
            "grpc.lb_policy_name=round_robin",
            // As a Kubernetes client's DNS name would give it (see
            // proxy::multi_address_target_authority_passes_through).
            "--option",
            "grpc.default_authority=echo.default.svc:50051",
            "--seconds",
            "16",
            "--threads",
            "4",
            "--interval-ms",
            "0",
            "concurrent",
        ],
    )?;
    let serving = |a: &Agent| -> Result<()> {
        wait_for(Duration::from_secs(20), "the client to connect", || {
            Ok(!a.connections()?.is_empty())
        })
    };
    serving(&agent1)?;
    serving(&agent2)?;
    std::thread::sleep(Duration::from_secs(1));

    // Pod 1 rolls: drain, SIGTERM, a new agent on the same port.
    let summary = agent1.drain(&[])?;
    assert!(
        summary["connections_drained"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert_eq!(summary["connections_hard_closed"], 0, "{summary}");
    agent1.proc.signal("TERM")?;
    assert!(agent1.proc.wait(Duration::from_secs(5))?.success());
    let agent1b = agent(app1).listen(&listen1).start()?;
    serving(&agent1b)?;
    std::thread::sleep(Duration::from_millis(500));

    // Pod 2 rolls.
    let summary = agent2.drain(&[])?;
    assert_eq!(summary["connections_hard_closed"], 0, "{summary}");
    agent2.proc.signal("TERM")?;
    assert!(agent2.proc.wait(Duration::from_secs(5))?.success());

    let r = client.finish_json(Duration::from_secs(60))?;
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["ok"].as_u64().unwrap() > 100, "{r}");
    // The replacement took traffic after pod 2 left.
    assert!(agent1b.metrics()?.value("goaway_streams_total")? > 0.0);
    Ok(())
}

/// The advice the operator gives for a container that keeps its own
/// preStop hook (its Event and `inject` warning): the hook's shell runs
/// this command with the two variables the operator sets on the container.
/// It must drain the agent and wait for the end, with the real curl.
#[test]
fn the_kept_prestop_hook_command_drains_with_the_injected_variables() -> Result<()> {
    use goaway_operator::inject::{ENV_DRAIN_TOKEN, ENV_DRAIN_URL, KEPT_PRE_STOP_CURL};
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).env("GOAWAY_DRAIN_TOKEN", "pod-token").start()?;
    let url = format!("http://{}/drain", agent.admin);
    // A wrong token is refused: the command fails and nothing drains.
    let wrong = std::process::Command::new("sh")
        .args(["-c", KEPT_PRE_STOP_CURL])
        .env(ENV_DRAIN_TOKEN, "other")
        .env(ENV_DRAIN_URL, &url)
        .output()?;
    assert!(!wrong.status.success());
    assert_eq!(agent.readyz()?, 200);
    let out = std::process::Command::new("sh")
        .args(["-c", KEPT_PRE_STOP_CURL])
        .env(ENV_DRAIN_TOKEN, "pod-token")
        .env(ENV_DRAIN_URL, &url)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It answered once the drain had finished: the summary.
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    assert!(summary["duration_seconds"].is_number(), "{summary}");
    assert_eq!(agent.readyz()?, 503);
    Ok(())
}
