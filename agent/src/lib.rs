//! The goaway agent: a per-pod HTTP/2 (h2c) proxy in front of a gRPC
//! application that applies grpc-go's connection management (via
//! `goaway-transport`) to every client connection and drains them all
//! before the pod stops.
//!
//! This crate owns the proxying, the admin API, metrics, policy hot reload,
//! the drain sequence and scale-up rebalancing. HTTP/2 connection behaviour lives in the
//! transport; Kubernetes in the operator.
//!
//! [`Config`] is the plain data an agent is started with; [`Agent`] is a
//! running one: that config and the handles its tasks share. Stopping
//! follows linkerd's drain-rs, as in the operator: see [`drain`].

#![warn(missing_docs)]

pub mod admin;
pub mod admin_client;
pub mod cli;
pub mod connections;
pub mod control;
pub mod demo;
pub mod drain;
pub mod intercept;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod rebalance;
pub mod run;
pub mod workers;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use goaway_transport::Counters;
use goaway_transport::server::ServerConfig;

pub use self::drain::DrainSummary;

/// What the agent runs with: plain data, fixed at start from the command
/// line (the policy, which can change, is in [`Agent::policy`]).
#[derive(Clone, Debug)]
pub struct Config {
    /// Required on `/drain` when set.
    pub drain_token: Option<String>,
    /// HTTP/2 settings for client connections.
    pub server_h2: h2::server::Builder,
    /// Longest a new client connection may take to finish its handshake.
    pub handshake_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// `/readyz` also connects to this application address
    /// (`--readiness-checks-upstream`).
    pub readiness_upstream: Option<String>,
    /// `--forwarded-for`.
    pub forwarded_for: proxy::forwarded::ForwardedFor,
    /// `--drain-expiry`: how long after a drain has finished the agent
    /// waits for SIGTERM before it serves again.
    pub drain_expiry: Duration,
    /// `--admin-allow`: who may drain, change the log level or list
    /// connections, besides loopback.
    pub admin_access: admin::access::AdminAccess,
}

/// A running agent: its [`Config`], and the runtime handles its tasks
/// share.
pub struct Agent {
    /// What it was started with.
    pub config: Config,
    /// The policy in force.
    pub policy: Arc<policy::PolicyStore>,
    /// Open client connections.
    pub connections: connections::ConnectionTable,
    /// Open connections spliced to the app unmanaged (TLS, HTTP/1.x).
    pub passthrough: connections::Passthroughs,
    /// Transport event counters.
    pub counters: Arc<Counters>,
    /// The worker threads, each with its own upstream pool.
    pub workers: Vec<Arc<workers::Worker>>,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// The drain's state; connections take part through the watch the
    /// accept loop was given with it ([`drain::DrainState::new`]).
    pub drain: drain::DrainState,
    /// True while serving; false from the moment a drain starts.
    pub ready: Arc<AtomicBool>,
    /// Whether the pod is in its Services' ready endpoints, as the
    /// operator last said (evidence for the drain).
    pub endpoints: tokio::sync::watch::Receiver<control::Endpoints>,
    /// True while the operator's control channel is open.
    pub control_connected: Arc<AtomicBool>,
    /// What `/readyz` last answered, logged as it changes.
    pub readiness: admin::readiness::Readiness,
    /// Scale-up rebalancing's pending GOAWAYs ([`rebalance`]).
    pub rebalancer: rebalance::Rebalancer,
}

impl Agent {
    /// The configuration for the next accepted connection, from the policy
    /// in force.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            params: self.policy.current().server_params(),
            counters: self.counters.clone(),
            h2: self.config.server_h2.clone(),
            handshake_timeout: self.config.handshake_timeout,
        }
    }
}

/// Per-stream and per-connection flow-control windows, both directions:
/// large enough for 16 MiB messages at loopback speed, small enough that a
/// stalled peer pins at most this much per connection.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The agent→app connection's receive window: as large as HTTP/2 allows,
/// deliberately. Connection-level flow control on this hop would let the
/// streams of one client that stopped reading (each holding up to
/// [`STREAM_WINDOW`] unreleased) block every other client's streams on the
/// same upstream connection. grpc-go returns connection window as soon as
/// data is read for the same reason; what the agent holds stays bounded per
/// stream by [`STREAM_WINDOW`].
pub const UPSTREAM_CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// h2's budget for small DATA frames received and not yet taken from it,
/// per upstream connection. The pumps take every frame as soon as it
/// arrives (even when the client is not reading), so this only has to
/// cover frames that arrive between two polls; h2's own default follows the
/// connection window and would be a gigabyte here.
pub const UPSTREAM_DATA_FRAME_BUDGET: usize = 16 << 20;
/// Largest response header list taken from the app (h2's default is
/// 16 MiB).
pub const UPSTREAM_MAX_HEADER_LIST_SIZE: u32 = 1 << 20;
/// `--max-header-list-size` by default: Envoy's 60 KiB, rounded up.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 64 << 10;
/// `--max-connections` by default: about 120 MiB of idle connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// How long a request may wait for an upstream connection by default.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnect backoff to the app: gRPC's shape (×1.6, ±20%) but from
/// 100ms and at most 1s apart, not 1s to 120s. The app is in the same pod:
/// a refused connect costs nothing, and an app restarting takes a few
/// seconds; with gRPC's schedule the agent would try again at 1s, 2.6s,
/// 5.2s, so requests held through a 3s restart waited past their 5s
/// `--upstream-connect-timeout` while the app was already back (seen with
/// a grpc-java app under load). Linkerd's proxy uses 100ms–500ms for its
/// inbound connections to the app for the same reason.
pub const UPSTREAM_BACKOFF: goaway_transport::client::BackoffConfig =
    goaway_transport::client::BackoffConfig {
        initial: Duration::from_millis(100),
        multiplier: 1.6,
        jitter: 0.2,
        max: Duration::from_secs(1),
        min_connect_timeout: Duration::from_secs(20),
    };
