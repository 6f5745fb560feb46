//! Benchmark: the agent against a direct connection and HAProxy.
//!
//!     cargo bench -p goaway-agent --bench proxy
//!
//! Drives `h2load` (nghttp2) with gRPC-shaped requests (POST,
//! `content-type: application/grpc`, `te: trailers`, a framed 100-byte
//! message) at the same h2c backend (a) directly, (b) through the agent,
//! (c) through HAProxy with `proto h2` on both sides, three rounds each in
//! rotation, and prints req/s, mean/p50/p99 latency and the ratios. Then
//! opens 10,000 idle client connections to a fresh agent and a fresh
//! HAProxy and prints RSS per connection. Prints figures; asserts nothing.
//!
//! `-- --memory-only` skips the throughput rounds; `BENCH_AGENT_ARGS`
//! passes extra flags to the agent (e.g. `--worker-threads 1`).

// libc: sysconf and setrlimit, each with its SAFETY comment.
#![allow(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use goaway_tests::poll::listening;
use goaway_tests::{Proc, Scratch, free_port};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_goaway-agent");
const ROUNDS: usize = 3;
const IDLE: usize = 10_000;
/// HAProxy reserves two descriptors per connection; under a 20,000
/// descriptor hard limit (this sandbox's, which root cannot raise) it
/// accepts at most 9,990 connections, so it is measured at 9,900.
const HAPROXY_MAXCONN: usize = 9_990;
const HAPROXY_IDLE: usize = 9_900;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--idle-clients") {
        return idle_clients(&args[i + 1], args[i + 2].parse().expect("count"));
    }
    raise_nofile();
    for tool in ["h2load", "haproxy"] {
        if Command::new(tool)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!(
                "{tool} is missing: apt-get install nghttp2-client haproxy (or scripts/install-test-deps)"
            );
            std::process::exit(2);
        }
    }
    let scratch = Scratch::new("bench").expect("a scratch directory");
    let dir = scratch.path();
    let body = dir.join("request.bin");
    let mut frame = vec![0u8];
    frame.extend_from_slice(&100u32.to_be_bytes());
    frame.extend_from_slice(&[b'x'; 100]);
    std::fs::write(&body, frame).expect("request body");

    machine();
    let memory_only = args.iter().any(|a| a == "--memory-only");
    let backend_port = free_port();
    let _backend = spawn(Command::new(AGENT).args([
        "demo-backend",
        "--listen",
        &format!("127.0.0.1:{backend_port}"),
        "--min-ms",
        "0",
        "--max-ms",
        "0",
    ]));
    wait_port(backend_port);
    let (_agent, agent_port, _) = start_agent(backend_port);
    let (_haproxy, haproxy_port) = start_haproxy(dir, backend_port);

    let targets = [
        ("direct", backend_port),
        ("agent", agent_port),
        ("haproxy", haproxy_port),
    ];
    if !memory_only {
        let pids = [_backend.pid(), _agent.pid(), _haproxy.pid()];
        throughput(dir, &body, &targets, &pids);
    }
    drop((_agent, _haproxy));
    memory(dir, backend_port);
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn throughput(dir: &Path, body: &Path, targets: &[(&str, u16)], pids: &[u32; 3]) {
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    println!("\nh2load -t 1 -c 16 -m 8, 10s after 2s warm-up, {ROUNDS} rounds in rotation:");
    for round in 0..ROUNDS {
        for (i, (name, port)) in targets.iter().enumerate() {
            // The proxy's own CPU per request (the backend's for direct).
            let pid = pids[i];
            let before = cpu_seconds(pid);
            let mut r = h2load(dir, body, *port);
            r.cpu_us = (cpu_seconds(pid) - before) * 1e6 / r.requests.max(1) as f64;
            println!(
                "  round {} {:<8} {:>10.0} req/s  mean {:>7.2} ms  p50 {:>7.2} ms  p99 {:>7.2} ms  {:>5.1} µs CPU/req  ({} failed)",
                round + 1,
                name,
                r.rps,
                r.mean_ms,
                r.p50_ms,
                r.p99_ms,
                r.cpu_us,
                r.failed
            );
            results[i].push(r);
        }
    }
    let med: Vec<Run> = results.iter().map(|runs| median(runs)).collect();
    println!("\nmedian of {ROUNDS} rounds:");
    println!(
        "| target | req/s | mean latency | p50 | p99 | CPU per request (server or proxy process) |"
    );
    println!("|---|---|---|---|---|---|");
    for ((name, _), r) in targets.iter().zip(&med) {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} µs |",
            r.rps, r.mean_ms, r.p50_ms, r.p99_ms, r.cpu_us
        );
    }
    println!(
        "\nthroughput agent/direct {:.2}, haproxy/direct {:.2}, agent/haproxy {:.2}",
        med[1].rps / med[0].rps,
        med[2].rps / med[0].rps,
        med[1].rps / med[2].rps
    );
    println!(
        "latency agent/haproxy: mean {:.2}, p99 {:.2}",
        med[1].mean_ms / med[2].mean_ms,
        med[1].p99_ms / med[2].p99_ms
    );
}

fn memory(dir: &Path, backend_port: u16) {
    println!("\nRSS per idle client connection (fresh processes):");
    let (agent, agent_port, _) = start_agent(backend_port);
    let per = idle_rss(agent.pid(), agent_port, IDLE);
    println!("  agent   at {IDLE} connections: {per:.2} KiB");
    drop(agent);
    let (haproxy, haproxy_port) = start_haproxy(dir, backend_port);
    let per = idle_rss(haproxy_pid(&haproxy), haproxy_port, HAPROXY_IDLE);
    println!("  haproxy at {HAPROXY_IDLE} connections: {per:.2} KiB");
}

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    rps: f64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
    /// Requests completed, including the warm-up.
    requests: u64,
    cpu_us: f64,
}

fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let mut m = sorted[sorted.len() / 2];
    let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_us).collect();
    cpu.sort_by(f64::total_cmp);
    m.cpu_us = cpu[cpu.len() / 2];
    let mut lat: Vec<(f64, f64, f64)> = runs
        .iter()
        .map(|r| (r.mean_ms, r.p50_ms, r.p99_ms))
        .collect();
    lat.sort_by(|a, b| a.2.total_cmp(&b.2));
    (m.mean_ms, m.p50_ms, m.p99_ms) = lat[lat.len() / 2];
    m
}

fn h2load(dir: &Path, body: &Path, port: u16) -> Run {
    let log = dir.join(format!("h2load-{port}.log"));
    let _ = std::fs::remove_file(&log);
    let out = Command::new("h2load")
        .args([
            "-t",
            "1",
            "-c",
            "16",
            "-m",
            "8",
            "-D",
            "10",
            "--warm-up-time",
            "2",
        ])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(body)
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://127.0.0.1:{port}/echo.Echo/Unary"))
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.trim_end_matches(" req/s").parse().ok())
        .unwrap_or(0.0);
    let failed = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" failed")))
        .and_then(|p| p.trim_end_matches(" failed").trim().parse().ok())
        .unwrap_or(u64::MAX);
    let mut lat: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" done")))
        .and_then(|p| p.trim_end_matches(" done").trim().parse().ok())
        .unwrap_or(0);
    Run {
        rps,
        requests,
        cpu_us: 0.0,
        mean_ms: lat.iter().sum::<f64>() / lat.len().max(1) as f64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failed,
    }
}

fn start_agent(backend_port: u16) -> (Proc, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let child = spawn(
        Command::new(AGENT)
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(
                std::env::var("BENCH_AGENT_ARGS")
                    .ok()
                    .map(|a| a.split_whitespace().map(String::from).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
            .args(["--upstream", &format!("127.0.0.1:{backend_port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            // Default log level: what a deployment runs with.
            .env_remove("GOAWAY_LOG"),
    );
    wait_port(port);
    (child, port, admin)
}

fn start_haproxy(dir: &Path, backend_port: u16) -> (Proc, u16) {
    let port = free_port();
    let cfg = dir.join(format!("haproxy-{port}.cfg"));
    let mut f = std::fs::File::create(&cfg).expect("haproxy config");
    write!(
        f,
        "global\n  nbthread 2\n  maxconn {HAPROXY_MAXCONN}\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  maxconn {HAPROXY_MAXCONN}\n\
         frontend fe\n  bind 127.0.0.1:{port} proto h2\n  default_backend be\n\
         backend be\n  http-reuse always\n  server s1 127.0.0.1:{backend_port} proto h2\n"
    )
    .expect("write config");
    let child = spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&cfg));
    wait_port(port);
    (child, port)
}

fn haproxy_pid(g: &Proc) -> u32 {
    g.pid()
}

/// Opens `n` idle connections to `port` from a child process and
/// returns the RSS growth of `pid` per connection, in KiB.
fn idle_rss(pid: u32, port: u16, n: usize) -> f64 {
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    let exe = std::env::current_exe().expect("exe");
    let clients = spawn(Command::new(exe).args([
        "--idle-clients",
        &format!("127.0.0.1:{port}"),
        &n.to_string(),
    ]));
    let start = Instant::now();
    // The child prints "ready" once every handshake completed.
    let ready = wait_line(&clients, "ready", Duration::from_secs(180));
    if !ready {
        eprintln!(
            "  idle clients did not finish connecting within {:?}",
            start.elapsed()
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(pid);
    drop(clients);
    (after.saturating_sub(before)) as f64 / n as f64
}

fn idle_clients(addr: &str, n: usize) {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut done = Vec::with_capacity(n);
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = addr.to_string();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            done.push(rx);
            held.push(tokio::spawn(async move {
                let tcp = loop {
                    match tokio::net::TcpStream::connect(&addr).await {
                        Ok(t) => break t,
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                };
                let Ok((send, conn)) = h2::client::handshake(tcp).await else {
                    return;
                };
                let conn = tokio::spawn(conn);
                // Hold the handle: dropping the last one closes the
                // connection.
                let Ok(_send) = send.ready().await else {
                    return;
                };
                let _ = tx.send(());
                let _ = conn.await;
            }));
        }
        for rx in done {
            let _ = rx.await;
        }
        println!("ready");
        for h in held {
            let _ = h.await;
        }
    });
}

/// Starts `cmd` (stdout read as lines, stderr inherited), killed on drop.
fn spawn(cmd: &mut Command) -> Proc {
    let name = cmd.get_program().to_string_lossy().into_owned();
    Proc::spawn(&name, cmd).expect("spawn")
}

/// Whether `p` prints the line `want` within `timeout`.
fn wait_line(p: &Proc, want: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while let Ok(line) = p.line(deadline.saturating_duration_since(Instant::now())) {
        if line.trim() == want {
            return true;
        }
    }
    false
}

fn wait_port(port: u16) {
    listening(port, Duration::from_secs(10)).expect("the server listening");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let haproxy = Command::new("haproxy")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let h2load = Command::new("h2load")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("machine: {cores} cores, {cpu}, Linux {}", kernel.trim());
    println!("peers: {haproxy}; {h2load}; all processes share the machine (loopback)");
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct. As root the hard limit can
    // go up too (HAProxy wants room for 2 descriptors per connection);
    // otherwise the soft limit rises to the hard one.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = libc::rlimit {
            rlim_cur: 262_144,
            rlim_max: 262_144,
        };
        if lim.rlim_max >= want.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
