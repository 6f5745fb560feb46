#!/usr/bin/env python3
"""A gRPC peer on Python grpcio (gRPC C-core), for interop tests.

No generated code: methods take and return raw bytes.

  grpc_peer.py server [--port 0] [--option KEY=VALUE ...]
      Serves echo.Echo and prints {"port": N} once listening, then one JSON
      line per finished call when --log-calls is given.

  grpc_peer.py client --target HOST:PORT [--option KEY=VALUE ...] MODE ...
      Runs MODE and prints one JSON summary line.

Methods of echo.Echo:
  Unary          echoes the request; metadata x-status/x-message make it
                 fail with that status; x-sleep-ms delays the answer
                 (honouring the deadline); x-echo-* request metadata is
                 returned as initial and trailing metadata.
  ServerStream   request b"N:SIZE" -> N messages of SIZE bytes
  ClientStream   returns the concatenation of all requests
  Bidi           echoes every request as it arrives
  Stats          returns JSON: calls seen and calls cancelled by the client
"""

import argparse
import json
import sys
import threading
import time
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
    if md:
        ctx.send_initial_metadata(md)
        ctx.set_trailing_metadata(md)
    return dict(ctx.invocation_metadata())


def unary(req, ctx):
    bump("calls")
    md = echo_metadata(ctx)
    sleep_ms = int(md.get("x-sleep-ms", "0"))
    if sleep_ms:
        end = time.time() + sleep_ms / 1000.0
        while time.time() < end:
            if not ctx.is_active():
                bump("cancelled")
                return b""
            time.sleep(0.005)
    if "x-status" in md:
        ctx.abort(grpc.StatusCode(_code(int(md["x-status"]))), md.get("x-message", ""))
    bump("ok")
    return req


def _code(n):
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c.value
    raise ValueError(n)


def server_stream(req, ctx):
    bump("calls")
    echo_metadata(ctx)
    n, size = (int(x) for x in req.decode().split(":"))
    for i in range(n):
        if not ctx.is_active():
            bump("cancelled")
            return
        yield bytes([i % 256]) * size
        md = dict(ctx.invocation_metadata())
        if "x-stream-sleep-ms" in md:
            time.sleep(int(md["x-stream-sleep-ms"]) / 1000.0)
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
    else:
        raise SystemExit(f"unknown mode {args.mode}")
    channel.close()
    print(json.dumps(result), flush=True)


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
    c.add_argument("mode", choices=["loop", "concurrent", "idle"])
    args = ap.parse_args()
    if args.cmd == "server":
        serve(args)
    else:
        client(args)


if __name__ == "__main__":
    main()
