//! The little of gRPC-over-HTTP/2 a transparent proxy needs: recognising
//! gRPC requests, `grpc-timeout`, and trailers-only error responses.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// gRPC status codes used by the agent itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 4
    DeadlineExceeded = 4,
    /// 8
    ResourceExhausted = 8,
    /// 14
    Unavailable = 14,
}

/// `grpc-message` is percent-encoded outside printable ASCII, and `%`.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Whether the request is gRPC (`content-type: application/grpc[+...]`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Parses `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a timeout in the finest unit that fits 8 digits.
pub fn encode_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let candidates = [
        (d.as_nanos(), 'n'),
        (d.as_micros(), 'u'),
        (d.as_millis(), 'm'),
        (u128::from(d.as_secs()), 'S'),
        (u128::from(d.as_secs() / 60), 'M'),
        (u128::from(d.as_secs() / 3600), 'H'),
    ];
    let (n, unit) = candidates
        .into_iter()
        .find(|(n, _)| *n <= MAX)
        .unwrap_or((MAX, 'H'));
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("0n"))
}

/// A trailers-only gRPC response (HEADERS with END_STREAM carrying the
/// status), as gRPC servers send when a call fails before any message.
pub fn trailers_only(code: Code, message: &str) -> Response<()> {
    let mut r = Response::new(());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(v) = HeaderValue::from_str(&utf8_percent_encode(message, GRPC_MESSAGE).to_string()) {
        h.insert("grpc-message", v);
    }
    r
}

/// Trailers carrying a failure status, for a response whose headers
/// already went out.
pub fn status_trailers(code: Code, message: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(v) = HeaderValue::from_str(&utf8_percent_encode(message, GRPC_MESSAGE).to_string()) {
        h.insert("grpc-message", v);
    }
    h
}

/// A plain HTTP error for non-gRPC requests.
pub fn http_error(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn parses_every_timeout_unit() {
        for (v, d) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("400m", Duration::from_millis(400)),
            ("5u", Duration::from_micros(5)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            assert_eq!(timeout(&headers(&[("grpc-timeout", v)])), Some(d), "{v}");
        }
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(timeout(&headers(&[("grpc-timeout", bad)])), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn encodes_timeouts_within_eight_digits() {
        assert_eq!(encode_timeout(Duration::from_millis(1500)), "1500000u");
        assert_eq!(
            encode_timeout(Duration::from_secs(3600 * 24 * 400)),
            "34560000S"
        );
        assert_eq!(
            encode_timeout(Duration::from_secs(3600 * 24 * 4000)),
            "5760000M"
        );
        let d = Duration::from_millis(123_456);
        assert_eq!(timeout(&headers(&[])), None);
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", encode_timeout(d));
        let back = timeout(&h).unwrap();
        assert!(back <= d && d - back < Duration::from_millis(1));
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let r = trailers_only(
            Code::Unavailable,
            "upstream 127.0.0.1:1 refused: 100% down\n",
        );
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(
            r.headers()["grpc-message"],
            "upstream 127.0.0.1:1 refused: 100%25 down%0A"
        );
        assert_eq!(r.status(), 200);
    }

    #[test]
    fn recognises_grpc_content_types() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/json")])));
    }
}
