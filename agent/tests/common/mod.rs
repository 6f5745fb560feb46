//! Shared by the agent's black-box tests: the binary and its peers.
#![allow(dead_code)]

pub(crate) mod netns;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use goaway_tests::agent::AgentBuilder;
use goaway_tests::{Proc, grpc_peer, grpc_peer_command};
use serde_json::Value;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_goaway-agent");

/// An agent in front of `127.0.0.1:{port}`.
pub(crate) fn agent(upstream_port: u16) -> AgentBuilder {
    AgentBuilder::new(BIN, format!("127.0.0.1:{upstream_port}"))
}

/// Runs the grpcio client with `args` and returns its JSON summary.
pub(crate) fn grpc_client(target: &str, args: &[&str]) -> Result<Value> {
    let mut all = vec!["client", "--target", target];
    all.extend_from_slice(args);
    grpc_peer("grpcio-client", &all)?.finish_json(Duration::from_secs(120))
}

/// Starts the grpcio client with `args` (to run while the test acts).
pub(crate) fn spawn_grpc_client(target: &str, args: &[&str]) -> Result<Proc> {
    let mut all = vec!["client", "--target", target];
    all.extend_from_slice(args);
    let mut cmd = grpc_peer_command(&all)?;
    cmd.env("GRPC_VERBOSITY", "ERROR");
    Proc::spawn("grpcio-client", &mut cmd)
}

/// `goaway-agent ARGS…`, run to completion: (exit code, stdout, stderr).
pub(crate) fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Result<(i32, String, String)> {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("GOAWAY_DRAIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The events the h2 peer printed so far with `event == kind`.
pub(crate) fn events(all: &[Value], kind: &str) -> Vec<Value> {
    all.iter().filter(|v| v["event"] == kind).cloned().collect()
}

/// Reads the h2 peer's JSON lines until it exits (or `timeout`).
pub(crate) fn collect_until_exit(mut p: Proc, timeout: Duration) -> Result<Vec<Value>> {
    if let Err(e) = p.wait_output(timeout) {
        let printed = p.drain_json();
        return Err(e.context(format!("printed {printed:?}")));
    }
    Ok(p.drain_json())
}
