//! `goaway-operator inject`: the real binary on manifests of every pod
//! template kind. Selected templates are mutated exactly as the webhook
//! mutates pods; everything else comes out byte for byte; a second run
//! changes nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use goaway_operator::{Interception, PolicyDefaults};
use goaway_tests::Scratch;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn inject(input: &str) -> (String, String) {
    inject_with(input, &[])
}

/// `inject` with extra flags.
fn inject_with(input: &str, flags: &[&str]) -> (String, String) {
    inject_policy(&fixtures().join("policy.yaml"), input, flags)
}

/// `inject` of `input` with the policies of the file `policy` and extra
/// flags; its stdout and stderr.
fn inject_policy(policy: &Path, input: &str, flags: &[&str]) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_goaway-operator"))
        .args(["inject", "--policy"])
        .arg(policy)
        .args(["--namespace", "shop"])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn documents(text: &str) -> Vec<&str> {
    text.split("---\n").collect()
}

fn template(doc: &Value) -> &Value {
    match doc["kind"].as_str().unwrap() {
        "Pod" => doc,
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => &doc["spec"]["template"],
    }
}

#[test]
fn every_template_kind_is_injected_and_the_rest_is_byte_for_byte() {
    let input = std::fs::read_to_string(fixtures().join("manifests.yaml")).unwrap();
    let (output, stderr) = inject(&input);
    let (ins, outs) = (documents(&input), documents(&output));
    assert_eq!(ins.len(), outs.len());
    for line in [
        "Deployment/api: api",
        "StatefulSet/statefulset: api",
        "DaemonSet/daemonset: api",
        "ReplicaSet/replicaset: api",
        "Job/job: api",
        "CronJob/nightly: api",
        "Pod/bare: api",
        "Pod/listed: api",
    ] {
        assert!(
            stderr.contains(&format!("injected {line}")),
            "{line} missing from\n{stderr}"
        );
    }
    for (before, after) in ins.iter().zip(&outs) {
        let doc: Value = serde_yaml::from_str(before).unwrap();
        let kind = doc["kind"].as_str().unwrap();
        let selected = match kind {
            "Service" | "ConfigMap" => false,
            "List" => true,
            _ => template(&doc)["metadata"]["labels"]["tier"] == "backend",
        };
        if !selected {
            assert_eq!(before, after, "{kind} changed");
            continue;
        }
        let mutated: Value = serde_yaml::from_str(after).unwrap();
        let pods: Vec<&Value> = match kind {
            "List" => mutated["items"].as_array().unwrap().iter().collect(),
            _ => vec![template(&mutated)],
        };
        for pod in pods {
            assert_eq!(
                pod["metadata"]["annotations"]["goaway.dev/injected"], "api",
                "{kind}"
            );
            let spec: PodSpec = serde_json::from_value(pod["spec"].clone()).unwrap();
            let agent = &spec.init_containers.as_ref().unwrap()[0];
            assert_eq!(agent.name, "goaway-agent");
            assert_eq!(
                agent.ports.as_ref().unwrap()[0].name.as_deref(),
                Some("grpc")
            );
            assert!(
                spec.containers[0]
                    .lifecycle
                    .as_ref()
                    .unwrap()
                    .pre_stop
                    .is_some()
            );
        }
        // Fields the mutation does not touch keep their exact values.
        if kind == "Deployment" {
            assert_eq!(mutated["spec"]["replicas"], 3);
            assert_eq!(
                mutated["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
                0.5
            );
        }
    }
}

#[test]
fn running_on_its_own_output_changes_nothing() {
    let input = std::fs::read_to_string(fixtures().join("manifests.yaml")).unwrap();
    let (once, _) = inject(&input);
    let (twice, stderr) = inject(&once);
    assert_eq!(once, twice);
    assert!(!stderr.contains("injected"), "{stderr}");
}

#[test]
fn the_cli_mutation_equals_the_webhook_mutation() {
    // The bare Pod through the CLI and through inject::mutate (the
    // webhook's function) with the CLI's token give the same pod, in
    // both interception modes.
    for (mode, flags) in [
        (Interception::NamedPort, vec![]),
        (
            Interception::Redirect,
            vec!["--default-interception", "redirect"],
        ),
    ] {
        let bare = bare_document();
        let (output, _) = inject_with(&bare, &flags);
        let cli: Pod = serde_yaml::from_str(&output).unwrap();
        let inits = cli.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
        let agent = inits.iter().find(|c| c.name == "goaway-agent").unwrap();
        let token = agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "GOAWAY_DRAIN_TOKEN")
            .and_then(|e| e.value.clone())
            .unwrap();
        let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
        match mode {
            Interception::NamedPort => assert_eq!(names, ["goaway-agent"]),
            Interception::Redirect => assert_eq!(names, ["goaway-intercept", "goaway-agent"]),
        }

        let pod: Pod = serde_yaml::from_str(&bare).unwrap();
        let defaults = PolicyDefaults::default().with_interception(mode);
        let policies = goaway_operator::manifests::load_policies(
            &std::fs::read_to_string(fixtures().join("policy.yaml")).unwrap(),
            "shop",
            &defaults,
        )
        .unwrap();
        let m = goaway_operator::inject::mutate(
            &pod.metadata,
            pod.spec.as_ref().unwrap(),
            "shop",
            &policies,
            &defaults,
            &Default::default(),
            &token,
        )
        .unwrap();
        let mut value = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut value, &m.patch).unwrap();
        assert_eq!(serde_json::to_value(&cli).unwrap(), value, "{mode:?}");
    }
}

#[test]
fn forbid_redirect_leaves_the_templates_of_a_redirect_policy_alone_and_says_why() {
    let dir = Scratch::new("inject-forbid").unwrap();
    let policy = dir.path().join("redirect.yaml");
    let text = std::fs::read_to_string(fixtures().join("policy.yaml")).unwrap();
    std::fs::write(&policy, format!("{text}  interception: redirect\n")).unwrap();
    let bare = bare_document();

    let (out, stderr) = inject_policy(&policy, &bare, &[]);
    let pod: Pod = serde_yaml::from_str(&out).unwrap();
    let inits: Vec<String> = pod
        .spec
        .unwrap()
        .init_containers
        .into_iter()
        .flatten()
        .map(|c| c.name)
        .collect();
    assert_eq!(inits, ["goaway-intercept", "goaway-agent"]);
    assert!(!stderr.contains("forbid"), "{stderr}");

    for flags in [&["--forbid-redirect"][..], &["--forbid-redirect=true"]] {
        let (out, stderr) = inject_policy(&policy, &bare, flags);
        assert_eq!(out, bare, "{flags:?}");
        assert_eq!(
            stderr,
            "warning: Pod/bare: not injected: policy api asks for redirect interception, which the operator forbids (--forbid-redirect: no pod may get its NET_ADMIN init container); set the policy's spec.interception to namedPort to inject its pods\n",
            "{flags:?}"
        );
    }
}

#[test]
fn invalid_policy_files_are_refused_with_the_field() {
    let dir = Scratch::new("inject").unwrap();
    let bad = dir.path().join("bad.yaml");
    let long = "a".repeat(247);
    for (metadata, spec, error) in [
        (
            "{name: bad}",
            "{selector: {matchLabels: {a: b}}, port: grpc, server: {time: 10ms}}",
            "spec.server.time: must be at least 1s",
        ),
        // A name whose ConfigMap (goaway-<name>) could not exist.
        (
            &format!("{{name: {long}}}"),
            "{selector: {matchLabels: {a: b}}, port: grpc}",
            "metadata.name must be at most 246 characters",
        ),
    ] {
        let policy = format!(
            "apiVersion: goaway.dev/v1alpha1\nkind: KeepalivePolicy\nmetadata: {metadata}\nspec: {spec}\n"
        );
        std::fs::write(&bad, policy).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_goaway-operator"))
            .args(["inject", "--policy"])
            .arg(&bad)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{metadata} accepted");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(error), "{stderr}");
    }
}

/// The fixture's bare Pod document.
fn bare_document() -> String {
    let input = std::fs::read_to_string(fixtures().join("manifests.yaml")).unwrap();
    documents(&input)
        .into_iter()
        .find(|d| d.contains("name: bare"))
        .unwrap()
        .to_string()
}

/// The bare Pod of the fixture, injected with `flags`.
fn bare_pod_with(flags: &[&str]) -> Pod {
    serde_yaml::from_str(&inject_with(&bare_document(), flags).0).unwrap()
}

#[test]
fn drain_default_flags_set_the_grace_period_of_a_policy_without_drain_settings() {
    let grace = |flags: &[&str]| {
        bare_pod_with(flags)
            .spec
            .unwrap()
            .termination_grace_period_seconds
    };
    // Built in: 0s + 30s + 5s margin.
    assert_eq!(grace(&[]), Some(35));
    assert_eq!(
        grace(&["--default-drain-delay=10s", "--default-drain-timeout", "1m"]),
        Some(75)
    );
}

#[test]
fn a_policy_invalid_with_the_drain_defaults_is_refused_naming_the_default() {
    let dir = Scratch::new("inject-defaults").unwrap();
    let policy = dir.path().join("short.yaml");
    std::fs::write(&policy, "apiVersion: goaway.dev/v1alpha1\nkind: KeepalivePolicy\nmetadata: {name: short}\nspec: {selector: {matchLabels: {a: b}}, port: grpc, drain: {timeout: 8s}}\n").unwrap();
    let run = |flags: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_goaway-operator"))
            .args(["inject", "--policy"])
            .arg(&policy)
            .args(flags)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(run(&[]).status.success());
    let out = run(&["--default-drain-goaway-ack-timeout=10s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("KeepalivePolicy short: spec.drain.goawayAckTimeout: must be less than drain.timeout (8s)")
            && stderr.contains("operator default 10s (--default-drain-goaway-ack-timeout)"),
        "{stderr}"
    );
}

/// Flags no injected pod could run with. Each case: the flags, what the
/// error must name. Some are refused by the parser, the others by the
/// checks of values against each other.
const BAD_FLAGS: &[(&[&str], &str)] = &[
    (&["--agent-log-format=xml"], "--agent-log-format"),
    (
        &["--agent-image-pull-policy=Sometimes"],
        "--agent-image-pull-policy",
    ),
    (&["--agent-memory-limit=lots"], "--agent-memory-limit"),
    (&["--agent-admin-port=0"], "--agent-admin-port"),
    (
        &["--agent-cpu-request=1", "--agent-cpu-limit=500m"],
        "--agent-cpu-request",
    ),
    (&["--default-drain-delay=soon"], "--default-drain-delay"),
    (
        &["--default-drain-delay=-5s"],
        "--default-drain-delay: must not be negative",
    ),
    (
        &[
            "--default-drain-timeout=2s",
            "--default-drain-goaway-ack-timeout=2s",
        ],
        "--default-drain-goaway-ack-timeout: must be less than drain.timeout (2s)",
    ),
    (
        &["--forbid-redirect", "--default-interception=redirect"],
        "--forbid-redirect: contradicts --default-interception redirect",
    ),
];

#[test]
fn inject_refuses_bad_flags_before_reading_any_file() {
    for (flags, names) in BAD_FLAGS {
        let out = Command::new(env!("CARGO_BIN_EXE_goaway-operator"))
            .args(["inject", "--policy", "/nonexistent/policy.yaml"])
            .args(*flags)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{flags:?} accepted");
        assert!(stderr.contains(names), "{flags:?}: {stderr}");
        assert!(
            !stderr.contains("nonexistent"),
            "{flags:?} read a file first: {stderr}"
        );
    }
}

#[test]
fn run_refuses_bad_flags_and_variables_before_binding_a_port() {
    // Every listener on a port already taken: an operator that bound
    // before checking its flags would fail on the port instead.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = |flags: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_goaway-operator"))
            .arg("run")
            .args(["--webhook-addr", &addr, "--admin-addr", &addr])
            .args(["--control-addr", &addr])
            .args(flags)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8(out.stderr).unwrap())
    };
    for (flags, names) in BAD_FLAGS {
        let (ok, stderr) = run(flags, &[]);
        assert!(!ok, "{flags:?} accepted");
        assert!(stderr.contains(names), "{flags:?}: {stderr}");
        assert!(
            !stderr.contains("in use"),
            "{flags:?} bound first: {stderr}"
        );
    }
    // The same values from the chart's variables.
    for (env, names) in [
        (("GOAWAY_AGENT_LOG_FORMAT", "yaml"), "--agent-log-format"),
        (
            ("GOAWAY_AGENT_CPU_REQUEST", "1 core"),
            "--agent-cpu-request",
        ),
        (
            ("GOAWAY_DEFAULT_DRAIN_GOAWAY_ACK_TIMEOUT", "30s"),
            "--default-drain-goaway-ack-timeout",
        ),
    ] {
        let (ok, stderr) = run(&[], &[env]);
        assert!(!ok, "{env:?} accepted");
        assert!(stderr.contains(names), "{env:?}: {stderr}");
        assert!(!stderr.contains("in use"), "{env:?} bound first: {stderr}");
    }
    // Good flags get as far as the port.
    let (ok, stderr) = run(&["--default-drain-timeout=1m"], &[]);
    assert!(!ok);
    assert!(stderr.contains(&addr), "{stderr}");
}

/// kubectl reads YAML 1.1, where plain `on`, `yes`, `1_000` or `10:30` are
/// booleans and numbers. A string the input quoted must still be a string
/// to a YAML 1.1 reader of the output: PyYAML is one.
#[test]
fn strings_stay_strings_for_a_yaml_1_1_reader() {
    let input = r#"apiVersion: v1
kind: Pod
metadata:
  name: flags
  labels: {tier: backend}
  annotations: {"on": "yes", note: "10:30"}
spec:
  containers:
  - name: app
    image: app
    args: ["on", "Off", "y", "N", "1_000", "0x1F", "1:30", ".5", "plain"]
    env: [{name: VERBOSE, value: "YES"}]
    ports: [{name: grpc, containerPort: 9000}]
"#;
    let (output, _) = inject(input);
    assert!(output.contains("goaway-agent"), "not injected:\n{output}");
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-test-deps installs PyYAML)");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(output.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML could not read the output: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let app = &read["spec"]["containers"][0];
    assert_eq!(app["name"], "app", "{read}");
    assert_eq!(
        app["args"],
        serde_json::json!([
            "on", "Off", "y", "N", "1_000", "0x1F", "1:30", ".5", "plain"
        ])
    );
    assert_eq!(app["env"][0]["value"], "YES");
    let annotations = &read["metadata"]["annotations"];
    assert_eq!(annotations["on"], "yes", "{annotations}");
    assert_eq!(annotations["note"], "10:30", "{annotations}");
}

/// The log-level annotation is parsed at a bounded cost: a field matcher
/// built to blow up a regular expression (it took `inject` minutes and
/// gigabytes) is plain text, and a filter over the size limit is refused
/// with the reason, the pod left as it was.
#[test]
fn hostile_log_filters_cost_nothing_and_oversized_ones_are_refused() {
    let pod = |name: &str, filter: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{tier: backend}}\n  \
             annotations: {{goaway.dev/agent-log-level: '{filter}'}}\nspec:\n  containers:\n  \
             - name: app\n    image: app\n    ports: [{{name: grpc, containerPort: 9000}}]\n"
        )
    };
    let hostile = format!(
        "goaway_agent[conn{{peer={}}}]=trace",
        "(a|b)*a".to_string() + &"(a|b)".repeat(24)
    );
    let (output, stderr) = inject(&pod("hostile", &hostile));
    assert!(stderr.contains("injected Pod/hostile"), "{stderr}");
    let doc: Value = serde_yaml::from_str(&output).unwrap();
    let agent = &doc["spec"]["initContainers"][0];
    let env = agent["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "GOAWAY_LOG" && e["value"] == hostile.as_str()),
        "{agent}"
    );

    let long = "a=info,".repeat(200);
    let input = pod("oversized", long.trim_end_matches(','));
    let (output, stderr) = inject(&input);
    assert!(stderr.contains("at most 1024"), "{stderr}");
    assert_eq!(output, input, "left as it was");
}
