//! The channel's connection pool and its dialer task.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::conn::{Conn, establish};
use super::driver::{ConnParams, PoolEvents};
use super::{ChannelConfig, Connect, Connectivity};
use crate::{ClientParams, ConnectError, Counters, Error};

/// A channel's connections to one address, the streams waiting for one,
/// and what the dialer needs to open more.
pub(crate) struct Pool {
    pub config: ChannelConfig,
    addr: String,
    pub conns: ArcSwap<Vec<Arc<Conn>>>,
    /// Serialises writers of `conns`.
    pool_write: Mutex<()>,
    pub state: watch::Sender<Connectivity>,
    /// Wakes the dialer.
    dial: Notify,
    /// Wakes streams waiting for a connection or a free slot.
    changed: Notify,
    /// Streams waiting for a connection.
    waiting: AtomicUsize,
    dialing: AtomicBool,
    /// Keep a connection open even with no stream asking for one.
    eager: AtomicBool,
    shut: AtomicBool,
    next_id: AtomicU64,
    /// Keepalive time for new connections, in nanoseconds; 0 = off.
    keepalive_nanos: AtomicU64,
    /// Parameters for new connections (the keepalive time lives in
    /// `keepalive_nanos`, which `too_many_pings` doubles).
    params: Mutex<ClientParams>,
    status: Mutex<DialStatus>,
}

#[derive(Default)]
struct DialStatus {
    last_error: Option<Arc<ConnectError>>,
    next_attempt: Option<Instant>,
    /// Whether a connect ever succeeded: before that, failures are the
    /// app starting, and logged quietly ([`STARTUP_QUIET`]).
    ever_connected: bool,
    /// The first failure of the current start-up run.
    failing_since: Option<Instant>,
    /// The start-up WARN was logged.
    startup_warned: bool,
}

/// How long the first connect may keep failing before each failure is
/// logged at WARN: until then the app is taken to be starting (the agent,
/// a native sidecar, starts before it), and only the first failure is
/// logged, at INFO.
pub(super) const STARTUP_QUIET: Duration = Duration::from_secs(60);

impl Pool {
    pub(super) fn new(config: ChannelConfig, addr: String) -> Arc<Self> {
        let keepalive = keepalive_nanos(config.params.time);
        let params = config.params;
        Arc::new(Pool {
            config,
            addr,
            conns: ArcSwap::from_pointee(Vec::new()),
            pool_write: Mutex::new(()),
            state: watch::Sender::new(Connectivity::Idle),
            dial: Notify::new(),
            changed: Notify::new(),
            waiting: AtomicUsize::new(0),
            dialing: AtomicBool::new(false),
            eager: AtomicBool::new(false),
            shut: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            keepalive_nanos: AtomicU64::new(keepalive),
            params: Mutex::new(params),
            status: Mutex::new(DialStatus::default()),
        })
    }

    /// Parameters for the next connection.
    pub(super) fn params(&self) -> ClientParams {
        *self.params.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New parameters for new connections; resets any doubling.
    pub(super) fn set_params(&self, params: ClientParams) {
        *self.params.lock().unwrap_or_else(|e| e.into_inner()) = params;
        self.keepalive_nanos
            .store(keepalive_nanos(params.time), Release);
    }

    /// The keepalive time for new connections (doubled after each
    /// `too_many_pings`); `None` when off.
    pub(super) fn keepalive_time(&self) -> Option<Duration> {
        match self.keepalive_nanos.load(Acquire) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, DialStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, s: Connectivity) {
        self.state.send_if_modified(|cur| {
            if *cur == s || *cur == Connectivity::Shutdown {
                return false;
            }
            tracing::debug!(upstream = %self.addr, from = ?*cur, to = ?s, "connectivity");
            *cur = s;
            true
        });
    }

    fn has_usable(&self) -> bool {
        self.conns.load().iter().any(|c| c.usable())
    }

    /// Whether the dialer should open a connection now.
    fn needs_connection(&self) -> bool {
        if self.shut.load(Acquire) {
            return false;
        }
        let conns = self.conns.load();
        let usable = conns.iter().filter(|c| c.usable()).count();
        if self.waiting.load(Acquire) == 0 {
            return usable == 0 && self.eager.load(Acquire);
        }
        usable == 0
            || (usable < self.config.max_connections && !conns.iter().any(|c| c.has_capacity()))
    }

    /// Keeps at least one connection open from now on, without waiting
    /// for a stream to ask for it.
    pub(super) fn want_connection(&self) {
        self.eager.store(true, Release);
        self.dial.notify_one();
    }

    fn pick(&self) -> Option<Arc<Conn>> {
        let conns = self.conns.load();
        if let Some(c) = conns.iter().find(|c| c.try_reserve(false)) {
            return Some(c.clone());
        }
        // At the connection cap: share the least loaded and let h2 queue.
        let usable = conns.iter().filter(|c| c.usable()).count();
        if usable >= self.config.max_connections {
            return conns
                .iter()
                .filter(|c| c.usable())
                .min_by_key(|c| c.in_flight())
                .filter(|c| c.try_reserve(true))
                .cloned();
        }
        None
    }

    /// A connection with a reserved stream slot, waiting until `deadline`.
    pub(super) async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Arc<Conn>, Error> {
        if let Some(c) = self.pick() {
            return Ok(c);
        }
        let _waiting = Waiting::new(self);
        loop {
            if self.shut.load(Acquire) {
                return Err(Error::Shutdown);
            }
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(c) = self.pick() {
                return Ok(c);
            }
            self.dial.notify_one();
            {
                let status = self.status();
                let failing = *self.state.borrow() == Connectivity::TransientFailure;
                if failing && status.next_attempt.is_some_and(|at| at > deadline) {
                    return Err(self.unavailable(&status));
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                if let Some(c) = self.pick() {
                    return Ok(c);
                }
                return Err(self.unavailable(&self.status()));
            }
        }
    }

    fn unavailable(&self, status: &DialStatus) -> Error {
        Error::Connect {
            addr: self.addr.clone(),
            cause: status
                .last_error
                .clone()
                .unwrap_or_else(|| Arc::new(ConnectError::NotReady)),
        }
    }

    /// What the next connection runs with.
    fn conn_params(&self) -> ConnParams {
        let params = self.params();
        ConnParams {
            keepalive: self.keepalive_time().map(|time| (time, params.timeout)),
            permit_without_stream: params.permit_without_stream,
        }
    }

    fn add(&self, conn: Arc<Conn>) {
        let _w = self.pool_write.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = self.conns.load().iter().cloned().collect();
        v.push(conn);
        self.conns.store(Arc::new(v));
    }

    /// Forgets a connection (closed, or going away).
    pub(super) fn remove(&self, id: u64) {
        {
            let _w = self.pool_write.lock().unwrap_or_else(|e| e.into_inner());
            let conns = self.conns.load();
            if !conns.iter().any(|c| c.id == id) {
                return;
            }
            let v: Vec<_> = conns.iter().filter(|c| c.id != id).cloned().collect();
            self.conns.store(Arc::new(v));
        }
        if !self.has_usable() && !self.dialing.load(Acquire) {
            let failing = *self.state.borrow() == Connectivity::TransientFailure;
            if !failing {
                self.set_state(Connectivity::Idle);
            }
        }
        self.dial.notify_one();
        self.changed.notify_waiters();
    }

    /// A connection received GOAWAY: no new streams there.
    fn on_goaway(&self, id: u64, too_many_pings: bool) {
        if too_many_pings {
            let doubled = self
                .keepalive_nanos
                .fetch_update(AcqRel, Acquire, |n| (n != 0).then(|| n.saturating_mul(2)))
                .map(|n| Duration::from_nanos(n.saturating_mul(2)));
            if let Ok(time) = doubled {
                tracing::error!(
                    upstream = %self.addr,
                    keepalive_time = ?time,
                    "upstream sent GOAWAY too_many_pings; doubled the keepalive time for new connections"
                );
            }
        }
        self.remove(id);
    }

    /// A stream slot freed up somewhere.
    pub(super) fn slot_freed(&self) {
        if self.waiting.load(Acquire) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Closes every connection (each as its last stream ends) and stops
    /// keeping one open; the next stream connects again.
    pub(super) fn disconnect(&self) {
        self.eager.store(false, Release);
        {
            let _w = self.pool_write.lock().unwrap_or_else(|e| e.into_inner());
            for c in self.conns.load().iter() {
                c.mark_unusable();
            }
            self.conns.store(Arc::new(Vec::new()));
        }
        if !self.dialing.load(Acquire) {
            self.set_state(Connectivity::Idle);
        }
        self.changed.notify_waiters();
    }

    /// Closes every connection; waiting and future streams fail.
    pub(super) fn shutdown(&self) {
        if self.shut.swap(true, AcqRel) {
            return;
        }
        self.state.send_replace(Connectivity::Shutdown);
        {
            let _w = self.pool_write.lock().unwrap_or_else(|e| e.into_inner());
            for c in self.conns.load().iter() {
                c.mark_unusable();
            }
            self.conns.store(Arc::new(Vec::new()));
        }
        self.dial.notify_one();
        self.changed.notify_waiters();
    }
}

/// Connections report to their pool without keeping it alive: the last
/// [`Channel`](super::Channel) clone dropped shuts it down.
impl PoolEvents for Weak<Pool> {
    fn goaway(&self, id: u64, too_many_pings: bool) {
        if let Some(pool) = self.upgrade() {
            pool.on_goaway(id, too_many_pings);
        }
    }

    fn closed(&self, id: u64) {
        if let Some(pool) = self.upgrade() {
            pool.remove(id);
        }
    }
}

fn keepalive_nanos(time: Option<Duration>) -> u64 {
    time.map_or(0, |t| {
        u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
    })
}

/// Counts a stream waiting for a connection.
struct Waiting<'a>(&'a Pool);

impl<'a> Waiting<'a> {
    fn new(pool: &'a Pool) -> Self {
        pool.waiting.fetch_add(1, AcqRel);
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, AcqRel);
    }
}

/// Opens connections while streams wait for one, with gRPC backoff
/// between failed attempts.
pub(crate) async fn dialer<C: Connect>(pool: Arc<Pool>, connector: C) {
    let mut backoff = Backoff::new(pool.config.backoff);
    loop {
        let woken = pool.dial.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if pool.shut.load(Acquire) {
            return;
        }
        if !pool.needs_connection() {
            woken.await;
            continue;
        }
        if let Some(at) = backoff.next_attempt()
            && Instant::now() < at
        {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = &mut woken => continue,
            }
            if !pool.needs_connection() {
                if !pool.has_usable()
                    && *pool.state.borrow() == super::Connectivity::TransientFailure
                {
                    pool.set_state(Connectivity::Idle);
                }
                continue;
            }
        }
        pool.dialing.store(true, Release);
        if !pool.has_usable() {
            pool.set_state(Connectivity::Connecting);
        }
        let now = Instant::now();
        let deadline = backoff.start_attempt(now, rand::random::<f64>);
        pool.status().next_attempt = backoff.next_attempt();
        let id = pool.next_id.fetch_add(1, Relaxed);
        let attempt = async {
            let io = connector.connect().await.map_err(ConnectError::Io)?;
            let config = &pool.config;
            let events = Arc::downgrade(&pool);
            establish(
                io,
                &config.h2,
                config.counters.clone(),
                id,
                pool.conn_params(),
                events,
            )
            .await
        };
        let result = tokio::time::timeout_at(deadline, attempt)
            .await
            .unwrap_or_else(|_| Err(ConnectError::TimedOut(deadline - now)));
        pool.dialing.store(false, Release);
        match result {
            Ok(conn) => {
                backoff.reset();
                {
                    let mut s = pool.status();
                    s.next_attempt = None;
                    s.last_error = None;
                    s.ever_connected = true;
                }
                Counters::inc(&pool.config.counters.upstream_connects);
                tracing::debug!(upstream = %pool.addr, conn = id, "upstream connected");
                if pool.shut.load(Acquire) {
                    conn.mark_unusable();
                    return;
                }
                pool.add(conn);
                pool.set_state(Connectivity::Ready);
            }
            Err(e) => {
                Counters::inc(&pool.config.counters.upstream_connect_failures);
                {
                    let mut s = pool.status();
                    log_connect_failure(&mut s, &pool.addr, &e, Instant::now());
                    s.last_error = Some(Arc::new(e));
                }
                if !pool.has_usable() {
                    pool.set_state(Connectivity::TransientFailure);
                }
            }
        }
        pool.changed.notify_waiters();
    }
}

/// How a failed connect is logged: at WARN once the app has been reached
/// (it went away), or once it has not been for [`STARTUP_QUIET`]; before
/// that, the first failure at INFO and the rest at DEBUG — a sidecar
/// that starts before its app would otherwise warn every backoff step.
fn log_connect_failure(
    s: &mut DialStatus,
    addr: &str,
    error: &ConnectError,
    now: Instant,
) -> tracing::Level {
    if s.ever_connected {
        tracing::warn!(upstream = %addr, %error, "upstream connect failed");
        return tracing::Level::WARN;
    }
    let Some(since) = s.failing_since else {
        s.failing_since = Some(now);
        tracing::info!(upstream = %addr, %error, "upstream not accepting connections yet (expected while the app starts); retrying with backoff");
        return tracing::Level::INFO;
    };
    if now.duration_since(since) < STARTUP_QUIET {
        tracing::debug!(upstream = %addr, %error, "upstream connect failed");
        return tracing::Level::DEBUG;
    }
    if !s.startup_warned {
        s.startup_warned = true;
        tracing::warn!(upstream = %addr, %error, after = ?now.duration_since(since), "upstream still not accepting connections; from now on every failed connect is logged");
    } else {
        tracing::warn!(upstream = %addr, %error, "upstream connect failed");
    }
    tracing::Level::WARN
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[tokio::test(start_paused = true)]
    async fn a_starting_app_is_one_info_line_until_it_takes_too_long() {
        let mut s = DialStatus::default();
        let refused = ConnectError::Io(std::io::ErrorKind::ConnectionRefused.into());
        let start = Instant::now();
        let log = |s: &mut DialStatus, after: Duration| {
            log_connect_failure(s, "127.0.0.1:8080", &refused, start + after)
        };
        assert_eq!(log(&mut s, Duration::ZERO), Level::INFO);
        for second in 1..60 {
            assert_eq!(log(&mut s, Duration::from_secs(second)), Level::DEBUG);
        }
        assert_eq!(log(&mut s, STARTUP_QUIET), Level::WARN);
        assert!(s.startup_warned);
        assert_eq!(log(&mut s, STARTUP_QUIET * 2), Level::WARN);
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_app_was_reached_every_failure_warns() {
        let mut s = DialStatus {
            ever_connected: true,
            ..DialStatus::default()
        };
        let refused = ConnectError::Io(std::io::ErrorKind::ConnectionRefused.into());
        for _ in 0..3 {
            assert_eq!(
                log_connect_failure(&mut s, "127.0.0.1:8080", &refused, Instant::now()),
                Level::WARN
            );
        }
    }
}
