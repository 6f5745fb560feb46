//! The demo's clients: several "client pods", each a well-behaved gRPC
//! client (the transport's `Channel`: honours GOAWAY, retries what was
//! never processed) with round-robin over the endpoints it currently
//! knows, skipping those not READY — like gRPC's `round_robin`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use goaway_transport::client::{Channel, ChannelConfig, Connectivity};
use goaway_transport::{ClientParams, Counters};
use tokio::time::Instant;

/// The endpoint list as clients see it (after propagation).
#[derive(Default)]
pub(super) struct Endpoints {
    list: ArcSwap<Vec<String>>,
}

impl Endpoints {
    /// Adds an address.
    pub(super) fn add(&self, addr: String) {
        let mut v = (**self.list.load()).clone();
        v.push(addr);
        self.list.store(Arc::new(v));
    }

    /// Removes an address.
    pub(super) fn remove(&self, addr: &str) {
        let v: Vec<String> = self
            .list
            .load()
            .iter()
            .filter(|a| *a != addr)
            .cloned()
            .collect();
        self.list.store(Arc::new(v));
    }

    fn snapshot(&self) -> Arc<Vec<String>> {
        self.list.load_full()
    }
}

/// Totals across every client.
#[derive(Default)]
pub(super) struct Tally {
    /// Calls that succeeded.
    pub ok: AtomicU64,
    /// Calls that failed.
    pub failed: AtomicU64,
    /// A few failure messages, for the report.
    pub samples: Mutex<Vec<String>>,
    /// Transport counters of every client channel.
    pub counters: Arc<Counters>,
}

impl Tally {
    fn record(&self, result: anyhow::Result<()>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Relaxed);
                let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
                if s.len() < 5 {
                    s.push(format!("{e:#}"));
                }
            }
        }
    }
}

struct ClientPod {
    channels: ArcSwap<Vec<(String, Channel)>>,
    next: AtomicUsize,
    counters: Arc<Counters>,
}

impl ClientPod {
    /// Follows the endpoint list: channels for new addresses, none for
    /// removed ones (in-flight calls on a removed channel still finish).
    fn reconcile(&self, endpoints: &[String]) {
        let current = self.channels.load();
        if current.len() == endpoints.len()
            && current.iter().zip(endpoints).all(|((a, _), b)| a == b)
        {
            return;
        }
        let mut next = Vec::with_capacity(endpoints.len());
        for addr in endpoints {
            let ch = match current.iter().find(|(a, _)| a == addr) {
                Some((_, ch)) => ch.clone(),
                None => {
                    let ch = Channel::tcp(
                        addr.clone(),
                        ChannelConfig {
                            params: ClientParams::default(),
                            counters: self.counters.clone(),
                            ..ChannelConfig::default()
                        },
                    );
                    ch.connect();
                    ch
                }
            };
            next.push((addr.clone(), ch));
        }
        for (addr, ch) in current.iter() {
            if !endpoints.contains(addr) {
                ch.shutdown();
            }
        }
        self.channels.store(Arc::new(next));
    }

    fn pick(&self) -> Option<Channel> {
        let channels = self.channels.load();
        if channels.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let n = channels.len();
        (0..n)
            .map(|i| &channels[(start + i) % n].1)
            .find(|ch| ch.state() == Connectivity::Ready)
            .or_else(|| Some(&channels[start % n].1))
            .cloned()
    }
}

/// Runs `pods × concurrency` callers until `stop`.
pub(super) async fn run(
    endpoints: Arc<Endpoints>,
    tally: Arc<Tally>,
    pods: usize,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for _ in 0..pods {
        let pod = Arc::new(ClientPod {
            channels: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            counters: tally.counters.clone(),
        });
        pod.reconcile(&endpoints.snapshot());
        // The pod's view of the endpoint list follows the published one.
        {
            let (pod, endpoints, stop) = (pod.clone(), endpoints.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    pod.reconcile(&endpoints.snapshot());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        for _ in 0..concurrency {
            let (pod, tally, stop) = (pod.clone(), tally.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let Some(ch) = pod.pick() else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    tally.record(call(&ch).await);
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn call(ch: &Channel) -> anyhow::Result<()> {
    let payload = b"hello, rolling deploy";
    let mut framed = BytesMut::with_capacity(5 + payload.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    let request = || {
        let mut r = http::Request::new(());
        *r.method_mut() = http::Method::POST;
        *r.uri_mut() = http::Uri::from_static("http://demo/echo.Echo/Unary");
        let h = r.headers_mut();
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert("te", http::HeaderValue::from_static("trailers"));
        r
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let resp = ch.send(request, Bytes::from(framed), deadline).await?;
    let (head, mut body) = resp.into_parts();
    anyhow::ensure!(head.status == 200, "HTTP {}", head.status);
    if let Some(status) = head.headers.get("grpc-status") {
        // Trailers-only answer.
        anyhow::bail!(
            "grpc-status {status:?} {:?}",
            head.headers.get("grpc-message")
        );
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    match trailers.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"0") => Ok(()),
        other => anyhow::bail!("grpc-status {other:?} {:?}", trailers.get("grpc-message")),
    }
}
