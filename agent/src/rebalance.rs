//! Scale-up rebalancing (docs/design.md §7.5): when a Service that lists
//! the pod gains ready endpoints, some of this pod's long-lived client
//! connections are sent away so that their clients reconnect, and the new
//! pods get their share.
//!
//! gRPC clients keep a connection for as long as it works; after a
//! scale-up from `from` to `to` pods, the old pods keep every connection
//! and the new ones get only new clients, until `maxConnectionAge` (if
//! set) cycles them. The operator sees the ready endpoints grow and tells
//! each old pod's agent, over the control channel,
//! `Rebalance { service, from, to }`. The agent then, if its policy's
//! `rebalance.enabled`:
//!
//! - takes the share `f = min(1 - from/to, maxPercent/100)`: the share a
//!   balanced fleet has on the new pods, capped;
//! - of its `n` open HTTP/2 connections that are not already draining,
//!   picks `k = ⌊f·n⌋`, plus one more with probability `f·n - ⌊f·n⌋`
//!   (stochastic rounding: with one or two connections per pod, the
//!   expected share across the fleet is still exactly `f`), the oldest
//!   first (they have had their turn; the young ones are likely the
//!   reconnects of an earlier GOAWAY);
//! - sends each chosen connection its GOAWAY (debug data `rebalance`,
//!   the graceful two-GOAWAY close of docs/design.md §3.4, with the hard
//!   close a `maxConnectionAge` GOAWAY gets: `maxConnectionAgeGrace`
//!   after it, if set) at a uniformly random time within
//!   `rebalance.window`, so neither the new pods nor DNS see a reconnect
//!   storm.
//!
//! A reconnect is placed by kube-proxy (or the client's own balancer) on
//! any ready pod, this one included: one GOAWAY moves a client to a new
//! pod with probability `1 - from/to` only. So from the plan until
//! [`BOUNCE_TAIL`] after its window, connections this agent accepts are
//! *sent on*: each gets the same graceful GOAWAY at once (the streams the
//! client opened on it are still served), and the client dials again, and
//! is placed again. A move then ends on a new pod. Sending on is bounded
//! per plan by [`bounce_budget`], twice the arrivals expected back here if
//! every old pod moves its share, so a client that can reach no new pod
//! (a node whose kube-proxy has not caught up) dials a few times more,
//! not forever. The operator tells the old pods only: a new pod sends
//! nothing on. From the address of a client this rebalance chose
//! connections of, only as many arrivals are sent on as it chose: a
//! client that dials pod IPs (a headless Service's, through redirect
//! interception) comes back to the same pod whatever happens — its
//! balancer has the other pods meanwhile, and re-resolves the name on the
//! GOAWAY — so it is sent on once and then stays, while a pod of many
//! channels behind one address still has its moves sent on.
//!
//! A second message while GOAWAYs are still pending re-plans from the
//! state then: the pending ones are cancelled and counted as still wanted
//! (they are still the oldest connections), the new share is applied to
//! the rest, and the whole is spread over a new window — but the GOAWAYs
//! sent in the `window` before count against the cap, so the expected
//! share sent away within a window never exceeds `maxPercent` (the
//! rounding adds at most one connection). A drain starting cancels every
//! pending GOAWAY: the drain sends its own to all of them.
//!
//! Nothing here runs per request: a plan reads the connection table once,
//! and one task per plan sleeps until each GOAWAY is due.

use goaway_transport::policy::RebalanceParams;
use goaway_transport::server::ConnectionHandle;
use goaway_transport::{ConnState, GoAwayReason};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::Agent;

/// What the operator asked for: a Service listing the pod grew from `from`
/// to `to` ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The Service's name.
    pub service: String,
    /// Ready endpoints before.
    pub from: u32,
    /// Ready endpoints now.
    pub to: u32,
}

impl Request {
    /// The share of connections a balanced fleet now has on the new pods,
    /// `1 - from/to`, or `None` when this is no scale-up (`from` is zero:
    /// nothing to rebalance from; `to <= from`: nothing new to go to).
    pub fn share(&self) -> Option<f64> {
        (self.from > 0 && self.to > self.from)
            .then(|| 1.0 - f64::from(self.from) / f64::from(self.to))
    }
}

/// What one rebalance decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// Open connections not already draining: the candidates.
    pub connections: usize,
    /// How many of them, oldest first, are sent GOAWAY.
    pub chosen: usize,
    /// The expected number `chosen` was rounded from.
    pub expected: f64,
}

/// How long after a plan's window connections accepted are still sent
/// on: a client reconnects on its GOAWAY, at once under load, or at its
/// next call.
pub const BOUNCE_TAIL: Duration = Duration::from_secs(5);

/// How many accepted connections one plan may send on: twice the number
/// expected here. If each of the `from` old pods sends `expected`
/// connections away and every dial picks one of the `to` pods uniformly,
/// a dial lands on an old pod with probability `from/to`, so a moved
/// client lands on old pods `from/(to - from)` times on average before it
/// reaches a new one: `expected·from/(to - from)` arrivals per old pod. At
/// most the `n` connections the pod had (a small step such as 9 → 10
/// would otherwise send one client on many times). Zero for no scale-up.
pub fn bounce_budget(request: &Request, expected: f64, n: usize) -> usize {
    if request.share().is_none() {
        return 0;
    }
    let (from, to) = (f64::from(request.from), f64::from(request.to));
    let budget = (2.0 * expected * from / (to - from)).ceil();
    (budget as usize).min(n)
}

/// `expected` rounded down, plus one with probability its fractional part
/// (`random` uniform in [0, 1)), within `0..=n`.
pub fn stochastic_round(expected: f64, n: usize, random: f64) -> usize {
    let expected = expected.clamp(0.0, n as f64);
    let floor = expected.floor();
    let k = floor as usize + usize::from(random < expected - floor);
    k.min(n)
}

/// The GOAWAYs in flight, shared with the task that sends them.
#[derive(Default)]
struct State {
    /// When this agent's rebalance GOAWAYs went out, oldest first
    /// (pruned to the last window at each plan).
    sent: VecDeque<Instant>,
    /// The plan whose GOAWAYs are still to go.
    pending: Option<Pending>,
    /// Connections accepted are sent on until then, this many more.
    bounce: Option<(Instant, usize)>,
    /// Per address of a client whose connections the plan chose: how
    /// many of its arrivals may still be sent on (one per connection
    /// chosen).
    sent_to: HashMap<IpAddr, u32>,
}

struct Pending {
    task: AbortHandle,
    /// Its GOAWAYs not yet due.
    left: Arc<AtomicUsize>,
}

/// A poisoned lock only means a panic elsewhere mid-update of plain values.
fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Plans rebalances and sends their GOAWAYs; at most one plan at a time.
#[derive(Default)]
pub struct Rebalancer {
    state: Arc<Mutex<State>>,
    /// Whether `state.bounce` may be set: the accept path reads only this
    /// while no rebalance is under way.
    bouncing: AtomicBool,
}

impl Rebalancer {
    /// Plans a rebalance of `candidates` (the open connections not
    /// draining, oldest first) for `request` with `params`, replacing any
    /// plan still pending, and starts sending: each chosen connection is
    /// handed to `send` at a random time within the window; `send` says
    /// whether it sent a GOAWAY (the connection may have gone meanwhile).
    /// `random` draws uniformly from [0, 1). `None` when `request` is no
    /// scale-up.
    pub fn plan<T, F>(
        &self,
        request: &Request,
        params: RebalanceParams,
        candidates: Vec<T>,
        send: F,
        random: &mut dyn FnMut() -> f64,
    ) -> Option<Plan>
    where
        T: Send + 'static,
        F: Fn(&T) -> bool + Send + 'static,
    {
        let share = request.share()?;
        let now = Instant::now();
        let mut state = lock(&self.state);
        let carried = state.pending.take().map_or(0, |p| {
            p.task.abort();
            p.left.load(Relaxed)
        });
        while state
            .sent
            .front()
            .is_some_and(|&at| at + params.window <= now)
        {
            state.sent.pop_front();
        }
        let recent = state.sent.len() as f64;
        let n = candidates.len();
        let cap = f64::from(params.max_percent) / 100.0;
        let f = share.min(cap);
        // The pending GOAWAYs are still wanted (their connections are the
        // oldest of the candidates), and the new share of the rest.
        let carried = carried.min(n) as f64;
        let wanted = carried + f * (n as f64 - carried);
        // Of the connections this window is about — those here and those
        // sent away in it — at most `cap`, counting those already sent.
        let budget = cap * (n as f64 + recent) - recent;
        let expected = wanted.min(budget).max(0.0);
        let chosen = stochastic_round(expected, n, random());
        let plan = Plan {
            connections: n,
            chosen,
            expected,
        };
        // Arrivals are sent on even when this pod sends none away itself:
        // the other old pods' clients land here too.
        let budget = bounce_budget(request, expected, n);
        state.bounce = (budget > 0).then_some((now + params.window + BOUNCE_TAIL, budget));
        self.bouncing.store(budget > 0, Relaxed);
        if chosen == 0 {
            return Some(plan);
        }
        let mut schedule: Vec<(Instant, T)> = candidates
            .into_iter()
            .take(chosen)
            .map(|c| (now + params.window.mul_f64(random()), c))
            .collect();
        schedule.sort_by_key(|&(at, _)| at);
        let left = Arc::new(AtomicUsize::new(chosen));
        let shared = self.state.clone();
        let counting = left.clone();
        let task = tokio::spawn(async move {
            for (at, connection) in schedule {
                tokio::time::sleep_until(at).await;
                counting.fetch_sub(1, Relaxed);
                if send(&connection) {
                    lock(&shared).sent.push_back(Instant::now());
                }
            }
        });
        state.pending = Some(Pending {
            task: task.abort_handle(),
            left,
        });
        Some(plan)
    }

    /// Cancels the GOAWAYs still pending, and the sending on of new
    /// connections; how many GOAWAYs were pending.
    pub fn cancel(&self) -> usize {
        let mut state = lock(&self.state);
        state.bounce = None;
        state.sent_to.clear();
        self.bouncing.store(false, Relaxed);
        state.pending.take().map_or(0, |p| {
            p.task.abort();
            p.left.load(Relaxed)
        })
    }

    /// The clients of the connections a plan chose (their addresses, one
    /// per connection): from each, as many arrivals may be sent on as it
    /// had connections chosen, and no more. Replaces what an earlier plan
    /// allowed.
    pub fn allow_returns(&self, clients: impl IntoIterator<Item = IpAddr>) {
        let mut state = lock(&self.state);
        state.sent_to.clear();
        for client in clients {
            *state.sent_to.entry(client).or_default() += 1;
        }
    }

    /// Whether a connection just accepted from `client` is to be sent on
    /// (see the module): within a plan's window and tail, while its
    /// budget lasts, and from an address whose connections the plan
    /// chose, as many times as it chose ([`Rebalancer::allow_returns`]).
    /// One atomic load when no rebalance is under way.
    pub fn bounce(&self, client: IpAddr) -> bool {
        if !self.bouncing.load(Relaxed) {
            return false;
        }
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        match &mut state.bounce {
            Some((until, left)) if Instant::now() < *until => {
                if *left == 0 {
                    // Spent: the accept path stops asking.
                    self.bouncing.store(false, Relaxed);
                    return false;
                }
                match state.sent_to.get_mut(&client) {
                    Some(0) => return false,
                    Some(allowed) => *allowed -= 1,
                    None => {}
                }
                *left -= 1;
                true
            }
            _ => {
                state.bounce = None;
                state.sent_to.clear();
                self.bouncing.store(false, Relaxed);
                false
            }
        }
    }

    /// GOAWAYs of the plan in force not yet due.
    pub fn pending(&self) -> usize {
        lock(&self.state)
            .pending
            .as_ref()
            .map_or(0, |p| p.left.load(Relaxed))
    }
}

impl Agent {
    /// Acts on the operator's `Rebalance` message (see the module): skipped
    /// (logged at debug) when the policy leaves rebalancing off, when the
    /// message is no scale-up, or while the agent is draining.
    pub fn rebalance(self: &Arc<Self>, request: &Request) {
        let policy = self.policy.current();
        let params = policy.rebalance_params();
        let Request { service, from, to } = request;
        let service = service.as_str();
        if !params.enabled {
            tracing::debug!(service, from, to, "rebalance not enabled; ignored");
            return;
        }
        if request.share().is_none() {
            tracing::debug!(service, from, to, "not a scale-up; no rebalance");
            return;
        }
        if !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            tracing::debug!(service, from, to, "draining; no rebalance");
            return;
        }
        let candidates = self.connections.open_oldest_first();
        let clients: Vec<IpAddr> = candidates.iter().map(|(peer, _)| peer.ip()).collect();
        let agent = Arc::downgrade(self);
        let send = move |(_, connection): &(SocketAddr, ConnectionHandle)| {
            let Some(agent) = agent.upgrade() else {
                return false;
            };
            // Gone, already draining, or the agent is: no GOAWAY of ours.
            if connection.stats().state != ConnState::Open
                || !agent.ready.load(std::sync::atomic::Ordering::Acquire)
            {
                return false;
            }
            agent.close_for_rebalance(connection);
            agent.metrics.rebalance_goaways.inc();
            true
        };
        let Some(plan) =
            self.rebalancer
                .plan(request, params, candidates, send, &mut rand::random::<f64>)
        else {
            return;
        };
        // The plan chose the oldest: the first `chosen` candidates.
        self.rebalancer
            .allow_returns(clients.into_iter().take(plan.chosen));
        self.metrics.rebalances.inc();
        tracing::info!(
            service,
            from,
            to,
            connections = plan.connections,
            chosen = plan.chosen,
            window = ?params.window,
            send_on = bounce_budget(request, plan.expected, plan.connections),
            "rebalancing: GOAWAY to the oldest connections over the window"
        );
    }

    /// Closes `connection` gracefully with reason `rebalance` and the
    /// deadline an age GOAWAY gets under the policy now.
    fn close_for_rebalance(&self, connection: &ConnectionHandle) {
        let grace = self.policy.current().server_params().max_age_grace;
        connection.drain(GoAwayReason::Rebalance, grace.map(|g| Instant::now() + g));
    }

    /// A connection just accepted: sent on at once (its GOAWAY, reason
    /// `rebalance`) while a rebalance wants its clients placed again (see
    /// the module).
    pub fn bounce_if_rebalancing(&self, client: SocketAddr, connection: &ConnectionHandle) {
        if !self.ready.load(std::sync::atomic::Ordering::Acquire)
            || !self.rebalancer.bounce(client.ip())
        {
            return;
        }
        self.close_for_rebalance(connection);
        self.metrics.rebalance_bounces.inc();
        tracing::debug!("rebalancing: a new connection sent on to be placed again");
    }

    /// Cancels pending rebalance GOAWAYs (a drain is starting).
    pub fn cancel_rebalance(&self) {
        let cancelled = self.rebalancer.cancel();
        if cancelled > 0 {
            tracing::info!(
                cancelled,
                "drain started; pending rebalance GOAWAYs cancelled"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    use super::*;

    /// A client's address in the tests.
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    /// A connection in the tests: its age rank (0 the oldest).
    type Conn = usize;

    /// What was sent, when (since the test's start).
    #[derive(Clone, Default)]
    struct Log(Arc<StdMutex<Vec<(Conn, Duration)>>>);

    impl Log {
        fn sender(&self, start: Instant) -> impl Fn(&Conn) -> bool + Send + 'static + use<> {
            let log = self.0.clone();
            move |c: &Conn| {
                log.lock().unwrap().push((*c, start.elapsed()));
                true
            }
        }
        fn sent(&self) -> Vec<(Conn, Duration)> {
            self.0.lock().unwrap().clone()
        }
        fn conns(&self) -> Vec<Conn> {
            let mut c: Vec<Conn> = self.sent().into_iter().map(|(c, _)| c).collect();
            c.sort_unstable();
            c
        }
    }

    fn params(window_s: u64, max_percent: u32) -> RebalanceParams {
        RebalanceParams {
            enabled: true,
            window: Duration::from_secs(window_s),
            max_percent,
        }
    }

    fn request(from: u32, to: u32) -> Request {
        Request {
            service: "api".into(),
            from,
            to,
        }
    }

    /// A small deterministic generator (xorshift64*), uniform in [0, 1).
    fn seeded(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Returns each value in turn.
    fn script<const N: usize>(values: &[f64; N]) -> impl FnMut() -> f64 + use<N> {
        let mut v = (*values).into_iter();
        move || v.next().expect("more random draws than scripted")
    }

    async fn settle(window: u64) {
        tokio::time::sleep(Duration::from_secs(window) + Duration::from_millis(1)).await;
    }

    #[test]
    fn the_share_is_that_of_the_new_pods_and_only_for_a_scale_up() {
        assert_eq!(request(3, 6).share(), Some(0.5));
        assert_eq!(request(1, 4).share(), Some(0.75));
        assert_eq!(request(0, 3).share(), None, "no old pods");
        assert_eq!(request(3, 3).share(), None);
        assert_eq!(request(6, 3).share(), None, "a scale-down");
    }

    #[test]
    fn stochastic_rounding_is_floor_or_ceil_and_exact_on_average() {
        assert_eq!(stochastic_round(2.25, 10, 0.0), 3);
        assert_eq!(stochastic_round(2.25, 10, 0.249), 3);
        assert_eq!(stochastic_round(2.25, 10, 0.25), 2);
        assert_eq!(stochastic_round(2.25, 10, 0.99), 2);
        assert_eq!(stochastic_round(2.0, 10, 0.0), 2, "a whole number exactly");
        assert_eq!(
            stochastic_round(7.5, 3, 0.0),
            3,
            "never more than there are"
        );
        assert_eq!(stochastic_round(-1.0, 3, 0.0), 0);
        // One connection and half of them wanted: half the pods send it.
        let mut random = seeded(7);
        let runs = 20_000;
        let sent: usize = (0..runs).map(|_| stochastic_round(0.5, 1, random())).sum();
        let mean = sent as f64 / runs as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        // Two connections, a third wanted (2 → 3 pods).
        let sent: usize = (0..runs)
            .map(|_| stochastic_round(2.0 / 3.0, 2, random()))
            .sum();
        let mean = sent as f64 / runs as f64;
        assert!((mean - 2.0 / 3.0).abs() < 0.02, "{mean}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_connections_go_at_random_times_within_the_window() {
        let r = Rebalancer::default();
        let log = Log::default();
        let start = Instant::now();
        // 10 connections, 3 → 6 pods: half of them, the five oldest.
        let plan = r
            .plan(
                &request(3, 6),
                params(30, 100),
                (0..10).collect(),
                log.sender(start),
                &mut seeded(1),
            )
            .unwrap();
        assert_eq!((plan.connections, plan.chosen), (10, 5));
        assert_eq!(plan.expected, 5.0);
        assert_eq!(r.pending(), 5);
        tokio::time::sleep(Duration::from_secs(15)).await;
        let halfway = log.sent().len();
        settle(30).await;
        assert_eq!(log.conns(), [0, 1, 2, 3, 4], "oldest first");
        let sent = log.sent();
        assert!(
            sent.iter().all(|&(_, at)| at < Duration::from_secs(30)),
            "{sent:?}"
        );
        // Spread, not at once: they came at different times, some in
        // each half of the window (with this seed).
        let mut times: Vec<Duration> = sent.iter().map(|&(_, at)| at).collect();
        times.dedup();
        assert_eq!(times.len(), 5, "{sent:?}");
        assert!(0 < halfway && halfway < 5, "{sent:?}");
        assert_eq!(r.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_times_are_the_random_draws_scaled_to_the_window() {
        let r = Rebalancer::default();
        let log = Log::default();
        let start = Instant::now();
        // Draws: the rounding (0.9: no extra), then one time per chosen.
        // 4 connections, 2 → 3: 4/3 expected → 1.
        r.plan(
            &request(2, 3),
            params(10, 50),
            vec![0, 1, 2, 3],
            log.sender(start),
            &mut script(&[0.9, 0.25]),
        )
        .unwrap();
        settle(10).await;
        assert_eq!(log.sent(), [(0, Duration::from_millis(2_500))]);
        // The same with a draw under the fraction: two, at 7.5s and 1s.
        let log = Log::default();
        let start = Instant::now();
        r.plan(
            &request(2, 3),
            params(10, 50),
            vec![0, 1, 2, 3],
            log.sender(start),
            &mut script(&[0.3, 0.75, 0.1]),
        )
        .unwrap();
        settle(10).await;
        assert_eq!(
            log.sent(),
            [
                (1, Duration::from_secs(1)),
                (0, Duration::from_millis(7_500))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_is_floor_or_ceil_of_the_share() {
        // 7 connections, 3 → 4: 7/4 = 1.75 expected.
        for seed in 1..200 {
            let r = Rebalancer::default();
            let plan = r
                .plan(
                    &request(3, 4),
                    params(30, 100),
                    (0..7).collect::<Vec<Conn>>(),
                    |_: &Conn| true,
                    &mut seeded(seed),
                )
                .unwrap();
            assert!(matches!(plan.chosen, 1 | 2), "{plan:?}");
            r.cancel();
        }
        // One connection, 1 → 2: it goes or stays.
        let mut went = 0;
        for seed in 1..400 {
            let r = Rebalancer::default();
            let plan = r
                .plan(
                    &request(1, 2),
                    params(30, 100),
                    vec![0],
                    |_: &Conn| true,
                    &mut seeded(seed),
                )
                .unwrap();
            assert!(plan.chosen <= 1);
            went += plan.chosen;
            r.cancel();
        }
        assert!((150..250).contains(&went), "{went} of 399");
    }

    #[tokio::test(start_paused = true)]
    async fn max_percent_caps_the_share() {
        let r = Rebalancer::default();
        let log = Log::default();
        // 1 → 10 pods would send 90% away; 25% is the cap.
        let plan = r
            .plan(
                &request(1, 10),
                params(30, 25),
                (0..20).collect(),
                log.sender(Instant::now()),
                &mut seeded(3),
            )
            .unwrap();
        assert_eq!((plan.expected, plan.chosen), (5.0, 5));
        settle(30).await;
        assert_eq!(log.conns(), [0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_for_a_request_that_is_no_scale_up() {
        let r = Rebalancer::default();
        for (from, to) in [(0, 3), (3, 3), (4, 2)] {
            let plan = r.plan(
                &request(from, to),
                params(30, 100),
                vec![0, 1, 2],
                |_: &Conn| panic!("sent"),
                &mut seeded(1),
            );
            assert_eq!(plan, None);
        }
        assert_eq!(r.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_stops_the_pending_goaways() {
        let r = Rebalancer::default();
        let log = Log::default();
        // 8 connections, 1 → 2: four, at 2s, 4s, 6s and 8s.
        r.plan(
            &request(1, 2),
            params(10, 100),
            (0..8).collect(),
            log.sender(Instant::now()),
            &mut script(&[0.0, 0.2, 0.4, 0.6, 0.8]),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(r.pending(), 2);
        assert_eq!(r.cancel(), 2);
        assert_eq!(r.cancel(), 0, "once");
        settle(10).await;
        assert_eq!(log.conns(), [0, 1], "none after the cancel");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_request_replans_and_the_window_keeps_the_cap() {
        let r = Rebalancer::default();
        let log = Log::default();
        let start = Instant::now();
        // 12 connections, 3 → 6: six, at 1s, 2s, …, 6s of a 10s window.
        r.plan(
            &request(3, 6),
            params(10, 50),
            (0..12).collect(),
            log.sender(start),
            &mut script(&[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(log.conns(), [0, 1, 2]);
        // 6 → 9 at 3.5s. Left: the 9 not sent (the three pending are the
        // oldest of them). Wanted: those three and a third of the other
        // six, 5; but the cap is half of the 12 this window is about,
        // three sent already: three more at most.
        let plan = r
            .plan(
                &request(6, 9),
                params(10, 50),
                (3..12).collect(),
                log.sender(start),
                &mut script(&[0.0, 0.5, 0.5, 0.5]),
            )
            .unwrap();
        assert_eq!((plan.connections, plan.chosen), (9, 3));
        assert_eq!(plan.expected, 3.0);
        settle(10).await;
        assert_eq!(log.conns(), [0, 1, 2, 3, 4, 5], "the same six, no more");

        // At 13.5s the three sent at 8.5s still count (they went in the
        // 10s before), the first three no longer. 3 → 12 would send 75% of
        // the 12 open now; the cap is half of those and the three sent,
        // less the three: 4.5.
        let plan = r
            .plan(
                &request(3, 12),
                params(10, 50),
                (6..18).collect(),
                log.sender(start),
                &mut seeded(9),
            )
            .unwrap();
        assert_eq!(plan.expected, 4.5);
        assert!(matches!(plan.chosen, 4 | 5), "{plan:?}");
        r.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_replan_keeps_the_pending_goaways_and_adds_the_new_share() {
        let r = Rebalancer::default();
        let log = Log::default();
        let start = Instant::now();
        // 12 connections, 2 → 3: four, all late in the window.
        r.plan(
            &request(2, 3),
            params(10, 100),
            (0..12).collect(),
            log.sender(start),
            &mut script(&[0.0, 0.9, 0.9, 0.9, 0.9]),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // 3 → 4 before any went: the four, and a quarter of the other 8.
        let plan = r
            .plan(
                &request(3, 4),
                params(10, 100),
                (0..12).collect(),
                log.sender(start),
                &mut seeded(2),
            )
            .unwrap();
        assert_eq!((plan.expected, plan.chosen), (6.0, 6));
        settle(10).await;
        // 6 of 12 = 1 - (2/3)(3/4): as if it had gone 2 → 4 at once.
        assert_eq!(log.conns(), [0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_gone_by_its_time_is_not_counted() {
        let r = Rebalancer::default();
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = sent.clone();
        // Two of four, at 5s and 6s; connection 1 closed before its time.
        r.plan(
            &request(1, 2),
            params(10, 100),
            vec![0, 1, 2, 3],
            move |c: &Conn| {
                let open = *c != 1;
                if open {
                    counted.fetch_add(1, Relaxed);
                }
                open
            },
            &mut script(&[0.0, 0.5, 0.6]),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(sent.load(Relaxed), 1);
        // Only what was sent counts against the next plan's cap: half of
        // the 4 open and the 1 sent, less that one.
        let plan = r
            .plan(
                &request(1, 2),
                params(10, 50),
                vec![2, 3, 4, 5],
                |_: &Conn| true,
                &mut seeded(4),
            )
            .unwrap();
        assert_eq!(plan.expected, 1.5);
    }

    #[test]
    fn the_send_on_budget_is_twice_the_arrivals_expected_back() {
        // 2 → 4: a dial lands on an old pod half the time; a moved client
        // comes back to the old pods once on average: 3 sent, 3 back.
        assert_eq!(bounce_budget(&request(2, 4), 3.0, 6), 6);
        // 3 → 6 the same; 1 → 4: a third of a dial per move.
        assert_eq!(bounce_budget(&request(3, 6), 5.0, 10), 10);
        assert_eq!(bounce_budget(&request(1, 4), 7.5, 10), 5);
        // 9 → 10: nine dials back per move, capped at what the pod had.
        assert_eq!(bounce_budget(&request(9, 10), 1.0, 10), 10);
        // Half a connection expected (stochastic rounding): one.
        assert_eq!(bounce_budget(&request(1, 2), 0.5, 1), 1);
        assert_eq!(bounce_budget(&request(2, 4), 0.0, 0), 0);
        assert_eq!(bounce_budget(&request(4, 2), 3.0, 6), 0, "no scale-up");
    }

    #[tokio::test(start_paused = true)]
    async fn arrivals_are_sent_on_within_the_window_and_tail_while_the_budget_lasts() {
        let r = Rebalancer::default();
        assert!(!r.bounce(CLIENT), "no rebalance, nothing sent on");
        // 4 connections, 2 → 4: two away, a budget of four.
        r.plan(
            &request(2, 4),
            params(10, 100),
            (0..4).collect::<Vec<Conn>>(),
            |_: &Conn| true,
            &mut seeded(5),
        )
        .unwrap();
        assert!(r.bounce(CLIENT) && r.bounce(CLIENT) && r.bounce(CLIENT) && r.bounce(CLIENT));
        assert!(!r.bounce(CLIENT), "the budget is spent");

        // Another plan: its budget, until the window and the tail are over.
        r.plan(
            &request(2, 4),
            params(10, 100),
            (0..4).collect::<Vec<Conn>>(),
            |_: &Conn| true,
            &mut seeded(6),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_secs(10) + BOUNCE_TAIL - Duration::from_millis(1)).await;
        assert!(r.bounce(CLIENT), "still in the tail");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!r.bounce(CLIENT), "the tail is over");
        assert!(!r.bounce(CLIENT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_sends_none_away_still_sends_arrivals_on() {
        let r = Rebalancer::default();
        // One connection, 1 → 2, and a draw that keeps it.
        let plan = r
            .plan(
                &request(1, 2),
                params(10, 100),
                vec![0],
                |_: &Conn| panic!("sent"),
                &mut script(&[0.9]),
            )
            .unwrap();
        assert_eq!(plan.chosen, 0);
        assert!(r.bounce(CLIENT));
        assert!(!r.bounce(CLIENT), "a budget of one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_stops_the_sending_on() {
        let r = Rebalancer::default();
        r.plan(
            &request(2, 4),
            params(10, 100),
            (0..8).collect::<Vec<Conn>>(),
            |_: &Conn| true,
            &mut seeded(8),
        )
        .unwrap();
        assert!(r.bounce(CLIENT));
        r.cancel();
        assert!(
            !r.bounce(CLIENT),
            "a drain sends its own GOAWAY to everything"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_chosen_is_sent_on_as_often_as_it_had_connections_chosen() {
        let r = Rebalancer::default();
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
        r.plan(
            &request(2, 4),
            params(10, 100),
            (0..4).collect::<Vec<Conn>>(),
            |_: &Conn| true,
            &mut seeded(5),
        )
        .unwrap();
        r.allow_returns([CLIENT]);
        // It dials pod IPs: it comes back here, is sent on once, then
        // stays.
        assert!(r.bounce(CLIENT));
        assert!(!r.bounce(CLIENT));
        assert!(!r.bounce(CLIENT));
        // The budget (four) was not spent on it: three more for others.
        assert!(r.bounce(other) && r.bounce(other) && r.bounce(other));
        assert!(!r.bounce(other));
        // A replan allows afresh: two chosen from it, two sent on.
        r.plan(
            &request(4, 8),
            params(10, 100),
            (0..4).collect::<Vec<Conn>>(),
            |_: &Conn| true,
            &mut seeded(6),
        )
        .unwrap();
        r.allow_returns([CLIENT, other, CLIENT]);
        assert!(
            r.bounce(CLIENT) && r.bounce(CLIENT),
            "two chosen, two sent on"
        );
        assert!(!r.bounce(CLIENT));
        // After a cancel nothing is remembered.
        r.cancel();
        r.plan(
            &request(2, 4),
            params(10, 100),
            (0..4).collect::<Vec<Conn>>(),
            |_: &Conn| true,
            &mut seeded(7),
        )
        .unwrap();
        assert!(r.bounce(CLIENT));
    }
}
