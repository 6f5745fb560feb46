//! Events every replica names alike: a scale-up's ([`super::rebalance`])
//! and a drain's ([`super::drains`]). Each replica that hears of the same
//! thing creates the same name, so the Event exists once, and the replica
//! whose create succeeds is the one that records the rest of it.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use kube::api::PostParams;
use kube::{Api, Client};

/// Creates `event`, named by the caller: true if this replica created it,
/// false if it exists already (another replica, or an earlier report,
/// made it).
pub(crate) async fn create_once(client: &Client, event: &Event) -> kube::Result<bool> {
    let namespace = event.metadata.namespace.as_deref().unwrap_or_default();
    match Api::<Event>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), event)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// A reference to the KeepalivePolicy `name` in `namespace`.
pub(crate) fn policy_ref(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("goaway.dev/v1alpha1".into()),
        kind: Some("KeepalivePolicy".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        uid,
        ..Default::default()
    }
}
