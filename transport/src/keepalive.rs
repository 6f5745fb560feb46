//! The keepalive timer loop of grpc-go's `http2Server.keepalive` and
//! `http2Client.keepalive`, as a plain state machine driven by the
//! connection's single timer.
//!
//! Activity is "anything read": the IO layer stamps every read. When `time`
//! passes with nothing read, one PING goes out; if still nothing is read
//! within `timeout`, the connection is dead. Because the timer sleeps
//! `min(time, timeout_left)`, pings go out every `time` on a healthy
//! connection, not every `time + timeout`.

use std::time::Duration;

use tokio::time::Instant;

/// The instant a connection driver's single timer is set to when nothing
/// is due: a year from now, which no connection outlives. tokio's `Sleep`
/// always needs a deadline; the server and client drivers share this one.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 86_400)
}

/// What the driver should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeepaliveAction {
    /// Nothing until [`Keepalive::deadline`].
    Wait,
    /// Send a PING.
    Ping,
    /// Nothing was read within `timeout` of a PING: close.
    Close,
    /// Client only: no stream is open and pings without streams are not
    /// allowed; sleep until a stream starts.
    Dormant,
}

#[derive(Clone, Debug)]
pub(crate) struct Keepalive {
    time: Duration,
    timeout: Duration,
    outstanding: bool,
    timeout_left: Duration,
    /// `last_read` seen on the previous timer expiry.
    prev_read: u64,
    deadline: Option<Instant>,
}

impl Keepalive {
    /// Armed to fire `time` after `now`.
    pub(crate) fn new(time: Duration, timeout: Duration, now: Instant) -> Self {
        Keepalive {
            time,
            timeout,
            outstanding: false,
            timeout_left: Duration::ZERO,
            prev_read: 0,
            deadline: now.checked_add(time),
        }
    }

    /// When the driver must call [`on_timer`](Self::on_timer) next; `None`
    /// while dormant or stopped.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Stops pinging for good (server, once max age fired).
    pub(crate) fn stop(&mut self) {
        self.deadline = None;
    }

    /// New parameters: re-arm from the last read.
    pub(crate) fn update(
        &mut self,
        time: Duration,
        timeout: Duration,
        base: Instant,
        last_read: u64,
    ) {
        if self.deadline.is_none() {
            self.time = time;
            self.timeout = timeout;
            return;
        }
        self.time = time;
        self.timeout = timeout;
        self.outstanding = false;
        self.prev_read = last_read;
        self.deadline = (base + Duration::from_nanos(last_read)).checked_add(time);
    }

    /// Runs the loop body once the deadline has passed. `last_read` is in
    /// nanoseconds after `base`; `may_go_dormant` is true when the
    /// connection has no stream open and pings without one are not allowed
    /// (client): then, instead of pinging, the loop stops until a stream
    /// starts ([`Keepalive::wake`]).
    pub(crate) fn on_timer(
        &mut self,
        now: Instant,
        base: Instant,
        last_read: u64,
        may_go_dormant: bool,
    ) -> KeepaliveAction {
        let Some(deadline) = self.deadline else {
            return KeepaliveAction::Wait;
        };
        if now < deadline {
            return KeepaliveAction::Wait;
        }
        if last_read > self.prev_read {
            // Read activity since last time: the next ping is due `time`
            // after that read.
            self.outstanding = false;
            self.prev_read = last_read;
            let next = (base + Duration::from_nanos(last_read)).checked_add(self.time);
            self.deadline = next;
            if next.is_some_and(|d| d > now) {
                return KeepaliveAction::Wait;
            }
            return self.on_timer(now, base, last_read, may_go_dormant);
        }
        if self.outstanding && self.timeout_left.is_zero() {
            self.deadline = None;
            return KeepaliveAction::Close;
        }
        if may_go_dormant {
            // A ping left unanswered before going dormant must not stop the
            // wake-up ping (grpc-go resets outstandingPing here).
            self.outstanding = false;
            self.deadline = None;
            return KeepaliveAction::Dormant;
        }
        self.send_and_sleep(now)
    }

    /// Client: a stream started while dormant. Pings at once.
    pub(crate) fn wake(&mut self, now: Instant) -> KeepaliveAction {
        if self.deadline.is_some() {
            return KeepaliveAction::Wait;
        }
        self.send_and_sleep(now)
    }

    fn send_and_sleep(&mut self, now: Instant) -> KeepaliveAction {
        let mut action = KeepaliveAction::Wait;
        if !self.outstanding {
            action = KeepaliveAction::Ping;
            self.timeout_left = self.timeout;
            self.outstanding = true;
        }
        let sleep = self.time.min(self.timeout_left);
        self.timeout_left -= sleep;
        self.deadline = now.checked_add(sleep);
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: Duration = Duration::from_secs(10);
    const TIMEOUT: Duration = Duration::from_secs(3);

    fn nanos(base: Instant, t: Instant) -> u64 {
        (t - base).as_nanos() as u64
    }

    #[test]
    fn silent_peer_gets_ping_at_time_and_close_at_time_plus_timeout() {
        let base = Instant::now();
        let mut k = Keepalive::new(TIME, TIMEOUT, base);
        assert_eq!(k.deadline(), Some(base + TIME));
        assert_eq!(
            k.on_timer(base + TIME, base, 0, false),
            KeepaliveAction::Ping
        );
        assert_eq!(k.deadline(), Some(base + TIME + TIMEOUT));
        assert_eq!(
            k.on_timer(base + TIME + TIMEOUT, base, 0, false),
            KeepaliveAction::Close
        );
    }

    #[test]
    fn acked_pings_repeat_every_time_not_time_plus_timeout() {
        let base = Instant::now();
        let mut k = Keepalive::new(TIME, TIMEOUT, base);
        let mut pings = Vec::new();
        let mut last_read = 0;
        let mut now = base;
        while now < base + Duration::from_secs(60) {
            now = k.deadline().unwrap();
            if k.on_timer(now, base, last_read, false) == KeepaliveAction::Ping {
                pings.push((now - base).as_secs());
                // ACK read 1ms later.
                last_read = nanos(base, now + Duration::from_millis(1));
            }
        }
        // Every ~10s (the ack's millisecond drifts each interval).
        assert_eq!(pings, [10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn reads_postpone_the_ping() {
        let base = Instant::now();
        let mut k = Keepalive::new(TIME, TIMEOUT, base);
        let read_at = base + Duration::from_secs(7);
        assert_eq!(
            k.on_timer(base + TIME, base, nanos(base, read_at), false),
            KeepaliveAction::Wait
        );
        assert_eq!(k.deadline(), Some(read_at + TIME));
    }

    #[test]
    fn timeout_longer_than_time_still_pings_every_time() {
        let base = Instant::now();
        let mut k = Keepalive::new(TIME, Duration::from_secs(25), base);
        assert_eq!(
            k.on_timer(base + TIME, base, 0, false),
            KeepaliveAction::Ping
        );
        // Sleeps min(time, timeout_left) = 10s, nothing read: no new ping
        // while one is outstanding, and not dead yet.
        assert_eq!(
            k.on_timer(base + 2 * TIME, base, 0, false),
            KeepaliveAction::Wait
        );
        assert_eq!(k.deadline(), Some(base + 3 * TIME));
        assert_eq!(
            k.on_timer(base + 3 * TIME, base, 0, false),
            KeepaliveAction::Wait
        );
        assert_eq!(k.deadline(), Some(base + 3 * TIME + Duration::from_secs(5)));
        assert_eq!(
            k.on_timer(base + 3 * TIME + Duration::from_secs(5), base, 0, false),
            KeepaliveAction::Close
        );
    }

    #[test]
    fn dormancy_then_immediate_ping_on_wake() {
        let base = Instant::now();
        let mut k = Keepalive::new(TIME, TIMEOUT, base);
        assert_eq!(
            k.on_timer(base + TIME, base, 0, true),
            KeepaliveAction::Dormant
        );
        assert_eq!(k.deadline(), None);
        let woke = base + Duration::from_secs(500);
        assert_eq!(k.wake(woke), KeepaliveAction::Ping);
        assert_eq!(k.deadline(), Some(woke + TIMEOUT));
    }
}
