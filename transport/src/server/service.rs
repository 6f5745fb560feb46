//! Serving a connection with a `tower::Service`, the shape tonic and hyper
//! applications are written in: the service gets each request as
//! `http::Request<RequestBody>` and answers with any `http_body::Body`, and
//! [`ServerConnection`] applies docs/design.md §3 underneath (keepalive, max
//! idle, max age with grace, ping enforcement, the two-step drain).
//!
//! Streams are polled inside the connection's task
//! ([`ServerConnection::serve_streams`]), so neither the service nor its
//! bodies need to be `Send`. Flow control holds both ways: a
//! request body's window is released only as the service reads it, and a
//! response body is polled only as fast as the client's window allows.
//! A client that resets a stream drops the service's future or body; a
//! service error or a failing response body resets the stream with
//! `INTERNAL_ERROR`.

use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tower_service::Service;

use super::{Incoming, ServerConnection, StreamGuard};

/// A request body: the client's DATA frames, then its trailers. Receive
/// window is given back as each chunk is handed to the service.
pub struct RequestBody {
    recv: RecvStream,
    data_done: bool,
    done: bool,
}

impl RequestBody {
    fn new(recv: RecvStream) -> Self {
        let done = recv.is_end_stream();
        RequestBody {
            recv,
            data_done: done,
            done,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.recv.poll_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

impl<T: AsyncRead + AsyncWrite + Unpin> ServerConnection<T> {
    /// Serves every stream of this connection with `service` until the
    /// connection closes ([`outcome`](Self::outcome) says why). Streams
    /// still running when it closes are dropped.
    ///
    /// ```no_run
    /// # async fn run(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    /// use goaway_transport::server::{RequestBody, ServerConfig, ServerConnection};
    /// use http_body_util::Full;
    ///
    /// let config = ServerConfig::default();
    /// let service = tower::service_fn(|_req: http::Request<RequestBody>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from("hi"))))
    /// });
    /// loop {
    ///     let (tcp, _) = listener.accept().await?;
    ///     let (config, service) = (config.clone(), service.clone());
    ///     tokio::spawn(async move {
    ///         let Ok(mut conn) = ServerConnection::handshake(tcp, &config).await else { return };
    ///         conn.serve(service).await;
    ///     });
    /// }
    /// # }
    /// ```
    pub async fn serve<S, B>(&mut self, service: S)
    where
        S: Service<Request<RequestBody>, Response = Response<B>> + Clone,
        S::Error: Into<BoxError>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        // Owned by the closure, so the future is Send when S is (not only
        // when S is Sync). Streams left at the close are dropped.
        let start = move |incoming| answer(service.clone(), incoming);
        let _cancelled = self.serve_streams(start).await;
    }
}

/// Runs one stream: the service call, then the response body.
async fn answer<S, B>(mut service: S, incoming: Incoming)
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let (request, mut respond, guard) = incoming.into_parts();
    let request = request.map(RequestBody::new);
    let call = async {
        poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(request).await
    };
    let response = {
        let mut call = pin!(call);
        let outcome = poll_fn(|cx| {
            if let Poll::Ready(reset) = respond.poll_reset(cx) {
                return Poll::Ready(Err(reset.ok()));
            }
            call.as_mut().poll(cx).map(Ok)
        })
        .await;
        match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                let e: BoxError = e.into();
                tracing::debug!(error = %e, "service failed; resetting the stream");
                respond.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            // The client reset the stream: the call is dropped.
            Err(_) => return,
        }
    };
    send_response(respond, response, guard).await;
}

async fn send_response<B>(
    mut respond: SendResponse<Bytes>,
    response: Response<B>,
    _guard: StreamGuard,
) where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (head, body) = response.into_parts();
    let end = body.is_end_stream();
    let mut send = match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(send) => send,
        Err(e) => {
            tracing::debug!(error = %e, "could not send the response head");
            return;
        }
    };
    if end {
        return;
    }
    let mut body = pin!(body);
    let mut pending: Option<Bytes> = None;
    let result = poll_fn(|cx| poll_body(cx, body.as_mut(), &mut send, &mut pending)).await;
    if let Err(reason) = result {
        send.send_reset(reason);
    }
}

/// Moves the response body onto the stream as the client's window allows.
/// `Err(reason)` asks for a reset.
fn poll_body<B>(
    cx: &mut Context<'_>,
    mut body: Pin<&mut B>,
    send: &mut SendStream<Bytes>,
    pending: &mut Option<Bytes>,
) -> Poll<Result<(), Reason>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    loop {
        if let Poll::Ready(reset) = send.poll_reset(cx) {
            // The client reset (or the connection failed): stop polling the
            // body, nothing more can be sent.
            tracing::debug!(reason = ?reset.ok(), "response stream reset by the client");
            return Poll::Ready(Ok(()));
        }
        if let Some(chunk) = pending.as_mut() {
            if send.capacity() == 0 {
                send.reserve_capacity(chunk.len());
                match ready!(send.poll_capacity(cx)) {
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Poll::Ready(Ok(())),
                }
            }
            let part = chunk.split_to(send.capacity().min(chunk.len()));
            if send.send_data(part, false).is_err() {
                return Poll::Ready(Ok(()));
            }
            if chunk.is_empty() {
                *pending = None;
            }
            continue;
        }
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    if !bytes.is_empty() {
                        *pending = Some(bytes);
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = send.send_trailers(trailers);
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(e)) => {
                let e: BoxError = e.into();
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                return Poll::Ready(Err(Reason::INTERNAL_ERROR));
            }
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return Poll::Ready(Ok(()));
            }
        }
    }
}
