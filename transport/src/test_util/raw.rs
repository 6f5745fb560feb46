//! The raw HTTP/2 peer: [`Frame`], what it writes and reads, and
//! [`RawPeer`]/[`RawServer`], which drive one over any async IO on the
//! test's clock. (goaway-tests' `h2raw` drives the same frames over a
//! blocking socket for hostile-peer tests of the binary.)

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::frame::{self, FrameHeader, HEADER_LEN, PREFACE, kind};
use super::hpack;

/// One frame, to send or as received.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Its header; `len` is what goes on the wire, whatever the payload.
    pub header: FrameHeader,
    /// Its payload.
    pub payload: Vec<u8>,
    /// When it arrived (test clock), or was made, for a frame to send.
    pub at: Instant,
}

impl Frame {
    /// A frame of any type, its length that of `payload`.
    pub fn new(kind: u8, flags: u8, stream_id: u32, payload: impl Into<Vec<u8>>) -> Frame {
        let payload = payload.into();
        Frame {
            header: FrameHeader {
                len: payload.len() as u32,
                kind,
                flags,
                stream_id,
            },
            payload,
            at: Instant::now(),
        }
    }

    /// A SETTINGS frame with these parameters.
    pub fn settings(params: &[(u16, u32)]) -> Frame {
        let payload: Vec<u8> = params
            .iter()
            .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
            .collect();
        Frame::new(kind::SETTINGS, 0, 0, payload)
    }

    /// A PING (not an ACK) carrying `payload`.
    pub fn new_ping(payload: u64) -> Frame {
        Frame::new(kind::PING, 0, 0, payload.to_be_bytes())
    }

    /// A RST_STREAM.
    pub fn rst(stream_id: u32, code: u32) -> Frame {
        Frame::new(kind::RST_STREAM, 0, stream_id, code.to_be_bytes())
    }

    /// A WINDOW_UPDATE.
    pub fn window_update(stream_id: u32, increment: u32) -> Frame {
        Frame::new(kind::WINDOW_UPDATE, 0, stream_id, increment.to_be_bytes())
    }

    /// The frame on the wire.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with_len(self.header.len)
    }

    /// The frame on the wire with a length field that may lie about the
    /// payload that follows.
    pub fn encode_with_len(&self, len: u32) -> Vec<u8> {
        let header = FrameHeader { len, ..self.header };
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&self.payload);
        out
    }

    /// The whole frame at the start of `buf` and the bytes it took, or
    /// `None` until all of it is there.
    pub fn decode(buf: &[u8]) -> Option<(Frame, usize)> {
        let header = FrameHeader::parse(buf.get(..HEADER_LEN)?.try_into().ok()?);
        let end = HEADER_LEN + header.len as usize;
        let payload = buf.get(HEADER_LEN..end)?.to_vec();
        let at = Instant::now();
        Some((
            Frame {
                header,
                payload,
                at,
            },
            end,
        ))
    }

    /// The frame type.
    pub fn kind(&self) -> u8 {
        self.header.kind
    }

    /// The flags.
    pub fn flags(&self) -> u8 {
        self.header.flags
    }

    /// The stream identifier.
    pub fn stream_id(&self) -> u32 {
        self.header.stream_id
    }

    /// (last_stream_id, error_code, debug data) of a GOAWAY.
    pub fn goaway(&self) -> Option<(u32, u32, String)> {
        let p = &self.payload;
        if self.kind() != kind::GOAWAY || p.len() < 8 {
            return None;
        }
        Some((
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & frame::MAX_STREAM_ID,
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            String::from_utf8_lossy(&p[8..]).into_owned(),
        ))
    }

    /// (ack, payload) of a PING.
    pub fn ping(&self) -> Option<(bool, [u8; 8])> {
        if self.kind() != kind::PING {
            return None;
        }
        Some((
            self.header.is_ack(),
            self.payload.as_slice().try_into().ok()?,
        ))
    }

    /// The error code of a RST_STREAM.
    pub fn rst_code(&self) -> Option<u32> {
        if self.kind() != kind::RST_STREAM {
            return None;
        }
        Some(u32::from_be_bytes(self.payload.as_slice().try_into().ok()?))
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
        self.send_frame(&Frame::new(kind, flags, stream_id, payload))
            .await;
    }

    /// Writes `frame`.
    pub async fn send_frame(&mut self, frame: &Frame) {
        self.io.write_all(&frame.encode()).await.unwrap();
    }

    /// A POST to `/` (static HPACK entries only).
    pub async fn request(&mut self, stream_id: u32, end_stream: bool) {
        // :method POST, :scheme http, :path /
        let mut block = Vec::new();
        for index in [3, 6, 4] {
            hpack::indexed(&mut block, index);
        }
        self.send(kind::HEADERS, headers_flags(end_stream), stream_id, &block)
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
        self.send_frame(&Frame::rst(stream_id, code)).await;
    }

    /// The next frame, or `None` at EOF or on a reset connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        let mut buf = vec![0u8; HEADER_LEN];
        self.io.read_exact(&mut buf).await.ok()?;
        let len = FrameHeader::parse(buf.as_slice().try_into().ok()?).len;
        buf.resize(HEADER_LEN + len as usize, 0);
        self.io.read_exact(&mut buf[HEADER_LEN..]).await.ok()?;
        Frame::decode(&buf).map(|(f, _)| f)
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
    pub fn elapsed(&self) -> std::time::Duration {
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
        let settings = match max_streams {
            Some(n) => Frame::settings(&[(frame::SETTINGS_MAX_CONCURRENT_STREAMS, n)]),
            None => Frame::settings(&[]),
        };
        peer.send_frame(&settings).await;
        let f = peer.next_frame().await.unwrap();
        assert_eq!(f.kind(), kind::SETTINGS);
        peer.send(kind::SETTINGS, frame::flags::ACK, 0, &[]).await;
        RawServer { peer }
    }

    /// `:status 200`, optionally ending the stream.
    pub async fn respond(&mut self, stream_id: u32, end_stream: bool) {
        let mut block = Vec::new();
        hpack::indexed(&mut block, 8);
        self.peer
            .send(kind::HEADERS, headers_flags(end_stream), stream_id, &block)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::frame::code;

    #[test]
    fn frames_encode_their_header_and_decode_back() {
        let f = Frame::rst(3, code::CANCEL);
        let wire = f.encode();
        assert_eq!(wire, [0, 0, 4, 3, 0, 0, 0, 0, 3, 0, 0, 0, 8]);
        let (back, used) = Frame::decode(&wire).unwrap();
        assert_eq!(
            (back.header, back.rst_code(), used),
            (f.header, Some(8), 13)
        );
        assert!(Frame::decode(&wire[..12]).is_none(), "a partial frame");
        let g = Frame::new(kind::GOAWAY, 0, 0, [0, 0, 0, 5, 0, 0, 0, 11, b'x']);
        assert_eq!(g.goaway(), Some((5, code::ENHANCE_YOUR_CALM, "x".into())));
        let lying = Frame::new(kind::PING, 0, 0, [0; 4]).encode_with_len(0xff_ffff);
        assert_eq!(lying[..3], [0xff, 0xff, 0xff]);
        assert_eq!(lying.len(), HEADER_LEN + 4);
    }

    #[test]
    fn the_request_and_response_heads_are_the_static_table_entries() {
        let mut block = Vec::new();
        for index in [3, 6, 4, 8] {
            hpack::indexed(&mut block, index);
        }
        assert_eq!(block, [0x83, 0x86, 0x84, 0x88]);
    }
}
