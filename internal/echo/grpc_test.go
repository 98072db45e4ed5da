package echo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detourdev/detour/internal/testutil"
)

func TestIsGRPC(t *testing.T) {
	for _, tc := range []struct {
		major int
		ct    string
		want  bool
	}{
		{2, "application/grpc", true},
		{2, "application/grpc+proto", true},
		{2, "application/grpc;charset=utf-8", true},
		{2, "application/grpc-web", false},
		{2, "application/grpcx", false},
		{2, "application/json", false},
		{2, "", false},
		{1, "application/grpc", false},
	} {
		if got := isGRPC(tc.major, tc.ct); got != tc.want {
			t.Errorf("isGRPC(%d, %q) = %v, want %v", tc.major, tc.ct, got, tc.want)
		}
	}
}

// startServer serves NewServer(name) on a loopback port.
func startServer(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(name, ln.Addr().String())
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

func onePod(md metadata.MD, want string) error {
	if got := md.Get(PodMetadataKey); len(got) != 1 || got[0] != want {
		return fmt.Errorf("%s %v, want [%s]", PodMetadataKey, got, want)
	}
	return nil
}

// The HTTP server answers gRPC on its own port, each call naming the pod
// once in the header and once in the trailer.
func TestServerGRPC(t *testing.T) {
	addr := startServer(t, "pod-g")
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxGRPCMessageSize), grpc.MaxCallSendMsgSize(MaxGRPCMessageSize)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("empty", func(t *testing.T) {
		var hdr, tr metadata.MD
		if _, err := c.EmptyCall(ctx, &testgrpc.Empty{}, grpc.Header(&hdr), grpc.Trailer(&tr)); err != nil {
			t.Fatal(err)
		}
		if err := errors.Join(onePod(hdr, "pod-g"), onePod(tr, "pod-g")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("unary", func(t *testing.T) {
		body := []byte("hello")
		var hdr, tr metadata.MD
		res, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: body}, ResponseSize: 5 << 20},
			grpc.Header(&hdr), grpc.Trailer(&tr))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body)
		want, _ := io.ReadAll(io.LimitReader(Stream(0), 5<<20))
		if res.Hostname != "pod-g" || res.Username != "5 "+hex.EncodeToString(sum[:]) || string(res.Payload.Body) != string(want) {
			t.Errorf("got hostname %q, username %q, %d payload bytes", res.Hostname, res.Username, len(res.Payload.Body))
		}
		if err := errors.Join(onePod(hdr, "pod-g"), onePod(tr, "pod-g")); err != nil {
			t.Error(err)
		}
	})

	t.Run("status error", func(t *testing.T) {
		var tr metadata.MD
		msg := "no such order: 42 (ünïcode, 100%)"
		_, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: msg}}, grpc.Trailer(&tr))
		if st, _ := status.FromError(err); st.Code() != codes.NotFound || st.Message() != msg {
			t.Fatalf("got %v, want NotFound %q", err, msg)
		}
		if err := onePod(tr, "pod-g"); err != nil {
			t.Error(err)
		}
		_, err = c.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: -1})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("negative response size: %v", err)
		}
	})

	t.Run("server streaming", func(t *testing.T) {
		s, err := c.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: make([]*testgrpc.ResponseParameters, 4)})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			m, err := s.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(m.Payload.Body) != "pod-g" {
				t.Fatalf("message %q", m.Payload.Body)
			}
			n++
		}
		hdr, _ := s.Header()
		if err := errors.Join(onePod(hdr, "pod-g"), onePod(s.Trailer(), "pod-g")); n != 4 || err != nil {
			t.Errorf("%d messages, want 4; %v", n, err)
		}
	})

	t.Run("endless stream counts the cancel", func(t *testing.T) {
		svc := NewGRPCService("pod-c")
		srv := NewGRPCServer(svc)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		defer srv.Stop()
		cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		sctx, scancel := context.WithCancel(ctx)
		s, err := testgrpc.NewTestServiceClient(cc).StreamingOutputCall(sctx, &testgrpc.StreamingOutputCallRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if m, err := s.Recv(); err != nil || string(m.Payload.Body) != "pod-c" {
				t.Fatalf("endless stream: %v %v", m, err)
			}
		}
		scancel()
		testutil.Eventually(t, 5*time.Second, func() error {
			if n := svc.Cancelled(); n != 1 {
				return fmt.Errorf("%d cancelled streams, want 1", n)
			}
			return nil
		})
	})

	t.Run("client streaming", func(t *testing.T) {
		s, err := c.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{1, 1000, 70000} {
			if err := s.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: make([]byte, n)}}); err != nil {
				t.Fatal(err)
			}
		}
		res, err := s.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		hdr, _ := s.Header()
		if err := errors.Join(onePod(hdr, "pod-g"), onePod(s.Trailer(), "pod-g")); res.AggregatedPayloadSize != 71001 || err != nil {
			t.Errorf("aggregated %d, want 71001; %v", res.AggregatedPayloadSize, err)
		}
	})

	t.Run("bidi", func(t *testing.T) {
		s, err := c.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			msg := fmt.Sprintf("m%d", i)
			if err := s.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(msg)}}); err != nil {
				t.Fatal(err)
			}
			res, err := s.Recv() // answered before the next message: full duplex over net/http
			if err != nil || string(res.Payload.Body) != "pod-g:"+msg {
				t.Fatalf("echo of %s: %v %v", msg, res, err)
			}
		}
		err = s.Send(&testgrpc.StreamingOutputCallRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.Aborted), Message: "stop"}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Recv()
		if st, _ := status.FromError(err); st.Code() != codes.Aborted || st.Message() != "stop" {
			t.Fatalf("got %v, want Aborted stop", err)
		}
		if err := onePod(s.Trailer(), "pod-g"); err != nil {
			t.Error(err)
		}
	})

	t.Run("HTTP beside gRPC", func(t *testing.T) {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		h2 := &http.Client{Transport: &http.Transport{Protocols: p}}
		resp, body := get(t, h2, "http://"+addr+"/")
		if resp.ProtoMajor != 2 || string(body) != "pod-g\n" || resp.Header.Get(PodHeader) != "pod-g" {
			t.Errorf("h2c GET: %s %q %s=%q", resp.Proto, body, PodHeader, resp.Header.Get(PodHeader))
		}
		// gRPC's content type over HTTP/1.1 is not gRPC: the HTTP handler answers.
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/grpc.testing.TestService/EmptyCall", nil)
		req.Header.Set("Content-Type", "application/grpc")
		resp, err := (&http.Client{}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 1 || string(b) != "pod-g\n" {
			t.Errorf("HTTP/1.1 POST with gRPC content type: %s %q", resp.Proto, b)
		}
	})
}
