//! The RBAC cross-check: the (Cluster)Roles bound to the operator's
//! ServiceAccount grant exactly `goaway_operator::rbac::RBAC`, in the scope
//! Kubernetes needs, for every way the chart can run the operator.

use std::collections::{BTreeMap, BTreeSet};

use goaway_operator::cli::{RunArgs, TlsMode};
use goaway_operator::rbac::{Needed, RBAC, Rule, Scope};
use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};

use crate::helm::{render, render_all, render_error};
use crate::rendered::Rendered;
use crate::{NAMESPACE, RELEASE};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Place {
    Cluster,
    Namespace(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Grant {
    pub place: Place,
    pub group: String,
    pub resource: String,
    pub verb: String,
}

/// Kubernetes' own scoping of the resources the operator touches.
fn cluster_scoped(resource: &str) -> bool {
    match resource.split('/').next().unwrap_or_default() {
        "mutatingwebhookconfigurations" | "namespaces" | "tokenreviews" => true,
        "keepalivepolicies" | "configmaps" | "pods" | "services" | "events" | "leases"
        | "secrets" | "endpointslices" | "deployments" => false,
        other => panic!("rbac::RBAC names {other}: say here whether it is cluster-scoped"),
    }
}

/// Whether the operator, run with `args`, uses the rule at all, as the
/// rule itself says (`rbac::Needed`).
fn used(rule: &Rule, args: &RunArgs) -> bool {
    match rule.needed {
        Needed::Always => true,
        Needed::TlsModeGenerate => args.tls_mode == TlsMode::Generate,
        Needed::LeaderElection => args.leader_election,
        Needed::ControlChannel => args.control_channel,
        Needed::RedirectProbe => args.probes_redirect(),
        Needed::OwnerDeployment => args.owner_deployment().is_some(),
    }
}

/// rbac::RBAC, for the operator run with `args`, placed where Kubernetes
/// needs it: per watched namespace (or cluster-wide), cluster-wide for
/// cluster-scoped resources, the operator's namespace for its own objects.
fn expected_grants(args: &RunArgs) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in RBAC {
        if !used(rule, args) {
            continue;
        }
        let place = match rule.scope {
            Scope::OperatorNamespace => Place::Namespace(args.namespace.clone()),
            Scope::Cluster if cluster_scoped(rule.resource) => Place::Cluster,
            Scope::Cluster => args
                .watch_namespace
                .clone()
                .map_or(Place::Cluster, Place::Namespace),
        };
        for verb in rule.verbs {
            out.insert(Grant {
                place: place.clone(),
                group: rule.api_group.into(),
                resource: rule.resource.into(),
                verb: verb.to_string(),
            });
        }
    }
    out
}

/// What the rendered bindings give the operator's ServiceAccount, with the
/// resourceNames each grant is limited to (None: any name).
pub(crate) fn granted(r: &Rendered) -> BTreeMap<Grant, Option<BTreeSet<String>>> {
    let sa = r
        .pod()
        .service_account_name
        .clone()
        .expect("serviceAccountName");
    let is_operator = |s: &Subject| {
        s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(&r.namespace)
    };
    let mut out: BTreeMap<Grant, Option<BTreeSet<String>>> = BTreeMap::new();
    let mut add = |rules: &[PolicyRule], place: Place| {
        for rule in rules {
            assert_eq!(rule.non_resource_urls, None);
            let names = rule
                .resource_names
                .clone()
                .filter(|n| !n.is_empty())
                .map(|n| n.into_iter().collect::<BTreeSet<_>>());
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        assert!(
                            ![group, resource, verb].iter().any(|s| s.contains('*')),
                            "wildcard in {rule:?}"
                        );
                        let grant = Grant {
                            place: place.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                        };
                        let entry = out.entry(grant).or_insert_with(|| names.clone());
                        *entry = match (entry.take(), &names) {
                            (Some(mut a), Some(b)) => {
                                a.extend(b.iter().cloned());
                                Some(a)
                            }
                            _ => None,
                        };
                    }
                }
            }
        }
    };
    let cluster_role = |name: &str| {
        r.cluster_roles
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("binding to a ClusterRole {name} the chart does not make"))
    };
    for b in &r.cluster_role_bindings {
        let subjects = b.subjects.as_deref().unwrap_or_default();
        assert!(
            !subjects.is_empty() && subjects.iter().all(is_operator),
            "a ClusterRoleBinding for someone else: {subjects:?}"
        );
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let role = cluster_role(&b.role_ref.name);
        add(role.rules.as_deref().unwrap_or_default(), Place::Cluster);
    }
    for b in &r.role_bindings {
        let subjects = b.subjects.as_deref().unwrap_or_default();
        assert!(
            !subjects.is_empty() && subjects.iter().all(is_operator),
            "a RoleBinding for someone else: {subjects:?}"
        );
        let ns = b.metadata.namespace.clone().expect("RoleBinding namespace");
        let rules = match b.role_ref.kind.as_str() {
            "Role" => r
                .roles
                .iter()
                .find(|role| {
                    role.metadata.name.as_deref() == Some(&b.role_ref.name)
                        && role.metadata.namespace.as_deref() == Some(&ns)
                })
                .unwrap_or_else(|| panic!("binding to a missing Role {}", b.role_ref.name))
                .rules
                .clone(),
            _ => cluster_role(&b.role_ref.name).rules.clone(),
        };
        add(rules.as_deref().unwrap_or_default(), Place::Namespace(ns));
    }
    out
}

/// The RBAC cross-check: exactly rbac::RBAC, no more, no less, in the
/// right scope; named objects pinned to the names the operator is given.
fn assert_rbac_is_exactly_what_the_operator_uses(r: &Rendered, case: &str) {
    let (args, _) = r.operator_args();
    let granted = granted(r);
    let have: BTreeSet<Grant> = granted.keys().cloned().collect();
    let want = expected_grants(&args);
    let extra: Vec<_> = have.difference(&want).collect();
    let missing: Vec<_> = want.difference(&have).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{case}: RBAC differs from goaway_operator::rbac::RBAC\n  granted but unused: {extra:#?}\n  used but not granted: {missing:#?}"
    );
    for (grant, names) in &granted {
        let name_of_object = match grant.resource.as_str() {
            "leases" => Some(&args.lease_name),
            "secrets" => Some(&args.tls_secret),
            "mutatingwebhookconfigurations" => Some(&args.webhook_config),
            "deployments" => args.owner_deployment.as_ref(),
            _ => None,
        };
        match grant.verb.as_str() {
            // RBAC cannot check a name on these: a resourceNames rule
            // would silently deny them.
            "create" | "list" | "watch" | "deletecollection" => {
                assert_eq!(names, &None, "{case}: {grant:?} limited to {names:?}")
            }
            _ => match name_of_object {
                Some(name) => assert_eq!(
                    names,
                    &Some(BTreeSet::from([name.clone()])),
                    "{case}: {grant:?} should be pinned to {name}"
                ),
                None => assert_eq!(names, &None, "{case}: {grant:?}"),
            },
        }
    }
    // Roles nobody binds to the operator are the aggregated user roles.
    let bound: BTreeSet<&str> = r
        .cluster_role_bindings
        .iter()
        .map(|b| b.role_ref.name.as_str())
        .chain(r.role_bindings.iter().map(|b| b.role_ref.name.as_str()))
        .collect();
    for role in &r.roles {
        assert!(
            bound.contains(role.metadata.name.as_deref().unwrap()),
            "{case}: unbound Role"
        );
    }
    for role in &r.cluster_roles {
        let name = role.metadata.name.as_deref().unwrap();
        if bound.contains(name) {
            continue;
        }
        let aggregated =
            role.metadata.labels.iter().flatten().any(|(k, v)| {
                k.starts_with("rbac.authorization.k8s.io/aggregate-to-") && v == "true"
            });
        assert!(
            aggregated,
            "{case}: ClusterRole {name} is neither bound nor aggregated"
        );
        for rule in role.rules.iter().flatten() {
            assert_eq!(
                rule.api_groups.as_deref(),
                Some(&["goaway.dev".to_string()][..])
            );
            assert_eq!(rule.resource_names, None);
        }
    }
    // The ServiceAccount bound is the one made (or named) for the pods.
    if let Some(sa) = r.service_accounts.first() {
        assert_eq!(sa.metadata.name, r.pod().service_account_name);
    }
}

#[test]
fn rbac_grants_exactly_the_permissions_the_operator_code_uses() {
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
            "one namespace, cert-manager",
            RELEASE,
            NAMESPACE,
            "watchNamespace: shop\nwebhook: {tls: {mode: certManager}}",
        ),
        (
            "its own namespace",
            RELEASE,
            NAMESPACE,
            "watchNamespace: goaway-system",
        ),
        (
            "no leader election",
            RELEASE,
            NAMESPACE,
            "leaderElection: {enabled: false}\nreplicaCount: 1",
        ),
        (
            "no leader election, cert-manager",
            RELEASE,
            NAMESPACE,
            "leaderElection: {enabled: false}\nreplicaCount: 1\nwebhook: {tls: {mode: certManager}}",
        ),
        (
            "no control channel",
            RELEASE,
            NAMESPACE,
            "control: {enabled: false}",
        ),
        (
            "one namespace, no control channel",
            RELEASE,
            NAMESPACE,
            "watchNamespace: shop\ncontrol: {enabled: false}",
        ),
        (
            "existing ServiceAccount",
            "gw",
            "platform",
            "serviceAccount: {create: false, name: platform-goaway}\nrbac: {aggregateToDefaultRoles: false}",
        ),
        (
            "redirect forbidden",
            RELEASE,
            NAMESPACE,
            "agent: {forbidRedirect: true}",
        ),
        (
            "no admission policies",
            RELEASE,
            NAMESPACE,
            "rbac: {admissionPolicy: {enabled: false}}",
        ),
        (
            "no admission policies, one namespace",
            RELEASE,
            NAMESPACE,
            "rbac: {admissionPolicy: {enabled: false}}\nwatchNamespace: shop",
        ),
    ];
    let renders = render_all(
        &cases
            .iter()
            .map(|(_, release, ns, values)| (*release, *ns, *values))
            .collect::<Vec<_>>(),
    );
    for ((case, ..), r) in cases.iter().zip(&renders) {
        assert_rbac_is_exactly_what_the_operator_uses(r, case);
    }
    // Spot checks of the scoping the cross-check derives.
    // One namespace and no caBundle to write: the ClusterRole only reads
    // namespaces' metadata (their Pod Security level), reviews agents'
    // tokens (TokenReviews are not namespaced) and reads the webhook
    // configuration (readiness checks its caBundle), nothing more.
    let r = render("watchNamespace: shop\nwebhook: {tls: {mode: certManager}}");
    let cluster = r
        .cluster_roles
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("goaway-operator"))
        .expect("the operator's ClusterRole");
    let resources: Vec<&str> = cluster
        .rules
        .iter()
        .flatten()
        .flat_map(|rule| rule.resources.iter().flatten().map(String::as_str))
        .collect();
    assert_eq!(
        resources,
        [
            "namespaces",
            "tokenreviews",
            "mutatingwebhookconfigurations"
        ]
    );
    let webhook_config_verbs: Vec<&str> = cluster
        .rules
        .iter()
        .flatten()
        .filter(|rule| {
            rule.resources
                .iter()
                .flatten()
                .any(|r| r == "mutatingwebhookconfigurations")
        })
        .flat_map(|rule| rule.verbs.iter().map(String::as_str))
        .collect();
    assert_eq!(webhook_config_verbs, ["get"]);
    assert_eq!(r.cluster_role_bindings.len(), 1);
    assert!(
        r.roles
            .iter()
            .any(|role| role.metadata.namespace.as_deref() == Some("shop"))
    );
    // Creating pods (dry-run redirect probes) is granted only where the
    // admission policies hold it to dry runs of probe pods, and only when
    // redirect is not forbidden anyway.
    let creates_pods = |r: &Rendered| {
        granted(r)
            .keys()
            .any(|g| g.resource == "pods" && g.verb == "create")
    };
    let on = render("");
    assert!(creates_pods(&on));
    assert!(on.operator_args().0.redirect_probe);
    for values in [
        "rbac: {admissionPolicy: {enabled: false}}",
        "agent: {forbidRedirect: true}",
    ] {
        let r = render(values);
        assert!(!creates_pods(&r), "{values}");
        assert!(!r.operator_args().0.probes_redirect(), "{values}");
    }
    let r = render("serviceAccount: {create: false, name: platform-goaway}");
    assert!(r.service_accounts.is_empty());
    assert_eq!(
        r.pod().service_account_name.as_deref(),
        Some("platform-goaway")
    );
    let (kind, message) = render_error("serviceAccount: {create: false}");
    assert_eq!(kind, "HelmRenderError", "{message}");
}
