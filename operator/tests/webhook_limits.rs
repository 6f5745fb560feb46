//! Hostile clients against the real TLS server: connections that stall
//! the handshake or trickle their headers, more connections than the cap.
//! None of them may hold up an AdmissionReview from a client that sends
//! one (as the API server does), and each is closed when its limit says.
//! Real sockets on loopback: every wait is for something the server does
//! (an answer, a close), bounded generously so a hang fails the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use goaway_operator::inject::AgentConfig;
use goaway_operator::metrics::Metrics;
use goaway_operator::tls::{CertStore, ca, provider};
use goaway_operator::webhook::{Webhook, server};
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use kube::runtime::reflector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long any single wait may take before the test fails.
const BOUND: Duration = Duration::from_secs(30);
const HOST: &str = "goaway-operator.goaway-system.svc";
/// A request head the slow clients never finish.
const HEAD: &[u8] = b"POST /mutate HTTP/1.1\r\nhost: goaway-operator.goaway-system.svc\r\ncontent-type: application/json\r\ncontent-length: 2\r\n";

struct Server {
    addr: SocketAddr,
    tls: TlsConnector,
    metrics: Arc<Metrics>,
    /// Dropping it stops the server.
    _stop: drain_rs::Signal,
}

/// A client connection: its sender, and its driver, which ends when the
/// server closes the connection.
type Client = (
    hyper::client::conn::http1::SendRequest<Body>,
    tokio::task::JoinHandle<()>,
);

/// A webhook server with `config`, trusted by `Server::tls`.
async fn start(config: server::Config) -> Server {
    let names = ca::service_dns_names("goaway-operator", "goaway-system");
    let authority = ca::new_ca().unwrap();
    let (serving, _) = ca::new_serving(&authority, &names).unwrap();
    let certs = Arc::new(CertStore::new(provider()));
    certs
        .load_pem(serving.cert.as_bytes(), serving.key.as_bytes())
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let (store, _writer) = reflector::store();
    let webhook = Arc::new(Webhook::new(store, AgentConfig::default(), metrics.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, watch) = drain_rs::channel();
    let ctx = server::Context {
        certs,
        metrics: metrics.clone(),
    };
    tokio::spawn(server::serve(
        listener,
        webhook.router(),
        ctx,
        config,
        watch,
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(authority.cert.as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Server {
        addr,
        tls: TlsConnector::from(Arc::new(client)),
        metrics,
        _stop: stop,
    }
}

impl Server {
    async fn tcp(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    async fn tls(&self) -> TlsStream<TcpStream> {
        let name = ServerName::try_from(HOST).unwrap();
        let tcp = self.tcp().await;
        timeout(BOUND, self.tls.connect(name, tcp))
            .await
            .expect("TLS handshake")
            .unwrap()
    }

    /// Posts the `no_matching_policy` fixture on a new connection; returns
    /// the status, the body and the connection, kept alive.
    async fn review(&self) -> (u16, String, Client) {
        let tls = self.tls().await;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/admission/no_matching_policy.json"
        ))
        .unwrap();
        let req = Request::post("/mutate")
            .header("host", HOST)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let resp = timeout(BOUND, send.send_request(req))
            .await
            .expect("an answer")
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            String::from_utf8(bytes.to_vec()).unwrap(),
            (send, driver),
        )
    }

    fn metric(&self, name: &str) -> String {
        let text = self.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
            .to_string()
    }
}

/// Reads until the server closes the connection (EOF or reset), at most
/// `BOUND`.
async fn closed(stream: impl AsyncRead + Unpin) {
    closed_within(BOUND, stream).await
}

/// Reads until the server closes the connection, at most `bound`.
async fn closed_within(bound: Duration, mut stream: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 256];
    timeout(bound, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the server closed the connection");
}

const PATIENT: server::Config = server::Config {
    max_connections: 64,
    handshake_timeout: Duration::from_secs(600),
    header_read_timeout: Duration::from_secs(600),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_delay_a_review() {
    let server = start(PATIENT).await;
    // Connections that never start TLS...
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(server.tcp().await);
    }
    // ...and connections that send their headers a byte a second.
    let ended = Arc::new(AtomicUsize::new(0));
    let (trickling_tx, mut trickling) = tokio::sync::mpsc::unbounded_channel();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut tls = server.tls().await;
        let (ended, trickling) = (ended.clone(), trickling_tx.clone());
        slow.push(tokio::spawn(async move {
            for byte in HEAD {
                if tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err() {
                    break;
                }
                let _ = trickling.send(());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            ended.fetch_add(1, Ordering::SeqCst);
        }));
    }
    for _ in 0..20 {
        trickling.recv().await.unwrap();
    }

    let (status, body, _) = server.review().await;
    assert_eq!(status, 200);
    assert!(
        body.contains("11111111-0000-4000-8000-000000000008"),
        "{body}"
    );
    // Answered while every slow connection is still open and unfinished.
    assert_eq!(ended.load(Ordering::SeqCst), 0);
    let open: usize = server
        .metric("goaway_operator_webhook_connections_open")
        .parse()
        .unwrap();
    assert!(open >= 40, "{open} connections open");
    for task in slow {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_accept_and_counted() {
    let server = start(server::Config {
        max_connections: 2,
        ..PATIENT
    })
    .await;
    let _silent = server.tcp().await;
    let _idle = server.tls().await;
    // Both slots are held for the next 600 s: only the cap closes this.
    closed(server.tcp().await).await;
    assert_eq!(
        server.metric("goaway_operator_webhook_connections_refused_total"),
        "1"
    );
    assert_eq!(
        server.metric("goaway_operator_webhook_connections_open"),
        "2"
    );
}

/// A handshake that never finishes, a request head that never finishes,
/// and a keep-alive connection left idle are each closed at their
/// timeout, and their slots serve the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_at_their_timeouts_and_free_their_slots() {
    let handshake = Duration::from_secs(1);
    let header = Duration::from_secs(2);
    // Well past both, well short of hyper's own 30 s header timeout: a
    // close by that is not a close by ours.
    let soon = Duration::from_secs(15);
    let server = start(server::Config {
        max_connections: 2,
        handshake_timeout: handshake,
        header_read_timeout: header,
    })
    .await;

    // Taken before the server's clocks start: lower bounds.
    let started = Instant::now();
    let silent = server.tcp().await;
    let mut unfinished = server.tls().await;
    unfinished.write_all(HEAD).await.unwrap();
    unfinished.flush().await.unwrap();
    closed_within(soon, silent).await;
    assert!(started.elapsed() >= handshake);
    closed_within(soon, unfinished).await;
    assert!(started.elapsed() >= header);

    // The slots are free again (leaked ones would refuse this)...
    let asked = Instant::now();
    let (status, _, (_send, driver)) = server.review().await;
    assert_eq!(status, 200);
    // ...and the keep-alive connection, left idle, is closed in turn.
    timeout(soon, driver)
        .await
        .expect("idle connection closed")
        .unwrap();
    assert!(asked.elapsed() >= header);
    assert_eq!(
        server.metric("goaway_operator_webhook_connections_refused_total"),
        "0"
    );
}
