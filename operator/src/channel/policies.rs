//! The policy side of the hub: each KeepalivePolicy's file text, rendered
//! from the policy watch every replica already runs, so an edit reaches
//! the agents as soon as the watch event does — not after the leader has
//! reconciled the ConfigMap and the kubelet has refreshed the volume.
//!
//! The text is exactly what the controller writes into the policy's
//! ConfigMap ([`crate::crd::render_policy_file`], the policy merged with
//! the operator's defaults), and follows the same rule: an invalid policy
//! changes nothing (its ConfigMap and its agents keep the last valid one).

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::watcher;

use super::hub::{Hub, PolicyKey};
use crate::crd::render_policy_file;
use crate::{KeepalivePolicy, PolicyDefaults};

/// Feeds policy watch events into a hub.
pub struct PolicySource {
    hub: Arc<Hub>,
    defaults: PolicyDefaults,
    /// Policies listed so far while the watch (re)lists.
    listing: Option<HashMap<PolicyKey, Option<Arc<str>>>>,
}

impl PolicySource {
    /// Renders with the operator's `defaults`, as the controller does.
    pub fn new(hub: Arc<Hub>, defaults: PolicyDefaults) -> Self {
        PolicySource {
            hub,
            defaults,
            listing: None,
        }
    }

    /// Applies one watch event.
    pub fn event(&mut self, event: &watcher::Event<KeepalivePolicy>) {
        match event {
            watcher::Event::Init => self.listing = Some(HashMap::new()),
            watcher::Event::InitApply(policy) => {
                if let Some((namespace, name)) = key(policy) {
                    self.hub.set_policy_uid(&namespace, &name, policy.uid());
                }
                if let Some(key) = key(policy) {
                    let text = render(policy, &self.defaults);
                    self.listing
                        .get_or_insert_with(HashMap::new)
                        .insert(key, text);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                self.hub.replace_policies(listed);
            }
            watcher::Event::Apply(policy) => {
                if let Some((namespace, name)) = key(policy) {
                    self.hub.set_policy_uid(&namespace, &name, policy.uid());
                }
                if let (Some((namespace, name)), Some(text)) =
                    (key(policy), render(policy, &self.defaults))
                {
                    self.hub.set_policy(&namespace, &name, Some(text));
                }
            }
            watcher::Event::Delete(policy) => {
                if let Some((namespace, name)) = key(policy) {
                    self.hub.set_policy_uid(&namespace, &name, None);
                    self.hub.set_policy(&namespace, &name, None);
                }
            }
        }
    }
}

fn key(policy: &KeepalivePolicy) -> Option<PolicyKey> {
    Some((policy.namespace()?, policy.name_any()))
}

/// The policy's file text, `None` when the policy is invalid with the
/// operator's defaults (the controller then keeps the last ConfigMap).
pub fn render(policy: &KeepalivePolicy, defaults: &PolicyDefaults) -> Option<Arc<str>> {
    policy.spec.check_with(defaults).ok()?;
    render_policy_file(&policy.spec, defaults)
        .ok()
        .map(Arc::from)
}
