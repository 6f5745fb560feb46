//! Values: each one sets one operator flag or is plumbing for the
//! operator's own objects; the schema rejects what is not a value.

use std::collections::BTreeSet;

use clap::CommandFactory;
use goaway_operator::config::Cli;
use serde_json::{Value, json};

use crate::VERSION;
use crate::helm::{render_all, render_errors, show};
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
            also: &["GOAWAY_LEASE_NAME"],
        },
        v(
            "webhook.port",
            json!(9444),
            "GOAWAY_WEBHOOK_ADDR",
            "0.0.0.0:9444",
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
            "admin.port",
            json!(8081),
            "GOAWAY_ADMIN_ADDR",
            "0.0.0.0:8081",
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
            "agent.image.pullPolicy",
            json!("Always"),
            "GOAWAY_AGENT_IMAGE_PULL_POLICY",
            "Always",
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
    ]
}

/// Values that only shape the operator's own Kubernetes objects.
const PLUMBING: &[&str] = &[
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
    "webhook.timeoutSeconds",
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

pub fn default_leaves() -> Vec<String> {
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
        // And the operator accepts it.
        r.operator_args();
    }
}

#[test]
fn there_is_no_chart_level_drain_default_because_the_operator_has_none() {
    // Drain settings come from each KeepalivePolicy; a value for them
    // would map to no flag, so the schema refuses one.
    for (kind, message) in render_errors(&["drain: {timeout: 30s}", "agent: {drain: {delay: 5s}}"])
    {
        assert_eq!(kind, "HelmValuesError", "{message}");
        assert!(message.contains("drain"), "{message}");
    }
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").unwrap();
    assert!(
        !run.get_arguments()
            .any(|a| a.get_id().as_str().contains("drain")),
        "the operator grew a drain flag: give it a chart value"
    );
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
        ("webhook: {port: 70000}", "/webhook/port"),
        ("admin: {port: \"8080\"}", "/admin/port"),
        (
            "agent: {image: {pullPolicy: Sometimes}}",
            "/agent/image/pullPolicy",
        ),
        ("agent: {logFormat: yaml}", "/agent/logFormat"),
        ("agent: {adminPort: 0}", "/agent/adminPort"),
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
