use super::*;

use k8s_openapi::api::core::v1::Pod;

fn policy(yaml: &str) -> Arc<KeepalivePolicy> {
    let mut p: KeepalivePolicy = serde_yaml::from_str(yaml).unwrap();
    p.metadata.namespace.get_or_insert_with(|| "ns".into());
    Arc::new(p)
}

fn grpc_policy() -> Arc<KeepalivePolicy> {
    policy(
        "apiVersion: goaway.dev/v1alpha1\nkind: KeepalivePolicy\nmetadata: {name: grpc}\nspec:\n  selector: {matchLabels: {app: api}}\n  port: grpc\n  drain: {delay: 5s, timeout: 40s}\n",
    )
}

fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).unwrap()
}

const API_POD: &str = r#"
metadata: {labels: {app: api}}
spec:
  containers:
  - name: app
    image: app
    ports: [{name: grpc, containerPort: 8080}, {name: metrics, containerPort: 9090}]
    readinessProbe: {grpc: {port: 8080}}
    livenessProbe: {tcpSocket: {port: grpc}}
    startupProbe: {httpGet: {path: /ready, port: metrics}}
"#;

/// Runs [`mutate`] and applies its patch, as the API server would.
fn run(pod: &Pod, policies: &[Arc<KeepalivePolicy>]) -> (Outcome, Pod) {
    run_with(pod, policies, &PolicyDefaults::default())
}

/// [`run`] with the operator's policy defaults.
fn run_with(
    pod: &Pod,
    policies: &[Arc<KeepalivePolicy>],
    defaults: &PolicyDefaults,
) -> (Outcome, Pod) {
    let spec = pod.spec.clone().unwrap();
    let m = mutate(
        &pod.metadata,
        &spec,
        "ns",
        policies,
        defaults,
        &AgentConfig::default(),
        "tok",
    )
    .unwrap();
    let mut value = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut value, &m.patch).unwrap();
    (m.outcome, serde_json::from_value(value).unwrap())
}

fn spec(p: &Pod) -> &PodSpec {
    p.spec.as_ref().unwrap()
}

#[test]
fn named_port_moves_to_the_agent_and_probes_use_the_number() {
    let (outcome, out) = run(&pod(API_POD), &[grpc_policy()]);
    let Outcome::Injected(i) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (i.policy.as_str(), i.app_port, i.port_name.as_deref()),
        ("grpc", 8080, Some("grpc"))
    );
    let app = &spec(&out).containers[0];
    let ports = app.ports.as_ref().unwrap();
    assert_eq!(ports[0].name, None);
    assert_eq!(ports[0].container_port, 8080);
    assert_eq!(ports[1].name.as_deref(), Some("metrics"));
    let live = app
        .liveness_probe
        .as_ref()
        .unwrap()
        .tcp_socket
        .as_ref()
        .unwrap();
    assert_eq!(live.port, IntOrString::Int(8080));
    // Probes on other names are left alone.
    let startup = app
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.port, IntOrString::String("metrics".into()));

    let agent = &spec(&out).init_containers.as_ref().unwrap()[0];
    assert_eq!(agent.name, CONTAINER_NAME);
    assert_eq!(agent.restart_policy.as_deref(), Some("Always"));
    let agent_ports = agent.ports.as_ref().unwrap();
    assert_eq!(agent_ports[0].name.as_deref(), Some("grpc"));
    assert_eq!(agent_ports[0].container_port, 15051);
    assert_eq!(
        agent.args.as_ref().unwrap().join(" "),
        "run --listen 0.0.0.0:15051 --upstream $(GOAWAY_POD_IP):8080 --admin 0.0.0.0:15052 --policy /etc/goaway/policy.yaml --max-connections 4096 --readiness-checks-upstream --admin-allow gateway,$(GOAWAY_HOST_IP) --drain-expiry 50s --max-concurrent-streams 100"
    );
    let sc = agent.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
}

#[test]
fn app_containers_drain_through_the_agent_before_sigterm() {
    let (_, out) = run(&pod(API_POD), &[grpc_policy()]);
    let hook = spec(&out).containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap();
    let get = hook.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/drain"));
    assert_eq!(get.port, IntOrString::Int(15052));
    let header = &get.http_headers.as_ref().unwrap()[0];
    assert_eq!(
        (header.name.as_str(), header.value.as_str()),
        ("Authorization", "Bearer tok")
    );
    let env = spec(&out).init_containers.as_ref().unwrap()[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "GOAWAY_DRAIN_TOKEN" && e.value.as_deref() == Some("tok"))
    );
    // 5s delay + 40s timeout + 5s margin.
    assert_eq!(spec(&out).termination_grace_period_seconds, Some(50));
    let volume = &spec(&out).volumes.as_ref().unwrap()[0];
    assert_eq!(volume.config_map.as_ref().unwrap().name, "goaway-grpc");
    assert_eq!(
        out.metadata.annotations.unwrap()[ANNOTATION_INJECTED],
        "grpc"
    );
}

#[test]
fn grace_period_is_raised_never_lowered() {
    let mut p = pod(API_POD);
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(120);
    let (_, out) = run(&p, &[grpc_policy()]);
    assert_eq!(spec(&out).termination_grace_period_seconds, Some(120));
    // Defaults (0s + 30s + 5s) exceed the kubelet's implicit 30s.
    let default =
        policy("metadata: {name: d}\nspec: {selector: {matchLabels: {app: api}}, port: 8080}\n");
    let (_, out) = run(&pod(API_POD), &[default]);
    assert_eq!(spec(&out).termination_grace_period_seconds, Some(35));
}

#[test]
fn grace_period_covers_the_operator_drain_defaults_the_policy_leaves_out() {
    let defaults = crate::defaults::parsed(Some("10s"), Some("1m"), None);
    // Nothing set in the policy: 10s + 60s + 5s margin.
    let bare =
        policy("metadata: {name: d}\nspec: {selector: {matchLabels: {app: api}}, port: 8080}\n");
    let (_, out) = run_with(&pod(API_POD), &[bare], &defaults);
    assert_eq!(spec(&out).termination_grace_period_seconds, Some(75));
    // The policy's own 5s delay and 40s timeout win: 50s as without defaults.
    let (_, out) = run_with(&pod(API_POD), &[grpc_policy()], &defaults);
    assert_eq!(spec(&out).termination_grace_period_seconds, Some(50));
    // Only the delay left out: 10s + the policy's 20s + 5s.
    let timeout_only = policy(
        "metadata: {name: t}\nspec: {selector: {matchLabels: {app: api}}, port: 8080, drain: {timeout: 20s}}\n",
    );
    let (_, out) = run_with(&pod(API_POD), &[timeout_only], &defaults);
    assert_eq!(spec(&out).termination_grace_period_seconds, Some(35));
}

#[test]
fn a_policy_invalid_with_the_operator_defaults_is_not_injected() {
    // drain.timeout 8s is fine with the built-in 5s acknowledgement bound,
    // not with an operator default of 10s.
    let short = policy(
        "metadata: {name: s}\nspec: {selector: {matchLabels: {app: api}}, port: grpc, drain: {timeout: 8s}}\n",
    );
    let (outcome, _) = run(&pod(API_POD), std::slice::from_ref(&short));
    assert!(matches!(outcome, Outcome::Injected(_)), "{outcome:?}");
    let defaults = crate::defaults::parsed(None, None, Some("10s"));
    let (outcome, out) = run_with(&pod(API_POD), &[short], &defaults);
    assert_eq!(outcome, Outcome::Unchanged(Skip::NoPolicy));
    assert_eq!(out, pod(API_POD));
}

#[test]
fn a_policy_asking_for_redirect_injects_nothing_when_the_operator_forbids_it() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    let mut redirect = (*policy(
        "metadata: {name: r}\nspec: {selector: {matchLabels: {app: api}}, port: grpc, interception: redirect}\n",
    ))
    .clone();
    redirect.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1).unwrap()));
    let redirect = Arc::new(redirect);
    let forbidden = Outcome::RedirectForbidden { policy: "r".into() };
    let forbidding = PolicyDefaults::default().forbidding_redirect(true);
    let (outcome, out) = run_with(&pod(API_POD), std::slice::from_ref(&redirect), &forbidding);
    assert_eq!(outcome, forbidden);
    assert_eq!(out, pod(API_POD));
    // Not namedPort either where the namespace refuses redirect anyway.
    let refusing = forbidding.clone().refusing_redirect();
    let (outcome, _) = run_with(&pod(API_POD), std::slice::from_ref(&redirect), &refusing);
    assert_eq!(outcome, forbidden);

    // The older policy still wins the pod: a namedPort policy selecting
    // it too (no creation timestamp: the newest) does not inject it
    // instead, in a mode its owner did not choose.
    let both = [grpc_policy(), redirect];
    let (outcome, _) = run_with(&pod(API_POD), &both, &forbidding);
    assert_eq!(outcome, forbidden);
    let (outcome, _) = run_with(&pod(API_POD), &both, &PolicyDefaults::default());
    assert!(
        matches!(&outcome, Outcome::Injected(i) if i.policy == "r"),
        "{outcome:?}"
    );
    // A namedPort policy alone is injected as ever.
    let (outcome, _) = run_with(&pod(API_POD), &[grpc_policy()], &forbidding);
    assert!(matches!(outcome, Outcome::Injected(_)), "{outcome:?}");
}

#[test]
fn existing_pre_stop_is_kept_and_reported() {
    let mut p = pod(API_POD);
    let hook: LifecycleHandler =
        serde_yaml::from_str("exec: {command: [sh, -c, 'sleep 5 && curl -s localhost/quit']}")
            .unwrap();
    p.spec.as_mut().unwrap().containers[0].lifecycle = Some(Lifecycle {
        pre_stop: Some(hook.clone()),
        ..Default::default()
    });
    let (outcome, out) = run(&p, &[grpc_policy()]);
    let Outcome::Injected(i) = outcome else {
        panic!()
    };
    assert_eq!(i.kept_pre_stop, ["app"]);
    assert_eq!(
        spec(&out).containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop,
        Some(hook)
    );
}

#[test]
fn numeric_port_is_used_even_when_undeclared() {
    let p8081 = policy(
        "metadata: {name: n}\nspec: {selector: {matchLabels: {app: api}}, port: 8081, agentPort: 9000}\n",
    );
    let (outcome, out) = run(&pod(API_POD), &[p8081]);
    let Outcome::Injected(i) = outcome else {
        panic!()
    };
    assert_eq!((i.app_port, i.port_name), (8081, None));
    let agent = &spec(&out).init_containers.as_ref().unwrap()[0];
    assert_eq!(
        agent.ports.as_ref().unwrap()[0].name.as_deref(),
        Some(sidecar::PROXY_PORT_NAME)
    );
    assert_eq!(agent.ports.as_ref().unwrap()[0].container_port, 9000);
}

#[test]
fn numeric_port_of_a_named_container_port_takes_the_name_too() {
    let p =
        policy("metadata: {name: n}\nspec: {selector: {matchLabels: {app: api}}, port: 8080}\n");
    let (outcome, _) = run(&pod(API_POD), &[p]);
    let Outcome::Injected(i) = outcome else {
        panic!()
    };
    assert_eq!(i.port_name.as_deref(), Some("grpc"));
}

#[test]
fn second_pass_changes_nothing() {
    let (_, once) = run(&pod(API_POD), &[grpc_policy()]);
    let (outcome, twice) = run(&once, &[grpc_policy()]);
    assert_eq!(outcome, Outcome::Unchanged(Skip::AlreadyInjected));
    assert_eq!(once, twice);
}

#[test]
fn host_network_opted_out_and_unselected_pods_are_unchanged() {
    let mut host = pod(API_POD);
    host.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(
        run(&host, &[grpc_policy()]).0,
        Outcome::Unchanged(Skip::HostNetwork)
    );

    let mut windows = pod(API_POD);
    windows.spec.as_mut().unwrap().os = Some(k8s_openapi::api::core::v1::PodOS {
        name: "windows".into(),
    });
    assert_eq!(
        run(&windows, &[grpc_policy()]).0,
        Outcome::Unchanged(Skip::Windows)
    );

    let mut opted = pod(API_POD);
    opted.metadata.annotations =
        Some([(ANNOTATION_INJECT.to_string(), "false".to_string())].into());
    assert_eq!(
        run(&opted, &[grpc_policy()]).0,
        Outcome::Unchanged(Skip::OptedOut)
    );

    let mut labelled = pod(API_POD);
    labelled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_INJECT.into(), "disabled".into());
    assert_eq!(
        run(&labelled, &[grpc_policy()]).0,
        Outcome::Unchanged(Skip::OptedOut)
    );

    let other = pod("metadata: {labels: {app: web}}\nspec: {containers: [{name: web}]}\n");
    assert_eq!(
        run(&other, &[grpc_policy()]).0,
        Outcome::Unchanged(Skip::NoPolicy)
    );
}

#[test]
fn conflicts_are_errors_not_silent_changes() {
    let missing = pod("metadata: {labels: {app: api}}\nspec: {containers: [{name: app}]}\n");
    let spec_ = missing.spec.clone().unwrap();
    let err = mutate(
        &missing.metadata,
        &spec_,
        "ns",
        &[grpc_policy()],
        &PolicyDefaults::default(),
        &AgentConfig::default(),
        "t",
    )
    .unwrap_err();
    assert!(matches!(err, InjectError::PortNotFound { .. }), "{err}");

    let mut taken = pod(API_POD);
    taken.spec.as_mut().unwrap().containers[0]
        .ports
        .as_mut()
        .unwrap()[1]
        .container_port = 15052;
    let spec_ = taken.spec.clone().unwrap();
    let err = mutate(
        &taken.metadata,
        &spec_,
        "ns",
        &[grpc_policy()],
        &PolicyDefaults::default(),
        &AgentConfig::default(),
        "t",
    )
    .unwrap_err();
    assert_eq!(
        err,
        InjectError::PortInUse {
            port: 15052,
            container: "app".into()
        }
    );

    let try_inject = |pod: &Pod, policy: Arc<KeepalivePolicy>, agent: &AgentConfig| {
        mutate(
            &pod.metadata,
            pod.spec.as_ref().unwrap(),
            "ns",
            &[policy],
            &PolicyDefaults::default(),
            agent,
            "t",
        )
        .unwrap_err()
    };

    // Two containers naming the port alike: the Service's named targetPort
    // would move to the other container, not to the agent.
    let twice = pod(r#"
metadata: {labels: {app: api}}
spec:
  containers:
  - {name: app, ports: [{name: grpc, containerPort: 8080}]}
  - {name: app2, ports: [{name: grpc, containerPort: 8082}]}
"#);
    assert_eq!(
        try_inject(&twice, grpc_policy(), &AgentConfig::default()),
        InjectError::AmbiguousPortName {
            port: "grpc".into(),
            containers: vec!["app".into(), "app2".into()],
        }
    );

    // A UDP port of that name: moving its name would break a UDP Service.
    let udp = pod(r#"
metadata: {labels: {app: api}}
spec:
  containers:
  - {name: app, ports: [{name: grpc, containerPort: 8080, protocol: UDP}]}
"#);
    assert_eq!(
        try_inject(&udp, grpc_policy(), &AgentConfig::default()),
        InjectError::NotTcp {
            port: "grpc".into(),
            protocol: "UDP".into(),
        }
    );

    // The policy's agentPort on the agent's admin port: said as such.
    let on_admin = policy(
        "apiVersion: goaway.dev/v1alpha1\nkind: KeepalivePolicy\nmetadata: {name: grpc}\nspec:\n  selector: {matchLabels: {app: api}}\n  port: grpc\n  agentPort: 15052\n",
    );
    let err = try_inject(&pod(API_POD), on_admin, &AgentConfig::default());
    assert_eq!(
        err,
        InjectError::PortClash {
            port: 15052,
            first: "the policy's agentPort",
            second: "the agent's admin port (--agent-admin-port)",
        }
    );
    assert_eq!(
        err.to_string(),
        "the policy's agentPort and the agent's admin port (--agent-admin-port) are both port 15052"
    );
}

#[test]
fn drain_tokens_are_random_hex() {
    let (a, b) = (new_drain_token(), new_drain_token());
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

#[test]
fn the_kept_prestop_hint_gives_both_commands() {
    assert!(super::KEPT_PRE_STOP_HINT.contains(super::KEPT_PRE_STOP_CURL));
    assert!(super::KEPT_PRE_STOP_HINT.contains(super::KEPT_PRE_STOP_WGET));
}

#[test]
fn both_opt_out_spellings_work_for_the_annotation_and_the_label() {
    use super::{ANNOTATION_INJECT, LABEL_INJECT, Skip, skip_reason, unrecognised_inject_value};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let spec = k8s_openapi::api::core::v1::PodSpec::default();
    for value in ["false", "disabled"] {
        let by_annotation = ObjectMeta {
            annotations: Some([(ANNOTATION_INJECT.to_string(), value.to_string())].into()),
            ..Default::default()
        };
        let by_label = ObjectMeta {
            labels: Some([(LABEL_INJECT.to_string(), value.to_string())].into()),
            ..Default::default()
        };
        for meta in [by_annotation, by_label] {
            assert_eq!(skip_reason(&meta, &spec), Some(Skip::OptedOut), "{meta:?}");
            assert_eq!(unrecognised_inject_value(&meta), None);
        }
    }
    for value in ["true", "enabled"] {
        let meta = ObjectMeta {
            annotations: Some([(ANNOTATION_INJECT.to_string(), value.to_string())].into()),
            ..Default::default()
        };
        assert_eq!(skip_reason(&meta, &spec), None);
        assert_eq!(unrecognised_inject_value(&meta), None);
    }
    for value in ["no", "False", "off"] {
        let meta = ObjectMeta {
            labels: Some([(LABEL_INJECT.to_string(), value.to_string())].into()),
            ..Default::default()
        };
        assert_eq!(skip_reason(&meta, &spec), None, "{value} opted out");
        let warning = unrecognised_inject_value(&meta).expect("a warning");
        assert!(
            warning.contains(value) && warning.contains("label"),
            "{warning}"
        );
    }
}

#[test]
fn agent_pull_secrets_are_appended_once_and_the_added_ones_recorded() {
    let agent = AgentConfig {
        image_pull_secrets: vec!["regcred".into(), "goaway-registry".into()],
        ..AgentConfig::default()
    };
    let inject = |pod: &Pod| {
        let m = mutate(
            &pod.metadata,
            pod.spec.as_ref().unwrap(),
            "ns",
            &[grpc_policy()],
            &PolicyDefaults::default(),
            &agent,
            "tok",
        )
        .unwrap();
        let mut value = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut value, &m.patch).unwrap();
        serde_json::from_value::<Pod>(value).unwrap()
    };
    let names = |p: &Pod| -> Vec<String> {
        spec(p)
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.clone())
            .collect()
    };
    let recorded = |p: &Pod| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_INJECTED_PULL_SECRETS))
            .cloned()
    };

    // The app's own secret stays first and is not listed twice; only the
    // name injection added is recorded.
    let mut with_own = pod(API_POD);
    with_own.spec.as_mut().unwrap().image_pull_secrets = Some(vec![LocalObjectReference {
        name: "regcred".into(),
    }]);
    let out = inject(&with_own);
    assert_eq!(names(&out), ["regcred", "goaway-registry"]);
    assert_eq!(recorded(&out).as_deref(), Some("goaway-registry"));

    let out = inject(&pod(API_POD));
    assert_eq!(names(&out), ["regcred", "goaway-registry"]);
    assert_eq!(recorded(&out).as_deref(), Some("regcred,goaway-registry"));

    // Without the flag, nothing about pull secrets changes.
    let (_, out) = run(&pod(API_POD), &[grpc_policy()]);
    assert_eq!(spec(&out).image_pull_secrets, None);
    assert_eq!(recorded(&out), None);
}

#[test]
fn a_pre_stop_that_only_sleeps_becomes_the_drain_with_the_sleep_as_floor() {
    let mut p = pod(API_POD);
    let containers = &mut p.spec.as_mut().unwrap().containers;
    let mut sidecar = containers[0].clone();
    sidecar.name = "side".into();
    sidecar.ports = None;
    containers.push(sidecar);
    let hooks: [LifecycleHandler; 2] = [
        serde_yaml::from_str("exec: {command: [/bin/sh, -c, 'sleep 20']}").unwrap(),
        serde_yaml::from_str("sleep: {seconds: 3}").unwrap(),
    ];
    for (c, hook) in containers.iter_mut().zip(&hooks) {
        c.lifecycle = Some(Lifecycle {
            pre_stop: Some(hook.clone()),
            ..Default::default()
        });
    }
    // The grace period stays the pod's: it bounded the sleep before.
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(60);

    let (outcome, out) = run(&p, &[grpc_policy()]);
    let Outcome::Injected(i) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(i.kept_pre_stop, Vec::<String>::new());
    assert_eq!(
        i.replaced_sleep,
        [
            ("app".to_string(), std::time::Duration::from_secs(20)),
            ("side".to_string(), std::time::Duration::from_secs(3)),
        ]
    );
    let paths: Vec<_> = spec(&out)
        .containers
        .iter()
        .map(|c| {
            let hook = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
            assert!(hook.exec.is_none() && hook.sleep.is_none(), "{hook:?}");
            let get = hook.http_get.as_ref().unwrap();
            assert_eq!(
                get.http_headers.as_ref().unwrap()[0].value,
                "Bearer tok",
                "the pod's token"
            );
            get.path.clone().unwrap()
        })
        .collect();
    assert_eq!(paths, ["/drain?min=20s", "/drain?min=3s"]);
    // No drain variables: nothing of the user's calls /drain.
    assert!(spec(&out).containers.iter().all(|c| c.env.is_none()));
    assert_eq!(spec(&out).termination_grace_period_seconds, Some(60));
    // The originals, recorded for uninject.
    let recorded: std::collections::BTreeMap<String, LifecycleHandler> = serde_json::from_str(
        &out.metadata.annotations.as_ref().unwrap()[pre_stop::ANNOTATION_REPLACED_PRE_STOP],
    )
    .unwrap();
    assert_eq!(recorded["app"], hooks[0]);
    assert_eq!(recorded["side"], hooks[1]);
    assert_eq!(recorded.len(), 2);

    // Without sleeping hooks, no such annotation.
    let (_, plain) = run(&pod(API_POD), &[grpc_policy()]);
    assert!(
        !plain
            .metadata
            .annotations
            .unwrap()
            .contains_key(pre_stop::ANNOTATION_REPLACED_PRE_STOP)
    );
}
