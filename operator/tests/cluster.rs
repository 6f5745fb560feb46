//! Opt-in: the controller against a real API server when `KUBECONFIG` is
//! set (skipped with a message otherwise; `.ci/run` starts a local control
//! plane). Installs the committed CRD, runs the controller in-process in
//! a scratch namespace, and checks what it writes as the API server
//! stores it: the ConfigMap, the status (observedGeneration, Ready,
//! matched and injected pods) through an edit, Ready=False for a policy
//! that only the operator's defaults make invalid, Events, and garbage
//! collection of the ConfigMap by kube-controller-manager.

mod support;

use std::sync::Arc;

use goaway_operator::defaults::PolicyDefaults;
use goaway_operator::{KeepalivePolicy, controller, metrics::Metrics};
use goaway_transport::policy::{DrainPolicy, GoDuration};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, Patch};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::cluster::{
    TestNamespace, UNSCHEDULED, apply_params, client_or_skip, install_crd, kubectl, ok, wait,
};

fn policy_manifest(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "goaway.dev/v1alpha1", "kind": "KeepalivePolicy",
           "metadata": {"name": name}, "spec": spec})
}

/// A pod that needs no node: no scheduler answers to its
/// `schedulerName`, so it stays Pending and unbound even with a node up
/// (`scripts/kube-local up --node`), which is all the controller's
/// counts need. `injected_by` sets the annotation the
/// webhook leaves on pods it injected.
fn pod(name: &str, app: &str, injected_by: Option<&str>) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"schedulerName": UNSCHEDULED,
                 "containers": [{"name": "app", "image": "registry.example/app:1",
                                 "ports": [{"name": "grpc", "containerPort": 8080}]}]}});
    if let Some(policy) = injected_by {
        pod["metadata"]["annotations"] = json!({"goaway.dev/injected": policy});
    }
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_works_against_a_real_cluster() {
    let Some(client) = client_or_skip("controller").await else {
        return;
    };
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "controller", json!({})).await;
    let apply = apply_params();

    // A default ack timeout of 20s: valid on its own, but not with a
    // policy's drain.timeout of 10s — which the CRD accepts, since the API
    // server only knows the built-in 5s.
    let defaults = PolicyDefaults::new(DrainPolicy {
        goaway_ack_timeout: Some("20s".parse::<GoDuration>().expect("a duration")),
        ..DrainPolicy::default()
    })
    .expect("valid defaults");
    let (stop, watch) = drain_rs::channel();
    let config = controller::Config {
        namespace: Some(ns.name.clone()),
        defaults,
        instance: Some("e2e".into()),
        ..controller::Config::default()
    };
    let task = tokio::spawn(controller::run(
        client.clone(),
        Arc::new(Metrics::default()),
        config,
        watch,
    ));

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for (name, injected) in [("api-1", Some("grpc")), ("api-2", None)] {
        pods.patch(name, &apply, &Patch::Apply(pod(name, "api", injected)))
            .await
            .expect("create a pod");
    }
    pods.patch("other", &apply, &Patch::Apply(pod("other", "other", None)))
        .await
        .expect("create a pod");

    let policies: Api<KeepalivePolicy> = Api::namespaced(client.clone(), &ns.name);
    let good = policy_manifest(
        "grpc",
        json!({"selector": {"matchLabels": {"app": "api"}}, "port": "grpc",
               "server": {"maxConnectionAge": "30m"}}),
    );
    policies
        .patch("grpc", &apply, &Patch::Apply(good))
        .await
        .expect("the API server accepts a valid policy");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let cm = wait("the policy's ConfigMap", async || {
        cms.get_opt("goaway-grpc").await.ok().flatten()
    })
    .await;
    let data = cm.data.clone().unwrap_or_default();
    assert!(
        data["policy.yaml"].contains("maxConnectionAge: 30m0s"),
        "{data:?}"
    );
    // Owned by the policy, so the garbage collector can delete it.
    let owner = &cm.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("KeepalivePolicy", "grpc")
    );
    assert_eq!(owner.controller, Some(true));

    let status = wait("status: Ready, 2 matched, 1 injected", async || {
        let p = policies.get("grpc").await.ok()?;
        let s = p.status.clone()?;
        (p.condition("Ready")?.status == "True" && s.matched_pods == 2 && s.injected_pods == 1)
            .then_some((p.metadata.generation, s))
    })
    .await;
    assert_eq!(status.1.observed_generation, status.0);
    assert_eq!(status.1.config_map.as_deref(), Some("goaway-grpc"));

    // An edit: a new generation, observed, and the ConfigMap follows.
    let edited = policy_manifest(
        "grpc",
        json!({"selector": {"matchLabels": {"app": "api"}}, "port": "grpc",
               "server": {"maxConnectionAge": "1h"}}),
    );
    let generation = policies
        .patch("grpc", &apply, &Patch::Apply(edited))
        .await
        .expect("edit the policy")
        .metadata
        .generation;
    assert!(generation > status.0, "{generation:?} after {:?}", status.0);
    wait("the edit observed and rendered", async || {
        let p = policies.get("grpc").await.ok()?;
        let cm = cms.get("goaway-grpc").await.ok()?;
        let rendered = cm
            .data?
            .get("policy.yaml")?
            .contains("maxConnectionAge: 1h0m0s");
        (rendered && p.status?.observed_generation == generation).then_some(())
    })
    .await;

    // Valid for the API server, invalid with the operator's defaults.
    let conflicting = policy_manifest(
        "short-drain",
        json!({"selector": {"matchLabels": {"app": "other"}}, "port": "grpc",
               "drain": {"timeout": "10s"}}),
    );
    policies
        .patch("short-drain", &apply, &Patch::Apply(conflicting))
        .await
        .expect("the CRD accepts drain.timeout 10s");
    let ready = wait("Ready=False for short-drain", async || {
        let p = policies.get("short-drain").await.ok()?;
        let ready = p.condition("Ready")?.clone();
        (ready.status == "False").then_some(ready)
    })
    .await;
    assert_eq!(ready.reason, "InvalidPolicy");
    assert!(
        ready.message.contains("drain.goawayAckTimeout")
            && ready.message.contains("--default-drain-goaway-ack-timeout"),
        "{}",
        ready.message
    );
    assert!(
        cms.get_opt("goaway-short-drain")
            .await
            .expect("get")
            .is_none(),
        "an invalid policy got a ConfigMap"
    );

    // Events, as `kubectl get events` shows them.
    let events = wait("the controller's Events", async || {
        let out = kubectl(&["get", "events", "-n", &ns.name]);
        let text = String::from_utf8(out.stdout).ok()?;
        (text.contains("PolicyRendered") && text.contains("InvalidPolicy")).then_some(text)
    })
    .await;
    assert!(events.contains("keepalivepolicy/grpc"), "{events}");
    assert!(events.contains("keepalivepolicy/short-drain"), "{events}");

    // Deleting the policy: kube-controller-manager's garbage collector
    // deletes the ConfigMap it owns.
    let ((), joined) = futures_util::future::join(stop.drain(), task).await;
    joined.expect("the controller task");
    policies
        .delete("grpc", &DeleteParams::default())
        .await
        .expect("delete the policy");
    wait("the ConfigMap garbage-collected", async || {
        cms.get_opt("goaway-grpc")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let table = ok(
        "kubectl get configmaps",
        kubectl(&["get", "configmaps", "-n", &ns.name]),
    );
    assert!(!table.contains("goaway-grpc"), "{table}");
    ns.delete().await;
}
