//! Scale-up rebalancing, the operator's half: telling a Service's grown
//! ready set from a rollout, and telling the old pods' agents.
//!
//! gRPC clients keep their connections, so pods added by a scale-up get
//! no traffic until connections happen to move. The operator sees the
//! cause: a Service's ready endpoints grow from N to M. It then tells each
//! old pod — ready when the count was last at or below the baseline with
//! nothing terminating, and still ready
//! (`Message::Rebalance { from: N, to: M }`); a new pod is not told, as
//! its agent would send on the reconnects the rebalance is for,
//! and each agent whose policy enables it sends GOAWAY to about `1 - N/M`
//! of its connections, spread over its window (the agent's `rebalance`
//! module); the clients reconnect, and kube-proxy (or DNS) spreads the new
//! connections over all M pods.
//!
//! What counts as a scale-up, per Service ([`Rebalancer`]):
//!
//! - growth is measured from the *baseline*: the last ready count that
//!   stood still for [`SETTLE`] with nothing of the Service terminating;
//!   a Service first seen starts there, and growth from zero moves
//!   nothing;
//! - a count above the baseline is judged once the counts have stood
//!   still for [`SETTLE`] (a scale-up's pods turn ready one by one: one
//!   rebalance for all of them), or [`MAX_SETTLE`] after it started
//!   growing, whichever is first; a count below it the same way, and a
//!   fall that stands becomes the baseline (a scale-down moves nothing);
//! - while anything of the Service is terminating, and for
//!   [`AFTER_TERMINATION`] after the last endpoint that was, nothing is
//!   decided and the baseline stays: a rollout replaces pods one for one,
//!   its ready count dipping and recovering (or its surge pod ready while
//!   an old one terminates), and those connections move anyway when the
//!   old pods drain. A scale-up that follows a termination closely is
//!   judged that much later, against the count before it. A pod that was unready for a while without terminating (its
//!   app crashed) lowers the baseline, and its return is a growth: it
//!   lost its connections, and is as empty as a new pod.
//!
//! The decision is pure (tested on the paused clock); the namespace's
//! EndpointSlice watch ([`super::endpoints`]) feeds it and carries it out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use goaway_transport::Policy;
use goaway_transport::policy::Strictness;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{info, warn};

use super::endpoints::ServiceCount;
use super::events::{create_once, policy_ref};
use super::hub::{Hub, PolicyKey};
use crate::crd::LastRebalance;
use crate::{KeepalivePolicy, MANAGER};

/// How long a grown ready count must stay still before it is acted on.
pub const SETTLE: Duration = Duration::from_secs(3);
/// The longest a growing count is waited for.
pub const MAX_SETTLE: Duration = Duration::from_secs(20);
/// How long after the last terminating endpoint nothing is judged: a
/// rollout terminates a pod every few seconds, and between one old pod's
/// endpoint going and the next new pod's turning ready its count stands
/// one short with nothing terminating.
pub const AFTER_TERMINATION: Duration = Duration::from_secs(30);

/// A Service that grew: tell its old pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The Service.
    pub service: String,
    /// Its ready pods before the growth.
    pub from: u32,
    /// Its ready pods now.
    pub to: u32,
    /// The pods of the baseline (uids, sorted): the ones to tell, if
    /// still ready.
    pub old: Vec<String>,
}

/// The pods ready in a Service now (uids, sorted).
pub type ReadyPods<'a> = &'a dyn Fn(&str) -> Vec<String>;

#[derive(Clone, Debug)]
struct Tracked {
    /// The ready count growth is measured from: the last count that
    /// stood still with nothing terminating.
    baseline: u32,
    /// The pods ready when the count was last seen at or below the
    /// baseline with nothing terminating: the old pods of a growth.
    old: Vec<String>,
    /// The count last seen, and since when.
    count: ServiceCount,
    changed_at: Instant,
    /// Since when the ready count has been above the baseline.
    growing_since: Option<Instant>,
    /// When an endpoint of the Service was last seen terminating.
    terminated_at: Option<Instant>,
}

impl Tracked {
    /// When this Service is next judged: a growth once the count stood
    /// still for [`SETTLE`] (at most [`MAX_SETTLE`] after it began), a
    /// fall once it stood still for [`SETTLE`].
    fn judge_at(&self) -> Option<Instant> {
        let settled = self.changed_at + SETTLE;
        let at = match self.count.ready.cmp(&self.baseline) {
            std::cmp::Ordering::Greater => settled.min(self.growing_since? + MAX_SETTLE),
            std::cmp::Ordering::Less => settled,
            std::cmp::Ordering::Equal => return None,
        };
        Some(match self.terminated_at {
            Some(t) => at.max(t + AFTER_TERMINATION),
            None => at,
        })
    }
}

/// One namespace's Services, as [`Rebalancer::observe`] last saw them.
#[derive(Debug, Default)]
pub struct Rebalancer {
    services: HashMap<String, Tracked>,
}

impl Rebalancer {
    /// The namespace's EndpointSlices changed (or were listed): `counts`
    /// is every Service's count now, `ready` its pods.
    pub fn observe(
        &mut self,
        now: Instant,
        counts: &HashMap<String, ServiceCount>,
        ready: ReadyPods,
    ) {
        self.services
            .retain(|service, _| counts.contains_key(service));
        for (service, count) in counts {
            let tracked = self
                .services
                .entry(service.clone())
                .or_insert_with(|| Tracked {
                    baseline: count.ready,
                    old: ready(service),
                    count: *count,
                    changed_at: now,
                    growing_since: None,
                    terminated_at: None,
                });
            if count.terminating > 0 {
                tracked.terminated_at = Some(now);
            }
            if tracked.count != *count {
                tracked.count = *count;
                tracked.changed_at = now;
            }
            if count.ready > tracked.baseline {
                tracked.growing_since.get_or_insert(now);
            } else {
                tracked.growing_since = None;
                // Not grown, nothing leaving: these are the pods a growth
                // would be measured from (after a rollout, its new pods;
                // the count alone never moved).
                if count.terminating == 0 {
                    tracked.old = ready(service);
                }
            }
        }
    }

    /// The decisions due at `now`, given the counts now. A Service judged
    /// with something terminating is judged again later (a rollout, a
    /// scale-down or a deletion is under way); otherwise its baseline
    /// becomes its count (and `ready` its pods), and a growth is a
    /// decision.
    pub fn due(
        &mut self,
        now: Instant,
        counts: &HashMap<String, ServiceCount>,
        ready: ReadyPods,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for (service, tracked) in &mut self.services {
            if tracked.judge_at().is_none_or(|at| now < at) {
                continue;
            }
            let count = counts.get(service).copied().unwrap_or_default();
            if count.terminating > 0 {
                tracked.terminated_at = Some(now);
                continue;
            }
            let old = std::mem::replace(&mut tracked.old, ready(service));
            if tracked.baseline > 0 && count.ready > tracked.baseline {
                out.push(Decision {
                    service: service.clone(),
                    from: tracked.baseline,
                    to: count.ready,
                    old,
                });
            }
            tracked.baseline = count.ready;
            tracked.count = count;
            tracked.growing_since = None;
        }
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    /// When [`Rebalancer::due`] next has something to judge.
    pub fn next_due(&self) -> Option<Instant> {
        self.services.values().filter_map(Tracked::judge_at).min()
    }
}

/// Records a scale-up the agents of a policy with `rebalance.enabled`
/// were told of: an Event on the policy (`Rebalanced`) and its
/// `status.lastRebalance`. Every replica with agents in the namespace
/// judges the same growth; the Event's name is made of the policy, the
/// Service, the counts and the minute, so the second replica's create is
/// refused as a duplicate, and both write the same status. Failures are
/// logged: the agents were told regardless.
pub async fn publish(
    client: Client,
    hub: Arc<Hub>,
    decision: Decision,
    told: Vec<(PolicyKey, usize)>,
    instance: String,
) {
    let now = k8s_openapi::jiff::Timestamp::now();
    // Each replica tells the agents streaming from it; the counts of
    // `told` are this replica's, so none is recorded as the whole.
    for ((ns, policy), _) in told {
        let enabled = hub.policy(&ns, &policy).is_some_and(|text| {
            Policy::load(&text, Strictness::Permissive)
                .is_ok_and(|(p, _)| p.rebalance.enabled == Some(true))
        });
        if !enabled {
            continue;
        }
        let uid = hub.policy_uid(&ns, &policy);
        let percent = 100 - 100 * decision.from / decision.to.max(1);
        let note = format!(
            "Service {} grew from {} to {} ready pods: the old pods' agents were told to move about {percent}% of their connections to the new pods",
            decision.service, decision.from, decision.to
        );
        let name = format!(
            "{policy}.rebalance.{}.{}-{}.{}",
            decision.service,
            decision.from,
            decision.to,
            now.as_second() / 60
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Rebalance".into()),
            reason: Some("Rebalanced".into()),
            type_: Some("Normal".into()),
            note: Some(note.clone()),
            reporting_controller: Some(MANAGER.into()),
            reporting_instance: Some(instance.clone()),
            regarding: Some(policy_ref(&ns, &policy, uid)),
            ..Default::default()
        };
        match create_once(&client, &event).await {
            Ok(true) => info!(namespace = ns, policy, %note, "rebalance recorded"),
            Ok(false) => {}
            Err(error) => {
                warn!(namespace = ns, policy, %error, "publishing the rebalance Event failed")
            }
        }
        let status = serde_json::json!({
            "apiVersion": "goaway.dev/v1alpha1",
            "kind": "KeepalivePolicy",
            "status": {"lastRebalance": LastRebalance {
                service: decision.service.clone(),
                from: decision.from,
                to: decision.to,
                time: now.to_string(),
            }},
        });
        let params = PatchParams::apply(REBALANCE_MANAGER).force();
        if let Err(error) = Api::<KeepalivePolicy>::namespaced(client.clone(), &ns)
            .patch_status(&policy, &params, &Patch::Apply(status))
            .await
        {
            warn!(namespace = ns, policy, %error, "writing status.lastRebalance failed");
        }
    }
}

/// The field manager of `status.lastRebalance` (the controller owns the
/// rest of the status).
pub const REBALANCE_MANAGER: &str = "goaway-operator-rebalance";

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(services: &[(&str, u32, u32)]) -> HashMap<String, ServiceCount> {
        services
            .iter()
            .map(|(s, ready, terminating)| {
                (
                    s.to_string(),
                    ServiceCount {
                        ready: *ready,
                        terminating: *terminating,
                    },
                )
            })
            .collect()
    }

    fn decision(service: &str, from: u32, to: u32) -> Decision {
        Decision {
            service: service.into(),
            from,
            to,
            old: vec![],
        }
    }

    /// Tests of counts alone: no pod known.
    fn no_pods(_: &str) -> Vec<String> {
        vec![]
    }

    #[tokio::test(start_paused = true)]
    async fn a_scale_up_is_one_decision_once_the_count_settles() {
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 3, 0)]), &no_pods);
        assert_eq!(r.next_due(), None, "first sight is the baseline");
        // 3 → 6, one pod at a time, a second apart.
        for (i, ready) in [4, 5, 6].into_iter().enumerate() {
            r.observe(
                t0 + Duration::from_secs(i as u64),
                &counts(&[("api", ready, 0)]),
                &no_pods,
            );
        }
        let now = counts(&[("api", 6, 0)]);
        assert_eq!(r.next_due(), Some(t0 + Duration::from_secs(2) + SETTLE));
        assert!(
            r.due(t0 + Duration::from_secs(4), &now, &no_pods)
                .is_empty()
        );
        assert_eq!(
            r.due(t0 + Duration::from_secs(2) + SETTLE, &now, &no_pods),
            [decision("api", 3, 6)]
        );
        // Judged once: the baseline is 6 now.
        assert_eq!(r.next_due(), None);
        assert!(
            r.due(t0 + Duration::from_secs(60), &now, &no_pods)
                .is_empty()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rollout_is_no_scale_up() {
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 3, 0)]), &no_pods);
        // The surge pod is ready, then an old one terminates: back to 3.
        r.observe(
            t0 + Duration::from_secs(1),
            &counts(&[("api", 4, 0)]),
            &no_pods,
        );
        r.observe(
            t0 + Duration::from_millis(1100),
            &counts(&[("api", 3, 1)]),
            &no_pods,
        );
        assert_eq!(r.next_due(), None);
        // An old pod slow to go: ready 4 while another terminates at the
        // deadline — still a rollout.
        r.observe(
            t0 + Duration::from_secs(5),
            &counts(&[("api", 4, 0)]),
            &no_pods,
        );
        let at = r.next_due().unwrap();
        assert!(r.due(at, &counts(&[("api", 4, 1)]), &no_pods).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fall_that_stands_is_the_new_baseline() {
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 4, 0)]), &no_pods);
        // Scaled down: two terminate, then their endpoints go.
        r.observe(t0, &counts(&[("api", 2, 2)]), &no_pods);
        r.observe(
            t0 + Duration::from_secs(1),
            &counts(&[("api", 2, 0)]),
            &no_pods,
        );
        let at = r.next_due().unwrap();
        assert_eq!(
            at,
            t0 + AFTER_TERMINATION,
            "judged once terminations are long over"
        );
        assert!(r.due(at, &counts(&[("api", 2, 0)]), &no_pods).is_empty());
        assert_eq!(r.next_due(), None);
        r.observe(
            at + Duration::from_secs(1),
            &counts(&[("api", 4, 0)]),
            &no_pods,
        );
        let at = r.next_due().unwrap();
        assert_eq!(
            r.due(at, &counts(&[("api", 4, 0)]), &no_pods),
            [decision("api", 2, 4)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rollout_dipping_and_recovering_is_no_scale_up() {
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 6, 0)]), &no_pods);
        // For a minute pods are replaced one by one: one fewer ready while
        // an old one terminates, still one fewer for 4 s once its endpoint
        // is gone and before the new pod turns ready, then six again.
        let mut t = t0;
        for _ in 0..8 {
            t += Duration::from_secs(1);
            r.observe(t, &counts(&[("api", 5, 1)]), &no_pods);
            t += Duration::from_secs(2);
            r.observe(t, &counts(&[("api", 5, 0)]), &no_pods);
            t += Duration::from_secs(4);
            assert!(
                r.next_due().is_none_or(|at| at > t),
                "a dip during a rollout is judged"
            );
            r.observe(t, &counts(&[("api", 6, 0)]), &no_pods);
        }
        assert_eq!(r.next_due(), None);
        // Judged while still terminating: later again, not lowered.
        r.observe(t, &counts(&[("api", 5, 1)]), &no_pods);
        let at = r.next_due().unwrap();
        assert!(r.due(at, &counts(&[("api", 5, 1)]), &no_pods).is_empty());
        r.observe(at, &counts(&[("api", 6, 0)]), &no_pods);
        assert_eq!(r.next_due(), None, "back at the baseline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_dip_without_termination_moves_nothing() {
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 3, 0)]), &no_pods);
        r.observe(
            t0 + Duration::from_secs(1),
            &counts(&[("api", 2, 0)]),
            &no_pods,
        );
        r.observe(
            t0 + Duration::from_secs(2),
            &counts(&[("api", 3, 0)]),
            &no_pods,
        );
        assert_eq!(r.next_due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn growth_from_nothing_moves_nothing() {
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 0, 0)]), &no_pods);
        r.observe(
            t0 + Duration::from_secs(1),
            &counts(&[("api", 3, 0)]),
            &no_pods,
        );
        let at = r.next_due().unwrap();
        assert!(r.due(at, &counts(&[("api", 3, 0)]), &no_pods).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_still_growing_is_judged_at_the_longest_wait() {
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 2, 0)]), &no_pods);
        let mut ready = 2;
        let mut t = t0;
        while t < t0 + MAX_SETTLE {
            ready += 1;
            t += Duration::from_secs(2);
            r.observe(t, &counts(&[("api", ready, 0)]), &no_pods);
        }
        assert_eq!(r.next_due(), Some(t0 + Duration::from_secs(2) + MAX_SETTLE));
        let at = r.next_due().unwrap();
        assert_eq!(
            r.due(at, &counts(&[("api", ready, 0)]), &no_pods),
            [decision("api", 2, ready)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn services_are_judged_apart_and_forgotten_when_gone() {
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 2, 0), ("admin", 2, 0)]), &no_pods);
        r.observe(
            t0 + Duration::from_secs(1),
            &counts(&[("api", 4, 0), ("admin", 2, 0)]),
            &no_pods,
        );
        let at = r.next_due().unwrap();
        assert_eq!(
            r.due(at, &counts(&[("api", 4, 0), ("admin", 2, 0)]), &no_pods),
            [decision("api", 2, 4)]
        );
        r.observe(at, &counts(&[("api", 4, 0)]), &no_pods);
        // admin comes back: first sight again, no decision.
        r.observe(at, &counts(&[("api", 4, 0), ("admin", 5, 0)]), &no_pods);
        assert_eq!(r.next_due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pods_told_are_those_of_the_baseline() {
        use std::cell::RefCell;
        let pods = RefCell::new(vec!["a".to_string(), "b".to_string()]);
        let ready = |_: &str| pods.borrow().clone();
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 2, 0)]), &ready);
        pods.borrow_mut().extend(["c".to_string(), "d".to_string()]);
        r.observe(
            t0 + Duration::from_secs(1),
            &counts(&[("api", 4, 0)]),
            &ready,
        );
        let at = r.next_due().unwrap();
        let decisions = r.due(at, &counts(&[("api", 4, 0)]), &ready);
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].old, ["a", "b"], "the first sight's pods");
        // The next growth is told to all four, not to the one it adds.
        pods.borrow_mut().push("e".to_string());
        r.observe(
            at + Duration::from_secs(1),
            &counts(&[("api", 5, 0)]),
            &ready,
        );
        let at = r.next_due().unwrap();
        let decisions = r.due(at, &counts(&[("api", 5, 0)]), &ready);
        assert_eq!(
            (decisions[0].from, decisions[0].to, &decisions[0].old[..]),
            (4, 5, &["a", "b", "c", "d"].map(String::from)[..])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_rollout_its_new_pods_are_the_old_ones_of_a_growth() {
        use std::cell::RefCell;
        let pods = RefCell::new(vec!["a".to_string(), "b".to_string()]);
        let ready = |_: &str| pods.borrow().clone();
        let mut r = Rebalancer::default();
        let t0 = Instant::now();
        r.observe(t0, &counts(&[("api", 2, 0)]), &ready);
        // A rollout: a → c, b → d, one for one; the count never moves
        // from 2, so nothing is judged.
        for (t, (gone, new)) in [("a", "c"), ("b", "d")].into_iter().enumerate() {
            let at = t0 + Duration::from_secs(10 * t as u64 + 1);
            pods.borrow_mut().retain(|p| p != gone);
            r.observe(at, &counts(&[("api", 1, 1)]), &ready);
            pods.borrow_mut().push(new.to_string());
            r.observe(
                at + Duration::from_secs(2),
                &counts(&[("api", 2, 1)]),
                &ready,
            );
            r.observe(
                at + Duration::from_secs(4),
                &counts(&[("api", 2, 0)]),
                &ready,
            );
        }
        assert_eq!(r.next_due(), None);
        // Then a scale-up to 4: c and d are told.
        let later = t0 + Duration::from_secs(60);
        pods.borrow_mut().extend(["e".to_string(), "f".to_string()]);
        r.observe(later, &counts(&[("api", 4, 0)]), &ready);
        let at = r.next_due().unwrap();
        let decisions = r.due(at, &counts(&[("api", 4, 0)]), &ready);
        assert_eq!(
            (decisions[0].from, decisions[0].to, &decisions[0].old[..]),
            (2, 4, &["c", "d"].map(String::from)[..])
        );
    }
}
