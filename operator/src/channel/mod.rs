//! The control channel's server: what the operator tells each injected
//! agent about its own pod, pushed as it changes (the wire format is
//! [`goaway_transport::control`]; the agent's end is `goaway-agent`'s
//! `control` module).
//!
//! Every replica serves it, leader or not: the agents are spread over the
//! replicas by their Service, and each replica watches what its own
//! agents need. A stream is:
//!
//! 1. a TLS connection to `--control-addr` with the webhook's serving
//!    certificate ([`CertStore`]; the agents trust the CA the controller
//!    writes into each policy ConfigMap as `ca.crt`);
//! 2. one HTTP/1.1 request, `GET /v1/agent/stream` upgrading to
//!    `goaway-control/1` with the pod's projected token ([`http`]);
//! 3. the token checked ([`auth`]): `101 Switching Protocols`, or a 4xx/503
//!    with the reason and the connection closed;
//! 4. the pod's [`hub::View`] written as it changes ([`stream`]): the
//!    policy ([`policies`]) and where the pod stands in its namespace's
//!    EndpointSlices ([`endpoints`]), with heartbeats; meanwhile the
//!    agent's reports are read, one line each: a finished drain, recorded
//!    on the pod and the policy ([`drains`]).
//!
//! Bounded like the webhook ([`Config`]): a connection cap (more are
//! closed at accept and counted), the handshake, the request head (size
//! and time) and the token review each within a timeout, so a connection
//! that is not an authenticated agent is gone within seconds. Streams end
//! when the agent closes, a write stalls, or the operator shuts down (the
//! agents reconnect, with backoff, to another replica).

pub mod auth;
pub mod drains;
pub mod endpoints;
mod events;
pub mod http;
pub mod hub;
pub mod policies;
pub mod rebalance;
pub mod stream;
pub mod token_cache;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use goaway_transport::control::{HEARTBEAT, MAX_REPORT_LINE, Report};
use kube::Client;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, info};

use self::auth::{Authenticator, PodIdentity};
use self::hub::Hub;
use crate::metrics::Metrics;
use crate::tls::CertStore;
use crate::{Error, Result};

/// `--control-addr` by default.
pub const DEFAULT_ADDR: &str = "0.0.0.0:9444";
/// `--control-max-connections` by default: one stream per injected pod
/// the replica serves, with room for reconnects.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The server's limits.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most connections at once, streams and handshakes alike.
    pub max_connections: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long the request head may take after the handshake.
    pub header_timeout: Duration,
    /// How long checking the token may take.
    pub auth_timeout: Duration,
    /// How the stream writes.
    pub timing: stream::Timing,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(10),
            timing: stream::Timing {
                heartbeat: HEARTBEAT,
                write_timeout: Duration::from_secs(10),
            },
        }
    }
}

/// What the server needs from the rest of the operator.
#[derive(Clone)]
pub struct Context {
    /// The serving certificate (the webhook's).
    pub certs: Arc<CertStore>,
    /// Checks tokens.
    pub auth: Arc<Authenticator>,
    /// The agents' views.
    pub hub: Arc<Hub>,
    /// Where the agents' drain reports go.
    pub drains: Arc<drains::Drains>,
    /// Where streams and refusals are counted.
    pub metrics: Arc<Metrics>,
}

/// A hub whose namespaces' EndpointSlices are watched with `client`;
/// scale-ups are recorded as `instance` ([`rebalance::publish`]).
pub fn hub(client: Client, metrics: Arc<Metrics>, instance: String) -> Arc<Hub> {
    Hub::new(
        metrics,
        Box::new(move |hub, namespace, subscribers| {
            let (events, instance) = (client.clone(), instance.clone());
            let publisher = hub.clone();
            let record = move |_: &str, decision: &rebalance::Decision, told| {
                tokio::spawn(rebalance::publish(
                    events.clone(),
                    publisher.clone(),
                    decision.clone(),
                    told,
                    instance.clone(),
                ));
            };
            tokio::spawn(endpoints::watch_namespace(
                client.clone(),
                hub,
                namespace,
                subscribers,
                record,
            ));
        }),
    )
}

/// Serves streams on `listener` until `shutdown` is signalled; then the
/// listener closes and every stream ends at once (its agent reconnects
/// elsewhere); `shutdown` is released when they have.
pub async fn serve(
    listener: TcpListener,
    ctx: Context,
    config: Config,
    shutdown: drain_rs::Watch,
) -> Result<()> {
    let tls = ServerConfig::builder_with_provider(ctx.certs.provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(ctx.certs.clone());
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let slots = Arc::new(Semaphore::new(config.max_connections));
    info!(addr = ?listener.local_addr().ok(), max_connections = config.max_connections, "control channel listening");
    let mut signalled = pin!(shutdown.clone().signaled());
    let release = loop {
        let (tcp, peer) = match crate::lifecycle::accept_until(&listener, &mut signalled).await {
            Ok(accepted) => accepted,
            Err(release) => break release,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.metrics.control_refused("capacity");
            debug!(%peer, limit = config.max_connections, "connection limit reached; closing new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (ctx, config, acceptor, stop) = (
            ctx.clone(),
            config.clone(),
            acceptor.clone(),
            shutdown.clone(),
        );
        let connection = async move {
            let tls =
                match tokio::time::timeout(config.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        ctx.metrics.control_refused("handshake");
                        return debug!(%error, "TLS handshake failed");
                    }
                    Err(_) => {
                        ctx.metrics.control_refused("handshake");
                        return debug!("TLS handshake timed out");
                    }
                };
            tokio::select! {
                () = connection(tls, &ctx, &config) => {}
                _ = stop.signaled() => debug!("stream ended: shutting down"),
            }
            drop(slot);
        };
        let span = debug_span!("control_connection", %peer, pod = tracing::field::Empty);
        tokio::spawn(connection.instrument(span));
    };
    drop(listener);
    drop(shutdown);
    // The streams saw the same signal; they hold their clones of the
    // watch until they have ended.
    drop(release);
    Ok(())
}

/// One connection after its handshake: request, authentication, stream.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, ctx: &Context, config: &Config) {
    let refuse = async |io: &mut S, status: u16, label: &'static str, reason: &str| {
        ctx.metrics.control_refused(label);
        debug!(status, reason, "stream refused");
        let answer = http::refusal(status, reason);
        let _ = tokio::time::timeout(config.timing.write_timeout, async {
            io.write_all(&answer).await?;
            io.shutdown().await
        })
        .await;
    };
    let head = match tokio::time::timeout(config.header_timeout, http::read_head(&mut io)).await {
        Err(_) => return refuse(&mut io, 408, "header_timeout", "no request in time").await,
        Ok(Err(error)) => return debug!(%error, "reading the request failed"),
        Ok(Ok(Ok(None))) => return debug!("closed before a request"),
        Ok(Ok(Ok(Some(head)))) => head,
        Ok(Ok(Err(bad))) => {
            return refuse(&mut io, bad.status(), bad.label(), &bad.to_string()).await;
        }
    };
    let token = match http::parse(&head) {
        Ok(token) => token,
        Err(bad) => return refuse(&mut io, bad.status(), bad.label(), &bad.to_string()).await,
    };
    // Boxed: the review's future is the largest state of this task, which
    // every stream would otherwise carry for its whole life (2 KiB per
    // stream, the control_fanout benchmark).
    let review = Box::pin(ctx.auth.authenticate(&token));
    let pod = match tokio::time::timeout(config.auth_timeout, review).await {
        Ok(Ok(pod)) => pod,
        Ok(Err(refusal)) => {
            let reason = refusal.to_string();
            return refuse(&mut io, refusal.status(), refusal.label(), &reason).await;
        }
        Err(_) => {
            return refuse(
                &mut io,
                503,
                "auth_timeout",
                "the token could not be checked in time",
            )
            .await;
        }
    };
    drop((head, token));
    let span = tracing::Span::current();
    span.record("pod", format!("{}/{}", pod.namespace, pod.name));
    if let Err(error) = io.write_all(&http::switching_protocols()).await {
        return debug!(%error, "writing 101 failed");
    }
    let mut subscription = ctx.hub.subscribe(&pod);
    ctx.metrics.control_stream(true);
    debug!(
        namespace = pod.namespace,
        pod = pod.name,
        policy = pod.policy,
        "stream open"
    );
    let (mut reader, mut writer) = tokio::io::split(io);
    let ended = tokio::select! {
        sent = stream::send_view(subscription.view(), &mut writer, config.timing, &ctx.metrics) => match sent {
            Ok(()) => "the hub stopped".to_string(),
            Err(error) => format!("write failed: {error}"),
        },
        ended = read_reports(&mut reader, &pod, &ctx.drains) => ended,
    };
    ctx.metrics.control_stream(false);
    debug!(
        namespace = pod.namespace,
        pod = pod.name,
        ended,
        "stream closed"
    );
}

/// Reads the agent's reports until it closes the stream or breaks the
/// protocol (a line over [`MAX_REPORT_LINE`], one that is not a report,
/// more than [`drains::MAX_REPORTS_PER_STREAM`] of them); why it ended.
/// Byte by byte, with no buffer while none arrives: an agent reports once
/// or twice in its life, and its stream is open all of it.
async fn read_reports<R: AsyncRead + Unpin>(
    reader: &mut R,
    pod: &PodIdentity,
    drains: &drains::Drains,
) -> String {
    let mut line = Vec::new();
    let mut reports = 0;
    loop {
        let Ok(byte) = reader.read_u8().await else {
            return "the agent closed the stream".into();
        };
        if byte != b'\n' {
            if line.len() == MAX_REPORT_LINE {
                return format!("the agent sent a line over {MAX_REPORT_LINE} bytes");
            }
            line.push(byte);
            continue;
        }
        reports += 1;
        if reports > drains::MAX_REPORTS_PER_STREAM {
            return "the agent sent too many reports".into();
        }
        match Report::from_line(&line) {
            Ok(Report::Drained(report)) => drains.report(pod, report),
            Err(error) => return format!("the agent sent something that is not a report: {error}"),
        }
        line = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use goaway_transport::control::DrainReport;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn pod() -> PodIdentity {
        PodIdentity {
            namespace: "ns".into(),
            name: "api-0".into(),
            uid: "uid-0".into(),
            policy: "grpc".into(),
            revision: String::new(),
        }
    }

    /// What `read_reports` makes of `sent` (the agent then closes): why
    /// it ended, and the drain numbers recorded.
    async fn read(sent: &[u8]) -> (String, Vec<u64>) {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let sink = recorded.clone();
        let drains = drains::Drains::new(
            Arc::new(Metrics::default()),
            Box::new(move |pod: PodIdentity, report: DrainReport| {
                assert_eq!(pod, self::pod());
                sink.lock().unwrap().push(report.drain);
            }),
        );
        let (mut agent, mut operator) = tokio::io::duplex(64);
        let sent = sent.to_vec();
        let writer = tokio::spawn(async move {
            // The reader may end the stream before all of it is written.
            let _ = agent.write_all(&sent).await;
        });
        let ended = read_reports(&mut operator, &pod(), &drains).await;
        drop(operator);
        writer.await.unwrap();
        let recorded = recorded.lock().unwrap().clone();
        (ended, recorded)
    }

    fn drained(drain: u64) -> Vec<u8> {
        Report::Drained(DrainReport {
            drain,
            ..DrainReport::default()
        })
        .to_line()
    }

    #[tokio::test]
    async fn drain_reports_are_read_line_by_line_until_the_agent_closes() {
        let (ended, recorded) = read(&[drained(1), drained(2)].concat()).await;
        assert_eq!(ended, "the agent closed the stream");
        assert_eq!(recorded, [1, 2]);
        // A line not finished when the agent closes is not a report.
        let mut partial = drained(1);
        partial.pop();
        assert_eq!(read(&partial).await.1, Vec::<u64>::new());
    }

    #[tokio::test]
    async fn an_agent_that_breaks_the_protocol_loses_its_stream() {
        let (ended, recorded) = read(b"{\"type\":\"policy\",\"text\":\"\"}\n").await;
        assert!(ended.contains("not a report"), "{ended}");
        assert!(recorded.is_empty());

        let long = vec![b' '; MAX_REPORT_LINE + 1];
        let (ended, _) = read(&long).await;
        assert_eq!(
            ended,
            format!("the agent sent a line over {MAX_REPORT_LINE} bytes")
        );
        // A line of exactly the limit is read (and refused as JSON).
        let mut exact = vec![b' '; MAX_REPORT_LINE];
        exact.push(b'\n');
        assert!(read(&exact).await.0.contains("not a report"));

        let many: Vec<u8> = (1..=drains::MAX_REPORTS_PER_STREAM as u64 + 1)
            .flat_map(drained)
            .collect();
        let (ended, recorded) = read(&many).await;
        assert_eq!(ended, "the agent sent too many reports");
        assert_eq!(recorded.len(), drains::MAX_REPORTS_PER_STREAM);
    }
}
