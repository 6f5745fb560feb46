//! The operator's Deployment, its PodDisruptionBudget, and values that
//! shape them.

use std::net::SocketAddr;

use goaway_operator::PolicyDefaults;
use goaway_operator::cli::LogFormat;
use goaway_operator::inject::{AgentConfig, DEFAULT_AGENT_IMAGE};
use goaway_operator::tls::Source;
use goaway_transport::policy::DrainPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::helm::{render, render_all};
use crate::rendered::selects;
use crate::{AGENT_UID, NAMESPACE, RELEASE, VERSION, assert_names_agree};

#[test]
fn deployment_runs_two_hardened_replicas_with_leader_election() {
    let r = render("");
    let (args, log_format) = r.operator_args();
    let spec = r.deployment().spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert!(args.leader_election);
    assert_eq!(log_format, LogFormat::Json);
    let strategy = spec.strategy.as_ref().expect("strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));

    let c = r.container();
    assert_eq!(
        c.image.as_deref(),
        Some(format!("ghcr.io/goaway-dev/goaway-operator:{VERSION}").as_str())
    );
    assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));
    // Probes on the admin server.
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect(path);
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(r.container_port(&get.port), args.admin_addr.port());
        assert_eq!(get.scheme.as_deref().unwrap_or("HTTP"), "HTTP");
    }
    assert_eq!(
        r.container_port(r.service_port("http-metrics").target_port.as_ref().unwrap()),
        args.admin_addr.port()
    );
    let resources = c.resources.as_ref().expect("resources");
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|m| m.contains_key("cpu"))
    );
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|m| m.contains_key("memory"))
    );

    // Hardened: non-root (the distroless nonroot user the agent uses too),
    // read-only root, no privilege escalation, no capabilities, seccomp.
    let pod = r.pod();
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(AGENT_UID));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(caps.add, None);
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(pod.host_network, None);
    assert_eq!(pod.enable_service_links, Some(false), "no foreign GOAWAY_*");

    // Replicas prefer different nodes.
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .expect("pod anti-affinity");
    let terms = anti
        .preferred_during_scheduling_ignored_during_execution
        .as_deref()
        .unwrap_or_default();
    assert!(
        terms.iter().any(|t| {
            t.pod_affinity_term.topology_key == "kubernetes.io/hostname"
                && t.pod_affinity_term
                    .label_selector
                    .as_ref()
                    .is_some_and(|s| selects(s, &r.pod_labels()))
        }),
        "{anti:?}"
    );

    // Its own ServiceAccount, with the token the client needs.
    assert_eq!(
        pod.service_account_name.as_ref(),
        r.service_accounts[0].metadata.name.as_ref()
    );
    assert_ne!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.volumes, None, "generate mode needs no volume");
}

#[test]
fn chart_defaults_for_the_agent_are_the_operators_defaults() {
    let (args, _) = render("").operator_args();
    // The chart serves the control channel, so its agents dial it.
    assert_eq!(
        args.agent.agent_config().unwrap(),
        AgentConfig {
            control_url: Some(format!("https://{RELEASE}-operator.{NAMESPACE}.svc:9444")),
            ..AgentConfig::default()
        }
    );
    let (args, _) = render("control: {enabled: false}").operator_args();
    assert_eq!(args.agent.agent_config().unwrap(), AgentConfig::default());
    assert!(!args.control_channel);
    // No drain defaults: policies are used as written.
    assert_eq!(
        args.defaults.policy_defaults().unwrap(),
        PolicyDefaults::default()
    );
    assert_eq!(args.agent.agent_image, DEFAULT_AGENT_IMAGE);
    assert_eq!(
        args.tls_source(),
        Source::Generate {
            secret: "goaway-operator-webhook-tls".into(),
            service: "goaway-operator".into(),
            hosts: vec![],
            webhook_config: "goaway-operator".into(),
        }
    );
}

/// An image digest (what `crane digest` prints).
pub(crate) const DIGEST: &str =
    "sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

#[test]
fn images_pinned_by_digest_are_referenced_by_digest() {
    let by_digest =
        format!("image: {{digest: '{DIGEST}'}}\nagent: {{image: {{digest: '{DIGEST}'}}}}");
    let tagged = format!(
        "image: {{tag: '1.2.3', digest: '{DIGEST}'}}\nagent: {{image: {{tag: '1.2.3', digest: '{DIGEST}'}}}}"
    );
    let [by_digest, tagged] = render_all(&[
        (RELEASE, NAMESPACE, &by_digest),
        (RELEASE, NAMESPACE, &tagged),
    ])
    .try_into()
    .unwrap_or_else(|_| panic!("one render per case"));
    // Without a tag the digest alone: not the appVersion's tag, which
    // the digest may not even be.
    for (r, reference) in [
        (&by_digest, format!("@{DIGEST}")),
        (&tagged, format!(":1.2.3@{DIGEST}")),
    ] {
        assert_eq!(
            r.container().image,
            Some(format!("ghcr.io/goaway-dev/goaway-operator{reference}"))
        );
        // The operator injects exactly that agent image.
        let (args, _) = r.operator_args();
        assert_eq!(
            args.agent.agent_config().unwrap().image,
            format!("ghcr.io/goaway-dev/goaway-agent{reference}")
        );
    }
}

#[test]
fn a_disruption_budget_keeps_one_replica_when_there_are_several() {
    let [default, three, one, disabled] = render_all(&[
        (RELEASE, NAMESPACE, ""),
        (
            RELEASE,
            NAMESPACE,
            "replicaCount: 3\npodDisruptionBudget: {minAvailable: 2}",
        ),
        (RELEASE, NAMESPACE, "replicaCount: 1"),
        (RELEASE, NAMESPACE, "podDisruptionBudget: {enabled: false}"),
    ])
    .try_into()
    .unwrap_or_else(|_| panic!("one render per case"));
    assert_eq!(default.pdbs.len(), 1);
    let spec = default.pdbs[0].spec.as_ref().unwrap();
    assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
    assert_eq!(spec.max_unavailable, None);
    assert!(selects(
        spec.selector.as_ref().unwrap(),
        &default.pod_labels()
    ));
    assert_eq!(
        three.pdbs[0].spec.as_ref().unwrap().min_available,
        Some(IntOrString::Int(2))
    );
    // A budget of one out of one would block every node drain.
    assert!(one.pdbs.is_empty());
    assert!(disabled.pdbs.is_empty());
}

#[test]
fn non_default_values_land_where_they_belong() {
    let r = render(
        r#"
image: {repository: registry.example.com/goaway-operator, tag: "1.2.3", pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {cpu: "1", memory: 512Mi}}
podAnnotations: {prometheus.io/scrape: "true"}
podLabels: {team: platform}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]
affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: pool, operator: In, values: [system]}]}]}}}
topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app.kubernetes.io/name: goaway}}}]
priorityClassName: system-cluster-critical
serviceAccount: {annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::1:role/goaway"}}
logFormat: text
watchNamespace: shop
webhook: {timeoutSeconds: 3}
agent:
  image: {repository: registry.example.com/goaway-agent, tag: "1.2.3", pullPolicy: Always}
  imagePullSecrets: [{name: regcred}, {name: agent-registry}]
  adminPort: 15099
  logFormat: text
  maxConcurrentStreams: 250
  maxConnections: 1000
  forwardedFor: "off"
  resources: {requests: {cpu: 20m, memory: 64Mi}, limits: {cpu: 200m, memory: 256Mi}}
  drain: {delay: 5s, timeout: 1m30s, goawayAckTimeout: 2500ms}
"#,
    );
    let c = r.container();
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example.com/goaway-operator:1.2.3")
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "128Mi");
    let pod = r.pod();
    assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
        "linux"
    );
    assert_eq!(
        pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    assert_eq!(pod.topology_spread_constraints.as_ref().unwrap().len(), 1);
    let affinity = pod.affinity.as_ref().unwrap();
    assert!(affinity.node_affinity.is_some() && affinity.pod_anti_affinity.is_none());
    let template = &r.deployment().spec.as_ref().unwrap().template;
    let meta = template.metadata.as_ref().unwrap();
    assert_eq!(
        meta.annotations.as_ref().unwrap()["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(meta.labels.as_ref().unwrap()["team"], "platform");
    assert!(
        r.service_accounts[0]
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key("eks.amazonaws.com/role-arn")
    );
    assert_eq!(r.webhook().timeout_seconds, Some(3));

    let (args, log_format) = r.operator_args();
    // The operator fits its time budget to the API server's wait.
    assert_eq!(
        args.webhook_timeout().unwrap(),
        std::time::Duration::from_secs(3)
    );
    assert_eq!(log_format, LogFormat::Text);
    assert_eq!(args.watch_namespace.as_deref(), Some("shop"));
    assert_eq!(
        args.defaults.policy_defaults().unwrap().drain(),
        &DrainPolicy {
            delay: Some("5s".parse().unwrap()),
            timeout: Some("90s".parse().unwrap()),
            goaway_ack_timeout: Some("2.5s".parse().unwrap()),
            quiet_period: None,
        }
    );
    assert_eq!(
        args.agent.agent_config().unwrap(),
        AgentConfig {
            image: "registry.example.com/goaway-agent:1.2.3".into(),
            image_pull_policy: "Always".into(),
            image_pull_secrets: vec!["regcred".into(), "agent-registry".into()],
            admin_port: 15099,
            log_format: "text".into(),
            log_level: String::new(),
            cpu_request: "20m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: "200m".into(),
            memory_limit: "256Mi".into(),
            max_concurrent_streams: 250,
            max_connections: 1000,
            forward_client_address: false,
            admin_allow: goaway_operator::inject::DEFAULT_ADMIN_ALLOW.into(),
            control_url: Some(format!("https://{RELEASE}-operator.{NAMESPACE}.svc:9444")),
        }
    );
    assert_names_agree(&r);
}

#[test]
fn without_leader_election_one_replica_is_replaced_not_rolled() {
    let r = render("leaderElection: {enabled: false}\nreplicaCount: 1");
    let (args, _) = r.operator_args();
    assert!(!args.leader_election);
    assert_eq!(args.lease(), None);
    let spec = r.deployment().spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    // A rolling update would run two controllers at once.
    assert_eq!(
        spec.strategy.as_ref().unwrap().type_.as_deref(),
        Some("Recreate")
    );
    assert!(r.pdbs.is_empty());
    assert!(!r.notes.contains("Lease"));
}

#[test]
fn the_webhook_listens_where_the_values_say() {
    let r = render("webhook: {port: 10250}\nadmin: {port: 9090}");
    let (args, _) = r.operator_args();
    assert_eq!(
        args.webhook_addr,
        "0.0.0.0:10250".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        args.admin_addr,
        "0.0.0.0:9090".parse::<SocketAddr>().unwrap()
    );
    let target = r.service_port("https-webhook").target_port.clone().unwrap();
    assert_eq!(r.container_port(&target), 10250);
    assert_eq!(r.service_port("https-webhook").port, 443);
    let probe = r.container().readiness_probe.as_ref().unwrap();
    assert_eq!(
        r.container_port(&probe.http_get.as_ref().unwrap().port),
        9090
    );
}
