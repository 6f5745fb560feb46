//! One client connection as the pool sees it, and how one is made.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::*};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::driver::{ClientDriver, ConnParams, PoolEvents};
use crate::frame_io::FrameIo;
use crate::frame_io::shared::{Role, Shared, event};
use crate::{ConnectError, Counters};

/// A connection as the pool sees it.
pub(crate) struct Conn {
    pub id: u64,
    pub send: SendRequest<Bytes>,
    pub shared: Arc<Shared>,
    unusable: AtomicBool,
}

impl Conn {
    /// Takes new streams: no GOAWAY received, not closed.
    pub(super) fn usable(&self) -> bool {
        !self.unusable.load(Acquire) && !self.shared.client().peer_goaway.load(Acquire)
    }

    pub(super) fn mark_unusable(&self) {
        self.unusable.store(true, Release);
    }

    /// Reserves a stream slot if the peer's concurrency limit allows it
    /// (or unconditionally with `overflow`, leaving h2 to queue it).
    pub(super) fn try_reserve(&self, overflow: bool) -> bool {
        if !self.usable() {
            return false;
        }
        let max = self.shared.client().peer_max_streams.load(Acquire) as usize;
        let active = &self.shared.active_streams;
        let mut cur = active.load(Acquire);
        loop {
            if cur >= max && !overflow {
                return false;
            }
            match active.compare_exchange_weak(cur, cur + 1, AcqRel, Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.shared.streams_total.fetch_add(1, Relaxed);
        if cur == 0 {
            // Wakes a dormant keepalive.
            self.shared.notify(event::STREAMS_CHANGED);
        }
        true
    }

    pub(super) fn release(&self) {
        self.shared.stream_closed();
    }

    pub(super) fn in_flight(&self) -> usize {
        self.shared.active_streams.load(Acquire)
    }

    pub(super) fn has_capacity(&self) -> bool {
        self.usable()
            && self.in_flight() < self.shared.client().peer_max_streams.load(Acquire) as usize
    }
}

/// Runs the HTTP/2 handshake on `io` and spawns the connection's driver;
/// returns once the server's SETTINGS arrived (they carry the stream
/// limit the pool must respect).
pub(crate) async fn establish<T, E>(
    io: T,
    h2: &h2::client::Builder,
    counters: Arc<Counters>,
    id: u64,
    params: ConnParams,
    events: E,
) -> Result<Arc<Conn>, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: PoolEvents,
{
    let shared = Shared::new(Role::Client, counters);
    let (send, h2) = h2
        .handshake::<_, Bytes>(FrameIo::new(io, shared.clone()))
        .await
        .map_err(ConnectError::Handshake)?;
    let conn = Arc::new(Conn {
        id,
        send,
        shared: shared.clone(),
        unusable: AtomicBool::new(false),
    });
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(ClientDriver::new(id, h2, shared, params, ready_tx, events).run());
    // A peer that accepts TCP and says nothing runs into the caller's
    // connect deadline; the driver then notices this receiver is gone and
    // closes the socket.
    if ready_rx.await.is_err() {
        return Err(ConnectError::ClosedBeforeSettings);
    }
    Ok(conn)
}
