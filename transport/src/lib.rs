//! grpc-go-parity HTTP/2 connection management on top of [`h2`].
//!
//! This crate owns what happens to an HTTP/2 connection over its life:
//! keepalive pings and their timeout, max idle, max age with per-connection
//! jitter and grace, client-ping enforcement, and the bounded two-step
//! GOAWAY drain — on the server side ([`server`]) and the client side
//! ([`client`]: keepalive with dormancy, GOAWAY handling with transparent
//! retry, gRPC connection backoff). The behaviour is grpc-go's
//! `internal/transport` (gRFCs A8, A9, A18; RFC 9113 §6.8), specified in
//! the project's docs/design.md §3 and §4.
//!
//! It does not know about Kubernetes, proxies, metrics exposition or
//! configuration files beyond the [`policy`] types, which are plain data
//! and the single source of truth for the operator's CRD and the agent.
//!
//! # Working around h2 0.4
//!
//! h2 answers PINGs internally, cannot put debug data in a GOAWAY, and
//! waits forever for the PING ACK of a graceful shutdown. Instead of a
//! fork, a frame-observing IO layer (`frame_io::FrameIo`) sits between h2 and the socket, scans frames in
//! both directions, rewrites GOAWAY frames to carry the reason, and hands
//! h2 the shutdown ACK when the ack timer fires. See that module.

#![warn(missing_docs)]

pub mod client;
pub mod control;
pub mod counters;
mod frame;
mod frame_io;
mod keepalive;
#[cfg(feature = "log-filter")]
pub mod log_filter;
pub mod policy;
pub mod server;
pub mod tcp;
#[cfg(feature = "test-util")]
pub mod test_util;

pub use counters::Counters;
pub use frame_io::{ConnState, ConnStats};
pub use policy::{ClientParams, DrainParams, Policy, ServerParams};

/// Why a GOAWAY was sent; its text is the GOAWAY's debug data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum GoAwayReason {
    /// The connection reached `maxConnectionAge`.
    MaxAge = 1,
    /// The connection had no stream for `maxConnectionIdle`.
    MaxIdle = 2,
    /// The client broke ping enforcement.
    TooManyPings = 3,
    /// An external drain (preStop hook, SIGTERM).
    GracefulStop = 4,
    /// Scale-up rebalancing: the operator reported more ready endpoints
    /// for a Service and this connection was among the oldest chosen to
    /// reconnect, so that the new pods get their share.
    Rebalance = 5,
}

impl GoAwayReason {
    /// Every reason, in [`index`](Self::index) order.
    pub const ALL: [GoAwayReason; 5] = [
        GoAwayReason::MaxAge,
        GoAwayReason::MaxIdle,
        GoAwayReason::TooManyPings,
        GoAwayReason::GracefulStop,
        GoAwayReason::Rebalance,
    ];

    /// The label and debug data: `max_age`, `max_idle`, `too_many_pings`,
    /// `graceful_stop`, `rebalance`.
    pub fn as_str(self) -> &'static str {
        match self {
            GoAwayReason::MaxAge => "max_age",
            GoAwayReason::MaxIdle => "max_idle",
            GoAwayReason::TooManyPings => "too_many_pings",
            GoAwayReason::GracefulStop => "graceful_stop",
            GoAwayReason::Rebalance => "rebalance",
        }
    }

    /// The GOAWAY debug data. gRPC clients compare `too_many_pings`
    /// byte for byte before backing off their keepalive.
    pub fn debug_data(self) -> &'static [u8] {
        self.as_str().as_bytes()
    }

    /// Position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize - 1
    }

    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        GoAwayReason::ALL
            .get(usize::from(v).wrapping_sub(1))
            .copied()
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer did not complete the HTTP/2 handshake in time.
    #[error("HTTP/2 handshake timed out")]
    HandshakeTimeout,
    /// No connection to the address could be had: the last attempt's
    /// cause, shared with every stream that waited for it.
    #[error("connect to {addr} failed: {cause}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why. (Printed in this error's message, so not also its
        /// `source()`.)
        cause: std::sync::Arc<ConnectError>,
    },
    /// An HTTP/2 error from h2.
    #[error("HTTP/2: {0}")]
    H2(h2::Error),
    /// A socket error.
    #[error("io: {0}")]
    Io(std::io::Error),
    /// The channel was shut down.
    #[error("channel shut down")]
    Shutdown,
    /// A request's header list is larger than the peer's
    /// SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2), so it was not sent:
    /// the peer would have to reject it.
    #[error("request header list is {size} bytes; the server accepts at most {limit}")]
    HeaderListTooLarge {
        /// The request's header list size, counted as RFC 9113 does.
        size: usize,
        /// The peer's advertised limit.
        limit: u32,
    },
}

/// Why one attempt to connect failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The socket could not be connected.
    #[error("io: {0}")]
    Io(std::io::Error),
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2: {0}")]
    Handshake(h2::Error),
    /// The server closed the connection before its HTTP/2 SETTINGS.
    #[error("connection closed before the server's HTTP/2 SETTINGS")]
    ClosedBeforeSettings,
    /// The attempt's deadline (gRPC backoff's connect timeout) passed.
    #[error("timed out after {0:?}")]
    TimedOut(std::time::Duration),
    /// No attempt finished before the caller's deadline.
    #[error("no connection became ready in time")]
    NotReady,
}

impl From<h2::Error> for Error {
    fn from(e: h2::Error) -> Self {
        Error::H2(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::GoAwayReason;

    #[test]
    fn every_reason_has_its_index_its_byte_and_a_distinct_label() {
        let labels: Vec<&str> = GoAwayReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "max_age",
                "max_idle",
                "too_many_pings",
                "graceful_stop",
                "rebalance"
            ]
        );
        for (i, reason) in GoAwayReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert_eq!(GoAwayReason::from_u8(reason as u8), Some(reason));
            assert_eq!(reason.debug_data(), reason.as_str().as_bytes());
        }
        assert_eq!(GoAwayReason::from_u8(0), None);
        assert_eq!(GoAwayReason::from_u8(6), None);
    }
}
