//! Just enough HTTP/2 framing (RFC 9113 §4) to watch a connection's byte
//! stream from outside `h2`: frame headers, PING, GOAWAY and SETTINGS
//! payloads, and the encoding of the few frames this crate writes itself.
//!
//! [`FrameScanner`] is incremental: bytes may arrive split anywhere (inside
//! the preface, a header or a payload) and the events are the same as for
//! one contiguous buffer. It never allocates and never fails: framing
//! errors are `h2`'s to detect and answer; the scanner only has to stay in
//! step with the frames `h2` sees.

// A complete table of the frame types, flags and codes this crate names,
// and the two encoders: the crate reads some, the test doubles
// (`test-util`) write all of them.
#![cfg_attr(
    not(feature = "test-util"),
    allow(dead_code, unused_imports, unreachable_pub)
)]

mod scanner;

pub use scanner::{DebugData, FULL_CAPTURE, FrameEvent, FrameScanner};

/// Length of a frame header.
pub const HEADER_LEN: usize = 9;
/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest stream identifier (2^31−1); the first GOAWAY of a graceful drain.
pub const MAX_STREAM_ID: u32 = (1 << 31) - 1;
/// Debug data kept from a received GOAWAY; the rest is skipped. (Enough
/// for every reason gRPC sends; larger texts are only ever logged.)
pub(crate) const MAX_DEBUG_CAPTURE: usize = 32;

/// Frame types (RFC 9113 §6).
#[allow(missing_docs)]
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Flags used here.
#[allow(missing_docs)]
pub mod flags {
    pub const ACK: u8 = 0x1;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// Error codes (RFC 9113 §7).
#[allow(missing_docs)]
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const INTERNAL_ERROR: u32 = 0x2;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const SETTINGS_TIMEOUT: u32 = 0x4;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const CONNECT_ERROR: u32 = 0xa;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    pub const INADEQUATE_SECURITY: u32 = 0xc;
    pub const HTTP_1_1_REQUIRED: u32 = 0xd;
}

/// SETTINGS identifiers used here.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// See [`SETTINGS_MAX_CONCURRENT_STREAMS`].
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length (24 bits).
    pub len: u32,
    /// Frame type, see [`kind`].
    pub kind: u8,
    /// Flags byte.
    pub flags: u8,
    /// Stream identifier with the reserved bit cleared.
    pub stream_id: u32,
}

impl FrameHeader {
    /// Decodes 9 header bytes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_STREAM_ID,
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let l = self.len.to_be_bytes();
        let s = (self.stream_id & MAX_STREAM_ID).to_be_bytes();
        [
            l[1], l[2], l[3], self.kind, self.flags, s[0], s[1], s[2], s[3],
        ]
    }

    /// Whether the ACK flag is set (meaningful for PING and SETTINGS).
    pub fn is_ack(&self) -> bool {
        self.flags & flags::ACK != 0
    }
}

/// Appends a PING frame to `out`.
pub fn encode_ping(out: &mut Vec<u8>, ack: bool, payload: [u8; 8]) {
    let h = FrameHeader {
        len: 8,
        kind: kind::PING,
        flags: if ack { flags::ACK } else { 0 },
        stream_id: 0,
    };
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(&payload);
}

/// Appends a GOAWAY frame to `out`.
pub fn encode_goaway(out: &mut Vec<u8>, last_stream_id: u32, error_code: u32, debug: &[u8]) {
    let h = FrameHeader {
        len: 8 + debug.len() as u32,
        kind: kind::GOAWAY,
        flags: 0,
        stream_id: 0,
    };
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(&(last_stream_id & MAX_STREAM_ID).to_be_bytes());
    out.extend_from_slice(&error_code.to_be_bytes());
    out.extend_from_slice(debug);
}

#[cfg(test)]
mod tests;
