//! The drain sequence (SPEC §4), run once per process whether started by
//! `/drain` (the preStop hook) or by SIGTERM: readiness fails at once →
//! `drain.delay` → the listener closes (new connections are refused) →
//! graceful GOAWAY (`graceful_stop`) on every connection, idle ones
//! included → wait until all are closed or `drain.timeout` → the rest are
//! hard-closed. Concurrent callers share the one drain and all get its
//! summary.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::Duration;

use goaway_transport::GoAwayReason;
use goaway_transport::server::ConnectionHandle;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Agent;

/// What a drain did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrainSummary {
    /// Connections that closed after their streams finished.
    pub connections_drained: u64,
    /// Streams that ran to completion during the drain.
    pub streams_completed: u64,
    /// Connections cut at the deadline with streams still open.
    pub connections_hard_closed: u64,
    /// Streams cut at the deadline.
    pub streams_cut: u64,
    /// From the drain's start (readiness failing) to the last close.
    pub duration_seconds: f64,
}

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
    fn summary(self, took: Duration) -> DrainSummary {
        DrainSummary {
            connections_drained: self.sent_goaway.saturating_sub(self.hard_closed),
            streams_completed: (self.streams_started + self.streams_active_at_goaway)
                .saturating_sub(self.streams_cut),
            connections_hard_closed: self.hard_closed,
            streams_cut: self.streams_cut,
            duration_seconds: took.as_secs_f64(),
        }
    }
}

/// Drain state shared by the admin API, the signal handler and the
/// connection tasks.
pub struct Drain {
    started: AtomicBool,
    done: watch::Sender<Option<DrainSummary>>,
    /// Set once GOAWAYs go out; connections accepted in the race with the
    /// listener closing are drained with the same deadline.
    deadline: Mutex<Option<Instant>>,
    late: AtomicU64,
    cut: AtomicU64,
    stop_accepting: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            started: AtomicBool::new(false),
            done: watch::Sender::new(None),
            deadline: Mutex::new(None),
            late: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            stop_accepting: watch::Sender::new(false),
        }
    }
}

impl Drain {
    /// Turns true when the listener must close.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop_accepting.subscribe()
    }

    /// Whether a drain has started.
    pub fn is_started(&self) -> bool {
        self.started.load(Acquire)
    }

    /// The summary, once the drain has finished.
    pub fn summary(&self) -> Option<DrainSummary> {
        self.done.borrow().clone()
    }

    /// A connection registered during a drain is drained at once.
    pub fn adopt(&self, handle: &ConnectionHandle) {
        let deadline = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(deadline) = deadline {
            self.late.fetch_add(1, Relaxed);
            handle.drain(GoAwayReason::GracefulStop, Some(deadline));
        }
    }

    /// Streams a hard close cut off.
    pub fn record_cut(&self, streams: usize) {
        self.cut.fetch_add(streams as u64, Relaxed);
    }
}

impl Agent {
    /// Starts the drain, or joins the one running, and returns its summary
    /// once every connection has closed.
    pub async fn drain(self: &Arc<Self>) -> DrainSummary {
        let mut done = self.drain.done.subscribe();
        if !self.drain.started.swap(true, AcqRel) {
            let agent = self.clone();
            tokio::spawn(async move { agent.run_drain().await });
        }
        loop {
            if let Some(summary) = done.borrow_and_update().clone() {
                return summary;
            }
            if done.changed().await.is_err() {
                // The sender lives in `self`, which we hold.
                unreachable!("drain state dropped while borrowed");
            }
        }
    }

    async fn run_drain(self: Arc<Self>) {
        let start = Instant::now();
        self.ready.store(false, Release);
        let params = self.policy.current().drain_params();
        tracing::info!(delay = ?params.delay, timeout = ?params.timeout, "drain started; readiness failing");
        tokio::time::sleep(params.delay).await;

        let c = &self.counters;
        let streams_before = c.streams_total.load(Relaxed);
        let active_before = c.streams_active.load(Relaxed).max(0) as u64;
        let hard_before = c.hard_closes.load(Relaxed);
        let deadline = Instant::now() + params.timeout;
        *self
            .drain
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(deadline);
        self.drain.stop_accepting.send_replace(true);
        let handles = self.connections.handles();
        let drained_now = handles.len() as u64;
        for h in &handles {
            h.drain(GoAwayReason::GracefulStop, Some(deadline));
        }
        tracing::info!(connections = drained_now, "GOAWAY sent to every connection");
        // Connections close on their own, or their drivers cut them at the
        // deadline; the margin covers the last socket closes.
        let all_closed = self
            .connections
            .wait_empty(deadline + Duration::from_secs(2))
            .await;
        if !all_closed {
            tracing::warn!(
                left = self.connections.len(),
                "connections still open after the drain deadline"
            );
        }

        let summary = DrainCounts {
            sent_goaway: drained_now + self.drain.late.load(Relaxed),
            hard_closed: c.hard_closes.load(Relaxed) - hard_before,
            streams_active_at_goaway: active_before,
            streams_started: c.streams_total.load(Relaxed) - streams_before,
            streams_cut: self.drain.cut.load(Relaxed),
        }
        .summary(start.elapsed());
        self.metrics.drain_duration.set(summary.duration_seconds);
        // Nothing will reach the application through this agent any more:
        // stop keeping connections to it (the app is about to get SIGTERM,
        // and reconnecting to it would only log failures).
        for w in &self.workers {
            w.upstream.channel.shutdown();
        }
        // Spliced connections get no GOAWAY; they end with the drain.
        let spliced = self.passthrough.close_all();
        if spliced > 0 {
            tracing::info!(connections = spliced, "closing passthrough connections");
        }
        tracing::info!(
            connections_drained = summary.connections_drained,
            streams_completed = summary.streams_completed,
            connections_hard_closed = summary.connections_hard_closed,
            duration_seconds = summary.duration_seconds,
            "drain finished"
        );
        self.drain.done.send_replace(Some(summary));
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
        let s = counts.summary(Duration::from_millis(5_250));
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
        .summary(Duration::ZERO);
        assert_eq!((s.connections_drained, s.streams_completed), (0, 0));
        assert_eq!((s.connections_hard_closed, s.streams_cut), (3, 9));
    }

    #[tokio::test]
    async fn the_listener_is_told_to_close_and_cut_streams_add_up() {
        let drain = Drain::default();
        assert!(!drain.is_started() && drain.summary().is_none());
        let mut stop = drain.stop_signal();
        assert!(!*stop.borrow_and_update());
        drain.stop_accepting.send_replace(true);
        assert!(*stop.borrow_and_update(), "the listener is told to close");
        drain.record_cut(2);
        drain.record_cut(3);
        assert_eq!(drain.cut.load(Relaxed), 5);
    }
}
