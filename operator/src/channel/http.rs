//! The one HTTP/1.1 exchange of a stream: the agent's upgrade request and
//! the operator's answer (RFC 9110 §7.8 Upgrade, §15.2.2 101 Switching
//! Protocols). Nothing else is spoken, so a small head reader with a hard
//! size limit replaces a general HTTP server.

use std::io;

use goaway_transport::control::{PATH, PROTOCOL};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest request head read (the agent's is ~1.2 KiB, a projected
/// token ~1 KiB of it).
pub const MAX_HEAD: usize = 8 << 10;

/// Why a request is not a stream request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// Not HTTP/1.1, or malformed.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head exceeds [`MAX_HEAD`].
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    /// Another path.
    #[error("no such path; the stream is GET {PATH}")]
    NotFound,
    /// Another method.
    #[error("the stream is GET {PATH}")]
    Method,
    /// No `Upgrade: goaway-control/1` (with `Connection: Upgrade`).
    #[error("the stream needs Connection: Upgrade and Upgrade: {PROTOCOL}")]
    NoUpgrade,
    /// No bearer token.
    #[error("no Authorization: Bearer token")]
    NoToken,
}

impl BadRequest {
    /// The HTTP status the client is answered with.
    pub fn status(&self) -> u16 {
        match self {
            BadRequest::Malformed(_) => 400,
            BadRequest::TooLarge => 431,
            BadRequest::NotFound => 404,
            BadRequest::Method => 405,
            BadRequest::NoUpgrade => 426,
            BadRequest::NoToken => 401,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BadRequest::Malformed(_) => "bad_request",
            BadRequest::TooLarge => "too_large",
            BadRequest::NotFound => "not_found",
            BadRequest::Method => "method",
            BadRequest::NoUpgrade => "no_upgrade",
            BadRequest::NoToken => "no_token",
        }
    }
}

/// Reads a request head (through its blank line). Ok(None): the client
/// closed before sending one.
pub async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> io::Result<Result<Option<Vec<u8>>, BadRequest>> {
    let mut head = Vec::with_capacity(2048);
    let mut chunk = [0; 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if head.is_empty() {
                Ok(None)
            } else {
                Err(BadRequest::Malformed("the request ends early".into()))
            });
        }
        // The blank line may straddle two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(from + at + 4);
            return Ok(Ok(Some(head)));
        }
        if head.len() > MAX_HEAD {
            return Ok(Err(BadRequest::TooLarge));
        }
    }
}

/// The bearer token of a stream request.
pub fn parse(head: &[u8]) -> Result<String, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(BadRequest::Malformed("incomplete head".into()));
        }
        Err(e) => return Err(BadRequest::Malformed(e.to_string())),
    }
    if request.version != Some(1) {
        return Err(BadRequest::Malformed("not HTTP/1.1".into()));
    }
    if request.path != Some(PATH) {
        return Err(BadRequest::NotFound);
    }
    if request.method != Some("GET") {
        return Err(BadRequest::Method);
    }
    let headers = request.headers;
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    // Comma-separated lists, case-insensitive tokens (RFC 9110 §7.6.1, §7.8).
    let lists = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !lists("connection", "upgrade") || !lists("upgrade", PROTOCOL) {
        return Err(BadRequest::NoUpgrade);
    }
    header("authorization")
        .find_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or(BadRequest::NoToken)
}

/// The answer that starts the stream.
pub fn switching_protocols() -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\n\r\n"
    )
    .into_bytes()
}

/// A refusal: the status, and the reason as the body's one line (the
/// agent logs it). The connection is closed after it.
pub fn refusal(status: u16, reason: &str) -> Vec<u8> {
    let phrase = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let body = format!("{}\n", reason.replace(['\r', '\n'], " "));
    let mut head = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 426 {
        head.push_str(&format!("Upgrade: {PROTOCOL}\r\n"));
    }
    if status == 401 {
        head.push_str("WWW-Authenticate: Bearer\r\n");
    }
    format!("{head}\r\n{body}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut text = lines.join("\r\n");
        text.push_str("\r\n\r\n");
        text.into_bytes()
    }

    fn agent_request(token: &str) -> Vec<u8> {
        request(&[
            &format!("GET {PATH} HTTP/1.1"),
            "Host: goaway-operator.goaway-system.svc:9444",
            "Connection: Upgrade",
            &format!("Upgrade: {PROTOCOL}"),
            &format!("Authorization: Bearer {token}"),
        ])
    }

    #[test]
    fn the_agents_request_gives_its_token() {
        assert_eq!(
            parse(&agent_request("abc.def.ghi")),
            Ok("abc.def.ghi".into())
        );
        // Header names and tokens are case-insensitive; lists are lists.
        let relaxed = request(&[
            &format!("GET {PATH} HTTP/1.1"),
            "connection: keep-alive, upgrade",
            "UPGRADE: h2c, GOAWAY-CONTROL/1",
            "authorization: bearer t0k",
        ]);
        assert_eq!(parse(&relaxed), Ok("t0k".into()));
    }

    #[test]
    fn other_requests_are_refused_with_the_reason() {
        let cases = [
            (
                request(&[
                    "GET /healthz HTTP/1.1",
                    "Connection: Upgrade",
                    "Upgrade: goaway-control/1",
                ]),
                404,
            ),
            (
                request(&[
                    &format!("POST {PATH} HTTP/1.1"),
                    "Connection: Upgrade",
                    "Upgrade: goaway-control/1",
                ]),
                405,
            ),
            (
                request(&[&format!("GET {PATH} HTTP/1.1"), "Authorization: Bearer x"]),
                426,
            ),
            (
                request(&[
                    &format!("GET {PATH} HTTP/1.1"),
                    "Connection: Upgrade",
                    "Upgrade: websocket",
                    "Authorization: Bearer x",
                ]),
                426,
            ),
            (
                request(&[
                    &format!("GET {PATH} HTTP/1.1"),
                    "Connection: Upgrade",
                    "Upgrade: goaway-control/1",
                    "Authorization: Basic eDp5",
                ]),
                401,
            ),
            (
                request(&[&format!("GET {PATH} HTTP/1.0"), "Connection: Upgrade"]),
                400,
            ),
            (b"\x16\x03\x01\x02\x00\r\n\r\n".to_vec(), 400),
        ];
        for (head, status) in cases {
            let err = parse(&head).unwrap_err();
            assert_eq!(err.status(), status, "{err}");
        }
    }

    #[tokio::test]
    async fn the_head_is_read_through_its_blank_line_and_no_further() {
        let mut bytes = agent_request("t");
        let head_len = bytes.len();
        bytes.extend_from_slice(b"ignored");
        // One byte at a time: the blank line straddles reads.
        let (mut client, mut server) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(&bytes).await.unwrap();
            client
        });
        let head = read_head(&mut server).await.unwrap().unwrap().unwrap();
        assert_eq!(head.len(), head_len);
        drop(writer);
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused_without_reading_on() {
        let (mut client, mut server) = tokio::io::duplex(64 << 10);
        use tokio::io::AsyncWriteExt;
        client
            .write_all(format!("GET {PATH} HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD)).as_bytes())
            .await
            .unwrap();
        assert_eq!(
            read_head(&mut server).await.unwrap(),
            Err(BadRequest::TooLarge)
        );
        // A client that closes at once sent nothing.
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(read_head(&mut server).await.unwrap(), Ok(None));
    }

    #[test]
    fn refusals_carry_the_reason_on_one_line() {
        let text = String::from_utf8(refusal(403, "pod a/b\nwas not injected")).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\npod a/b was not injected\n"),
            "{text}"
        );
        assert!(
            String::from_utf8(refusal(401, "x"))
                .unwrap()
                .contains("WWW-Authenticate: Bearer")
        );
    }
}
