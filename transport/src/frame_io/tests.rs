//! The IO layer against hostile splits: h2's bytes cut anywhere, sockets
//! that take a few bytes at a time, vectored and plain writes mixed.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::Ordering::*;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::*;
use crate::frame::{FrameHeader, encode_goaway, encode_ping};

/// A socket that accepts at most `quota[i]` bytes on its i-th write, and
/// reads from a script in chunks of `read_quota[i]`.
struct Scripted {
    written: Vec<u8>,
    quota: Vec<usize>,
    calls: usize,
    input: Vec<u8>,
    read_pos: usize,
    read_quota: Vec<usize>,
    reads: usize,
    /// Every write fails with a broken pipe (the peer has closed).
    closed: bool,
}

impl Scripted {
    fn new(quota: Vec<usize>) -> Self {
        Scripted {
            written: Vec::new(),
            quota,
            calls: 0,
            input: Vec::new(),
            read_pos: 0,
            read_quota: Vec::new(),
            reads: 0,
            closed: false,
        }
    }

    fn next_quota(&mut self) -> usize {
        let q = self
            .quota
            .get(self.calls)
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        self.calls += 1;
        q
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(self.next_quota());
        self.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let mut left = self.next_quota();
        let mut n = 0;
        for b in bufs {
            let k = b.len().min(left);
            self.written.extend_from_slice(&b[..k]);
            n += k;
            left -= k;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let q = self
            .read_quota
            .get(self.reads)
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        self.reads += 1;
        let n = buf.remaining().min(q).min(self.input.len() - self.read_pos);
        let start = self.read_pos;
        buf.put_slice(&self.input[start..start + n]);
        self.read_pos += n;
        Poll::Ready(Ok(()))
    }
}

fn frame_bytes(out: &mut Vec<u8>, kind: u8, stream_id: u32, payload: &[u8]) {
    let h = FrameHeader {
        len: payload.len() as u32,
        kind,
        flags: 0,
        stream_id,
    };
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
}

fn io_with(role: Role, sock: Scripted) -> FrameIo<Scripted> {
    FrameIo::new(sock, Shared::new(role, Arc::default()))
}

/// Pushes `input` through the writer as h2 would: in chunks given by
/// `cuts`, alternating plain and vectored (two-slice) writes.
fn write_all(io: &mut FrameIo<Scripted>, input: &[u8], cuts: &[usize]) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let chunk = cuts
            .get(i)
            .copied()
            .unwrap_or(input.len())
            .clamp(1, input.len() - pos);
        let rest = &input[pos..pos + chunk];
        let n = if i % 2 == 0 {
            match Pin::new(&mut *io).poll_write(&mut cx, rest) {
                Poll::Ready(r) => r.unwrap(),
                Poll::Pending => unreachable!(),
            }
        } else {
            let mid = rest.len() / 2;
            let bufs = [IoSlice::new(&rest[..mid]), IoSlice::new(&rest[mid..])];
            match Pin::new(&mut *io).poll_write_vectored(&mut cx, &bufs) {
                Poll::Ready(r) => r.unwrap(),
                Poll::Pending => unreachable!(),
            }
        };
        assert!(n > 0 && n <= chunk);
        pos += n;
        i += 1;
    }
    assert!(Pin::new(&mut *io).poll_flush(&mut cx).is_ready());
}

#[test]
fn goaway_without_debug_data_gets_the_reason() {
    let mut input = Vec::new();
    frame_bytes(&mut input, crate::frame::kind::DATA, 1, b"hello");
    encode_goaway(&mut input, crate::frame::MAX_STREAM_ID, 0, b"");
    encode_ping(&mut input, false, [7; 8]);
    let mut io = io_with(Role::Server, Scripted::new(vec![]));
    io.obs
        .shared
        .server()
        .goaway_reason
        .store(GoAwayReason::MaxAge as u8, Release);
    write_all(&mut io, &input, &[]);

    let mut want = Vec::new();
    frame_bytes(&mut want, crate::frame::kind::DATA, 1, b"hello");
    encode_goaway(&mut want, crate::frame::MAX_STREAM_ID, 0, b"max_age");
    encode_ping(&mut want, false, [7; 8]);
    assert_eq!(io.inner.written, want);
    // The PING after the graceful GOAWAY is recognised as h2's shutdown ping.
    assert_eq!(io.obs.shutdown_payload, Some([7; 8]));
    assert_eq!(io.obs.shared.pings_sent.load(Relaxed), 0);
}

#[test]
fn goaway_already_carrying_debug_data_is_left_alone() {
    let mut input = Vec::new();
    encode_goaway(&mut input, 5, 1, b"h2 says why");
    let mut io = io_with(Role::Server, Scripted::new(vec![]));
    io.obs
        .shared
        .server()
        .goaway_reason
        .store(GoAwayReason::MaxIdle as u8, Release);
    write_all(&mut io, &input, &[]);
    assert_eq!(io.inner.written, input);
}

#[test]
fn nothing_is_rewritten_without_a_reason() {
    let mut input = Vec::new();
    encode_goaway(&mut input, 5, 0, b"");
    let mut io = io_with(Role::Server, Scripted::new(vec![1, 2, 3]));
    write_all(&mut io, &input, &[4, 4, 4]);
    assert_eq!(io.inner.written, input);
}

#[test]
fn client_side_skips_its_own_preface() {
    let mut input = crate::frame::PREFACE.to_vec();
    encode_goaway(&mut input, 0, 0, b"");
    let mut io = io_with(Role::Client, Scripted::new(vec![]));
    write_all(&mut io, &input, &[10, 10, 10]);
    // Passed through untouched (a client adds no reason), and the frame
    // after the preface was read as a GOAWAY, not as preface bytes.
    assert_eq!(io.inner.written, input);
    assert!(io.obs.goaway_written);
}

#[test]
fn injected_ack_lands_on_a_frame_boundary() {
    // The peer is mid-way through a large DATA frame when the ack timer
    // fires; the synthetic ACK must follow that frame, not split it.
    let mut inbound = Vec::new();
    frame_bytes(&mut inbound, crate::frame::kind::DATA, 1, &[0xAB; 100]);
    frame_bytes(&mut inbound, crate::frame::kind::DATA, 1, &[0xCD; 10]);
    let mut sock = Scripted::new(vec![]);
    sock.input = inbound.clone();
    sock.read_quota = vec![30, 1000, 1000, 1000];
    let mut io = FrameIo::new(sock, Shared::new(Role::Server, Arc::default()));
    io.read = FrameScanner::new();
    // h2 wrote its graceful GOAWAY and shutdown PING.
    let mut out = Vec::new();
    encode_goaway(&mut out, crate::frame::MAX_STREAM_ID, 0, b"");
    encode_ping(&mut out, false, *b"shutdown");
    write_all(&mut io, &out, &[]);

    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // First read: 30 bytes of the first frame.
    let mut rb = ReadBuf::new(&mut buf);
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_ready());
    got.extend_from_slice(rb.filled());
    assert_eq!(got.len(), 30);
    io.obs
        .shared
        .server()
        .inject_shutdown_ack
        .store(true, Release);
    for _ in 0..4 {
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_ready());
        got.extend_from_slice(rb.filled());
    }
    let mut want = inbound[..109].to_vec();
    encode_ping(&mut want, true, *b"shutdown");
    want.extend_from_slice(&inbound[109..]);
    assert_eq!(got, want);
    assert!(!io.obs.shared.server().inject_shutdown_ack.load(Acquire));
}

#[test]
fn injected_ack_survives_a_tiny_read_buffer() {
    let mut io = io_with(Role::Server, Scripted::new(vec![]));
    io.read = FrameScanner::new();
    let mut out = Vec::new();
    encode_goaway(&mut out, crate::frame::MAX_STREAM_ID, 0, b"");
    encode_ping(&mut out, false, [3; 8]);
    write_all(&mut io, &out, &[]);
    io.obs
        .shared
        .server()
        .inject_shutdown_ack
        .store(true, Release);
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    for _ in 0..6 {
        let mut buf = [0u8; 4];
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_ready());
        got.extend_from_slice(rb.filled());
    }
    let mut want = Vec::new();
    encode_ping(&mut want, true, [3; 8]);
    assert_eq!(got, want);
}

#[test]
fn real_ack_cancels_injection() {
    let mut io = io_with(Role::Server, Scripted::new(vec![]));
    io.read = FrameScanner::new();
    let mut out = Vec::new();
    encode_goaway(&mut out, crate::frame::MAX_STREAM_ID, 0, b"");
    encode_ping(&mut out, false, [3; 8]);
    write_all(&mut io, &out, &[]);
    let mut ack = Vec::new();
    encode_ping(&mut ack, true, [3; 8]);
    io.inner.input = ack.clone();
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = [0u8; 64];
    let mut rb = ReadBuf::new(&mut buf);
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_ready());
    assert_eq!(rb.filled(), &ack[..]);
    assert_ne!(io.obs.shared.take_events() & event::SHUTDOWN_ACKED, 0);
    io.obs
        .shared
        .server()
        .inject_shutdown_ack
        .store(true, Release);
    let mut rb = ReadBuf::new(&mut buf);
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_ready());
    assert!(rb.filled().is_empty(), "no second ACK");
}

/// Reads from a client connection as h2 does: when a read is pending,
/// h2 writes and flushes what it has queued, then reads again. Returns
/// the bytes h2 was given, one entry per read.
fn client_reads(io: &mut FrameIo<Scripted>, buf_len: usize, rounds: usize) -> Vec<Vec<u8>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    for _ in 0..rounds {
        let mut mem = vec![0u8; buf_len];
        let mut rb = ReadBuf::new(&mut mem);
        match Pin::new(&mut *io).poll_read(&mut cx, &mut rb) {
            Poll::Ready(r) => {
                r.unwrap();
                if rb.filled().is_empty() && !io.barrier.as_ref().unwrap().has_held() {
                    break;
                }
                got.push(rb.filled().to_vec());
            }
            Poll::Pending => {
                let mut h = Vec::new();
                frame_bytes(&mut h, crate::frame::kind::HEADERS, 5, &[0x83]);
                assert!(matches!(
                    Pin::new(&mut *io).poll_write(&mut cx, &h),
                    Poll::Ready(Ok(_))
                ));
                assert!(Pin::new(&mut *io).poll_flush(&mut cx).is_ready());
            }
        }
    }
    got
}

#[test]
fn a_client_reads_nothing_past_a_goaway_until_it_has_flushed() {
    let mut inbound = Vec::new();
    frame_bytes(&mut inbound, crate::frame::kind::DATA, 1, b"before");
    encode_goaway(&mut inbound, crate::frame::MAX_STREAM_ID, 0, b"max_age");
    let goaway_end = inbound.len();
    encode_ping(&mut inbound, false, *b"shutdown");
    frame_bytes(&mut inbound, crate::frame::kind::DATA, 1, b"after");
    let mut sock = Scripted::new(vec![]);
    sock.input = inbound.clone();
    let mut io = io_with(Role::Client, sock);
    let mut cx = Context::from_waker(Waker::noop());
    let mut mem = [0u8; 4096];

    let mut rb = ReadBuf::new(&mut mem);
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_ready());
    assert_eq!(
        rb.filled(),
        &inbound[..goaway_end],
        "up to the GOAWAY's end"
    );
    assert_eq!(io.obs.shared.pings_received.load(Relaxed), 0);
    // h2 handles the GOAWAY and reads again: nothing until it has written.
    let mut rb = ReadBuf::new(&mut mem);
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_pending());
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_pending());
    assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
    let mut rb = ReadBuf::new(&mut mem);
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_ready());
    assert_eq!(rb.filled(), &inbound[goaway_end..], "the PING and the rest");
    assert_eq!(io.obs.shared.pings_received.load(Relaxed), 1);
    assert!(!io.barrier.as_ref().unwrap().has_held());
}

#[test]
fn a_server_reads_straight_past_a_goaway() {
    let mut inbound = Vec::new();
    encode_goaway(&mut inbound, 0, 0, b"");
    encode_ping(&mut inbound, false, [1; 8]);
    let mut sock = Scripted::new(vec![]);
    sock.input = inbound.clone();
    let mut io = io_with(Role::Server, sock);
    io.read = FrameScanner::new();
    let mut cx = Context::from_waker(Waker::noop());
    let mut mem = [0u8; 4096];
    let mut rb = ReadBuf::new(&mut mem);
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_ready());
    assert_eq!(rb.filled(), &inbound[..]);
}

#[test]
fn a_failed_write_still_reads_the_goaway_and_refusals_h2_never_got_to() {
    let mut inbound = Vec::new();
    encode_goaway(&mut inbound, 1, 0, b"max_age");
    frame_bytes(
        &mut inbound,
        crate::frame::kind::RST_STREAM,
        3,
        &7u32.to_be_bytes(),
    );
    frame_bytes(
        &mut inbound,
        crate::frame::kind::RST_STREAM,
        5,
        &8u32.to_be_bytes(),
    );
    let mut sock = Scripted::new(vec![]);
    sock.input = inbound;
    sock.closed = true;
    let mut io = io_with(Role::Client, sock);
    let mut cx = Context::from_waker(Waker::noop());
    let mut data = Vec::new();
    frame_bytes(&mut data, crate::frame::kind::DATA, 3, b"body");
    let r = Pin::new(&mut io).poll_write(&mut cx, &data);
    assert!(matches!(r, Poll::Ready(Err(_))));
    let client = io.obs.shared.client();
    assert_eq!(client.peer_goaway_last_stream.load(Acquire), 1);
    assert!(client.peer_goaway.load(Acquire));
    // REFUSED_STREAM only: a CANCEL says nothing about processing.
    assert_eq!(*client.refused_unread.lock().unwrap(), [3]);
}

#[test]
fn headers_written_raise_the_highest_stream_sent() {
    let mut out = crate::frame::PREFACE.to_vec();
    frame_bytes(&mut out, crate::frame::kind::HEADERS, 5, &[0x83]);
    frame_bytes(&mut out, crate::frame::kind::DATA, 7, b"x");
    frame_bytes(&mut out, crate::frame::kind::HEADERS, 3, &[0x83]);
    let mut io = io_with(Role::Client, Scripted::new(vec![]));
    write_all(&mut io, &out, &[7, 13, 1]);
    assert_eq!(io.obs.shared.client().max_headers_sent.load(Acquire), 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// However the socket splits them and however small h2's buffer, a
    /// client is given every byte once and in order, and never a byte past
    /// a GOAWAY before it has flushed.
    #[test]
    fn a_client_is_given_every_byte_in_order(
        frames in prop::collection::vec((0u8..10, prop::collection::vec(any::<u8>(), 0..40)), 0..20),
        read_quota in prop::collection::vec(1usize..60, 0..200),
        buf_len in 1usize..100,
    ) {
        let mut inbound = Vec::new();
        let mut goaway_ends = Vec::new();
        for (k, payload) in &frames {
            if *k == crate::frame::kind::GOAWAY {
                encode_goaway(&mut inbound, 1, 0, payload);
                goaway_ends.push(inbound.len());
            } else {
                frame_bytes(&mut inbound, *k, 1, payload);
            }
        }
        let mut sock = Scripted::new(vec![]);
        sock.input = inbound.clone();
        sock.read_quota = read_quota;
        let mut io = io_with(Role::Client, sock);
        let reads = client_reads(&mut io, buf_len, 10_000);
        let mut pos = 0;
        for r in &reads {
            // No read runs across the end of a GOAWAY.
            prop_assert!(goaway_ends.iter().all(|&end| end <= pos || end >= pos + r.len()));
            pos += r.len();
        }
        prop_assert_eq!(reads.concat(), inbound);
    }

    /// Whatever the chunking on either side, the bytes on the wire are
    /// h2's bytes with only the GOAWAYs changed.
    #[test]
    fn output_is_input_with_goaways_rewritten(
        frames in prop::collection::vec((0u8..10, prop::collection::vec(any::<u8>(), 0..40)), 0..20),
        cuts in prop::collection::vec(1usize..50, 0..60),
        quota in prop::collection::vec(1usize..40, 0..200),
    ) {
        let mut input = Vec::new();
        let mut want = Vec::new();
        for (k, payload) in &frames {
            if *k == crate::frame::kind::GOAWAY {
                encode_goaway(&mut input, 1, 0, b"");
                encode_goaway(&mut want, 1, 0, b"graceful_stop");
            } else {
                frame_bytes(&mut input, *k, 1, payload);
                frame_bytes(&mut want, *k, 1, payload);
            }
        }
        let mut io = io_with(Role::Server, Scripted::new(quota));
        io.obs.shared.server().goaway_reason.store(GoAwayReason::GracefulStop as u8, Release);
        write_all(&mut io, &input, &cuts);
        prop_assert_eq!(&io.inner.written, &want);
    }
}
