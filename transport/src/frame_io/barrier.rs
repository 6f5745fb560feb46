//! The client's read barrier after a GOAWAY: `h2` writes out every stream
//! it opened before it read a GOAWAY before it reads (and acknowledges)
//! anything that came after it.
//!
//! A server drains in two steps (RFC 9113 §6.8; grpc-go, grpc-java and
//! this crate's server do it): GOAWAY with the largest stream id and a
//! PING, then — when the PING's ACK comes back — a second GOAWAY with the
//! last stream it took. The ACK is the barrier: a stream whose HEADERS the
//! client wrote before it is at or below the second GOAWAY's id and is
//! served; one written after it is refused. grpc-go's client never writes
//! HEADERS after it has read a GOAWAY (its writer drops such streams as
//! unprocessed), and grpc-java's drains its write queue before its ACK.
//! `h2` does neither: it answers a PING as soon as it reads it, ahead of
//! stream frames it queued earlier, so a stream opened just before the
//! GOAWAY arrived goes out right after the ACK and is refused. A refusal
//! alone would only cost a retry, but Netty (grpc-java's HTTP/2) then takes
//! that stream's DATA for a connection error and closes the connection,
//! failing streams it had accepted and handed to the application
//! (armeria#3208 reports the same error).
//!
//! So on a client connection the read half stops at the end of a GOAWAY
//! frame ([`FrameScanner::feed_until`](crate::frame::FrameScanner::feed_until)).
//! `h2` handles the GOAWAY — from then on it opens no stream — finds
//! nothing more to read, writes out what it has queued and flushes. Only
//! then are the bytes after the GOAWAY, usually the PING, handed over, and
//! the ACK follows every HEADERS written before.
//!
//! What this does not order: a stream `h2` holds back because the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS is reached goes out whenever a slot
//! frees. The pool only lets that happen at its connection cap.

use std::task::{Context, Poll, Waker};

use tokio::io::ReadBuf;

/// Where the barrier is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Bytes flow.
    #[default]
    Open,
    /// A GOAWAY was handed to `h2`; nothing more until it has found the
    /// read side empty and then flushed.
    Held,
    /// `h2` found the read side empty; waiting for a flush with nothing
    /// written after it.
    Waiting,
    /// Flushed since it found the read side empty: the next read opens.
    Flushed,
}

/// A client connection's read barrier and the bytes it holds back.
#[derive(Debug, Default)]
pub(super) struct ReadBarrier {
    state: State,
    waker: Option<Waker>,
    /// Bytes read from the socket past a GOAWAY, not yet given to `h2`.
    held: Vec<u8>,
    /// How many of `held` were given.
    given: usize,
}

impl ReadBarrier {
    /// A GOAWAY frame has just been handed to `h2`.
    pub(super) fn hold(&mut self) {
        self.state = State::Held;
    }

    /// Ready when reading may go on; otherwise `h2` is to write first.
    pub(super) fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.state {
            State::Open => Poll::Ready(()),
            State::Flushed => {
                self.state = State::Open;
                Poll::Ready(())
            }
            State::Held | State::Waiting => {
                self.state = State::Waiting;
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// `h2` wrote bytes: a flush must follow them.
    pub(super) fn wrote(&mut self) {
        if self.state == State::Flushed {
            self.state = State::Waiting;
        }
    }

    /// A flush completed.
    pub(super) fn flushed(&mut self) {
        if self.state == State::Waiting {
            self.state = State::Flushed;
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    /// Bytes read past a GOAWAY are waiting to be given to `h2`.
    pub(super) fn has_held(&self) -> bool {
        self.given < self.held.len()
    }

    /// The held bytes not given yet.
    pub(super) fn held(&self) -> &[u8] {
        &self.held[self.given..]
    }

    /// Gives `buf` as many held bytes as fit; how many.
    pub(super) fn give(&mut self, buf: &mut ReadBuf<'_>) -> usize {
        let n = buf.remaining().min(self.held.len() - self.given);
        buf.put_slice(&self.held[self.given..self.given + n]);
        self.given += n;
        n
    }

    /// The last `n` bytes given follow a GOAWAY: give them again later.
    pub(super) fn ungive(&mut self, n: usize) {
        self.given -= n;
    }

    /// Holds `tail`, read from the socket after a GOAWAY.
    pub(super) fn keep(&mut self, tail: &[u8]) {
        debug_assert!(!self.has_held());
        self.held = tail.to_vec();
        self.given = 0;
    }

    /// Frees the held bytes once all were given (reading past a GOAWAY is
    /// rare; nothing stays allocated for it).
    pub(super) fn trim(&mut self) {
        if self.given == self.held.len() && !self.held.is_empty() {
            self.held = Vec::new();
            self.given = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn reading_resumes_only_after_a_flush_that_follows_an_empty_read() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut b = ReadBarrier::default();
        assert!(b.poll_open(&mut cx).is_ready());

        b.hold();
        // A flush before h2 found the read side empty (its codec was full)
        // comes before the stream frames it has still to write.
        b.flushed();
        assert!(b.poll_open(&mut cx).is_pending());
        // Bytes written and not yet flushed.
        b.wrote();
        assert!(b.poll_open(&mut cx).is_pending());
        assert_eq!(count.0.load(SeqCst), 0);
        b.flushed();
        assert_eq!(count.0.load(SeqCst), 1, "the flush wakes the reader");
        // Written again after that flush: wait for the next one.
        b.wrote();
        assert!(b.poll_open(&mut cx).is_pending());
        b.flushed();
        assert!(b.poll_open(&mut cx).is_ready());
        assert!(
            b.poll_open(&mut cx).is_ready(),
            "open until the next GOAWAY"
        );
    }

    #[test]
    fn held_bytes_are_given_in_order_and_can_be_given_again() {
        let mut b = ReadBarrier::default();
        b.keep(b"abcdef");
        assert!(b.has_held());
        let mut mem = [0u8; 4];
        let mut buf = ReadBuf::new(&mut mem);
        assert_eq!(b.give(&mut buf), 4);
        assert_eq!(buf.filled(), b"abcd");
        // The last two followed another GOAWAY.
        b.ungive(2);
        b.trim();
        assert_eq!(b.held(), b"cdef");
        let mut mem = [0u8; 8];
        let mut buf = ReadBuf::new(&mut mem);
        assert_eq!(b.give(&mut buf), 4);
        assert_eq!(buf.filled(), b"cdef");
        b.trim();
        assert!(!b.has_held());
        assert_eq!(b.held.capacity(), 0, "memory given back");
    }
}
