//! The live client connections: for `/connections`, for the drain's log
//! lines, for pushing a reloaded policy to each one, and for choosing the
//! oldest to rebalance. Touched once per
//! connection open and close, never per request. (The drain reaches each
//! connection through its watch, not through this table: [`crate::drain`].)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use goaway_transport::server::ConnectionHandle;
use serde::Serialize;
use tokio::time::Instant;

struct Entry {
    peer: SocketAddr,
    handle: ConnectionHandle,
}

/// All open client connections.
#[derive(Default)]
pub struct ConnectionTable {
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
}

/// One connection, as `/connections` shows it.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    /// Connection id (this agent's).
    pub id: u64,
    /// Client address.
    pub peer: String,
    /// `h2` for a managed connection; `tls` or `http1` for one spliced to
    /// the app ([`Passthroughs`]), whose HTTP/2 fields are all zero.
    pub protocol: &'static str,
    /// Seconds since accepted.
    pub age_seconds: f64,
    /// Seconds with no active stream (0 while one is open).
    pub idle_seconds: f64,
    /// Seconds since anything was read.
    pub last_read_seconds: f64,
    /// Streams open now.
    pub active_streams: usize,
    /// Streams over the connection's life.
    pub streams_total: u64,
    /// Keepalive PINGs sent.
    pub pings_sent: u64,
    /// PINGs received from the client.
    pub pings_received: u64,
    /// Ping-enforcement strikes.
    pub strikes: u32,
    /// `open`, `draining` or `closed`.
    pub state: goaway_transport::ConnState,
    /// Why it is draining (`max_age`, `max_idle`, `too_many_pings`,
    /// `graceful_stop`, `rebalance`), if it is.
    pub goaway_reason: Option<goaway_transport::GoAwayReason>,
}

/// Removes its connection from the table when dropped.
pub struct Registration<'a> {
    table: &'a ConnectionTable,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

impl ConnectionTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection until the returned registration is dropped.
    pub fn register(&self, peer: SocketAddr, handle: ConnectionHandle) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.lock().insert(id, Entry { peer, handle });
        Registration { table: self, id }
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every open connection's handle.
    pub fn handles(&self) -> Vec<ConnectionHandle> {
        self.lock().values().map(|e| e.handle.clone()).collect()
    }

    /// The connections open and not draining, oldest first, with their
    /// clients' addresses: the candidates of a rebalance
    /// ([`crate::rebalance`]).
    pub fn open_oldest_first(&self) -> Vec<(SocketAddr, ConnectionHandle)> {
        let mut open: Vec<(u64, SocketAddr, ConnectionHandle)> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.handle.stats().state == goaway_transport::ConnState::Open)
            .map(|(&id, e)| (id, e.peer, e.handle.clone()))
            .collect();
        open.sort_by_key(|&(id, ..)| id);
        open.into_iter().map(|(_, peer, h)| (peer, h)).collect()
    }

    /// A view of every open connection, oldest first.
    pub fn views(&self) -> Vec<ConnectionView> {
        let mut v: Vec<ConnectionView> = self
            .lock()
            .iter()
            .map(|(&id, e)| {
                let s = e.handle.stats();
                ConnectionView {
                    id,
                    peer: e.peer.to_string(),
                    protocol: "h2",
                    age_seconds: s.age.as_secs_f64(),
                    idle_seconds: s.idle.as_secs_f64(),
                    last_read_seconds: s.since_last_read.as_secs_f64(),
                    active_streams: s.active_streams,
                    streams_total: s.streams_total,
                    pings_sent: s.pings_sent,
                    pings_received: s.pings_received,
                    strikes: s.strikes,
                    state: s.state,
                    goaway_reason: s.goaway_reason,
                }
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// Connections spliced to the app unmanaged (TLS, HTTP/1.x): listed, and
/// closed when a drain finishes.
pub struct Passthroughs {
    entries: Mutex<HashMap<u64, (SocketAddr, &'static str, Instant)>>,
    next_id: AtomicU64,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Passthroughs {
    fn default() -> Self {
        Passthroughs {
            entries: Mutex::default(),
            // Ids apart from the managed connections' table.
            next_id: AtomicU64::new(1 << 48),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}

/// Removes its passthrough connection from the list when dropped.
pub struct PassthroughRegistration<'a> {
    list: &'a Passthroughs,
    id: u64,
}

impl Drop for PassthroughRegistration<'_> {
    fn drop(&mut self) {
        self.list.lock().remove(&self.id);
    }
}

impl Passthroughs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (SocketAddr, &'static str, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a connection until the returned registration is dropped.
    pub fn register(
        &self,
        peer: SocketAddr,
        protocol: &'static str,
    ) -> PassthroughRegistration<'_> {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.lock().insert(id, (peer, protocol, Instant::now()));
        PassthroughRegistration { list: self, id }
    }

    /// Turns true when every passthrough connection must close.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Closes every passthrough connection, and any accepted later; how
    /// many were open. Counted under the lock the told connections need to
    /// leave the list: none has left it yet.
    pub fn close_all(&self) -> usize {
        let open = self.lock();
        self.closing.send_replace(true);
        open.len()
    }

    /// The `/connections` entries.
    pub fn views(&self) -> Vec<ConnectionView> {
        let mut v: Vec<ConnectionView> = self
            .lock()
            .iter()
            .map(|(&id, &(peer, protocol, since))| ConnectionView {
                id,
                peer: peer.to_string(),
                protocol,
                age_seconds: since.elapsed().as_secs_f64(),
                idle_seconds: 0.0,
                last_read_seconds: 0.0,
                active_streams: 0,
                streams_total: 0,
                pings_sent: 0,
                pings_received: 0,
                strikes: 0,
                state: goaway_transport::ConnState::Open,
                goaway_reason: None,
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 7], port))
    }

    #[tokio::test]
    async fn passthroughs_are_listed_while_registered_and_told_to_close_once() {
        let list = Passthroughs::default();
        let tls = list.register(addr(40001), "tls");
        let http1 = list.register(addr(40002), "http1");
        let views = list.views();
        assert_eq!(views.len(), 2);
        assert_eq!(
            views
                .iter()
                .map(|v| (v.peer.as_str(), v.protocol))
                .collect::<Vec<_>>(),
            [("10.0.0.7:40001", "tls"), ("10.0.0.7:40002", "http1")],
            "oldest first"
        );
        // Their ids never collide with the managed connections' (0, 1, …).
        assert!(views.iter().all(|v| v.id >= 1 << 48));
        drop(tls);
        assert_eq!(list.views().len(), 1);

        let mut early = list.closing();
        assert!(!*early.borrow_and_update());
        assert_eq!(list.close_all(), 1, "one still open");
        assert!(*early.borrow_and_update());
        // A connection spliced after the drain sees it at once.
        assert!(*list.closing().borrow());
        drop(http1);
        assert!(list.views().is_empty());
    }

    #[test]
    fn an_empty_table_lists_nothing() {
        let table = ConnectionTable::default();
        assert!(table.is_empty());
        assert!(table.views().is_empty() && table.handles().is_empty());
        assert!(table.open_oldest_first().is_empty());
    }
}
