//! Opt-in, on a real node (`scripts/kube-local up --node` sets
//! `GOAWAY_KUBE_NODE`; skipped with a message otherwise): the product as a
//! user meets it. `helm install` the chart (the operator runs in the
//! cluster, two replicas, leader election, its own webhook TLS), a grpc-go
//! app that exits at once on SIGTERM behind a ClusterIP Service, and
//! long-lived grpc-go clients (round_robin and pick_first, four threads
//! each) calling it without pause. Then, with real kubelet preStop hooks,
//! SIGTERM ordering, native sidecars and kube-proxy:
//!
//! - a rollout without a policy: the baseline, where calls fail;
//! - rollouts with a KeepalivePolicy: zero failed calls, the app's SIGTERM
//!   after the agent's drain finished, the sidecar exiting after the app,
//!   the GOAWAYs sent on the operator's word that the pod left its
//!   EndpointSlices' ready sets — each next to when kube-proxy's rules on
//!   the node stopped naming the pod;
//! - the same rollout with the GOAWAYs fixed at the 5 s delay (a quiet
//!   period as long as the delay): the two rollouts' durations side by
//!   side;
//! - the operator stopped: the agents wait the whole fixed delay, nothing
//!   fails;
//! - scale-up rebalancing with four clients (two pick_first, two
//!   round_robin channels through the ClusterIP): 2 → 4 with `rebalance`
//!   on, again after 4 → 2, off, and with `maxConnectionAge: 30s` instead
//!   — per second, the share of their calls the new pods serve, and the
//!   reconnects the old pods' agents caused (GOAWAYs and reconnects sent
//!   on), no failed call;
//! - scale-up rebalancing: a fleet of 24 pick_first channels on 3 pods,
//!   the app scaled to 6 with `rebalance` on and off — the share of the
//!   fleet's calls the new pods serve, `status.lastRebalance` and the
//!   `Rebalanced` Event, no failed call;
//! - a rollout of 6 replicas (one for one: no rebalance);
//! - a policy edit reaching running agents through the operator's channel
//!   (timed from the API write to each agent's log line), whose
//!   `maxConnectionAge` moves a pick_first client across pods, with zero
//!   failed calls;
//! - `kubectl delete pod` with the default grace period: zero failed calls;
//! - the app container crashing: the pod leaves the endpoints (the agent's
//!   readiness checks the app) and comes back after the restart;
//! - cluster DNS: the clients dial the Service by name (`echo:50051`);
//! - a headless Service and a round_robin client dialling its name with
//!   grpc-go's DNS resolver, which gives it the pod IPs:
//!   in namedPort interception the policy reports the Service as a bypass
//!   and the client reaches no agent; after switching the policy to
//!   redirect interception and a rollout (pods get the `goaway-intercept`
//!   init container), the client is connected through every agent, and
//!   deleting a pod fails none of its calls and sends it a GOAWAY;
//! - `helm upgrade`, `helm uninstall` and taking the agent out.
//!
//! The figures go to stderr and to `node_e2e_report.md` in the test's
//! target tmpdir (`.ci/run` prints it).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use goaway_tests::poll;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use support::cluster::{helm, kubectl, kubectl_stdin, ok, repo_root};

/// The namespace and release of this run.
struct Env {
    /// The app's replicas (the fixture's 3 unless scaled).
    replicas: usize,
    ns: String,
    release: String,
    report: Vec<String>,
}

fn skip() -> bool {
    if std::env::var_os("GOAWAY_KUBE_NODE").is_none() || std::env::var_os("KUBECONFIG").is_none() {
        goaway_transport::test_util::skip(
            "set GOAWAY_KUBE_NODE and KUBECONFIG to run the node end-to-end test (eval \"$(scripts/kube-local env)\" after scripts/kube-local up --node)",
        );
        return true;
    }
    false
}

/// The chart `helm install` installs and the flags that pick its images.
///
/// By default the checkout's chart with the images `scripts/kube-local
/// images` imported into the node: its values file, `GOAWAY_E2E_VALUES` or
/// what that command prints. With `GOAWAY_E2E_CHART` set
/// (`oci://localhost:15000/charts/goaway`: what `scripts/release` pushed
/// to `scripts/kube-local registry`), that released chart at
/// `GOAWAY_E2E_CHART_VERSION`, as a user installs it: no values, the node
/// pulls the images by the digests the chart pins. (The fixtures' grpc-go
/// image comes from `scripts/kube-local images` either way.)
struct Chart {
    /// The chart, then `--version`/`--plain-http` or `-f VALUES`.
    args: Vec<String>,
    /// The registry the released chart's images come from.
    registry: Option<String>,
}

impl Chart {
    fn from_env() -> Chart {
        if let Ok(reference) = std::env::var("GOAWAY_E2E_CHART") {
            let version = std::env::var("GOAWAY_E2E_CHART_VERSION")
                .expect("GOAWAY_E2E_CHART_VERSION: the released chart's version");
            let registry = reference
                .strip_prefix("oci://")
                .and_then(|r| r.strip_suffix("/charts/goaway"))
                .expect("GOAWAY_E2E_CHART is oci://REGISTRY/charts/goaway")
                .to_string();
            return Chart {
                // The loopback registry speaks plain HTTP.
                args: vec![
                    reference,
                    "--version".into(),
                    version,
                    "--plain-http".into(),
                ],
                registry: Some(registry),
            };
        }
        let values = match std::env::var_os("GOAWAY_E2E_VALUES") {
            Some(v) => v.to_string_lossy().into_owned(),
            None => {
                let out = Command::new(repo_root().join("scripts/kube-local"))
                    .arg("images")
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("scripts/kube-local images");
                ok("scripts/kube-local images", out).trim().to_string()
            }
        };
        let chart = repo_root().join("charts/goaway");
        Chart {
            args: vec![chart.to_string_lossy().into_owned(), "-f".into(), values],
            registry: None,
        }
    }

    fn args(&self) -> impl Iterator<Item = &str> {
        self.args.iter().map(String::as_str)
    }
}

fn image_tag() -> String {
    std::env::var("GOAWAY_IMAGE_TAG").unwrap_or_else(|_| "dev".into())
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("operator/tests/fixtures/node").join(name))
        .expect("node fixture")
        .replace("IMAGE_TAG", &image_tag())
}

/// Polls `f` every 500ms until it returns `Some`, or panics after
/// `timeout` (generous: a loaded 2-core machine runs the whole cluster).
fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    poll::until(what, timeout, Duration::from_millis(500), || Ok(f()))
        .unwrap_or_else(|e| panic!("{e}"))
}

impl Env {
    fn k(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.ns];
        all.extend_from_slice(args);
        ok(&format!("kubectl {}", args.join(" ")), kubectl(&all))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.k(&all)).expect("kubectl JSON")
    }

    /// `kubectl get pod POD -o jsonpath=PATH`.
    fn pod_field(&self, pod: &str, path: &str) -> String {
        self.k(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
    }

    fn apply(&self, yaml: &str) {
        ok(
            "kubectl apply",
            kubectl_stdin(&["-n", &self.ns, "apply", "-f", "-"], yaml),
        );
    }

    /// Merge-patches the KeepalivePolicy `echo`.
    fn patch_policy(&self, patch: &str) {
        ok(
            &format!("patch the policy with {patch}"),
            kubectl(&[
                "-n",
                &self.ns,
                "patch",
                "keepalivepolicy",
                "echo",
                "--type",
                "merge",
                "-p",
                patch,
            ]),
        );
    }

    /// Reports `kubectl get kap`.
    fn note_kap(&mut self) {
        let table = kubectl(&["-n", &self.ns, "get", "kap"]).stdout;
        self.note(String::from_utf8_lossy(&table).trim_end().to_string());
    }

    fn note(&mut self, line: String) {
        eprintln!("{line}");
        self.report.push(line);
    }

    /// The app's pods: name → (ready, deleting).
    fn app_pods(&self) -> BTreeMap<String, (bool, bool)> {
        let pods = self.json(&["get", "pods", "-l", "app=echo"]);
        pods["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let deleting = !p["metadata"]["deletionTimestamp"].is_null();
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    (ready, deleting),
                )
            })
            .collect()
    }

    /// Waits until exactly `replicas` new pods run, Ready, and none of
    /// `old` is left.
    fn wait_replaced(&self, old: &BTreeSet<String>) -> BTreeSet<String> {
        wait(
            "the rollout to replace every pod",
            Duration::from_secs(240),
            || {
                let pods = self.app_pods();
                let fresh: BTreeSet<String> = pods
                    .iter()
                    .filter(|(n, (ready, deleting))| *ready && !*deleting && !old.contains(*n))
                    .map(|(n, _)| n.clone())
                    .collect();
                (pods.len() == self.replicas && fresh.len() == self.replicas).then_some(fresh)
            },
        )
    }

    /// Each client's running tally (the last line it printed).
    fn tallies(&self) -> BTreeMap<String, Tally> {
        CLIENTS
            .iter()
            .map(|c| {
                let tally = last_tally(self, c).unwrap_or_else(|| panic!("{c} printed no tally"));
                (c.to_string(), tally)
            })
            .collect()
    }

    /// Waits until both clients call successfully with no new failure for
    /// 5 s, so that a phase is not charged with the previous one's
    /// failures (a connect attempt to a pod that died in the baseline ends
    /// at its 20 s deadline, possibly after the next phase started).
    fn settle(&self) {
        let mut last = self.tallies();
        let mut quiet = 0;
        wait("the clients to settle", Duration::from_secs(120), || {
            thread::sleep(Duration::from_secs(1));
            let now = self.tallies();
            let (made, failed, _) = delta(&last, &now);
            let progressing = CLIENTS.iter().all(|c| now[*c].ok > last[*c].ok);
            quiet = if failed == 0 && made > 0 && progressing {
                quiet + 1
            } else {
                0
            };
            last = now;
            (quiet >= 5).then_some(())
        });
    }

    /// Starts following `container`'s log of `pod` (until it exits).
    fn follow(&self, pod: &str, container: &str) -> Follow {
        let mut child = Command::new("kubectl")
            .args([
                "-n",
                &self.ns,
                "logs",
                "-f",
                "--timestamps",
                pod,
                "-c",
                container,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl logs -f");
        let out = child.stdout.take().expect("stdout");
        let lines = thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        Follow {
            child,
            lines,
            pod: pod.to_string(),
        }
    }
}

const CLIENTS: [&str; 2] = ["client-round-robin", "client-pick-first"];

#[derive(Clone, Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    servers: BTreeMap<String, u64>,
    details: Vec<String>,
}

impl From<&Value> for Tally {
    fn from(v: &Value) -> Self {
        Tally {
            ok: v["ok"].as_u64().unwrap_or(0),
            failed: v["failed"].as_u64().unwrap_or(0),
            servers: v["servers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect(),
            details: v["details"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(String::from))
                .collect(),
        }
    }
}

/// Calls made and failed between two readings, summed over the clients.
fn delta(
    before: &BTreeMap<String, Tally>,
    after: &BTreeMap<String, Tally>,
) -> (u64, u64, Vec<String>) {
    let mut made = 0;
    let mut failed = 0;
    let mut details = vec![];
    for (c, a) in after {
        let b = &before[c];
        made += (a.ok + a.failed) - (b.ok + b.failed);
        failed += a.failed - b.failed;
        if a.failed > b.failed {
            details.extend(a.details.iter().map(|d| format!("{c}: {d}")));
        }
    }
    (made, failed, details)
}

/// Servers that answered `client` between two readings.
fn served(before: &Tally, after: &Tally) -> BTreeSet<String> {
    after
        .servers
        .iter()
        .filter(|(s, n)| **n > before.servers.get(*s).copied().unwrap_or(0))
        .map(|(s, _)| s.clone())
        .collect()
}

struct Follow {
    child: Child,
    lines: JoinHandle<Vec<String>>,
    pod: String,
}

impl Follow {
    fn lines(mut self) -> Vec<String> {
        // The stream ends when the container does; the pod is gone by now.
        // Past 30s, what it logged so far.
        let (timeout, every) = (Duration::from_secs(30), Duration::from_millis(200));
        let _ = poll::until("the log stream to end", timeout, every, || {
            Ok(self.child.try_wait().ok().flatten().is_some())
        });
        self.lines_so_far()
    }

    /// What the container has logged so far (it keeps running).
    fn lines_so_far(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.join().expect("log reader")
    }
}

/// A `kubectl logs --timestamps` line: the kubelet's receive time
/// (RFC 3339, nanoseconds, UTC: sortable as text) and the line.
fn split(line: &str) -> (&str, &str) {
    line.split_once(' ').unwrap_or((line, ""))
}

/// The time of the first line containing `needle`.
fn time_of<'a>(lines: &'a [String], needle: &str) -> Option<&'a str> {
    lines
        .iter()
        .map(|l| split(l))
        .find(|(_, text)| text.contains(needle))
        .map(|(t, _)| t)
}

/// One old pod's drain, read from its agent's and app's logs.
#[derive(Debug)]
struct PodDrain {
    pod: String,
    drain_seconds: f64,
    goaways: u64,
    connections_drained: u64,
    hard_closed: u64,
    /// When the drain started (the kubelet's timestamp of the agent's line).
    started: Timestamp,
    /// What the GOAWAYs went out on (`evidence` or `delay`), and when.
    goaway_on: String,
    goaway_after: f64,
}

fn check_pod_drain(pod: &str, agent: &[String], app: &[String]) -> PodDrain {
    let context = || {
        format!(
            "{pod}\nagent:\n{}\napp:\n{}",
            agent.join("\n"),
            app.join("\n")
        )
    };
    let finished = time_of(agent, "drain finished")
        .unwrap_or_else(|| panic!("no \"drain finished\" from the agent of {}", context()));
    let sigterm = time_of(app, "\"signal\"")
        .unwrap_or_else(|| panic!("the app never logged its SIGTERM: {}", context()));
    let app_stopped = time_of(app, "\"stopped\"")
        .unwrap_or_else(|| panic!("the app never logged its exit: {}", context()));
    let agent_exit = time_of(agent, "drained earlier; exiting")
        .unwrap_or_else(|| panic!("the agent never logged its exit: {}", context()));
    assert!(
        finished < sigterm,
        "the app got SIGTERM ({sigterm}) before the agent's drain finished ({finished}): {}",
        context()
    );
    assert!(
        app_stopped < agent_exit,
        "the sidecar exited ({agent_exit}) before the app ({app_stopped}): {}",
        context()
    );
    let summary: Value = agent
        .iter()
        .map(|l| split(l).1)
        .find(|t| t.contains("drain finished"))
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_else(|| panic!("the drain summary is not JSON: {}", context()));
    let goaways: Value = agent
        .iter()
        .map(|l| split(l).1)
        .find(|t| t.contains("GOAWAY sent to every connection"))
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    // The agent logs flattened JSON events (fields beside the message).
    let f = &summary;
    let started = time_of(agent, "drain started")
        .unwrap_or_else(|| panic!("no \"drain started\" from the agent of {}", context()));
    PodDrain {
        pod: pod.to_string(),
        drain_seconds: f["duration_seconds"].as_f64().unwrap_or(f64::NAN),
        goaways: goaways["connections"].as_u64().unwrap_or(0),
        connections_drained: f["connections_drained"].as_u64().unwrap_or(0),
        hard_closed: f["connections_hard_closed"].as_u64().unwrap_or(0),
        started: started.parse().expect("the kubelet's RFC 3339 timestamp"),
        goaway_on: f["goaway_on"].as_str().unwrap_or("?").to_string(),
        goaway_after: f["goaway_after_seconds"].as_f64().unwrap_or(f64::NAN),
    }
}

/// One rollout, as measured.
struct Rollout {
    made: u64,
    failed: u64,
    /// From `kubectl rollout restart` until every old pod is gone.
    took: Duration,
    drains: Vec<PodDrain>,
    /// Each old pod IP's drain start → the moment kube-proxy's rules on
    /// this node stopped naming it (seconds; none if they never did while
    /// watched).
    left_proxy: BTreeMap<String, f64>,
}

/// Restarts the app and waits for the new pods; returns the calls made and
/// failed meanwhile, and (with `agents`) each old pod's drain next to when
/// kube-proxy stopped sending new connections to it.
fn rollout(env: &mut Env, label: &str, agents: bool) -> Rollout {
    env.settle();
    let old: BTreeSet<String> = env.app_pods().into_keys().collect();
    let follows: Vec<(Follow, Follow)> = if agents {
        old.iter()
            .map(|p| (env.follow(p, "goaway-agent"), env.follow(p, "app")))
            .collect()
    } else {
        vec![]
    };
    let ips: BTreeMap<String, String> = old.iter().map(|p| (pod_ip(env, p), p.clone())).collect();
    let rules = ProxyRules::watch(ips.keys().cloned().collect());
    let before = env.tallies();
    let start = Instant::now();
    env.k(&["rollout", "restart", "deployment/echo"]);
    env.wait_replaced(&old);
    let took = start.elapsed();
    // The clients' tallies are a second behind.
    thread::sleep(Duration::from_secs(3));
    let after = env.tallies();
    let gone = rules.stop();
    let (made, failed, details) = delta(&before, &after);
    let drains: Vec<PodDrain> = follows
        .into_iter()
        .map(|(agent, app)| {
            let pod = agent.pod.clone();
            check_pod_drain(&pod, &agent.lines(), &app.lines())
        })
        .collect();
    let left_proxy: BTreeMap<String, f64> = drains
        .iter()
        .filter_map(|d| {
            let ip = ips.iter().find(|(_, p)| **p == d.pod)?.0;
            let at = gone.get(ip)?;
            Some((d.pod.clone(), seconds_between(d.started, *at)))
        })
        .collect();
    env.note(format!(
        "{label}: {made} calls, {failed} failed, rollout {:.1}s{}",
        took.as_secs_f64(),
        if details.is_empty() {
            String::new()
        } else {
            format!(" (e.g. {:?})", &details[..details.len().min(3)])
        }
    ));
    for d in &drains {
        let proxy = left_proxy
            .get(&d.pod)
            .map_or("never seen leaving".to_string(), |s| format!("{s:.2}s"));
        env.note(format!(
            "  {}: drain {:.2}s, GOAWAY on {} after {:.2}s (kube-proxy dropped the pod after {proxy}), to {} connections, {} drained, {} hard-closed",
            d.pod, d.drain_seconds, d.goaway_on, d.goaway_after, d.goaways, d.connections_drained, d.hard_closed
        ));
    }
    Rollout {
        made,
        failed,
        took,
        drains,
        left_proxy,
    }
}

/// Reports the evidence-driven rollouts next to the one with GOAWAYs fixed at the
/// delay: rollout durations, and for each drained pod when its GOAWAYs
/// went out against when kube-proxy on this node dropped it.
fn note_evidence_against_delay(env: &mut Env, evidence: &[Rollout], fixed: &Rollout) {
    let mean = evidence.iter().map(|r| r.took.as_secs_f64()).sum::<f64>() / evidence.len() as f64;
    let fixed_took = fixed.took.as_secs_f64();
    env.note(format!(
        "rollout of 3 replicas: {mean:.1}s on evidence (mean of {}), {fixed_took:.1}s with GOAWAY fixed at 5s: {:.0}% shorter",
        evidence.len(),
        100.0 * (1.0 - mean / fixed_took)
    ));
    let margins: Vec<f64> = evidence
        .iter()
        .flat_map(|r| {
            r.drains
                .iter()
                .filter_map(|d| Some(d.goaway_after - r.left_proxy.get(&d.pod)?))
        })
        .collect();
    let after: Vec<f64> = evidence
        .iter()
        .flat_map(|r| r.drains.iter().map(|d| d.goaway_after))
        .collect();
    let proxy: Vec<f64> = evidence
        .iter()
        .flat_map(|r| r.left_proxy.values().copied())
        .collect();
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.2}-{hi:.2}s")
    };
    env.note(format!(
        "drain start → GOAWAY on evidence: {} over {} drains; → kube-proxy dropping the pod: {}; GOAWAY after the drop by {} (fixed: GOAWAY at {})",
        range(&after),
        after.len(),
        range(&proxy),
        range(&margins),
        range(&fixed.drains.iter().map(|d| d.goaway_after).collect::<Vec<_>>()),
    ));
}

/// The fleet client's last tally line, once it has one.
fn fleet_tally(env: &Env) -> Option<Tally> {
    last_tally(env, "client-fleet")
}

/// The last tally client `pod` printed (its log's last line), if any.
fn last_tally(env: &Env, pod: &str) -> Option<Tally> {
    let out = kubectl(&["-n", &env.ns, "logs", pod, "--tail", "1"]);
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).ok()?;
    Some(Tally::from(&v))
}

/// Scales the app to `replicas` and waits for exactly that many pods,
/// all Ready.
fn scale_to(env: &mut Env, replicas: usize) {
    env.k(&[
        "scale",
        "deployment/echo",
        "--replicas",
        &replicas.to_string(),
    ]);
    env.replicas = replicas;
    wait("the app scaled", Duration::from_secs(180), || {
        let pods = env.app_pods();
        (pods.len() == replicas && pods.values().all(|(ready, deleting)| *ready && !*deleting))
            .then_some(())
    });
}

/// Scales the app from 3 to 6 and follows the share of the fleet's calls
/// the 3 new pods serve, every 2 s for 30 s after all 6 are Ready; returns
/// the share over the last 10 s. No call of any client may fail
/// meanwhile.
fn scale_up(env: &mut Env, label: &str) -> f64 {
    env.settle();
    let old: BTreeSet<String> = env.app_pods().into_keys().collect();
    let before = env.tallies();
    let fleet_before = fleet_tally(env).expect("the fleet's tally");
    let start = Instant::now();
    scale_to(env, 6);
    let ready = start.elapsed();
    let on_new = |from: &Tally, to: &Tally| {
        let (mut new, mut all) = (0, 0);
        for (server, n) in &to.servers {
            let d = n - from.servers.get(server).copied().unwrap_or(0);
            all += d;
            if !old.contains(server) {
                new += d;
            }
        }
        new as f64 / all.max(1) as f64
    };
    let mut samples = vec![fleet_tally(env).expect("the fleet's tally")];
    let mut timeline = vec![];
    for i in 1..=15 {
        thread::sleep(Duration::from_secs(2));
        samples.push(fleet_tally(env).expect("the fleet's tally"));
        timeline.push(format!(
            "{}s {:.0}%",
            2 * i,
            100.0 * on_new(&samples[i - 1], &samples[i])
        ));
    }
    let (from, to) = (&samples[10], &samples[15]);
    let share = on_new(from, to);
    let after = env.tallies();
    let (made, failed, details) = delta(&before, &after);
    env.note(format!(
        "{label}: 6 Ready after {:.1}s; the new pods' share of the fleet's calls, per 2 s after that: {}; over the last 10 s {:.0}% (even: 50%); {} fleet calls failed, {made} other calls, {failed} failed",
        ready.as_secs_f64(),
        timeline.join(", "),
        100.0 * share,
        to.failed - fleet_before.failed,
    ));
    assert_eq!(failed, 0, "{label}: calls failed: {details:?}");
    assert_eq!(
        to.failed, fleet_before.failed,
        "{label}: the fleet's calls failed: {:?}",
        to.details
    );
    share
}

/// Starts the Service clients (`clients.yaml`) and waits until both have
/// printed a tally.
fn start_service_clients(env: &Env) {
    env.apply(&fixture("clients.yaml"));
    wait("both clients calling", Duration::from_secs(120), || {
        CLIENTS
            .iter()
            .all(|c| {
                kubectl(&["-n", &env.ns, "logs", c, "--tail", "1"])
                    .stdout
                    .starts_with(b"{\"ok\":")
            })
            .then_some(())
    });
}

/// The four clients of the 2 → 4 steps (fixture `four.yaml`): two pods of
/// two channels each.
const FOUR: [&str; 2] = ["four-pick-first", "four-round-robin"];
/// The clients measured in the 2 → 4 steps: the four, and the Service
/// clients (one round_robin, one pick_first channel): six connections, of
/// which a rebalance moves at least two (half of each old pod's, rounded
/// at random: ⌊3/2⌋ twice at least).
const SIX: [&str; 4] = [FOUR[0], FOUR[1], CLIENTS[0], CLIENTS[1]];

/// A client's tally lines of the last 3 minutes, each with the kubelet's
/// time of receipt (none while its container has not started).
fn tally_lines(env: &Env, pod: &str) -> Vec<(SystemTime, Tally)> {
    let out = kubectl(&["-n", &env.ns, "logs", pod, "--timestamps", "--since", "3m"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (at, json) = split(line);
            let at: Timestamp = at.parse().ok()?;
            let v: Value = serde_json::from_str(json).ok()?;
            Some((SystemTime::from(at), Tally::from(&v)))
        })
        .collect()
}

/// The sum over the agents of `pods` of each of `series` (unlabelled
/// samples of their `/metrics`).
fn agent_sums(env: &Env, pods: &BTreeSet<String>, series: &[&str]) -> Vec<f64> {
    let mut sums = vec![0.0; series.len()];
    for pod in pods {
        let text = agent_get(&pod_ip(env, pod), "/metrics")
            .unwrap_or_else(|| panic!("{pod}'s agent /metrics"));
        for line in text.lines() {
            if let Some((name, value)) = line.split_once(' ')
                && let Some(i) = series.iter().position(|s| *s == name)
            {
                sums[i] += value.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    sums
}

/// What one scale-up step of the four clients showed.
struct Step {
    /// The share of the four clients' calls the new pods served, per
    /// second after all pods were Ready.
    /// None for a second no tally line covered (the clients print once
    /// a second, and a line can land on either side of a boundary).
    per_second: Vec<Option<f64>>,
    /// The same over seconds 20–30.
    last_10s: f64,
    /// The even share, `(to - from)/to`.
    fair: f64,
    /// Client connections on the old pods before, sent GOAWAY by
    /// rebalancing, and sent on when accepted.
    connections: f64,
    moved: f64,
    sent_on: f64,
}

/// Scales the app from its size now to `to` with `clients` (client pods
/// printing their tally every second) calling and follows, per second for
/// 30 s after all pods are Ready, the share of their calls the new pods
/// serve, with the reconnects the old pods' agents caused. No call of any
/// client may fail; a new pod's agent sends nothing on (the operator
/// tells only the old pods).
fn scale_step(env: &mut Env, label: &str, to: usize, clients: &[&str]) -> Step {
    const SERIES: [&str; 3] = [
        "goaway_connections_open",
        "goaway_rebalance_goaways_total",
        "goaway_rebalance_bounces_total",
    ];
    env.settle();
    let old: BTreeSet<String> = env.app_pods().into_keys().collect();
    let from = old.len();
    let counters = agent_sums(env, &old, &SERIES);
    let before = env.tallies();
    let clients_before: Vec<Tally> = clients
        .iter()
        .map(|c| tally_lines(env, c).pop().expect("a tally").1)
        .collect();
    scale_to(env, to);
    let ready = SystemTime::now();
    thread::sleep(Duration::from_secs(31));
    let after_counters = agent_sums(env, &old, &SERIES);
    let new: BTreeSet<String> = env
        .app_pods()
        .into_keys()
        .filter(|p| !old.contains(p))
        .collect();
    let new_sent_on = agent_sums(env, &new, &SERIES[2..])[0];
    let lines: Vec<Vec<(SystemTime, Tally)>> =
        clients.iter().map(|c| tally_lines(env, c)).collect();
    // The clients' calls up to `t`: (on new pods, all).
    let calls_by = |t: SystemTime| {
        let (mut on_new, mut all) = (0, 0);
        for client in &lines {
            let Some((_, tally)) = client.iter().rev().find(|(at, _)| *at <= t) else {
                continue;
            };
            for (server, n) in &tally.servers {
                all += n;
                if new.contains(server) {
                    on_new += n;
                }
            }
        }
        (on_new, all)
    };
    let share = |from_s: u64, to_s: u64| {
        let (n0, a0) = calls_by(ready + Duration::from_secs(from_s));
        let (n1, a1) = calls_by(ready + Duration::from_secs(to_s));
        (a1 > a0).then(|| (n1 - n0) as f64 / (a1 - a0) as f64)
    };
    let step = Step {
        per_second: (0..30).map(|s| share(s, s + 1)).collect(),
        last_10s: share(20, 30).expect("the clients' calls over seconds 20-30"),
        fair: (to - from) as f64 / to as f64,
        connections: counters[0],
        moved: after_counters[1] - counters[1],
        sent_on: after_counters[2] - counters[2],
    };
    let reaches = (0..30)
        .find(|&s| {
            step.per_second[s].is_some()
                && step.per_second[s..]
                    .iter()
                    .flatten()
                    .all(|&x| x >= 0.8 * step.fair)
        })
        .map_or("never".to_string(), |s| format!("from {}s on", s + 1));
    let (made, failed, details) = delta(&before, &env.tallies());
    let clients_failed: u64 = clients
        .iter()
        .zip(&clients_before)
        .map(|(c, b)| tally_lines(env, c).pop().expect("a tally").1.failed - b.failed)
        .sum();
    env.note(format!(
        "{label} ({from} → {to}; {}): the new pods' share of their calls per second after all were Ready: {}; over seconds 20–30 {:.0}% (even: {:.0}%); ≥ 80% of even {reaches}; of the old pods' {} connections {} sent GOAWAY, {} reconnects sent on; {clients_failed} of their calls failed, {made} other calls, {failed} failed",
        clients.join(", "),
        step.per_second
            .iter()
            .map(|x| x.map_or("–".to_string(), |x| format!("{:.0}", 100.0 * x)))
            .collect::<Vec<_>>()
            .join(" "),
        100.0 * step.last_10s,
        100.0 * step.fair,
        step.connections,
        step.moved,
        step.sent_on,
    ));
    assert_eq!(failed, 0, "{label}: calls failed: {details:?}");
    assert_eq!(clients_failed, 0, "{label}: {clients:?}' calls failed");
    assert_eq!(
        new_sent_on, 0.0,
        "{label}: a new pod's agent sent reconnects on"
    );
    step
}

/// Seconds from `from` (a kubelet log timestamp) to `to`.
fn seconds_between(from: Timestamp, to: SystemTime) -> f64 {
    let to = Timestamp::try_from(to).expect("a time after 1970");
    (to.as_nanosecond() - from.as_nanosecond()) as f64 / 1e9
}

/// Watches kube-proxy's rules on this node (iptables mode: one DNAT rule
/// per endpoint): when each of `ips` stopped being a destination, the
/// moment no new connection through a Service reaches it any more.
struct ProxyRules {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<BTreeMap<String, SystemTime>>,
}

impl ProxyRules {
    fn watch(ips: BTreeSet<String>) -> ProxyRules {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut gone = BTreeMap::new();
            while !stopped.load(Relaxed) && gone.len() < ips.len() {
                let out = Command::new("iptables-save")
                    .args(["-t", "nat"])
                    .output()
                    .expect("iptables-save");
                let now = SystemTime::now();
                let rules = String::from_utf8_lossy(&out.stdout);
                for ip in &ips {
                    if !gone.contains_key(ip) && !rules.contains(&format!("--to-destination {ip}:"))
                    {
                        gone.insert(ip.clone(), now);
                    }
                }
                thread::sleep(Duration::from_millis(50));
            }
            gone
        });
        ProxyRules { stop, thread }
    }

    fn stop(self) -> BTreeMap<String, SystemTime> {
        self.stop.store(true, Relaxed);
        self.thread.join().expect("the rule watcher")
    }
}

fn pod_ip(env: &Env, pod: &str) -> String {
    env.k(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
}

/// GET on an agent's admin port, from the node (pod IPs are routed here).
fn agent_get(ip: &str, path: &str) -> Option<String> {
    let out = Command::new("curl")
        .args([
            "-fsS",
            "--max-time",
            "3",
            &format!("http://{ip}:15052{path}"),
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pod_ready(env: &Env, pod: &str) -> bool {
    env.app_pods().get(pod).is_some_and(|(ready, _)| *ready)
}

#[test]
fn rolling_deploys_drain_with_zero_failed_calls_on_a_real_node() {
    if skip() {
        return;
    }
    let chart = Chart::from_env();
    let pid = std::process::id();
    let mut env = Env {
        replicas: 3,
        ns: format!("goaway-node-e2e-{pid}"),
        release: format!("e2e-{pid}"),
        report: vec![],
    };
    ok(
        "create the namespace",
        kubectl(&["create", "namespace", &env.ns]),
    );
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&mut env, &chart)));
    let report = env.report.join("\n");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("node_e2e_report.md");
    let _ = std::fs::write(&path, format!("{report}\n"));
    eprintln!("report: {}", path.display());
    if result.is_err() {
        for what in [
            vec!["get", "pods", "-o", "wide"],
            vec!["get", "events", "--sort-by", ".lastTimestamp"],
            vec![
                "logs",
                "-l",
                "app=echo",
                "-c",
                "goaway-agent",
                "--prefix",
                "--tail",
                "40",
            ],
            vec!["logs", "-l", "role=client", "--prefix", "--tail", "3"],
        ] {
            let mut args = vec!["-n", env.ns.as_str()];
            args.extend(what);
            eprintln!("{}", String::from_utf8_lossy(&kubectl(&args).stdout));
        }
    }
    let _ = helm(&[
        "uninstall",
        &env.release,
        "-n",
        &env.ns,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let _ = kubectl(&["delete", "namespace", &env.ns, "--wait=false"]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn scenario(env: &mut Env, chart: &Chart) {
    // The chart, as a user installs it; the webhook only sees this
    // namespace, so tests running beside this one are left alone.
    let fullname = format!("goaway-{}", env.release);
    // The cluster tests apply the CRD as field manager `goaway-e2e`; on a
    // cluster shared with another checkout's runs, Helm's apply of this
    // checkout's CRD would conflict with theirs. This checkout's first.
    ok(
        "kubectl apply the CRD",
        kubectl(&[
            "apply",
            "--server-side",
            "--field-manager",
            "goaway-e2e",
            "--force-conflicts",
            "-f",
            repo_root()
                .join("crds/keepalivepolicy.yaml")
                .to_str()
                .unwrap(),
        ]),
    );
    let start = Instant::now();
    let watch = format!("watchNamespace={}", env.ns);
    let name = format!("fullnameOverride={fullname}");
    let mut install = vec!["install", &env.release];
    install.extend(chart.args());
    install.extend(["-n", &env.ns, "--set", &watch, "--set", &name]);
    install.extend(["--wait", "--timeout", "4m"]);
    ok("helm install", helm(&install));
    let operator = format!("{fullname}-operator");
    let deploy = env.json(&["get", "deployment", &operator]);
    assert_eq!(deploy["status"]["readyReplicas"], 2, "{deploy}");
    if let Some(registry) = &chart.registry {
        // The released chart pins both images by digest in its registry.
        let container = &deploy["spec"]["template"]["spec"]["containers"][0];
        let agent = container["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == "GOAWAY_AGENT_IMAGE"))
            .map(|v| v["value"].as_str().unwrap_or_default().to_string());
        for (what, image) in [
            ("operator", container["image"].as_str().map(str::to_string)),
            ("agent", agent),
        ] {
            let image = image.unwrap_or_default();
            assert!(
                image.starts_with(&format!("{registry}/goaway-{what}"))
                    && image.contains("@sha256:"),
                "the released chart's {what} image is {image:?}, not {registry}/goaway-{what}@sha256:…"
            );
            env.note(format!("released chart: {what} image {image}"));
        }
    }
    let holder = wait("a leader", Duration::from_secs(60), || {
        let h = env.k(&[
            "get",
            "lease",
            &operator,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        (!h.is_empty()).then_some(h)
    });
    let ca = wait("the webhook's caBundle", Duration::from_secs(60), || {
        let out = kubectl(&[
            "get",
            "mutatingwebhookconfiguration",
            &operator,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]);
        let ca = String::from_utf8_lossy(&out.stdout).into_owned();
        (!ca.is_empty()).then_some(ca)
    });
    env.note(format!(
        "helm install: operator 2/2 Ready in {:.1}s, leader {holder}, caBundle {} bytes",
        start.elapsed().as_secs_f64(),
        ca.len()
    ));

    // The app and its clients.
    env.apply(&fixture("app.yaml"));
    env.wait_replaced(&BTreeSet::new());
    start_service_clients(env);
    env.settle();

    // pick_first without maxConnectionAge stays on one pod.
    let before = env.tallies();
    thread::sleep(Duration::from_secs(10));
    let after = env.tallies();
    let sticky = served(&before["client-pick-first"], &after["client-pick-first"]);
    assert_eq!(sticky.len(), 1, "pick_first without age: {sticky:?}");

    // Baseline: no policy, so no agent. The app exits on SIGTERM with
    // calls in flight and clients connected.
    let baseline = rollout(env, "baseline rollout (no policy)", false);
    assert!(
        baseline.failed > 0,
        "the baseline must show what goaway prevents: no call failed without it"
    );

    // The policy; the next rollout creates injected pods (the old ones
    // still have no agent, so this one is not measured).
    env.apply(&fixture("policy.yaml"));
    wait("the policy Ready", Duration::from_secs(60), || {
        let s = env.k(&[
            "get",
            "keepalivepolicy",
            "echo",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (s == "True").then_some(())
    });
    rollout(env, "injecting rollout (old pods without the agent)", false);
    for pod in env.app_pods().keys() {
        let init = env.pod_field(pod, "{.spec.initContainers[*].name}");
        assert!(
            init.contains("goaway-agent"),
            "{pod} was not injected: {init}"
        );
    }
    let kap = wait(
        "kubectl get kap to count 3 injected pods",
        Duration::from_secs(60),
        || {
            let v = env.json(&["get", "kap", "echo"]);
            (v["status"]["injectedPods"] == 3 && v["status"]["matchedPods"] == 3).then_some(v)
        },
    );
    env.note(format!(
        "kubectl get kap echo: matched {}, injected {}",
        kap["status"]["matchedPods"], kap["status"]["injectedPods"]
    ));
    env.note_kap();

    // With goaway: several rollouts, not one call may fail. Each agent
    // hears from the operator when its pod has left every EndpointSlice's
    // ready set, and sends its GOAWAYs a quiet period after that (unless
    // connections keep arriving) instead of after the whole 5 s delay.
    let mut goaways = 0;
    let mut evidence = vec![];
    for i in 1..=3 {
        let r = rollout(env, &format!("goaway rollout {i}"), true);
        assert!(r.made > 0, "the clients made no calls during rollout {i}");
        assert_eq!(r.failed, 0, "calls failed during goaway rollout {i}");
        assert_eq!(r.drains.len(), 3);
        for d in &r.drains {
            assert_eq!(
                d.goaway_on, "evidence",
                "{}: the agent waited the whole delay though the operator was up",
                d.pod
            );
        }
        goaways += r.drains.iter().map(|d| d.goaways).sum::<u64>();
        evidence.push(r);
    }
    assert!(
        goaways > 0,
        "no drain sent a GOAWAY: the clients were not connected through the agents"
    );
    // Each drain outlives its pod: an Event on the pod, recorded by the
    // operator from the agent's report (with the chart's RBAC), and the
    // last rollout's sum on the policy, which `kubectl get kap` shows.
    let last = evidence.last().expect("a rollout");
    for d in &last.drains {
        let event = format!("{}.drained.1", d.pod);
        let event = wait(&format!("Event {event}"), Duration::from_secs(30), || {
            let out = kubectl(&[
                "-n",
                &env.ns,
                "get",
                "events.events.k8s.io",
                &event,
                "-o",
                "json",
            ]);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())?
        });
        assert_eq!(event["reason"], "Drained", "{event}");
        assert_eq!(event["regarding"]["name"], d.pod.as_str(), "{event}");
    }
    let summed = wait(
        "status.lastRollout of the last rollout",
        Duration::from_secs(30),
        || {
            let status = env.json(&["get", "kap", "echo"])["status"]["lastRollout"].clone();
            (status["pods"] == last.drains.len()).then_some(status)
        },
    );
    assert_eq!(summed["streamsCut"], 0, "{summed}");
    assert_eq!(
        summed["result"], "3 pods drained, 0 streams cut",
        "{summed}"
    );
    env.note(format!(
        "status.lastRollout after goaway rollout 3: {summed}"
    ));

    // The same rollout with the GOAWAYs fixed at the 5 s delay, as a
    // sleep-based drain would send them: a quiet period as long as the
    // delay (the new pods are injected just the same, so only the drains
    // differ).
    env.patch_policy(r#"{"spec":{"drain":{"quietPeriod":"5s"}}}"#);
    let fixed = rollout(
        env,
        "rollout with GOAWAY fixed at 5s (quietPeriod = delay)",
        true,
    );
    assert_eq!(fixed.failed, 0, "calls failed with the GOAWAYs at 5s");
    for d in &fixed.drains {
        assert!(
            d.goaway_after >= 5.0,
            "{}: GOAWAY after {:.2}s with a 5s quiet period",
            d.pod,
            d.goaway_after
        );
    }
    note_evidence_against_delay(env, &evidence, &fixed);
    env.patch_policy(r#"{"spec":{"drain":{"quietPeriod":null}}}"#);

    // The operator stopped (both replicas): the agents hear nothing, fall
    // back to the whole delay, and nothing fails. (The webhook is down too,
    // so the new pods come without the agent: failurePolicy Ignore.)
    env.k(&["scale", "deployment", &operator, "--replicas", "0"]);
    wait("the operator's pods gone", Duration::from_secs(120), || {
        let pods = env.json(&["get", "pods", "-l", "app.kubernetes.io/component=operator"]);
        pods["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    });
    let stopped = rollout(env, "goaway rollout with the operator stopped", true);
    assert_eq!(stopped.failed, 0, "calls failed with the operator stopped");
    for d in &stopped.drains {
        assert_eq!(
            d.goaway_on, "delay",
            "{}: evidence without the operator",
            d.pod
        );
    }
    env.k(&["scale", "deployment", &operator, "--replicas", "2"]);
    wait("the operator back", Duration::from_secs(180), || {
        (env.json(&["get", "deployment", &operator])["status"]["readyReplicas"] == 2).then_some(())
    });
    rollout(
        env,
        "re-injecting rollout (pods admitted while the operator was down)",
        false,
    );

    // Scale-up rebalancing with four clients (and the two Service
    // clients), 2 → 4: with it (twice, the second after 4 → 2), without,
    // and with maxConnectionAge 30s.
    env.patch_policy(r#"{"spec":{"rebalance":{"enabled":true,"window":"5s"}}}"#);
    env.apply(&fixture("four.yaml"));
    wait("the four clients calling", Duration::from_secs(120), || {
        FOUR.iter()
            .all(|c| tally_lines(env, c).last().is_some_and(|(_, t)| t.ok > 100))
            .then_some(())
    });
    let halve = |env: &mut Env| {
        scale_to(env, 2);
        // The operator judges no growth until terminations are that long
        // over.
        thread::sleep(goaway_operator::channel::rebalance::AFTER_TERMINATION);
    };
    halve(env);
    let on = scale_step(env, "2 → 4 with rebalancing", 4, &SIX);
    halve(env);
    let again = scale_step(env, "4 → 2 → 4 with rebalancing", 4, &SIX);
    env.patch_policy(r#"{"spec":{"rebalance":null}}"#);
    halve(env);
    let off = scale_step(env, "2 → 4 without rebalancing", 4, &SIX);
    env.patch_policy(r#"{"spec":{"server":{"maxConnectionAge":"30s"}}}"#);
    halve(env);
    let age = scale_step(env, "2 → 4, maxConnectionAge 30s instead", 4, &SIX);
    env.patch_policy(r#"{"spec":{"server":{"maxConnectionAge":null}}}"#);
    for (step, label) in [
        (&on, "with rebalancing"),
        (&again, "with rebalancing, again"),
    ] {
        assert!(
            step.moved >= 1.0 && step.last_10s > off.last_10s,
            "{label}: {} moved, {:.2} of the calls on the new pods; {:.2} without",
            step.moved,
            step.last_10s,
            off.last_10s
        );
    }
    env.note(format!(
        "2 → 4, six clients, share on the new pods over seconds 20–30 (even 50%): {:.0}% and {:.0}% with rebalancing, {:.0}% without, {:.0}% with maxConnectionAge 30s",
        100.0 * on.last_10s,
        100.0 * again.last_10s,
        100.0 * off.last_10s,
        100.0 * age.last_10s,
    ));
    env.k(&["delete", "pod", FOUR[0], FOUR[1], "--wait=false"]);
    scale_to(env, 3);

    // Scale-up rebalancing. A fleet of 24 pick_first channels is spread
    // over the 3 pods; with `rebalance` on, scaling to 6 has the old pods'
    // agents send GOAWAY to about half their connections over 5 s, and
    // the fleet's calls reach the new pods. Then a rollout of the 6
    // replicas (one for one: no rebalance), and the same scale-up with
    // rebalancing off, for comparison.
    env.patch_policy(r#"{"spec":{"rebalance":{"enabled":true,"window":"5s"}}}"#);
    env.apply(&fixture("fleet.yaml"));
    wait("the fleet calling", Duration::from_secs(120), || {
        fleet_tally(env).filter(|t| t.ok > 100)
    });
    // The operator judges no growth until the last rollout's terminations
    // are that long over.
    thread::sleep(goaway_operator::channel::rebalance::AFTER_TERMINATION);
    let with = scale_up(env, "scale-up 3 → 6 with rebalancing");
    let status = env.json(&["get", "kap", "echo"])["status"]["lastRebalance"].clone();
    assert_eq!(
        (status["from"].as_u64(), status["to"].as_u64()),
        (Some(3), Some(6)),
        "status.lastRebalance after the scale-up: {status}"
    );
    let events = env.k(&[
        "get",
        "events.events.k8s.io",
        "--field-selector",
        "reason=Rebalanced",
        "-o",
        "name",
    ]);
    assert!(
        !events.trim().is_empty(),
        "no Rebalanced Event on the policy"
    );
    env.note(format!("kubectl get kap echo: lastRebalance {status}"));

    // Six replicas: twice the drains in one rollout, still nothing fails;
    // a one-for-one replacement is no scale-up.
    let fleet_before = fleet_tally(env).expect("the fleet's tally");
    let six = rollout(env, "goaway rollout of 6 replicas", true);
    assert_eq!(
        six.failed, 0,
        "calls failed during the rollout of 6 replicas"
    );
    assert_eq!(six.drains.len(), 6);
    let fleet_after = fleet_tally(env).expect("the fleet's tally");
    assert_eq!(
        fleet_after.failed, fleet_before.failed,
        "the fleet's calls failed during the rollout: {:?}",
        fleet_after.details
    );
    thread::sleep(Duration::from_secs(5));
    assert_eq!(
        env.json(&["get", "kap", "echo"])["status"]["lastRebalance"],
        status,
        "the rollout was taken for a scale-up"
    );

    env.patch_policy(r#"{"spec":{"rebalance":null}}"#);
    scale_to(env, 3);
    let without = scale_up(env, "scale-up 3 → 6 without rebalancing");
    // What peers offer instead: every connection cycled by age.
    env.patch_policy(r#"{"spec":{"server":{"maxConnectionAge":"10s"}}}"#);
    scale_to(env, 3);
    let by_age = scale_up(env, "scale-up 3 → 6, maxConnectionAge 10s instead");
    env.patch_policy(r#"{"spec":{"server":{"maxConnectionAge":null}}}"#);
    env.note(format!(
        "scale-up rebalancing: the new pods served {:.0}% of the fleet's calls with it, {:.0}% without, {:.0}% with maxConnectionAge 10s (24 connections; an even spread is 50%)",
        100.0 * with,
        100.0 * without,
        100.0 * by_age
    ));
    assert!(
        with > without,
        "rebalancing moved nothing: {with:.2} of the calls on the new pods with it, {without:.2} without"
    );
    scale_to(env, 3);
    env.k(&["delete", "pod", "client-fleet", "--wait=false"]);

    // A policy edit reaches the running agents; maxConnectionAge then
    // moves the pick_first client across pods, failing nothing.
    env.settle();
    let pods: Vec<String> = env.app_pods().into_keys().collect();
    let follows: Vec<Follow> = pods.iter().map(|p| env.follow(p, "goaway-agent")).collect();
    // kubectl logs -f starts at the end of the log after a moment.
    thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    let written = SystemTime::now();
    env.patch_policy(
        r#"{"spec":{"server":{"maxConnectionAge":"3s","maxConnectionAgeGrace":"5s"}}}"#,
    );
    for pod in &pods {
        let ip = pod_ip(env, pod);
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            last = agent_get(&ip, "/policy").or(last);
            let policy: Value = last
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or(Value::Null);
            if policy["server"]["maxConnectionAge"] == "3s" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pod}'s agent ({ip}) did not load maxConnectionAge 3s in 180s; its /policy: {last:?}; the ConfigMap: {}",
                env.k(&["get", "configmap", "goaway-echo", "-o", "jsonpath={.data}"])
            );
            thread::sleep(Duration::from_millis(500));
        }
    }
    // Through the operator's channel, not the kubelet's ConfigMap refresh:
    // each agent's line says where the policy came from, and when.
    let mut applied = vec![];
    for follow in follows {
        let pod = follow.pod.clone();
        let lines = follow.lines_so_far();
        // The first such line after the write (earlier edits have theirs).
        let since = Timestamp::try_from(written).expect("a time after 1970");
        let at: Timestamp = lines
            .iter()
            .map(|l| split(l))
            .filter(|(_, text)| text.contains("policy from the operator applied"))
            .filter_map(|(t, _)| t.parse::<Timestamp>().ok())
            .find(|t| *t >= since)
            .unwrap_or_else(|| {
                panic!(
                    "{pod}'s agent did not get the edit from the operator:\n{}",
                    lines.join("\n")
                )
            });
        applied.push(-seconds_between(at, written));
    }
    let slowest = applied.iter().copied().fold(f64::NAN, f64::max);
    env.note(format!(
        "policy edit: every running agent applied maxConnectionAge 3s from the operator {slowest:.2}s after the API write (each: {}); /policy showed it on all within {:.1}s",
        applied.iter().map(|s| format!("{s:.2}s")).collect::<Vec<_>>().join(", "),
        start.elapsed().as_secs_f64()
    ));
    let before = env.tallies();
    thread::sleep(Duration::from_secs(20));
    let after = env.tallies();
    let (made, failed, details) = delta(&before, &after);
    let moved = served(&before["client-pick-first"], &after["client-pick-first"]);
    env.note(format!(
        "maxConnectionAge 3s for 20s: pick_first served by {} pods, {made} calls, {failed} failed",
        moved.len()
    ));
    assert_eq!(failed, 0, "calls failed during age rotation: {details:?}");
    assert!(
        moved.len() >= 2,
        "maxConnectionAge did not move the pick_first client: {moved:?}"
    );

    // kubectl delete pod, default grace period.
    env.settle();
    let victim = pods[0].clone();
    let (agent, app) = (
        env.follow(&victim, "goaway-agent"),
        env.follow(&victim, "app"),
    );
    let before = env.tallies();
    env.k(&["delete", "pod", &victim]);
    env.wait_replaced(&BTreeSet::from([victim.clone()]));
    thread::sleep(Duration::from_secs(3));
    let after = env.tallies();
    let (made, failed, details) = delta(&before, &after);
    let d = check_pod_drain(&victim, &agent.lines(), &app.lines());
    env.note(format!(
        "kubectl delete pod: {made} calls, {failed} failed; drain {:.2}s, GOAWAY to {} connections",
        d.drain_seconds, d.goaways
    ));
    assert_eq!(
        failed, 0,
        "calls failed when a pod was deleted: {details:?}"
    );

    // The app crashes: the agent's readiness follows it.
    let pod = env.app_pods().into_keys().next().expect("a pod");
    let container = env.pod_field(
        &pod,
        "{.status.containerStatuses[?(@.name==\"app\")].containerID}",
    );
    let id = container.trim_start_matches("containerd://").to_string();
    env.settle();
    let before = env.tallies();
    let crash = Instant::now();
    kill_container(&id);
    wait(
        &format!("{pod} to turn NotReady after its app crashed"),
        Duration::from_secs(30),
        || (!pod_ready(env, &pod)).then_some(()),
    );
    let not_ready = crash.elapsed();
    wait(
        &format!("{pod} Ready again after the app restarted"),
        Duration::from_secs(120),
        || pod_ready(env, &pod).then_some(()),
    );
    let back = crash.elapsed();
    thread::sleep(Duration::from_secs(3));
    let after = env.tallies();
    let (made, failed, _) = delta(&before, &after);
    env.note(format!(
        "app crash (SIGKILL): pod NotReady after {:.1}s, Ready again after {:.1}s; {made} calls, {failed} failed (calls in flight on the dead app)",
        not_ready.as_secs_f64(),
        back.as_secs_f64()
    ));

    interception(env);
    upgrade_then_uninstall(env, chart, &fullname);
}

const HEADLESS_CLIENT: &str = "client-headless";

/// Deletes the headless client if it exists; `wait`: until it is gone (its
/// name is about to be reused).
fn delete_headless_client(env: &Env, wait: bool) {
    let _ = kubectl(&[
        "-n",
        &env.ns,
        "delete",
        "pod",
        HEADLESS_CLIENT,
        "--ignore-not-found",
        "--grace-period",
        "1",
        &format!("--wait={wait}"),
    ]);
}

/// (Re)starts the client that dials the headless Service's name; returns
/// its pod IP. A new client resolves the name at once: a running one only
/// re-resolves when a connection ends (grpc-go's DNS resolver, at most
/// every 30 s), so after a rollout it may know fewer than the 3 pods.
fn start_headless_client(env: &Env) -> String {
    delete_headless_client(env, true);
    env.apply(&fixture("headless.yaml").replace("NAMESPACE", &env.ns));
    wait(
        "the headless client calling",
        Duration::from_secs(120),
        || {
            let line = kubectl(&["-n", &env.ns, "logs", HEADLESS_CLIENT, "--tail", "1"]).stdout;
            let v: Value = serde_json::from_slice(&line).ok()?;
            (v["ok"].as_u64()? > 0).then_some(())
        },
    );
    env.pod_field(HEADLESS_CLIENT, "{.status.podIP}")
}

fn headless_tally(env: &Env) -> Tally {
    last_tally(env, HEADLESS_CLIENT).unwrap_or_else(|| Tally::from(&Value::Null))
}

/// Which app pods' agents hold a connection from `ip`.
fn agents_with_peer(env: &Env, ip: &str) -> BTreeSet<String> {
    env.app_pods()
        .into_keys()
        .filter(|pod| {
            let conns: Value = agent_get(&pod_ip(env, pod), "/connections")
                .and_then(|b| serde_json::from_str(&b).ok())
                .unwrap_or(Value::Null);
            conns.as_array().into_iter().flatten().any(|c| {
                c["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("{ip}:")))
            })
        })
        .collect()
}

/// Clients that dial pod IPs, as a headless Service's name gives them:
/// around the agent in namedPort interception (the policy's status names
/// the Service), through it in redirect interception, where deleting a pod
/// fails none of their calls and their connection gets the drain's GOAWAY.
fn interception(env: &mut Env) {
    env.apply(fixture("headless.yaml").split("\n---\n").next().unwrap());
    let kap = wait(
        "the policy to report the headless Service",
        Duration::from_secs(90),
        || {
            let v = env.json(&["get", "kap", "echo"]);
            (v["status"]["bypassingServices"] == serde_json::json!(["echo-headless"])).then_some(v)
        },
    );
    let bypassed = kap["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Bypassed")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(bypassed["status"], "True", "{kap}");
    env.note(format!(
        "namedPort interception, headless Service added: Bypassed {} ({})",
        bypassed["status"], bypassed["message"]
    ));
    env.note_kap();
    let client_ip = start_headless_client(env);
    thread::sleep(Duration::from_secs(3));
    let through = agents_with_peer(env, &client_ip);
    env.note(format!(
        "namedPort: the headless client ({client_ip}) is connected through {} of 3 agents",
        through.len()
    ));
    assert!(
        through.is_empty(),
        "in namedPort mode the headless client reached agents {through:?}"
    );

    // Redirect interception: the same clients go through the agents.
    env.patch_policy(r#"{"spec":{"interception":"redirect"}}"#);
    // The running pods keep their namedPort injection: still reported.
    wait(
        "the policy to report redirect",
        Duration::from_secs(90),
        || {
            let v = env.json(&["get", "kap", "echo"]);
            (v["status"]["interception"] == "redirect").then_some(())
        },
    );
    // The headless client dials the old pods' apps directly, around their
    // agents, until it re-resolves the name: it shows what goaway cannot
    // help without interception (reported only).
    let headless_before = headless_tally(env);
    let failed = rollout(env, "rollout into redirect interception", true).failed;
    let headless_after = headless_tally(env);
    env.note(format!(
        "  the headless client meanwhile (on the old pods, around their agents, until it re-resolved): {} calls, {} failed",
        (headless_after.ok + headless_after.failed) - (headless_before.ok + headless_before.failed),
        headless_after.failed - headless_before.failed
    ));
    assert_eq!(
        failed, 0,
        "calls failed during the rollout into redirect mode"
    );
    wait(
        "the policy to report no bypass once every pod redirects",
        Duration::from_secs(90),
        || {
            let v = env.json(&["get", "kap", "echo"]);
            v["status"]["bypassingServices"].is_null().then_some(())
        },
    );
    env.note_kap();
    for pod in env.app_pods().keys() {
        let init = env.pod_field(pod, "{.spec.initContainers[*].name}");
        assert!(
            init.contains("goaway-intercept goaway-agent"),
            "{pod} has no intercept init container before the agent: {init}"
        );
        let log = env.k(&["logs", pod, "-c", "goaway-intercept"]);
        assert!(log.contains("now goes to port 15051"), "{pod}: {log}");
    }
    let client_ip = start_headless_client(env);
    let through = wait(
        "the headless client connected through every agent",
        Duration::from_secs(60),
        || {
            let through = agents_with_peer(env, &client_ip);
            (through.len() == 3).then_some(through)
        },
    );
    env.note(format!(
        "redirect: the headless client ({client_ip}) is connected through {} of 3 agents",
        through.len()
    ));

    // Delete a pod: the headless client gets its GOAWAY and fails nothing.
    env.settle();
    let victim = env.app_pods().into_keys().next().expect("a pod");
    let (agent, app) = (
        env.follow(&victim, "goaway-agent"),
        env.follow(&victim, "app"),
    );
    let (before, headless_before) = (env.tallies(), headless_tally(env));
    env.k(&["delete", "pod", &victim]);
    env.wait_replaced(&BTreeSet::from([victim.clone()]));
    thread::sleep(Duration::from_secs(3));
    let (after, headless_after) = (env.tallies(), headless_tally(env));
    let (made, failed, details) = delta(&before, &after);
    let headless_made =
        (headless_after.ok + headless_after.failed) - (headless_before.ok + headless_before.failed);
    let headless_failed = headless_after.failed - headless_before.failed;
    let d = check_pod_drain(&victim, &agent.lines(), &app.lines());
    env.note(format!(
        "redirect, kubectl delete pod: headless client {headless_made} calls, {headless_failed} failed; Service clients {made} calls, {failed} failed; drain {:.2}s, GOAWAY to {} connections",
        d.drain_seconds, d.goaways
    ));
    assert_eq!(
        headless_failed, 0,
        "the headless client's calls failed: {:?}",
        headless_after.details
    );
    assert!(headless_made > 0, "the headless client made no calls");
    assert_eq!(failed, 0, "Service clients' calls failed: {details:?}");
    assert!(
        d.goaways >= 1,
        "the drain sent no GOAWAY, though the headless client was connected through it"
    );

    // Scale-up rebalancing for a client of pod IPs: it re-resolves the
    // name when a connection gets a GOAWAY and round_robin then calls the
    // new pods too; without a GOAWAY it never learns of them. grpc-go
    // resolves at most every 30 s and defers a re-resolution asked for
    // sooner, so the client starts afresh (one resolution) over 30 s
    // before each scale-up — a deferred one from the pods drained before
    // would otherwise find the new pods on its own. It starts before the
    // Service clients (restarted too), so its connections are the oldest
    // on each pod: those a rebalance picks first.
    let fresh_clients = |env: &mut Env| {
        start_headless_client(env);
        env.k(&["delete", "pod", CLIENTS[0], CLIENTS[1]]);
        start_service_clients(env);
        // Past grpc-go's 30 s between resolutions, and the operator's
        // wait after the last termination.
        thread::sleep(goaway_operator::channel::rebalance::AFTER_TERMINATION);
    };
    // Without the policy's maxConnectionAge (3s here), which would cycle
    // every connection, and re-resolve, all along.
    env.patch_policy(
        r#"{"spec":{"rebalance":{"enabled":true,"window":"5s"},"server":{"maxConnectionAge":null,"maxConnectionAgeGrace":null}}}"#,
    );
    fresh_clients(env);
    let on = scale_step(
        env,
        "headless, 3 → 6 with rebalancing",
        6,
        &[HEADLESS_CLIENT],
    );
    env.patch_policy(r#"{"spec":{"rebalance":null}}"#);
    scale_to(env, 3);
    fresh_clients(env);
    let off = scale_step(
        env,
        "headless, 3 → 6 without rebalancing",
        6,
        &[HEADLESS_CLIENT],
    );
    env.note(format!(
        "headless round_robin client, 3 → 6, share on the new pods over seconds 20–30 (even 50%): {:.0}% with rebalancing, {:.0}% without",
        100.0 * on.last_10s,
        100.0 * off.last_10s
    ));
    assert!(
        on.last_10s > off.last_10s,
        "the headless client did not reach the new pods: {:.2} with rebalancing, {:.2} without",
        on.last_10s,
        off.last_10s
    );
    scale_to(env, 3);
    env.patch_policy(
        r#"{"spec":{"server":{"maxConnectionAge":"3s","maxConnectionAgeGrace":"5s"}}}"#,
    );
    delete_headless_client(env, false);
}

/// The README's upgrade and uninstall paths, with the clients calling:
/// the CRD applied, then `helm upgrade` (the operator rolls; running
/// injected pods are left alone; new ones get the new settings); then
/// `helm uninstall` (injected pods keep serving) and a rollout that
/// takes the agent out (the old pods still drain).
fn upgrade_then_uninstall(env: &mut Env, chart: &Chart, fullname: &str) {
    let operator = format!("{fullname}-operator");
    env.settle();
    let before = env.tallies();
    let pods_before: BTreeSet<String> = env.app_pods().into_keys().collect();
    ok(
        "apply the chart's CRD",
        kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            repo_root()
                .join("charts/goaway/crds/keepalivepolicy.yaml")
                .to_str()
                .unwrap(),
        ]),
    );
    ok(
        "helm upgrade",
        helm(&{
            let mut upgrade = vec!["upgrade", &env.release];
            upgrade.extend(chart.args());
            upgrade.extend([
                "-n",
                &env.ns,
                // The new chart's defaults, then the install's values
                // (the README's upgrade command).
                "--reset-then-reuse-values",
                "--set",
                // A change the new pods must show; debug only for the
                // control channel: debug for everything writes enough (a
                // line per upstream connection state, per stream) that the
                // kubelet rotates the agent's log within a minute, and
                // `kubectl logs -f` stops at a rotation — the drain's lines
                // would be lost.
                "agent.logLevel=info\\,goaway_agent::control=debug",
                "--wait",
                "--timeout",
                "4m",
            ]);
            upgrade
        }),
    );
    let deploy = env.json(&["get", "deployment", &operator]);
    assert_eq!(deploy["status"]["readyReplicas"], 2, "{deploy}");
    assert_eq!(deploy["status"]["updatedReplicas"], 2, "{deploy}");
    thread::sleep(Duration::from_secs(3));
    let after = env.tallies();
    let (made, failed, details) = delta(&before, &after);
    let pods_after: BTreeSet<String> = env.app_pods().into_keys().collect();
    assert_eq!(pods_before, pods_after, "the upgrade touched running pods");
    env.note(format!(
        "helm upgrade (agent.logLevel=info,goaway_agent::control=debug): {made} calls, {failed} failed; running pods untouched"
    ));
    assert_eq!(failed, 0, "calls failed during helm upgrade: {details:?}");
    // New pods get the new operator's settings.
    let failed = rollout(env, "rollout after the upgrade", true).failed;
    assert_eq!(
        failed, 0,
        "calls failed during the rollout after the upgrade"
    );
    let pod = env.app_pods().into_keys().next().expect("a pod");
    let level = env.pod_field(
        &pod,
        "{.spec.initContainers[?(@.name==\"goaway-agent\")].env[?(@.name==\"GOAWAY_LOG\")].value}",
    );
    assert_eq!(
        level, "info,goaway_agent::control=debug",
        "{pod}'s agent after the upgrade"
    );

    // Uninstall: the injected pods keep serving through their agents.
    env.settle();
    let before = env.tallies();
    ok(
        "helm uninstall",
        helm(&[
            "uninstall",
            &env.release,
            "-n",
            &env.ns,
            "--wait",
            "--timeout",
            "120s",
        ]),
    );
    thread::sleep(Duration::from_secs(5));
    let after = env.tallies();
    let (made, failed, details) = delta(&before, &after);
    env.note(format!(
        "helm uninstall: {made} calls, {failed} failed; policy and ConfigMap kept"
    ));
    assert_eq!(failed, 0, "calls failed during helm uninstall: {details:?}");
    env.k(&["get", "keepalivepolicy", "echo"]);
    env.k(&["get", "configmap", "goaway-echo"]);
    // Taking goaway out: the policy goes, a rollout brings pods without
    // the agent, and the old ones still drain.
    env.k(&["delete", "keepalivepolicy", "echo"]);
    let Rollout { failed, drains, .. } =
        rollout(env, "rollout after uninstall (agent removed)", true);
    assert_eq!(failed, 0, "calls failed while the agent was taken out");
    assert_eq!(drains.len(), 3);
    for pod in env.app_pods().keys() {
        let init = env.pod_field(pod, "{.spec.initContainers[*].name}");
        assert!(
            !init.contains("goaway-agent"),
            "{pod} still has the agent after uninstall"
        );
    }
}

/// SIGKILLs a container's process from the node, as the OOM killer would.
fn kill_container(id: &str) {
    let address =
        std::env::var("CONTAINERD_ADDRESS").expect("CONTAINERD_ADDRESS (scripts/kube-local env)");
    let out = Command::new("ctr")
        .args([
            "--address",
            &address,
            "-n",
            "k8s.io",
            "tasks",
            "kill",
            "-s",
            "SIGKILL",
            id,
        ])
        .output()
        .expect("ctr");
    assert!(
        out.status.success(),
        "ctr tasks kill {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
