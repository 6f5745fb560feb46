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
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{BIN, Scratch};
use goaway_tests::Proc;
use goaway_tests::agent::{Agent, wait_for};
use goaway_tests::peers::{Peer, finish};
use serde_json::Value;

const APP_PORT: u16 = 50051;
const AGENT_PORT: u16 = 15001;
const ADMIN_PORT: u16 = 15052;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {args:?}"))
}

fn ok(program: &str, args: &[&str]) -> Result<String> {
    let out = run(program, args)?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cmd`, run inside the network namespace at `ns` (a `/proc/PID/ns/net`
/// path). `nsenter` execs it, so the pid is the command's own and signals
/// reach it.
fn in_netns(ns: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("nsenter");
    wrapped
        .arg(format!("--net={ns}"))
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// `program args…` inside `ns`, to completion.
fn ok_in(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec![format!("--net={ns}"), "--".into(), program.into()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    ok("nsenter", &all)
}

/// A bridge in the root namespace and network namespaces hanging off it,
/// all removed on drop. The namespaces are held by `unshare --net`
/// processes, not `ip netns add`: that bind-mounts `/run/netns` over
/// itself, which duplicates the mounts of the node's CNI namespaces and
/// leaves the kubelet unable to delete pods when a local cluster runs
/// alongside.
struct Net {
    /// `10.213.N`: this run's /24.
    prefix: String,
    bridge: String,
    tag: String,
    holders: Vec<std::process::Child>,
}

impl Net {
    fn new() -> Result<Net> {
        let n = 20 + std::process::id() % 200;
        let net = Net {
            prefix: format!("10.213.{n}"),
            bridge: format!("gai{n}"),
            tag: format!("ga{n}"),
            holders: Vec::new(),
        };
        // A leftover of a killed run with the same number.
        let _ = run("ip", &["link", "del", &net.bridge]);
        ok("ip", &["link", "add", &net.bridge, "type", "bridge"])?;
        let gateway = format!("{}.1/24", net.prefix);
        ok("ip", &["addr", "add", &gateway, "dev", &net.bridge])?;
        ok("ip", &["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    /// A namespace with `eth0` at `.{host}`; returns its path.
    fn host(&mut self, name: &str, host: u8) -> Result<String> {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "100000"])
            .spawn()
            .context("unshare --net")?;
        let pid = holder.id().to_string();
        self.holders.push(holder);
        let ns = format!("/proc/{pid}/ns/net");
        // Until unshare has moved itself into the new namespace.
        let own = std::fs::read_link("/proc/self/ns/net")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(&ns).map_or(true, |l| l == own) {
            ensure!(Instant::now() < deadline, "unshare --net did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let veth = format!("{}{name}", self.tag);
        let _ = run("ip", &["link", "del", &veth]);
        ok(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ],
        )?;
        ok("ip", &["link", "set", &veth, "master", &self.bridge, "up"])?;
        let addr = format!("{}.{host}/24", self.prefix);
        ok_in(&ns, "ip", &["addr", "add", &addr, "dev", "eth0"])?;
        ok_in(&ns, "ip", &["link", "set", "eth0", "up"])?;
        ok_in(&ns, "ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // A namespace goes with its last process (its veth with it).
        for holder in &mut self.holders {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

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
        let deadline = Instant::now() + Duration::from_secs(20);
        while !proc.stderr().contains("\"serving\"") {
            ensure!(
                Instant::now() < deadline,
                "{} agent did not serve: {}",
                self.name,
                proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
        eprintln!("skipped: network namespaces and nftables need root");
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

#[test]
fn intercept_without_net_admin_says_what_it_needs() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root to drop to an unprivileged user");
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
