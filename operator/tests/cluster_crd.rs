//! Opt-in, against a real API server (`KUBECONFIG`; see
//! `support::cluster`): the committed CRD is accepted and Established;
//! the API server's schema and CEL validation reject exactly what the
//! Rust validator rejects (a table naming every rule, then generated
//! specs); `kubectl get kap` shows the printer columns and `kubectl
//! explain` the documentation; `goaway-operator inject` output passes
//! the API server's own validation (`kubectl apply --dry-run=server`).

mod support;

use std::process::Command;

use goaway_operator::KeepalivePolicy;
use goaway_operator::crd::{KeepalivePolicySpec, RULES};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::cluster::{
    TestNamespace, client_or_skip, install_crd, kubectl, kubectl_stdin, ok, repo_root,
};

fn policy(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "goaway.dev/v1alpha1",
        "kind": "KeepalivePolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a DynamicObject")
}

fn policies(client: &Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<KeepalivePolicy>(&());
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// What the API server says to creating `spec` (dry run: nothing is
/// stored): `Ok` or the error message.
async fn server_verdict(api: &Api<DynamicObject>, name: &str, spec: &Value) -> Result<(), String> {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match api.create(&dry_run, &policy(name, spec.clone())).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(other) => panic!("creating {spec}: {other}"),
    }
}

/// What the Rust validator says about `spec`: a spec that does not even
/// deserialize into the policy type is rejected too.
fn rust_verdict(spec: &Value) -> Result<(), String> {
    let spec: KeepalivePolicySpec =
        serde_json::from_value(spec.clone()).map_err(|e| format!("does not parse: {e}"))?;
    spec.check().map(|_| ()).map_err(|e| e.to_string())
}

fn base() -> Value {
    json!({"selector": {"matchLabels": {"app": "a"}}, "port": "grpc"})
}

fn with(mut spec: Value, group: &str, field: &str, value: Value) -> Value {
    spec[group][field] = value;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_and_the_rust_validator_agree_on_a_table_of_specs() {
    let Some(client) = client_or_skip("crd validation table").await else {
        return;
    };
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "crd-table", json!({})).await;
    let api = policies(&client, &ns.name);

    // One invalid spec per rule: every CEL rule on the spec (RULES, in
    // order) and what the OpenAPI schema says on its own; each names the
    // field the API server must blame.
    let invalid: Vec<(Value, &str)> = vec![
        (json!({"selector": {}, "port": "grpc"}), "selector"),
        (
            json!({"selector": {"matchLabels": {}, "matchExpressions": []}, "port": "grpc"}),
            "selector",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": 0}),
            "port",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": 65536}),
            "port",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "GRPC"}),
            "port",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "8080"}),
            "port",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "a--b"}),
            "port",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "sixteen-chars-xx"}),
            "port",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": 8080, "agentPort": 8080}),
            "agentPort",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc", "agentPort": 0}),
            "agentPort",
        ),
        (
            with(base(), "server", "time", json!("999ms")),
            "server.time",
        ),
        (
            with(base(), "server", "timeout", json!("0s")),
            "server.timeout",
        ),
        (
            with(base(), "server", "maxConnectionIdle", json!("0s")),
            "server.maxConnectionIdle",
        ),
        (
            with(base(), "server", "maxConnectionAge", json!("0s")),
            "server.maxConnectionAge",
        ),
        (
            with(base(), "enforcement", "minTime", json!("0s")),
            "enforcement.minTime",
        ),
        (
            with(base(), "upstream", "time", json!("9s")),
            "upstream.time",
        ),
        (
            with(base(), "upstream", "timeout", json!("0s")),
            "upstream.timeout",
        ),
        (
            with(base(), "drain", "timeout", json!("0s")),
            "drain.timeout",
        ),
        (
            with(base(), "drain", "goawayAckTimeout", json!("0s")),
            "drain.goawayAckTimeout",
        ),
        (
            with(base(), "drain", "quietPeriod", json!("61s")),
            "drain.quietPeriod",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc",
                   "drain": {"timeout": "10s", "goawayAckTimeout": "10s"}}),
            "drain.goawayAckTimeout",
        ),
        (
            with(base(), "rebalance", "window", json!("0s")),
            "rebalance.window",
        ),
        (
            with(base(), "rebalance", "window", json!("10m1s")),
            "rebalance.window",
        ),
        // The schema's minimum and maximum, before any CEL rule.
        (
            with(base(), "rebalance", "maxPercent", json!(0)),
            "rebalance.maxPercent",
        ),
        (
            with(base(), "rebalance", "maxPercent", json!(101)),
            "rebalance.maxPercent",
        ),
        (
            with(base(), "rebalance", "enabled", json!("yes")),
            "rebalance.enabled",
        ),
        // Not a duration at all: the schema's format, before any CEL rule.
        (with(base(), "server", "time", json!("soon")), "server.time"),
        (with(base(), "drain", "delay", json!("-1s")), "drain.delay"),
        (
            json!({"selector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
                   "port": "grpc"}),
            "operator",
        ),
    ];
    // Every CEL rule on the spec is exercised by the table above.
    for rule in RULES {
        let field = rule.field_path.trim_start_matches('.');
        assert!(
            invalid.iter().any(|(_, f)| *f == field),
            "no table entry for the rule on {field}"
        );
    }
    for (i, (spec, field)) in invalid.iter().enumerate() {
        let server = server_verdict(&api, &format!("bad-{i}"), spec).await;
        let message = server.expect_err(&format!("the API server accepted {spec}"));
        assert!(
            message.contains(field),
            "{spec}: the API server's message does not name {field}: {message}"
        );
        assert!(
            rust_verdict(spec).is_err(),
            "{spec}: the API server rejects it ({message}) but the Rust validator accepts it"
        );
    }

    let valid = [
        base(),
        json!({"selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}, "port": 8080,
               "agentPort": 15052}),
        json!({"selector": {"matchLabels": {"app": "a"}}, "port": "grpc-web-1",
               "server": {"time": "1s", "timeout": "1ms", "maxConnectionIdle": "5m",
                          "maxConnectionAge": "30m", "maxConnectionAgeGrace": "0s"},
               "enforcement": {"minTime": "1ns", "permitWithoutStream": true},
               "upstream": {"time": "10s", "timeout": "1s", "permitWithoutStream": true},
               "drain": {"delay": "5s", "timeout": "1m30s", "goawayAckTimeout": "1m29s",
                         "quietPeriod": "0s"},
               "rebalance": {"enabled": true, "window": "10m", "maxPercent": 100}}),
        json!({"selector": {"matchLabels": {"a": "b"}}, "port": 65535, "drain": {"timeout": "6s"}}),
        // The default goawayAckTimeout follows a short timeout (half of it).
        json!({"selector": {"matchLabels": {"a": "b"}}, "port": 65535, "drain": {"timeout": "2s"}}),
        json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc",
               "drain": {"delay": "30s", "quietPeriod": "1m"}}),
        json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc",
               "rebalance": {"enabled": true, "window": "1ms", "maxPercent": 1}}),
    ];
    for (i, spec) in valid.iter().enumerate() {
        server_verdict(&api, &format!("good-{i}"), spec)
            .await
            .unwrap_or_else(|e| panic!("the API server rejected {spec}: {e}"));
        rust_verdict(spec).unwrap_or_else(|e| panic!("the Rust validator rejected {spec}: {e}"));
    }

    // The name rule on the object (ConfigMap goaway-<name> must fit).
    let long = "a".repeat(goaway_operator::crd::MAX_POLICY_NAME_LEN + 1);
    let message = server_verdict(&api, &long, &base())
        .await
        .expect_err("a policy name too long for its ConfigMap");
    assert!(message.contains("246"), "{message}");
    server_verdict(&api, &long[1..], &base())
        .await
        .expect("a name of the maximum length");
    ns.delete().await;
}

fn duration() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("0s")),
        Just(Some("500ms")),
        Just(Some("1s")),
        Just(Some("4s")),
        Just(Some("5s")),
        Just(Some("9.5s")),
        Just(Some("10s")),
        Just(Some("30s")),
        Just(Some("1m30s")),
        Just(Some("2h")),
    ]
}

/// The CRD test's generated specs (operator/tests/crd.rs checks them with
/// kube's CEL interpreter), here sent to the real API server.
#[test]
fn the_api_server_and_the_rust_validator_agree_on_generated_specs() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let Some(client) = runtime.block_on(client_or_skip("generated specs")) else {
        return;
    };
    runtime.block_on(install_crd(&client));
    let ns = runtime.block_on(TestNamespace::new(&client, "crd-prop", json!({})));
    let api = policies(&client, &ns.name);
    let config = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        d in proptest::collection::vec(duration(), 12),
        port in prop_oneof![Just(json!("grpc")), Just(json!(8080)), Just(json!(15051))],
        agent_port in prop_oneof![Just(None), Just(Some(8080)), Just(Some(15051))],
    )| {
        let mut spec = base();
        spec["port"] = port;
        if let Some(a) = agent_port {
            spec["agentPort"] = json!(a);
        }
        let fields = [
            ("server", "time"), ("server", "timeout"), ("server", "maxConnectionIdle"),
            ("server", "maxConnectionAge"), ("server", "maxConnectionAgeGrace"),
            ("enforcement", "minTime"), ("upstream", "time"), ("upstream", "timeout"),
            ("drain", "delay"), ("drain", "timeout"), ("drain", "goawayAckTimeout"),
            ("rebalance", "window"),
        ];
        for ((group, field), value) in fields.iter().zip(&d) {
            if let Some(v) = value {
                spec[*group][*field] = json!(v);
            }
        }
        let server = runtime.block_on(server_verdict(&api, "generated", &spec));
        let rust = rust_verdict(&spec);
        prop_assert_eq!(
            server.is_ok(), rust.is_ok(),
            "{} -> API server {:?}, Rust {:?}", spec, server, rust
        );
    });
    runtime.block_on(ns.delete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_the_printer_columns_and_explains_the_fields() {
    let Some(client) = client_or_skip("kubectl get/explain").await else {
        return;
    };
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "crd-kubectl", json!({})).await;
    let manifest = json!({
        "apiVersion": "goaway.dev/v1alpha1", "kind": "KeepalivePolicy",
        "metadata": {"name": "api", "namespace": ns.name},
        "spec": {"selector": {"matchLabels": {"app": "api"}}, "port": "grpc",
                 "server": {"maxConnectionAge": "30m"}},
    });
    ok(
        "kubectl apply",
        kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string()),
    );
    // A status as the controller writes it (through the status
    // subresource), so every column has something to show.
    let api: Api<KeepalivePolicy> = Api::namespaced(client.clone(), &ns.name);
    api.patch_status(
        "api",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "observedGeneration": 1, "selector": "app=api", "matchedPods": 3, "injectedPods": 2,
            "interception": "namedPort", "bypassingServices": ["api-headless"],
            "conditions": [{"type": "Ready", "status": "True", "reason": "PolicyRendered",
                            "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z",
                            "observedGeneration": 1},
                           {"type": "Bypassed", "status": "True", "reason": "ServicesBypassAgent",
                            "message": "api-headless", "lastTransitionTime": "2026-01-01T00:00:00Z",
                            "observedGeneration": 1}],
            "lastRebalance": {"service": "api", "from": 3, "to": 6,
                              "time": "2026-01-01T00:00:00Z"},
            "lastRollout": {"started": "2026-01-01T00:00:00Z", "lastDrain": "2026-01-01T00:00:09Z",
                            "revision": "5f7c9", "pods": 3, "connectionsDrained": 7,
                            "streamsCompleted": 40, "connectionsHardClosed": 0, "streamsCut": 0,
                            "result": "3 pods drained, 0 streams cut"},
        }})),
    )
    .await
    .expect("the status subresource takes the controller's status");
    let table = ok("kubectl get kap", kubectl(&["get", "kap", "-n", &ns.name]));
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SELECTOR",
            "PORT",
            "INTERCEPTION",
            "MAX",
            "AGE",
            "MATCHED",
            "INJECTED",
            "READY",
            "BYPASSED",
            "LAST",
            "ROLLOUT",
            "REBALANCED",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..9],
        [
            "api",
            "app=api",
            "grpc",
            "namedPort",
            "30m",
            "3",
            "2",
            "True",
            "True"
        ],
        "{table}"
    );
    // The last rollout's result, then both date columns: when it last
    // rebalanced, its age.
    assert_eq!(
        row[9..row.len() - 2].join(" "),
        "3 pods drained, 0 streams cut",
        "{table}"
    );
    assert_eq!(row.len(), 17, "{table}");

    let explain = ok("kubectl explain", kubectl(&["explain", "kap.spec.server"]));
    for text in [
        "KIND:",
        "KeepalivePolicy",
        "FIELD: server",
        "maxConnectionAge",
        "max_age",
    ] {
        assert!(explain.contains(text), "no {text:?} in:\n{explain}");
    }
    let explain = ok(
        "kubectl explain",
        kubectl(&["explain", "kap.spec.drain.timeout"]),
    );
    assert!(explain.contains("--default-drain-timeout"), "{explain}");
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_output_passes_server_side_dry_run() {
    let Some(client) = client_or_skip("inject --dry-run=server").await else {
        return;
    };
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "inject", json!({})).await;
    let fixtures = repo_root().join("operator/tests/fixtures");
    let manifests = std::fs::read_to_string(fixtures.join("cluster/workloads.yaml"))
        .expect("the workloads fixture");
    let out = Command::new(env!("CARGO_BIN_EXE_goaway-operator"))
        .args(["inject", "--namespace", &ns.name, "--policy"])
        .arg(fixtures.join("inject/policy.yaml"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(manifests.as_bytes())?;
            child.wait_with_output()
        })
        .expect("goaway-operator inject");
    let injected = ok("goaway-operator inject", out);
    let kinds = [
        "deployment.apps/api",
        "statefulset.apps/store",
        "daemonset.apps/agent",
        "replicaset.apps/rs",
        "job.batch/batch",
        "cronjob.batch/nightly",
        "pod/bare",
    ];
    // Every template was injected...
    assert_eq!(
        injected.matches("name: goaway-agent").count(),
        kinds.len(),
        "{injected}"
    );
    // The hooks that only slept (the StatefulSet's `sleep 5`, the bare
    // pod's native sleep) became the drain with the sleep as its floor...
    for floor in ["/drain?min=5s", "/drain?min=3s"] {
        assert!(
            injected.contains(&format!("path: {floor}")),
            "{floor} not in {injected}"
        );
    }
    // ...and the API server accepts every object as injected.
    let applied = ok(
        "kubectl apply --dry-run=server",
        kubectl_stdin(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            &injected,
        ),
    );
    for kind in kinds {
        assert!(
            applied.contains(&format!("{kind} created (server dry run)")),
            "{kind} missing from:\n{applied}"
        );
    }
    ns.delete().await;
}
