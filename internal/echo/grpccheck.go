package echo

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
)

// OnePod checks that md names exactly the pod want.
func OnePod(md metadata.MD, want string) error {
	if got := md.Get(PodMetadataKey); len(got) != 1 || got[0] != want {
		return fmt.Errorf("%s %v, want [%s]", PodMetadataKey, got, want)
	}
	return nil
}

// GRPCCalls are the four kinds of gRPC call, for the tests that drive
// GRPCService through Detour:, each checking that the pod
// want answered it, in header, trailer and payload.
var GRPCCalls = map[string]func(ctx context.Context, c testgrpc.TestServiceClient, want string) error{
	"unary": func(ctx context.Context, c testgrpc.TestServiceClient, want string) error {
		var hdr, tr metadata.MD
		body := []byte("hello " + want)
		res, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: body}, ResponseSize: 1000},
			grpc.Header(&hdr), grpc.Trailer(&tr))
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		if res.Hostname != want || res.Username != fmt.Sprintf("%d %x", len(body), sum) || len(res.Payload.GetBody()) != 1000 {
			return fmt.Errorf("answered by %q: %q, %d payload bytes", res.Hostname, res.Username, len(res.Payload.GetBody()))
		}
		return errors.Join(OnePod(hdr, want), OnePod(tr, want))
	},
	"server streaming": func(ctx context.Context, c testgrpc.TestServiceClient, want string) error {
		s, err := c.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: make([]*testgrpc.ResponseParameters, 3)})
		if err != nil {
			return err
		}
		n := 0
		for {
			msg, err := s.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if string(msg.Payload.Body) != want {
				return fmt.Errorf("message from %s", msg.Payload.Body)
			}
			n++
		}
		if n != 3 {
			return fmt.Errorf("%d messages, want 3", n)
		}
		hdr, _ := s.Header()
		return errors.Join(OnePod(hdr, want), OnePod(s.Trailer(), want))
	},
	"client streaming": func(ctx context.Context, c testgrpc.TestServiceClient, want string) error {
		s, err := c.StreamingInputCall(ctx)
		if err != nil {
			return err
		}
		for range 3 {
			if err := s.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: make([]byte, 1000)}}); err != nil {
				return err
			}
		}
		res, err := s.CloseAndRecv()
		if err != nil {
			return err
		}
		if res.AggregatedPayloadSize != 3000 {
			return fmt.Errorf("aggregated %d, want 3000", res.AggregatedPayloadSize)
		}
		hdr, _ := s.Header()
		return errors.Join(OnePod(hdr, want), OnePod(s.Trailer(), want))
	},
	"bidi": func(ctx context.Context, c testgrpc.TestServiceClient, want string) error {
		s, err := c.FullDuplexCall(ctx)
		if err != nil {
			return err
		}
		for i := range 3 {
			msg := fmt.Sprintf("m%d", i)
			if err := s.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(msg)}}); err != nil {
				return err
			}
			res, err := s.Recv() // each answer before the next message: full duplex
			if err != nil {
				return err
			}
			if got := string(res.Payload.Body); got != want+":"+msg {
				return fmt.Errorf("echo %q, want %q", got, want+":"+msg)
			}
		}
		s.CloseSend()
		if _, err := s.Recv(); !errors.Is(err, io.EOF) {
			return fmt.Errorf("after CloseSend: %v", err)
		}
		hdr, _ := s.Header()
		return errors.Join(OnePod(hdr, want), OnePod(s.Trailer(), want))
	},
}
