//! The injected spec really works: a pod mutated by the webhook's code,
//! the agent binary started with exactly the sidecar's args and env and
//! the policy file the controller renders (mounted where the volume
//! mount says, the operator's drain defaults filled in), then the
//! application's `preStop.httpGet` performed exactly as written — and the
//! drain observed from a client.
//!
//! The agent binary is looked up next to this test's target directory
//! (`<target>/<profile>/goaway-agent`) and built with
//! `cargo build -p goaway-agent` when missing.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use goaway_operator::crd::render_policy_file;
use goaway_operator::inject::{self, AgentConfig, Outcome};
use goaway_operator::{KeepalivePolicy, PolicyDefaults};
use goaway_transport::policy::DrainPolicy;
use http::{Request, Response};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `<target>/<profile>/goaway-agent`, built if missing.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let binary = profile_dir.join(format!("goaway-agent{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        let target = profile_dir.parent().unwrap();
        let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build
            .args(["build", "-p", "goaway-agent"])
            .env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build -p goaway-agent");
        assert!(status.success(), "cargo build -p goaway-agent failed");
    }
    binary
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the sidecar as the kubelet would: its env (the downward API's
/// `status.podIP` and `status.hostIP` are 127.0.0.1 here), its args with `$(VAR)` expanded from
/// that env, and the volume mount's path mapped to `mount`.
fn start_agent(sidecar: &Container, mount: &Path) -> Agent {
    let env: Vec<(String, String)> = sidecar
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
                // Pod and node are this machine.
                Some(field)
                    if ["status.podIP", "status.hostIP"].contains(&field.field_path.as_str()) =>
                {
                    "127.0.0.1".to_string()
                }
                Some(field) => panic!("no downward API value for {}", field.field_path),
                None => e.value.clone().unwrap_or_default(),
            };
            (e.name.clone(), value)
        })
        .collect();
    let mount_path = &sidecar.volume_mounts.as_ref().unwrap()[0].mount_path;
    let args: Vec<String> = sidecar
        .args
        .iter()
        .flatten()
        .map(|a| {
            let a = env.iter().fold(a.clone(), |a, (name, value)| {
                a.replace(&format!("$({name})"), value)
            });
            match a.strip_prefix(mount_path.as_str()) {
                Some(rest) => format!("{}{rest}", mount.display()),
                None => a,
            }
        })
        .collect();
    let mut cmd = Command::new(agent_binary());
    cmd.args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env_clear()
        .envs(env);
    Agent(cmd.spawn().expect("starting goaway-agent"))
}

/// One HTTP/1.1 request as the kubelet's httpGet handler makes it, to
/// 127.0.0.1 (the pod IP). Returns (status, body).
async fn http_get(action: &HTTPGetAction, with_headers: bool) -> (u16, String) {
    let IntOrString::Int(port) = action.port else {
        panic!("named port in {action:?}")
    };
    let mut stream = TcpStream::connect(("127.0.0.1", port as u16))
        .await
        .unwrap();
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n",
        action.path.as_deref().unwrap_or("/")
    );
    if with_headers {
        for h in action.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

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

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
        "metadata: {{labels: {{app: api}}}}\nspec:\n  containers:\n  - name: app\n    image: app\n    ports: [{{name: grpc, containerPort: {app_port}}}]\n"
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
    let mount = std::env::temp_dir().join(format!("goaway-policy-{}", std::process::id()));
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(
        mount.join("policy.yaml"),
        render_policy_file(&policy.spec, &defaults).unwrap(),
    )
    .unwrap();

    tokio::spawn(upstream(
        TcpListener::bind(("127.0.0.1", app_port)).await.unwrap(),
    ));
    let _agent = start_agent(&sidecar, &mount);

    // The sidecar's own probes, as written.
    let probe = |c: &Container| c.readiness_probe.clone().unwrap().http_get.unwrap();
    let startup = sidecar.startup_probe.clone().unwrap().http_get.unwrap();
    until("startup probe", async || {
        TcpStream::connect(("127.0.0.1", admin_port)).await.is_ok()
            && http_get(&startup, true).await.0 == 200
    })
    .await;
    until("readiness probe", async || {
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
        serde_json::json!({"delay": "0s", "timeout": "3s", "goawayAckTimeout": "1s", "quietPeriod": "1s"})
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

    // The app's preStop hook exactly as written: blocks until drained.
    let (status, summary) = http_get(&pre_stop, true).await;
    assert_eq!(status, 200, "{summary}");
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
    let _ = std::fs::remove_dir_all(&mount);
}
