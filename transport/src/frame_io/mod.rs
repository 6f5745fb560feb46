//! A frame-aware IO layer between `h2` and the socket.
//!
//! It closes three gaps in h2 0.4 without forking it (see the crate docs):
//!
//! - h2 answers received PINGs itself and never shows them to the user.
//!   [`FrameIo`] scans what is read, so ping enforcement (gRFC A8) sees
//!   every PING, and keepalive sees every read.
//! - a GOAWAY sent through h2's API carries no debug data. The write half
//!   adds the reason (`max_age`, `max_idle`, `too_many_pings`,
//!   `graceful_stop`, `rebalance`) to GOAWAY frames h2 writes without any.
//! - `graceful_shutdown()` waits for its PING's ACK forever. When the
//!   driver's ack timer fires, the read half hands h2 that ACK itself, at a
//!   frame boundary, and h2 sends the second GOAWAY.
//! - as a client, h2 acknowledges a server's shutdown PING ahead of the
//!   HEADERS of streams it opened before the GOAWAY, which the server then
//!   refuses. The read half stops after a GOAWAY until h2 has written what
//!   it had queued ([`barrier`]); and when a write fails, it still reads
//!   what the server sent before closing, so that a GOAWAY or a refusal
//!   h2 never got to still tells which streams were never processed
//!   (`salvage`).
//!
//! Everything else passes through byte for byte.

mod barrier;
mod enforcement;
mod outbound;
pub(crate) mod shared;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

pub(crate) use enforcement::{PingEnforcer, PingVerdict};
pub(crate) use shared::DrainRequest;
pub use shared::{ConnState, ConnStats};

use crate::frame::{self, FrameEvent, FrameScanner, HEADER_LEN, MAX_STREAM_ID, kind};
use crate::{Counters, GoAwayReason};
use barrier::ReadBarrier;
use outbound::{WriteObserver, WriteState};
use shared::{Role, Shared, event};

/// The frame-aware IO wrapper. Created by the server and client drivers;
/// not constructed directly.
pub(crate) struct FrameIo<T> {
    inner: T,
    write: WriteState,
    read: FrameScanner,
    inject: [u8; HEADER_LEN + 8],
    inject_pos: usize,
    /// A client connection's read barrier after GOAWAY (boxed: servers,
    /// of which there are many more, have none).
    barrier: Option<Box<ReadBarrier>>,
    obs: Observer,
}

/// The most a failed write reads of what the server sent before closing.
const SALVAGE_LIMIT: usize = 64 << 10;

struct Observer {
    shared: Arc<Shared>,
    enforcer: PingEnforcer,
    goaway_written: bool,
    expect_shutdown_ping: bool,
    shutdown_payload: Option<[u8; 8]>,
    shutdown_acked: bool,
    /// The peer's first SETTINGS is being read.
    settings_pending: bool,
}

impl<T> FrameIo<T> {
    pub(crate) fn new(inner: T, shared: Arc<Shared>) -> Self {
        let server = shared.role() == Role::Server;
        FrameIo {
            inner,
            // The client writes the preface; the server reads it.
            write: WriteState::new(!server),
            read: if server {
                FrameScanner::after_preface()
            } else {
                FrameScanner::new()
            },
            inject: [0; HEADER_LEN + 8],
            inject_pos: HEADER_LEN + 8,
            barrier: (!server).then(Box::default),
            obs: Observer {
                shared,
                enforcer: PingEnforcer::default(),
                goaway_written: false,
                expect_shutdown_ping: false,
                shutdown_payload: None,
                shutdown_acked: false,
                settings_pending: false,
            },
        }
    }
}

impl WriteObserver for Observer {
    fn goaway_debug(&self) -> Option<&'static [u8]> {
        let server = self.shared.as_server()?;
        GoAwayReason::from_u8(server.goaway_reason.load(Acquire)).map(GoAwayReason::debug_data)
    }

    fn on_written(&mut self, ev: FrameEvent) {
        match ev {
            FrameEvent::Header(h) if h.kind == kind::HEADERS || h.kind == kind::DATA => {
                self.enforcer.data_or_headers_sent();
                if h.kind == kind::HEADERS
                    && let Some(client) = self.shared.as_client()
                {
                    client.max_headers_sent.fetch_max(h.stream_id, AcqRel);
                }
            }
            FrameEvent::Ping {
                ack: false,
                payload,
            } => {
                if self.expect_shutdown_ping {
                    // h2 writes its shutdown PING right after the first
                    // graceful GOAWAY; learn its payload rather than
                    // depending on h2's private constant.
                    self.expect_shutdown_ping = false;
                    self.shutdown_payload = Some(payload);
                    self.shared.notify(event::SHUTDOWN_PING_WRITTEN);
                } else {
                    self.shared.pings_sent.fetch_add(1, Relaxed);
                    Counters::inc(&self.shared.counters.pings_sent);
                }
            }
            FrameEvent::GoAway { last_stream_id, .. } => {
                if !self.goaway_written {
                    self.goaway_written = true;
                    self.expect_shutdown_ping =
                        self.shared.role() == Role::Server && last_stream_id == MAX_STREAM_ID;
                }
                self.shared.notify(event::GOAWAY_WRITTEN);
            }
            _ => {}
        }
    }
}

impl Observer {
    fn on_read(&mut self, ev: FrameEvent, now: Instant) {
        if self.settings_pending && matches!(ev, FrameEvent::Header(_)) {
            // The next frame began: the first SETTINGS is complete.
            self.settings_done();
        }
        let shared = &*self.shared;
        match ev {
            FrameEvent::Ping { ack: false, .. } => {
                shared.pings_received.fetch_add(1, Relaxed);
                let Some(server) = shared.as_server() else {
                    return;
                };
                let verdict = self.enforcer.on_ping(
                    now,
                    shared.active_streams.load(Acquire),
                    std::time::Duration::from_nanos(server.min_time_nanos.load(Relaxed)),
                    server.permit_without_stream.load(Relaxed),
                );
                server.strikes.store(self.enforcer.strikes(), Relaxed);
                match verdict {
                    PingVerdict::Ok => {}
                    PingVerdict::Strike(n) => {
                        Counters::inc(&shared.counters.ping_strikes);
                        tracing::debug!(strikes = n, "ping strike");
                    }
                    PingVerdict::TooManyPings => {
                        Counters::inc(&shared.counters.ping_strikes);
                        shared.notify(event::TOO_MANY_PINGS);
                    }
                }
            }
            FrameEvent::Ping { ack: true, payload }
                if Some(payload) == self.shutdown_payload && !self.shutdown_acked =>
            {
                self.shutdown_acked = true;
                shared.notify(event::SHUTDOWN_ACKED);
            }
            FrameEvent::GoAway {
                last_stream_id,
                error_code,
                debug: data,
            } => {
                if let Some(client) = shared.as_client() {
                    client
                        .peer_goaway_last_stream
                        .fetch_min(last_stream_id, AcqRel);
                    client.peer_goaway.store(true, Release);
                    if error_code == frame::code::ENHANCE_YOUR_CALM
                        && data.as_bytes() == GoAwayReason::TooManyPings.debug_data()
                    {
                        client.peer_too_many_pings.store(true, Release);
                    }
                    Counters::inc(&shared.counters.upstream_goaways_received);
                }
                tracing::debug!(last_stream_id, error_code, debug_data = ?data, "received GOAWAY");
                shared.notify(event::PEER_GOAWAY);
            }
            FrameEvent::Setting { id, value } => {
                if let Some(client) = shared.as_client() {
                    match id {
                        frame::SETTINGS_MAX_CONCURRENT_STREAMS => {
                            client.peer_max_streams.store(value, Release);
                        }
                        frame::SETTINGS_MAX_HEADER_LIST_SIZE => {
                            client.peer_max_header_list.store(value, Release);
                        }
                        _ => {}
                    }
                }
            }
            FrameEvent::Header(h) if h.kind == kind::SETTINGS && !h.is_ack() => {
                // Reported once the whole frame is read: its settings come
                // first, as Setting events, before the next frame's header.
                self.settings_pending = !shared.peer_settings.load(Acquire);
            }
            _ => {}
        }
    }

    fn settings_done(&mut self) {
        self.settings_pending = false;
        self.shared.peer_settings.store(true, Release);
        self.shared.notify(event::PEER_SETTINGS);
    }

    /// Whether the read half should hand h2 the shutdown PING's ACK now.
    fn wants_inject(&self) -> Option<[u8; 8]> {
        let asked = self
            .shared
            .as_server()
            .is_some_and(|s| s.inject_shutdown_ack.load(Acquire));
        if self.shutdown_acked || !asked {
            return None;
        }
        self.shutdown_payload
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.inject_pos < this.inject.len() {
            this.deliver_inject(buf);
            return Poll::Ready(Ok(()));
        }
        if let Some(barrier) = this.barrier.as_deref_mut() {
            ready!(barrier.poll_open(cx));
            if barrier.has_held() {
                let before = buf.filled().len();
                let n = barrier.give(buf);
                let taken = this.scan_read(buf, before, Instant::now());
                buf.set_filled(before + taken);
                if let Some(barrier) = this.barrier.as_deref_mut() {
                    barrier.ungive(n - taken);
                    barrier.trim();
                }
                return Poll::Ready(Ok(()));
            }
        }
        let mut limit = usize::MAX;
        if let Some(payload) = this.obs.wants_inject() {
            if this.read.at_boundary() {
                this.obs.shutdown_acked = true;
                this.obs
                    .shared
                    .server()
                    .inject_shutdown_ack
                    .store(false, Release);
                let header = frame::FrameHeader {
                    len: 8,
                    kind: kind::PING,
                    flags: frame::flags::ACK,
                    stream_id: 0,
                };
                this.inject[..HEADER_LEN].copy_from_slice(&header.encode());
                this.inject[HEADER_LEN..].copy_from_slice(&payload);
                this.inject_pos = 0;
                tracing::debug!(
                    "GOAWAY ping not acknowledged in time; proceeding to the second GOAWAY"
                );
                this.deliver_inject(buf);
                return Poll::Ready(Ok(()));
            }
            // Stop this read at the frame boundary so the ACK can follow.
            limit = this.read.until_boundary();
        }
        let before = buf.filled().len();
        if limit < buf.remaining() {
            let n = {
                let mut sub = buf.take(limit);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                sub.filled().len()
            };
            // SAFETY: `sub` covered the first `limit` unfilled bytes of
            // `buf`, and the read initialised and filled `n` of them.
            #[allow(unsafe_code)]
            unsafe {
                buf.assume_init(n)
            };
            buf.advance(n);
        } else {
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        }
        if buf.filled().len() > before {
            let now = Instant::now();
            let shared = &this.obs.shared;
            shared
                .last_read
                .store(shared.nanos_since_base(now), Release);
            let read = buf.filled().len() - before;
            let taken = this.scan_read(buf, before, now);
            if taken < read
                && let Some(barrier) = this.barrier.as_deref_mut()
            {
                barrier.keep(&buf.filled()[before + taken..]);
                buf.set_filled(before + taken);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T> FrameIo<T> {
    /// Scans what this read added to `buf` (from `before`). On a client
    /// connection the scan stops at the end of a GOAWAY frame and the
    /// barrier holds; returns how many of the new bytes were scanned (the
    /// rest are the caller's to hold back and take out of `buf`).
    fn scan_read(&mut self, buf: &ReadBuf<'_>, before: usize, now: Instant) -> usize {
        let new = &buf.filled()[before..];
        let obs = &mut self.obs;
        let taken = match self.barrier.as_deref_mut() {
            None => {
                self.read.feed(new, |e| obs.on_read(e, now));
                new.len()
            }
            Some(barrier) => {
                let mut goaway = false;
                let taken = self.read.feed_until(new, |e| {
                    goaway |= matches!(e, FrameEvent::GoAway { .. });
                    obs.on_read(e, now);
                    goaway
                });
                if goaway {
                    barrier.hold();
                }
                taken
            }
        };
        if obs.settings_pending && self.read.at_boundary() {
            obs.settings_done();
        }
        taken
    }

    /// After a write failed on a client connection: reads what the server
    /// sent before it closed (held bytes first, then the socket, up to
    /// [`SALVAGE_LIMIT`]), so that a GOAWAY or a REFUSED_STREAM h2 did not
    /// get to read still marks the streams it names as never processed.
    fn salvage(&mut self, cx: &mut Context<'_>)
    where
        T: AsyncRead + Unpin,
    {
        let Some(barrier) = self.barrier.as_deref_mut() else {
            return;
        };
        let now = Instant::now();
        let mut refused = Vec::new();
        let obs = &mut self.obs;
        let mut scan = |read: &mut FrameScanner, bytes: &[u8]| {
            read.feed(bytes, |e| {
                if let FrameEvent::Reset {
                    stream_id,
                    error_code: frame::code::REFUSED_STREAM,
                } = e
                {
                    refused.push(stream_id);
                }
                obs.on_read(e, now);
            });
        };
        scan(&mut self.read, barrier.held());
        let mut chunk = [0u8; 4096];
        let mut total = 0;
        while total < SALVAGE_LIMIT {
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    total += rb.filled().len();
                    scan(&mut self.read, rb.filled());
                }
                _ => break,
            }
        }
        if !refused.is_empty() {
            tracing::debug!(streams = ?refused, "refused streams read after the connection failed");
            let client = self.obs.shared.client();
            let mut unread = client
                .refused_unread
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            unread.extend(refused);
        }
    }
}

impl<T> FrameIo<T> {
    fn deliver_inject(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.inject.len() - self.inject_pos);
        buf.put_slice(&self.inject[self.inject_pos..self.inject_pos + n]);
        self.inject_pos += n;
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> FrameIo<T> {
    /// Tells the barrier about a write's outcome; on a client whose write
    /// failed, salvages what the server sent first.
    fn after_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match &r {
            Poll::Ready(Err(_)) => self.salvage(cx),
            Poll::Ready(Ok(_)) => {
                if let Some(barrier) = self.barrier.as_deref_mut() {
                    barrier.wrote();
                }
            }
            Poll::Pending => {}
        }
        r
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FrameIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this
            .write
            .poll_write(cx, &mut this.inner, &[IoSlice::new(buf)], &mut this.obs);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this
            .write
            .poll_write(cx, &mut this.inner, bufs, &mut this.obs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = match this.write.poll_drain(cx, &mut this.inner) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        };
        match &r {
            Poll::Ready(Err(_)) => this.salvage(cx),
            Poll::Ready(Ok(())) => {
                if let Some(barrier) = this.barrier.as_deref_mut() {
                    barrier.flushed();
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.write.poll_finish(cx, &mut this.inner, &mut this.obs))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
