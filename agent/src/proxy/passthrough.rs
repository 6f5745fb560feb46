//! Connections the agent does not manage: it looks at the first bytes of
//! every accepted connection, and a TLS ClientHello or an HTTP/1.x
//! request is spliced to the application byte for byte, so injecting the
//! agent in front of a TLS gRPC server (or a port that also serves
//! HTTP/1.1) never breaks it. Only HTTP/2 with prior knowledge — the
//! preface — is managed (keepalive, age, GOAWAY drain).
//!
//! A spliced connection is listed in `/connections` with its protocol,
//! counted in `goaway_passthrough_connections_total{protocol}`, and closed
//! when a drain finishes: the agent cannot send it a GOAWAY, and the app is
//! about to get SIGTERM anyway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Upstream;
use crate::Agent;

/// What a connection's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// The HTTP/2 connection preface (or anything not recognised below:
    /// the HTTP/2 server answers it as HTTP/2 would).
    Http2,
    /// A TLS record of type handshake (a ClientHello).
    Tls,
    /// An HTTP/1.x request line.
    Http1,
}

impl Sniffed {
    /// The `protocol` label and `/connections` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Sniffed::Http2 => "h2",
            Sniffed::Tls => "tls",
            Sniffed::Http1 => "http1",
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Request methods of HTTP/1.x clients (RFC 9110 §9 and WebDAV's
/// commonest), each followed by a space on the wire.
const METHODS: [&[u8]; 11] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PROPFIND ",
    b"MKCOL ",
];
/// Enough to tell every case above apart.
const SNIFF_LEN: usize = 10;

/// Classifies the first bytes; `None` while more are needed.
pub fn classify(first: &[u8]) -> Option<Sniffed> {
    if first.is_empty() {
        return None;
    }
    // TLS: ContentType handshake (22), then the record version's major 3.
    if first[0] == 0x16 {
        return match first.get(1) {
            None => None,
            Some(3) => Some(Sniffed::Tls),
            Some(_) => Some(Sniffed::Http2),
        };
    }
    let prefix_of = |whole: &[u8]| whole.starts_with(&first[..first.len().min(whole.len())]);
    if prefix_of(PREFACE) {
        // "PRI " is no HTTP/1 method: four bytes decide.
        return (first.len() >= 4).then_some(Sniffed::Http2);
    }
    for method in METHODS {
        if first.starts_with(method) {
            return Some(Sniffed::Http1);
        }
    }
    if first.len() < SNIFF_LEN && METHODS.iter().any(|m| prefix_of(m)) {
        return None;
    }
    Some(Sniffed::Http2)
}

/// Peeks at the connection until [`classify`] decides, without consuming
/// anything. `None`: closed, or nothing decisive before `deadline` (a
/// client that sends nothing is closed as a handshake timeout would).
pub async fn sniff(tcp: &TcpStream, deadline: Instant) -> Option<Sniffed> {
    let mut buf = [0u8; SNIFF_LEN];
    // Real clients send their first bytes in one write; one that trickles
    // them (slowloris) is polled ever less often, up to 10 times a second.
    let mut pause = Duration::from_millis(5);
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => n,
        };
        if let Some(kind) = classify(&buf[..n]) {
            return Some(kind);
        }
        // Some bytes, not enough: peek would return them again at once.
        if Instant::now() + pause >= deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Copies bytes both ways between the client and a new connection to the
/// app until either side closes, or until a drain finishes.
pub async fn splice(
    mut client: TcpStream,
    peer: SocketAddr,
    protocol: Sniffed,
    agent: Arc<Agent>,
    upstream: Arc<Upstream>,
) {
    let _registration = agent.passthrough.register(peer, protocol.as_str());
    agent.metrics.passthrough(protocol.as_str());
    let mut closing = agent.passthrough.closing();
    let connect = TcpStream::connect(upstream.addr.as_str());
    let mut app = match tokio::time::timeout(upstream.connect_timeout, connect).await {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => {
            tracing::warn!(%peer, protocol = protocol.as_str(), upstream = %upstream.addr, error = %e, "passthrough: the app refused the connection");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, protocol = protocol.as_str(), upstream = %upstream.addr, "passthrough: no connection to the app within the connect timeout");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    let _ = client.set_nodelay(true);
    tracing::debug!(protocol = protocol.as_str(), "passthrough connection");
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut app) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "passthrough connection ended");
            }
        }
        _ = closing.wait_for(|c| *c) => {
            tracing::debug!(protocol = protocol.as_str(), "passthrough connection closed at the end of the drain");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_decide() {
        let tls_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        assert_eq!(classify(&tls_hello), Some(Sniffed::Tls));
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(PREFACE), Some(Sniffed::Http2));
        assert_eq!(classify(b"PRI "), Some(Sniffed::Http2));
        assert_eq!(classify(b"PR"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Sniffed::Http1));
        assert_eq!(classify(b"OPTIO"), None);
        assert_eq!(classify(b"POST"), None);
        assert_eq!(classify(b"POST "), Some(Sniffed::Http1));
        // Anything else goes to the HTTP/2 server, which answers it as
        // HTTP/2 would (a GOAWAY PROTOCOL_ERROR).
        assert_eq!(classify(b"\x00\x00\x12\x04"), Some(Sniffed::Http2));
        assert_eq!(classify(b"hello world"), Some(Sniffed::Http2));
        assert_eq!(classify(&[0x16, 0x07]), Some(Sniffed::Http2));
        assert_eq!(classify(b"GETX / HTTP"), Some(Sniffed::Http2));
    }
}
