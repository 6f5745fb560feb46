//! Test support: a raw HTTP/2 peer that writes frames byte by byte and
//! records exactly what it receives (modelled on h2's own `h2-support`
//! mock), and a server harness over `tokio::io::duplex`.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use goaway_transport::frame::{self, FrameHeader, HEADER_LEN, PREFACE, kind};
use goaway_transport::server::{
    CloseReason, ConnectionHandle, Incoming, ServerConfig, ServerConnection,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One frame as received.
#[derive(Clone, Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Vec<u8>,
    /// When it arrived (test clock).
    pub at: Instant,
}

impl Frame {
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
    pub io: T,
    pub start: Instant,
}

impl<T: AsyncRead + AsyncWrite + Unpin> RawPeer<T> {
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
        let flags = frame::flags::END_HEADERS
            | if end_stream {
                frame::flags::END_STREAM
            } else {
                0
            };
        // :method POST, :scheme http, :path /
        self.send(kind::HEADERS, flags, stream_id, &[0x83, 0x86, 0x84])
            .await;
    }

    pub async fn data(&mut self, stream_id: u32, data: &[u8], end_stream: bool) {
        let flags = if end_stream {
            frame::flags::END_STREAM
        } else {
            0
        };
        self.send(kind::DATA, flags, stream_id, data).await;
    }

    pub async fn ping(&mut self, payload: [u8; 8]) {
        self.send(kind::PING, 0, 0, &payload).await;
    }

    pub async fn ping_ack(&mut self, payload: [u8; 8]) {
        self.send(kind::PING, frame::flags::ACK, 0, &payload).await;
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

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A server connection running in its own task.
pub struct TestServer {
    pub handle: ConnectionHandle,
    pub done: JoinHandle<CloseReason>,
}

/// Starts a server connection over an in-memory pipe and returns the
/// client end. `on_stream` runs in its own task for every accepted stream.
pub async fn serve<F, Fut>(
    config: ServerConfig,
    jitter: f64,
    on_stream: F,
) -> (RawPeer<DuplexStream>, TestServer)
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(1 << 20);
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(async move {
        let mut conn = ServerConnection::handshake_with_jitter(server, &config, jitter)
            .await
            .expect("handshake");
        let _ = tx.send(conn.handle());
        while let Some(stream) = conn.accept().await {
            tokio::spawn(on_stream(stream));
        }
        conn.outcome().cloned().expect("outcome once closed")
    });
    let mut peer = RawPeer::new(client);
    // The server handshake needs the preface before it yields a handle.
    peer.handshake().await;
    let handle = rx.await.expect("server started");
    (peer, TestServer { handle, done })
}

/// Answers every stream with 200 and END_STREAM at once.
pub async fn respond_ok(stream: Incoming) {
    let (_req, mut respond, _guard) = stream.into_parts();
    respond
        .send_response(http::Response::new(()), true)
        .expect("send response");
}

/// Holds every stream open (and counted active) for `d`, then answers.
pub fn hold_for(
    d: Duration,
) -> impl Fn(Incoming) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static
{
    move |stream: Incoming| {
        Box::pin(async move {
            let (_req, mut respond, guard) = stream.into_parts();
            tokio::time::sleep(d).await;
            let _ = respond.send_response(http::Response::new(()), true);
            drop(guard);
        })
    }
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Asserts `got` is `want` within the timer wheel's millisecond.
#[track_caller]
pub fn assert_at(got: Duration, want: Duration) {
    assert!(
        got >= want && got <= want + Duration::from_millis(2),
        "expected at {want:?}, got {got:?}"
    );
}

// ------------------------------------------------------------ client side

use goaway_transport::client::Connect;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;

/// Hands the server end of every new in-memory connection to the test;
/// refuses connections while `refuse` is set.
#[derive(Clone)]
pub struct PipeConnector {
    pub tx: mpsc::UnboundedSender<DuplexStream>,
    pub refuse: Arc<AtomicBool>,
}

impl PipeConnector {
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

    fn connect(
        &self,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<DuplexStream>> + Send + '_>> {
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

/// A hand-driven HTTP/2 server end.
pub struct RawServer<T> {
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
        let flags = frame::flags::END_HEADERS
            | if end_stream {
                frame::flags::END_STREAM
            } else {
                0
            };
        self.peer
            .send(kind::HEADERS, flags, stream_id, &[0x88])
            .await;
    }

    pub async fn goaway(&mut self, last_stream_id: u32, code: u32, debug: &[u8]) {
        let mut b = Vec::new();
        frame::encode_goaway(&mut b, last_stream_id, code, debug);
        self.peer.io.write_all(&b).await.unwrap();
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

/// A request head for tests.
pub fn get(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://test{path}"))
        .body(())
        .unwrap()
}
