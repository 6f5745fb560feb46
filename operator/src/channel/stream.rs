//! Writing one agent's view to its stream
//! ([`goaway_transport::control`]'s messages, one JSON object per line).
//!
//! On start: the policy, then the endpoints, whichever are known. Then
//! each change, the policy before the endpoints when both changed at
//! once; something unknown (`None`) is never sent, so the agent keeps
//! what it has. A scale-up (`rebalance`) is an event: sent once when the
//! hub tells the pod of it, never on start. When nothing was written for a heartbeat interval, a
//! [`Message::Heartbeat`]: an agent that hears nothing for three
//! intervals reconnects. A write (with its flush) that does not complete
//! within the write timeout ends the stream: an agent that stops reading
//! must not hold the operator's buffers.

use std::io;
use std::time::Duration;

use goaway_transport::control::Message;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::hub::View;
use crate::metrics::Metrics;

/// How a stream writes.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The longest silence ([`goaway_transport::control::HEARTBEAT`]).
    pub heartbeat: Duration,
    /// The longest one write may take.
    pub write_timeout: Duration,
}

/// Writes `view` to `out` until a write fails or times out (an error), or
/// the hub drops the view (Ok).
pub async fn send_view<W: AsyncWrite + Unpin>(
    view: &mut watch::Receiver<View>,
    out: &mut W,
    timing: Timing,
    metrics: &Metrics,
) -> io::Result<()> {
    // A scale-up told before this stream opened was for the agent's last
    // stream (or none): never told again.
    let mut sent = View {
        rebalance: view.borrow().rebalance.clone(),
        ..View::default()
    };
    let mut last_write = Instant::now();
    let mut lines = Vec::new();
    // The first pass sends what is known now.
    view.mark_changed();
    loop {
        let changed = tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                true
            }
            () = tokio::time::sleep_until(last_write + timing.heartbeat) => false,
        };
        lines.clear();
        if changed {
            let now = view.borrow_and_update().clone();
            if let Some(text) = now.policy.as_ref().filter(|_| now.policy != sent.policy) {
                let text = text.to_string();
                lines.extend(Message::Policy { text }.to_line());
                metrics.control_message("policy");
                sent.policy = now.policy.clone();
            }
            if let Some(e) = now.endpoints.filter(|_| now.endpoints != sent.endpoints) {
                let (ready, slices) = (e.ready, e.slices);
                lines.extend(Message::Endpoints { ready, slices }.to_line());
                metrics.control_message("endpoints");
                sent.endpoints = now.endpoints;
            }
            if let Some(r) = now
                .rebalance
                .as_ref()
                .filter(|_| now.rebalance != sent.rebalance)
            {
                let message = Message::Rebalance {
                    service: r.service.to_string(),
                    from: r.from,
                    to: r.to,
                };
                lines.extend(message.to_line());
                metrics.control_message("rebalance");
                sent.rebalance = now.rebalance.clone();
            }
            if lines.is_empty() {
                continue;
            }
        } else {
            lines.extend(Message::Heartbeat.to_line());
            metrics.control_message("heartbeat");
        }
        let write = async {
            out.write_all(&lines).await?;
            out.flush().await
        };
        tokio::time::timeout(timing.write_timeout, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
        last_write = Instant::now();
    }
}
