#!/usr/bin/env python3
"""A gRPC peer on Python grpcio (gRPC C-core), for interop tests.

No generated code: methods take and return raw bytes.

  grpc_peer.py server [--port 0] [--option KEY=VALUE ...]
      Serves echo.Echo and prints {"port": N} once listening, then one JSON
      line per finished call when --log-calls is given.

  grpc_peer.py client --target HOST:PORT [--option KEY=VALUE ...] MODE ...
      Runs MODE and prints one JSON summary line.

Methods of echo.Echo:
  Unary          echoes the request; metadata x-status/x-message
                 (percent-encoded) make it fail with that status;
                 x-sleep-ms delays the answer (ended early by a cancel
                 or the deadline); x-echo-* request metadata is returned
                 as initial and trailing metadata.
  ServerStream   request b"N:SIZE" -> N messages of SIZE bytes
  ClientStream   returns the concatenation of all requests
  Bidi           echoes every request as it arrives
  Stats          returns JSON: calls seen and calls cancelled by the client

  More request metadata: x-report-deadline makes the server return the
  time left before the call's deadline as initial metadata
  x-time-remaining-ms; on ServerStream, x-status/x-message fail the call
  after its messages were sent (status in trailers, not trailers-only).

Client modes (one JSON line each):
  loop, concurrent, idle   calls for --seconds (see the code)
  call                     one call of --shape with --metadata, --messages
                           and --size; prints the status, the x-echo-*
                           metadata seen and whether the echo matched
  futures                  --count unary calls started at once on one
                           channel, then all awaited
  cancel                   one call of --shape cancelled by the client
                           after --cancel-after-ms, then the server's
                           Stats once it has counted the cancellation
"""

import argparse
import json
import sys
import threading
import time
import urllib.parse
from concurrent import futures

import grpc

STATS = {"calls": 0, "cancelled": 0, "ok": 0}
STATS_LOCK = threading.Lock()


def parse_options(pairs):
    out = []
    for p in pairs or []:
        k, v = p.split("=", 1)
        try:
            v = int(v)
        except ValueError:
            pass
        out.append((k, v))
    return out


def bump(key):
    with STATS_LOCK:
        STATS[key] += 1


def echo_metadata(ctx):
    md = [(k, v) for k, v in ctx.invocation_metadata() if k.startswith("x-echo-")]
    initial = list(md)
    request = dict(ctx.invocation_metadata())
    if "x-report-deadline" in request:
        left = ctx.time_remaining()
        initial.append(("x-time-remaining-ms", "none" if left is None else str(int(left * 1000))))
    if "x-report-peer" in request:
        # Who the app sees: the TCP peer, and every x-forwarded-for entry.
        initial.append(("x-peer", ctx.peer()))
        seen = [v for k, v in ctx.invocation_metadata() if k == "x-forwarded-for"]
        initial.append(("x-forwarded-for-seen", " | ".join(seen) or "none"))
    if initial:
        ctx.send_initial_metadata(initial)
    if md:
        ctx.set_trailing_metadata(md)
    return request


def sleep_unless_cancelled(ctx, seconds):
    """Sleeps; False (and counted) if the call ended first."""
    ended = threading.Event()
    ctx.add_callback(ended.set)
    ended.wait(seconds)
    if not ctx.is_active():
        bump("cancelled")
        return False
    return True


def unary(req, ctx):
    bump("calls")
    md = echo_metadata(ctx)
    sleep_ms = int(md.get("x-sleep-ms", "0"))
    if sleep_ms and not sleep_unless_cancelled(ctx, sleep_ms / 1000.0):
        return b""
    if "x-status" in md:
        ctx.abort(grpc.StatusCode(_code(int(md["x-status"]))), status_message(md))
    bump("ok")
    return req


def status_message(md):
    """x-message, percent-decoded (metadata is ASCII; messages need not be)."""
    return urllib.parse.unquote(md.get("x-message", ""))


def _code(n):
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c.value
    raise ValueError(n)


def server_stream(req, ctx):
    bump("calls")
    md = echo_metadata(ctx)
    n, size = (int(x) for x in req.decode().split(":"))
    # A cancelled call is counted when the RPC ends, not when this generator
    # notices: grpcio may stop iterating it (leaving it parked at `yield`)
    # as soon as a send fails.
    finished = threading.Event()

    def on_done():
        if not finished.is_set() and not ctx.is_active():
            bump("cancelled")

    ctx.add_callback(on_done)
    ended = threading.Event()
    ctx.add_callback(ended.set)
    for i in range(n):
        if not ctx.is_active():
            return
        yield bytes([i % 256]) * size
        if "x-stream-sleep-ms" in md:
            ended.wait(int(md["x-stream-sleep-ms"]) / 1000.0)
            if not ctx.is_active():
                return
    finished.set()
    if "x-status" in md:
        ctx.abort(grpc.StatusCode(_code(int(md["x-status"]))), status_message(md))
    bump("ok")


def client_stream(reqs, ctx):
    bump("calls")
    echo_metadata(ctx)
    out = b"".join(reqs)
    bump("ok")
    return out


def bidi(reqs, ctx):
    bump("calls")
    echo_metadata(ctx)
    try:
        for r in reqs:
            yield r
    except Exception:
        bump("cancelled")
        raise
    if not ctx.is_active():
        bump("cancelled")
        return
    bump("ok")


def stats(req, ctx):
    with STATS_LOCK:
        return json.dumps(STATS).encode()


def serve(args):
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Stats": grpc.unary_unary_rpc_method_handler(stats),
        },
    )
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ] + parse_options(args.option)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), options=options)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    stop = threading.Event()

    import signal

    def on_term(*_):
        # Graceful stop: GOAWAY, then finish in-flight calls.
        threading.Thread(target=lambda: (server.stop(args.grace).wait(), stop.set()), daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    stop.wait()
    print(json.dumps({"stopped": True, "stats": STATS}), flush=True)


def client(args):
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ] + parse_options(args.option)
    channel = grpc.insecure_channel(args.target, options=options)
    unary_call = channel.unary_unary("/echo.Echo/Unary")
    result = {"ok": 0, "failed": 0, "codes": {}}

    def record(code, detail=None):
        if code is None:
            result["ok"] += 1
        else:
            result["failed"] += 1
            name = code.name
            result["codes"][name] = result["codes"].get(name, 0) + 1
            if detail:
                result.setdefault("details", [])
                if len(result["details"]) < 5:
                    result["details"].append(detail)

    if args.mode == "loop":
        # Calls back to back for --seconds, each with a deadline.
        end = time.time() + args.seconds
        payload = b"x" * args.size
        while time.time() < end:
            try:
                got = unary_call(payload, timeout=args.timeout)
                if got != payload:
                    record(grpc.StatusCode.DATA_LOSS, "echo mismatch")
                else:
                    record(None)
            except grpc.RpcError as e:
                record(e.code(), e.details())
            if args.interval_ms:
                time.sleep(args.interval_ms / 1000.0)
    elif args.mode == "concurrent":
        # --threads callers in parallel for --seconds.
        end = time.time() + args.seconds
        lock = threading.Lock()

        def worker():
            payload = b"y" * args.size
            while time.time() < end:
                try:
                    got = unary_call(payload, timeout=args.timeout)
                    code = None if got == payload else grpc.StatusCode.DATA_LOSS
                    with lock:
                        record(code)
                except grpc.RpcError as e:
                    with lock:
                        record(e.code(), e.details())

        ts = [threading.Thread(target=worker) for _ in range(args.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    elif args.mode == "idle":
        # One call to connect, then sit idle (keepalive pings run).
        try:
            unary_call(b"hello", timeout=args.timeout)
            record(None)
        except grpc.RpcError as e:
            record(e.code(), e.details())
        time.sleep(args.seconds)
        # And one more call afterwards: it must still work (reconnecting).
        try:
            unary_call(b"again", timeout=args.timeout)
            record(None)
        except grpc.RpcError as e:
            record(e.code(), e.details())
    elif args.mode == "call":
        result = one_call(channel, args)
    elif args.mode == "futures":
        # --count calls in flight at once on this one channel (one HTTP/2
        # connection): all are started before any is awaited.
        payload = b"f" * args.size
        md = parse_metadata(args.metadata)
        start = time.time()
        futs = [unary_call.future(payload, timeout=args.timeout, metadata=md) for _ in range(args.count)]
        for f in futs:
            try:
                got = f.result()
                record(None if got == payload else grpc.StatusCode.DATA_LOSS, None if got == payload else "echo mismatch")
            except grpc.RpcError as e:
                record(e.code(), e.details())
        result["elapsed_ms"] = int((time.time() - start) * 1000)
    elif args.mode == "cancel":
        result = cancel_call(channel, args)
    else:
        raise SystemExit(f"unknown mode {args.mode}")
    channel.close()
    print(json.dumps(result), flush=True)


def parse_metadata(pairs):
    """KEY=VALUE pairs; a key ending in -bin takes hex and sends bytes."""
    out = []
    for p in pairs or []:
        k, v = p.split("=", 1)
        out.append((k, bytes.fromhex(v) if k.endswith("-bin") else v))
    return out


def show_metadata(md):
    """x-* metadata as a dict (binary values as hex)."""
    out = {}
    for k, v in md or ():
        if k.startswith("x-"):
            out[k] = v.hex() if isinstance(v, bytes) else v
    return out


def one_call(channel, args):
    """One call of --shape; reports what a gRPC user would see."""
    md = parse_metadata(args.metadata)
    size, n = args.size, args.messages
    requests = [bytes([(i * 7 + 1) % 256]) * size for i in range(n)]
    out = {"shape": args.shape, "code": "OK", "details": "", "responses": 0, "response_bytes": 0}
    start = time.time()
    call = None
    got = []
    try:
        if args.shape == "unary":
            resp, call = channel.unary_unary("/echo.Echo/Unary").with_call(
                requests[0], timeout=args.timeout, metadata=md
            )
            got, want = [resp], [requests[0]]
        elif args.shape == "client_stream":
            resp, call = channel.stream_unary("/echo.Echo/ClientStream").with_call(
                iter(requests), timeout=args.timeout, metadata=md
            )
            got, want = [resp], [b"".join(requests)]
        elif args.shape == "server_stream":
            call = channel.unary_stream("/echo.Echo/ServerStream")(
                f"{n}:{size}".encode(), timeout=args.timeout, metadata=md
            )
            want = [bytes([i % 256]) * size for i in range(n)]
            for r in call:
                got.append(r)
        elif args.shape == "bidi":
            call = channel.stream_stream("/echo.Echo/Bidi")(iter(requests), timeout=args.timeout, metadata=md)
            want = requests
            for r in call:
                got.append(r)
        elif args.shape == "stats":
            resp = channel.unary_unary("/echo.Echo/Stats")(b"", timeout=args.timeout)
            return {"shape": "stats", "code": "OK", "stats": json.loads(resp)}
        else:
            raise SystemExit(f"unknown shape {args.shape}")
        out["echo_ok"] = got == want
    except grpc.RpcError as e:
        call = e
        out["code"] = e.code().name
        out["details"] = e.details() or ""
        out["echo_ok"] = False
    out["elapsed_ms"] = int((time.time() - start) * 1000)
    out["responses"] = len(got)
    out["response_bytes"] = sum(len(r) for r in got)
    if call is not None:
        out["initial_metadata"] = show_metadata(call.initial_metadata())
        out["trailing_metadata"] = show_metadata(call.trailing_metadata())
    return out


def cancel_call(channel, args):
    """Starts a call the server holds, cancels it, then waits (up to 10s)
    for the server to count the cancellation."""
    md = parse_metadata(args.metadata)
    stats_call = channel.unary_unary("/echo.Echo/Stats")
    before = json.loads(stats_call(b"", timeout=args.timeout))
    if args.shape == "unary":
        call = channel.unary_unary("/echo.Echo/Unary").future(
            b"c", timeout=args.timeout, metadata=md + [("x-sleep-ms", "60000")]
        )
    elif args.shape == "server_stream":
        call = channel.unary_stream("/echo.Echo/ServerStream")(
            b"100000:16", timeout=args.timeout, metadata=md + [("x-stream-sleep-ms", "20")]
        )
    else:
        raise SystemExit(f"cancel: unsupported shape {args.shape}")
    time.sleep(args.cancel_after_ms / 1000.0)
    cancelled_at = time.time()
    call.cancel()
    out = {"shape": args.shape, "client_cancelled": call.cancelled(), "stats_before": before}
    stats = before
    while time.time() < cancelled_at + 10:
        stats = json.loads(stats_call(b"", timeout=args.timeout))
        if stats["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.05)
    out["stats_after"] = stats
    out["server_saw_cancel_ms"] = int((time.time() - cancelled_at) * 1000)
    return out


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--workers", type=int, default=64)
    s.add_argument("--grace", type=float, default=5.0)
    s.add_argument("--option", action="append")
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--option", action="append")
    c.add_argument("--seconds", type=float, default=5.0)
    c.add_argument("--timeout", type=float, default=10.0)
    c.add_argument("--size", type=int, default=16)
    c.add_argument("--threads", type=int, default=4)
    c.add_argument("--interval-ms", type=float, default=0)
    c.add_argument("--shape", default="unary", choices=["unary", "client_stream", "server_stream", "bidi", "stats"])
    c.add_argument("--metadata", action="append", help="KEY=VALUE (hex for -bin keys)")
    c.add_argument("--messages", type=int, default=1)
    c.add_argument("--count", type=int, default=100)
    c.add_argument("--cancel-after-ms", type=float, default=300)
    c.add_argument("mode", choices=["loop", "concurrent", "idle", "call", "futures", "cancel"])
    args = ap.parse_args()
    if args.cmd == "server":
        serve(args)
    else:
        client(args)


if __name__ == "__main__":
    main()
