//! The agent binary, run as the kubelet runs the sidecar the webhook
//! injected: its env (the downward API's `status.podIP` and
//! `status.hostIP` are 127.0.0.1 here), its args with `$(VAR)` expanded
//! from that env, and its volume mounts mapped to local directories.
//!
//! The binary is looked up next to the test's target directory
//! (`<target>/<profile>/goaway-agent`) and built with
//! `cargo build -p goaway-agent` when missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use goaway_tests::KillOnDrop;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `<target>/<profile>/goaway-agent`, built if missing.
pub(crate) fn agent_binary() -> PathBuf {
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

/// A running agent, killed on drop.
pub(crate) struct Agent(KillOnDrop);

/// Starts `sidecar` as the kubelet would. `mounts` maps each volume
/// mount's path to the local directory standing in for it; `rewrite`
/// replaces whole args (e.g. an in-cluster URL by a loopback one). The
/// agent's log goes to `log` (stderr without).
pub(crate) fn start_agent(
    sidecar: &Container,
    mounts: &[(&str, &Path)],
    rewrite: &[(&str, &str)],
    log: Option<&Path>,
) -> Agent {
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
    // Every mount the agent is pointed at needs a stand-in (the API
    // server adds its own service-account mount, which the agent never
    // reads).
    let unmapped: Vec<&str> = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .filter(|path| !mounts.iter().any(|(p, _)| p == path))
        .collect();
    let args: Vec<String> = sidecar
        .args
        .iter()
        .flatten()
        .map(|a| {
            let a = env.iter().fold(a.clone(), |a, (name, value)| {
                a.replace(&format!("$({name})"), value)
            });
            if let Some((_, to)) = rewrite.iter().find(|(from, _)| *from == a) {
                return to.to_string();
            }
            for (path, dir) in mounts {
                if let Some(rest) = a.strip_prefix(path) {
                    return format!("{}{rest}", dir.display());
                }
            }
            assert!(
                !unmapped.iter().any(|path| a.starts_with(path)),
                "no local directory for {a}"
            );
            a
        })
        .collect();
    let mut cmd = Command::new(agent_binary());
    cmd.args(&args).stdout(Stdio::null()).env_clear().envs(env);
    match log {
        Some(path) => cmd.stderr(std::fs::File::create(path).expect("agent log file")),
        None => cmd.stderr(Stdio::inherit()),
    };
    Agent(KillOnDrop::spawn(&mut cmd).expect("starting goaway-agent"))
}

/// One HTTP/1.1 request as the kubelet's httpGet handler makes it, to
/// 127.0.0.1 (the pod IP). Returns (status, body); status 0 when nothing
/// listens.
pub(crate) async fn http_get(action: &HTTPGetAction, with_headers: bool) -> (u16, String) {
    let IntOrString::Int(port) = action.port else {
        panic!("named port in {action:?}")
    };
    let mut stream = match TcpStream::connect(("127.0.0.1", port as u16)).await {
        Ok(stream) => stream,
        Err(e) => return (0, format!("connecting to port {port}: {e}")),
    };
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
