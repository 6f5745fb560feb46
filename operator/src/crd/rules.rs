//! CEL rules (`x-kubernetes-validations`) on the spec: what the OpenAPI
//! schema alone cannot say. They mirror [`Policy::validate`] with
//! [`Strictness::Production`] rule for rule, so the API server rejects what
//! the agent would reject, at `kubectl apply` time, naming the field. A
//! test evaluates them with kube's CEL interpreter against the Rust
//! validator on generated policies.
//!
//! [`Policy::validate`]: goaway_transport::Policy::validate
//! [`Strictness::Production`]: goaway_transport::policy::Strictness::Production

use serde::Serialize;

/// One `x-kubernetes-validations` entry.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CelRule {
    /// The CEL expression; `self` is the spec.
    pub rule: &'static str,
    /// What `kubectl` prints when it fails.
    pub message: &'static str,
    /// The field blamed, relative to the spec.
    pub field_path: &'static str,
    /// The `metav1.StatusReason` of the failure.
    pub reason: &'static str,
}

const INVALID: &str = "FieldValueInvalid";

macro_rules! positive {
    ($group:literal, $field:literal) => {
        CelRule {
            rule: concat!(
                "!has(self.",
                $group,
                ") || !has(self.",
                $group,
                ".",
                $field,
                ") || duration(self.",
                $group,
                ".",
                $field,
                ") > duration('0s')"
            ),
            message: concat!($group, ".", $field, " must be greater than zero"),
            field_path: concat!(".", $group, ".", $field),
            reason: INVALID,
        }
    };
}

macro_rules! at_least {
    ($group:literal, $field:literal, $min:literal) => {
        CelRule {
            rule: concat!(
                "!has(self.",
                $group,
                ") || !has(self.",
                $group,
                ".",
                $field,
                ") || duration(self.",
                $group,
                ".",
                $field,
                ") >= duration('",
                $min,
                "')"
            ),
            message: concat!(
                $group,
                ".",
                $field,
                " must be at least ",
                $min,
                ", gRPC's minimum"
            ),
            field_path: concat!(".", $group, ".", $field),
            reason: INVALID,
        }
    };
}

/// Every rule on the spec, in the order they appear in the CRD.
pub const RULES: &[CelRule] = &[
    CelRule {
        rule: "(has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)",
        message: "selector must not be empty: a policy for every pod in the namespace is almost certainly a mistake",
        field_path: ".selector",
        reason: "FieldValueRequired",
    },
    CelRule {
        rule: "type(self.port) == int ? (self.port >= 1 && self.port <= 65535) : (size(self.port) <= 15 && self.port.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.port.matches('[a-z]') && !self.port.contains('--'))",
        message: "port must be a port number (1-65535) or a container port name (IANA service name)",
        field_path: ".port",
        reason: INVALID,
    },
    CelRule {
        rule: "!has(self.agentPort) || type(self.port) != int || self.agentPort != self.port",
        message: "agentPort must differ from port",
        field_path: ".agentPort",
        reason: INVALID,
    },
    at_least!("server", "time", "1s"),
    positive!("server", "timeout"),
    positive!("server", "maxConnectionIdle"),
    positive!("server", "maxConnectionAge"),
    positive!("enforcement", "minTime"),
    at_least!("upstream", "time", "10s"),
    positive!("upstream", "timeout"),
    positive!("drain", "timeout"),
    positive!("drain", "goawayAckTimeout"),
    // Only a value the user set: the default (5s, at most half of
    // drain.timeout) always fits.
    CelRule {
        rule: "!has(self.drain) || !has(self.drain.goawayAckTimeout) || duration(self.drain.goawayAckTimeout) < duration(has(self.drain.timeout) ? self.drain.timeout : '30s')",
        message: "drain.goawayAckTimeout must be less than drain.timeout (default 30s), or the second GOAWAY would come after the hard close",
        field_path: ".drain.goawayAckTimeout",
        reason: INVALID,
    },
    CelRule {
        rule: "!has(self.drain) || !has(self.drain.quietPeriod) || duration(self.drain.quietPeriod) <= duration('1m')",
        message: "drain.quietPeriod must be at most 1m",
        field_path: ".drain.quietPeriod",
        reason: INVALID,
    },
    positive!("rebalance", "window"),
    CelRule {
        rule: "!has(self.rebalance) || !has(self.rebalance.window) || duration(self.rebalance.window) <= duration('10m')",
        message: "rebalance.window must be at most 10m",
        field_path: ".rebalance.window",
        reason: INVALID,
    },
];

/// Adds [`RULES`] to the spec's schema (a schemars container transform).
pub(super) fn add_to_schema(schema: &mut schemars::Schema) {
    let rules = serde_json::to_value(RULES).unwrap_or_default();
    schema.insert("x-kubernetes-validations".into(), rules);
}
