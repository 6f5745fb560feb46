//! Harness for the cross-crate and interop tests: child processes that are
//! killed when dropped, the Python peers, and gRPC message framing.
//!
//! The peers are real implementations nobody here wrote: Python `grpcio`
//! (gRPC C-core), nghttp2's `h2load`/`nghttp`, hyper-h2. `.ci/run`
//! installs them; a test whose peer is missing fails with the install
//! command rather than passing silently.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub mod agent;
pub mod h2raw;
pub mod peers;

/// A child process, killed on drop, whose stdout is read as JSON lines.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::sync::Arc<std::sync::Mutex<String>>>,
}

impl Proc {
    /// Starts `cmd` with piped stdout (stderr inherited for diagnosis).
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stdout: ChildStdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("GOAWAY_TEST_VERBOSE").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().map(|err| {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let sink = buf.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut b = sink.lock().unwrap_or_else(|e| e.into_inner());
                    b.push_str(&line);
                    b.push('\n');
                }
            });
            buf
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            lines: rx,
            stderr,
        })
    }

    /// Like [`spawn`](Self::spawn), also capturing stderr (see
    /// [`stderr`](Self::stderr)).
    pub fn spawn_capturing(name: &str, cmd: &mut Command) -> Result<Proc> {
        cmd.stderr(Stdio::piped());
        Proc::spawn(name, cmd)
    }

    /// Captured stderr so far (empty unless started with
    /// [`spawn_capturing`](Self::spawn_capturing)).
    pub fn stderr(&self) -> String {
        self.stderr
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// The next stdout line within `timeout`.
    pub fn line(&self, timeout: Duration) -> Result<String> {
        self.lines
            .recv_timeout(timeout)
            .with_context(|| format!("{}: no output within {timeout:?}", self.name))
    }

    /// The next stdout line that parses as JSON and satisfies `pred`.
    pub fn json_where(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.line(left)?;
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && pred(&v)
            {
                return Ok(v);
            }
        }
    }

    /// Every JSON line printed so far (non-blocking).
    pub fn drain_json(&self) -> Vec<Value> {
        self.lines
            .try_iter()
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// Waits for exit and returns the last JSON line printed.
    pub fn finish_json(mut self, timeout: Duration) -> Result<Value> {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    last = Some(v);
                }
            }
            if let Some(status) = self.child.try_wait()? {
                // Collect what the reader thread still holds.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        last = Some(v);
                    }
                }
                if !status.success() {
                    bail!("{} exited with {status}", self.name);
                }
                return last.with_context(|| format!("{} printed no JSON", self.name));
            }
            if std::time::Instant::now() > deadline {
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. `SIGTERM`) to the process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill -{sig} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if std::time::Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// Picks a free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
