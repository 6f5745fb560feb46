//! Redirect interception where it is not wanted or not admitted, through
//! the webhook's real router with a fake API server: `--forbid-redirect`;
//! the dry-run probe pods the webhook creates before a namespace's pods
//! get redirect (the requests asserted), what their answers decide, how
//! long an answer is kept (per namespace, until the namespace's labels
//! change or it is old) and a slow or failing API server, which never
//! holds a review past its wait.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use goaway_operator::inject::{AgentConfig, PROBE_NAME_PREFIX};
use goaway_operator::manifests::load_policies;
use goaway_operator::metrics::Metrics;
use goaway_operator::webhook::Webhook;
use goaway_operator::webhook::redirect_probe::ProbeConfig;
use goaway_operator::{MANAGER, PolicyDefaults};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use support::eventually;
use support::fake_api::{Cut, FakeApi};
use tower::ServiceExt;

/// A redirect policy in each namespace, and a namedPort one in shop.
const POLICIES: &str = "
apiVersion: goaway.dev/v1alpha1
kind: KeepalivePolicy
metadata: {name: redirected, namespace: shop}
spec: {selector: {matchLabels: {app: redirected}}, port: grpc, interception: redirect}
---
apiVersion: goaway.dev/v1alpha1
kind: KeepalivePolicy
metadata: {name: redirected, namespace: books}
spec: {selector: {matchLabels: {app: redirected}}, port: grpc, interception: redirect}
---
apiVersion: goaway.dev/v1alpha1
kind: KeepalivePolicy
metadata: {name: redirected, namespace: toys}
spec: {selector: {matchLabels: {app: redirected}}, port: grpc, interception: redirect}
---
apiVersion: goaway.dev/v1alpha1
kind: KeepalivePolicy
metadata: {name: api, namespace: shop}
spec: {selector: {matchLabels: {app: api}}, port: grpc}
";

const NO_NET_ADMIN: &str = "ValidatingAdmissionPolicy 'no-net-admin' with binding 'no-net-admin' denied request: no container may add NET_ADMIN";

/// The webhook of an operator run with `defaults`, probing through
/// `client` with `config`, reporting to `api`; its metrics, and the writer
/// of its namespace cache.
struct Setup {
    api: FakeApi,
    webhook: Arc<Webhook>,
    metrics: Arc<Metrics>,
    namespaces: Writer<PartialObjectMeta<Namespace>>,
}

fn setup(
    api: &FakeApi,
    client: kube::Client,
    defaults: PolicyDefaults,
    config: ProbeConfig,
) -> Setup {
    let (policies, mut writer) = reflector::store();
    for p in load_policies(POLICIES, "shop", &defaults).unwrap() {
        writer.apply_watcher_event(&watcher::Event::Apply((*p).clone()));
    }
    let (store, mut namespaces) = reflector::store();
    for ns in ["shop", "books", "toys"] {
        namespaces.apply_watcher_event(&watcher::Event::Apply(namespace(ns, json!({}))));
    }
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: None,
    };
    let metrics = Arc::new(Metrics::default());
    let webhook = Webhook::new(policies, AgentConfig::default(), metrics.clone())
        .with_policy_defaults(defaults)
        .with_namespaces(store)
        .with_redirect_probe(client, config)
        .with_token_source(|| "fixture-token".into())
        .with_recorder(Recorder::new(api.client(), reporter));
    Setup {
        api: api.clone(),
        webhook: Arc::new(webhook),
        metrics,
        namespaces,
    }
}

fn namespace(name: &str, labels: Value) -> PartialObjectMeta<Namespace> {
    let mut labels = labels;
    labels["kubernetes.io/metadata.name"] = json!(name);
    serde_json::from_value(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": name, "labels": labels}
    }))
    .unwrap()
}

/// Refuses, in `namespace`, pods with a container adding NET_ADMIN, as a
/// ValidatingAdmissionPolicy would; `everything` refuses every pod there.
fn refuse_net_admin(api: &FakeApi, namespace: &'static str, everything: Option<&'static str>) {
    api.admit_creates(move |resource, ns, pod| {
        if resource != "pods" || ns != namespace {
            return None;
        }
        if let Some(message) = everything {
            return Some((StatusCode::FORBIDDEN, message.to_string()));
        }
        let adds_net_admin = ["initContainers", "containers"].iter().any(|list| {
            pod["spec"][list].as_array().into_iter().flatten().any(|c| {
                c["securityContext"]["capabilities"]["add"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|cap| cap == "NET_ADMIN")
            })
        });
        adds_net_admin.then(|| (StatusCode::FORBIDDEN, NO_NET_ADMIN.to_string()))
    });
}

/// A Pod CREATE review of the `app` pod in `namespace`, owned by
/// ReplicaSet `owner` (which its Events are about).
fn review_of(namespace: &str, app: &str, owner: &str) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/admission/redirect.json"
    );
    let mut review: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let request = &mut review["request"];
    request["namespace"] = json!(namespace);
    let meta = &mut request["object"]["metadata"];
    meta["namespace"] = json!(namespace);
    meta["labels"] = json!({"app": app});
    meta["ownerReferences"][0]["name"] = json!(owner);
    review
}

/// Reviews `body`; returns the AdmissionReview's response, which must
/// allow the pod, and how long it took.
async fn answer(webhook: &Arc<Webhook>, body: &Value) -> (Value, Duration) {
    let started = Instant::now();
    let req = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let resp = webhook.clone().router().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    let mut answer: Value = serde_json::from_slice(&bytes).unwrap();
    let response = answer["response"].take();
    assert_eq!(response["allowed"], true, "{response}");
    (response, took)
}

/// Reviews `body`; returns the names of the patched pod's init containers
/// (empty when unpatched) and how long the answer took.
async fn init_containers(webhook: &Arc<Webhook>, body: &Value) -> (Vec<String>, Duration) {
    let (response, took) = answer(webhook, body).await;
    let Some(patch) = response.get("patch") else {
        return (Vec::new(), took);
    };
    let raw: Vec<u8> = serde_json::from_value(patch.clone()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    let mut pod = body["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let names = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    (names, took)
}

const REDIRECT: [&str; 2] = ["goaway-intercept", "goaway-agent"];
const NAMED_PORT: [&str; 1] = ["goaway-agent"];

impl Setup {
    async fn inits(&self, namespace: &str, app: &str, owner: &str) -> Vec<String> {
        init_containers(&self.webhook, &review_of(namespace, app, owner))
            .await
            .0
    }

    /// How many probe pods the server has been asked to create.
    fn probes(&self) -> usize {
        self.api.creates("pods").len()
    }

    /// The Warning Events about `owner`: (reason, note).
    async fn events_about(&self, owner: &str, count: usize) -> Vec<(String, String)> {
        eventually(&format!("{count} Events about {owner}"), async || {
            let events: Vec<(String, String)> = self
                .api
                .list("events")
                .into_iter()
                .filter(|e| e["regarding"]["name"] == owner)
                .map(|e| {
                    let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                    (text("reason"), text("note"))
                })
                .collect();
            (events.len() >= count).then_some(events)
        })
        .await
    }
}

#[tokio::test]
async fn a_namespace_that_refuses_the_init_container_gets_named_port_with_the_api_servers_message()
{
    let api = FakeApi::new();
    refuse_net_admin(&api, "shop", None);
    let s = setup(
        &api,
        api.client(),
        PolicyDefaults::default(),
        ProbeConfig::default(),
    );

    // Pods whose winning policy does not ask for redirect, and opted-out
    // pods, cost no probe.
    assert_eq!(s.inits("shop", "api", "api-rs").await, NAMED_PORT);
    let mut opted_out = review_of("shop", "redirected", "opted-out-rs");
    opted_out["request"]["object"]["metadata"]["annotations"] =
        json!({"goaway.dev/inject": "false"});
    assert_eq!(
        init_containers(&s.webhook, &opted_out).await.0,
        Vec::<String>::new()
    );
    assert_eq!(s.probes(), 0);

    assert_eq!(s.inits("shop", "redirected", "first-rs").await, NAMED_PORT);
    // Two dry runs in the pod's namespace, alike but for redirect's init
    // container, of a probe pod goaway's webhook skips; nothing stored.
    let creates = s.api.creates("pods");
    assert_eq!(creates.len(), 2, "{creates:#?}");
    let mut with_intercept = Vec::new();
    for c in &creates {
        assert!(c.dry_run, "{c:?}");
        assert_eq!(c.namespace, "shop");
        let meta = &c.object["metadata"];
        assert!(
            meta["name"]
                .as_str()
                .unwrap()
                .starts_with(PROBE_NAME_PREFIX),
            "{meta}"
        );
        assert_eq!(meta["name"], creates[0].object["metadata"]["name"]);
        assert_eq!(meta["labels"]["goaway.dev/redirect-probe"], "true");
        assert_eq!(meta["labels"]["goaway.dev/inject"], "disabled");
        let inits: Vec<&str> = c.object["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        with_intercept.push(inits == ["goaway-intercept"]);
    }
    with_intercept.sort();
    assert_eq!(with_intercept, [false, true]);
    assert!(s.api.list("pods").is_empty());
    let events = s.events_about("first-rs", 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (reason, note) = &events[0];
    assert_eq!(reason, "RedirectRefusedByAdmission");
    assert!(
        note.starts_with("pod redirected-7d9f8b6c5-: policy redirected asks for redirect interception, but the API server refuses its NET_ADMIN init container in namespace shop (a dry-run probe pod with it was refused, one without it admitted: pods \"goaway-redirect-probe-"),
        "{note}"
    );
    assert!(note.contains(NO_NET_ADMIN), "{note}");
    assert!(note.ends_with("injected with namedPort interception instead (clients that dial pod IPs bypass the agent)"), "{note}");

    // The answer serves the namespace's next pods.
    assert_eq!(s.inits("shop", "redirected", "second-rs").await, NAMED_PORT);
    assert_eq!(s.probes(), 2);
    // Another namespace is asked on its own; it admits the container.
    assert_eq!(s.inits("toys", "redirected", "toys-rs").await, REDIRECT);
    assert_eq!(s.probes(), 4);
    assert_eq!(s.inits("toys", "redirected", "toys-rs").await, REDIRECT);
    assert_eq!(s.probes(), 4);
}

#[tokio::test]
async fn a_probe_refused_without_the_init_container_too_leaves_the_decision_to_the_labels() {
    let api = FakeApi::new();
    refuse_net_admin(
        &api,
        "books",
        Some("exceeded quota: compute, requested: pods=1"),
    );
    let mut s = setup(
        &api,
        api.client(),
        PolicyDefaults::default(),
        ProbeConfig::default(),
    );
    // Refused either way: the probe says nothing about redirect, and
    // without a Pod Security label redirect stays.
    assert_eq!(s.inits("books", "redirected", "books-rs").await, REDIRECT);
    assert_eq!(s.probes(), 2);
    // The label still refuses where it says so, with no probe needed.
    let restricted = json!({"pod-security.kubernetes.io/enforce": "restricted"});
    s.namespaces
        .apply_watcher_event(&watcher::Event::Apply(namespace("toys", restricted)));
    assert_eq!(s.inits("toys", "redirected", "toys-rs").await, NAMED_PORT);
    assert_eq!(s.probes(), 2);
    let events = s.events_about("toys-rs", 1).await;
    assert_eq!(events[0].0, "RedirectRefusedByPodSecurity");
    assert!(
        events[0]
            .1
            .contains("enforces Pod Security level \"restricted\""),
        "{events:?}"
    );
}

/// `--forbid-redirect`: the pods of a policy asking for redirect are
/// admitted without the agent, in every namespace, with a warning for
/// whoever creates them and a Warning Event on their owner (not for a
/// dry run); nothing is probed, and a namedPort policy's pods are injected
/// as ever.
#[tokio::test]
async fn forbid_redirect_admits_the_pods_without_the_agent_says_why_and_probes_nothing() {
    let api = FakeApi::new();
    let defaults = PolicyDefaults::default().forbidding_redirect(true);
    let s = setup(&api, api.client(), defaults, ProbeConfig::default());
    let why = "policy redirected asks for redirect interception, which the operator forbids (--forbid-redirect: no pod may get its NET_ADMIN init container); set the policy's spec.interception to namedPort to inject its pods";
    let warning = json!([format!("goaway: not injected: {why}")]);
    for ns in ["shop", "toys"] {
        let owner = format!("{ns}-rs");
        let (response, _) = answer(&s.webhook, &review_of(ns, "redirected", &owner)).await;
        assert!(response.get("patch").is_none(), "{response}");
        assert_eq!(response["warnings"], warning);
        let events = s.events_about(&owner, 1).await;
        assert_eq!(
            events,
            [(
                "RedirectForbidden".to_string(),
                format!("pod redirected-7d9f8b6c5- admitted without the goaway agent: {why}")
            )]
        );
    }
    assert_eq!(s.inits("shop", "api", "api-rs").await, NAMED_PORT);
    assert_eq!(s.probes(), 0);
    let metrics = s.metrics.render();
    assert!(
        metrics.contains(
            "goaway_operator_admissions_total{outcome=\"unchanged\",reason=\"redirect_forbidden\"} 2"
        ),
        "{metrics}"
    );

    // A dry run hears it too, but publishes no Event.
    let mut dry_run = review_of("shop", "redirected", "dry-run-rs");
    dry_run["request"]["dryRun"] = json!(true);
    let (response, _) = answer(&s.webhook, &dry_run).await;
    assert!(response.get("patch").is_none(), "{response}");
    assert_eq!(response["warnings"], warning);
    answer(
        &s.webhook,
        &review_of("shop", "redirected", "after-dry-run-rs"),
    )
    .await;
    s.events_about("after-dry-run-rs", 1).await;
    assert!(
        !s.api
            .list("events")
            .iter()
            .any(|e| e["regarding"]["name"] == "dry-run-rs"),
        "an Event for a dry run"
    );
}

/// Answers are kept until the namespace's labels change, and for
/// [`ProbeConfig::ttl`] at most (paused time: the clock moves by hand).
#[tokio::test(start_paused = true)]
async fn an_answer_is_asked_again_when_the_namespace_labels_change_or_it_is_old() {
    let api = FakeApi::new();
    let config = ProbeConfig {
        ttl: Duration::from_secs(600),
        ..ProbeConfig::default()
    };
    let mut s = setup(&api, api.client(), PolicyDefaults::default(), config);
    assert_eq!(s.inits("shop", "redirected", "a").await, REDIRECT);
    assert_eq!(s.probes(), 2);

    // A policy engine starts refusing NET_ADMIN in shop, as a label the
    // namespace gets brings it under the policy: asked again at once.
    refuse_net_admin(&api, "shop", None);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(
        s.inits("shop", "redirected", "b").await,
        REDIRECT,
        "the answer kept"
    );
    assert_eq!(s.probes(), 2);
    let labelled = namespace("shop", json!({"policy.example/no-net-admin": "true"}));
    s.namespaces
        .apply_watcher_event(&watcher::Event::Apply(labelled));
    assert_eq!(s.inits("shop", "redirected", "c").await, NAMED_PORT);
    assert_eq!(s.probes(), 4);

    // The rule goes away without the namespace changing: asked again once
    // the answer is ten minutes old, not before.
    api.admit_creates(|_, _, _| None);
    tokio::time::advance(Duration::from_secs(599)).await;
    assert_eq!(s.inits("shop", "redirected", "d").await, NAMED_PORT);
    assert_eq!(s.probes(), 4);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(s.inits("shop", "redirected", "e").await, REDIRECT);
    assert_eq!(s.probes(), 6);
}

/// A probe that does not answer within [`ProbeConfig::wait`] does not hold
/// the review: the pod is decided on the namespace's labels, and the
/// probe's answer, once it comes, serves the next pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_server_holds_no_review_past_its_wait() {
    let api = FakeApi::new();
    refuse_net_admin(&api, "shop", None);
    let (client, link) = api.linked_client();
    let wait = Duration::from_millis(300);
    let config = ProbeConfig {
        wait,
        ..ProbeConfig::default()
    };
    let s = setup(&api, client, PolicyDefaults::default(), config);
    link.cut(Cut::Hang);
    let (inits, took) = init_containers(&s.webhook, &review_of("shop", "redirected", "a")).await;
    assert_eq!(inits, REDIRECT, "decided on the labels");
    assert!(took >= wait, "did not wait for the probe: {took:?}");
    // Well within the review's budget (half the webhook's 5s timeout).
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // Another pod meanwhile waits for the same probe, starting none.
    let (inits, _) = init_containers(&s.webhook, &review_of("shop", "redirected", "b")).await;
    assert_eq!(inits, REDIRECT);
    assert_eq!(s.probes(), 0, "the requests are held before the server");

    link.heal();
    eventually("the held probe's two dry runs", async || {
        (s.probes() == 2).then_some(())
    })
    .await;
    assert_eq!(s.inits("shop", "redirected", "c").await, NAMED_PORT);
    assert_eq!(s.probes(), 2);
}

/// A probe without an answer (here the server's 503) is inconclusive: the
/// labels decide, and the namespace is asked again after
/// [`ProbeConfig::retry`], not on every pod.
#[tokio::test(start_paused = true)]
async fn a_failing_probe_is_retried_after_the_retry_interval() {
    let api = FakeApi::new();
    api.admit_creates(|resource, _, _| {
        (resource == "pods").then(|| (StatusCode::SERVICE_UNAVAILABLE, "etcd is down".to_string()))
    });
    let config = ProbeConfig {
        retry: Duration::from_secs(30),
        ..ProbeConfig::default()
    };
    let s = setup(&api, api.client(), PolicyDefaults::default(), config);
    assert_eq!(s.inits("shop", "redirected", "a").await, REDIRECT);
    assert_eq!(s.probes(), 2);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(s.inits("shop", "redirected", "b").await, REDIRECT);
    assert_eq!(s.probes(), 2);
    refuse_net_admin(&api, "shop", None);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(s.inits("shop", "redirected", "c").await, NAMED_PORT);
    assert_eq!(s.probes(), 4);
}
