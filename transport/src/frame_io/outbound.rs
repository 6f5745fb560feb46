//! The write half of [`FrameIo`](super::FrameIo): passes `h2`'s bytes
//! through untouched, except that a GOAWAY frame without debug data may be
//! rewritten to carry some (h2 has no API for it).
//!
//! Bytes are written straight from `h2`'s buffers up to the first frame
//! that needs a decision it cannot make yet: a GOAWAY to rewrite, or a
//! header cut short by the end of the buffer. Those few bytes are held in a
//! fixed array, rewritten, and queued in a small fixed buffer that is always
//! written before anything else. Nothing here allocates.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

use crate::frame::{FrameEvent, FrameHeader, FrameScanner, HEADER_LEN, MAX_DEBUG_CAPTURE, kind};

/// h2 writes at most this many slices at once.
const MAX_IOVS: usize = 64;
/// A GOAWAY without debug data: header and 8 payload bytes.
const PLAIN_GOAWAY: usize = HEADER_LEN + 8;

/// Decides which frames to rewrite and hears about every frame written.
pub(crate) trait WriteObserver {
    /// Debug data to add to a GOAWAY that has none, if any.
    fn goaway_debug(&self) -> Option<&'static [u8]>;
    /// A frame event in what was written.
    fn on_written(&mut self, event: FrameEvent);
}

/// Bytes queued for the socket ahead of `h2`'s.
struct Pending {
    buf: [u8; PLAIN_GOAWAY + MAX_DEBUG_CAPTURE],
    start: usize,
    end: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn push(&mut self, bytes: &[u8]) {
        debug_assert!(self.is_empty() || self.end + bytes.len() <= self.buf.len());
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
        }
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }
}

pub(crate) struct WriteState {
    scan: FrameScanner<8>,
    pending: Pending,
    hold: [u8; PLAIN_GOAWAY],
    hold_len: usize,
}

impl WriteState {
    /// `preface`: the stream starts with the client connection preface.
    pub(super) fn new(preface: bool) -> Self {
        WriteState {
            scan: FrameScanner::starting(preface),
            pending: Pending {
                buf: [0; PLAIN_GOAWAY + MAX_DEBUG_CAPTURE],
                start: 0,
                end: 0,
            },
            hold: [0; PLAIN_GOAWAY],
            hold_len: 0,
        }
    }

    /// Writes queued bytes; Ready(Ok) once none are left.
    pub(super) fn poll_drain<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
    ) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let p = &mut self.pending;
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &p.buf[p.start..p.end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            p.start += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Accepts bytes from `h2`. Returns how many were taken, like
    /// `poll_write_vectored`.
    pub(super) fn poll_write<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
        bufs: &[IoSlice<'_>],
        obs: &mut impl WriteObserver,
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx, io))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.hold_len > 0 {
            return Poll::Ready(Ok(self.hold_from(bufs, obs)));
        }
        let pass = self.plan(bufs, total, obs);
        if pass == 0 {
            return Poll::Ready(Ok(self.hold_from(bufs, obs)));
        }
        let mut iovs = [IoSlice::new(&[]); MAX_IOVS];
        let mut count = 0;
        let mut left = pass;
        for b in bufs.iter().filter(|b| !b.is_empty()).take(MAX_IOVS) {
            let n = b.len().min(left);
            iovs[count] = IoSlice::new(&b[..n]);
            count += 1;
            left -= n;
            if left == 0 {
                break;
            }
        }
        let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &iovs[..count]))?;
        let mut left = written;
        for b in &iovs[..count] {
            let n = b.len().min(left);
            self.scan.feed(&b[..n], |e| obs.on_written(e));
            left -= n;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(written))
    }

    /// Length of the prefix of `bufs` that can go to the socket as it is.
    fn plan(&self, bufs: &[IoSlice<'_>], total: usize, obs: &impl WriteObserver) -> usize {
        let view = Chunks(bufs);
        let (partial, payload_left, preface_left) = self.scan.position();
        let mut pos;
        if !partial.is_empty() {
            // A header already judged and partly written: finish it.
            let mut h = [0u8; HEADER_LEN];
            h[..partial.len()].copy_from_slice(partial);
            let rest = HEADER_LEN - partial.len();
            if total < rest {
                return total;
            }
            view.copy(0, &mut h[partial.len()..]);
            pos = rest + FrameHeader::parse(&h).len as usize;
        } else {
            pos = payload_left as usize + usize::from(preface_left);
        }
        loop {
            if pos >= total {
                return total;
            }
            if total - pos < HEADER_LEN {
                return pos;
            }
            let mut h = [0u8; HEADER_LEN];
            view.copy(pos, &mut h);
            let header = FrameHeader::parse(&h);
            if needs_rewrite(&header, obs) {
                return pos;
            }
            pos += HEADER_LEN + header.len as usize;
        }
    }

    /// Moves bytes into `hold` until the held frame can be judged, then
    /// queues it (rewritten or not). Returns how many bytes were taken.
    fn hold_from(&mut self, bufs: &[IoSlice<'_>], obs: &mut impl WriteObserver) -> usize {
        let mut taken = 0;
        for b in bufs {
            let mut b: &[u8] = b;
            while !b.is_empty() {
                let want = self.hold_wants(obs);
                if want == 0 {
                    break;
                }
                let n = want.min(b.len());
                self.hold[self.hold_len..self.hold_len + n].copy_from_slice(&b[..n]);
                self.hold_len += n;
                taken += n;
                b = &b[n..];
            }
        }
        if self.hold_wants(obs) == 0 {
            self.release_hold(obs);
        }
        taken
    }

    /// Bytes still needed before the held frame can be judged.
    fn hold_wants(&self, obs: &impl WriteObserver) -> usize {
        if self.hold_len < HEADER_LEN {
            return HEADER_LEN - self.hold_len;
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.hold[..HEADER_LEN]);
        if needs_rewrite(&FrameHeader::parse(&h), obs) {
            PLAIN_GOAWAY - self.hold_len
        } else {
            0
        }
    }

    fn release_hold(&mut self, obs: &mut impl WriteObserver) {
        let held = self.hold_len;
        self.hold_len = 0;
        let debug = obs.goaway_debug().filter(|_| held == PLAIN_GOAWAY);
        let mut frame = [0u8; PLAIN_GOAWAY + MAX_DEBUG_CAPTURE];
        let len = match debug {
            Some(debug) => {
                let debug = &debug[..debug.len().min(MAX_DEBUG_CAPTURE)];
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&self.hold[..HEADER_LEN]);
                let mut header = FrameHeader::parse(&h);
                header.len = 8 + debug.len() as u32;
                frame[..HEADER_LEN].copy_from_slice(&header.encode());
                frame[HEADER_LEN..PLAIN_GOAWAY]
                    .copy_from_slice(&self.hold[HEADER_LEN..PLAIN_GOAWAY]);
                frame[PLAIN_GOAWAY..PLAIN_GOAWAY + debug.len()].copy_from_slice(debug);
                PLAIN_GOAWAY + debug.len()
            }
            None => {
                frame[..held].copy_from_slice(&self.hold[..held]);
                held
            }
        };
        self.pending.push(&frame[..len]);
        self.scan.feed(&frame[..len], |e| obs.on_written(e));
    }

    /// Before shutdown: whatever is held goes out as it is.
    pub(super) fn poll_finish<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
        obs: &mut impl WriteObserver,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx, io))?;
        if self.hold_len > 0 {
            let held = self.hold_len;
            self.hold_len = 0;
            let bytes = self.hold;
            self.pending.push(&bytes[..held]);
            self.scan.feed(&bytes[..held], |e| obs.on_written(e));
            ready!(self.poll_drain(cx, io))?;
        }
        Poll::Ready(Ok(()))
    }
}

fn needs_rewrite(h: &FrameHeader, obs: &impl WriteObserver) -> bool {
    h.kind == kind::GOAWAY && h.len == 8 && h.stream_id == 0 && obs.goaway_debug().is_some()
}

/// A logical byte string over several slices.
struct Chunks<'a, 'b>(&'a [IoSlice<'b>]);

impl Chunks<'_, '_> {
    /// Copies `out.len()` bytes starting at `pos` (the caller checked the
    /// range is inside the total).
    fn copy(&self, mut pos: usize, out: &mut [u8]) {
        let mut filled = 0;
        for b in self.0 {
            if pos >= b.len() {
                pos -= b.len();
                continue;
            }
            let n = (b.len() - pos).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&b[pos..pos + n]);
            filled += n;
            pos = 0;
            if filled == out.len() {
                return;
            }
        }
    }
}
