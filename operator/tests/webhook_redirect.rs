//! Redirect interception where it is not wanted, through the webhook's
//! real router with a fake API server: `--forbid-redirect`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use goaway_operator::inject::AgentConfig;
use goaway_operator::manifests::load_policies;
use goaway_operator::metrics::Metrics;
use goaway_operator::webhook::Webhook;
use goaway_operator::{MANAGER, PolicyDefaults};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use support::eventually;
use support::fake_api::FakeApi;
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

/// The webhook of an operator run with `defaults`, reporting to `api`,
/// and its metrics.
struct Setup {
    api: FakeApi,
    webhook: Arc<Webhook>,
    metrics: Arc<Metrics>,
}

fn setup(api: &FakeApi, defaults: PolicyDefaults) -> Setup {
    let (policies, mut writer) = reflector::store();
    for p in load_policies(POLICIES, "shop", &defaults).unwrap() {
        writer.apply_watcher_event(&watcher::Event::Apply((*p).clone()));
    }
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: None,
    };
    let metrics = Arc::new(Metrics::default());
    let webhook = Webhook::new(policies, AgentConfig::default(), metrics.clone())
        .with_policy_defaults(defaults)
        .with_token_source(|| "fixture-token".into())
        .with_recorder(Recorder::new(api.client(), reporter));
    Setup {
        api: api.clone(),
        webhook: Arc::new(webhook),
        metrics,
    }
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

const NAMED_PORT: [&str; 1] = ["goaway-agent"];

impl Setup {
    async fn inits(&self, namespace: &str, app: &str, owner: &str) -> Vec<String> {
        init_containers(&self.webhook, &review_of(namespace, app, owner))
            .await
            .0
    }

    /// The Warning Events about `owner`: (reason, note).
    async fn events_about(&self, owner: &str, count: usize) -> Vec<(String, String)> {
        eventually(&format!("{count} Events about {owner}"), || {
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

/// `--forbid-redirect`: the pods of a policy asking for redirect are
/// admitted without the agent, in every namespace, with a warning for
/// whoever creates them and a Warning Event on their owner (not for a
/// dry run); a namedPort policy's pods are injected as ever.
#[tokio::test]
async fn forbid_redirect_admits_the_pods_without_the_agent_and_says_why() {
    let api = FakeApi::new();
    let defaults = PolicyDefaults::default().forbidding_redirect(true);
    let s = setup(&api, defaults);
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
