//! Drains the agents report, recorded where they outlive the pod: an
//! Event on the pod, and the policy's `status.lastRollout`.
//!
//! An agent writes one [`Report::Drained`] line on its stream when its
//! drain finishes ([`goaway_transport::control`]). The stream is
//! authenticated, so a report is about the pod its token names and no
//! other: the agent needs no API rights of its own (least privilege), and
//! a pod can only speak for itself. What one pod can do is bounded: at
//! most [`MAX_REPORTS_PER_STREAM`] lines per stream (more ends the
//! stream), drains numbered up to [`MAX_DRAINS_PER_POD`] (an agent drains
//! once per stop, or again after an expired drain), and each drain counted
//! once however many replicas hear of it: the Event's name is the pod's
//! and the drain's number, and the replica whose create wins is the one
//! that counts it.
//!
//! The policy's `lastRollout` sums the drains of one rollout: the drains
//! of pods of one template revision (a Deployment's `pod-template-hash`,
//! see [`super::auth::revision`]), each less than [`ROLLOUT_GAP`] after
//! the one before. A drain of another revision, or a later one, starts a
//! new sum (two workloads of one policy rolled out at once take turns).
//! Its `result` is what `kubectl get kap` shows.

use std::sync::Arc;
use std::time::Duration;

use goaway_transport::control::{DrainReport, DrainSummary};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use super::auth::PodIdentity;
use super::events::{create_once, policy_ref};
use crate::crd::LastRollout;
use crate::metrics::Metrics;
use crate::{KeepalivePolicy, MANAGER};

/// The most report lines one stream may carry; an agent writes one per
/// finished drain.
pub const MAX_REPORTS_PER_STREAM: usize = 4;
/// The highest drain number recorded for one pod.
pub const MAX_DRAINS_PER_POD: u64 = 8;
/// A drain this long after the policy's last one starts a new rollout.
pub const ROLLOUT_GAP: Duration = Duration::from_secs(10 * 60);
/// The field manager of `status.lastRollout` (the controller owns the
/// rest of the status).
pub const DRAINS_MANAGER: &str = "goaway-operator-drains";
/// How often a status write that lost a race is tried again.
const STATUS_ATTEMPTS: usize = 5;

/// Where reported drains go.
pub type RecordDrain = Box<dyn Fn(PodIdentity, DrainReport) + Send + Sync>;

/// Takes the agents' drain reports.
pub struct Drains {
    record: RecordDrain,
    metrics: Arc<Metrics>,
}

impl Drains {
    /// Reports recorded by `record`.
    pub fn new(metrics: Arc<Metrics>, record: RecordDrain) -> Drains {
        Drains { record, metrics }
    }

    /// Reports recorded in the cluster with `client`, as `instance`.
    pub fn in_cluster(client: Client, metrics: Arc<Metrics>, instance: String) -> Drains {
        let record = move |pod, report| {
            tokio::spawn(publish(client.clone(), pod, report, instance.clone()));
        };
        Drains::new(metrics, Box::new(record))
    }

    /// A report from `pod`'s stream: recorded unless its drain number is
    /// out of range.
    pub fn report(&self, pod: &PodIdentity, report: DrainReport) {
        if report.drain == 0 || report.drain > MAX_DRAINS_PER_POD {
            self.metrics.drain_report("refused");
            return debug!(
                namespace = pod.namespace,
                pod = pod.name,
                drain = report.drain,
                "drain report refused: drain number out of range"
            );
        }
        self.metrics.drain_report("accepted");
        (self.record)(pod.clone(), report);
    }
}

/// The Event's text for a drain that did `report`.
pub fn note(report: &DrainSummary) -> String {
    format!(
        "drained {} connection(s) in {:.2}s (GOAWAY after {:.2}s, on {}): {} stream(s) completed, {} connection(s) hard-closed, {} stream(s) cut",
        report.connections_drained + report.connections_hard_closed,
        report.duration_seconds,
        report.goaway_after_seconds,
        report.goaway_on.as_str(),
        report.streams_completed,
        report.connections_hard_closed,
        report.streams_cut,
    )
}

/// `last` with one more drain, of a pod of `revision`, reported at
/// `now`: a new sum when `last` is empty, of another revision, or its
/// last drain was [`ROLLOUT_GAP`] or more before.
pub fn add(
    last: Option<&LastRollout>,
    revision: &str,
    report: &DrainSummary,
    now: Timestamp,
) -> LastRollout {
    let current = last.filter(|l| {
        l.revision == revision
            && l.last_drain
                .parse::<Timestamp>()
                .is_ok_and(|t| now.duration_since(t).unsigned_abs() < ROLLOUT_GAP)
    });
    let mut sum = current.cloned().unwrap_or_else(|| LastRollout {
        started: now.to_string(),
        revision: revision.to_string(),
        ..LastRollout::default()
    });
    sum.last_drain = now.to_string();
    sum.pods += 1;
    sum.connections_drained += report.connections_drained;
    sum.streams_completed += report.streams_completed;
    sum.connections_hard_closed += report.connections_hard_closed;
    sum.streams_cut += report.streams_cut;
    sum.result = format!(
        "{} drained, {} cut",
        plural(sum.pods, "pod"),
        plural(sum.streams_cut, "stream")
    );
    sum
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The Event's name: the pod's and the drain's, so that the replicas
/// agree on it (a pod name is at most 253 characters; the suffix fits).
fn event_name(pod: &PodIdentity, drain: u64) -> String {
    let prefix: String = pod.name.chars().take(230).collect();
    format!("{prefix}.drained.{drain}")
}

/// Records one drain: the Event on the pod, then, if this replica created
/// it (another did if it exists), the policy's sum.
async fn publish(client: Client, pod: PodIdentity, report: DrainReport, instance: String) {
    let now = Timestamp::now();
    let note = note(&report.summary);
    let warning = report.summary.connections_hard_closed > 0 || report.summary.streams_cut > 0;
    let event = Event {
        metadata: ObjectMeta {
            name: Some(event_name(&pod, report.drain)),
            namespace: Some(pod.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("Drain".into()),
        reason: Some(
            if warning {
                "DrainCutStreams"
            } else {
                "Drained"
            }
            .into(),
        ),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        note: Some(note.clone()),
        reporting_controller: Some(MANAGER.into()),
        reporting_instance: Some(instance),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        }),
        related: Some(policy_ref(&pod.namespace, &pod.policy, None)),
        ..Default::default()
    };
    match create_once(&client, &event).await {
        Ok(true) => info!(namespace = pod.namespace, pod = pod.name, %note, "drain recorded"),
        Ok(false) => {
            return debug!(
                namespace = pod.namespace,
                pod = pod.name,
                drain = report.drain,
                "drain already recorded"
            );
        }
        // The sum counts what has an Event; without one it would count a
        // drain that a second report could count again.
        Err(error) => {
            return warn!(namespace = pod.namespace, pod = pod.name, %error, "recording the drain's Event failed");
        }
    }
    let policies = Api::<KeepalivePolicy>::namespaced(client, &pod.namespace);
    for _ in 0..STATUS_ATTEMPTS {
        let policy = match policies.get_status(&pod.policy).await {
            Ok(policy) => policy,
            Err(error) => {
                return warn!(namespace = pod.namespace, policy = pod.policy, %error, "reading the policy for status.lastRollout failed");
            }
        };
        let last = policy.status.as_ref().and_then(|s| s.last_rollout.as_ref());
        let sum = add(last, &pod.revision, &report.summary, now);
        // The resourceVersion makes the write conditional: a sum another
        // replica wrote meanwhile is read again, not overwritten.
        let status = serde_json::json!({
            "apiVersion": "goaway.dev/v1alpha1",
            "kind": "KeepalivePolicy",
            "metadata": {"resourceVersion": policy.metadata.resource_version},
            "status": {"lastRollout": sum},
        });
        let params = PatchParams::apply(DRAINS_MANAGER).force();
        match policies
            .patch_status(&pod.policy, &params, &Patch::Apply(status))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(error) => {
                return warn!(namespace = pod.namespace, policy = pod.policy, %error, "writing status.lastRollout failed");
            }
        }
    }
    warn!(
        namespace = pod.namespace,
        policy = pod.policy,
        "writing status.lastRollout lost the race {STATUS_ATTEMPTS} times; this drain is not counted"
    );
}

#[cfg(test)]
mod tests {
    use goaway_transport::control::GoawayOn;

    use super::*;

    fn report(streams_cut: u64) -> DrainSummary {
        DrainSummary {
            connections_drained: 3,
            streams_completed: 40,
            connections_hard_closed: u64::from(streams_cut > 0),
            streams_cut,
            duration_seconds: 1.6,
            goaway_after_seconds: 1.5,
            goaway_on: GoawayOn::Evidence,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn drains_within_the_gap_add_up_and_a_later_one_starts_over() {
        let first = add(None, "a", &report(0), at("2026-12-07T10:00:00Z"));
        assert_eq!(first.started, "2026-12-07T10:00:00Z");
        assert_eq!(first.result, "1 pod drained, 0 streams cut");
        let second = add(Some(&first), "a", &report(2), at("2026-12-07T10:09:59Z"));
        assert_eq!(
            (
                second.pods,
                second.connections_drained,
                second.streams_completed
            ),
            (2, 6, 80)
        );
        assert_eq!((second.connections_hard_closed, second.streams_cut), (1, 2));
        assert_eq!(second.started, "2026-12-07T10:00:00Z");
        assert_eq!(second.last_drain, "2026-12-07T10:09:59Z");
        assert_eq!(second.result, "2 pods drained, 2 streams cut");
        // Measured from the last drain, not the first.
        let third = add(Some(&second), "a", &report(1), at("2026-12-07T10:19:58Z"));
        assert_eq!((third.pods, third.streams_cut), (3, 3));
        let next = add(Some(&third), "a", &report(0), at("2026-12-07T10:29:58Z"));
        assert_eq!(next.started, "2026-12-07T10:29:58Z");
        assert_eq!(next.result, "1 pod drained, 0 streams cut");
        // The next rollout drains the pods the last one made: another
        // revision, however soon.
        let other = add(Some(&next), "b", &report(0), at("2026-12-07T10:29:59Z"));
        assert_eq!((other.revision.as_str(), other.pods), ("b", 1));
        // A status another version wrote, unreadable: a new sum.
        let garbled = LastRollout {
            last_drain: "yesterday".into(),
            pods: 9,
            ..LastRollout::default()
        };
        assert_eq!(
            add(Some(&garbled), "", &report(0), at("2026-12-07T10:00:00Z")).pods,
            1
        );
    }

    #[test]
    fn the_note_says_what_the_drain_did() {
        assert_eq!(
            note(&report(2)),
            "drained 4 connection(s) in 1.60s (GOAWAY after 1.50s, on evidence): 40 stream(s) completed, 1 connection(s) hard-closed, 2 stream(s) cut"
        );
    }

    #[test]
    fn event_names_are_valid_and_per_drain() {
        let pod = PodIdentity {
            namespace: "ns".into(),
            name: "a".repeat(253),
            uid: "u".into(),
            policy: "p".into(),
            revision: String::new(),
        };
        let name = event_name(&pod, MAX_DRAINS_PER_POD);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.ends_with(".drained.8"));
        assert_ne!(event_name(&pod, 1), event_name(&pod, 2));
    }

    #[test]
    fn reports_with_a_drain_number_out_of_range_are_refused() {
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = recorded.clone();
        let drains = Drains::new(
            Arc::new(Metrics::default()),
            Box::new(move |pod: PodIdentity, r: DrainReport| {
                sink.lock().unwrap().push((pod.name, r.drain))
            }),
        );
        let pod = PodIdentity {
            namespace: "ns".into(),
            name: "api-0".into(),
            uid: "u".into(),
            policy: "p".into(),
            revision: String::new(),
        };
        for drain in [0, 1, MAX_DRAINS_PER_POD, MAX_DRAINS_PER_POD + 1, u64::MAX] {
            let summary = report(0);
            drains.report(&pod, DrainReport { drain, summary });
        }
        assert_eq!(
            *recorded.lock().unwrap(),
            [
                ("api-0".to_string(), 1),
                ("api-0".to_string(), MAX_DRAINS_PER_POD)
            ]
        );
    }
}
