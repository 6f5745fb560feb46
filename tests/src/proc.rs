//! Child processes a test starts: killed when dropped, so a failing test
//! leaves nothing running, and (for [`Proc`]) their output read on
//! threads as it comes.

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::poll;

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Starts `cmd` as it is set up.
    pub fn spawn(cmd: &mut Command) -> Result<KillOnDrop> {
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        Ok(KillOnDrop(child))
    }

    /// Kills the process now (no chance to clean up) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process, killed on drop, whose stdout is read as JSON lines.
pub struct Proc {
    /// A name for messages.
    pub name: String,
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    stderr: Option<Arc<Mutex<String>>>,
    /// The threads reading stdout (and stderr, when captured); each ends
    /// when its pipe closes.
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` with piped stdout (stderr inherited for diagnosis).
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let mut child = KillOnDrop::spawn(cmd.stdout(Stdio::piped()).stdin(Stdio::null()))
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        let tag = name.to_string();
        let mut readers = vec![std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("GOAWAY_TEST_VERBOSE").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        })];
        let stderr = child.stderr.take().map(|err| {
            let buf = Arc::new(Mutex::new(String::new()));
            let sink = buf.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut b = sink.lock().unwrap_or_else(|e| e.into_inner());
                    b.push_str(&line);
                    b.push('\n');
                }
            }));
            buf
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            lines: rx,
            stderr,
            readers,
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

    /// Waits for exit and returns the last JSON line printed; fails if
    /// the process exits unsuccessfully or prints no JSON.
    pub fn finish_json(mut self, timeout: Duration) -> Result<Value> {
        let status = self.wait_output(timeout)?;
        if !status.success() {
            bail!("{} exited with {status}", self.name);
        }
        self.drain_json()
            .pop()
            .with_context(|| format!("{} printed no JSON", self.name))
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
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} to exit", self.name);
        let child = &mut self.child;
        poll::until(&what, timeout, Duration::from_millis(10), || {
            Ok(child.try_wait()?)
        })
    }

    /// [`wait`](Self::wait), then for its output to be read to the end (the
    /// readers finish when the pipes close): every line and all of stderr
    /// are there to read after this.
    pub fn wait_output(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = self.wait(timeout)?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
