//! Test support, behind the `test-util` feature: nothing here is part of
//! the API this crate promises to keep.
//!
//! - [`frame`]: the frame constants and codec the crate itself uses, so a
//!   test writes the same bytes the transport reads.
//! - [`RawPeer`]: a hand-driven HTTP/2 endpoint that writes frames byte by
//!   byte and records exactly what it receives (modelled on h2's own
//!   `h2-support` mock); [`RawServer`] is its server end.
//! - [`PipeConnector`]: a [`Connect`] that hands the server end of every
//!   new in-memory connection to the test, so a [`Channel`] can be driven
//!   on tokio's paused clock.
//! - [`handshake_with_jitter`]: a server connection with a chosen age
//!   jitter factor, for deterministic age timing.
//! - [`skip`]: how a test that needs something this machine lacks (root,
//!   a cluster) bows out — with a message on a developer's machine, as a
//!   failure in CI.
//!
//! Every method panics on an IO error: these are test doubles.
//!
//! [`Channel`]: crate::client::Channel

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::Connect;
use crate::server::{ServerConfig, ServerConnection};

/// HTTP/2 frame constants and codec (RFC 9113 §4, §6).
pub mod frame {
    pub use crate::frame::{
        DebugData, FULL_CAPTURE, FrameEvent, FrameHeader, FrameScanner, HEADER_LEN, MAX_STREAM_ID,
        PREFACE, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_HEADER_LIST_SIZE, code,
        encode_goaway, encode_ping, flags, kind,
    };
}

use frame::{FrameHeader, HEADER_LEN, PREFACE, kind};

/// The server handshake with a given age jitter factor instead of a random
/// one in [0.9, 1.1).
pub async fn handshake_with_jitter<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    config: &ServerConfig,
    age_factor: f64,
) -> crate::Result<ServerConnection<T>> {
    ServerConnection::handshake_with_jitter(io, config, age_factor).await
}

/// A fresh age jitter factor, drawn as every server connection draws it.
pub fn age_jitter() -> f64 {
    crate::server::age_jitter()
}

/// The variable `.ci/run` sets: every test runs there, none skips.
pub const CI_VARIABLE: &str = "GOAWAY_CI";

/// Whether skipping is a failure here: in `.ci/run` ([`CI_VARIABLE`]) or
/// any CI that sets `CI=true`.
pub fn skips_fail() -> bool {
    skips_fail_with(|name| std::env::var(name).ok())
}

fn skips_fail_with(var: impl Fn(&str) -> Option<String>) -> bool {
    var(CI_VARIABLE).is_some_and(|v| !v.is_empty() && v != "0")
        || var("CI").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A test that cannot run here says why and returns (call it and
/// `return`); in CI ([`skips_fail`]) it panics instead, so that a broken
/// set-up (no cluster, no root) cannot turn a suite green by skipping it.
#[track_caller]
pub fn skip(reason: &str) {
    if skips_fail() {
        panic!("{reason}: this test must run in CI ({CI_VARIABLE} or CI=true is set)");
    }
    eprintln!("skipped: {reason}");
}

/// One frame as received.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Its header.
    pub header: FrameHeader,
    /// Its payload.
    pub payload: Vec<u8>,
    /// When it arrived (test clock).
    pub at: Instant,
}

impl Frame {
    /// The frame type.
    pub fn kind(&self) -> u8 {
        self.header.kind
    }

    /// (last_stream_id, error_code, debug data) of a GOAWAY.
    pub fn goaway(&self) -> Option<(u32, u32, String)> {
        if self.header.kind != kind::GOAWAY {
            return None;
        }
        let p = &self.payload;
        Some((
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & frame::MAX_STREAM_ID,
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            String::from_utf8_lossy(&p[8..]).into_owned(),
        ))
    }

    /// (ack, payload) of a PING.
    pub fn ping(&self) -> Option<(bool, [u8; 8])> {
        if self.header.kind != kind::PING {
            return None;
        }
        let mut payload = [0; 8];
        payload.copy_from_slice(&self.payload);
        Some((self.header.is_ack(), payload))
    }
}

/// A hand-driven HTTP/2 client.
pub struct RawPeer<T> {
    /// The connection.
    pub io: T,
    /// When it was made (test clock).
    pub start: Instant,
}

impl<T: AsyncRead + AsyncWrite + Unpin> RawPeer<T> {
    /// A peer on `io`; nothing is written yet.
    pub fn new(io: T) -> Self {
        RawPeer {
            io,
            start: Instant::now(),
        }
    }

    /// Preface, empty SETTINGS, then ACK the server's SETTINGS.
    pub async fn handshake(&mut self) {
        self.io.write_all(PREFACE).await.unwrap();
        self.send(kind::SETTINGS, 0, 0, &[]).await;
        let f = self.next_frame().await.expect("server SETTINGS");
        assert_eq!(f.kind(), kind::SETTINGS);
        self.send(kind::SETTINGS, frame::flags::ACK, 0, &[]).await;
    }

    /// Writes one frame.
    pub async fn send(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        let h = FrameHeader {
            len: payload.len() as u32,
            kind,
            flags,
            stream_id,
        };
        let mut buf = h.encode().to_vec();
        buf.extend_from_slice(payload);
        self.io.write_all(&buf).await.unwrap();
    }

    /// A POST to `/` (static HPACK entries only).
    pub async fn request(&mut self, stream_id: u32, end_stream: bool) {
        // :method POST, :scheme http, :path /
        self.send(
            kind::HEADERS,
            headers_flags(end_stream),
            stream_id,
            &[0x83, 0x86, 0x84],
        )
        .await;
    }

    /// A DATA frame.
    pub async fn data(&mut self, stream_id: u32, data: &[u8], end_stream: bool) {
        let flags = if end_stream {
            frame::flags::END_STREAM
        } else {
            0
        };
        self.send(kind::DATA, flags, stream_id, data).await;
    }

    /// A PING.
    pub async fn ping(&mut self, payload: [u8; 8]) {
        self.send(kind::PING, 0, 0, &payload).await;
    }

    /// A PING ACK.
    pub async fn ping_ack(&mut self, payload: [u8; 8]) {
        self.send(kind::PING, frame::flags::ACK, 0, &payload).await;
    }

    /// A GOAWAY.
    pub async fn goaway(&mut self, last_stream_id: u32, code: u32, debug: &[u8]) {
        let mut b = Vec::new();
        frame::encode_goaway(&mut b, last_stream_id, code, debug);
        self.io.write_all(&b).await.unwrap();
    }

    /// A RST_STREAM.
    pub async fn reset(&mut self, stream_id: u32, code: u32) {
        self.send(kind::RST_STREAM, 0, stream_id, &code.to_be_bytes())
            .await;
    }

    /// The next frame, or `None` at EOF or on a reset connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        let mut h = [0u8; HEADER_LEN];
        self.io.read_exact(&mut h).await.ok()?;
        let header = FrameHeader::parse(&h);
        let mut payload = vec![0; header.len as usize];
        self.io.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            header,
            payload,
            at: Instant::now(),
        })
    }

    /// The next frame that is not SETTINGS or WINDOW_UPDATE.
    pub async fn next_interesting(&mut self) -> Option<Frame> {
        loop {
            let f = self.next_frame().await?;
            if f.kind() != kind::SETTINGS && f.kind() != kind::WINDOW_UPDATE {
                return Some(f);
            }
        }
    }

    /// Reads until EOF; returns the frames seen on the way.
    pub async fn until_eof(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame().await {
            frames.push(f);
        }
        frames
    }

    /// Time since [`new`](Self::new).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

fn headers_flags(end_stream: bool) -> u8 {
    frame::flags::END_HEADERS
        | if end_stream {
            frame::flags::END_STREAM
        } else {
            0
        }
}

/// A hand-driven HTTP/2 server end.
pub struct RawServer<T> {
    /// The connection, read and written frame by frame.
    pub peer: RawPeer<T>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> RawServer<T> {
    /// Reads the client preface, sends SETTINGS (with MAX_CONCURRENT_STREAMS
    /// if given) and ACKs the client's.
    pub async fn accept(io: T, max_streams: Option<u32>) -> Self {
        let mut peer = RawPeer::new(io);
        let mut preface = [0u8; 24];
        peer.io.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, PREFACE);
        let mut settings = Vec::new();
        if let Some(n) = max_streams {
            settings.extend_from_slice(&frame::SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes());
            settings.extend_from_slice(&n.to_be_bytes());
        }
        peer.send(kind::SETTINGS, 0, 0, &settings).await;
        let f = peer.next_frame().await.unwrap();
        assert_eq!(f.kind(), kind::SETTINGS);
        peer.send(kind::SETTINGS, frame::flags::ACK, 0, &[]).await;
        RawServer { peer }
    }

    /// `:status 200` (static index 8), optionally ending the stream.
    pub async fn respond(&mut self, stream_id: u32, end_stream: bool) {
        self.peer
            .send(kind::HEADERS, headers_flags(end_stream), stream_id, &[0x88])
            .await;
    }

    /// A GOAWAY.
    pub async fn goaway(&mut self, last_stream_id: u32, code: u32, debug: &[u8]) {
        self.peer.goaway(last_stream_id, code, debug).await;
    }

    /// The next HEADERS frame's stream id, skipping everything else.
    pub async fn next_request(&mut self) -> Option<u32> {
        loop {
            let f = self.peer.next_frame().await?;
            if f.kind() == kind::HEADERS {
                return Some(f.header.stream_id);
            }
        }
    }
}

/// Hands the server end of every new in-memory connection to the test;
/// refuses connections while `refuse` is set.
#[derive(Clone)]
pub struct PipeConnector {
    /// Where the server ends go.
    pub tx: mpsc::UnboundedSender<DuplexStream>,
    /// While true, connects fail with `ConnectionRefused`.
    pub refuse: Arc<AtomicBool>,
}

impl PipeConnector {
    /// A connector and the receiver of its connections' server ends.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<DuplexStream>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            PipeConnector {
                tx,
                refuse: Arc::new(AtomicBool::new(false)),
            },
            rx,
        )
    }
}

impl Connect for PipeConnector {
    type Io = DuplexStream;

    fn connect(&self) -> Pin<Box<dyn Future<Output = std::io::Result<DuplexStream>> + Send + '_>> {
        Box::pin(async move {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(std::io::ErrorKind::ConnectionRefused.into());
            }
            let (a, b) = tokio::io::duplex(1 << 20);
            self.tx
                .send(b)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
            Ok(a)
        })
    }

    fn describe(&self) -> String {
        "pipe".into()
    }
}

#[cfg(test)]
mod tests {
    use super::skips_fail_with;

    #[test]
    fn skips_fail_in_ci_and_only_there() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!skips_fail_with(env(&[])));
        assert!(skips_fail_with(env(&[("GOAWAY_CI", "1")])));
        assert!(!skips_fail_with(env(&[("GOAWAY_CI", "0")])));
        assert!(!skips_fail_with(env(&[("GOAWAY_CI", "")])));
        assert!(skips_fail_with(env(&[("CI", "true")])));
        assert!(skips_fail_with(env(&[("CI", "TRUE")])));
        assert!(!skips_fail_with(env(&[("CI", "false")])));
    }
}
