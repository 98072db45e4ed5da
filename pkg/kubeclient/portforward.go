package kubeclient

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// PortForwarder returns a Forwarder that goes through the API server, as
// `kubectl port-forward` does: WebSockets first, SPDY when the server or a
// proxy refuses the upgrade. The local end listens on a random port of
// 127.0.0.1.
func PortForwarder(rc *rest.Config, kube kubernetes.Interface) Forwarder {
	return func(ctx context.Context, ns, pod string, port int32) (string, func(), error) {
		url := kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward").URL()
		rt, upgrader, err := spdy.RoundTripperFor(rc)
		if err != nil {
			return "", nil, err
		}
		var dialer httpstream.Dialer = spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, url)
		if ws, err := portforward.NewSPDYOverWebsocketDialer(url, rc); err == nil {
			dialer = portforward.NewFallbackDialer(ws, dialer, func(err error) bool {
				return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
			})
		}
		stopCh, readyCh := make(chan struct{}), make(chan struct{})
		fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(int(port))},
			stopCh, readyCh, io.Discard, io.Discard)
		if err != nil {
			return "", nil, err
		}
		var fwErr error
		finished := make(chan struct{})
		go func() { fwErr = fw.ForwardPorts(); close(finished) }()
		var once sync.Once
		halt := func() { once.Do(func() { close(stopCh) }) }
		stop := func() { halt(); <-finished }
		select {
		case <-readyCh:
		case <-finished:
			return "", nil, forwardError(fwErr)
		case <-ctx.Done():
			halt() // a dial in progress ends on its own; nothing waits for it
			return "", nil, ctx.Err()
		}
		ports, err := fw.GetPorts()
		if err != nil || len(ports) == 0 {
			stop()
			return "", nil, fmt.Errorf("no local port: %v", err)
		}
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local))), stop, nil
	}
}

// forwardError restores a refusal that portforward flattened into a string
// ("error upgrading connection: pods "x" is forbidden: ..."), so that the
// caller can tell it from a failure.
func forwardError(err error) error {
	if err == nil || apierrors.IsForbidden(err) || !strings.Contains(err.Error(), " is forbidden: ") {
		return err
	}
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusForbidden, Reason: metav1.StatusReasonForbidden, Message: err.Error(),
	}}
}
