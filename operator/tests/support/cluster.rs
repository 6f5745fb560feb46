//! Helpers for the opt-in real-cluster tests: they run when `KUBECONFIG`
//! is set (`.ci/run` starts a local control plane with
//! `scripts/kube-local up` and sets it) and are skipped with a message
//! otherwise. Each test works in a scratch namespace of its own, so the
//! tests can run in parallel against one API server.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use goaway_tests::{KillOnDrop, poll};
pub(crate) use goaway_tests::{free_port, ok, repo_root};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// The CRD's name.
pub(crate) const CRD: &str = "keepalivepolicies.goaway.dev";

/// A `schedulerName` no scheduler answers to: test pods that only the
/// API server, the webhook and the controller should see stay Pending and
/// unbound, even when the cluster has a real node.
#[allow(dead_code)]
pub(crate) const UNSCHEDULED: &str = "goaway-test-unscheduled";

/// The client for the cluster in `KUBECONFIG`, or `None` (after saying
/// so) when it is not set.
pub(crate) async fn client_or_skip(test: &str) -> Option<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        goaway_transport::test_util::skip(&format!(
            "{test}: set KUBECONFIG to run the real-cluster suite (scripts/kube-local up starts a local control plane)"
        ));
        return None;
    }
    Some(
        Client::try_default()
            .await
            .expect("a cluster from KUBECONFIG"),
    )
}

/// Polls `f` every 250ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub(crate) async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    f: impl AsyncFnMut() -> Option<T>,
) -> T {
    poll::until_async(what, timeout, Duration::from_millis(250), f).await
}

/// [`wait_for`] with the default real-cluster timeout: 90s, generous for
/// a loaded 2-core CI machine.
pub(crate) async fn wait<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    wait_for(what, Duration::from_secs(90), f).await
}

/// Server-side apply as the tests' field manager, forced.
pub(crate) fn apply_params() -> PatchParams {
    PatchParams::apply("goaway-e2e").force()
}

/// Applies the committed CRD (`crds/keepalivepolicy.yaml`, what users
/// install) and waits until the API server reports it `Established`.
pub(crate) async fn install_crd(client: &Client) -> CustomResourceDefinition {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/keepalivepolicy.yaml");
    let text = std::fs::read_to_string(path).expect("crds/keepalivepolicy.yaml");
    let crd: serde_json::Value = serde_yaml::from_str(&text).expect("CRD YAML");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(CRD, &apply_params(), &Patch::Apply(crd))
        .await
        .expect("the API server accepts the committed CRD");
    wait("the CRD to be Established", async || {
        let crd = crds.get(CRD).await.ok()?;
        let established = crd
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(crd)
    })
    .await
}

/// A scratch namespace, deleted by [`TestNamespace::delete`] (namespace
/// deletion is asynchronous in the API server, and `Drop` cannot await).
pub(crate) struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `goaway-e2e-<tag>-<pid>` with `labels`.
    pub(crate) async fn new(
        client: &Client,
        tag: &str,
        labels: serde_json::Value,
    ) -> TestNamespace {
        let name = format!("goaway-e2e-{tag}-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                &name,
                &apply_params(),
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels},
                })),
            )
            .await
            .expect("create the scratch namespace");
        // Pods need the namespace's `default` ServiceAccount, which
        // kube-controller-manager creates shortly after the namespace.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait("the namespace's default ServiceAccount", async || {
            accounts.get_opt("default").await.ok().flatten()
        })
        .await;
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    /// Deletes the namespace (what `Drop` cannot await).
    pub(crate) async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

/// The directory the built tools are on `PATH` from (`scripts/kube-local
/// env`); the tests call `kubectl` and `helm` by name.
fn tool(name: &str) -> Command {
    let mut cmd = Command::new(name);
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `kubectl args`, returning its output (whatever the exit status).
pub(crate) fn kubectl(args: &[&str]) -> Output {
    tool("kubectl")
        .args(args)
        .output()
        .expect("kubectl on PATH (eval \"$(scripts/kube-local env)\")")
}

/// Runs `kubectl args` with `stdin`, returning its output.
pub(crate) fn kubectl_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = tool("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH (eval \"$(scripts/kube-local env)\")");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write kubectl's stdin");
    child.wait_with_output().expect("kubectl output")
}

/// Runs `helm args`, returning its output.
pub(crate) fn helm(args: &[&str]) -> Output {
    tool("helm")
        .args(args)
        .output()
        .expect("helm on PATH (eval \"$(scripts/kube-local env)\")")
}

/// An operator process (`goaway-operator run`), killed on drop.
pub(crate) struct Operator {
    /// The child.
    pub child: KillOnDrop,
    /// Its admin port (/metrics, /readyz).
    pub admin_port: u16,
    /// Its webhook port.
    pub webhook_port: u16,
    /// Where its log goes.
    pub log: PathBuf,
}

impl Operator {
    /// Starts `goaway-operator run` out of cluster with `args`, on free
    /// loopback ports for the webhook, admin and control channel servers
    /// (`--control-addr` in `args` wins); its log goes to
    /// a file under the target directory, named after `name`.
    pub(crate) fn start(name: &str, args: &[&str]) -> Operator {
        Operator::start_with_env(name, free_port(), args, &[])
    }

    /// [`Operator::start`] with the webhook on `webhook_port` and
    /// environment variables (the chart's `GOAWAY_*` settings); the flags
    /// win over them.
    pub(crate) fn start_with_env(
        name: &str,
        webhook_port: u16,
        args: &[&str],
        env: &[(String, String)],
    ) -> Operator {
        let admin_port = free_port();
        // The control channel too on a free loopback port, unless the
        // test picks one: operators of tests running at once never share
        // the default 9444.
        let control_addr = format!("127.0.0.1:{}", free_port());
        let control = match args.contains(&"--control-addr") {
            true => vec![],
            false => vec!["--control-addr", control_addr.as_str()],
        };
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("operator log file");
        let child = KillOnDrop::spawn(
            Command::new(env!("CARGO_BIN_EXE_goaway-operator"))
                .arg("run")
                .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
                .args(["--webhook-addr", &format!("127.0.0.1:{webhook_port}")])
                .args(["--log-format", "text"])
                .args(control)
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("RUST_LOG", "info,goaway_operator=debug")
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log file"))
                .stderr(file),
        )
        .expect("start goaway-operator");
        Operator {
            child,
            admin_port,
            webhook_port,
            log,
        }
    }

    /// GET on the admin server: (status, body), or `None` when it does
    /// not answer.
    pub(crate) async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    }

    /// The `goaway_operator_leader` gauge, or `None` when the admin server
    /// does not answer.
    pub(crate) async fn leader_metric(&self) -> Option<i64> {
        let (_, body) = self.admin_get("/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix("goaway_operator_leader "))?
            .trim()
            .parse()
            .ok()
    }

    /// Its log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process (SIGKILL: no lease release) and reaps it.
    pub(crate) fn kill(&mut self) {
        self.child.kill();
    }
}

/// The documents `helm template` renders for the repository's chart.
pub(crate) fn helm_template(
    release: &str,
    namespace: &str,
    set: &[&str],
) -> Vec<serde_json::Value> {
    let chart = repo_root().join("charts/goaway");
    let chart = chart.to_str().expect("a UTF-8 path");
    let mut args = vec!["template", release, chart, "--namespace", namespace];
    for s in set {
        args.extend(["--set", s]);
    }
    let text = ok("helm template", helm(&args));
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter(|v: &serde_json::Value| v.is_object())
        .collect()
}

/// The rendered object of `kind`.
pub(crate) fn rendered<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("the chart renders no {kind}"))
}

/// The operator container's `GOAWAY_*` environment as the chart renders
/// it — the chart's flags — with the downward-API values (namespace and
/// pod name) filled in as the kubelet would.
pub(crate) fn chart_operator_env(
    docs: &[serde_json::Value],
    namespace: &str,
    identity: &str,
) -> Vec<(String, String)> {
    let deployment = rendered(docs, "Deployment");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("the operator container's env");
    env.iter()
        .map(|e| {
            let name = e["name"].as_str().expect("an env name").to_string();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => namespace.to_string(),
                Some("metadata.name") => identity.to_string(),
                Some(other) => panic!("unexpected fieldRef {other}"),
                None => e["value"].as_str().expect("an env value").to_string(),
            };
            (name, value)
        })
        .collect()
}
