//! One client connection: its handle in the pool and its driver task.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::pool::Inner;
use crate::io::shared::{Shared, event};
use crate::io::{ConnState, FrameIo};
use crate::keepalive::{Keepalive, KeepaliveAction, far_future};
use crate::{Counters, Error};

/// A connection as the pool sees it.
pub(crate) struct Conn {
    pub id: u64,
    pub send: SendRequest<Bytes>,
    pub shared: Arc<Shared>,
    unusable: AtomicBool,
}

impl Conn {
    /// Takes new streams: no GOAWAY received, not closed.
    pub fn usable(&self) -> bool {
        !self.unusable.load(Acquire) && !self.shared.peer_goaway.load(Acquire)
    }

    pub fn mark_unusable(&self) {
        self.unusable.store(true, Release);
    }

    /// Reserves a stream slot if the peer's concurrency limit allows it
    /// (or unconditionally with `overflow`, leaving h2 to queue it).
    pub fn try_reserve(&self, overflow: bool) -> bool {
        if !self.usable() {
            return false;
        }
        let max = self.shared.peer_max_streams.load(Acquire) as usize;
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

    pub fn release(&self) {
        self.shared.stream_closed();
    }

    pub fn in_flight(&self) -> usize {
        self.shared.active_streams.load(Acquire)
    }

    pub fn has_capacity(&self) -> bool {
        self.usable() && self.in_flight() < self.shared.peer_max_streams.load(Acquire) as usize
    }
}

/// Connects, runs the HTTP/2 handshake and spawns the driver.
pub(crate) async fn establish<T>(io: T, inner: &Arc<Inner>, id: u64) -> Result<Arc<Conn>, Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Shared::new(
        crate::io::shared::Role::Client,
        inner.config.counters.clone(),
    );
    let (send, mut h2) = inner
        .config
        .h2
        .handshake::<_, Bytes>(FrameIo::new(io, shared.clone()))
        .await?;
    let ping = h2.ping_pong();
    let conn = Arc::new(Conn {
        id,
        send,
        shared: shared.clone(),
        unusable: AtomicBool::new(false),
    });
    let params = inner.params();
    let keepalive = inner.keepalive_time().map(|time| (time, params.timeout));
    let permit_without_stream = params.permit_without_stream;
    let weak = Arc::downgrade(inner);
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(async move {
        let reason = drive(
            h2,
            ping,
            &shared,
            keepalive,
            permit_without_stream,
            &weak,
            ready_tx,
        )
        .await;
        tracing::debug!(conn = id, reason, "upstream connection closed");
        shared.set_state(ConnState::Closed);
        if let Some(inner) = weak.upgrade() {
            inner.remove(id);
        }
    });
    // Usable only once the server has spoken HTTP/2: its SETTINGS also
    // carry the stream limit the pool must respect. A peer that accepts
    // TCP and says nothing runs into the caller's connect deadline; the
    // driver then notices this receiver is gone and closes the socket.
    if ready_rx.await.is_err() {
        return Err(Error::Connect {
            addr: inner.addr().to_owned(),
            message: "connection closed before the server's HTTP/2 SETTINGS".into(),
        });
    }
    Ok(conn)
}

/// Polls h2 and the keepalive timer until the connection ends.
async fn drive<T>(
    mut h2: h2::client::Connection<FrameIo<T>, Bytes>,
    mut ping: Option<h2::PingPong>,
    shared: &Arc<Shared>,
    keepalive: Option<(Duration, Duration)>,
    permit_without_stream: bool,
    inner: &Weak<Inner>,
    ready: oneshot::Sender<()>,
) -> &'static str
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut ka = keepalive.map(|(time, timeout)| Keepalive::new(time, timeout, shared.base));
    let mut timer = Box::pin(tokio::time::sleep_until(far_future()));
    let mut armed = None;
    let mut goaway_seen = false;
    let mut ready = Some(ready);
    poll_fn(|cx| {
        shared.waker.register(cx.waker());
        loop {
            if let Some(tx) = ready.as_mut() {
                if shared.peer_settings.load(Acquire) {
                    let _ = ready.take().map(|tx| tx.send(()));
                } else if tx.poll_closed(cx).is_ready() {
                    return Poll::Ready("abandoned before the server's SETTINGS");
                }
            }
            let closed = std::pin::Pin::new(&mut h2).poll(cx);
            let events = shared.take_events();
            if events & event::PEER_GOAWAY != 0 && !goaway_seen {
                goaway_seen = true;
                Counters::inc(&shared.counters.upstream_connections_goaway);
                shared.set_state(ConnState::Draining);
                if let Some(inner) = inner.upgrade() {
                    inner.on_goaway(shared);
                }
            }
            if let Poll::Ready(res) = closed {
                return Poll::Ready(match res {
                    Ok(()) => "closed",
                    // The server's own graceful GOAWAY: routine.
                    Err(e)
                        if e.is_go_away()
                            && e.is_remote()
                            && e.reason() == Some(Reason::NO_ERROR) =>
                    {
                        "goaway"
                    }
                    // Every stream still on it fails or is retried: worth
                    // an operator's attention, with the side that ended it.
                    Err(e) => {
                        let by = if e.is_remote() { "upstream" } else { "agent" };
                        tracing::warn!(error = %e, closed_by = by, "upstream connection dropped");
                        if e.is_go_away() { "goaway" } else { "error" }
                    }
                });
            }
            let now = Instant::now();
            let mut again = false;
            let active = shared.active_streams.load(Acquire);
            if let Some(k) = ka.as_mut() {
                let mut action = KeepaliveAction::Wait;
                if events & event::STREAMS_CHANGED != 0 && active > 0 {
                    action = k.wake(now);
                }
                if action == KeepaliveAction::Wait {
                    let dormant_ok = active == 0 && !permit_without_stream;
                    action =
                        k.on_timer(now, shared.base, shared.last_read.load(Acquire), dormant_ok);
                }
                match action {
                    KeepaliveAction::Ping => {
                        if let Some(p) = ping.as_mut() {
                            let _ = p.poll_pong(cx);
                            if p.send_ping(h2::Ping::opaque()).is_ok() {
                                again = true;
                            }
                        }
                    }
                    KeepaliveAction::Close => {
                        tracing::warn!(
                            "upstream keepalive ping not answered; closing the connection"
                        );
                        Counters::inc(&shared.counters.ping_timeouts);
                        return Poll::Ready("ping_timeout");
                    }
                    KeepaliveAction::Wait | KeepaliveAction::Dormant => {}
                }
            }
            if again {
                continue;
            }
            let next = ka.as_ref().and_then(Keepalive::deadline);
            if next != armed {
                armed = next;
                timer.as_mut().reset(next.unwrap_or_else(far_future));
            }
            if timer.as_mut().poll(cx).is_ready() {
                armed = None;
                continue;
            }
            return Poll::Pending;
        }
    })
    .await
}
