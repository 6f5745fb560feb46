//! The `KeepalivePolicy` custom resource (`goaway.dev/v1alpha1`;
//! docs/design.md §8).
//!
//! The spec embeds [`goaway_transport::Policy`] flattened, so `server`,
//! `enforcement`, `upstream`, `drain` and `rebalance` mean exactly what they mean in the
//! agent's policy file — one set of types, one schema, one validator.
//! The schema gets CEL rules (`rules.rs`) for what it cannot say itself, and
//! [`KeepalivePolicySpec::check`] is the same check in Rust, run by the
//! reconciler and the webhook in case the CRD in the cluster is older;
//! [`KeepalivePolicySpec::check_with`] adds the operator's defaults, which
//! the API server cannot see. The `drain` fields' documentation says that
//! an unset field takes the operator's default (`docs.rs`).

// Each printcolumn(...) repeats `type_`; clippy takes that for a duplicate.
#![allow(clippy::duplicated_attributes)]

mod docs;
mod rules;
mod validate;

use goaway_transport::Policy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    ValidationRule,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use rules::{CelRule, RULES};
pub use validate::{SpecError, SpecWarning};

use crate::defaults::PolicyDefaults;

/// The agent's listening port when the policy does not say.
pub const DEFAULT_AGENT_PORT: u16 = 15051;

/// Condition type: the policy is valid and its ConfigMap is current.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: some selected pods go to an older policy instead.
pub const CONDITION_CONFLICTED: &str = "Conflicted";
/// Condition type: Services select matched pods but send their traffic
/// around the agent in the policy's interception mode.
pub const CONDITION_BYPASSED: &str = "Bypassed";
/// Condition type: injected pods cannot pull the agent's image, so they
/// do not start (the agent, a native sidecar, starts before the app).
pub const CONDITION_AGENT_IMAGE_PULL_FAILING: &str = "AgentImagePullFailing";

/// How clients reach the agent. namedPort (the operator's default unless
/// it runs with --default-interception redirect): the agent takes over the
/// app port's name, so Services with that named targetPort go through it;
/// clients of headless Services, numeric targetPorts and pod IPs bypass it
/// (status.bypassingServices names such Services). No privileges. redirect:
/// an init container running as root with NET_ADMIN installs an nftables
/// rule in the pod's network namespace that sends all inbound TCP for the
/// app port to the agent, whatever the client dialled; Pod Security
/// "baseline" namespaces refuse such pods: where the operator finds a
/// namespace refuses them, pods get namedPort instead. An operator run
/// with --forbid-redirect injects no pod of a policy asking for redirect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Interception {
    /// The agent takes over the app port's name: Services with that named
    /// targetPort go through it. No privileges; clients that dial pod IPs
    /// (headless Services, numeric targetPorts) bypass it.
    #[default]
    NamedPort,
    /// An init container with NET_ADMIN redirects inbound TCP for the app
    /// port to the agent (nftables, in the pod's network namespace): every
    /// client goes through it, whatever it dialled.
    Redirect,
}

impl std::str::FromStr for Interception {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "namedPort" => Ok(Interception::NamedPort),
            "redirect" => Ok(Interception::Redirect),
            _ => Err(format!("want namedPort or redirect, got {s:?}")),
        }
    }
}

/// Connection management for the gRPC pods a label selector picks.
///
/// The operator injects the goaway agent into every matching pod created
/// after the policy exists. The agent fronts the container port named by
/// `port`, enforces the keepalive and connection-age settings on every
/// client connection, and drains connections with GOAWAY before the pod
/// stops.
#[derive(CustomResource, JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "goaway.dev",
    version = "v1alpha1",
    kind = "KeepalivePolicy",
    namespaced,
    shortname = "kap",
    category = "goaway",
    status = "KeepalivePolicyStatus",
    derive = "PartialEq",
    doc = "KeepalivePolicy gives the pods its selector matches grpc-go's server keepalive, connection age and idle limits, client-ping enforcement and a GOAWAY drain before they stop, through an injected goaway agent sidecar.",
    printcolumn(
        name = "Selector",
        type_ = "string",
        json_path = ".status.selector",
        description = "The pod selector"
    ),
    printcolumn(
        name = "Port",
        type_ = "string",
        json_path = ".spec.port",
        description = "The application port the agent fronts"
    ),
    printcolumn(
        name = "Interception",
        type_ = "string",
        json_path = ".status.interception",
        description = "How clients reach the agent: namedPort or redirect"
    ),
    printcolumn(
        name = "Max Age",
        type_ = "string",
        json_path = ".spec.server.maxConnectionAge",
        description = "server.maxConnectionAge"
    ),
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matchedPods",
        description = "Pods the selector matches"
    ),
    printcolumn(
        name = "Injected",
        type_ = "integer",
        json_path = ".status.injectedPods",
        description = "Matched pods running the agent with this policy"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the policy is valid and rendered"
    ),
    printcolumn(
        name = "Bypassed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Bypassed\")].status",
        description = "Whether Services send traffic for matched pods around the agent"
    ),
    printcolumn(
        name = "Last Rollout",
        type_ = "string",
        json_path = ".status.lastRollout.result",
        description = "The drains of the last rollout, as the agents reported them"
    ),
    printcolumn(
        name = "Rebalanced",
        type_ = "date",
        json_path = ".status.lastRebalance.time",
        description = "When a scale-up last had the agents move connections to new pods"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::add_to_schema, transform = docs::add_operator_defaults)]
pub struct KeepalivePolicySpec {
    /// Pods in this namespace that get the agent. Must not be empty. When
    /// two policies select the same pod, the older policy wins (then the
    /// name in alphabetical order) and the other reports Conflicted.
    pub selector: LabelSelector,
    /// The application's container port the agent fronts: its name (for
    /// example "grpc") or its number. In namedPort interception the agent
    /// takes over a named port's name, so Services with that targetPort
    /// send traffic through the agent; Services with a numeric targetPort
    /// bypass it (use redirect interception for those).
    pub port: IntOrString,
    /// The port the agent listens on inside the pod. Default 15051.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub agent_port: Option<i32>,
    /// How clients reach the agent (see the type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interception: Option<Interception>,
    /// The connection-management policy: the `server`, `enforcement`,
    /// `upstream`, `drain` and `rebalance` groups of the agent's policy
    /// file.
    #[serde(flatten)]
    pub policy: Policy,
}

/// What the operator observed about a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeepalivePolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready: the policy is valid and its ConfigMap holds it (False with
    /// the invalid fields otherwise). Conflicted: pods this policy selects
    /// are also selected by an older policy, which wins them. Bypassed:
    /// Services reach matched pods around the agent.
    /// AgentImagePullFailing: injected pods cannot pull the agent's image,
    /// so they do not start.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Pods in the namespace the selector matches.
    #[serde(default)]
    pub matched_pods: i32,
    /// Matched pods running the agent with this policy.
    #[serde(default)]
    pub injected_pods: i32,
    /// The selector in `kubectl get -l` form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The ConfigMap holding the rendered policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// The interception mode in force: the policy's, else the operator's
    /// default (see the type); unset when the policy asks for redirect
    /// and the operator forbids it (--forbid-redirect: Ready is False,
    /// RedirectForbidden). A namespace that refuses redirect's init
    /// container gives its pods namedPort, with a Warning Event on each
    /// pod's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interception: Option<Interception>,
    /// Services (names, sorted) that select matched pods but reach the app
    /// port around the agent in this mode: a numeric targetPort or a
    /// headless Service in namedPort mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bypassing_services: Vec<String>,
    /// The last scale-up after which this policy's agents were told to
    /// move connections to the new pods (`rebalance.enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebalance: Option<LastRebalance>,
    /// The drains of the last rollout, as the agents reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout: Option<LastRollout>,
}

/// The drains of one rollout, summed: of pods of one template revision,
/// each less than ten minutes after the one before. Every field defaults,
/// so a status written by another version of the operator still reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LastRollout {
    /// When its first drain was reported (RFC 3339).
    pub started: String,
    /// When its last drain was reported (RFC 3339).
    pub last_drain: String,
    /// The drained pods' template revision: a Deployment's
    /// `pod-template-hash`, a StatefulSet's or DaemonSet's
    /// `controller-revision-hash`.
    pub revision: String,
    /// Pods drained.
    pub pods: u64,
    /// Connections that closed after their streams finished.
    pub connections_drained: u64,
    /// Streams that ran to completion during the drains.
    pub streams_completed: u64,
    /// Connections cut at a drain's deadline with streams still open.
    pub connections_hard_closed: u64,
    /// Streams cut at a drain's deadline: calls that failed.
    pub streams_cut: u64,
    /// In short, as `kubectl get` shows it: "3 pods drained, 0 streams
    /// cut".
    pub result: String,
}

/// A scale-up the agents rebalanced after. Every field defaults, so a
/// status written by another version of the operator still reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LastRebalance {
    /// The Service whose ready endpoints grew.
    pub service: String,
    /// Its ready pods before.
    pub from: u32,
    /// Its ready pods after.
    pub to: u32,
    /// When (RFC 3339).
    pub time: String,
}

/// Conditions are a map keyed by type, so server-side apply merges them.
fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

impl KeepalivePolicy {
    /// The name of the ConfigMap holding this policy's agent file.
    pub fn config_map_name(&self) -> String {
        config_map_name(&kube::ResourceExt::name_any(self))
    }

    /// The interception mode: the policy's, else `default` (the
    /// operator's).
    pub fn interception(&self, default: Interception) -> Interception {
        self.spec.interception.unwrap_or(default)
    }

    /// The port the agent listens on.
    pub fn agent_port(&self) -> i32 {
        self.spec
            .agent_port
            .unwrap_or(i32::from(DEFAULT_AGENT_PORT))
    }

    /// The condition of the given type, if reported.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
    }
}

/// `goaway-<policyName>`: the agent contract's ConfigMap name.
pub fn config_map_name(policy: &str) -> String {
    format!("{CONFIG_MAP_PREFIX}{policy}")
}

const CONFIG_MAP_PREFIX: &str = "goaway-";

/// The longest policy name whose ConfigMap name is still a valid object
/// name (253 characters).
pub const MAX_POLICY_NAME_LEN: usize = 253 - CONFIG_MAP_PREFIX.len();

/// The ConfigMap key the agent reads (`/etc/goaway/policy.yaml`).
pub const POLICY_FILE_KEY: &str = "policy.yaml";
/// The ConfigMap key of the operator's CA certificate (PEM), which the
/// agent checks the control channel's certificate against.
pub const CA_FILE_KEY: &str = "ca.crt";

/// The agent's policy file: the YAML serialisation of the embedded policy
/// with the operator's `defaults` filled into the fields it leaves out.
/// With no defaults it is the policy as written.
pub fn render_policy_file(
    spec: &KeepalivePolicySpec,
    defaults: &PolicyDefaults,
) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&defaults.merge(&spec.policy))
}

/// The CustomResourceDefinition as applied: kube's derived one, with
/// `nullable` dropped from the spec's schema. The API server keeps a null
/// in a nullable field, and a rule guarded by `has()` would then call
/// `duration(null)` and fail to evaluate; without `nullable` the null is
/// pruned, which is what the operator makes of it anyway (unset).
pub fn definition() -> CustomResourceDefinition {
    let mut crd = <KeepalivePolicy as kube::CustomResourceExt>::crd();
    for version in &mut crd.spec.versions {
        let spec = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"));
        if let Some(spec) = spec {
            drop_nullable(spec);
            restrict_selector_operators(spec);
        }
        // The ConfigMap the controller names after the policy must be
        // able to exist; the API server checks the name at creation.
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            root.x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(ValidationRule {
                    rule: format!("size(self.metadata.name) <= {MAX_POLICY_NAME_LEN}"),
                    message: Some(format!(
                        "metadata.name must be at most {MAX_POLICY_NAME_LEN} characters: the policy's ConfigMap is named goaway-<name>"
                    )),
                    ..ValidationRule::default()
                });
        }
    }
    crd
}

/// k8s-openapi's LabelSelector schema takes any string as a
/// matchExpressions operator; the four valid ones are listed so that the
/// API server refuses the rest at apply time rather than the policy
/// turning up `Ready=False` later.
fn restrict_selector_operators(spec: &mut JSONSchemaProps) {
    let operator = spec
        .properties
        .as_mut()
        .and_then(|p| p.get_mut("selector"))
        .and_then(|s| s.properties.as_mut())
        .and_then(|p| p.get_mut("matchExpressions"))
        .and_then(|m| match m.items.as_mut() {
            Some(JSONSchemaPropsOrArray::Schema(item)) => item.properties.as_mut(),
            _ => None,
        })
        .and_then(|p| p.get_mut("operator"));
    if let Some(operator) = operator {
        operator.enum_ = Some(
            ["In", "NotIn", "Exists", "DoesNotExist"]
                .map(|o| JSON(serde_json::Value::from(o)))
                .to_vec(),
        );
    }
}

fn drop_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().flat_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(s) => std::slice::from_mut(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(v) => v.as_mut_slice(),
        }))
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.all_of.iter_mut().flatten());
    for child in children {
        drop_nullable(child);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = schema.additional_properties.as_mut() {
        drop_nullable(s);
    }
}

/// The CRD manifest as committed in `crds/keepalivepolicy.yaml`.
pub fn manifest() -> Result<String, serde_yaml::Error> {
    let crd = definition();
    Ok(format!(
        "# Generated by `cargo run -p goaway-operator --bin crdgen`; do not edit.\n{}",
        serde_yaml::to_string(&crd)?
    ))
}
