//! The per-connection client driver, shaped like the server's
//! (`server/driver.rs`): one state machine that polls h2 and one timer,
//! reacts to the events the IO layer raised, runs the keepalive, and
//! reports what the pool must know — `goaway(id)` and `closed(id)` —
//! through the narrow [`PoolEvents`] interface. It knows nothing of the
//! pool beyond that.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::Counters;
use crate::frame_io::shared::{Shared, event};
use crate::frame_io::{ConnState, FrameIo};
use crate::keepalive::{Keepalive, KeepaliveAction, far_future};

/// What a connection reports to whoever owns it.
pub(crate) trait PoolEvents: Send + 'static {
    /// Connection `id` received a GOAWAY and takes no new streams;
    /// `too_many_pings` when its debug data said so.
    fn goaway(&self, id: u64, too_many_pings: bool);
    /// Connection `id` has closed.
    fn closed(&self, id: u64);
}

/// The parameters one connection runs with, fixed when it is made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnParams {
    /// Keepalive time and timeout; `None` when keepalive is off.
    pub keepalive: Option<(Duration, Duration)>,
    /// Keep pinging with no stream open.
    pub permit_without_stream: bool,
}

/// Why a client connection ended, for the debug log.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Dropped by the caller before the server's SETTINGS arrived.
    Abandoned,
    /// Closed cleanly.
    Closed,
    /// Ended by a GOAWAY.
    GoAway,
    /// A protocol or IO error.
    Error,
    /// A keepalive PING went unanswered.
    PingTimeout,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Abandoned => "abandoned before the server's SETTINGS",
            End::Closed => "closed",
            End::GoAway => "goaway",
            End::Error => "error",
            End::PingTimeout => "ping_timeout",
        }
    }
}

/// One client connection's state machine.
pub(crate) struct ClientDriver<T, E> {
    id: u64,
    h2: h2::client::Connection<FrameIo<T>, Bytes>,
    ping: Option<h2::PingPong>,
    shared: Arc<Shared>,
    keepalive: Option<Keepalive>,
    permit_without_stream: bool,
    /// Fires once the server's SETTINGS arrived (the connection is usable).
    ready: Option<oneshot::Sender<()>>,
    goaway_seen: bool,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    events: E,
}

impl<T, E> ClientDriver<T, E>
where
    T: AsyncRead + AsyncWrite + Unpin,
    E: PoolEvents,
{
    pub(crate) fn new(
        id: u64,
        mut h2: h2::client::Connection<FrameIo<T>, Bytes>,
        shared: Arc<Shared>,
        params: ConnParams,
        ready: oneshot::Sender<()>,
        events: E,
    ) -> Self {
        ClientDriver {
            id,
            ping: h2.ping_pong(),
            h2,
            keepalive: params
                .keepalive
                .map(|(time, timeout)| Keepalive::new(time, timeout, shared.base)),
            shared,
            permit_without_stream: params.permit_without_stream,
            ready: Some(ready),
            goaway_seen: false,
            timer: Box::pin(tokio::time::sleep_until(far_future())),
            armed: None,
            events,
        }
    }

    /// Drives the connection until it ends, then reports it closed.
    pub(crate) async fn run(mut self) {
        let end = poll_fn(|cx| self.poll_drive(cx)).await;
        tracing::debug!(
            conn = self.id,
            reason = end.as_str(),
            "upstream connection closed"
        );
        self.shared.set_state(ConnState::Closed);
        self.events.closed(self.id);
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.shared.waker.register(cx.waker());
        loop {
            if let Some(end) = self.poll_ready_sent(cx) {
                return Poll::Ready(end);
            }
            let closed = Pin::new(&mut self.h2).poll(cx);
            let events = self.shared.take_events();
            self.handle_events(events);
            if let Poll::Ready(res) = closed {
                return Poll::Ready(end_of(res));
            }
            match self.handle_timers(cx, events) {
                Timers::Ended(end) => return Poll::Ready(end),
                Timers::PingSent => continue,
                Timers::Idle => {}
            }
            self.arm_timer();
            if self.timer.as_mut().poll(cx).is_ready() {
                self.armed = None;
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Tells the establishing caller once the server's SETTINGS arrived;
    /// ends the connection if that caller gave up first.
    fn poll_ready_sent(&mut self, cx: &mut Context<'_>) -> Option<End> {
        let tx = self.ready.as_mut()?;
        if self.shared.peer_settings.load(Acquire) {
            let _ = self.ready.take().map(|tx| tx.send(()));
        } else if tx.poll_closed(cx).is_ready() {
            return Some(End::Abandoned);
        }
        None
    }

    fn handle_events(&mut self, events: u32) {
        if events & event::PEER_GOAWAY != 0 && !self.goaway_seen {
            self.goaway_seen = true;
            Counters::inc(&self.shared.counters.upstream_connections_goaway);
            self.shared.set_state(ConnState::Draining);
            let too_many_pings = self.shared.client().peer_too_many_pings.load(Acquire);
            self.events.goaway(self.id, too_many_pings);
        }
    }

    fn handle_timers(&mut self, cx: &mut Context<'_>, events: u32) -> Timers {
        let Some(k) = self.keepalive.as_mut() else {
            return Timers::Idle;
        };
        let now = Instant::now();
        let active = self.shared.active_streams.load(Acquire);
        let mut action = KeepaliveAction::Wait;
        if events & event::STREAMS_CHANGED != 0 && active > 0 {
            action = k.wake(now);
        }
        if action == KeepaliveAction::Wait {
            let may_go_dormant = active == 0 && !self.permit_without_stream;
            let last_read = self.shared.last_read.load(Acquire);
            action = k.on_timer(now, self.shared.base, last_read, may_go_dormant);
        }
        match action {
            KeepaliveAction::Ping => {
                if let Some(p) = self.ping.as_mut() {
                    // Collect an earlier pong so h2 lets us send the next.
                    let _ = p.poll_pong(cx);
                    if p.send_ping(h2::Ping::opaque()).is_ok() {
                        return Timers::PingSent;
                    }
                }
                Timers::Idle
            }
            KeepaliveAction::Close => {
                tracing::warn!("upstream keepalive ping not answered; closing the connection");
                Counters::inc(&self.shared.counters.ping_timeouts);
                Timers::Ended(End::PingTimeout)
            }
            KeepaliveAction::Wait | KeepaliveAction::Dormant => Timers::Idle,
        }
    }

    fn arm_timer(&mut self) {
        let next = self.keepalive.as_ref().and_then(Keepalive::deadline);
        if next != self.armed {
            self.armed = next;
            self.timer.as_mut().reset(next.unwrap_or_else(far_future));
        }
    }
}

/// What the timers did.
enum Timers {
    /// Nothing for h2 to act on.
    Idle,
    /// A PING was queued: poll h2 again to write it.
    PingSent,
    /// The connection must end.
    Ended(End),
}

/// Why h2's connection future completed.
fn end_of(res: Result<(), h2::Error>) -> End {
    match res {
        Ok(()) => End::Closed,
        // The server's own graceful GOAWAY: routine.
        Err(e) if e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR) => {
            End::GoAway
        }
        // Every stream still on it fails or is retried: worth an
        // operator's attention, with the side that ended it.
        Err(e) => {
            let by = if e.is_remote() { "upstream" } else { "agent" };
            tracing::warn!(error = %e, closed_by = by, "upstream connection dropped");
            if e.is_go_away() {
                End::GoAway
            } else {
                End::Error
            }
        }
    }
}
