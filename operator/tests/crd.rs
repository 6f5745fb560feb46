//! The CRD: the committed manifest is what the code generates, and its
//! CEL rules agree with the Rust validator the reconciler and the agent
//! use (evaluated with kube's CEL interpreter, no cluster needed).

use goaway_operator::crd::{self, KeepalivePolicy, RULES};
use proptest::prelude::*;
use serde_json::{Value, json};

#[test]
fn committed_crd_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/keepalivepolicy.yaml");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = crd::manifest().unwrap();
    assert!(
        committed == generated,
        "crds/keepalivepolicy.yaml is stale; regenerate it with\n  cargo run -p goaway-operator --bin crdgen > crds/keepalivepolicy.yaml"
    );
}

#[test]
fn crd_has_short_name_status_subresource_and_printer_columns() {
    let crd = goaway_operator::crd::definition();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("keepalivepolicies.goaway.dev")
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["kap".to_string()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Selector",
            "Port",
            "Interception",
            "Max Age",
            "Matched",
            "Injected",
            "Ready",
            "Bypassed",
            "Last Rollout",
            "Rebalanced",
            "Age"
        ]
    );
    let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    // kubectl explain reads these descriptions from the doc comments.
    assert!(
        spec["properties"]["server"]["properties"]["maxConnectionAge"]["description"]
            .as_str()
            .unwrap()
            .contains("max_age")
    );
    assert_eq!(
        spec["x-kubernetes-validations"].as_array().unwrap().len(),
        RULES.len()
    );
}

#[test]
fn drain_fields_say_an_unset_value_takes_the_operators_default() {
    let crd = goaway_operator::crd::definition();
    let schema = serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap()).unwrap();
    let drain = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["drain"];
    let text = |v: &Value| v["description"].as_str().unwrap_or_default().to_string();
    assert!(
        text(drain)
            .contains("A field left unset takes the operator's default: the one named below"),
        "{drain}"
    );
    for (field, flag, built_in) in [
        ("delay", "--default-drain-delay", "Default 0s."),
        ("timeout", "--default-drain-timeout", "Default 30s."),
        (
            "goawayAckTimeout",
            "--default-drain-goaway-ack-timeout",
            "Default 5s",
        ),
    ] {
        let description = text(&drain["properties"][field]);
        // The policy type's own words first, then the operator's note.
        assert!(description.contains(built_in), "{field}: {description}");
        assert!(
            description.ends_with(&format!(
                "Unset: the operator's default ({flag}, Helm value agent.drain.{field}) when it has one."
            )),
            "{field}: {description}"
        );
    }
    // The other groups are the policy type's documentation alone.
    let server = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["server"];
    assert!(!server.to_string().contains("operator's default"));
}

fn object(spec: Value) -> KeepalivePolicy {
    serde_json::from_value(json!({
        "apiVersion": "goaway.dev/v1alpha1",
        "kind": "KeepalivePolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": spec,
    }))
    .unwrap()
}

/// Evaluates the CRD's CEL rules on `p` client-side. kube-cel has no
/// `type()`, so the `port` rule (which needs it to tell a number from a
/// name) is left out here; [`port_rule_is_checked_in_rust`] covers it.
fn cel(p: &KeepalivePolicy) -> Result<(), String> {
    let crd = goaway_operator::crd::definition();
    let mut schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let rules = schema["properties"]["spec"]["x-kubernetes-validations"]
        .as_array_mut()
        .unwrap();
    rules.retain(|r| !r["rule"].as_str().unwrap().starts_with("type("));
    let object = serde_json::to_value(p).unwrap();
    kube::core::cel::Validator::new()
        .validate(&schema, &object, None)
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn port_rule_is_checked_in_rust() {
    let rule = RULES.iter().find(|r| r.field_path == ".port").unwrap();
    assert!(rule.rule.starts_with("type(self.port) == int"));
    assert!(rule.rule.contains("!self.port.contains('--')"));
    for (port, ok) in [
        (json!("grpc"), true),
        (json!(8080), true),
        (json!("GRPC"), false),
        (json!(0), false),
        (json!("8080"), false),
        // IANA service names have no adjacent hyphens; the CEL rule says so too.
        (json!("a--b"), false),
        (json!("a-b"), true),
    ] {
        let p = object(json!({"selector": {"matchLabels": {"a": "b"}}, "port": port}));
        assert_eq!(p.spec.check().is_ok(), ok, "{port}");
    }
}

#[test]
fn cel_rejects_what_the_schema_cannot_say() {
    let ok = object(json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc"}));
    cel(&ok).unwrap();
    for (bad, field) in [
        (json!({"selector": {}, "port": "grpc"}), "selector"),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": 80, "agentPort": 80}),
            "agentPort",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc", "server": {"time": "999ms"}}),
            "server.time",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc", "upstream": {"time": "9s"}}),
            "upstream.time",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc", "drain": {"timeout": "5s", "goawayAckTimeout": "5s"}}),
            "drain.goawayAckTimeout",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc", "drain": {"quietPeriod": "2m"}}),
            "drain.quietPeriod",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc", "enforcement": {"minTime": "0s"}}),
            "enforcement.minTime",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc", "rebalance": {"window": "0s"}}),
            "rebalance.window",
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc", "rebalance": {"enabled": true, "window": "11m"}}),
            "rebalance.window",
        ),
    ] {
        let p = object(bad.clone());
        let err = cel(&p).expect_err(&bad.to_string());
        assert!(err.contains(field), "{bad}: {err}");
        assert!(
            p.spec.check().is_err(),
            "{bad}: the Rust validator accepts it"
        );
    }
}

/// `rebalance.maxPercent` is bounded by the schema itself (the API server
/// checks `minimum`/`maximum` before any CEL rule), as in Rust.
#[test]
fn rebalance_max_percent_is_a_percentage_in_the_schema_and_in_rust() {
    let crd = goaway_operator::crd::definition();
    let schema = serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap()).unwrap();
    let field = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["rebalance"]["properties"]
        ["maxPercent"];
    assert_eq!(field["type"], "integer", "{field}");
    assert_eq!(field["minimum"], 1.0, "{field}");
    assert_eq!(field["maximum"], 100.0, "{field}");
    for (percent, ok) in [(0, false), (1, true), (50, true), (100, true), (101, false)] {
        let p = object(
            json!({"selector": {"matchLabels": {"a": "b"}}, "port": "grpc",
                              "rebalance": {"enabled": true, "maxPercent": percent}}),
        );
        assert_eq!(p.spec.check().is_ok(), ok, "{percent}");
    }
}

fn duration() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("0s".to_string())),
        Just(Some("500ms".to_string())),
        Just(Some("1s".to_string())),
        Just(Some("4s".to_string())),
        Just(Some("5s".to_string())),
        Just(Some("9.5s".to_string())),
        Just(Some("10s".to_string())),
        Just(Some("30s".to_string())),
        Just(Some("1m30s".to_string())),
        Just(Some("2h".to_string())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn cel_rules_agree_with_the_rust_validator(
        d in proptest::collection::vec(duration(), 12),
        port in prop_oneof![Just(json!("grpc")), Just(json!(8080)), Just(json!(15051))],
        agent_port in prop_oneof![Just(None), Just(Some(8080)), Just(Some(15051))],
    ) {
        let mut spec = json!({"selector": {"matchLabels": {"app": "a"}}, "port": port});
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
        let p = object(spec.clone());
        let rust = p.spec.check().is_ok();
        let api = cel(&p);
        prop_assert_eq!(rust, api.is_ok(), "{} -> rust {} cel {:?}", spec, rust, api);
    }
}

/// A null in a nullable field survives to the CEL rules, where `has()`
/// lets it through to `duration(null)`; without `nullable` the API server
/// prunes it first. Nothing in the spec is nullable.
#[test]
fn no_spec_field_is_nullable() {
    let crd = goaway_operator::crd::definition();
    let schema = serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap()).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    assert!(spec.is_object());
    assert!(!spec.to_string().contains("nullable"), "{spec}");
}

/// The controller names the ConfigMap goaway-<policy>; the CRD refuses a
/// policy name too long for that to be an object name.
#[test]
fn policy_names_leave_room_for_the_config_map_name() {
    assert_eq!(
        goaway_operator::crd::config_map_name(
            &"a".repeat(goaway_operator::crd::MAX_POLICY_NAME_LEN)
        )
        .len(),
        253
    );
    let crd = goaway_operator::crd::definition();
    let root = crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    let rules = root.x_kubernetes_validations.as_ref().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r.rule == "size(self.metadata.name) <= 246"),
        "{rules:?}"
    );
}

/// The schema lists the valid matchExpressions operators, so the API
/// server refuses another at apply time; the Rust check agrees.
#[test]
fn selector_operators_are_an_enum_the_rust_check_agrees_with() {
    let crd = goaway_operator::crd::definition();
    let schema = serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap()).unwrap();
    let operator = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["selector"]["properties"]
        ["matchExpressions"]["items"]["properties"]["operator"];
    assert_eq!(
        operator["enum"],
        json!(["In", "NotIn", "Exists", "DoesNotExist"]),
        "{operator}"
    );
    for (op, ok) in [("In", true), ("Exists", true), ("Equals", false)] {
        let values = if op == "Exists" {
            json!([])
        } else {
            json!(["x"])
        };
        let p = object(json!({
            "selector": {"matchExpressions": [{"key": "a", "operator": op, "values": values}]},
            "port": "grpc",
        }));
        assert_eq!(p.spec.check().is_ok(), ok, "{op}");
    }
}
