// Command detour is the Detour CLI: intercepts, status, and the local lab.
package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/detourdev/detour/deploy"
	"github.com/detourdev/detour/pkg/kubeclient"
)

// Exit codes scripts can trust.
const (
	exitOK       = 0
	exitError    = 1 // the operation failed (controller unreachable, server error, timeout)
	exitUsage    = 2 // bad flags or arguments
	exitNotFound = 3 // the named object does not exist
	exitRefused  = 4 // refused: already exists, overlaps another intercept, or not allowed
)

// exitCodesHelp is the exit code table as --help shows it.
const exitCodesHelp = `Exit codes: 0 ok; 1 failure (unreachable, server error, timeout); 2 bad usage;
3 not found; 4 refused: already exists, overlaps another intercept, or not
allowed (forbidden or unauthenticated, by the controller or the API server).`

// codeError carries an exit code out of a command.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &codeError{code: code, err: err} }

// usageErrorf reports bad flags or arguments.
func usageErrorf(format string, a ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, a...))
}

// deps are what tests replace.
type deps struct {
	// manifests is the kustomize tree install and uninstall apply.
	manifests fs.FS
	// forwarder reaches the controller pod; nil: a port-forward through
	// the API server.
	forwarder kubeclient.Forwarder
}

// globals are the flags every command shares, and what they resolve to.
type globals struct {
	controller      string
	output          string
	kubeconfig      string
	context         string
	namespace       string // -n of the intercept commands
	detourNamespace string

	// Which of the flags that choose the mode were given.
	controllerSet, kubeSet bool

	kube *kubeclient.Config // loaded on first use
	deps deps
}

const rootLong = `detour drives Detour: create intercepts that send the requests carrying your
session key to your pod while everyone else's reach the shared service, see
their status, install Detour in a cluster, and run the local lab.

Where the controller is, for intercept and status:
  --controller ADDR          dial ADDR directly, in plain text (the local lab);
                             $DETOUR_CONTROLLER does the same
  --kubeconfig, --context    reach it through the cluster of a kubeconfig
  neither flag               $DETOUR_CONTROLLER if set; else the cluster if a
                             kubeconfig exists ($KUBECONFIG, else ~/.kube/config,
                             as kubectl reads them); else 127.0.0.1:7070
--controller together with --kubeconfig or --context is a usage error.

Through a cluster, detour finds the Ready pod labelled
app.kubernetes.io/name=detour-controller in --detour-namespace (the elected
leader), forwards a local port to its "grpc" port through the API server, as
kubectl port-forward does, checks the controller's TLS certificate against the
CA in ConfigMap detour-ca and the name detour-controller.NAMESPACE.svc, and
sends the bearer token of your kubeconfig user. The controller checks that
token (TokenReview) and your RBAC rights on intercepts.detour.dev in the
intercept's namespace (SubjectAccessReview). A user with a client certificate
only cannot be passed on that way: it needs a token (token, tokenFile, or an
exec or OIDC login that yields one). Reaching the controller needs, in
--detour-namespace: list pods, create pods/portforward, get configmap
detour-ca (the Role detour-client of the manifests).

` + exitCodesHelp

func newRootCmd() *cobra.Command { return newRootCmdWith(deps{manifests: deploy.FS}) }

func newRootCmdWith(d deps) *cobra.Command {
	g := &globals{deps: d}
	root := &cobra.Command{
		Use:           "detour",
		Short:         "Detour your own requests in a shared environment to your own pod",
		Long:          rootLong,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			g.controllerSet = f.Changed("controller")
			g.kubeSet = f.Changed("kubeconfig") || f.Changed("context")
			if g.detourNamespace == "" {
				return usageErrorf("--detour-namespace is empty")
			}
			return nil
		},
	}
	def := os.Getenv("DETOUR_CONTROLLER")
	if def == "" {
		def = "127.0.0.1:7070"
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.controller, "controller", def, "controller gRPC `ADDRESS`, dialled directly in plain text (env DETOUR_CONTROLLER)")
	pf.StringVar(&g.kubeconfig, "kubeconfig", "", "kubeconfig `FILE` (default: $KUBECONFIG, else ~/.kube/config)")
	pf.StringVar(&g.context, "context", "", "kubeconfig `CONTEXT` (default: the current context)")
	pf.StringVar(&g.detourNamespace, "detour-namespace", kubeclient.DetourNamespace, "`NAMESPACE` Detour is installed in")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withCode(exitUsage, err) })
	root.AddCommand(newInterceptCmd(g), newStatusCmd(g), newInstallCmd(g), newUninstallCmd(g), newLabCmd(g), newParityCmd(g), newEnvCmd(g))
	return root
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err == nil {
		os.Exit(exitOK)
	}
	fmt.Fprintln(os.Stderr, "Error:", err)
	var ce *codeError
	if errors.As(err, &ce) {
		os.Exit(ce.code)
	}
	// cobra's own argument errors (unknown command, wrong arg count).
	os.Exit(exitError)
}
