//! Policy parameters (docs/design.md §2): one set of plain-data types used by
//! the operator's CRD, the agent's policy file and this library.
//!
//! Every field is optional; an absent field means the gRPC default. The
//! types carry no behaviour beyond parsing, validation (`validate.rs`) and
//! resolution into concrete timer values (`resolve.rs`).

mod duration;
mod resolve;
mod validate;

pub use duration::{GoDuration, PATTERN as DURATION_PATTERN, ParseDurationError};
pub use resolve::{
    ClientParams, DrainParams, EffectivePolicy, MaybeInfinite, MaybeOff, RebalanceParams,
    ServerParams,
};
pub use validate::{FieldError, PolicyError, PolicyWarning, Strictness};

use serde::{Deserialize, Serialize};

/// Connection-management policy for one gRPC port.
///
/// Mirrors grpc-go's `keepalive.ServerParameters`,
/// `keepalive.EnforcementPolicy` and `keepalive.ClientParameters`, plus the
/// drain sequence the agent runs before the pod stops.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Server-side keepalive and connection lifetime, applied to every client
    /// connection the agent accepts (grpc-go keepalive.ServerParameters).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_default"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "ServerPolicy"))]
    pub server: ServerPolicy,
    /// Limits on how often clients may ping (grpc-go
    /// keepalive.EnforcementPolicy). Clients that ping too often get
    /// GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings").
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_default"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "EnforcementPolicy"))]
    pub enforcement: EnforcementPolicy,
    /// Keepalive on the agent's own connections to the application
    /// (grpc-go keepalive.ClientParameters, gRFC A8).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_default"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "UpstreamPolicy"))]
    pub upstream: UpstreamPolicy,
    /// The drain run by the pod's preStop hook or on SIGTERM.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_default"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "DrainPolicy"))]
    pub drain: DrainPolicy,
    /// Scale-up rebalancing: when a Service listing the pod gains ready
    /// endpoints, the agent sends GOAWAY to a share of its oldest client
    /// connections so that their clients reconnect, some of them to the
    /// new pods. Off by default.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_default"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "RebalancePolicy"))]
    pub rebalance: RebalancePolicy,
}

/// Server-side keepalive and connection lifetime.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPolicy {
    /// Ping the client after this long with nothing read from it, whether or
    /// not streams are open. Default 2h; gRPC clamps values below 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<GoDuration>,
    /// Close the connection if nothing is read this long after a keepalive
    /// ping. Also set as TCP_USER_TIMEOUT on accepted sockets (gRFC A18).
    /// Default 20s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Send a graceful GOAWAY (debug data "max_idle") after the connection
    /// has had no active stream for this long. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_idle: Option<GoDuration>,
    /// Send a graceful GOAWAY (debug data "max_age") once the connection is
    /// this old, jittered by ±10% per connection so reconnects spread out.
    /// This is what rebalances long-lived gRPC clients. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<GoDuration>,
    /// After the age GOAWAY, close the connection this long later even if
    /// RPCs are still running. Measured from the first GOAWAY, not jittered.
    /// Default: wait for the RPCs forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age_grace: Option<GoDuration>,
}

/// Limits on client pings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnforcementPolicy {
    /// The shortest interval allowed between client pings. The third ping
    /// strike closes the connection with "too_many_pings". Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_time: Option<GoDuration>,
    /// Allow client pings while no stream is open. When false, a ping with
    /// no stream open must come at least 2h after the previous one.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit_without_stream: Option<bool>,
}

/// Keepalive on the agent's connections to the application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamPolicy {
    /// Ping the application after this long with nothing read. Default: off.
    /// gRPC clamps client values below 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<GoDuration>,
    /// Close an upstream connection if nothing is read this long after a
    /// ping. Default 20s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Keep pinging while no stream is open. Default false: keepalive goes
    /// dormant and resumes with an immediate ping when a stream starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit_without_stream: Option<bool>,
}

/// The drain run before the pod stops.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainPolicy {
    /// After the drain starts (readiness already failing), wait at most this
    /// long before sending GOAWAY, so that endpoint removal reaches every
    /// client. The agent sends it sooner on evidence: once the operator
    /// reports the pod out of the ready endpoints of every EndpointSlice
    /// listing it and no new connection has arrived for `quietPeriod`.
    /// Without word from the operator it waits all of it. Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<GoDuration>,
    /// After the first drain GOAWAY, close whatever connections are left.
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// The longest wait between the first GOAWAY and the second when the
    /// client never answers the PING sent with it. Default 5s (grpc-go), or
    /// half of `timeout` when that is shorter than 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goaway_ack_timeout: Option<GoDuration>,
    /// How long, once the operator reports the pod out of every ready set,
    /// no new connection may arrive before the evidence that the endpoint
    /// removal has reached every node is complete: the nodes' proxies' time
    /// to apply it, and the least time between the drain's start and its
    /// GOAWAYs. At most 1m. Default 1.5s (kube-proxy's 1s `minSyncPeriod`
    /// plus a sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_period: Option<GoDuration>,
}

/// Scale-up rebalancing (docs/design.md §7.5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebalancePolicy {
    /// When the operator reports that a Service listing the pod grew from
    /// `from` to `to` ready endpoints, send GOAWAY (debug data
    /// "rebalance") to about `1 - from/to` of the client connections,
    /// oldest first. Their clients reconnect, which costs a handshake and
    /// can land on any endpoint, old pods included. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The GOAWAYs of one rebalance go out at random times over this
    /// window, so that the new pods, and DNS for clients that resolve it,
    /// see no reconnect storm. Greater than zero, at most 10m. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<GoDuration>,
    /// The largest share of the agent's client connections, in percent,
    /// one rebalance (or several within one `window`) sends away. 1 to
    /// 100. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
    pub max_percent: Option<u32>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A group written as `null` (`server: ~`, or Helm's `toYaml` of nil) is
/// the all-defaults group, as an empty `server:` already is.
fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

impl Policy {
    /// Parses a policy file (YAML, which includes JSON). An empty document is
    /// the all-defaults policy. Errors name the offending field.
    ///
    /// This only parses; call [`Policy::validate`] before using the values.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        if is_blank_yaml(text) {
            return Ok(Policy::default());
        }
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| PolicyError::parse(e.path(), e.inner()))
    }

    /// Parses a JSON policy. Errors name the offending field.
    pub fn from_json(text: &str) -> Result<Policy, PolicyError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| PolicyError::parse(e.path(), e.inner()))
    }

    /// Parses and validates a policy file in one step, as the agent does on
    /// start-up and on every reload.
    pub fn load(
        text: &str,
        strictness: Strictness,
    ) -> Result<(Policy, Vec<PolicyWarning>), PolicyError> {
        let policy = Policy::from_yaml(text)?;
        let warnings = policy.validate(strictness)?;
        Ok((policy, warnings))
    }
}

/// True for a YAML text with nothing but whitespace, comments or `---`.
fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    })
}

#[cfg(test)]
mod tests;
