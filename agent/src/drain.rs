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

        let hard = c.hard_closes.load(Relaxed) - hard_before;
        let cut = self.drain.cut.load(Relaxed);
        let new_streams = c.streams_total.load(Relaxed) - streams_before;
        let total = drained_now + self.drain.late.load(Relaxed);
        let summary = DrainSummary {
            connections_drained: total.saturating_sub(hard),
            streams_completed: (new_streams + active_before).saturating_sub(cut),
            connections_hard_closed: hard,
            streams_cut: cut,
            duration_seconds: start.elapsed().as_secs_f64(),
        };
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
