//! Prometheus metrics under the names of docs/design.md §5.3.
//!
//! Connection, stream, GOAWAY and ping counts live in the transport's
//! plain-atomic [`Counters`] and are read at scrape time by a collector,
//! so the request path only ever does atomic adds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};

use goaway_transport::client::{Channel, Connectivity};
use goaway_transport::{Counters, GoAwayReason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::admin::readiness::Answer;

/// Labels of `goaway_policy_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    /// How long client connections lived.
    pub connection_duration: Histogram,
    /// Duration of the last drain.
    pub drain_duration: Gauge<f64, AtomicU64>,
    /// Policy file reloads by result.
    pub policy_reloads: Family<ReloadLabels, Counter>,
    /// Client connections closed at accept: `--max-connections` reached.
    pub connections_refused: Counter,
    /// Connections spliced to the app unmanaged, by protocol.
    pub passthrough_connections: Family<ProtocolLabels, Counter>,
    /// Drains that no SIGTERM followed within `--drain-expiry`.
    pub drains_expired: Counter,
    /// Rebalance messages acted on (docs/design.md §7.5).
    pub rebalances: Counter,
    /// Client connections sent GOAWAY by rebalancing.
    pub rebalance_goaways: Counter,
    /// Connections accepted during a rebalance and sent on at once.
    pub rebalance_bounces: Counter,
}

/// Labels of `goaway_passthrough_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `tls` or `http1`.
    pub protocol: &'static str,
}

impl Metrics {
    /// Registers everything; `counters` and `upstream` are read per scrape.
    pub fn new(
        counters: Arc<Counters>,
        upstreams: Vec<Channel>,
        ready: Arc<AtomicBool>,
        control_connected: Arc<AtomicBool>,
        readiness: Arc<AtomicU8>,
    ) -> Self {
        let mut registry = Registry::default();
        let connection_duration = Histogram::new([
            0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 86400.0,
        ]);
        registry.register(
            "goaway_connection_duration_seconds",
            "How long client connections lived",
            connection_duration.clone(),
        );
        let drain_duration = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "goaway_drain_duration_seconds",
            "Duration of the last drain, from its start to the last connection closed",
            drain_duration.clone(),
        );
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "goaway_policy_reloads",
            "Policy file reloads, by result (ok, error)",
            policy_reloads.clone(),
        );
        // Both series exist from the start, at zero.
        for result in ["ok", "error"] {
            let _ = policy_reloads.get_or_create(&ReloadLabels { result });
        }
        let connections_refused = Counter::default();
        registry.register(
            "goaway_connections_refused",
            "Client connections closed as soon as accepted because --max-connections were open",
            connections_refused.clone(),
        );
        let passthrough_connections = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "goaway_passthrough_connections",
            "Client connections spliced to the app without HTTP/2 management, by protocol (tls, http1)",
            passthrough_connections.clone(),
        );
        for protocol in ["tls", "http1"] {
            let _ = passthrough_connections.get_or_create(&ProtocolLabels { protocol });
        }
        let drains_expired = Counter::default();
        registry.register(
            "goaway_drains_expired",
            "Drains that no SIGTERM followed within --drain-expiry, after which the agent served again",
            drains_expired.clone(),
        );
        let rebalances = Counter::default();
        registry.register(
            "goaway_rebalances",
            "Scale-up rebalance messages from the operator acted on (rebalance.enabled, a scale-up, not draining)",
            rebalances.clone(),
        );
        let rebalance_goaways = Counter::default();
        registry.register(
            "goaway_rebalance_goaways",
            "Client connections sent GOAWAY by scale-up rebalancing",
            rebalance_goaways.clone(),
        );
        let rebalance_bounces = Counter::default();
        registry.register(
            "goaway_rebalance_bounces",
            "Client connections accepted while rebalancing and sent on at once (GOAWAY rebalance) so that the client is placed again",
            rebalance_bounces.clone(),
        );
        registry.register_collector(Box::new(TransportCollector {
            counters,
            upstreams,
            ready,
            control_connected,
            readiness,
        }));
        Metrics {
            registry,
            connection_duration,
            drain_duration,
            policy_reloads,
            connections_refused,
            passthrough_connections,
            drains_expired,
            rebalances,
            rebalance_goaways,
            rebalance_bounces,
        }
    }

    /// Counts a connection spliced to the app.
    pub fn passthrough(&self, protocol: &'static str) {
        self.passthrough_connections
            .get_or_create(&ProtocolLabels { protocol })
            .inc();
    }

    /// Counts a connection closed at the `--max-connections` limit.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts a policy reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.policy_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format (0.0.4), for scrapers and tools that do
    /// not ask for OpenMetrics: counters are declared under their `_total`
    /// sample name and there is no `# EOF`.
    pub fn encode_classic(&self) -> String {
        classic(&self.encode())
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4.
fn classic(open_metrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open_metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name);
        }
    }
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

struct TransportCollector {
    counters: Arc<Counters>,
    /// One pool per worker thread.
    upstreams: Vec<Channel>,
    ready: Arc<AtomicBool>,
    control_connected: Arc<AtomicBool>,
    /// `/readyz`'s last answer ([`crate::admin::readiness::Answer`]).
    readiness: Arc<AtomicU8>,
}

/// The upstream as one state: READY if any worker's pool is, otherwise
/// the most hopeful of the others.
fn combined(upstreams: &[Channel]) -> Connectivity {
    let states: Vec<Connectivity> = upstreams.iter().map(Channel::state).collect();
    [
        Connectivity::Ready,
        Connectivity::Connecting,
        Connectivity::TransientFailure,
        Connectivity::Idle,
    ]
    .into_iter()
    .find(|s| states.contains(s))
    .unwrap_or(Connectivity::Shutdown)
}

impl std::fmt::Debug for TransportCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportCollector")
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

impl Collector for TransportCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Relaxed);
        gauge(
            &mut e,
            "goaway_connections_open",
            "Client connections open",
            c.connections_open.load(Relaxed),
        )?;
        counter(
            &mut e,
            "goaway_connections",
            "Client connections accepted",
            get(&c.connections_total),
        )?;
        gauge(
            &mut e,
            "goaway_streams_active",
            "Streams being proxied",
            c.streams_active.load(Relaxed),
        )?;
        counter(
            &mut e,
            "goaway_streams",
            "Streams proxied",
            get(&c.streams_total),
        )?;

        let mut family = e.encode_descriptor(
            "goaway_goaways_sent",
            "Client connections sent GOAWAY, by reason (the two frames of a graceful drain count once)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for reason in GoAwayReason::ALL {
            let value = ConstCounter::new(c.goaways(reason));
            value.encode(family.encode_family(&ReasonLabel {
                reason: reason.as_str(),
            })?)?;
        }

        counter(
            &mut e,
            "goaway_pings_sent",
            "Keepalive PINGs sent (client and upstream connections)",
            get(&c.pings_sent),
        )?;
        counter(
            &mut e,
            "goaway_ping_timeouts",
            "Connections closed because a keepalive PING went unanswered",
            get(&c.ping_timeouts),
        )?;
        counter(
            &mut e,
            "goaway_ping_strikes",
            "Ping-enforcement strikes given to clients",
            get(&c.ping_strikes),
        )?;
        counter(
            &mut e,
            "goaway_hard_closes",
            "Connections closed at a deadline with streams still open",
            get(&c.hard_closes),
        )?;
        counter(
            &mut e,
            "goaway_upstream_connects",
            "Connections opened to the application",
            get(&c.upstream_connects),
        )?;
        counter(
            &mut e,
            "goaway_upstream_connect_failures",
            "Failed connection attempts to the application",
            get(&c.upstream_connect_failures),
        )?;
        counter(
            &mut e,
            "goaway_upstream_goaways_received",
            "GOAWAY frames received from the application",
            get(&c.upstream_goaways_received),
        )?;
        counter(
            &mut e,
            "goaway_upstream_retries",
            "Requests retried on a new upstream connection because the application never processed them",
            get(&c.upstream_retries),
        )?;

        let current = combined(&self.upstreams);
        let mut family = e.encode_descriptor(
            "goaway_upstream_state",
            "Connectivity state of the upstream channel (1 for the current state)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, label) in [
            (Connectivity::Idle, "idle"),
            (Connectivity::Connecting, "connecting"),
            (Connectivity::Ready, "ready"),
            (Connectivity::TransientFailure, "transient_failure"),
            (Connectivity::Shutdown, "shutdown"),
        ] {
            ConstGauge::new(i64::from(current == state))
                .encode(family.encode_family(&StateLabel { state: label })?)?;
        }
        gauge(
            &mut e,
            "goaway_ready",
            "1 while serving, 0 once a drain started",
            i64::from(self.ready.load(Relaxed)),
        )?;
        let mut family = e.encode_descriptor(
            "goaway_readiness",
            "What /readyz last answered (1 for that state): ready, draining, upstream_refused, upstream_timeout, or unprobed",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let answer = Answer::from_u8(self.readiness.load(Relaxed));
        for state in Answer::ALL {
            ConstGauge::new(i64::from(answer == state)).encode(family.encode_family(
                &StateLabel {
                    state: state.label(),
                },
            )?)?;
        }
        gauge(
            &mut e,
            "goaway_control_connected",
            "1 while the operator's control channel is open",
            i64::from(self.control_connected.load(Relaxed)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_declares_counters_by_their_sample_name() {
        let om = "# HELP goaway_connections Client connections accepted.\n\
                  # TYPE goaway_connections counter\n\
                  goaway_connections_total 2\n\
                  # HELP goaway_connections_open Client connections open.\n\
                  # TYPE goaway_connections_open gauge\n\
                  goaway_connections_open 1\n\
                  # EOF\n";
        let text = classic(om);
        assert_eq!(
            text,
            "# HELP goaway_connections_total Client connections accepted.\n\
             # TYPE goaway_connections_total counter\n\
             goaway_connections_total 2\n\
             # HELP goaway_connections_open Client connections open.\n\
             # TYPE goaway_connections_open gauge\n\
             goaway_connections_open 1\n"
        );
    }
}
