//! The agent container (docs/design.md §9.1, the agent contract in
//! docs/design.md §5).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ports::AppPort;
use super::{
    CA_PATH, CONTAINER_NAME, INTERCEPT_CONTAINER_NAME, MOUNT_PATH, POLICY_PATH, TOKEN_MOUNT_PATH,
    TOKEN_PATH, TOKEN_VOLUME_NAME, VOLUME_NAME,
};

/// The agent's admin port (health, readiness, drain, metrics). Not
/// 15021 (Istio's sidecar health port, where an earlier release had it):
/// none of the ports Istio's sidecar (15000-15021, 15053, 15090) or
/// Linkerd's proxy (4140, 4143, 4191) use, so goaway can run beside either.
pub const DEFAULT_ADMIN_PORT: u16 = 15052;
/// The agent image of this release.
pub const DEFAULT_AGENT_IMAGE: &str = concat!(
    "ghcr.io/goaway-dev/goaway-agent:",
    env!("CARGO_PKG_VERSION")
);
/// The agent port's name when the application port had none to take over.
pub const PROXY_PORT_NAME: &str = "goaway-proxy";
/// The admin port's name.
pub const ADMIN_PORT_NAME: &str = "goaway-admin";
/// `--max-concurrent-streams` for the injected agent by default. The bare
/// agent, like grpc-go, sets no limit; a sidecar in front of an app with a
/// bounded thread pool and a memory limit should: each stalled stream may
/// hold its 256 KiB window in the agent. HAProxy's default is the same.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
/// `--max-connections` for the injected agent by default: about 50 MiB of
/// idle connections, well inside the default 128 MiB memory limit.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// The non-root user the agent runs as (distroless `nonroot`).
pub const AGENT_UID: i64 = 65532;

/// How the operator runs the agent: everything about the sidecar that is
/// not in the policy. Each field is one operator flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// The agent image.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Secrets (in the pod's namespace) the kubelet may pull the agent
    /// image with: added to the pod's `imagePullSecrets`.
    pub image_pull_secrets: Vec<String>,
    /// The admin HTTP port.
    pub admin_port: u16,
    /// `json` or `text`.
    pub log_format: String,
    /// The agent's log filter (`GOAWAY_LOG`); empty for its default.
    pub log_level: String,
    /// CPU request; empty for none.
    pub cpu_request: String,
    /// Memory request; empty for none.
    pub memory_request: String,
    /// CPU limit; empty for none.
    pub cpu_limit: String,
    /// Memory limit; empty for none.
    pub memory_limit: String,
    /// The agent's `--max-concurrent-streams` per client connection; 0
    /// for none.
    pub max_concurrent_streams: u32,
    /// The agent's `--max-connections`.
    pub max_connections: u32,
    /// The agent's `--forwarded-for`: true for `append` (its default),
    /// false for `off`.
    pub forward_client_address: bool,
    /// The agent's `--admin-allow`: who besides the pod may drain it.
    pub admin_allow: String,
    /// The operator's control channel (`https://host:port`) the agent
    /// dials, with the pod's projected token; `None`: no channel.
    pub control_url: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            image: DEFAULT_AGENT_IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            image_pull_secrets: Vec::new(),
            admin_port: DEFAULT_ADMIN_PORT,
            log_format: "json".into(),
            log_level: String::new(),
            cpu_request: "10m".into(),
            memory_request: "32Mi".into(),
            cpu_limit: String::new(),
            memory_limit: "128Mi".into(),
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            forward_client_address: true,
            admin_allow: DEFAULT_ADMIN_ALLOW.into(),
            control_url: None,
        }
    }
}

impl AgentConfig {
    pub(super) fn resources(&self) -> Option<ResourceRequirements> {
        let map = |pairs: [(&str, &str); 2]| {
            let m: BTreeMap<String, Quantity> = pairs
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect();
            (!m.is_empty()).then_some(m)
        };
        let requests = map([("cpu", &self.cpu_request), ("memory", &self.memory_request)]);
        let limits = map([("cpu", &self.cpu_limit), ("memory", &self.memory_limit)]);
        (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
            requests,
            limits,
            ..Default::default()
        })
    }
}

/// The pod's IP, from the downward API: the agent connects to the app
/// there (`--upstream $(GOAWAY_POD_IP):P`), not on loopback, so a port the
/// app bound to loopback only stays out of reach of the network, as it
/// would be without the agent (Istio made the same change in 1.10).
pub(super) const ENV_POD_IP: &str = "GOAWAY_POD_IP";
/// The node's IP, from the downward API: where the kubelet's preStop hook
/// comes from on routed pod networks (`--admin-allow`).
pub(super) const ENV_HOST_IP: &str = "GOAWAY_HOST_IP";
/// `--agent-admin-allow` by default: the pod's gateway (the node, on
/// bridged pod networks) and the node's IP (on routed ones).
pub const DEFAULT_ADMIN_ALLOW: &str = "gateway,$(GOAWAY_HOST_IP)";

fn env(agent: &AgentConfig, token: &str) -> Vec<EnvVar> {
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let downward = |name: &str, field: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = vec![
        downward(ENV_POD_IP, "status.podIP"),
        downward(ENV_HOST_IP, "status.hostIP"),
        var("GOAWAY_DRAIN_TOKEN", token),
        var("GOAWAY_LOG_FORMAT", &agent.log_format),
    ];
    if !agent.log_level.is_empty() {
        env.push(var("GOAWAY_LOG", &agent.log_level));
    }
    if !agent.forward_client_address {
        env.push(var("GOAWAY_FORWARDED_FOR", "off"));
    }
    env
}

fn http_probe(path: &str, port: u16, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

/// Redirect mode's init container: `goaway-agent intercept` installs the
/// pod's nftables redirect and exits. It needs `NET_ADMIN` in the pod's
/// network namespace and, since capabilities added to a non-root user are
/// not effective (Kubernetes has no ambient capabilities), user 0; nothing
/// else: no other capability, no privilege escalation, a read-only root,
/// the runtime's seccomp profile, no volume.
pub(super) fn intercept_container(
    agent: &AgentConfig,
    agent_port: i32,
    app: &AppPort,
) -> Container {
    Container {
        name: INTERCEPT_CONTAINER_NAME.into(),
        image: Some(agent.image.clone()),
        image_pull_policy: Some(agent.image_pull_policy.clone()),
        args: Some(vec![
            "intercept".into(),
            "--app-port".into(),
            app.number.to_string(),
            "--agent-port".into(),
            agent_port.to_string(),
        ]),
        resources: agent.resources(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["NET_ADMIN".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The native sidecar. Its startup probe holds the application containers
/// back until the agent runs; readiness fails as soon as a drain starts, so
/// the pod leaves its Services' endpoints before any GOAWAY.
pub(super) fn container(
    agent: &AgentConfig,
    agent_port: i32,
    app: &AppPort,
    port_name: Option<&str>,
    token: &str,
    grace_seconds: i64,
) -> Container {
    let admin = agent.admin_port;
    let mut args = vec![
        "run".into(),
        "--listen".into(),
        format!("0.0.0.0:{agent_port}"),
        "--upstream".into(),
        format!("$({ENV_POD_IP}):{}", app.number),
        "--admin".into(),
        format!("0.0.0.0:{admin}"),
        "--policy".into(),
        POLICY_PATH.into(),
        "--max-connections".into(),
        agent.max_connections.to_string(),
        // A pod whose app is down leaves its Services' endpoints.
        "--readiness-checks-upstream".into(),
        "--admin-allow".into(),
        agent.admin_allow.clone(),
        "--drain-expiry".into(),
        format!("{grace_seconds}s"),
    ];
    if agent.max_concurrent_streams > 0 {
        args.push("--max-concurrent-streams".into());
        args.push(agent.max_concurrent_streams.to_string());
    }
    let mut volume_mounts = vec![VolumeMount {
        name: VOLUME_NAME.into(),
        mount_path: MOUNT_PATH.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    if let Some(url) = &agent.control_url {
        args.extend([
            "--control-url".into(),
            url.clone(),
            "--control-ca".into(),
            CA_PATH.into(),
            "--control-token-file".into(),
            TOKEN_PATH.into(),
        ]);
        volume_mounts.push(VolumeMount {
            name: TOKEN_VOLUME_NAME.into(),
            mount_path: TOKEN_MOUNT_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(agent.image.clone()),
        image_pull_policy: Some(agent.image_pull_policy.clone()),
        restart_policy: Some("Always".into()),
        args: Some(args),
        env: Some(env(agent, token)),
        ports: Some(vec![
            ContainerPort {
                name: Some(port_name.unwrap_or(PROXY_PORT_NAME).into()),
                container_port: agent_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.into()),
                container_port: i32::from(admin),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        startup_probe: Some(http_probe("/healthz", admin, 1, 30)),
        liveness_probe: Some(http_probe("/healthz", admin, 10, 3)),
        readiness_probe: Some(http_probe("/readyz", admin, 2, 1)),
        resources: agent.resources(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(AGENT_UID),
            run_as_group: Some(AGENT_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(volume_mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}
