//! The Kubernetes API permissions the operator's code uses, resource by
//! resource, so the Helm chart's ClusterRole and Role can be checked
//! against them (`goaway-operator rbac` prints this list as JSON).

use serde::Serialize;

/// Where a permission is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// In every watched namespace (a ClusterRole, or a Role per namespace
    /// with `--watch-namespace`).
    Cluster,
    /// Only in the operator's own namespace (a Role).
    OperatorNamespace,
}

/// When the operator uses a permission, by the flags it runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Needed {
    /// However the operator runs.
    Always,
    /// Only with `--tls-mode generate` (the certificate Secret and the
    /// caBundle patch, [`crate::tls::secret`]).
    TlsModeGenerate,
    /// Only with `--leader-election` ([`crate::leader`]).
    LeaderElection,
    /// Only with `--control-channel` ([`crate::channel`]).
    ControlChannel,
    /// Only when the webhook probes namespaces before redirect
    /// interception: `--redirect-probe` and not `--forbid-redirect`
    /// ([`crate::cli::RunArgs::probes_redirect`]).
    RedirectProbe,
    /// Only with `--owner-deployment` and a Secret or Lease to own
    /// ([`crate::cli::RunArgs::owner_deployment`], [`crate::owner`]).
    OwnerDeployment,
}

/// One RBAC rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The API group (`""` for core).
    pub api_group: &'static str,
    /// The resource, with `/subresource` when it is one.
    pub resource: &'static str,
    /// The verbs, sorted.
    pub verbs: &'static [&'static str],
    /// Where.
    pub scope: Scope,
    /// When: a chart grants the rule exactly when the operator it runs
    /// needs it.
    pub needed: Needed,
    /// Which code needs it.
    pub why: &'static str,
}

/// Every permission, one entry per resource and condition.
pub const RBAC: &[Rule] = &[
    Rule {
        api_group: "goaway.dev",
        resource: "keepalivepolicies",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        needed: Needed::Always,
        why: "controller and webhook watch policies",
    },
    Rule {
        api_group: "goaway.dev",
        resource: "keepalivepolicies/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
        needed: Needed::Always,
        why: "controller applies status; the control channel records rebalances and drains on it",
    },
    Rule {
        api_group: "",
        resource: "configmaps",
        verbs: &["create", "list", "patch", "watch"],
        scope: Scope::Cluster,
        needed: Needed::Always,
        why: "controller applies and watches the policy ConfigMaps (apply may create)",
    },
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        needed: Needed::Always,
        why: "controller counts and watches selected pods",
    },
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["create"],
        scope: Scope::Cluster,
        needed: Needed::RedirectProbe,
        why: "webhook creates redirect probe pods, as dry runs only, before redirect interception (--redirect-probe)",
    },
    Rule {
        api_group: "",
        resource: "namespaces",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        needed: Needed::Always,
        why: "webhook reads namespaces' labels (metadata: the Pod Security level; a change probes again) before redirect interception",
    },
    Rule {
        api_group: "",
        resource: "services",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        needed: Needed::Always,
        why: "controller reports Services that bypass the agent",
    },
    Rule {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        needed: Needed::Always,
        why: "controller and webhook publish Events",
    },
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["get"],
        scope: Scope::Cluster,
        needed: Needed::ControlChannel,
        why: "control channel reads the pod an agent's token names (--control-channel)",
    },
    Rule {
        api_group: "goaway.dev",
        resource: "keepalivepolicies/status",
        verbs: &["get"],
        scope: Scope::Cluster,
        needed: Needed::ControlChannel,
        why: "control channel reads a policy's status to add a reported drain to status.lastRollout (--control-channel)",
    },
    Rule {
        api_group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        needed: Needed::ControlChannel,
        why: "control channel watches the EndpointSlices of its agents' namespaces (--control-channel)",
    },
    Rule {
        api_group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
        scope: Scope::Cluster,
        needed: Needed::ControlChannel,
        why: "control channel checks agents' tokens (--control-channel)",
    },
    Rule {
        api_group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get"],
        scope: Scope::Cluster,
        needed: Needed::Always,
        why: "readiness checks that the API server could call the webhook through its caBundle",
    },
    Rule {
        api_group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["patch"],
        scope: Scope::Cluster,
        needed: Needed::TlsModeGenerate,
        why: "leader writes the caBundle (--tls-mode generate)",
    },
    Rule {
        api_group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create", "get", "update"],
        scope: Scope::OperatorNamespace,
        needed: Needed::LeaderElection,
        why: "leader election",
    },
    Rule {
        api_group: "",
        resource: "secrets",
        verbs: &["create", "get", "update"],
        scope: Scope::OperatorNamespace,
        needed: Needed::TlsModeGenerate,
        why: "webhook CA and serving certificate (--tls-mode generate)",
    },
    Rule {
        api_group: "apps",
        resource: "deployments",
        verbs: &["get"],
        scope: Scope::OperatorNamespace,
        needed: Needed::OwnerDeployment,
        why: "reads its own Deployment's uid to make it the owner of its Secret and Lease (--owner-deployment)",
    },
];

/// [`RBAC`] as pretty JSON.
pub fn to_json() -> String {
    serde_json::to_string_pretty(RBAC).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_say_what_needed_says() {
        for rule in RBAC {
            let said: Vec<Needed> = [
                ("--tls-mode generate", Needed::TlsModeGenerate),
                ("leader election", Needed::LeaderElection),
                ("--control-channel", Needed::ControlChannel),
                ("--redirect-probe", Needed::RedirectProbe),
                ("--owner-deployment", Needed::OwnerDeployment),
            ]
            .into_iter()
            .filter(|(words, _)| rule.why.contains(words))
            .map(|(_, needed)| needed)
            .collect();
            let said = match said[..] {
                [] => Needed::Always,
                [one] => one,
                _ => panic!("{}: two conditions", rule.resource),
            };
            assert_eq!(rule.needed, said, "{}: {}", rule.resource, rule.why);
        }
    }

    #[test]
    fn the_json_carries_when_each_rule_is_needed() {
        let rules: serde_json::Value = serde_json::from_str(&to_json()).unwrap();
        let needed = |resource: &str| {
            rules
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["resource"] == resource && r["verbs"][0] != "get")
                .map(|r| r["needed"].clone())
        };
        assert_eq!(needed("pods"), Some("always".into()));
        let create_pods = rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods" && r["verbs"] == serde_json::json!(["create"]))
            .map(|r| r["needed"].clone());
        assert_eq!(create_pods, Some("redirectProbe".into()));
        assert_eq!(needed("secrets"), Some("tlsModeGenerate".into()));
        assert_eq!(needed("leases"), Some("leaderElection".into()));
        assert_eq!(needed("tokenreviews"), Some("controlChannel".into()));
    }
}
