//! The drain (SPEC §4), top-down: how a pod stops without failing a call,
//! and how a drain that no stop follows ends.
//!
//! ```text
//!  preStop GET /drain ──┐  (or SIGTERM, when no hook ran)
//!                       ▼
//!  1  readiness fails ────────────► the pod leaves its Services' endpoints
//!  2  wait drain.delay              (the endpoint removal reaches the nodes)
//!  3  the listener closes; every connection is sent GOAWAY (graceful_stop)
//!       in-flight streams finish, clients reconnect to other pods
//!  4  wait until every connection has closed, at most drain.timeout;
//!       the transport hard-closes what is left
//!  5  connections to the app released, spliced connections closed;
//!       the summary logged, kept for /metrics, returned to the hook
//!                       ▼
//!  kubelet: SIGTERM to the app ─► the app exits ─► SIGTERM to the agent
//!       ─► exit 0 at once (the drain already ran)
//!
//!  6  no SIGTERM within --drain-expiry of 5: the drain expires — the
//!       listener opens again and readiness returns (WARN, counted in
//!       goaway_drains_expired_total), so a drain is never an off switch
//! ```
//!
//! Steps 1–5 run once at a time in their own task ([`Agent::drain`]);
//! the state they share with the admin API, the signal handler and the
//! connections is [`state`]'s. Step 6 is [`expire`], run beside the signal
//! handler.

mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Release;

use tokio::net::TcpListener;
use tokio::time::Instant;

pub use state::{CLOSE_MARGIN, DrainState, DrainSummary};

use crate::{Agent, proxy};

impl Agent {
    /// Starts the drain, or joins the one running, and returns its summary
    /// once it has finished. It runs in its own task (a caller that goes
    /// away does not stop it).
    pub async fn drain(self: &Arc<Self>) -> DrainSummary {
        if let Some(signal) = self.drain.start() {
            let agent = self.clone();
            tokio::spawn(async move {
                let summary = agent.run_drain(signal).await;
                agent.drain.finish(summary);
            });
        }
        self.drain.finished().await
    }

    /// Steps 1 to 5.
    async fn run_drain(&self, signal: drain_rs::Signal) -> DrainSummary {
        let start = Instant::now();
        self.ready.store(false, Release);
        let params = self.policy.current().drain_params();
        tracing::info!(delay = ?params.delay, timeout = ?params.timeout, "drain started; readiness failing");
        tokio::time::sleep(params.delay).await;

        let summary = self
            .drain
            .goaway_all(
                signal,
                start,
                params.timeout,
                &self.counters,
                &self.connections,
            )
            .await;
        self.metrics.drain_duration.set(summary.duration_seconds);
        // Nothing will reach the application through this agent now: stop
        // keeping connections to it (the app is about to get SIGTERM, and
        // reconnecting to it would only log failures). A stream would
        // connect again; only an expired drain brings one.
        for w in &self.workers {
            w.upstream.channel.disconnect();
        }
        // Spliced connections get no GOAWAY; they end with the drain.
        // Logged even when none is left, so the drain's end is visible.
        let spliced = self.passthrough.close_all();
        tracing::info!(connections = spliced, "closing passthrough connections");
        tracing::info!(
            connections_drained = summary.connections_drained,
            streams_completed = summary.streams_completed,
            connections_hard_closed = summary.connections_hard_closed,
            duration_seconds = summary.duration_seconds,
            "drain finished"
        );
        summary
    }
}

/// Step 6, for as long as the agent runs: each time a drain has finished
/// and `--drain-expiry` passes with no SIGTERM, the agent serves again on
/// `listen`. Returns only if that address cannot be bound again; the
/// caller then exits, and the kubelet restarts the container.
pub async fn expire(agent: &Arc<Agent>, listen: SocketAddr) -> std::io::Error {
    loop {
        agent.drain.finished().await;
        tokio::time::sleep(agent.config.drain_expiry).await;
        if let Err(e) = resume(agent, listen).await {
            tracing::error!(error = %e, %listen, "the drain expired but the listener could not be opened again");
            return e;
        }
    }
}

/// Serves again after an expired drain: the listener, a fresh drain state,
/// the connection to the app, readiness.
async fn resume(agent: &Arc<Agent>, listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let watch = agent.drain.rearm();
    for w in &agent.workers {
        w.upstream.channel.connect();
    }
    tokio::spawn(proxy::accept_loop(listener, agent.clone(), watch));
    agent.metrics.drains_expired.inc();
    agent.ready.store(true, Release);
    tracing::warn!(
        expiry = ?agent.config.drain_expiry,
        "drain expired: no SIGTERM followed it; serving again"
    );
    Ok(())
}
