//! The control channel on a real API server, end to end: the operator run
//! with the chart's settings serves it; an agent started exactly as the
//! kubelet would start the sidecar the webhook injected dials it with a
//! pod-bound token the API server minted for the channel's audience (a
//! TokenRequest, as the kubelet makes for the projected volume) and the CA
//! the controller wrote into the policy ConfigMap.
//!
//! - the agent's stream carries its pod's policy: an edit of the
//!   KeepalivePolicy reaches the running agent although its policy file
//!   never changes (there is no kubelet here to refresh it);
//! - a drain starts on evidence: the app's preStop hook waits while the
//!   EndpointSlice lists the pod ready, and the GOAWAYs go out a quiet
//!   period after the slice marks it terminating, long before
//!   `drain.delay`;
//! - tokens that are not the pod's own are refused, each with its reason
//!   counted: none, the pod's own token expired, one for the API server's
//!   audience, one bound to a pod goaway did not inject, garbage.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use goaway_operator::crd::{CA_FILE_KEY, POLICY_FILE_KEY};
use goaway_operator::inject::{ANNOTATION_INJECTED, CONTAINER_NAME, TOKEN_VOLUME_NAME};
use goaway_operator::{KeepalivePolicy, crd::config_map_name};
use goaway_tests::Scratch;
use goaway_transport::control::{AUDIENCE, Message, PATH, PROTOCOL};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, HTTPGetAction, Pod, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, Patch, PostParams};
use kube::{Api, Client, ResourceExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use support::agent::{http_get, start_agent};
use support::cluster::{
    Operator, TestNamespace, UNSCHEDULED, apply_params, chart_operator_env, client_or_skip,
    free_port, helm_template, install_crd, kubectl, kubectl_stdin, ok, rendered, wait,
};
use support::eventually;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn pod(name: &str, app_port: u16, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "api"}, "annotations": annotations},
        "spec": {
            "schedulerName": UNSCHEDULED,
            "containers": [{"name": "app", "image": "registry.example/app:1",
                            "ports": [{"name": "grpc", "containerPort": app_port}]}]}
    }))
    .expect("a pod")
}

/// An EndpointSlice of Service `api` listing `pod` (by uid), ready or
/// terminating — as the EndpointSlice controller writes it on a real node.
fn slice(namespace: &str, pod: &Pod, ready: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "api-x1", "labels": {
            "kubernetes.io/service-name": "api",
            "endpointslice.kubernetes.io/managed-by": "goaway-test"}},
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": ["10.11.12.13"],
            "conditions": {"ready": ready, "serving": true, "terminating": !ready},
            "targetRef": {"kind": "Pod", "namespace": namespace,
                          "name": pod.name_any(), "uid": pod.uid().unwrap()}}],
        "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}]
    })
}

/// A token for `pod`'s service account, bound to the pod, for `audiences`
/// (empty: the API server's own).
async fn pod_token(client: &Client, pod: &Pod, audiences: &[&str]) -> String {
    let namespace = pod.namespace().unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    wait("the namespace's default ServiceAccount", async || {
        accounts.get_opt("default").await.ok()?
    })
    .await;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            expiration_seconds: Some(600),
        },
        ..Default::default()
    };
    accounts
        .create_token_request("default", &PostParams::default(), &request)
        .await
        .expect("a TokenRequest")
        .status
        .expect("a token")
        .token
}

/// `token` re-signed with the cluster's service-account key (kube-local
/// keeps it beside the kubeconfig) with its validity moved an hour into
/// the past: a genuine token that has expired. `None` when the key is
/// not there (a cluster kube-local did not make).
fn expired(token: &str) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use rustls::pki_types::PrivateKeyDer;
    let kubeconfig = std::env::var_os("KUBECONFIG")?;
    let key = Path::new(&kubeconfig).parent()?.join("pki/sa.key");
    let key = std::fs::read(key).ok()?;
    let PrivateKeyDer::Pkcs8(der) = PrivateKeyDer::from_pem_slice(&key).expect("a PEM key") else {
        panic!("sa.key is not PKCS#8");
    };
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("an RSA key");
    let mut parts = token.split('.');
    let (header, payload) = (parts.next().unwrap(), parts.next().unwrap());
    let mut claims: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["iat"] = json!(now - 7200);
    claims["nbf"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    let signed = format!("{header}.{}", B64.encode(claims.to_string()));
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    Some(format!("{signed}.{}", B64.encode(signature)))
}

/// Opens a stream as an agent does, with `token`: the status, then the
/// first message (101) or the operator's reason (anything else).
async fn open_stream(port: u16, ca: &str, token: Option<&str>) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("the operator's certificate checks out against the ConfigMap's CA");
    let (read, mut write) = tokio::io::split(stream);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\n{auth}\r\n"
    );
    write.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(read).lines();
    let status_line = lines.next_line().await.unwrap().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    while !lines
        .next_line()
        .await
        .unwrap()
        .unwrap_or_default()
        .is_empty()
    {}
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("a line within the heartbeat")
        .unwrap()
        .unwrap_or_default();
    (status, first)
}

/// The sample of `name` (with its labels) in a Prometheus exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stream_their_pods_policy_and_endpoints_and_drain_on_evidence() {
    let Some(client) = client_or_skip("control channel").await else {
        return;
    };
    install_crd(&client).await;
    let system = TestNamespace::new(&client, "channel-system", json!({})).await;
    let apps = TestNamespace::new(&client, "channel-apps", json!({})).await;

    // The chart, rendered for an operator on this machine (the webhook by
    // URL, so its certificate covers 127.0.0.1); the control channel on a
    // loopback port instead of 0.0.0.0:9444.
    let (webhook_port, control_port) = (free_port(), free_port());
    let (app_port, agent_port, agent_admin_port) = (free_port(), free_port(), free_port());
    let release = format!("goaway-channel-{}", std::process::id());
    let docs = helm_template(
        &release,
        &system.name,
        &[
            &format!("webhook.url=https://127.0.0.1:{webhook_port}/mutate"),
            &format!("watchNamespace={}", apps.name),
        ],
    );
    let hook = rendered(&docs, "MutatingWebhookConfiguration");
    let hook_name = hook["metadata"]["name"].as_str().unwrap().to_string();
    ok(
        "kubectl apply the MutatingWebhookConfiguration",
        kubectl_stdin(&["apply", "--server-side", "-f", "-"], &hook.to_string()),
    );
    let env = chart_operator_env(&docs, &system.name, "operator-channel-e2e");
    let in_cluster_url = env
        .iter()
        .find(|(k, _)| k == "GOAWAY_AGENT_CONTROL_URL")
        .map(|(_, v)| v.clone())
        .expect("the chart gives the agents the channel's URL");
    assert_eq!(
        in_cluster_url,
        format!("https://{release}-operator.{}.svc:9444", system.name)
    );
    let mut operator = Operator::start_with_env(
        "cluster-channel-operator",
        webhook_port,
        &[
            "--control-addr",
            &format!("127.0.0.1:{control_port}"),
            "--agent-admin-port",
            &agent_admin_port.to_string(),
        ],
        &env,
    );
    wait("the operator ready", async || {
        let (status, _) = operator.admin_get("/readyz").await?;
        (status == 200).then_some(())
    })
    .await;

    let policies: Api<KeepalivePolicy> = Api::namespaced(client.clone(), &apps.name);
    let apply_policy = async |delay: &str| {
        policies
            .patch(
                "api",
                &apply_params(),
                &Patch::Apply(json!({
                    "apiVersion": "goaway.dev/v1alpha1", "kind": "KeepalivePolicy",
                    "metadata": {"name": "api"},
                    "spec": {"selector": {"matchLabels": {"app": "api"}}, "port": "grpc",
                             "agentPort": agent_port,
                             "drain": {"delay": delay, "timeout": "5s", "quietPeriod": "1s"}},
                })),
            )
            .await
            .expect("apply the policy");
    };
    apply_policy("30s").await;
    // The controller writes the operator's CA beside the policy file.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &apps.name);
    let data = wait("the policy ConfigMap with the CA", async || {
        let data = config_maps.get(&config_map_name("api")).await.ok()?.data?;
        data.contains_key(CA_FILE_KEY).then_some(data)
    })
    .await;
    let ca = data[CA_FILE_KEY].clone();

    // A pod the webhook injects (it never runs: no node), as stored.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps.name);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait("the webhook to inject (dry run)", async || {
        let p = pods
            .create(&dry_run, &pod("api-1", app_port, json!({})))
            .await
            .ok()?;
        p.annotations()
            .contains_key(ANNOTATION_INJECTED)
            .then_some(())
    })
    .await;
    let api_pod = pods
        .create(&PostParams::default(), &pod("api-1", app_port, json!({})))
        .await
        .expect("the injected pod");
    let spec = api_pod.spec.clone().unwrap();
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER_NAME)
        .expect("the agent")
        .clone();
    let args = sidecar.args.clone().unwrap_or_default();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--control-url" && w[1] == in_cluster_url),
        "{args:?}"
    );
    let projected = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == TOKEN_VOLUME_NAME)
        .and_then(|v| v.projected.clone())
        .expect("the token volume");
    let projection = projected.sources.unwrap()[0]
        .service_account_token
        .clone()
        .expect("a service-account token");
    assert_eq!(projection.audience.as_deref(), Some(AUDIENCE));
    let pre_stop = spec.containers[0]
        .lifecycle
        .clone()
        .and_then(|l| l.pre_stop?.http_get)
        .expect("the app's preStop httpGet");

    // The pod is in its Service's ready endpoints.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &apps.name);
    let write_slice = async |ready: bool| {
        slices
            .patch(
                "api-x1",
                &apply_params(),
                &Patch::Apply(slice(&apps.name, &api_pod, ready)),
            )
            .await
            .expect("apply the EndpointSlice")
    };
    write_slice(true).await;

    // The sidecar as the kubelet would run it: the ConfigMap at
    // /etc/goaway, the token the kubelet would mint at
    // /var/run/secrets/goaway.dev, the Service's name (no cluster DNS
    // here) replaced by the loopback port.
    let scratch = Scratch::new("channel").unwrap();
    let (policy_dir, token_dir) = (scratch.path().join("policy"), scratch.path().join("token"));
    for dir in [&policy_dir, &token_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(policy_dir.join(POLICY_FILE_KEY), &data[POLICY_FILE_KEY]).unwrap();
    std::fs::write(policy_dir.join(CA_FILE_KEY), &ca).unwrap();
    let token = pod_token(&client, &api_pod, &[AUDIENCE]).await;
    std::fs::write(token_dir.join("token"), &token).unwrap();
    let agent_log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-channel-agent.log");
    let loopback_url = format!("https://127.0.0.1:{control_port}");
    let _agent = start_agent(
        &sidecar,
        &[
            ("/etc/goaway", policy_dir.as_path()),
            ("/var/run/secrets/goaway.dev", token_dir.as_path()),
        ],
        &[(in_cluster_url.as_str(), loopback_url.as_str())],
        Some(&agent_log),
    );
    let admin = |path: &str| HTTPGetAction {
        path: Some(path.into()),
        ..pre_stop.clone()
    };
    let agent_log_text = || std::fs::read_to_string(&agent_log).unwrap_or_default();
    eventually("the agent's control channel up", async || {
        let (_, metrics) = http_get(&admin("/metrics"), false).await;
        sample(&metrics, "goaway_control_connected") == Some(1.0)
    })
    .await;
    eventually(
        "the agent told its pod is in the ready endpoints",
        async || agent_log_text().contains("endpoints changed"),
    )
    .await;
    let (_, metrics) = operator.admin_get("/metrics").await.unwrap();
    assert_eq!(
        sample(&metrics, "goaway_operator_control_streams"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "goaway_operator_control_token_reviews_total{result=\"accepted\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    // A policy edit reaches the running agent through the channel alone.
    let effective_delay = async || {
        let (_, body) = http_get(&admin("/policy"), false).await;
        let policy: Value = serde_json::from_str(&body).unwrap_or_default();
        policy["drain"]["delay"].as_str().map(str::to_string)
    };
    assert_eq!(effective_delay().await.as_deref(), Some("30s"));
    let edited = Instant::now();
    apply_policy("40s").await;
    eventually("the edit in the agent", async || {
        effective_delay().await.as_deref() == Some("40s")
    })
    .await;
    eprintln!(
        "policy edit: API write → agent applied in {:.2}s",
        edited.elapsed().as_secs_f64()
    );
    let on_disk = std::fs::read_to_string(policy_dir.join(POLICY_FILE_KEY)).unwrap();
    assert!(on_disk.contains("30s"), "the file is unchanged:\n{on_disk}");

    // The drain: preStop as written. It waits while the slice lists the
    // pod ready, however long; once the slice marks it terminating, the
    // GOAWAYs go out a quiet period (1s) later — not after 40s.
    let drain_started = Instant::now();
    let drain = tokio::spawn({
        let pre_stop = pre_stop.clone();
        async move { http_get(&pre_stop, true).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !drain.is_finished(),
        "the drain went on while the pod was ready"
    );
    // The operator's word cannot come before this write starts.
    let out_at = drain_started.elapsed().as_secs_f64();
    write_slice(false).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .expect("the drain to finish on evidence, well before drain.delay")
        .unwrap();
    let answered = drain_started.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).expect("the drain summary");
    assert_eq!(summary["goaway_on"], "evidence", "{summary}");
    let goaway_after = summary["goaway_after_seconds"].as_f64().unwrap();
    // Never before the quiet period after the operator's word (the
    // answer comes after the GOAWAYs), and nowhere near the 40s delay.
    assert!(
        answered >= out_at + 1.0 && goaway_after < 20.0,
        "GOAWAY after {goaway_after:.2}s, drain answered at {answered:.2}s; the slice said terminating at {out_at:.2}s"
    );
    eprintln!(
        "drain: slice terminating at {out_at:.2}s, GOAWAY on evidence at {goaway_after:.2}s (drain.delay 40s)"
    );

    // The drain outlives the pod's log: the agent reported it on its
    // stream, and the operator recorded it as an Event on the pod and
    // summed it on the policy's status (`kubectl get kap` shows it).
    let events: Api<Event> = Api::namespaced(client.clone(), &apps.name);
    let event_name = format!("{}.drained.1", api_pod.name_any());
    let event = wait("the drain's Event on the pod", async || {
        events.get_opt(&event_name).await.ok().flatten()
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some("Drained"), "{event:?}");
    let regarding = event.regarding.clone().expect("regarding");
    assert_eq!(
        (regarding.kind.as_deref(), regarding.uid),
        (Some("Pod"), api_pod.uid()),
        "{event:?}"
    );
    let note = event.note.clone().unwrap_or_default();
    assert!(
        note.contains("on evidence") && note.contains("0 stream(s) cut"),
        "{note}"
    );
    let rollout = wait("status.lastRollout", async || {
        policies.get_status("api").await.ok()?.status?.last_rollout
    })
    .await;
    assert_eq!(
        (rollout.pods, rollout.streams_cut, rollout.result.as_str()),
        (1, 0, "1 pod drained, 0 streams cut"),
        "{rollout:?}"
    );
    let table = ok(
        "kubectl get kap",
        kubectl(&["get", "kap", "api", "-n", &apps.name]),
    );
    assert!(
        table.contains("LAST ROLLOUT") && table.contains("1 pod drained, 0 streams cut"),
        "{table}"
    );

    // Tokens that are not the pod's own.
    let plain = pods
        .create(
            &PostParams::default(),
            &pod("plain", app_port, json!({"goaway.dev/inject": "false"})),
        )
        .await
        .expect("a pod goaway did not inject");
    let api_audience = pod_token(&client, &api_pod, &[]).await;
    let not_injected = pod_token(&client, &plain, &[AUDIENCE]).await;
    let expired = expired(&token).unwrap_or_else(|| {
        goaway_transport::test_util::skip(
            "the expired-token case needs kube-local's service-account key (pki/sa.key beside KUBECONFIG)",
        );
        "not-a-token".into()
    });
    for (token, status, reason, says) in [
        (None, 401, "no_token", "no Authorization"),
        (Some(expired.as_str()), 401, "unauthenticated", "expired"),
        (
            Some(api_audience.as_str()),
            401,
            "unauthenticated",
            "audiences",
        ),
        (
            Some("not-a-token"),
            401,
            "unauthenticated",
            "invalid bearer token",
        ),
        (
            Some(not_injected.as_str()),
            403,
            "not_injected",
            "not injected",
        ),
    ] {
        let (got, said) = open_stream(control_port, &ca, token).await;
        assert_eq!(got, status, "{reason}: {said}");
        assert!(said.contains(says), "{reason}: {said}");
        let (_, metrics) = operator.admin_get("/metrics").await.unwrap();
        let label = format!("goaway_operator_control_refused_total{{reason=\"{reason}\"}}");
        assert!(
            sample(&metrics, &label).is_some_and(|n| n >= 1.0),
            "{label}\n{metrics}"
        );
    }
    // The pod's own token opens a stream that starts with its policy.
    let (status, first) = open_stream(control_port, &ca, Some(&token)).await;
    assert_eq!(status, 101, "{first}");
    assert!(
        matches!(Message::from_line(first.as_bytes()), Ok(Message::Policy { ref text }) if text.contains("40s")),
        "{first}"
    );

    operator.kill();
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = hooks.delete(&hook_name, &DeleteParams::default()).await;
    apps.delete().await;
    system.delete().await;
}
