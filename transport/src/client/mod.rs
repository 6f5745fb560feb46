//! The client side (docs/design.md §4): a [`Channel`] to one address that
//! keeps its connections alive, follows GOAWAY, retries what was never
//! processed, reconnects with gRPC backoff and reports connectivity.
//!
//! - Keepalive as on the server, measured from the last read; with no
//!   stream open and `permitWithoutStream` false it goes dormant, and pings
//!   at once when a stream starts after a long silence.
//! - On GOAWAY a connection takes no new streams; streams at or below the
//!   last-stream-id finish; those above it (never processed) fail with an
//!   error [`ClientStream::is_unprocessed`] recognises, and
//!   [`Channel::send`] retries them on another connection.
//! - GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") doubles the keepalive
//!   time for new connections, logged at error level.
//! - Several connections are opened when the peer's
//!   SETTINGS_MAX_CONCURRENT_STREAMS is reached.
//!
//! Picking a connection is lock-free (an `ArcSwap` snapshot and a CAS on
//! the chosen connection's stream count).

mod backoff;
mod conn;
mod connector;
mod driver;
mod pool;

pub use backoff::{Backoff, BackoffConfig};
pub use connector::{Connect, TcpConnector};

use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::time::Duration;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{ClientParams, Counters, Error};
use conn::Conn;
use pool::{Pool, dialer};

/// How many connections [`Channel::start`] tries for one stream when the
/// picked one refuses it locally (it died or got GOAWAY between the pick
/// and the send, so nothing reached the wire).
const MAX_CONNECTION_PICKS: usize = 8;
/// How many times [`Channel::send`] sends a request the peer provably never
/// processed (beyond a GOAWAY's last stream id, or REFUSED_STREAM). The
/// agent's proxy has its own, smaller bound for streamed bodies
/// (`proxy::stream::MAX_ATTEMPTS`), since it must also hold a replay copy.
const MAX_UNPROCESSED_ATTEMPTS: u32 = 5;

/// gRPC connectivity states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Connectivity {
    /// No connection and none being made.
    Idle,
    /// Connecting, with no usable connection yet.
    Connecting,
    /// At least one connection takes streams.
    Ready,
    /// The last attempt failed; waiting out the backoff.
    TransientFailure,
    /// Shut down.
    Shutdown,
}

/// Channel settings.
#[derive(Clone)]
pub struct ChannelConfig {
    /// Keepalive parameters.
    pub params: ClientParams,
    /// Where events are counted.
    pub counters: Arc<Counters>,
    /// HTTP/2 settings for new connections.
    pub h2: h2::client::Builder,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Upper bound on connections opened for more concurrent streams.
    pub max_connections: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            params: ClientParams::default(),
            counters: Arc::default(),
            h2: h2::client::Builder::new(),
            backoff: BackoffConfig::default(),
            max_connections: 16,
        }
    }
}

/// A pool of HTTP/2 connections to one address. Cheap to clone; the last
/// clone dropped shuts it down.
#[derive(Clone)]
pub struct Channel {
    pool: Arc<Pool>,
    _owner: Arc<Owner>,
}

struct Owner(Arc<Pool>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A stream opened on a channel.
pub struct ClientStream {
    /// The response head, when it comes.
    pub response: ResponseFuture,
    /// The request body.
    pub body: SendStream<Bytes>,
    /// Keeps the stream counted on its connection.
    pub guard: ClientStreamGuard,
}

impl ClientStream {
    /// Whether `err` (from this stream's response or body) proves the
    /// peer never processed the stream, so it is safe to send again —
    /// whatever error then ended the stream, and in whatever order the
    /// server's frames and its close arrived:
    ///
    /// - the stream was reset with REFUSED_STREAM (RFC 9113 §8.7), read
    ///   by h2, or found after a failed write in what the server had sent
    ///   before closing;
    /// - the connection received a GOAWAY whose last-stream-id is below it
    ///   (§6.8), likewise read by h2 or found after a failed write;
    /// - its HEADERS never left this end (the connection failed first).
    ///   grpc-go's client retries such streams transparently too.
    pub fn is_unprocessed(&self, err: &h2::Error) -> bool {
        self.guard.is_unprocessed(err, self.response.stream_id())
    }
}

/// The size of a request's header list as RFC 9113 §6.5.2 counts it
/// against SETTINGS_MAX_HEADER_LIST_SIZE: name and value lengths plus 32
/// per field, pseudo-header fields included.
pub fn header_list_size<B>(request: &Request<B>) -> usize {
    const PER_FIELD: usize = 32;
    let uri = request.uri();
    let path = uri.path_and_query().map_or(1, |p| p.as_str().len());
    let mut size = ":method".len() + request.method().as_str().len() + PER_FIELD;
    size += ":path".len() + path + PER_FIELD;
    if let Some(scheme) = uri.scheme_str() {
        size += ":scheme".len() + scheme.len() + PER_FIELD;
    }
    if let Some(authority) = uri.authority() {
        size += ":authority".len() + authority.as_str().len() + PER_FIELD;
    }
    for (name, value) in request.headers() {
        size += name.as_str().len() + value.len() + PER_FIELD;
    }
    size
}

/// Counts a stream against its connection's concurrency while alive.
pub struct ClientStreamGuard {
    conn: Arc<Conn>,
    pool: Arc<Pool>,
}

impl ClientStreamGuard {
    /// Whether `err`, from the stream `id` this guard counts, proves the
    /// peer never processed it (see [`ClientStream::is_unprocessed`]).
    pub fn is_unprocessed(&self, err: &h2::Error, id: h2::StreamId) -> bool {
        if err.reason() == Some(h2::Reason::REFUSED_STREAM) && err.is_remote() && err.is_reset() {
            return true;
        }
        let id = u32::from(id);
        let client = self.conn.shared.client();
        // A stream picked just before the GOAWAY arrived can go out after
        // it, and end when the server closes the connection (a broken
        // pipe, EOF) rather than with the GOAWAY.
        id > client.peer_goaway_last_stream.load(Acquire)
            || id > client.max_headers_sent.load(Acquire)
            || client
                .refused_unread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id)
    }
}

impl Drop for ClientStreamGuard {
    fn drop(&mut self) {
        self.conn.release();
        self.pool.slot_freed();
    }
}

impl Channel {
    /// A channel that dials with `connector`. Connects lazily, on the
    /// first stream or [`connect`](Self::connect). Must be called within a
    /// Tokio runtime (it spawns the dialer).
    pub fn new<C: Connect>(connector: C, config: ChannelConfig) -> Channel {
        let pool = Pool::new(config, connector.describe());
        tokio::spawn(dialer(pool.clone(), connector));
        Channel {
            _owner: Arc::new(Owner(pool.clone())),
            pool,
        }
    }

    /// A channel to a TCP address with `TCP_USER_TIMEOUT` set per gRFC A18.
    pub fn tcp(addr: impl Into<String>, config: ChannelConfig) -> Channel {
        let user_timeout = config.params.time.map(|_| config.params.timeout);
        Channel::new(
            TcpConnector::new(addr).with_user_timeout(user_timeout),
            config,
        )
    }

    /// Starts connecting now instead of on the first stream.
    pub fn connect(&self) {
        self.pool.want_connection();
    }

    /// The current connectivity state.
    pub fn state(&self) -> Connectivity {
        *self.pool.state.borrow()
    }

    /// Watches connectivity changes.
    pub fn watch_state(&self) -> watch::Receiver<Connectivity> {
        self.pool.state.subscribe()
    }

    /// The keepalive time new connections will use (doubled after each
    /// `too_many_pings`), `None` when keepalive is off.
    pub fn keepalive_time(&self) -> Option<Duration> {
        self.pool.keepalive_time()
    }

    /// Parameters for connections opened from now on (policy reload).
    /// Existing connections keep theirs until they are replaced.
    pub fn set_params(&self, params: ClientParams) {
        self.pool.set_params(params);
    }

    /// Connections currently taking streams.
    pub fn ready_connections(&self) -> usize {
        self.pool.conns.load().iter().filter(|c| c.usable()).count()
    }

    /// Opens a stream, waiting until `deadline` for a usable connection.
    /// `request` builds the request head for each attempt: an attempt whose
    /// connection turns out to be going away is retried on another one.
    ///
    /// Fails with [`Error::Connect`] when no connection can be had by the
    /// deadline, or at once when the channel is failing and its next
    /// attempt is after the deadline.
    pub async fn start(
        &self,
        mut request: impl FnMut() -> Request<()>,
        end_of_stream: bool,
        deadline: Instant,
    ) -> Result<ClientStream, Error> {
        let mut last = None;
        for _ in 0..MAX_CONNECTION_PICKS {
            let conn = self.pool.acquire(deadline).await?;
            let request = request();
            let limit = conn.shared.client().peer_max_header_list.load(Acquire);
            let size = header_list_size(&request);
            if size > limit as usize {
                conn.release();
                self.pool.slot_freed();
                return Err(Error::HeaderListTooLarge { size, limit });
            }
            let mut send = conn.send.clone();
            match send.send_request(request, end_of_stream) {
                Ok((response, body)) => {
                    return Ok(ClientStream {
                        response,
                        body,
                        guard: ClientStreamGuard {
                            conn,
                            pool: self.pool.clone(),
                        },
                    });
                }
                Err(e) => {
                    // The connection died or got GOAWAY between picking and
                    // sending; nothing reached the wire.
                    tracing::debug!(error = %e, "stream refused locally; trying another connection");
                    conn.mark_unusable();
                    conn.release();
                    self.pool.remove(conn.id);
                    last = Some(e);
                }
            }
        }
        Err(last.map_or(Error::Shutdown, Error::H2))
    }

    /// Sends a request with a complete body and returns the response head,
    /// retrying transparently (up to a few times) when the stream was never
    /// processed by the peer.
    pub async fn send(
        &self,
        mut request: impl FnMut() -> Request<()>,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Response<RecvStream>, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut stream = self.start(&mut request, body.is_empty(), deadline).await?;
            if !body.is_empty() {
                stream.body.send_data(body.clone(), true)?;
            }
            let id = stream.response.stream_id();
            match stream.response.await {
                Ok(resp) => return Ok(resp),
                Err(e)
                    if attempt < MAX_UNPROCESSED_ATTEMPTS
                        && stream.guard.is_unprocessed(&e, id) =>
                {
                    Counters::inc(&self.pool.config.counters.upstream_retries);
                    tracing::debug!(error = %e, "stream was not processed; retrying");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Closes every connection, each once its last stream has ended, and
    /// stops keeping one open ([`connect`](Self::connect) undoes that); a
    /// new stream connects again.
    pub fn disconnect(&self) {
        self.pool.disconnect();
    }

    /// Closes every connection; pending and future streams fail.
    pub fn shutdown(&self) {
        self.pool.shutdown();
    }
}
