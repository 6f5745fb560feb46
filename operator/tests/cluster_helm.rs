//! Opt-in, against a real API server (`KUBECONFIG`; see
//! `support::cluster`): the real Helm CLI lints, installs, upgrades with
//! changed values and uninstalls the chart, and the API server accepts
//! every object — the Deployment's pod template included: with no
//! scheduler the pods stay Pending, but kube-controller-manager's
//! ReplicaSet controller must be able to create them.

mod support;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use support::cluster::{
    Scratch, client_or_skip, helm, install_crd, kubectl_stdin, ok, repo_root, wait,
};

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

    let ns = Scratch::new(&client, "helm", json!({})).await;
    let release = format!("goaway-e2e-helm-{}", std::process::id());
    // watchNamespace keeps this release's webhook to its own namespace
    // (other tests run beside it) and makes its permissions a Role.
    let watch = format!("watchNamespace={}", ns.name);
    ok(
        "helm install",
        helm(&["install", &release, chart, "-n", &ns.name, "--set", &watch]),
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
