//! Redirect-mode interception on real network namespaces (root only; the
//! test says so and passes without doing anything otherwise): two "pods",
//! each a network namespace with a grpc-go app on 0.0.0.0:50051 and an
//! agent on :15001, joined by a bridge to a "client" namespace whose
//! grpc-go client round-robins over `podIP:50051` — the pod IPs, as a
//! headless Service's clients do, so no Service port rename can help.
//!
//! `goaway-agent intercept` puts every one of those calls through the
//! agent (its `/connections` and metrics show them); the agent's own
//! loopback connection to the app is not redirected back to it; a drain
//! sends the clients GOAWAY; a rolling drain across both pods fails no
//! call; `intercept --remove` restores direct traffic and leaves no rule
//! naming the agent's port.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::BIN;
use common::netns::{Net, in_netns, is_root, ok_in, run};
use goaway_tests::agent::{Agent, wait_for};
use goaway_tests::peers::{Peer, finish};
use goaway_tests::{Proc, Scratch};
use goaway_transport::test_util::skip;
use serde_json::Value;

const APP_PORT: u16 = 50051;
const AGENT_PORT: u16 = 15001;
const ADMIN_PORT: u16 = 15052;

/// One "pod": its namespace, app and agent.
struct Pod {
    name: &'static str,
    ns: String,
    ip: String,
    app: Option<Proc>,
    agent: Option<Agent>,
}

impl Pod {
    fn start_app(&mut self) -> Result<()> {
        let mut cmd = Peer::GrpcGo.command()?;
        cmd.args([
            "server",
            "--listen",
            "0.0.0.0",
            "--port",
            &APP_PORT.to_string(),
            "--on-sigterm",
            "exit",
            "--identify",
        ])
        .env("PEER_NAME", self.name);
        let app =
            Proc::spawn_capturing(&format!("{}-app", self.name), &mut in_netns(&self.ns, &cmd))?;
        app.json_where(Duration::from_secs(30), |v| v.get("port").is_some())
            .with_context(|| format!("{} app: {}", self.name, app.stderr()))?;
        self.app = Some(app);
        Ok(())
    }

    fn start_agent(&mut self, policy: &std::path::Path) -> Result<()> {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("GOAWAY_DRAIN_TOKEN")
            .env("GOAWAY_LOG", "info,h2=warn")
            .args(["--log-format", "json", "run"])
            .args(["--listen", &format!("0.0.0.0:{AGENT_PORT}")])
            .args(["--admin", &format!("0.0.0.0:{ADMIN_PORT}")])
            // As the operator injects it: the app on the pod's IP.
            .args(["--upstream", &format!("{}:{APP_PORT}", self.ip)])
            .arg("--policy")
            .arg(policy);
        let proc = Proc::spawn_capturing(
            &format!("{}-agent", self.name),
            &mut in_netns(&self.ns, &cmd),
        )?;
        let what = format!("the {} agent to serve", self.name);
        wait_for(Duration::from_secs(20), &what, || {
            Ok(proc.stderr().contains("\"serving\""))
        })
        .with_context(|| format!("its log: {}", proc.stderr()))?;
        // Its addresses as seen from this (the root) namespace.
        let agent = Agent {
            proc,
            listen: format!("{}:{AGENT_PORT}", self.ip).parse()?,
            admin: format!("{}:{ADMIN_PORT}", self.ip).parse()?,
        };
        agent.wait_ready(Duration::from_secs(10))?;
        self.agent = Some(agent);
        Ok(())
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the agent runs")
    }

    fn intercept(&self, extra: &[&str]) -> Result<Output> {
        let app = APP_PORT.to_string();
        let agent = AGENT_PORT.to_string();
        let net = format!("--net={}", self.ns);
        let mut args = vec![
            &net,
            "--",
            BIN,
            "intercept",
            "--app-port",
            &app,
            "--agent-port",
            &agent,
        ];
        args.extend_from_slice(extra);
        run("nsenter", &args)
    }

    fn ruleset(&self) -> Result<String> {
        ok_in(&self.ns, "nft", &["list", "ruleset"])
    }

    /// The agent's client connections, by peer address.
    fn clients(&self) -> Result<Vec<String>> {
        Ok(self
            .agent()
            .connections()?
            .iter()
            .filter_map(|c| c["peer"].as_str().map(str::to_owned))
            .collect())
    }

    /// What a rolling deploy does to this pod: the preStop drain, then
    /// the app's SIGTERM (it exits at once, no GOAWAY of its own), then
    /// the sidecar's.
    fn roll(&mut self) -> Result<Value> {
        let summary = self.agent().drain(&[])?;
        let app = self.app.take().expect("the app runs");
        app.signal("TERM")?;
        let mut agent = self.agent.take().expect("the agent runs");
        agent.proc.signal("TERM")?;
        agent.proc.wait(Duration::from_secs(20))?;
        Ok(summary)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(app) = &self.app {
            let _ = app.signal("KILL");
        }
    }
}

/// The grpc-go client's running tally (its latest `--report-every-ms`
/// line).
fn tally(client: &Proc) -> Value {
    client
        .drain_json()
        .into_iter()
        .last()
        .unwrap_or(Value::Null)
}

fn counted(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

#[test]
fn redirect_mode_puts_pod_ip_clients_through_the_agent() -> Result<()> {
    if !is_root() {
        skip("network namespaces and nftables need root");
        return Ok(());
    }
    let dir = Scratch::new("intercept")?;
    let policy = dir.write("policy.yaml", "drain: {delay: 1s, timeout: 20s}\n")?;
    let mut net = Net::new()?;
    let mut pods = Vec::new();
    for (name, host) in [("pod1", 11), ("pod2", 12)] {
        let ns = net.host(name, host)?;
        pods.push(Pod {
            name,
            ns,
            ip: net.ip(host),
            app: None,
            agent: None,
        });
    }
    let client_ns = net.host("client", 21)?;
    let client_ip = net.ip(21);

    for pod in &mut pods {
        pod.start_app()?;
        pod.start_agent(&policy)?;
        let out = pod.intercept(&[])?;
        ensure!(
            out.status.success(),
            "intercept in {}: {}",
            pod.name,
            String::from_utf8_lossy(&out.stderr)
        );
        // Idempotent: a rerun (a restarted init container) leaves one rule.
        ensure!(pod.intercept(&[])?.status.success());
        let rules = pod.ruleset()?;
        ensure!(
            rules.matches("redirect to").count() == 1
                && rules.contains(&format!("tcp dport {APP_PORT} redirect to :{AGENT_PORT}")),
            "{}'s rules after two runs:\n{rules}",
            pod.name
        );
    }

    // A round-robin client over the pod IPs, the way a headless Service's
    // clients dial.
    let targets = pods
        .iter()
        .map(|p| format!("{}:{APP_PORT}", p.ip))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Peer::GrpcGo.command()?;
    cmd.args(["client", "--target", &targets])
        .args(["--threads", "4", "--seconds", "0", "--interval-ms", "5"])
        .args(["--report-every-ms", "200", "loop"]);
    let client = Proc::spawn_capturing("grpc-go-client", &mut in_netns(&client_ns, &cmd))?;

    // Every pod's agent has the client's connection, from the client's
    // own address: the calls went through the agents.
    for pod in &pods {
        wait_for(
            Duration::from_secs(30),
            &format!("{}'s agent to see the client", pod.name),
            || {
                Ok(pod
                    .clients()?
                    .iter()
                    .any(|p| p.starts_with(&format!("{client_ip}:"))))
            },
        )?;
    }
    wait_for(Duration::from_secs(30), "calls served by both pods", || {
        let t = tally(&client);
        Ok(pods.iter().all(|p| counted(&t["servers"], p.name) > 20))
    })?;
    for pod in &pods {
        // No loop: the agent's own connection to podIP:APP_PORT was not
        // redirected back to it (it would show as a client from the pod).
        let clients = pod.clients()?;
        ensure!(
            clients
                .iter()
                .all(|p| p.starts_with(&format!("{client_ip}:"))),
            "{}'s agent has clients other than the client pod: {clients:?}",
            pod.name
        );
        let streams = pod.agent().metrics()?.value("goaway_streams_total")?;
        ensure!(
            streams > 20.0,
            "{} agent proxied {streams} streams",
            pod.name
        );
    }

    // A rolling deploy over both pods: drain, stop, replace, one at a time.
    let mut goaways = 0;
    for pod in &mut pods {
        let summary = pod.roll()?;
        goaways += summary["connections_drained"].as_u64().unwrap_or(0);
        eprintln!("{} drained: {summary}", pod.name);
        // The replacement pod, at the same address.
        pod.start_app()?;
        pod.start_agent(&policy)?;
        let name = pod.name;
        let before = counted(&tally(&client)["servers"], name);
        wait_for(
            Duration::from_secs(60),
            &format!("calls served by the new {name}"),
            || Ok(counted(&tally(&client)["servers"], name) > before + 20),
        )?;
    }
    ensure!(
        goaways >= 2,
        "the drains sent GOAWAY to {goaways} connections"
    );
    client.signal("TERM")?;
    let (summary, stderr) = finish(client, Duration::from_secs(30))?;
    eprintln!("client: {summary}");
    ensure!(
        counted(&summary, "ok") > 200,
        "too few calls to say anything: {summary}\n{stderr}"
    );
    ensure!(
        counted(&summary, "failed") == 0,
        "calls failed through the rolling drain: {summary}\n{stderr}"
    );

    // --remove: direct traffic again, and no rule naming the agent's port.
    let pod = &pods[1];
    let accepted =
        |pod: &Pod| -> Result<f64> { pod.agent().metrics()?.value("goaway_connections_total") };
    let before = accepted(pod)?;
    let out = pod.intercept(&["--remove"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = pod.ruleset()?;
    ensure!(
        !rules.contains(&AGENT_PORT.to_string()),
        "rules after --remove:\n{rules}"
    );
    ensure!(
        pod.intercept(&["--remove"])?.status.success(),
        "a second --remove"
    );
    let mut call = Peer::GrpcGo.command()?;
    call.args([
        "client",
        "--target",
        &format!("{}:{APP_PORT}", pod.ip),
        "call",
    ]);
    let (result, stderr) = finish(
        Proc::spawn_capturing("grpc-go-call", &mut in_netns(&client_ns, &call))?,
        Duration::from_secs(30),
    )?;
    ensure!(result["code"] == "OK", "{result}\n{stderr}");
    ensure!(
        accepted(pod)? == before,
        "a call after --remove still reached the agent"
    );
    Ok(())
}

/// Beside a mesh: the pod's namespace also has istio-init's kind of
/// capture rule, an iptables `nat PREROUTING` REDIRECT of inbound TCP to
/// the mesh proxy's port. Installed before or after goaway's redirect,
/// the mesh's rule takes the connection (its mTLS is never bypassed) and
/// the agent sees none.
#[test]
fn beside_a_mesh_capture_rule_the_mesh_keeps_inbound_connections() -> Result<()> {
    if !is_root() {
        skip("network namespaces need root");
        return Ok(());
    }
    const MESH_PORT: u16 = 15006;
    let mut net = Net::new()?;
    let ns = net.host("mesh", 10)?;
    let client_ns = net.host("client", 30)?;
    let pod_ip = net.ip(10);
    let capture = |op: &str| -> Result<String> {
        let port = MESH_PORT.to_string();
        ok_in(
            &ns,
            "iptables",
            &[
                "-t",
                "nat",
                op,
                "PREROUTING",
                "-p",
                "tcp",
                "!",
                "-i",
                "lo",
                "-j",
                "REDIRECT",
                "--to-ports",
                &port,
            ],
        )
    };
    // The "mesh proxy" and the agent's port, each printing a JSON line per
    // connection it accepts.
    let listener = |port: u16, name: &str| -> Result<Proc> {
        let script = format!(
            "import socket\ns=socket.socket(socket.AF_INET6)\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('::',{port}));s.listen();print('{{\"listening\":1}}',flush=True)\n\
             while True:\n c,a=s.accept();print('{{\"accepted\":1}}',flush=True);c.close()"
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-c", &script]);
        let p = Proc::spawn_capturing(name, &mut in_netns(&ns, &cmd))?;
        p.json_where(Duration::from_secs(10), |v| v.get("listening").is_some())
            .with_context(|| format!("{name}: {}", p.stderr()))?;
        Ok(p)
    };
    let mesh = listener(MESH_PORT, "mesh-proxy")?;
    let agent = listener(AGENT_PORT, "agent-port")?;
    let pod = Pod {
        name: "mesh",
        ns: ns.clone(),
        ip: pod_ip.clone(),
        app: None,
        agent: None,
    };
    for order in ["mesh rule first", "goaway's redirect first"] {
        if order == "mesh rule first" {
            capture("-A")?;
            ensure!(pod.intercept(&[])?.status.success(), "intercept failed");
        } else {
            capture("-D")?;
            ensure!(pod.intercept(&[])?.status.success(), "intercept failed");
            capture("-A")?;
        }
        let script = format!(
            "import socket;socket.create_connection(('{pod_ip}',{APP_PORT}),timeout=5).close()"
        );
        ok_in(&client_ns, "python3", &["-c", &script])?;
        mesh.json_where(Duration::from_secs(10), |v| v.get("accepted").is_some())
            .with_context(|| format!("{order}: the mesh proxy got nothing"))?;
        // The connection is the mesh's; none came to the agent's port.
        ensure!(
            agent.drain_json().is_empty(),
            "{order}: the agent's port took a connection"
        );
    }
    Ok(())
}

#[test]
fn intercept_without_net_admin_says_what_it_needs() -> Result<()> {
    if !is_root() {
        skip("dropping to an unprivileged user needs root");
        return Ok(());
    }
    let out = run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "intercept",
            "--app-port",
            "50051",
            "--agent-port",
            "15001",
        ],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "intercept succeeded without NET_ADMIN"
    );
    ensure!(stderr.contains("NET_ADMIN"), "{stderr}");
    Ok(())
}
