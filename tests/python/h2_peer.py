#!/usr/bin/env python3
"""Raw HTTP/2 peers on hyper-h2, for what grpcio cannot do: choose the
RST_STREAM code an upstream sends, see frames (GOAWAY debug data,
trailers-only responses, resets) as a client, and stop reading.

Every event is one JSON line on stdout.

  h2_peer.py upstream [--port 0] [--max-concurrent-streams N] [--hold-ms MS]
      An h2c server that answers gRPC-style requests with an echo of the
      request body after --hold-ms, unless request headers say otherwise:
        x-rst-code: N          reset the stream with error code N ...
        x-rst-when: before-headers | after-headers (default) ... either
                               at once, or x-rst-delay-ms (default 200)
                               after the response headers and one message
      With --max-concurrent-streams, streams over the limit are refused
      (RST_STREAM REFUSED_STREAM, event "refused").
      Prints {"port": N}, then {"event": "connection"|"request"|"reset"...}.

  h2_peer.py client --target HOST:PORT MODE
      request   one gRPC request (--path, --header K=V, --size), printing
                the response headers, data, trailers or reset it gets;
                --cancel-after-ms resets it with CANCEL first
      idle      a connection with no streams, printing GOAWAYs and pings
                until it closes or --seconds pass
      noread    one request for a large server stream, then never sends
                WINDOW_UPDATE: prints how much arrived
"""

import argparse
import asyncio
import json
import select
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


def emit(**fields):
    print(json.dumps(fields), flush=True)


def grpc_frame(payload):
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def headers_dict(headers):
    out = {}
    for k, v in headers:
        k = k.decode() if isinstance(k, bytes) else k
        v = v.decode() if isinstance(v, bytes) else v
        out[k] = v
    return out


# ---------------------------------------------------------------- upstream


class UpstreamConn:
    count = 0

    def __init__(self, reader, writer, args):
        UpstreamConn.count += 1
        self.id = UpstreamConn.count
        self.reader, self.writer, self.args = reader, writer, args
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams = {}  # id -> {"headers": dict, "body": bytearray}
        self.active = 0

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def run(self):
        emit(event="connection", conn=self.id)
        limit = self.args.max_concurrent_streams
        if limit is not None:
            # Advertised in the first SETTINGS frame; enforced below with
            # REFUSED_STREAM (RFC 9113 5.1.2) rather than by hyper-h2, which
            # would fail the whole connection.
            self.conn.local_settings = h2.settings.Settings(
                client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit}
            )
        self.conn.initiate_connection()
        if limit is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1}
            )
        self.flush()
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for ev in self.conn.receive_data(data):
                    self.handle(ev)
                self.flush()
                await self.writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError) as e:
            emit(event="error", conn=self.id, error=str(e))
        emit(event="closed", conn=self.id)
        self.writer.close()

    def finish(self, sid):
        if self.streams.pop(sid, None) is not None:
            self.active -= 1

    def handle(self, ev):
        if isinstance(ev, h2.events.RequestReceived):
            h = headers_dict(ev.headers)
            self.streams[ev.stream_id] = {"headers": h, "body": bytearray()}
            self.active += 1
            if not (self.args.max_concurrent_streams is not None and self.active > self.args.max_concurrent_streams):
                emit(event="request", conn=self.id, stream=ev.stream_id, active=self.active, path=h.get(":path"))
            code = h.get("x-rst-code")
            if code is not None and h.get("x-rst-when") == "before-headers":
                self.conn.reset_stream(ev.stream_id, int(code))
                self.finish(ev.stream_id)
            elif code is not None:
                self.streams[ev.stream_id]["resetting"] = True
                self.respond_headers(ev.stream_id)
                self.conn.send_data(ev.stream_id, grpc_frame(b"partial"))
                delay = float(h.get("x-rst-delay-ms", "200")) / 1000.0
                asyncio.get_running_loop().call_later(delay, self.reset, ev.stream_id, int(code))
            elif self.args.max_concurrent_streams is not None and self.active > self.args.max_concurrent_streams:
                # Over the advertised limit (possible before the peer has
                # seen our SETTINGS): refused, so the peer may retry it.
                emit(event="refused", conn=self.id, stream=ev.stream_id)
                self.conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                self.finish(ev.stream_id)
        elif isinstance(ev, h2.events.DataReceived):
            s = self.streams.get(ev.stream_id)
            if s is not None:
                s["body"] += ev.data
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            if ev.stream_id in self.streams and not self.streams[ev.stream_id].get("resetting"):
                loop = asyncio.get_running_loop()
                loop.call_later(self.args.hold_ms / 1000.0, self.respond, ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            emit(event="reset", conn=self.id, stream=ev.stream_id, code=int(ev.error_code))
            self.finish(ev.stream_id)

    def reset(self, sid, code):
        if sid in self.streams:
            self.conn.reset_stream(sid, code)
            self.finish(sid)
            self.flush()

    def respond_headers(self, sid):
        self.conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])

    def respond(self, sid):
        s = self.streams.get(sid)
        if s is None:
            return
        try:
            self.respond_headers(sid)
            body = bytes(s["body"])
            # The request's messages, echoed as one body.
            if body:
                self.conn.send_data(sid, body)
            self.conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        except h2.exceptions.ProtocolError:
            pass
        self.finish(sid)
        self.flush()


async def serve_upstream(args):
    async def on_conn(reader, writer):
        await UpstreamConn(reader, writer, args).run()

    server = await asyncio.start_server(on_conn, args.host, args.port)
    emit(port=server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------ client


class Client:
    def __init__(self, target, window=None):
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setblocking(True)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.closed = False
        emit(event="connected", local_port=self.sock.getsockname()[1])

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, extra, body, end_stream=True):
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "goaway-test"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] + extra
        self.conn.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end_stream)
        self.flush()
        return sid

    def pump(self, timeout, ack_data=True):
        """Reads for up to `timeout`, emitting events; returns them."""
        r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not r:
            return []
        try:
            data = self.sock.recv(65536)
        except ConnectionError as e:
            data = b""
            emit(event="socket_error", error=str(e))
        if not data:
            self.closed = True
            emit(event="closed")
            return []
        events = self.conn.receive_data(data)
        for ev in events:
            self.show(ev, ack_data)
        self.flush()
        return events

    def show(self, ev, ack_data):
        if isinstance(ev, h2.events.ResponseReceived):
            emit(event="response", stream=ev.stream_id, headers=headers_dict(ev.headers),
                 end_stream=ev.stream_ended is not None)
        elif isinstance(ev, h2.events.TrailersReceived):
            emit(event="trailers", stream=ev.stream_id, headers=headers_dict(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            if ack_data:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            emit(event="data", stream=ev.stream_id, len=len(ev.data))
        elif isinstance(ev, h2.events.StreamReset):
            emit(event="reset", stream=ev.stream_id, code=int(ev.error_code))
        elif isinstance(ev, h2.events.StreamEnded):
            emit(event="end", stream=ev.stream_id)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            debug = ev.additional_data.decode("latin-1") if ev.additional_data else ""
            emit(event="goaway", code=int(ev.error_code), last_stream_id=ev.last_stream_id, debug=debug)
        elif isinstance(ev, h2.events.PingReceived):
            emit(event="ping")


def idle(args):
    """A connection with no streams, framed by hand: hyper-h2 considers a
    connection over at the first GOAWAY, but a graceful drain sends a PING
    and a second GOAWAY after it (RFC 9113 6.8), which we answer and show."""
    host, port = args.target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    emit(event="connected", local_port=sock.getsockname()[1])
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0, b""))
    buf = b""
    end = time.time() + args.seconds
    closed = False
    while not closed and time.time() < end:
        r, _, _ = select.select([sock], [], [], max(0, end - time.time()))
        if not r:
            break
        try:
            data = sock.recv(65536)
        except ConnectionError as e:
            emit(event="socket_error", error=str(e))
            data = b""
        if not data:
            closed = True
            emit(event="closed")
            break
        buf += data
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            payload, buf = buf[9 : 9 + length], buf[9 + length :]
            if kind == 0x4 and not flags & 0x1:
                sock.sendall(frame(0x4, 0x1, 0, b""))
            elif kind == 0x6 and not flags & 0x1:
                emit(event="ping")
                sock.sendall(frame(0x6, 0x1, 0, payload))
            elif kind == 0x7:
                last, code = struct.unpack(">II", payload[:8])
                emit(event="goaway", code=code, last_stream_id=last & 0x7FFFFFFF,
                     debug=payload[8:].decode("latin-1"))
    emit(event="done", closed=closed)


def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def run_client(args):
    extra = []
    for p in args.header or []:
        k, v = p.split("=", 1)
        extra.append((k, v))
    if args.mode == "request":
        c = Client(args.target)
        sid = c.request(args.path, extra, grpc_frame(b"r" * args.size))
        end = time.time() + args.seconds
        cancel_at = time.time() + args.cancel_after_ms / 1000.0 if args.cancel_after_ms is not None else None
        done = False
        while not done and not c.closed and time.time() < end:
            if cancel_at is not None and time.time() >= cancel_at:
                c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                c.flush()
                emit(event="cancelled", stream=sid)
                cancel_at = None
                # Stay a little to see that nothing more comes for it.
                end = min(end, time.time() + 1.0)
            wait = end - time.time()
            if cancel_at is not None:
                wait = min(wait, cancel_at - time.time())
            for ev in c.pump(wait):
                if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == sid:
                    done = True
        emit(event="done", finished=done)
    elif args.mode == "idle":
        idle(args)
    elif args.mode == "noread":
        # Default windows (64 KiB per stream and connection) that are never
        # replenished: the peer may send that much and then must stop.
        c = Client(args.target)
        c.request(args.path, extra, grpc_frame(args.body.encode()))
        received = 0
        end = time.time() + args.seconds
        last_report = 0
        while not c.closed and time.time() < end:
            for ev in c.pump(min(0.2, end - time.time()), ack_data=False):
                if isinstance(ev, h2.events.DataReceived):
                    received += len(ev.data)
            if time.time() - last_report > 0.5:
                emit(event="progress", received=received)
                last_report = time.time()
        emit(event="done", received=received, closed=c.closed)
    else:
        raise SystemExit(f"unknown mode {args.mode}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("upstream")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--max-concurrent-streams", type=int)
    s.add_argument("--hold-ms", type=float, default=0)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--path", default="/echo.Echo/Unary")
    c.add_argument("--header", action="append", help="K=V")
    c.add_argument("--size", type=int, default=16)
    c.add_argument("--body", default="")
    c.add_argument("--seconds", type=float, default=10)
    c.add_argument("--cancel-after-ms", type=float)
    c.add_argument("mode", choices=["request", "idle", "noread"])
    args = ap.parse_args()
    if args.cmd == "upstream":
        asyncio.run(serve_upstream(args))
    else:
        run_client(args)


if __name__ == "__main__":
    main()
