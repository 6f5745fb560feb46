//! Who owns the objects the operator creates for itself.
//!
//! The operator creates two objects of its own in its namespace: the
//! webhook's certificate Secret (generate mode, [`crate::tls::secret`])
//! and the leader Lease ([`crate::leader`]). No chart lists them, so
//! `helm uninstall` would leave them behind — the Secret with the CA's
//! private key in it. Each carries an owner reference to the operator's
//! Deployment instead (`--owner-deployment`), and when the Deployment is
//! deleted the garbage collector deletes them too.
//!
//! The chart knows the Deployment's name but not its uid, which the API
//! server assigns; [`resolve`] reads it (`get` on that one Deployment),
//! retrying until it succeeds, and the Secret and Lease code adds the
//! reference when it writes the object and to an object that lacks it
//! (one created before the uid was known, or by an older release). The
//! reference is not a controller reference and does not block the
//! owner's deletion (`blockOwnerDeletion` would need `update` on the
//! Deployment's finalizers).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Api, Client, Resource};
use tracing::{info, warn};

/// How long [`resolve`] waits between failed reads.
const RETRY: Duration = Duration::from_secs(5);

/// The operator's Deployment as an owner, once known. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Owner(Arc<OnceLock<OwnerReference>>);

impl Owner {
    /// An owner not known (yet): objects are written without one.
    pub fn unknown() -> Self {
        Owner::default()
    }

    /// An owner known from the start (tests).
    pub fn known(reference: OwnerReference) -> Self {
        let owner = Owner::default();
        let _ = owner.0.set(reference);
        owner
    }

    /// The reference, once known.
    pub fn get(&self) -> Option<&OwnerReference> {
        self.0.get()
    }

    /// Adds the reference to `meta` unless it is unknown or already there
    /// (by uid); true when it changed `meta`.
    pub fn add_to(&self, meta: &mut ObjectMeta) -> bool {
        let Some(reference) = self.get() else {
            return false;
        };
        let references = meta.owner_references.get_or_insert_with(Vec::new);
        if references.iter().any(|r| r.uid == reference.uid) {
            return false;
        }
        references.push(reference.clone());
        true
    }
}

/// The owner reference naming `deployment`.
pub fn reference(deployment: &Deployment) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: Deployment::api_version(&()).into_owned(),
        kind: Deployment::kind(&()).into_owned(),
        name: deployment.metadata.name.clone()?,
        uid: deployment.metadata.uid.clone()?,
        controller: None,
        block_owner_deletion: None,
    })
}

/// Reads the Deployment `name` in `namespace` until it is found, and
/// makes it `owner`. A failure is logged at WARN once, then every
/// [`RETRY`] at debug level; until then the objects have no owner, and an
/// uninstall would leave them.
pub async fn resolve(client: Client, namespace: String, name: String, owner: Owner) {
    let api = Api::<Deployment>::namespaced(client, &namespace);
    let mut warned = false;
    loop {
        let error = match api.get(&name).await {
            Ok(deployment) => match reference(&deployment) {
                Some(reference) => {
                    info!(deployment = %name, uid = %reference.uid, "own objects are owned by the operator's Deployment");
                    let _ = owner.0.set(reference);
                    return;
                }
                None => "the Deployment has no name or uid".to_string(),
            },
            Err(error) => error.to_string(),
        };
        if !warned {
            warn!(deployment = %name, %namespace, %error, "cannot read the operator's Deployment; its Secret and Lease stay without an owner, so an uninstall would leave them, until it can");
            warned = true;
        } else {
            tracing::debug!(deployment = %name, %error, "reading the operator's Deployment failed");
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "goaway-operator", "namespace": "goaway-system", "uid": "d-1"},
        }))
        .unwrap()
    }

    #[test]
    fn the_reference_names_the_deployment_and_blocks_nothing() {
        let r = reference(&deployment()).unwrap();
        assert_eq!(
            (
                r.api_version.as_str(),
                r.kind.as_str(),
                r.name.as_str(),
                r.uid.as_str()
            ),
            ("apps/v1", "Deployment", "goaway-operator", "d-1")
        );
        // Not a controller (nothing reconciles these from the Deployment)
        // and no blockOwnerDeletion (which needs more RBAC).
        assert_eq!((r.controller, r.block_owner_deletion), (None, None));
    }

    #[test]
    fn the_reference_is_added_once_and_only_when_known() {
        let mut meta = ObjectMeta::default();
        assert!(!Owner::unknown().add_to(&mut meta));
        assert_eq!(meta.owner_references, None);

        let owner = Owner::known(reference(&deployment()).unwrap());
        let other = OwnerReference {
            uid: "other".into(),
            ..reference(&deployment()).unwrap()
        };
        meta.owner_references = Some(vec![other]);
        assert!(owner.add_to(&mut meta));
        assert!(!owner.add_to(&mut meta));
        let uids: Vec<_> = meta
            .owner_references
            .iter()
            .flatten()
            .map(|r| r.uid.as_str())
            .collect();
        assert_eq!(uids, ["other", "d-1"]);
    }
}
