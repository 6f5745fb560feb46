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
//!    EndpointSlices ([`endpoints`]), with heartbeats.
//!
//! Bounded like the webhook ([`Config`]): a connection cap (more are
//! closed at accept and counted), the handshake, the request head (size
//! and time) and the token review each within a timeout, so a connection
//! that is not an authenticated agent is gone within seconds. Streams end
//! when the agent closes, a write stalls, or the operator shuts down (the
//! agents reconnect, with backoff, to another replica).

pub mod auth;
pub mod endpoints;
pub mod http;
pub mod hub;
pub mod policies;
pub mod rebalance;
pub mod stream;
pub mod token_cache;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use goaway_transport::control::HEARTBEAT;
use kube::Client;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, info};

use self::auth::Authenticator;
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
        // The agent sends nothing after its request: any read completes
        // only when it closes, or breaks the protocol.
        read = reader.read_u8() => match read {
            Ok(_) => "the agent sent data after its request".to_string(),
            Err(_) => "the agent closed the stream".to_string(),
        },
    };
    ctx.metrics.control_stream(false);
    debug!(
        namespace = pod.namespace,
        pod = pod.name,
        ended,
        "stream closed"
    );
}
