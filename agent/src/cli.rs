//! Command line (docs/design.md §5.1). Every flag may also come from
//! `GOAWAY_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use goaway_transport::policy::GoDuration;

/// goaway-agent: drains gRPC connections before the pod stops.
#[derive(Debug, Parser)]
#[command(name = "goaway-agent", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "GOAWAY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    // Documented by each subcommand (a doc comment here would become
    // clap help text).
    #[allow(missing_docs)]
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy: the sidecar's main command.
    Run(Box<RunArgs>),
    /// Ask a running agent to drain and wait until it has (for exec preStop
    /// hooks). Prints the drain summary.
    Drain(DrainArgs),
    /// Validate a policy file: exit 0 if valid, non-zero with the field and
    /// the reason otherwise.
    CheckConfig {
        /// The policy file (YAML or JSON).
        file: PathBuf,
    },
    /// Run a rolling deploy on this machine, with and without agents, and
    /// print what the clients saw. No cluster needed.
    Demo(crate::demo::DemoArgs),
    /// Internal: the demo's app process.
    #[command(hide = true)]
    DemoBackend(crate::demo::BackendArgs),
    /// Redirect inbound TCP for the app port to the agent's port in this
    /// network namespace (nftables; needs CAP_NET_ADMIN). Run by the
    /// redirect-mode init container. Idempotent.
    Intercept(InterceptArgs),
}

/// `goaway-agent intercept`.
#[derive(Clone, Debug, Args)]
pub struct InterceptArgs {
    /// The app's port: inbound TCP to it is redirected.
    #[arg(long)]
    pub app_port: u16,
    /// The agent's listening port: where that traffic goes instead.
    #[arg(long)]
    pub agent_port: u16,
    /// Remove the redirect for --app-port instead (succeeds if there is
    /// none).
    #[arg(long)]
    pub remove: bool,
}

/// `goaway-agent run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Where clients connect (HTTP/2 prior knowledge, h2c). `host:port`,
    /// `ip:port`, or `:port` for every interface.
    #[arg(long, env = "GOAWAY_LISTEN", value_parser = parse_bind)]
    pub listen: SocketAddr,
    /// The application's gRPC port, `host:port`. An IPv6 address may be
    /// written without brackets (`fd00::7:50051`), as `$(POD_IP):50051`
    /// expands to on an IPv6 pod.
    #[arg(long, env = "GOAWAY_UPSTREAM", value_parser = parse_upstream)]
    pub upstream: String,
    /// Admin HTTP server: health, readiness, drain, metrics. Same forms as
    /// `--listen`.
    #[arg(long, env = "GOAWAY_ADMIN", value_parser = parse_bind)]
    pub admin: SocketAddr,
    /// Policy file (docs/design.md §2); reloaded when it changes. Defaults
    /// apply without one.
    #[arg(long, env = "GOAWAY_POLICY")]
    pub policy: Option<PathBuf>,
    /// Require this token on /drain (`Authorization: Bearer <token>`).
    #[arg(long, env = "GOAWAY_DRAIN_TOKEN", hide_env_values = true)]
    pub drain_token: Option<String>,
    /// Read the drain token from this file.
    #[arg(long, env = "GOAWAY_DRAIN_TOKEN_FILE", conflicts_with = "drain_token")]
    pub drain_token_file: Option<PathBuf>,
    /// Longest a request waits for an upstream connection before it is
    /// answered with UNAVAILABLE (its own deadline permitting).
    #[arg(long, env = "GOAWAY_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s")]
    pub upstream_connect_timeout: GoDuration,
    /// Most connections each worker thread opens to the application when
    /// its SETTINGS_MAX_CONCURRENT_STREAMS is reached.
    #[arg(long, env = "GOAWAY_UPSTREAM_MAX_CONNECTIONS", default_value_t = 16)]
    pub upstream_max_connections: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients (default:
    /// unlimited, as grpc-go).
    #[arg(long, env = "GOAWAY_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Largest request header list (SETTINGS_MAX_HEADER_LIST_SIZE, RFC 9113
    /// §6.5.2: names, values and 32 bytes per field) accepted from a
    /// client; larger ones are refused on that stream. An unfinished header
    /// block costs a connection at most this much decoded plus six frames
    /// of raw bytes, so this bounds what a client can park in the agent.
    #[arg(long, env = "GOAWAY_MAX_HEADER_LIST_SIZE", default_value_t = crate::DEFAULT_MAX_HEADER_LIST_SIZE)]
    pub max_header_list_size: u32,
    /// Most client connections open at once; past it new connections are
    /// closed as soon as they are accepted (clients retry another pod).
    /// An idle connection costs about 12 KiB.
    #[arg(long, env = "GOAWAY_MAX_CONNECTIONS", default_value_t = crate::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// How long a new client connection may take to send the HTTP/2
    /// preface and its first SETTINGS before it is closed.
    #[arg(long, env = "GOAWAY_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: GoDuration,
    /// How often the policy file is checked for changes.
    #[arg(long, env = "GOAWAY_POLICY_POLL_INTERVAL", default_value = "1s")]
    pub policy_poll_interval: GoDuration,
    /// Make `/readyz` also check that the application accepts TCP
    /// connections on `--upstream` (a connect, at most 1s), so a crashed
    /// or restarting app takes its pod out of its Services' endpoints.
    /// The operator turns this on for the agents it injects.
    #[arg(long, env = "GOAWAY_READINESS_CHECKS_UPSTREAM")]
    pub readiness_checks_upstream: bool,
    /// The operator's control channel, `https://host:port` (with
    /// `--control-ca` and `--control-token-file`): policy changes within
    /// a second, and the evidence a drain starts on. Without it the policy
    /// file alone is the source and a drain waits its whole delay.
    #[arg(long, env = "GOAWAY_CONTROL_URL", requires_all = ["control_ca", "control_token_file"])]
    pub control_url: Option<String>,
    /// The CA certificate (PEM) the operator's certificate is checked
    /// against; read at each connection.
    #[arg(long, env = "GOAWAY_CONTROL_CA")]
    pub control_ca: Option<PathBuf>,
    /// The pod's projected service-account token for the operator
    /// (audience `goaway.dev/agent`); read at each connection.
    #[arg(long, env = "GOAWAY_CONTROL_TOKEN_FILE")]
    pub control_token_file: Option<PathBuf>,
    /// Who may use `/drain`, `PUT /log-level` and `/connections` besides
    /// the pod itself (loopback): a comma-separated list of addresses,
    /// CIDRs, `gateway` (the pod's default gateways: where the node's
    /// kubelet connects from on bridged pod networks) or `any`. The
    /// operator injects `gateway,$(GOAWAY_HOST_IP)`.
    #[arg(long, env = "GOAWAY_ADMIN_ALLOW", default_value = "gateway")]
    pub admin_allow: String,
    /// How long after a drain has finished the agent waits for SIGTERM
    /// (which a pod's termination sends once the app has exited) before it
    /// opens its listener again and reports ready: a drain that no stop
    /// follows ends on its own. The operator sets it to the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "GOAWAY_DRAIN_EXPIRY", default_value = "60s")]
    pub drain_expiry: GoDuration,
    /// Whether requests reach the application with the client's address
    /// appended to `x-forwarded-for` (after any entries the client sent:
    /// the last one is the agent's), or as they came.
    #[arg(
        long,
        env = "GOAWAY_FORWARDED_FOR",
        value_enum,
        default_value = "append"
    )]
    pub forwarded_for: crate::proxy::forwarded::ForwardedFor,
    /// Worker threads, each serving its share of client connections with
    /// its own upstream connections (default: the CPUs available to the
    /// process, at most 2).
    #[arg(long, env = "GOAWAY_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

/// `goaway-agent drain`.
#[derive(Clone, Debug, Args)]
pub struct DrainArgs {
    /// The agent's admin address, in any form `run --admin` takes; `:port`
    /// and unspecified IPs (`0.0.0.0`, `[::]`) mean this host's loopback.
    #[arg(long, env = "GOAWAY_ADMIN", default_value = "127.0.0.1:15052")]
    pub admin: String,
    /// The drain token, if the agent requires one.
    #[arg(long, env = "GOAWAY_DRAIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the drain token from this file.
    #[arg(long, env = "GOAWAY_DRAIN_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// How long this command waits for the drain to finish before giving
    /// up (the agent's drain goes on regardless).
    #[arg(long, env = "GOAWAY_DRAIN_TIMEOUT", default_value = "10m")]
    pub timeout: GoDuration,
}

/// `host:port`, with an unbracketed IPv6 address and port
/// (`fd00::7:50051`) bracketed (`[fd00::7]:50051`).
pub fn parse_upstream(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (host, port) = s
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    match (host.parse::<std::net::Ipv6Addr>(), port.parse::<u16>()) {
        (Ok(ip), Ok(port)) => Ok(SocketAddr::from((ip, port)).to_string()),
        _ if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) => Err(format!(
            "{s:?} is not host:port (an IPv6 address needs a port)"
        )),
        _ => Ok(s.to_string()),
    }
}

/// A bind address: `ip:port`, `[v6]:port`, `host:port` (resolved once), or
/// Go's `:port` for every interface.
pub fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not an address (ip:port, host:port or :port): {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses_take_bare_ipv6_as_the_pod_ip_expands() {
        for (given, want) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("10.1.2.3:50051", "10.1.2.3:50051"),
            ("fd00::7:50051", "[fd00::7]:50051"),
            ("[fd00::7]:50051", "[fd00::7]:50051"),
            ("app.shop.svc:50051", "app.shop.svc:50051"),
        ] {
            assert_eq!(parse_upstream(given).unwrap(), want, "{given}");
        }
        for bad in ["", "10.1.2.3", ":50051", "host:http", "fd00::7"] {
            assert!(parse_upstream(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bind_addresses_take_every_usual_form() {
        assert_eq!(
            parse_bind(":15051").unwrap(),
            "0.0.0.0:15051".parse().unwrap()
        );
        assert_eq!(
            parse_bind("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(parse_bind("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(parse_bind("localhost:8080").unwrap().ip().is_loopback());
        for bad in ["", ":", ":http", "8080", "nonsense"] {
            assert!(parse_bind(bad).is_err(), "{bad:?}");
        }
    }
}
