//! Who may drain an agent, on real network namespaces (root only): a
//! "pod" whose agent runs as injected (`--admin-allow gateway`, a drain
//! token), a second pod on the same bridge that has read the token (as
//! anyone allowed to `get pods` can), and the "node" — the root namespace,
//! the pods' gateway, where the kubelet's preStop hook comes from.
//!
//! The other pod is refused `/drain`, `PUT /log-level` and `/connections`
//! (403) even with the token, and can still read `/metrics` and
//! `/readyz`; the node drains with the token; the pod itself (loopback)
//! too.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::BIN;
use common::netns::{Net, in_netns, is_root};
use goaway_tests::Proc;
use goaway_tests::agent::{Agent, wait_for};
use goaway_transport::test_util::skip;

const TOKEN: &str = "token-from-the-pod-spec";
const AGENT_PORT: u16 = 15001;
const ADMIN_PORT: u16 = 15052;

/// `goaway-agent drain --admin ADDR` with the token, run in `ns` (`None`:
/// the node): its exit code and what it printed.
fn drain_from(ns: Option<&str>, admin: &str) -> Result<(i32, String)> {
    let mut cmd = Command::new(BIN);
    cmd.args(["drain", "--admin", admin, "--timeout", "30s"])
        .env("GOAWAY_DRAIN_TOKEN", TOKEN);
    let out = match ns {
        Some(ns) => in_netns(ns, &cmd).output()?,
        None => cmd.output()?,
    };
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// `curl` from `ns`: the HTTP status of `METHOD url` with the token.
fn curl_from(ns: &str, method: &str, url: &str) -> Result<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--data", "debug", url]);
    let out = in_netns(ns, &cmd).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn only_the_pod_and_its_node_may_drain_even_with_the_token() -> Result<()> {
    if !is_root() {
        skip("network namespaces need root");
        return Ok(());
    }
    let mut net = Net::new()?;
    let pod = net.host("pod", 10)?;
    let other = net.host("other", 20)?;
    let pod_ip = net.ip(10);
    let mut cmd = Command::new(BIN);
    cmd.env("GOAWAY_DRAIN_TOKEN", TOKEN)
        .env("GOAWAY_LOG", "info,h2=warn")
        .args(["--log-format", "json", "run"])
        .args(["--listen", &format!("0.0.0.0:{AGENT_PORT}")])
        .args(["--admin", &format!("0.0.0.0:{ADMIN_PORT}")])
        .args(["--upstream", &format!("{pod_ip}:50051")]);
    let proc = Proc::spawn_capturing("agent", &mut in_netns(&pod, &cmd))?;
    wait_for(Duration::from_secs(20), "the agent to serve", || {
        Ok(proc.stderr().contains("\"serving\""))
    })
    .with_context(|| format!("its log: {}", proc.stderr()))?;
    let agent = Agent {
        proc,
        listen: format!("{pod_ip}:{AGENT_PORT}").parse()?,
        admin: format!("{pod_ip}:{ADMIN_PORT}").parse()?,
    };
    agent.wait_ready(Duration::from_secs(10))?;
    let admin = agent.admin.to_string();
    let url = |path: &str| format!("http://{admin}{path}");

    // Another pod, token in hand: refused, and nothing changes.
    let (code, said) = drain_from(Some(&other), &admin)?;
    ensure!(code != 0 && said.contains("403"), "{code}: {said}");
    ensure!(curl_from(&other, "PUT", &url("/log-level"))? == "403");
    ensure!(curl_from(&other, "GET", &url("/connections"))? == "403");
    // Probes and scrapers still get their answers.
    ensure!(curl_from(&other, "GET", &url("/metrics"))? == "200");
    ensure!(
        curl_from(&other, "GET", &url("/readyz"))? == "200",
        "still ready"
    );
    ensure!(
        agent
            .proc
            .stderr()
            .contains("request from outside the pod and its node refused"),
        "{}",
        agent.proc.stderr()
    );

    // The node, where the kubelet's preStop hook comes from: drains.
    let (code, said) = drain_from(None, &admin)?;
    ensure!(code == 0, "{code}: {said}");
    ensure!(said.contains("connections_drained"), "{said}");
    ensure!(agent.readyz()? == 503, "draining");
    Ok(())
}
