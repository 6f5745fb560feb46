//! The injected spec really works: a pod mutated by the webhook's code,
//! the agent binary started with exactly the sidecar's args and env and
//! the policy file the controller renders (mounted where the volume
//! mount says, the operator's drain defaults filled in), then the
//! application's `preStop.httpGet` performed exactly as written — and the
//! drain observed from a client.
//!
//! The agent binary: see `support::agent`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use goaway_operator::crd::render_policy_file;
use goaway_operator::inject::{self, AgentConfig, Outcome};
use goaway_operator::{KeepalivePolicy, PolicyDefaults};
use goaway_tests::{Scratch, free_port};
use goaway_transport::policy::DrainPolicy;
use http::{Request, Response};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod};
use tokio::net::{TcpListener, TcpStream};

use support::agent::{http_get, start_agent};
use support::eventually;

/// A minimal gRPC-ish upstream: answers every request with 200.
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(tcp).await else {
                return;
            };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                let resp = Response::builder().status(200).body(()).unwrap();
                if let Ok(mut send) = respond.send_response(resp, false) {
                    let _ = send.send_data(Bytes::from_static(b"ok"), true);
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_pre_stop_drains_the_injected_agent() {
    let (app_port, agent_port, admin_port) = (free_port(), free_port(), free_port());
    let policy: KeepalivePolicy = serde_yaml::from_str(&format!(
        "apiVersion: goaway.dev/v1alpha1\nkind: KeepalivePolicy\nmetadata: {{name: api, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: api}}}}\n  port: grpc\n  agentPort: {agent_port}\n  drain: {{delay: 0s}}\n"
    ))
    .unwrap();
    // The operator's defaults give the drain its timeouts.
    let defaults = PolicyDefaults::new(DrainPolicy {
        delay: Some("20s".parse().unwrap()),
        timeout: Some("3s".parse().unwrap()),
        goaway_ack_timeout: Some("1s".parse().unwrap()),
        quiet_period: None,
    })
    .unwrap();
    let pod: Pod = serde_yaml::from_str(&format!(
        "metadata: {{labels: {{app: api}}}}\nspec:\n  containers:\n  - name: app\n    image: app\n    ports: [{{name: grpc, containerPort: {app_port}}}]\n    lifecycle: {{preStop: {{sleep: {{seconds: 2}}}}}}\n"
    ))
    .unwrap();
    let agent_config = AgentConfig {
        admin_port,
        ..AgentConfig::default()
    };
    let token = inject::new_drain_token();
    let mutation = inject::mutate(
        &pod.metadata,
        pod.spec.as_ref().unwrap(),
        "shop",
        &[Arc::new(policy.clone())],
        &defaults,
        &agent_config,
        &token,
    )
    .unwrap();
    assert!(matches!(mutation.outcome, Outcome::Injected(_)));
    let mut value = serde_json::to_value(&pod).unwrap();
    json_patch::patch(&mut value, &mutation.patch).unwrap();
    let injected: Pod = serde_json::from_value(value).unwrap();
    let spec = injected.spec.unwrap();
    let sidecar = spec
        .init_containers
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.name == "goaway-agent")
        .unwrap()
        .clone();
    let pre_stop = spec.containers[0]
        .lifecycle
        .clone()
        .unwrap()
        .pre_stop
        .unwrap()
        .http_get
        .unwrap();

    // The policy file, as the controller renders it into the ConfigMap.
    let mount = Scratch::new("policy").unwrap();
    mount
        .write(
            "policy.yaml",
            &render_policy_file(&policy.spec, &defaults).unwrap(),
        )
        .unwrap();

    tokio::spawn(upstream(
        TcpListener::bind(("127.0.0.1", app_port)).await.unwrap(),
    ));
    let _agent = start_agent(&sidecar, &[("/etc/goaway", mount.path())], &[], None);

    // The sidecar's own probes, as written.
    let probe = |c: &Container| c.readiness_probe.clone().unwrap().http_get.unwrap();
    let startup = sidecar.startup_probe.clone().unwrap().http_get.unwrap();
    eventually("startup probe", async || {
        TcpStream::connect(("127.0.0.1", admin_port)).await.is_ok()
            && http_get(&startup, true).await.0 == 200
    })
    .await;
    eventually("readiness probe", async || {
        http_get(&probe(&sidecar), true).await.0 == 200
    })
    .await;

    // The agent runs with the policy's delay and the operator's timeouts.
    let effective = HTTPGetAction {
        path: Some("/policy".into()),
        ..startup.clone()
    };
    let (status, body) = http_get(&effective, false).await;
    assert_eq!(status, 200, "{body}");
    let effective: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        effective["drain"],
        serde_json::json!({"delay": "0s", "timeout": "3s", "goawayAckTimeout": "1s", "quietPeriod": "1.5s"})
    );

    // A client talks to the application through the agent's port.
    let tcp = TcpStream::connect(("127.0.0.1", agent_port)).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let req = Request::post(format!("http://127.0.0.1:{agent_port}/shop.Api/Get"))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);

    // Without the pod's token the drain is refused.
    assert_eq!(http_get(&pre_stop, false).await.0, 401);

    // The app's preStop hook exactly as written: blocks until drained,
    // and — it replaced a 2 s sleep — at least 2 s.
    assert_eq!(pre_stop.path.as_deref(), Some("/drain?min=2s"));
    let started = std::time::Instant::now();
    let (status, summary) = http_get(&pre_stop, true).await;
    assert_eq!(status, 200, "{summary}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the hook let the container go after {:?}, before the sleep it replaced",
        started.elapsed()
    );
    assert!(summary.contains('{'), "drain summary: {summary}");

    // The client saw GOAWAY and its connection closed; readiness fails;
    // new connections are refused.
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("client connection still open after the drain")
        .unwrap()
        .ok();
    assert_eq!(http_get(&probe(&sidecar), true).await.0, 503);
    assert!(TcpStream::connect(("127.0.0.1", agent_port)).await.is_err());
}
