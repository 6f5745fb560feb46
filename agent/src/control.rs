//! The agent's end of the operator's control channel
//! ([`goaway_transport::control`]): what the operator knows about this pod,
//! pushed as it changes — the policy (so an edit applies within a second,
//! not when the kubelet next refreshes the mounted ConfigMap), whether
//! the pod is still in its Services' ready endpoints (the evidence a drain
//! starts on, see [`crate::drain`]), and a Service's scale-up (the cue to
//! rebalance, see [`crate::rebalance`]).
//!
//! The channel is optional and never in the way: without it, or while it
//! is down, the policy comes from the mounted file alone and a drain waits
//! its whole `drain.delay`. While it is up and has sent the policy, it is
//! the source: the file (the kubelet's copy of the same policy, up to a
//! refresh period behind) is not applied, so a late refresh cannot put an
//! older version back. The agent dials the operator's Service over
//! TLS (the operator's CA is in the policy ConfigMap, `ca.crt`), upgrades
//! an HTTP/1.1 request to the stream with its projected service-account
//! token, and reads one message per line; it reconnects with backoff (1s,
//! ×1.6 ±20%, at most 30s) to whichever replica the Service picks, reading
//! the token and the CA afresh each time (the kubelet rotates the token).
//!
//! The agent writes back one line per finished drain
//! ([`control::Report::Drained`]), so that the operator records it as an
//! Event on the pod and counts it on the policy's status, where it
//! outlives the pod and its log. A report that could not be written is
//! written on the next session; one the operator never gets (it was
//! unreachable until the pod stopped) is in the agent's log only.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use goaway_transport::client::{Backoff, BackoffConfig};
use goaway_transport::control::{self, DrainReport, Message, Report};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Agent;

/// Whether the pod is in the ready endpoints of its EndpointSlices, as the
/// operator last said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Endpoints {
    /// No word from the operator (not connected, or not yet told).
    #[default]
    Unknown,
    /// Ready in at least one EndpointSlice that lists the pod.
    InReadyEndpoints,
    /// In no EndpointSlice's ready endpoints: every proxy that has caught
    /// up sends it no new connection.
    OutOfReadyEndpoints,
}

/// Where and how to reach the operator (`--control-url`, `--control-ca`,
/// `--control-token-file`).
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// The operator's host name (checked against its certificate).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The CA that signed its certificate (PEM).
    pub ca: PathBuf,
    /// The projected service-account token (audience
    /// [`control::AUDIENCE`]).
    pub token: PathBuf,
}

impl ControlConfig {
    /// From `https://host:port`.
    pub fn parse(url: &str, ca: PathBuf, token: PathBuf) -> Result<ControlConfig, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url:?} does not start with https://"))?;
        let authority = rest.trim_end_matches('/');
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{url:?} has no port"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{url:?}: {port:?} is not a port"))?;
        if host.is_empty() || authority.contains('/') {
            return Err(format!("{url:?} is not https://host:port"));
        }
        Ok(ControlConfig {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            ca,
            token,
        })
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("reading {file}: {error}")]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("the operator answered {status}: {reason}")]
    Refused { status: u16, reason: String },
    #[error("the operator's answer is not HTTP: {0}")]
    BadResponse(String),
    #[error("nothing from the operator for {0:?}")]
    Silent(Duration),
    #[error("the operator closed the stream")]
    Closed,
}

/// The reconnect backoff.
const BACKOFF: BackoffConfig = BackoffConfig {
    initial: Duration::from_secs(1),
    multiplier: 1.6,
    jitter: 0.2,
    max: Duration::from_secs(30),
    min_connect_timeout: Duration::from_secs(10),
};

/// Keeps a session open for as long as the agent runs, reconnecting with
/// backoff. `endpoints` goes back to [`Endpoints::Unknown`] whenever the
/// session ends; [`Agent::control_connected`] is true while one is open.
pub async fn run(config: ControlConfig, agent: Arc<Agent>, endpoints: watch::Sender<Endpoints>) {
    let mut backoff = Backoff::new(BACKOFF);
    // Drains reported to the operator, across sessions.
    let mut reported = 0;
    loop {
        if let Some(at) = backoff.next_attempt() {
            tokio::time::sleep_until(at).await;
        }
        let started = Instant::now();
        let deadline = backoff.start_attempt(started, rand::random::<f64>);
        let result = session(&config, &agent, &endpoints, &mut reported, deadline).await;
        agent.control_connected.store(false, Relaxed);
        endpoints.send_replace(Endpoints::Unknown);
        agent.policy.operator_gone();
        match result {
            Ok(()) => {}
            Err(e) => tracing::warn!(
                operator = %format!("{}:{}", config.host, config.port),
                error = %e,
                "control channel down; the policy file and drain.delay stand in"
            ),
        }
        // A session that ran a while was a success: start the backoff over.
        if started.elapsed() > BACKOFF.max {
            backoff.reset();
        }
    }
}

/// One session: connect, upgrade, read messages until the stream ends;
/// meanwhile, report each drain that finishes (and one finished earlier
/// that no session has reported yet).
async fn session(
    config: &ControlConfig,
    agent: &Arc<Agent>,
    endpoints: &watch::Sender<Endpoints>,
    reported: &mut u64,
    connect_deadline: Instant,
) -> Result<(), SessionError> {
    let read = |file: &PathBuf| {
        std::fs::read(file).map_err(|error| SessionError::Read {
            file: file.clone(),
            error,
        })
    };
    let token = String::from_utf8_lossy(&read(&config.token)?)
        .trim()
        .to_string();
    let ca = read(&config.ca)?;
    let mut stream = tokio::time::timeout_at(connect_deadline, connect(config, &ca))
        .await
        .map_err(|_| SessionError::Io(std::io::ErrorKind::TimedOut.into()))??;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\nAuthorization: Bearer {token}\r\n\r\n",
        path = control::PATH,
        host = config.host,
        port = config.port,
        proto = control::PROTOCOL,
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let silence = control::HEARTBEAT * 3;
    read_head(&mut reader, silence).await?;
    agent.control_connected.store(true, Relaxed);
    tracing::info!(operator = %format!("{}:{}", config.host, config.port), "control channel up");
    let mut done = agent.drain.watch_done();
    // A drain that finished while no session was open is reported now.
    done.mark_changed();
    let mut line = Vec::new();
    loop {
        // Cancelled by a report, a read keeps what it read in `line`, so
        // the line is cleared only once it has been handled.
        let read = tokio::time::timeout(silence, async {
            (&mut reader)
                .take(control::MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
        });
        let n = tokio::select! {
            n = read => n.map_err(|_| SessionError::Silent(silence))??,
            // The sender lives in `agent`, which outlives the session.
            Ok(()) = done.changed() => {
                let summary = done.borrow_and_update().clone();
                let finished = agent.drain.finished_total();
                if let Some(summary) = summary.filter(|_| finished > *reported) {
                    let report = Report::Drained(DrainReport {
                        drain: finished,
                        summary,
                    });
                    writer.write_all(&report.to_line()).await?;
                    writer.flush().await?;
                    *reported = finished;
                    tracing::debug!("drain reported to the operator");
                }
                continue;
            }
        };
        if n == 0 {
            return Err(SessionError::Closed);
        }
        if line.len() > control::MAX_LINE {
            return Err(SessionError::BadResponse("a line over the limit".into()));
        }
        match Message::from_line(line.trim_ascii_end()) {
            Ok(Message::Policy { text }) => {
                if let Ok(changed) = agent.policy.apply_from_operator(&text) {
                    agent.metrics.reload(true);
                    tracing::debug!(changed, "policy from the operator");
                } else {
                    agent.metrics.reload(false);
                }
            }
            Ok(Message::Endpoints { ready, slices }) => {
                let now = if ready {
                    Endpoints::InReadyEndpoints
                } else {
                    Endpoints::OutOfReadyEndpoints
                };
                if endpoints.send_replace(now) != now {
                    tracing::info!(ready, slices, "endpoints changed");
                }
            }
            Ok(Message::Rebalance { service, from, to }) => {
                agent.rebalance(&crate::rebalance::Request { service, from, to });
            }
            Ok(Message::Heartbeat) => {}
            // A newer operator's message: not for this agent.
            Err(e) => tracing::debug!(error = %e, "control message not understood; ignored"),
        }
        line.clear();
    }
}

/// TCP, then TLS with the operator's CA.
async fn connect(
    config: &ControlConfig,
    ca: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SessionError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(ca)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SessionError::Tls(format!("{}: {e}", config.ca.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(SessionError::Tls(format!(
            "{}: no CA certificate",
            config.ca.display()
        )));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SessionError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(config.host.clone())
        .map_err(|e| SessionError::Tls(format!("{}: {e}", config.host)))?;
    let tcp = TcpStream::connect((config.host.as_str(), config.port)).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| SessionError::Tls(e.to_string()))
}

/// Reads the response head: 101 goes on; anything else ends the session
/// with the status and the operator's reason (the body's first line).
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    within: Duration,
) -> Result<(), SessionError> {
    const MAX_HEAD: usize = 8 << 10;
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            let n = reader.take(1).read_to_end(&mut head).await?;
            if n == 0 || head.len() > MAX_HEAD {
                return Err(SessionError::BadResponse(format!(
                    "{:?}",
                    String::from_utf8_lossy(&head)
                )));
            }
        }
        Ok(())
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| SessionError::Silent(within))??;
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    response
        .parse(&head)
        .map_err(|e| SessionError::BadResponse(e.to_string()))?;
    match response.code {
        Some(101) => Ok(()),
        Some(status) => {
            let mut reason = String::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                reader.take(512).read_line(&mut reason),
            )
            .await;
            Err(SessionError::Refused {
                status,
                reason: reason.trim().to_string(),
            })
        }
        None => Err(SessionError::BadResponse("no status".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_is_an_https_url_with_a_port() {
        let c = ControlConfig::parse(
            "https://goaway-operator.goaway-system.svc:9444",
            "ca".into(),
            "token".into(),
        )
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port),
            ("goaway-operator.goaway-system.svc", 9444)
        );
        for bad in [
            "http://op:9444",
            "https://op",
            "https://op:port",
            "https://:9444",
            "https://op:9444/path",
        ] {
            assert!(
                ControlConfig::parse(bad, "ca".into(), "t".into()).is_err(),
                "{bad}"
            );
        }
    }
}
