//! Incremental frame scanner.

use super::{FrameHeader, HEADER_LEN, MAX_DEBUG_CAPTURE, PREFACE, kind};

/// Something the scanner saw, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameEvent {
    /// A frame header was complete (every frame, before its payload).
    Header(FrameHeader),
    /// A complete, well-sized PING frame.
    Ping {
        /// ACK flag.
        ack: bool,
        /// Opaque data.
        payload: [u8; 8],
    },
    /// A complete GOAWAY frame (debug data truncated to
    /// 32 bytes, `MAX_DEBUG_CAPTURE`).
    GoAway {
        /// Last stream identifier.
        last_stream_id: u32,
        /// Error code.
        error_code: u32,
        /// Leading debug data.
        debug: DebugData,
    },
    /// A complete, well-sized RST_STREAM frame.
    Reset {
        /// The stream reset.
        stream_id: u32,
        /// Error code.
        error_code: u32,
    },
    /// One parameter of a (non-ACK) SETTINGS frame.
    Setting {
        /// Identifier.
        id: u16,
        /// Value.
        value: u32,
    },
}

/// Leading bytes of a GOAWAY's debug data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DebugData {
    buf: [u8; MAX_DEBUG_CAPTURE],
    len: u8,
}

impl DebugData {
    /// The captured bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for DebugData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Payload bytes kept to decode PING, SETTINGS and GOAWAY in full.
pub const FULL_CAPTURE: usize = 8 + MAX_DEBUG_CAPTURE;

/// Tracks frame boundaries in one direction of a connection.
///
/// `CAP` bounds the payload bytes kept per frame: [`FULL_CAPTURE`] reports
/// GOAWAY debug data; 8 is enough for PING payloads, SETTINGS and the
/// fixed part of GOAWAY (the write half uses that, to stay small inside
/// every connection).
#[derive(Clone, Debug)]
pub struct FrameScanner<const CAP: usize = FULL_CAPTURE> {
    preface_left: u8,
    header: [u8; HEADER_LEN],
    header_len: u8,
    current: FrameHeader,
    payload_left: u32,
    capture: [u8; CAP],
    capture_len: u8,
}

impl Default for FrameScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameScanner {
    /// A scanner for a stream that starts with a frame (server→client, or
    /// client→server after the preface).
    pub fn new() -> Self {
        Self::starting(false)
    }

    /// A scanner for the client→server direction, which starts with the
    /// 24-byte connection preface.
    pub fn after_preface() -> Self {
        Self::starting(true)
    }
}

impl<const CAP: usize> FrameScanner<CAP> {
    /// A scanner keeping `CAP` payload bytes per frame; `preface` when the
    /// stream starts with the client connection preface.
    pub fn starting(preface: bool) -> Self {
        const { assert!(CAP >= 8, "PING payloads need 8 bytes") };
        FrameScanner {
            preface_left: if preface { PREFACE.len() as u8 } else { 0 },
            header: [0; HEADER_LEN],
            header_len: 0,
            current: FrameHeader {
                len: 0,
                kind: 0,
                flags: 0,
                stream_id: 0,
            },
            payload_left: 0,
            capture: [0; CAP],
            capture_len: 0,
        }
    }

    /// True between frames: the next byte starts a frame header.
    pub fn at_boundary(&self) -> bool {
        self.preface_left == 0 && self.header_len == 0 && self.payload_left == 0
    }

    /// Bytes that can be consumed without passing the next point where the
    /// scanner learns something (end of preface, header or payload). Zero
    /// exactly when [`at_boundary`](Self::at_boundary).
    pub fn until_boundary(&self) -> usize {
        if self.preface_left > 0 {
            usize::from(self.preface_left)
        } else if self.payload_left > 0 {
            self.payload_left as usize
        } else if self.header_len > 0 {
            HEADER_LEN - usize::from(self.header_len)
        } else {
            0
        }
    }

    /// The part of a header seen so far, and the payload bytes still to
    /// come of the current frame.
    pub(crate) fn position(&self) -> (&[u8], u32, u8) {
        (
            &self.header[..usize::from(self.header_len)],
            self.payload_left,
            self.preface_left,
        )
    }

    /// Feeds the next bytes of the stream, reporting events in order.
    pub fn feed(&mut self, bytes: &[u8], mut on: impl FnMut(FrameEvent)) {
        self.feed_until(bytes, |e| {
            on(e);
            false
        });
    }

    /// Like [`feed`](Self::feed), but stops at the end of the first frame
    /// during which `on` returned true. Returns how many bytes it took:
    /// all of them, or those up to and including that frame's last byte
    /// (the scanner is then [`at_boundary`](Self::at_boundary), and the
    /// rest can be fed later).
    pub fn feed_until(&mut self, all: &[u8], mut on: impl FnMut(FrameEvent) -> bool) -> usize {
        let mut bytes = all;
        let stop = std::cell::Cell::new(false);
        let mut on = |e| {
            if on(e) {
                stop.set(true);
            }
        };
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = bytes.len().min(usize::from(self.preface_left));
                self.preface_left -= n as u8;
                bytes = &bytes[n..];
                continue;
            }
            if self.payload_left == 0 {
                let have = usize::from(self.header_len);
                let n = bytes.len().min(HEADER_LEN - have);
                self.header[have..have + n].copy_from_slice(&bytes[..n]);
                self.header_len += n as u8;
                bytes = &bytes[n..];
                if usize::from(self.header_len) == HEADER_LEN {
                    self.header_len = 0;
                    self.current = FrameHeader::parse(&self.header);
                    self.payload_left = self.current.len;
                    self.capture_len = 0;
                    on(FrameEvent::Header(self.current));
                    if self.payload_left == 0 {
                        self.finish(&mut on);
                        if stop.get() {
                            break;
                        }
                    }
                }
                continue;
            }
            let n = bytes.len().min(self.payload_left as usize);
            self.capture(&bytes[..n], &mut on);
            self.payload_left -= n as u32;
            bytes = &bytes[n..];
            if self.payload_left == 0 {
                self.finish(&mut on);
                if stop.get() {
                    break;
                }
            }
        }
        all.len() - bytes.len()
    }

    fn capture(&mut self, chunk: &[u8], on: &mut impl FnMut(FrameEvent)) {
        let h = self.current;
        match h.kind {
            kind::PING if h.len == 8 => self.keep(chunk, 8),
            kind::GOAWAY if h.len >= 8 => self.keep(chunk, CAP),
            kind::RST_STREAM if h.len == 4 => self.keep(chunk, 4),
            kind::SETTINGS if !h.is_ack() && h.len.is_multiple_of(6) && h.stream_id == 0 => {
                for &b in chunk {
                    self.capture[usize::from(self.capture_len)] = b;
                    self.capture_len += 1;
                    if self.capture_len == 6 {
                        self.capture_len = 0;
                        let c = &self.capture;
                        on(FrameEvent::Setting {
                            id: u16::from_be_bytes([c[0], c[1]]),
                            value: u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn keep(&mut self, chunk: &[u8], limit: usize) {
        let have = usize::from(self.capture_len);
        let n = chunk.len().min(limit - have);
        self.capture[have..have + n].copy_from_slice(&chunk[..n]);
        self.capture_len += n as u8;
    }

    fn finish(&mut self, on: &mut impl FnMut(FrameEvent)) {
        let h = self.current;
        let c = &self.capture;
        match h.kind {
            kind::PING if h.len == 8 => {
                let mut payload = [0; 8];
                payload.copy_from_slice(&c[..8]);
                on(FrameEvent::Ping {
                    ack: h.is_ack(),
                    payload,
                });
            }
            kind::RST_STREAM if h.len == 4 => on(FrameEvent::Reset {
                stream_id: h.stream_id,
                error_code: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            }),
            kind::GOAWAY if h.len >= 8 => {
                let kept = &c[8..usize::from(self.capture_len).max(8)];
                let kept = &kept[..kept.len().min(MAX_DEBUG_CAPTURE)];
                let mut debug = DebugData {
                    buf: [0; MAX_DEBUG_CAPTURE],
                    len: kept.len() as u8,
                };
                debug.buf[..kept.len()].copy_from_slice(kept);
                on(FrameEvent::GoAway {
                    last_stream_id: u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                        & super::MAX_STREAM_ID,
                    error_code: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                    debug,
                });
            }
            _ => {}
        }
        self.capture_len = 0;
    }
}
