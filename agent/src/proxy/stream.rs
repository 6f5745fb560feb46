//! One proxied stream: request head, body and trailers to the application,
//! response head, body and trailers back, resets in both directions.
//!
//! A gRPC client must not be able to tell the agent is there: metadata,
//! messages, status and trailers pass through untouched, a client cancel
//! resets the upstream stream and an upstream reset resets the client's
//! stream with the same code. The agent speaks for itself only when the
//! application cannot be reached: a trailers-only `grpc-status: 14`
//! (UNAVAILABLE) with a message, or `4` (DEADLINE_EXCEEDED) when the
//! request's own deadline passed first; and when the connection to the
//! application is lost after the response head, a gRPC call ends with
//! `grpc-status: 14` in its trailers (any other request is reset).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use goaway_transport::Counters;
use goaway_transport::client::{Channel, ClientStream, ClientStreamGuard};
use goaway_transport::server::{Incoming, StreamGuard};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use tokio::time::Instant;

use super::forwarded;
use super::grpc::{self, Code};
use super::pump::{Pump, PumpError};

/// Attempts of one client stream at the upstream when the app provably
/// never processed it (GOAWAY last-stream-id, REFUSED_STREAM) and its
/// request body is still fully held in the 64 KiB replay buffer. Smaller
/// than the transport's own bound for whole-body requests, since each
/// attempt here may hold a replay copy.
const MAX_ATTEMPTS: u32 = 4;

/// The application side, shared by every stream.
pub struct Upstream {
    /// Pooled connections to the application.
    pub channel: Channel,
    /// `--upstream`, for messages.
    pub addr: String,
    /// Longest wait for a usable upstream connection.
    pub connect_timeout: Duration,
    /// Where retries are counted.
    pub counters: Arc<Counters>,
}

struct Ctx<'a> {
    head: &'a Parts,
    grpc: bool,
    received: Instant,
    deadline: Option<Instant>,
    /// The client's `x-forwarded-for` entry, unless turned off.
    client: Option<&'a HeaderValue>,
}

impl Ctx<'_> {
    /// The request head for an upstream attempt: the client's, with its
    /// address appended to `x-forwarded-for` and `grpc-timeout` reduced by
    /// however long the agent held the request.
    fn upstream_request(&self) -> Request<()> {
        let mut r = Request::new(());
        *r.method_mut() = self.head.method.clone();
        *r.uri_mut() = self.head.uri.clone();
        *r.headers_mut() = self.head.headers.clone();
        if let Some(client) = self.client {
            forwarded::append(r.headers_mut(), client);
        }
        if let Some(deadline) = self.deadline
            && self.received.elapsed() > Duration::from_millis(1)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            r.headers_mut()
                .insert("grpc-timeout", grpc::encode_timeout(left));
        }
        r
    }

    fn wait_until(&self, up: &Upstream) -> Instant {
        let limit = self.received + up.connect_timeout;
        self.deadline.map_or(limit, |d| d.min(limit))
    }

    /// The answer when no upstream stream could be had.
    fn unavailable(&self, up: &Upstream, error: &dyn std::fmt::Display) -> Response<()> {
        if !self.grpc {
            return grpc::http_error(StatusCode::SERVICE_UNAVAILABLE);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            let msg = format!(
                "goaway-agent: deadline exceeded waiting for upstream {}: {error}",
                up.addr
            );
            return grpc::trailers_only(Code::DeadlineExceeded, &msg);
        }
        let msg = format!("goaway-agent: upstream {} unavailable: {error}", up.addr);
        grpc::trailers_only(Code::Unavailable, &msg)
    }
}

/// Proxies one accepted stream to the application.
///
/// (The futures here are `async move` blocks in plain functions, not
/// `async fn`s: an `async fn` keeps a second copy of each by-value
/// argument, and this future is built, moved and kept once per stream.)
///
/// `client` is the client's `x-forwarded-for` entry
/// ([`forwarded::entry`]), `None` to forward the headers as they came.
pub fn forward(
    incoming: Incoming,
    up: Arc<Upstream>,
    client: Option<HeaderValue>,
) -> impl Future<Output = ()> + Send {
    let (request, respond, guard) = incoming.into_parts();
    let (head, body) = request.into_parts();
    proxy(head, body, respond, guard, up, client)
}

// An `async fn` would keep a second copy of its by-value arguments.
#[allow(clippy::manual_async_fn)]
fn proxy(
    head: Parts,
    body: RecvStream,
    mut respond: SendResponse<Bytes>,
    guard: StreamGuard,
    up: Arc<Upstream>,
    client: Option<HeaderValue>,
) -> impl Future<Output = ()> + Send {
    async move {
        // Counts the stream as active until this future ends.
        let _ = &guard;
        let received = Instant::now();
        let ctx = Ctx {
            grpc: grpc::is_grpc(&head.headers),
            deadline: grpc::timeout(&head.headers).map(|t| received + t),
            received,
            head: &head,
            client: client.as_ref(),
        };
        let eos = body.is_end_stream();
        let Some(stream) = open(&ctx, &up, &mut respond, eos).await else {
            return;
        };
        let ClientStream {
            response,
            body: sink,
            guard: upstream_guard,
        } = stream;
        let pump = Pump::new(body, sink, true);
        exchange(&ctx, &up, respond, pump, response, upstream_guard).await;
    }
}

/// Opens the upstream stream, answering the client itself on failure.
async fn open(
    ctx: &Ctx<'_>,
    up: &Upstream,
    respond: &mut SendResponse<Bytes>,
    eos: bool,
) -> Option<ClientStream> {
    let start = up
        .channel
        .start(|| ctx.upstream_request(), eos, ctx.wait_until(up));
    tokio::pin!(start);
    let result = poll_fn(|cx| {
        if respond.poll_reset(cx).is_ready() {
            // The client gave up while we waited.
            return Poll::Ready(None);
        }
        start.as_mut().poll(cx).map(Some)
    })
    .await?;
    match result {
        Ok(stream) => Some(stream),
        Err(goaway_transport::Error::HeaderListTooLarge { size, limit }) => {
            // What a gRPC server answers metadata over its limit with; the
            // app would have had to refuse this request.
            tracing::debug!(size, limit, "request headers over the app's limit");
            let response = if ctx.grpc {
                let msg = format!(
                    "goaway-agent: request metadata is {size} bytes; upstream {} accepts at most {limit} (SETTINGS_MAX_HEADER_LIST_SIZE)",
                    up.addr
                );
                grpc::trailers_only(Code::ResourceExhausted, &msg)
            } else {
                grpc::http_error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            };
            let _ = respond.send_response(response, true);
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "no upstream stream; answering the client");
            let _ = respond.send_response(ctx.unavailable(up, &e), true);
            None
        }
    }
}

enum Head {
    Response(Response<RecvStream>),
    ClientGone,
    Failed(h2::Error),
}

// An `async fn` would keep a second copy of its by-value arguments.
#[allow(clippy::manual_async_fn)]
fn exchange<'a>(
    ctx: &'a Ctx<'a>,
    up: &'a Upstream,
    mut respond: SendResponse<Bytes>,
    mut req: Pump,
    mut response: h2::client::ResponseFuture,
    mut guard: ClientStreamGuard,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        let mut attempts = 1;
        // Until the response head: the request flows, a retry is possible.
        let head = loop {
            let outcome = poll_fn(|cx| {
                if respond.poll_reset(cx).is_ready() {
                    return Poll::Ready(Head::ClientGone);
                }
                match req.poll(cx) {
                    Poll::Ready(Err(PumpError::Source(_))) => return Poll::Ready(Head::ClientGone),
                    // The upstream side failed: its response future says how.
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = ?e, "upstream stopped taking request data");
                        req.done = true;
                    }
                    _ => {}
                }
                match Pin::new(&mut response).poll(cx) {
                    Poll::Ready(Ok(r)) => Poll::Ready(Head::Response(r)),
                    Poll::Ready(Err(e)) => Poll::Ready(Head::Failed(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match outcome {
                Head::Response(r) => break r,
                Head::ClientGone => {
                    req.sink.send_reset(Reason::CANCEL);
                    return;
                }
                Head::Failed(e) => {
                    let unprocessed = guard.is_unprocessed(&e, response.stream_id());
                    tracing::debug!(stream = ?response.stream_id(), error = %e, unprocessed, "upstream stream failed before its response");
                    if unprocessed && attempts < MAX_ATTEMPTS && req.replay.is_complete() {
                        attempts += 1;
                        Counters::inc(&up.counters.upstream_retries);
                        tracing::debug!(
                            attempts,
                            "upstream never processed the stream; retrying on another connection"
                        );
                        let Some(stream) = open(ctx, up, &mut respond, req.eos_on_headers).await
                        else {
                            return;
                        };
                        if !req.rewind(stream.body) {
                            let _ = respond.send_response(
                                ctx.unavailable(up, &"request could not be replayed"),
                                true,
                            );
                            return;
                        }
                        response = stream.response;
                        guard = stream.guard;
                        continue;
                    }
                    fail_before_head(ctx, up, &mut respond, &e);
                    return;
                }
            }
        };
        // `guard` keeps counting the stream on its upstream connection until
        // the exchange is over.
        let _ = &guard;
        req.replay.discard();

        // The response head goes to the client; then both directions flow.
        let (parts, body) = head.into_parts();
        let eos = body.is_end_stream();
        let sink = match respond.send_response(Response::from_parts(parts, ()), eos) {
            Ok(s) => s,
            Err(_) => {
                req.sink.send_reset(Reason::CANCEL);
                return;
            }
        };
        if eos {
            // Trailers-only response: the call is over.
            return;
        }
        let mut resp = Pump::new(body, sink, false);
        poll_fn(|cx| {
            if let Poll::Ready(reason) = resp.sink.poll_reset(cx) {
                tracing::trace!(?reason, "client reset the stream");
                req.sink.send_reset(Reason::CANCEL);
                return Poll::Ready(());
            }
            if !req.done {
                match req.poll(cx) {
                    Poll::Ready(Err(PumpError::Source(_))) => {
                        req.sink.send_reset(Reason::CANCEL);
                        return Poll::Ready(());
                    }
                    // Upstream refused more request data; the response side
                    // reports how the upstream stream ended.
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = ?e, "upstream stopped taking request data");
                        req.done = true;
                    }
                    _ => {}
                }
            }
            match resp.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) => Poll::Ready(()),
                Poll::Ready(Err(PumpError::Source(e))) => {
                    fail_after_head(ctx, up, &mut resp, &e);
                    Poll::Ready(())
                }
                Poll::Ready(Err(e)) => {
                    tracing::trace!(error = ?e, "client side of the response went away");
                    req.sink.send_reset(Reason::CANCEL);
                    Poll::Ready(())
                }
            }
        })
        .await;
    }
}

/// The upstream failed before sending a response head.
fn fail_before_head(
    ctx: &Ctx<'_>,
    up: &Upstream,
    respond: &mut SendResponse<Bytes>,
    e: &h2::Error,
) {
    if let Some(reason) = e.reason()
        && e.is_reset()
    {
        // Same code to the client: REFUSED_STREAM lets it retry, CANCEL
        // becomes CANCELLED, and so on.
        respond.send_reset(reason);
        return;
    }
    let _ = respond.send_response(ctx.unavailable(up, e), true);
}

/// The upstream failed mid-response.
fn fail_after_head(ctx: &Ctx<'_>, up: &Upstream, resp: &mut Pump, e: &h2::Error) {
    if let Some(reason) = e.reason()
        && e.is_reset()
    {
        resp.sink.send_reset(reason);
        return;
    }
    if ctx.grpc {
        let msg = format!("goaway-agent: upstream {} connection lost: {e}", up.addr);
        if resp
            .sink
            .send_trailers(grpc::status_trailers(Code::Unavailable, &msg))
            .is_ok()
        {
            return;
        }
    }
    resp.sink.send_reset(Reason::INTERNAL_ERROR);
}

#[cfg(test)]
mod tests;
