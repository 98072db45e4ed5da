package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// dialTimeout bounds how long a command waits for the controller before
// saying it cannot reach it; callTimeout bounds one call once connected.
const (
	dialTimeout = 3 * time.Second
	callTimeout = 30 * time.Second
)

// connectController opens a connection to the controller and waits until it is
// usable, so that an unreachable controller is reported as such, with the
// dialer's own reason, rather than as whatever the first call says.
func connectController(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	var (
		mu      sync.Mutex
		dialErr error
	)
	dialer := func(ctx context.Context, a string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", a)
		if err != nil {
			mu.Lock()
			dialErr = err
			mu.Unlock()
		}
		return c, err
	}
	unreachable := func(reason error) error {
		mu.Lock()
		defer mu.Unlock()
		if dialErr != nil {
			reason = dialErr
		}
		return withCode(exitError, fmt.Errorf("cannot reach the controller at %s: %w", addr, reason))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer))
	if err != nil {
		return nil, unreachable(err)
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn.Connect()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return conn, nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			_ = conn.Close()
			return nil, unreachable(fmt.Errorf("connection %s", s))
		}
		if !conn.WaitForStateChange(ctx, s) {
			_ = conn.Close()
			return nil, unreachable(fmt.Errorf("no connection after %s", dialTimeout))
		}
	}
}

// withControl runs f with a client of the controller's ControlService.
func withControl(ctx context.Context, g *globals, f func(ctx context.Context, c detourv1.ControlServiceClient) error) error {
	conn, err := connectController(ctx, g.controller)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return f(ctx, detourv1.NewControlServiceClient(conn))
}

// rpcError turns a failed call into the exit code scripts rely on, keeping
// the server's message as it is, prefixed by what was being done.
func rpcError(doing string, err error) error {
	if err == nil {
		return nil
	}
	var ce *codeError
	if errors.As(err, &ce) {
		return err
	}
	st := status.Convert(err)
	code := exitError
	switch st.Code() {
	case codes.InvalidArgument:
		code = exitUsage
	case codes.NotFound:
		code = exitNotFound
	case codes.AlreadyExists, codes.FailedPrecondition:
		code = exitConflict
	}
	return withCode(code, fmt.Errorf("%s: %s", doing, st.Message()))
}
