//! Opt-in, against a real API server (`KUBECONFIG`; see
//! `support::cluster`): the real Helm CLI lints, installs, upgrades with
//! changed values and uninstalls the chart, and the API server accepts
//! every object — the Deployment's pod template included: its pods stay
//! Pending (a node selector no node matches), but kube-controller-manager's
//! ReplicaSet controller must be able to create them. An operator run out
//! of cluster in the release's place — its settings, its ServiceAccount
//! (impersonated) — makes the objects a replica makes for itself, the
//! certificate Secret and the Lease; after the uninstall nothing of the
//! release is left in its namespace.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use support::cluster::{
    Operator, TestNamespace, chart_operator_env, client_or_skip, free_port, helm, install_crd,
    kubectl, kubectl_stdin, ok, rendered, repo_root, wait,
};

/// Keeps the release's own pods Pending on a cluster with a node: the
/// operator under test is the one this test runs.
const NO_NODE: &str = "nodeSelector.goaway-test=no-such-node";

/// The documents of a release's manifest.
fn manifest_docs(manifest: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(manifest)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter(|v: &Value| v.is_object())
        .collect()
}

/// A kubeconfig for the current cluster whose requests impersonate the
/// release's ServiceAccount, so the chart's RBAC and admission policies
/// apply to an operator run with it.
fn impersonating_kubeconfig(docs: &[Value], name: &str) -> String {
    let subject = &rendered(docs, "ClusterRoleBinding")["subjects"][0];
    let user = format!(
        "system:serviceaccount:{}:{}",
        subject["namespace"].as_str().expect("a namespace"),
        subject["name"].as_str().expect("a name")
    );
    let mut config: Value = serde_json::from_str(&ok(
        "kubectl config view",
        kubectl(&["config", "view", "--raw", "--minify", "-o", "json"]),
    ))
    .expect("a kubeconfig");
    config["users"][0]["user"]["as"] = Value::String(user);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.kubeconfig"));
    std::fs::write(&path, config.to_string()).expect("write the kubeconfig");
    path.to_str().expect("a UTF-8 path").to_string()
}

/// The uids of `meta`'s owners.
fn owner_uids(meta: &ObjectMeta) -> Vec<String> {
    meta.owner_references
        .iter()
        .flatten()
        .map(|r| r.uid.clone())
        .collect()
}

/// Everything of every namespaced kind in `namespace`, as `kind/name`,
/// but Events (records of what happened, which expire on their own).
fn everything_in(namespace: &str) -> BTreeSet<String> {
    let kinds = ok(
        "kubectl api-resources",
        kubectl(&[
            "api-resources",
            "--verbs=list",
            "--namespaced",
            "-o",
            "name",
        ]),
    );
    let kinds: Vec<&str> = kinds
        .lines()
        .filter(|k| *k != "events" && *k != "events.events.k8s.io")
        .collect();
    ok(
        "kubectl get everything",
        kubectl(&["get", &kinds.join(","), "-n", namespace, "-o", "name"]),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The objects of a release's manifest, as `kind/name`.
fn manifest_objects(manifest: &str) -> Vec<(String, String, Option<String>)> {
    serde_yaml::Deserializer::from_str(manifest)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter(|v: &Value| v.is_object())
        .map(|v| {
            (
                v["kind"].as_str().unwrap_or_default().to_string(),
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["metadata"]["namespace"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Every object of the release exists on the server (`kubectl get -f`).
fn all_stored(manifest: &str, namespace: &str) {
    let out = ok(
        "kubectl get -f <release manifest>",
        kubectl_stdin(&["get", "-n", namespace, "-f", "-", "-o", "name"], manifest),
    );
    let objects = manifest_objects(manifest);
    assert_eq!(out.lines().count(), objects.len(), "{out}\n{objects:?}");
}

/// Pods of the release the ReplicaSet controller created.
async fn operator_pods(pods: &Api<Pod>, count: usize) {
    wait(&format!("{count} operator pods created"), async || {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await
            .ok()?;
        (list.items.len() >= count).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_upgrades_and_uninstalls_the_chart() {
    let Some(client) = client_or_skip("helm").await else {
        return;
    };
    install_crd(&client).await;
    let chart = repo_root().join("charts/goaway");
    let chart = chart.to_str().expect("a UTF-8 path");
    ok("helm lint", helm(&["lint", "--strict", chart]));

    let ns = TestNamespace::new(&client, "helm", json!({})).await;
    let release = format!("goaway-e2e-helm-{}", std::process::id());
    // watchNamespace keeps this release's webhook to its own namespace
    // (other tests run beside it) and makes its permissions a Role.
    let watch = format!("watchNamespace={}", ns.name);
    ok(
        "helm install",
        helm(&[
            "install", &release, chart, "-n", &ns.name, "--set", &watch, "--set", NO_NODE,
        ]),
    );
    let manifest = ok(
        "helm get manifest",
        helm(&["get", "manifest", &release, "-n", &ns.name]),
    );
    all_stored(&manifest, &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let operator = format!("{release}-operator");
    let deployment = deployments.get(&operator).await.expect("the Deployment");
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    roles
        .get(&operator)
        .await
        .expect("a Role in the watched namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    operator_pods(&pods, 2).await;

    // A replica's own objects: the certificate Secret and the Lease,
    // owned by the Deployment. The operator runs as the release's
    // ServiceAccount with the release's settings.
    let docs = manifest_docs(&manifest);
    let mut env = chart_operator_env(&docs, &ns.name, "helm-operator-0");
    env.push((
        "KUBECONFIG".into(),
        impersonating_kubeconfig(&docs, "cluster-helm-operator"),
    ));
    let setting = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the chart sets no {name}"))
    };
    assert_eq!(setting("GOAWAY_OWNER_DEPLOYMENT"), operator);
    let tls_secret = setting("GOAWAY_TLS_SECRET");
    let mut replica = Operator::start_with_env("cluster-helm-operator", free_port(), &[], &env);
    let deployment_uid = deployment.metadata.uid.clone().expect("a uid");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let owned = vec![deployment_uid.clone()];
    wait(
        "the Secret and the Lease, owned by the Deployment",
        async || {
            let secret = secrets.get_opt(&tls_secret).await.ok()??;
            let lease = leases.get_opt(&operator).await.ok()??;
            (owner_uids(&secret.metadata) == owned && owner_uids(&lease.metadata) == owned)
                .then_some(())
        },
    )
    .await;
    assert!(
        !replica
            .log()
            .contains("cannot read the operator's Deployment"),
        "{}",
        replica.log()
    );
    // Its pods are deleted with the Deployment; this one goes now (after
    // the upgrade it would watch every namespace).
    replica.kill();

    // Upgrade with changed values: all namespaces (Role → ClusterRole),
    // three replicas, agent drain defaults, text logs.
    ok(
        "helm upgrade",
        helm(&[
            "upgrade",
            &release,
            chart,
            "-n",
            &ns.name,
            "--set",
            "replicaCount=3",
            "--set",
            "agent.drain.delay=5s",
            "--set",
            "agent.drain.timeout=45s",
            "--set",
            "logFormat=text",
            "--set",
            "leaderElection.leaseDuration=20s",
            "--set",
            NO_NODE,
        ]),
    );
    let manifest = ok(
        "helm get manifest",
        helm(&["get", "manifest", &release, "-n", &ns.name]),
    );
    all_stored(&manifest, &ns.name);
    let deployment = deployments.get(&operator).await.expect("the Deployment");
    let spec = deployment.spec.expect("a spec");
    assert_eq!(spec.replicas, Some(3));
    let env: Vec<(String, Option<String>)> = spec.template.spec.expect("a pod spec").containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    for (name, value) in [
        ("GOAWAY_DEFAULT_DRAIN_DELAY", "5s"),
        ("GOAWAY_DEFAULT_DRAIN_TIMEOUT", "45s"),
        ("GOAWAY_LOG_FORMAT", "text"),
        ("GOAWAY_LEASE_DURATION", "20s"),
    ] {
        assert!(
            env.contains(&(name.to_string(), Some(value.to_string()))),
            "{name}={value} not in {env:?}"
        );
    }
    assert!(
        !env.iter().any(|(n, _)| n == "GOAWAY_WATCH_NAMESPACE"),
        "{env:?}"
    );
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    cluster_roles
        .get(&operator)
        .await
        .expect("a ClusterRole for all namespaces");
    assert!(
        roles.get_opt(&operator).await.expect("get").is_none(),
        "the Role stayed"
    );
    operator_pods(&pods, 3).await;

    ok(
        "helm uninstall",
        helm(&["uninstall", &release, "-n", &ns.name, "--wait"]),
    );
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    wait("the release's objects gone", async || {
        let hook = hooks.get_opt(&operator).await.ok()?;
        let role = cluster_roles.get_opt(&operator).await.ok()?;
        let deployment = deployments.get_opt(&operator).await.ok()?;
        (hook.is_none() && role.is_none() && deployment.is_none()).then_some(())
    })
    .await;
    // Nothing of the release is left in its namespace: the garbage
    // collector deleted the Secret (the CA's key) and the Lease with the
    // Deployment. What stays is what every namespace has.
    let expected: BTreeSet<String> = ["configmap/kube-root-ca.crt", "serviceaccount/default"]
        .map(String::from)
        .into();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = everything_in(&ns.name);
        if left == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left in {} after helm uninstall: {:?}",
            ns.name,
            left.difference(&expected).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Helm never deletes CRDs: policies survive an uninstall.
    let crds = ok(
        "kubectl get crd",
        kubectl_stdin(
            &["get", "crd", "keepalivepolicies.goaway.dev", "-o", "name"],
            "",
        ),
    );
    assert!(crds.contains("keepalivepolicies.goaway.dev"), "{crds}");
    ns.delete().await;
}
