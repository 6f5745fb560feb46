//! The KeepalivePolicy controller (kube-runtime `Controller`).
//!
//! Each policy is reconciled ([`reconcile`]) into the ConfigMap
//! `goaway-<name>` holding the agent's policy file (the policy with the
//! operator's [`PolicyDefaults`] filled in) and, once known, the
//! operator's CA certificate (`ca.crt`: the agents check the control
//! channel with it; a new CA reconciles every policy), owned by the policy so
//! deleting the policy deletes it, and into its status. Triggers: the
//! policy itself, its ConfigMap (an edited or deleted ConfigMap is put
//! back), pods, mapped to the policies that select them or that injected
//! them, so the pod counts follow, and Services, mapped to the policies of
//! their namespace, so the bypass report ([`bypass`]) follows. Run it
//! only on the leader ([`crate::leader`]).

pub mod bypass;
mod reconcile;
mod status;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, warn};

pub use reconcile::reconcile;

use crate::inject::ANNOTATION_INJECTED;
use crate::metrics::Metrics;
use crate::tls::CaWatch;
use crate::{Error, KeepalivePolicy, MANAGER, PolicyDefaults, selection};

/// Label on every object the operator creates.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Selector for the operator's ConfigMaps.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=goaway-operator";

/// How long a healthy policy waits before a periodic re-check.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How long a failed reconciliation waits before the retry.
pub const RETRY: Duration = Duration::from_secs(10);

/// What the controller is told: plain data, from the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Only this namespace's policies (and pods, ConfigMaps and
    /// Services); every namespace's when `None`.
    pub namespace: Option<String>,
    /// The operator's defaults, merged into each policy it renders.
    pub defaults: PolicyDefaults,
    /// Who reports its Events (the pod name).
    pub instance: Option<String>,
    /// The operator's CA certificate, written into each ConfigMap.
    pub ca: CaWatch,
}

/// What reconciliations share: the runtime handles [`run`] is given, the
/// Event recorder and policy cache it builds, and the config's defaults.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Every policy the controller sees (to find conflicts).
    pub policies: Store<KeepalivePolicy>,
    /// The operator's defaults, merged into each policy it renders.
    pub defaults: PolicyDefaults,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// The operator's CA certificate, as known.
    pub ca: CaWatch,
}

impl Context {
    /// A context for `config` whose conflicts are found in `policies`.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        policies: Store<KeepalivePolicy>,
        config: &Config,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: config.instance.clone(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            policies,
            defaults: config.defaults.clone(),
            metrics,
            ca: config.ca.clone(),
        }
    }
}

/// Runs the controller until `shutdown` is signalled, then lets running
/// reconciliations finish; `shutdown` is held until they have.
pub async fn run(client: Client, metrics: Arc<Metrics>, config: Config, shutdown: drain_rs::Watch) {
    let (policies, pods, config_maps, services) = match config.namespace.as_deref() {
        Some(ns) => (
            Api::<KeepalivePolicy>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let controller = Controller::new(policies, watcher::Config::default());
    let store = controller.store();
    let ctx = Arc::new(Context::new(client, metrics, store.clone(), &config));
    let running = controller
        .owns(
            config_maps,
            watcher::Config::default().labels(MANAGED_BY_SELECTOR),
        )
        .watches(pods, watcher::Config::default(), {
            let store = store.clone();
            move |pod| policies_for_pod(&store, &pod)
        })
        .watches(services, watcher::Config::default(), move |service| {
            policies_in_namespace(&store, service.namespace().as_deref())
        })
        .reconcile_all_on(ca_changes(config.ca.clone()))
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        .graceful_shutdown_on(shutdown.clone().signaled().map(drop))
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((policy, _)) => debug!(policy = %policy, "reconciled"),
                Err(error) => debug!(%error, "reconcile loop"),
            }
        });
    shutdown.ignore_signaled().release_after(running).await;
}

/// One item per change of the CA, ending when it can change no more.
fn ca_changes(ca: CaWatch) -> impl futures_util::Stream<Item = ()> + Send {
    futures_util::stream::unfold(ca, |mut ca| async move {
        ca.changed().await?;
        Some(((), ca))
    })
}

/// The policies a pod event concerns: those selecting it now, and the one
/// that injected it (its selector may have stopped matching).
pub fn policies_for_pod(
    store: &Store<KeepalivePolicy>,
    pod: &Pod,
) -> Vec<ObjectRef<KeepalivePolicy>> {
    let Some(namespace) = pod.namespace() else {
        return Vec::new();
    };
    let mut refs: Vec<_> = store
        .state()
        .iter()
        .filter(|p| selection::selects(p, &namespace, pod.labels()))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect();
    if let Some(name) = pod.annotations().get(ANNOTATION_INJECTED) {
        let injected = ObjectRef::new(name).within(&namespace);
        if !refs.contains(&injected) {
            refs.push(injected);
        }
    }
    refs
}

/// Every policy in `namespace` (a Service event may change any of their
/// bypass reports).
pub fn policies_in_namespace(
    store: &Store<KeepalivePolicy>,
    namespace: Option<&str>,
) -> Vec<ObjectRef<KeepalivePolicy>> {
    let Some(namespace) = namespace else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Failed reconciliations are logged and retried after [`RETRY`].
pub fn error_policy(policy: Arc<KeepalivePolicy>, error: &Error, _: Arc<Context>) -> Action {
    warn!(
        namespace = policy.namespace().as_deref(),
        policy = %policy.name_any(),
        %error,
        "reconcile failed; retrying"
    );
    Action::requeue(RETRY)
}

#[cfg(test)]
mod tests;
