// Command grpc-go-peer is a gRPC peer on grpc-go for goaway's interop
// matrix: the same echo.Echo service and client modes as
// tests/python/grpc_peer.py (see tests/peers/README.md for the shared
// command line). Messages are raw bytes; no generated code.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	_ "unsafe" // go:linkname, below

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

// grpc-go clamps a client's keepalive time to at least 10s. The
// too_many_pings check needs a client that pings faster than the agent
// allows within seconds, so the peer lowers that floor the way grpc-go's
// own tests do (they set internal.KeepaliveMinPingTime).
//
//go:linkname keepaliveMinPingTime google.golang.org/grpc/internal.KeepaliveMinPingTime
var keepaliveMinPingTime time.Duration

// rawCodec replaces the "proto" codec so that messages are plain bytes on
// both sides, as in the Python peer.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case *[]byte:
		return *m, nil
	case []byte:
		return m, nil
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

func init() { encoding.RegisterCodec(rawCodec{}) }

// Canonical status code names, as the other peers print them.
var codeNames = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
	"DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
	"RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

func codeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("CODE_%d", c)
}

func emit(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc-go-peer server|client ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "server":
		serverMain(os.Args[2:])
	case "client":
		clientMain(os.Args[2:])
	case "http":
		httpMain(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// ---- plain HTTP/2 app ----

// httpMain serves plain HTTP/2 (h2c, prior knowledge) with net/http: every
// request gets 200 and a short body. h2spec's generic tests need responses
// with DATA frames, which a gRPC server does not give a GET.
func httpMain(argv []string) {
	fs := flag.NewFlagSet("http", flag.ExitOnError)
	port := fs.Int("port", 0, "listen port on 127.0.0.1")
	_ = fs.Parse(argv)
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: &protocols,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("content-type", "text/plain")
			_, _ = io.WriteString(w, "hello from net/http\n")
		}),
	}
	emit(map[string]any{"port": lis.Addr().(*net.TCPAddr).Port})
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// ---- server ----

type stats struct {
	mu        sync.Mutex
	Calls     int `json:"calls"`
	Cancelled int `json:"cancelled"`
	OK        int `json:"ok"`
}

func (s *stats) bump(field *int) {
	s.mu.Lock()
	*field++
	s.mu.Unlock()
}

var st stats

// servedBy, when set (server --identify), goes back on every Unary
// response as header x-served-by: which pod answered.
var servedBy string

// echoMetadata sends x-echo-* request metadata back as headers and
// trailers (and the time left before the deadline when asked).
func echoMetadata(ctx context.Context) metadata.MD {
	md, _ := metadata.FromIncomingContext(ctx)
	echo := metadata.MD{}
	for k, v := range md {
		if strings.HasPrefix(k, "x-echo-") {
			echo[k] = v
		}
	}
	header := echo.Copy()
	if servedBy != "" {
		header.Set("x-served-by", servedBy)
	}
	if len(md.Get("x-report-deadline")) > 0 {
		left := "none"
		if d, ok := ctx.Deadline(); ok {
			left = strconv.FormatInt(time.Until(d).Milliseconds(), 10)
		}
		header.Set("x-time-remaining-ms", left)
	}
	if len(md.Get("x-report-deadline")) > 0 {
		// Now, before the handler sleeps, so the client sees the deadline
		// the server got even when the call then times out.
		_ = grpc.SendHeader(ctx, header)
	} else if len(header) > 0 {
		_ = grpc.SetHeader(ctx, header)
	}
	if len(echo) > 0 {
		grpc.SetTrailer(ctx, echo)
	}
	return md
}

func first(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// requestedStatus is the error x-status/x-message ask for, if any.
func requestedStatus(md metadata.MD) error {
	s := first(md, "x-status")
	if s == "" {
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "bad x-status %q", s)
	}
	msg, _ := url.PathUnescape(first(md, "x-message"))
	return status.Error(codes.Code(n), msg)
}

// sleep waits ms milliseconds; false (counted as cancelled) if the call
// ended first.
func sleep(ctx context.Context, ms int) bool {
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
		return true
	case <-ctx.Done():
		st.bump(&st.Cancelled)
		return false
	}
}

func unaryHandler(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	var req []byte
	if err := dec(&req); err != nil {
		return nil, err
	}
	st.bump(&st.Calls)
	md := echoMetadata(ctx)
	if ms, _ := strconv.Atoi(first(md, "x-sleep-ms")); ms > 0 && !sleep(ctx, ms) {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if err := requestedStatus(md); err != nil {
		return nil, err
	}
	st.bump(&st.OK)
	return &req, nil
}

func statsHandler(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	var req []byte
	if err := dec(&req); err != nil {
		return nil, err
	}
	st.mu.Lock()
	b, _ := json.Marshal(map[string]int{"calls": st.Calls, "cancelled": st.Cancelled, "ok": st.OK})
	st.mu.Unlock()
	return &b, nil
}

func serverStream(_ any, stream grpc.ServerStream) error {
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	st.bump(&st.Calls)
	ctx := stream.Context()
	md := echoMetadata(ctx)
	var n, size int
	if _, err := fmt.Sscanf(string(req), "%d:%d", &n, &size); err != nil {
		return status.Errorf(codes.InvalidArgument, "want N:SIZE, got %q", req)
	}
	pause, _ := strconv.Atoi(first(md, "x-stream-sleep-ms"))
	for i := 0; i < n; i++ {
		msg := []byte(strings.Repeat(string([]byte{byte(i % 256)}), size))
		if err := stream.SendMsg(&msg); err != nil {
			st.bump(&st.Cancelled)
			return err
		}
		if pause > 0 && !sleep(ctx, pause) {
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	if err := requestedStatus(md); err != nil {
		return err
	}
	st.bump(&st.OK)
	return nil
}

func clientStream(_ any, stream grpc.ServerStream) error {
	st.bump(&st.Calls)
	echoMetadata(stream.Context())
	var all []byte
	for {
		var m []byte
		err := stream.RecvMsg(&m)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			st.bump(&st.Cancelled)
			return err
		}
		all = append(all, m...)
	}
	st.bump(&st.OK)
	return stream.SendMsg(&all)
}

func bidi(_ any, stream grpc.ServerStream) error {
	st.bump(&st.Calls)
	echoMetadata(stream.Context())
	for {
		var m []byte
		err := stream.RecvMsg(&m)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			st.bump(&st.Cancelled)
			return err
		}
		if err := stream.SendMsg(&m); err != nil {
			st.bump(&st.Cancelled)
			return err
		}
	}
	st.bump(&st.OK)
	return nil
}

var echoService = grpc.ServiceDesc{
	ServiceName: "echo.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Unary", Handler: unaryHandler},
		{MethodName: "Stats", Handler: statsHandler},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "ServerStream", Handler: serverStream, ServerStreams: true},
		{StreamName: "ClientStream", Handler: clientStream, ClientStreams: true},
		{StreamName: "Bidi", Handler: bidi, ServerStreams: true, ClientStreams: true},
	},
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func serverMain(argv []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	port := fs.Int("port", 0, "listen port on 127.0.0.1")
	maxAge := fs.Int("max-age-ms", 0, "keepalive.ServerParameters.MaxConnectionAge")
	maxAgeGrace := fs.Int("max-age-grace-ms", 0, "keepalive.ServerParameters.MaxConnectionAgeGrace")
	kaTime := fs.Int("keepalive-time-ms", 0, "keepalive.ServerParameters.Time")
	minPing := fs.Int("min-ping-ms", 0, "keepalive.EnforcementPolicy.MinTime (0: grpc-go's default, 5m)")
	permit := fs.Bool("permit-without-stream", false, "keepalive.EnforcementPolicy.PermitWithoutStream")
	grace := fs.Int("grace-ms", 10000, "on SIGTERM, GracefulStop; Stop after this long")
	host := fs.String("listen", "127.0.0.1", "listen address")
	onSigterm := fs.String("on-sigterm", "graceful", "graceful (GOAWAY, then Stop after --grace-ms) or exit (at once, no GOAWAY, as many apps)")
	identify := fs.Bool("identify", false, "send header x-served-by: $PEER_NAME or the hostname on Unary responses")
	_ = fs.Parse(argv)
	if *onSigterm != "graceful" && *onSigterm != "exit" {
		fmt.Fprintf(os.Stderr, "--on-sigterm: want graceful or exit, got %q\n", *onSigterm)
		os.Exit(2)
	}
	if *identify {
		// PEER_NAME names a server that shares the host's hostname (a
		// network namespace, not a pod).
		if servedBy = os.Getenv("PEER_NAME"); servedBy == "" {
			servedBy, _ = os.Hostname()
		}
	}

	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(64 << 20), grpc.MaxSendMsgSize(64 << 20)}
	sp := keepalive.ServerParameters{}
	if *maxAge > 0 {
		sp.MaxConnectionAge = ms(*maxAge)
	}
	if *maxAgeGrace > 0 {
		sp.MaxConnectionAgeGrace = ms(*maxAgeGrace)
	}
	if *kaTime > 0 {
		sp.Time = ms(*kaTime)
	}
	opts = append(opts, grpc.KeepaliveParams(sp))
	if *minPing > 0 || *permit {
		ep := keepalive.EnforcementPolicy{MinTime: 5 * time.Minute, PermitWithoutStream: *permit}
		if *minPing > 0 {
			ep.MinTime = ms(*minPing)
		}
		opts = append(opts, grpc.KeepaliveEnforcementPolicy(ep))
	}
	srv := grpc.NewServer(opts...)
	srv.RegisterService(&echoService, struct{}{})
	lis, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	emit(map[string]any{"port": lis.Addr().(*net.TCPAddr).Port})
	done := make(chan struct{})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		got := <-sig
		emit(map[string]any{"signal": got.String(), "at": time.Now().UTC().Format(time.RFC3339Nano)})
		if *onSigterm == "exit" {
			// What an app without graceful shutdown does: its open
			// connections are simply closed.
			st.mu.Lock()
			emit(map[string]any{"stopped": true, "graceful": false, "stats": map[string]int{"calls": st.Calls, "cancelled": st.Cancelled, "ok": st.OK}})
			os.Exit(0)
		}
		// GOAWAY to every client, in-flight calls finish.
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(ms(*grace)):
			srv.Stop()
		}
		close(done)
	}()
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	<-done
	st.mu.Lock()
	emit(map[string]any{"stopped": true, "stats": map[string]int{"calls": st.Calls, "cancelled": st.Cancelled, "ok": st.OK}})
	st.mu.Unlock()
}

// ---- client ----

type clientArgs struct {
	target        string
	mode          string
	shape         string
	metadata      multiFlag
	messages      int
	size          int
	timeout       time.Duration
	seconds       float64
	threads       int
	intervalMs    int
	cancelAfterMs int
	kaTimeMs      int
	kaTimeoutMs   int
	kaPermit      bool
	lb            string
	reportEveryMs int
	channels      int
}

func clientMain(argv []string) {
	var a clientArgs
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	fs.StringVar(&a.target, "target", "", "HOST:PORT, or HOST:PORT,HOST:PORT,... for round robin")
	fs.StringVar(&a.shape, "shape", "unary", "unary|server_stream|client_stream|bidi")
	fs.Var(&a.metadata, "metadata", "KEY=VALUE (hex for -bin keys), repeatable")
	fs.IntVar(&a.messages, "messages", 1, "messages per call")
	fs.IntVar(&a.size, "size", 16, "message size")
	timeout := fs.Float64("timeout", 10, "per-call deadline, seconds")
	fs.Float64Var(&a.seconds, "seconds", 5, "loop duration")
	fs.IntVar(&a.threads, "threads", 1, "loop callers in parallel")
	fs.IntVar(&a.intervalMs, "interval-ms", 0, "pause between a caller's calls")
	fs.IntVar(&a.cancelAfterMs, "cancel-after-ms", 300, "cancel mode: when to cancel")
	fs.IntVar(&a.kaTimeMs, "keepalive-time-ms", 0, "keepalive.ClientParameters.Time")
	fs.IntVar(&a.kaTimeoutMs, "keepalive-timeout-ms", 0, "keepalive.ClientParameters.Timeout")
	fs.BoolVar(&a.kaPermit, "keepalive-permit-without-calls", false, "keepalive.ClientParameters.PermitWithoutStream")
	fs.StringVar(&a.lb, "lb", "", "load-balancing policy for a single target: pick_first or round_robin (default: grpc-go's, pick_first)")
	fs.IntVar(&a.reportEveryMs, "report-every-ms", 0, "loop mode: also print the running tally this often")
	fs.IntVar(&a.channels, "channels", 1, "loop mode: this many independent channels (connections), callers spread over them, as a fleet of clients would be")
	_ = fs.Parse(argv)
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "client: want one MODE: call|loop|cancel")
		os.Exit(2)
	}
	a.mode = fs.Arg(0)
	a.timeout = time.Duration(*timeout * float64(time.Second))

	conn, err := dial(&a)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	switch a.mode {
	case "call":
		emit(oneCall(conn, &a))
	case "loop":
		emit(loop(conn, &a))
	case "cancel":
		emit(cancelCall(conn, &a))
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n", a.mode)
		os.Exit(2)
	}
}

func dial(a *clientArgs) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)),
	}
	if a.kaTimeMs > 0 {
		if ms(a.kaTimeMs) < keepaliveMinPingTime {
			keepaliveMinPingTime = ms(a.kaTimeMs)
		}
		kp := keepalive.ClientParameters{Time: ms(a.kaTimeMs), PermitWithoutStream: a.kaPermit}
		if a.kaTimeoutMs > 0 {
			kp.Timeout = ms(a.kaTimeoutMs)
		}
		opts = append(opts, grpc.WithKeepaliveParams(kp))
	}
	target := a.target
	if a.lb != "" && !strings.Contains(a.target, ",") {
		opts = append(opts, grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[{%q:{}}]}`, a.lb)))
	}
	if strings.Contains(a.target, ",") {
		// Several addresses: one round-robin channel over all of them, as
		// a headless Service's DNS name would give it.
		r := manual.NewBuilderWithScheme("goaway")
		var addrs []resolver.Address
		for _, s := range strings.Split(a.target, ",") {
			addrs = append(addrs, resolver.Address{Addr: s})
		}
		r.InitialState(resolver.State{Addresses: addrs})
		opts = append(opts, grpc.WithResolvers(r),
			grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
			grpc.WithAuthority("echo.default.svc:50051"))
		target = "goaway:///echo"
	}
	return grpc.NewClient(target, opts...)
}

func parseMetadata(pairs []string) metadata.MD {
	md := metadata.MD{}
	for _, p := range pairs {
		k, v, _ := strings.Cut(p, "=")
		if strings.HasSuffix(k, "-bin") {
			b, _ := hex.DecodeString(v)
			v = string(b)
		}
		md.Append(k, v)
	}
	return md
}

// showMetadata is x-* metadata as a map (binary values as hex).
func showMetadata(md metadata.MD) map[string]string {
	out := map[string]string{}
	for k, v := range md {
		if !strings.HasPrefix(k, "x-") || len(v) == 0 {
			continue
		}
		if strings.HasSuffix(k, "-bin") {
			out[k] = hex.EncodeToString([]byte(v[0]))
		} else {
			out[k] = v[0]
		}
	}
	return out
}

func msg(i, size int) []byte {
	return []byte(strings.Repeat(string([]byte{byte((i*7 + 1) % 256)}), size))
}

func oneCall(conn *grpc.ClientConn, a *clientArgs) map[string]any {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, parseMetadata(a.metadata))
	var header, trailer metadata.MD
	var got, want [][]byte
	start := time.Now()
	err := func() error {
		switch a.shape {
		case "unary":
			req, resp := msg(0, a.size), []byte{}
			want = [][]byte{req}
			if err := conn.Invoke(ctx, "/echo.Echo/Unary", &req, &resp, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
				return err
			}
			got = append(got, resp)
			return nil
		case "client_stream", "server_stream", "bidi":
			desc := &grpc.StreamDesc{ServerStreams: a.shape != "client_stream", ClientStreams: a.shape != "server_stream"}
			method := map[string]string{"client_stream": "ClientStream", "server_stream": "ServerStream", "bidi": "Bidi"}[a.shape]
			s, err := conn.NewStream(ctx, desc, "/echo.Echo/"+method)
			if err != nil {
				return err
			}
			defer func() { trailer = s.Trailer() }()
			var reqs [][]byte
			if a.shape == "server_stream" {
				reqs = [][]byte{[]byte(fmt.Sprintf("%d:%d", a.messages, a.size))}
				for i := 0; i < a.messages; i++ {
					want = append(want, []byte(strings.Repeat(string([]byte{byte(i % 256)}), a.size)))
				}
			} else {
				var all []byte
				for i := 0; i < a.messages; i++ {
					reqs = append(reqs, msg(i, a.size))
					all = append(all, reqs[i]...)
				}
				if a.shape == "client_stream" {
					want = [][]byte{all}
				} else {
					want = reqs
				}
			}
			sendErr := make(chan error, 1)
			go func() {
				for i := range reqs {
					if err := s.SendMsg(&reqs[i]); err != nil {
						sendErr <- err
						return
					}
				}
				sendErr <- s.CloseSend()
			}()
			for {
				var m []byte
				if err := s.RecvMsg(&m); err != nil {
					header, _ = s.Header()
					if errors.Is(err, io.EOF) {
						<-sendErr
						return nil
					}
					return err
				}
				got = append(got, m)
			}
		}
		return fmt.Errorf("unknown shape %q", a.shape)
	}()
	out := map[string]any{"shape": a.shape, "code": "OK", "details": ""}
	if err != nil {
		s := status.Convert(err)
		out["code"] = codeName(s.Code())
		out["details"] = s.Message()
	}
	echoOK := err == nil && len(got) == len(want)
	n := 0
	for i := range got {
		n += len(got[i])
		if echoOK && string(got[i]) != string(want[i]) {
			echoOK = false
		}
	}
	out["echo_ok"] = echoOK
	out["responses"] = len(got)
	out["response_bytes"] = n
	out["elapsed_ms"] = time.Since(start).Milliseconds()
	out["initial_metadata"] = showMetadata(header)
	out["trailing_metadata"] = showMetadata(trailer)
	return out
}

type tally struct {
	mu      sync.Mutex
	OK      int            `json:"ok"`
	Failed  int            `json:"failed"`
	Codes   map[string]int `json:"codes"`
	Details []string       `json:"details,omitempty"`
	// Successful calls per x-served-by header (servers run --identify).
	Servers map[string]int `json:"servers,omitempty"`
}

func (t *tally) record(err error, header metadata.MD) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil {
		t.OK++
		if by := first(header, "x-served-by"); by != "" {
			t.Servers[by]++
		}
		return
	}
	t.Failed++
	s := status.Convert(err)
	t.Codes[codeName(s.Code())]++
	// The five latest messages.
	if len(t.Details) == 5 {
		t.Details = t.Details[1:]
	}
	t.Details = append(t.Details, s.Message())
}

// loop makes unary calls back to back (--threads callers) for --seconds,
// or until SIGTERM/SIGINT with --seconds 0 (a client pod). With
// --report-every-ms it also prints the running tally that often.
func loop(conn *grpc.ClientConn, a *clientArgs) *tally {
	t := &tally{Codes: map[string]int{}, Servers: map[string]int{}}
	stop := make(chan struct{})
	if a.seconds > 0 {
		time.AfterFunc(time.Duration(a.seconds*float64(time.Second)), func() { close(stop) })
	} else {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		go func() { <-sig; close(stop) }()
	}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	if a.reportEveryMs > 0 {
		go func() {
			for !stopped() {
				time.Sleep(ms(a.reportEveryMs))
				t.mu.Lock()
				b, _ := json.Marshal(t)
				t.mu.Unlock()
				fmt.Println(string(b))
			}
		}()
	}
	md := parseMetadata(a.metadata)
	conns := []*grpc.ClientConn{conn}
	for len(conns) < a.channels {
		c, err := dial(a)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	for w := 0; w < a.threads; w++ {
		wg.Add(1)
		conn := conns[w%len(conns)]
		go func() {
			defer wg.Done()
			payload := msg(w, a.size)
			for !stopped() {
				ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), a.timeout)
				var resp []byte
				var header metadata.MD
				err := conn.Invoke(ctx, "/echo.Echo/Unary", &payload, &resp, grpc.Header(&header))
				cancel()
				if err == nil && string(resp) != string(payload) {
					err = status.Error(codes.DataLoss, "echo mismatch")
				}
				t.record(err, header)
				if err != nil {
					// A channel in TRANSIENT_FAILURE fails calls at once:
					// do not spin on it.
					time.Sleep(10 * time.Millisecond)
				}
				if a.intervalMs > 0 {
					time.Sleep(ms(a.intervalMs))
				}
			}
		}()
	}
	wg.Wait()
	return t
}

func callStats(conn *grpc.ClientConn, a *clientArgs) map[string]int {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	req, resp := []byte{}, []byte{}
	out := map[string]int{}
	if err := conn.Invoke(ctx, "/echo.Echo/Stats", &req, &resp); err == nil {
		_ = json.Unmarshal(resp, &out)
	}
	return out
}

// cancelCall starts a call the server holds, cancels it after
// --cancel-after-ms, then waits (up to 10s) for the server to count it.
func cancelCall(conn *grpc.ClientConn, a *clientArgs) map[string]any {
	before := callStats(conn, a)
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	md := parseMetadata(a.metadata)
	var callErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		switch a.shape {
		case "server_stream":
			md.Set("x-stream-sleep-ms", "20")
			ctx := metadata.NewOutgoingContext(ctx, md)
			s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/echo.Echo/ServerStream")
			if err != nil {
				callErr = err
				return
			}
			req := []byte("100000:16")
			if err := s.SendMsg(&req); err != nil {
				callErr = err
				return
			}
			_ = s.CloseSend()
			for {
				var m []byte
				if callErr = s.RecvMsg(&m); callErr != nil {
					return
				}
			}
		default:
			md.Set("x-sleep-ms", "60000")
			ctx := metadata.NewOutgoingContext(ctx, md)
			req, resp := []byte("c"), []byte{}
			callErr = conn.Invoke(ctx, "/echo.Echo/Unary", &req, &resp)
		}
	}()
	time.Sleep(ms(a.cancelAfterMs))
	cancelledAt := time.Now()
	cancel()
	<-done
	out := map[string]any{"shape": a.shape, "client_cancelled": status.Code(callErr) == codes.Canceled, "stats_before": before}
	after := before
	for time.Since(cancelledAt) < 10*time.Second {
		after = callStats(conn, a)
		if after["cancelled"] > before["cancelled"] {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	out["stats_after"] = after
	out["server_saw_cancel_ms"] = time.Since(cancelledAt).Milliseconds()
	return out
}
