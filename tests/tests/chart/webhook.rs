//! The MutatingWebhookConfiguration and its certificate (generate and
//! cert-manager modes).

use goaway_operator::cli::TlsMode;
use goaway_operator::inject::{
    AgentConfig, LABEL_INJECT, LABEL_INJECT_DISABLED, redirect_probe_pod,
};
use goaway_operator::tls::Source;
use goaway_operator::webhook::MUTATE_PATH;
use serde_json::{Value, json};

use crate::helm::{render, render_as};
use crate::rendered::{labels, namespace_labels, selects};
use crate::{AGENT_UID, NAMESPACE, assert_names_agree};

#[test]
fn webhook_calls_the_operators_mutate_path_and_never_blocks_pods() {
    for values in ["", "webhook: {tls: {mode: certManager}}"] {
        let r = render(values);
        let (args, _) = r.operator_args();
        let hook = r.webhook();
        assert!(
            hook.name.split('.').count() >= 3,
            "{} is not qualified",
            hook.name
        );
        assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
        // It publishes Events, never for a dry run (webhook::review).
        assert_eq!(hook.side_effects, "NoneOnDryRun");
        let timeout = hook.timeout_seconds.expect("an explicit timeout");
        assert!((1..=5).contains(&timeout), "timeoutSeconds {timeout}");
        assert_eq!(hook.admission_review_versions, ["v1"]);
        assert_eq!(hook.match_conditions, None);
        // Pod CREATE only: injection happens once, at birth.
        let rules = hook.rules.as_deref().unwrap_or_default();
        assert_eq!(rules.len(), 1);
        let rule = &rules[0];
        assert_eq!(
            rule.operations.as_deref(),
            Some(&["CREATE".to_string()][..])
        );
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(rule.api_versions.as_deref(), Some(&["v1".to_string()][..]));
        assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
        // Through the Service, on the operator's path, over TLS to the
        // port --webhook-addr listens on; the caBundle is someone else's.
        let client = &hook.client_config;
        assert_eq!(client.url, None);
        assert_eq!(client.ca_bundle, None, "the chart must not own caBundle");
        let service = client.service.as_ref().expect("a service reference");
        assert_eq!(service.path.as_deref(), Some(MUTATE_PATH));
        let port = r.service_port("https-webhook");
        assert_eq!(Some(port.port), service.port.or(Some(443)));
        let target = port.target_port.as_ref().expect("targetPort");
        assert_eq!(r.container_port(target), args.webhook_addr.port());
        assert_names_agree(&r);
    }
}

/// Development mode: the API server calls a URL (an operator outside the
/// cluster) and the operator's certificate covers the URL's host.
#[test]
fn a_webhook_url_replaces_the_service_and_is_in_the_certificate() {
    let r = render("webhook: {url: 'https://127.0.0.1:9443/mutate'}");
    let client = &r.webhook().client_config;
    assert_eq!(client.url.as_deref(), Some("https://127.0.0.1:9443/mutate"));
    assert_eq!(client.service, None);
    assert_eq!(client.ca_bundle, None, "the operator writes the caBundle");
    let (args, _) = r.operator_args();
    match args.tls_source() {
        Source::Generate { hosts, .. } => assert_eq!(hosts, ["127.0.0.1"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn webhook_skips_kube_system_opted_out_namespaces_and_pods_and_the_operator() {
    let r = render("");
    let hook = r.webhook();
    let ns = hook.namespace_selector.as_ref().expect("namespaceSelector");
    let opted_out = [(LABEL_INJECT, LABEL_INJECT_DISABLED)];
    assert!(!selects(ns, &namespace_labels("kube-system", &[])));
    assert!(!selects(ns, &namespace_labels("shop", &opted_out)));
    assert!(selects(ns, &namespace_labels("shop", &[])));
    assert!(selects(
        ns,
        &namespace_labels("shop", &[(LABEL_INJECT, "enabled")])
    ));
    // Nor the operator's own namespace, whatever runs there.
    assert!(!selects(ns, &namespace_labels(NAMESPACE, &[])));

    let pods = hook.object_selector.as_ref().expect("objectSelector");
    assert!(selects(pods, &labels(&[("app", "api")])));
    // The operator would skip an opted-out pod anyway; the selector saves
    // the API server the call.
    assert!(!selects(pods, &labels(&[("app", "api"), opted_out[0]])));
    assert!(!selects(pods, &r.pod_labels()), "the operator's own pods");
    // Nor the webhook's own redirect probes (dry runs it creates while it
    // reviews a pod).
    let probe = redirect_probe_pod(&AgentConfig::default(), "goaway-redirect-probe-1", true);
    let probe_labels = probe.metadata.labels.clone().unwrap_or_default();
    assert!(!selects(pods, &probe_labels), "{probe_labels:?}");
    // Nor another release's operator.
    let other = render_as("other", "elsewhere", "podLabels: {team: x}");
    assert!(!selects(pods, &other.pod_labels()));

    let r = render("webhook: {excludeNamespaces: [kube-system, monitoring]}");
    let ns = r.webhook().namespace_selector.as_ref().unwrap();
    assert!(!selects(ns, &namespace_labels("monitoring", &[])));
    assert!(!selects(ns, &namespace_labels("kube-system", &[])));
    assert!(!selects(ns, &namespace_labels(NAMESPACE, &[])));
    assert!(selects(ns, &namespace_labels("shop", &[])));
    // No excluded namespaces but the operator's: kube-system is injected.
    let r = render_as("goaway", "platform", "webhook: {excludeNamespaces: []}");
    let ns = r.webhook().namespace_selector.as_ref().unwrap();
    assert!(!selects(ns, &namespace_labels("platform", &[])));
    assert!(selects(ns, &namespace_labels("kube-system", &[])));
    assert!(selects(ns, &namespace_labels(NAMESPACE, &[])));

    // With --watch-namespace the webhook only sees that namespace (the
    // operator has no policies anywhere else), opt-out still applies.
    let r = render("watchNamespace: shop");
    let ns = r.webhook().namespace_selector.as_ref().unwrap();
    assert!(selects(ns, &namespace_labels("shop", &[])));
    assert!(!selects(ns, &namespace_labels("shop", &opted_out)));
    assert!(!selects(ns, &namespace_labels("other", &[])));
    assert!(!selects(ns, &namespace_labels("kube-system", &[])));
    assert_eq!(r.operator_args().0.watch_namespace.as_deref(), Some("shop"));
    // Watching its own namespace, the operator injects there (its own
    // pods are still skipped by the objectSelector).
    let r = render(&format!("watchNamespace: {NAMESPACE}"));
    let ns = r.webhook().namespace_selector.as_ref().unwrap();
    assert!(selects(ns, &namespace_labels(NAMESPACE, &[])));
    let pods = r.webhook().object_selector.as_ref().unwrap();
    assert!(!selects(pods, &r.pod_labels()));
}

#[test]
fn cert_manager_mode_issues_mounts_and_injects_the_certificate() {
    let r = render("webhook: {tls: {mode: certManager}}");
    let (args, _) = r.operator_args();
    assert_eq!(args.tls_mode, TlsMode::Files);
    assert_eq!(args.tls_source(), Source::Files(args.tls_dir.clone()));
    assert_eq!(r.env_value("GOAWAY_TLS_SECRET"), None);

    assert_eq!(r.issuers.len(), 1);
    let issuer = &r.issuers[0];
    assert_eq!(issuer["spec"], json!({"selfSigned": {}}));
    assert_eq!(r.certificates.len(), 1);
    let cert = &r.certificates[0];
    assert_eq!(cert["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "Issuer");
    assert_eq!(cert["spec"]["issuerRef"]["group"], "cert-manager.io");
    // The API server connects to <service>.<namespace>.svc.
    let dns: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let host = format!("{}.{NAMESPACE}.svc", args.webhook_service);
    assert!(dns.contains(&host.as_str()), "{dns:?}");
    // rustls reads PKCS#8 (and SEC1) keys.
    assert_eq!(cert["spec"]["privateKey"]["encoding"], "PKCS8");

    // The Secret cert-manager writes is mounted where --tls-dir points.
    let secret = cert["spec"]["secretName"].as_str().unwrap();
    let volume = r
        .pod()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret))
        .expect("the certificate Secret as a volume");
    let mount = r
        .container()
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("mounted");
    assert_eq!(std::path::Path::new(&mount.mount_path), args.tls_dir);
    assert_eq!(mount.read_only, Some(true));
    let mode = volume.secret.as_ref().and_then(|s| s.default_mode);
    assert_eq!(mode, Some(0o440));
    assert_eq!(
        r.pod().security_context.as_ref().and_then(|s| s.fs_group),
        Some(AGENT_UID),
        "the key is group-readable only"
    );

    // cert-manager's CA injector fills the caBundle from that Certificate.
    let annotations = r
        .webhook_config()
        .metadata
        .annotations
        .clone()
        .unwrap_or_default();
    assert_eq!(
        annotations.get("cert-manager.io/inject-ca-from"),
        Some(&format!(
            "{NAMESPACE}/{}",
            cert["metadata"]["name"].as_str().unwrap()
        ))
    );
    assert_eq!(r.webhook().client_config.ca_bundle, None);
    assert!(r.notes.contains("get certificate"), "{}", r.notes);

    // An existing issuer instead of the self-signed one.
    let r = render(
        "webhook: {tls: {mode: certManager, certManager: {issuerRef: {name: corp-ca, kind: ClusterIssuer}}}}",
    );
    assert!(r.issuers.is_empty());
    let issuer_ref = &r.certificates[0]["spec"]["issuerRef"];
    assert_eq!(issuer_ref["name"], "corp-ca");
    assert_eq!(issuer_ref["kind"], "ClusterIssuer");

    // Generate mode: no cert-manager objects, no annotation.
    let r = render("");
    assert!(r.issuers.is_empty() && r.certificates.is_empty());
    assert!(r.webhook_config().metadata.annotations.is_none());
}
