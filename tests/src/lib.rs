//! Harness for the cross-crate and interop tests, and the helpers every
//! crate's tests share: child processes that are killed when dropped
//! ([`Proc`], [`KillOnDrop`]), scratch directories ([`Scratch`]), waiting
//! for a condition ([`poll`]), free ports, the raw HTTP/2 client for
//! hostile-peer tests ([`h2raw`]), the Python peers, and gRPC message
//! framing.
//!
//! The peers are real implementations nobody here wrote: Python `grpcio`
//! (gRPC C-core), nghttp2's `h2load`/`nghttp`, hyper-h2. `.ci/run`
//! installs them; a test whose peer is missing fails with the install
//! command rather than passing silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub mod agent;
pub mod h2raw;
pub mod peers;
pub mod poll;
mod proc;
mod scratch;

pub use proc::{KillOnDrop, Proc};
pub use scratch::Scratch;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Python interpreter (`PYTHON` or `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Fails with an install hint unless `module` imports.
pub fn require_python_module(module: &str, package: &str) -> Result<()> {
    let ok = Command::new(python())
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "Python module `{module}` is missing: run `pip install {package}` (or .ci/run, which installs every test peer)"
        );
    }
    Ok(())
}

/// Fails with an install hint unless `tool` runs.
pub fn require_tool(tool: &str, package: &str) -> Result<()> {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        bail!("`{tool}` is missing: run `apt-get install {package}` (or .ci/run)");
    }
    Ok(())
}

/// Starts the grpcio peer script with `args`.
pub fn grpc_peer(name: &str, args: &[&str]) -> Result<Proc> {
    Proc::spawn(name, &mut grpc_peer_command(args)?)
}

/// The command line of the grpcio peer script with `args`.
pub fn grpc_peer_command(args: &[&str]) -> Result<Command> {
    require_python_module("grpc", "grpcio")?;
    let script = repo_root().join("tests/python/grpc_peer.py");
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(script).args(args);
    Ok(cmd)
}

/// Starts the hyper-h2 peer script (`tests/python/h2_peer.py`) with `args`.
pub fn h2_peer(name: &str, args: &[&str]) -> Result<Proc> {
    require_python_module("h2", "h2")?;
    let script = repo_root().join("tests/python/h2_peer.py");
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(script).args(args);
    Proc::spawn(name, &mut cmd)
}

/// Starts the hyper-h2 upstream and returns it with its port.
pub fn h2_upstream(options: &[&str]) -> Result<(Proc, u16)> {
    let mut args = vec!["upstream"];
    args.extend_from_slice(options);
    let p = h2_peer("h2-upstream", &args)?;
    let v = p.json_where(Duration::from_secs(20), |v| v.get("port").is_some())?;
    let port = v["port"].as_u64().context("port")? as u16;
    Ok((p, port))
}

/// Starts a grpcio server and returns it with its port.
pub fn grpc_server(options: &[&str]) -> Result<(Proc, u16)> {
    let mut args = vec!["server"];
    args.extend_from_slice(options);
    let p = grpc_peer("grpcio-server", &args)?;
    let v = p.json_where(Duration::from_secs(20), |v| v.get("port").is_some())?;
    let port = v["port"].as_u64().context("port")? as u16;
    Ok((p, port))
}

/// Frames one gRPC message (uncompressed).
pub fn grpc_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + payload.len());
    v.push(0);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Splits a body into gRPC messages; errors on a truncated frame.
pub fn grpc_unframe(mut body: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            bail!("truncated gRPC frame header");
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + len {
            bail!(
                "truncated gRPC message: want {len}, have {}",
                body.len() - 5
            );
        }
        out.push(body[5..5 + len].to_vec());
        body = &body[5 + len..];
    }
    Ok(out)
}

/// Stdout of a command that must have succeeded; panics with its status,
/// stdout and stderr otherwise.
pub fn ok(what: &str, out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A free TCP port on 127.0.0.1 (bound and released: fine for a test
/// that starts a server on it right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
