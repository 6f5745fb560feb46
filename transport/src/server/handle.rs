//! Handles given out by a server connection: to its streams, and to anyone
//! who needs to observe or drain it.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::Request;
use tokio::time::Instant;

use crate::frame_io::shared::Shared;
use crate::frame_io::{ConnState, ConnStats, DrainRequest};
use crate::{GoAwayReason, ServerParams};

/// A stream accepted on a [`ServerConnection`](super::ServerConnection).
pub struct Incoming {
    /// Request head and body.
    pub request: Request<RecvStream>,
    /// Where the response goes.
    pub respond: SendResponse<Bytes>,
    /// Keeps the stream counted as active; drop it when the stream is done
    /// in both directions. Max idle and ping enforcement depend on it.
    pub guard: StreamGuard,
}

impl Incoming {
    /// Splits into request, responder and guard.
    pub fn into_parts(self) -> (Request<RecvStream>, SendResponse<Bytes>, StreamGuard) {
        (self.request, self.respond, self.guard)
    }
}

/// Counts one active stream while alive.
pub struct StreamGuard {
    shared: Arc<Shared>,
}

impl StreamGuard {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        shared.stream_opened();
        let c = &shared.counters;
        c.streams_total.fetch_add(1, Relaxed);
        c.streams_active.fetch_add(1, Relaxed);
        StreamGuard { shared }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared.counters.streams_active.fetch_sub(1, Relaxed);
        self.shared.stream_closed();
    }
}

/// Observes and controls one server connection from outside its task.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ConnectionHandle {
    /// Starts a graceful drain (docs/design.md §3.4): GOAWAY(2^31−1,
    /// NO_ERROR, reason) and a PING, the second GOAWAY on its ACK or after
    /// the ack timeout, close after the last stream — or at `deadline`,
    /// whichever is first.
    /// Idempotent: a connection already draining keeps its first reason,
    /// and only an earlier deadline is taken.
    pub fn drain(&self, reason: GoAwayReason, deadline: Option<Instant>) {
        self.shared.send_control(|c| {
            let deadline = match (c.drain.and_then(|d| d.deadline), deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let reason = c.drain.map_or(reason, |d| d.reason);
            c.drain = Some(DrainRequest { reason, deadline });
        });
    }

    /// Applies new parameters: timers are re-armed at once (hot reload,
    /// docs/design.md §3.6). The age jitter drawn for this connection is
    /// kept.
    pub fn update_params(&self, params: ServerParams) {
        self.shared
            .send_control(|c| c.params = Some(Box::new(params)));
    }

    /// A snapshot of the connection's counters and state.
    pub fn stats(&self) -> ConnStats {
        self.shared.snapshot()
    }

    /// True once the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.state() == ConnState::Closed
    }
}
