//! Ping enforcement (gRFC A8, grpc-go's `handlePing` variant).

use std::time::Duration;

use tokio::time::Instant;

/// Strikes tolerated; the next one closes the connection (grpc-go
/// `maxPingStrikes`).
pub(super) const MAX_PING_STRIKES: u32 = 2;

/// With no active stream and pings not permitted, pings must be at least
/// this far apart (grpc-go `defaultPingTimeout`).
pub(super) const NO_STREAM_PING_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);

/// What to do about a received PING.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PingVerdict {
    /// Within policy (or exempt).
    Ok,
    /// Too early; this is strike number `n` (1 or 2).
    Strike(u32),
    /// Third strike: GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") and close.
    TooManyPings,
}

/// Per-connection strike state.
#[derive(Debug, Default)]
pub(crate) struct PingEnforcer {
    last_ping: Option<Instant>,
    strikes: u32,
    reset: bool,
}

impl PingEnforcer {
    /// The server wrote HEADERS or DATA: the next ping is exempt and clears
    /// the strikes (pings answering real traffic are BDP or liveness probes).
    pub(crate) fn data_or_headers_sent(&mut self) {
        self.reset = true;
    }

    /// Current strike count.
    pub(crate) fn strikes(&self) -> u32 {
        self.strikes
    }

    /// Judges a non-ACK PING received at `now` with `active_streams` open.
    pub(crate) fn on_ping(
        &mut self,
        now: Instant,
        active_streams: usize,
        min_time: Duration,
        permit_without_stream: bool,
    ) -> PingVerdict {
        // The previous-ping time moves on every ping, exempt or not.
        let previous = self.last_ping.replace(now);
        if std::mem::take(&mut self.reset) {
            self.strikes = 0;
            return PingVerdict::Ok;
        }
        let interval = if active_streams == 0 && !permit_without_stream {
            NO_STREAM_PING_INTERVAL
        } else {
            min_time
        };
        match previous {
            Some(prev) if prev + interval > now => self.strikes += 1,
            _ => return PingVerdict::Ok,
        }
        if self.strikes > MAX_PING_STRIKES {
            PingVerdict::TooManyPings
        } else {
            PingVerdict::Strike(self.strikes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(10);

    fn t(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn fourth_early_ping_is_the_third_strike() {
        let start = Instant::now();
        let mut e = PingEnforcer::default();
        // With a stream open, the interval is minTime.
        assert_eq!(e.on_ping(t(start, 0), 1, MIN, false), PingVerdict::Ok);
        assert_eq!(
            e.on_ping(t(start, 1), 1, MIN, false),
            PingVerdict::Strike(1)
        );
        assert_eq!(
            e.on_ping(t(start, 2), 1, MIN, false),
            PingVerdict::Strike(2)
        );
        assert_eq!(
            e.on_ping(t(start, 3), 1, MIN, false),
            PingVerdict::TooManyPings
        );
    }

    #[test]
    fn pings_exactly_min_time_apart_are_fine() {
        let start = Instant::now();
        let mut e = PingEnforcer::default();
        for i in 0..10 {
            assert_eq!(e.on_ping(t(start, i * 10), 1, MIN, false), PingVerdict::Ok);
        }
        assert_eq!(e.strikes(), 0);
    }

    #[test]
    fn late_pings_do_not_clear_strikes() {
        let start = Instant::now();
        let mut e = PingEnforcer::default();
        e.on_ping(t(start, 0), 1, MIN, false);
        assert_eq!(
            e.on_ping(t(start, 1), 1, MIN, false),
            PingVerdict::Strike(1)
        );
        assert_eq!(e.on_ping(t(start, 100), 1, MIN, false), PingVerdict::Ok);
        assert_eq!(e.strikes(), 1);
        assert_eq!(
            e.on_ping(t(start, 101), 1, MIN, false),
            PingVerdict::Strike(2)
        );
    }

    #[test]
    fn headers_or_data_sent_exempts_the_next_ping_and_resets() {
        let start = Instant::now();
        let mut e = PingEnforcer::default();
        e.on_ping(t(start, 0), 1, MIN, false);
        e.on_ping(t(start, 1), 1, MIN, false);
        e.on_ping(t(start, 2), 1, MIN, false);
        assert_eq!(e.strikes(), 2);
        e.data_or_headers_sent();
        assert_eq!(e.on_ping(t(start, 3), 1, MIN, false), PingVerdict::Ok);
        assert_eq!(e.strikes(), 0);
        // Only the next one: the following early ping strikes again.
        assert_eq!(
            e.on_ping(t(start, 4), 1, MIN, false),
            PingVerdict::Strike(1)
        );
    }

    #[test]
    fn without_streams_the_interval_is_two_hours_unless_permitted() {
        let start = Instant::now();
        let mut e = PingEnforcer::default();
        e.on_ping(t(start, 0), 0, MIN, false);
        // 1h apart: fine under minTime, a strike under the 2h rule.
        assert_eq!(
            e.on_ping(t(start, 3600), 0, MIN, false),
            PingVerdict::Strike(1)
        );
        assert_eq!(
            e.on_ping(t(start, 3600 + 7200), 0, MIN, false),
            PingVerdict::Ok
        );

        let mut e = PingEnforcer::default();
        e.on_ping(t(start, 0), 0, MIN, true);
        assert_eq!(e.on_ping(t(start, 3600), 0, MIN, true), PingVerdict::Ok);
        assert_eq!(
            e.on_ping(t(start, 3601), 0, MIN, true),
            PingVerdict::Strike(1)
        );
    }
}
