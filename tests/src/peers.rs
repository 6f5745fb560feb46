//! The interop matrix's gRPC peers: grpc-go, grpc-java, grpc-js and tonic
//! programs under `tests/peers/`, built by `scripts/build-peers` into
//! `tests/peers/.build/`. Each has the Python peer's `echo.Echo` service
//! and the same command line (see `tests/peers/README.md`), so one test
//! body runs against all of them.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{Proc, repo_root};

/// A gRPC implementation with a peer program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `google.golang.org/grpc` (the reference the seeds describe).
    GrpcGo,
    /// `io.grpc:grpc-netty-shaded`.
    GrpcJava,
    /// `@grpc/grpc-js` on Node.
    GrpcJs,
    /// `tonic` on hyper/h2.
    Tonic,
}

impl Peer {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Peer::GrpcGo => "grpc-go",
            Peer::GrpcJava => "grpc-java",
            Peer::GrpcJs => "grpc-js",
            Peer::Tonic => "tonic",
        }
    }

    fn build_dir() -> PathBuf {
        repo_root().join("tests/peers/.build")
    }

    /// The peer's command line, or an error saying how to build it.
    pub fn command(self) -> Result<Command> {
        let build = Peer::build_dir();
        let missing = |what: &PathBuf| -> Result<()> {
            if !what.exists() {
                bail!(
                    "the {} peer is not built ({} is missing): run scripts/build-peers (.ci/run does)",
                    self.name(),
                    what.display()
                );
            }
            Ok(())
        };
        Ok(match self {
            Peer::GrpcGo | Peer::Tonic => {
                let bin = build.join("bin").join(match self {
                    Peer::GrpcGo => "grpc-go-peer",
                    _ => "tonic-peer",
                });
                missing(&bin)?;
                Command::new(bin)
            }
            Peer::GrpcJs => {
                let dir = repo_root().join("tests/peers/js");
                missing(&dir.join("node_modules/@grpc/grpc-js/package.json"))?;
                let mut cmd = Command::new("node");
                cmd.arg(dir.join("peer.js"));
                cmd
            }
            Peer::GrpcJava => {
                let file = build.join("grpc-java.classpath");
                missing(&file)?;
                let cp = std::fs::read_to_string(&file)?;
                let mut cmd = Command::new("java");
                // Small heaps and no JIT tiers beyond C1: the peers are
                // short-lived and the machine is shared.
                cmd.args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", cp.trim()])
                    .arg("dev.goaway.peer.Peer");
                cmd
            }
        })
    }

    /// Starts the peer's server with `flags` and returns it with its port.
    pub fn server(self, flags: &[&str]) -> Result<(Proc, u16)> {
        let mut cmd = self.command()?;
        cmd.arg("server").args(flags);
        let p = Proc::spawn_capturing(&format!("{}-server", self.name()), &mut cmd)?;
        let v = p
            .json_where(Duration::from_secs(60), |v| v.get("port").is_some())
            .with_context(|| format!("{} server stderr:\n{}", self.name(), p.stderr()))?;
        let port = v["port"].as_u64().context("port")? as u16;
        Ok((p, port))
    }

    /// Starts the peer's client against `target` with `args` (flags, then
    /// the mode).
    pub fn spawn_client(self, target: &str, args: &[&str]) -> Result<Proc> {
        let mut cmd = self.command()?;
        cmd.args(["client", "--target", target]).args(args);
        Proc::spawn_capturing(&format!("{}-client", self.name()), &mut cmd)
    }

    /// Runs the peer's client to completion: its JSON summary and stderr.
    pub fn client(self, target: &str, args: &[&str]) -> Result<(Value, String)> {
        finish(self.spawn_client(target, args)?, Duration::from_secs(120))
    }
}

/// Waits for a client started by [`Peer::spawn_client`]: its last JSON line
/// and its stderr.
pub fn finish(mut p: Proc, timeout: Duration) -> Result<(Value, String)> {
    let status = p.wait_output(timeout)?;
    let stderr = p.stderr();
    if !status.success() {
        bail!("{} exited with {status}; stderr:\n{stderr}", p.name);
    }
    let v = p
        .finish_json(Duration::from_secs(5))
        .with_context(|| format!("stderr:\n{stderr}"))?;
    Ok((v, stderr))
}

/// Keepalive PINGs one client connection sent, as seen by the agent's
/// `/connections`.
#[derive(Clone, Debug, Default)]
pub struct PingTrace {
    /// The connection's registry id (in accept order).
    pub id: u64,
    /// Connection ages (seconds) at which its ping count was seen to grow.
    pub ping_ages: Vec<f64>,
    /// The last ping count seen.
    pub pings: u64,
    /// Its GOAWAY reason, once it had one.
    pub goaway_reason: Option<String>,
}

impl PingTrace {
    /// The median interval between pings, once three were seen.
    pub fn median_interval(&self) -> Option<f64> {
        if self.ping_ages.len() < 3 {
            return None;
        }
        let mut d: Vec<f64> = self.ping_ages.windows(2).map(|w| w[1] - w[0]).collect();
        d.sort_by(f64::total_cmp);
        Some(d[d.len() / 2])
    }
}

/// Polls `/connections` every 25ms for `duration` and returns each client
/// connection's ping trace, in accept order.
pub fn trace_pings(admin: crate::agent::Admin, duration: Duration) -> Vec<PingTrace> {
    let mut traces: std::collections::BTreeMap<u64, PingTrace> = Default::default();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if let Ok(conns) = admin.connections() {
            for c in conns {
                let Some(id) = c["id"].as_u64() else { continue };
                let t = traces.entry(id).or_insert_with(|| PingTrace {
                    id,
                    ..PingTrace::default()
                });
                let pings = c["pings_received"].as_u64().unwrap_or(0);
                if pings > t.pings {
                    t.pings = pings;
                    t.ping_ages.push(c["age_seconds"].as_f64().unwrap_or(0.0));
                }
                if let Some(r) = c["goaway_reason"].as_str() {
                    t.goaway_reason = Some(r.to_owned());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    traces.into_values().collect()
}

/// h2spec (`github.com/summerwind/h2spec`), built by `scripts/build-peers`.
pub fn h2spec_command() -> Result<Command> {
    let bin = Peer::build_dir().join("bin/h2spec");
    if !bin.exists() {
        bail!(
            "h2spec is not built ({} is missing): run scripts/build-peers (.ci/run does)",
            bin.display()
        );
    }
    Ok(Command::new(bin))
}

/// Starts the grpc-go peer's plain HTTP/2 app (net/http, h2c): every
/// request gets 200 and a body.
pub fn http_app() -> Result<(Proc, u16)> {
    let mut cmd = Peer::GrpcGo.command()?;
    cmd.arg("http");
    let p = Proc::spawn_capturing("net-http-app", &mut cmd)?;
    let v = p.json_where(Duration::from_secs(20), |v| v.get("port").is_some())?;
    let port = v["port"].as_u64().context("port")? as u16;
    Ok((p, port))
}
