//! The pod mutation (the injection rules of docs/design.md §9), as a pure
//! function.
//!
//! [`mutate`] takes a pod's (or pod template's) metadata and spec, the
//! policies of its namespace and the agent settings, and returns what
//! happens — injected with which policy, or unchanged and why — plus the
//! RFC 6902 JSON patch that does it. The admission webhook sends that
//! patch to the API server; `goaway-operator inject` applies it to pod
//! templates in manifests. One code path, so the two cannot drift.
//!
//! What injection does, for the policy that [wins](crate::selection) the
//! pod:
//! - appends the agent as a native sidecar (an init container with
//!   `restartPolicy: Always`) with a hardened securityContext, a startup
//!   and liveness probe on `/healthz` and a readiness probe on `/readyz`;
//! - in `namedPort` interception (the default), takes over the
//!   application port's name (`ports.rs`) and rewrites the application's
//!   probes that used the name to the number; in `redirect` interception,
//!   leaves the port alone and adds an init container before the agent
//!   that runs `goaway-agent intercept` with `NET_ADMIN` (as root, no
//!   other capability), so inbound TCP for the port reaches the agent —
//!   unless the pod's namespace refuses that container
//!   ([`PolicyDefaults::refusing_redirect`]): namedPort then, and
//!   [`Injection::redirect_refused`] says so;
//! - gives every application container a `preStop.httpGet` to the agent's
//!   `/drain` carrying the pod's drain token. A preStop that only sleeps
//!   ([`pre_stop`]) is replaced by it, the sleep kept as the drain's floor
//!   (`/drain?min=…`) and the original recorded for `uninject`; any other
//!   preStop is kept (and reported) — such a container gets the token
//!   and the drain URL as `GOAWAY_DRAIN_TOKEN`/`GOAWAY_DRAIN_URL`, so its
//!   hook can drain first;
//! - applies the pod's per-workload annotations ([`overrides`]) to the
//!   agent container;
//! - raises `terminationGracePeriodSeconds` to cover `drain.delay +
//!   drain.timeout` (the operator's [`PolicyDefaults`] filling what the
//!   policy leaves out, as in the file the agent reads) plus
//!   [`DRAIN_MARGIN_SECONDS`], never lowering it;
//! - mounts the policy ConfigMap at `/etc/goaway` (the directory, so
//!   updates reach the agent) and marks the pod `goaway.dev/injected`;
//! - appends the operator's agent pull secrets
//!   ([`AgentConfig::image_pull_secrets`]) the pod does not list yet to
//!   its `imagePullSecrets`, naming those it added in
//!   [`ANNOTATION_INJECTED_PULL_SECRETS`];
//! - with the operator's control channel configured
//!   ([`AgentConfig::control_url`]), gives the agent a projected
//!   service-account token for the channel's audience
//!   ([`goaway_transport::control::AUDIENCE`], an hour, rotated by the
//!   kubelet) at [`TOKEN_PATH`], and the flags to dial the channel with
//!   it and the CA the controller writes into the ConfigMap
//!   ([`CA_PATH`]).
//!
//! hostNetwork pods, pods opted out and pods already injected are left
//! alone, which also makes a second pass a no-op. So are the pods of a
//! policy asking for redirect interception when the operator forbids it
//! (`--forbid-redirect`, [`Outcome::RedirectForbidden`]): no pod gets the
//! NET_ADMIN init container, and none gets a mode its owner did not ask
//! for.

pub mod overrides;
mod ports;
pub mod pre_stop;
mod probe;
mod sidecar;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EnvVar, HTTPGetAction, HTTPHeader, Lifecycle, LifecycleHandler,
    LocalObjectReference, PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

pub use probe::{LABEL_PROBE, LABEL_PROBE_VALUE, PROBE_NAME_PREFIX, redirect_probe_pod};
pub use sidecar::{
    ADMIN_PORT_NAME, AGENT_UID, AgentConfig, DEFAULT_ADMIN_ALLOW, DEFAULT_ADMIN_PORT,
    DEFAULT_AGENT_IMAGE, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, PROXY_PORT_NAME,
};

use crate::crd::Interception;
use crate::defaults::PolicyDefaults;
use crate::{KeepalivePolicy, selection};

/// Pod annotation: `"false"` or `"disabled"` opts the pod out.
pub const ANNOTATION_INJECT: &str = "goaway.dev/inject";
/// Pod annotation set on injection: the policy's name.
pub const ANNOTATION_INJECTED: &str = "goaway.dev/injected";
/// Pod annotation set on injection when it added names to the pod's
/// `imagePullSecrets` (`--agent-image-pull-secret`): those names,
/// comma-separated, so that `uninject` removes them and no other.
pub const ANNOTATION_INJECTED_PULL_SECRETS: &str = "goaway.dev/injected-image-pull-secrets";
/// Namespace or object label the chart's selectors use to opt out.
pub const LABEL_INJECT: &str = "goaway.dev/inject";
/// The [`LABEL_INJECT`] value that opts out.
pub const LABEL_INJECT_DISABLED: &str = "disabled";
/// Values of [`ANNOTATION_INJECT`] and [`LABEL_INJECT`] that opt out: the
/// same two for both (the chart's webhook selectors list them too).
pub const OPT_OUT_VALUES: [&str; 2] = ["disabled", "false"];
/// Values that say "inject" explicitly (the default anyway).
pub const OPT_IN_VALUES: [&str; 2] = ["enabled", "true"];
/// The sidecar's container name.
pub const CONTAINER_NAME: &str = "goaway-agent";
/// Redirect mode: the init container that runs `goaway-agent intercept`.
pub const INTERCEPT_CONTAINER_NAME: &str = "goaway-intercept";
/// The policy volume's name.
pub const VOLUME_NAME: &str = "goaway-policy";
/// Where the policy ConfigMap is mounted.
pub const MOUNT_PATH: &str = "/etc/goaway";
/// The file the agent reads.
pub const POLICY_PATH: &str = "/etc/goaway/policy.yaml";
/// The operator's CA certificate, from the policy ConfigMap
/// ([`crate::crd::CA_FILE_KEY`]), for the control channel.
pub const CA_PATH: &str = "/etc/goaway/ca.crt";
/// The projected token volume's name (control channel only).
pub const TOKEN_VOLUME_NAME: &str = "goaway-token";
/// Where the token volume is mounted in the agent.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/goaway.dev";
/// The agent's token for the control channel.
pub const TOKEN_PATH: &str = "/var/run/secrets/goaway.dev/token";
/// How long each token the kubelet mints for the channel is valid; it
/// rotates it at 80% of that.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// The agent's drain endpoint.
pub const DRAIN_PATH: &str = "/drain";
/// Set on application containers that keep their own preStop hook: the
/// pod's drain token...
pub const ENV_DRAIN_TOKEN: &str = "GOAWAY_DRAIN_TOKEN";
/// ...and the agent's drain URL, so that hook can drain first.
pub const ENV_DRAIN_URL: &str = "GOAWAY_DRAIN_URL";
/// The shell command a kept preStop hook runs first to drain (it blocks
/// until the drain has finished), with curl...
pub const KEPT_PRE_STOP_CURL: &str =
    r#"curl -fsS -H "Authorization: Bearer $GOAWAY_DRAIN_TOKEN" "$GOAWAY_DRAIN_URL""#;
/// ...or with wget (busybox's included).
pub const KEPT_PRE_STOP_WGET: &str =
    r#"wget -q -O- --header "Authorization: Bearer $GOAWAY_DRAIN_TOKEN" "$GOAWAY_DRAIN_URL""#;
/// How a kept preStop hook drains first (the webhook's Event, `inject`).
pub const KEPT_PRE_STOP_HINT: &str = concat!(
    "start the hook's shell command with ",
    r#"curl -fsS -H "Authorization: Bearer $GOAWAY_DRAIN_TOKEN" "$GOAWAY_DRAIN_URL""#,
    " (or ",
    r#"wget -q -O- --header "Authorization: Bearer $GOAWAY_DRAIN_TOKEN" "$GOAWAY_DRAIN_URL""#,
    "); both variables are set in the container"
);
/// Why the pods of `policy` are not injected under `--forbid-redirect`,
/// and what their owner can do about it: the webhook's AdmissionReview
/// warning and Event, `inject`'s warning and the policy's status say it.
pub fn redirect_forbidden_note(policy: &str) -> String {
    format!(
        "policy {policy} asks for redirect interception, which the operator forbids (--forbid-redirect: no pod may get its NET_ADMIN init container); set the policy's spec.interception to namedPort to inject its pods"
    )
}
/// Added to `drain.delay + drain.timeout` for the grace period.
pub const DRAIN_MARGIN_SECONDS: i64 = 5;
/// What the kubelet uses when the pod does not say.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Why a pod was admitted unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `spec.hostNetwork: true`: the agent's ports would be the node's.
    HostNetwork,
    /// `spec.os.name: windows`: the API server refuses the Linux
    /// securityContext the agent runs with, and the image is Linux-only.
    Windows,
    /// Annotation `goaway.dev/inject: "false"` or label `goaway.dev/inject=disabled`.
    OptedOut,
    /// Already carries the agent or the injected annotation.
    AlreadyInjected,
    /// No valid policy in the namespace selects it.
    NoPolicy,
}

impl Skip {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::HostNetwork => "host_network",
            Skip::Windows => "windows",
            Skip::OptedOut => "opted_out",
            Skip::AlreadyInjected => "already_injected",
            Skip::NoPolicy => "no_policy",
        }
    }
}

/// What injection did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// The winning policy's name.
    pub policy: String,
    /// Application containers whose own preStop hook was kept, so the
    /// drain does not run before they get SIGTERM.
    pub kept_pre_stop: Vec<String>,
    /// Application containers whose preStop hook only slept, with how
    /// long: it was replaced by the drain hook, with the sleep as its
    /// floor ([`pre_stop`]).
    pub replaced_sleep: Vec<(String, std::time::Duration)>,
    /// The application port the agent forwards to.
    pub app_port: i32,
    /// The port name the agent took over, if the port had one (namedPort
    /// mode only).
    pub port_name: Option<String>,
    /// How clients reach the agent in this pod.
    pub interception: Interception,
    /// The policy asked for redirect interception, which the pod's
    /// namespace refuses; it got namedPort.
    pub redirect_refused: bool,
    /// The agent's pull secrets added to `imagePullSecrets`, and whether
    /// the pod listed none before. Such a pod template, created later,
    /// no longer gets its ServiceAccount's pull secrets: the API server
    /// adds those only to pods that list none (the webhook runs after
    /// that, so it is `inject`'s concern only).
    pub pull_secrets_added: Vec<String>,
    /// See [`Injection::pull_secrets_added`].
    pub pull_secrets_were_empty: bool,
}

/// What [`mutate`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod gets the agent.
    Injected(Injection),
    /// The pod is admitted unchanged.
    Unchanged(Skip),
    /// The policy that wins the pod asks for redirect interception, which
    /// the operator forbids (`--forbid-redirect`): the pod is admitted
    /// unchanged, and whoever made it should hear why.
    RedirectForbidden {
        /// The policy's name.
        policy: String,
    },
}

/// The decision and the patch that carries it out (empty when unchanged).
/// Paths are relative to an object with `metadata` and `spec`: a Pod or a
/// pod template.
#[derive(Clone, Debug)]
pub struct Mutation {
    /// What happens to the pod.
    pub outcome: Outcome,
    /// RFC 6902 operations on `{metadata, spec}`.
    pub patch: json_patch::Patch,
}

/// Why a selected pod could not be injected. The webhook admits such pods
/// unchanged and logs the error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The policy names a container port no container declares.
    #[error("policy {policy}: no container declares a port named {port:?}")]
    PortNotFound {
        /// The policy.
        policy: String,
        /// The port name.
        port: String,
    },
    /// A port the agent needs is taken by a container.
    #[error("port {port} is already used by container {container:?}")]
    PortInUse {
        /// The port number.
        port: i32,
        /// The container declaring it.
        container: String,
    },
    /// Two of the ports involved are the same number.
    #[error("{first} and {second} are both port {port}")]
    PortClash {
        /// The port number.
        port: i32,
        /// One role (`the app port`, `the policy's agentPort`, `the agent's admin port`).
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// More than one container names a port with the policy's port name:
    /// moving one of the names would send a Service to the other container.
    #[error(
        "containers {containers:?} all declare a port named {port:?}; the policy's port must name one"
    )]
    AmbiguousPortName {
        /// The port name.
        port: String,
        /// The containers declaring it.
        containers: Vec<String>,
    },
    /// The policy's port is not a TCP port (gRPC runs on TCP).
    #[error("port {port} is {protocol}, not TCP")]
    NotTcp {
        /// The port as the policy names it.
        port: String,
        /// Its protocol.
        protocol: String,
    },
    /// The pod already has a volume with a name the agent's volumes use.
    #[error("the pod already has a volume named {0:?}")]
    VolumeExists(&'static str),
    /// A per-workload annotation ([`overrides`]) has a value the agent or
    /// the API server would refuse.
    #[error("annotation {annotation}: {value:?}: {reason}")]
    InvalidAnnotation {
        /// The annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pod could not be turned into JSON (never for real pods).
    #[error("serialising the pod: {0}")]
    Serialize(String),
}

impl InjectError {
    /// A short label for metrics (`reason` of the admission counter).
    pub fn kind(&self) -> &'static str {
        match self {
            InjectError::PortNotFound { .. } => "port_not_found",
            InjectError::PortInUse { .. } => "port_in_use",
            InjectError::PortClash { .. } => "port_clash",
            InjectError::AmbiguousPortName { .. } => "ambiguous_port_name",
            InjectError::NotTcp { .. } => "not_tcp",
            InjectError::VolumeExists(_) => "volume_exists",
            InjectError::InvalidAnnotation { .. } => "invalid_annotation",
            InjectError::Serialize(_) => "serialize",
        }
    }
}

/// Decides and builds the injection for one pod or pod template.
///
/// `namespace` is the pod's; `policies` may hold policies of any
/// namespace (others are ignored); `defaults` are the operator's, merged
/// into each policy (a policy invalid once merged selects nothing).
/// `token` is the pod's drain token, set on the agent and sent by the
/// preStop hooks. Never panics on user input.
pub fn mutate(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace: &str,
    policies: &[Arc<KeepalivePolicy>],
    defaults: &PolicyDefaults,
    agent: &AgentConfig,
    token: &str,
) -> Result<Mutation, InjectError> {
    let unchanged = |skip| Mutation {
        outcome: Outcome::Unchanged(skip),
        patch: json_patch::Patch(Vec::new()),
    };
    if let Some(skip) = skip_reason(meta, spec) {
        return Ok(unchanged(skip));
    }
    let labels = meta.labels.clone().unwrap_or_default();
    let Some(policy) = selection::winner(policies, namespace, &labels, defaults) else {
        return Ok(unchanged(Skip::NoPolicy));
    };
    // The policy still wins the pod: another policy selecting it does not
    // inject it instead, in a mode its owner did not choose.
    if defaults.forbids(policy) {
        return Ok(Mutation {
            outcome: Outcome::RedirectForbidden {
                policy: policy.name_any(),
            },
            patch: json_patch::Patch(Vec::new()),
        });
    }
    let (mut new_meta, mut new_spec) = (meta.clone(), spec.clone());
    let injection = apply(&mut new_meta, &mut new_spec, policy, defaults, agent, token)?;
    let before = to_json(meta, spec)?;
    let after = to_json(&new_meta, &new_spec)?;
    Ok(Mutation {
        outcome: Outcome::Injected(injection),
        patch: json_patch::diff(&before, &after),
    })
}

fn to_json(meta: &ObjectMeta, spec: &PodSpec) -> Result<serde_json::Value, InjectError> {
    let s = |e: serde_json::Error| InjectError::Serialize(e.to_string());
    Ok(serde_json::json!({
        "metadata": serde_json::to_value(meta).map_err(s)?,
        "spec": serde_json::to_value(spec).map_err(s)?,
    }))
}

/// The app port an injected pod's agent forwards to: the port of its
/// `--upstream $(GOAWAY_POD_IP):P` argument, as `sidecar.rs` writes it (or
/// `127.0.0.1:P`, as earlier injections did).
pub fn upstream_port<'a>(args: impl IntoIterator<Item = &'a str>) -> Option<i32> {
    let mut args = args.into_iter();
    args.find(|a| *a == "--upstream")?;
    args.next()?.rsplit_once(':')?.1.parse().ok()
}

/// The number of the policy's `port` in a pod: what its agent forwards to
/// if the pod is injected (the name has moved to the agent then), else the
/// port resolved as injection resolves it.
pub fn app_port(spec: &PodSpec, port: &IntOrString) -> Option<i32> {
    let agent = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER_NAME);
    match agent {
        Some(agent) => upstream_port(agent.args.iter().flatten().map(String::as_str)),
        None => ports::find(spec, port).map(|app| app.number),
    }
}

/// Why the pod must be left alone whatever the policies say.
pub fn skip_reason(meta: &ObjectMeta, spec: &PodSpec) -> Option<Skip> {
    let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k));
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k));
    if spec.host_network == Some(true) {
        Some(Skip::HostNetwork)
    } else if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        Some(Skip::Windows)
    } else if annotation(ANNOTATION_INJECT).is_some_and(|v| OPT_OUT_VALUES.contains(&v.as_str()))
        || label(LABEL_INJECT).is_some_and(|v| OPT_OUT_VALUES.contains(&v.as_str()))
    {
        Some(Skip::OptedOut)
    } else if annotation(ANNOTATION_INJECTED).is_some()
        || spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .any(|c| c.name == CONTAINER_NAME || c.name == INTERCEPT_CONTAINER_NAME)
    {
        Some(Skip::AlreadyInjected)
    } else {
        None
    }
}

/// A warning for a [`ANNOTATION_INJECT`] or [`LABEL_INJECT`] value that is
/// neither an opt-out nor an opt-in value (`"no"`, `"False"`, …): such a
/// pod is injected as if it had none, and the user should hear about it.
pub fn unrecognised_inject_value(meta: &ObjectMeta) -> Option<String> {
    let known = |v: &str| OPT_OUT_VALUES.contains(&v) || OPT_IN_VALUES.contains(&v);
    [
        ("annotation", meta.annotations.as_ref().and_then(|a| a.get(ANNOTATION_INJECT))),
        ("label", meta.labels.as_ref().and_then(|l| l.get(LABEL_INJECT))),
    ]
    .into_iter()
    .find_map(|(kind, value)| {
        let value = value?;
        (!known(value)).then(|| {
            format!(
                "{kind} {ANNOTATION_INJECT}={value:?} is not recognised: \"disabled\" or \"false\" opt out, \"enabled\" or \"true\" opt in; treated as unset"
            )
        })
    })
}

/// Applies the injection to copies of the pod's metadata and spec.
fn apply(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    policy: &KeepalivePolicy,
    defaults: &PolicyDefaults,
    agent: &AgentConfig,
    token: &str,
) -> Result<Injection, InjectError> {
    let name = policy.name_any();
    let agent = &overrides::apply(meta, agent)?;
    let app = ports::find(spec, &policy.spec.port).ok_or_else(|| InjectError::PortNotFound {
        policy: name.clone(),
        port: match &policy.spec.port {
            IntOrString::String(s) => s.clone(),
            IntOrString::Int(i) => i.to_string(),
        },
    })?;
    if let Some((c, p)) = app.declared {
        let protocol = spec
            .containers
            .get(c)
            .and_then(|container| container.ports.as_ref()?.get(p)?.protocol.clone());
        if let Some(protocol) = protocol.filter(|p| p != "TCP") {
            return Err(InjectError::NotTcp {
                port: match &policy.spec.port {
                    IntOrString::String(s) => s.clone(),
                    IntOrString::Int(i) => i.to_string(),
                },
                protocol,
            });
        }
    }
    if let IntOrString::String(port) = &policy.spec.port {
        let containers = ports::declaring_name(spec, port);
        if containers.len() > 1 {
            return Err(InjectError::AmbiguousPortName {
                port: port.clone(),
                containers,
            });
        }
    }
    let agent_port = policy.agent_port();
    let admin_port = i32::from(agent.admin_port);
    port_clash(app.number, agent_port, admin_port)?;
    for port in [agent_port, admin_port] {
        if let Some(container) = ports::user_of(spec, port) {
            return Err(InjectError::PortInUse { port, container });
        }
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for name in [VOLUME_NAME, TOKEN_VOLUME_NAME] {
        if volumes.iter().any(|v| v.name == name) {
            return Err(InjectError::VolumeExists(name));
        }
    }
    volumes.push(Volume {
        name: VOLUME_NAME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: policy.config_map_name(),
            ..Default::default()
        }),
        ..Default::default()
    });
    if agent.control_url.is_some() {
        volumes.push(token_volume());
    }

    let (wanted, interception) = defaults.interception_of(policy);
    let port_name = match interception {
        Interception::NamedPort => ports::take_over(spec, &app),
        // The app port keeps its name and number; the kernel sends its
        // inbound connections to the agent.
        Interception::Redirect => None,
    };
    // The pod's grace period covers the drain; the agent waits that long
    // after a drain for the SIGTERM a termination sends before it serves
    // again (--drain-expiry).
    let drain = defaults.merge(&policy.spec.policy).drain_params();
    let needed = (drain.delay + drain.timeout).as_secs_f64().ceil() as i64 + DRAIN_MARGIN_SECONDS;
    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    if grace < needed {
        spec.termination_grace_period_seconds = Some(needed);
    }
    let grace = grace.max(needed);

    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    if interception == Interception::Redirect {
        inits.push(sidecar::intercept_container(agent, agent_port, &app));
    }
    inits.push(sidecar::container(
        agent,
        agent_port,
        &app,
        port_name.as_deref(),
        token,
        grace,
    ));

    let mut kept_pre_stop = Vec::new();
    let mut replaced_sleep = Vec::new();
    let mut replaced = std::collections::BTreeMap::new();
    for c in &mut spec.containers {
        let lifecycle = c.lifecycle.get_or_insert_with(Lifecycle::default);
        let sleep = lifecycle.pre_stop.as_ref().and_then(pre_stop::pure_sleep);
        if let (Some(sleep), Some(original)) = (sleep, &lifecycle.pre_stop) {
            // Held as long as it slept, and until drained.
            replaced.insert(c.name.clone(), original.clone());
            replaced_sleep.push((c.name.clone(), sleep));
            lifecycle.pre_stop = Some(drain_hook(admin_port, token, Some(sleep)));
        } else if lifecycle.pre_stop.is_some() {
            kept_pre_stop.push(c.name.clone());
            // The container's own hook may drain first: give it what it
            // needs to call /drain ([`KEPT_PRE_STOP_HINT`]).
            let env = c.env.get_or_insert_with(Vec::new);
            for (name, value) in [
                (ENV_DRAIN_TOKEN, token.to_string()),
                (
                    ENV_DRAIN_URL,
                    format!("http://127.0.0.1:{admin_port}{DRAIN_PATH}"),
                ),
            ] {
                if !env.iter().any(|e| e.name == name) {
                    env.push(EnvVar {
                        name: name.into(),
                        value: Some(value),
                        ..Default::default()
                    });
                }
            }
        } else {
            lifecycle.pre_stop = Some(drain_hook(admin_port, token, None));
        }
    }

    let pull_secrets_were_empty = spec.image_pull_secrets.as_ref().is_none_or(Vec::is_empty);
    let added = add_pull_secrets(spec, &agent.image_pull_secrets);
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(ANNOTATION_INJECTED.into(), name.clone());
    if !added.is_empty() {
        annotations.insert(ANNOTATION_INJECTED_PULL_SECRETS.into(), added.join(","));
    }
    if !replaced.is_empty() {
        annotations.insert(
            pre_stop::ANNOTATION_REPLACED_PRE_STOP.into(),
            pre_stop::record(&replaced),
        );
    }
    Ok(Injection {
        replaced_sleep,
        pull_secrets_added: added,
        pull_secrets_were_empty,
        policy: name,
        kept_pre_stop,
        app_port: app.number,
        port_name,
        interception,
        redirect_refused: wanted != interception,
    })
}

/// Appends each of `names` the pod does not already list to its
/// `imagePullSecrets` (the kubelet tries them all, for every image), and
/// returns those it added.
fn add_pull_secrets(spec: &mut PodSpec, names: &[String]) -> Vec<String> {
    let mut added = Vec::new();
    for name in names {
        let secrets = spec.image_pull_secrets.get_or_insert_with(Vec::new);
        if !secrets.iter().any(|s| &s.name == name) {
            secrets.push(LocalObjectReference { name: name.clone() });
            added.push(name.clone());
        }
    }
    added
}

/// The app port, the agent's proxy port and its admin port must differ.
fn port_clash(app: i32, agent: i32, admin: i32) -> Result<(), InjectError> {
    let roles = [
        (app, "the app port"),
        (agent, "the policy's agentPort"),
        (admin, "the agent's admin port (--agent-admin-port)"),
    ];
    for (i, (port, first)) in roles.iter().enumerate() {
        if let Some((_, second)) = roles[i + 1..].iter().find(|(p, _)| p == port) {
            return Err(InjectError::PortClash {
                port: *port,
                first,
                second,
            });
        }
    }
    Ok(())
}

/// The application's preStop: block until the agent has drained, and
/// at least `floor` (a replaced sleep's length).
fn drain_hook(
    admin_port: i32,
    token: &str,
    floor: Option<std::time::Duration>,
) -> LifecycleHandler {
    let path = match floor {
        Some(floor) => pre_stop::drain_path_with_floor(DRAIN_PATH, floor),
        None => DRAIN_PATH.into(),
    };
    LifecycleHandler {
        http_get: Some(HTTPGetAction {
            path: Some(path),
            port: IntOrString::Int(admin_port),
            scheme: Some("HTTP".into()),
            http_headers: Some(vec![HTTPHeader {
                name: "Authorization".into(),
                value: format!("Bearer {token}"),
            }]),
            host: None,
        }),
        ..Default::default()
    }
}

/// The agent's token for the control channel: the pod's service account,
/// the channel's audience only, bound to the pod (the kubelet asks for
/// it so), so the operator learns from it which pod is calling.
fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME_NAME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(goaway_transport::control::AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A fresh random drain token: 32 bytes, hex.
pub fn new_drain_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
