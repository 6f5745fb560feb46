//! The operator → agent control channel's wire format: what the operator
//! tells each injected agent about its own pod, as one JSON object per
//! line on a long-lived stream (docs/design.md §7).
//!
//! An agent opens the stream with an HTTP/1.1 request to [`PATH`] that
//! upgrades the connection to [`PROTOCOL`], authenticated by a projected
//! service-account token for [`AUDIENCE`]; the operator checks it with a
//! TokenReview, and the token's pod claims decide which pod the stream is
//! about. From then on the operator writes [`Message`]s: the current state
//! on connect, every change after, and a [`Message::Heartbeat`] at least
//! every [`HEARTBEAT`] so that either end notices a dead connection.
//! The agent writes back only [`Report`]s, each one line of at most
//! [`MAX_REPORT_LINE`] bytes: what happened to its pod that should outlive
//! the pod (a finished drain), which the operator records as an Event on
//! the pod and counts on the policy's status.
//!
//! Plain data, shared by both ends, so that they cannot disagree on it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The request path of the stream.
pub const PATH: &str = "/v1/agent/stream";
/// The protocol the connection upgrades to (`Upgrade` header).
pub const PROTOCOL: &str = "goaway-control/1";
/// The audience of the agent's projected service-account token: tokens
/// minted for the API server (or anything else) are refused, and this one
/// is good for nothing but the operator.
pub const AUDIENCE: &str = "goaway.dev/agent";
/// The longest the operator stays silent on a stream; an agent that hears
/// nothing for three of these reconnects.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// The longest line either end reads.
pub const MAX_LINE: usize = 256 << 10;

/// One line on the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Message {
    /// The policy file the agent runs with: the same text its mounted
    /// ConfigMap holds (the policy with the operator's defaults filled in),
    /// loaded and validated as a change of that file would be.
    Policy {
        /// The policy file.
        text: String,
    },
    /// Whether the pod is in its Services' ready endpoints.
    Endpoints {
        /// True while at least one EndpointSlice lists the pod as ready.
        ready: bool,
        /// How many EndpointSlices list the pod at all.
        slices: u32,
    },
    /// The ready endpoints of a Service that lists the pod grew from `from`
    /// to `to` (a scale-up, not a one-for-one replacement): the agent sends
    /// GOAWAY to about `1 - from/to` of its client connections, oldest
    /// first, spread over its policy's `rebalance.window`, never more than
    /// `rebalance.maxPercent` of them — if its policy enables rebalancing.
    Rebalance {
        /// The Service (`kubernetes.io/service-name` of its slices).
        service: String,
        /// Ready endpoints before.
        from: u32,
        /// Ready endpoints now.
        to: u32,
    },
    /// Nothing new.
    Heartbeat,
}

/// The longest line the agent writes ([`Report`]).
pub const MAX_REPORT_LINE: usize = 1024;

/// One line from the agent to the operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Report {
    /// The pod's drain finished (the agent's "drain finished" log line).
    Drained(DrainReport),
}

/// A finished drain, numbered: the pod's first drain is 1 (a drain that
/// expired is followed by another).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Which of the pod's drains this is.
    pub drain: u64,
    /// What it did, with the field names of the agent's `/drain` answer.
    #[serde(flatten)]
    pub summary: DrainSummary,
}

/// What a drain did: the agent's `/drain` answer and "drain finished"
/// log line. Every field defaults, so a report of another version reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainSummary {
    /// Connections that closed after their streams finished.
    pub connections_drained: u64,
    /// Streams that ran to completion during the drain.
    pub streams_completed: u64,
    /// Connections cut at the deadline with streams still open.
    pub connections_hard_closed: u64,
    /// Streams cut at the deadline.
    pub streams_cut: u64,
    /// From the drain's start (readiness failing) to the last close.
    pub duration_seconds: f64,
    /// From the drain's start to its GOAWAYs.
    pub goaway_after_seconds: f64,
    /// Why the GOAWAYs went out then.
    pub goaway_on: GoawayOn,
}

/// What started a drain's GOAWAY step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoawayOn {
    /// The pod was out of every EndpointSlice's ready endpoints and no new
    /// connection had arrived for `drain.quietPeriod`.
    Evidence,
    /// `drain.delay` ran out.
    #[default]
    Delay,
}

impl GoawayOn {
    /// As in the summary's JSON: `evidence` or `delay`.
    pub fn as_str(self) -> &'static str {
        match self {
            GoawayOn::Evidence => "evidence",
            GoawayOn::Delay => "delay",
        }
    }
}

impl Report {
    /// The report as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Parses one line (without its newline).
    pub fn from_line(line: &[u8]) -> Result<Report, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

impl Message {
    /// The message as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Parses one line (without its newline).
    pub fn from_line(line: &[u8]) -> Result<Message, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_json_object_per_line() {
        for (message, line) in [
            (
                Message::Policy {
                    text: "drain:\n  delay: 5s\n".into(),
                },
                r#"{"type":"policy","text":"drain:\n  delay: 5s\n"}"#,
            ),
            (
                Message::Endpoints {
                    ready: false,
                    slices: 2,
                },
                r#"{"type":"endpoints","ready":false,"slices":2}"#,
            ),
            (
                Message::Rebalance {
                    service: "api".into(),
                    from: 3,
                    to: 6,
                },
                r#"{"type":"rebalance","service":"api","from":3,"to":6}"#,
            ),
            (Message::Heartbeat, r#"{"type":"heartbeat"}"#),
        ] {
            let encoded = message.to_line();
            assert_eq!(encoded, format!("{line}\n").as_bytes());
            assert_eq!(Message::from_line(line.as_bytes()).unwrap(), message);
        }
        assert!(Message::from_line(br#"{"type":"shutdown"}"#).is_err());
    }

    #[test]
    fn a_drain_report_is_one_line_within_the_limit() {
        let report = Report::Drained(DrainReport {
            drain: u64::MAX,
            summary: DrainSummary {
                connections_drained: u64::MAX,
                streams_completed: u64::MAX,
                connections_hard_closed: u64::MAX,
                streams_cut: u64::MAX,
                duration_seconds: f64::MAX,
                goaway_after_seconds: f64::MAX,
                goaway_on: GoawayOn::Evidence,
            },
        });
        let line = report.to_line();
        assert!(line.len() <= MAX_REPORT_LINE, "{} bytes", line.len());
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let parsed = Report::from_line(line.trim_ascii_end()).unwrap();
        assert_eq!(parsed, report);
        assert!(Report::from_line(br#"{"type":"drained","drain":1,"streams_cut":-1}"#).is_err());
        // The summary's field names, as the agent's /drain answers them.
        let line = r#"{"type":"drained","drain":2,"connections_drained":3,"goaway_on":"evidence"}"#;
        let Report::Drained(parsed) = Report::from_line(line.as_bytes()).unwrap();
        assert_eq!((parsed.drain, parsed.summary.connections_drained), (2, 3));
        assert_eq!(parsed.summary.goaway_on, GoawayOn::Evidence);
        assert!(Report::from_line(br#"{"type":"policy","text":""}"#).is_err());
    }
}
