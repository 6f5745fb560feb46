//! The server side (docs/design.md §3): one [`ServerConnection`] per accepted
//! connection, applying keepalive, max idle, max age with jitter and grace,
//! ping enforcement and the two-step graceful drain.
//!
//! ```no_run
//! # async fn run(listener: tokio::net::TcpListener) -> std::io::Result<()> {
//! use goaway_transport::server::{ServerConfig, ServerConnection};
//! let config = ServerConfig::default();
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     goaway_transport::tcp::configure_accepted(&tcp, &config.params)?;
//!     let config = config.clone();
//!     tokio::spawn(async move {
//!         let Ok(mut conn) = ServerConnection::handshake(tcp, &config).await else { return };
//!         while let Some(stream) = conn.accept().await {
//!             tokio::spawn(async move {
//!                 let (_request, mut respond, _guard) = stream.into_parts();
//!                 let _ = respond.send_response(http::Response::new(()), true);
//!             });
//!         }
//!     });
//! }
//! # }
//! ```
//!
//! Or answer the streams with a `tower::Service`, as a tonic or hyper
//! application would: [`ServerConnection::serve`].

mod driver;
mod handle;
mod service;
mod streams;

pub use driver::ServerConnection;
pub use handle::{ConnectionHandle, Incoming, StreamGuard};
pub use service::RequestBody;
pub use streams::Streams;

use std::sync::Arc;
use std::time::Duration;

use crate::{Counters, ServerParams};

/// How long a new connection may take to send its preface and SETTINGS.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings shared by every connection of one listener.
#[derive(Clone)]
pub struct ServerConfig {
    /// Keepalive, idle, age and enforcement parameters.
    pub params: ServerParams,
    /// Where events are counted.
    pub counters: Arc<Counters>,
    /// HTTP/2 settings (window sizes, concurrent streams, frame size).
    pub h2: h2::server::Builder,
    /// Limit on the preface and SETTINGS exchange.
    pub handshake_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            params: ServerParams::default(),
            counters: Arc::default(),
            h2: h2::server::Builder::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Why a server connection ended.
#[derive(Clone, Debug)]
pub enum CloseReason {
    /// The peer closed the connection.
    PeerClosed,
    /// Drained: every stream finished after our GOAWAY.
    Drained(crate::GoAwayReason),
    /// Nothing was read within `timeout` of a keepalive PING.
    PingTimeout,
    /// Streams were still open when the age grace period ended.
    AgeGraceElapsed,
    /// Streams were still open at the drain deadline.
    DrainTimeout,
    /// Closed with GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings").
    TooManyPings,
    /// A protocol or IO error, from h2 or the socket.
    Error(Arc<h2::Error>),
}

/// Equal when the same variant with the same reason; two
/// [`Error`](CloseReason::Error)s only when they are the same error.
impl PartialEq for CloseReason {
    fn eq(&self, other: &Self) -> bool {
        use CloseReason::*;
        match (self, other) {
            (Drained(a), Drained(b)) => a == b,
            (Error(a), Error(b)) => Arc::ptr_eq(a, b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl Eq for CloseReason {}

impl CloseReason {
    /// Short label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Drained(_) => "drained",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::AgeGraceElapsed => "age_grace_elapsed",
            CloseReason::DrainTimeout => "drain_timeout",
            CloseReason::TooManyPings => "too_many_pings",
            CloseReason::Error(_) => "error",
        }
    }

    /// True when open streams were cut off by a deadline.
    pub fn is_hard_close(&self) -> bool {
        matches!(
            self,
            CloseReason::AgeGraceElapsed | CloseReason::DrainTimeout
        )
    }
}

/// Draws the per-connection age jitter factor, uniform in [0.9, 1.1).
pub(crate) fn age_jitter() -> f64 {
    rand::random_range(0.9..1.1)
}
