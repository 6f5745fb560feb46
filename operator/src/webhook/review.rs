//! Answering one AdmissionReview.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::ResourceExt;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, error, info, warn};

use super::Webhook;
use crate::inject::{self, Mutation, Outcome};

/// The namespace label Pod Security admission enforces.
pub(super) const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// Pod Security levels that refuse a container adding NET_ADMIN.
pub(super) const LEVELS_REFUSING_NET_ADMIN: [&str; 2] = ["baseline", "restricted"];

/// Why a request body could not be answered at all.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not an AdmissionReview with a request.
    #[error("not an AdmissionReview request: {0}")]
    Unreadable(String),
}

impl Webhook {
    /// Answers an AdmissionReview body with an AdmissionReview body.
    /// Always `allowed: true`; a patch only when the pod is injected.
    pub fn review(&self, body: &[u8]) -> Result<Vec<u8>, ReviewError> {
        let started = Instant::now();
        let response = match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
            Ok(review) => {
                let request: AdmissionRequest<Pod> = review
                    .try_into()
                    .map_err(|_| ReviewError::Unreadable("no request".into()))?;
                self.answer(&request, started)
            }
            Err(parse) => self.admit_unreadable_pod(body, &parse, started)?,
        };
        serde_json::to_vec(&response.into_review())
            .map_err(|e| ReviewError::Unreadable(e.to_string()))
    }

    /// The review parsed but the pod did not: admit it by uid, unchanged.
    fn admit_unreadable_pod(
        &self,
        body: &[u8],
        parse: &serde_json::Error,
        started: Instant,
    ) -> Result<AdmissionResponse, ReviewError> {
        let review: AdmissionReview<kube::core::DynamicObject> =
            serde_json::from_slice(body).map_err(|e| ReviewError::Unreadable(e.to_string()))?;
        let request: AdmissionRequest<_> = review
            .try_into()
            .map_err(|_| ReviewError::Unreadable("no request".into()))?;
        warn!(uid = %request.uid, error = %parse, "pod did not parse; admitted unchanged");
        self.metrics
            .admitted("error", "unreadable_pod", started.elapsed());
        Ok(AdmissionResponse::from(&request))
    }

    fn answer(&self, request: &AdmissionRequest<Pod>, started: Instant) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        let pod = match (&request.operation, &request.object) {
            (Operation::Create, Some(pod)) if request.kind.kind == "Pod" => pod,
            _ => {
                self.metrics
                    .admitted("unchanged", "not_pod_create", started.elapsed());
                return response;
            }
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let name = pod_name(request, pod);
        let policies = self.policies.state();
        let token = (self.token)();
        let spec = pod.spec.clone().unwrap_or_default();
        let level = self.pod_security_level(&namespace);
        // Copied only for the namespaces that refuse redirect.
        let refusing;
        let defaults = match &level {
            Some(l) if LEVELS_REFUSING_NET_ADMIN.contains(&l.as_str()) => {
                refusing = self.defaults.clone().refusing_redirect();
                &refusing
            }
            _ => &self.defaults,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            inject::mutate(
                &pod.metadata,
                &spec,
                &namespace,
                &policies,
                defaults,
                &self.agent,
                &token,
            )
        }));
        let elapsed = || started.elapsed();
        if !request.dry_run
            && let Some(warning) = inject::unrecognised_inject_value(&pod.metadata)
        {
            warn!(%namespace, pod = %name, "{warning}");
            self.report(
                pod,
                &namespace,
                &name,
                "InjectValueUnrecognised",
                format!("pod {name}: {warning}"),
            );
        }
        match result {
            Ok(Ok(Mutation {
                outcome: Outcome::Injected(injection),
                patch,
            })) => match response.clone().with_patch(patch) {
                Ok(patched) => {
                    info!(%namespace, pod = %name, policy = %injection.policy, port = injection.app_port, "injected agent");
                    self.metrics.admitted("injected", "", elapsed());
                    if !request.dry_run && !injection.kept_pre_stop.is_empty() {
                        let note = format!(
                            "pod {name}: container(s) {} keep their own preStop hook, so they are not held until the goaway agent has drained; to drain first, {}",
                            injection.kept_pre_stop.join(", "),
                            inject::KEPT_PRE_STOP_HINT
                        );
                        self.report(pod, &namespace, &name, "PreStopKept", note);
                    }
                    if !request.dry_run && injection.redirect_refused {
                        let note = format!(
                            "pod {name}: policy {} asks for redirect interception, but namespace {namespace} enforces Pod Security level {:?}, which refuses its NET_ADMIN init container; injected with namedPort interception instead (clients that dial pod IPs bypass the agent)",
                            injection.policy,
                            level.as_deref().unwrap_or_default()
                        );
                        warn!(%namespace, pod = %name, "{note}");
                        self.report(pod, &namespace, &name, "RedirectRefusedByPodSecurity", note);
                    }
                    patched
                }
                Err(e) => {
                    error!(%namespace, pod = %name, error = %e, "patch did not serialise; admitted unchanged");
                    self.metrics.admitted("error", "serialize", elapsed());
                    response
                }
            },
            Ok(Ok(Mutation {
                outcome: Outcome::Unchanged(skip),
                ..
            })) => {
                debug!(%namespace, pod = %name, reason = skip.as_str(), "admitted unchanged");
                self.metrics.admitted("unchanged", skip.as_str(), elapsed());
                response
            }
            Ok(Err(e)) => {
                warn!(%namespace, pod = %name, error = %e, "cannot inject; admitted unchanged");
                self.metrics.admitted("error", e.kind(), elapsed());
                if !request.dry_run {
                    let note = format!("pod {name} admitted without the goaway agent: {e}");
                    self.report(pod, &namespace, &name, "InjectionFailed", note);
                }
                response
            }
            Err(_) => {
                error!(%namespace, pod = %name, "injection panicked; admitted unchanged");
                self.metrics.admitted("error", "panic", elapsed());
                response
            }
        }
    }

    /// The namespace's enforced Pod Security level, if the namespace
    /// cache knows it.
    fn pod_security_level(&self, namespace: &str) -> Option<String> {
        let ns = self.namespaces.as_ref()?.get(&ObjectRef::new(namespace))?;
        ns.labels().get(POD_SECURITY_ENFORCE).cloned()
    }

    /// Publishes a Warning about the pod on its controller (the pod has no
    /// name or uid yet), without holding up the admission.
    fn report(&self, pod: &Pod, namespace: &str, name: &str, reason: &str, note: String) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        let reference = event_target(pod, namespace, name);
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Inject".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await {
                warn!(%error, "publishing event failed");
            }
        });
    }
}

fn pod_name(request: &AdmissionRequest<Pod>, pod: &Pod) -> String {
    [
        Some(request.name.as_str()),
        pod.metadata.name.as_deref(),
        pod.metadata.generate_name.as_deref(),
    ]
    .into_iter()
    .flatten()
    .find(|n| !n.is_empty())
    .unwrap_or("<unnamed>")
    .to_string()
}

/// The pod's controlling owner (a ReplicaSet, Job...), else the pod.
fn event_target(pod: &Pod, namespace: &str, name: &str) -> ObjectReference {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match owner {
        Some(o) => ObjectReference {
            api_version: Some(o.api_version.clone()),
            kind: Some(o.kind.clone()),
            name: Some(o.name.clone()),
            namespace: Some(namespace.into()),
            uid: Some(o.uid.clone()),
            ..Default::default()
        },
        None => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
    }
}
