//! Test support, behind the `test-util` feature: nothing here is part of
//! the API this crate promises to keep.
//!
//! - [`frame`]: the frame constants and codec the crate itself uses, so a
//!   test writes the same bytes the transport reads; [`Frame`], one frame
//!   to send or as received, and [`hpack`], the header blocks a raw peer
//!   writes.
//! - [`RawPeer`]: a hand-driven HTTP/2 endpoint that writes frames byte by
//!   byte and records exactly what it receives (modelled on h2's own
//!   `h2-support` mock); [`RawServer`] is its server end. goaway-tests'
//!   `h2raw` drives the same [`Frame`]s over a blocking socket.
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

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::mpsc;

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

pub mod hpack;
mod raw;

pub use raw::{Frame, RawPeer, RawServer};

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
