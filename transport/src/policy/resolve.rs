//! Resolution of a (validated) [`Policy`] into concrete timer values, with
//! the gRPC defaults filled in.

use std::time::Duration;

use serde::Serialize;

use super::{GoDuration, Policy};

/// Default server keepalive time (grpc-go `defaultServerKeepaliveTime`).
pub(super) const DEFAULT_SERVER_TIME: Duration = Duration::from_secs(2 * 60 * 60);
/// Default keepalive ping timeout, server and client.
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default enforcement minimum ping interval.
pub(super) const DEFAULT_MIN_TIME: Duration = Duration::from_secs(5 * 60);
/// Default time from the first drain GOAWAY to the hard close.
pub(super) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound between the first and second GOAWAY (grpc-go uses 5s);
/// at most half of `drain.timeout`.
pub(super) const DEFAULT_GOAWAY_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default quiet period of the evidence-driven drain start: kube-proxy
/// applies EndpointSlice changes at most once per `minSyncPeriod` (1s by
/// default) after it sees them, then takes a sync to write its rules; on
/// the local node it dropped a pod up to 1.09s after the operator's word
/// (README, "Drains on evidence"), so 1s would send GOAWAY while a node
/// still routes reconnects to the pod.
pub(super) const DEFAULT_QUIET_PERIOD: Duration = Duration::from_millis(1500);
/// The longest quiet period allowed.
pub(super) const MAX_QUIET_PERIOD: Duration = Duration::from_secs(60);
/// Default window the GOAWAYs of one rebalance are spread over.
pub(super) const DEFAULT_REBALANCE_WINDOW: Duration = Duration::from_secs(30);
/// The longest rebalance window allowed.
pub(super) const MAX_REBALANCE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Default cap on the share of connections one rebalance sends away.
pub(super) const DEFAULT_REBALANCE_MAX_PERCENT: u32 = 50;

/// Per-connection server parameters (docs/design.md §3). `None` means
/// infinite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerParams {
    /// Ping after this long with nothing read.
    pub time: Duration,
    /// Close when nothing is read this long after a ping.
    pub timeout: Duration,
    /// Graceful GOAWAY after this long with no active stream.
    pub max_idle: Option<Duration>,
    /// Graceful GOAWAY at this age (before jitter).
    pub max_age: Option<Duration>,
    /// Hard close this long after the age GOAWAY.
    pub max_age_grace: Option<Duration>,
    /// Least interval between client pings.
    pub min_time: Duration,
    /// Whether client pings are allowed with no active stream.
    pub permit_without_stream: bool,
    /// Bound between the first and second GOAWAY of a graceful drain.
    pub goaway_ack_timeout: Duration,
}

/// Per-connection client parameters (docs/design.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientParams {
    /// Ping after this long with nothing read; `None` turns keepalive off.
    pub time: Option<Duration>,
    /// Close when nothing is read this long after a ping.
    pub timeout: Duration,
    /// Keep pinging with no stream open.
    pub permit_without_stream: bool,
}

/// The agent's drain sequence (docs/design.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainParams {
    /// Longest wait between failing readiness and the first GOAWAY.
    pub delay: Duration,
    /// From the first GOAWAY to the hard close.
    pub timeout: Duration,
    /// Bound between the first and second GOAWAY.
    pub goaway_ack_timeout: Duration,
    /// No new connection for this long completes the evidence for an
    /// early GOAWAY.
    pub quiet_period: Duration,
}

/// Scale-up rebalancing (docs/design.md §7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebalanceParams {
    /// Whether the agent acts on the operator's rebalance messages.
    pub enabled: bool,
    /// The GOAWAYs of one rebalance go out at random times within this.
    pub window: Duration,
    /// At most this share of the connections, in percent (1 to 100).
    pub max_percent: u32,
}

impl Default for RebalanceParams {
    fn default() -> Self {
        Policy::default().rebalance_params()
    }
}

impl Default for ServerParams {
    fn default() -> Self {
        Policy::default().server_params()
    }
}

impl Default for ClientParams {
    fn default() -> Self {
        Policy::default().client_params()
    }
}

impl Default for DrainParams {
    fn default() -> Self {
        Policy::default().drain_params()
    }
}

fn std(d: Option<GoDuration>) -> Option<Duration> {
    d.and_then(GoDuration::to_std)
}

impl Policy {
    /// Server parameters with defaults filled in. Call on a validated
    /// policy: a negative value here falls back to the default.
    pub fn server_params(&self) -> ServerParams {
        let s = &self.server;
        ServerParams {
            time: std(s.time).unwrap_or(DEFAULT_SERVER_TIME),
            timeout: std(s.timeout).unwrap_or(DEFAULT_TIMEOUT),
            max_idle: std(s.max_connection_idle),
            max_age: std(s.max_connection_age),
            max_age_grace: std(s.max_connection_age_grace),
            min_time: std(self.enforcement.min_time).unwrap_or(DEFAULT_MIN_TIME),
            permit_without_stream: self.enforcement.permit_without_stream.unwrap_or(false),
            goaway_ack_timeout: self.drain_params().goaway_ack_timeout,
        }
    }

    /// Client (agent→app) parameters with defaults filled in.
    pub fn client_params(&self) -> ClientParams {
        let u = &self.upstream;
        ClientParams {
            time: std(u.time),
            timeout: std(u.timeout).unwrap_or(DEFAULT_TIMEOUT),
            permit_without_stream: u.permit_without_stream.unwrap_or(false),
        }
    }

    /// Drain parameters with defaults filled in.
    pub fn drain_params(&self) -> DrainParams {
        let d = &self.drain;
        let timeout = std(d.timeout).unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        DrainParams {
            delay: std(d.delay).unwrap_or(Duration::ZERO),
            timeout,
            // A default follows what the user set: a short drain.timeout
            // alone never makes the ack timeout invalid.
            goaway_ack_timeout: std(d.goaway_ack_timeout)
                .unwrap_or_else(|| DEFAULT_GOAWAY_ACK_TIMEOUT.min(timeout / 2)),
            quiet_period: std(d.quiet_period).unwrap_or(DEFAULT_QUIET_PERIOD),
        }
    }

    /// Rebalance parameters with defaults filled in.
    pub fn rebalance_params(&self) -> RebalanceParams {
        let r = &self.rebalance;
        RebalanceParams {
            enabled: r.enabled.unwrap_or(false),
            window: std(r.window)
                .filter(|w| !w.is_zero())
                .unwrap_or(DEFAULT_REBALANCE_WINDOW),
            max_percent: r
                .max_percent
                .unwrap_or(DEFAULT_REBALANCE_MAX_PERCENT)
                .clamp(1, 100),
        }
    }

    /// Every value in force, defaults included, for display (`/policy`).
    pub fn effective(&self) -> EffectivePolicy {
        let s = self.server_params();
        let c = self.client_params();
        let d = self.drain_params();
        let r = self.rebalance_params();
        EffectivePolicy {
            server: EffectiveServer {
                time: s.time.into(),
                timeout: s.timeout.into(),
                max_connection_idle: s.max_idle.into(),
                max_connection_age: s.max_age.into(),
                max_connection_age_grace: s.max_age_grace.into(),
            },
            enforcement: EffectiveEnforcement {
                min_time: s.min_time.into(),
                permit_without_stream: s.permit_without_stream,
            },
            upstream: EffectiveUpstream {
                time: c.time.into(),
                timeout: c.timeout.into(),
                permit_without_stream: c.permit_without_stream,
            },
            drain: EffectiveDrain {
                delay: d.delay.into(),
                timeout: d.timeout.into(),
                goaway_ack_timeout: d.goaway_ack_timeout.into(),
                quiet_period: d.quiet_period.into(),
            },
            rebalance: EffectiveRebalance {
                enabled: r.enabled,
                window: r.window.into(),
                max_percent: r.max_percent,
            },
        }
    }
}

/// A duration that may be infinite, shown as `"infinite"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaybeInfinite(Option<GoDuration>);

/// A duration for something that may be switched off, shown as `"off"`
/// (upstream keepalive, whose default in docs/design.md §2.1 is "off",
/// not a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaybeOff(Option<GoDuration>);

impl From<Option<Duration>> for MaybeOff {
    fn from(d: Option<Duration>) -> Self {
        MaybeOff(d.map(GoDuration::from))
    }
}

impl Serialize for MaybeOff {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(d) => s.collect_str(&d),
            None => s.serialize_str("off"),
        }
    }
}

impl From<Option<Duration>> for MaybeInfinite {
    fn from(d: Option<Duration>) -> Self {
        MaybeInfinite(d.map(GoDuration::from))
    }
}

impl Serialize for MaybeInfinite {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(d) => s.collect_str(&d),
            None => s.serialize_str("infinite"),
        }
    }
}

/// The policy with every default filled in, as JSON for `/policy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct EffectivePolicy {
    pub server: EffectiveServer,
    pub enforcement: EffectiveEnforcement,
    pub upstream: EffectiveUpstream,
    pub drain: EffectiveDrain,
    pub rebalance: EffectiveRebalance,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct EffectiveServer {
    pub time: GoDuration,
    pub timeout: GoDuration,
    pub max_connection_idle: MaybeInfinite,
    pub max_connection_age: MaybeInfinite,
    pub max_connection_age_grace: MaybeInfinite,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct EffectiveEnforcement {
    pub min_time: GoDuration,
    pub permit_without_stream: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct EffectiveUpstream {
    pub time: MaybeOff,
    pub timeout: GoDuration,
    pub permit_without_stream: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct EffectiveDrain {
    pub delay: GoDuration,
    pub timeout: GoDuration,
    pub goaway_ack_timeout: GoDuration,
    pub quiet_period: GoDuration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct EffectiveRebalance {
    pub enabled: bool,
    pub window: GoDuration,
    pub max_percent: u32,
}
