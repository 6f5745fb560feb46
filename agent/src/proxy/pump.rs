//! Moving one direction of a stream between two h2 streams with flow
//! control: the receive window is released only once data has been
//! handed on, so a reader that stops reading stalls the writer through
//! HTTP/2 flow control instead of filling the agent's memory.
//!
//! While the side we write to is blocked, the pump still takes every DATA
//! frame the other side has already delivered out of h2 and into its own
//! buffer ([`Held`]). h2 limits how many small DATA frames it keeps
//! unread per connection (its `data_frame_budget`) and tears the whole
//! connection down with `ENHANCE_YOUR_CALM` past that; on the shared
//! upstream connection that would fail every other client's calls because
//! one client stopped reading. The held bytes are bounded by the window
//! this side granted, since none of it is released until it is sent on.

use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};

/// Why a pump stopped early (the errors are kept for logs).
#[derive(Debug)]
#[allow(dead_code)]
pub(super) enum PumpError {
    /// The side we read from failed or reset (reason if a reset).
    Source(h2::Error),
    /// The side we write to failed or reset.
    Sink(h2::Error),
    /// The side we write to closed under us.
    SinkClosed,
}

/// Chunks kept so a request can be sent again on another connection if
/// the upstream proves it never processed it (GOAWAY, REFUSED_STREAM).
/// Bounded: past `MAX_REPLAY` bytes, or once trailers were sent, the
/// request is no longer replayable. The first `REPLAY_CHUNKS` chunks are
/// kept as they came (no copy, no allocation: most requests are one or
/// two DATA frames); a request in more frames than that is gathered into
/// one buffer, still bounded by `MAX_REPLAY`.
#[derive(Default)]
pub(super) struct Replay {
    chunks: [Option<Bytes>; REPLAY_CHUNKS],
    count: usize,
    bytes: usize,
    overflowed: bool,
}

const REPLAY_CHUNKS: usize = 4;
/// The most request body kept for a transparent retry.
pub(super) const MAX_REPLAY: usize = 64 * 1024;

impl Replay {
    fn record(&mut self, chunk: &Bytes) {
        if self.overflowed {
            return;
        }
        if self.bytes + chunk.len() > MAX_REPLAY {
            self.discard();
            return;
        }
        if self.count == REPLAY_CHUNKS {
            self.gather();
        }
        self.chunks[self.count] = Some(chunk.clone());
        self.count += 1;
        self.bytes += chunk.len();
    }

    /// Copies the kept chunks into one, freeing the other slots. Called
    /// only when the slots are full; the copy is at most `MAX_REPLAY`.
    fn gather(&mut self) {
        let mut all = BytesMut::with_capacity(self.bytes);
        for chunk in self.chunks.iter_mut().filter_map(Option::take) {
            all.extend_from_slice(&chunk);
        }
        self.chunks[0] = Some(all.freeze());
        self.count = 1;
    }

    /// Stops keeping data (the response arrived, or too much to keep).
    pub(super) fn discard(&mut self) {
        self.overflowed = true;
        self.chunks = Default::default();
        self.count = 0;
    }

    /// Whether everything sent so far is still here.
    pub(super) fn is_complete(&self) -> bool {
        !self.overflowed
    }
}

/// Data taken from the source and not yet sent on. One chunk is kept as it
/// came (no copy: the usual case, the sink keeps up); chunks that arrive
/// while the sink is blocked are gathered into one buffer, so a stalled
/// stream costs its bytes and not a frame's bookkeeping per chunk.
#[derive(Default)]
enum Held {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Empty => 0,
            Held::One(b) => b.len(),
            Held::Many(b) => b.len(),
        }
    }

    fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            Held::Empty => Held::One(chunk),
            Held::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + chunk.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                Held::Many(all)
            }
            Held::Many(mut all) => {
                all.extend_from_slice(&chunk);
                Held::Many(all)
            }
        };
    }

    /// The first `n` bytes (at most `len`).
    fn split_to(&mut self, n: usize) -> Bytes {
        let part = match self {
            Held::Empty => Bytes::new(),
            Held::One(b) => b.split_to(n),
            Held::Many(b) => b.split_to(n).freeze(),
        };
        if self.len() == 0 {
            *self = Held::Empty;
        }
        part
    }
}

/// The request direction: downstream body → upstream stream.
pub(super) struct Pump {
    pub source: RecvStream,
    pub sink: SendStream<Bytes>,
    /// Received, not yet sent on, and not yet released to the source.
    held: Held,
    /// The source has ended its data (END_STREAM seen, or no more DATA).
    data_done: bool,
    /// END_STREAM came with the data: it goes out with the last held byte.
    last: bool,
    /// Everything, including END_STREAM, has been sent.
    pub done: bool,
    /// The source ended on its HEADERS frame (no body at all).
    pub eos_on_headers: bool,
    pub replay: Replay,
}

impl Pump {
    /// A pump; `done` when the source already ended (END_STREAM on HEADERS).
    pub(super) fn new(source: RecvStream, sink: SendStream<Bytes>, replay: bool) -> Self {
        let done = source.is_end_stream();
        let mut p = Pump {
            source,
            sink,
            held: Held::Empty,
            last: false,
            data_done: done,
            done,
            eos_on_headers: done,
            replay: Replay::default(),
        };
        if !replay {
            p.replay.discard();
        }
        p
    }

    /// Moves data until done, blocked, or failed.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            let held = self.held.len();
            if held > 0 {
                if self.sink.capacity() == 0 {
                    self.sink.reserve_capacity(held);
                    match self.sink.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(PumpError::Sink(e))),
                        Poll::Ready(None) => return Poll::Ready(Err(PumpError::SinkClosed)),
                        // Blocked: empty h2's buffer into ours meanwhile.
                        Poll::Pending => match self.take_delivered(cx) {
                            Ok(true) => {}
                            Ok(false) => return Poll::Pending,
                            Err(e) => return Poll::Ready(Err(e)),
                        },
                    }
                    continue;
                }
                let n = self.sink.capacity().min(held);
                let part = self.held.split_to(n);
                let eos = n == held && self.last;
                self.sink.send_data(part, eos).map_err(PumpError::Sink)?;
                let _ = self.source.flow_control().release_capacity(n);
                if eos {
                    self.done = true;
                }
                continue;
            }
            if self.data_done {
                match ready!(self.source.poll_trailers(cx)) {
                    Ok(Some(trailers)) => {
                        self.replay.discard();
                        self.sink.send_trailers(trailers).map_err(PumpError::Sink)?;
                    }
                    Ok(None) => self
                        .sink
                        .send_data(Bytes::new(), true)
                        .map_err(PumpError::Sink)?,
                    Err(e) => return Poll::Ready(Err(PumpError::Source(e))),
                }
                self.done = true;
                continue;
            }
            match ready!(self.source.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let last = self.source.is_end_stream();
                    if chunk.is_empty() {
                        if last {
                            self.sink.send_data(chunk, true).map_err(PumpError::Sink)?;
                            self.data_done = true;
                            self.done = true;
                        }
                        continue;
                    }
                    self.take(chunk);
                }
                Some(Err(e)) => return Poll::Ready(Err(PumpError::Source(e))),
                None => self.data_done = true,
            }
        }
    }

    /// Moves DATA the source already holds into `held`, without waiting.
    /// True when anything (data or the end of it) was taken.
    fn take_delivered(&mut self, cx: &mut Context<'_>) -> Result<bool, PumpError> {
        let mut took = false;
        while !self.data_done {
            match self.source.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    took = true;
                    // An empty chunk can only matter for END_STREAM, which
                    // `take` reads from the source.
                    self.take(chunk);
                }
                Poll::Ready(Some(Err(e))) => return Err(PumpError::Source(e)),
                Poll::Ready(None) => {
                    took = true;
                    self.data_done = true;
                }
                Poll::Pending => break,
            }
        }
        Ok(took)
    }

    fn take(&mut self, chunk: Bytes) {
        self.last = self.source.is_end_stream();
        self.data_done = self.last;
        if !chunk.is_empty() {
            self.replay.record(&chunk);
            self.held.push(chunk);
        }
    }

    /// Moves the request onto a new upstream stream after the old one was
    /// refused unprocessed: everything received so far is sent again.
    /// Returns false when the request cannot be replayed.
    pub(super) fn rewind(&mut self, sink: SendStream<Bytes>) -> bool {
        if !self.replay.is_complete() {
            return false;
        }
        self.sink = sink;
        // What is held is in the replay too.
        let held = std::mem::take(&mut self.held).len();
        if held > 0 {
            let _ = self.source.flow_control().release_capacity(held);
        }
        if self.eos_on_headers {
            // The new stream's HEADERS carry END_STREAM again.
            return true;
        }
        // Whether END_STREAM was sent, or is to go with the last data.
        // (Trailers would have made the replay incomplete.)
        let finish = self.done || (self.data_done && self.last);
        let count = self.replay.count;
        for (i, chunk) in self.replay.chunks[..count].iter().flatten().enumerate() {
            // At most MAX_REPLAY bytes: h2 buffers what exceeds the window.
            if self
                .sink
                .send_data(chunk.clone(), finish && i + 1 == count)
                .is_err()
            {
                return false;
            }
        }
        if finish {
            if count == 0 && self.sink.send_data(Bytes::new(), true).is_err() {
                return false;
            }
            self.done = true;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(chunks: &[usize]) -> Replay {
        let mut r = Replay::default();
        for &len in chunks {
            r.record(&Bytes::from(vec![7; len]));
        }
        r
    }

    #[test]
    fn the_replay_keeps_up_to_64_kib_and_gives_up_past_it() {
        assert!(kept(&[64 * 1024]).is_complete());
        assert!(kept(&[16 * 1024; 4]).is_complete());
        assert!(!kept(&[64 * 1024 + 1]).is_complete());
        assert!(!kept(&[64 * 1024, 1]).is_complete());
        // Once given up, later small chunks do not make it whole again.
        let mut r = kept(&[64 * 1024 + 1]);
        r.record(&Bytes::from_static(b"x"));
        assert!(!r.is_complete());
        assert_eq!(r.count, 0, "what was kept is dropped");
    }

    #[test]
    fn a_request_in_many_small_frames_is_kept_whole_in_order() {
        let mut r = Replay::default();
        for i in 0..(3 * REPLAY_CHUNKS as u8) {
            r.record(&Bytes::from(vec![i; 10]));
        }
        assert!(r.is_complete());
        assert!(r.count <= REPLAY_CHUNKS);
        let held: Vec<u8> = r.chunks[..r.count]
            .iter()
            .flatten()
            .flat_map(|c| c.iter().copied())
            .collect();
        let sent: Vec<u8> = (0..(3 * REPLAY_CHUNKS as u8))
            .flat_map(|i| [i; 10])
            .collect();
        assert_eq!(held, sent);
        // The byte bound still holds across gathered chunks.
        let mut r = kept(&[16 * 1024; 4]);
        r.record(&Bytes::from_static(b"x"));
        assert!(!r.is_complete());
    }

    #[test]
    fn a_discarded_replay_is_never_complete() {
        let mut r = kept(&[10]);
        assert!(r.is_complete());
        r.discard();
        assert!(!r.is_complete());
        r.record(&Bytes::from_static(b"x"));
        assert!(!r.is_complete());
    }
}
