//! Opt-in, against a real API server (`KUBECONFIG`; see
//! `support::cluster`): leader election between two `goaway-operator run`
//! processes on a real Lease. Exactly one leads; a leader that stops
//! gracefully hands over at once, one that is killed within the lease
//! duration; and the Lease's holder history and the processes'
//! `goaway_operator_leader` gauges never show two leaders at once.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use support::cluster::{Operator, TestNamespace, client_or_skip, install_crd};

const LEASE: &str = "goaway-e2e-leader";
const LEASE_SECONDS: u64 = 6;
const RETRY: Duration = Duration::from_secs(1);

/// One observation: the Lease's holder and each process's gauge.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    at: Duration,
    holder: Option<String>,
    leaders: Vec<(String, Option<i64>)>,
}

struct Observer {
    leases: Api<Lease>,
    start: Instant,
    history: Vec<Sample>,
}

impl Observer {
    async fn sample(&mut self, operators: &[(&str, &Operator)]) -> Sample {
        let holder = self
            .leases
            .get_opt(LEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty());
        let mut leaders = Vec::new();
        for (name, op) in operators {
            leaders.push((name.to_string(), op.leader_metric().await));
        }
        let sample = Sample {
            at: self.start.elapsed(),
            holder,
            leaders,
        };
        // Never two leaders by their own account.
        let leading: Vec<_> = sample
            .leaders
            .iter()
            .filter(|(_, m)| *m == Some(1))
            .map(|(n, _)| n.clone())
            .collect();
        assert!(
            leading.len() <= 1,
            "two leaders at once: {sample:?}\n{:#?}",
            self.history
        );
        // A process that says it leads is the Lease's holder.
        if let Some(leader) = leading.first() {
            assert_eq!(
                sample.holder.as_deref(),
                Some(leader.as_str()),
                "{sample:?}"
            );
        }
        self.history.push(sample.clone());
        sample
    }

    /// Samples every 200ms until `leader` holds the Lease and says so;
    /// returns how long that took.
    async fn until_leader(
        &mut self,
        leader: &str,
        operators: &[(&str, &Operator)],
        timeout: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let s = self.sample(operators).await;
            let says = s.leaders.iter().any(|(n, m)| n == leader && *m == Some(1));
            if says && s.holder.as_deref() == Some(leader) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{leader} did not lead within {timeout:?}: {:#?}",
                self.history
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Samples for `period`, checking that `leader` keeps leading.
    async fn steady(&mut self, leader: &str, operators: &[(&str, &Operator)], period: Duration) {
        let start = Instant::now();
        while start.elapsed() < period {
            let s = self.sample(operators).await;
            assert_eq!(s.holder.as_deref(), Some(leader), "{s:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn start(name: &str, ns: &str) -> Operator {
    Operator::start(
        &format!("cluster-leader-{name}"),
        &[
            "--namespace",
            ns,
            "--watch-namespace",
            ns,
            "--identity",
            name,
            "--lease-name",
            LEASE,
            "--lease-duration",
            &format!("{LEASE_SECONDS}s"),
            "--lease-renew-deadline",
            "4s",
            "--lease-retry-period",
            "1s",
            // No webhook configuration exists for these processes: the
            // leader's caBundle patch fails and is only logged.
            "--webhook-config",
            "goaway-e2e-leader-none",
        ],
    )
}

fn sigterm(op: &Operator) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &op.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_elect_one_leader_on_a_real_lease() {
    let Some(client) = client_or_skip("leader election").await else {
        return;
    };
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "leader", json!({})).await;
    let mut observer = Observer {
        leases: Api::namespaced(client.clone(), &ns.name),
        start: Instant::now(),
        history: Vec::new(),
    };
    let generous = Duration::from_secs(60);

    let mut a = start("op-a", &ns.name);
    observer
        .until_leader("op-a", &[("op-a", &a)], generous)
        .await;
    let mut b = start("op-b", &ns.name);
    // b is up (its admin server answers) and follows.
    support::cluster::wait("op-b's metrics", async || b.leader_metric().await).await;
    observer
        .steady(
            "op-a",
            &[("op-a", &a), ("op-b", &b)],
            Duration::from_secs(LEASE_SECONDS + 2),
        )
        .await;
    assert_eq!(b.leader_metric().await, Some(0), "{}", b.log());

    // A graceful stop releases the Lease: b takes over well before the
    // lease duration runs out.
    sigterm(&a);
    let handover = observer
        .until_leader("op-b", &[("op-a", &a), ("op-b", &b)], generous)
        .await;
    let _ = a.child.wait();
    assert!(
        handover < Duration::from_secs(LEASE_SECONDS),
        "released Lease taken over after {handover:?}\n{}",
        b.log()
    );

    // A killed leader renews no more: the follower takes over once the
    // record stood unchanged for the lease duration (plus a retry period,
    // and slack for a loaded machine) — and not before.
    a = start("op-a", &ns.name);
    support::cluster::wait("op-a's metrics", async || a.leader_metric().await).await;
    observer
        .steady(
            "op-b",
            &[("op-a", &a), ("op-b", &b)],
            Duration::from_secs(2),
        )
        .await;
    let killed = Instant::now();
    b.kill();
    observer
        .until_leader("op-a", &[("op-a", &a)], generous)
        .await;
    let handover_since_kill = killed.elapsed();
    assert!(
        handover_since_kill >= Duration::from_secs(LEASE_SECONDS) - RETRY * 2,
        "took over a live-looking Lease after {handover_since_kill:?}"
    );
    assert!(
        handover_since_kill
            <= Duration::from_secs(LEASE_SECONDS) + RETRY * 2 + Duration::from_secs(4),
        "kill → new leader took {handover_since_kill:?}\n{}",
        a.log()
    );

    // The holder history: op-a, op-b, op-a — each change a handover, with
    // the gauges checked at every sample above.
    let mut holders: Vec<&str> = Vec::new();
    for s in &observer.history {
        if let Some(h) = s.holder.as_deref()
            && holders.last() != Some(&h)
        {
            holders.push(h);
        }
    }
    assert_eq!(holders, ["op-a", "op-b", "op-a"], "{:#?}", observer.history);
    let lease = observer.leases.get(LEASE).await.expect("the Lease");
    let transitions = lease
        .spec
        .and_then(|s| s.lease_transitions)
        .unwrap_or_default();
    assert!(transitions >= 2, "leaseTransitions {transitions}");
    drop(a);
    ns.delete().await;
}
