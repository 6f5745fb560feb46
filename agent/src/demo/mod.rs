//! `goaway-agent demo`: a rolling deploy on this machine, no cluster.
//!
//! Three replicas of a gRPC app (each behind an agent), clients spreading
//! calls round-robin over them, then a rolling restart in kubelet order:
//! the pod is marked terminating (endpoint removal starts propagating) and
//! its preStop hook calls the agent's `/drain` → the app gets SIGTERM →
//! the agent gets SIGTERM → a new replica replaces it. The same rollout is
//! then run without agents — the app gets SIGTERM at once — as the
//! baseline. Every process is real: the apps and agents are this binary.

mod backend;
mod loadgen;
mod report;

pub use backend::{BackendArgs, run as run_backend};

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::admin_client;
use loadgen::{Endpoints, Tally};
use report::{RunReport, StepReport};

/// `goaway-agent demo`.
#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// Replicas of the app.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Client pods calling the app.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Concurrent calls per client pod.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// How long endpoint changes take to reach clients (kube-proxy, DNS,
    /// xDS lag); also the agents' drain.delay.
    #[arg(long, default_value = "1s")]
    pub propagation: goaway_transport::policy::GoDuration,
    /// Skip the run without agents.
    #[arg(long)]
    pub no_baseline: bool,
}

struct Replica {
    name: String,
    app: Child,
    agent: Option<(Child, String)>,
    /// Where clients connect: the agent, or the app without one.
    addr: String,
}

/// Runs the demo and prints the comparison.
pub async fn run(args: DemoArgs) -> Result<()> {
    let propagation = args
        .propagation
        .to_std()
        .context("--propagation: must not be negative")?;
    if args.replicas == 0 || args.clients == 0 || args.concurrency == 0 {
        bail!("--replicas, --clients and --concurrency must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("goaway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "# The demo's KeepalivePolicy, as the operator would render it.\n\
             drain:\n  delay: {}\n  timeout: 10s\n",
            args.propagation
        ),
    )?;
    println!(
        "goaway demo: {} replicas of a gRPC app, {} client pods × {} concurrent calls, endpoint changes reach clients after {}",
        args.replicas, args.clients, args.concurrency, args.propagation
    );
    println!(
        "The app stops at once on SIGTERM (no graceful GOAWAY of its own), as many services do.\n"
    );

    println!(
        "== Rolling restart WITH goaway agents (preStop /drain → SIGTERM app → SIGTERM agent)"
    );
    let with = rollout(&args, propagation, Some(&policy)).await?;
    let without = if args.no_baseline {
        None
    } else {
        println!("\n== The same rolling restart WITHOUT agents (SIGTERM app at once)");
        Some(rollout(&args, propagation, None).await?)
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    report::print(&with, without.as_ref());
    Ok(())
}

async fn rollout(
    args: &DemoArgs,
    propagation: Duration,
    policy: Option<&std::path::Path>,
) -> Result<RunReport> {
    let mut replicas = Vec::new();
    for i in 0..args.replicas {
        replicas.push(start_replica(&format!("app-{}", i + 1), policy).await?);
    }
    let endpoints = Arc::new(Endpoints::default());
    for r in &replicas {
        endpoints.add(r.addr.clone());
    }
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = tokio::spawn(loadgen::run(
        endpoints.clone(),
        tally.clone(),
        args.clients,
        args.concurrency,
        stop.clone(),
    ));
    let start = Instant::now();
    let progress = tokio::spawn(progress(tally.clone(), start, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut steps = Vec::new();
    for i in 0..replicas.len() {
        let failed_before = tally.failed.load(Relaxed);
        let moved_before = tally.counters.upstream_connections_goaway.load(Relaxed);
        let old = replicas.remove(i);
        println!(
            "  [{:5.1}s] {}: terminating",
            start.elapsed().as_secs_f64(),
            old.name
        );
        // The endpoint controller removes the pod; clients learn later.
        {
            let (endpoints, addr) = (endpoints.clone(), old.addr.clone());
            tokio::spawn(async move {
                tokio::time::sleep(propagation).await;
                endpoints.remove(&addr);
            });
        }
        let (drain_time, goaways) = stop_replica(old, start).await?;
        let new = start_replica(&format!("app-{}", i + 1 + args.replicas), policy).await?;
        println!(
            "  [{:5.1}s] {}: started as the replacement",
            start.elapsed().as_secs_f64(),
            new.name
        );
        {
            let (endpoints, addr) = (endpoints.clone(), new.addr.clone());
            tokio::spawn(async move {
                tokio::time::sleep(propagation).await;
                endpoints.add(addr);
            });
        }
        replicas.insert(i, new);
        tokio::time::sleep(propagation + Duration::from_millis(500)).await;
        steps.push(StepReport {
            drain_time,
            goaways,
            moved: tally.counters.upstream_connections_goaway.load(Relaxed) - moved_before,
            failed: tally.failed.load(Relaxed) - failed_before,
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Relaxed);
    let _ = clients.await;
    let _ = progress.await;
    for r in replicas {
        let _ = stop_replica(r, start).await;
    }
    let samples = tally
        .samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(RunReport {
        ok: tally.ok.load(Relaxed),
        failed: tally.failed.load(Relaxed),
        steps,
        samples,
        seconds: start.elapsed().as_secs_f64(),
    })
}

async fn progress(tally: Arc<Tally>, start: Instant, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !stop.load(Relaxed) {
        tick.tick().await;
        println!(
            "  [{:5.1}s] calls ok {:>7}   failed {:>4}",
            start.elapsed().as_secs_f64(),
            tally.ok.load(Relaxed),
            tally.failed.load(Relaxed)
        );
    }
}

fn exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("locating goaway-agent")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_replica(name: &str, policy: Option<&std::path::Path>) -> Result<Replica> {
    let app_addr = format!("127.0.0.1:{}", free_port()?);
    let app = Command::new(exe()?)
        .args(["demo-backend", "--listen", &app_addr])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the demo app")?;
    wait_tcp(&app_addr).await?;
    let Some(policy) = policy else {
        return Ok(Replica {
            name: name.into(),
            app,
            agent: None,
            addr: app_addr,
        });
    };
    let listen = format!("127.0.0.1:{}", free_port()?);
    let admin = format!("127.0.0.1:{}", free_port()?);
    let agent = Command::new(exe()?)
        .args([
            "run",
            "--listen",
            &listen,
            "--upstream",
            &app_addr,
            "--admin",
            &admin,
        ])
        .arg("--policy")
        .arg(policy)
        .env("GOAWAY_LOG", "error")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting an agent")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = admin_client::call(
            hyper::Method::GET,
            &admin,
            "/readyz",
            None,
            Duration::from_secs(1),
        )
        .await;
        if matches!(ready, Ok((s, _)) if s.is_success()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("agent for {name} not ready after 10s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Replica {
        name: name.into(),
        app,
        agent: Some((agent, admin)),
        addr: listen,
    })
}

/// Kubelet order: preStop (the agent's /drain), SIGTERM to the app, then
/// SIGTERM to the agent. Returns the drain time and GOAWAYs sent.
async fn stop_replica(mut r: Replica, start: Instant) -> Result<(Option<Duration>, u64)> {
    let mut drain = None;
    let mut goaways = 0;
    if let Some((_, admin)) = &r.agent {
        let t = Instant::now();
        admin_client::request_drain(admin, None, Duration::from_secs(60)).await?;
        drain = Some(t.elapsed());
        goaways = scrape_goaways(admin).await.unwrap_or(0);
        println!(
            "  [{:5.1}s] {}: preStop /drain done in {:.2}s ({goaways} connections sent GOAWAY)",
            start.elapsed().as_secs_f64(),
            r.name,
            t.elapsed().as_secs_f64()
        );
    }
    terminate(&mut r.app).await;
    if let Some((agent, _)) = r.agent.as_mut() {
        terminate(agent).await;
    }
    println!(
        "  [{:5.1}s] {}: stopped",
        start.elapsed().as_secs_f64(),
        r.name
    );
    Ok((drain, goaways))
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child by its pid.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM)
        };
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn scrape_goaways(admin: &str) -> Result<u64> {
    let (_, text) = admin_client::call(
        hyper::Method::GET,
        admin,
        "/metrics",
        None,
        Duration::from_secs(2),
    )
    .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("goaway_goaways_sent_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn wait_tcp(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listening on {addr} after 10s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
