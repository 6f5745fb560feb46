//! Opt-in, against a real API server (`KUBECONFIG`; see
//! `support::cluster`): the webhook called by kube-apiserver. The
//! operator runs out of cluster with the chart's own settings (its
//! rendered `GOAWAY_*` environment) and the chart's development value
//! `webhook.url`, so the chart's MutatingWebhookConfiguration calls
//! https://127.0.0.1:<port>/mutate. The operator creates its CA and
//! serving certificate Secret and writes the caBundle itself (generate
//! mode). Then pods are created and read back as the API server stored
//! them.

mod support;

use std::time::Duration;

use goaway_operator::KeepalivePolicy;
use goaway_operator::inject::{ANNOTATION_INJECTED, CONTAINER_NAME, VOLUME_NAME};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, Patch, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::cluster::{
    Operator, Scratch, UNSCHEDULED, apply_params, chart_operator_env, client_or_skip, free_port,
    helm_template, install_crd, kubectl_stdin, ok, rendered, wait, wait_for,
};

fn pod(name: &str, labels: Value, annotations: Value, host_network: bool) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            // Unbound even with a node up: the scheduler would otherwise
            // set nodeName between create and read-back.
            "schedulerName": UNSCHEDULED,
            "hostNetwork": host_network,
            "containers": [{"name": "app", "image": "registry.example/app:1",
                            "ports": [{"name": "grpc", "containerPort": 8080}]}]}
    }))
    .expect("a pod")
}

/// True when the stored pod carries nothing of the injection.
fn untouched(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref().expect("a pod spec");
    pod.annotations().get(ANNOTATION_INJECTED).is_none()
        && spec
            .init_containers
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        && spec.containers.len() == 1
        && spec.containers[0].lifecycle.is_none()
        && !spec.volumes.iter().flatten().any(|v| v.name == VOLUME_NAME)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_calls_the_webhook_and_stores_the_injected_pod() {
    let Some(client) = client_or_skip("webhook").await else {
        return;
    };
    install_crd(&client).await;
    let system = Scratch::new(&client, "webhook-system", json!({})).await;
    let apps = Scratch::new(&client, "webhook-apps", json!({})).await;

    // The chart, as a developer renders it for an operator on this machine:
    // the webhook by URL, watching the apps namespace only.
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/mutate");
    let release = format!("goaway-e2e-{}", std::process::id());
    let docs = helm_template(
        &release,
        &system.name,
        &[
            &format!("webhook.url={url}"),
            &format!("watchNamespace={}", apps.name),
        ],
    );
    let hook = rendered(&docs, "MutatingWebhookConfiguration");
    let hook_name = hook["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_string();
    assert_eq!(hook["webhooks"][0]["clientConfig"]["url"], url.as_str());
    ok(
        "kubectl apply the MutatingWebhookConfiguration",
        kubectl_stdin(&["apply", "--server-side", "-f", "-"], &hook.to_string()),
    );
    let env = chart_operator_env(&docs, &system.name, "operator-webhook-e2e");
    assert!(
        env.contains(&("GOAWAY_WEBHOOK_HOSTS".into(), "127.0.0.1".into())),
        "{env:?}"
    );
    // On loopback, at the URL's port: the flags win over the chart's
    // 0.0.0.0 addresses.
    let mut operator = Operator::start_with_env("cluster-webhook-operator", port, &[], &env);

    // The operator made its Secret and wrote the CA as the caBundle.
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let ca_bundle = wait("the caBundle written by the operator", async || {
        let hook = hooks.get(&hook_name).await.ok()?;
        hook.webhooks?.first()?.client_config.ca_bundle.clone()
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &system.name);
    let secret_name = env
        .iter()
        .find(|(k, _)| k == "GOAWAY_TLS_SECRET")
        .map(|(_, v)| v.clone())
        .expect("GOAWAY_TLS_SECRET");
    let secret = secrets.get(&secret_name).await.expect("the TLS Secret");
    assert_eq!(
        secret.data.as_ref().and_then(|d| d.get("ca.crt")),
        Some(&ca_bundle),
        "the caBundle is the Secret's CA"
    );
    wait("the operator ready", async || {
        let (status, _) = operator.admin_get("/readyz").await?;
        (status == 200).then_some(())
    })
    .await;

    let policies: Api<KeepalivePolicy> = Api::namespaced(client.clone(), &apps.name);
    policies
        .patch(
            "api",
            &apply_params(),
            &Patch::Apply(json!({
                "apiVersion": "goaway.dev/v1alpha1", "kind": "KeepalivePolicy",
                "metadata": {"name": "api"},
                "spec": {"selector": {"matchLabels": {"app": "api"}}, "port": "grpc",
                         "drain": {"delay": "5s", "timeout": "20s"}},
            })),
        )
        .await
        .expect("apply the policy");
    wait("the policy Ready", async || {
        let p = policies.get("api").await.ok()?;
        (p.condition("Ready")?.status == "True").then_some(())
    })
    .await;

    // The webhook's policy cache follows its own watch: dry-run creates
    // (which call webhooks too) until the policy is in it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps.name);
    let selected = || pod("api-1", json!({"app": "api"}), json!({}), false);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait("the webhook to inject (dry run)", async || {
        let p = pods.create(&dry_run, &selected()).await.ok()?;
        (!untouched(&p)).then_some(())
    })
    .await;

    let created = pods
        .create(&PostParams::default(), &selected())
        .await
        .expect("the API server accepts the injected pod");
    let stored = pods.get("api-1").await.expect("the stored pod");
    assert_eq!(created.spec, stored.spec);
    assert_eq!(
        stored
            .annotations()
            .get(ANNOTATION_INJECTED)
            .map(String::as_str),
        Some("api")
    );
    let spec = stored.spec.as_ref().expect("a spec");
    let agent = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER_NAME)
        .expect("the agent as an init container");
    assert_eq!(
        agent.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    // The agent took over the port's name; the app's port is a number now.
    assert!(
        agent
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("grpc")),
        "{:?}",
        agent.ports
    );
    assert!(
        spec.containers[0]
            .ports
            .iter()
            .flatten()
            .all(|p| p.name.as_deref() != Some("grpc")),
        "{:?}",
        spec.containers[0].ports
    );
    let pre_stop = spec.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|p| p.http_get.as_ref())
        .expect("the app's preStop httpGet");
    assert_eq!(pre_stop.path.as_deref(), Some("/drain"));
    assert!(spec.volumes.iter().flatten().any(|v| v.name == VOLUME_NAME));
    // delay 5s + timeout 20s + 5s margin.
    assert!(spec.termination_grace_period_seconds >= Some(30));

    // Opted out (label, annotation) and hostNetwork pods: stored unchanged.
    for (name, labels, annotations, host_network) in [
        (
            "opted-out-label",
            json!({"app": "api", "goaway.dev/inject": "disabled"}),
            json!({}),
            false,
        ),
        (
            "opted-out-annotation",
            json!({"app": "api"}),
            json!({"goaway.dev/inject": "false"}),
            false,
        ),
        ("host-network", json!({"app": "api"}), json!({}), true),
        ("not-selected", json!({"app": "web"}), json!({}), false),
    ] {
        pods.create(
            &PostParams::default(),
            &pod(name, labels, annotations, host_network),
        )
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        let stored = pods.get(name).await.expect("the stored pod");
        assert!(untouched(&stored), "{name} was changed: {:?}", stored.spec);
    }
    let (_, metrics) = operator.admin_get("/metrics").await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("goaway_operator_admissions_total{") && l.contains("injected")),
        "{metrics}"
    );

    // The operator down: failurePolicy Ignore lets pods through, unchanged.
    operator.kill();
    let through = wait_for(
        "a pod admitted with the operator down",
        Duration::from_secs(60),
        async || {
            pods.create(
                &PostParams::default(),
                &pod("api-2", json!({"app": "api"}), json!({}), false),
            )
            .await
            .ok()
        },
    )
    .await;
    assert!(untouched(&through), "{:?}", through.spec);

    let _ = hooks.delete(&hook_name, &DeleteParams::default()).await;
    apps.delete().await;
    system.delete().await;
}
