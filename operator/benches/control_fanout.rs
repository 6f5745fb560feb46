//! Control channel fan-out: one operator replica's real server
//! (`channel::serve`, TLS with a certificate from the operator's own CA)
//! and N simulated agents, each a real TLS client that opens its stream
//! as `goaway-agent` does (HTTP/1.1 upgrade with a bearer token) for its
//! own pod, all N pods in one namespace. Prints figures; asserts nothing.
//!
//!     cargo bench -p goaway-operator --bench control_fanout [-- N...]
//!     GOAWAY_BENCH_AGENTS=2000,5000 cargo bench -p goaway-operator --bench control_fanout
//!
//! N is 1,000 and 10,000 by default. For each N:
//!
//! - a fresh server process (this binary with `--server N`), so each
//!   baseline is clean; it runs the channel on a loopback port with a hub
//!   that has no watches: the namespace's EndpointSlices are fed by hand
//!   (`Hub::endpoints_listed`, `Hub::endpoints_changed`), tokens are
//!   checked by `Authenticator::fixed` (no API server);
//! - the agents in a child process of their own (`--clients`), so that
//!   the server's memory is its own: its heap (live bytes, from the
//!   counting allocator below around the system allocator the operator
//!   ships with) and RSS are read before any client connects and once
//!   every client has read its initial policy and endpoints lines; the
//!   difference over N is the memory per agent stream (kernel socket
//!   buffers are in neither);
//! - fan-out: the time from the hub call to the moment the last of the N
//!   clients has read its line, on one clock both processes read
//!   (CLOCK_MONOTONIC); clients and server share the machine's cores, so
//!   it includes the clients' reading. Three changes, each repeated:
//!   one EndpointSlice listing all N pods flips them all out of (then
//!   back into) the ready set; the same as N/100 slices of 100 endpoints
//!   (the EndpointSlice controller's default size), all flipped by
//!   back-to-back slice events; and a policy edit.
//!
//! RLIMIT_NOFILE is raised with libc (as the transport's idle_connections
//! benchmark does; no new crate) to N + 1,024 per process when it is
//! lower: each process holds N sockets.

// libc (setrlimit, getrusage, clock_gettime) and the counting allocator,
// each with its SAFETY comment.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

use goaway_operator::channel::auth::{Authenticator, PodIdentity};
use goaway_operator::channel::endpoints::EndpointIndex;
use goaway_operator::channel::hub::Hub;
use goaway_operator::channel::{self, policies};
use goaway_operator::metrics::Metrics;
use goaway_operator::tls::{CertStore, ca, provider};
use goaway_operator::{KeepalivePolicy, PolicyDefaults};
use goaway_transport::control::{MAX_LINE, Message, PATH, PROTOCOL};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

/// Counts the bytes live on the heap (requested sizes), around the
/// system allocator: the operator's binary sets no global allocator.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` with the caller's arguments; the
// counter only adds what was handed out and subtracts what was returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NAMESPACE: &str = "shop";
const POLICY: &str = "api";
/// The name the serving certificate is for, and the agents dial.
const HOST: &str = "goaway-operator.goaway-system.svc";
/// Each kind of change is made this many times (half of the endpoint
/// flips take the pods out of the ready set, half put them back).
const REPEATS: usize = 6;
/// Handshakes the clients run at once while connecting.
const CONNECTING: usize = 64;
/// The longest any wait may take.
const BOUND: Duration = Duration::from_secs(120);

/// What a client counts, by the line it read.
const POLICY_LINE: usize = 0;
const READY_LINE: usize = 1;
const UNREADY_LINE: usize = 2;
const KINDS: [&str; 3] = ["policy", "ready", "unready"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--clients") {
        let n: usize = args[i + 2].parse().expect("count");
        raise_nofile(n);
        return clients(&args[i + 1], n, &args[i + 3]);
    }
    if let Some(i) = args.iter().position(|a| a == "--server") {
        let n: usize = args[i + 1].parse().expect("count");
        let (soft, hard) = raise_nofile(n);
        println!("  RLIMIT_NOFILE (each process): soft {soft}, hard {hard}");
        // The operator's runtime: `Runtime::new`, one worker per core.
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        return runtime.block_on(server(n));
    }
    // `cargo bench` passes `--bench`; numbers are agent counts.
    let mut counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty()
        && let Ok(env) = std::env::var("GOAWAY_BENCH_AGENTS")
    {
        counts = env
            .split(',')
            .filter_map(|a| a.trim().parse().ok())
            .collect();
    }
    if counts.is_empty() {
        counts = vec![1_000, 10_000];
    }
    println!(
        "control_fanout: one replica's control channel (loopback TLS), N agents in one namespace; \
         server and clients are separate processes sharing {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    for n in counts {
        println!("\nN = {n}");
        let mut server = Command::new(std::env::current_exe().expect("exe"))
            .args(["--server", &n.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("server process");
        let out = std::io::BufReader::new(server.stdout.take().expect("stdout"));
        for line in out.lines().map_while(Result::ok) {
            match line.strip_prefix("row:") {
                Some(row) => rows.push(row.to_string()),
                None => println!("{line}"),
            }
        }
        let status = server.wait().expect("server process");
        if !status.success() {
            eprintln!("the run with N = {n} failed: {status}");
            std::process::exit(1);
        }
    }
    println!(
        "\n{:>7} | {:>11} | {:>10} | {:>10} | {:>15} | {:>24} | {:>24} | {:>24}",
        "agents",
        "heap/stream",
        "RSS/stream",
        "server RSS",
        "client RSS/conn",
        "1 slice of N: ms min/med/max",
        "N/100 slices of 100: ms",
        "policy edit: ms"
    );
    for row in rows {
        println!("{row}");
    }
    println!(
        "(heap: live bytes requested, server process only; RSS: the server process's, after the \
         streams opened minus before; fan-out: hub call until the last client read its line)"
    );
}

/// The server process: the channel, its hub and the measurements.
async fn server(n: usize) {
    let metrics = Arc::new(Metrics::default());
    let authority = ca::new_ca().expect("CA");
    let names = ca::service_dns_names("goaway-operator", "goaway-system");
    let (serving, _) = ca::new_serving(&authority, &names).expect("serving certificate");
    let certs = Arc::new(CertStore::new(provider()));
    certs
        .load_pem(serving.cert.as_bytes(), serving.key.as_bytes())
        .expect("load");
    let ca_file =
        std::env::temp_dir().join(format!("goaway-control-fanout-{}.crt", std::process::id()));
    std::fs::write(&ca_file, &authority.cert).expect("CA file");

    let hub = Hub::without_watches(metrics.clone());
    let texts = [policy_text("5s"), policy_text("6s")];
    hub.set_policy(NAMESPACE, POLICY, Some(texts[0].clone()));
    let pods: Vec<PodIdentity> = (0..n)
        .map(|i| PodIdentity {
            namespace: NAMESPACE.into(),
            name: format!("api-{i}"),
            uid: uid(i),
            policy: POLICY.into(),
            revision: String::new(),
        })
        .collect();
    let auth = Authenticator::fixed(
        pods.iter()
            .enumerate()
            .map(|(i, pod)| (token(i), pod.clone()))
            .collect(),
    );
    drop(pods);
    // The namespace's first agent starts its EndpointSlice watch, whose
    // list fills the index: a placeholder subscriber (in no slice) opens
    // the namespace and the slices are listed before any client connects,
    // so the index is in the baseline. One slice lists all N pods, ready.
    let _placeholder = hub.subscribe(&PodIdentity {
        namespace: NAMESPACE.into(),
        name: "placeholder".into(),
        uid: "uid-placeholder".into(),
        policy: POLICY.into(),
        revision: String::new(),
    });
    let all = [slice("api-all", 0..n, true)];
    hub.endpoints_listed(NAMESPACE, EndpointIndex::from_slices(&all));
    drop(all);

    let listener = goaway_operator::admin::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, watch) = drain_rs::channel();
    let config = channel::Config {
        max_connections: n + 100,
        ..channel::Config::default()
    };
    let ctx = channel::Context {
        certs,
        auth: Arc::new(auth),
        hub: hub.clone(),
        // The simulated agents never drain.
        drains: Arc::new(channel::drains::Drains::new(
            metrics.clone(),
            Box::new(|_, _| {}),
        )),
        metrics,
    };
    let served = tokio::spawn(channel::serve(listener, ctx, config, watch));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = Memory::now();

    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--clients",
            &addr.to_string(),
            &n.to_string(),
            &ca_file.display().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("clients process");
    let mut events = child_events(child.stdout.take().expect("stdout"));
    let started = mono_ns();
    let mut seen = [0usize; 3];
    for kind in [POLICY_LINE, READY_LINE] {
        seen[kind] += n;
    }
    let (client_heap, client_rss) = loop {
        match next(&mut events).await {
            Event::Memory(heap, rss) => break (heap / n as f64, rss / n as f64),
            Event::Lines { .. } => {}
        }
    };
    let connected = Duration::from_nanos(mono_ns() - started);
    // Let the last writes and the handshakes' leftovers settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = Memory::now();
    let subscribed = hub.subscribed() - 1;
    println!(
        "  {subscribed} streams open, every client has its policy and endpoints lines ({:.1} s from the first connect)",
        connected.as_secs_f64()
    );
    let heap = (after.heap as f64 - before.heap as f64) / n as f64;
    let rss = (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / n as f64;
    println!(
        "  server heap: {} -> {} ({:.2} KiB per stream)",
        mib(before.heap as f64),
        mib(after.heap as f64),
        heap / 1024.0
    );
    println!(
        "  server RSS:  {} -> {} ({:.2} KiB per stream)",
        mib(before.rss_kib as f64 * 1024.0),
        mib(after.rss_kib as f64 * 1024.0),
        rss / 1024.0
    );
    println!(
        "  kernel TCP buffers, both ends (system-wide): {} -> {}",
        mib(before.tcp_pages as f64 * 4096.0),
        mib(after.tcp_pages as f64 * 4096.0)
    );
    println!(
        "  clients (their own process): heap {:.2} KiB, RSS {:.2} KiB per client",
        client_heap / 1024.0,
        client_rss / 1024.0
    );

    // Fan-out. Each change is timed from just before the hub call to the
    // last client's read; the next starts once it is complete.
    let mut timings: Vec<(&str, Vec<Sample>)> = Vec::new();
    let all = [slice("api-all", 0..n, false), slice("api-all", 0..n, true)];
    let samples = flips(&mut events, n, &mut seen, &|ready| {
        hub.endpoints_changed(NAMESPACE, |index| index.apply(&all[usize::from(ready)]));
    })
    .await;
    timings.push(("1 slice listing all N", samples));
    drop(all);
    // Relisted as slices of 100, every pod still ready in one slice: no
    // agent's standing changes, nothing is sent.
    let chunks = |ready: bool| {
        (0..n.div_ceil(100))
            .map(|c| slice(&format!("api-{c:04}"), c * 100..n.min(c * 100 + 100), ready))
            .collect::<Vec<_>>()
    };
    hub.endpoints_listed(NAMESPACE, EndpointIndex::from_slices(&chunks(true)));
    let chunked = [chunks(false), chunks(true)];
    let samples = flips(&mut events, n, &mut seen, &|ready| {
        for slice in &chunked[usize::from(ready)] {
            hub.endpoints_changed(NAMESPACE, |index| index.apply(slice));
        }
    })
    .await;
    timings.push(("N/100 slices of 100, back to back", samples));
    drop(chunked);
    let mut samples = Vec::new();
    for round in 0..REPEATS {
        seen[POLICY_LINE] += n;
        let text = texts[(round + 1) % 2].clone();
        samples.push(
            measure(&mut events, POLICY_LINE, seen[POLICY_LINE], || {
                hub.set_policy(NAMESPACE, POLICY, Some(text.clone()))
            })
            .await,
        );
    }
    timings.push(("policy edit", samples));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = Memory::now();
    println!(
        "  after the changes: server heap {}, RSS {} ({:.2} KiB RSS per stream over the baseline)",
        mib(end.heap as f64),
        mib(end.rss_kib as f64 * 1024.0),
        (end.rss_kib as f64 - before.rss_kib as f64) / n as f64
    );

    let mut columns = Vec::new();
    for (label, samples) in &timings {
        let ms = |f: fn(&Sample) -> u64| {
            let mut v: Vec<f64> = samples.iter().map(|s| f(s) as f64 / 1e6).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let fanout = ms(|s| s.fanout_ns);
        let hub_call = ms(|s| s.hub_ns);
        let cpu = ms(|s| s.server_cpu_ns);
        let median = |v: &[f64]| (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0;
        println!(
            "  {label}: to the last client {:.1} / {:.1} / {:.1} ms (min/median/max of {}); \
             hub call {:.2} ms, server CPU {:.1} ms ({:.1} µs per agent) median",
            fanout[0],
            median(&fanout),
            fanout[fanout.len() - 1],
            samples.len(),
            median(&hub_call),
            median(&cpu),
            median(&cpu) * 1e3 / n as f64,
        );
        columns.push(format!(
            "{:>24}",
            format!(
                "{:.0} / {:.0} / {:.0}",
                fanout[0],
                median(&fanout),
                fanout[fanout.len() - 1]
            )
        ));
    }
    println!(
        "row:{n:>7} | {:>7.2} KiB | {:>6.2} KiB | {:>10} | {:>11.2} KiB | {}",
        heap / 1024.0,
        rss / 1024.0,
        mib(after.rss_kib as f64 * 1024.0),
        client_rss / 1024.0,
        columns.join(" | ")
    );

    // The clients go first (their process exits when its input closes),
    // then the server.
    drop(child.stdin.take());
    let _ = child.wait();
    drop(stop);
    let _ = tokio::time::timeout(Duration::from_secs(10), served).await;
    let _ = std::fs::remove_file(&ca_file);
}

/// Flips every pod out of the ready set and back, [`REPEATS`] changes
/// in all, each made by `change(ready)`.
async fn flips(
    events: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    seen: &mut [usize; 3],
    change: &dyn Fn(bool),
) -> Vec<Sample> {
    let mut samples = Vec::new();
    for round in 0..REPEATS {
        let ready = round % 2 == 1;
        let kind = if ready { READY_LINE } else { UNREADY_LINE };
        seen[kind] += n;
        samples.push(measure(events, kind, seen[kind], || change(ready)).await);
    }
    samples
}

/// One timed change.
struct Sample {
    /// From just before the hub call to the last client's read.
    fanout_ns: u64,
    /// The hub call itself (the lock held, every view sent).
    hub_ns: u64,
    /// The server process's CPU over the change.
    server_cpu_ns: u64,
}

/// Makes `change` and waits until the clients have read `total` lines of
/// `kind` in all.
async fn measure(
    events: &mut mpsc::UnboundedReceiver<Event>,
    kind: usize,
    total: usize,
    change: impl FnOnce(),
) -> Sample {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = cpu_ns();
    let start = mono_ns();
    change();
    let called = mono_ns();
    let last = loop {
        match next(events).await {
            Event::Lines {
                kind: k,
                count,
                last,
            } if k == kind && count == total => break last,
            Event::Lines { kind: k, count, .. } => {
                panic!(
                    "clients read {count} {} lines, waiting for {total} {}",
                    KINDS[k], KINDS[kind]
                )
            }
            Event::Memory(..) => {}
        }
    };
    Sample {
        fanout_ns: last.saturating_sub(start),
        hub_ns: called - start,
        server_cpu_ns: cpu_ns() - cpu,
    }
}

/// What the clients process reports, one line each.
enum Event {
    /// Every client has read a line of `kind`: `count` in all, the last
    /// read at `last` (CLOCK_MONOTONIC, ns).
    Lines {
        kind: usize,
        count: usize,
        last: u64,
    },
    /// Its heap and RSS growth (bytes) from before the first connect
    /// until every client had its initial lines.
    Memory(f64, f64),
}

fn child_events(out: std::process::ChildStdout) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let event = if let Some(memory) = line.strip_prefix("memory ") {
                let mut words = memory.split(' ').map(|w| w.parse().unwrap_or(f64::NAN));
                let mut word = || words.next().unwrap_or(f64::NAN);
                Event::Memory(word(), word())
            } else {
                let mut words = line.split_whitespace();
                let mut word = || words.next().and_then(|w| w.parse().ok());
                match (word(), word(), word()) {
                    (Some(kind), Some(count), Some(last)) => Event::Lines {
                        kind: kind as usize,
                        count: count as usize,
                        last,
                    },
                    _ => panic!("clients: {line}"),
                }
            };
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    match tokio::time::timeout(BOUND, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the clients process ended"),
        Err(_) => panic!("no word from the clients within {BOUND:?}"),
    }
}

/// The clients process: N agents' streams. Prints `<kind> <count>
/// <last>` whenever every client has read one more line of a kind, and
/// its memory once every client has its initial lines; exits when its
/// standard input closes.
fn clients(addr: &str, n: usize, ca_file: &str) {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ca = std::fs::read(ca_file).expect("CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("PEM")).expect("CA certificate");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Each agent builds its own config per session: no resumption.
    tls.resumption = rustls::client::Resumption::disabled();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let before = Memory::now();
    let counts = Arc::new(Counts::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(CONNECTING));
    runtime.block_on(async {
        for i in 0..n {
            let (tls, gate, counts, tx, addr) = (
                tls.clone(),
                gate.clone(),
                counts.clone(),
                tx.clone(),
                addr.to_string(),
            );
            tokio::spawn(async move {
                if let Err(error) = agent(i, &addr, tls, &gate, &counts, n, &tx).await {
                    println!("client {i}: {error}");
                    std::process::exit(1);
                }
            });
        }
        let mut initial = 0;
        while let Some((kind, count, last)) = rx.recv().await {
            println!("{kind} {count} {last}");
            if count == n && (kind == POLICY_LINE || kind == READY_LINE) {
                initial += 1;
                if initial == 2 {
                    let after = Memory::now();
                    println!(
                        "memory {} {}",
                        after.heap as f64 - before.heap as f64,
                        (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0
                    );
                }
            }
        }
    });
}

/// Lines read by all clients, by kind, and when the latest was read.
#[derive(Default)]
struct Counts {
    lines: [AtomicUsize; 3],
    last: [AtomicU64; 3],
}

/// One agent's stream, opened as `goaway-agent`'s `control::session`
/// does: TCP, TLS against the operator's CA, the upgrade request with the
/// pod's token, the response head, then one message per line.
async fn agent(
    i: usize,
    addr: &str,
    tls: tokio_rustls::TlsConnector,
    gate: &Semaphore,
    counts: &Counts,
    n: usize,
    report: &mpsc::UnboundedSender<(usize, usize, u64)>,
) -> Result<(), String> {
    let permit = gate.acquire().await.map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(HOST).map_err(|e| e.to_string())?;
    let mut stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let port = addr.rsplit(':').next().unwrap_or_default();
    let request = format!(
        "GET {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\nAuthorization: Bearer {}\r\n\r\n",
        token(i)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let read = (&mut reader).take(1).read_to_end(&mut head).await;
        if read.map_err(|e| e.to_string())? == 0 || head.len() > 8 << 10 {
            return Err(format!("response {:?}", String::from_utf8_lossy(&head)));
        }
    }
    if !head.starts_with(b"HTTP/1.1 101 ") {
        return Err(format!("response {:?}", String::from_utf8_lossy(&head)));
    }
    drop(permit);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Ok(());
        }
        let at = mono_ns();
        let kind = match Message::from_line(line.trim_ascii_end()).map_err(|e| e.to_string())? {
            Message::Policy { .. } => POLICY_LINE,
            Message::Endpoints { ready: true, .. } => READY_LINE,
            Message::Endpoints { ready: false, .. } => UNREADY_LINE,
            // Not measured here: no scale-up is simulated.
            Message::Heartbeat | Message::Rebalance { .. } => continue,
        };
        // The latest read is recorded before counting: the client whose
        // count completes a round sees every read of that round in it.
        counts.last[kind].fetch_max(at, SeqCst);
        let count = counts.lines[kind].fetch_add(1, SeqCst) + 1;
        if count.is_multiple_of(n) {
            let _ = report.send((kind, count, counts.last[kind].load(SeqCst)));
        }
    }
}

/// Pod `i`'s uid.
fn uid(i: usize) -> String {
    format!("uid-api-{i}")
}

/// Pod `i`'s token.
fn token(i: usize) -> String {
    format!("token-api-{i}")
}

/// A slice named `name` listing pods `range`, each ready or terminating.
fn slice(name: &str, range: std::ops::Range<usize>, ready: bool) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: range
            .map(|i| Endpoint {
                addresses: vec![format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(true),
                    terminating: Some(!ready),
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(NAMESPACE.into()),
                    name: Some(format!("api-{i}")),
                    uid: Some(uid(i)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: None,
    }
}

/// The policy file an agent is sent: rendered as the operator renders it.
fn policy_text(delay: &str) -> Arc<str> {
    let policy: KeepalivePolicy = serde_yaml::from_str(&format!(
        "apiVersion: goaway.dev/v1alpha1\nkind: KeepalivePolicy\nmetadata: {{name: {POLICY}, namespace: {NAMESPACE}}}\n\
         spec: {{selector: {{matchLabels: {{app: api}}}}, port: grpc, server: {{maxConnectionAge: 30m, maxConnectionAgeGrace: 30s}}, \
         drain: {{delay: {delay}, timeout: 60s}}}}\n"
    ))
    .expect("policy");
    policies::render(&policy, &PolicyDefaults::default()).expect("a valid policy")
}

/// A process's memory at one moment.
struct Memory {
    /// Live heap bytes (the counting allocator).
    heap: usize,
    /// Resident set, KiB.
    rss_kib: u64,
    /// Pages of TCP buffers, system-wide (/proc/net/sockstat).
    tcp_pages: u64,
}

impl Memory {
    fn now() -> Memory {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let tcp_pages = sockstat
            .lines()
            .find_map(|l| l.strip_prefix("TCP:"))
            .and_then(|l| l.split(" mem ").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Memory {
            heap: LIVE.load(SeqCst),
            rss_kib,
            tcp_pages,
        }
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1 << 20) as f64)
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for both processes (an
/// `Instant` cannot cross a process boundary).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given;
    // CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process's CPU time (user + system), ns.
fn cpu_ns() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Raises RLIMIT_NOFILE to N + 1,024 when it is lower (the hard limit
/// too when it must and may: as root); returns the limits now.
fn raise_nofile(n: usize) -> (u64, u64) {
    let want = n as u64 + 1_024;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    (lim.rlim_cur, lim.rlim_max)
}
