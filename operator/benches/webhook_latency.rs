//! Webhook latency, in process: a typical Deployment pod's AdmissionReview
//! through the real axum router (parse, select, mutate, diff, serialise),
//! with 50 policies in the cache. Prints p50/p99; the target is
//! p99 < 2 ms. Run: `cargo bench -p goaway-operator --bench webhook_latency`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use goaway_operator::KeepalivePolicy;
use goaway_operator::inject::AgentConfig;
use goaway_operator::metrics::Metrics;
use goaway_operator::webhook::Webhook;
use http::Request;
use http_body_util::BodyExt;
use kube::runtime::{reflector, watcher};
use tower::ServiceExt;

const ITERATIONS: usize = 20_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store, mut writer) = reflector::store();
    for i in 0..50 {
        let app = if i == 49 {
            "api".to_string()
        } else {
            format!("svc-{i}")
        };
        let p: KeepalivePolicy = serde_yaml::from_str(&format!(
            "apiVersion: goaway.dev/v1alpha1\nkind: KeepalivePolicy\nmetadata: {{name: p{i}, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}}\nspec: {{selector: {{matchLabels: {{app: {app}}}}}, port: grpc, server: {{maxConnectionAge: 30m}}, drain: {{delay: 5s}}}}\n"
        ))
        .unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    let webhook = Arc::new(Webhook::new(
        store,
        AgentConfig::default(),
        Arc::new(Metrics::default()),
    ));
    let router = webhook.router();
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/admission/named_port.json"
    ))
    .unwrap();

    let mut samples = Vec::with_capacity(ITERATIONS);
    runtime.block_on(async {
        for i in 0..ITERATIONS + 1_000 {
            let req = Request::post("/mutate")
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .unwrap();
            let started = Instant::now();
            let resp = router.clone().oneshot(req).await.unwrap();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let took = started.elapsed();
            assert!(bytes.windows(5).any(|w| w == b"patch"), "not injected");
            if i >= 1_000 {
                samples.push(took);
            }
        }
    });
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "webhook latency over {ITERATIONS} reviews (typical Deployment pod, 50 policies): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (target p99 < 2000 µs)",
        us(pct(0.50)),
        us(pct(0.99)),
        us(*samples.last().unwrap())
    );
    assert!(pct(0.99) < Duration::from_millis(2), "p99 over 2 ms");
}
