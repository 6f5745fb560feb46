//! The real kube-runtime `Controller` ([`controller::run`]) against the
//! in-process fake API server: list/watch, server-side apply, the status
//! subresource, label selectors and owner references all take part.

mod support;

use std::sync::Arc;

use goaway_operator::metrics::Metrics;
use goaway_operator::{PolicyDefaults, controller};
use goaway_transport::policy::DrainPolicy;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::eventually;
use support::fake_api::FakeApi;

fn policy(extra: Value) -> Value {
    let mut p = json!({
        "apiVersion": "goaway.dev/v1alpha1",
        "kind": "KeepalivePolicy",
        "metadata": {"name": "grpc", "namespace": "ns"},
        "spec": {"selector": {"matchLabels": {"app": "api"}}, "port": "grpc", "server": {"maxConnectionAge": "30m"}},
    });
    if let (Some(spec), Value::Object(extra)) = (p["spec"].as_object_mut(), extra) {
        spec.extend(extra);
    }
    p
}

fn ready(p: &Value) -> Option<(String, String)> {
    let c = p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((c["status"].as_str()?.into(), c["message"].as_str()?.into()))
}

struct Running {
    api: FakeApi,
    client: kube::Client,
    stop: drain_rs::Signal,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Signals the controller to stop and waits for it: its task, and the
    /// drain (every watch released).
    async fn shut_down(self) {
        let ((), joined) = futures_util::future::join(self.stop.drain(), self.task).await;
        joined.unwrap();
    }
}

async fn start() -> Running {
    start_with(PolicyDefaults::default()).await
}

/// The controller of an operator run with policy defaults.
async fn start_with(defaults: PolicyDefaults) -> Running {
    let api = FakeApi::new();
    let client = api.client();
    let (stop, watch) = drain_rs::channel();
    let config = controller::Config {
        namespace: None,
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
    Running {
        api,
        client,
        stop,
        task,
    }
}

async fn apply_policy(client: &kube::Client, body: Value) {
    let api: Api<goaway_operator::KeepalivePolicy> = Api::namespaced(client.clone(), "ns");
    api.patch(
        "grpc",
        &PatchParams::apply("kubectl").force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap();
}

async fn create_pod(client: &kube::Client, name: &str, labels: Value, annotations: Value) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "ns")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_policy_gets_config_map_and_ready_status() {
    let r = start().await;
    apply_policy(&r.client, policy(json!({}))).await;
    let cm = eventually("ConfigMap", async || {
        r.api.get("configmaps", "ns", "goaway-grpc")
    })
    .await;
    assert_eq!(
        cm["data"]["policy.yaml"],
        "server:\n  maxConnectionAge: 30m0s\n"
    );
    let owner_uid = &cm["metadata"]["ownerReferences"][0]["uid"];
    let p = eventually("Ready=True", async || {
        r.api
            .get("keepalivepolicies", "ns", "grpc")
            .filter(|p| ready(p).is_some())
    })
    .await;
    assert_eq!(&p["metadata"]["uid"], owner_uid);
    assert_eq!(ready(&p).unwrap().0, "True");
    assert_eq!(p["status"]["observedGeneration"], 1);
    assert_eq!(p["status"]["configMap"], "goaway-grpc");
    assert_eq!(p["status"]["matchedPods"], 0);
    // The Event follows the status write.
    eventually("a PolicyRendered Event", async || {
        r.api
            .list("events")
            .iter()
            .any(|e| e["reason"] == "PolicyRendered")
            .then_some(())
    })
    .await;

    // Deleting the policy deletes its ConfigMap through the owner reference.
    r.api.delete("keepalivepolicies", "ns", "grpc");
    assert!(r.api.get("configmaps", "ns", "goaway-grpc").is_none());
    r.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_appearing_update_the_counts() {
    let r = start().await;
    apply_policy(&r.client, policy(json!({}))).await;
    eventually("Ready", async || {
        r.api
            .get("keepalivepolicies", "ns", "grpc")
            .and_then(|p| ready(&p))
    })
    .await;

    create_pod(
        &r.client,
        "a",
        json!({"app": "api"}),
        json!({"goaway.dev/injected": "grpc"}),
    )
    .await;
    create_pod(&r.client, "b", json!({"app": "api"}), json!({})).await;
    create_pod(&r.client, "c", json!({"app": "web"}), json!({})).await;
    let p = eventually("matchedPods 2", async || {
        r.api
            .get("keepalivepolicies", "ns", "grpc")
            .filter(|p| p["status"]["matchedPods"] == 2 && p["status"]["injectedPods"] == 1)
    })
    .await;
    assert_eq!(p["status"]["selector"], "app=api");

    r.api.delete("pods", "ns", "a");
    eventually("matchedPods 1", async || {
        r.api
            .get("keepalivepolicies", "ns", "grpc")
            .filter(|p| p["status"]["matchedPods"] == 1 && p["status"]["injectedPods"] == 0)
    })
    .await;
    r.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_policy_updates_config_map_and_observed_generation() {
    let r = start().await;
    apply_policy(&r.client, policy(json!({}))).await;
    eventually("generation 1 observed", async || {
        r.api
            .get("keepalivepolicies", "ns", "grpc")
            .filter(|p| p["status"]["observedGeneration"] == 1)
    })
    .await;

    apply_policy(&r.client, policy(json!({"drain": {"delay": "5s"}}))).await;
    let p = eventually("generation 2 observed", async || {
        r.api
            .get("keepalivepolicies", "ns", "grpc")
            .filter(|p| p["status"]["observedGeneration"] == 2)
    })
    .await;
    assert_eq!(p["metadata"]["generation"], 2);
    let cm = r.api.get("configmaps", "ns", "goaway-grpc").unwrap();
    assert_eq!(
        cm["data"]["policy.yaml"],
        "server:\n  maxConnectionAge: 30m0s\ndrain:\n  delay: 5s\n"
    );

    // A ConfigMap edited by hand is put back.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(r.client.clone(), "ns");
    cms.patch(
        "goaway-grpc",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"policy.yaml": "{}"}})),
    )
    .await
    .unwrap();
    eventually("ConfigMap restored", async || {
        r.api
            .get("configmaps", "ns", "goaway-grpc")
            .filter(|c| c["data"]["policy.yaml"] != "{}")
    })
    .await;
    r.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policy_is_ready_false_and_keeps_the_last_good_config_map() {
    let r = start().await;
    apply_policy(&r.client, policy(json!({}))).await;
    let good = eventually("ConfigMap", async || {
        r.api.get("configmaps", "ns", "goaway-grpc")
    })
    .await;

    apply_policy(&r.client, policy(json!({"upstream": {"time": "2s"}}))).await;
    let p = eventually("Ready=False", async || {
        r.api
            .get("keepalivepolicies", "ns", "grpc")
            .filter(|p| ready(p).is_some_and(|(s, _)| s == "False"))
    })
    .await;
    let (_, message) = ready(&p).unwrap();
    assert_eq!(
        message,
        "spec.upstream.time: must be at least 10s, gRPC's minimum (got 2s)"
    );
    assert_eq!(p["status"]["observedGeneration"], 2);
    let cm = r.api.get("configmaps", "ns", "goaway-grpc").unwrap();
    assert_eq!(cm["data"], good["data"]);
    assert_eq!(
        cm["metadata"]["resourceVersion"],
        good["metadata"]["resourceVersion"]
    );
    eventually("an InvalidPolicy warning Event", async || {
        r.api
            .list("events")
            .iter()
            .any(|e| e["reason"] == "InvalidPolicy" && e["type"] == "Warning")
            .then_some(())
    })
    .await;
    r.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_defaults_fill_the_config_map_and_a_policy_they_break_goes_ready_false() {
    let defaults = PolicyDefaults::new(DrainPolicy {
        delay: Some("10s".parse().unwrap()),
        timeout: Some("1m".parse().unwrap()),
        goaway_ack_timeout: Some("10s".parse().unwrap()),
        quiet_period: None,
    })
    .unwrap();
    let r = start_with(defaults).await;
    apply_policy(&r.client, policy(json!({"drain": {"timeout": "45s"}}))).await;
    let p = eventually("Ready=True", async || {
        r.api
            .get("keepalivepolicies", "ns", "grpc")
            .filter(|p| ready(p).is_some_and(|(s, _)| s == "True"))
    })
    .await;
    assert_eq!(p["status"]["observedGeneration"], 1);
    // The policy's own timeout; the operator's delay and ack bound.
    let good = r.api.get("configmaps", "ns", "goaway-grpc").unwrap();
    assert_eq!(
        good["data"]["policy.yaml"],
        "server:\n  maxConnectionAge: 30m0s\ndrain:\n  delay: 10s\n  timeout: 45s\n  goawayAckTimeout: 10s\n"
    );

    // 8s is a valid drain.timeout as written (above the built-in 5s ack
    // bound) but not with this operator's 10s.
    apply_policy(&r.client, policy(json!({"drain": {"timeout": "8s"}}))).await;
    let p = eventually("Ready=False", async || {
        r.api
            .get("keepalivepolicies", "ns", "grpc")
            .filter(|p| ready(p).is_some_and(|(s, _)| s == "False"))
    })
    .await;
    assert_eq!(p["status"]["observedGeneration"], 2);
    let (_, message) = ready(&p).unwrap();
    assert!(
        message.starts_with("spec.drain.goawayAckTimeout: must be less than drain.timeout (8s)")
            && message.ends_with(
                "so it is the operator default 10s (--default-drain-goaway-ack-timeout)"
            ),
        "{message}"
    );
    // Running agents keep the last good file.
    let cm = r.api.get("configmaps", "ns", "goaway-grpc").unwrap();
    assert_eq!(cm["data"], good["data"]);
    r.shut_down().await;
}
