//! Opt-in, against a real API server (`KUBECONFIG`; see
//! `support::cluster`): the webhook called by kube-apiserver. The
//! operator runs out of cluster with the chart's own settings (its
//! rendered `GOAWAY_*` environment) and the chart's development value
//! `webhook.url`, so the chart's MutatingWebhookConfiguration calls
//! https://127.0.0.1:<port>/mutate. The operator creates its CA and
//! serving certificate Secret and writes the caBundle itself (generate
//! mode). Then pods are created and read back as the API server stored
//! them: injected, and, for a redirect policy, with namedPort where a
//! ValidatingAdmissionPolicy refuses redirect's init container (found by
//! the webhook's dry-run probes, with no Pod Security label to go by).

mod support;

use std::time::Duration;

use goaway_operator::KeepalivePolicy;
use goaway_operator::inject::{
    ANNOTATION_INJECTED, ANNOTATION_INJECTED_PULL_SECRETS, CONTAINER_NAME,
    INTERCEPT_CONTAINER_NAME, VOLUME_NAME,
};
use goaway_operator::tls::ca;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::cluster::{
    Operator, TestNamespace, UNSCHEDULED, apply_params, chart_operator_env, client_or_skip,
    free_port, helm_template, install_crd, kubectl_stdin, ok, rendered, wait, wait_for,
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
    let system = TestNamespace::new(&client, "webhook-system", json!({})).await;
    let apps = TestNamespace::new(&client, "webhook-apps", json!({})).await;

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
            "agent.imagePullSecrets[0].name=agent-registry",
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

    // The caBundle gone (say the configuration was replaced as the chart
    // renders it): the self-check fails, and the leader writes it again
    // at once rather than at its next periodic sync, a minute away.
    let mut emptied = hooks.get(&hook_name).await.expect("the configuration");
    for webhook in emptied.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = None;
    }
    hooks
        .replace(&hook_name, &PostParams::default(), &emptied)
        .await
        .expect("drop the caBundle");
    wait_for(
        "the caBundle written again and the operator ready",
        Duration::from_secs(20),
        async || {
            let hook = hooks.get(&hook_name).await.ok()?;
            let back = hook.webhooks?.first()?.client_config.ca_bundle.as_ref() == Some(&ca_bundle);
            let (status, _) = operator.admin_get("/readyz").await?;
            (back && status == 200).then_some(())
        },
    )
    .await;
    assert!(
        operator.log().contains("caBundle is empty"),
        "the self-check never saw it empty:\n{}",
        operator.log()
    );

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
    // The app's ServiceAccount has a pull secret of its own, which the
    // API server copies into its pods before the webhook sees them.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &apps.name);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "api"},
                "imagePullSecrets": [{"name": "app-registry"}],
            }))
            .expect("a ServiceAccount"),
        )
        .await
        .expect("create the app's ServiceAccount");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps.name);
    let selected = || {
        let mut p = pod("api-1", json!({"app": "api"}), json!({}), false);
        p.spec.as_mut().expect("a spec").service_account_name = Some("api".into());
        p
    };
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
    // The agent's pull secret (agent.imagePullSecrets) beside the
    // ServiceAccount's, which the API server added before the webhook ran;
    // the annotation names only the one injection added.
    let pull_secrets: Vec<_> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(pull_secrets, ["app-registry", "agent-registry"]);
    assert_eq!(
        stored
            .annotations()
            .get(ANNOTATION_INJECTED_PULL_SECRETS)
            .map(String::as_str),
        Some("agent-registry")
    );

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

/// The init containers of a stored pod, by name.
fn init_containers(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().expect("a pod spec");
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

/// Whether the agent of a stored pod took over the port's name `grpc`
/// (namedPort interception).
fn agent_took_the_port_name(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref().expect("a pod spec");
    spec.init_containers
        .iter()
        .flatten()
        .filter(|c| c.name == CONTAINER_NAME)
        .flat_map(|c| c.ports.iter().flatten())
        .any(|p| p.name.as_deref() == Some("grpc"))
}

/// A policy engine's rule, as a ValidatingAdmissionPolicy: no pod of a
/// namespace labelled `label=value` may have a container adding NET_ADMIN.
/// Nothing about Pod Security on the namespace says so.
fn no_net_admin(name: &str, label: &str, value: &str) -> Value {
    let adds = "c.?securityContext.?capabilities.?add.orValue([]).exists(a, a == 'NET_ADMIN')";
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {
             "failurePolicy": "Fail",
             "matchConstraints": {"resourceRules": [{
                 "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                 "operations": ["CREATE"]}]},
             "validations": [{
                 "expression": format!(
                     "!object.spec.?initContainers.orValue([]).exists(c, {adds}) && !object.spec.containers.exists(c, {adds})"
                 ),
                 "message": "no container may add NET_ADMIN here (goaway e2e)"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {label: value}}}}},
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_falls_back_to_named_port_where_an_admission_policy_refuses_net_admin() {
    let Some(client) = client_or_skip("webhook: redirect probes").await else {
        return;
    };
    install_crd(&client).await;
    let system = TestNamespace::new(&client, "redirect-system", json!({})).await;
    let apps = TestNamespace::new(&client, "redirect-apps", json!({})).await;
    let pid = std::process::id().to_string();

    // The chart as in the test above, for a release of its own.
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/mutate");
    let release = format!("goaway-e2e-redirect-{pid}");
    let docs = helm_template(
        &release,
        &system.name,
        &[
            &format!("webhook.url={url}"),
            &format!("watchNamespace={}", apps.name),
            "agent.imagePullSecrets[0].name=agent-registry",
        ],
    );
    let hook = rendered(&docs, "MutatingWebhookConfiguration");
    let hook_name = hook["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_string();
    ok(
        "kubectl apply the MutatingWebhookConfiguration",
        kubectl_stdin(&["apply", "--server-side", "-f", "-"], &hook.to_string()),
    );
    let env = chart_operator_env(&docs, &system.name, "operator-redirect-e2e");
    assert!(
        env.contains(&("GOAWAY_REDIRECT_PROBE".into(), "true".into())),
        "{env:?}"
    );
    let operator = Operator::start_with_env("cluster-webhook-redirect-operator", port, &[], &env);
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    wait("the caBundle written by the operator", async || {
        let hook = hooks.get(&hook_name).await.ok()?;
        hook.webhooks?.first()?.client_config.ca_bundle.clone()
    })
    .await;
    wait("the operator ready", async || {
        let (status, _) = operator.admin_get("/readyz").await?;
        (status == 200).then_some(())
    })
    .await;

    // The rule, for namespaces labelled so; apps is not, yet.
    let rule = format!("goaway-e2e-no-net-admin-{pid}");
    let label = "goaway-e2e/no-net-admin";
    ok(
        "kubectl apply the NET_ADMIN rule",
        kubectl_stdin(
            &["apply", "--server-side", "-f", "-"],
            &no_net_admin(&rule, label, &pid).to_string(),
        ),
    );

    let policies: Api<KeepalivePolicy> = Api::namespaced(client.clone(), &apps.name);
    policies
        .patch(
            "redirected",
            &apply_params(),
            &Patch::Apply(json!({
                "apiVersion": "goaway.dev/v1alpha1", "kind": "KeepalivePolicy",
                "metadata": {"name": "redirected"},
                "spec": {"selector": {"matchLabels": {"app": "api"}}, "port": "grpc",
                         "interception": "redirect"},
            })),
        )
        .await
        .expect("apply the policy");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps.name);
    let selected = |name: &str| pod(name, json!({"app": "api"}), json!({}), false);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };

    // Nothing refuses NET_ADMIN here: redirect.
    wait("the webhook to inject redirect (dry run)", async || {
        let p = pods.create(&dry_run, &selected("api-1")).await.ok()?;
        init_containers(&p)
            .contains(&INTERCEPT_CONTAINER_NAME.to_string())
            .then_some(())
    })
    .await;
    let before = pods
        .create(&PostParams::default(), &selected("api-1"))
        .await
        .expect("the API server accepts the redirected pod");
    assert_eq!(
        init_containers(&before),
        [INTERCEPT_CONTAINER_NAME, CONTAINER_NAME]
    );

    // The namespace comes under the rule: a label, none of Pod Security's.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &apps.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label: pid}}})),
        )
        .await
        .expect("label the namespace");
    let labels = namespaces
        .get(&apps.name)
        .await
        .expect("the namespace")
        .metadata
        .labels;
    assert!(
        !labels
            .iter()
            .flatten()
            .any(|(k, _)| k.starts_with("pod-security.kubernetes.io/")),
        "{labels:?}"
    );
    // In force once a pod adding NET_ADMIN (opted out of the webhook) is
    // refused.
    let net_admin: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "net-admin", "labels": {"goaway.dev/inject": "disabled"}},
        "spec": {"schedulerName": UNSCHEDULED, "containers": [{
            "name": "app", "image": "registry.example/app:1",
            "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}
    }))
    .expect("a pod");
    wait("the NET_ADMIN rule in force", async || {
        match pods.create(&dry_run, &net_admin).await {
            Err(kube::Error::Api(s)) if s.message.contains(&rule) => Some(()),
            _ => None,
        }
    })
    .await;

    // The webhook sees the label change, probes again and is told: its
    // pods get namedPort, which the rule admits. Until it knows, it asks
    // for redirect and the API server refuses the dry run.
    wait("the webhook to inject namedPort (dry run)", async || {
        let p = pods.create(&dry_run, &selected("api-2")).await.ok()?;
        (init_containers(&p) == [CONTAINER_NAME]).then_some(())
    })
    .await;
    let after = pods
        .create(&PostParams::default(), &selected("api-2"))
        .await
        .expect("the API server accepts the namedPort pod");
    assert_eq!(init_containers(&after), [CONTAINER_NAME]);
    assert!(agent_took_the_port_name(&after), "{:?}", after.spec);
    assert_eq!(
        after
            .annotations()
            .get(ANNOTATION_INJECTED)
            .map(String::as_str),
        Some("redirected")
    );
    // A Warning Event about the pod, quoting the API server's refusal of
    // the probe.
    let events: Api<Event> = Api::namespaced(client.clone(), &apps.name);
    let event = wait("the RedirectRefusedByAdmission Event", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("RedirectRefusedByAdmission")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("api-2")
        })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(
        note.contains(&format!("ValidatingAdmissionPolicy '{rule}'"))
            && note.contains("no container may add NET_ADMIN here (goaway e2e)")
            && note.contains("injected with namedPort interception instead"),
        "{note}"
    );
    // The probes were dry runs: no probe pod is stored.
    let stored = pods.list(&ListParams::default()).await.expect("the pods");
    let names: Vec<String> = stored.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["api-1", "api-2"]);

    let _ = hooks.delete(&hook_name, &DeleteParams::default()).await;
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let _ = bindings.delete(&rule, &DeleteParams::default()).await;
    let rules: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let _ = rules.delete(&rule, &DeleteParams::default()).await;
    apps.delete().await;
    system.delete().await;
}

/// Waits until the operator's `/readyz` answers `status` with a body
/// containing `reason`.
async fn readyz_says(operator: &Operator, status: u16, reason: &str) {
    wait_for(
        &format!("/readyz {status} with {reason:?}"),
        Duration::from_secs(60),
        async || {
            let (s, body) = operator.admin_get("/readyz").await?;
            (s == status && body.contains(reason)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_is_ready_only_once_the_api_server_could_call_its_webhook() {
    let Some(client) = client_or_skip("webhook readiness").await else {
        return;
    };
    install_crd(&client).await;
    let system = TestNamespace::new(&client, "ready-system", json!({})).await;
    let apps = TestNamespace::new(&client, "ready-apps", json!({})).await;
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/mutate");
    let release = format!("goaway-e2e-ready-{}", std::process::id());
    let docs = helm_template(
        &release,
        &system.name,
        &[
            &format!("webhook.url={url}"),
            &format!("watchNamespace={}", apps.name),
        ],
    );
    let env = chart_operator_env(&docs, &system.name, "operator-ready-e2e");
    let setting = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the chart sets no {name}"))
    };
    // Another replica holds the Lease (for an hour): this one follows, so
    // it never writes the caBundle itself — the leader's job — and the
    // test decides what the configuration holds.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &system.name);
    let now = MicroTime(Timestamp::now());
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(setting("GOAWAY_LEASE_NAME")),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("another-replica".into()),
                    lease_duration_seconds: Some(3600),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await
        .expect("the other replica's Lease");
    let operator = Operator::start_with_env("cluster-webhook-ready-operator", port, &[], &env);
    let hook_name = setting("GOAWAY_WEBHOOK_CONFIG");

    // Certificate loaded, policies synced, but no webhook configuration:
    // the API server would not call it at all.
    readyz_says(
        &operator,
        503,
        &format!("MutatingWebhookConfiguration {hook_name} not found"),
    )
    .await;

    // The configuration as the chart makes it: no caBundle yet.
    let hook = rendered(&docs, "MutatingWebhookConfiguration");
    ok(
        "kubectl apply the MutatingWebhookConfiguration",
        kubectl_stdin(&["apply", "--server-side", "-f", "-"], &hook.to_string()),
    );
    readyz_says(&operator, 503, "caBundle is empty").await;

    // Another CA's certificate: the API server's handshake would fail.
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let set_ca_bundle = async |pem: &[u8]| {
        let mut config = hooks.get(&hook_name).await.expect("the configuration");
        for webhook in config.webhooks.iter_mut().flatten() {
            webhook.client_config.ca_bundle = Some(ByteString(pem.to_vec()));
        }
        hooks
            .replace(&hook_name, &PostParams::default(), &config)
            .await
            .expect("set the caBundle");
    };
    let stranger = ca::new_ca().expect("another CA");
    set_ca_bundle(stranger.cert.as_bytes()).await;
    readyz_says(&operator, 503, "checked against the caBundle").await;

    // The operator's own CA, from the Secret it shares with the leader:
    // what the leader writes. Now the API server could call it.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &system.name);
    let secret = wait("the certificate Secret", async || {
        secrets.get_opt(&setting("GOAWAY_TLS_SECRET")).await.ok()?
    })
    .await;
    let own = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .expect("the CA in the Secret")
        .0
        .clone();
    set_ca_bundle(&own).await;
    readyz_says(&operator, 200, "ready").await;
    // Never led: the caBundle is the one the test wrote.
    assert!(!operator.log().contains("patched webhook caBundle"));

    let _ = hooks.delete(&hook_name, &DeleteParams::default()).await;
    apps.delete().await;
    system.delete().await;
}
