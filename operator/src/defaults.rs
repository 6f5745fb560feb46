//! Operator-wide defaults for the policy fields a `KeepalivePolicy` leaves
//! out (`--default-drain-delay`, `--default-drain-timeout`,
//! `--default-drain-goaway-ack-timeout`, `--default-interception`), and
//! where redirect interception may not be used (`--forbid-redirect`; a
//! namespace that refuses its init container).
//!
//! One type, [`PolicyDefaults`], merged into a policy the same way
//! wherever the operator uses one: the controller renders the merged
//! policy into the agent's file, and the webhook and `inject` compute the
//! grace period from it and inject only policies whose merged form passes
//! [`Policy::validate`] with production strictness. A field the policy
//! sets always wins; a default the operator was not given leaves the field
//! unset, so the default of docs/design.md §2.1 applies as before.
//!
//! The API server cannot see the operator's flags, so its CEL rules judge
//! a policy against the defaults of docs/design.md §2.1; see
//! [`KeepalivePolicySpec::check_with`](crate::KeepalivePolicySpec::check_with).

use goaway_transport::Policy;
use goaway_transport::policy::{DrainPolicy, FieldError, GoDuration, Strictness};

use crate::crd::Interception;
use crate::error::FlagError;

/// One defaultable field: where it is in a policy and which flag sets it.
struct Field {
    path: &'static str,
    flag: &'static str,
    get: fn(&DrainPolicy) -> Option<GoDuration>,
}

const FIELDS: [Field; 4] = [
    Field {
        path: "drain.delay",
        flag: "--default-drain-delay",
        get: |d| d.delay,
    },
    Field {
        path: "drain.timeout",
        flag: "--default-drain-timeout",
        get: |d| d.timeout,
    },
    Field {
        path: "drain.goawayAckTimeout",
        flag: "--default-drain-goaway-ack-timeout",
        get: |d| d.goaway_ack_timeout,
    },
    Field {
        path: "drain.quietPeriod",
        flag: "--default-drain-quiet-period",
        get: |d| d.quiet_period,
    },
];

/// Values filled into the fields a policy leaves out. The default value
/// (no flags) changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDefaults {
    drain: DrainPolicy,
    interception: Interception,
    /// `--forbid-redirect`: pods of policies that ask for redirect
    /// interception are not injected.
    forbid_redirect: bool,
    /// True where redirect interception cannot be used (a namespace that
    /// refuses its NET_ADMIN init container).
    redirect_refused: bool,
}

impl PolicyDefaults {
    /// Defaults for the `drain` group; `None` keeps the default of
    /// docs/design.md §2.1.
    ///
    /// The defaults must form a valid policy on their own (each value
    /// non-negative, the timeouts above zero, and `goawayAckTimeout` below
    /// `timeout`, with docs/design.md §2.1 filling what is not given), or
    /// every policy that leaves the fields out would be invalid. Errors
    /// name the flag.
    pub fn new(drain: DrainPolicy) -> Result<Self, Vec<FlagError>> {
        let alone = Policy {
            drain: drain.clone(),
            ..Policy::default()
        };
        match alone.validate(Strictness::Production) {
            Ok(_) => Ok(PolicyDefaults {
                drain,
                ..PolicyDefaults::default()
            }),
            Err(e) => Err(e
                .fields()
                .into_iter()
                .map(|f| FlagError {
                    flag: FIELDS
                        .iter()
                        .find(|d| d.path == f.field)
                        .map_or("--default-drain-*", |d| d.flag),
                    reason: f.reason,
                })
                .collect()),
        }
    }

    /// The `drain` defaults.
    pub fn drain(&self) -> &DrainPolicy {
        &self.drain
    }

    /// These defaults with `mode` for policies that leave
    /// `spec.interception` out (`--default-interception`).
    pub fn with_interception(mut self, mode: Interception) -> Self {
        self.interception = mode;
        self
    }

    /// The interception mode of policies that do not choose one.
    pub fn interception(&self) -> Interception {
        self.interception
    }

    /// These defaults with redirect interception forbidden when `forbid`
    /// (`--forbid-redirect`): the pods of policies that ask for it are
    /// admitted without the agent, everywhere ([`Self::forbids`]).
    pub fn forbidding_redirect(mut self, forbid: bool) -> Self {
        self.forbid_redirect = forbid;
        self
    }

    /// True when the operator forbids redirect interception.
    pub fn redirect_forbidden(&self) -> bool {
        self.forbid_redirect
    }

    /// These defaults for a namespace that refuses redirect interception:
    /// policies that ask for it get namedPort there.
    pub fn refusing_redirect(mut self) -> Self {
        self.redirect_refused = true;
        self
    }

    /// True when `policy` asks for redirect interception (itself, or by
    /// leaving the mode to the operator's default).
    pub fn wants_redirect(&self, policy: &crate::KeepalivePolicy) -> bool {
        policy.interception(self.interception) == Interception::Redirect
    }

    /// True when `policy` asks for redirect interception and the operator
    /// forbids it: its pods get no agent, rather than a mode their owner
    /// did not choose.
    pub fn forbids(&self, policy: &crate::KeepalivePolicy) -> bool {
        self.forbid_redirect && self.wants_redirect(policy)
    }

    /// The mode `policy` asks for, and the one it gets here (namedPort
    /// instead of a redirect the namespace refuses). A policy the operator
    /// [forbids](Self::forbids) gets nothing; this does not ask.
    pub fn interception_of(&self, policy: &crate::KeepalivePolicy) -> (Interception, Interception) {
        let wanted = policy.interception(self.interception);
        let got = if self.redirect_refused {
            Interception::NamedPort
        } else {
            wanted
        };
        (wanted, got)
    }

    /// True when no default is set: policies are used as written.
    pub fn is_empty(&self) -> bool {
        *self == PolicyDefaults::default()
    }

    /// `policy` with every field it leaves out and this has a value for
    /// filled in.
    pub fn merge(&self, policy: &Policy) -> Policy {
        let mut merged = policy.clone();
        let (d, defaults) = (&mut merged.drain, &self.drain);
        d.delay = d.delay.or(defaults.delay);
        d.timeout = d.timeout.or(defaults.timeout);
        d.goaway_ack_timeout = d.goaway_ack_timeout.or(defaults.goaway_ack_timeout);
        d.quiet_period = d.quiet_period.or(defaults.quiet_period);
        merged
    }

    /// Rewrites an error found in `policy` (as written) merged with these
    /// defaults so it says which of the values it is about came from the
    /// defaults rather than from the policy: the value of the field itself
    /// or of a field the reason names.
    pub fn explain(&self, policy: &Policy, mut error: FieldError) -> FieldError {
        for field in &FIELDS {
            let (Some(value), None) = ((field.get)(&self.drain), (field.get)(&policy.drain)) else {
                continue;
            };
            if error.field == field.path || error.reason.contains(field.path) {
                error.reason = format!(
                    "{}; the policy does not set {}, so it is the operator default {value} ({})",
                    error.reason, field.path, field.flag
                );
            }
        }
        error
    }
}

/// A drain group from duration strings (tests).
#[cfg(test)]
pub(crate) fn drain(delay: Option<&str>, timeout: Option<&str>, ack: Option<&str>) -> DrainPolicy {
    let d = |s: Option<&str>| s.map(|s| s.parse().unwrap());
    DrainPolicy {
        delay: d(delay),
        timeout: d(timeout),
        goaway_ack_timeout: d(ack),
        quiet_period: None,
    }
}

/// Valid operator defaults from duration strings (tests).
#[cfg(test)]
pub(crate) fn parsed(
    delay: Option<&str>,
    timeout: Option<&str>,
    ack: Option<&str>,
) -> PolicyDefaults {
    PolicyDefaults::new(drain(delay, timeout, ack)).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Option<GoDuration> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn defaults_fill_only_the_fields_the_policy_leaves_out() {
        let defaults = PolicyDefaults::new(drain(Some("10s"), Some("1m"), Some("2s"))).unwrap();
        let mut policy = Policy::default();
        policy.drain.timeout = d("45s");
        policy.server.max_connection_age = d("30m");
        let merged = defaults.merge(&policy);
        assert_eq!(merged.drain, drain(Some("10s"), Some("45s"), Some("2s")));
        assert_eq!(merged.server, policy.server);
        // A policy that sets everything is used as written.
        let full = Policy {
            drain: drain(Some("0s"), Some("5s"), Some("1s")),
            ..Policy::default()
        };
        assert_eq!(defaults.merge(&full), full);
    }

    #[test]
    fn no_defaults_change_nothing() {
        let defaults = PolicyDefaults::default();
        assert!(defaults.is_empty());
        let mut policy = Policy::default();
        policy.drain.delay = d("3s");
        assert_eq!(defaults.merge(&policy), policy);
        assert_eq!(defaults.merge(&Policy::default()), Policy::default());
        let some = PolicyDefaults::new(drain(None, Some("40s"), None)).unwrap();
        assert!(!some.is_empty());
    }

    #[test]
    fn invalid_defaults_name_their_flag() {
        let err = |drain| {
            PolicyDefaults::new(drain)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            err(drain(Some("-1s"), None, None)),
            ["--default-drain-delay: must not be negative (got -1s)"]
        );
        assert_eq!(
            err(drain(None, Some("0s"), Some("0s"))),
            [
                "--default-drain-timeout: must be greater than zero",
                "--default-drain-goaway-ack-timeout: must be greater than zero"
            ]
        );
        // Against each other, with docs/design.md §2.1 filling in what is
        // not given (a 3s timeout alone is fine: the default ack bound
        // follows it).
        assert!(PolicyDefaults::new(drain(None, Some("3s"), None)).is_ok());
        let ack = err(drain(None, Some("3s"), Some("3s")));
        assert_eq!(ack.len(), 1);
        assert!(
            ack[0].starts_with(
                "--default-drain-goaway-ack-timeout: must be less than drain.timeout (3s)"
            ),
            "{ack:?}"
        );
        assert!(PolicyDefaults::new(drain(None, None, Some("30s"))).is_err());
        assert!(PolicyDefaults::new(drain(Some("0s"), Some("2s"), Some("1s"))).is_ok());
    }

    fn policy(interception: Option<&str>) -> crate::KeepalivePolicy {
        let mut spec = "selector: {matchLabels: {app: a}}\nport: grpc\n".to_string();
        if let Some(mode) = interception {
            spec.push_str(&format!("interception: {mode}\n"));
        }
        crate::KeepalivePolicy::new("p", serde_yaml::from_str(&spec).unwrap())
    }

    #[test]
    fn the_flag_forbids_policies_asking_for_redirect_and_a_namespace_refuses_it() {
        use Interception::{NamedPort, Redirect};
        let redirect = policy(Some("redirect"));
        let named = policy(Some("namedPort"));
        let unset = policy(None);
        let plain = PolicyDefaults::default();
        assert_eq!(plain.interception_of(&redirect), (Redirect, Redirect));
        assert_eq!(plain.interception_of(&unset), (NamedPort, NamedPort));
        assert!(!plain.forbids(&redirect));
        let refusing = plain.clone().refusing_redirect();
        assert_eq!(refusing.interception_of(&redirect), (Redirect, NamedPort));
        assert!(!refusing.forbids(&redirect));

        let forbidding = plain.clone().forbidding_redirect(true);
        assert!(forbidding.redirect_forbidden() && !forbidding.is_empty());
        assert!(forbidding.forbids(&redirect));
        // A policy that asks for namedPort, itself or by default, is
        // forbidden nothing.
        assert!(!forbidding.forbids(&named) && !forbidding.forbids(&unset));

        // A policy that leaves the mode out asks for the operator's default.
        let by_default = plain.with_interception(Redirect);
        assert!(by_default.wants_redirect(&unset) && !by_default.wants_redirect(&named));
        assert!(by_default.clone().forbidding_redirect(true).forbids(&unset));
        assert_eq!(
            by_default.refusing_redirect().interception_of(&unset),
            (Redirect, NamedPort)
        );
    }

    #[test]
    fn errors_about_defaulted_fields_say_the_value_came_from_the_operator() {
        let defaults = PolicyDefaults::new(drain(None, Some("1m"), Some("10s"))).unwrap();
        let mut policy = Policy::default();
        policy.drain.timeout = d("8s");
        let merged = defaults.merge(&policy);
        let error = merged
            .validate(Strictness::Production)
            .unwrap_err()
            .fields()[0]
            .clone();
        let explained = defaults.explain(&policy, error.clone());
        assert_eq!(explained.field, "drain.goawayAckTimeout");
        assert_eq!(
            explained.reason,
            format!(
                "{}; the policy does not set drain.goawayAckTimeout, so it is the operator default 10s (--default-drain-goaway-ack-timeout)",
                error.reason
            )
        );
        // A value the policy sets itself is not blamed on the operator.
        let mut own = policy.clone();
        own.drain.goaway_ack_timeout = d("10s");
        assert_eq!(defaults.explain(&own, error.clone()), error);
    }
}
