//! One reconciliation of one policy.
//!
//! Valid policy (as written and merged with the operator's defaults):
//! apply the ConfigMap holding the merged policy (server-side apply,
//! owner reference), count the pods the selector matches and those
//! injected with this policy (and those whose agent cannot get its image,
//! which then never start), find pods an older policy wins and Services
//! that bypass the agent ([`bypass`]), apply the status. Invalid
//! policy: only the status changes (Ready=False with every invalid field)
//! and the last good ConfigMap stays, so running agents keep their policy.
//! A valid policy asking for redirect interception under
//! `--forbid-redirect` is rendered as any other (pods injected before
//! keep reading it), but Ready=False (`RedirectForbidden`) says its new
//! pods are admitted without the agent.
//! Events are published on transitions, not on every pass.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::bypass::{self, Bypass};
use super::status::{Cond, apply_body, changed};
use super::{Context, LABEL_MANAGED_BY, RESYNC};
use crate::crd::{
    CA_FILE_KEY, CONDITION_AGENT_IMAGE_PULL_FAILING, CONDITION_BYPASSED, CONDITION_CONFLICTED,
    CONDITION_READY, POLICY_FILE_KEY, render_policy_file,
};
use crate::inject::{self, ANNOTATION_INJECTED};
use crate::{Error, KeepalivePolicy, KeepalivePolicyStatus, MANAGER, Result, selection};

/// Reconciles one policy; see the module documentation.
#[instrument(skip_all, fields(namespace = policy.metadata.namespace.as_deref(), policy = policy.metadata.name.as_deref()))]
pub async fn reconcile(policy: Arc<KeepalivePolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = Reconciler::new(&policy, &ctx)?.run().await;
    ctx.metrics
        .reconciled(result.as_ref().err(), started.elapsed());
    result
}

struct Reconciler<'a> {
    policy: &'a KeepalivePolicy,
    ctx: &'a Context,
    namespace: String,
    name: String,
    previous: KeepalivePolicyStatus,
    now: Timestamp,
}

impl<'a> Reconciler<'a> {
    fn new(policy: &'a KeepalivePolicy, ctx: &'a Context) -> Result<Self> {
        let namespace = policy.namespace().ok_or(Error::MissingField {
            kind: "KeepalivePolicy",
            field: "metadata.namespace",
        })?;
        Ok(Reconciler {
            policy,
            ctx,
            namespace,
            name: policy.name_any(),
            previous: policy.status.clone().unwrap_or_default(),
            now: Timestamp::now(),
        })
    }

    async fn run(&self) -> Result<Action> {
        let generation = self.policy.metadata.generation;
        let warnings = match self.policy.spec.check_with(&self.ctx.defaults) {
            Ok(w) => w,
            Err(invalid) => {
                let message = invalid.to_string();
                let ready = Cond {
                    type_: CONDITION_READY,
                    status: false,
                    reason: "InvalidPolicy",
                    message: &message,
                }
                .build(generation, &self.previous, self.now);
                let status = KeepalivePolicyStatus {
                    observed_generation: generation,
                    conditions: vec![ready.clone()],
                    selector: selector_text(self.policy),
                    ..self.previous.clone()
                };
                self.apply_status(&status).await?;
                info!(error = %message, "policy is invalid");
                if changed(&self.previous, &ready) {
                    self.publish(EventType::Warning, "InvalidPolicy", "Validate", message)
                        .await;
                }
                return Ok(Action::await_change());
            }
        };

        // Under --forbid-redirect a policy asking for redirect is rendered
        // (pods injected before keep reading it) but injects nothing.
        let forbidden = self
            .ctx
            .defaults
            .forbids(self.policy)
            .then(|| inject::redirect_forbidden_note(&self.name));
        let config_map = self.apply_config_map().await?;
        let counts = self.count_pods().await?;

        let mut ready_message = format!("ConfigMap {config_map} holds the policy");
        if let Some(note) = &forbidden {
            ready_message = format!("{ready_message}, but new pods get no agent: {note}");
        }
        if !warnings.is_empty() {
            let list: Vec<_> = warnings.iter().map(ToString::to_string).collect();
            ready_message = format!("{ready_message}; warnings: {}", list.join("; "));
        }
        let ready = Cond {
            type_: CONDITION_READY,
            status: forbidden.is_none(),
            reason: match forbidden {
                Some(_) => "RedirectForbidden",
                None => "PolicyRendered",
            },
            message: &ready_message,
        }
        .build(generation, &self.previous, self.now);
        let conflict_message = counts.conflict_message();
        let conflicted = match &conflict_message {
            Some(m) => Cond {
                type_: CONDITION_CONFLICTED,
                status: true,
                reason: "PodsSelectedByOlderPolicy",
                message: m,
            },
            None => Cond {
                type_: CONDITION_CONFLICTED,
                status: false,
                reason: "NoConflict",
                message: "no other policy selects these pods",
            },
        }
        .build(generation, &self.previous, self.now);

        let mode = self.policy.interception(self.ctx.defaults.interception());
        let bypasses = self.bypassing(&counts.pods, mode).await?;
        let redirect_allowed = !self.ctx.defaults.redirect_forbidden();
        let bypass_message =
            (!bypasses.is_empty()).then(|| bypass::message(&bypasses, redirect_allowed));
        let bypassed = match &bypass_message {
            Some(m) => Cond {
                type_: CONDITION_BYPASSED,
                status: true,
                reason: "ServicesBypassAgent",
                message: m,
            },
            None => Cond {
                type_: CONDITION_BYPASSED,
                status: false,
                reason: "NoBypass",
                message: "no Service reaches the app port of matched pods around the agent",
            },
        }
        .build(generation, &self.previous, self.now);

        let pull_message = counts.pull_failure_message(&self.namespace);
        let pull_failing = match &pull_message {
            Some(m) => Cond {
                type_: CONDITION_AGENT_IMAGE_PULL_FAILING,
                status: true,
                reason: "AgentImageNotPulled",
                message: m,
            },
            None => Cond {
                type_: CONDITION_AGENT_IMAGE_PULL_FAILING,
                status: false,
                reason: "NoPullFailure",
                message: "no injected pod is waiting on the agent's image",
            },
        }
        .build(generation, &self.previous, self.now);

        let status = KeepalivePolicyStatus {
            observed_generation: generation,
            conditions: vec![
                ready.clone(),
                conflicted.clone(),
                bypassed.clone(),
                pull_failing.clone(),
            ],
            matched_pods: counts.matched,
            injected_pods: counts.injected,
            selector: selector_text(self.policy),
            config_map: Some(config_map.clone()),
            // No mode is in force where the one asked for is forbidden.
            interception: forbidden.is_none().then_some(mode),
            bypassing_services: bypasses.iter().map(|b| b.service.clone()).collect(),
            // The control channel's to write (its own field manager):
            // left out of this apply, so it stays.
            last_rebalance: None,
            last_rollout: None,
        };
        self.apply_status(&status).await?;

        if self.previous.observed_generation != generation {
            let note = format!(
                "rendered generation {} into ConfigMap {config_map}",
                generation.unwrap_or(0)
            );
            self.publish(EventType::Normal, "PolicyRendered", "Render", note)
                .await;
            if !warnings.is_empty() {
                let list: Vec<_> = warnings.iter().map(ToString::to_string).collect();
                self.publish(
                    EventType::Warning,
                    "PolicyWarning",
                    "Validate",
                    list.join("; "),
                )
                .await;
            }
        }
        if let (Some(note), true) = (forbidden, changed(&self.previous, &ready)) {
            self.publish(EventType::Warning, "RedirectForbidden", "Inject", note)
                .await;
        }
        if let (Some(message), true) = (conflict_message, changed(&self.previous, &conflicted)) {
            self.publish(EventType::Warning, "SelectorConflict", "Select", message)
                .await;
        }
        let bypass_list_changed = self.previous.bypassing_services != status.bypassing_services;
        if let Some(message) = bypass_message
            && (changed(&self.previous, &bypassed) || bypass_list_changed)
        {
            self.publish(
                EventType::Warning,
                "ServicesBypassAgent",
                "Intercept",
                message,
            )
            .await;
        }
        // Once per episode, not per pod: the condition's message keeps the
        // count current.
        if let Some(message) = pull_message
            && became_true(&self.previous, &pull_failing)
        {
            warn!(pods = counts.pull_failures, "{message}");
            self.publish(
                EventType::Warning,
                "AgentImagePullFailing",
                "Inject",
                message,
            )
            .await;
        }
        Ok(Action::requeue(RESYNC))
    }

    /// Server-side applies `goaway-<name>`, owned by the policy.
    async fn apply_config_map(&self) -> Result<String> {
        let name = self.policy.config_map_name();
        let owner = self
            .policy
            .controller_owner_ref(&())
            .ok_or(Error::MissingField {
                kind: "KeepalivePolicy",
                field: "metadata.uid",
            })?;
        let config_map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some([(LABEL_MANAGED_BY.to_string(), MANAGER.to_string())].into()),
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            data: Some(self.config_map_data()?),
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(self.ctx.client.clone(), &self.namespace)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&config_map),
            )
            .await?;
        Ok(name)
    }

    /// The policy file and, once known, the CA. Never without a CA once
    /// one was written: the apply would take it away again.
    fn config_map_data(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let mut data = std::collections::BTreeMap::from([(
            POLICY_FILE_KEY.to_string(),
            render_policy_file(&self.policy.spec, &self.ctx.defaults)?,
        )]);
        if let Some(ca) = self.ctx.ca.current() {
            data.insert(CA_FILE_KEY.to_string(), ca.to_string());
        }
        Ok(data)
    }

    /// The namespace's Services that reach `pods` around the agent.
    async fn bypassing(&self, pods: &[Pod], mode: crate::Interception) -> Result<Vec<Bypass>> {
        if pods.is_empty() {
            return Ok(Vec::new());
        }
        let services = Api::<Service>::namespaced(self.ctx.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await?;
        Ok(bypass::bypassing(
            &services.items,
            pods,
            &self.policy.spec.port,
            mode,
        ))
    }

    /// Lists the selected pods and sorts them out.
    async fn count_pods(&self) -> Result<PodCounts> {
        let mut counts = PodCounts::default();
        let Some(selector) = selector_text(self.policy) else {
            return Ok(counts);
        };
        let pods = Api::<Pod>::namespaced(self.ctx.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&selector))
            .await?;
        let policies = self.ctx.policies.state();
        for pod in &pods.items {
            counts.matched += 1;
            if pod.annotations().get(ANNOTATION_INJECTED) == Some(&self.name) {
                counts.injected += 1;
                if let Some((image, reason)) = agent_pull_failure(pod) {
                    counts.pull_failures += 1;
                    counts.pull_images.insert(image);
                    counts.pull_reasons.insert(reason);
                }
            }
            let winner =
                selection::winner(&policies, &self.namespace, pod.labels(), &self.ctx.defaults);
            if let Some(w) = winner.filter(|w| w.name_any() != self.name)
                && selection::wins_over(w, self.policy)
            {
                counts.lost += 1;
                counts.winners.insert(w.name_any());
            }
        }
        counts.pods = pods.items;
        Ok(counts)
    }

    async fn apply_status(&self, status: &KeepalivePolicyStatus) -> Result<()> {
        Api::<KeepalivePolicy>::namespaced(self.ctx.client.clone(), &self.namespace)
            .patch_status(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(apply_body(status)),
            )
            .await?;
        Ok(())
    }

    /// Events are best effort: a failure is logged, never fails the pass.
    async fn publish(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let reference = self.policy.object_ref(&());
        if let Err(error) = self.ctx.recorder.publish(&event, &reference).await {
            warn!(%error, reason, "publishing event failed");
        }
    }
}

#[derive(Default)]
struct PodCounts {
    matched: i32,
    injected: i32,
    /// Injected pods whose agent waits on its image, the images and the
    /// kubelet's reasons.
    pull_failures: i32,
    pull_images: BTreeSet<String>,
    pull_reasons: BTreeSet<String>,
    lost: i32,
    winners: BTreeSet<String>,
    /// The matched pods (for [`bypass`]).
    pods: Vec<Pod>,
}

impl PodCounts {
    fn conflict_message(&self) -> Option<String> {
        (self.lost > 0).then(|| {
            let names: Vec<_> = self.winners.iter().map(String::as_str).collect();
            format!(
                "{} of {} selected pods are also selected by older policy {}, which wins them",
                self.lost,
                self.matched,
                names.join(", ")
            )
        })
    }
}

impl PodCounts {
    fn pull_failure_message(&self, namespace: &str) -> Option<String> {
        (self.pull_failures > 0).then(|| {
            let images: Vec<_> = self.pull_images.iter().map(String::as_str).collect();
            let reasons: Vec<_> = self.pull_reasons.iter().map(String::as_str).collect();
            format!(
                "{} of {} injected pods cannot pull the agent image {} ({}); they do not start, since the agent starts before the app: check the operator's --agent-image and --agent-image-pull-secret (chart values agent.image, agent.imagePullSecrets), whose Secrets must exist in namespace {namespace}",
                self.pull_failures,
                self.injected,
                images.join(", "),
                reasons.join(", ")
            )
        })
    }
}

/// What the kubelet says when it cannot get an image: backing off after a
/// failed pull, the failed pull itself, a name it cannot parse, or
/// `imagePullPolicy: Never` without the image on the node.
const PULL_FAILURES: [&str; 4] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// The agent's image and the kubelet's reason when the pod's agent
/// container waits because its image cannot be pulled.
fn agent_pull_failure(pod: &Pod) -> Option<(String, String)> {
    let status = pod
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == inject::CONTAINER_NAME)?;
    let reason = status.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
    PULL_FAILURES
        .contains(&reason.as_str())
        .then(|| (status.image.clone(), reason))
}

/// True when `new` is True and the previous condition of its type was not.
fn became_true(
    previous: &KeepalivePolicyStatus,
    new: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) -> bool {
    new.status == "True"
        && !previous
            .conditions
            .iter()
            .any(|c| c.type_ == new.type_ && c.status == "True")
}

/// The selector in `kubectl get -l` form; `None` when empty or invalid.
fn selector_text(policy: &KeepalivePolicy) -> Option<String> {
    let selector = Selector::try_from(policy.spec.selector.clone()).ok()?;
    (!selector.selects_all()).then(|| selector.to_string())
}
