package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/redirect/match"
)

// grpcBackend is the lab echo server's gRPC TestService (echo.GRPCService),
// which names itself in a response header and trailer of every call, and in
// payloads where there is one.
type grpcBackend struct {
	*echo.GRPCService
	addr string
}

const maxGRPCMsg = echo.MaxGRPCMessageSize

// podKey is the metadata key, in header and trailer, naming the backend.
const podKey = echo.PodMetadataKey

func newGRPCBackend(t *testing.T, name string) *grpcBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &grpcBackend{GRPCService: echo.NewGRPCService(name), addr: ln.Addr().String()}
	s := echo.NewGRPCServer(b.GRPCService)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return b
}

func withSession(ctx context.Context, s string) context.Context {
	if s == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "x-detour-session", s)
}

func checkMD(md metadata.MD, key, want string) error {
	if got := md.Get(key); len(got) != 1 || got[0] != want {
		return fmt.Errorf("%s %v, want %s", key, got, want)
	}
	return nil
}

// TestGRPC sends every kind of gRPC call for alice, bob and nobody over
// one client connection through the proxy.
func TestGRPC(t *testing.T) {
	rec := &recorder{}
	app, alice, bob, carol := newGRPCBackend(t, "app"), newGRPCBackend(t, "alice"), newGRPCBackend(t, "bob"), newGRPCBackend(t, "carol")
	p, addr, ln := startProxy(t, Config{App: app.addr, Observer: rec})
	emptyCall, err := match.Compile([]match.Condition{{Kind: match.PathExact, Value: "/grpc.testing.TestService/EmptyCall"}})
	if err != nil {
		t.Fatal(err)
	}
	p.SetRoutes([]Route{
		sessionRoute(t, "alice", "alice", alice.addr),
		sessionRoute(t, "bob", "bob", bob.addr),
		{Intercept: "carol", Matcher: emptyCall, Destination: carol.addr},
	})
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxGRPCMsg), grpc.MaxCallSendMsgSize(maxGRPCMsg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	client := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("mixed calls on one connection", func(t *testing.T) {
		var wg sync.WaitGroup
		for round := range 3 {
			for name, call := range echo.GRPCCalls {
				for _, s := range []string{"alice", "bob", ""} {
					wg.Go(func() {
						if err := call(withSession(ctx, s), client, wantBackend(s)); err != nil {
							t.Errorf("round %d, %s, session %q: %v", round, name, s, err)
						}
					})
				}
			}
		}
		wg.Wait()
		rec.waitCount(t, event{"alice", OutcomeMatched}, 12)
		rec.waitCount(t, event{"bob", OutcomeMatched}, 12)
		rec.waitCount(t, event{"", OutcomeUnmatched}, 12)
	})

	t.Run("route on the method path", func(t *testing.T) {
		for _, tc := range []struct{ session, want string }{{"", "carol"}, {"alice", "alice"}} {
			var hdr metadata.MD
			if _, err := client.EmptyCall(withSession(ctx, tc.session), &testgrpc.Empty{}, grpc.Header(&hdr)); err != nil {
				t.Fatal(err)
			}
			if err := checkMD(hdr, podKey, tc.want); err != nil {
				t.Errorf("EmptyCall, session %q: %v", tc.session, err)
			}
		}
	})

	t.Run("large messages", func(t *testing.T) {
		const size = 6<<20 + 321
		data := payload(size)
		res, err := client.UnaryCall(withSession(ctx, "bob"), &testgrpc.SimpleRequest{
			Payload:      &testgrpc.Payload{Body: data},
			ResponseSize: 7 << 20,
		})
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("%d %s", size, sum(data)); res.Hostname != "bob" || res.Username != want {
			t.Fatalf("from %s: %q, want %q", res.Hostname, res.Username, want)
		}
		want, err := io.ReadAll(io.LimitReader(echo.Stream(0), 7<<20))
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Payload.Body; len(got) != 7<<20 || sum(got) != sum(want) {
			t.Fatalf("response payload of %d bytes, corrupted", len(got))
		}
	})

	t.Run("status error", func(t *testing.T) {
		for _, s := range []string{"alice", ""} {
			var tr metadata.MD
			msg := "no such order: 42 (ünïcode, 100%)"
			_, err := client.UnaryCall(withSession(ctx, s), &testgrpc.SimpleRequest{
				ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: msg},
			}, grpc.Trailer(&tr))
			st, _ := status.FromError(err)
			if st.Code() != codes.NotFound || st.Message() != msg {
				t.Fatalf("session %q: got %v, want NotFound %q", s, err, msg)
			}
			if err := checkMD(tr, podKey, wantBackend(s)); err != nil {
				t.Errorf("session %q: %v", s, err)
			}
		}
	})

	t.Run("client cancels one stream", func(t *testing.T) {
		// A bidi stream to bob stays open throughout.
		bidi, err := client.FullDuplexCall(withSession(ctx, "bob"))
		if err != nil {
			t.Fatal(err)
		}
		roundTrip := func(msg string) {
			t.Helper()
			if err := bidi.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(msg)}}); err != nil {
				t.Fatal(err)
			}
			if res, err := bidi.Recv(); err != nil || string(res.Payload.Body) != "bob:"+msg {
				t.Fatalf("bidi: %v, %v", res, err)
			}
		}
		roundTrip("before")

		sctx, scancel := context.WithCancel(withSession(ctx, "alice"))
		endless, err := client.StreamingOutputCall(sctx, &testgrpc.StreamingOutputCallRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if msg, err := endless.Recv(); err != nil || string(msg.Payload.Body) != "alice" {
				t.Fatalf("endless stream: %v, %v", msg, err)
			}
		}
		scancel() // RST_STREAM from the client
		for {
			_, err := endless.Recv()
			if err == nil {
				continue // messages already in flight
			}
			if status.Code(err) != codes.Canceled {
				t.Fatalf("cancelled stream ended with %v", err)
			}
			break
		}
		testutil.Eventually(t, 5*time.Second, func() error {
			if alice.Cancelled() != 1 {
				return errors.New("the cancellation did not reach alice's server")
			}
			return nil
		})
		roundTrip("after")
		for name, call := range echo.GRPCCalls {
			if err := call(ctx, client, "app"); err != nil {
				t.Errorf("%s after the cancel: %v", name, err)
			}
		}
		bidi.CloseSend()
		if _, err := bidi.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("bidi end: %v", err)
		}
	})

	if got := ln.n.Load(); got != 1 {
		t.Errorf("%d client connections, want 1: gRPC multiplexes", got)
	}
}

// TestGRPCFallback: a call for an unreachable destination is served by the
// app.
func TestGRPCFallback(t *testing.T) {
	rec := &recorder{}
	app := newGRPCBackend(t, "app")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()
	p, addr, _ := startProxy(t, Config{App: app.addr, Observer: rec})
	p.SetRoutes([]Route{sessionRoute(t, "dave", "dave", down)})
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for range 3 {
		res, err := client.UnaryCall(withSession(ctx, "dave"), &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("x")}})
		if err != nil || res.Hostname != "app" {
			t.Fatalf("with the destination down: %v, %v", res, err)
		}
	}
	rec.waitCount(t, event{"dave", OutcomeFallback}, 3)
}
