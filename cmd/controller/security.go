package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/detourdev/detour/pkg/controller"
	"github.com/detourdev/detour/pkg/kubeauth"
)

// security is how gRPC is served: its server options, and what they
// amount to, for the log.
type security struct {
	opts []grpc.ServerOption
	tls  bool
	auth string
}

// grpcSecurity sets up --tls-secret and --auth. It runs once this replica
// serves (after it becomes the leader), since replicas that wait need
// neither, and the serving certificate is the leader's to keep fresh.
func grpcSecurity(ctx context.Context, o *options, kc *kubeClients, log *slog.Logger) (security, error) {
	sec := security{auth: "none"}
	if o.tlsSecret != "" {
		ns := o.namespace()
		cert, err := kubeauth.EnsureServingCert(ctx, kc.client, ns, o.tlsSecret, o.caConfigMap, servingNames(o.serviceName, ns))
		if err != nil {
			return security{}, fmt.Errorf("--tls-secret %s/%s: %w", ns, o.tlsSecret, err)
		}
		sec.opts = append(sec.opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{*cert},
			MinVersion:   tls.VersionTLS12,
		})))
		sec.tls = true
	}
	if o.auth == "kube" {
		a, err := kubeauth.New(kubeauth.Config{Client: kc.client, Logger: log.With("component", "auth")})
		if err != nil {
			return security{}, fmt.Errorf("--auth kube: %w", err)
		}
		// Each service's own table of who may call it.
		for _, rules := range []kubeauth.Rules{
			controller.ControlRules(),
			controller.AgentSyncRules(o.agentServiceAccount, o.agentTokenAudience),
		} {
			if err := a.Register(rules); err != nil {
				return security{}, fmt.Errorf("--auth kube: %w", err)
			}
		}
		sec.opts = append(sec.opts,
			grpc.ChainUnaryInterceptor(a.UnaryInterceptor()),
			grpc.ChainStreamInterceptor(a.StreamInterceptor()))
		sec.auth = "kube"
	}
	return sec, nil
}

// servingNames are the names clients reach the controller's Service by.
func servingNames(service, namespace string) []string {
	return []string{
		service,
		service + "." + namespace,
		service + "." + namespace + ".svc",
		service + "." + namespace + ".svc.cluster.local",
	}
}
