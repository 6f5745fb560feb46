//! Monitoring: the Prometheus Operator objects (`monitoring.*`, off by
//! default) and the Grafana dashboard (`dashboards/goaway.json`).
//!
//! The PodMonitor is checked against a pod injected by the operator's own
//! code (`goaway-operator inject`'s function, with the rendered
//! Deployment's flags), the ServiceMonitor against the rendered Service
//! and the operator's admin server, and every dashboard query against the
//! metric names the code exports: the operator's from its real admin
//! server's `/metrics`, the agent's from the registrations in
//! `agent/src/metrics.rs` (this crate cannot run the agent binary: it is
//! not one of its targets or dependencies).
//!
//! [`Rendered`] types only the operator's own kinds, so the monitoring
//! objects are taken out of Helm's output first, and Helm is driven here
//! (same script as [`crate::helm`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use goaway_operator::admin::{self, Readiness};
use goaway_operator::inject::{ANNOTATION_INJECTED, CONTAINER_NAME};
use goaway_operator::manifests::{inject_manifests, load_policies};
use goaway_tests::{python, repo_root, require_python_module};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::rendered::{Rendered, selects};
use crate::{NAMESPACE, RELEASE};

const MONITORING_API: &str = "monitoring.coreos.com/v1";

// --- Helm ----------------------------------------------------------------------

/// `helm_render.py batch`: each argument list's JSON document.
fn helm_batch(commands: &[Vec<String>]) -> Vec<Value> {
    require_python_module("helm_python", "helm-python-sdk").unwrap();
    let root = repo_root();
    let mut child = Command::new(python())
        .arg(root.join("tests/python/helm_render.py"))
        .arg("batch")
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tests/python/helm_render.py");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(commands).unwrap().as_bytes())
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "helm_render.py batch failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), commands.len());
    results
}

/// One `helm template`: the PodMonitors and ServiceMonitors, and the rest
/// typed as every other chart test sees it.
struct Render {
    pod_monitors: Vec<Value>,
    service_monitors: Vec<Value>,
    rest: Rendered,
}

impl Render {
    fn pod_monitor(&self) -> &Value {
        assert_eq!(self.pod_monitors.len(), 1, "one PodMonitor");
        &self.pod_monitors[0]
    }

    fn service_monitor(&self) -> &Value {
        assert_eq!(self.service_monitors.len(), 1, "one ServiceMonitor");
        &self.service_monitors[0]
    }
}

/// Renders each (release, namespace, values): the render, or Helm's error.
fn try_render(cases: &[(&str, &str, &str)]) -> Vec<Result<Render, String>> {
    let commands: Vec<Vec<String>> = cases
        .iter()
        .map(|(release, namespace, values)| super::helm::render_args(release, namespace, values))
        .collect();
    cases
        .iter()
        .zip(helm_batch(&commands))
        .map(|((release, namespace, values), out)| {
            if let Some(error) = out.get("error") {
                return Err(format!("{values}: {error}"));
            }
            let mut rest = serde_json::Map::new();
            let (mut pod_monitors, mut service_monitors) = (Vec::new(), Vec::new());
            for (template, text) in out["manifests"].as_object().expect("manifests") {
                let text = text.as_str().expect("a manifest is text");
                let mut monitors = Vec::new();
                if !template.ends_with("/NOTES.txt") {
                    for doc in serde_yaml::Deserializer::from_str(text) {
                        let doc = Value::deserialize(doc)
                            .unwrap_or_else(|e| panic!("{template} is not YAML: {e}"));
                        if matches!(doc["kind"].as_str(), Some("PodMonitor" | "ServiceMonitor")) {
                            monitors.push(doc);
                        }
                    }
                }
                if monitors.is_empty() {
                    rest.insert(template.clone(), json!(text));
                    continue;
                }
                for m in monitors {
                    let what = format!("{template}: {} {}", m["kind"], m["metadata"]["name"]);
                    assert_eq!(m["apiVersion"], MONITORING_API, "{what}");
                    assert!(
                        m["metadata"]["namespace"].is_string(),
                        "{what}: no namespace"
                    );
                    match m["kind"].as_str() {
                        Some("PodMonitor") => pod_monitors.push(m),
                        _ => service_monitors.push(m),
                    }
                }
            }
            Ok(Render {
                pod_monitors,
                service_monitors,
                rest: Rendered::parse(release, namespace, &Value::Object(rest)),
            })
        })
        .collect()
}

fn render_all(cases: &[(&str, &str, &str)]) -> Vec<Render> {
    try_render(cases)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("helm rejected {e}")))
        .collect()
}

const BOTH: &str = "monitoring: {podMonitor: {enabled: true}, serviceMonitor: {enabled: true}}";

// --- Off by default ------------------------------------------------------------

#[test]
fn monitoring_objects_render_only_when_enabled() {
    let renders = render_all(&[
        (RELEASE, NAMESPACE, ""),
        // Settings alone create nothing.
        (
            RELEASE,
            NAMESPACE,
            "monitoring: {podMonitor: {interval: 15s}, serviceMonitor: {labels: {release: prom}}}",
        ),
        (
            RELEASE,
            NAMESPACE,
            "monitoring: {podMonitor: {enabled: true}}",
        ),
        (
            RELEASE,
            NAMESPACE,
            "monitoring: {serviceMonitor: {enabled: true}}",
        ),
        (RELEASE, NAMESPACE, BOTH),
    ]);
    let counts: Vec<(usize, usize)> = renders
        .iter()
        .map(|r| (r.pod_monitors.len(), r.service_monitors.len()))
        .collect();
    assert_eq!(counts, [(0, 0), (0, 0), (1, 0), (0, 1), (1, 1)]);
    // Nothing else changes: enabling monitoring adds exactly its objects.
    let base = renders[0].rest.inventory();
    for r in &renders[1..] {
        assert_eq!(r.rest.inventory(), base);
    }
    let defaults = &crate::helm::show()["values"]["monitoring"];
    for monitor in ["podMonitor", "serviceMonitor"] {
        assert_eq!(defaults[monitor]["enabled"], false, "{monitor}");
    }
}

#[test]
fn helm_lint_strict_passes_with_monitoring_enabled() {
    let values = [
        BOTH,
        "monitoring: {podMonitor: {enabled: true, namespace: monitoring, interval: 30s, scrapeTimeout: 10s, labels: {release: kube-prometheus-stack}}, serviceMonitor: {enabled: true, namespace: monitoring, interval: 1m, labels: {release: kube-prometheus-stack}}}\nwatchNamespace: shop",
    ];
    let commands: Vec<Vec<String>> = values
        .iter()
        .map(|v| {
            [
                "lint",
                &super::helm::chart_dir(),
                "--namespace",
                NAMESPACE,
                "--values-yaml",
                v,
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    for (v, report) in values.iter().zip(helm_batch(&commands)) {
        let serious: Vec<&Value> = report["messages"]
            .as_array()
            .expect("lint messages")
            .iter()
            .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            .collect();
        assert!(serious.is_empty(), "helm lint --strict with {v}: {report}");
        assert_eq!(
            report["errors"].as_array().map_or(0, Vec::len),
            0,
            "{report}"
        );
    }
}

#[test]
fn values_schema_rejects_bad_monitoring_values() {
    let cases = [
        (
            "monitoring: {podMonitor: {enabled: yes please}}",
            "/monitoring/podMonitor/enabled",
        ),
        (
            "monitoring: {podMonitor: {interval: 30}}",
            "/monitoring/podMonitor/interval",
        ),
        (
            "monitoring: {podMonitor: {interval: 30 s}}",
            "/monitoring/podMonitor/interval",
        ),
        (
            "monitoring: {serviceMonitor: {scrapeTimeout: 1.5s}}",
            "/monitoring/serviceMonitor/scrapeTimeout",
        ),
        (
            "monitoring: {serviceMonitor: {namespace: Monitoring}}",
            "/monitoring/serviceMonitor/namespace",
        ),
        (
            "monitoring: {serviceMonitor: {labels: {release: 1}}}",
            "/monitoring/serviceMonitor/labels/release",
        ),
        (
            "monitoring: {podMonitor: {port: http}}",
            "/monitoring/podMonitor",
        ),
        (
            "monitoring: {grafanaDashboard: {enabled: true}}",
            "/monitoring",
        ),
    ];
    let values: Vec<(&str, &str, &str)> = cases
        .iter()
        .map(|(v, _)| (RELEASE, NAMESPACE, *v))
        .collect();
    for ((values, path), result) in cases.iter().zip(try_render(&values)) {
        let Err(message) = result else {
            panic!("helm accepted invalid values {values:?}");
        };
        assert!(message.contains("HelmValuesError"), "{message}");
        assert!(message.contains(path), "{values}: {message}");
    }
}

// --- The objects ---------------------------------------------------------------

/// metadata.labels: the chart's own plus `extra`.
fn assert_labels(object: &Value, r: &Rendered, extra: &[(&str, &str)]) {
    let labels: BTreeMap<String, String> =
        serde_json::from_value(object["metadata"]["labels"].clone()).expect("labels");
    let service = r.service().metadata.labels.clone().unwrap_or_default();
    for (k, v) in &service {
        assert_eq!(labels.get(k), Some(v), "the chart's label {k}");
    }
    for (k, v) in extra {
        assert_eq!(labels.get(*k).map(String::as_str), Some(*v), "label {k}");
    }
    assert_eq!(labels.len(), service.len() + extra.len(), "{labels:?}");
}

/// The one scrape endpoint, with interval and scrapeTimeout as set.
fn endpoint<'a>(monitor: &'a Value, list: &str, interval: &str, timeout: &str) -> &'a Value {
    let endpoints = monitor["spec"][list].as_array().expect(list);
    assert_eq!(endpoints.len(), 1, "{monitor}");
    let e = &endpoints[0];
    let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    assert_eq!(
        (field("interval"), field("scrapeTimeout")),
        (interval.into(), timeout.into())
    );
    e
}

/// The operator's admin server (the operator's own router and metrics, as
/// `goaway-operator run` serves them) after one reconciliation and one
/// admission (a labelled family shows nothing before its first series),
/// answering one GET.
fn operator_admin_get(path: &str) -> (u16, String) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(admin::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(goaway_operator::metrics::Metrics::default());
    metrics.sample_every_family();
    let router = admin::router(metrics, Arc::new(Readiness::default()));
    let (signal, watch) = drain_rs::channel();
    let server = runtime.spawn(admin::serve(listener, router, watch));
    let answer = goaway_tests::agent::http("GET", &format!("http://{addr}{path}"), &[]).unwrap();
    runtime.block_on(signal.drain());
    runtime.block_on(server).unwrap().unwrap();
    answer
}

#[test]
fn service_monitor_scrapes_the_operators_metrics_port_on_its_service() {
    let cases = [
        (RELEASE, NAMESPACE, BOTH.to_string(), NAMESPACE, "", "", vec![]),
        (
            "payments",
            "platform",
            "monitoring: {serviceMonitor: {enabled: true, namespace: monitoring, interval: 30s, scrapeTimeout: 10s, labels: {release: kube-prometheus-stack}}}\nadmin: {port: 8081}\nfullnameOverride: edge".into(),
            "monitoring",
            "30s",
            "10s",
            vec![("release", "kube-prometheus-stack")],
        ),
    ];
    let inputs: Vec<(&str, &str, &str)> = cases
        .iter()
        .map(|(release, ns, values, ..)| (*release, *ns, values.as_str()))
        .collect();
    let mut paths = BTreeSet::new();
    for (case, render) in cases.iter().zip(render_all(&inputs)) {
        let (_, namespace, _, monitor_namespace, interval, timeout, extra) = case;
        let r = &render.rest;
        let sm = render.service_monitor();
        let service = r.service();
        assert_eq!(sm["kind"], "ServiceMonitor");
        assert_eq!(
            sm["metadata"]["name"].as_str(),
            service.metadata.name.as_deref()
        );
        assert_eq!(sm["metadata"]["namespace"], *monitor_namespace);
        assert_labels(sm, r, extra);
        // It finds the operator's Service, wherever the ServiceMonitor is...
        assert_eq!(
            sm["spec"]["namespaceSelector"],
            json!({"matchNames": [namespace]})
        );
        assert_eq!(service.metadata.namespace.as_deref(), Some(*namespace));
        let selector: LabelSelector =
            serde_json::from_value(sm["spec"]["selector"].clone()).unwrap();
        let service_labels = service.metadata.labels.clone().unwrap_or_default();
        assert!(
            selects(&selector, &service_labels),
            "{selector:?} vs {service_labels:?}"
        );
        // ...and scrapes the Service port that reaches --admin-addr.
        let e = endpoint(sm, "endpoints", interval, timeout);
        let port = r.service_port(e["port"].as_str().expect("a named port"));
        let (args, _) = r.operator_args();
        let target = port.target_port.as_ref().expect("targetPort");
        assert_eq!(r.container_port(target), args.admin_addr.port());
        paths.insert(e["path"].as_str().expect("a path").to_string());
    }
    // The path is where the operator's admin server serves its metrics.
    assert_eq!(paths.len(), 1);
    let path = paths.pop_first().unwrap();
    let (status, body) = operator_admin_get(&path);
    assert_eq!(status, 200, "{path}: {body}");
    assert!(body.contains("# TYPE goaway_operator_"), "{path}: {body}");
}

const POLICY: &str = "apiVersion: goaway.dev/v1alpha1
kind: KeepalivePolicy
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  port: grpc
";

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: api-0
  labels: {app: api, tier: backend}
spec:
  containers:
    - name: app
      image: app
      ports: [{name: grpc, containerPort: 8080}, {name: metrics, containerPort: 9090}]
";

/// The pod as the operator the chart runs would inject it in `namespace`
/// (`goaway-operator inject`, with the rendered Deployment's flags).
fn injected_pod(r: &Rendered, namespace: &str) -> Pod {
    let (args, _) = r.operator_args();
    let defaults = args.defaults.policy_defaults().unwrap();
    let agent = args.agent.agent_config().unwrap();
    let policies = load_policies(POLICY, namespace, &defaults).unwrap();
    let mut token = || "token".to_string();
    let report =
        inject_manifests(POD, &policies, namespace, &defaults, &agent, &mut token).unwrap();
    assert_eq!(report.injected.len(), 1, "{:?}", report.warnings);
    serde_yaml::from_str(&report.output).unwrap()
}

fn agent_container(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().unwrap();
    let mut agents = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == CONTAINER_NAME);
    let agent = agents.next().expect("the agent container");
    assert!(agents.next().is_none());
    agent
}

#[test]
fn pod_monitor_scrapes_the_admin_port_the_injected_agent_declares() {
    let cases = [
        (RELEASE, NAMESPACE, BOTH.to_string(), "shop", NAMESPACE, "", "", vec![]),
        (
            "payments",
            "platform",
            "monitoring: {podMonitor: {enabled: true, namespace: monitoring, interval: 15s, scrapeTimeout: 5s, labels: {release: kube-prometheus-stack, team: sre}}}\nagent: {adminPort: 15099}\nwatchNamespace: shop".into(),
            "shop",
            "monitoring",
            "15s",
            "5s",
            vec![("release", "kube-prometheus-stack"), ("team", "sre")],
        ),
    ];
    let inputs: Vec<(&str, &str, &str)> = cases
        .iter()
        .map(|(release, ns, values, ..)| (*release, *ns, values.as_str()))
        .collect();
    for (case, render) in cases.iter().zip(render_all(&inputs)) {
        let (release, _, values, pod_namespace, monitor_namespace, interval, timeout, extra) = case;
        let r = &render.rest;
        let pm = render.pod_monitor();
        assert_eq!(pm["kind"], "PodMonitor");
        assert_eq!(pm["metadata"]["namespace"], *monitor_namespace);
        let name = pm["metadata"]["name"].as_str().unwrap();
        assert!(name.ends_with("-agent") && name.len() <= 63, "{name}");
        assert_labels(pm, r, extra);

        let (args, _) = r.operator_args();
        let pod = injected_pod(r, pod_namespace);
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert!(
            annotations.contains_key(ANNOTATION_INJECTED),
            "{annotations:?}"
        );
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let before: Pod = serde_yaml::from_str(POD).unwrap();
        // The selector's premise: injection adds no label to select by
        // (should it ever, select by that label instead of every pod).
        assert_eq!(
            Some(&labels),
            before.metadata.labels.as_ref(),
            "injection now labels pods: let the PodMonitor select them by that label"
        );

        // Prometheus finds the pod: its namespace, its labels...
        let ns_selector = &pm["spec"]["namespaceSelector"];
        match args.watch_namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(watched) => {
                assert_eq!(*ns_selector, json!({"matchNames": [watched]}), "{release}");
                assert_eq!(watched, *pod_namespace);
            }
            None => assert_eq!(*ns_selector, json!({"any": true}), "{release}"),
        }
        let selector: LabelSelector =
            serde_json::from_value(pm["spec"]["selector"].clone()).unwrap();
        assert!(selects(&selector, &labels), "{selector:?} vs {labels:?}");

        // ...and the endpoint is the agent container's admin port, by the
        // name the operator gives it, on the number the chart sets.
        let e = endpoint(pm, "podMetricsEndpoints", interval, timeout);
        let port_name = e["port"].as_str().expect("a named port");
        let agent = agent_container(&pod);
        let port = agent
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(port_name))
            .unwrap_or_else(|| panic!("the agent declares no port {port_name}: {:?}", agent.ports));
        let admin_port = args.agent.agent_config().unwrap().admin_port;
        assert_eq!(port.container_port, i32::from(admin_port), "{values}");
        // No application container has a port of that name.
        for c in &pod.spec.as_ref().unwrap().containers {
            assert!(
                c.ports
                    .iter()
                    .flatten()
                    .all(|p| p.name.as_deref() != Some(port_name)),
                "{} declares {port_name}",
                c.name
            );
        }
        // The agent's health probes use the same port: it is its admin API.
        let probe = agent
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref());
        let probe_port = probe
            .map(|h| h.port.clone())
            .expect("an HTTP readiness probe");
        assert!(
            probe_port == IntOrString::Int(i32::from(admin_port))
                || probe_port == IntOrString::String(port_name.into()),
            "{probe_port:?}"
        );
        // The relabeling keeps exactly the agent container.
        assert_eq!(
            e["relabelings"],
            json!([{
                "sourceLabels": ["__meta_kubernetes_pod_container_name"],
                "regex": CONTAINER_NAME,
                "action": "keep",
            }])
        );
        // The agent serves its metrics at the path scraped.
        let path = e["path"].as_str().expect("a path");
        let admin_src =
            std::fs::read_to_string(repo_root().join("agent/src/admin/mod.rs")).unwrap();
        assert!(
            admin_src.contains(&format!(".route(\"{path}\", get(metrics))")),
            "agent/src/admin/mod.rs serves no {path}"
        );
    }
}

// --- What the code exports -------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        match name {
            "Counter" | "counter" | "ConstCounter" => Some(Kind::Counter),
            "Gauge" | "gauge" | "ConstGauge" => Some(Kind::Gauge),
            "Histogram" | "histogram" => Some(Kind::Histogram),
            _ => None,
        }
    }

    /// The sample names a family of this kind is exposed under.
    fn samples(self, family: &str) -> Vec<String> {
        let suffixes: &[&str] = match self {
            Kind::Counter => &["_total"],
            Kind::Gauge => &[""],
            Kind::Histogram => &["_bucket", "_sum", "_count"],
        };
        suffixes.iter().map(|s| format!("{family}{s}")).collect()
    }
}

/// Metric families and their kinds from an exposition's `# TYPE` lines.
fn families_in_exposition(text: &str) -> BTreeMap<String, Kind> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            let kind = Kind::of(kind.trim()).unwrap_or_else(|| panic!("unknown kind in {rest}"));
            (name.to_string(), kind)
        })
        .collect()
}

/// The operator's families, from its admin server's `/metrics`.
fn operator_families() -> BTreeMap<String, Kind> {
    let (status, body) = operator_admin_get("/metrics");
    assert_eq!(status, 200, "{body}");
    families_in_exposition(&body)
}

/// The agent's families, from its registry's exposition (every family
/// is encoded, labelled ones with their series created up front: the
/// design document's check holds the agent to that).
fn agent_families() -> BTreeMap<String, Kind> {
    let metrics = goaway_agent::metrics::Metrics::new(
        Arc::new(goaway_transport::Counters::default()),
        Vec::new(),
        Arc::new(std::sync::atomic::AtomicBool::new(true)),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(std::sync::atomic::AtomicU8::new(0)),
    );
    families_in_exposition(&metrics.encode())
}

/// Every sample name the agent and the operator expose → its family.
fn exported() -> BTreeMap<String, String> {
    let agent = agent_families();
    let operator = operator_families();
    for (what, families) in [("agent", &agent), ("operator", &operator)] {
        let kinds: BTreeSet<Kind> = families.values().copied().collect();
        assert_eq!(kinds.len(), 3, "{what}: {families:?}");
    }
    let mut out = BTreeMap::new();
    for (family, kind) in agent.iter().chain(&operator) {
        for sample in kind.samples(family) {
            assert!(
                out.insert(sample.clone(), family.clone()).is_none(),
                "{sample} twice"
            );
        }
    }
    out
}

// --- The dashboard -------------------------------------------------------------

fn dashboard() -> Value {
    let path = repo_root().join("charts/goaway/dashboards/goaway.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// PromQL words that are not metric names.
const PROMQL_KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "atan2",
    "offset",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, keywords, label lists, label matchers, strings, durations,
/// numbers or Grafana variables.
fn promql_metrics(expr: &str) -> Vec<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_space = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // Past the bracket group (or string) opening at `j`.
    let skip_group = |j: usize| {
        let (open, close) = match c[j] {
            '{' => ('{', '}'),
            '[' => ('[', ']'),
            _ => ('(', ')'),
        };
        let mut depth = 0;
        let mut k = j;
        let mut quote: Option<char> = None;
        while k < c.len() {
            match (quote, c[k]) {
                (Some(_), '\\') => k += 1,
                (Some(q), ch) if ch == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'' | '`') => quote = Some(c[k]),
                (None, ch) if ch == open => depth += 1,
                (None, ch) if ch == close => {
                    depth -= 1;
                    if depth == 0 {
                        return k + 1;
                    }
                }
                _ => {}
            }
            k += 1;
        }
        panic!("unbalanced {open} in {expr}")
    };
    let word = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            let mut k = i + 1;
            while k < c.len() && c[k] != ch {
                if c[k] == '\\' {
                    k += 1;
                }
                k += 1;
            }
            i = k + 1;
        } else if ch == '{' || ch == '[' {
            i = skip_group(i);
        } else if ch == '$' {
            // $var, ${var}, $__rate_interval
            i += 1;
            if c.get(i) == Some(&'{') {
                i = skip_group(i);
            } else {
                while i < c.len() && word(c[i]) {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if word(ch) {
            let start = i;
            while i < c.len() && word(c[i]) {
                i += 1;
            }
            let name: String = c[start..i].iter().collect();
            let after = skip_space(i);
            let group_follows = c.get(after) == Some(&'(');
            if matches!(
                name.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                if group_follows {
                    i = skip_group(after);
                }
            } else if !group_follows && !PROMQL_KEYWORDS.contains(&name.as_str()) {
                out.push(name);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every PromQL query of the dashboard, with where it is: each panel's
/// (and nested panel's) `expr`, and each query variable's query.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    fn exprs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                let here = match map.get("title").and_then(Value::as_str) {
                    Some(title) => format!("{at}/{title}"),
                    None => at.to_string(),
                };
                for (k, child) in map {
                    if k == "expr" {
                        let expr = child
                            .as_str()
                            .unwrap_or_else(|| panic!("{here}: expr {child}"));
                        out.push((here.clone(), expr.to_string()));
                    } else if k != "templating" {
                        exprs(child, &here, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| exprs(i, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    exprs(d, "", &mut out);
    for var in d["templating"]["list"].as_array().expect("templating.list") {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("?");
        let queries = [&var["query"]["query"], &var["query"], &var["definition"]];
        for q in queries.into_iter().filter_map(Value::as_str) {
            // label_values(<series>, label) / query_result(<expr>)
            let inner = q
                .trim()
                .strip_prefix("label_values(")
                .map(|args| {
                    let args = args.strip_suffix(')').expect(q);
                    args.rsplit_once(',').map_or(args, |(series, _)| series)
                })
                .or_else(|| q.trim().strip_prefix("query_result(")?.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {name}: unsupported query {q}"));
            out.push((format!("variable {name}"), inner.to_string()));
        }
    }
    out
}

/// What is wrong with the dashboard's queries given the exported names:
/// an empty list when every query selects only exported metrics.
fn query_problems(d: &Value, exported: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (at, expr) in dashboard_queries(d) {
        let names = promql_metrics(&expr);
        if names.is_empty() {
            problems.push(format!("{at}: no metric in {expr:?}"));
        }
        for name in names {
            if !exported.contains_key(&name) {
                problems.push(format!("{at}: {name} is not exported (in {expr:?})"));
            }
        }
        if expr.contains("__name__") {
            problems.push(format!("{at}: selects by __name__: {expr:?}"));
        }
    }
    problems
}

#[test]
fn promql_metric_names_are_found_past_functions_labels_and_variables() {
    let cases: &[(&str, &[&str])] = &[
        ("goaway_ready", &["goaway_ready"]),
        (
            r#"sum by (namespace, pod) (rate(goaway_streams_total{namespace=~"$namespace", pod!="a b(c)"}[$__rate_interval]))"#,
            &["goaway_streams_total"],
        ),
        (
            "histogram_quantile(0.99, sum without(pod) (rate(x_bucket[5m] offset 1h)))",
            &["x_bucket"],
        ),
        (
            "sum(rate(a_sum[${__range}])) / on (job) group_left(le) sum(rate(a_count[1m])) > bool 0.5e3",
            &["a_sum", "a_count"],
        ),
        (
            "count(up == 0) or vector(0) unless topk(3, b) and c:recorded",
            &["up", "b", "c:recorded"],
        ),
        (r#"label_replace(m, "dst", "$1", "src", "(.*)")"#, &["m"]),
    ];
    for (expr, want) in cases {
        assert_eq!(promql_metrics(expr), *want, "{expr}");
    }
}

#[test]
fn every_dashboard_query_selects_only_metrics_the_code_exports() {
    let d = dashboard();
    let exported = exported();
    let problems = query_problems(&d, &exported);
    assert!(
        problems.is_empty(),
        "dashboards/goaway.json:\n{}",
        problems.join("\n")
    );
    assert!(
        dashboard_queries(&d).len() >= 20,
        "the dashboard has its panels"
    );

    // The check bites: a made-up name, a counter without its _total or a
    // histogram family without _bucket in a query or a variable fails it.
    for (bad, missing) in [
        (
            "sum(goaway_connections_opened)",
            "goaway_connections_opened",
        ),
        ("rate(goaway_streams[5m])", "goaway_streams"),
        (
            "histogram_quantile(0.9, rate(goaway_connection_duration_seconds[5m]))",
            "goaway_connection_duration_seconds",
        ),
    ] {
        let mut broken = d.clone();
        let panel = broken["panels"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|p| p["targets"].is_array())
            .unwrap();
        panel["targets"][0]["expr"] = json!(bad);
        let problems = query_problems(&broken, &exported);
        assert!(
            problems.len() == 1 && problems[0].contains(&format!("{missing} is not exported")),
            "{bad}: {problems:?}"
        );
    }
    let mut broken = d.clone();
    let var = broken["templating"]["list"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|v| v["type"] == "query")
        .unwrap();
    var["definition"] = json!("label_values(goaway_agent_info, namespace)");
    assert_eq!(query_problems(&broken, &exported).len(), 1);
}

#[test]
fn dashboard_shows_every_metric_the_code_exports() {
    let d = dashboard();
    let exported = exported();
    let used: BTreeSet<String> = dashboard_queries(&d)
        .iter()
        .flat_map(|(_, expr)| promql_metrics(expr))
        .filter_map(|name| exported.get(&name).cloned())
        .collect();
    let families: BTreeSet<String> = exported.values().cloned().collect();
    let unused: Vec<&String> = families.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "dashboards/goaway.json shows nothing of {unused:?}"
    );
}

#[test]
fn dashboard_is_importable_with_a_datasource_and_a_namespace_variable() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(d["uid"].is_string() && d["title"].is_string());
    assert!(
        d["__inputs"].is_null(),
        "no import-time inputs: the datasource is a variable"
    );
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("namespace")["type"], "query");
    assert_eq!(var("namespace")["datasource"]["uid"], "${datasource}");
    // Every panel and query reads the chosen datasource; ids are unique.
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = d["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        let id = p["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        panels.extend(p["panels"].as_array().into_iter().flatten());
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}
