//! The Rust side of spec validation: [`Policy::validate`] in production
//! strictness plus the spec's own fields, then the policy merged with the
//! operator's [`PolicyDefaults`]. The reconciler reports its errors in the
//! Ready condition; the webhook never injects a policy that fails it.
//!
//! [`Policy::validate`]: goaway_transport::Policy::validate

use std::fmt;

use goaway_transport::policy::{FieldError, PolicyWarning, Strictness};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::KeepalivePolicySpec;
use crate::defaults::PolicyDefaults;

/// Every invalid field of a spec, with spec-relative dotted paths
/// (`server.time`, `selector`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError(pub Vec<FieldError>);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "spec.{e}")?;
        }
        Ok(())
    }
}

/// A valid but questionable setting (from [`Policy::validate`]).
///
/// [`Policy::validate`]: goaway_transport::Policy::validate
pub type SpecWarning = PolicyWarning;

impl KeepalivePolicySpec {
    /// Checks the whole spec as written: the selector is not empty, `port`
    /// and `agentPort` are usable, and the embedded policy passes
    /// [`Policy::validate`](goaway_transport::Policy::validate) with
    /// production strictness, the defaults of docs/design.md §2.1 filling the
    /// rest. This is what the CRD's CEL rules check. Returns every error, not
    /// just the first.
    pub fn check(&self) -> Result<Vec<SpecWarning>, SpecError> {
        self.check_with(&PolicyDefaults::default())
    }

    /// [`check`](Self::check), then the policy merged with the operator's
    /// `defaults` must pass the same validation: a default that does not
    /// fit a value the policy sets (a default `drain.goawayAckTimeout` at
    /// or above the policy's `drain.timeout`) is an error on the policy,
    /// and its message says the value is the operator's default and which
    /// flag set it. The API server cannot know the defaults, so a policy
    /// must pass both.
    pub fn check_with(&self, defaults: &PolicyDefaults) -> Result<Vec<SpecWarning>, SpecError> {
        let warnings = self.check_as_written()?;
        if defaults.is_empty() {
            return Ok(warnings);
        }
        defaults
            .merge(&self.policy)
            .validate(Strictness::Production)
            .map_err(|e| {
                SpecError(
                    e.fields()
                        .into_iter()
                        .map(|f| defaults.explain(&self.policy, f))
                        .collect(),
                )
            })
    }

    fn check_as_written(&self) -> Result<Vec<SpecWarning>, SpecError> {
        let mut errors = Vec::new();
        let mut error = |field: &str, reason: &str| {
            errors.push(FieldError {
                field: field.into(),
                reason: reason.into(),
            })
        };
        let labels = self.selector.match_labels.as_ref().map_or(0, |m| m.len());
        let exprs = self
            .selector
            .match_expressions
            .as_ref()
            .map_or(0, |m| m.len());
        if labels + exprs == 0 {
            error("selector", "must not be empty");
        } else if kube::core::Selector::try_from(self.selector.clone()).is_err() {
            error("selector", "has an invalid matchExpressions operator");
        }
        match &self.port {
            IntOrString::Int(p) if !(1..=65535).contains(p) => {
                error("port", "must be between 1 and 65535")
            }
            IntOrString::String(name) if !is_port_name(name) => error(
                "port",
                "must be a container port name (at most 15 lowercase letters, digits and '-')",
            ),
            _ => {}
        }
        if let Some(p) = self.agent_port {
            if !(1..=65535).contains(&p) {
                error("agentPort", "must be between 1 and 65535");
            } else if self.port == IntOrString::Int(p) {
                error("agentPort", "must differ from port");
            }
        }
        let warnings = match self.policy.validate(Strictness::Production) {
            Ok(w) => w,
            Err(e) => {
                errors.extend(e.fields());
                Vec::new()
            }
        };
        if errors.is_empty() {
            Ok(warnings)
        } else {
            Err(SpecError(errors))
        }
    }
}

/// Kubernetes' IANA_SVC_NAME: what a container port name may be.
pub(crate) fn is_port_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> KeepalivePolicySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn valid_spec_passes_with_policy_warnings() {
        let s = spec(
            "selector: {matchLabels: {app: a}}\nport: grpc\nserver: {maxConnectionAgeGrace: 10s}\n",
        );
        let warnings = s.check().unwrap();
        assert_eq!(warnings[0].field, "server.maxConnectionAgeGrace");
    }

    #[test]
    fn every_error_names_its_field() {
        let s = spec("selector: {}\nport: GRPC\nagentPort: 0\nserver: {time: 100ms}\n");
        let err = s.check().unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["selector", "port", "agentPort", "server.time"]);
        assert!(
            err.to_string()
                .starts_with("spec.selector: must not be empty; spec.port:")
        );
    }

    fn defaults(timeout: Option<&str>, ack: Option<&str>) -> PolicyDefaults {
        crate::defaults::parsed(None, timeout, ack)
    }

    #[test]
    fn a_default_ack_timeout_at_or_above_the_policys_drain_timeout_is_an_error_on_the_policy() {
        let s = spec("selector: {matchLabels: {app: a}}\nport: grpc\ndrain: {timeout: 8s}\n");
        // Valid as written (the built-in 5s) and with the built-in defaults.
        s.check().unwrap();
        s.check_with(&PolicyDefaults::default()).unwrap();
        let err = s.check_with(&defaults(None, Some("8s"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.drain.goawayAckTimeout: must be less than drain.timeout (8s), or the second GOAWAY would come after the hard close (got 8s); the policy does not set drain.goawayAckTimeout, so it is the operator default 8s (--default-drain-goaway-ack-timeout)"
        );
        s.check_with(&defaults(None, Some("7s"))).unwrap();
    }

    #[test]
    fn a_default_timeout_at_or_below_the_policys_ack_timeout_names_the_default_timeout() {
        let s =
            spec("selector: {matchLabels: {app: a}}\nport: grpc\ndrain: {goawayAckTimeout: 10s}\n");
        s.check().unwrap();
        let err = s
            .check_with(&defaults(Some("10s"), Some("1s")))
            .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].field, "drain.goawayAckTimeout");
        assert!(
            err.0[0].reason.ends_with(
                "; the policy does not set drain.timeout, so it is the operator default 10s (--default-drain-timeout)"
            ),
            "{err}"
        );
        // A policy that sets both is judged on its own values.
        let both = spec(
            "selector: {matchLabels: {app: a}}\nport: grpc\ndrain: {goawayAckTimeout: 10s, timeout: 1m}\n",
        );
        both.check_with(&defaults(Some("10s"), Some("1s"))).unwrap();
    }

    #[test]
    fn a_policy_invalid_as_written_reports_its_own_errors_whatever_the_defaults() {
        let s = spec(
            "selector: {matchLabels: {app: a}}\nport: grpc\ndrain: {timeout: 1s, goawayAckTimeout: 2s}\n",
        );
        // 2s >= 1s: the API server's CEL rule refuses this policy too, so
        // it is the policy's mistake, not the operator's.
        let err = s.check_with(&defaults(None, Some("500ms"))).unwrap_err();
        assert_eq!(err, s.check().unwrap_err());
        assert!(!err.to_string().contains("operator default"), "{err}");
    }

    #[test]
    fn port_names_follow_iana_svc_name() {
        for ok in ["grpc", "h2c-8080", "a"] {
            assert!(is_port_name(ok), "{ok}");
        }
        for bad in [
            "",
            "8080",
            "-grpc",
            "grpc-",
            "gr--pc",
            "Grpc",
            "a-very-long-port-name",
        ] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }
}
