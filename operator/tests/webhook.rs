//! AdmissionReview fixtures in, patched pods out, through the webhook's
//! real HTTP router. `tests/fixtures/admission/NAME.json` is the review the
//! API server sends; `NAME.expected.json` the pod after applying the
//! returned patch (regenerate with `UPDATE_FIXTURES=1`). Every fixture is
//! also reviewed a second time on its own output: nothing changes.

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use goaway_operator::inject::AgentConfig;
use goaway_operator::manifests::load_policies;
use goaway_operator::metrics::Metrics;
use goaway_operator::webhook::{DEFAULT_TIMEOUT, MAX_REVIEW_BYTES, Webhook};
use goaway_operator::{KeepalivePolicy, PolicyDefaults};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use support::eventually;
use support::fake_api::FakeApi;
use tower::ServiceExt;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission")
}

fn policies() -> Vec<Arc<KeepalivePolicy>> {
    let text = std::fs::read_to_string(dir().join("policies.yaml")).unwrap();
    load_policies(&text, "shop", &PolicyDefaults::default()).unwrap()
}

fn webhook() -> (Arc<Webhook>, Arc<Metrics>) {
    webhook_with(PolicyDefaults::default())
}

/// The webhook of an operator run with policy defaults.
fn webhook_with(defaults: PolicyDefaults) -> (Arc<Webhook>, Arc<Metrics>) {
    let (w, metrics) = unbuilt_webhook();
    let w = w
        .with_policy_defaults(defaults)
        .with_token_source(|| "fixture-token".into());
    (Arc::new(w), metrics)
}

/// The webhook with the fixtures' policies, to configure further.
fn unbuilt_webhook() -> (Webhook, Arc<Metrics>) {
    let (store, mut writer) = reflector::store();
    for p in policies() {
        writer.apply_watcher_event(&watcher::Event::Apply((*p).clone()));
    }
    let metrics = Arc::new(Metrics::default());
    let w = Webhook::new(store, AgentConfig::default(), metrics.clone());
    (w, metrics)
}

/// Posts a review; returns the AdmissionReview answered.
async fn answer(webhook: Arc<Webhook>, body: &Value) -> Value {
    let req = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let resp = webhook.router().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    answer
}

/// Posts a review; returns (allowed, uid, patched object or None when unpatched).
async fn review(webhook: &Arc<Webhook>, body: &Value) -> (bool, String, Option<Value>) {
    let answer = answer(webhook.clone(), body).await;
    let response = &answer["response"];
    let patched = response.get("patch").map(|p| {
        assert_eq!(response["patchType"], "JSONPatch");
        let raw: Vec<u8> = serde_json::from_value(p.clone()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
        let mut object = body["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).unwrap();
        object
    });
    (
        response["allowed"].as_bool().unwrap(),
        response["uid"].as_str().unwrap().into(),
        patched,
    )
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap())
        .unwrap()
}

/// Reviews a fixture, compares with (or writes) its golden pod, checks
/// idempotence, returns the patched pod.
async fn fixture(name: &str, injected: bool) -> Value {
    let (webhook, _) = webhook();
    let input = load(name);
    let (allowed, uid, patched) = review(&webhook, &input).await;
    assert!(allowed, "{name}: not allowed");
    assert_eq!(uid, input["request"]["uid"].as_str().unwrap());
    assert_eq!(patched.is_some(), injected, "{name}: injected?");
    let pod = patched.unwrap_or_else(|| input["request"]["object"].clone());
    let golden = dir().join(format!("{name}.expected.json"));
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&golden, serde_json::to_string_pretty(&pod).unwrap() + "\n").unwrap();
    }
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
    assert_eq!(pod, expected, "{name}: differs from {}", golden.display());

    let mut again = input.clone();
    again["request"]["object"] = pod.clone();
    let (_, _, repatched) = review(&webhook, &again).await;
    assert_eq!(repatched, None, "{name}: second pass patched");
    pod
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

#[tokio::test]
async fn named_port_is_taken_over_and_probes_rewritten() {
    let pod = fixture("named_port", true).await;
    let app = container(&pod, "containers", "api");
    assert_eq!(
        app["ports"][0],
        json!({"containerPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(app["livenessProbe"]["tcpSocket"]["port"], 8080);
    assert_eq!(app["startupProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(app["lifecycle"]["preStop"]["httpGet"]["path"], "/drain");
    assert_eq!(
        app["lifecycle"]["preStop"]["httpGet"]["httpHeaders"][0]["value"],
        "Bearer fixture-token"
    );
    let agent = container(&pod, "initContainers", "goaway-agent");
    assert_eq!(agent["restartPolicy"], "Always");
    assert_eq!(
        agent["ports"][0],
        json!({"name": "grpc", "containerPort": 15051, "protocol": "TCP"})
    );
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 50);
    assert_eq!(pod["metadata"]["annotations"]["goaway.dev/injected"], "api");

    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        let mut already = load("named_port");
        already["request"]["uid"] = json!("11111111-0000-4000-8000-000000000007");
        already["request"]["object"] = pod;
        std::fs::write(
            dir().join("already_injected.json"),
            serde_json::to_string_pretty(&already).unwrap() + "\n",
        )
        .unwrap();
    }
}

#[tokio::test]
async fn redirect_interception_keeps_the_port_and_adds_the_intercept_init_container() {
    let pod = fixture("redirect", true).await;
    // The app port keeps its name: Services need no change, and the
    // kernel, not the port's name, sends clients to the agent.
    let app = container(&pod, "containers", "api");
    assert_eq!(app["ports"][0]["name"], "grpc");
    let inits: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        &inits[inits.len() - 2..],
        ["goaway-intercept", "goaway-agent"],
        "the redirect is in place before the agent and the app start"
    );
    let intercept = container(&pod, "initContainers", "goaway-intercept");
    assert_eq!(
        intercept["args"],
        json!(["intercept", "--app-port", "8080", "--agent-port", "15051"])
    );
    assert!(intercept.get("restartPolicy").is_none(), "runs once");
    let security = &intercept["securityContext"];
    assert_eq!(security["capabilities"]["add"], json!(["NET_ADMIN"]));
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["runAsUser"], 0);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["privileged"], false);
    let agent = container(&pod, "initContainers", "goaway-agent");
    assert_eq!(
        agent["ports"][0],
        json!({"name": "goaway-proxy", "containerPort": 15051, "protocol": "TCP"})
    );
    assert!(agent["securityContext"]["capabilities"]["add"].is_null());
    assert_eq!(
        pod["metadata"]["annotations"]["goaway.dev/injected"],
        "redirected"
    );
}

#[tokio::test]
async fn redirect_falls_back_to_named_port_where_pod_security_refuses_net_admin() {
    let inits_of = |pod: &Value| -> Vec<String> {
        pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (level, redirected) in [
        (Some("baseline"), false),
        (Some("restricted"), false),
        (Some("privileged"), true),
        (None, true),
    ] {
        let (namespaces, mut writer) = reflector::store();
        let mut labels = json!({"kubernetes.io/metadata.name": "shop"});
        if let Some(level) = level {
            labels["pod-security.kubernetes.io/enforce"] = json!(level);
        }
        let ns: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "shop", "labels": labels}
        }))
        .unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(ns));
        let (store, mut policy_writer) = reflector::store();
        for p in policies() {
            policy_writer.apply_watcher_event(&watcher::Event::Apply((*p).clone()));
        }
        let webhook = Arc::new(
            Webhook::new(store, AgentConfig::default(), Arc::new(Metrics::default()))
                .with_namespaces(namespaces)
                .with_token_source(|| "fixture-token".into()),
        );
        let (allowed, _, patched) = review(&webhook, &load("redirect")).await;
        assert!(allowed);
        let pod = patched.expect("injected either way");
        let inits = inits_of(&pod);
        assert_eq!(
            inits.iter().any(|n| n == "goaway-intercept"),
            redirected,
            "{level:?}: {inits:?}"
        );
        // Without redirect the agent takes over the port's name, so named
        // targetPorts still reach it.
        let agent = container(&pod, "initContainers", "goaway-agent");
        let expected_name = if redirected { "goaway-proxy" } else { "grpc" };
        assert_eq!(agent["ports"][0]["name"], expected_name, "{level:?}");
    }
}

#[tokio::test]
async fn numeric_target_port_is_fronted_without_a_name() {
    let pod = fixture("numeric_target_port", true).await;
    let agent = container(&pod, "initContainers", "goaway-agent");
    assert_eq!(
        agent["ports"][0],
        json!({"name": "goaway-proxy", "containerPort": 15060, "protocol": "TCP"})
    );
    assert_eq!(agent["args"][4], "$(GOAWAY_POD_IP):50051");
    // Defaults: 0s delay + 30s timeout + 5s margin.
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 35);
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(format!("{name}.expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn drain_defaults_change_only_the_grace_period_of_policies_without_drain_settings() {
    let defaults = PolicyDefaults::new(goaway_transport::policy::DrainPolicy {
        delay: Some("10s".parse().unwrap()),
        timeout: Some("1m".parse().unwrap()),
        goaway_ack_timeout: None,
        quiet_period: None,
    })
    .unwrap();
    let (webhook, _) = webhook_with(defaults);
    // Policy `numeric` sets no drain: 10s + 60s + 5s instead of 35s, and
    // nothing else differs from the golden pod.
    let (_, _, patched) = review(&webhook, &load("numeric_target_port")).await;
    let mut want = expected("numeric_target_port");
    assert_eq!(want["spec"]["terminationGracePeriodSeconds"], 35);
    want["spec"]["terminationGracePeriodSeconds"] = json!(75);
    // The agent waits as long for SIGTERM after a drain.
    let args = want["spec"]["initContainers"][0]["args"]
        .as_array_mut()
        .unwrap();
    let at = args.iter().position(|a| a == "--drain-expiry").unwrap();
    assert_eq!(args[at + 1], "35s");
    args[at + 1] = json!("75s");
    assert_eq!(patched, Some(want));
    // Policy `api` sets its own drain (5s + 40s): the golden pod as is.
    let (_, _, patched) = review(&webhook, &load("named_port")).await;
    assert_eq!(patched, Some(expected("named_port")));
}

#[tokio::test]
async fn existing_pre_stop_is_kept() {
    let pod = fixture("existing_prestop", true).await;
    let app = container(&pod, "containers", "api");
    assert_eq!(
        app["lifecycle"]["preStop"],
        json!({"exec": {"command": ["/bin/sh", "-c", "nginx -s quit && sleep 10"]}})
    );
}

#[tokio::test]
async fn a_pre_stop_that_only_sleeps_becomes_the_drain_with_the_sleep_as_floor() {
    let pod = fixture("sleep_prestop", true).await;
    let app = container(&pod, "containers", "api");
    let hook = &app["lifecycle"]["preStop"]["httpGet"];
    assert_eq!(hook["path"], "/drain?min=10s");
    assert_eq!(hook["httpHeaders"][0]["value"], "Bearer fixture-token");
    assert_eq!(
        pod["metadata"]["annotations"]["goaway.dev/injected-replaced-pre-stop"],
        r#"{"api":{"exec":{"command":["/bin/sh","-c","sleep 10"]}}}"#
    );
}

#[tokio::test]
async fn several_containers_each_drain_and_the_agent_comes_after_init_containers() {
    let pod = fixture("several_containers", true).await;
    for name in ["log-shipper", "api"] {
        assert_eq!(
            container(&pod, "containers", name)["lifecycle"]["preStop"]["httpGet"]["port"],
            15052
        );
    }
    let inits: Vec<_> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(inits, [json!("migrate"), json!("goaway-agent")]);
    assert_eq!(
        container(&pod, "containers", "log-shipper")["ports"][0]["name"],
        "http"
    );
    // 120s already covers the drain.
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 120);
}

#[tokio::test]
async fn host_network_opted_out_already_injected_and_unselected_pods_are_admitted_unchanged() {
    for name in [
        "host_network",
        "opted_out",
        "already_injected",
        "no_matching_policy",
    ] {
        fixture(name, false).await;
    }
}

#[tokio::test]
async fn broken_input_is_admitted_or_refused_never_patched() {
    let (webhook, metrics) = webhook();
    // An UPDATE is none of the webhook's business.
    let mut update = load("named_port");
    update["request"]["operation"] = json!("UPDATE");
    assert_eq!(review(&webhook, &update).await.2, None);
    // A pod that does not parse is admitted unchanged, by uid.
    let mut weird = load("named_port");
    weird["request"]["object"]["spec"]["containers"] = json!("not a list");
    let (allowed, uid, patched) = review(&webhook, &weird).await;
    assert!(allowed && patched.is_none());
    assert_eq!(uid, "11111111-0000-4000-8000-000000000001");
    // Not a review at all: 400, which failurePolicy Ignore turns into admit.
    let req = Request::post("/mutate").body(Body::from("{")).unwrap();
    assert_eq!(
        webhook
            .clone()
            .router()
            .oneshot(req)
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    let text = metrics.render();
    assert!(
        text.contains("outcome=\"error\",reason=\"unreadable_pod\""),
        "{text}"
    );
}

/// A review whose CPU work outlasts its budget (here: a drain token
/// source that blocks until the test lets it go) is answered at the
/// budget, on the handler's own: allowed, unpatched, with a warning. The
/// worker's late answer is dropped without being counted or logged as an
/// injection.
#[test]
fn a_review_over_its_budget_is_admitted_unpatched_with_a_warning_and_counted_once() {
    // Declared first, dropped last: a failing assertion drops `release`
    // first, which lets the worker go, so the runtime's drop (which waits
    // for blocking tasks) does not hang.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let (webhook, metrics) = unbuilt_webhook();
    let webhook = Arc::new(
        webhook
            .with_timeout(Duration::from_secs(4))
            .with_token_source(move || {
                let _ = entered_tx.send(());
                // Bounded, so a handler that waits for the worker fails
                // the assertions below instead of hanging.
                let _ = released
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30));
                "fixture-token".into()
            }),
    );
    let input = load("named_port");
    let (answer, waited) = runtime.block_on(async {
        let started = tokio::time::Instant::now();
        let (webhook, body) = (webhook.clone(), input.clone());
        let request = tokio::spawn(async move { answer(webhook, &body).await });
        entered.recv().await.expect("the worker started");
        // A blocking task holds the paused clock still; move it by hand.
        tokio::time::advance(Duration::from_secs(2)).await;
        let answer = request.await.unwrap();
        (answer, started.elapsed())
    });
    release.send(()).unwrap();
    drop(runtime);

    assert_eq!(waited, Duration::from_secs(2), "half the 4s timeout");
    let response = &answer["response"];
    assert_eq!(response["uid"], input["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert_eq!(
        response["warnings"],
        json!(["goaway: not injected: the webhook did not finish its review within 2s"])
    );
    let text = metrics.render();
    assert!(
        text.contains(
            "goaway_operator_admissions_total{outcome=\"error\",reason=\"budget_exceeded\"} 1"
        ),
        "{text}"
    );
    assert!(
        !text.contains("outcome=\"injected\""),
        "the late answer was counted:\n{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_still_arriving_at_the_timeout_is_refused() {
    let (webhook, metrics) = webhook();
    let trickle = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"apiVersion\": "))
    })
    .chain(futures_util::stream::pending());
    let req = Request::post("/mutate")
        .body(Body::from_stream(trickle))
        .unwrap();
    let started = tokio::time::Instant::now();
    let resp = webhook.router().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(resp.headers()["connection"], "close");
    assert_eq!(started.elapsed(), DEFAULT_TIMEOUT);
    let text = metrics.render();
    assert!(
        text.contains("outcome=\"error\",reason=\"request_timeout\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_announced_or_not() {
    let (webhook, metrics) = webhook();
    let big = vec![b' '; MAX_REVIEW_BYTES + 1];
    let announced = Request::post("/mutate")
        .header("content-length", big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let chunked = Request::post("/mutate")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    for req in [announced, chunked] {
        let resp = webhook.clone().router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // At the limit exactly, a body is read (and found not to be a review).
    let at_limit = Request::post("/mutate")
        .body(Body::from(vec![b' '; MAX_REVIEW_BYTES]))
        .unwrap();
    let resp = webhook.clone().router().oneshot(at_limit).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let text = metrics.render();
    assert!(
        text.contains("outcome=\"error\",reason=\"request_too_large\"} 2"),
        "{text}"
    );
}

/// The chart registers the webhook with `sideEffects: NoneOnDryRun`: a
/// dry-run review publishes no Event, where the same review for real
/// does (a kept preStop hook; an unrecognised opt-out value).
#[tokio::test]
async fn dry_run_reviews_publish_no_events() {
    let api = FakeApi::new();
    let (store, mut writer) = reflector::store();
    for p in policies() {
        writer.apply_watcher_event(&watcher::Event::Apply((*p).clone()));
    }
    let reporter = Reporter {
        controller: goaway_operator::MANAGER.into(),
        instance: None,
    };
    let webhook = Arc::new(
        Webhook::new(store, AgentConfig::default(), Arc::new(Metrics::default()))
            .with_token_source(|| "fixture-token".into())
            .with_recorder(Recorder::new(api.client(), reporter)),
    );
    // The two reviews' pods belong to different ReplicaSets, which the
    // Events would be about.
    let owned_by = |replica_set: &str, dry_run: bool| {
        let mut review = load("existing_prestop");
        let request = &mut review["request"];
        request["dryRun"] = json!(dry_run);
        let meta = &mut request["object"]["metadata"];
        meta["ownerReferences"][0]["name"] = json!(replica_set);
        meta["annotations"] = json!({"goaway.dev/inject": "maybe"});
        review
    };

    let (allowed, _, patched) = review(&webhook, &owned_by("dry-run", true)).await;
    assert!(allowed && patched.is_some(), "a dry run is injected too");
    let (_, _, patched) = review(&webhook, &owned_by("for-real", false)).await;
    assert!(patched.is_some());

    // Events are published in the background, in the order of the
    // reviews: once the second review's are in, the first's would be.
    let about = |events: &[Value], name: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["regarding"]["name"] == name)
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let events = eventually("the real review's two Events", async || {
        let events = api.list("events");
        (about(&events, "for-real").len() == 2).then_some(events)
    })
    .await;
    let mut reasons = about(&events, "for-real");
    reasons.sort();
    assert_eq!(reasons, ["InjectValueUnrecognised", "PreStopKept"]);
    assert_eq!(about(&events, "dry-run"), Vec::<String>::new());
    assert_eq!(events.len(), 2, "{events:#?}");
}

/// Replacing a sleeping preStop hook is said in a Normal Event on the
/// pod's owner (never for a dry run), naming the container and the sleep.
#[tokio::test]
async fn a_replaced_sleep_is_reported_in_a_normal_event() {
    let api = FakeApi::new();
    let (store, mut writer) = reflector::store();
    for p in policies() {
        writer.apply_watcher_event(&watcher::Event::Apply((*p).clone()));
    }
    let reporter = Reporter {
        controller: goaway_operator::MANAGER.into(),
        instance: None,
    };
    let webhook = Arc::new(
        Webhook::new(store, AgentConfig::default(), Arc::new(Metrics::default()))
            .with_token_source(|| "fixture-token".into())
            .with_recorder(Recorder::new(api.client(), reporter)),
    );
    let owned_by = |replica_set: &str, dry_run: bool| {
        let mut review = load("sleep_prestop");
        review["request"]["dryRun"] = json!(dry_run);
        review["request"]["object"]["metadata"]["ownerReferences"][0]["name"] = json!(replica_set);
        review
    };
    let (_, _, patched) = review(&webhook, &owned_by("dry-run", true)).await;
    assert!(patched.is_some());
    let (_, _, patched) = review(&webhook, &owned_by("for-real", false)).await;
    assert!(patched.is_some());

    let events = eventually("the replaced sleep's Event", async || {
        let events = api.list("events");
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(
        (
            event["type"].as_str(),
            event["reason"].as_str(),
            event["regarding"]["name"].as_str()
        ),
        (
            Some("Normal"),
            Some("PreStopSleepReplaced"),
            Some("for-real")
        )
    );
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("container(s) api (sleep 10s) only slept"),
        "{note}"
    );
}
