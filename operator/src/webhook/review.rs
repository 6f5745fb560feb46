//! Answering one AdmissionReview, in three steps: decode the body, decide
//! the answer (the CPU work: parsing, [`inject::mutate`], serialising),
//! then record it — log, metric, Events — once it is the answer sent.
//!
//! The handler ([`super`]) runs the first two on a blocking thread under a
//! time budget. When the budget runs out first, the handler answers
//! instead ([`Webhook::over_budget`]) and the worker's late answer is
//! dropped unrecorded: [`Pending`] says which of the two answered, so
//! every review is logged, counted and reported once.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::events::{Event, EventType};
use tracing::{debug, error, info, warn};

use super::Webhook;
use super::redirect::{Refusal, redirect_note};
use crate::inject::{self, InjectError, Injection, Mutation, Outcome, Skip};
use crate::selection;

/// Why a request body could not be answered with an AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReviewError {
    /// Not JSON, or not an AdmissionReview with a request.
    #[error("not an AdmissionReview request: {0}")]
    Unreadable(String),
    /// The time budget ran out before the review was even decoded, so
    /// there is no uid to answer with.
    #[error("the review was not decoded within its {0:?} budget")]
    NotDecodedInBudget(Duration),
}

/// One review in flight, shared by the worker answering it and the
/// handler waiting for it with a budget: whichever settles it first has
/// answered it.
#[derive(Default)]
pub(super) struct Pending {
    settled: AtomicBool,
    known: OnceLock<Known>,
}

impl Pending {
    /// True for the first caller only: it answers, and records.
    fn settle(&self) -> bool {
        !self.settled.swap(true, Ordering::AcqRel)
    }
}

/// What answering without the worker takes, known once the review is
/// decoded.
struct Known {
    /// Allowed, unpatched.
    unchanged: AdmissionResponse,
    /// None when the object is not a readable Pod CREATE.
    pod: Option<PodRef>,
}

/// A pod under review: where its log lines and Events point.
#[derive(Clone)]
struct PodRef {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    /// Its controlling owner (the pod has no name or uid yet).
    target: ObjectReference,
    dry_run: bool,
}

/// A decoded review.
enum Decoded {
    Pod(Box<AdmissionRequest<Pod>>),
    /// The review parsed but its object did not parse as a Pod.
    UnreadablePod(Box<AdmissionRequest<DynamicObject>>, serde_json::Error),
}

/// What was decided for a Pod CREATE, to record once it is answered.
struct Decision {
    refusal: Option<Refusal>,
    unrecognised_inject: Option<String>,
    verdict: Verdict,
}

enum Verdict {
    Injected(Injection),
    PatchUnserialisable(String),
    Unchanged(Skip),
    /// The winning policy asks for redirect, which the operator forbids.
    RedirectForbidden(String),
    Failed(InjectError),
    Panicked,
}

impl Webhook {
    /// The worker's side: answers an AdmissionReview body with an
    /// AdmissionReview body, always `allowed: true`, patched when the pod
    /// is injected. `None` when the handler has answered it already.
    pub(super) fn review(
        &self,
        body: &[u8],
        pending: &Pending,
    ) -> Option<Result<Vec<u8>, ReviewError>> {
        let started = Instant::now();
        let decoded = match decode(body) {
            Ok(decoded) => decoded,
            Err(error) => {
                return pending.settle().then(|| {
                    warn!(%error, "unreadable admission review");
                    self.metrics
                        .admitted("error", "unreadable", started.elapsed());
                    Err(error)
                });
            }
        };
        match decoded {
            Decoded::Pod(request) => {
                let pod = PodRef::of(&request);
                let unchanged = AdmissionResponse::from(&*request);
                let _ = pending.known.set(Known {
                    unchanged: unchanged.clone(),
                    pod: pod.clone(),
                });
                let Some((pod, object)) = pod.zip(request.object.as_ref()) else {
                    let answer = serialise(unchanged);
                    return pending.settle().then(|| {
                        self.metrics
                            .admitted("unchanged", "not_pod_create", started.elapsed());
                        answer
                    });
                };
                let (response, decision) = self.decide(unchanged, &pod, object);
                let answer = serialise(response);
                if !pending.settle() {
                    debug!(uid = %request.uid, took = ?started.elapsed(), "review finished after its budget; its answer was dropped");
                    return None;
                }
                self.record(&pod, decision, started);
                Some(answer)
            }
            Decoded::UnreadablePod(request, parse) => {
                let unchanged = AdmissionResponse::from(&*request);
                let _ = pending.known.set(Known {
                    unchanged: unchanged.clone(),
                    pod: None,
                });
                let answer = serialise(unchanged);
                pending.settle().then(|| {
                    warn!(uid = %request.uid, error = %parse, "pod did not parse; admitted unchanged");
                    self.metrics
                        .admitted("error", "unreadable_pod", started.elapsed());
                    answer
                })
            }
        }
    }

    /// The handler's side, once the budget has run out: the pod allowed
    /// unpatched, with a warning for whoever created it, logged, counted
    /// (`reason="budget_exceeded"`) and, when a policy selects the pod, a
    /// Warning Event `InjectionFailed`. `None` when the worker answered
    /// first: its answer is on its way.
    pub(super) fn over_budget(
        &self,
        pending: &Pending,
        started: Instant,
    ) -> Option<Result<Vec<u8>, ReviewError>> {
        let budget = self.budget;
        if !pending.settle() {
            return None;
        }
        self.metrics
            .admitted("error", "budget_exceeded", started.elapsed());
        let Some(known) = pending.known.get() else {
            warn!(?budget, "admission review not decoded within its budget");
            return Some(Err(ReviewError::NotDecodedInBudget(budget)));
        };
        let mut response = known.unchanged.clone();
        response.warnings = Some(vec![format!(
            "goaway: not injected: the webhook did not finish its review within {budget:?}"
        )]);
        let Some(pod) = &known.pod else {
            warn!(uid = %response.uid, ?budget, "admission review over its time budget; admitted unchanged");
            return Some(serialise(response));
        };
        warn!(uid = %response.uid, namespace = %pod.namespace, pod = %pod.name, ?budget, "admission review over its time budget; admitted unchanged");
        let selected = self
            .policies
            .state()
            .iter()
            .any(|p| selection::selects(p, &pod.namespace, &pod.labels));
        if selected && !pod.dry_run {
            let note = format!(
                "pod {} admitted without the goaway agent: the webhook did not finish its review within its {budget:?} budget",
                pod.name
            );
            self.report(pod, "InjectionFailed", note);
        }
        Some(serialise(response))
    }

    /// The worker ended without an answer (a panic outside the
    /// injection's own catch_unwind): counted, unless already answered.
    pub(super) fn worker_failed(&self, pending: &Pending, started: Instant) {
        if pending.settle() {
            error!("admission review failed; admitted unchanged");
            self.metrics.admitted("error", "panic", started.elapsed());
        }
    }

    /// Decides the answer for a Pod CREATE: the CPU work, no side effects.
    fn decide(
        &self,
        response: AdmissionResponse,
        pod: &PodRef,
        object: &Pod,
    ) -> (AdmissionResponse, Decision) {
        let policies = self.policies.state();
        let token = (self.token)();
        let spec = object.spec.clone().unwrap_or_default();
        let refusal = self.namespace_refusal(
            &pod.namespace,
            &pod.labels,
            &object.metadata,
            &spec,
            &policies,
        );
        // Copied only for the namespaces that refuse redirect.
        let refusing;
        let defaults = match &refusal {
            Some(_) => {
                refusing = self.defaults.clone().refusing_redirect();
                &refusing
            }
            None => &self.defaults,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            inject::mutate(
                &object.metadata,
                &spec,
                &pod.namespace,
                &policies,
                defaults,
                &self.agent,
                &token,
            )
        }));
        let (response, verdict) = match result {
            Ok(Ok(Mutation {
                outcome: Outcome::Injected(injection),
                patch,
            })) => match response.clone().with_patch(patch) {
                Ok(patched) => (patched, Verdict::Injected(injection)),
                Err(e) => (response, Verdict::PatchUnserialisable(e.to_string())),
            },
            Ok(Ok(Mutation {
                outcome: Outcome::Unchanged(skip),
                ..
            })) => (response, Verdict::Unchanged(skip)),
            Ok(Ok(Mutation {
                outcome: Outcome::RedirectForbidden { policy },
                ..
            })) => {
                // Said to whoever creates the pod (kubectl prints it), as
                // well as in the Event on its owner.
                let mut warned = response;
                warned.warnings = Some(vec![format!(
                    "goaway: not injected: {}",
                    inject::redirect_forbidden_note(&policy)
                )]);
                (warned, Verdict::RedirectForbidden(policy))
            }
            Ok(Err(e)) => (response, Verdict::Failed(e)),
            Err(_) => (response, Verdict::Panicked),
        };
        let decision = Decision {
            refusal,
            unrecognised_inject: inject::unrecognised_inject_value(&object.metadata),
            verdict,
        };
        (response, decision)
    }

    /// Logs, counts and reports what was answered for `pod`.
    fn record(&self, pod: &PodRef, decision: Decision, started: Instant) {
        let PodRef {
            namespace, name, ..
        } = pod;
        let elapsed = || started.elapsed();
        if !pod.dry_run
            && let Some(warning) = &decision.unrecognised_inject
        {
            warn!(%namespace, pod = %name, "{warning}");
            self.report(
                pod,
                "InjectValueUnrecognised",
                format!("pod {name}: {warning}"),
            );
        }
        match decision.verdict {
            Verdict::Injected(injection) => {
                info!(%namespace, pod = %name, policy = %injection.policy, port = injection.app_port, "injected agent");
                self.metrics.admitted("injected", "", elapsed());
                if !pod.dry_run && !injection.replaced_sleep.is_empty() {
                    let note = format!(
                        "pod {name}: {}",
                        inject::pre_stop::replaced_note(&injection.replaced_sleep)
                    );
                    info!(%namespace, pod = %name, "{note}");
                    self.publish(pod, EventType::Normal, "PreStopSleepReplaced", note);
                }
                if !pod.dry_run && !injection.kept_pre_stop.is_empty() {
                    let note = format!(
                        "pod {name}: container(s) {} keep their own preStop hook, so they are not held until the goaway agent has drained; to drain first, {}",
                        injection.kept_pre_stop.join(", "),
                        inject::KEPT_PRE_STOP_HINT
                    );
                    self.report(pod, "PreStopKept", note);
                }
                if !pod.dry_run
                    && let Some((reason, note)) =
                        redirect_note(namespace, name, &injection, decision.refusal.as_ref())
                {
                    warn!(%namespace, pod = %name, reason, "{note}");
                    self.report(pod, reason, note);
                }
            }
            Verdict::PatchUnserialisable(e) => {
                error!(%namespace, pod = %name, error = %e, "patch did not serialise; admitted unchanged");
                self.metrics.admitted("error", "serialize", elapsed());
            }
            Verdict::Unchanged(skip) => {
                debug!(%namespace, pod = %name, reason = skip.as_str(), "admitted unchanged");
                self.metrics.admitted("unchanged", skip.as_str(), elapsed());
            }
            Verdict::RedirectForbidden(policy) => {
                let note = inject::redirect_forbidden_note(&policy);
                warn!(%namespace, pod = %name, %policy, "redirect interception forbidden; admitted unchanged");
                self.metrics
                    .admitted("unchanged", "redirect_forbidden", elapsed());
                if !pod.dry_run {
                    self.report(
                        pod,
                        "RedirectForbidden",
                        format!("pod {name} admitted without the goaway agent: {note}"),
                    );
                }
            }
            Verdict::Failed(e) => {
                warn!(%namespace, pod = %name, error = %e, "cannot inject; admitted unchanged");
                self.metrics.admitted("error", e.kind(), elapsed());
                if !pod.dry_run {
                    let note = format!("pod {name} admitted without the goaway agent: {e}");
                    self.report(pod, "InjectionFailed", note);
                }
            }
            Verdict::Panicked => {
                error!(%namespace, pod = %name, "injection panicked; admitted unchanged");
                self.metrics.admitted("error", "panic", elapsed());
            }
        }
    }

    /// Publishes a Warning about the pod on its controller, without
    /// holding up the admission.
    fn report(&self, pod: &PodRef, reason: &str, note: String) {
        self.publish(pod, EventType::Warning, reason, note);
    }

    /// Publishes an Event of `type_` about `pod`'s owner, in the
    /// background.
    fn publish(&self, pod: &PodRef, type_: EventType, reason: &str, note: String) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        let reference = pod.target.clone();
        let event = Event {
            type_,
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

/// The review, with its pod if the pod parses.
fn decode(body: &[u8]) -> Result<Decoded, ReviewError> {
    let no_request = || ReviewError::Unreadable("no request".into());
    match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        Ok(review) => Ok(Decoded::Pod(Box::new(
            review.try_into().map_err(|_| no_request())?,
        ))),
        Err(parse) => {
            let review: AdmissionReview<DynamicObject> =
                serde_json::from_slice(body).map_err(|e| ReviewError::Unreadable(e.to_string()))?;
            let request = review.try_into().map_err(|_| no_request())?;
            Ok(Decoded::UnreadablePod(Box::new(request), parse))
        }
    }
}

fn serialise(response: AdmissionResponse) -> Result<Vec<u8>, ReviewError> {
    serde_json::to_vec(&response.into_review()).map_err(|e| ReviewError::Unreadable(e.to_string()))
}

impl PodRef {
    /// The pod of a Pod CREATE; None for anything else.
    fn of(request: &AdmissionRequest<Pod>) -> Option<Self> {
        let pod = match (&request.operation, &request.object) {
            (Operation::Create, Some(pod)) if request.kind.kind == "Pod" => pod,
            _ => return None,
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let name = pod_name(request, pod);
        Some(PodRef {
            target: event_target(pod, &namespace, &name),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            namespace,
            name,
            dry_run: request.dry_run,
        })
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
