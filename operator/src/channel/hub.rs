//! The hub: what each connected agent should know about its own pod,
//! kept current for every subscriber at once.
//!
//! Each subscribed pod (by uid) has a [`View`] in a `tokio::sync::watch`:
//! its policy file's text and where it stands in its namespace's
//! EndpointSlices. The sources write into the hub — the policy watch
//! ([`super::policies`]) and one EndpointSlice watch per namespace with
//! subscribers ([`super::endpoints`]) — and the hub changes exactly the
//! views concerned, so a change costs one `watch` send per agent it
//! concerns, never a copy of the namespace per agent. A stream
//! ([`super::stream`]) writes each view's changes to its connection.
//!
//! Namespaces: the first subscriber of a namespace starts its
//! EndpointSlice watch (through the function the hub was built with);
//! the watch retires itself through [`Hub::retire_namespace`] after a
//! while without subscribers. Until the watch's first list completes, the
//! namespace's views carry no endpoints and agents are told nothing.
//! Everything is under one mutex; no `.await` is ever made holding it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::auth::PodIdentity;
use super::endpoints::{EndpointIndex, PodEndpoints, ServiceCount};
use crate::metrics::Metrics;

/// What an agent is told, as last known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Its policy file (the text the policy's ConfigMap holds); `None`
    /// while unknown: no valid policy of that name seen yet.
    pub policy: Option<Arc<str>>,
    /// Where its pod stands in the EndpointSlices; `None` until its
    /// namespace's slices have been listed.
    pub endpoints: Option<PodEndpoints>,
    /// The last scale-up of a Service the pod was ready in before it
    /// ([`super::rebalance`]); an event, told once per new `seq`.
    pub rebalance: Option<Rebalance>,
}

/// A scale-up an agent is told of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebalance {
    /// Tells one scale-up from the next (hub-wide, increasing).
    pub seq: u64,
    /// The Service.
    pub service: Arc<str>,
    /// Its ready pods before.
    pub from: u32,
    /// Its ready pods now.
    pub to: u32,
}

/// Starts keeping a namespace's endpoints in the hub: called with the
/// hub, the namespace and its subscriber count, under the hub's lock (so
/// it must only spawn).
pub type StartWatch = Box<dyn Fn(Arc<Hub>, String, watch::Receiver<usize>) + Send + Sync>;

/// A policy, by namespace and name.
pub type PolicyKey = (String, String);

/// See the module documentation.
pub struct Hub {
    state: Mutex<State>,
    start_watch: StartWatch,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    /// The last [`Rebalance::seq`] given out.
    rebalance_seq: u64,
    /// Every policy's uid (for the Events about it).
    policy_uids: HashMap<PolicyKey, String>,
    /// Subscribed pods by uid.
    pods: HashMap<String, Subscriber>,
    /// Every valid policy's file text.
    policies: HashMap<PolicyKey, Arc<str>>,
    /// Namespaces with subscribers, or whose watch still lingers.
    namespaces: HashMap<String, Namespace>,
}

struct Subscriber {
    namespace: String,
    policy: String,
    view: watch::Sender<View>,
    /// Streams open for this pod (a reconnect may overlap the old one).
    streams: usize,
}

struct Namespace {
    /// `None` until the first list has completed.
    index: Option<EndpointIndex>,
    /// The uids of its subscribed pods.
    pods: HashSet<String>,
    /// How many there are, for the watch to see.
    count: watch::Sender<usize>,
}

impl Hub {
    /// A hub that starts namespace watches with `start_watch`.
    pub fn new(metrics: Arc<Metrics>, start_watch: StartWatch) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::default(),
            start_watch,
            metrics,
        })
    }

    /// A hub whose endpoints are written by hand (tests, benchmarks):
    /// starting a namespace's watch does nothing.
    pub fn without_watches(metrics: Arc<Metrics>) -> Arc<Hub> {
        Hub::new(metrics, Box::new(|_, _, _| {}))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere under the lock leaves consistent maps: every
        // update is a single insert, remove or send.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes a stream to its pod's view, which starts as all that is
    /// known now.
    pub fn subscribe(self: &Arc<Self>, pod: &PodIdentity) -> Subscription {
        let mut state = self.lock();
        let state = &mut *state;
        let namespace = match state.namespaces.get_mut(&pod.namespace) {
            Some(ns) => ns,
            None => {
                let (count, counted) = watch::channel(0);
                (self.start_watch)(self.clone(), pod.namespace.clone(), counted);
                self.metrics.control_endpoint_watch(true);
                state
                    .namespaces
                    .entry(pod.namespace.clone())
                    .or_insert(Namespace {
                        index: None,
                        pods: HashSet::new(),
                        count,
                    })
            }
        };
        if namespace.pods.insert(pod.uid.clone()) {
            namespace.count.send_replace(namespace.pods.len());
        }
        let endpoints = namespace.index.as_ref().map(|i| i.get(&pod.uid));
        let policy = state
            .policies
            .get(&(pod.namespace.clone(), pod.policy.clone()))
            .cloned();
        let subscriber = state
            .pods
            .entry(pod.uid.clone())
            .or_insert_with(|| Subscriber {
                namespace: pod.namespace.clone(),
                policy: pod.policy.clone(),
                view: watch::Sender::new(View::default()),
                streams: 0,
            });
        subscriber.streams += 1;
        subscriber.view.send_if_modified(|view| {
            let now = View {
                policy,
                endpoints,
                rebalance: view.rebalance.clone(),
            };
            let changed = *view != now;
            *view = now;
            changed
        });
        Subscription {
            hub: self.clone(),
            uid: pod.uid.clone(),
            view: subscriber.view.subscribe(),
        }
    }

    fn unsubscribe(&self, uid: &str) {
        let mut state = self.lock();
        let Some(subscriber) = state.pods.get_mut(uid) else {
            return;
        };
        subscriber.streams -= 1;
        if subscriber.streams > 0 {
            return;
        }
        let namespace = subscriber.namespace.clone();
        state.pods.remove(uid);
        if let Some(ns) = state.namespaces.get_mut(&namespace) {
            ns.pods.remove(uid);
            ns.count.send_replace(ns.pods.len());
        }
    }

    /// A policy's file text changed (`Some`), or the policy is gone
    /// (`None`: its agents keep what they have).
    pub fn set_policy(&self, namespace: &str, name: &str, text: Option<Arc<str>>) {
        let mut state = self.lock();
        let key = (namespace.to_string(), name.to_string());
        match &text {
            Some(text) => state.policies.insert(key, text.clone()),
            None => state.policies.remove(&key),
        };
        notify_policy(&state, namespace, name, text);
    }

    /// Every policy, after the policy watch (re)listed them: `None` for a
    /// policy that exists but is invalid, which keeps the text it had
    /// (as its ConfigMap keeps the last valid one). Policies left out are
    /// gone.
    pub fn replace_policies(&self, listed: HashMap<PolicyKey, Option<Arc<str>>>) {
        let mut state = self.lock();
        let mut policies = HashMap::with_capacity(listed.len());
        for (key, text) in listed {
            if let Some(text) = text.or_else(|| state.policies.get(&key).cloned()) {
                policies.insert(key, text);
            }
        }
        state.policies = policies;
        let state = &*state;
        for subscriber in state.pods.values() {
            let key = (subscriber.namespace.clone(), subscriber.policy.clone());
            let text = state.policies.get(&key).cloned();
            subscriber
                .view
                .send_if_modified(|view| replace(&mut view.policy, text));
        }
    }

    /// The text of a valid policy, as last known.
    pub fn policy(&self, namespace: &str, name: &str) -> Option<Arc<str>> {
        let key = (namespace.to_string(), name.to_string());
        self.lock().policies.get(&key).cloned()
    }

    /// A namespace's EndpointSlices were (re)listed: `index` replaces what
    /// was known.
    pub fn endpoints_listed(&self, namespace: &str, index: EndpointIndex) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(ns) = state.namespaces.get_mut(namespace) else {
            return;
        };
        for uid in &ns.pods {
            if let Some(subscriber) = state.pods.get(uid) {
                let now = Some(index.get(uid));
                subscriber
                    .view
                    .send_if_modified(|view| replace(&mut view.endpoints, now));
            }
        }
        ns.index = Some(index);
    }

    /// A namespace's EndpointSlices changed: `change` applies it to the
    /// index and returns the uids whose standing changed.
    pub fn endpoints_changed(
        &self,
        namespace: &str,
        change: impl FnOnce(&mut EndpointIndex) -> Vec<String>,
    ) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(index) = state
            .namespaces
            .get_mut(namespace)
            .and_then(|ns| ns.index.as_mut())
        else {
            return;
        };
        for uid in change(index) {
            if let Some(subscriber) = state.pods.get(&uid) {
                let now = Some(index.get(&uid));
                subscriber
                    .view
                    .send_if_modified(|view| replace(&mut view.endpoints, now));
            }
        }
    }

    /// Called by a namespace's watch that saw no subscriber for a while:
    /// forgets the namespace and returns true (the watch stops), unless a
    /// subscriber arrived meanwhile.
    pub fn retire_namespace(&self, namespace: &str) -> bool {
        let mut state = self.lock();
        if state
            .namespaces
            .get(namespace)
            .is_some_and(|ns| ns.pods.is_empty())
        {
            state.namespaces.remove(namespace);
            self.metrics.control_endpoint_watch(false);
            return true;
        }
        false
    }

    /// A policy's uid, as the policy watch saw it (`None`: gone).
    pub fn set_policy_uid(&self, namespace: &str, name: &str, uid: Option<String>) {
        let key = (namespace.to_string(), name.to_string());
        let mut state = self.lock();
        match uid {
            Some(uid) => state.policy_uids.insert(key, uid),
            None => state.policy_uids.remove(&key),
        };
    }

    /// A policy's uid, if known.
    pub fn policy_uid(&self, namespace: &str, name: &str) -> Option<String> {
        let key = (namespace.to_string(), name.to_string());
        self.lock().policy_uids.get(&key).cloned()
    }

    /// Every Service of the namespace's slices, counted; `None` before
    /// the namespace is listed.
    pub fn services(&self, namespace: &str) -> Option<HashMap<String, ServiceCount>> {
        let state = self.lock();
        Some(state.namespaces.get(namespace)?.index.as_ref()?.services())
    }

    /// The pods ready in `service` now (their uids, sorted); empty before
    /// the namespace is listed.
    pub fn ready_pods(&self, namespace: &str, service: &str) -> Vec<String> {
        let state = self.lock();
        state
            .namespaces
            .get(namespace)
            .and_then(|ns| ns.index.as_ref())
            .map(|index| index.ready_in(service))
            .unwrap_or_default()
    }

    /// Tells the subscribed pods of `old` (the pods ready in `service`
    /// before it grew from `from` to `to`) that are still ready in it. A
    /// new pod is not told: its agent would send on the very reconnects
    /// the rebalance is for. Returns the policies of the pods told, with
    /// how many of each.
    pub fn rebalance(
        &self,
        namespace: &str,
        service: &str,
        from: u32,
        to: u32,
        old: &[String],
    ) -> Vec<(PolicyKey, usize)> {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(index) = state
            .namespaces
            .get(namespace)
            .and_then(|ns| ns.index.as_ref())
        else {
            return vec![];
        };
        state.rebalance_seq += 1;
        let told = Rebalance {
            seq: state.rebalance_seq,
            service: Arc::from(service),
            from,
            to,
        };
        let mut policies: HashMap<PolicyKey, usize> = HashMap::new();
        for uid in index.ready_in(service) {
            if old.binary_search(&uid).is_err() {
                continue;
            }
            if let Some(subscriber) = state.pods.get(&uid) {
                subscriber
                    .view
                    .send_modify(|view| view.rebalance = Some(told.clone()));
                *policies
                    .entry((namespace.to_string(), subscriber.policy.clone()))
                    .or_default() += 1;
            }
        }
        let mut out: Vec<_> = policies.into_iter().collect();
        out.sort();
        out
    }

    /// Pods subscribed now.
    pub fn subscribed(&self) -> usize {
        self.lock().pods.len()
    }

    /// Namespaces whose endpoints the hub keeps now.
    pub fn namespaces(&self) -> usize {
        self.lock().namespaces.len()
    }
}

/// Sets the policy of every subscriber of `namespace/name`.
fn notify_policy(state: &State, namespace: &str, name: &str, text: Option<Arc<str>>) {
    let Some(ns) = state.namespaces.get(namespace) else {
        return;
    };
    for uid in &ns.pods {
        if let Some(subscriber) = state.pods.get(uid)
            && subscriber.policy == name
        {
            subscriber
                .view
                .send_if_modified(|view| replace(&mut view.policy, text.clone()));
        }
    }
}

/// `*slot = now`; true when that changed it.
fn replace<T: PartialEq>(slot: &mut T, now: T) -> bool {
    let changed = *slot != now;
    *slot = now;
    changed
}

/// One stream's hold on its pod's view; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    uid: String,
    view: watch::Receiver<View>,
}

impl Subscription {
    /// The view: its value now, and a notification on each change.
    pub fn view(&mut self) -> &mut watch::Receiver<View> {
        &mut self.view
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.uid);
    }
}

#[cfg(test)]
mod tests;
