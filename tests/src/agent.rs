//! The `goaway-agent` binary as a child process, for black-box tests: it
//! is started on `127.0.0.1:0` ports, the bound addresses are read from
//! its `serving` log line, and its admin API is read over plain HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{Proc, poll};

/// How to start one agent.
pub struct AgentBuilder {
    cmd: Command,
    listen: String,
    admin: String,
    upstream: Option<String>,
    policy: Option<PathBuf>,
    args: Vec<String>,
}

/// A running `goaway-agent run`, killed on drop.
pub struct Agent {
    /// The process (stderr, the JSON log, is captured).
    pub proc: Proc,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
}

impl AgentBuilder {
    /// An agent from the binary at `bin`, in front of `upstream`.
    pub fn new(bin: impl AsRef<Path>, upstream: impl Into<String>) -> Self {
        let mut cmd = Command::new(bin.as_ref());
        cmd.env_remove("GOAWAY_DRAIN_TOKEN")
            .env("GOAWAY_LOG", "info,h2=warn");
        AgentBuilder {
            cmd,
            listen: "127.0.0.1:0".into(),
            admin: "127.0.0.1:0".into(),
            upstream: Some(upstream.into()),
            policy: None,
            args: Vec::new(),
        }
    }

    /// `--listen` (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// `--admin` (default `127.0.0.1:0`).
    pub fn admin(mut self, addr: impl Into<String>) -> Self {
        self.admin = addr.into();
        self
    }

    /// `--policy FILE`.
    pub fn policy(mut self, file: impl Into<PathBuf>) -> Self {
        self.policy = Some(file.into());
        self
    }

    /// Extra `run` arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// The full command line, without starting it.
    pub fn command(mut self) -> Command {
        self.cmd.args(["--log-format", "json", "run"]);
        self.cmd
            .args(["--listen", &self.listen, "--admin", &self.admin]);
        if let Some(u) = &self.upstream {
            self.cmd.args(["--upstream", u]);
        }
        if let Some(p) = &self.policy {
            self.cmd.arg("--policy").arg(p);
        }
        self.cmd.args(&self.args);
        self.cmd
    }

    /// Starts the agent and waits (up to 20s) until it serves.
    pub fn start(self) -> Result<Agent> {
        Agent::attach(Proc::spawn_capturing("goaway-agent", &mut self.command())?)
    }
}

impl Agent {
    /// Waits (up to 20s) until an agent started some other way (stderr
    /// captured, `--log-format json`) serves.
    pub fn attach(mut proc: Proc) -> Result<Agent> {
        let serving = poll::until(
            "goaway-agent to serve",
            Duration::from_secs(20),
            Duration::from_millis(10),
            || {
                if let Some(addrs) = serving_line(&proc.stderr()) {
                    return Ok(Some(addrs));
                }
                if let Ok(status) = proc.wait_output(Duration::ZERO) {
                    bail!("goaway-agent exited with {status} before serving");
                }
                Ok(None)
            },
        );
        let (listen, admin) =
            serving.with_context(|| format!("goaway-agent's stderr:\n{}", proc.stderr()))?;
        let agent = Agent {
            proc,
            listen,
            admin,
        };
        agent.wait_ready(Duration::from_secs(10))?;
        Ok(agent)
    }
}

/// The addresses from the `serving` JSON log line, once it is there.
fn serving_line(stderr: &str) -> Option<(SocketAddr, SocketAddr)> {
    stderr.lines().find_map(|l| {
        let v: Value = serde_json::from_str(l).ok()?;
        if v["message"] != "serving" {
            return None;
        }
        Some((
            v["listen"].as_str()?.parse().ok()?,
            v["admin"].as_str()?.parse().ok()?,
        ))
    })
}

impl Agent {
    /// `host:port` for gRPC clients.
    pub fn target(&self) -> String {
        self.listen.to_string()
    }

    /// The admin API alone, which can be moved to other threads.
    pub fn api(&self) -> Admin {
        Admin { addr: self.admin }
    }

    /// GET an admin path: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        self.api().get(path)
    }

    /// POST an admin path with headers: (status, body).
    pub fn post(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        self.api().post(path, headers)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        wait_for(timeout, "/readyz to answer 200", || {
            Ok(self.get("/readyz").map(|r| r.0 == 200).unwrap_or(false))
        })
    }

    /// `/readyz`'s status code.
    pub fn readyz(&self) -> Result<u16> {
        self.api().readyz()
    }

    /// `/metrics`, parsed.
    pub fn metrics(&self) -> Result<Metrics> {
        self.api().metrics()
    }

    /// `/connections`: one object per client connection.
    pub fn connections(&self) -> Result<Vec<Value>> {
        self.api().connections()
    }

    /// `/policy` as JSON.
    pub fn policy(&self) -> Result<Value> {
        self.api().policy()
    }

    /// POST `/drain` (with these headers) and parse the summary.
    pub fn drain(&self, headers: &[(&str, &str)]) -> Result<Value> {
        self.api().drain(headers)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// The JSON log lines whose `message` is `message`.
    pub fn log_events(&self, message: &str) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Resident memory of the process in bytes (Linux `/proc`).
    pub fn rss_bytes(&self) -> Result<u64> {
        crate::h2raw::rss_of(self.proc.pid())
    }
}

/// An agent's admin API at `addr`.
#[derive(Clone, Copy, Debug)]
pub struct Admin {
    /// `--admin`.
    pub addr: SocketAddr,
}

impl Admin {
    /// `http://ADMIN{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET an admin path: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http("GET", &self.url(path), &[])
    }

    /// POST an admin path with headers: (status, body).
    pub fn post(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        http("POST", &self.url(path), headers)
    }

    /// PUT `body` to an admin path with headers: (status, body).
    pub fn put(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Result<(u16, String)> {
        http_with_body("PUT", &self.url(path), headers, body)
    }

    /// `/readyz`'s status code.
    pub fn readyz(&self) -> Result<u16> {
        Ok(self.get("/readyz")?.0)
    }

    /// `/metrics`, parsed.
    pub fn metrics(&self) -> Result<Metrics> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(Metrics::parse(&body))
    }

    /// `/connections`: one object per client connection.
    pub fn connections(&self) -> Result<Vec<Value>> {
        let (status, body) = self.get("/connections")?;
        if status != 200 {
            bail!("/connections answered {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body).context("/connections is not JSON")?;
        v.as_array()
            .cloned()
            .with_context(|| format!("/connections is not an array: {body}"))
    }

    /// `/policy` as JSON.
    pub fn policy(&self) -> Result<Value> {
        let (status, body) = self.get("/policy")?;
        if status != 200 {
            bail!("/policy answered {status}: {body}");
        }
        serde_json::from_str(&body).context("/policy is not JSON")
    }

    /// POST `/drain` (with these headers) and parse the summary.
    pub fn drain(&self, headers: &[(&str, &str)]) -> Result<Value> {
        let (status, body) = self.post("/drain", headers)?;
        if status != 200 {
            bail!("/drain answered {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("/drain summary is not JSON: {body}"))
    }
}

/// One plain-HTTP request; any status is an answer, not an error.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    http_with_body(method, url, headers, "")
}

/// [`http`] with a request body (sent for POST and PUT).
pub fn http_with_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut resp = match method {
        "GET" => {
            let mut r = agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        "POST" | "PUT" => {
            let mut r = if method == "POST" {
                agent.post(url)
            } else {
                agent.put(url)
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            if body.is_empty() {
                r.send_empty()
            } else {
                r.send(body)
            }
        }
        other => bail!("unsupported method {other}"),
    }
    .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("{method} {url}: reading the body"))?;
    Ok((status, text))
}

/// [`poll::until`] looking every 20ms, as the agent's tests wait.
pub fn wait_for(timeout: Duration, what: &str, check: impl FnMut() -> Result<bool>) -> Result<()> {
    poll::until(what, timeout, Duration::from_millis(20), check)
}

/// A Prometheus/OpenMetrics text exposition, by series.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// `name{labels}` exactly as exposed → value.
    pub series: BTreeMap<String, f64>,
    /// Metric family names from `# TYPE` lines.
    pub families: BTreeSet<String>,
    /// The text as scraped.
    pub text: String,
}

impl Metrics {
    /// Parses the text format (comments, `name{labels} value [ts]`).
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics {
            text: text.to_owned(),
            ..Metrics::default()
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some(name) = rest.split_whitespace().next() {
                    m.families.insert(name.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            // Label values may hold spaces: split after the closing brace.
            let (series, rest) = match line.find('}') {
                Some(i) => (&line[..=i], &line[i + 1..]),
                None => match line.split_once(' ') {
                    Some((s, r)) => (s, r),
                    None => continue,
                },
            };
            if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
                m.series.insert(series.trim().to_owned(), v);
            }
        }
        m
    }

    /// The value of one series (`name` or `name{label="v"}`), if exposed.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// The value of one series, or an error listing what is there.
    pub fn value(&self, series: &str) -> Result<f64> {
        self.get(series).with_context(|| {
            format!(
                "metric series {series} not exposed; /metrics:\n{}",
                self.text
            )
        })
    }

    /// Whether a metric is exposed under `name`: as a series name (labels
    /// aside) or as a family.
    pub fn has(&self, name: &str) -> bool {
        self.families.contains(name)
            || self
                .series
                .keys()
                .any(|s| s.split('{').next() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_series_with_and_without_labels() {
        let m = Metrics::parse(
            "# TYPE goaway_streams counter\n\
             goaway_streams_total 12\n\
             goaway_goaways_sent_total{reason=\"max age\"} 3\n\
             goaway_drain_duration_seconds 1.5\n# EOF\n",
        );
        assert_eq!(m.get("goaway_streams_total"), Some(12.0));
        assert_eq!(
            m.get("goaway_goaways_sent_total{reason=\"max age\"}"),
            Some(3.0)
        );
        assert_eq!(m.get("goaway_drain_duration_seconds"), Some(1.5));
        assert!(m.has("goaway_streams"));
        assert!(m.has("goaway_goaways_sent_total"));
        assert!(!m.has("goaway_goaways"));
    }

    #[test]
    fn finds_the_serving_line_among_other_log_lines() {
        let log = "{\"message\":\"starting\"}\nnot json\n\
                   {\"level\":\"INFO\",\"message\":\"serving\",\"listen\":\"127.0.0.1:4000\",\"admin\":\"127.0.0.1:4001\"}\n";
        let (l, a) = serving_line(log).unwrap();
        assert_eq!(l.port(), 4000);
        assert_eq!(a.port(), 4001);
        assert!(serving_line("{\"message\":\"serving\"}").is_none());
    }
}
