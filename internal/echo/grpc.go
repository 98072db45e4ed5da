package echo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// PodMetadataKey is PodHeader as gRPC metadata: every call the gRPC service
// implements answers with it in its header and in its trailer, so a client
// can check both ends of a stream reached the same pod.
const PodMetadataKey = "x-detour-pod"

// MaxGRPCMessageSize is the largest message the echo server's gRPC service
// receives or sends; gRPC's default of 4 MiB is too small for the large
// message tests.
const MaxGRPCMessageSize = 32 << 20

// GRPCService is gRPC's interop TestService (grpc.testing.TestService) as
// served by the pod name. Every implemented call carries PodMetadataKey:
// name in its header and trailer, and:
//
//	EmptyCall            empty answer
//	UnaryCall            Hostname = name; Username = "<request payload bytes> <sha256 hex of them>";
//	                     payload = the first ResponseSize bytes of Stream(0);
//	                     with ResponseStatus set, fails with that code and message instead
//	StreamingOutputCall  one message per ResponseParameters, payload = name; with none,
//	                     one every 5ms until the client cancels (counted by Cancelled)
//	StreamingInputCall   AggregatedPayloadSize = sum of the request payload sizes
//	FullDuplexCall       each message answered at once with payload "<name>:<request payload>";
//	                     a message with ResponseStatus set ends the call with that status
type GRPCService struct {
	testgrpc.UnimplementedTestServiceServer
	name      string
	cancelled atomic.Int64
}

var _ testgrpc.TestServiceServer = (*GRPCService)(nil)

// NewGRPCService returns the TestService answering as name. Register it
// with testgrpc.RegisterTestServiceServer, or use NewGRPCServer.
func NewGRPCService(name string) *GRPCService { return &GRPCService{name: name} }

// NewGRPCServer returns a gRPC server with svc registered and message
// limits raised to MaxGRPCMessageSize; opts come after those.
func NewGRPCServer(svc *GRPCService, opts ...grpc.ServerOption) *grpc.Server {
	opts = append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxGRPCMessageSize), grpc.MaxSendMsgSize(MaxGRPCMessageSize),
	}, opts...)
	s := grpc.NewServer(opts...)
	testgrpc.RegisterTestServiceServer(s, svc)
	return s
}

// Cancelled counts the endless StreamingOutputCalls that ended because the
// client cancelled them: proof that a cancellation reached this server.
func (s *GRPCService) Cancelled() int64 { return s.cancelled.Load() }

func (s *GRPCService) md() metadata.MD { return metadata.Pairs(PodMetadataKey, s.name) }

func (s *GRPCService) tagCtx(ctx context.Context) {
	// Errors only when the header has gone out already, which cannot
	// happen before the handler has sent anything.
	_ = grpc.SetHeader(ctx, s.md())
	_ = grpc.SetTrailer(ctx, s.md())
}

func (s *GRPCService) tagStream(ss grpc.ServerStream) {
	_ = ss.SetHeader(s.md())
	ss.SetTrailer(s.md())
}

// EmptyCall implements testgrpc.TestServiceServer.
func (s *GRPCService) EmptyCall(ctx context.Context, _ *testgrpc.Empty) (*testgrpc.Empty, error) {
	s.tagCtx(ctx)
	return &testgrpc.Empty{}, nil
}

// UnaryCall implements testgrpc.TestServiceServer.
func (s *GRPCService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	s.tagCtx(ctx)
	if st := req.GetResponseStatus(); st != nil {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	n := req.GetResponseSize()
	if n < 0 || n > MaxGRPCMessageSize-1024 {
		return nil, status.Errorf(codes.InvalidArgument, "response_size %d: want 0 to %d", n, MaxGRPCMessageSize-1024)
	}
	body := req.GetPayload().GetBody()
	sum := sha256.Sum256(body)
	out := make([]byte, n)
	if _, err := io.ReadFull(Stream(0), out); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &testgrpc.SimpleResponse{
		Hostname: s.name,
		Username: fmt.Sprintf("%d %s", len(body), hex.EncodeToString(sum[:])),
		Payload:  &testgrpc.Payload{Body: out},
	}, nil
}

// StreamingOutputCall implements testgrpc.TestServiceServer.
func (s *GRPCService) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, ss testgrpc.TestService_StreamingOutputCallServer) error {
	s.tagStream(ss)
	msg := &testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: []byte(s.name)}}
	if len(req.GetResponseParameters()) == 0 {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if err := ss.Send(msg); err != nil {
				return err
			}
			select {
			case <-ss.Context().Done():
				if errors.Is(ss.Context().Err(), context.Canceled) {
					s.cancelled.Add(1)
				}
				return ss.Context().Err()
			case <-tick.C:
			}
		}
	}
	for range req.GetResponseParameters() {
		if err := ss.Send(msg); err != nil {
			return err
		}
	}
	return nil
}

// StreamingInputCall implements testgrpc.TestServiceServer.
func (s *GRPCService) StreamingInputCall(ss testgrpc.TestService_StreamingInputCallServer) error {
	s.tagStream(ss)
	var n int32
	for {
		req, err := ss.Recv()
		if errors.Is(err, io.EOF) {
			return ss.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: n})
		}
		if err != nil {
			return err
		}
		n += int32(len(req.GetPayload().GetBody()))
	}
}

// FullDuplexCall implements testgrpc.TestServiceServer.
func (s *GRPCService) FullDuplexCall(ss testgrpc.TestService_FullDuplexCallServer) error {
	s.tagStream(ss)
	for {
		req, err := ss.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if st := req.GetResponseStatus(); st != nil {
			return status.Error(codes.Code(st.Code), st.Message)
		}
		body := append([]byte(s.name+":"), req.GetPayload().GetBody()...)
		if err := ss.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: body}}); err != nil {
			return err
		}
	}
}

// isGRPC reports whether r is a gRPC call: HTTP/2 (gRPC has no HTTP/1
// mapping) with content-type application/grpc or application/grpc+codec.
func isGRPC(protoMajor int, contentType string) bool {
	if protoMajor != 2 {
		return false
	}
	rest, ok := strings.CutPrefix(contentType, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}
