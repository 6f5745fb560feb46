//! Process-wide event counters, plain atomics.
//!
//! This crate knows nothing about Prometheus; the agent reads these at
//! scrape time and exposes them under the metric names of
//! docs/design.md §5.3. One [`Counters`] is shared by every connection
//! given it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::GoAwayReason;

/// Monotonic counters and gauges for server and client connections.
#[derive(Debug, Default)]
pub struct Counters {
    /// Server connections accepted (handshake completed).
    pub connections_total: AtomicU64,
    /// Server connections currently open.
    pub connections_open: AtomicI64,
    /// Server streams accepted.
    pub streams_total: AtomicU64,
    /// Server streams currently active.
    pub streams_active: AtomicI64,
    /// Connections sent a GOAWAY, by reason (index: [`GoAwayReason::index`]).
    /// The two frames of a graceful drain count once.
    pub goaways_sent: [AtomicU64; GoAwayReason::ALL.len()],
    /// Keepalive PINGs sent (server and client connections).
    pub pings_sent: AtomicU64,
    /// Connections closed because a keepalive PING went unanswered.
    pub ping_timeouts: AtomicU64,
    /// Ping strikes given to clients.
    pub ping_strikes: AtomicU64,
    /// Connections hard-closed at a deadline (age grace or drain timeout).
    pub hard_closes: AtomicU64,
    /// Client connections established.
    pub upstream_connects: AtomicU64,
    /// Client connection attempts that failed.
    pub upstream_connect_failures: AtomicU64,
    /// GOAWAY frames received on client connections (a graceful drain
    /// sends two).
    pub upstream_goaways_received: AtomicU64,
    /// Client connections that received a GOAWAY (each counted once).
    pub upstream_connections_goaway: AtomicU64,
    /// Client streams retried on a new connection after a GOAWAY or
    /// REFUSED_STREAM said they were never processed.
    pub upstream_retries: AtomicU64,
}

impl Counters {
    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// GOAWAYs sent for one reason.
    pub fn goaways(&self, reason: GoAwayReason) -> u64 {
        self.goaways_sent[reason.index()].load(Relaxed)
    }
}
