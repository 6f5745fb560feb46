//! Building the status: conditions that keep their transition time while
//! unchanged (metav1.Condition semantics), and the applied status object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::KeepalivePolicyStatus;

/// One condition of the new status.
pub(super) struct Cond<'a> {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: &'a str,
}

impl Cond<'_> {
    /// The metav1.Condition, keeping `previous`'s transition time when
    /// the status did not change.
    pub(super) fn build(
        &self,
        generation: Option<i64>,
        previous: &KeepalivePolicyStatus,
        now: Timestamp,
    ) -> Condition {
        let status = if self.status { "True" } else { "False" };
        let old = previous.conditions.iter().find(|c| c.type_ == self.type_);
        let last_transition_time = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Time(now),
        };
        Condition {
            type_: self.type_.into(),
            status: status.into(),
            reason: self.reason.into(),
            message: self.message.into(),
            observed_generation: generation,
            last_transition_time,
        }
    }
}

/// True when `new` differs from the previous condition of its type in
/// status, reason or message: what deserves an Event.
pub(super) fn changed(previous: &KeepalivePolicyStatus, new: &Condition) -> bool {
    match previous.conditions.iter().find(|c| c.type_ == new.type_) {
        Some(c) => c.status != new.status || c.reason != new.reason || c.message != new.message,
        None => true,
    }
}

/// The server-side apply body for the status subresource.
pub(super) fn apply_body(status: &KeepalivePolicyStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "goaway.dev/v1alpha1",
        "kind": "KeepalivePolicy",
        "status": status,
    })
}
