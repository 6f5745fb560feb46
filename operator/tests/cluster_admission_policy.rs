//! Opt-in, against a real API server (`KUBECONFIG`; see
//! `support::cluster`): the chart's ValidatingAdmissionPolicies hold the
//! operator's ServiceAccount to the objects it writes. The chart's own
//! ServiceAccount, RBAC and policies are applied as `helm template`
//! renders them for every namespace (so its ClusterRole lets the account
//! write any ConfigMap), then requests are made as that ServiceAccount
//! (impersonated by the admin): the operator's own code — the controller,
//! the certificate Secret's creation, the caBundle patch and the webhook's
//! dry-run redirect probes — goes through, and each write beyond it that
//! RBAC allows is refused with the policy's message.

mod support;

use std::sync::Arc;

use goaway_operator::inject::{AgentConfig, LABEL_PROBE, redirect_probe_pod};
use goaway_operator::owner::Owner;
use goaway_operator::tls::{self, CertStore, ca, secret};
use goaway_operator::webhook::redirect_probe::{self, Verdict};
use goaway_operator::{KeepalivePolicy, controller, metrics::Metrics};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::cluster::{
    TestNamespace, apply_params, client_or_skip, helm, helm_template, install_crd, kubectl_stdin,
    ok, rendered, repo_root, wait,
};

/// The kinds of the chart's objects that decide what the operator's
/// account may do: who it is, its RBAC, and the admission policies.
const PERMISSIONS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// The chart's permissions for one release, installed.
struct Installed {
    admin: Client,
    /// The admin's client, impersonating the operator's ServiceAccount.
    operator: Client,
    release: String,
    system: TestNamespace,
    apps: TestNamespace,
    /// What was applied, for the uninstall.
    objects: Value,
}

impl Installed {
    /// Applies the chart's permissions and webhook configuration for a
    /// release in a scratch namespace, and waits until the API server
    /// enforces the policies.
    async fn new(admin: Client, tag: &str) -> Installed {
        install_crd(&admin).await;
        let system = TestNamespace::new(&admin, &format!("{tag}-system"), json!({})).await;
        let apps = TestNamespace::new(&admin, &format!("{tag}-apps"), json!({})).await;
        let release = format!("goaway-e2e-{tag}-{}", std::process::id());
        // Every namespace: the ClusterRole grants ConfigMaps everywhere.
        let docs = helm_template(
            &release,
            &system.name,
            &["rbac.aggregateToDefaultRoles=false"],
        );
        let mut items: Vec<Value> = docs
            .iter()
            .filter(|d| PERMISSIONS.contains(&d["kind"].as_str().unwrap_or_default()))
            .cloned()
            .collect();
        // The webhook configuration as a release watching only the system
        // namespace has it (the same name), so that the API server calls
        // it for no other test's pods.
        let scoped = helm_template(
            &release,
            &system.name,
            &[&format!("watchNamespace={}", system.name)],
        );
        items.push(rendered(&scoped, "MutatingWebhookConfiguration").clone());
        let objects = json!({"apiVersion": "v1", "kind": "List", "items": items});
        ok(
            "kubectl apply the chart's permissions",
            kubectl_stdin(&["apply", "--server-side", "-f", "-"], &objects.to_string()),
        );
        let subject = &rendered(&docs, "ClusterRoleBinding")["subjects"][0];
        let user = format!(
            "system:serviceaccount:{}:{}",
            subject["namespace"].as_str().expect("a namespace"),
            subject["name"].as_str().expect("a name")
        );
        let mut config = kube::Config::infer().await.expect("KUBECONFIG");
        config.auth_info.impersonate = Some(user);
        let operator = Client::try_from(config).expect("an impersonating client");
        let installed = Installed {
            admin,
            operator,
            release,
            system,
            apps,
            objects,
        };
        installed.wait_for_the_policies().await;
        installed
    }

    fn webhook_config(&self) -> String {
        format!("{}-operator", self.release)
    }

    fn policy(&self, suffix: &str) -> String {
        format!("{}-operator-{suffix}", self.release)
    }

    /// The API server has type-checked the policies' CEL against the
    /// real schemas without a warning, and enforces them.
    async fn wait_for_the_policies(&self) {
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(self.admin.clone());
        for suffix in ["configmaps", "pods", "webhook-config", "secrets"] {
            let name = self.policy(suffix);
            let status = wait(&format!("{name} type-checked"), async || {
                let p = policies.get(&name).await.ok()?;
                let status = p.status?;
                (status.observed_generation == p.metadata.generation).then_some(status)
            })
            .await;
            let warnings = status.type_checking.and_then(|t| t.expression_warnings);
            assert_eq!(warnings.unwrap_or_default(), [], "{name}");
        }
        // Policies and bindings reach the admission plugin through a
        // watch: dry runs of a write each refuses, until it does.
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let config_maps: Api<ConfigMap> = Api::namespaced(self.operator.clone(), &self.apps.name);
        let probe = config_map("not-goaway", json!({}));
        self.in_force("configmaps", async || {
            config_maps.create(&dry_run, &probe).await.err()
        })
        .await;
        let pods: Api<Pod> = Api::namespaced(self.operator.clone(), &self.apps.name);
        let not_a_probe = pod("not-a-probe", json!({}), json!({}));
        self.in_force("pods", async || {
            pods.create(&dry_run, &not_a_probe).await.err()
        })
        .await;
        let secrets: Api<Secret> = Api::namespaced(self.operator.clone(), &self.system.name);
        let probe = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("not-the-certificate".into()),
                ..Default::default()
            },
            ..Secret::default()
        };
        self.in_force("secrets", async || {
            secrets.create(&dry_run, &probe).await.err()
        })
        .await;
        let hooks: Api<MutatingWebhookConfiguration> = Api::all(self.operator.clone());
        let label = json!({"metadata": {"labels": {"e2e-probe": "1"}}});
        self.in_force("webhook-config", async || {
            hooks
                .patch(
                    &self.webhook_config(),
                    &PatchParams::default().dry_run(),
                    &Patch::Merge(&label),
                )
                .await
                .err()
        })
        .await;
    }

    /// Waits until `attempt` fails with the denial of the policy named
    /// `suffix`.
    async fn in_force(&self, suffix: &str, mut attempt: impl AsyncFnMut() -> Option<kube::Error>) {
        let name = self.policy(suffix);
        let by = format!("ValidatingAdmissionPolicy '{name}'");
        wait(&format!("{name} in force"), async || {
            match attempt().await? {
                kube::Error::Api(status) if status.message.contains(&by) => Some(()),
                _ => None,
            }
        })
        .await;
    }

    /// Whether RBAC alone lets the operator's account do this (to the
    /// object `name`, if given).
    async fn rbac_allows(
        &self,
        verb: &str,
        (group, resource): (&str, &str),
        namespace: &str,
        name: Option<&str>,
    ) -> bool {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: Some(namespace.into()),
                    name: name.map(Into::into),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let reviews: Api<SelfSubjectAccessReview> = Api::all(self.operator.clone());
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .expect("a SelfSubjectAccessReview");
        answer.status.expect("a status").allowed
    }

    async fn uninstall(self) {
        let _ = kubectl_stdin(
            &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
            &self.objects.to_string(),
        );
        self.apps.delete().await;
        self.system.delete().await;
    }
}

fn config_map(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"policy.yaml": "server: {maxConnectionAge: 1s}\n"},
    }))
    .expect("a ConfigMap")
}

fn pod(name: &str, labels: Value, security: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
                                 "securityContext": security}]},
    }))
    .expect("a Pod")
}

/// The operator's label on the objects it creates.
fn managed() -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(
        controller::LABEL_MANAGED_BY.into(),
        goaway_operator::MANAGER.into(),
    );
    Value::Object(labels)
}

/// The request was refused by `policy` with `message`: the API server's
/// 403 for an admission policy's denial, not RBAC's.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: kube::Result<T>, policy: &str, message: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            let by = format!(
                "ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: {message}"
            );
            assert!(
                status.message.contains(&by),
                "refused, but not by {policy} with {message:?}: {}",
                status.message
            );
        }
        other => panic!("not refused by {policy}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_account_writes_only_its_own_config_maps_and_none_in_kube_system() {
    let Some(admin) = client_or_skip("admission policy: ConfigMaps").await else {
        return;
    };
    let vap = Installed::new(admin.clone(), "vap-cm").await;
    let policy = vap.policy("configmaps");
    let own_only = "the goaway operator writes only its own ConfigMaps: named goaway-<policy> and labelled app.kubernetes.io/managed-by=goaway-operator, before and after the change";

    // kube-system/coredns (created here unless the cluster runs CoreDNS):
    // RBAC lets the account patch it; the policy does not, label or not.
    // Dry runs, so that a policy that failed to refuse would still change
    // nothing.
    let system_cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "kube-system");
    let coredns = config_map("coredns", json!({}));
    let created_coredns = match system_cms.create(&PostParams::default(), &coredns).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 409 => false,
        Err(e) => panic!("creating kube-system/coredns: {e}"),
    };
    let before = system_cms.get("coredns").await.expect("coredns");
    for verb in ["create", "patch"] {
        assert!(
            vap.rbac_allows(verb, ("", "configmaps"), "kube-system", Some("coredns"))
                .await
        );
    }
    let as_operator: Api<ConfigMap> = Api::namespaced(vap.operator.clone(), "kube-system");
    let hijack = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "coredns", "labels": managed()},
        "data": {"Corefile": ".:53 { forward . 203.0.113.53 }\n"},
    });
    let in_kube_system = "the goaway operator writes no ConfigMap in kube-system";
    refused(
        as_operator
            .patch(
                "coredns",
                &PatchParams::apply(goaway_operator::MANAGER)
                    .force()
                    .dry_run(),
                &Patch::Apply(&hijack),
            )
            .await,
        &policy,
        in_kube_system,
    );
    refused(
        as_operator
            .patch(
                "coredns",
                &PatchParams::default().dry_run(),
                &Patch::Merge(json!({"data": hijack["data"]})),
            )
            .await,
        &policy,
        in_kube_system,
    );
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    refused(
        as_operator
            .create(&dry_run, &config_map("goaway-api", managed()))
            .await,
        &policy,
        in_kube_system,
    );
    let after = system_cms.get("coredns").await.expect("coredns");
    assert_eq!(after.data, before.data);

    // Elsewhere: only goaway-<name> with the operator's label, and a
    // ConfigMap of someone else's cannot be taken over by labelling it.
    let apps: Api<ConfigMap> = Api::namespaced(vap.operator.clone(), &vap.apps.name);
    for (name, labels) in [
        ("api-config", json!({})),
        ("goaway-api", json!({})),
        ("api-config", managed()),
    ] {
        refused(
            apps.create(&PostParams::default(), &config_map(name, labels.clone()))
                .await,
            &policy,
            own_only,
        );
    }
    let admin_apps: Api<ConfigMap> = Api::namespaced(admin.clone(), &vap.apps.name);
    admin_apps
        .create(
            &PostParams::default(),
            &config_map("goaway-dashboard", json!({})),
        )
        .await
        .expect("the admin creates a ConfigMap");
    refused(
        apps.patch(
            "goaway-dashboard",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": managed()}})),
        )
        .await,
        &policy,
        own_only,
    );

    // The controller, as the operator's account, renders a policy into
    // its ConfigMap and reports it Ready.
    let (stop, watch) = drain_rs::channel();
    let task = tokio::spawn(controller::run(
        vap.operator.clone(),
        Arc::new(Metrics::default()),
        controller::Config {
            namespace: Some(vap.apps.name.clone()),
            instance: Some("e2e".into()),
            ..controller::Config::default()
        },
        watch,
    ));
    let policies: Api<KeepalivePolicy> = Api::namespaced(admin.clone(), &vap.apps.name);
    policies
        .patch(
            "api",
            &apply_params(),
            &Patch::Apply(json!({
                "apiVersion": "goaway.dev/v1alpha1", "kind": "KeepalivePolicy",
                "metadata": {"name": "api"},
                "spec": {"selector": {"matchLabels": {"app": "api"}}, "port": "grpc",
                         "server": {"maxConnectionAge": "30m"}},
            })),
        )
        .await
        .expect("apply the policy");
    wait("the policy Ready", async || {
        let p = policies.get("api").await.ok()?;
        (p.condition("Ready")?.status == "True").then_some(())
    })
    .await;
    let own = admin_apps.get("goaway-api").await.expect("goaway-api");
    assert!(own.data.unwrap_or_default()["policy.yaml"].contains("maxConnectionAge: 30m0s"));
    // And changes it later (an UPDATE, checked before and after).
    apps.patch(
        "goaway-api",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"e2e": "edited"}}})),
    )
    .await
    .expect("the operator's account edits its own ConfigMap");
    let ((), joined) = futures_util::future::join(stop.drain(), task).await;
    joined.expect("the controller task");

    if created_coredns {
        let _ = system_cms
            .delete("coredns", &kube::api::DeleteParams::default())
            .await;
    }
    vap.uninstall().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_account_changes_only_the_ca_bundle_of_its_webhook_configuration() {
    let Some(admin) = client_or_skip("admission policy: webhook configuration").await else {
        return;
    };
    let vap = Installed::new(admin.clone(), "vap-hook").await;
    let policy = vap.policy("webhook-config");
    let name = vap.webhook_config();
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let original = hooks.get(&name).await.expect("the webhook configuration");
    let resource = (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    );
    assert!(vap.rbac_allows("patch", resource, "", Some(&name)).await);

    // The operator's own caBundle patch goes through.
    let ca = ca::new_ca().expect("a CA");
    secret::patch_ca_bundle(&vap.operator, &name, &ca.cert)
        .await
        .expect("the operator's account patches the caBundle");
    let patched = hooks.get(&name).await.expect("the webhook configuration");
    let webhook = &patched.webhooks.as_ref().expect("webhooks")[0];
    assert_eq!(
        webhook.client_config.ca_bundle,
        Some(ByteString(ca.cert.clone().into_bytes()))
    );

    // Anything else is refused: each patch below alone, and with a
    // caBundle change beside it.
    let only_ca_bundle =
        "the goaway operator changes nothing but the caBundle of its webhook configuration";
    let changes = [
        json!([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"}]),
        json!([{"op": "add", "path": "/webhooks/0/rules/0/resources/-", "value": "secrets"}]),
        json!([{"op": "replace", "path": "/webhooks/0/namespaceSelector", "value": {}}]),
        json!([{"op": "replace", "path": "/webhooks/0/clientConfig/service/name", "value": "attacker"}]),
        json!([{"op": "add", "path": "/webhooks/0/matchConditions",
                "value": [{"name": "all", "expression": "true"}]}]),
        json!([{"op": "add", "path": "/metadata/annotations",
                "value": {"cert-manager.io/inject-ca-from": "kube-system/other"}}]),
        json!([{"op": "remove", "path": "/webhooks/0"}]),
        json!([{"op": "add", "path": "/webhooks/-",
                "value": {"name": "second.goaway.dev", "admissionReviewVersions": ["v1"],
                          "sideEffects": "None",
                          "clientConfig": {"url": "https://attacker.example/mutate"}}}]),
    ];
    let as_operator: Api<MutatingWebhookConfiguration> = Api::all(vap.operator.clone());
    let new_ca = ca::new_ca().expect("a CA");
    let ca_bundle = serde_json::to_value(ByteString(new_ca.cert.into_bytes())).expect("base64");
    for change in changes {
        let with_ca_bundle = {
            let mut ops = vec![
                json!({"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": ca_bundle}),
            ];
            ops.extend(change.as_array().expect("a patch").iter().cloned());
            Value::Array(ops)
        };
        for ops in [change, with_ca_bundle] {
            let patch: json_patch::Patch = serde_json::from_value(ops).expect("a JSON patch");
            refused(
                as_operator
                    .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
                    .await,
                &policy,
                only_ca_bundle,
            );
        }
    }
    let after = hooks.get(&name).await.expect("the webhook configuration");
    assert_eq!(after.webhooks, patched.webhooks);
    assert_eq!(after.metadata.annotations, original.metadata.annotations);

    vap.uninstall().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_account_writes_no_secret_but_its_certificate() {
    let Some(admin) = client_or_skip("admission policy: Secrets").await else {
        return;
    };
    let vap = Installed::new(admin.clone(), "vap-secret").await;
    let policy = vap.policy("secrets");
    let namespace = vap.system.name.clone();
    assert!(
        vap.rbac_allows("create", ("", "secrets"), &namespace, None)
            .await
    );
    let tls_secret = format!("{}-operator-webhook-tls", vap.release);
    let only_certificate = format!(
        "the goaway operator writes no Secret but its webhook certificate, {tls_secret} (kubernetes.io/tls)"
    );

    // A long-lived token for an account of its namespace, under any name
    // (the certificate's included), is refused, and so is another TLS
    // Secret.
    let secrets: Api<Secret> = Api::namespaced(vap.operator.clone(), &namespace);
    let account = format!("{}-operator", vap.release);
    for name in ["stolen-token", tls_secret.as_str()] {
        let token: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name,
                         "annotations": {"kubernetes.io/service-account.name": account}},
            "type": "kubernetes.io/service-account-token",
        }))
        .expect("a Secret");
        refused(
            secrets.create(&PostParams::default(), &token).await,
            &policy,
            &only_certificate,
        );
    }
    let other: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "other-tls"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "", "tls.key": ""},
    }))
    .expect("a Secret");
    refused(
        secrets.create(&PostParams::default(), &other).await,
        &policy,
        &only_certificate,
    );

    // The operator's own code creates its certificate Secret, and renews
    // it (a replace) when the names it must cover change.
    let store = CertStore::new(tls::provider());
    let names = ca::serving_names(&account, &namespace, &[]);
    secret::sync_secret(
        &secrets,
        &tls_secret,
        &names,
        true,
        &store,
        &Owner::unknown(),
    )
    .await
    .expect("the operator's account creates its certificate Secret");
    assert!(store.is_loaded());
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), &namespace);
    let created = admin_secrets
        .get(&tls_secret)
        .await
        .expect("the certificate Secret");
    assert_eq!(created.type_.as_deref(), Some("kubernetes.io/tls"));
    let names = ca::serving_names(&account, &namespace, &["127.0.0.1".to_string()]);
    secret::sync_secret(
        &secrets,
        &tls_secret,
        &names,
        true,
        &store,
        &Owner::unknown(),
    )
    .await
    .expect("the operator's account renews its certificate Secret");
    let renewed = admin_secrets
        .get(&tls_secret)
        .await
        .expect("the certificate Secret");
    assert_ne!(
        renewed.metadata.resource_version,
        created.metadata.resource_version
    );

    vap.uninstall().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_account_creates_no_pod_but_dry_run_redirect_probes() {
    let Some(admin) = client_or_skip("admission policy: pods").await else {
        return;
    };
    let vap = Installed::new(admin.clone(), "vap-pods").await;
    let policy = vap.policy("pods");
    let namespace = vap.apps.name.clone();
    // RBAC alone would let the account create any pod there.
    assert!(
        vap.rbac_allows("create", ("", "pods"), &namespace, None)
            .await
    );
    let dry_runs_only = "the goaway operator creates pods only as dry runs (its redirect probes)";
    let probes_only = "the goaway operator creates no pod but its redirect probes: named goaway-redirect-probe-<id> and labelled goaway.dev/redirect-probe=true";
    let pods: Api<Pod> = Api::namespaced(vap.operator.clone(), &namespace);
    let agent = AgentConfig::default();
    let probe = redirect_probe_pod(&agent, "goaway-redirect-probe-e2e", false);

    // For real: refused, a probe pod as much as a privileged one.
    refused(
        pods.create(&PostParams::default(), &probe).await,
        &policy,
        dry_runs_only,
    );
    let privileged = pod(
        "goaway-redirect-probe-root",
        json!({LABEL_PROBE: "true"}),
        json!({"privileged": true}),
    );
    refused(
        pods.create(&PostParams::default(), &privileged).await,
        &policy,
        dry_runs_only,
    );
    // As a dry run: a pod not named or not labelled as a probe.
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut unlabelled = probe.clone();
    unlabelled
        .metadata
        .labels
        .as_mut()
        .expect("labels")
        .remove(LABEL_PROBE);
    let mut renamed = probe.clone();
    renamed.metadata.name = Some("api-1".into());
    for pod in [&unlabelled, &renamed] {
        refused(pods.create(&dry_run, pod).await, &policy, probes_only);
    }

    // The webhook's own probes, as the operator's account, go through: the
    // namespace admits redirect's init container (no Pod Security level,
    // no rule against NET_ADMIN).
    assert_eq!(
        redirect_probe::probe(&vap.operator, &agent, &namespace).await,
        Verdict::Admitted
    );
    // Under Pod Security baseline the probe with the init container is
    // refused, the one without admitted: the namespace refuses redirect.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    namespaces
        .patch(
            &namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "baseline"}}})),
        )
        .await
        .expect("label the namespace");
    let verdict = wait(
        "Pod Security baseline in force",
        async || match redirect_probe::probe(&vap.operator, &agent, &namespace).await {
            Verdict::Refused(message) => Some(message),
            _ => None,
        },
    )
    .await;
    assert!(
        verdict.contains("violates PodSecurity \"baseline:latest\"")
            && verdict.contains("NET_ADMIN"),
        "{verdict}"
    );
    let stored = Api::<Pod>::namespaced(admin.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .expect("the pods");
    assert!(stored.items.is_empty(), "{:?}", stored.items);

    vap.uninstall().await;
}

/// `helm template` (the real CLI) for a cluster of `kube_version`.
fn template_for(kube_version: &str, set: &[&str]) -> std::process::Output {
    let chart = repo_root().join("charts/goaway");
    let chart = chart.to_str().expect("a UTF-8 path");
    let mut args = vec!["template", "goaway", chart, "--kube-version", kube_version];
    for s in set {
        args.extend(["--set", s]);
    }
    helm(&args)
}

/// The policies' API is admissionregistration.k8s.io/v1 from 1.30 on:
/// for an older cluster the chart stops with a message (`helm lint`
/// does not stop at a template's `fail`, so this needs the CLI), unless
/// the policies are turned off.
#[tokio::test]
async fn the_chart_renders_the_policies_for_kubernetes_1_30_or_stops() {
    if client_or_skip("admission policy: Kubernetes versions")
        .await
        .is_none()
    {
        return;
    }
    let old = template_for("1.29.0", &[]);
    assert!(!old.status.success());
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert!(
        stderr.contains("rbac.admissionPolicy.enabled needs Kubernetes 1.30 or newer"),
        "{stderr}"
    );
    let off = ok(
        "helm template for 1.29 without the policies",
        template_for("1.29.0", &["rbac.admissionPolicy.enabled=false"]),
    );
    assert!(!off.contains("kind: ValidatingAdmissionPolicy"), "{off}");
    let on = ok("helm template for 1.30", template_for("1.30.0", &[]));
    assert!(on.contains("kind: ValidatingAdmissionPolicy\n"), "{on}");
}
