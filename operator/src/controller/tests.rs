//! Reconcile scenarios against a mocked API (controller-rs style): each
//! test states the exact requests a reconciliation makes, in order, and
//! what they carry.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::KeepalivePolicyStatus;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn policy(name: &str, created: &str, extra: &str) -> KeepalivePolicy {
    let text = format!(
        "apiVersion: goaway.dev/v1alpha1\nkind: KeepalivePolicy\nmetadata: {{name: {name}, namespace: ns, uid: uid-{name}, generation: 1, creationTimestamp: '{created}'}}\nspec:\n  selector: {{matchLabels: {{app: api}}}}\n  port: grpc\n{extra}"
    );
    serde_yaml::from_str(&text).unwrap()
}

fn context(policies: &[&KeepalivePolicy]) -> (Arc<Context>, ApiHandle) {
    context_with(policies, PolicyDefaults::default())
}

/// [`context`] for an operator run with policy defaults.
fn context_with(
    policies: &[&KeepalivePolicy],
    defaults: PolicyDefaults,
) -> (Arc<Context>, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, mut writer) = reflector::store();
    for p in policies {
        writer.apply_watcher_event(&watcher::Event::Apply((*p).clone()));
    }
    let config = Config {
        defaults,
        instance: Some("test".into()),
        ..Config::default()
    };
    let ctx = Context::new(client, Arc::new(Metrics::default()), store, &config);
    (Arc::new(ctx), handle)
}

/// Expects the next request, checks method and path, answers `reply`,
/// returns the request body as JSON (Null when empty).
async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
    reply: Value,
) -> (String, Value) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path}"))
        .unwrap_or_else(|| panic!("client gone before {method} {path}"));
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    (uri, body)
}

/// The status apply of policy `grpc`, answered with `policy`.
async fn expect_status_apply(handle: &mut ApiHandle, policy: &KeepalivePolicy) -> (String, Value) {
    let path = "/apis/goaway.dev/v1alpha1/namespaces/ns/keepalivepolicies/grpc/status";
    expect(
        handle,
        Method::PATCH,
        path,
        serde_json::to_value(policy).unwrap(),
    )
    .await
}

async fn expect_silence(handle: &mut ApiHandle) {
    let next = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    if let Ok(Some((request, _))) = next {
        panic!("unexpected {} {}", request.method(), request.uri());
    }
}

fn pods(items: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

fn pod_meta(name: &str, injected: Option<&str>) -> Value {
    let mut meta = json!({"name": name, "namespace": "ns", "labels": {"app": "api"}});
    if let Some(p) = injected {
        meta["annotations"] = json!({ "goaway.dev/injected": p });
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta})
}

const CM_PATH: &str = "/api/v1/namespaces/ns/configmaps/goaway-grpc";
const PODS_PATH: &str = "/api/v1/namespaces/ns/pods";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
const SERVICES_PATH: &str = "/api/v1/namespaces/ns/services";

fn services(items: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": items})
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

#[tokio::test]
async fn new_policy_gets_its_config_map_status_and_an_event() {
    let p = policy(
        "grpc",
        "2024-01-01T00:00:00Z",
        "  server: {maxConnectionAge: 30m}\n",
    );
    let (ctx, mut api) = context(&[&p]);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));

    let (uri, cm) = expect(&mut api, Method::PATCH, CM_PATH, json!({})).await;
    assert!(
        uri.contains("fieldManager=goaway-operator") && uri.contains("force=true"),
        "{uri}"
    );
    assert_eq!(
        cm["data"]["policy.yaml"],
        "server:\n  maxConnectionAge: 30m0s\n"
    );
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "goaway-operator"
    );
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            owner["kind"].as_str(),
            owner["uid"].as_str(),
            owner["controller"].as_bool()
        ),
        (Some("KeepalivePolicy"), Some("uid-grpc"), Some(true))
    );

    let (uri, _) = expect(
        &mut api,
        Method::GET,
        PODS_PATH,
        pods(json!([pod_meta("a", Some("grpc")), pod_meta("b", None)])),
    )
    .await;
    assert!(uri.contains("labelSelector=app%3Dapi"), "{uri}");
    // namedPort mode with matched pods: the Services are checked for bypass.
    expect(&mut api, Method::GET, SERVICES_PATH, services(json!([]))).await;

    let (uri, status) = expect_status_apply(&mut api, &p).await;
    assert!(uri.contains("fieldManager=goaway-operator"), "{uri}");
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(status["status"]["matchedPods"], 2);
    assert_eq!(status["status"]["injectedPods"], 1);
    assert_eq!(status["status"]["selector"], "app=api");
    assert_eq!(status["status"]["configMap"], "goaway-grpc");
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("PolicyRendered"))
    );
    assert_eq!(condition(&status, "Conflicted")["status"], "False");
    assert_eq!(condition(&status, "Bypassed")["status"], "False");
    assert_eq!(status["status"]["interception"], "namedPort");

    let (_, event) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    assert_eq!(event["reason"], "PolicyRendered");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["name"], "grpc");

    assert_eq!(run.await.unwrap().unwrap(), Action::requeue(RESYNC));
    expect_silence(&mut api).await;
}

#[tokio::test]
async fn invalid_policy_only_reports_ready_false_with_the_fields() {
    let p = policy(
        "grpc",
        "2024-01-01T00:00:00Z",
        "  server: {time: 100ms}\n  upstream: {time: 1s}\n",
    );
    let (ctx, mut api) = context(&[&p]);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));

    let (_, status) = expect_status_apply(&mut api, &p).await;
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("InvalidPolicy"))
    );
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.server.time: must be at least 1s"),
        "{message}"
    );
    assert!(
        message.contains("spec.upstream.time: must be at least 10s"),
        "{message}"
    );
    assert_eq!(status["status"]["observedGeneration"], 1);

    let (_, event) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    assert_eq!(
        (event["reason"].as_str(), event["type"].as_str()),
        (Some("InvalidPolicy"), Some("Warning"))
    );

    assert_eq!(run.await.unwrap().unwrap(), Action::await_change());
    // No ConfigMap write, no pod list: nothing else is touched.
    expect_silence(&mut api).await;
}

#[tokio::test]
async fn operator_drain_defaults_fill_the_rendered_file_where_the_policy_is_silent() {
    let p = policy(
        "grpc",
        "2024-01-01T00:00:00Z",
        "  server: {maxConnectionAge: 30m}\n  drain: {delay: 5s}\n",
    );
    let defaults = crate::defaults::parsed(Some("10s"), Some("1m"), None);
    let (ctx, mut api) = context_with(&[&p], defaults);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));

    let (_, cm) = expect(&mut api, Method::PATCH, CM_PATH, json!({})).await;
    // The policy's delay wins; its missing timeout is the operator's; the
    // acknowledgement bound has no operator default and stays unset.
    let file = cm["data"]["policy.yaml"].as_str().unwrap();
    assert_eq!(
        file,
        "server:\n  maxConnectionAge: 30m0s\ndrain:\n  delay: 5s\n  timeout: 1m0s\n"
    );
    // The agent reads it as it would any file, with those values in force.
    let (agent_policy, _) =
        goaway_transport::Policy::load(file, goaway_transport::policy::Strictness::Permissive)
            .unwrap();
    let drain = agent_policy.drain_params();
    assert_eq!(
        (
            drain.delay.as_secs(),
            drain.timeout.as_secs(),
            drain.goaway_ack_timeout.as_secs()
        ),
        (5, 60, 5)
    );

    expect(&mut api, Method::GET, PODS_PATH, pods(json!([]))).await;
    let (_, status) = expect_status_apply(&mut api, &p).await;
    assert_eq!(condition(&status, "Ready")["status"], "True");
    expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    run.await.unwrap().unwrap();
    expect_silence(&mut api).await;
}

#[tokio::test]
async fn policy_invalid_with_the_operator_defaults_is_ready_false_naming_the_default() {
    let p = policy("grpc", "2024-01-01T00:00:00Z", "  drain: {timeout: 8s}\n");
    let defaults = crate::defaults::parsed(None, None, Some("10s"));
    let (ctx, mut api) = context_with(&[&p], defaults);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));

    let (_, status) = expect_status_apply(&mut api, &p).await;
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("InvalidPolicy"))
    );
    assert_eq!(
        ready["message"],
        "spec.drain.goawayAckTimeout: must be less than drain.timeout (8s), or the second GOAWAY would come after the hard close (got 10s); the policy does not set drain.goawayAckTimeout, so it is the operator default 10s (--default-drain-goaway-ack-timeout)"
    );
    let (_, event) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    assert_eq!(event["reason"], "InvalidPolicy");
    assert_eq!(run.await.unwrap().unwrap(), Action::await_change());
    // The last good ConfigMap (if any) is left alone.
    expect_silence(&mut api).await;
}

#[tokio::test]
async fn newer_policy_selecting_the_same_pods_reports_the_conflict() {
    let older = policy("a-old", "2024-01-01T00:00:00Z", "");
    let mut newer = policy("grpc", "2024-06-01T00:00:00Z", "");
    newer.metadata.generation = Some(2);
    newer.status = Some(KeepalivePolicyStatus {
        observed_generation: Some(2),
        ..Default::default()
    });
    let (ctx, mut api) = context(&[&older, &newer]);
    let run = tokio::spawn(reconcile(Arc::new(newer.clone()), ctx));

    expect(&mut api, Method::PATCH, CM_PATH, json!({})).await;
    expect(
        &mut api,
        Method::GET,
        PODS_PATH,
        pods(json!([pod_meta("a", Some("a-old"))])),
    )
    .await;
    expect(&mut api, Method::GET, SERVICES_PATH, services(json!([]))).await;
    let (_, status) = expect_status_apply(&mut api, &newer).await;
    let conflicted = condition(&status, "Conflicted");
    assert_eq!(conflicted["status"], "True");
    assert_eq!(conflicted["reason"], "PodsSelectedByOlderPolicy");
    assert_eq!(
        conflicted["message"],
        "1 of 1 selected pods are also selected by older policy a-old, which wins them"
    );
    assert_eq!(status["status"]["injectedPods"], 0);

    // Same generation as observed: no PolicyRendered event, only the conflict.
    let (_, event) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    assert_eq!(
        (event["reason"].as_str(), event["type"].as_str()),
        (Some("SelectorConflict"), Some("Warning"))
    );
    run.await.unwrap().unwrap();
    expect_silence(&mut api).await;
}

#[tokio::test]
async fn the_older_policy_wins_and_reports_no_conflict() {
    let older = policy("grpc", "2024-01-01T00:00:00Z", "");
    let newer = policy("b-new", "2024-06-01T00:00:00Z", "");
    let (ctx, mut api) = context(&[&older, &newer]);
    let run = tokio::spawn(reconcile(Arc::new(older.clone()), ctx));
    expect(&mut api, Method::PATCH, CM_PATH, json!({})).await;
    expect(
        &mut api,
        Method::GET,
        PODS_PATH,
        pods(json!([pod_meta("a", Some("grpc"))])),
    )
    .await;
    expect(&mut api, Method::GET, SERVICES_PATH, services(json!([]))).await;
    let (_, status) = expect_status_apply(&mut api, &older).await;
    assert_eq!(condition(&status, "Conflicted")["status"], "False");
    expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    run.await.unwrap().unwrap();
}

/// A matched, not yet injected pod with the app port named `grpc`.
fn pod_with_port(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "ns", "labels": {"app": "api"}},
           "spec": {"containers": [{"name": "app",
                    "ports": [{"name": "grpc", "containerPort": 50051}]}]}})
}

/// The ConfigMap apply, then the pod list answered with `items`.
async fn expect_config_map_and_pods(api: &mut ApiHandle, items: Value) {
    expect(api, Method::PATCH, CM_PATH, json!({})).await;
    expect(api, Method::GET, PODS_PATH, pods(items)).await;
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "ns"}, "spec": spec})
}

#[tokio::test]
async fn services_that_bypass_the_agent_are_named_on_the_status_with_an_event() {
    let p = policy("grpc", "2024-01-01T00:00:00Z", "");
    let (ctx, mut api) = context(&[&p]);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));
    expect_config_map_and_pods(&mut api, json!([pod_with_port("a")])).await;
    expect(
        &mut api,
        Method::GET,
        SERVICES_PATH,
        services(json!([
            service(
                "api",
                json!({"selector": {"app": "api"},
                               "ports": [{"port": 80, "targetPort": "grpc"}]})
            ),
            service(
                "api-headless",
                json!({"selector": {"app": "api"}, "clusterIP": "None",
                                        "ports": [{"port": 50051}]})
            ),
            service(
                "api-numeric",
                json!({"selector": {"app": "api"},
                                       "ports": [{"port": 80, "targetPort": 50051}]})
            ),
        ])),
    )
    .await;
    let (_, status) = expect_status_apply(&mut api, &p).await;
    assert_eq!(
        status["status"]["bypassingServices"],
        json!(["api-headless", "api-numeric"])
    );
    let bypassed = condition(&status, "Bypassed");
    assert_eq!(
        (bypassed["status"].as_str(), bypassed["reason"].as_str()),
        (Some("True"), Some("ServicesBypassAgent"))
    );
    let message = bypassed["message"].as_str().unwrap();
    assert!(
        message.contains("api-headless (headless")
            && message.contains("api-numeric (targetPort 50051"),
        "{message}"
    );
    let (_, rendered) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    assert_eq!(rendered["reason"], "PolicyRendered");
    let (_, event) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    assert_eq!(
        (event["reason"].as_str(), event["type"].as_str()),
        (Some("ServicesBypassAgent"), Some("Warning"))
    );
    assert_eq!(event["note"], bypassed["message"]);
    run.await.unwrap().unwrap();
    expect_silence(&mut api).await;
}

#[tokio::test]
async fn redirect_interception_has_no_bypass() {
    let p = policy("grpc", "2024-01-01T00:00:00Z", "  interception: redirect\n");
    let (ctx, mut api) = context(&[&p]);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));
    expect_config_map_and_pods(&mut api, json!([pod_with_port("a")])).await;
    // A numeric targetPort, which would bypass a namedPort pod.
    expect(
        &mut api,
        Method::GET,
        SERVICES_PATH,
        services(json!([service(
            "api-numeric",
            json!({"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 50051}]})
        )])),
    )
    .await;
    let (_, status) = expect_status_apply(&mut api, &p).await;
    assert_eq!(status["status"]["interception"], "redirect");
    assert!(
        status["status"].get("bypassingServices").is_none(),
        "{status}"
    );
    assert_eq!(condition(&status, "Bypassed")["status"], "False");
    expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    run.await.unwrap().unwrap();
    expect_silence(&mut api).await;
}

/// `--forbid-redirect`: a policy asking for redirect is rendered (pods
/// injected before read it) but not ready, its new pods get no agent, no
/// mode is in force, and the status and a Warning Event say what to do.
#[tokio::test]
async fn a_policy_asking_for_a_forbidden_redirect_is_not_ready_and_says_why() {
    let p = policy(
        "grpc",
        "2024-01-01T00:00:00Z",
        "  interception: redirect
",
    );
    let defaults = PolicyDefaults::default().forbidding_redirect(true);
    let (ctx, mut api) = context_with(&[&p], defaults);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));
    expect_config_map_and_pods(&mut api, json!([pod_with_port("a")])).await;
    // Pods not injected are judged in the mode asked for: a numeric
    // targetPort is not reported as bypassing an agent they do not have.
    expect(
        &mut api,
        Method::GET,
        SERVICES_PATH,
        services(json!([service(
            "api-numeric",
            json!({"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 50051}]})
        )])),
    )
    .await;
    let (_, status) = expect_status_apply(&mut api, &p).await;
    assert!(status["status"].get("interception").is_none(), "{status}");
    assert!(
        status["status"].get("bypassingServices").is_none(),
        "{status}"
    );
    let note = "policy grpc asks for redirect interception, which the operator forbids (--forbid-redirect: no pod may get its NET_ADMIN init container); set the policy's spec.interception to namedPort to inject its pods";
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "RedirectForbidden");
    assert_eq!(
        ready["message"],
        format!("ConfigMap goaway-grpc holds the policy, but new pods get no agent: {note}")
    );
    for reason in ["PolicyRendered", "RedirectForbidden"] {
        let (_, event) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
        assert_eq!(event["reason"], reason);
        if reason == "RedirectForbidden" {
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["note"], note);
        }
    }
    run.await.unwrap().unwrap();
    expect_silence(&mut api).await;
}

/// `--forbid-redirect` changes nothing for a namedPort policy but the
/// advice: redirect is no way around a bypassing Service.
#[tokio::test]
async fn a_bypass_under_forbid_redirect_does_not_advise_redirect() {
    let p = policy("grpc", "2024-01-01T00:00:00Z", "");
    let defaults = PolicyDefaults::default().forbidding_redirect(true);
    let (ctx, mut api) = context_with(&[&p], defaults);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));
    expect_config_map_and_pods(&mut api, json!([pod_with_port("a")])).await;
    expect(
        &mut api,
        Method::GET,
        SERVICES_PATH,
        services(json!([service(
            "api-numeric",
            json!({"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 50051}]})
        )])),
    )
    .await;
    let (_, status) = expect_status_apply(&mut api, &p).await;
    assert_eq!(status["status"]["interception"], "namedPort");
    assert_eq!(condition(&status, "Ready")["status"], "True");
    let bypassed = condition(&status, "Bypassed")["message"].as_str().unwrap();
    assert!(!bypassed.contains("set spec.interception"), "{bypassed}");
    assert!(bypassed.contains("--forbid-redirect"), "{bypassed}");
    for reason in ["PolicyRendered", "ServicesBypassAgent"] {
        let (_, event) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
        assert_eq!(event["reason"], reason);
    }
    run.await.unwrap().unwrap();
    expect_silence(&mut api).await;
}

#[tokio::test]
async fn the_operator_default_interception_applies_to_policies_without_one() {
    let p = policy("grpc", "2024-01-01T00:00:00Z", "");
    let defaults = PolicyDefaults::default().with_interception(crate::Interception::Redirect);
    let (ctx, mut api) = context_with(&[&p], defaults);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));
    expect_config_map_and_pods(&mut api, json!([pod_with_port("a")])).await;
    expect(&mut api, Method::GET, SERVICES_PATH, services(json!([]))).await;
    let (_, status) = expect_status_apply(&mut api, &p).await;
    assert_eq!(status["status"]["interception"], "redirect");
    expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn steady_state_pass_publishes_no_event_and_keeps_transition_times() {
    let mut p = policy("grpc", "2024-01-01T00:00:00Z", "");
    let (ctx, mut api) = context(&[&p]);
    let first = tokio::spawn(reconcile(Arc::new(p.clone()), ctx.clone()));
    expect(&mut api, Method::PATCH, CM_PATH, json!({})).await;
    expect(&mut api, Method::GET, PODS_PATH, pods(json!([]))).await;
    let (_, applied) = expect_status_apply(&mut api, &p).await;
    expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    first.await.unwrap().unwrap();

    p.status = Some(serde_json::from_value(applied["status"].clone()).unwrap());
    let second = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));
    expect(&mut api, Method::PATCH, CM_PATH, json!({})).await;
    expect(&mut api, Method::GET, PODS_PATH, pods(json!([]))).await;
    let (_, again) = expect_status_apply(&mut api, &p).await;
    assert_eq!(
        again["status"]["conditions"],
        applied["status"]["conditions"]
    );
    second.await.unwrap().unwrap();
    expect_silence(&mut api).await;
}

#[test]
fn pods_map_to_selecting_and_injecting_policies() {
    let a = policy("a", "2024-01-01T00:00:00Z", "");
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(a));
    let pod: Pod = serde_yaml::from_str(
        "metadata: {name: p, namespace: ns, labels: {app: api}, annotations: {goaway.dev/injected: old}}",
    )
    .unwrap();
    let names: Vec<_> = policies_for_pod(&store, &pod)
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["a", "old"]);
}

/// An injected pod of policy `grpc` whose agent container waits with
/// `reason` (`None`: it runs).
fn injected_pod_waiting(name: &str, reason: Option<&str>) -> Value {
    let mut pod = pod_meta(name, Some("grpc"));
    let state = match reason {
        Some(r) => json!({"waiting": {"reason": r, "message": "Back-off pulling image"}}),
        None => json!({"running": {}}),
    };
    pod["status"] = json!({"initContainerStatuses": [
        {"name": "goaway-agent", "image": "registry.example/goaway-agent:1", "imageID": "",
         "ready": false, "restartCount": 0, "state": state},
    ]});
    pod
}

#[tokio::test]
async fn injected_pods_that_cannot_pull_the_agent_image_are_counted_once_per_episode() {
    let mut p = policy("grpc", "2024-01-01T00:00:00Z", "");
    let (ctx, mut api) = context(&[&p]);
    // The app's own image failing is not the agent's.
    let mut app_failing = injected_pod_waiting("d", None);
    app_failing["status"]["containerStatuses"] = json!([{"name": "app", "image": "app:1",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff"}}}]);
    let listed = pods(json!([
        injected_pod_waiting("a", Some("ImagePullBackOff")),
        injected_pod_waiting("b", Some("ErrImagePull")),
        injected_pod_waiting("c", None),
        app_failing,
        pod_meta("e", None),
    ]));

    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx.clone()));
    expect(&mut api, Method::PATCH, CM_PATH, json!({})).await;
    expect(&mut api, Method::GET, PODS_PATH, listed.clone()).await;
    expect(&mut api, Method::GET, SERVICES_PATH, services(json!([]))).await;
    let (_, status) = expect_status_apply(&mut api, &p).await;
    let failing = condition(&status, "AgentImagePullFailing");
    assert_eq!(
        (failing["status"].as_str(), failing["reason"].as_str()),
        (Some("True"), Some("AgentImageNotPulled"))
    );
    let message = failing["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "2 of 4 injected pods cannot pull the agent image registry.example/goaway-agent:1 (ErrImagePull, ImagePullBackOff)"
        ),
        "{message}"
    );
    assert!(message.contains("namespace ns"), "{message}");
    // Ready says whether the policy is rendered, not whether pods start.
    assert_eq!(condition(&status, "Ready")["status"], "True");
    let (_, event) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    assert_eq!(event["reason"], "PolicyRendered");
    let (_, event) = expect(&mut api, Method::POST, EVENTS_PATH, json!({})).await;
    assert_eq!(
        (event["reason"].as_str(), event["type"].as_str()),
        (Some("AgentImagePullFailing"), Some("Warning"))
    );
    assert_eq!(event["note"].as_str(), Some(message));
    run.await.unwrap().unwrap();
    expect_silence(&mut api).await;

    // Still failing on the next pass, one pod fewer: the count follows,
    // without a second Event.
    p.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let listed = pods(json!([
        injected_pod_waiting("a", Some("ImagePullBackOff")),
        injected_pod_waiting("b", None),
    ]));
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx.clone()));
    expect(&mut api, Method::PATCH, CM_PATH, json!({})).await;
    expect(&mut api, Method::GET, PODS_PATH, listed).await;
    expect(&mut api, Method::GET, SERVICES_PATH, services(json!([]))).await;
    let (_, status) = expect_status_apply(&mut api, &p).await;
    let failing = condition(&status, "AgentImagePullFailing");
    assert_eq!(failing["status"], "True");
    assert!(
        failing["message"]
            .as_str()
            .unwrap()
            .starts_with("1 of 2 injected pods"),
        "{failing}"
    );
    run.await.unwrap().unwrap();
    expect_silence(&mut api).await;

    // Pulled at last: False, and no Event for the good news.
    p.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));
    expect(&mut api, Method::PATCH, CM_PATH, json!({})).await;
    expect(
        &mut api,
        Method::GET,
        PODS_PATH,
        pods(json!([injected_pod_waiting("a", None)])),
    )
    .await;
    expect(&mut api, Method::GET, SERVICES_PATH, services(json!([]))).await;
    let (_, status) = expect_status_apply(&mut api, &p).await;
    let failing = condition(&status, "AgentImagePullFailing");
    assert_eq!(
        (failing["status"].as_str(), failing["reason"].as_str()),
        (Some("False"), Some("NoPullFailure"))
    );
    run.await.unwrap().unwrap();
    expect_silence(&mut api).await;
}
