//! The command line (docs/design.md §5.1): `check-config` exit codes and
//! messages, and `run` refusing bad input before it binds a port.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::run_bin;
use goaway_tests::{Scratch, free_port};

fn check(policy: &str) -> Result<(i32, String, String)> {
    let dir = Scratch::new("cli")?;
    let file = dir.write("policy.yaml", policy)?;
    run_bin(&["check-config", file.to_str().unwrap()], &[])
}

/// Fails unless `check-config` rejects `policy` naming `field` (and, if
/// given, saying `reason`).
fn assert_rejected(policy: &str, field: &str, reason: Option<&str>) -> Result<()> {
    let (code, stdout, stderr) = check(policy)?;
    assert_ne!(code, 0, "accepted {policy:?}: {stdout}");
    assert!(
        stderr.contains(field),
        "{policy:?}: the message should name {field}: {stderr}"
    );
    if let Some(reason) = reason {
        assert!(
            stderr.contains(reason),
            "{policy:?}: the message should say {reason:?}: {stderr}"
        );
    }
    assert!(!stdout.contains("valid"), "{stdout}");
    Ok(())
}

#[test]
fn check_config_accepts_a_valid_file_and_prints_the_effective_policy() -> Result<()> {
    let (code, stdout, stderr) = check(
        "server:\n  time: 30s\n  maxConnectionAge: 10m\n  maxConnectionAgeGrace: 1m\n\
         enforcement:\n  minTime: 10s\n  permitWithoutStream: true\n\
         upstream:\n  time: 30s\n\
         drain:\n  delay: 5s\n  timeout: 45s\n",
    )?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(
        stdout.contains("10m0s"),
        "the effective policy should be shown: {stdout}"
    );
    // JSON is YAML: accepted too; and an empty file is all defaults.
    let (code, _, stderr) = check("{\"server\": {\"maxConnectionIdle\": \"5m\"}}")?;
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = check("")?;
    assert_eq!(code, 0, "{stderr}");
    Ok(())
}

#[test]
fn check_config_rejects_an_unparsable_duration_naming_the_field() -> Result<()> {
    assert_rejected("server:\n  time: ten seconds\n", "server.time", None)?;
    assert_rejected("drain: {delay: 5 parsecs}\n", "drain.delay", None)
}

#[test]
fn check_config_rejects_an_unknown_field_naming_it() -> Result<()> {
    assert_rejected("server:\n  maxConectionAge: 1m\n", "maxConectionAge", None)?;
    assert_rejected("keepalive: {time: 1m}\n", "keepalive", None)
}

#[test]
fn check_config_rejects_a_negative_duration_naming_the_field() -> Result<()> {
    assert_rejected("drain: {timeout: -5s}\n", "drain.timeout", Some("negative"))?;
    assert_rejected(
        "server: {maxConnectionAge: -1h}\n",
        "server.maxConnectionAge",
        Some("negative"),
    )
}

#[test]
fn check_config_rejects_a_goaway_ack_timeout_not_below_the_drain_timeout() -> Result<()> {
    assert_rejected(
        "drain: {timeout: 2s, goawayAckTimeout: 5s}\n",
        "drain.goawayAckTimeout",
        None,
    )
}

#[test]
fn check_config_warns_below_grpc_minimums_but_accepts() -> Result<()> {
    let (code, _, stderr) = check("server: {time: 100ms}\n")?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("server.time"),
        "no warning naming the field: {stderr}"
    );
    Ok(())
}

#[test]
fn check_config_fails_on_a_missing_file() -> Result<()> {
    let (code, _, stderr) = run_bin(&["check-config", "/nonexistent/goaway/policy.yaml"], &[])?;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("/nonexistent/goaway/policy.yaml"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn run_with_an_invalid_policy_exits_non_zero_before_binding_a_port() -> Result<()> {
    let dir = Scratch::new("cli")?;
    let bad = dir.write("bad.yaml", "server: {maxConnectionIdle: -1s}\n")?;
    let good = dir.write("good.yaml", "server: {maxConnectionIdle: 1s}\n")?;
    // The listen port is taken: an agent that bound first would fail
    // on that instead of on the policy.
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let listen = taken.local_addr()?.to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let run = |policy: &std::path::Path| {
        run_bin(
            &[
                "run",
                "--listen",
                &listen,
                "--admin",
                &admin,
                "--upstream",
                "127.0.0.1:1",
                "--policy",
                policy.to_str().unwrap(),
            ],
            &[],
        )
    };
    let start = Instant::now();
    let (code, _, stderr) = run(&bad)?;
    assert_ne!(code, 0);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(stderr.contains("server.maxConnectionIdle"), "{stderr}");
    assert!(
        !stderr.contains("--listen"),
        "it tried to bind before validating: {stderr}"
    );
    // Control: with a valid policy the same command fails on the port.
    let (code, _, stderr) = run(&good)?;
    assert_ne!(code, 0);
    assert!(stderr.contains("--listen"), "{stderr}");
    drop(taken);
    Ok(())
}

#[test]
fn run_rejects_a_zero_connect_timeout_and_an_empty_drain_token() -> Result<()> {
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let base = [
        "run",
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--upstream",
        "127.0.0.1:1",
    ];
    let mut args = base.to_vec();
    args.extend(["--upstream-connect-timeout", "0s"]);
    let (code, _, stderr) = run_bin(&args, &[])?;
    assert_ne!(code, 0);
    assert!(stderr.contains("--upstream-connect-timeout"), "{stderr}");
    let mut args = base.to_vec();
    args.extend(["--drain-token", "  "]);
    let (code, _, stderr) = run_bin(&args, &[])?;
    assert_ne!(code, 0);
    assert!(stderr.contains("drain-token"), "{stderr}");
    Ok(())
}
