//! Who is on the other end of a stream: the pod its projected
//! service-account token was issued for.
//!
//! The agent presents a token for [`AUDIENCE`] (the kubelet mints it for
//! the pod, bound to it, and rotates it). The operator asks the API server
//! (a TokenReview, `authentication.k8s.io/v1`, with `spec.audiences` set
//! to that one audience) and accepts the token only when the review says
//! it is authenticated *for that audience* — a token for the API server,
//! or for anything else, is refused — and names a pod: the pod name and
//! uid in `status.user.extra` (`authentication.kubernetes.io/pod-name`,
//! `…/pod-uid`), the namespace in the user name
//! (`system:serviceaccount:<namespace>:<account>`). That pod must still
//! exist with that uid and carry `goaway.dev/injected` (the policy it was
//! injected with, which picks what the agent is told). So an agent learns
//! about its own pod only, and a stolen token is good for nothing but
//! that pod's policy and endpoints.
//!
//! Reviews are cached briefly ([`super::token_cache`]) and at most
//! [`MAX_CONCURRENT_REVIEWS`] run at once, so a reconnect storm queues
//! here instead of at the API server.
//!
//! Where there is no API server to ask (tests, the `control_fanout`
//! benchmark), [`Authenticator::fixed`] accepts a fixed set of tokens,
//! each for its pod, and refuses every other; the operator itself only
//! ever builds [`Authenticator::new`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use goaway_transport::control::AUDIENCE;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::debug;

use super::token_cache::TokenCache;
use crate::inject::ANNOTATION_INJECTED;
use crate::metrics::Metrics;

/// TokenReviews in flight at once, per replica.
pub const MAX_CONCURRENT_REVIEWS: usize = 32;
/// Reviews remembered (see [`super::token_cache`]).
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// `status.user.extra` key of a pod-bound token: the pod's name.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// `status.user.extra` key of a pod-bound token: the pod's uid.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// The pod a stream is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// The KeepalivePolicy it was injected with.
    pub policy: String,
    /// The revision of the template it was made from, which a rollout
    /// replaces: its `pod-template-hash` label (a Deployment's), else its
    /// `controller-revision-hash` (a StatefulSet's or DaemonSet's), else
    /// its controller's name; empty for a bare pod.
    pub revision: String,
}

/// `pod`'s [`PodIdentity::revision`].
pub fn revision(pod: &Pod) -> String {
    let labels = pod.labels();
    labels
        .get("pod-template-hash")
        .or_else(|| labels.get("controller-revision-hash"))
        .cloned()
        .or_else(|| {
            pod.owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| format!("{}/{}", o.kind, o.name))
        })
        .unwrap_or_default()
}

/// Why a token was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The review did not authenticate the token for [`AUDIENCE`].
    #[error("the token is not valid for audience {AUDIENCE}: {0}")]
    Unauthenticated(String),
    /// The token is genuine but names no pod (not a service account's
    /// pod-bound token).
    #[error("the token names no pod: {0}")]
    NotAPod(String),
    /// The pod it names is gone.
    #[error("pod {0} does not exist")]
    PodNotFound(String),
    /// A pod of that name exists, but not the one the token was issued
    /// for.
    #[error("pod {0} is not the pod the token was issued for")]
    PodMismatch(String),
    /// The pod has no agent goaway injected.
    #[error("pod {0} was not injected by goaway")]
    NotInjected(String),
    /// The pod is outside the one namespace this operator watches.
    #[error("pod {0} is outside the namespace this operator watches")]
    OutsideNamespace(String),
    /// The API server could not be asked.
    #[error("the token could not be checked: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// The HTTP status the agent is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthenticated(_) => 401,
            Refusal::Unavailable(_) => 503,
            _ => 403,
        }
    }

    /// A short label for metrics (`reason` of the refused counter).
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::NotAPod(_) => "not_a_pod",
            Refusal::PodNotFound(_) => "pod_not_found",
            Refusal::PodMismatch(_) => "pod_mismatch",
            Refusal::NotInjected(_) => "not_injected",
            Refusal::OutsideNamespace(_) => "namespace",
            Refusal::Unavailable(_) => "api_error",
        }
    }
}

/// Checks agents' tokens; see the module documentation.
pub struct Authenticator(Check);

/// How an [`Authenticator`] checks.
// One per operator: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Check {
    /// TokenReviews with the API server (the operator's only way).
    Review(Reviewer),
    /// Fixed tokens (tests, benchmarks): no API server, no cache, no
    /// metrics.
    Fixed(HashMap<String, PodIdentity>),
}

impl Authenticator {
    /// Reviews with `client`; with `namespace`, only pods there are
    /// accepted (`--watch-namespace`).
    pub fn new(client: Client, namespace: Option<String>, metrics: Arc<Metrics>) -> Self {
        Authenticator(Check::Review(Reviewer {
            client,
            namespace,
            cache: Mutex::new(TokenCache::new(DEFAULT_CACHE_ENTRIES)),
            reviews: Semaphore::new(MAX_CONCURRENT_REVIEWS),
            metrics,
        }))
    }

    /// Accepts exactly `tokens`, each as its pod's, without an API server
    /// (tests and benchmarks that run the channel without a cluster);
    /// any other token is refused as [`Refusal::Unauthenticated`].
    pub fn fixed(tokens: HashMap<String, PodIdentity>) -> Self {
        Authenticator(Check::Fixed(tokens))
    }

    /// The pod `token` was issued for, if it is accepted.
    pub async fn authenticate(&self, token: &str) -> Result<PodIdentity, Refusal> {
        match &self.0 {
            Check::Review(reviewer) => reviewer.authenticate(token).await,
            Check::Fixed(tokens) => tokens
                .get(token)
                .cloned()
                .ok_or_else(|| Refusal::Unauthenticated("not a known token".into())),
        }
    }
}

/// The TokenReview path, with its cache and its bound on reviews in
/// flight.
struct Reviewer {
    client: Client,
    namespace: Option<String>,
    cache: Mutex<TokenCache>,
    reviews: Semaphore,
    metrics: Arc<Metrics>,
}

impl Reviewer {
    fn cached(&self, key: &[u8; 32]) -> Option<PodIdentity> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key, Instant::now())
    }

    async fn authenticate(&self, token: &str) -> Result<PodIdentity, Refusal> {
        let key = TokenCache::key(token);
        if let Some(pod) = self.cached(&key) {
            self.metrics.control_token_review("cached");
            return Ok(pod);
        }
        let _permit = self
            .reviews
            .acquire()
            .await
            .map_err(|_| Refusal::Unavailable("shutting down".into()))?;
        // Another connection with the same token may have been reviewed
        // while this one waited.
        if let Some(pod) = self.cached(&key) {
            self.metrics.control_token_review("cached");
            return Ok(pod);
        }
        let result = self.review(token).await;
        self.metrics.control_token_review(match &result {
            Ok(_) => "accepted",
            Err(Refusal::Unavailable(_)) => "error",
            Err(_) => "refused",
        });
        if let Ok(pod) = &result {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(key, token, pod.clone(), Instant::now());
        }
        result
    }

    async fn review(&self, token: &str) -> Result<PodIdentity, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                audiences: Some(vec![AUDIENCE.to_string()]),
                token: Some(token.to_string()),
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("TokenReview: {e}")))?;
        let claimed = claimed_pod(&reviewed.status.unwrap_or_default())?;
        let pod_ref = format!("{}/{}", claimed.namespace, claimed.name);
        if self
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != claimed.namespace)
        {
            return Err(Refusal::OutsideNamespace(pod_ref));
        }
        let pod = Api::<Pod>::namespaced(self.client.clone(), &claimed.namespace)
            .get_opt(&claimed.name)
            .await
            .map_err(|e| Refusal::Unavailable(format!("reading pod {pod_ref}: {e}")))?
            .ok_or_else(|| Refusal::PodNotFound(pod_ref.clone()))?;
        if pod.metadata.uid.as_deref() != Some(claimed.uid.as_str()) {
            return Err(Refusal::PodMismatch(pod_ref));
        }
        let Some(policy) = pod.annotations().get(ANNOTATION_INJECTED).cloned() else {
            return Err(Refusal::NotInjected(pod_ref));
        };
        debug!(pod = pod_ref, policy, "agent authenticated");
        Ok(PodIdentity {
            policy,
            revision: revision(&pod),
            ..claimed
        })
    }
}

/// The pod a review's status names, its policy still unknown; refuses
/// tokens not authenticated for [`AUDIENCE`] and tokens of anyone but a
/// service account's pod.
pub fn claimed_pod(status: &TokenReviewStatus) -> Result<PodIdentity, Refusal> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .unwrap_or_else(|| "not authenticated".into());
        return Err(Refusal::Unauthenticated(why));
    }
    // An API server that ignored spec.audiences (none do since 1.13)
    // would leave them out: refused as well.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(Refusal::Unauthenticated(format!(
            "the review's audiences are {audiences:?}"
        )));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_string())
        .filter(|ns| !ns.is_empty())
        .ok_or_else(|| Refusal::NotAPod(format!("user {username:?} is not a service account")))?;
    let extra = user.extra.unwrap_or_default();
    let one = |key: &str| {
        extra
            .get(key)
            .and_then(|values| values.first())
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| Refusal::NotAPod(format!("{username}'s token has no {key}")))
    };
    Ok(PodIdentity {
        name: one(EXTRA_POD_NAME)?,
        uid: one(EXTRA_POD_UID)?,
        namespace,
        policy: String::new(),
        revision: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    #[test]
    fn a_pods_revision_is_its_template_hash_else_its_controller() {
        let pod = |labels: serde_json::Value, owners: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "labels": labels, "ownerReferences": owners}
            }))
            .unwrap()
        };
        let owner = |kind: &str, controller: bool| {
            serde_json::json!([{"apiVersion": "apps/v1", "kind": kind, "name": "api",
                                "uid": "u", "controller": controller}])
        };
        for (labels, owners, want) in [
            (
                serde_json::json!({"pod-template-hash": "5f7c9", "controller-revision-hash": "x"}),
                owner("ReplicaSet", true),
                "5f7c9",
            ),
            (
                serde_json::json!({"controller-revision-hash": "api-7d4"}),
                owner("StatefulSet", true),
                "api-7d4",
            ),
            (serde_json::json!({}), owner("Job", true), "Job/api"),
            (serde_json::json!({}), owner("Job", false), ""),
            (serde_json::json!({}), serde_json::json!([]), ""),
        ] {
            assert_eq!(revision(&pod(labels, owners)), want);
        }
    }

    fn status(authenticated: bool, audiences: &[&str], username: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            error: (!authenticated).then(|| "token has expired".into()),
            user: Some(UserInfo {
                username: Some(username.into()),
                uid: Some("sa-uid".into()),
                groups: None,
                extra: Some(
                    [
                        (EXTRA_POD_NAME.to_string(), vec!["api-1".to_string()]),
                        (EXTRA_POD_UID.to_string(), vec!["pod-uid".to_string()]),
                    ]
                    .into(),
                ),
            }),
        }
    }

    #[test]
    fn a_pod_bound_token_for_the_audience_names_its_pod() {
        let pod = claimed_pod(&status(
            true,
            &[AUDIENCE],
            "system:serviceaccount:shop:default",
        ))
        .unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
            ("shop", "api-1", "pod-uid")
        );
    }

    #[test]
    fn other_tokens_are_refused() {
        let sa = "system:serviceaccount:shop:default";
        let refused = |s: TokenReviewStatus| claimed_pod(&s).unwrap_err();
        assert_eq!(
            refused(status(false, &[], sa)),
            Refusal::Unauthenticated("token has expired".into())
        );
        assert!(matches!(
            refused(status(true, &["https://kubernetes.default.svc"], sa)),
            Refusal::Unauthenticated(_)
        ));
        assert!(matches!(
            refused(status(true, &[AUDIENCE], "alice")),
            Refusal::NotAPod(_)
        ));
        let mut unbound = status(true, &[AUDIENCE], sa);
        unbound.user.as_mut().unwrap().extra = None;
        assert!(matches!(refused(unbound), Refusal::NotAPod(_)));
        let no_status = TokenReviewStatus::default();
        assert_eq!(refused(no_status).status(), 401);
    }

    #[tokio::test]
    async fn a_fixed_authenticator_knows_its_tokens_only() {
        let pod = PodIdentity {
            namespace: "shop".into(),
            name: "api-1".into(),
            uid: "pod-uid".into(),
            policy: "grpc".into(),
            revision: String::new(),
        };
        let auth = Authenticator::fixed([("t-1".to_string(), pod.clone())].into());
        assert_eq!(auth.authenticate("t-1").await, Ok(pod));
        let refused = auth.authenticate("t-2").await.unwrap_err();
        assert!(matches!(refused, Refusal::Unauthenticated(_)));
        assert_eq!(refused.status(), 401);
    }
}
