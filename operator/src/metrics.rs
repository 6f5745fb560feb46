//! Prometheus metrics of the operator, served on the admin port's
//! `/metrics` ([`crate::admin`]).
//!
//! - `goaway_operator_reconciliations_total{result,error}` (result ok or
//!   error; error the kind, [`crate::Error::metric_label`], or empty)
//! - `goaway_operator_reconcile_duration_seconds` (histogram)
//! - `goaway_operator_admissions_total{outcome,reason}` (outcome injected,
//!   unchanged or error; reason the skip or error kind)
//! - `goaway_operator_admission_duration_seconds` (histogram)
//! - `goaway_operator_webhook_connections_open`,
//!   `goaway_operator_webhook_connections_refused_total` (connections the
//!   webhook serves now / closed at accept because its cap was reached)
//! - `goaway_operator_leader` (1 while this replica holds the lease)
//! - the control channel ([`crate::channel`]):
//!   `goaway_operator_control_streams` (agents streaming from this replica
//!   now), `goaway_operator_control_refused_total{reason}` (connections
//!   closed without a stream: `capacity`, `handshake`, `header_timeout`,
//!   a bad request's kind, or the token's refusal,
//!   [`crate::channel::auth::Refusal::label`]),
//!   `goaway_operator_control_messages_total{type}` (policy, endpoints,
//!   heartbeat), `goaway_operator_control_token_reviews_total{result}`
//!   (accepted, refused, error, or cached: answered without asking the API
//!   server), `goaway_operator_control_endpoint_watches` (namespaces whose
//!   EndpointSlices this replica watches),
//!   `goaway_operator_drain_reports_total{result}` (finished drains the
//!   agents reported: accepted, or refused for a drain number out of
//!   range, [`crate::channel::drains`])

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric of the operator, registered in one registry.
pub struct Metrics {
    registry: Registry,
    reconciliations: Family<Labels, Counter>,
    reconcile_duration: Histogram,
    admissions: Family<Labels, Counter>,
    admission_duration: Histogram,
    webhook_connections_open: Gauge,
    webhook_connections_refused: Counter,
    leader: Gauge,
    control_streams: Gauge,
    control_refused: Family<Labels, Counter>,
    control_messages: Family<Labels, Counter>,
    control_token_reviews: Family<Labels, Counter>,
    control_endpoint_watches: Gauge,
    drain_reports: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("goaway_operator");
        let reconciliations = Family::<Labels, Counter>::default();
        registry.register(
            "reconciliations",
            "Reconciliations of KeepalivePolicies by result",
            reconciliations.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one KeepalivePolicy",
            reconcile_duration.clone(),
        );
        let admissions = Family::<Labels, Counter>::default();
        registry.register(
            "admissions",
            "Pod admission reviews by outcome and reason",
            admissions.clone(),
        );
        let admission_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "admission_duration_seconds",
            "Time to answer one admission review",
            admission_duration.clone(),
        );
        let webhook_connections_open = Gauge::default();
        registry.register(
            "webhook_connections_open",
            "Connections the webhook serves now",
            webhook_connections_open.clone(),
        );
        let webhook_connections_refused = Counter::default();
        registry.register(
            "webhook_connections_refused",
            "Connections closed at accept because the webhook's connection cap was reached",
            webhook_connections_refused.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let control_streams = Gauge::default();
        registry.register(
            "control_streams",
            "Agents streaming from this replica's control channel now",
            control_streams.clone(),
        );
        let control_refused = Family::<Labels, Counter>::default();
        registry.register(
            "control_refused",
            "Control channel connections closed without a stream, by reason",
            control_refused.clone(),
        );
        let control_messages = Family::<Labels, Counter>::default();
        registry.register(
            "control_messages",
            "Messages written to agents' streams, by type",
            control_messages.clone(),
        );
        let control_token_reviews = Family::<Labels, Counter>::default();
        registry.register(
            "control_token_reviews",
            "Agent tokens checked, by result (cached: without asking the API server)",
            control_token_reviews.clone(),
        );
        let control_endpoint_watches = Gauge::default();
        registry.register(
            "control_endpoint_watches",
            "Namespaces whose EndpointSlices this replica watches for its agents",
            control_endpoint_watches.clone(),
        );
        let drain_reports = Family::<Labels, Counter>::default();
        registry.register(
            "drain_reports",
            "Finished drains the agents reported on their streams, by result",
            drain_reports.clone(),
        );
        Metrics {
            registry,
            reconciliations,
            reconcile_duration,
            admissions,
            admission_duration,
            webhook_connections_open,
            webhook_connections_refused,
            leader,
            control_streams,
            control_refused,
            control_messages,
            control_token_reviews,
            control_endpoint_watches,
            drain_reports,
        }
    }
}

/// Every `reason` of `goaway_operator_admissions_total`: empty for an
/// injected pod; why a pod was admitted unchanged
/// ([`crate::inject::Skip`], `not_pod_create`, `redirect_forbidden`); or
/// the error that stopped the injection ([`crate::inject::InjectError`])
/// or the review.
pub const ADMISSION_REASONS: &[&str] = &[
    "",
    "no_policy",
    "opted_out",
    "already_injected",
    "host_network",
    "windows",
    "not_pod_create",
    "redirect_forbidden",
    "port_not_found",
    "port_in_use",
    "port_clash",
    "ambiguous_port_name",
    "not_tcp",
    "volume_exists",
    "invalid_annotation",
    "serialize",
    "budget_exceeded",
    "request_timeout",
    "request_too_large",
    "unreadable",
    "unreadable_pod",
    "panic",
];

impl Metrics {
    /// Records one reconciliation: `error` is `None` when it succeeded.
    pub fn reconciled(&self, error: Option<&crate::Error>, took: Duration) {
        let (result, kind) = match error {
            None => ("ok", ""),
            Some(e) => ("error", e.metric_label()),
        };
        self.reconciliations
            .get_or_create(&vec![("result", result), ("error", kind)])
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Records one admission review; `reason` is one of
    /// [`ADMISSION_REASONS`] (checked in debug builds, so that the
    /// README's list, which a test holds to that one, stays complete).
    pub fn admitted(&self, outcome: &'static str, reason: &'static str, took: Duration) {
        debug_assert!(
            ADMISSION_REASONS.contains(&reason),
            "admission reason {reason:?} is not in ADMISSION_REASONS"
        );
        self.admissions
            .get_or_create(&vec![("outcome", outcome), ("reason", reason)])
            .inc();
        self.admission_duration.observe(took.as_secs_f64());
    }

    /// A webhook connection was accepted (`true`) or has ended.
    pub fn webhook_connection(&self, opened: bool) {
        if opened {
            self.webhook_connections_open.inc();
        } else {
            self.webhook_connections_open.dec();
        }
    }

    /// A webhook connection was closed at accept: the cap was reached.
    pub fn webhook_connection_refused(&self) {
        self.webhook_connections_refused.inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// A control stream opened (`true`) or ended.
    pub fn control_stream(&self, opened: bool) {
        if opened {
            self.control_streams.inc();
        } else {
            self.control_streams.dec();
        }
    }

    /// A control channel connection was closed without a stream.
    pub fn control_refused(&self, reason: &'static str) {
        self.control_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Gives every labelled family one sample, so that the exposition
    /// lists it (a family without a series is not encoded at all): what
    /// the design document's and the dashboard's checks read the
    /// operator's metric names from.
    pub fn sample_every_family(&self) {
        self.reconciled(None, Duration::ZERO);
        self.admitted("injected", "", Duration::ZERO);
        self.control_refused("capacity");
        self.control_message("heartbeat");
        self.control_token_review("accepted");
        self.drain_report("accepted");
    }

    /// An agent reported a finished drain.
    pub fn drain_report(&self, result: &'static str) {
        self.drain_reports
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// A message was written to a stream.
    pub fn control_message(&self, type_: &'static str) {
        self.control_messages
            .get_or_create(&vec![("type", type_)])
            .inc();
    }

    /// An agent's token was checked.
    pub fn control_token_review(&self, result: &'static str) {
        self.control_token_reviews
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// A namespace's EndpointSlice watch started (`true`) or stopped.
    pub fn control_endpoint_watch(&self, started: bool) {
        if started {
            self.control_endpoint_watches.inc();
        } else {
            self.control_endpoint_watches.dec();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_explains_every_admission_reason() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .unwrap();
        let section = readme
            .split("**A pod was not injected.**")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .expect("README: Troubleshooting, \"A pod was not injected.\"");
        let missing: Vec<&&str> = ADMISSION_REASONS
            .iter()
            .filter(|r| !r.is_empty() && !section.contains(&format!("`{r}`")))
            .collect();
        assert!(missing.is_empty(), "README does not explain {missing:?}");
    }

    #[test]
    fn rendered_text_names_every_metric() {
        let m = Metrics::default();
        m.reconciled(None, Duration::from_millis(3));
        let missing = crate::Error::MissingField {
            kind: "KeepalivePolicy",
            field: "metadata.namespace",
        };
        m.reconciled(Some(&missing), Duration::from_millis(1));
        m.admitted("injected", "", Duration::from_micros(300));
        m.webhook_connection(true);
        m.webhook_connection(true);
        m.webhook_connection(false);
        m.webhook_connection_refused();
        m.set_leader(true);
        m.control_stream(true);
        m.control_refused("unauthenticated");
        m.control_message("policy");
        m.control_token_review("cached");
        m.control_endpoint_watch(true);
        m.drain_report("accepted");
        let text = m.render();
        for name in [
            "goaway_operator_reconciliations_total{result=\"ok\",error=\"\"} 1",
            "goaway_operator_reconciliations_total{result=\"error\",error=\"missing_field\"} 1",
            "goaway_operator_reconcile_duration_seconds_count 2",
            "goaway_operator_admissions_total{outcome=\"injected\",reason=\"\"} 1",
            "goaway_operator_admission_duration_seconds_count 1",
            "goaway_operator_webhook_connections_open 1",
            "goaway_operator_webhook_connections_refused_total 1",
            "goaway_operator_leader 1",
            "goaway_operator_control_streams 1",
            "goaway_operator_control_refused_total{reason=\"unauthenticated\"} 1",
            "goaway_operator_control_messages_total{type=\"policy\"} 1",
            "goaway_operator_control_token_reviews_total{result=\"cached\"} 1",
            "goaway_operator_control_endpoint_watches 1",
            "goaway_operator_drain_reports_total{result=\"accepted\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
