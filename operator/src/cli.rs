//! Command line and environment. Every flag has a `GOAWAY_*` variable so
//! the Helm chart can set each value one to one.
//!
//! Values are checked where they are parsed, so `run` and `inject` refuse
//! a bad one before doing anything, naming the flag: clap checks each
//! value on its own (the agent's log format, pull policy and resource
//! quantities, Go durations), and [`AgentArgs::agent_config`] and
//! [`PolicyDefaultsArgs::policy_defaults`] check the values against each
//! other. A value the API server would refuse in every injected pod is a
//! startup error, not a webhook that "succeeds" at making unschedulable
//! pods.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use goaway_transport::policy::{DrainPolicy, GoDuration};

use crate::crd::Interception;
use crate::defaults::PolicyDefaults;
use crate::inject::{
    AgentConfig, DEFAULT_ADMIN_PORT, DEFAULT_AGENT_IMAGE, DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_CONNECTIONS,
};
use crate::leader::{LeaseConfig, LeaseTiming};
use crate::tls::Source;
use crate::webhook::server::DEFAULT_MAX_CONNECTIONS as DEFAULT_WEBHOOK_MAX_CONNECTIONS;
use crate::{Error, FlagError, Result, quantity};

/// The operator's command line.
#[derive(Debug, Parser)]
#[command(
    name = "goaway-operator",
    version,
    about = "KeepalivePolicy controller and sidecar-injecting admission webhook"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = "GOAWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter: a level (`debug`) or `tracing` directives
    /// (`info,kube=debug`). `RUST_LOG`, when set, wins.
    #[arg(
        long,
        env = "GOAWAY_LOG_LEVEL",
        default_value = "info",
        value_parser = log_filter,
        global = true
    )]
    pub log_level: String,
}

fn log_filter(value: &str) -> Result<String, String> {
    crate::inject::overrides::check_log_filter(value)?;
    Ok(value.to_string())
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: webhook and admin server on every replica, the
    /// controller on the leader.
    Run(Box<RunArgs>),
    /// Inject the agent into Kubernetes manifests read from stdin, exactly
    /// as the webhook would, and print them.
    Inject(Box<InjectArgs>),
    /// Remove the agent from Kubernetes manifests read from stdin (what
    /// `inject` or the webhook added) and print them: for GitOps
    /// repositories that committed injected manifests, and for taking
    /// goaway out of a workload before uninstalling.
    Uninject,
    /// Print the KeepalivePolicy CRD as YAML.
    Crd,
    /// Print the API permissions the operator uses, as JSON.
    Rbac,
}

/// How the sidecar is run (shared by `run` and `inject`).
#[derive(Clone, Debug, Args)]
pub struct AgentArgs {
    /// The agent image.
    #[arg(long, env = "GOAWAY_AGENT_IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// The agent's imagePullPolicy.
    #[arg(
        long,
        env = "GOAWAY_AGENT_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub agent_image_pull_policy: String,
    /// A Secret the kubelet may use to pull the agent image from a private
    /// registry (repeatable; the variable takes a comma-separated list).
    /// Injection adds each name to the pod's `imagePullSecrets` unless it
    /// is there already; the Secret must exist in the pod's own namespace.
    #[arg(
        long = "agent-image-pull-secret",
        env = "GOAWAY_AGENT_IMAGE_PULL_SECRETS",
        value_name = "NAME",
        value_delimiter = ',',
        value_parser = secret_name
    )]
    pub agent_image_pull_secrets: Vec<String>,
    /// The agent's admin port (health, readiness, /drain).
    #[arg(
        long,
        env = "GOAWAY_AGENT_ADMIN_PORT",
        default_value_t = DEFAULT_ADMIN_PORT,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub agent_admin_port: u16,
    /// The agent's log format (`json` or `text`).
    #[arg(
        long,
        env = "GOAWAY_AGENT_LOG_FORMAT",
        default_value = "json",
        value_parser = ["json", "text"]
    )]
    pub agent_log_format: String,
    /// The agent's log filter (`GOAWAY_LOG` in the injected container): a
    /// level such as `debug`, or `tracing` directives. Empty: the agent's
    /// default (`info`). A pod's `goaway.dev/agent-log-level` annotation
    /// wins.
    #[arg(
        long,
        env = "GOAWAY_AGENT_LOG_LEVEL",
        default_value = "",
        value_parser = agent_log_level
    )]
    pub agent_log_level: String,
    /// Who besides the pod itself may drain an injected agent, change its
    /// log level or list its connections (the agent's `--admin-allow`):
    /// a comma-separated list of `gateway` (the pod's default gateway: the
    /// node, on bridged pod networks), `$(GOAWAY_HOST_IP)` (the node's IP,
    /// on routed ones), addresses and CIDRs, or `any`.
    #[arg(
        long,
        env = "GOAWAY_AGENT_ADMIN_ALLOW",
        default_value = crate::inject::DEFAULT_ADMIN_ALLOW,
        value_parser = admin_allow
    )]
    pub agent_admin_allow: String,
    /// Whether injected agents append the client's address to
    /// `x-forwarded-for` (`append`) or forward requests as they came
    /// (`off`). A pod's `goaway.dev/agent-forwarded-for` annotation wins.
    #[arg(
        long,
        env = "GOAWAY_AGENT_FORWARDED_FOR",
        default_value = "append",
        value_parser = ["append", "off"]
    )]
    pub agent_forwarded_for: String,
    /// The agent's CPU request, a Kubernetes quantity (empty: none).
    #[arg(
        long,
        env = "GOAWAY_AGENT_CPU_REQUEST",
        default_value = "10m",
        value_parser = resource_quantity,
        allow_hyphen_values = true
    )]
    pub agent_cpu_request: String,
    /// The agent's memory request, a Kubernetes quantity (empty: none).
    #[arg(
        long,
        env = "GOAWAY_AGENT_MEMORY_REQUEST",
        default_value = "32Mi",
        value_parser = resource_quantity,
        allow_hyphen_values = true
    )]
    pub agent_memory_request: String,
    /// The agent's CPU limit, a Kubernetes quantity (empty: none).
    #[arg(
        long,
        env = "GOAWAY_AGENT_CPU_LIMIT",
        default_value = "",
        value_parser = resource_quantity,
        allow_hyphen_values = true
    )]
    pub agent_cpu_limit: String,
    /// The agent's memory limit, a Kubernetes quantity (empty: none).
    #[arg(
        long,
        env = "GOAWAY_AGENT_MEMORY_LIMIT",
        default_value = "128Mi",
        value_parser = resource_quantity,
        allow_hyphen_values = true
    )]
    pub agent_memory_limit: String,
    /// The agent's SETTINGS_MAX_CONCURRENT_STREAMS per client connection
    /// (0: no limit, as grpc-go). Each stream a client stops reading may
    /// hold up to 256 KiB in the agent.
    #[arg(long, env = "GOAWAY_AGENT_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub agent_max_concurrent_streams: u32,
    /// Most client connections one agent keeps open; more are closed at
    /// accept (an idle connection costs about 12 KiB).
    #[arg(
        long,
        env = "GOAWAY_AGENT_MAX_CONNECTIONS",
        default_value_t = DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub agent_max_connections: u32,
    /// The operator's control channel as injected agents dial it,
    /// `https://HOST:PORT` (the chart: `https://<operator Service>.<its
    /// namespace>.svc:<control.port>`; HOST must be a name on the serving
    /// certificate). Set: injected pods get a projected token for the
    /// channel and the agent dials it (policy changes within a second,
    /// EndpointSlice-aware drains). Unset: nothing of the kind is
    /// injected.
    #[arg(
        long,
        env = "GOAWAY_AGENT_CONTROL_URL",
        value_name = "URL",
        value_parser = control_url
    )]
    pub agent_control_url: Option<String>,
}

/// An `--agent-control-url` as the agent parses its `--control-url`:
/// `https://host:port`, nothing after the port.
fn control_url(value: &str) -> Result<String, String> {
    let authority = value
        .strip_prefix("https://")
        .ok_or_else(|| format!("{value:?} does not start with https://"))?
        .trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?} has no port"))?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    if host.is_empty() || !port_ok || authority.contains('/') {
        return Err(format!("{value:?} is not https://HOST:PORT"));
    }
    Ok(value.to_string())
}

/// A Secret's name as the API server checks it: a DNS-1123 subdomain
/// (lowercase letters, digits, `-` and `.`, at most 253 characters,
/// starting and ending alphanumeric). A bad name would be an
/// `imagePullSecrets` entry no Secret can match.
fn secret_name(value: &str) -> Result<String, String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            label.starts_with(alnum)
                && label.ends_with(alnum)
                && label.chars().all(|c| alnum(c) || c == '-')
        });
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a Secret name (lowercase letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit)"
        ))
    }
}

/// The agents' log filter: empty (the agent's default) or a filter
/// `--log-level` accepts.
fn agent_log_level(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    log_filter(value)
}

/// An `--admin-allow` list as the agent reads it, with the node IP's
/// variable left for the kubelet to expand.
fn admin_allow(value: &str) -> Result<String, String> {
    for item in value.split(',').map(str::trim) {
        let known = matches!(item, "gateway" | "any" | "$(GOAWAY_HOST_IP)")
            || item.parse::<ipnet::IpNet>().is_ok()
            || item.parse::<std::net::IpAddr>().is_ok();
        if !known {
            return Err(format!(
                "{item:?} is not `gateway`, `$(GOAWAY_HOST_IP)`, an address, a CIDR or `any`"
            ));
        }
    }
    Ok(value.to_string())
}

/// A resource flag's value: empty, or a quantity the API server accepts
/// for a container's resources (well-formed and not negative).
fn resource_quantity(value: &str) -> Result<String, String> {
    if !value.is_empty() {
        let q = quantity::parse(value).map_err(|e| e.to_string())?;
        if q.0 < 0 {
            return Err(format!("must not be negative (got {value})"));
        }
    }
    Ok(value.to_string())
}

impl AgentArgs {
    /// The injector's agent settings. Fails, naming the flags, when a
    /// request exceeds its limit: the API server refuses such a container.
    pub fn agent_config(&self) -> Result<AgentConfig> {
        let mut errors = Vec::new();
        for (resource, request, limit, flag) in [
            (
                "CPU",
                &self.agent_cpu_request,
                &self.agent_cpu_limit,
                "--agent-cpu-request",
            ),
            (
                "memory",
                &self.agent_memory_request,
                &self.agent_memory_limit,
                "--agent-memory-request",
            ),
        ] {
            if quantity::request_exceeds_limit(request, limit) {
                errors.push(FlagError {
                    flag,
                    reason: format!(
                        "the {resource} request {request} exceeds the limit {limit}; the API server would refuse every injected pod"
                    ),
                });
            }
        }
        if !errors.is_empty() {
            return Err(Error::InvalidFlags(errors));
        }
        Ok(AgentConfig {
            image: self.agent_image.clone(),
            image_pull_policy: self.agent_image_pull_policy.clone(),
            image_pull_secrets: self.agent_image_pull_secrets.clone(),
            admin_port: self.agent_admin_port,
            log_format: self.agent_log_format.clone(),
            log_level: self.agent_log_level.clone(),
            cpu_request: self.agent_cpu_request.clone(),
            memory_request: self.agent_memory_request.clone(),
            cpu_limit: self.agent_cpu_limit.clone(),
            memory_limit: self.agent_memory_limit.clone(),
            max_concurrent_streams: self.agent_max_concurrent_streams,
            max_connections: self.agent_max_connections,
            forward_client_address: self.agent_forwarded_for == "append",
            admin_allow: self.agent_admin_allow.clone(),
            control_url: self.agent_control_url.clone(),
        })
    }
}

/// Drain settings for the policies that leave them out (shared by `run` and
/// `inject`). Unset: the docs/design.md §2.1 default. A policy's own value
/// wins.
#[derive(Clone, Debug, Default, Args)]
pub struct PolicyDefaultsArgs {
    /// drain.delay for policies that do not set it, a Go duration such as
    /// 5s (unset: 0s).
    #[arg(
        long,
        env = "GOAWAY_DEFAULT_DRAIN_DELAY",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub default_drain_delay: Option<GoDuration>,
    /// drain.timeout for policies that do not set it (unset: 30s).
    #[arg(
        long,
        env = "GOAWAY_DEFAULT_DRAIN_TIMEOUT",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub default_drain_timeout: Option<GoDuration>,
    /// drain.goawayAckTimeout for policies that do not set it (unset: 5s).
    /// Must be less than the drain timeout.
    #[arg(
        long,
        env = "GOAWAY_DEFAULT_DRAIN_GOAWAY_ACK_TIMEOUT",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub default_drain_goaway_ack_timeout: Option<GoDuration>,
    /// drain.quietPeriod for policies that do not set it (unset: 1.5s): how
    /// long no new connection may arrive, with the pod out of its
    /// endpoints, before the drain's GOAWAYs go out ahead of drain.delay.
    #[arg(
        long,
        env = "GOAWAY_DEFAULT_DRAIN_QUIET_PERIOD",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub default_drain_quiet_period: Option<GoDuration>,
    /// spec.interception for policies that do not set it: namedPort (no
    /// privileges; only Services with the port's name as targetPort go
    /// through the agent) or redirect (an init container with NET_ADMIN
    /// sends all inbound TCP for the port to the agent).
    #[arg(
        long,
        env = "GOAWAY_DEFAULT_INTERCEPTION",
        value_name = "MODE",
        default_value = "namedPort"
    )]
    pub default_interception: Interception,
    /// Forbid redirect interception cluster-wide: no pod gets its
    /// NET_ADMIN init container. Pods of a policy that asks for it are
    /// admitted without the agent, with a warning to whoever creates them
    /// and a Warning Event RedirectForbidden on their owner; the policy's
    /// Ready condition is False (RedirectForbidden). `--forbid-redirect`
    /// alone means true.
    #[arg(
        long,
        env = "GOAWAY_FORBID_REDIRECT",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    pub forbid_redirect: bool,
}

impl PolicyDefaultsArgs {
    /// The defaults, checked as a policy of their own (see
    /// [`PolicyDefaults::new`]); errors name the flags. Forbidding
    /// redirect while making it the default is refused: every policy that
    /// leaves the mode out would ask for what the operator forbids.
    pub fn policy_defaults(&self) -> Result<PolicyDefaults> {
        let drain = PolicyDefaults::new(DrainPolicy {
            delay: self.default_drain_delay,
            timeout: self.default_drain_timeout,
            goaway_ack_timeout: self.default_drain_goaway_ack_timeout,
            quiet_period: self.default_drain_quiet_period,
        });
        let mut errors = drain.as_ref().err().cloned().unwrap_or_default();
        if self.forbid_redirect && self.default_interception == Interception::Redirect {
            errors.push(FlagError {
                flag: "--forbid-redirect",
                reason: "contradicts --default-interception redirect: policies without spec.interception would ask for what the operator forbids; set --default-interception namedPort".into(),
            });
        }
        match drain {
            Ok(defaults) if errors.is_empty() => Ok(defaults
                .with_interception(self.default_interception)
                .forbidding_redirect(self.forbid_redirect)),
            _ => Err(Error::InvalidFlags(errors)),
        }
    }
}

/// Where the webhook's certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// The operator's own CA in a Secret; the leader patches the caBundle.
    Generate,
    /// Files written by cert-manager (or others) in `--tls-dir`.
    Files,
}

/// `goaway-operator run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How the sidecar is run.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Drain settings for policies that leave them out.
    #[command(flatten)]
    pub defaults: PolicyDefaultsArgs,
    /// The webhook's HTTPS listen address.
    #[arg(long, env = "GOAWAY_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// How long the API server waits for the webhook: the
    /// MutatingWebhookConfiguration's timeoutSeconds (the chart sets both
    /// from webhook.timeoutSeconds), 1s to 30s. A request's body is read
    /// for at most this long, and a review gets half of it; past that the
    /// pod is admitted unchanged, with a warning.
    #[arg(
        long,
        env = "GOAWAY_WEBHOOK_TIMEOUT",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub webhook_timeout: GoDuration,
    /// Before a namespace's first pod gets redirect interception, ask the
    /// API server with dry-run probe pods whether the namespace admits its
    /// NET_ADMIN init container. Needs create on pods (the chart's
    /// admission policy holds it to dry runs of probe pods); false: the
    /// namespace's Pod Security label alone decides. Unused with
    /// --forbid-redirect.
    #[arg(
        long,
        env = "GOAWAY_REDIRECT_PROBE",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    pub redirect_probe: bool,
    /// Most connections the webhook serves at once; more are closed at
    /// accept.
    #[arg(
        long,
        env = "GOAWAY_WEBHOOK_MAX_CONNECTIONS",
        default_value_t = DEFAULT_WEBHOOK_MAX_CONNECTIONS as u32,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub webhook_max_connections: u32,
    /// The admin HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "GOAWAY_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Serve the agents' control channel (every replica): each injected
    /// agent that dials it streams its pod's policy and where the pod
    /// stands in its EndpointSlices.
    #[arg(long, env = "GOAWAY_CONTROL_CHANNEL", default_value_t = true, action = ArgAction::Set)]
    pub control_channel: bool,
    /// The control channel's TLS listen address (the webhook's
    /// certificate).
    #[arg(long, env = "GOAWAY_CONTROL_ADDR", default_value = crate::channel::DEFAULT_ADDR)]
    pub control_addr: SocketAddr,
    /// Most control channel connections per replica; more are closed at
    /// accept. One per injected pod the replica serves.
    #[arg(
        long,
        env = "GOAWAY_CONTROL_MAX_CONNECTIONS",
        default_value_t = crate::channel::DEFAULT_MAX_CONNECTIONS as u32,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub control_max_connections: u32,
    /// The operator's own namespace (Lease, certificate Secret).
    #[arg(long, env = "GOAWAY_NAMESPACE", default_value = "goaway-system")]
    pub namespace: String,
    /// The operator's Deployment in --namespace: it becomes the owner of
    /// the certificate Secret and the Lease the operator creates, so that
    /// deleting it (helm uninstall) deletes them. Unset: they have no
    /// owner and stay.
    #[arg(long, env = "GOAWAY_OWNER_DEPLOYMENT", value_name = "NAME")]
    pub owner_deployment: Option<String>,
    /// Watch only this namespace's policies and pods (default: all).
    #[arg(long, env = "GOAWAY_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Where the webhook certificate comes from.
    #[arg(long, env = "GOAWAY_TLS_MODE", value_enum, default_value_t = TlsMode::Generate)]
    pub tls_mode: TlsMode,
    /// Generate mode: the Secret holding the CA and serving certificate.
    #[arg(
        long,
        env = "GOAWAY_TLS_SECRET",
        default_value = "goaway-operator-webhook-tls"
    )]
    pub tls_secret: String,
    /// Files mode: the directory with tls.crt and tls.key.
    #[arg(long, env = "GOAWAY_TLS_DIR", default_value = "/var/run/goaway/tls")]
    pub tls_dir: PathBuf,
    /// The webhook Service's name (the certificate's DNS names).
    #[arg(
        long,
        env = "GOAWAY_WEBHOOK_SERVICE",
        default_value = "goaway-operator"
    )]
    pub webhook_service: String,
    /// The MutatingWebhookConfiguration whose caBundle the leader patches.
    #[arg(long, env = "GOAWAY_WEBHOOK_CONFIG", default_value = "goaway-operator")]
    pub webhook_config: String,
    /// Generate mode: more names for the serving certificate, beside the
    /// Service's — DNS names or IP addresses, comma-separated. For when
    /// the API server calls the webhook by URL rather than through the
    /// Service, as with an operator run outside the cluster in
    /// development (the chart's webhook.url sets it to the URL's host).
    #[arg(
        long = "webhook-host",
        env = "GOAWAY_WEBHOOK_HOSTS",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub webhook_hosts: Vec<String>,
    /// Elect a leader on a Lease (disable only with one replica).
    #[arg(long, env = "GOAWAY_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,
    /// The Lease's name.
    #[arg(long, env = "GOAWAY_LEASE_NAME", default_value = "goaway-operator")]
    pub lease_name: String,
    /// This replica's identity (default: the hostname, i.e. the pod name).
    #[arg(long, env = "GOAWAY_IDENTITY")]
    pub identity: Option<String>,
    /// How long followers wait, after the Lease last changed, before
    /// taking it over: whole seconds.
    #[arg(
        long,
        env = "GOAWAY_LEASE_DURATION",
        value_name = "DURATION",
        default_value = "15s"
    )]
    pub lease_duration: GoDuration,
    /// How long the leader keeps trying to renew before it stops leading;
    /// less than --lease-duration.
    #[arg(
        long,
        env = "GOAWAY_LEASE_RENEW_DEADLINE",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub lease_renew_deadline: GoDuration,
    /// How often replicas try to acquire or renew the Lease; less than
    /// --lease-renew-deadline.
    #[arg(
        long,
        env = "GOAWAY_LEASE_RETRY_PERIOD",
        value_name = "DURATION",
        default_value = "2s"
    )]
    pub lease_retry_period: GoDuration,
}

impl RunArgs {
    /// Whether the webhook probes namespaces before redirect interception
    /// (and so creates pods, as dry runs): `--redirect-probe`, unless
    /// `--forbid-redirect` leaves nothing to probe for.
    pub fn probes_redirect(&self) -> bool {
        self.redirect_probe && !self.defaults.forbid_redirect
    }

    /// The webhook certificate source.
    pub fn tls_source(&self) -> Source {
        match self.tls_mode {
            TlsMode::Generate => Source::Generate {
                secret: self.tls_secret.clone(),
                service: self.webhook_service.clone(),
                hosts: self.webhook_hosts.clone(),
                webhook_config: self.webhook_config.clone(),
            },
            TlsMode::Files => Source::Files(self.tls_dir.clone()),
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("goaway-operator-{}", std::process::id()))
    }

    /// The webhook's timeout. Fails, naming the flag, outside the 1s-30s
    /// the API server allows for timeoutSeconds.
    pub fn webhook_timeout(&self) -> Result<Duration> {
        let timeout = self.webhook_timeout.to_std().unwrap_or_default();
        if !(Duration::from_secs(1)..=Duration::from_secs(30)).contains(&timeout) {
            return Err(Error::InvalidFlags(vec![FlagError {
                flag: "--webhook-timeout",
                reason: format!(
                    "must be between 1s and 30s, as the API server's timeoutSeconds (got {})",
                    self.webhook_timeout
                ),
            }]));
        }
        Ok(timeout)
    }

    /// The webhook server's limits.
    pub fn webhook_server(&self) -> crate::webhook::server::Config {
        crate::webhook::server::Config {
            max_connections: self.webhook_max_connections as usize,
            ..Default::default()
        }
    }

    /// The control channel's server limits, when it is served.
    pub fn control_server(&self) -> Option<crate::channel::Config> {
        self.control_channel.then(|| crate::channel::Config {
            max_connections: self.control_max_connections as usize,
            ..Default::default()
        })
    }

    /// The lease timings. Fails, naming the flags, unless the duration is
    /// whole seconds and retry period < renew deadline < duration.
    pub fn lease_timing(&self) -> Result<LeaseTiming> {
        let flag = |flag: &'static str, reason: String| {
            Error::InvalidFlags(vec![FlagError { flag, reason }])
        };
        let duration = self.lease_duration.to_std().unwrap_or_default();
        // The Lease stores it as an int32.
        let seconds = i32::try_from(duration.as_secs()).map_or(0, |s| s as u32);
        if duration.subsec_nanos() != 0 || seconds == 0 {
            let reason = format!(
                "must be a positive whole number of seconds, at most 2^31-1 (got {})",
                self.lease_duration
            );
            return Err(flag("--lease-duration", reason));
        }
        let deadline = self.lease_renew_deadline.to_std().unwrap_or_default();
        let retry = self.lease_retry_period.to_std().unwrap_or_default();
        LeaseTiming::new(seconds, deadline, retry).ok_or_else(|| {
            let reason = format!(
                "need 0 < --lease-retry-period ({}) < --lease-renew-deadline ({}) < --lease-duration ({})",
                self.lease_retry_period, self.lease_renew_deadline, self.lease_duration
            );
            flag("--lease-renew-deadline", reason)
        })
    }

    /// The Deployment to look up as the owner of the operator's own
    /// objects: `--owner-deployment`, when there is a Secret (generate
    /// mode) or a Lease (leader election) to own.
    pub fn owner_deployment(&self) -> Option<&str> {
        let owns_something = self.tls_mode == TlsMode::Generate || self.leader_election;
        self.owner_deployment.as_deref().filter(|_| owns_something)
    }

    /// The Lease, when leader election is on.
    pub fn lease(&self) -> Option<LeaseConfig> {
        self.leader_election.then(|| LeaseConfig {
            name: self.lease_name.clone(),
            namespace: self.namespace.clone(),
            identity: self.identity(),
        })
    }
}

/// `goaway-operator inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// A file of KeepalivePolicy manifests (repeatable), as applied.
    #[arg(long = "policy", short = 'p', required = true)]
    pub policies: Vec<PathBuf>,
    /// The namespace of objects (and policies) that do not name one.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// How the sidecar is run.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Drain settings for policies that leave them out.
    #[command(flatten)]
    pub defaults: PolicyDefaultsArgs,
}

#[cfg(test)]
mod tests;
