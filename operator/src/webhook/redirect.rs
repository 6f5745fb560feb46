//! Where a policy asking for redirect interception does not get it, and
//! what the Warning Events say (docs/design.md §10.2): with
//! `--forbid-redirect` its pods are not injected at all
//! ([`PolicyDefaults::forbids`](crate::PolicyDefaults::forbids) decides
//! that alone, as for `goaway-operator inject`); in a namespace that
//! refuses redirect's NET_ADMIN init container — by its Pod Security
//! label, else by the API server's answer to a probe
//! ([`super::redirect_probe`]) — they get namedPort instead.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::Webhook;
use super::redirect_probe::{Labels, Verdict};
use crate::inject::{self, Injection};
use crate::{KeepalivePolicy, selection};

/// The namespace label Pod Security admission enforces.
const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// Pod Security levels that refuse a container adding NET_ADMIN.
const LEVELS_REFUSING_NET_ADMIN: [&str; 2] = ["baseline", "restricted"];

/// How the webhook knows that a pod's namespace refuses redirect
/// interception's init container.
pub(super) enum Refusal {
    /// The namespace's Pod Security label enforces this level.
    PodSecurity(String),
    /// A dry-run probe pod with the container was refused (the API
    /// server's message), one without it admitted.
    Admission(String),
}

impl Webhook {
    /// Why the namespace of a pod (its metadata, spec and labels) refuses
    /// redirect interception, when the policy that wins the pod asks for
    /// it and the operator does not forbid it anyway: the namespace's Pod
    /// Security label, else the API server's answer to a probe, which may
    /// wait a little for it. `None` otherwise, and when nobody knows yet.
    pub(super) fn namespace_refusal(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        meta: &ObjectMeta,
        spec: &PodSpec,
        policies: &[Arc<KeepalivePolicy>],
    ) -> Option<Refusal> {
        if self.defaults.redirect_forbidden() || inject::skip_reason(meta, spec).is_some() {
            return None;
        }
        let winner = selection::winner(policies, namespace, labels, &self.defaults)?;
        if !self.defaults.wants_redirect(winner) {
            return None;
        }
        let namespace_labels = self.namespace_labels(namespace);
        let level = namespace_labels
            .as_ref()
            .and_then(|l| l.get(POD_SECURITY_ENFORCE));
        if let Some(level) = level.filter(|l| LEVELS_REFUSING_NET_ADMIN.contains(&l.as_str())) {
            return Some(Refusal::PodSecurity(level.clone()));
        }
        let probe = self.probe.as_ref()?;
        let wait = probe.wait(self.budget / 2);
        match probe.verdict(namespace, &namespace_labels, wait)? {
            Verdict::Refused(message) => Some(Refusal::Admission(message)),
            Verdict::Admitted | Verdict::Unrelated(_) | Verdict::Failed(_) => None,
        }
    }

    /// The namespace's labels, if the namespace cache knows it.
    fn namespace_labels(&self, namespace: &str) -> Labels {
        let ns = self.namespaces.as_ref()?.get(&ObjectRef::new(namespace))?;
        Some(ns.labels().clone())
    }
}

/// The Warning Event's reason and note for pod `name` of `namespace`,
/// when its policy asked for redirect interception and its namespace gave
/// it namedPort.
pub(super) fn redirect_note(
    namespace: &str,
    name: &str,
    injection: &Injection,
    refusal: Option<&Refusal>,
) -> Option<(&'static str, String)> {
    if !injection.redirect_refused {
        return None;
    }
    let (reason, why) = match refusal? {
        Refusal::PodSecurity(level) => (
            "RedirectRefusedByPodSecurity",
            format!(
                "but namespace {namespace} enforces Pod Security level {level:?}, which refuses its NET_ADMIN init container"
            ),
        ),
        Refusal::Admission(message) => (
            "RedirectRefusedByAdmission",
            format!(
                "but the API server refuses its NET_ADMIN init container in namespace {namespace} (a dry-run probe pod with it was refused, one without it admitted: {message})"
            ),
        ),
    };
    Some((
        reason,
        format!(
            "pod {name}: policy {} asks for redirect interception, {why}; injected with namedPort interception instead (clients that dial pod IPs bypass the agent)",
            injection.policy
        ),
    ))
}
