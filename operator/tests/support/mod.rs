//! Shared test support.

#![allow(dead_code)]

pub(crate) mod agent;
pub(crate) mod cluster;
pub(crate) mod fake_api;
pub(crate) mod managed_fields;

use std::time::Duration;

use goaway_tests::poll;

/// Polls `check` every 50ms until it returns `Some` (or `true`), or panics
/// naming `what` after 20s.
pub(crate) async fn eventually<R: poll::Ready>(
    what: &str,
    check: impl AsyncFnMut() -> R,
) -> R::Output {
    poll::until_async(
        what,
        Duration::from_secs(20),
        Duration::from_millis(50),
        check,
    )
    .await
}
