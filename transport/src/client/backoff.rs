//! gRPC connection backoff (grpc/doc/connection-backoff.md).

use std::time::Duration;

use tokio::time::Instant;

/// Backoff parameters; the defaults are gRPC's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Growth per failed attempt.
    pub multiplier: f64,
    /// Randomisation, as a fraction of the delay (±).
    pub jitter: f64,
    /// Largest delay.
    pub max: Duration,
    /// Least time an attempt is given to connect.
    pub min_connect_timeout: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(120),
            min_connect_timeout: Duration::from_secs(20),
        }
    }
}

/// The state of one run of connection attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    current: Duration,
    /// When the next attempt may start.
    next_attempt: Option<Instant>,
}

impl Backoff {
    /// A fresh run: the first attempt may start at once.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            current: config.initial,
            next_attempt: None,
        }
    }

    /// When the next attempt may start (`None`: now).
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next_attempt
    }

    /// An attempt starts at `now`: schedules the retry one (jittered)
    /// backoff after the start of this attempt and returns the attempt's
    /// connect deadline, `now + max(min_connect_timeout, that backoff)`.
    pub fn start_attempt(&mut self, now: Instant, jitter: impl FnOnce() -> f64) -> Instant {
        let delay = if self.next_attempt.is_none() {
            // First attempt of the run: INITIAL_BACKOFF, not jittered.
            self.current
        } else {
            self.current = self
                .current
                .mul_f64(self.config.multiplier)
                .min(self.config.max);
            let j = (jitter() * 2.0 - 1.0) * self.config.jitter;
            self.current.mul_f64(1.0 + j)
        };
        self.next_attempt = Some(now + delay);
        now + self.config.min_connect_timeout.max(delay)
    }

    /// The connection succeeded: the next run starts afresh.
    pub fn reset(&mut self) {
        self.current = self.config.initial;
        self.next_attempt = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_grpc_connection_backoff() {
        let start = Instant::now();
        let mut b = Backoff::new(BackoffConfig::default());
        let mut now = start;
        let mut attempts = Vec::new();
        for _ in 0..14 {
            attempts.push((now - start).as_secs_f64());
            let deadline = b.start_attempt(now, || 0.5); // no jitter
            assert!(deadline - now >= Duration::from_secs(20));
            now = b.next_attempt().unwrap();
        }
        let gaps: Vec<f64> = attempts
            .windows(2)
            .map(|w| ((w[1] - w[0]) * 1000.0).round() / 1000.0)
            .collect();
        assert_eq!(&gaps[..5], &[1.0, 1.6, 2.56, 4.096, 6.554]);
        // Capped at 120s.
        assert_eq!(gaps[gaps.len() - 1], 120.0);
    }

    #[test]
    fn jitter_is_twenty_percent_either_way() {
        let now = Instant::now();
        let mut low = Backoff::new(BackoffConfig::default());
        low.start_attempt(now, || 0.0);
        low.start_attempt(now, || 0.0);
        assert_eq!(
            low.next_attempt().unwrap() - now,
            Duration::from_secs_f64(1.6 * 0.8)
        );
        let mut high = Backoff::new(BackoffConfig::default());
        high.start_attempt(now, || 1.0);
        high.start_attempt(now, || 1.0);
        assert_eq!(
            high.next_attempt().unwrap() - now,
            Duration::from_secs_f64(1.6 * 1.2)
        );
    }

    #[test]
    fn connect_deadline_grows_with_backoff_past_twenty_seconds() {
        let mut b = Backoff::new(BackoffConfig::default());
        let now = Instant::now();
        for _ in 0..10 {
            b.start_attempt(now, || 0.5);
        }
        // current backoff is now 1.6^9 ≈ 68.7s > 20s.
        let deadline = b.start_attempt(now, || 0.5);
        assert!(deadline - now > Duration::from_secs(100));
        b.reset();
        assert_eq!(b.next_attempt(), None);
        assert_eq!(b.start_attempt(now, || 0.5) - now, Duration::from_secs(20));
    }
}
