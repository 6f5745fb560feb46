//! The Helm chart (`charts/goaway`) as Helm itself renders it: Helm's Go
//! SDK through helm-python-sdk (`tests/python/helm_render.py`); nothing
//! here evaluates a template. Every rendered object must deserialize into
//! its k8s-openapi type and serialize back unchanged, so a misspelt or
//! misplaced field fails as it would against the API server's schema.
//!
//! The chart is checked against the operator's own code rather than
//! against copies of it: the permission list (`rbac::RBAC`), the command
//! line (the Deployment's environment parsed by `cli::Cli`), the agent
//! defaults, the webhook path, the opt-out label and the CRD generator.
//!
//! Modules: [`helm`] drives Helm, [`rendered`] types its output; the
//! tests are grouped by what they check.

#[path = "chart/admission_policy.rs"]
mod admission_policy;
#[path = "chart/deployment.rs"]
mod deployment;
#[path = "chart/helm.rs"]
mod helm;
#[path = "chart/monitoring.rs"]
mod monitoring;
#[path = "chart/rbac.rs"]
mod rbac;
#[path = "chart/rendered.rs"]
mod rendered;
#[path = "chart/values.rs"]
mod values;
#[path = "chart/webhook.rs"]
mod webhook;

use std::collections::BTreeSet;

use clap::Parser;
use goaway_operator::cli::{Cli, Command as OperatorCommand};
// AGENT_UID: distroless's `nonroot` user, which the images run as and the
// operator runs the injected agent as.
use goaway_operator::inject::{AGENT_UID, ANNOTATION_INJECT, DEFAULT_AGENT_IMAGE};
use goaway_operator::leader::{LeaseConfig, LeaseTiming};
use goaway_tests::repo_root;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::json;

use crate::helm::{lint_all, render, render_all, show};
use crate::rendered::Rendered;
use crate::values::default_leaves;

const RELEASE: &str = "goaway";
const NAMESPACE: &str = "goaway-system";
/// The workspace version, which is the chart's appVersion.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The pod name the downward API would give `--identity`.
const POD_NAME: &str = "goaway-operator-5d8f7c9b4-x2x7q";

// --- Lint and CRD ------------------------------------------------------------

#[test]
fn helm_lint_strict_passes_with_default_and_other_values() {
    let cases = [
        ("", None),
        // Lint does not stop at a template's `fail`: that the admission
        // policies refuse to render for 1.29 is checked with the Helm CLI
        // (operator/tests/cluster_admission_policy.rs).
        ("", Some("v1.29.0")),
        (
            "webhook: {tls: {mode: certManager}}\nwatchNamespace: shop",
            None,
        ),
        ("leaderElection: {enabled: false}\nreplicaCount: 1", None),
        // Lint checks values too, so a bad value is a lint error.
        ("webhook: {timeoutSeconds: 60}", None),
    ];
    let reports = lint_all(&cases);
    for ((values, kube), report) in cases.iter().zip(&reports) {
        assert_eq!(report["total_charts_linted"], 1, "{report}");
        let serious = report["messages"]
            .as_array()
            .expect("lint messages")
            .iter()
            .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            .count();
        let errors = report["errors"].as_array().map_or(0, Vec::len);
        let clean = serious == 0 && errors == 0;
        let valid = !values.contains("60");
        assert_eq!(
            clean, valid,
            "helm lint --strict with {values:?} (Kubernetes {kube:?}): {report}"
        );
    }
}

#[test]
fn chart_ships_the_committed_crd_which_is_the_generated_one() {
    let root = repo_root();
    let committed = std::fs::read_to_string(root.join("crds/keepalivepolicy.yaml")).unwrap();
    let in_chart =
        std::fs::read_to_string(root.join("charts/goaway/crds/keepalivepolicy.yaml")).unwrap();
    assert!(
        in_chart == committed,
        "charts/goaway/crds/keepalivepolicy.yaml differs from crds/keepalivepolicy.yaml; copy it:\n  cp crds/keepalivepolicy.yaml charts/goaway/crds/"
    );
    assert_eq!(
        committed,
        goaway_operator::crd::manifest().unwrap(),
        "crds/keepalivepolicy.yaml is stale; regenerate it with crdgen"
    );
    // What Helm installs from crds/ is exactly that file.
    let crds = show()["crds"].clone();
    let crds = crds.as_array().expect("crds");
    assert_eq!(crds.len(), 1, "{crds:?}");
    assert_eq!(crds[0]["name"], "crds/keepalivepolicy.yaml");
    assert_eq!(crds[0]["data"].as_str(), Some(committed.as_str()));
    let crd: CustomResourceDefinition = serde_yaml::from_str(&committed).unwrap();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("keepalivepolicies.goaway.dev")
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["kap".to_string()]));
}

// --- What is rendered ---------------------------------------------------------

#[test]
fn default_render_is_the_operator_and_nothing_else() {
    let r = render("");
    let expected: BTreeSet<(String, String, String)> = [
        ("Deployment", NAMESPACE, "goaway-operator"),
        ("Service", NAMESPACE, "goaway-operator"),
        ("ServiceAccount", NAMESPACE, "goaway-operator"),
        ("ClusterRole", "", "goaway-operator"),
        ("ClusterRole", "", "goaway-keepalivepolicies-edit"),
        ("ClusterRole", "", "goaway-keepalivepolicies-view"),
        ("ClusterRoleBinding", "", "goaway-operator"),
        ("Role", NAMESPACE, "goaway-operator-self"),
        ("RoleBinding", NAMESPACE, "goaway-operator-self"),
        ("MutatingWebhookConfiguration", "", "goaway-operator"),
        ("PodDisruptionBudget", NAMESPACE, "goaway-operator"),
        (
            "ValidatingAdmissionPolicy",
            "",
            "goaway-operator-configmaps",
        ),
        ("ValidatingAdmissionPolicy", "", "goaway-operator-pods"),
        (
            "ValidatingAdmissionPolicy",
            "",
            "goaway-operator-webhook-config",
        ),
        ("ValidatingAdmissionPolicy", "", "goaway-operator-secrets"),
        (
            "ValidatingAdmissionPolicyBinding",
            "",
            "goaway-operator-configmaps",
        ),
        (
            "ValidatingAdmissionPolicyBinding",
            "",
            "goaway-operator-pods",
        ),
        (
            "ValidatingAdmissionPolicyBinding",
            "",
            "goaway-operator-webhook-config",
        ),
        (
            "ValidatingAdmissionPolicyBinding",
            "",
            "goaway-operator-secrets",
        ),
    ]
    .into_iter()
    .map(|(k, n, m)| (k.to_string(), n.to_string(), m.to_string()))
    .collect();
    assert_eq!(r.inventory(), expected);
    // For a release named goaway the operator's own flag defaults and the
    // chart's names agree.
    let (args, _) = r.operator_args();
    let defaults = match Cli::try_parse_from(["goaway-operator", "run"])
        .unwrap()
        .command
    {
        OperatorCommand::Run(a) => a,
        _ => unreachable!(),
    };
    assert_eq!(args.webhook_service, defaults.webhook_service);
    assert_eq!(args.webhook_config, defaults.webhook_config);
    assert_eq!(args.lease_name, defaults.lease_name);
    assert_eq!(args.tls_secret, defaults.tls_secret);
    assert_eq!(args.namespace, defaults.namespace);
    // The chart's lease timings are the operator's, and it starts with them.
    assert_eq!(args.lease_timing().unwrap(), LeaseTiming::default());
    assert_eq!(defaults.lease_timing().unwrap(), LeaseTiming::default());
}

/// The names the operator is told (flags) are the names of the objects
/// the chart makes, whatever the release is called.
fn assert_names_agree(r: &Rendered) {
    let (args, _) = r.operator_args();
    let service = r.service();
    assert_eq!(service.metadata.name.as_ref(), Some(&args.webhook_service));
    assert_eq!(service.metadata.namespace.as_ref(), Some(&args.namespace));
    assert_eq!(
        r.webhook_config().metadata.name.as_ref(),
        Some(&args.webhook_config)
    );
    assert_eq!(args.namespace, r.namespace, "--namespace is the release's");
    assert_eq!(args.identity(), POD_NAME, "--identity is the pod's name");
    let client = r.webhook().client_config.service.as_ref().expect("service");
    assert_eq!(client.name, args.webhook_service);
    assert_eq!(client.namespace, args.namespace);
    if args.leader_election {
        assert_eq!(
            args.lease(),
            Some(LeaseConfig {
                name: args.lease_name.clone(),
                namespace: r.namespace.clone(),
                identity: POD_NAME.into(),
            })
        );
    }
    // The Service and the PDB pick exactly this release's operator pods.
    let pod_labels = r.pod_labels();
    assert_eq!(
        pod_labels.get("app.kubernetes.io/instance"),
        Some(&r.release)
    );
    let selector = service.spec.as_ref().unwrap().selector.clone().unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let deployment_selector = &r.deployment().spec.as_ref().unwrap().selector;
    assert_eq!(deployment_selector.match_labels.as_ref(), Some(&selector));
    for pdb in &r.pdbs {
        assert_eq!(
            pdb.spec.as_ref().unwrap().selector.as_ref(),
            Some(deployment_selector)
        );
    }
}

#[test]
fn names_agree_with_the_flags_for_any_release() {
    let cases = [
        (RELEASE, NAMESPACE, ""),
        ("payments", "platform", ""),
        ("goaway", "infra", "fullnameOverride: edge-goaway"),
        ("gw", "gw", "webhook: {tls: {mode: certManager}}"),
        (
            "gw",
            "gw",
            "leaderElection: {enabled: false}\nreplicaCount: 1",
        ),
    ];
    let renders = render_all(&cases);
    for ((_, namespace, _), r) in cases.iter().zip(&renders) {
        assert_names_agree(r);
        for (kind, ns, name) in r.inventory() {
            assert!(name.len() <= 63, "{kind} {name} is too long");
            assert!(ns.is_empty() || ns == *namespace, "{kind} {name} in {ns}");
        }
    }
    assert_eq!(
        renders[1].service().metadata.name.as_deref(),
        Some("payments-goaway-operator")
    );
    assert_eq!(
        renders[2].service().metadata.name.as_deref(),
        Some("edge-goaway-operator")
    );
}

// --- NOTES, images, docs -----------------------------------------------------

/// The heredoc between `<<EOF` and `EOF` in NOTES.txt, dedented.
fn example_policy(notes: &str) -> String {
    let lines: Vec<&str> = notes.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end().ends_with("<<EOF"))
        .expect("a heredoc")
        + 1;
    let end = start
        + lines[start..]
            .iter()
            .position(|l| l.trim() == "EOF")
            .expect("its end");
    let body = &lines[start..end];
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn notes_say_what_to_apply_next_and_how_to_check_and_opt_out() {
    let r = render("");
    let notes = &r.notes;
    let policy: goaway_operator::KeepalivePolicy =
        serde_yaml::from_str(&example_policy(notes)).expect("the example is a KeepalivePolicy");
    policy.spec.check().expect("the example policy is valid");
    assert_ne!(
        policy.spec.policy.drain,
        Default::default(),
        "the example shows the drain settings"
    );
    for needle in [
        "rollout status deployment/goaway-operator",
        "get kap",
        "goaway-agent",
        "rollout restart",
        "kubectl label namespace my-namespace goaway.dev/inject=disabled",
        "goaway.dev/inject=disabled",
        "kube-system",
    ] {
        assert!(
            notes.contains(needle),
            "NOTES.txt lacks {needle:?}:\n{notes}"
        );
    }
    assert!(
        notes.contains(&format!("{ANNOTATION_INJECT}=\"false\"")),
        "{notes}"
    );
    let r = render("watchNamespace: shop");
    let policy: goaway_operator::KeepalivePolicy =
        serde_yaml::from_str(&example_policy(&r.notes)).unwrap();
    assert_eq!(policy.metadata.namespace.as_deref(), Some("shop"));
}

#[test]
fn images_are_the_ones_the_chart_and_the_operator_default_to() {
    let chart = show();
    assert_eq!(
        chart["metadata"]["appVersion"], VERSION,
        "Chart.yaml appVersion is the workspace version"
    );
    let values = &chart["values"];
    for (package, image) in [
        ("goaway-operator", &values["image"]),
        ("goaway-agent", &values["agent"]["image"]),
    ] {
        // The names scripts/release pushes; it stamps the registry and the
        // digests into the packaged chart (tests/tests/release.rs).
        assert_eq!(
            image["repository"],
            json!(format!("ghcr.io/goaway-dev/{package}"))
        );
        // The tag defaults to the appVersion, which is the release's tag.
        assert_eq!(image["tag"], "");
    }
    assert_eq!(
        DEFAULT_AGENT_IMAGE,
        format!("ghcr.io/goaway-dev/goaway-agent:{VERSION}")
    );
}

#[test]
fn chart_readme_documents_every_value() {
    let readme = std::fs::read_to_string(repo_root().join("charts/goaway/README.md")).unwrap();
    // A value is documented by its own path or a parent's (`resources`).
    for leaf in default_leaves() {
        let documented =
            std::iter::successors(Some(leaf.as_str()), |p| p.rsplit_once('.').map(|(a, _)| a))
                .any(|p| readme.contains(&format!("`{p}`")));
        assert!(documented, "charts/goaway/README.md lacks `{leaf}`");
    }
}
