#!/usr/bin/env node
// A gRPC peer on @grpc/grpc-js for goaway's interop matrix: the same
// echo.Echo service and client modes as tests/python/grpc_peer.py (see
// tests/peers/README.md). Messages are raw bytes; no generated code.
'use strict';

const grpc = require('@grpc/grpc-js');

const raw = { serialize: (b) => b, deserialize: (b) => b };
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

function method(name, requestStream, responseStream) {
  return {
    path: `/echo.Echo/${name}`,
    requestStream,
    responseStream,
    requestSerialize: raw.serialize,
    requestDeserialize: raw.deserialize,
    responseSerialize: raw.serialize,
    responseDeserialize: raw.deserialize,
  };
}

const SERVICE = {
  Unary: method('Unary', false, false),
  Stats: method('Stats', false, false),
  ServerStream: method('ServerStream', false, true),
  ClientStream: method('ClientStream', true, false),
  Bidi: method('Bidi', true, true),
};

function parseFlags(argv) {
  const flags = { metadata: [] };
  const positional = [];
  const bools = new Set(['keepalive-permit-without-calls', 'permit-without-stream']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      positional.push(a);
      continue;
    }
    const k = a.slice(2);
    const v = bools.has(k) ? true : argv[++i];
    if (k === 'metadata') flags.metadata.push(v);
    else flags[k] = v;
  }
  return { flags, positional };
}

const emit = (v) => process.stdout.write(JSON.stringify(v) + '\n');
const sleepMs = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ server

const STATS = { calls: 0, cancelled: 0, ok: 0 };

function first(md, key) {
  const v = md.get(key);
  return v.length ? v[0].toString() : undefined;
}

// Sends x-echo-* request metadata back as headers (plus the time left
// before the deadline when asked) and returns it for the trailers.
function echoMetadata(call) {
  const echo = new grpc.Metadata();
  for (const [k, vs] of Object.entries(call.metadata.getMap())) {
    if (k.startsWith('x-echo-')) for (const v of call.metadata.get(k)) echo.add(k, v);
  }
  const header = echo.clone();
  if (first(call.metadata, 'x-report-deadline') !== undefined) {
    const d = call.getDeadline();
    const left = d === Infinity || d === undefined ? 'none' : String(Math.round(new Date(d).getTime() - Date.now()));
    header.set('x-time-remaining-ms', left);
  }
  if (Object.keys(header.getMap()).length) call.sendMetadata(header);
  return echo;
}

function requested(call, trailer) {
  const s = first(call.metadata, 'x-status');
  if (s === undefined) return null;
  const m = first(call.metadata, 'x-message') || '';
  return { code: Number(s), details: decodeURIComponent(m), metadata: trailer };
}

// Waits ms; false (counted as cancelled) if the call ended first.
function sleepUnlessCancelled(call, ms) {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(true), ms);
    call.on('cancelled', () => {
      clearTimeout(t);
      STATS.cancelled++;
      resolve(false);
    });
  });
}

const handlers = {
  async Unary(call, callback) {
    STATS.calls++;
    const trailer = echoMetadata(call);
    const ms = Number(first(call.metadata, 'x-sleep-ms') || 0);
    if (ms && !(await sleepUnlessCancelled(call, ms))) return;
    const err = requested(call, trailer);
    if (err) return callback(err);
    STATS.ok++;
    callback(null, call.request, trailer);
  },
  Stats(call, callback) {
    callback(null, Buffer.from(JSON.stringify(STATS)));
  },
  async ServerStream(call) {
    STATS.calls++;
    const trailer = echoMetadata(call);
    const [n, size] = call.request.toString().split(':').map(Number);
    const pause = Number(first(call.metadata, 'x-stream-sleep-ms') || 0);
    let cancelled = false;
    call.on('cancelled', () => {
      if (!cancelled) STATS.cancelled++;
      cancelled = true;
    });
    for (let i = 0; i < n && !cancelled; i++) {
      // Respect flow control: wait for drain when the buffer is full.
      if (!call.write(Buffer.alloc(size, i % 256))) await new Promise((r) => call.once('drain', r));
      if (pause) await sleepMs(pause);
    }
    if (cancelled) return;
    const err = requested(call, trailer);
    if (err) return call.emit('error', err);
    STATS.ok++;
    call.end(trailer);
  },
  ClientStream(call, callback) {
    STATS.calls++;
    const trailer = echoMetadata(call);
    const parts = [];
    call.on('data', (m) => parts.push(m));
    call.on('cancelled', () => STATS.cancelled++);
    call.on('end', () => {
      STATS.ok++;
      callback(null, Buffer.concat(parts), trailer);
    });
  },
  Bidi(call) {
    STATS.calls++;
    const trailer = echoMetadata(call);
    call.on('data', (m) => call.write(m));
    call.on('cancelled', () => STATS.cancelled++);
    call.on('end', () => {
      STATS.ok++;
      call.end(trailer);
    });
  },
};

function serve(f) {
  const options = {
    'grpc.max_receive_message_length': 64 << 20,
    'grpc.max_send_message_length': 64 << 20,
  };
  if (f['max-age-ms']) options['grpc.max_connection_age_ms'] = Number(f['max-age-ms']);
  if (f['max-age-grace-ms']) options['grpc.max_connection_age_grace_ms'] = Number(f['max-age-grace-ms']);
  if (f['keepalive-time-ms']) options['grpc.keepalive_time_ms'] = Number(f['keepalive-time-ms']);
  if (f['permit-without-stream']) options['grpc.keepalive_permit_without_calls'] = 1;
  const server = new grpc.Server(options);
  server.addService(SERVICE, handlers);
  server.bindAsync(`127.0.0.1:${f.port || 0}`, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      console.error(err);
      process.exit(1);
    }
    emit({ port });
  });
  const grace = Number(f['grace-ms'] || 10000);
  process.on('SIGTERM', () => {
    // Graceful: GOAWAY to every client, in-flight calls finish.
    const timer = setTimeout(() => server.forceShutdown(), grace);
    server.tryShutdown(() => {
      clearTimeout(timer);
      emit({ stopped: true, stats: STATS });
      process.exit(0);
    });
  });
}

// ------------------------------------------------------------------ client

function makeClient(f) {
  const options = {
    'grpc.max_receive_message_length': 64 << 20,
    'grpc.max_send_message_length': 64 << 20,
  };
  let target = f.target;
  if (target.includes(',')) {
    // Several addresses: one round-robin channel over all of them, as a
    // headless Service's DNS name would give it.
    target = `ipv4:${target}`;
    options['grpc.service_config'] = JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] });
    options['grpc.default_authority'] = 'echo.default.svc:50051';
  }
  if (f['keepalive-time-ms']) {
    options['grpc.keepalive_time_ms'] = Number(f['keepalive-time-ms']);
    if (f['keepalive-timeout-ms']) options['grpc.keepalive_timeout_ms'] = Number(f['keepalive-timeout-ms']);
    if (f['keepalive-permit-without-calls']) options['grpc.keepalive_permit_without_calls'] = 1;
  }
  return new grpc.Client(target, grpc.credentials.createInsecure(), options);
}

function parseMetadata(pairs) {
  const md = new grpc.Metadata();
  for (const p of pairs) {
    const i = p.indexOf('=');
    const k = p.slice(0, i);
    const v = p.slice(i + 1);
    md.add(k, k.endsWith('-bin') ? Buffer.from(v, 'hex') : v);
  }
  return md;
}

function show(md) {
  const out = {};
  if (!md) return out;
  for (const k of Object.keys(md.getMap()).sort()) {
    if (!k.startsWith('x-')) continue;
    const v = md.get(k)[0];
    out[k] = Buffer.isBuffer(v) ? v.toString('hex') : String(v);
  }
  return out;
}

const msg = (i, size) => Buffer.alloc(size, (i * 7 + 1) % 256);
const deadline = (f) => new Date(Date.now() + Number(f.timeout || 10) * 1000);

// Starts one call of `shape`; resolves with what a gRPC user would see.
function call(client, f, shape, md, reqs) {
  return new Promise((resolve) => {
    const out = { got: [], headers: null, status: null, call: null };
    const opts = { deadline: deadline(f) };
    const path = SERVICE[shape].path;
    const done = (s) => {
      if (out.status) return;
      out.status = s;
      resolve(out);
    };
    let c;
    const onReply = (err, resp) => {
      if (!err) out.got.push(resp);
    };
    if (shape === 'Unary' || shape === 'Stats') {
      c = client.makeUnaryRequest(path, raw.serialize, raw.deserialize, reqs[0], md, opts, onReply);
    } else if (shape === 'ServerStream') {
      c = client.makeServerStreamRequest(path, raw.serialize, raw.deserialize, reqs[0], md, opts);
    } else if (shape === 'ClientStream') {
      c = client.makeClientStreamRequest(path, raw.serialize, raw.deserialize, md, opts, onReply);
    } else {
      c = client.makeBidiStreamRequest(path, raw.serialize, raw.deserialize, md, opts);
    }
    out.call = c;
    c.on('metadata', (h) => (out.headers = h));
    c.on('data', (m) => out.got.push(m));
    c.on('error', () => {});
    // For unary and client-streaming calls the callback runs before
    // 'status'; for streams all 'data' events come before it.
    c.on('status', (s) => setImmediate(() => done(s)));
    if (shape === 'ClientStream' || shape === 'Bidi') {
      for (const r of reqs) c.write(r);
      c.end();
    }
  });
}

async function oneCall(client, f) {
  const shape = f.shape || 'unary';
  const n = Number(f.messages || 1);
  const size = Number(f.size || 16);
  let name;
  let reqs = [];
  let want = [];
  if (shape === 'unary') {
    name = 'Unary';
    reqs = [msg(0, size)];
    want = reqs;
  } else if (shape === 'server_stream') {
    name = 'ServerStream';
    reqs = [Buffer.from(`${n}:${size}`)];
    for (let i = 0; i < n; i++) want.push(Buffer.alloc(size, i % 256));
  } else {
    name = shape === 'bidi' ? 'Bidi' : 'ClientStream';
    for (let i = 0; i < n; i++) reqs.push(msg(i, size));
    want = shape === 'bidi' ? reqs : [Buffer.concat(reqs)];
  }
  const start = Date.now();
  const o = await call(client, f, name, parseMetadata(f.metadata), reqs);
  const ok = o.status.code === grpc.status.OK;
  return {
    shape,
    code: CODE_NAMES[o.status.code],
    details: ok ? '' : o.status.details || '',
    echo_ok: ok && o.got.length === want.length && o.got.every((g, i) => g.equals(want[i])),
    responses: o.got.length,
    response_bytes: o.got.reduce((a, g) => a + g.length, 0),
    elapsed_ms: Date.now() - start,
    initial_metadata: show(o.headers),
    trailing_metadata: show(o.status.metadata),
  };
}

async function loop(client, f) {
  const end = Date.now() + Number(f.seconds || 5) * 1000;
  const interval = Number(f['interval-ms'] || 0);
  const size = Number(f.size || 16);
  const out = { ok: 0, failed: 0, codes: {} };
  const worker = async (w) => {
    const payload = msg(w, size);
    while (Date.now() < end) {
      const o = await call(client, f, 'Unary', new grpc.Metadata(), [payload]);
      if (o.status.code === grpc.status.OK && o.got.length === 1 && o.got[0].equals(payload)) {
        out.ok++;
      } else {
        out.failed++;
        const name = o.status.code === grpc.status.OK ? 'DATA_LOSS' : CODE_NAMES[o.status.code];
        out.codes[name] = (out.codes[name] || 0) + 1;
        out.details = out.details || [];
        if (out.details.length < 5) out.details.push(o.status.details);
      }
      if (interval) await sleepMs(interval);
    }
  };
  await Promise.all(Array.from({ length: Number(f.threads || 1) }, (_, w) => worker(w)));
  return out;
}

async function callStats(client, f) {
  const o = await call(client, f, 'Stats', new grpc.Metadata(), [Buffer.alloc(0)]);
  return o.got.length ? JSON.parse(o.got[0].toString()) : {};
}

async function cancelCall(client, f) {
  const shape = f.shape || 'unary';
  const before = await callStats(client, f);
  const md = parseMetadata(f.metadata);
  let pending;
  if (shape === 'server_stream') {
    md.set('x-stream-sleep-ms', '20');
    pending = call(client, f, 'ServerStream', md, [Buffer.from('100000:16')]);
  } else {
    md.set('x-sleep-ms', '60000');
    pending = call(client, f, 'Unary', md, [Buffer.from('c')]);
  }
  await sleepMs(Number(f['cancel-after-ms'] || 300));
  const cancelledAt = Date.now();
  // clientMain records every call the client starts; the held one is the
  // last (the Stats calls before it have finished).
  lastCall.cancel();
  const o = await pending;
  let after = before;
  while (Date.now() - cancelledAt < 10000) {
    after = await callStats(client, f);
    if (after.cancelled > before.cancelled) break;
    await sleepMs(50);
  }
  return {
    shape,
    client_cancelled: o.status.code === grpc.status.CANCELLED,
    stats_before: before,
    stats_after: after,
    server_saw_cancel_ms: Date.now() - cancelledAt,
  };
}

// The most recent call the client started, so cancel mode can cancel it.
let lastCall = null;

async function clientMain(f, mode) {
  const client = makeClient(f);
  const origMake = {};
  for (const k of ['makeUnaryRequest', 'makeServerStreamRequest', 'makeClientStreamRequest', 'makeBidiStreamRequest']) {
    origMake[k] = client[k].bind(client);
    client[k] = (...a) => (lastCall = origMake[k](...a));
  }
  let out;
  if (mode === 'call') out = await oneCall(client, f);
  else if (mode === 'loop') out = await loop(client, f);
  else if (mode === 'cancel') out = await cancelCall(client, f);
  else {
    console.error(`unknown mode ${mode}`);
    process.exit(2);
  }
  emit(out);
  client.close();
  process.exit(0);
}

const [cmd, ...rest] = process.argv.slice(2);
const { flags, positional } = parseFlags(rest);
if (cmd === 'server') serve(flags);
else if (cmd === 'client') clientMain(flags, positional[0]);
else {
  console.error('usage: peer.js server|client ...');
  process.exit(2);
}
