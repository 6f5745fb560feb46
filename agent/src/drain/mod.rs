//! The drain (docs/design.md §6), top-down: how a pod stops without failing a
//! call, and how a drain that no stop follows ends.
//!
//! ```text
//!  preStop GET /drain ──┐  (or SIGTERM, when no hook ran)
//!                       ▼
//!  1  readiness fails ────────────► the pod leaves its Services' endpoints
//!  2  wait for evidence that the endpoint removal reached the nodes:
//!       the pod out of every EndpointSlice's ready endpoints (word from
//!       the operator) and, for drain.quietPeriod since that word, no
//!       new connection; at most drain.delay, all of it without the
//!       operator
//!  3  the listener closes (new connections are refused), then every
//!       connection accepted before it closed is sent GOAWAY
//!       (graceful_stop): in-flight streams finish, clients reconnect to
//!       other pods
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
//! A draining pod refuses new connections rather than accepting each and
//! sending it a GOAWAY: a client that dials the pod's address again — a
//! static address list, or a DNS answer grpc-go keeps for up to 30s —
//! would reconnect and be sent away in a loop for as long as it keeps the
//! address, where a refused connection makes it use its other addresses at
//! once. Clients of a Service stop reaching the pod once the endpoint
//! removal has reached their node, which is what step 2 waits for.
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
use tokio::sync::watch;
use tokio::time::Instant;

pub use state::{CLOSE_MARGIN, DrainState, DrainSummary, GoawayOn};

use goaway_transport::policy::DrainParams;

use crate::control::Endpoints;
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
        // Every connection gets the drain's GOAWAY; a rebalance's still
        // pending would only come early.
        self.cancel_rebalance();
        let params = self.policy.current().drain_params();
        tracing::info!(delay = ?params.delay, quiet_period = ?params.quiet_period, timeout = ?params.timeout, "drain started; readiness failing");
        let on = await_evidence(&self.drain, self.endpoints.clone(), start, &params).await;
        tracing::info!(after = ?start.elapsed(), on = ?on, "sending GOAWAY");

        let summary = self
            .drain
            .goaway_all(
                signal,
                start,
                on,
                &params,
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
            goaway_on = summary.goaway_on.as_str(),
            goaway_after_seconds = summary.goaway_after_seconds,
            "drain finished"
        );
        summary
    }
}

/// Step 2: the GOAWAYs go out `drain.delay` after the start, or sooner on
/// evidence that every node has stopped sending new connections here: the
/// operator reports the pod out of the ready endpoints of every
/// EndpointSlice that lists it (`endpoints`), and for `drain.quietPeriod`
/// since then no connection has been accepted. The window runs from the
/// latest of the drain's start, the operator's word and the last accept:
/// the nodes' proxies watch the same EndpointSlices the operator does, so
/// the window is their time to apply the change (kube-proxy applies a
/// batch of changes at most once a second, its default
/// `minSyncPeriod`), and a connection arriving meanwhile says one has
/// not yet. Without word from the operator the whole delay is waited.
async fn await_evidence(
    drain: &DrainState,
    mut endpoints: watch::Receiver<Endpoints>,
    start: Instant,
    params: &DrainParams,
) -> GoawayOn {
    let max = start + params.delay;
    let quiet = params.quiet_period.min(params.delay);
    // Since when the operator has been saying that the pod is out of every
    // ready set.
    let mut out_since = None;
    loop {
        let now = Instant::now();
        if now >= max {
            return GoawayOn::Delay;
        }
        let out = *endpoints.borrow_and_update() == Endpoints::OutOfReadyEndpoints;
        out_since = if out { out_since.or(Some(now)) } else { None };
        let quiet_at = out_since.map(|since| drain.last_accept().max(start).max(since) + quiet);
        if quiet_at.is_some_and(|at| now >= at) {
            return GoawayOn::Evidence;
        }
        let wake = quiet_at.map_or(max, |at| at.min(max));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            changed = endpoints.changed() => {
                if changed.is_err() {
                    // No more word from the operator can come.
                    tokio::time::sleep_until(max).await;
                    return GoawayOn::Delay;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn params(delay: u64, quiet_ms: u64) -> DrainParams {
        DrainParams {
            delay: Duration::from_secs(delay),
            quiet_period: Duration::from_millis(quiet_ms),
            ..DrainParams::default()
        }
    }

    /// Runs step 2 from now; `script` plays the operator and the accept
    /// loop meanwhile. When and on what the GOAWAYs go out.
    async fn step_two(
        params: DrainParams,
        script: impl AsyncFnOnce(&DrainState, watch::Sender<Endpoints>),
    ) -> (Duration, GoawayOn) {
        let (drain, _watch) = DrainState::new();
        let (tx, rx) = watch::channel(Endpoints::Unknown);
        let start = Instant::now();
        let step = async {
            let on = await_evidence(&drain, rx, start, &params).await;
            (start.elapsed(), on)
        };
        tokio::join!(step, script(&drain, tx)).0
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn without_word_from_the_operator_the_whole_delay_is_waited() {
        let got = step_two(params(5, 1000), async |_, tx| {
            tokio::time::sleep(ms(5_000)).await;
            drop(tx);
        })
        .await;
        assert_eq!(got, (ms(5_000), GoawayOn::Delay));
        // The operator's channel gone altogether: the same.
        let got = step_two(params(5, 1000), async |_, tx| drop(tx)).await;
        assert_eq!(got, (ms(5_000), GoawayOn::Delay));
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_the_endpoints_and_quiet_sends_goaway_early() {
        // Out at 300ms: the quiet period runs from then.
        let got = step_two(params(5, 1000), async |_, tx| {
            tokio::time::sleep(ms(300)).await;
            tx.send_replace(Endpoints::OutOfReadyEndpoints);
            tokio::time::sleep(ms(10_000)).await;
        })
        .await;
        assert_eq!(got, (ms(1_300), GoawayOn::Evidence));
        // Out before the drain starts (the operator saw it first): from the
        // start.
        let got = step_two(params(5, 1000), async |_, tx| {
            tx.send_replace(Endpoints::OutOfReadyEndpoints);
            tokio::time::sleep(ms(10_000)).await;
        })
        .await;
        assert_eq!(got, (ms(1_000), GoawayOn::Evidence));
    }

    #[tokio::test(start_paused = true)]
    async fn each_new_connection_restarts_the_quiet_period() {
        let got = step_two(params(5, 1000), async |drain, tx| {
            tx.send_replace(Endpoints::OutOfReadyEndpoints);
            tokio::time::sleep(ms(500)).await;
            drain.accepted();
            tokio::time::sleep(ms(700)).await;
            drain.accepted();
            tokio::time::sleep(ms(10_000)).await;
        })
        .await;
        assert_eq!(
            got,
            (ms(2_200), GoawayOn::Evidence),
            "1s after the 1.2s accept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn still_in_the_endpoints_waits_and_the_delay_bounds_the_wait() {
        // Ready somewhere until 2s, then out: evidence a quiet period
        // later, though nothing was accepted since the start.
        let got = step_two(params(5, 1000), async |_, tx| {
            tx.send_replace(Endpoints::InReadyEndpoints);
            tokio::time::sleep(ms(2_000)).await;
            tx.send_replace(Endpoints::OutOfReadyEndpoints);
            tokio::time::sleep(ms(10_000)).await;
        })
        .await;
        assert_eq!(got, (ms(3_000), GoawayOn::Evidence));
        // Out, back in, out again: the window starts over at the last word.
        let got = step_two(params(5, 1000), async |_, tx| {
            tx.send_replace(Endpoints::OutOfReadyEndpoints);
            tokio::time::sleep(ms(800)).await;
            tx.send_replace(Endpoints::InReadyEndpoints);
            tokio::time::sleep(ms(400)).await;
            tx.send_replace(Endpoints::OutOfReadyEndpoints);
            tokio::time::sleep(ms(10_000)).await;
        })
        .await;
        assert_eq!(got, (ms(2_200), GoawayOn::Evidence));
        // Never out, or connections never stop: the delay.
        let got = step_two(params(5, 1000), async |drain, tx| {
            tx.send_replace(Endpoints::OutOfReadyEndpoints);
            for _ in 0..20 {
                drain.accepted();
                tokio::time::sleep(ms(400)).await;
            }
        })
        .await;
        assert_eq!(got, (ms(5_000), GoawayOn::Delay));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_delay_sends_goaway_at_once() {
        let got = step_two(params(0, 1000), async |_, tx| {
            tx.send_replace(Endpoints::OutOfReadyEndpoints);
        })
        .await;
        assert_eq!(got, (Duration::ZERO, GoawayOn::Delay));
    }
}
