//! Benchmark: 10,000 idle server connections with keepalive and age timers
//! armed. Prints RSS per connection and CPU per second spent while idle.
//! Not a test: it asserts nothing and prints figures.
//!
//!     cargo bench -p goaway-transport --bench idle_connections [-- N]
//!
//! The clients run in a child process (this same binary with `--clients`)
//! so the server's RSS is its own. Two phases are measured: production
//! defaults (timers armed, none due during the window) and keepalive every
//! 5s (timers firing: 2,000 pings a second at 10,000 connections).

// libc: getrusage and setrlimit, each with its SAFETY comment.
#![allow(unsafe_code)]

#[global_allocator]
// The agent ships with jemalloc; measure what it will use.
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant};

use goaway_transport::server::{ServerConfig, ServerConnection};
use goaway_transport::{Policy, policy::Strictness, tcp};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    raise_nofile();
    if let Some(i) = args.iter().position(|a| a == "--clients") {
        let addr = args[i + 1].clone();
        let n: usize = args[i + 2].parse().expect("count");
        return clients(&addr, n);
    }
    let n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    if let Some(i) = args.iter().position(|a| a == "--phase") {
        let phase: usize = args[i + 1].parse().expect("phase");
        let n: usize = args[i + 2].parse().expect("count");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        return rt.block_on(server(n, phase));
    }
    println!(
        "idle_connections: {n} connections; each phase is a fresh server process, its clients another"
    );
    for phase in 0..PHASES.len() {
        // A fresh process per phase, so each RSS baseline is clean.
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--phase", &phase.to_string(), &n.to_string()])
            .status()
            .expect("phase");
        assert!(status.success(), "phase {phase} failed");
    }
}

const PHASES: [(&str, &str, u64); 2] = [
    (
        "defaults (time 2h, maxConnectionAge 30m, maxConnectionIdle 1h)",
        "server: {maxConnectionAge: 30m, maxConnectionIdle: 1h}",
        10,
    ),
    (
        "keepalive every 5s (maxConnectionAge 30m)",
        "server: {time: 5s, timeout: 20s, maxConnectionAge: 30m}",
        20,
    ),
];

async fn server(n: usize, phase: usize) {
    {
        let (label, yaml, window) = PHASES[phase];
        let (policy, _) = Policy::load(yaml, Strictness::Permissive).expect("policy");
        let config = ServerConfig {
            params: policy.server_params(),
            ..ServerConfig::default()
        };
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener: TcpListener = socket.listen(16_384).expect("listen");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss_before = rss_kib();
        let counters = config.counters.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    break;
                };
                let _ = tcp::configure_accepted(&tcp, &config.params);
                let config = config.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = ServerConnection::handshake(tcp, &config).await else {
                        return;
                    };
                    while conn.accept().await.is_some() {}
                });
            }
        });
        let exe = std::env::current_exe().expect("exe");
        let mut child = std::process::Command::new(exe)
            .args(["--clients", &addr, &n.to_string()])
            .spawn()
            .expect("spawn clients");
        let start = Instant::now();
        while (counters
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed) as usize)
            < n
        {
            if start.elapsed() > Duration::from_secs(120) {
                println!(
                    "  only {} connections after 120s",
                    counters
                        .connections_open
                        .load(std::sync::atomic::Ordering::Relaxed)
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let connect_time = start.elapsed();
        // Let the handshakes settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let open = counters
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed) as f64;
        let rss_after = rss_kib();
        let pings_before = counters
            .pings_sent
            .load(std::sync::atomic::Ordering::Relaxed);
        let cpu_before = cpu_time();
        let wall = Instant::now();
        tokio::time::sleep(Duration::from_secs(window)).await;
        let cpu = cpu_time() - cpu_before;
        let wall = wall.elapsed();
        let pings = counters
            .pings_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            - pings_before;
        println!("\n{label}");
        println!(
            "  connections open:        {open}  (connected in {:.1}s)",
            connect_time.as_secs_f64()
        );
        println!(
            "  RSS:                     {} KiB -> {} KiB, {:.2} KiB per connection",
            rss_before,
            rss_after,
            (rss_after.saturating_sub(rss_before)) as f64 / open
        );
        println!(
            "  CPU while idle:          {:.2} ms per second ({:.3}% of one core) over {:.0}s",
            cpu.as_secs_f64() * 1000.0 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 100.0 / wall.as_secs_f64(),
            wall.as_secs_f64()
        );
        println!(
            "  keepalive pings sent:    {:.0} per second ({:.2} µs CPU each)",
            pings as f64 / wall.as_secs_f64(),
            if pings > 0 {
                cpu.as_secs_f64() * 1e6 / pings as f64
            } else {
                0.0
            }
        );
        let _ = child.kill();
        let _ = child.wait();
        accept.abort();
        // Wait for the server side to notice and free everything.
        let start = Instant::now();
        while counters
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && start.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn clients(addr: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let addr = addr.to_string();
            tasks.push(tokio::spawn(async move {
                let tcp = loop {
                    match TcpStream::connect(&addr).await {
                        Ok(t) => break t,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                };
                let Ok((_send, conn)) = h2::client::handshake(tcp).await else {
                    return;
                };
                // Keep the connection (and its automatic PING ACKs) going.
                let _ = conn.await;
            }));
            if i % 500 == 499 {
                tokio::task::yield_now().await;
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
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
