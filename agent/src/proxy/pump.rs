//! Moving one direction of a stream between two h2 streams with flow
//! control: DATA is read from one side only as fast as the other side's
//! window lets it be sent, and the receive window is released only once
//! the data has been handed on. A reader that stops reading therefore
//! stalls the writer through HTTP/2 flow control instead of filling the
//! agent's memory.

use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{RecvStream, SendStream};

/// Why a pump stopped early (the errors are kept for logs).
#[derive(Debug)]
#[allow(dead_code)]
pub enum PumpError {
    /// The side we read from failed or reset (reason if a reset).
    Source(h2::Error),
    /// The side we write to failed or reset.
    Sink(h2::Error),
    /// The side we write to closed under us.
    SinkClosed,
}

/// Chunks kept so a request can be sent again on another connection if
/// the upstream proves it never processed it (GOAWAY, REFUSED_STREAM).
/// Bounded: past `MAX_REPLAY` bytes or chunks, or once trailers were sent,
/// the request is no longer replayable. Fixed-size, no allocation.
#[derive(Default)]
pub struct Replay {
    chunks: [Option<Bytes>; REPLAY_CHUNKS],
    count: usize,
    bytes: usize,
    overflowed: bool,
}

const REPLAY_CHUNKS: usize = 4;
/// The most request body kept for a transparent retry.
pub const MAX_REPLAY: usize = 64 * 1024;

impl Replay {
    fn record(&mut self, chunk: &Bytes) {
        if self.overflowed {
            return;
        }
        if self.count == REPLAY_CHUNKS || self.bytes + chunk.len() > MAX_REPLAY {
            self.discard();
            return;
        }
        self.chunks[self.count] = Some(chunk.clone());
        self.count += 1;
        self.bytes += chunk.len();
    }

    /// Stops keeping data (the response arrived, or too much to keep).
    pub fn discard(&mut self) {
        self.overflowed = true;
        self.chunks = Default::default();
        self.count = 0;
    }

    /// Whether everything sent so far is still here.
    pub fn is_complete(&self) -> bool {
        !self.overflowed
    }
}

/// The request direction: downstream body → upstream stream.
pub struct Pump {
    pub source: RecvStream,
    pub sink: SendStream<Bytes>,
    pending: Option<Bytes>,
    /// Receive window to release once `pending` is fully handed on.
    pending_len: usize,
    /// The pending chunk is the last: send it with END_STREAM.
    last: bool,
    data_done: bool,
    /// Everything, including END_STREAM, has been sent.
    pub done: bool,
    /// The source ended on its HEADERS frame (no body at all).
    pub eos_on_headers: bool,
    pub replay: Replay,
}

impl Pump {
    /// A pump; `done` when the source already ended (END_STREAM on HEADERS).
    pub fn new(source: RecvStream, sink: SendStream<Bytes>, replay: bool) -> Self {
        let done = source.is_end_stream();
        let mut p = Pump {
            source,
            sink,
            pending: None,
            pending_len: 0,
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
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(chunk) = self.pending.as_mut() {
                if self.sink.capacity() == 0 {
                    self.sink.reserve_capacity(chunk.len());
                    match ready!(self.sink.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Poll::Ready(Err(PumpError::Sink(e))),
                        None => return Poll::Ready(Err(PumpError::SinkClosed)),
                    }
                    continue;
                }
                let n = self.sink.capacity().min(chunk.len());
                let part = chunk.split_to(n);
                let finished = chunk.is_empty();
                let eos = finished && self.last;
                self.sink.send_data(part, eos).map_err(PumpError::Sink)?;
                if finished {
                    self.pending = None;
                    let _ = self
                        .source
                        .flow_control()
                        .release_capacity(self.pending_len);
                    if eos {
                        self.done = true;
                    }
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
                    self.replay.record(&chunk);
                    self.pending_len = chunk.len();
                    self.pending = Some(chunk);
                    self.last = last;
                    self.data_done = last;
                }
                Some(Err(e)) => return Poll::Ready(Err(PumpError::Source(e))),
                None => self.data_done = true,
            }
        }
    }

    /// Moves the request onto a new upstream stream after the old one was
    /// refused unprocessed: everything received so far is sent again.
    /// Returns false when the request cannot be replayed.
    pub fn rewind(&mut self, sink: SendStream<Bytes>) -> bool {
        if !self.replay.is_complete() {
            return false;
        }
        self.sink = sink;
        if self.pending.take().is_some() {
            // Its whole chunk is in the replay.
            let _ = self
                .source
                .flow_control()
                .release_capacity(self.pending_len);
        }
        if self.eos_on_headers {
            // The new stream's HEADERS carry END_STREAM again.
            return true;
        }
        // Whether END_STREAM was sent, or was about to go with the last
        // chunk. (Trailers would have made the replay incomplete.)
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
