package dev.goaway.peer;

import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.Context;
import io.grpc.Contexts;
import io.grpc.Deadline;
import io.grpc.EquivalentAddressGroup;
import io.grpc.ForwardingServerCall;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.NameResolver;
import io.grpc.NameResolverProvider;
import io.grpc.NameResolverRegistry;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.ServerServiceDefinition;
import io.grpc.Status;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.ServerCalls;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.lang.reflect.Field;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A gRPC peer on grpc-java (Netty) for goaway's interop matrix: the same
 * echo.Echo service and client modes as tests/python/grpc_peer.py (see
 * tests/peers/README.md). Messages are raw bytes; no generated code.
 */
public final class Peer {
  private Peer() {}

  // ---------------------------------------------------------------- shared

  static final MethodDescriptor.Marshaller<byte[]> RAW =
      new MethodDescriptor.Marshaller<>() {
        @Override
        public InputStream stream(byte[] value) {
          return new ByteArrayInputStream(value);
        }

        @Override
        public byte[] parse(InputStream stream) {
          try {
            return stream.readAllBytes();
          } catch (IOException e) {
            throw Status.INTERNAL.withCause(e).asRuntimeException();
          }
        }
      };

  static MethodDescriptor<byte[], byte[]> method(String name, MethodDescriptor.MethodType type) {
    return MethodDescriptor.<byte[], byte[]>newBuilder()
        .setType(type)
        .setFullMethodName("echo.Echo/" + name)
        .setRequestMarshaller(RAW)
        .setResponseMarshaller(RAW)
        .build();
  }

  static final MethodDescriptor<byte[], byte[]> UNARY = method("Unary", MethodDescriptor.MethodType.UNARY);
  static final MethodDescriptor<byte[], byte[]> STATS = method("Stats", MethodDescriptor.MethodType.UNARY);
  static final MethodDescriptor<byte[], byte[]> SERVER_STREAM =
      method("ServerStream", MethodDescriptor.MethodType.SERVER_STREAMING);
  static final MethodDescriptor<byte[], byte[]> CLIENT_STREAM =
      method("ClientStream", MethodDescriptor.MethodType.CLIENT_STREAMING);
  static final MethodDescriptor<byte[], byte[]> BIDI = method("Bidi", MethodDescriptor.MethodType.BIDI_STREAMING);

  /** Minimal JSON output: the values used here are numbers, booleans, strings and maps. */
  static String json(Object v) {
    if (v == null) {
      return "null";
    }
    if (v instanceof Number || v instanceof Boolean) {
      return v.toString();
    }
    if (v instanceof Map<?, ?> m) {
      StringBuilder b = new StringBuilder("{");
      for (Map.Entry<?, ?> e : m.entrySet()) {
        if (b.length() > 1) {
          b.append(',');
        }
        b.append(json(e.getKey().toString())).append(':').append(json(e.getValue()));
      }
      return b.append('}').toString();
    }
    if (v instanceof List<?> l) {
      StringBuilder b = new StringBuilder("[");
      for (Object o : l) {
        if (b.length() > 1) {
          b.append(',');
        }
        b.append(json(o));
      }
      return b.append(']').toString();
    }
    StringBuilder b = new StringBuilder("\"");
    for (char c : v.toString().toCharArray()) {
      if (c == '"' || c == '\\') {
        b.append('\\').append(c);
      } else if (c < 0x20) {
        b.append(String.format("\\u%04x", (int) c));
      } else {
        b.append(c);
      }
    }
    return b.append('"').toString();
  }

  static synchronized void emit(Object v) {
    System.out.println(json(v));
    System.out.flush();
  }

  static Map<String, String> flags(String[] args, int from, List<String> positional, Map<String, List<String>> multi) {
    Map<String, String> out = new HashMap<>();
    for (int i = from; i < args.length; i++) {
      String a = args[i];
      if (!a.startsWith("--")) {
        positional.add(a);
        continue;
      }
      String k = a.substring(2);
      String v = "true";
      if (k.contains("=")) {
        v = k.substring(k.indexOf('=') + 1);
        k = k.substring(0, k.indexOf('='));
      } else if (!k.equals("keepalive-permit-without-calls") && !k.equals("permit-without-stream")) {
        v = args[++i];
      }
      out.put(k, v);
      multi.computeIfAbsent(k, x -> new ArrayList<>()).add(v);
    }
    return out;
  }

  static String hex(byte[] b) {
    StringBuilder s = new StringBuilder();
    for (byte x : b) {
      s.append(String.format("%02x", x));
    }
    return s.toString();
  }

  static byte[] unhex(String s) {
    byte[] out = new byte[s.length() / 2];
    for (int i = 0; i < out.length; i++) {
      out[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
    }
    return out;
  }

  static String codeName(Status s) {
    return s.getCode().name();
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 1) {
      System.err.println("usage: Peer server|client ...");
      System.exit(2);
    }
    List<String> pos = new ArrayList<>();
    Map<String, List<String>> multi = new HashMap<>();
    Map<String, String> f = flags(args, 1, pos, multi);
    switch (args[0]) {
      case "server" -> serve(f);
      case "client" -> {
        int rc = client(f, multi, pos.isEmpty() ? "" : pos.get(0));
        System.exit(rc);
      }
      default -> {
        System.err.println("unknown command " + args[0]);
        System.exit(2);
      }
    }
  }

  // ---------------------------------------------------------------- server

  static final AtomicInteger CALLS = new AtomicInteger();
  static final AtomicInteger CANCELLED = new AtomicInteger();
  static final AtomicInteger OK = new AtomicInteger();
  static final Context.Key<Metadata> HEADERS = Context.key("request-headers");

  static Map<String, Object> stats() {
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("calls", CALLS.get());
    m.put("cancelled", CANCELLED.get());
    m.put("ok", OK.get());
    return m;
  }

  static String header(String key) {
    Metadata md = HEADERS.get();
    return md == null ? null : md.get(Metadata.Key.of(key, Metadata.ASCII_STRING_MARSHALLER));
  }

  /** x-echo-* request metadata copied into a new Metadata. */
  static Metadata echoed(Metadata request) {
    Metadata out = new Metadata();
    for (String k : request.keys()) {
      if (!k.startsWith("x-echo-")) {
        continue;
      }
      if (k.endsWith(Metadata.BINARY_HEADER_SUFFIX)) {
        Metadata.Key<byte[]> key = Metadata.Key.of(k, Metadata.BINARY_BYTE_MARSHALLER);
        for (byte[] v : request.getAll(key)) {
          out.put(key, v);
        }
      } else {
        Metadata.Key<String> key = Metadata.Key.of(k, Metadata.ASCII_STRING_MARSHALLER);
        for (String v : request.getAll(key)) {
          out.put(key, v);
        }
      }
    }
    return out;
  }

  /** Echoes x-echo-* metadata as headers and trailers, and exposes the request headers to handlers. */
  static final ServerInterceptor ECHO_METADATA =
      new ServerInterceptor() {
        @Override
        public <Q, R> ServerCall.Listener<Q> interceptCall(
            ServerCall<Q, R> call, Metadata request, ServerCallHandler<Q, R> next) {
          Deadline deadline = Context.current().getDeadline();
          boolean reportDeadline =
              request.containsKey(Metadata.Key.of("x-report-deadline", Metadata.ASCII_STRING_MARSHALLER));
          ServerCall<Q, R> wrapped =
              new ForwardingServerCall.SimpleForwardingServerCall<>(call) {
                boolean sent;

                @Override
                public synchronized void sendHeaders(Metadata headers) {
                  // Sent early (below) when the deadline is reported; the
                  // stub's own sendHeaders then has nothing left to do.
                  if (sent) {
                    return;
                  }
                  sent = true;
                  headers.merge(echoed(request));
                  if (reportDeadline) {
                    String left = deadline == null ? "none" : Long.toString(deadline.timeRemaining(TimeUnit.MILLISECONDS));
                    headers.put(Metadata.Key.of("x-time-remaining-ms", Metadata.ASCII_STRING_MARSHALLER), left);
                  }
                  super.sendHeaders(headers);
                }

                @Override
                public void close(Status status, Metadata trailers) {
                  trailers.merge(echoed(request));
                  super.close(status, trailers);
                }
              };
          if (reportDeadline) {
            // Before the handler sleeps, so the client sees the deadline
            // the server got even when the call then times out.
            wrapped.sendHeaders(new Metadata());
          }
          Context ctx = Context.current().withValue(HEADERS, request);
          return Contexts.interceptCall(ctx, wrapped, request, next);
        }
      };

  /** The status x-status/x-message ask for, or null. */
  static Status requested() {
    String s = header("x-status");
    if (s == null) {
      return null;
    }
    String msg = header("x-message");
    msg = msg == null ? "" : URLDecoder.decode(msg.replace("+", "%2B"), StandardCharsets.UTF_8);
    return Status.fromCodeValue(Integer.parseInt(s)).withDescription(msg);
  }

  /** Sleeps ms; false (counted as cancelled) if the call ended first. */
  static boolean sleep(long ms) {
    Context ctx = Context.current();
    CountDownLatch ended = new CountDownLatch(1);
    ctx.addListener(c -> ended.countDown(), Runnable::run);
    try {
      ended.await(ms, TimeUnit.MILLISECONDS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    if (ctx.isCancelled()) {
      CANCELLED.incrementAndGet();
      return false;
    }
    return true;
  }

  static void unary(byte[] req, StreamObserver<byte[]> out) {
    CALLS.incrementAndGet();
    String sleep = header("x-sleep-ms");
    if (sleep != null && !sleep(Long.parseLong(sleep))) {
      out.onError(Status.CANCELLED.withDescription("call ended").asRuntimeException());
      return;
    }
    Status st = requested();
    if (st != null) {
      out.onError(st.asRuntimeException());
      return;
    }
    OK.incrementAndGet();
    out.onNext(req);
    out.onCompleted();
  }

  static void serverStream(byte[] req, StreamObserver<byte[]> out) {
    CALLS.incrementAndGet();
    String[] parts = new String(req, StandardCharsets.UTF_8).split(":");
    int n = Integer.parseInt(parts[0]);
    int size = Integer.parseInt(parts[1]);
    String pause = header("x-stream-sleep-ms");
    for (int i = 0; i < n; i++) {
      if (Context.current().isCancelled()) {
        CANCELLED.incrementAndGet();
        return;
      }
      byte[] m = new byte[size];
      Arrays.fill(m, (byte) (i % 256));
      out.onNext(m);
      if (pause != null && !sleep(Long.parseLong(pause))) {
        return;
      }
    }
    Status st = requested();
    if (st != null) {
      out.onError(st.asRuntimeException());
      return;
    }
    OK.incrementAndGet();
    out.onCompleted();
  }

  static StreamObserver<byte[]> clientStream(StreamObserver<byte[]> out) {
    CALLS.incrementAndGet();
    ByteArrayOutputStream all = new ByteArrayOutputStream();
    return new StreamObserver<>() {
      @Override
      public void onNext(byte[] m) {
        all.writeBytes(m);
      }

      @Override
      public void onError(Throwable t) {
        CANCELLED.incrementAndGet();
      }

      @Override
      public void onCompleted() {
        OK.incrementAndGet();
        out.onNext(all.toByteArray());
        out.onCompleted();
      }
    };
  }

  static StreamObserver<byte[]> bidi(StreamObserver<byte[]> out) {
    CALLS.incrementAndGet();
    return new StreamObserver<>() {
      @Override
      public void onNext(byte[] m) {
        out.onNext(m);
      }

      @Override
      public void onError(Throwable t) {
        CANCELLED.incrementAndGet();
      }

      @Override
      public void onCompleted() {
        OK.incrementAndGet();
        out.onCompleted();
      }
    };
  }

  static void serve(Map<String, String> f) throws Exception {
    ServerServiceDefinition svc =
        ServerServiceDefinition.builder("echo.Echo")
            .addMethod(UNARY, ServerCalls.asyncUnaryCall(Peer::unary))
            .addMethod(
                STATS,
                ServerCalls.asyncUnaryCall(
                    (req, out) -> {
                      out.onNext(json(stats()).getBytes(StandardCharsets.UTF_8));
                      out.onCompleted();
                    }))
            .addMethod(SERVER_STREAM, ServerCalls.asyncServerStreamingCall(Peer::serverStream))
            .addMethod(CLIENT_STREAM, ServerCalls.asyncClientStreamingCall(Peer::clientStream))
            .addMethod(BIDI, ServerCalls.asyncBidiStreamingCall(Peer::bidi))
            .build();
    NettyServerBuilder b =
        NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", Integer.parseInt(f.getOrDefault("port", "0"))))
            .addService(ServerInterceptors.intercept(svc, ECHO_METADATA))
            // Handlers sleep; do not let them starve each other.
            .executor(Executors.newCachedThreadPool())
            .maxInboundMessageSize(64 << 20);
    if (f.containsKey("max-age-ms")) {
      b.maxConnectionAge(Long.parseLong(f.get("max-age-ms")), TimeUnit.MILLISECONDS);
    }
    if (f.containsKey("max-age-grace-ms")) {
      b.maxConnectionAgeGrace(Long.parseLong(f.get("max-age-grace-ms")), TimeUnit.MILLISECONDS);
    }
    if (f.containsKey("keepalive-time-ms")) {
      b.keepAliveTime(Long.parseLong(f.get("keepalive-time-ms")), TimeUnit.MILLISECONDS);
    }
    if (f.containsKey("min-ping-ms")) {
      b.permitKeepAliveTime(Long.parseLong(f.get("min-ping-ms")), TimeUnit.MILLISECONDS);
    }
    if (f.containsKey("permit-without-stream")) {
      b.permitKeepAliveWithoutCalls(true);
    }
    Server server = b.build().start();
    long grace = Long.parseLong(f.getOrDefault("grace-ms", "10000"));
    CountDownLatch stopped = new CountDownLatch(1);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  // Graceful: GOAWAY to every client, in-flight calls finish.
                  server.shutdown();
                  try {
                    if (!server.awaitTermination(grace, TimeUnit.MILLISECONDS)) {
                      server.shutdownNow();
                    }
                  } catch (InterruptedException e) {
                    server.shutdownNow();
                  }
                  Map<String, Object> m = new LinkedHashMap<>();
                  m.put("stopped", true);
                  m.put("stats", stats());
                  emit(m);
                  stopped.countDown();
                }));
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("port", ((InetSocketAddress) server.getListenSockets().get(0)).getPort());
    emit(m);
    server.awaitTermination();
    stopped.await();
  }

  // ---------------------------------------------------------------- client

  /** Resolves goaway:///echo to a fixed address list, as a headless Service's DNS name would. */
  static final class StaticResolver extends NameResolverProvider {
    final List<EquivalentAddressGroup> addrs = new ArrayList<>();

    StaticResolver(String targets) {
      for (String t : targets.split(",")) {
        int colon = t.lastIndexOf(':');
        addrs.add(new EquivalentAddressGroup(
            new InetSocketAddress(t.substring(0, colon), Integer.parseInt(t.substring(colon + 1)))));
      }
    }

    @Override
    protected boolean isAvailable() {
      return true;
    }

    @Override
    protected int priority() {
      return 10;
    }

    @Override
    public String getDefaultScheme() {
      return "goaway";
    }

    @Override
    public NameResolver newNameResolver(URI uri, NameResolver.Args args) {
      if (!"goaway".equals(uri.getScheme())) {
        return null;
      }
      return new NameResolver() {
        @Override
        public String getServiceAuthority() {
          return "echo.default.svc:50051";
        }

        @Override
        public void start(Listener2 listener) {
          listener.onResult(ResolutionResult.newBuilder().setAddresses(addrs).build());
        }

        @Override
        public void shutdown() {}
      };
    }
  }

  static ManagedChannel channel(Map<String, String> f) throws Exception {
    String target = f.get("target");
    NettyChannelBuilder b;
    if (target.contains(",")) {
      NameResolverRegistry.getDefaultRegistry().register(new StaticResolver(target));
      b = NettyChannelBuilder.forTarget("goaway:///echo").defaultLoadBalancingPolicy("round_robin");
    } else {
      int colon = target.lastIndexOf(':');
      b = NettyChannelBuilder.forAddress(target.substring(0, colon), Integer.parseInt(target.substring(colon + 1)));
    }
    b.usePlaintext().maxInboundMessageSize(64 << 20);
    if (f.containsKey("keepalive-time-ms")) {
      long ms = Long.parseLong(f.get("keepalive-time-ms"));
      b.keepAliveTime(ms, TimeUnit.MILLISECONDS);
      // grpc-java clamps the client keepalive time to at least 10s; the
      // too_many_pings check needs a faster one, so set the field the
      // clamp wrote (a test-only shortcut, like grpc-java's own tests).
      Field field = NettyChannelBuilder.class.getDeclaredField("keepAliveTimeNanos");
      field.setAccessible(true);
      field.setLong(b, TimeUnit.MILLISECONDS.toNanos(ms));
      if (f.containsKey("keepalive-timeout-ms")) {
        b.keepAliveTimeout(Long.parseLong(f.get("keepalive-timeout-ms")), TimeUnit.MILLISECONDS);
      }
      b.keepAliveWithoutCalls(f.containsKey("keepalive-permit-without-calls"));
    }
    return b.build();
  }

  static int client(Map<String, String> f, Map<String, List<String>> multi, String mode) throws Exception {
    ManagedChannel ch = channel(f);
    try {
      switch (mode) {
        case "call" -> emit(oneCall(ch, f, multi.getOrDefault("metadata", List.of())));
        case "loop" -> emit(loop(ch, f));
        case "cancel" -> emit(cancelCall(ch, f, multi.getOrDefault("metadata", List.of())));
        default -> {
          System.err.println("unknown mode " + mode);
          return 2;
        }
      }
    } finally {
      ch.shutdownNow();
    }
    return 0;
  }

  static Metadata parseMetadata(List<String> pairs) {
    Metadata md = new Metadata();
    for (String p : pairs) {
      String k = p.substring(0, p.indexOf('='));
      String v = p.substring(p.indexOf('=') + 1);
      if (k.endsWith(Metadata.BINARY_HEADER_SUFFIX)) {
        md.put(Metadata.Key.of(k, Metadata.BINARY_BYTE_MARSHALLER), unhex(v));
      } else {
        md.put(Metadata.Key.of(k, Metadata.ASCII_STRING_MARSHALLER), v);
      }
    }
    return md;
  }

  static Map<String, Object> show(Metadata md) {
    Map<String, Object> out = new TreeMap<>();
    if (md == null) {
      return out;
    }
    for (String k : md.keys()) {
      if (!k.startsWith("x-")) {
        continue;
      }
      if (k.endsWith(Metadata.BINARY_HEADER_SUFFIX)) {
        out.put(k, hex(md.get(Metadata.Key.of(k, Metadata.BINARY_BYTE_MARSHALLER))));
      } else {
        out.put(k, md.get(Metadata.Key.of(k, Metadata.ASCII_STRING_MARSHALLER)));
      }
    }
    return out;
  }

  static byte[] msg(int i, int size) {
    byte[] m = new byte[size];
    Arrays.fill(m, (byte) ((i * 7 + 1) % 256));
    return m;
  }

  /** What a call ended with, seen through the raw ClientCall API. */
  static final class Outcome extends ClientCall.Listener<byte[]> {
    final List<byte[]> got = new ArrayList<>();
    Metadata headers;
    Metadata trailers;
    Status status;
    final CountDownLatch done = new CountDownLatch(1);

    @Override
    public void onHeaders(Metadata h) {
      headers = h;
    }

    @Override
    public void onMessage(byte[] m) {
      synchronized (got) {
        got.add(m);
      }
    }

    @Override
    public void onClose(Status s, Metadata t) {
      status = s;
      trailers = t;
      done.countDown();
    }
  }

  static CallOptions options(Map<String, String> f) {
    long ms = (long) (Double.parseDouble(f.getOrDefault("timeout", "10")) * 1000);
    return CallOptions.DEFAULT.withDeadlineAfter(ms, TimeUnit.MILLISECONDS);
  }

  static Outcome start(ManagedChannel ch, MethodDescriptor<byte[], byte[]> m, CallOptions o, Metadata md, List<byte[]> reqs, boolean halfClose) {
    ClientCall<byte[], byte[]> call = ch.newCall(m, o);
    Outcome out = new Outcome();
    call.start(out, md);
    call.request(Integer.MAX_VALUE);
    for (byte[] r : reqs) {
      call.sendMessage(r);
    }
    if (halfClose) {
      call.halfClose();
    }
    outstanding = call;
    return out;
  }

  static volatile ClientCall<byte[], byte[]> outstanding;

  static Map<String, Object> oneCall(ManagedChannel ch, Map<String, String> f, List<String> mdPairs) throws Exception {
    String shape = f.getOrDefault("shape", "unary");
    int n = Integer.parseInt(f.getOrDefault("messages", "1"));
    int size = Integer.parseInt(f.getOrDefault("size", "16"));
    List<byte[]> reqs = new ArrayList<>();
    List<byte[]> want = new ArrayList<>();
    MethodDescriptor<byte[], byte[]> m;
    switch (shape) {
      case "unary" -> {
        m = UNARY;
        reqs.add(msg(0, size));
        want.add(reqs.get(0));
      }
      case "server_stream" -> {
        m = SERVER_STREAM;
        reqs.add((n + ":" + size).getBytes(StandardCharsets.UTF_8));
        for (int i = 0; i < n; i++) {
          byte[] w = new byte[size];
          Arrays.fill(w, (byte) (i % 256));
          want.add(w);
        }
      }
      case "client_stream", "bidi" -> {
        m = shape.equals("bidi") ? BIDI : CLIENT_STREAM;
        ByteArrayOutputStream all = new ByteArrayOutputStream();
        for (int i = 0; i < n; i++) {
          reqs.add(msg(i, size));
          all.writeBytes(reqs.get(i));
        }
        if (shape.equals("bidi")) {
          want.addAll(reqs);
        } else {
          want.add(all.toByteArray());
        }
      }
      default -> throw new IllegalArgumentException("unknown shape " + shape);
    }
    long start = System.nanoTime();
    Outcome o = start(ch, m, options(f), parseMetadata(mdPairs), reqs, true);
    o.done.await();
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("shape", shape);
    out.put("code", codeName(o.status));
    out.put("details", o.status.getDescription() == null ? "" : o.status.getDescription());
    boolean echoOk = o.status.isOk() && o.got.size() == want.size();
    long bytes = 0;
    for (int i = 0; i < o.got.size(); i++) {
      bytes += o.got.get(i).length;
      if (echoOk && !Arrays.equals(o.got.get(i), want.get(i))) {
        echoOk = false;
      }
    }
    out.put("echo_ok", echoOk);
    out.put("responses", o.got.size());
    out.put("response_bytes", bytes);
    out.put("elapsed_ms", (System.nanoTime() - start) / 1_000_000);
    out.put("initial_metadata", show(o.headers));
    out.put("trailing_metadata", show(o.trailers));
    return out;
  }

  static Map<String, Object> loop(ManagedChannel ch, Map<String, String> f) throws Exception {
    double seconds = Double.parseDouble(f.getOrDefault("seconds", "5"));
    int threads = Integer.parseInt(f.getOrDefault("threads", "1"));
    int size = Integer.parseInt(f.getOrDefault("size", "16"));
    long interval = Long.parseLong(f.getOrDefault("interval-ms", "0"));
    long end = System.nanoTime() + (long) (seconds * 1e9);
    AtomicInteger ok = new AtomicInteger();
    AtomicInteger failed = new AtomicInteger();
    Map<String, Object> codes = new TreeMap<>();
    List<Object> details = new ArrayList<>();
    List<Thread> ts = new ArrayList<>();
    for (int w = 0; w < threads; w++) {
      byte[] payload = msg(w, size);
      Thread t =
          new Thread(
              () -> {
                while (System.nanoTime() < end) {
                  Outcome o = start(ch, UNARY, options(f), new Metadata(), List.of(payload), true);
                  try {
                    o.done.await();
                  } catch (InterruptedException e) {
                    return;
                  }
                  boolean good = o.status.isOk() && o.got.size() == 1 && Arrays.equals(o.got.get(0), payload);
                  if (good) {
                    ok.incrementAndGet();
                  } else {
                    failed.incrementAndGet();
                    String c = o.status.isOk() ? "DATA_LOSS" : codeName(o.status);
                    synchronized (codes) {
                      codes.merge(c, 1, (a, b) -> (Integer) a + (Integer) b);
                      if (details.size() < 5) {
                        details.add(String.valueOf(o.status.getDescription()));
                      }
                    }
                  }
                  if (interval > 0) {
                    try {
                      Thread.sleep(interval);
                    } catch (InterruptedException e) {
                      return;
                    }
                  }
                }
              });
      t.start();
      ts.add(t);
    }
    for (Thread t : ts) {
      t.join();
    }
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("ok", ok.get());
    out.put("failed", failed.get());
    out.put("codes", codes);
    if (!details.isEmpty()) {
      out.put("details", details);
    }
    return out;
  }

  static Map<String, Object> callStats(ManagedChannel ch, Map<String, String> f) throws Exception {
    Outcome o = start(ch, STATS, options(f), new Metadata(), List.of(new byte[0]), true);
    o.done.await();
    Map<String, Object> out = new LinkedHashMap<>();
    if (o.status.isOk() && o.got.size() == 1) {
      // {"calls":N,"cancelled":N,"ok":N} from any peer: pick the numbers out.
      String s = new String(o.got.get(0), StandardCharsets.UTF_8).replaceAll("[{}\" ]", "");
      for (String kv : s.split(",")) {
        String[] p = kv.split(":");
        out.put(p[0], Integer.parseInt(p[1]));
      }
    }
    return out;
  }

  static Map<String, Object> cancelCall(ManagedChannel ch, Map<String, String> f, List<String> mdPairs) throws Exception {
    String shape = f.getOrDefault("shape", "unary");
    Map<String, Object> before = callStats(ch, f);
    Metadata md = parseMetadata(mdPairs);
    Outcome o;
    if (shape.equals("server_stream")) {
      md.put(Metadata.Key.of("x-stream-sleep-ms", Metadata.ASCII_STRING_MARSHALLER), "20");
      o = start(ch, SERVER_STREAM, options(f), md, List.of("100000:16".getBytes(StandardCharsets.UTF_8)), true);
    } else {
      md.put(Metadata.Key.of("x-sleep-ms", Metadata.ASCII_STRING_MARSHALLER), "60000");
      o = start(ch, UNARY, options(f), md, List.of("c".getBytes(StandardCharsets.UTF_8)), true);
    }
    ClientCall<byte[], byte[]> call = outstanding;
    Thread.sleep(Long.parseLong(f.getOrDefault("cancel-after-ms", "300")));
    long cancelledAt = System.nanoTime();
    call.cancel("cancelled by the test", null);
    o.done.await();
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("shape", shape);
    out.put("client_cancelled", o.status.getCode() == Status.Code.CANCELLED);
    out.put("stats_before", before);
    Map<String, Object> after = before;
    while (System.nanoTime() - cancelledAt < 10_000_000_000L) {
      after = callStats(ch, f);
      if ((Integer) after.getOrDefault("cancelled", 0) > (Integer) before.getOrDefault("cancelled", 0)) {
        break;
      }
      Thread.sleep(50);
    }
    out.put("stats_after", after);
    out.put("server_saw_cancel_ms", (System.nanoTime() - cancelledAt) / 1_000_000);
    return out;
  }
}
