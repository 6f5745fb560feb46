//! Which policy a pod belongs to. Shared by the webhook, the `inject`
//! command line and the reconciler, so all three agree.
//!
//! A policy selects the pods of its own namespace whose labels its
//! selector matches. Only valid policies take part, valid merged with the
//! operator's [`PolicyDefaults`] too. When several select
//! the same pod the winner is deterministic and stable: the oldest
//! (`metadata.creationTimestamp`), then the name in byte order — the rule
//! Gateway API uses for conflicting routes. A policy without a creation
//! timestamp (a manifest given to `inject`) counts as newest.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::{KeepalivePolicy, PolicyDefaults};

/// True when `policy` is in `namespace` and its selector matches `labels`.
/// An empty or unparsable selector matches nothing (validation rejects it).
pub fn selects(
    policy: &KeepalivePolicy,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    if policy.namespace().as_deref() != Some(namespace) {
        return false;
    }
    match Selector::try_from(policy.spec.selector.clone()) {
        Ok(selector) => !selector.selects_all() && selector.matches(labels),
        Err(_) => false,
    }
}

/// The sort key that decides between policies selecting the same pod.
fn precedence(policy: &KeepalivePolicy) -> (bool, Option<i64>, String) {
    let created = policy
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    (created.is_none(), created, policy.name_any())
}

/// True when `a` wins a pod over `b`.
pub fn wins_over(a: &KeepalivePolicy, b: &KeepalivePolicy) -> bool {
    precedence(a) < precedence(b)
}

/// The valid policy that owns a pod with these labels in `namespace`, if
/// any. Valid means [`check_with`](crate::KeepalivePolicySpec::check_with)
/// the operator's `defaults` passes.
pub fn winner<'a>(
    policies: &'a [Arc<KeepalivePolicy>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    defaults: &PolicyDefaults,
) -> Option<&'a Arc<KeepalivePolicy>> {
    policies
        .iter()
        .filter(|p| selects(p, namespace, labels) && p.spec.check_with(defaults).is_ok())
        .min_by_key(|p| precedence(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn policy(name: &str, created: Option<i64>, selector: &str) -> Arc<KeepalivePolicy> {
        let spec = serde_yaml::from_str(&format!("selector: {selector}\nport: grpc\n")).unwrap();
        let mut p = KeepalivePolicy::new(name, spec);
        p.metadata.namespace = Some("ns".into());
        p.metadata.creation_timestamp = created.map(|s| Time(Timestamp::from_second(s).unwrap()));
        Arc::new(p)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn oldest_matching_policy_wins_then_name() {
        let ps = vec![
            policy("b", Some(200), "{matchLabels: {app: a}}"),
            policy("c", Some(100), "{matchLabels: {app: a}}"),
            policy(
                "a",
                Some(100),
                "{matchExpressions: [{key: app, operator: In, values: [a]}]}",
            ),
        ];
        let w = winner(
            &ps,
            "ns",
            &labels(&[("app", "a")]),
            &PolicyDefaults::default(),
        )
        .unwrap();
        assert_eq!(w.name_any(), "a");
        assert!(wins_over(&ps[2], &ps[1]));
        assert!(!wins_over(&ps[0], &ps[1]));
    }

    #[test]
    fn policies_without_timestamp_lose_to_created_ones() {
        let ps = vec![
            policy("a", None, "{matchLabels: {app: a}}"),
            policy("z", Some(5), "{matchLabels: {app: a}}"),
        ];
        assert_eq!(
            winner(
                &ps,
                "ns",
                &labels(&[("app", "a")]),
                &PolicyDefaults::default()
            )
            .unwrap()
            .name_any(),
            "z"
        );
    }

    #[test]
    fn other_namespaces_empty_selectors_and_invalid_policies_select_nothing() {
        let empty = policy("e", Some(1), "{}");
        assert!(!selects(&empty, "ns", &labels(&[("app", "a")])));
        let p = policy("p", Some(1), "{matchLabels: {app: a}}");
        assert!(!selects(&p, "other", &labels(&[("app", "a")])));
        let mut invalid = (*policy("i", Some(0), "{matchLabels: {app: a}}")).clone();
        invalid.spec.policy.server.time = Some("10ms".parse().unwrap());
        let ps = vec![Arc::new(invalid), p];
        assert_eq!(
            winner(
                &ps,
                "ns",
                &labels(&[("app", "a")]),
                &PolicyDefaults::default()
            )
            .unwrap()
            .name_any(),
            "p"
        );
    }

    #[test]
    fn a_policy_invalid_only_with_the_operator_defaults_selects_nothing() {
        let mut short = (*policy("s", Some(0), "{matchLabels: {app: a}}")).clone();
        short.spec.policy.drain.timeout = Some("8s".parse().unwrap());
        let other = policy("p", Some(1), "{matchLabels: {app: a}}");
        let ps = vec![Arc::new(short), other];
        let app = labels(&[("app", "a")]);
        let none = PolicyDefaults::default();
        assert_eq!(winner(&ps, "ns", &app, &none).unwrap().name_any(), "s");
        let ack = PolicyDefaults::new(goaway_transport::policy::DrainPolicy {
            goaway_ack_timeout: Some("10s".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(winner(&ps, "ns", &app, &ack).unwrap().name_any(), "p");
    }
}
