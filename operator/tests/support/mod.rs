//! Shared test support.

#![allow(dead_code)]

pub(crate) mod agent;
pub(crate) mod cluster;
pub(crate) mod fake_api;
pub(crate) mod managed_fields;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after 20s.
pub(crate) async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
