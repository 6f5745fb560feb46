//! The ValidatingAdmissionPolicies that hold the operator's ServiceAccount
//! to the objects it writes (admissionpolicy.yaml): whom they apply to,
//! which writes of the chart's own RBAC they cover, and that their CEL
//! names the objects the operator's code writes. What the CEL decides is
//! checked on a real API server (operator/tests/cluster_admission_policy.rs).

use std::collections::{BTreeMap, BTreeSet};

use goaway_operator::MANAGER;
use goaway_operator::controller::LABEL_MANAGED_BY;
use goaway_operator::crd::config_map_name;
use goaway_operator::inject::{
    AgentConfig, LABEL_PROBE, LABEL_PROBE_VALUE, PROBE_NAME_PREFIX, redirect_probe_pod,
};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;

use crate::helm::{render, render_all};
use crate::rbac::granted;
use crate::rendered::Rendered;
use crate::{NAMESPACE, RELEASE};

/// Writes of the operator's RBAC no policy narrows, and why that is fine:
/// Events (at worst misleading Events where the operator works; no access
/// to anything), its policies' status, and Leases in its own namespace
/// (create cannot be pinned by name, but a Lease grants nothing), and
/// TokenReviews (a create that writes nothing: it only asks whether a
/// token the caller already holds is valid).
const LEFT_TO_RBAC: &[(&str, &str)] = &[
    ("events.k8s.io", "events"),
    ("goaway.dev", "keepalivepolicies/status"),
    ("coordination.k8s.io", "leases"),
    ("authentication.k8s.io", "tokenreviews"),
];

/// The admission operation an RBAC write verb is checked at.
fn operation(verb: &str) -> Option<&'static str> {
    match verb {
        "create" => Some("CREATE"),
        "update" | "patch" => Some("UPDATE"),
        "delete" | "deletecollection" => Some("DELETE"),
        _ => None,
    }
}

/// (group, resource) → operations each rendered policy matches.
fn matched(policy: &ValidatingAdmissionPolicy) -> BTreeSet<(String, String, String)> {
    let spec = policy.spec.as_ref().expect("a spec");
    let constraints = spec.match_constraints.as_ref().expect("matchConstraints");
    assert_eq!(constraints.match_policy.as_deref(), Some("Equivalent"));
    let mut out = BTreeSet::new();
    for rule in constraints.resource_rules.iter().flatten() {
        assert_eq!(rule.api_versions.as_deref(), Some(&["v1".to_string()][..]));
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for op in rule.operations.iter().flatten() {
                    out.insert((group.clone(), resource.clone(), op.clone()));
                }
            }
        }
    }
    out
}

/// Every CEL expression of a policy, variables and validations.
fn expressions(policy: &ValidatingAdmissionPolicy) -> String {
    let spec = policy.spec.as_ref().expect("a spec");
    spec.variables
        .iter()
        .flatten()
        .map(|v| v.expression.clone())
        .chain(
            spec.validations
                .iter()
                .flatten()
                .map(|v| v.expression.clone()),
        )
        .collect::<Vec<_>>()
        .join("\n")
}

fn policy<'a>(r: &'a Rendered, suffix: &str) -> Option<&'a ValidatingAdmissionPolicy> {
    let name = format!("{}-{suffix}", r.operator_args().0.webhook_config);
    r.admission_policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
}

fn assert_policies_hold_the_operator_account(r: &Rendered, case: &str) {
    // Bound once each, denying, to every request (no params, no narrower
    // match than the policy's own).
    let names: BTreeSet<&str> = r
        .admission_policies
        .iter()
        .map(|p| p.metadata.name.as_deref().expect("a name"))
        .collect();
    let bound: Vec<&str> = r
        .admission_policy_bindings
        .iter()
        .map(|b| {
            let spec = b.spec.as_ref().expect("a binding spec");
            assert_eq!(
                spec.validation_actions.as_deref(),
                Some(&["Deny".to_string()][..]),
                "{case}"
            );
            assert_eq!(spec.param_ref, None, "{case}");
            assert_eq!(spec.match_resources, None, "{case}");
            spec.policy_name.as_deref().expect("policyName")
        })
        .collect();
    assert_eq!(
        bound.iter().copied().collect::<BTreeSet<_>>(),
        names,
        "{case}"
    );
    assert_eq!(bound.len(), names.len(), "{case}: a policy bound twice");

    // Only requests made as the ServiceAccount the chart's RBAC binds.
    let subjects: BTreeSet<String> = r
        .cluster_role_bindings
        .iter()
        .flat_map(|b| b.subjects.iter().flatten())
        .chain(
            r.role_bindings
                .iter()
                .flat_map(|b| b.subjects.iter().flatten()),
        )
        .map(|s| {
            assert_eq!(s.kind, "ServiceAccount");
            format!(
                "system:serviceaccount:{}:{}",
                s.namespace.as_deref().expect("a namespace"),
                s.name
            )
        })
        .collect();
    assert_eq!(subjects.len(), 1, "{case}: {subjects:?}");
    let user = subjects.first().unwrap();
    let mut covered: BTreeSet<(String, String, String)> = BTreeSet::new();
    for p in &r.admission_policies {
        let spec = p.spec.as_ref().expect("a spec");
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"), "{case}");
        let conditions: Vec<&str> = spec
            .match_conditions
            .iter()
            .flatten()
            .map(|c| c.expression.as_str())
            .collect();
        assert_eq!(
            conditions,
            [format!("request.userInfo.username == '{user}'")],
            "{case}"
        );
        for v in spec.validations.iter().flatten() {
            assert_eq!(v.reason.as_deref(), Some("Forbidden"), "{case}");
            assert!(
                v.message.as_deref().is_some_and(|m| !m.is_empty()),
                "{case}"
            );
        }
        covered.extend(matched(p));
    }

    // Every write the RBAC grants is checked by a policy, unless it is
    // one of the few left to RBAC on purpose; and the policies are about
    // what the operator writes (where they match more operations than
    // RBAC grants, they refuse them, should its RBAC ever grow).
    let mut writes: BTreeMap<(String, String), BTreeSet<&str>> = BTreeMap::new();
    for grant in granted(r).keys() {
        if let Some(op) = operation(&grant.verb) {
            writes
                .entry((grant.group.clone(), grant.resource.clone()))
                .or_default()
                .insert(op);
        }
    }
    for ((group, resource), ops) in &writes {
        if LEFT_TO_RBAC.contains(&(group.as_str(), resource.as_str())) {
            continue;
        }
        for op in ops {
            assert!(
                covered.contains(&(group.clone(), resource.clone(), op.to_string())),
                "{case}: the operator may {op} {group}/{resource} and no policy checks it"
            );
        }
    }
    for (group, resource, _) in &covered {
        assert!(
            writes.contains_key(&(group.clone(), resource.clone())),
            "{case}: a policy for {group}/{resource}, which the operator cannot write"
        );
    }
}

#[test]
fn admission_policies_cover_every_write_the_operator_rbac_grants() {
    let cases = [
        ("defaults", RELEASE, NAMESPACE, ""),
        (
            "cert-manager",
            RELEASE,
            NAMESPACE,
            "webhook: {tls: {mode: certManager}}",
        ),
        ("one namespace", RELEASE, NAMESPACE, "watchNamespace: shop"),
        (
            "no leader election",
            RELEASE,
            NAMESPACE,
            "leaderElection: {enabled: false}\nreplicaCount: 1",
        ),
        (
            "existing ServiceAccount",
            "gw",
            "platform",
            "serviceAccount: {create: false, name: platform-goaway}",
        ),
        (
            "redirect forbidden",
            RELEASE,
            NAMESPACE,
            "agent: {forbidRedirect: true}",
        ),
    ];
    let renders = render_all(
        &cases
            .iter()
            .map(|(_, release, ns, values)| (*release, *ns, *values))
            .collect::<Vec<_>>(),
    );
    for ((case, ..), r) in cases.iter().zip(&renders) {
        assert!(!r.admission_policies.is_empty(), "{case}: on by default");
        assert_policies_hold_the_operator_account(r, case);
    }
    // cert-manager writes the caBundle and the Secret: nothing to check.
    let policies = |r: &Rendered| {
        r.admission_policies
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        policies(&renders[0]),
        [
            "goaway-operator-configmaps",
            "goaway-operator-pods",
            "goaway-operator-webhook-config",
            "goaway-operator-secrets"
        ]
    );
    assert_eq!(
        policies(&renders[1]),
        ["goaway-operator-configmaps", "goaway-operator-pods"]
    );
    // Forbidden redirect: no probes, no pods to create.
    assert_eq!(
        policies(&renders[5]),
        [
            "goaway-operator-configmaps",
            "goaway-operator-webhook-config",
            "goaway-operator-secrets"
        ]
    );
    let r = &renders[4];
    let spec = r.admission_policies[0].spec.as_ref().unwrap();
    assert_eq!(
        spec.match_conditions.as_ref().unwrap()[0].expression,
        "request.userInfo.username == 'system:serviceaccount:platform:platform-goaway'"
    );
}

#[test]
fn admission_policies_allow_the_objects_the_operator_code_writes() {
    let r = render("");
    let (args, _) = r.operator_args();

    // ConfigMaps: controller::apply_config_map's name and label, checked
    // on the object before and after the change, never in kube-system.
    let config_maps = expressions(policy(&r, "configmaps").expect("the ConfigMap policy"));
    let prefix = config_map_name("");
    assert_eq!(config_map_name("api"), format!("{prefix}api"));
    for needle in [
        "[object, oldObject].all(cm, cm == null ||".to_string(),
        format!("cm.metadata.name.startsWith('{prefix}')"),
        format!("cm.metadata.?labels[?'{LABEL_MANAGED_BY}'] == optional.of('{MANAGER}')"),
        "request.namespace != 'kube-system'".to_string(),
    ] {
        assert!(
            config_maps.contains(&needle),
            "the ConfigMap policy lacks {needle:?}:\n{config_maps}"
        );
    }

    // Pods: only dry runs (webhook::redirect_probe), only of the pods
    // inject::redirect_probe_pod builds.
    let pods = expressions(policy(&r, "pods").expect("the pod policy"));
    let probe = redirect_probe_pod(&AgentConfig::default(), "x", true);
    assert_eq!(
        probe.metadata.labels.unwrap_or_default().get(LABEL_PROBE),
        Some(&LABEL_PROBE_VALUE.to_string())
    );
    for needle in [
        "request.operation == 'CREATE' && request.dryRun == true".to_string(),
        format!("object.metadata.name.startsWith('{PROBE_NAME_PREFIX}')"),
        format!("object.metadata.?labels[?'{LABEL_PROBE}'] == optional.of('{LABEL_PROBE_VALUE}')"),
    ] {
        assert!(
            pods.contains(&needle),
            "the pod policy lacks {needle:?}:\n{pods}"
        );
    }

    // The webhook configuration the operator patches (--webhook-config),
    // nothing but caBundle: every field of a v1 MutatingWebhook but
    // clientConfig is compared, and clientConfig's url and service.
    let hook = expressions(policy(&r, "webhook-config").expect("the webhook policy"));
    assert!(
        hook.contains(&format!(
            "request.operation == 'UPDATE' && request.name == '{}'",
            args.webhook_config
        )),
        "{hook}"
    );
    let webhook = serde_json::to_value(r.webhook()).unwrap();
    let mut fields: Vec<&str> = webhook
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // Optional fields the chart leaves out.
    fields.push("matchConditions");
    for field in fields {
        let compared = match field {
            "name" => "o.name == w.name".to_string(),
            "clientConfig" => continue,
            other => format!("o.?{other} == w.?{other}"),
        };
        assert!(hook.contains(&compared), "{field} is not compared:\n{hook}");
    }
    for field in ["url", "service"] {
        let compared = format!("o.clientConfig.?{field} == w.clientConfig.?{field}");
        assert!(hook.contains(&compared), "{hook}");
    }
    assert!(!hook.contains("caBundle"), "{hook}");

    // The certificate Secret (--tls-secret), as tls::secret builds it.
    let secrets = expressions(policy(&r, "secrets").expect("the Secret policy"));
    assert!(
        secrets.contains(&format!("object.metadata.name == '{}'", args.tls_secret)),
        "{secrets}"
    );
    assert!(
        secrets.contains("object.?type == optional.of('kubernetes.io/tls')"),
        "{secrets}"
    );
}

#[test]
fn admission_policies_can_be_turned_off() {
    let renders = render_all(&[
        (RELEASE, NAMESPACE, ""),
        (
            RELEASE,
            NAMESPACE,
            "rbac: {admissionPolicy: {enabled: false}}",
        ),
    ]);
    let (on, off) = (&renders[0], &renders[1]);
    assert!(off.admission_policies.is_empty());
    assert!(off.admission_policy_bindings.is_empty());
    let removed: Vec<String> = on
        .inventory()
        .difference(&off.inventory())
        .map(|(kind, _, _)| kind.clone())
        .collect();
    assert_eq!(removed.len(), 8, "{removed:?}");
    assert!(
        removed
            .iter()
            .all(|k| k.starts_with("ValidatingAdmissionPolicy")),
        "{removed:?}"
    );
    assert!(off.inventory().is_subset(&on.inventory()));
}
