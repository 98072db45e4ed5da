package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/lab"
)

func newEnvOpenCmd(g *globals) *cobra.Command {
	var (
		service  string
		port     uint32
		listen   string
		labState string
	)
	cmd := &cobra.Command{
		Use:   "open NAME --service SVC --port PORT [--listen ADDR]",
		Short: "Serve a local address that sends every request into the environment",
		Long: `Listen on --listen and forward every HTTP request to the service's port with
the environment's key added (header x-detour-session), so a browser or a test
suite reaches the environment without setting any header: a preview URL.

In the lab the requests go straight to a pod of the service (the lab's
inventory in --lab-state says which). Through a cluster they go through the
API server's proxy to the service (services/proxy get rights in the
namespace), which reaches a pod of it from the node, where Detour routes the
request by its key. Stops on Ctrl-C.`,
		Example: `  detour env open pr-7 --service web --port 80 --listen 127.0.0.1:8080 &
  curl http://127.0.0.1:8080/chain`,
		Args: exactArgs(1, "one environment NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if service == "" {
				return usageErrorf("--service is required: the service to open")
			}
			if port == 0 || port > 65535 {
				return usageErrorf("--port %d: want the service port, 1 to 65535", port)
			}
			ns, err := g.interceptNamespace()
			if err != nil {
				return err
			}
			var env *detourv1.Environment
			if err := withControl(cmd.Context(), g, func(ctx context.Context, c detourv1.ControlServiceClient, _ string) error {
				resp, err := c.GetEnvironment(ctx, &detourv1.GetEnvironmentRequest{Namespace: ns, Name: args[0]})
				if err != nil {
					return rpcError(fmt.Sprintf("get environment %s/%s", ns, args[0]), err)
				}
				env = resp.GetEnvironment()
				return nil
			}); err != nil {
				return err
			}
			key := keyOf(env)
			cluster, err := g.clusterMode()
			if err != nil {
				return err
			}
			var target *url.URL
			var transport http.RoundTripper = http.DefaultTransport
			if cluster {
				kc, err := g.kubeConfig()
				if err != nil {
					return err
				}
				if target, err = url.Parse(kc.REST.Host); err != nil {
					return fmt.Errorf("API server address %q: %w", kc.REST.Host, err)
				}
				target.Path = fmt.Sprintf("/api/v1/namespaces/%s/services/%s:%d/proxy", ns, service, port)
				if transport, err = rest.TransportFor(kc.REST); err != nil {
					return err
				}
			} else {
				addr, err := labServiceAddr(labState, ns, service, port)
				if err != nil {
					return err
				}
				target = &url.URL{Scheme: "http", Host: addr.String()}
			}
			rp := &httputil.ReverseProxy{
				Rewrite: func(r *httputil.ProxyRequest) {
					r.SetURL(target)
					r.Out.Host = r.In.Host
					r.Out.Header.Set("x-detour-session", key)
				},
				Transport: transport,
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return withCode(exitError, fmt.Errorf("listen %s: %w", listen, err))
			}
			srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
			fmt.Fprintf(cmd.OutOrStdout(), "environment %s/%s (key %s): http://%s -> %s port %d\n", ns, args[0], key, ln.Addr(), service, port)
			go func() {
				<-cmd.Context().Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(ctx)
			}()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&service, "service", "", "the `SERVICE` to open, in the environment's namespace")
	portVar(f, &port, "port", "the service `PORT`")
	f.StringVar(&listen, "listen", "127.0.0.1:8080", "local `ADDRESS` to serve on")
	f.StringVar(&labState, "lab-state", lab.DefaultStateDir, "the lab's state `DIR` (the lab only)")
	return cmd
}

// labServiceAddr is the address of a pod the lab service selects, at the
// service port's target port.
func labServiceAddr(stateDir, ns, service string, port uint32) (netip.AddrPort, error) {
	inv, err := inventory.Load(filepath.Join(stateDir, lab.InventoryFile))
	if err != nil {
		return netip.AddrPort{}, withCode(exitError, fmt.Errorf("the lab's inventory (is the lab up? --lab-state): %w", err))
	}
	svc, err := inv.Service(ns, service)
	if err != nil {
		return netip.AddrPort{}, withCode(exitNotFound, fmt.Errorf("service %s/%s is not in the lab", ns, service))
	}
	tp, err := svc.TargetPort(port)
	if err != nil {
		return netip.AddrPort{}, withCode(exitUsage, err)
	}
	for _, p := range inv.Endpoints(svc) {
		if ip, err := netip.ParseAddr(p.IP); err == nil {
			return netip.AddrPortFrom(ip, uint16(tp)), nil
		}
	}
	return netip.AddrPort{}, withCode(exitError, fmt.Errorf("service %s/%s selects no pod", ns, service))
}
