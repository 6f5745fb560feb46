//! The drain's state: its signal, its deadline, what it counted, its
//! summary, and that one runs at a time — whether started by `/drain` (the
//! preStop hook) or by SIGTERM, concurrent callers share it and all get its
//! summary. The sequence itself is [`super`]'s.
//!
//! Connections take part through linkerd's drain-rs ([`drain_rs`]), the
//! idiom the operator's tasks use too. [`DrainState::new`] (and
//! [`DrainState::rearm`]) returns the [`drain_rs::Watch`] the accept loop
//! holds; every connection it accepts holds a clone from then until it has
//! closed (one spliced to the app lets go as soon as it is known to be one:
//! it gets no GOAWAY, and is closed after the drain instead).
//! [`DrainState::goaway_all`] sets the deadline, then signals: the accept
//! loop closes the listener, and each connection
//! ([`DrainState::watch_connection`]) sends its GOAWAY (`graceful_stop`)
//! with that deadline, idle ones included — one accepted in the race with
//! the listener closing at once, as its watch was cloned before the signal
//! it has not seen yet. The drain then waits for every watch to be
//! released: connections close on their own, or the transport cuts them at
//! the deadline; the wait ends [`CLOSE_MARGIN`] after it in any case.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use goaway_transport::policy::DrainParams;
use goaway_transport::server::ConnectionHandle;
use goaway_transport::{Counters, GoAwayReason};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connections::ConnectionTable;

/// How long after the drain deadline the drain still waits for the last
/// connections to close: the transport cuts them at the deadline, and
/// their sockets close just after.
pub const CLOSE_MARGIN: Duration = Duration::from_secs(2);

/// What a drain did, and why its GOAWAYs went out when they did: the
/// control channel's types, as the summary is also reported to the
/// operator ([`goaway_transport::control::Report::Drained`]).
pub use goaway_transport::control::{DrainSummary, GoawayOn};

/// What the counters moved by during one drain.
#[derive(Clone, Copy, Debug, Default)]
struct DrainCounts {
    /// Connections sent GOAWAY: those open when it went out, and those
    /// accepted in the race with the listener closing.
    sent_goaway: u64,
    /// Of those, cut at the deadline.
    hard_closed: u64,
    /// Streams open when the GOAWAYs went out.
    streams_active_at_goaway: u64,
    /// Streams started after that (before the client saw the GOAWAY).
    streams_started: u64,
    /// Streams a hard close cut.
    streams_cut: u64,
}

impl DrainCounts {
    /// The summary: every connection sent GOAWAY either drained or was
    /// hard-closed; every stream that was open or started either
    /// completed or was cut.
    fn summary(self, took: Duration, goaway_after: Duration, on: GoawayOn) -> DrainSummary {
        DrainSummary {
            connections_drained: self.sent_goaway.saturating_sub(self.hard_closed),
            streams_completed: (self.streams_started + self.streams_active_at_goaway)
                .saturating_sub(self.streams_cut),
            connections_hard_closed: self.hard_closed,
            streams_cut: self.streams_cut,
            duration_seconds: took.as_secs_f64(),
            goaway_after_seconds: goaway_after.as_secs_f64(),
            goaway_on: on,
        }
    }
}

/// The accept loop's listener, as the drain sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    /// No accept loop has started (tests of the drain alone).
    None,
    /// Accepting.
    Open,
    /// The drain asked the accept loop to close it.
    Closing,
    /// Closed: no connection is accepted any more.
    Closed,
}

/// A poisoned lock only means a panic elsewhere mid-update of plain values.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The drain's state, shared by the admin API, the signal handler and the
/// connection tasks.
pub struct DrainState {
    /// Until the drain starts; then its sequence's.
    signal: Mutex<Option<drain_rs::Signal>>,
    /// Set just before the signal, read by each connection as it sees it.
    deadline: Mutex<Option<Instant>>,
    /// Connections that saw the signal (and sent their GOAWAY).
    sent_goaway: AtomicU64,
    /// Streams hard closes cut off.
    cut: AtomicU64,
    done: watch::Sender<Option<DrainSummary>>,
    /// Drains finished so far (the control channel reports each once).
    finished_total: AtomicU64,
    /// Where the accept loop's listener is.
    listener: watch::Sender<Listener>,
    /// When the accept loop last accepted a connection, in nanoseconds
    /// after `base`.
    last_accept: AtomicU64,
    base: Instant,
}

impl DrainState {
    /// A drain not started yet, and the watch the accept loop holds (and
    /// clones for every connection it accepts).
    pub fn new() -> (DrainState, drain_rs::Watch) {
        let (signal, watch) = drain_rs::channel();
        let drain = DrainState {
            signal: Mutex::new(Some(signal)),
            deadline: Mutex::new(None),
            sent_goaway: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            done: watch::Sender::new(None),
            finished_total: AtomicU64::new(0),
            listener: watch::Sender::new(Listener::None),
            last_accept: AtomicU64::new(0),
            base: Instant::now(),
        };
        (drain, watch)
    }

    /// The accept loop accepted a connection.
    pub fn accepted(&self) {
        let nanos = self.base.elapsed().as_nanos();
        self.last_accept
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Relaxed);
    }

    /// When the last connection was accepted (the agent's start if none).
    pub fn last_accept(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_accept.load(Relaxed))
    }

    /// The accept loop has started: the GOAWAY step will wait for it to
    /// close its listener.
    pub fn listener_opened(&self) {
        self.listener.send_replace(Listener::Open);
    }

    /// Resolves once the drain asks the accept loop to close its listener.
    pub async fn closing_listener(&self) {
        let mut listener = self.listener.subscribe();
        // The sender lives in `self`, which we borrow.
        let _ = listener.wait_for(|l| *l == Listener::Closing).await;
    }

    /// The accept loop has dropped its listener.
    pub fn listener_closed(&self) {
        self.listener.send_replace(Listener::Closed);
    }

    /// Starts the drain: the signal for the first caller, who runs the
    /// sequence and [`finish`](Self::finish)es it; `None` once started.
    pub fn start(&self) -> Option<drain_rs::Signal> {
        lock(&self.signal).take()
    }

    /// After a finished drain that no SIGTERM followed (see
    /// [`super::expire`]): a fresh state, not started, and the watch for
    /// the new accept loop.
    pub fn rearm(&self) -> drain_rs::Watch {
        let (signal, watch) = drain_rs::channel();
        *lock(&self.signal) = Some(signal);
        *lock(&self.deadline) = None;
        self.sent_goaway.store(0, Relaxed);
        self.cut.store(0, Relaxed);
        self.done.send_replace(None);
        watch
    }

    /// Publishes the summary to every caller waiting in
    /// [`finished`](Self::finished), and to later ones.
    pub fn finish(&self, summary: DrainSummary) {
        self.finished_total.fetch_add(1, Relaxed);
        self.done.send_replace(Some(summary));
    }

    /// How many drains have finished; the last one's summary is
    /// [`summary`](Self::summary) until a drain that expired is
    /// [`rearm`](Self::rearm)ed.
    pub fn finished_total(&self) -> u64 {
        self.finished_total.load(Relaxed)
    }

    /// Notified whenever a drain finishes (or the state is rearmed).
    pub fn watch_done(&self) -> watch::Receiver<Option<DrainSummary>> {
        self.done.subscribe()
    }

    /// The summary, once the drain has finished.
    pub fn summary(&self) -> Option<DrainSummary> {
        self.done.borrow().clone()
    }

    /// Waits until the drain has finished; its summary.
    pub async fn finished(&self) -> DrainSummary {
        let mut done = self.done.subscribe();
        loop {
            if let Some(summary) = done.borrow_and_update().clone() {
                return summary;
            }
            if done.changed().await.is_err() {
                // The sender lives in `self`, which we borrow.
                unreachable!("drain state dropped while borrowed");
            }
        }
    }

    /// The GOAWAY step, in this order: the listener closes (new
    /// connections are refused from now on), then every connection
    /// accepted before — in flight in the accept loop included — is sent
    /// GOAWAY with a deadline `timeout` from now, by draining `signal`.
    /// Then waits for every connection to close (at most until
    /// [`CLOSE_MARGIN`] after the deadline). The summary of what the
    /// counters moved by meanwhile, timed from `started`.
    pub async fn goaway_all(
        &self,
        signal: drain_rs::Signal,
        started: Instant,
        on: GoawayOn,
        params: &DrainParams,
        counters: &Counters,
        connections: &ConnectionTable,
    ) -> DrainSummary {
        let goaway_after = started.elapsed();
        let streams_before = counters.streams_total.load(Relaxed);
        let active_before = counters.streams_active.load(Relaxed).max(0) as u64;
        let hard_before = counters.hard_closes.load(Relaxed);
        self.close_listener().await;
        let deadline = Instant::now() + params.timeout;
        // Before the signal: every connection that sees it reads it.
        *lock(&self.deadline) = Some(deadline);
        // Logged as the signal goes out (on the first poll below); each
        // connection sends its GOAWAY as it sees it.
        tracing::info!(
            connections = connections.len(),
            "GOAWAY sent to every connection"
        );
        let drained = signal.drain();
        if tokio::time::timeout_at(deadline + CLOSE_MARGIN, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                left = connections.len(),
                "connections still open after the drain deadline"
            );
        }
        DrainCounts {
            sent_goaway: self.sent_goaway.load(Relaxed),
            hard_closed: counters.hard_closes.load(Relaxed) - hard_before,
            streams_active_at_goaway: active_before,
            streams_started: counters.streams_total.load(Relaxed) - streams_before,
            streams_cut: self.cut.load(Relaxed),
        }
        .summary(started.elapsed(), goaway_after, on)
    }

    /// Has the accept loop close its listener, and waits until it has.
    async fn close_listener(&self) {
        let mut listener = self.listener.subscribe();
        if *listener.borrow_and_update() != Listener::Open {
            return;
        }
        self.listener.send_replace(Listener::Closing);
        // The sender lives in `self`, which we borrow.
        let _ = listener.wait_for(|l| *l == Listener::Closed).await;
    }

    /// Runs a connection's `serving` to its end. When the drain signals
    /// `watch` — at once if it already has — the connection is sent GOAWAY
    /// with the drain deadline; it is then served until it closes.
    pub async fn watch_connection<F: Future + Unpin>(
        &self,
        watch: drain_rs::Watch,
        connection: &ConnectionHandle,
        serving: F,
    ) -> F::Output {
        watch
            .watch(serving, |_| {
                self.sent_goaway.fetch_add(1, Relaxed);
                connection.drain(GoAwayReason::GracefulStop, *lock(&self.deadline));
            })
            .await
    }

    /// Streams a hard close cut off.
    pub fn record_cut(&self, streams: usize) {
        self.cut.fetch_add(streams as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_drains_or_is_hard_closed_and_every_stream_completes_or_is_cut() {
        let counts = DrainCounts {
            sent_goaway: 5,
            hard_closed: 2,
            streams_active_at_goaway: 7,
            streams_started: 3,
            streams_cut: 4,
        };
        let s = counts.summary(
            Duration::from_millis(5_250),
            Duration::ZERO,
            GoawayOn::Delay,
        );
        assert_eq!(s.connections_drained + s.connections_hard_closed, 5);
        assert_eq!(s.connections_drained, 3);
        assert_eq!(s.streams_completed + s.streams_cut, 10);
        assert_eq!(s.streams_completed, 6);
        assert_eq!(s.duration_seconds, 5.25);
    }

    #[test]
    fn counters_that_moved_further_than_the_drain_saw_never_underflow() {
        // Hard closes of connections accepted after the count was taken,
        // streams cut that were never counted as open.
        let s = DrainCounts {
            sent_goaway: 1,
            hard_closed: 3,
            streams_cut: 9,
            ..DrainCounts::default()
        }
        .summary(Duration::ZERO, Duration::ZERO, GoawayOn::Delay);
        assert_eq!((s.connections_drained, s.streams_completed), (0, 0));
        assert_eq!((s.connections_hard_closed, s.streams_cut), (3, 9));
    }

    /// Drain parameters with a `timeout` in seconds and no quiet period.
    fn params(timeout: u64) -> DrainParams {
        DrainParams {
            timeout: Duration::from_secs(timeout),
            quiet_period: Duration::ZERO,
            ..DrainParams::default()
        }
    }

    /// A connection task's part, without a connection: holds `watch`
    /// until `lasts` after the signal.
    fn hold(watch: drain_rs::Watch, lasts: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let release = watch.signaled().await;
            tokio::time::sleep(lasts).await;
            drop(release);
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_runs_once_and_every_caller_gets_its_summary() {
        let (drain, _listener) = DrainState::new();
        let signal = drain.start().expect("the first caller starts it");
        assert!(drain.start().is_none(), "and only the first");
        assert!(drain.summary().is_none());
        let summary =
            DrainCounts::default().summary(Duration::from_secs(1), Duration::ZERO, GoawayOn::Delay);
        let waiting = async { drain.finished().await };
        let finishing = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drain.finish(summary.clone());
        };
        let (got, ()) = tokio::join!(waiting, finishing);
        assert_eq!(got, summary, "a caller waiting meanwhile");
        assert_eq!(drain.finished().await, summary, "a later caller, at once");
        assert_eq!(drain.summary(), Some(summary));
        drop(signal);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_waits_for_every_watch_including_those_cloned_after_the_signal() {
        let (drain, listener) = DrainState::new();
        let early = hold(listener.clone(), Duration::from_secs(3));
        let late = listener.clone();
        // The accept loop lets its watch go when the listener closes.
        let accept_loop = hold(listener, Duration::ZERO);
        let (counters, connections) = (Counters::default(), ConnectionTable::default());
        let started = Instant::now();
        let signal = drain.start().expect("not started");
        let params = params(30);
        let goaway = drain.goaway_all(
            signal,
            started,
            GoawayOn::Delay,
            &params,
            &counters,
            &connections,
        );
        let accepted_late = async {
            // A connection accepted in the race with the listener
            // closing: its watch is cloned after the signal and sees it
            // at once.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let release = tokio::time::timeout(Duration::ZERO, late.clone().signaled())
                .await
                .expect("signalled at once");
            drop(late);
            tokio::time::sleep(Duration::from_secs(4)).await;
            drop(release);
        };
        drain.record_cut(2);
        drain.record_cut(3);
        let (summary, ()) = tokio::join!(goaway, accepted_late);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "the last release"
        );
        assert_eq!(summary.duration_seconds, 5.0);
        assert_eq!(summary.streams_cut, 5, "cut streams add up");
        early.await.unwrap();
        accept_loop.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_at_the_margin_past_the_deadline() {
        let (drain, listener) = DrainState::new();
        // A connection that never lets go.
        let stuck = listener.clone();
        drop(listener);
        let started = Instant::now();
        let summary = drain
            .goaway_all(
                drain.start().expect("not started"),
                started,
                GoawayOn::Delay,
                &params(10),
                &Counters::default(),
                &ConnectionTable::default(),
            )
            .await;
        assert_eq!(started.elapsed(), Duration::from_secs(10) + CLOSE_MARGIN);
        assert_eq!(summary.connections_drained, 0, "no connection saw it");
        drop(stuck);
    }
}
