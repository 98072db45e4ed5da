package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apiconv"
	"github.com/detourdev/detour/pkg/redirect/match"
)

func newInterceptCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "intercept",
		Short: "Create, list, inspect, renew and delete intercepts",
		Long: `An intercept sends the requests to a shared service's port that match its
conditions (usually your session key) to your own pod; every other request
reaches the shared service untouched.

An intercept lives in the namespace of its service: -n, else (through a
cluster) the kubeconfig context's namespace, else "default".`,
		Args: noArgs,
	}
	cmd.PersistentFlags().StringVarP(&g.namespace, "namespace", "n", "",
		"`NAMESPACE` of the intercepts (default: the kubeconfig context's namespace through a cluster, else default)")
	cmd.AddCommand(
		newInterceptCreateCmd(g),
		newInterceptListCmd(g),
		newInterceptGetCmd(g),
		newInterceptDeleteCmd(g),
		newInterceptRenewCmd(g),
	)
	return cmd
}

// Argument checks that fail with the usage exit code, as flag errors do.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("want %s, got %d argument(s)", names, len(args))
		}
		return nil
	}
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return nil
}

// condFlag is one condition flag. All of them append to one list, so that
// the conditions keep the order they were given in (the matcher tests them
// in that order, so the most selective should come first).
type condFlag struct {
	kind  match.Kind
	typ   string
	conds *[]match.Condition
}

func (f *condFlag) String() string { return "" }
func (f *condFlag) Type() string   { return f.typ }
func (f *condFlag) Set(s string) error {
	c, err := match.ParseFlag(f.kind, s)
	if err != nil {
		return err
	}
	*f.conds = append(*f.conds, c)
	return nil
}

// parseService splits NS/SVC. A bare SVC is in the namespace of -n
// (nsFlag), or "" when -n is not given: the caller resolves the default
// then, after every flag is checked. -n, when given, must agree with NS: an
// intercept lives beside its service.
func parseService(s, nsFlag string) (ns, name string, err error) {
	if s == "" {
		return "", "", usageErrorf("--service is required (NAMESPACE/SERVICE or SERVICE)")
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		ns, name = nsFlag, s
	}
	if (ok && ns == "") || name == "" || strings.Contains(name, "/") {
		return "", "", usageErrorf("--service %q: want NAMESPACE/SERVICE or SERVICE", s)
	}
	if ok && nsFlag != "" && nsFlag != ns {
		return "", "", usageErrorf("--service %q is in namespace %s but -n says %s: an intercept lives in its service's namespace", s, ns, nsFlag)
	}
	return ns, name, nil
}

func newInterceptCreateCmd(g *globals) *cobra.Command {
	var (
		service string
		port    uint32
		to      string
		ttl     time.Duration
		wait    time.Duration
		conds   []match.Condition
		l4      bool
		fromPod []string
		fromNS  []string
	)
	cmd := &cobra.Command{
		Use:   "create NAME --service [NS/]SVC --port PORT CONDITION... --to HOST:PORT [--ttl D] [-n NS]",
		Short: "Send the requests that match to your pod",
		Long: `Create an intercept on one port of a shared service. A request that meets
every condition goes to --to; every other request reaches the service as
before. Give at least one condition; repeat flags to add more (all must hold).
With --l4 no request is read: every connection to the port goes to --to.
Callers in pods on the intercepted pod's node (through the pod's address or
the Service's ClusterIP) are sent there at connect(), with nothing of Detour
left in their path, while --to listens; the others go through the agent.
--from-pod and --from-namespace restrict an intercept to connections from
those pods.
An intercept that could select a request another intercept on the same port
selects is refused, and the message names that intercept.

The intercept lives in the service's namespace: NS of --service, else -n,
else (through a cluster) the kubeconfig context's namespace, else default.

--to is HOST:PORT where HOST is a pod in the service's namespace, NS/POD, or
an IP address. With --ttl the intercept expires unless renewed in time.`,
		Example: `  detour intercept create alice --service default/api --port 80 --session alice --to api-alice:8080 --ttl 1h
  detour intercept create beta --service api --port 80 --header x-user=beta --path-prefix /v2 --to 10.0.0.9:8080
  detour intercept create db --service default/postgres --port 5432 --l4 --from-pod client --to pg-alice:5432`,
		Args: exactArgs(1, "one intercept NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			ns, svc, err := parseService(service, g.namespace)
			if err != nil {
				return err
			}
			if port == 0 {
				return usageErrorf("--port is required: the service port to intercept (1-65535)")
			}
			if to == "" {
				return usageErrorf("--to is required: HOST:PORT of your pod (POD, NS/POD or an IP)")
			}
			if !strings.Contains(to, ":") {
				return usageErrorf("--to %q: want HOST:PORT", to)
			}
			switch {
			case l4 && len(conds) > 0:
				return usageErrorf("--l4 takes whole connections and reads no request: drop the request conditions")
			case !l4 && len(conds) == 0:
				return usageErrorf("give at least one condition (--session, --header, --header-prefix, --header-regex, --baggage, --path, --path-prefix or --method), or --l4")
			case !l4:
				if err := match.Validate(conds); err != nil {
					return usageErrorf("%v", err)
				}
			}
			apiConds, err := apiconv.ConditionsToProto(conds)
			if err != nil {
				return usageErrorf("%v", err)
			}
			if ns == "" {
				if ns, err = g.interceptNamespace(); err != nil {
					return err
				}
			}
			ic := &detourv1.Intercept{
				Namespace: ns,
				Name:      args[0],
				Spec: &detourv1.InterceptSpec{
					ServiceNamespace: ns,
					ServiceName:      svc,
					Port:             port,
					Match:            apiConds,
					Destination:      to,
					L4:               l4,
					SourcePods:       fromPod,
					SourceNamespaces: fromNS,
				},
			}
			if ttl > 0 {
				ic.Spec.Ttl = durationpb.New(ttl)
			}
			conn, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer conn.Close()
			c := detourv1.NewControlServiceClient(conn)
			err = func() error {
				ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
				defer cancel()
				resp, err := c.CreateIntercept(ctx, &detourv1.CreateInterceptRequest{Intercept: ic})
				if err != nil {
					return rpcError(fmt.Sprintf("create intercept %s/%s", ns, args[0]), err)
				}
				if g.output != outTable {
					return printMessage(cmd.OutOrStdout(), g.output, resp)
				}
				got := resp.GetIntercept()
				fmt.Fprintf(cmd.OutOrStdout(), "intercept %s/%s created: %s on %s/%s port %d goes to %s, expires %s\n",
					got.GetNamespace(), got.GetName(), apiconv.DescribeSpec(got.GetSpec()),
					got.GetSpec().GetServiceNamespace(), got.GetSpec().GetServiceName(), got.GetSpec().GetPort(),
					got.GetSpec().GetDestination(), expiresIn(got, time.Now()))
				return nil
			}()
			if err != nil || wait <= 0 {
				return err
			}
			return waitSteering(cmd.Context(), c, cmd.ErrOrStderr(), ns, args[0], wait)
		},
	}
	f := cmd.Flags()
	f.StringVar(&service, "service", "", "the shared service, `NS/SVC` or SVC (in the namespace of -n or the context, else default)")
	portVar(f, &port, "port", "the service `PORT` to intercept")
	f.StringVar(&to, "to", "", "where matching requests go, `HOST:PORT`: POD:PORT, NS/POD:PORT or IP:PORT")
	durationVar(f, &ttl, "ttl", 0, 0, false, "lease `DURATION`: the intercept expires this long after creation or renewal (0: never)")
	f.BoolVar(&l4, "l4", false, "take every connection to the port (no request is read; TLS passes through): redirected at connect() for callers on the node, relayed by the agent for the others")
	f.StringArrayVar(&fromPod, "from-pod", nil, "only detour connections from this pod, `[NS/]POD` (repeatable)")
	f.StringArrayVar(&fromNS, "from-namespace", nil, "only detour connections from pods of this `NAMESPACE` (repeatable)")
	durationVar(f, &wait, "wait", 0, 0, false, "after creating, wait up to `DURATION` until every targeted node reports steering attached (exit 1 if not)")
	for _, cf := range []struct {
		name, typ, usage string
		kind             match.Kind
	}{
		{"session", "KEY", "session key: header x-detour-session, else baggage member detour-session, equals KEY", match.Session},
		{"header", "NAME=VALUE", "header NAME equals VALUE", match.HeaderExact},
		{"header-prefix", "NAME=PREFIX", "header NAME starts with PREFIX", match.HeaderPrefix},
		{"header-regex", "NAME=REGEXP", "header NAME matches the Go regular expression REGEXP", match.HeaderRegex},
		{"baggage", "KEY=VALUE", "W3C baggage member KEY equals VALUE", match.Baggage},
		{"path", "PATH", "request path (without query) equals PATH", match.PathExact},
		{"path-prefix", "PREFIX", "request path starts with PREFIX", match.PathPrefix},
		{"method", "METHOD", "request method equals METHOD", match.Method},
	} {
		f.Var(&condFlag{kind: cf.kind, typ: cf.typ, conds: &conds}, cf.name, cf.usage+" (repeatable)")
	}
	return cmd
}

func newInterceptListCmd(g *globals) *cobra.Command {
	return newListCmd(g, "intercepts", func(ctx context.Context, c detourv1.ControlServiceClient, ns string) (*detourv1.ListInterceptsResponse, error) {
		return c.ListIntercepts(ctx, &detourv1.ListInterceptsRequest{Namespace: ns})
	}, func(w io.Writer, r *detourv1.ListInterceptsResponse) error {
		return printIntercepts(w, r.GetIntercepts(), time.Now())
	})
}

// newListCmd is a `list [-n NS | -A]` command: list fetches the objects of
// a namespace (every namespace for ""), table prints them for -o table.
func newListCmd[R proto.Message](g *globals, what string, list func(context.Context, detourv1.ControlServiceClient, string) (R, error), table func(io.Writer, R) error) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:     "list [-n NS | -A]",
		Aliases: []string{"ls"},
		Short:   "List " + what,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			if all && cmd.Flags().Changed("namespace") {
				return usageErrorf("-n and -A exclude each other")
			}
			ns := ""
			if !all {
				var err error
				if ns, err = g.interceptNamespace(); err != nil {
					return err
				}
			}
			return withControl(cmd.Context(), g, func(ctx context.Context, c detourv1.ControlServiceClient, _ string) error {
				resp, err := list(ctx, c, ns)
				if err != nil {
					return rpcError("list "+what, err)
				}
				if g.output != outTable {
					return printMessage(cmd.OutOrStdout(), g.output, resp)
				}
				return table(cmd.OutOrStdout(), resp)
			})
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list the "+what+" of every namespace")
	return cmd
}

func newInterceptGetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get NAME [-n NS]",
		Short: "Show one intercept",
		Args:  exactArgs(1, "one intercept NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			ns, err := g.interceptNamespace()
			if err != nil {
				return err
			}
			return withControl(cmd.Context(), g, func(ctx context.Context, c detourv1.ControlServiceClient, _ string) error {
				resp, err := c.GetIntercept(ctx, &detourv1.GetInterceptRequest{Namespace: ns, Name: args[0]})
				if err != nil {
					return rpcError(fmt.Sprintf("get intercept %s/%s", ns, args[0]), err)
				}
				if g.output != outTable {
					return printMessage(cmd.OutOrStdout(), g.output, resp)
				}
				return printIntercepts(cmd.OutOrStdout(), []*detourv1.Intercept{resp.GetIntercept()}, time.Now())
			})
		},
	}
	return cmd
}

func newInterceptDeleteCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "delete NAME [-n NS]",
		Aliases: []string{"rm"},
		Short:   "Delete an intercept; its requests reach the shared service again",
		Args:    exactArgs(1, "one intercept NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			ns, err := g.interceptNamespace()
			if err != nil {
				return err
			}
			return withControl(cmd.Context(), g, func(ctx context.Context, c detourv1.ControlServiceClient, _ string) error {
				resp, err := c.DeleteIntercept(ctx, &detourv1.DeleteInterceptRequest{Namespace: ns, Name: args[0]})
				if err != nil {
					return rpcError(fmt.Sprintf("delete intercept %s/%s", ns, args[0]), err)
				}
				if g.output != outTable {
					return printMessage(cmd.OutOrStdout(), g.output, resp)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "intercept %s/%s deleted\n", ns, args[0])
				return nil
			})
		},
	}
	return cmd
}

func newInterceptRenewCmd(g *globals) *cobra.Command {
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "renew NAME [-n NS] [--ttl D]",
		Short: "Extend an intercept's lease",
		Long: `Set the intercept's lease to end --ttl from now, or its own ttl from now when
--ttl is not given. An intercept created without a ttl has no lease to renew
unless --ttl gives it one.`,
		Args: exactArgs(1, "one intercept NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			ns, err := g.interceptNamespace()
			if err != nil {
				return err
			}
			req := &detourv1.RenewInterceptRequest{Namespace: ns, Name: args[0]}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			return withControl(cmd.Context(), g, func(ctx context.Context, c detourv1.ControlServiceClient, _ string) error {
				resp, err := c.RenewIntercept(ctx, req)
				if err != nil {
					return rpcError(fmt.Sprintf("renew intercept %s/%s", ns, args[0]), err)
				}
				if g.output != outTable {
					return printMessage(cmd.OutOrStdout(), g.output, resp)
				}
				ic := resp.GetIntercept()
				when := "never (no lease)"
				if ic.GetExpiresAt() != nil {
					when = expiresIn(ic, time.Now()) + " (" + ic.GetExpiresAt().AsTime().Local().Format(time.RFC3339) + ")"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "intercept %s/%s expires %s\n", ic.GetNamespace(), ic.GetName(), when)
				return nil
			})
		},
	}
	durationVar(cmd.Flags(), &ttl, "ttl", 0, 0, false, "new lease `DURATION` from now (default: the intercept's own ttl)")
	return cmd
}

func newStatusCmd(g *globals) *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:   "status [-n NS]",
		Short: "Show the controller, the node agents and every intercept's steering and counters",
		Long: `Show the controller (address, or pod through a cluster; version, up since), each node agent (connected,
last seen) and, per intercept and node: whether steering is attached, how many
requests (for --l4, connections) matched, how many fell back to the shared service because your pod
could not be reached, and how many connections the kernel steered.

Every namespace by default; -n shows one. Through a cluster, the controller
requires list on intercepts.detour.dev where you look: a developer who may
only list in their namespace uses -n.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			return withControl(cmd.Context(), g, func(ctx context.Context, c detourv1.ControlServiceClient, where string) error {
				resp, err := c.GetStatus(ctx, &detourv1.GetStatusRequest{Namespace: ns})
				if err != nil {
					return rpcError("get status", err)
				}
				if g.output != outTable {
					return printMessage(cmd.OutOrStdout(), g.output, resp)
				}
				return printStatus(cmd.OutOrStdout(), where, resp, time.Now())
			})
		},
	}
	cmd.Flags().StringVarP(&ns, "namespace", "n", "", "show only the intercepts of `NAMESPACE` (default: all)")
	return cmd
}

// waitSteering polls the controller until every node the intercept targets
// reports its steering attached, so scripts can send traffic right after.
func waitSteering(ctx context.Context, c detourv1.ControlServiceClient, progress io.Writer, ns, name string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	fmt.Fprintf(progress, "waiting up to %s for steering of %s/%s...\n", within, ns, name)
	last := "no status yet"
	// The agent reports as soon as it has applied a change, a few
	// milliseconds after the create: ask again soon, then less often.
	every := 5 * time.Millisecond
	for {
		resp, err := c.GetStatus(ctx, &detourv1.GetStatusRequest{Namespace: ns})
		if err == nil {
			if ready, why := steeringReady(resp, ns, name); ready {
				fmt.Fprintf(progress, "steering of %s/%s attached\n", ns, name)
				return nil
			} else {
				last = why
			}
		} else if ctx.Err() == nil {
			last = status.Convert(err).Message()
		}
		select {
		case <-ctx.Done():
			return withCode(exitError, fmt.Errorf("intercept %s/%s was created, but its steering is not attached after %s: %s", ns, name, within, last))
		case <-time.After(every):
		}
		every = min(2*every, 100*time.Millisecond)
	}
}

func steeringReady(st *detourv1.GetStatusResponse, ns, name string) (bool, string) {
	for _, is := range st.GetIntercepts() {
		if is.GetNamespace() != ns || is.GetName() != name {
			continue
		}
		if len(is.GetNodes()) == 0 {
			return false, "no node runs a pod of the service"
		}
		for _, n := range is.GetNodes() {
			if !n.GetSteeringAttached() {
				why := "node " + n.GetNode() + " has not attached steering"
				if n.GetNode() == "" {
					why = "no node targeted"
				}
				if n.GetError() != "" {
					why += ": " + n.GetError()
				}
				return false, why
			}
		}
		return true, ""
	}
	return false, "intercept not in status"
}
