//! A frame-aware IO layer between `h2` and the socket.
//!
//! It closes three gaps in h2 0.4 without forking it (see the crate docs):
//!
//! - h2 answers received PINGs itself and never shows them to the user.
//!   [`FrameIo`] scans what is read, so ping enforcement (gRFC A8) sees
//!   every PING, and keepalive sees every read.
//! - a GOAWAY sent through h2's API carries no debug data. The write half
//!   adds the reason (`max_age`, `max_idle`, `too_many_pings`,
//!   `graceful_stop`) to GOAWAY frames h2 writes without any.
//! - `graceful_shutdown()` waits for its PING's ACK forever. When the
//!   driver's ack timer fires, the read half hands h2 that ACK itself, at a
//!   frame boundary, and h2 sends the second GOAWAY.
//!
//! Everything else passes through byte for byte.

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
    obs: Observer,
}

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
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            let now = Instant::now();
            let shared = &this.obs.shared;
            shared
                .last_read
                .store(shared.nanos_since_base(now), Release);
            let obs = &mut this.obs;
            this.read.feed(new, |e| obs.on_read(e, now));
            if obs.settings_pending && this.read.at_boundary() {
                obs.settings_done();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T> FrameIo<T> {
    fn deliver_inject(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.inject.len() - self.inject_pos);
        buf.put_slice(&self.inject[self.inject_pos..self.inject_pos + n]);
        self.inject_pos += n;
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.write
            .poll_write(cx, &mut this.inner, &[IoSlice::new(buf)], &mut this.obs)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.write
            .poll_write(cx, &mut this.inner, bufs, &mut this.obs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.write.poll_drain(cx, &mut this.inner))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.write.poll_finish(cx, &mut this.inner, &mut this.obs))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
