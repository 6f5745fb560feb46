//! Where each pod stands in its namespace's EndpointSlices: the evidence
//! an agent's drain waits for (`Message::Endpoints`).
//!
//! A pod is matched by the endpoint's `targetRef.uid` (kind `Pod`), never
//! by address: a new pod may get a terminating pod's IP while the old
//! endpoint is still listed. It is *ready* in a slice when some endpoint
//! of it there is `conditions.ready` (unset means ready, as the API
//! documents) and not `conditions.terminating`; it is in the ready set
//! while it is ready in at least one slice that lists it. A pod no slice
//! lists (no Service selects it) is not ready either: no proxy sends it a
//! new connection.
//!
//! [`EndpointIndex`] is the pure part. [`watch_namespace`] keeps one
//! namespace's index in the [`Hub`] with a kube-runtime watcher; the hub
//! starts it when the first agent of the namespace subscribes and it stops
//! once the namespace has had no subscriber for [`LINGER`] (see
//! [`Hub`]). One watch per namespace with agents, per replica: no pod
//! watches the API server itself, and namespaces without agents cost
//! nothing. The same watch judges its Services' scale-ups
//! ([`super::rebalance`]) and has the hub tell the old pods.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::hub::{Hub, PolicyKey};
use super::rebalance::{Decision, Rebalancer};

/// How long a namespace's watch outlives its last subscriber: agents that
/// reconnect (to this replica or, after a restart, to any) find the
/// namespace's slices already listed.
pub const LINGER: Duration = Duration::from_secs(60);

/// Where one pod stands: what its agent is told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEndpoints {
    /// Ready in at least one EndpointSlice that lists it.
    pub ready: bool,
    /// How many EndpointSlices list it at all.
    pub slices: u32,
}

/// In how many slices a pod is listed, and ready.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    slices: u32,
    ready: u32,
}

impl Counts {
    fn standing(self) -> PodEndpoints {
        PodEndpoints {
            ready: self.ready > 0,
            slices: self.slices,
        }
    }
}

/// One namespace's EndpointSlices, reduced to what the pods' agents need.
#[derive(Debug, Default)]
pub struct EndpointIndex {
    /// Per slice (by name): the pods it lists (by uid), ready or not.
    slices: HashMap<String, HashMap<String, bool>>,
    /// Per slice (by name): its Service and how many of its endpoints are
    /// terminating (for [`EndpointIndex::services`]).
    owners: HashMap<String, SliceOwner>,
    /// Per pod uid, summed over the slices.
    pods: HashMap<String, Counts>,
}

/// What a slice says about its Service as a whole.
#[derive(Clone, Debug, Default)]
struct SliceOwner {
    /// `kubernetes.io/service-name`; `None` for a slice of no Service.
    service: Option<String>,
    /// Its endpoints with `conditions.terminating`.
    terminating: u32,
}

/// A Service's endpoints, over all its slices: what a scale-up is told
/// from a rollout by ([`super::rebalance`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCount {
    /// Pods ready in at least one of its slices.
    pub ready: u32,
    /// Endpoints terminating: pods on their way out (a rollout, a
    /// scale-down, a deletion).
    pub terminating: u32,
}

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl EndpointIndex {
    /// An index of these slices.
    pub fn from_slices<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Self {
        let mut index = EndpointIndex::default();
        for slice in slices {
            index.apply(slice);
        }
        index
    }

    /// Where the pod with this uid stands.
    pub fn get(&self, uid: &str) -> PodEndpoints {
        self.pods.get(uid).copied().unwrap_or_default().standing()
    }

    /// A slice was added or changed. Returns the pods whose standing
    /// changed.
    pub fn apply(&mut self, slice: &EndpointSlice) -> Vec<String> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let owner = SliceOwner {
            service: slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
            terminating: slice
                .endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.terminating) == Some(true))
                .count() as u32,
        };
        self.owners.insert(name.clone(), owner);
        self.replace(name, members(slice))
    }

    /// A slice was deleted. Returns the pods whose standing changed.
    pub fn delete(&mut self, slice: &EndpointSlice) -> Vec<String> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        self.owners.remove(&name);
        self.replace(name, HashMap::new())
    }

    /// Every Service with a slice here: its ready pods and terminating
    /// endpoints.
    pub fn services(&self) -> HashMap<String, ServiceCount> {
        let mut ready: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        let mut out: HashMap<String, ServiceCount> = HashMap::new();
        for (slice, owner) in &self.owners {
            let Some(service) = owner.service.as_deref() else {
                continue;
            };
            out.entry(service.to_string()).or_default().terminating += owner.terminating;
            let pods = ready.entry(service).or_default();
            for (uid, is_ready) in self.slices.get(slice).into_iter().flatten() {
                if *is_ready {
                    pods.insert(uid);
                }
            }
        }
        for (service, pods) in ready {
            if let Some(count) = out.get_mut(service) {
                count.ready = pods.len() as u32;
            }
        }
        out
    }

    /// The pods ready in `service` now, by uid.
    pub fn ready_in(&self, service: &str) -> Vec<String> {
        let mut pods: Vec<String> = self
            .owners
            .iter()
            .filter(|(_, owner)| owner.service.as_deref() == Some(service))
            .filter_map(|(slice, _)| self.slices.get(slice))
            .flatten()
            .filter(|(_, ready)| **ready)
            .map(|(uid, _)| uid.clone())
            .collect();
        pods.sort_unstable();
        pods.dedup();
        pods
    }

    /// How many pods some slice lists.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// True when no slice lists a pod.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    fn replace(&mut self, name: String, members: HashMap<String, bool>) -> Vec<String> {
        let old = if members.is_empty() {
            self.slices.remove(&name).unwrap_or_default()
        } else {
            self.slices
                .insert(name.clone(), members.clone())
                .unwrap_or_default()
        };
        let mut touched: Vec<&String> = old.keys().chain(members.keys()).collect();
        touched.sort_unstable();
        touched.dedup();
        let mut changed = Vec::new();
        for uid in touched {
            let before = self.get(uid);
            let counts = self.pods.entry(uid.clone()).or_default();
            if let Some(ready) = old.get(uid) {
                counts.slices -= 1;
                counts.ready -= u32::from(*ready);
            }
            if let Some(ready) = members.get(uid) {
                counts.slices += 1;
                counts.ready += u32::from(*ready);
            }
            if counts.slices == 0 {
                self.pods.remove(uid);
            }
            if self.get(uid) != before {
                changed.push(uid.clone());
            }
        }
        changed
    }
}

/// The pods a slice lists, by uid, each with whether it is ready there.
pub fn members(slice: &EndpointSlice) -> HashMap<String, bool> {
    let mut pods: HashMap<String, bool> = HashMap::new();
    for endpoint in &slice.endpoints {
        let Some(target) = &endpoint.target_ref else {
            continue;
        };
        let (Some("Pod"), Some(uid)) = (target.kind.as_deref(), &target.uid) else {
            continue;
        };
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true)
            && !conditions.and_then(|c| c.terminating).unwrap_or(false);
        // A pod listed twice in one slice (an address per endpoint) is
        // ready there if any of its endpoints is.
        *pods.entry(uid.clone()).or_default() |= ready;
    }
    pods
}

/// Keeps `namespace`'s index in `hub` until the namespace has had no
/// subscriber for [`LINGER`] (`subscribers` counts them). Until the first
/// list has completed the hub knows nothing of the namespace and tells
/// its agents nothing: an empty index would say "out of every endpoint".
/// A broken watch is retried with kube-runtime's backoff; meanwhile the
/// last complete picture stands.
pub async fn watch_namespace(
    client: Client,
    hub: Arc<Hub>,
    namespace: String,
    mut subscribers: watch::Receiver<usize>,
    on_rebalance: impl Fn(&str, &Decision, Vec<(PolicyKey, usize)>),
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Option<EndpointIndex> = None;
    let mut rebalancer = Rebalancer::default();
    info!(namespace, "watching EndpointSlices");
    loop {
        let judge_at = rebalancer.next_due();
        tokio::select! {
            event = events.next() => {
                match event {
                    Some(Ok(watcher::Event::Init)) => listing = Some(EndpointIndex::default()),
                    Some(Ok(watcher::Event::InitApply(slice))) => {
                        listing.get_or_insert_with(EndpointIndex::default).apply(&slice);
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        let index = listing.take().unwrap_or_default();
                        debug!(namespace, pods = index.len(), "EndpointSlices listed");
                        hub.endpoints_listed(&namespace, index);
                    }
                    Some(Ok(watcher::Event::Apply(slice))) => {
                        hub.endpoints_changed(&namespace, |index| index.apply(&slice));
                    }
                    Some(Ok(watcher::Event::Delete(slice))) => {
                        hub.endpoints_changed(&namespace, |index| index.delete(&slice));
                    }
                    Some(Err(error)) => warn!(namespace, %error, "EndpointSlice watch failed; retrying"),
                    None => break,
                }
                if listing.is_none()
                    && let Some(counts) = hub.services(&namespace)
                {
                    rebalancer.observe(Instant::now(), &counts, &|service| {
                        hub.ready_pods(&namespace, service)
                    });
                }
            }
            () = sleep_until_some(judge_at) => {
                let counts = hub.services(&namespace).unwrap_or_default();
                let ready = |service: &str| hub.ready_pods(&namespace, service);
                for decision in rebalancer.due(Instant::now(), &counts, &ready) {
                    let told = hub.rebalance(
                        &namespace,
                        &decision.service,
                        decision.from,
                        decision.to,
                        &decision.old,
                    );
                    info!(
                        namespace,
                        service = decision.service,
                        from = decision.from,
                        to = decision.to,
                        agents = told.iter().map(|(_, n)| n).sum::<usize>(),
                        "scale-up: old pods' agents told to rebalance"
                    );
                    on_rebalance(&namespace, &decision, told);
                }
            }
            idle = idle_for(&mut subscribers, LINGER) => {
                if !idle || hub.retire_namespace(&namespace) {
                    break;
                }
            }
        }
    }
    info!(namespace, "stopped watching EndpointSlices");
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Completes with true once the count has stayed 0 for `linger`, or with
/// false when the hub is gone.
async fn idle_for(subscribers: &mut watch::Receiver<usize>, linger: Duration) -> bool {
    loop {
        if subscribers.wait_for(|n| *n == 0).await.is_err() {
            return false;
        }
        match tokio::time::timeout(linger, subscribers.wait_for(|n| *n > 0)).await {
            Err(_) => return true,
            Ok(Err(_)) => return false,
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    /// An endpoint for pod `uid` at `ip`, with its ready and terminating
    /// conditions as given (None: unset).
    fn endpoint(uid: &str, ip: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving: None,
                terminating,
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(format!("pod-{uid}")),
                uid: Some(uid.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: None,
        }
    }

    fn standing(ready: bool, slices: u32) -> PodEndpoints {
        PodEndpoints { ready, slices }
    }

    #[test]
    fn ready_means_ready_or_unknown_and_not_terminating() {
        let index = EndpointIndex::from_slices(&[slice(
            "api-1",
            vec![
                endpoint("ready", "10.0.0.1", Some(true), Some(false)),
                endpoint("unset", "10.0.0.2", None, None),
                endpoint("not-ready", "10.0.0.3", Some(false), None),
                endpoint("terminating", "10.0.0.4", Some(true), Some(true)),
                endpoint("terminating-unknown", "10.0.0.5", None, Some(true)),
            ],
        )]);
        assert_eq!(index.get("ready"), standing(true, 1));
        assert_eq!(index.get("unset"), standing(true, 1));
        assert_eq!(index.get("not-ready"), standing(false, 1));
        assert_eq!(index.get("terminating"), standing(false, 1));
        assert_eq!(index.get("terminating-unknown"), standing(false, 1));
        // A pod no slice lists is in no ready set.
        assert_eq!(index.get("elsewhere"), standing(false, 0));
    }

    #[test]
    fn endpoints_without_conditions_are_ready() {
        let mut e = endpoint("a", "10.0.0.1", None, None);
        e.conditions = None;
        let index = EndpointIndex::from_slices(&[slice("api-1", vec![e])]);
        assert_eq!(index.get("a"), standing(true, 1));
    }

    #[test]
    fn a_pod_is_ready_while_any_slice_lists_it_ready() {
        let mut index = EndpointIndex::default();
        // Two Services select the pod: it is in two slices.
        index.apply(&slice(
            "grpc-1",
            vec![endpoint("a", "10.0.0.1", Some(true), None)],
        ));
        assert_eq!(
            index.apply(&slice(
                "metrics-1",
                vec![endpoint("a", "10.0.0.1", Some(true), None)]
            )),
            ["a"]
        );
        assert_eq!(index.get("a"), standing(true, 2));
        // Out of one: still ready in the other, so nothing changed.
        assert!(
            index
                .apply(&slice(
                    "grpc-1",
                    vec![endpoint("a", "10.0.0.1", Some(false), Some(true))]
                ))
                .is_empty()
        );
        assert_eq!(index.get("a"), standing(true, 2));
        // Out of both: no longer ready.
        assert_eq!(
            index.apply(&slice(
                "metrics-1",
                vec![endpoint("a", "10.0.0.1", Some(false), Some(true))],
            )),
            ["a"]
        );
        assert_eq!(index.get("a"), standing(false, 2));
        // A slice deleted: listed in one fewer.
        assert_eq!(index.delete(&slice("metrics-1", vec![])), ["a"]);
        assert_eq!(index.get("a"), standing(false, 1));
        index.delete(&slice("grpc-1", vec![]));
        assert_eq!(index.get("a"), standing(false, 0));
        assert!(index.is_empty());
    }

    #[test]
    fn pods_are_matched_by_uid_not_by_address() {
        // The terminating pod "old" and its replacement "new" share an IP.
        let mut index = EndpointIndex::from_slices(&[slice(
            "api-1",
            vec![
                endpoint("old", "10.0.0.7", Some(false), Some(true)),
                endpoint("new", "10.0.0.7", Some(true), None),
            ],
        )]);
        assert_eq!(index.get("old"), standing(false, 1));
        assert_eq!(index.get("new"), standing(true, 1));
        // An endpoint that is not a pod's, or has no uid, is no pod's.
        let mut node = endpoint("node-uid", "10.0.0.8", Some(true), None);
        node.target_ref.as_mut().unwrap().kind = Some("Node".into());
        let mut anonymous = endpoint("x", "10.0.0.9", Some(true), None);
        anonymous.target_ref.as_mut().unwrap().uid = None;
        let mut external = endpoint("y", "10.0.0.10", Some(true), None);
        external.target_ref = None;
        let changed = index.apply(&slice("other", vec![node, anonymous, external]));
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(index.get("node-uid"), standing(false, 0));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn a_pod_with_two_endpoints_in_a_slice_counts_once_and_is_ready_if_either_is() {
        let index = EndpointIndex::from_slices(&[slice(
            "api-1",
            vec![
                endpoint("a", "10.0.0.1", Some(false), None),
                endpoint("a", "10.0.0.2", Some(true), None),
            ],
        )]);
        assert_eq!(index.get("a"), standing(true, 1));
    }

    #[test]
    fn only_pods_whose_standing_changed_are_reported() {
        let mut index = EndpointIndex::from_slices(&[slice(
            "api-1",
            vec![
                endpoint("a", "10.0.0.1", Some(true), None),
                endpoint("b", "10.0.0.2", Some(true), None),
            ],
        )]);
        // b terminates; a's entry is rewritten unchanged.
        let changed = index.apply(&slice(
            "api-1",
            vec![
                endpoint("a", "10.0.0.1", Some(true), None),
                endpoint("b", "10.0.0.2", Some(false), Some(true)),
            ],
        ));
        assert_eq!(changed, ["b"]);
        // b leaves the slice, c joins it.
        let changed = index.apply(&slice(
            "api-1",
            vec![
                endpoint("a", "10.0.0.1", Some(true), None),
                endpoint("c", "10.0.0.3", Some(false), None),
            ],
        ));
        assert_eq!(changed, ["b", "c"]);
        assert_eq!(index.get("b"), standing(false, 0));
        assert_eq!(index.get("c"), standing(false, 1));
        // The same slice again: nothing.
        let again = slice(
            "api-1",
            vec![
                endpoint("a", "10.0.0.1", Some(true), None),
                endpoint("c", "10.0.0.3", Some(false), None),
            ],
        );
        assert!(index.apply(&again).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_namespace_is_idle_after_lingering_without_subscribers() {
        let (count, mut rx) = watch::channel(1usize);
        let idle = tokio::spawn(async move { idle_for(&mut rx, LINGER).await });
        tokio::time::sleep(LINGER * 2).await;
        assert!(!idle.is_finished(), "idle with a subscriber");
        count.send_replace(0);
        tokio::time::sleep(LINGER / 2).await;
        // A subscriber comes back within the linger: the clock restarts.
        count.send_replace(1);
        tokio::time::sleep(LINGER).await;
        count.send_replace(0);
        tokio::time::sleep(LINGER - Duration::from_millis(1)).await;
        assert!(!idle.is_finished(), "idle before the linger ran out");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(idle.await.unwrap());
    }
}
