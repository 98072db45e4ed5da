package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/kubeclient"
)

// dialTimeout bounds how long a command waits for the controller before
// saying it cannot reach it; callTimeout bounds one call once connected, and
// in a cluster, finding the controller and opening the port-forward.
const (
	dialTimeout = 3 * time.Second
	callTimeout = 30 * time.Second
)

// errRecorder keeps the first reason a connection attempt failed: grpc
// itself only reports the state TRANSIENT_FAILURE.
type errRecorder struct {
	mu  sync.Mutex
	err error
}

func (r *errRecorder) record(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

func (r *errRecorder) get() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// recordingTLS is TLS transport credentials that record a failed handshake
// (an unknown CA, a wrong server name) for the error message.
type recordingTLS struct {
	credentials.TransportCredentials
	rec *errRecorder
}

func (c recordingTLS) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	nc, ai, err := c.TransportCredentials.ClientHandshake(ctx, authority, conn)
	if err != nil {
		c.rec.record(fmt.Errorf("TLS handshake: %w", err))
	}
	return nc, ai, err
}

func (c recordingTLS) Clone() credentials.TransportCredentials {
	return recordingTLS{TransportCredentials: c.TransportCredentials.Clone(), rec: c.rec}
}

// connectController opens a connection to the controller at addr (where
// describes it in messages) and waits until it is usable, so that an
// unreachable controller is reported as such, with the dialer's or the TLS
// handshake's own reason, rather than as whatever the first call says.
// Without creds the connection is plain text (the lab).
func connectController(ctx context.Context, addr, where string, creds credentials.TransportCredentials, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	rec := &errRecorder{}
	dialer := func(ctx context.Context, a string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", a)
		if err != nil {
			rec.record(err)
		}
		return c, err
	}
	unreachable := func(reason error) error {
		if err := rec.get(); err != nil {
			reason = err
		}
		return withCode(exitError, fmt.Errorf("cannot reach the controller at %s: %w", where, reason))
	}
	if creds == nil {
		creds = insecure.NewCredentials()
	} else {
		creds = recordingTLS{TransportCredentials: creds, rec: rec}
	}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		append([]grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithContextDialer(dialer)}, opts...)...)
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

// controllerConn is an open connection to the controller.
type controllerConn struct {
	*grpc.ClientConn
	// where names the controller: its address, or in a cluster its pod.
	where string
	stop  func()
}

func (c *controllerConn) Close() {
	_ = c.ClientConn.Close()
	if c.stop != nil {
		c.stop()
	}
}

// clusterMode says whether commands reach the controller through the API
// server of a kubeconfig context, or dial --controller directly. A flag
// beats the environment, and the environment beats the presence of a
// kubeconfig file.
func (g *globals) clusterMode() (bool, error) {
	switch {
	case g.controllerSet && g.kubeSet:
		return false, usageErrorf("--controller dials the controller directly; --kubeconfig and --context reach it through a cluster: give one or the other")
	case g.controllerSet:
		return false, nil
	case g.kubeSet:
		return true, nil
	case os.Getenv("DETOUR_CONTROLLER") != "":
		return false, nil
	}
	return kubeclient.KubeconfigExists(), nil
}

// kubeConfig loads the kubeconfig context once.
func (g *globals) kubeConfig() (*kubeclient.Config, error) {
	if g.kube != nil {
		return g.kube, nil
	}
	kc, err := kubeclient.Load(kubeclient.LoadOptions{Kubeconfig: g.kubeconfig, Context: g.context})
	if errors.Is(err, kubeclient.ErrContext) {
		return nil, withCode(exitUsage, err)
	}
	if err != nil {
		return nil, err
	}
	g.kube = kc
	return kc, nil
}

// interceptNamespace is the namespace intercept commands act in: -n, else
// in a cluster the context's namespace, else "default".
func (g *globals) interceptNamespace() (string, error) {
	if g.namespace != "" {
		return g.namespace, nil
	}
	cluster, err := g.clusterMode()
	if err != nil || !cluster {
		return "default", err
	}
	kc, err := g.kubeConfig()
	if err != nil {
		return "", err
	}
	return kc.Namespace, nil
}

// connect opens a connection to the controller, directly or through the
// cluster.
func (g *globals) connect(ctx context.Context) (*controllerConn, error) {
	cluster, err := g.clusterMode()
	if err != nil {
		return nil, err
	}
	if !cluster {
		conn, err := connectController(ctx, g.controller, g.controller, nil)
		if err != nil {
			return nil, err
		}
		return &controllerConn{ClientConn: conn, where: g.controller}, nil
	}
	kc, err := g.kubeConfig()
	if err != nil {
		return nil, err
	}
	// The token first: without one nothing else is worth doing.
	token, err := kc.Credentials(ctx)
	if err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(kc.REST)
	if err != nil {
		return nil, err
	}
	fwd := kubeclient.PortForwarder(kc.REST, kube)
	if g.deps.forwarder != nil {
		fwd = g.deps.forwarder
	}
	octx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	ep, err := kubeclient.OpenController(octx, kube, g.detourNamespace, fwd)
	if err != nil {
		return nil, kubeError(err, g.detourNamespace)
	}
	where := "pod " + ep.Pod + " (port-forward " + ep.Addr + ")"
	conn, err := connectController(ctx, ep.Addr, where, credentials.NewTLS(ep.TLS), grpc.WithPerRPCCredentials(token))
	if err != nil {
		ep.Close()
		return nil, err
	}
	return &controllerConn{ClientConn: conn, where: ep.Pod, stop: ep.Close}, nil
}

// kubeError gives an API server's refusal the refused exit code, with what
// the CLI needs in Detour's namespace.
func kubeError(err error, ns string) error {
	switch {
	case apierrors.IsForbidden(err):
		return withCode(exitRefused, fmt.Errorf("%w (reaching the controller needs, in namespace %s: list pods, create pods/portforward and get configmap %s; the Role detour-client of the manifests grants them)",
			err, ns, kubeclient.CAConfigMap))
	case apierrors.IsUnauthorized(err):
		return withCode(exitRefused, err)
	}
	return err
}

// withControl runs f with a client of the controller's ControlService.
func withControl(ctx context.Context, g *globals, f func(ctx context.Context, c detourv1.ControlServiceClient, where string) error) error {
	conn, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return f(ctx, detourv1.NewControlServiceClient(conn), conn.where)
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
	case codes.AlreadyExists, codes.FailedPrecondition, codes.PermissionDenied, codes.Unauthenticated:
		code = exitRefused
	}
	return withCode(code, fmt.Errorf("%s: %s", doing, st.Message()))
}
