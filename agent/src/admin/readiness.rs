//! What `/readyz` answered, told where an operator looks: the kubelet's
//! probe Events show only "Readiness probe failed: HTTP probe failed with
//! statuscode: 503", and the agent's image has no shell to curl from. So
//! each change of the answer is logged with its reason, and the last
//! answer is the metric `goaway_readiness{state}`.
//!
//! Which changes are worth a WARN:
//! - ready → an upstream failure (the app stopped accepting connections):
//!   WARN, at most one per [`WARN_INTERVAL`]; those held back are counted
//!   in the next one;
//! - not ready since start-up because the app does not accept connections
//!   yet: expected while it starts — INFO at the first answer, and one
//!   WARN if it lasts [`STARTUP_GRACE`];
//! - draining: INFO (the drain logs its own progress);
//! - back to ready: INFO, with how long it was not.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// The least time between two WARNs of the app refusing connections.
pub const WARN_INTERVAL: Duration = Duration::from_secs(30);
/// How long the app may take to accept its first connection before the
/// agent warns that it still does not.
pub const STARTUP_GRACE: Duration = Duration::from_secs(60);

/// One `/readyz` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Answer {
    /// None given yet.
    Unprobed = 0,
    /// 200.
    Ready = 1,
    /// 503: a drain started.
    Draining = 2,
    /// 503: the app refused the connection (`--readiness-checks-upstream`).
    UpstreamRefused = 3,
    /// 503: the app did not accept a connection in time.
    UpstreamTimeout = 4,
}

impl Answer {
    /// Every answer, in label order.
    pub const ALL: [Answer; 5] = [
        Answer::Unprobed,
        Answer::Ready,
        Answer::Draining,
        Answer::UpstreamRefused,
        Answer::UpstreamTimeout,
    ];

    /// The metric's `state` label.
    pub fn label(self) -> &'static str {
        match self {
            Answer::Unprobed => "unprobed",
            Answer::Ready => "ready",
            Answer::Draining => "draining",
            Answer::UpstreamRefused => "upstream_refused",
            Answer::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The answer [`Answer`]`as u8` encoded.
    pub fn from_u8(n: u8) -> Answer {
        Answer::ALL
            .into_iter()
            .find(|a| *a as u8 == n)
            .unwrap_or(Answer::Unprobed)
    }

    fn upstream_failure(self) -> bool {
        matches!(self, Answer::UpstreamRefused | Answer::UpstreamTimeout)
    }
}

/// How an answer was logged (for tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logged {
    /// Not at all: the same answer as before.
    Nothing,
    /// At DEBUG: a WARN held back by [`WARN_INTERVAL`].
    Debug,
    /// At INFO.
    Info,
    /// At WARN.
    Warn,
}

/// The last answer (shared with the metrics) and what logging it needs.
pub struct Readiness {
    answer: Arc<AtomicU8>,
    log: Mutex<LogState>,
}

struct LogState {
    /// When the agent started: the start-up grace runs from here, however
    /// often the answer changes between refused and timing out.
    started: Instant,
    /// Since when the answer has been what it is.
    since: Instant,
    ever_ready: bool,
    startup_warned: bool,
    last_warn: Option<Instant>,
    held_back: u64,
}

impl Readiness {
    /// Shares the last answer through `answer` (read by the metrics).
    pub fn new(answer: Arc<AtomicU8>) -> Readiness {
        answer.store(Answer::Unprobed as u8, Relaxed);
        Readiness {
            answer,
            log: Mutex::new(LogState {
                started: Instant::now(),
                since: Instant::now(),
                ever_ready: false,
                startup_warned: false,
                last_warn: None,
                held_back: 0,
            }),
        }
    }

    /// The last answer.
    pub fn current(&self) -> Answer {
        Answer::from_u8(self.answer.load(Relaxed))
    }

    /// Records an answer and logs it as the module says; `detail` is the
    /// body's reason.
    pub fn observe(&self, answer: Answer, detail: &str) -> Logged {
        let now = Instant::now();
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let before = Answer::from_u8(self.answer.swap(answer as u8, Relaxed));
        let changed = before != answer;
        let was = now.duration_since(log.since);
        if changed {
            log.since = now;
        }
        // Not ready since start-up: the app is starting, however its
        // failure changes between refused and timing out.
        if answer.upstream_failure() && !log.ever_ready {
            if !log.startup_warned && now.duration_since(log.started) >= STARTUP_GRACE {
                log.startup_warned = true;
                tracing::warn!(
                    reason = detail,
                    for_ = ?now.duration_since(log.started),
                    "not ready: the app has not accepted a connection since the agent started"
                );
                return Logged::Warn;
            }
            if !changed {
                return Logged::Nothing;
            }
            if before == Answer::Unprobed {
                tracing::info!(
                    reason = detail,
                    "not ready yet: the app does not accept connections (expected while it starts)"
                );
                return Logged::Info;
            }
            tracing::debug!(reason = detail, "not ready yet");
            return Logged::Debug;
        }
        if !changed {
            return Logged::Nothing;
        }
        match answer {
            Answer::Unprobed => Logged::Nothing,
            Answer::Ready => {
                log.ever_ready = true;
                tracing::info!(was = before.label(), for_ = ?was, "ready");
                Logged::Info
            }
            Answer::Draining => {
                tracing::info!("not ready: draining");
                Logged::Info
            }
            Answer::UpstreamRefused | Answer::UpstreamTimeout => {
                if log
                    .last_warn
                    .is_some_and(|at| now.duration_since(at) < WARN_INTERVAL)
                {
                    log.held_back += 1;
                    tracing::debug!(reason = detail, "not ready");
                    return Logged::Debug;
                }
                log.last_warn = Some(now);
                let held_back = std::mem::take(&mut log.held_back);
                tracing::warn!(
                    reason = detail,
                    was_ready_for = ?was,
                    changes_not_logged = held_back,
                    "not ready: the app stopped accepting connections"
                );
                Logged::Warn
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readiness() -> Readiness {
        Readiness::new(Arc::new(AtomicU8::new(0)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_start_is_info_then_one_warn_after_the_grace() {
        let r = readiness();
        assert_eq!(r.current(), Answer::Unprobed);
        assert_eq!(r.observe(Answer::UpstreamRefused, "refused"), Logged::Info);
        assert_eq!(r.observe(Answer::UpstreamTimeout, "slow"), Logged::Debug);
        tokio::time::advance(STARTUP_GRACE - Duration::from_secs(1)).await;
        assert_eq!(r.observe(Answer::UpstreamTimeout, "slow"), Logged::Nothing);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(r.observe(Answer::UpstreamTimeout, "slow"), Logged::Warn);
        tokio::time::advance(STARTUP_GRACE).await;
        assert_eq!(r.observe(Answer::UpstreamTimeout, "slow"), Logged::Nothing);
        assert_eq!(r.observe(Answer::Ready, ""), Logged::Info);
        assert_eq!(r.current(), Answer::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_flips_between_refused_and_timing_out_still_warns_once() {
        let r = readiness();
        assert_eq!(r.observe(Answer::UpstreamRefused, "refused"), Logged::Info);
        let mut warned = 0;
        for step in 1..=14 {
            tokio::time::advance(Duration::from_secs(10)).await;
            let answer = if step % 2 == 0 {
                Answer::UpstreamRefused
            } else {
                Answer::UpstreamTimeout
            };
            let logged = r.observe(answer, "flipping");
            if step * 10 < STARTUP_GRACE.as_secs() {
                assert_eq!(logged, Logged::Debug, "after {}s", step * 10);
            }
            warned += usize::from(logged == Logged::Warn);
        }
        assert_eq!(warned, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_app_warns_at_most_once_per_interval() {
        let r = readiness();
        r.observe(Answer::Ready, "");
        assert_eq!(r.observe(Answer::UpstreamRefused, "refused"), Logged::Warn);
        assert_eq!(
            r.observe(Answer::UpstreamRefused, "refused"),
            Logged::Nothing
        );
        // Flapping: held back until the interval has passed.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(r.observe(Answer::Ready, ""), Logged::Info);
            assert_eq!(r.observe(Answer::UpstreamTimeout, "slow"), Logged::Debug);
        }
        tokio::time::advance(WARN_INTERVAL).await;
        r.observe(Answer::Ready, "");
        assert_eq!(r.observe(Answer::UpstreamRefused, "refused"), Logged::Warn);
        assert_eq!(r.log.lock().unwrap().held_back, 0);
        // A drain is expected: never a WARN.
        r.observe(Answer::Ready, "");
        assert_eq!(r.observe(Answer::Draining, ""), Logged::Info);
        assert_eq!(r.current().label(), "draining");
    }
}
