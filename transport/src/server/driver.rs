//! The per-connection driver: polls h2 and one timer, and applies
//! docs/design.md §3.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::server::Connection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::handle::{ConnectionHandle, Incoming, StreamGuard};
use super::{CloseReason, ServerConfig, age_jitter};
use crate::frame_io::shared::{Role, Shared, event};
use crate::frame_io::{ConnState, FrameIo};
use crate::keepalive::{Keepalive, KeepaliveAction, far_future};
use crate::{Counters, Error, GoAwayReason, ServerParams};

/// One accepted HTTP/2 connection under the management of
/// docs/design.md §3.
///
/// Drive it by calling [`accept`](Self::accept) in a loop until it returns
/// `None`; that loop also runs the timers, so it must keep being polled
/// while streams are served elsewhere.
pub struct ServerConnection<T> {
    h2: Option<Connection<FrameIo<T>, Bytes>>,
    ping: Option<h2::PingPong>,
    shared: Arc<Shared>,
    params: ServerParams,
    age_factor: f64,
    keepalive: Keepalive,
    age_fired: bool,
    drain: Option<DrainState>,
    hard_close: Option<(Instant, CloseReason)>,
    too_many_pings: bool,
    outcome: Option<CloseReason>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// The timer fired (or nothing was armed yet): run the timers.
    timers_due: bool,
}

struct DrainState {
    reason: GoAwayReason,
    /// Set once the first GOAWAY is on the wire and its PING unanswered.
    ack_deadline: Option<Instant>,
    ack_done: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> ServerConnection<T> {
    /// Runs the HTTP/2 handshake on an accepted IO — the client preface and
    /// its first SETTINGS frame — bounded by `config.handshake_timeout`.
    pub async fn handshake(io: T, config: &ServerConfig) -> Result<Self, Error> {
        Self::handshake_with_jitter(io, config, age_jitter()).await
    }

    /// As [`handshake`](Self::handshake) with a given age jitter factor
    /// (tests; production draws it uniformly from [0.9, 1.1)).
    pub(crate) async fn handshake_with_jitter(
        io: T,
        config: &ServerConfig,
        age_factor: f64,
    ) -> Result<Self, Error> {
        let shared = Shared::new(Role::Server, config.counters.clone());
        shared.server().set_enforcement(&config.params);
        let io = FrameIo::new(io, shared.clone());
        let deadline = Instant::now() + config.handshake_timeout;
        let mut h2 = tokio::time::timeout_at(deadline, config.h2.handshake(io))
            .await
            .map_err(|_| Error::HandshakeTimeout)?
            .map_err(Error::H2)?;
        // h2's handshake ends with the preface. A client must follow it
        // with SETTINGS (RFC 9113 §3.4); one that sends nothing more would
        // otherwise hold the connection until keepalive finds it silent.
        // (Streams h2 reads meanwhile are queued for `poll_accept`.)
        let settled = tokio::time::timeout_at(
            deadline,
            poll_fn(|cx| {
                if shared.peer_settings.load(Acquire) {
                    return Poll::Ready(Ok(()));
                }
                match h2.poll_closed(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed before the client's SETTINGS",
                    )))),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(Error::H2(e))),
                    Poll::Pending if shared.peer_settings.load(Acquire) => Poll::Ready(Ok(())),
                    Poll::Pending => Poll::Pending,
                }
            }),
        )
        .await;
        settled.map_err(|_| Error::HandshakeTimeout)??;
        let counters = &config.counters;
        Counters::inc(&counters.connections_total);
        counters.connections_open.fetch_add(1, Relaxed);
        Ok(ServerConnection {
            h2: Some(h2),
            // Taken when the first keepalive ping is due (h2 allocates its
            // ping state on the call; most connections never ping).
            ping: None,
            keepalive: Keepalive::new(config.params.time, config.params.timeout, shared.base),
            shared,
            params: config.params,
            age_factor,
            age_fired: false,
            drain: None,
            hard_close: None,
            too_many_pings: false,
            outcome: None,
            timer: Box::pin(tokio::time::sleep_until(far_future())),
            armed: None,
            timers_due: true,
        })
    }

    /// The next stream, or `None` once the connection has closed (see
    /// [`outcome`](Self::outcome) for why).
    pub async fn accept(&mut self) -> Option<Incoming> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// A handle for draining, reconfiguring and observing this connection.
    pub fn handle(&self) -> ConnectionHandle {
        ConnectionHandle {
            shared: self.shared.clone(),
        }
    }

    /// Why the connection ended; `None` while it runs.
    pub fn outcome(&self) -> Option<&CloseReason> {
        self.outcome.as_ref()
    }

    /// When the connection will send its age GOAWAY, if it has max age.
    pub fn age_deadline(&self) -> Option<Instant> {
        let age = self.params.max_age?;
        Some(self.shared.base + age.mul_f64(self.age_factor))
    }

    /// Poll form of [`accept`](Self::accept).
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        self.shared.waker.register(cx.waker());
        loop {
            let Some(h2) = self.h2.as_mut() else {
                return Poll::Ready(None);
            };
            match h2.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    return Poll::Ready(Some(Incoming {
                        request,
                        respond,
                        guard: StreamGuard::new(self.shared.clone()),
                    }));
                }
                Poll::Ready(Some(Err(e))) => {
                    let reason = self.end_reason(Some(e));
                    self.finish(reason);
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => {
                    let reason = self.end_reason(None);
                    self.finish(reason);
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            // Events raised while h2 ran (or by other tasks), then timers —
            // only when something could have moved a deadline: most polls
            // are stream traffic and skip this. Either may queue frames for
            // h2, so poll it again after them.
            let mut changed = self.handle_events();
            if changed || self.timers_due {
                self.timers_due = false;
                changed |= self.handle_timers(cx);
                if self.h2.is_none() {
                    return Poll::Ready(None);
                }
                self.arm_timer();
            }
            if changed {
                continue;
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                self.armed = None;
                self.timers_due = true;
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Reacts to IO events and control messages. True if anything changed
    /// that h2 must act on.
    fn handle_events(&mut self) -> bool {
        let events = self.shared.take_events();
        if events == 0 {
            return false;
        }
        let now = Instant::now();
        if events & event::CONTROL != 0 {
            let control = self.shared.server().take_control();
            if let Some(params) = control.params {
                self.apply_params(*params);
            }
            if let Some(req) = control.drain {
                if let Some(deadline) = req.deadline {
                    self.set_hard_close(deadline, CloseReason::DrainTimeout);
                }
                self.start_drain(req.reason);
            }
        }
        if events & event::TOO_MANY_PINGS != 0 && !self.too_many_pings {
            self.too_many_pings = true;
            // warn, not error: it is the client's misconfiguration, and an
            // abusive client must not be able to fill the error log.
            tracing::warn!(
                strikes = self.shared.server().strikes.load(Relaxed),
                "client pinged too often; sending GOAWAY(ENHANCE_YOUR_CALM, too_many_pings)"
            );
            self.shared
                .server()
                .goaway_reason
                .store(GoAwayReason::TooManyPings as u8, Release);
            Counters::inc(&self.shared.counters.goaways_sent[GoAwayReason::TooManyPings.index()]);
            self.shared.set_state(ConnState::Draining);
            if let Some(h2) = self.h2.as_mut() {
                h2.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            }
        }
        if let Some(drain) = self.drain.as_mut() {
            if events & event::SHUTDOWN_ACKED != 0 {
                drain.ack_done = true;
                drain.ack_deadline = None;
            }
            if events & event::GOAWAY_WRITTEN != 0
                && !drain.ack_done
                && drain.ack_deadline.is_none()
            {
                drain.ack_deadline = Some(now + self.params.goaway_ack_timeout);
            }
        }
        true
    }

    /// Runs whatever timers are due. True if anything changed.
    fn handle_timers(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let mut changed = false;

        if let Some((at, reason)) = &self.hard_close
            && now >= *at
        {
            let reason = reason.clone();
            tracing::info!(
                reason = reason.as_str(),
                "hard-closing connection with streams still open"
            );
            Counters::inc(&self.shared.counters.hard_closes);
            self.finish(reason);
            return true;
        }

        let last_read = self.shared.last_read.load(Acquire);
        match self
            .keepalive
            .on_timer(now, self.shared.base, last_read, false)
        {
            KeepaliveAction::Wait | KeepaliveAction::Dormant => {}
            KeepaliveAction::Ping => {
                changed = true;
                self.send_ping(cx);
            }
            KeepaliveAction::Close => {
                tracing::info!(timeout = ?self.params.timeout, "keepalive ping not answered; closing");
                Counters::inc(&self.shared.counters.ping_timeouts);
                self.finish(CloseReason::PingTimeout);
                return true;
            }
        }

        if !self.age_fired
            && let Some(at) = self.age_deadline()
            && now >= at
        {
            self.age_fired = true;
            // grpc-go stops its keepalive loop once age fires.
            self.keepalive.stop();
            if let Some(grace) = self.params.max_age_grace {
                self.set_hard_close(now + grace, CloseReason::AgeGraceElapsed);
            }
            self.start_drain(GoAwayReason::MaxAge);
            changed = true;
        }

        if let Some(at) = self.idle_deadline()
            && now >= at
        {
            self.start_drain(GoAwayReason::MaxIdle);
            changed = true;
        }

        if let Some(drain) = self.drain.as_mut()
            && let Some(at) = drain.ack_deadline
            && now >= at
        {
            drain.ack_deadline = None;
            drain.ack_done = true;
            self.shared
                .server()
                .inject_shutdown_ack
                .store(true, Release);
            changed = true;
        }
        changed
    }

    fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.params.max_idle?;
        if self.drain.is_some() || self.shared.active_streams.load(Acquire) > 0 {
            return None;
        }
        let since = self.shared.idle_since.load(Acquire);
        Some(self.shared.instant(since) + idle)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let age = if self.age_fired {
            None
        } else {
            self.age_deadline()
        };
        [
            self.keepalive.deadline(),
            age,
            self.idle_deadline(),
            self.drain.as_ref().and_then(|d| d.ack_deadline),
            self.hard_close.as_ref().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn arm_timer(&mut self) {
        let next = self.next_deadline();
        if next != self.armed {
            self.armed = next;
            let at = next.unwrap_or_else(far_future);
            self.timer.as_mut().reset(at);
        }
    }

    fn send_ping(&mut self, cx: &mut Context<'_>) {
        if self.ping.is_none() {
            self.ping = self.h2.as_mut().and_then(Connection::ping_pong);
        }
        let Some(ping) = self.ping.as_mut() else {
            return;
        };
        // Collect an earlier pong so h2 lets us send the next ping; if the
        // earlier one is still unanswered, that one is the outstanding ping.
        let _ = ping.poll_pong(cx);
        match ping.send_ping(h2::Ping::opaque()) {
            Ok(()) => tracing::trace!("sent keepalive PING"),
            Err(e) => tracing::trace!(error = %e, "previous keepalive PING still outstanding"),
        }
    }

    fn start_drain(&mut self, reason: GoAwayReason) {
        if self.drain.is_some() || self.too_many_pings {
            return;
        }
        tracing::debug!(reason = reason.as_str(), "sending GOAWAY");
        let server = self.shared.server();
        server.goaway_reason.store(reason as u8, Release);
        server.drain_reason.store(reason as u8, Relaxed);
        self.shared.set_state(ConnState::Draining);
        Counters::inc(&self.shared.counters.goaways_sent[reason.index()]);
        self.drain = Some(DrainState {
            reason,
            ack_deadline: None,
            ack_done: false,
        });
        if let Some(h2) = self.h2.as_mut() {
            h2.graceful_shutdown();
        }
    }

    fn set_hard_close(&mut self, at: Instant, reason: CloseReason) {
        if self.hard_close.as_ref().is_none_or(|(t, _)| at < *t) {
            self.hard_close = Some((at, reason));
        }
    }

    fn apply_params(&mut self, params: ServerParams) {
        self.params = params;
        self.shared.server().set_enforcement(&params);
        if !self.age_fired {
            self.keepalive.update(
                params.time,
                params.timeout,
                self.shared.base,
                self.shared.last_read.load(Acquire),
            );
        }
        tracing::debug!(?params, "applied new parameters");
    }

    fn end_reason(&self, error: Option<h2::Error>) -> CloseReason {
        if self.too_many_pings {
            return CloseReason::TooManyPings;
        }
        match (error, &self.drain) {
            (None, Some(d)) => CloseReason::Drained(d.reason),
            (None, None) => CloseReason::PeerClosed,
            (Some(e), Some(d)) if e.is_io() => {
                // A peer that hangs up while we drain has done what we asked.
                tracing::debug!(error = %e, "connection closed during drain");
                CloseReason::Drained(d.reason)
            }
            (Some(e), _) => CloseReason::Error(Arc::new(e)),
        }
    }

    fn finish(&mut self, reason: CloseReason) {
        if self.outcome.is_some() {
            return;
        }
        tracing::debug!(reason = reason.as_str(), "connection closed");
        // Dropping h2 closes the socket and fails any streams still open.
        self.h2 = None;
        self.ping = None;
        self.outcome = Some(reason);
        self.shared.set_state(ConnState::Closed);
        self.shared.counters.connections_open.fetch_sub(1, Relaxed);
    }
}

impl<T> Drop for ServerConnection<T> {
    fn drop(&mut self) {
        if self.outcome.is_none() {
            self.shared.set_state(ConnState::Closed);
            self.shared.counters.connections_open.fetch_sub(1, Relaxed);
        }
    }
}
