//! A gRPC peer on tonic for goaway's interop matrix: the same `echo.Echo`
//! service and client modes as tests/python/grpc_peer.py (see
//! tests/peers/README.md). Messages are raw bytes through a codec of our
//! own; no generated code.
//!
//! Every method, on both sides, goes through tonic's bidi-streaming
//! machinery (the wire format is the same for all four shapes): the
//! server then sends its headers before the handler finishes (so a held
//! call can report its deadline) and can put metadata in the trailers of
//! an OK response, which tonic's unary API cannot; the client sees headers
//! and trailers apart, which tonic's unary API merges.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use serde_json::{Value, json};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, KeyAndValueRef, MetadataMap};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};

const MAX_MESSAGE: usize = 64 << 20;

// ------------------------------------------------------------------ codec

#[derive(Clone, Copy, Default)]
struct RawCodec;

struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn emit(v: &Value) {
    println!("{v}");
}

/// `--flag value` pairs (repeatable `--metadata`), boolean flags, and
/// positional words.
struct Flags {
    values: HashMap<String, String>,
    metadata: Vec<String>,
    positional: Vec<String>,
}

impl Flags {
    fn parse(args: &[String]) -> Flags {
        let bools = ["keepalive-permit-without-calls", "permit-without-stream"];
        let mut f = Flags {
            values: HashMap::new(),
            metadata: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(k) = a.strip_prefix("--") else {
                f.positional.push(a.clone());
                continue;
            };
            let v = if bools.contains(&k) {
                "true".to_owned()
            } else {
                it.next().cloned().unwrap_or_default()
            };
            if k == "metadata" {
                f.metadata.push(v);
            } else {
                f.values.insert(k.to_owned(), v);
            }
        }
        f
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.values.get(k).map(String::as_str)
    }

    fn num(&self, k: &str, default: f64) -> f64 {
        self.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    fn ms(&self, k: &str) -> Option<Duration> {
        self.get(k)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: tonic-peer server|client ...");
        std::process::exit(2);
    };
    let flags = Flags::parse(rest);
    match cmd.as_str() {
        "server" => serve(flags).await,
        "client" => std::process::exit(client(flags).await),
        other => {
            eprintln!("unknown command {other}");
            std::process::exit(2);
        }
    }
}

// ------------------------------------------------------------------ server

#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    cancelled: AtomicU64,
    ok: AtomicU64,
}

impl Stats {
    fn json(&self) -> Value {
        json!({"calls": self.calls.load(Relaxed), "cancelled": self.cancelled.load(Relaxed), "ok": self.ok.load(Relaxed)})
    }
}

/// Counts a call as cancelled if it is dropped before it finished.
struct CallGuard {
    stats: Arc<Stats>,
    done: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.done {
            self.stats.cancelled.fetch_add(1, Relaxed);
        }
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

#[derive(Clone)]
struct Echo {
    stats: Arc<Stats>,
}

impl NamedService for Echo {
    const NAME: &'static str = "echo.Echo";
}

fn first<'a>(md: &'a MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key).and_then(|v| v.to_str().ok())
}

/// x-echo-* request metadata.
fn echoed(md: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for kv in md.iter() {
        match kv {
            KeyAndValueRef::Ascii(k, v) if k.as_str().starts_with("x-echo-") => {
                out.append(k.clone(), v.clone());
            }
            KeyAndValueRef::Binary(k, v) if k.as_str().starts_with("x-echo-") => {
                out.append_bin(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    out
}

/// The `grpc-timeout` the call arrived with, in milliseconds.
fn deadline_ms(md: &MetadataMap) -> Option<u128> {
    let v = first(md, "grpc-timeout")?;
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u128 = n.parse().ok()?;
    Some(match unit {
        "H" => n * 3_600_000,
        "M" => n * 60_000,
        "S" => n * 1000,
        "m" => n,
        "u" => n / 1000,
        "n" => n / 1_000_000,
        _ => return None,
    })
}

/// The status x-status/x-message ask for, with the echoed trailers.
fn requested(md: &MetadataMap, trailers: &MetadataMap) -> Option<Status> {
    let code: i32 = first(md, "x-status")?.parse().ok()?;
    let msg = percent_encoding::percent_decode_str(first(md, "x-message").unwrap_or(""))
        .decode_utf8_lossy()
        .into_owned();
    Some(Status::with_metadata(
        Code::from(code),
        msg,
        trailers.clone(),
    ))
}

/// The end of an OK response: tonic writes a Status's metadata into the
/// trailers, and grpc-status 0 is OK.
fn ok_end(trailers: &MetadataMap) -> Result<Bytes, Status> {
    Err(Status::with_metadata(Code::Ok, "", trailers.clone()))
}

impl StreamingService<Bytes> for Echo {
    type Response = Bytes;
    type ResponseStream = Messages;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Messages>, Status>> + Send>>;

    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        let stats = self.stats.clone();
        let method = req
            .extensions()
            .get::<Method>()
            .map(|m| m.0.clone())
            .unwrap_or_default();
        Box::pin(async move {
            let md = req.metadata().clone();
            let trailers = echoed(&md);
            let mut headers = trailers.clone();
            if md.contains_key("x-report-deadline") {
                let left = deadline_ms(&md).map_or("none".to_owned(), |d| d.to_string());
                headers.insert(
                    "x-time-remaining-ms",
                    left.parse()
                        .unwrap_or(AsciiMetadataValue::from_static("bad")),
                );
            }
            let mut input = req.into_inner();
            if method != "Stats" {
                stats.calls.fetch_add(1, Relaxed);
            }
            let guard = CallGuard {
                stats: stats.clone(),
                done: method == "Stats",
            };
            let out: Messages = match method.as_str() {
                "Stats" => {
                    let body = Bytes::from(stats.json().to_string());
                    Box::pin(futures_util::stream::iter([Ok(body), ok_end(&trailers)]))
                }
                "Unary" => {
                    let request = input.message().await?.unwrap_or_default();
                    let sleep = first(&md, "x-sleep-ms")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    Box::pin(
                        futures_util::stream::once(async move {
                            let mut guard = guard;
                            tokio::time::sleep(Duration::from_millis(sleep)).await;
                            guard.done = true;
                            if let Some(s) = requested(&md, &trailers) {
                                return Err(s);
                            }
                            guard.stats.ok.fetch_add(1, Relaxed);
                            Ok((request, trailers))
                        })
                        .flat_map(|r| match r {
                            Ok((m, t)) => futures_util::stream::iter(vec![Ok(m), ok_end(&t)]),
                            Err(s) => futures_util::stream::iter(vec![Err(s)]),
                        }),
                    )
                }
                "ServerStream" => {
                    let request = input.message().await?.unwrap_or_default();
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let (n, size) = text
                        .split_once(':')
                        .and_then(|(n, s)| {
                            Some((n.parse::<usize>().ok()?, s.parse::<usize>().ok()?))
                        })
                        .ok_or_else(|| {
                            Status::invalid_argument(format!("want N:SIZE, got {text:?}"))
                        })?;
                    let pause = first(&md, "x-stream-sleep-ms")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    Box::pin(futures_util::stream::unfold(
                        (0usize, Some(guard)),
                        move |(i, guard)| {
                            let md = md.clone();
                            let trailers = trailers.clone();
                            async move {
                                let mut guard = guard?;
                                if i < n {
                                    if i > 0 && pause > 0 {
                                        tokio::time::sleep(Duration::from_millis(pause)).await;
                                    }
                                    return Some((
                                        Ok(Bytes::from(vec![(i % 256) as u8; size])),
                                        (i + 1, Some(guard)),
                                    ));
                                }
                                guard.done = true;
                                if let Some(s) = requested(&md, &trailers) {
                                    return Some((Err(s), (i, None)));
                                }
                                guard.stats.ok.fetch_add(1, Relaxed);
                                Some((ok_end(&trailers), (i, None)))
                            }
                        },
                    ))
                }
                "ClientStream" => {
                    let mut guard = guard;
                    let mut all = Vec::new();
                    while let Some(m) = input.message().await? {
                        all.extend_from_slice(&m);
                    }
                    guard.done = true;
                    stats.ok.fetch_add(1, Relaxed);
                    Box::pin(futures_util::stream::iter([
                        Ok(Bytes::from(all)),
                        ok_end(&trailers),
                    ]))
                }
                "Bidi" => Box::pin(futures_util::stream::unfold(
                    (input, Some(guard), trailers),
                    |(mut input, guard, trailers)| async move {
                        let mut guard = guard?;
                        match input.message().await {
                            Ok(Some(m)) => Some((Ok(m), (input, Some(guard), trailers))),
                            Ok(None) => {
                                guard.done = true;
                                guard.stats.ok.fetch_add(1, Relaxed);
                                Some((ok_end(&trailers), (input, None, trailers)))
                            }
                            Err(s) => Some((Err(s), (input, None, trailers))),
                        }
                    },
                )),
                other => return Err(Status::unimplemented(format!("no method {other}"))),
            };
            let mut resp = Response::new(out);
            *resp.metadata_mut() = headers;
            Ok(resp)
        })
    }
}

/// The method name, handed from the HTTP layer to the gRPC handler.
#[derive(Clone)]
struct Method(String);

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
        req.extensions_mut().insert(Method(method));
        let svc = self.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            Ok(grpc.streaming(svc, req).await)
        })
    }
}

async fn serve(f: Flags) {
    let port = f.get("port").unwrap_or("0");
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| {
            eprintln!("bind: {e}");
            std::process::exit(1)
        });
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let stats = Arc::new(Stats::default());
    let mut builder = Server::builder();
    if let Some(d) = f.ms("keepalive-time-ms") {
        builder = builder.http2_keepalive_interval(Some(d));
    }
    if let Some(d) = f.ms("max-age-ms") {
        builder = builder.max_connection_age(d);
    }
    let router = builder.add_service(Echo {
        stats: stats.clone(),
    });
    emit(&json!({"port": port}));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| {
            eprintln!("signal: {e}");
            std::process::exit(1)
        });
    let grace = f.ms("grace-ms").unwrap_or(Duration::from_secs(10));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        term.recv().await;
        let _ = stop_tx.send(());
        // Graceful shutdown (GOAWAY, in-flight calls finish) within grace.
        tokio::time::sleep(grace).await;
        std::process::exit(0);
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if let Err(e) = router
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        })
        .await
    {
        eprintln!("serve: {e}");
    }
    emit(&json!({"stopped": true, "stats": stats.json()}));
}

// ------------------------------------------------------------------ client

async fn channel(f: &Flags) -> Result<Channel, String> {
    let target = f.get("target").ok_or("--target is required")?;
    let endpoint = |addr: &str| -> Result<Endpoint, String> {
        let mut e = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
        if let Some(d) = f.ms("keepalive-time-ms") {
            e = e
                .http2_keep_alive_interval(d)
                .keep_alive_while_idle(f.get("keepalive-permit-without-calls").is_some());
            if let Some(t) = f.ms("keepalive-timeout-ms") {
                e = e.keep_alive_timeout(t);
            }
        }
        Ok(e)
    };
    if target.contains(',') {
        // Several addresses: one balanced channel over all of them (tonic
        // balances with power-of-two-choices, not round robin).
        let eps: Result<Vec<Endpoint>, String> = target.split(',').map(endpoint).collect();
        Ok(Channel::balance_list(eps?.into_iter()))
    } else {
        Ok(endpoint(target)?.connect_lazy())
    }
}

fn parse_metadata(pairs: &[String]) -> MetadataMap {
    let mut md = MetadataMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.ends_with("-bin") {
            let bytes: Vec<u8> = (0..v.len() / 2)
                .filter_map(|i| u8::from_str_radix(&v[2 * i..2 * i + 2], 16).ok())
                .collect();
            if let Ok(key) = k.parse::<tonic::metadata::BinaryMetadataKey>() {
                md.append_bin(key, BinaryMetadataValue::from_bytes(&bytes));
            }
        } else if let (Ok(key), Ok(val)) =
            (k.parse::<tonic::metadata::AsciiMetadataKey>(), v.parse())
        {
            md.append(key, val);
        }
    }
    md
}

fn show(md: &MetadataMap) -> Value {
    let mut out = BTreeMap::new();
    for kv in md.iter() {
        match kv {
            KeyAndValueRef::Ascii(k, v) if k.as_str().starts_with("x-") => {
                out.insert(k.as_str().to_owned(), Value::from(v.to_str().unwrap_or("")));
            }
            KeyAndValueRef::Binary(k, v) if k.as_str().starts_with("x-") => {
                let hex: String = v
                    .to_bytes()
                    .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
                    .unwrap_or_default();
                out.insert(k.as_str().to_owned(), Value::from(hex));
            }
            _ => {}
        }
    }
    json!(out)
}

/// What one call ended with.
#[derive(Default)]
struct Outcome {
    got: Vec<Bytes>,
    headers: MetadataMap,
    trailers: MetadataMap,
    status: Option<Status>,
}

impl Outcome {
    fn code(&self) -> Code {
        self.status.as_ref().map_or(Code::Ok, Status::code)
    }
}

/// One call on `method` (any shape: the wire format is the same),
/// ended by `timeout` as a gRPC deadline.
async fn call(
    ch: &Channel,
    method: &str,
    md: MetadataMap,
    reqs: Vec<Bytes>,
    timeout: Duration,
) -> Outcome {
    let mut out = Outcome::default();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut grpc = tonic::client::Grpc::new(ch.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let mut req = Request::new(futures_util::stream::iter(reqs));
    *req.metadata_mut() = md;
    req.set_timeout(timeout);
    let path = PathAndQuery::try_from(format!("/echo.Echo/{method}"))
        .unwrap_or(PathAndQuery::from_static("/"));
    let work = async {
        if let Err(e) = grpc.ready().await {
            out.status = Some(Status::unavailable(e.to_string()));
            return;
        }
        let mut stream = match grpc.streaming(req, path, RawCodec).await {
            Ok(r) => {
                out.headers = r.metadata().clone();
                r.into_inner()
            }
            Err(s) => {
                out.trailers = s.metadata().clone();
                out.status = Some(s);
                return;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(m)) => out.got.push(m),
                Ok(None) => break,
                Err(s) => {
                    out.trailers = s.metadata().clone();
                    out.status = Some(s);
                    return;
                }
            }
        }
        match stream.trailers().await {
            Ok(t) => out.trailers = t.unwrap_or_default(),
            Err(s) => out.status = Some(s),
        }
    };
    if tokio::time::timeout_at(deadline, work).await.is_err() {
        out.status = Some(Status::deadline_exceeded("deadline exceeded (client)"));
    }
    out
}

fn msg(i: usize, size: usize) -> Bytes {
    Bytes::from(vec![((i * 7 + 1) % 256) as u8; size])
}

async fn client(f: Flags) -> i32 {
    let ch = match channel(&f).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let timeout = Duration::from_secs_f64(f.num("timeout", 10.0));
    let out = match f.positional.first().map(String::as_str) {
        Some("call") => one_call(&ch, &f, timeout).await,
        Some("loop") => loop_calls(&ch, &f, timeout).await,
        Some("cancel") => cancel_call(&ch, &f, timeout).await,
        other => {
            eprintln!("unknown mode {other:?}");
            return 2;
        }
    };
    emit(&out);
    0
}

async fn one_call(ch: &Channel, f: &Flags, timeout: Duration) -> Value {
    let shape = f.get("shape").unwrap_or("unary");
    let n = f.num("messages", 1.0) as usize;
    let size = f.num("size", 16.0) as usize;
    let (method, reqs, want): (&str, Vec<Bytes>, Vec<Bytes>) = match shape {
        "unary" => ("Unary", vec![msg(0, size)], vec![msg(0, size)]),
        "server_stream" => (
            "ServerStream",
            vec![Bytes::from(format!("{n}:{size}"))],
            (0..n)
                .map(|i| Bytes::from(vec![(i % 256) as u8; size]))
                .collect(),
        ),
        "client_stream" => {
            let reqs: Vec<Bytes> = (0..n).map(|i| msg(i, size)).collect();
            let all = Bytes::from(reqs.concat());
            ("ClientStream", reqs, vec![all])
        }
        _ => {
            let reqs: Vec<Bytes> = (0..n).map(|i| msg(i, size)).collect();
            ("Bidi", reqs.clone(), reqs)
        }
    };
    let start = Instant::now();
    let o = call(ch, method, parse_metadata(&f.metadata), reqs, timeout).await;
    json!({
        "shape": shape,
        "code": code_name(o.code()),
        "details": o.status.as_ref().map_or("", |s| s.message()),
        "echo_ok": o.code() == Code::Ok && o.got == want,
        "responses": o.got.len(),
        "response_bytes": o.got.iter().map(Bytes::len).sum::<usize>(),
        "elapsed_ms": start.elapsed().as_millis() as u64,
        "initial_metadata": show(&o.headers),
        "trailing_metadata": show(&o.trailers),
    })
}

async fn loop_calls(ch: &Channel, f: &Flags, timeout: Duration) -> Value {
    let end = Instant::now() + Duration::from_secs_f64(f.num("seconds", 5.0));
    let size = f.num("size", 16.0) as usize;
    let interval = f.ms("interval-ms");
    let threads = f.num("threads", 1.0) as usize;
    let mut tasks = Vec::new();
    for w in 0..threads {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut codes: BTreeMap<String, u64> = BTreeMap::new();
            let mut details = Vec::new();
            let payload = msg(w, size);
            while Instant::now() < end {
                let o = call(
                    &ch,
                    "Unary",
                    MetadataMap::new(),
                    vec![payload.clone()],
                    timeout,
                )
                .await;
                if o.code() == Code::Ok && o.got == [payload.clone()] {
                    ok += 1;
                } else {
                    failed += 1;
                    let name = if o.code() == Code::Ok {
                        "DATA_LOSS"
                    } else {
                        code_name(o.code())
                    };
                    *codes.entry(name.to_owned()).or_default() += 1;
                    if details.len() < 5 {
                        details.push(o.status.map(|s| s.message().to_owned()).unwrap_or_default());
                    }
                }
                if let Some(i) = interval.filter(|d| !d.is_zero()) {
                    tokio::time::sleep(i).await;
                }
            }
            (ok, failed, codes, details)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut details: Vec<String> = Vec::new();
    for t in tasks {
        if let Ok((o, fl, c, d)) = t.await {
            ok += o;
            failed += fl;
            for (k, v) in c {
                *codes.entry(k).or_default() += v;
            }
            details.extend(d);
        }
    }
    details.truncate(5);
    json!({"ok": ok, "failed": failed, "codes": codes, "details": details})
}

async fn stats(ch: &Channel, timeout: Duration) -> Value {
    let o = call(ch, "Stats", MetadataMap::new(), vec![Bytes::new()], timeout).await;
    o.got
        .first()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(json!({}))
}

async fn cancel_call(ch: &Channel, f: &Flags, timeout: Duration) -> Value {
    let shape = f.get("shape").unwrap_or("unary").to_owned();
    let before = stats(ch, timeout).await;
    let mut md = parse_metadata(&f.metadata);
    let (method, req) = if shape == "server_stream" {
        md.insert("x-stream-sleep-ms", AsciiMetadataValue::from_static("20"));
        ("ServerStream", Bytes::from_static(b"100000:16"))
    } else {
        md.insert("x-sleep-ms", AsciiMetadataValue::from_static("60000"));
        ("Unary", Bytes::from_static(b"c"))
    };
    let held = {
        let ch = ch.clone();
        tokio::spawn(async move { call(&ch, method, md, vec![req], timeout).await })
    };
    tokio::time::sleep(
        f.ms("cancel-after-ms")
            .unwrap_or(Duration::from_millis(300)),
    )
    .await;
    let cancelled_at = Instant::now();
    // Dropping the call is how a tonic user cancels it (RST_STREAM).
    let still_running = !held.is_finished();
    held.abort();
    let _ = held.await;
    let mut after = before.clone();
    while cancelled_at.elapsed() < Duration::from_secs(10) {
        after = stats(ch, timeout).await;
        if after["cancelled"].as_u64() > before["cancelled"].as_u64() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    json!({
        "shape": shape,
        "client_cancelled": still_running,
        "stats_before": before,
        "stats_after": after,
        "server_saw_cancel_ms": cancelled_at.elapsed().as_millis() as u64,
    })
}
