//! The transport's raw HTTP/2 peer (`goaway_transport::test_util`) over a
//! blocking socket, for hostile-peer tests of the binary: it writes
//! whatever [`Frame`]s it is told to — malformed, out of order, endless —
//! while a reader thread collects every frame the other side sends, so a
//! GOAWAY is seen even when the connection is reset right after it.
//!
//! Header blocks are written with the transport's [`hpack`] encoder;
//! responses are not decoded: tests look at frame types, flags, error
//! codes and DATA payloads.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::poll;

/// The frame vocabulary and HPACK encoder of the transport's raw peer,
/// so both peers write the same bytes the transport reads.
pub use goaway_transport::test_util::frame::{PREFACE, code, flags as flag, kind};
pub use goaway_transport::test_util::{Frame, hpack};

/// The header block of a gRPC request to `path`, plus `extra` metadata.
pub fn grpc_request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "attack.test"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        hpack::literal(&mut b, n, v.as_bytes());
    }
    b
}

/// What the reader thread saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every frame received, in order.
    pub frames: Vec<Frame>,
    /// The socket reached EOF or failed (the peer closed or reset it).
    pub closed: bool,
    /// The reader's error, if it ended with one (e.g. a reset).
    pub error: Option<String>,
}

impl Seen {
    /// The first GOAWAY received: (last stream id, code, debug data).
    pub fn goaway(&self) -> Option<(u32, u32, String)> {
        self.frames.iter().find_map(Frame::goaway)
    }

    /// Frames of one type.
    pub fn of_kind(&self, kind: u8) -> impl Iterator<Item = &Frame> {
        self.frames.iter().filter(move |f| f.kind() == kind)
    }
}

/// A raw client connection: writes from the test, reads on a thread.
pub struct RawConn {
    tcp: TcpStream,
    // Whole frames only: the reader thread writes SETTINGS ACKs too.
    writer: Arc<Mutex<TcpStream>>,
    seen: Arc<Mutex<Seen>>,
    reader: Option<JoinHandle<()>>,
    ack: Arc<AtomicBool>,
    /// Bytes written so far.
    pub sent: usize,
}

impl RawConn {
    /// Connects; nothing is written yet, and the peer's SETTINGS are not
    /// acknowledged until [`ack_settings`](Self::ack_settings) (an ACK
    /// would land inside a preface still being written).
    pub fn connect(addr: SocketAddr) -> Result<RawConn> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let writer = Arc::new(Mutex::new(tcp.try_clone()?));
        let ack = Arc::new(AtomicBool::new(false));
        let reader = {
            let mut tcp = tcp.try_clone()?;
            let ack_to = writer.clone();
            let (seen, ack) = (seen.clone(), ack.clone());
            std::thread::spawn(move || read_frames(&mut tcp, ack_to, &ack, &seen))
        };
        Ok(RawConn {
            tcp,
            writer,
            seen,
            reader: Some(reader),
            ack,
            sent: 0,
        })
    }

    /// Connects, sends the preface and an empty SETTINGS frame, and waits
    /// for the peer's SETTINGS, which is acknowledged (as are later ones).
    /// Waiting keeps the ACK from landing inside a header block the test
    /// writes next.
    pub fn handshake(addr: SocketAddr) -> Result<RawConn> {
        let mut c = RawConn::connect(addr)?;
        let mut hello = PREFACE.to_vec();
        hello.extend(Frame::settings(&[]).encode());
        c.write(&hello)?;
        let settings = |s: &Seen| {
            s.of_kind(kind::SETTINGS)
                .any(|f| f.flags() & flag::ACK == 0)
        };
        if !c.wait_until(Duration::from_secs(10), settings) {
            anyhow::bail!("no SETTINGS from {addr} within 10s");
        }
        c.ack_settings();
        Ok(c)
    }

    /// As [`handshake`](Self::handshake), for a peer that may close the
    /// connection at once: a failed write is what the caller checks for.
    pub fn handshake_or_closed(addr: SocketAddr) -> Result<RawConn> {
        let mut c = RawConn::connect(addr)?;
        let mut hello = PREFACE.to_vec();
        hello.extend(Frame::settings(&[]).encode());
        let _ = c.write(&hello);
        c.ack_settings();
        Ok(c)
    }

    /// Acknowledges the peer's SETTINGS frames from now on (and any
    /// already received).
    pub fn ack_settings(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.ack.store(true, Ordering::SeqCst);
        let pending = self.seen(|s| {
            s.of_kind(kind::SETTINGS)
                .filter(|f| f.flags() & flag::ACK == 0)
                .count()
        });
        let ack = Frame::new(kind::SETTINGS, flag::ACK, 0, []).encode();
        for _ in 0..pending {
            let _ = w.write_all(&ack);
        }
    }

    /// Writes raw bytes.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(bytes)?;
        self.sent += bytes.len();
        Ok(())
    }

    /// Writes one frame.
    pub fn send(&mut self, f: &Frame) -> std::io::Result<()> {
        self.write(&f.encode())
    }

    /// Writes frames in one write.
    pub fn send_all(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        let buf: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        self.write(&buf)
    }

    /// Runs `f` on what was received so far.
    pub fn seen<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the peer closed the connection.
    pub fn closed(&self) -> bool {
        self.seen(|s| s.closed)
    }

    /// The first GOAWAY received so far.
    pub fn goaway(&self) -> Option<(u32, u32, String)> {
        self.seen(Seen::goaway)
    }

    /// Waits until `pred` holds on what was received, or `timeout`.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&Seen) -> bool) -> bool {
        let what = "a frame condition";
        poll::until(what, timeout, Duration::from_millis(5), || {
            Ok(self.seen(&pred))
        })
        .is_ok()
    }

    /// Waits (up to `timeout`) for the peer to close the connection and
    /// returns everything received.
    pub fn finish(mut self, timeout: Duration) -> Seen {
        self.wait_until(timeout, |s| s.closed);
        let _ = self.tcp.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for RawConn {
    fn drop(&mut self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Reads frames until EOF or an error, acknowledging the peer's SETTINGS
/// (a peer that never does is a different attack).
fn read_frames(
    tcp: &mut TcpStream,
    ack_to: Arc<Mutex<TcpStream>>,
    ack: &AtomicBool,
    seen: &Mutex<Seen>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        match tcp.read(&mut chunk) {
            Ok(0) => break None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e.to_string()),
        }
        let mut at = 0;
        while let Some((f, used)) = Frame::decode(&buf[at..]) {
            at += used;
            if f.kind() == kind::SETTINGS && f.flags() & flag::ACK == 0 {
                // Under the writer lock, so `ack_settings` counts this
                // frame exactly once: pushed before it looks, or acked
                // here. (Only here: the reader must never wait on a writer
                // blocked by a peer that waits for us to read.)
                let mut w = ack_to.lock().unwrap_or_else(|e| e.into_inner());
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .frames
                    .push(f);
                if ack.load(Ordering::SeqCst) {
                    // Best effort: the peer may already be gone.
                    let _ = w.write_all(&Frame::new(kind::SETTINGS, flag::ACK, 0, []).encode());
                }
            } else {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .frames
                    .push(f);
            }
        }
        buf.drain(..at);
    };
    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
    s.closed = true;
    s.error = end;
}

/// Resident memory of process `pid` in bytes (Linux `/proc`).
pub fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// CPU time (user + system) of process `pid` so far (Linux `/proc`).
pub fn cpu_of(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // USER_HZ is 100 on every Linux this runs on.
    Ok(Duration::from_millis(ticks * 10))
}

/// Samples a process's RSS until dropped; [`peak`](Self::peak) is the
/// highest value seen.
pub struct RssPeak {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssPeak {
    /// Starts sampling every 10 ms.
    pub fn start(pid: u32) -> RssPeak {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let peak = Arc::new(AtomicU64::new(rss_of(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = rss_of(pid) {
                        peak.fetch_max(r, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        RssPeak {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The highest RSS seen so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
