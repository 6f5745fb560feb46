//! Values: each one sets one operator flag or is plumbing for the
//! operator's own objects; the schema rejects what is not a value.

use std::collections::BTreeSet;

use clap::{CommandFactory, Parser};
use goaway_operator::cli::{Cli, Command as OperatorCommand};
use goaway_tests::repo_root;
use goaway_transport::policy::{DURATION_PATTERN, GoDuration};
use serde_json::{Value, json};

use crate::VERSION;
use crate::deployment::DIGEST;
use crate::helm::{render, render_all, render_errors, show, try_render_all};
use crate::{NAMESPACE, RELEASE};

#[test]
fn every_operator_flag_is_set_by_the_chart() {
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").unwrap();
    let flags: BTreeSet<String> = cmd
        .get_arguments()
        .chain(run.get_arguments())
        .filter_map(|a| Some(a.get_env()?.to_str()?.to_string()))
        .collect();
    let set: BTreeSet<String> = render_all(&[
        (RELEASE, NAMESPACE, ""),
        (RELEASE, NAMESPACE, "webhook: {tls: {mode: certManager}}"),
        (RELEASE, NAMESPACE, "watchNamespace: shop"),
        (
            RELEASE,
            NAMESPACE,
            "agent: {drain: {delay: 5s, timeout: 45s, goawayAckTimeout: 2s, quietPeriod: 2s}}",
        ),
        (
            RELEASE,
            NAMESPACE,
            "webhook: {url: 'https://127.0.0.1:9443/mutate'}",
        ),
        (
            RELEASE,
            NAMESPACE,
            "agent: {imagePullSecrets: [{name: regcred}]}",
        ),
    ])
    .iter()
    .flat_map(|r| r.env().into_keys())
    .collect();
    assert_eq!(set, flags, "rendered variables vs the operator's flags");
}

/// Values that configure the operator: each sets one flag's variable
/// (`also`: flags that only exist in the other mode).
struct FlagValue {
    path: &'static str,
    values: Value,
    env: &'static str,
    expect: String,
    also: &'static [&'static str],
}

fn flag_values() -> Vec<FlagValue> {
    let v = |path: &'static str, value: Value, env: &'static str, expect: &str| FlagValue {
        path,
        values: at_path(path, value),
        env,
        expect: expect.into(),
        also: &[],
    };
    vec![
        v("logFormat", json!("text"), "GOAWAY_LOG_FORMAT", "text"),
        v(
            "logLevel",
            json!("info,kube=debug"),
            "GOAWAY_LOG_LEVEL",
            "info,kube=debug",
        ),
        v(
            "agent.logLevel",
            json!("debug"),
            "GOAWAY_AGENT_LOG_LEVEL",
            "debug",
        ),
        v(
            "watchNamespace",
            json!("shop"),
            "GOAWAY_WATCH_NAMESPACE",
            "shop",
        ),
        FlagValue {
            path: "leaderElection.enabled",
            values: json!({"leaderElection": {"enabled": false}, "replicaCount": 1}),
            env: "GOAWAY_LEADER_ELECTION",
            expect: "false".into(),
            also: &[
                "GOAWAY_LEASE_NAME",
                "GOAWAY_LEASE_DURATION",
                "GOAWAY_LEASE_RENEW_DEADLINE",
                "GOAWAY_LEASE_RETRY_PERIOD",
            ],
        },
        v(
            "leaderElection.leaseDuration",
            json!("1m"),
            "GOAWAY_LEASE_DURATION",
            "1m",
        ),
        v(
            "leaderElection.renewDeadline",
            json!("40s"),
            "GOAWAY_LEASE_RENEW_DEADLINE",
            "40s",
        ),
        v(
            "leaderElection.retryPeriod",
            json!("500ms"),
            "GOAWAY_LEASE_RETRY_PERIOD",
            "500ms",
        ),
        v(
            "webhook.port",
            json!(9445),
            "GOAWAY_WEBHOOK_ADDR",
            "0.0.0.0:9445",
        ),
        FlagValue {
            also: &["GOAWAY_TLS_SECRET", "GOAWAY_TLS_DIR"],
            ..v(
                "webhook.tls.mode",
                json!("certManager"),
                "GOAWAY_TLS_MODE",
                "files",
            )
        },
        v(
            "webhook.url",
            json!("https://127.0.0.1:9443/mutate"),
            "GOAWAY_WEBHOOK_HOSTS",
            "127.0.0.1",
        ),
        v(
            "webhook.timeoutSeconds",
            json!(12),
            "GOAWAY_WEBHOOK_TIMEOUT",
            "12s",
        ),
        v(
            "webhook.maxConnections",
            json!(1000),
            "GOAWAY_WEBHOOK_MAX_CONNECTIONS",
            "1000",
        ),
        v(
            "admin.port",
            json!(8081),
            "GOAWAY_ADMIN_ADDR",
            "0.0.0.0:8081",
        ),
        FlagValue {
            path: "control.enabled",
            values: json!({"control": {"enabled": false}}),
            env: "GOAWAY_CONTROL_CHANNEL",
            expect: "false".into(),
            also: &[
                "GOAWAY_CONTROL_ADDR",
                "GOAWAY_CONTROL_MAX_CONNECTIONS",
                "GOAWAY_AGENT_CONTROL_URL",
            ],
        },
        FlagValue {
            path: "control.port",
            values: json!({"control": {"port": 9555}}),
            env: "GOAWAY_CONTROL_ADDR",
            expect: "0.0.0.0:9555".into(),
            also: &["GOAWAY_AGENT_CONTROL_URL"],
        },
        v(
            "control.maxConnections",
            json!(500),
            "GOAWAY_CONTROL_MAX_CONNECTIONS",
            "500",
        ),
        v(
            "agent.image.repository",
            json!("registry.example.com/goaway-agent"),
            "GOAWAY_AGENT_IMAGE",
            &format!("registry.example.com/goaway-agent:{VERSION}"),
        ),
        v(
            "agent.image.tag",
            json!("1.2.3"),
            "GOAWAY_AGENT_IMAGE",
            "ghcr.io/goaway-dev/goaway-agent:1.2.3",
        ),
        v(
            "agent.image.digest",
            json!(DIGEST),
            "GOAWAY_AGENT_IMAGE",
            &format!("ghcr.io/goaway-dev/goaway-agent@{DIGEST}"),
        ),
        v(
            "agent.image.pullPolicy",
            json!("Always"),
            "GOAWAY_AGENT_IMAGE_PULL_POLICY",
            "Always",
        ),
        v(
            "agent.imagePullSecrets",
            json!([{"name": "regcred"}, {"name": "mirror.example"}]),
            "GOAWAY_AGENT_IMAGE_PULL_SECRETS",
            "regcred,mirror.example",
        ),
        v(
            "agent.adminPort",
            json!(15099),
            "GOAWAY_AGENT_ADMIN_PORT",
            "15099",
        ),
        v(
            "agent.logFormat",
            json!("text"),
            "GOAWAY_AGENT_LOG_FORMAT",
            "text",
        ),
        v(
            "agent.maxConcurrentStreams",
            json!(0),
            "GOAWAY_AGENT_MAX_CONCURRENT_STREAMS",
            "0",
        ),
        v(
            "agent.maxConnections",
            json!(500),
            "GOAWAY_AGENT_MAX_CONNECTIONS",
            "500",
        ),
        v(
            "agent.adminAllow",
            json!("gateway,10.0.0.0/8"),
            "GOAWAY_AGENT_ADMIN_ALLOW",
            "gateway,10.0.0.0/8",
        ),
        v(
            "agent.forwardedFor",
            json!("off"),
            "GOAWAY_AGENT_FORWARDED_FOR",
            "off",
        ),
        v(
            "agent.resources.requests.cpu",
            json!("25m"),
            "GOAWAY_AGENT_CPU_REQUEST",
            "25m",
        ),
        v(
            "agent.resources.requests.memory",
            json!("48Mi"),
            "GOAWAY_AGENT_MEMORY_REQUEST",
            "48Mi",
        ),
        v(
            "agent.resources.limits.cpu",
            json!("500m"),
            "GOAWAY_AGENT_CPU_LIMIT",
            "500m",
        ),
        v(
            "agent.resources.limits.memory",
            json!(""),
            "GOAWAY_AGENT_MEMORY_LIMIT",
            "",
        ),
        v(
            "agent.drain.delay",
            json!("5s"),
            "GOAWAY_DEFAULT_DRAIN_DELAY",
            "5s",
        ),
        v(
            "agent.drain.timeout",
            json!("1m30s"),
            "GOAWAY_DEFAULT_DRAIN_TIMEOUT",
            "1m30s",
        ),
        v(
            "agent.drain.goawayAckTimeout",
            json!("2500ms"),
            "GOAWAY_DEFAULT_DRAIN_GOAWAY_ACK_TIMEOUT",
            "2500ms",
        ),
        v(
            "agent.drain.quietPeriod",
            json!("500ms"),
            "GOAWAY_DEFAULT_DRAIN_QUIET_PERIOD",
            "500ms",
        ),
        v(
            "agent.interception",
            json!("redirect"),
            "GOAWAY_DEFAULT_INTERCEPTION",
            "redirect",
        ),
        v(
            "agent.forbidRedirect",
            json!(true),
            "GOAWAY_FORBID_REDIRECT",
            "true",
        ),
    ]
}

/// Values that only shape the operator's own Kubernetes objects.
const PLUMBING: &[&str] = &[
    "monitoring",
    "replicaCount",
    "image",
    "imagePullSecrets",
    "nameOverride",
    "fullnameOverride",
    "serviceAccount",
    "rbac",
    "resources",
    "podSecurityContext",
    "securityContext",
    "podDisruptionBudget",
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "priorityClassName",
    "webhook.excludeNamespaces",
    "webhook.tls.certManager",
];

/// Paths of the scalars (and empty maps and lists) in `values`.
fn leaves(values: &Value, path: &str, out: &mut Vec<String>) {
    match values {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        _ => out.push(path.to_string()),
    }
}

pub(crate) fn default_leaves() -> Vec<String> {
    let mut out = Vec::new();
    leaves(&show()["values"], "", &mut out);
    out
}

#[test]
fn every_value_sets_one_operator_flag_or_is_plumbing() {
    let rows = flag_values();
    let is_plumbing = |leaf: &str| {
        PLUMBING
            .iter()
            .any(|p| leaf == *p || leaf.starts_with(&format!("{p}.")))
    };
    let leaves = default_leaves();
    for leaf in &leaves {
        assert!(
            is_plumbing(leaf) || rows.iter().any(|r| r.path == leaf),
            "value {leaf} maps to no operator flag and is not plumbing"
        );
    }
    let values: Vec<String> = std::iter::once(String::new())
        .chain(rows.iter().map(|r| r.values.to_string()))
        .collect();
    let cases: Vec<_> = values
        .iter()
        .map(|v| (RELEASE, NAMESPACE, v.as_str()))
        .collect();
    let renders = render_all(&cases);
    let base = renders[0].env();
    for (row, r) in rows.iter().zip(&renders[1..]) {
        assert!(
            leaves.contains(&row.path.to_string()),
            "{} is not a value",
            row.path
        );
        let env = r.env();
        let changed: BTreeSet<&str> = base
            .keys()
            .chain(env.keys())
            .filter(|k| base.get(*k) != env.get(*k))
            .map(String::as_str)
            .collect();
        let expected: BTreeSet<&str> = std::iter::once(row.env)
            .chain(row.also.iter().copied())
            .collect();
        assert_eq!(changed, expected, "setting {}", row.path);
        assert_eq!(
            r.env_value(row.env).as_deref(),
            Some(row.expect.as_str()),
            "{}",
            row.path
        );
        // And the operator accepts it, values checked against each other.
        let (args, _) = r.operator_args();
        args.agent.agent_config().unwrap();
        args.defaults.policy_defaults().unwrap();
    }
}

#[test]
fn each_drain_flag_of_the_operator_is_an_agent_drain_value_unset_by_default() {
    // Every drain flag is the default for what a policy leaves out, set by
    // exactly one agent.drain value (the rows above, which the mapping
    // test renders one by one).
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").unwrap();
    let drain_flags: BTreeSet<String> = run
        .get_arguments()
        .filter(|a| a.get_id().as_str().contains("drain"))
        .map(|a| a.get_env().unwrap().to_str().unwrap().to_string())
        .collect();
    let drain_values: BTreeSet<String> = flag_values()
        .iter()
        .filter(|r| r.path.starts_with("agent.drain."))
        .map(|r| r.env.to_string())
        .collect();
    assert_eq!(
        drain_flags, drain_values,
        "drain flags vs agent.drain values"
    );
    assert_eq!(drain_flags.len(), 4);

    // Empty by default: no variable, so policies are used as written.
    let r = render("");
    for env in &drain_flags {
        assert_eq!(r.env_value(env), None, "{env} set by default");
    }
    // A value is the default the operator runs with.
    let (args, _) = render("agent: {drain: {timeout: 45s}}").operator_args();
    let defaults = args.defaults.policy_defaults().unwrap();
    assert_eq!(defaults.drain().timeout, Some(GoDuration::from_secs(45)));
    assert_eq!(defaults.drain().delay, None);

    // Drain defaults belong to the agent settings, not the top level.
    let (kind, message) = render_errors(&["drain: {timeout: 30s}"]).remove(0);
    assert_eq!(kind, "HelmValuesError", "{message}");
    assert!(message.contains("drain"), "{message}");

    // The schema's durations are the CRD's, which Go and CEL both read.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/goaway/values.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        schema["definitions"]["durationOrEmpty"]["pattern"],
        format!("^$|{DURATION_PATTERN}")
    );
}

#[test]
fn drain_defaults_that_contradict_each_other_pass_the_schema_but_stop_the_operator() {
    // The schema cannot compare durations; the operator refuses to start,
    // naming the flag, so the old replicas keep serving (maxUnavailable 0).
    let (args, _) = render("agent: {drain: {timeout: 3s, goawayAckTimeout: 3s}}").operator_args();
    let err = args.defaults.policy_defaults().unwrap_err().to_string();
    assert!(
        err.starts_with("--default-drain-goaway-ack-timeout: must be less than drain.timeout (3s)"),
        "{err}"
    );
    let (args, _) = render("agent: {drain: {timeout: 10s, goawayAckTimeout: 10s}}").operator_args();
    assert!(args.defaults.policy_defaults().is_err());
}

#[test]
fn forbid_redirect_is_off_by_default_and_refused_beside_a_redirect_default() {
    let (args, _) = render("").operator_args();
    assert!(
        !args
            .defaults
            .policy_defaults()
            .unwrap()
            .redirect_forbidden()
    );
    let (args, _) = render("agent: {forbidRedirect: true}").operator_args();
    assert!(
        args.defaults
            .policy_defaults()
            .unwrap()
            .redirect_forbidden()
    );
    // The schema cannot see the contradiction; the operator refuses to
    // start, naming the flag, so the old replicas keep serving.
    let (args, _) = render("agent: {forbidRedirect: true, interception: redirect}").operator_args();
    let err = args.defaults.policy_defaults().unwrap_err().to_string();
    assert!(
        err.starts_with("--forbid-redirect: contradicts --default-interception redirect"),
        "{err}"
    );
}

#[test]
fn agent_resources_the_schema_accepts_the_operator_accepts() {
    // The schema is the stricter of the two (no signs, no n or u); what it
    // lets through must never stop the operator.
    let quantities = [
        "0", "10m", "0.5", ".5", "5.", "1.e3", "128Mi", "1.5Gi", "1G", "1E", "1e3", "1E+3", "2e-3",
        "lots", "-1", "+1", "1KB", "1 Mi", "Mi", "1e", "100n",
    ];
    let values: Vec<String> = quantities
        .iter()
        .map(|q| {
            format!("agent: {{resources: {{requests: {{memory: ''}}, limits: {{memory: '{q}'}}}}}}")
        })
        .collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let operator_accepts = |q: &str| {
        let flag = format!("--agent-memory-limit={q}");
        let argv = ["goaway-operator", "run", "--agent-memory-request=", &flag];
        Cli::try_parse_from(argv).is_ok_and(|cli| match cli.command {
            OperatorCommand::Run(a) => a.agent.agent_config().is_ok(),
            _ => false,
        })
    };
    let mut accepted = Vec::new();
    for (q, render) in quantities.iter().zip(try_render_all(&values)) {
        if let Ok(r) = render {
            accepted.push(*q);
            assert_eq!(
                r.env_value("GOAWAY_AGENT_MEMORY_LIMIT").as_deref(),
                Some(*q)
            );
            assert!(
                operator_accepts(q),
                "the schema accepts {q:?}, the operator does not"
            );
        }
    }
    assert_eq!(accepted, &quantities[..13], "what the schema accepts");
    for bad in ["lots", "-1", "1KB", "1 Mi", "Mi", "1e"] {
        assert!(!operator_accepts(bad), "the operator accepts {bad:?}");
    }
}

#[test]
fn values_schema_rejects_bad_values_before_anything_renders() {
    let cases = [
        ("replicaCount: 0", "/replicaCount"),
        ("leaderElection: {enabled: false}", "/replicaCount"),
        ("logFormat: xml", "/logFormat"),
        ("watchNamespace: Not_A_Namespace", "/watchNamespace"),
        ("webhook: {tls: {mode: selfSigned}}", "/webhook/tls/mode"),
        ("webhook: {timeoutSeconds: 31}", "/webhook/timeoutSeconds"),
        ("webhook: {maxConnections: 0}", "/webhook/maxConnections"),
        ("webhook: {port: 70000}", "/webhook/port"),
        // The API server calls webhooks over HTTPS only.
        (
            "webhook: {url: 'http://127.0.0.1:9443/mutate'}",
            "/webhook/url",
        ),
        ("admin: {port: \"8080\"}", "/admin/port"),
        (
            "agent: {image: {pullPolicy: Sometimes}}",
            "/agent/image/pullPolicy",
        ),
        // A digest is sha256 and 64 lower-case hex digits, nothing else.
        ("image: {digest: 'sha256:0f1e2d'}", "/image/digest"),
        (
            "image: {digest: '0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0'}",
            "/image/digest",
        ),
        (
            "agent: {image: {digest: 'sha256:0F1E2D3C4B5A69788796A5B4C3D2E1F00F1E2D3C4B5A69788796A5B4C3D2E1F0'}}",
            "/agent/image/digest",
        ),
        (
            "agent: {image: {digest: 'sha512:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0'}}",
            "/agent/image/digest",
        ),
        (
            "rbac: {admissionPolicy: {enabled: 'yes'}}",
            "/rbac/admissionPolicy/enabled",
        ),
        ("agent: {logFormat: yaml}", "/agent/logFormat"),
        ("agent: {adminPort: 0}", "/agent/adminPort"),
        ("agent: {maxConnections: 0}", "/agent/maxConnections"),
        (
            "agent: {maxConcurrentStreams: -1}",
            "/agent/maxConcurrentStreams",
        ),
        ("agent: {drain: {delay: 5}}", "/agent/drain/delay"),
        ("agent: {drain: {timeout: \"30\"}}", "/agent/drain/timeout"),
        ("agent: {drain: {timeout: 1d}}", "/agent/drain/timeout"),
        (
            "agent: {drain: {goawayAckTimeout: -1s}}",
            "/agent/drain/goawayAckTimeout",
        ),
        ("agent: {drain: {grace: 5s}}", "/agent/drain"),
        ("agent: {interception: iptables}", "/agent/interception"),
        ("agent: {forbidRedirect: 'yes'}", "/agent/forbidRedirect"),
        (
            "agent: {imagePullSecrets: [regcred]}",
            "/agent/imagePullSecrets/0",
        ),
        (
            "agent: {imagePullSecrets: [{name: RegCred}]}",
            "/agent/imagePullSecrets/0/name",
        ),
        (
            "agent: {resources: {limits: {memory: lots}}}",
            "/agent/resources/limits/memory",
        ),
        (
            "agent: {resources: {requests: {cpu: -1}}}",
            "/agent/resources/requests/cpu",
        ),
        (
            "podDisruptionBudget: {minAvailable: half}",
            "/podDisruptionBudget/minAvailable",
        ),
        ("replicas: 2", "replicas"),
    ];
    // Beyond the schema, the template refuses a port clash.
    let clash = "webhook: {port: 8080}";
    let values: Vec<&str> = cases.iter().map(|(v, _)| *v).chain([clash]).collect();
    let errors = render_errors(&values);
    for ((values, path), (kind, message)) in cases.iter().zip(&errors) {
        assert_eq!(kind, "HelmValuesError", "{values}: {message}");
        assert!(message.contains(path), "{values}: {message}");
    }
    let (kind, message) = errors.last().unwrap();
    assert_eq!(kind, "HelmRenderError", "{message}");
    assert!(message.contains("must differ"), "{message}");
}

/// `{"a": {"b": value}}` for `a.b`.
fn at_path(path: &str, value: Value) -> Value {
    path.rsplit('.')
        .fold(value, |inner, key| json!({ key: inner }))
}
