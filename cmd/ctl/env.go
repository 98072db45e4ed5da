package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

func newEnvCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "env",
		Aliases: []string{"environment"},
		Short:   "Create, list, inspect, renew, open and delete ephemeral environments",
		Long: `An environment forks a few workloads of a baseline namespace (new image,
changed env, another command), shares everything else, and routes to its
forks: requests carrying its key (header x-detour-session: KEY, or baggage
member detour-session=KEY) reach the forks, and the forks' own connections to
each other's services go fork to fork without any header. It is removed, with
everything it made, when its TTL ends or it is deleted.

An environment lives in its baseline namespace: -n, else (through a cluster)
the kubeconfig context's namespace, else "default". In the lab, a workload is
a lab pod (its name, or its workload: field), and a fork runs the pod's
command with the overrides: the lab runs commands, not images.`,
		Args: noArgs,
	}
	cmd.PersistentFlags().StringVarP(&g.namespace, "namespace", "n", "",
		"baseline `NAMESPACE` (default: the kubeconfig context's namespace through a cluster, else default)")
	cmd.AddCommand(newEnvCreateCmd(g), newEnvListCmd(g), newEnvGetCmd(g, "get"), newEnvGetCmd(g, "status"),
		newEnvDeleteCmd(g), newEnvRenewCmd(g), newEnvOpenCmd(g))
	return cmd
}

func newEnvCreateCmd(g *globals) *cobra.Command {
	var (
		ff     forkFlags
		key    string
		ttl    time.Duration
		wait   time.Duration
		df     dataFlags
		source detourv1.EnvironmentSource
	)
	cmd := &cobra.Command{
		Use:   "create NAME --fork WORKLOAD [overrides...] [--ttl D] [--wait D]",
		Short: "Fork workloads of the baseline into a new environment",
		Long: `Create an environment: each --fork workload of the baseline namespace is
copied (as <workload>-<environment>) with the overrides given for it, and
requests carrying the environment's key reach the copies. Overrides name
their workload first, and a container after a slash when the workload has
several (WORKLOAD/CONTAINER):

  --image W[/C]=IMAGE            the container's image (a cluster only)
  --set-env W[/C]:NAME=VALUE     set a variable (every container without /C)
  --unset-env W[/C]:NAME         remove a variable
  --env-from W[/C]:NAME=SOURCE   a variable from configmap/OBJ/KEY, secret/OBJ/KEY or field/PATH
  --command W[/C]=ARGV           replace the command (words split as a shell would, no expansion)
  --replicas W=N                 pods of the fork (default 1)
  --patch W=PATCH                a strategic-merge patch of the pod template (JSON, YAML or @FILE)

Data of the environment's own: --data NAME=postgres-branch[:MODE] starts a
branch of the baseline's PostgreSQL database (the workload NAME, or
--data-workload) filled from a snapshot taken now (MODE schema, all or
filtered: --data-filter NAME:TABLE=WHERE), anonymised by --data-anonymize,
before any fork starts; the forks get its connection in DATABASE_URL (or
--data-env). --data NAME=job:IMAGE (--data-command NAME:ARGV) is a seed job
run once the forks are up. The --data-* flags name their entry first.

With --wait, it waits until the environment is Ready (its data loaded, its
forks' pods ready, its routes active), printing what it still waits for,
and fails if the environment fails or the time runs out.`,
		Example: `  detour env create pr-42 -n shop --fork api --image api=registry.example/api:pr-42 --set-env api:FEATURE_X=on \
    --fork worker --image worker=registry.example/worker:pr-42 --ttl 48h --wait 5m
  detour env create pr-7 --fork web --fork api --set-env api:GREETING=hi --wait 30s   # in the lab
  detour env create pr-42 -n shop --fork api --data orders-db=postgres-branch --data-workload orders-db:sts/postgres \
    --data-credentials orders-db:postgres-creds --data-filter orders-db:orders="created_at > now() - interval '7 days'" \
    --data-anonymize orders-db:configmap/anonymize/orders.sql --data seed=job:registry.example/seed:1 --wait 5m`,
		Args: exactArgs(1, "one environment NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			forks, err := ff.build()
			if err != nil {
				return err
			}
			if ttl < 0 || wait < 0 {
				return usageErrorf("--ttl and --wait must not be negative")
			}
			ns, err := g.interceptNamespace()
			if err != nil {
				return err
			}
			spec := &detourv1.EnvironmentSpec{Key: key, Forks: forks}
			if ttl > 0 {
				spec.Ttl = durationpb.New(ttl)
			}
			if spec.Data, err = df.build(); err != nil {
				return err
			}
			if source.Repository+source.Branch+source.Commit != "" || source.PullRequest != 0 {
				spec.Source = &source
			}
			env := &detourv1.Environment{Namespace: ns, Name: args[0], Spec: spec}
			conn, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer conn.Close()
			c := detourv1.NewControlServiceClient(conn)
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			resp, err := c.CreateEnvironment(ctx, &detourv1.CreateEnvironmentRequest{Environment: env})
			cancel()
			if err != nil {
				return rpcError(fmt.Sprintf("create environment %s/%s", ns, args[0]), err)
			}
			got := resp.GetEnvironment()
			if wait == 0 {
				if g.output != outTable {
					return printMessage(cmd.OutOrStdout(), g.output, resp)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "environment %s/%s created: key %s, forks %s, expires %s\n",
					got.GetNamespace(), got.GetName(), keyOf(got), got.GetStatus().GetForkSummary(), envExpires(got, time.Now()))
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "environment %s/%s created: key %s; waiting up to %s for it to be Ready\n",
				got.GetNamespace(), got.GetName(), keyOf(got), wait)
			final, err := waitEnvironment(cmd.Context(), c, cmd.ErrOrStderr(), ns, args[0], wait)
			if final != nil && g.output != outTable {
				if perr := printMessage(cmd.OutOrStdout(), g.output, final); perr != nil {
					return perr
				}
			}
			if err != nil {
				return err
			}
			if g.output == outTable {
				return printEnvironment(cmd.OutOrStdout(), final, time.Now())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&ff.forks, "fork", nil, "fork this workload of the baseline, `[KIND/]NAME` (Deployment unless statefulset/NAME; repeatable)")
	f.StringArrayVar(&ff.images, "image", nil, "`W[/C]=IMAGE`: the fork's container image (repeatable)")
	f.StringArrayVar(&ff.setEnv, "set-env", nil, "`W[/C]:NAME=VALUE`: set a variable in the fork (repeatable)")
	f.StringArrayVar(&ff.unsetEnv, "unset-env", nil, "`W[/C]:NAME`: remove a variable from the fork (repeatable)")
	f.StringArrayVar(&ff.envFrom, "env-from", nil, "`W[/C]:NAME=SOURCE`: a variable from configmap/OBJ/KEY, secret/OBJ/KEY or field/PATH (repeatable)")
	f.StringArrayVar(&ff.commands, "command", nil, "`W[/C]=ARGV`: replace the fork's command (repeatable)")
	f.StringArrayVar(&ff.replicas, "replicas", nil, "`W=N`: pods of the fork (default 1; repeatable)")
	f.StringArrayVar(&ff.patches, "patch", nil, "`W=PATCH`: strategic-merge patch of the fork's pod template, JSON, YAML or @FILE (repeatable)")
	f.StringVar(&key, "key", "", "session `KEY` of the environment (default: its name)")
	durationVar(f, &ttl, "ttl", 0, 0, false, "life `DURATION` of the environment after creation or renewal (default: the controller's, 24h unless set)")
	durationVar(f, &wait, "wait", 0, 0, false, "wait up to `DURATION` for the environment to be Ready, showing progress (exit 1 if it fails or is not Ready in time)")
	df.register(cmd)
	f.StringVar(&source.Repository, "source-repo", "", "the repository under test, shown in the environment (`REPO`)")
	f.StringVar(&source.Branch, "source-branch", "", "the branch under test (`BRANCH`)")
	int64Var(f, &source.PullRequest, "source-pr", 1, "the pull request under test (`NUMBER`)")
	f.StringVar(&source.Commit, "source-commit", "", "the commit under test (`SHA`)")
	return cmd
}

func keyOf(e *detourv1.Environment) string {
	if k := e.GetStatus().GetKey(); k != "" {
		return k
	}
	if k := e.GetSpec().GetKey(); k != "" {
		return k
	}
	return e.GetName()
}

// readyOf is an environment's Ready condition, or nil.
func readyOf(e *detourv1.Environment) *detourv1.StatusCondition {
	for _, c := range e.GetStatus().GetConditions() {
		if c.GetType() == "Ready" {
			return c
		}
	}
	return nil
}

// waitEnvironment watches one environment until it is Ready (nil error),
// Failed, gone, or the time runs out, printing each change of what it
// waits for.
func waitEnvironment(ctx context.Context, c detourv1.ControlServiceClient, progress io.Writer, ns, name string, within time.Duration) (*detourv1.Environment, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	stream, err := c.WatchEnvironments(ctx, &detourv1.WatchEnvironmentsRequest{Namespace: ns, Name: name})
	if err != nil {
		return nil, rpcError(fmt.Sprintf("watch environment %s/%s", ns, name), err)
	}
	var last *detourv1.Environment
	said := ""
	for {
		ev, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded {
				msg := "no status yet"
				if r := readyOf(last); r != nil {
					msg = r.GetMessage()
				}
				return last, withCode(exitError, fmt.Errorf("environment %s/%s is not Ready after %s (%s): %s",
					ns, name, within, last.GetStatus().GetPhase(), msg))
			}
			return last, rpcError(fmt.Sprintf("watch environment %s/%s", ns, name), err)
		}
		if ev.GetType() == detourv1.WatchEnvironmentsResponse_TYPE_DELETED {
			return last, withCode(exitNotFound, fmt.Errorf("environment %s/%s was deleted while waiting", ns, name))
		}
		e := ev.GetEnvironment()
		last = e
		phase := e.GetStatus().GetPhase()
		msg := phase
		if r := readyOf(e); r != nil {
			msg = phase + ": " + r.GetMessage()
		}
		if msg != said && msg != "" {
			fmt.Fprintf(progress, "[%5.1fs] %s\n", time.Since(start).Seconds(), msg)
			said = msg
		}
		switch phase {
		case "Ready":
			fmt.Fprintf(progress, "environment %s/%s is Ready in %.1fs\n", ns, name, time.Since(start).Seconds())
			return e, nil
		case "Failed":
			r := readyOf(e)
			return e, withCode(exitError, fmt.Errorf("environment %s/%s failed (%s): %s; `detour env delete %s -n %s` removes what it made",
				ns, name, r.GetReason(), r.GetMessage(), name, ns))
		case "Expiring", "Deleting":
			return e, withCode(exitError, fmt.Errorf("environment %s/%s is being removed (%s)", ns, name, phase))
		}
	}
}

func envExpires(e *detourv1.Environment, now time.Time) string {
	t := e.GetStatus().GetExpiresAt()
	if t == nil {
		return "-"
	}
	d := t.AsTime().Sub(now)
	if d <= 0 {
		return "now"
	}
	return "in " + shortDuration(d)
}

// printEnvironments writes the environment table.
func printEnvironments(w io.Writer, envs []*detourv1.Environment, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tKEY\tFORKS\tPHASE\tEXPIRES\tAGE")
	for _, e := range envs {
		phase := e.GetStatus().GetPhase()
		if phase == "" {
			phase = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.GetNamespace(), e.GetName(), keyOf(e), e.GetStatus().GetForkSummary(),
			phase, envExpires(e, now), ageOf(e.GetCreatedAt().AsTime(), now))
	}
	return tw.Flush()
}

// printEnvironment writes one environment, its forks, routes and
// conditions.
func printEnvironment(w io.Writer, e *detourv1.Environment, now time.Time) error {
	st := e.GetStatus()
	fmt.Fprintf(w, "Environment: %s/%s\nKey:         %s\nPhase:       %s\nExpires:     %s\n",
		e.GetNamespace(), e.GetName(), keyOf(e), orDash(st.GetPhase()), envExpires(e, now))
	if e.GetDeletingSince() != nil {
		fmt.Fprintf(w, "Deleting:    since %s\n", e.GetDeletingSince().AsTime().Local().Format(time.RFC3339))
	}
	if src := e.GetSpec().GetSource(); src != nil {
		fmt.Fprintf(w, "Source:      %s %s pr=%d %s\n", src.GetRepository(), src.GetBranch(), src.GetPullRequest(), src.GetCommit())
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nFORK\tOF\tREADY\tIMAGES\tMESSAGE")
	for _, f := range st.GetForks() {
		fmt.Fprintf(tw, "%s\t%s/%s\t%d/%d\t%s\t%s\n", f.GetName(), f.GetWorkload().GetKind(), f.GetWorkload().GetName(),
			f.GetReadyReplicas(), f.GetReplicas(), orDash(strings.Join(f.GetImages(), " ")), orDash(f.GetMessage()))
	}
	fmt.Fprintln(tw, "\nROUTE (INTERCEPT)\tKIND\tSERVICE\tTO\tSTATE")
	for _, r := range st.GetRoutes() {
		fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%s\t%s\n", r.GetIntercept(), r.GetKind(), r.GetService(), r.GetPort(), r.GetFork(), orDash(r.GetState()))
	}
	_ = tw.Flush()
	printData(w, e)
	fmt.Fprintln(tw, "\nCONDITION\tSTATUS\tREASON\tMESSAGE")
	for _, c := range st.GetConditions() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.GetType(), c.GetStatus(), c.GetReason(), c.GetMessage())
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newEnvListCmd(g *globals) *cobra.Command {
	return newListCmd(g, "environments", func(ctx context.Context, c detourv1.ControlServiceClient, ns string) (*detourv1.ListEnvironmentsResponse, error) {
		return c.ListEnvironments(ctx, &detourv1.ListEnvironmentsRequest{Namespace: ns})
	}, func(w io.Writer, r *detourv1.ListEnvironmentsResponse) error {
		return printEnvironments(w, r.GetEnvironments(), time.Now())
	})
}

func newEnvGetCmd(g *globals, verb string) *cobra.Command {
	short := "Show one environment: its forks, routes and conditions"
	if verb == "status" {
		short = "Show where an environment is: phase, what it waits for, each fork's pods and each route (same as get)"
	}
	return &cobra.Command{
		Use:   verb + " NAME [-n NS]",
		Short: short,
		Args:  exactArgs(1, "one environment NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			ns, err := g.interceptNamespace()
			if err != nil {
				return err
			}
			return withControl(cmd.Context(), g, func(ctx context.Context, c detourv1.ControlServiceClient, _ string) error {
				resp, err := c.GetEnvironment(ctx, &detourv1.GetEnvironmentRequest{Namespace: ns, Name: args[0]})
				if err != nil {
					return rpcError(fmt.Sprintf("get environment %s/%s", ns, args[0]), err)
				}
				if g.output != outTable {
					return printMessage(cmd.OutOrStdout(), g.output, resp)
				}
				return printEnvironment(cmd.OutOrStdout(), resp.GetEnvironment(), time.Now())
			})
		},
	}
}

func newEnvDeleteCmd(g *globals) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:     "delete NAME [-n NS] [--wait D]",
		Aliases: []string{"rm"},
		Short:   "Delete an environment: its routes, forks and data go",
		Long: `Delete an environment. Its routes go first (requests with its key reach the
baseline again), then its forks with their pods and storage. With --wait,
wait until all of it is gone.`,
		Args: exactArgs(1, "one environment NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			if wait < 0 {
				return usageErrorf("--wait must not be negative")
			}
			ns, err := g.interceptNamespace()
			if err != nil {
				return err
			}
			conn, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer conn.Close()
			c := detourv1.NewControlServiceClient(conn)
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			resp, err := c.DeleteEnvironment(ctx, &detourv1.DeleteEnvironmentRequest{Namespace: ns, Name: args[0]})
			cancel()
			if err != nil {
				return rpcError(fmt.Sprintf("delete environment %s/%s", ns, args[0]), err)
			}
			if g.output != outTable {
				if err := printMessage(cmd.OutOrStdout(), g.output, resp); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "environment %s/%s is being removed\n", ns, args[0])
			}
			if wait == 0 {
				return nil
			}
			return waitGone(cmd.Context(), c, cmd.ErrOrStderr(), ns, args[0], wait)
		},
	}
	durationVar(cmd.Flags(), &wait, "wait", 0, 0, false, "wait up to `DURATION` until the environment and everything it made are gone")
	return cmd
}

// waitGone watches an environment until it is gone.
func waitGone(ctx context.Context, c detourv1.ControlServiceClient, progress io.Writer, ns, name string, within time.Duration) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	stream, err := c.WatchEnvironments(ctx, &detourv1.WatchEnvironmentsRequest{Namespace: ns, Name: name})
	if err != nil {
		return rpcError(fmt.Sprintf("watch environment %s/%s", ns, name), err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return withCode(exitError, fmt.Errorf("environment %s/%s still there after %s", ns, name, within))
			}
			return rpcError(fmt.Sprintf("watch environment %s/%s", ns, name), err)
		}
		switch ev.GetType() {
		case detourv1.WatchEnvironmentsResponse_TYPE_DELETED:
			fmt.Fprintf(progress, "environment %s/%s removed in %.1fs\n", ns, name, time.Since(start).Seconds())
			return nil
		default:
			if r := readyOf(ev.GetEnvironment()); r != nil {
				fmt.Fprintf(progress, "[%5.1fs] %s\n", time.Since(start).Seconds(), r.GetMessage())
			}
		}
	}
}

func newEnvRenewCmd(g *globals) *cobra.Command {
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "renew NAME [-n NS] [--ttl D]",
		Short: "Extend an environment's life",
		Long: `Set the environment to end --ttl from now, or its own ttl from now when --ttl
is not given. The controller refuses more than its maximum (--env-max-ttl).`,
		Args: exactArgs(1, "one environment NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			if ttl < 0 {
				return usageErrorf("--ttl %s is negative", ttl)
			}
			ns, err := g.interceptNamespace()
			if err != nil {
				return err
			}
			req := &detourv1.RenewEnvironmentRequest{Namespace: ns, Name: args[0]}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			return withControl(cmd.Context(), g, func(ctx context.Context, c detourv1.ControlServiceClient, _ string) error {
				resp, err := c.RenewEnvironment(ctx, req)
				if err != nil {
					return rpcError(fmt.Sprintf("renew environment %s/%s", ns, args[0]), err)
				}
				if g.output != outTable {
					return printMessage(cmd.OutOrStdout(), g.output, resp)
				}
				e := resp.GetEnvironment()
				fmt.Fprintf(cmd.OutOrStdout(), "environment %s/%s expires %s (%s)\n", ns, args[0], envExpires(e, time.Now()),
					e.GetStatus().GetExpiresAt().AsTime().Local().Format(time.RFC3339))
				return nil
			})
		},
	}
	durationVar(cmd.Flags(), &ttl, "ttl", 0, 0, false, "new life `DURATION` from now (default: the environment's own ttl)")
	return cmd
}
