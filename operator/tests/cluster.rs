//! Opt-in: against a real cluster when `KUBECONFIG` is set (skipped with
//! a message otherwise). Installs the CRD, runs the controller in-process
//! in a scratch namespace, and checks the ConfigMap, the status, CEL
//! rejection by the real API server, and garbage collection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use goaway_operator::{KeepalivePolicy, controller, metrics::Metrics, shutdown};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

async fn wait<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_works_against_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!(
            "skipped: set KUBECONFIG to run the real-cluster suite (it installs the KeepalivePolicy CRD and uses a scratch namespace)"
        );
        return;
    }
    let client = Client::try_default()
        .await
        .expect("cluster from KUBECONFIG");
    let apply = PatchParams::apply("goaway-e2e").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "keepalivepolicies.goaway.dev",
        &apply,
        &Patch::Apply(goaway_operator::crd::definition()),
    )
    .await
    .unwrap();
    wait("CRD established", async || {
        let crd = crds.get("keepalivepolicies.goaway.dev").await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;

    let ns = format!("goaway-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns,
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await
        .unwrap();

    let (stop, signal) = shutdown::channel();
    let task = tokio::spawn(controller::run(
        client.clone(),
        Some(ns.clone()),
        Default::default(),
        Arc::new(Metrics::default()),
        Some("e2e".into()),
        signal.wait(),
    ));

    let policies: Api<KeepalivePolicy> = Api::namespaced(client.clone(), &ns);
    let bad = json!({"apiVersion": "goaway.dev/v1alpha1", "kind": "KeepalivePolicy", "metadata": {"name": "bad"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "port": "grpc", "server": {"time": "10ms"}}});
    let err = policies
        .patch("bad", &apply, &Patch::Apply(bad))
        .await
        .expect_err("CEL accepted server.time 10ms");
    assert!(err.to_string().contains("server.time"), "{err}");

    let good = json!({"apiVersion": "goaway.dev/v1alpha1", "kind": "KeepalivePolicy", "metadata": {"name": "grpc"},
        "spec": {"selector": {"matchLabels": {"app": "api"}}, "port": "grpc", "server": {"maxConnectionAge": "30m"}}});
    policies
        .patch("grpc", &apply, &Patch::Apply(good))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = wait("ConfigMap", async || {
        cms.get_opt("goaway-grpc").await.ok().flatten()
    })
    .await;
    assert_eq!(
        cm.data.unwrap()["policy.yaml"],
        "server:\n  maxConnectionAge: 30m0s\n"
    );
    wait("Ready=True", async || {
        let p = policies.get("grpc").await.ok()?;
        (p.condition("Ready")?.status == "True").then_some(())
    })
    .await;

    policies
        .delete("grpc", &DeleteParams::default())
        .await
        .unwrap();
    wait("ConfigMap garbage-collected", async || {
        cms.get_opt("goaway-grpc")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    stop.fire();
    task.await.unwrap();
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}
