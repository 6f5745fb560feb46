//! State shared between a connection's [`FrameIo`](super::FrameIo) (polled
//! inside `h2`), its driver, its stream guards and observers such as the
//! agent's `/connections` endpoint.
//!
//! What both ends keep is in [`Shared`]; what only one end keeps is in its
//! [`Side`]: [`ServerSide`] (ping enforcement, the GOAWAY reason, the
//! shutdown-ACK injection, the control mailbox) or [`ClientSide`] (the
//! server's SETTINGS limits and GOAWAY). A connection's side is fixed when
//! it is made, by the driver that makes it.
//!
//! Everything the IO layer touches per read or write is an atomic; the one
//! mutex is the server's control mailbox, taken only for drain requests and
//! policy reloads.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::*,
};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use serde::Serialize;
use tokio::time::Instant;

use crate::{Counters, GoAwayReason, ServerParams};

/// Event bits set by the IO layer or stream guards for the driver.
pub(crate) mod event {
    /// The peer broke ping enforcement a third time.
    pub(crate) const TOO_MANY_PINGS: u32 = 1 << 0;
    /// A GOAWAY frame was written.
    pub(crate) const GOAWAY_WRITTEN: u32 = 1 << 1;
    /// The PING sent with the first drain GOAWAY was acknowledged.
    pub(crate) const SHUTDOWN_ACKED: u32 = 1 << 2;
    /// The shutdown PING was written (its payload is now known).
    pub(crate) const SHUTDOWN_PING_WRITTEN: u32 = 1 << 3;
    /// The active stream count changed between zero and non-zero.
    pub(crate) const STREAMS_CHANGED: u32 = 1 << 4;
    /// The peer sent GOAWAY.
    pub(crate) const PEER_GOAWAY: u32 = 1 << 5;
    /// A control message (drain, new parameters) is waiting.
    pub(crate) const CONTROL: u32 = 1 << 6;
    /// The peer's first SETTINGS frame arrived.
    pub(crate) const PEER_SETTINGS: u32 = 1 << 7;
}

/// Which end of the connection this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

impl ServerSide {
    pub(crate) fn set_enforcement(&self, params: &ServerParams) {
        self.min_time_nanos.store(
            u64::try_from(params.min_time.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
        self.permit_without_stream
            .store(params.permit_without_stream, Relaxed);
    }

    pub(crate) fn take_control(&self) -> Control {
        std::mem::take(&mut *self.control.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Lifecycle of a connection as shown in stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ConnState {
    /// Serving.
    Open = 0,
    /// GOAWAY sent (or received, for a client connection); finishing streams.
    Draining = 1,
    /// Closed.
    Closed = 2,
}

impl ConnState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => ConnState::Open,
            1 => ConnState::Draining,
            _ => ConnState::Closed,
        }
    }
}

/// A request to drain one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DrainRequest {
    /// Debug data of the GOAWAY.
    pub reason: GoAwayReason,
    /// Hard-close whatever is left at this instant.
    pub deadline: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct Control {
    pub drain: Option<DrainRequest>,
    /// Boxed: rare, and large next to the rest of the connection's state.
    pub params: Option<Box<ServerParams>>,
}

/// One connection's state, as both sides have it.
pub(crate) struct Shared {
    pub base: Instant,
    pub counters: Arc<Counters>,
    pub waker: AtomicWaker,
    pub events: AtomicU32,

    /// Nanoseconds after `base` of the latest read.
    pub last_read: AtomicU64,
    pub active_streams: AtomicUsize,
    /// Nanoseconds after `base` at which `active_streams` last became zero.
    pub idle_since: AtomicU64,
    pub streams_total: AtomicU64,
    /// The peer's first SETTINGS frame has been read.
    pub peer_settings: AtomicBool,
    pub pings_sent: AtomicU64,
    pub pings_received: AtomicU64,
    pub state: AtomicU8,
    pub closed_at: AtomicI64,

    /// What only one side has.
    pub side: Side,
}

/// The state only one end of a connection keeps.
pub(crate) enum Side {
    Server(ServerSide),
    Client(ClientSide),
}

/// A server connection's own state: enforcement, the GOAWAY it sends,
/// and the control mailbox.
pub(crate) struct ServerSide {
    /// GOAWAY debug data the IO layer adds to the next GOAWAY `h2` writes.
    pub goaway_reason: AtomicU8,
    /// Why the connection is draining, for stats.
    pub drain_reason: AtomicU8,
    /// Ask the IO layer to deliver an ACK for `h2`'s shutdown PING.
    pub inject_shutdown_ack: AtomicBool,
    /// Enforcement parameters, read by the IO layer on each PING.
    pub min_time_nanos: AtomicU64,
    pub permit_without_stream: AtomicBool,
    /// Current ping strikes, for stats.
    pub strikes: AtomicU32,
    pub control: Mutex<Control>,
}

/// A client connection's own state: what the server's SETTINGS and
/// GOAWAY said.
pub(crate) struct ClientSide {
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS.
    pub peer_max_streams: AtomicU32,
    /// The peer's SETTINGS_MAX_HEADER_LIST_SIZE (h2 does not check what
    /// it sends against it).
    pub peer_max_header_list: AtomicU32,
    /// A GOAWAY was received; open no new stream here.
    pub peer_goaway: AtomicBool,
    pub peer_goaway_last_stream: AtomicU32,
    pub peer_too_many_pings: AtomicBool,
    /// The highest stream whose HEADERS began to reach the socket; a
    /// stream above it never left this end.
    pub max_headers_sent: AtomicU32,
    /// Streams refused (REFUSED_STREAM) in bytes `h2` never read, because
    /// a write failed first (filled once, as the connection dies).
    pub refused_unread: Mutex<Vec<u32>>,
}

impl Shared {
    pub(crate) fn new(role: Role, counters: Arc<Counters>) -> Arc<Self> {
        let side = match role {
            Role::Server => Side::Server(ServerSide {
                goaway_reason: AtomicU8::new(0),
                drain_reason: AtomicU8::new(0),
                inject_shutdown_ack: AtomicBool::new(false),
                min_time_nanos: AtomicU64::new(0),
                permit_without_stream: AtomicBool::new(false),
                strikes: AtomicU32::new(0),
                control: Mutex::new(Control::default()),
            }),
            Role::Client => Side::Client(ClientSide {
                peer_max_streams: AtomicU32::new(u32::MAX),
                peer_max_header_list: AtomicU32::new(u32::MAX),
                peer_goaway: AtomicBool::new(false),
                peer_goaway_last_stream: AtomicU32::new(u32::MAX),
                peer_too_many_pings: AtomicBool::new(false),
                max_headers_sent: AtomicU32::new(0),
                refused_unread: Mutex::new(Vec::new()),
            }),
        };
        Arc::new(Shared {
            base: Instant::now(),
            counters,
            waker: AtomicWaker::new(),
            events: AtomicU32::new(0),
            last_read: AtomicU64::new(0),
            active_streams: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            streams_total: AtomicU64::new(0),
            peer_settings: AtomicBool::new(false),
            pings_sent: AtomicU64::new(0),
            pings_received: AtomicU64::new(0),
            state: AtomicU8::new(ConnState::Open as u8),
            closed_at: AtomicI64::new(-1),
            side,
        })
    }

    pub(crate) fn role(&self) -> Role {
        match self.side {
            Side::Server(_) => Role::Server,
            Side::Client(_) => Role::Client,
        }
    }

    /// The server side's state; `None` on a client connection.
    pub(crate) fn as_server(&self) -> Option<&ServerSide> {
        match &self.side {
            Side::Server(s) => Some(s),
            Side::Client(_) => None,
        }
    }

    /// The client side's state; `None` on a server connection.
    pub(crate) fn as_client(&self) -> Option<&ClientSide> {
        match &self.side {
            Side::Client(c) => Some(c),
            Side::Server(_) => None,
        }
    }

    /// The server side's state, on a connection made by the server.
    #[track_caller]
    pub(crate) fn server(&self) -> &ServerSide {
        self.as_server().expect("a server connection's state")
    }

    /// The client side's state, on a connection made by the client.
    #[track_caller]
    pub(crate) fn client(&self) -> &ClientSide {
        self.as_client().expect("a client connection's state")
    }

    pub(crate) fn nanos_since_base(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }

    pub(crate) fn now_nanos(&self) -> u64 {
        self.nanos_since_base(Instant::now())
    }

    /// Records an event and wakes the driver.
    pub(crate) fn notify(&self, bits: u32) {
        self.events.fetch_or(bits, AcqRel);
        self.waker.wake();
    }

    pub(crate) fn take_events(&self) -> u32 {
        self.events.swap(0, AcqRel)
    }

    pub(crate) fn set_state(&self, state: ConnState) {
        self.state.store(state as u8, Release);
        if state == ConnState::Closed {
            self.closed_at.store(self.now_nanos() as i64, Release);
        }
    }

    pub(crate) fn state(&self) -> ConnState {
        ConnState::from_u8(self.state.load(Acquire))
    }

    /// Puts a drain request or new parameters in a server connection's
    /// mailbox and wakes its driver.
    pub(crate) fn send_control(&self, f: impl FnOnce(&mut Control)) {
        // A poisoned mailbox only means a panic elsewhere mid-update; the
        // data is plain values, so keep using it.
        let mut c = self
            .server()
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut c);
        drop(c);
        self.notify(event::CONTROL);
    }

    /// A stream became active. Returns true when the count left zero.
    pub(crate) fn stream_opened(&self) -> bool {
        self.streams_total.fetch_add(1, Relaxed);
        let was = self.active_streams.fetch_add(1, AcqRel);
        if was == 0 {
            self.notify(event::STREAMS_CHANGED);
        }
        was == 0
    }

    pub(crate) fn stream_closed(&self) {
        if self.active_streams.fetch_sub(1, AcqRel) == 1 {
            self.idle_since.store(self.now_nanos(), Release);
            self.notify(event::STREAMS_CHANGED);
        }
    }

    pub(crate) fn snapshot(&self) -> ConnStats {
        let now = self.now_nanos();
        let active = self.active_streams.load(Acquire);
        let idle = if active == 0 {
            now.saturating_sub(self.idle_since.load(Acquire))
        } else {
            0
        };
        let closed_at = self.closed_at.load(Acquire);
        let end = if closed_at >= 0 {
            closed_at as u64
        } else {
            now
        };
        let (strikes, drain_reason) = self.as_server().map_or((0, 0), |s| {
            (s.strikes.load(Relaxed), s.drain_reason.load(Relaxed))
        });
        ConnStats {
            age: Duration::from_nanos(end),
            idle: Duration::from_nanos(idle),
            since_last_read: Duration::from_nanos(now.saturating_sub(self.last_read.load(Relaxed))),
            active_streams: active,
            streams_total: self.streams_total.load(Relaxed),
            pings_sent: self.pings_sent.load(Relaxed),
            pings_received: self.pings_received.load(Relaxed),
            strikes,
            state: self.state(),
            goaway_reason: GoAwayReason::from_u8(drain_reason),
        }
    }
}

/// A point-in-time view of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnStats {
    /// Time since the connection was accepted (frozen once closed).
    pub age: Duration,
    /// Time with zero active streams (zero while a stream is open).
    pub idle: Duration,
    /// Time since the last byte was read.
    pub since_last_read: Duration,
    /// Streams open now.
    pub active_streams: usize,
    /// Streams opened over the connection's life.
    pub streams_total: u64,
    /// Keepalive and drain PINGs written.
    pub pings_sent: u64,
    /// Non-ACK PINGs received.
    pub pings_received: u64,
    /// Current ping strikes.
    pub strikes: u32,
    /// Lifecycle state.
    pub state: ConnState,
    /// Why it is draining, if it is.
    pub goaway_reason: Option<GoAwayReason>,
}
