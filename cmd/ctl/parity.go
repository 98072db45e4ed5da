package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/kubeclient"
	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/environment"
	"github.com/detourdev/detour/pkg/parity/policy"
	"github.com/detourdev/detour/pkg/parity/render"
	"github.com/detourdev/detour/pkg/parity/source"
)

// exitDrift is parity diff's verdict: differences at or above --fail-on.
// It follows the CLI's codes (0 ok, 1 failure, 2 usage, 3 not found, 4
// refused) so that a script can tell drift from a run that failed.
const exitDrift = 5

const paritySourcesHelp = `Each side is one of:
  NAMESPACE            a namespace of the current (or --context) kubeconfig context
  CONTEXT/NAMESPACE    a namespace of another kubeconfig context (another cluster)
  env/NAME             an environment as it runs (its forks over its baseline), in
                       namespace -n, else the kubeconfig context's; a cluster only
  FILE                 a snapshot written by detour parity snapshot, or a file of manifests
  DIRECTORY            manifests (.yaml, .yml, .json below it), or a kustomization
                       (rendered in process, as kustomize build would)
  -                    a YAML stream on standard input (helm template ... | detour parity diff - prod)
A path that exists wins over a namespace of the same name; write ./NAME for a path.
Live sides are only read (get and list): read-only rights are enough.`

func newParityCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "parity",
		Short: "Compare two environments: what differs, secret-safe, as a CI gate",
		Long: `detour parity compares two environments side by side: workloads (images,
command, env by name, resources as quantities, probes, ports, replicas and
HPAs, containers and sidecars, service account, volumes, scheduling),
ConfigMaps, Secrets (keys, and whether values differ: never the values),
Services, Ingress, NetworkPolicies, HPAs, PDBs, and objects on one side only.
Noise is removed (status, ids, timestamps, server defaults, list order, each
side's namespace name inside values). See docs/parity.md.

` + paritySourcesHelp,
	}
	cmd.PersistentFlags().StringVarP(&g.namespace, "namespace", "n", "",
		"`NAMESPACE` of env/NAME sides (default: the kubeconfig context's namespace); a namespace side is named by its argument")
	cmd.AddCommand(newParityDiffCmd(g), newParitySnapshotCmd(g))
	return cmd
}

type parityDiffFlags struct {
	keepNoise      []string
	policy         string
	failOn         string
	runtime        bool
	fingerprintKey string
	leftNamespace  string
	rightNamespace string
}

func newParityDiffCmd(g *globals) *cobra.Command {
	f := &parityDiffFlags{}
	cmd := &cobra.Command{
		Use:   "diff LEFT RIGHT",
		Short: "Report what differs between two environments; exit 5 on drift",
		Long: `Report what differs between LEFT and RIGHT, grouped by object, with each
differing field's left and right values (Secret values show as (set) or
(differs), never themselves) and a summary line.

` + paritySourcesHelp + `

Policy: --policy FILE, else .detour/parity.yaml if it exists: differences to
ignore, differences expected by design (with a reason), a severity per
category, and the severity that fails (failOn). --fail-on overrides it
(info, low, medium, high, or none). Default: low.

Output (-o): table (default), json (schema in docs/parity.md), markdown (for a
pull request comment).

Exit codes: 0 no unexpected difference at or above --fail-on; 5 drift: some
are; 1 failure (unreachable, server error); 2 bad usage (flags, arguments,
policy file); 3 a file or namespace not found.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageErrorf("parity diff takes two sides, LEFT and RIGHT (got %d)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return runParityDiff(cmd, g, f, args) },
	}
	fl := cmd.Flags()
	// Its own -o, over the global one: the formats differ.
	fl.StringVarP(&g.output, "output", "o", render.Table, "output format: table, json or markdown")
	fl.StringVar(&f.policy, "policy", "", "policy `FILE` (default: "+policy.DefaultFile+" if it exists)")
	fl.StringVar(&f.failOn, "fail-on", "", "lowest `SEVERITY` that fails: info, low, medium, high or none (default: the policy's, else low)")
	fl.BoolVar(&f.runtime, "runtime", false, "on live sides, compare what runs too: pods' image digests and restarts, nodes' versions")
	fl.StringVar(&f.fingerprintKey, "fingerprint-key", "", "compare Secret values by HMAC under the key in `FILE` (as snapshots taken with it); default: a random key for this run")
	fl.StringVar(&f.leftNamespace, "left-namespace", "", "the left side's namespace `NAME`, for manifests that name none")
	fl.StringVar(&f.rightNamespace, "right-namespace", "", "the right side's namespace `NAME`, for manifests that name none")
	fl.StringSliceVar(&f.keepNoise, "keep-noise", nil, "turn noise `RULES` off, to see what they hide (names in docs/parity.md, comma-separated)")
	return cmd
}

func runParityDiff(cmd *cobra.Command, g *globals, f *parityDiffFlags, args []string) error {
	format := g.output
	switch format {
	case render.Table, render.JSON, render.Markdown, "md":
	default:
		return usageErrorf("unknown output format %q (-o): want %s", format, strings.Join(render.Formats, ", "))
	}
	pol, err := loadPolicy(f.policy, cmd.Flags().Changed("policy"))
	if err != nil {
		return err
	}
	if f.failOn != "" {
		sev, err := parity.ParseSeverity(f.failOn, true)
		if err != nil {
			return usageErrorf("--fail-on: %v", err)
		}
		pol.FailOn = sev
	}
	left, right, err := parseSides(args)
	if err != nil {
		return err
	}
	fp, err := fingerprinter(f.fingerprintKey, true)
	if err != nil {
		return err
	}
	if err := checkNoiseRules(f.keepNoise); err != nil {
		return err
	}
	l := parityLoader(cmd, g, fp, f.runtime)
	l.KeepNoise = f.keepNoise
	ls, err := l.Load(cmd.Context(), left, f.leftNamespace)
	if err != nil {
		return sourceError("left", err)
	}
	rs, err := l.Load(cmd.Context(), right, f.rightNamespace)
	if err != nil {
		return sourceError("right", err)
	}
	rep, err := parity.Diff(ls, rs, parity.DiffOptions{Policy: pol, KeepNoise: f.keepNoise})
	if err != nil {
		return err
	}
	if err := render.Write(cmd.OutOrStdout(), format, rep); err != nil {
		return err
	}
	if rep.Drift() {
		return withCode(exitDrift, fmt.Errorf("parity: drift: %d unexpected %s at or above %s",
			rep.Summary.Failing, pluralize(rep.Summary.Failing, "difference"), rep.FailOn))
	}
	return nil
}

// checkNoiseRules refuses an unknown rule name before anything is read.
func checkNoiseRules(names []string) error {
	known := make([]string, len(parity.NoiseRules))
	for i, r := range parity.NoiseRules {
		known[i] = r.Name
	}
	for _, n := range names {
		if !slices.Contains(known, n) {
			return usageErrorf("--keep-noise: unknown rule %q (want %s)", n, strings.Join(known, ", "))
		}
	}
	return nil
}

func pluralize(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

// loadPolicy reads --policy, or the default file when it exists.
func loadPolicy(file string, given bool) (*parity.Policy, error) {
	if !given {
		if _, err := os.Stat(policy.DefaultFile); err != nil {
			return &parity.Policy{}, nil
		}
		file = policy.DefaultFile
	}
	pol, err := policy.Load(file)
	var pe *policy.Error
	switch {
	case errors.As(err, &pe):
		return nil, withCode(exitUsage, err)
	case errors.Is(err, os.ErrNotExist):
		return nil, withCode(exitNotFound, err)
	}
	return pol, err
}

func parseSides(args []string) (left, right source.Spec, err error) {
	specs := make([]source.Spec, 2)
	for i, a := range args {
		s, err := source.Parse(a)
		if err != nil {
			return left, right, sourceError([]string{"left", "right"}[i], err)
		}
		specs[i] = s
	}
	if specs[0].Kind == source.Stdin && specs[1].Kind == source.Stdin {
		return left, right, usageErrorf("only one side can be - (standard input)")
	}
	return specs[0], specs[1], nil
}

// fingerprinter is the HMAC key of Secret values: the --fingerprint-key
// file's, else (when random) a key for this run only.
func fingerprinter(file string, random bool) (*parity.Fingerprinter, error) {
	if file == "" {
		if !random {
			return nil, nil
		}
		return parity.NewRunFingerprinter()
	}
	key, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, withCode(exitNotFound, fmt.Errorf("--fingerprint-key: %w", err))
	}
	if err != nil {
		return nil, fmt.Errorf("--fingerprint-key: %w", err)
	}
	fp, err := parity.NewFingerprinter(key)
	if err != nil {
		return nil, usageErrorf("--fingerprint-key %s: %v", file, err)
	}
	return fp, nil
}

func parityLoader(cmd *cobra.Command, g *globals, fp *parity.Fingerprinter, runtime bool) *source.Loader {
	return &source.Loader{
		Stdin:        cmd.InOrStdin(),
		Fingerprint:  fp,
		Runtime:      runtime,
		Environments: cliEnvironments{g},
		Kube: func(kctx string) (kubernetes.Interface, error) {
			if kctx == "" {
				kctx = g.context
			}
			kc, err := kubeclient.Load(kubeclient.LoadOptions{Kubeconfig: g.kubeconfig, Context: kctx})
			if errors.Is(err, kubeclient.ErrContext) {
				return nil, withCode(exitUsage, err)
			}
			if err != nil {
				return nil, err
			}
			return kubernetes.NewForConfig(kc.REST)
		},
	}
}

// cliEnvironments reads env/NAME from the kubeconfig context's cluster: the
// Environment resource and its namespace, read-only. Without a cluster (the
// lab) it says why it cannot.
type cliEnvironments struct{ g *globals }

func (e cliEnvironments) Resolve(ctx context.Context, name string) (*source.EnvironmentView, error) {
	cluster, err := e.g.clusterMode()
	if err != nil {
		return nil, err
	}
	if !cluster {
		return environment.Unavailable{}.Resolve(ctx, name)
	}
	kc, err := e.g.kubeConfig()
	if err != nil {
		return nil, err
	}
	ns, err := e.g.interceptNamespace()
	if err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(kc.REST)
	if err != nil {
		return nil, err
	}
	detour, err := versioned.NewForConfig(kc.REST)
	if err != nil {
		return nil, err
	}
	return (&environment.Resolver{Detour: detour, Kube: kube, Namespace: ns}).Resolve(ctx, name)
}

// sourceError gives a side's error its exit code.
func sourceError(side string, err error) error {
	var ce *codeError
	if errors.As(err, &ce) {
		return err
	}
	err = fmt.Errorf("%s side: %w", side, err)
	switch {
	case errors.Is(err, source.ErrBadArgument):
		return withCode(exitUsage, err)
	case errors.Is(err, source.ErrNotFound), errors.Is(err, os.ErrNotExist):
		return withCode(exitNotFound, err)
	}
	return err
}

type paritySnapshotFlags struct {
	out            string
	fingerprintKey string
	runtime        bool
	namespace      string
}

func newParitySnapshotCmd(g *globals) *cobra.Command {
	f := &paritySnapshotFlags{}
	cmd := &cobra.Command{
		Use:   "snapshot SOURCE -o FILE",
		Short: "Write a side's normalized objects to a file, to diff later",
		Long: `Write what parity compares of SOURCE (usually a live namespace) to FILE, so it
can be diffed later or elsewhere: detour parity diff FILE prod/shop.

A snapshot holds no Secret value. Without --fingerprint-key it holds Secret
keys only, and their values are not compared; with it, an HMAC-SHA256 of each
value under the key in that file, so that snapshots and live sides read with
the same key file compare values. Keep the key file as secret as the values.

` + paritySourcesHelp,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("parity snapshot takes one SOURCE (got %d)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return runParitySnapshot(cmd, g, f, args[0]) },
	}
	fl := cmd.Flags()
	// Its own -o: a file, not a format.
	fl.StringVarP(&f.out, "output", "o", "-", "write the snapshot to `FILE` (- for standard output)")
	fl.StringVar(&f.fingerprintKey, "fingerprint-key", "", "keep an HMAC of each Secret value under the key in `FILE` (at least 16 bytes)")
	fl.BoolVar(&f.runtime, "runtime", false, "on a live side, record what runs too: pods' image digests and restarts, nodes' versions")
	fl.StringVar(&f.namespace, "namespace-name", "", "the side's namespace `NAME`, for manifests that name none")
	return cmd
}

func runParitySnapshot(cmd *cobra.Command, g *globals, f *paritySnapshotFlags, arg string) error {
	s, err := source.Parse(arg)
	if err != nil {
		return sourceError("snapshot", err)
	}
	if s.Kind == source.SnapshotFile {
		return usageErrorf("%s is a snapshot already", arg)
	}
	fp, err := fingerprinter(f.fingerprintKey, false)
	if err != nil {
		return err
	}
	snap, err := parityLoader(cmd, g, fp, f.runtime).Load(cmd.Context(), s, f.namespace)
	if err != nil {
		return sourceError("snapshot", err)
	}
	var w io.Writer = cmd.OutOrStdout()
	if f.out != "-" {
		file, err := os.OpenFile(f.out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		defer file.Close()
		w = file
	}
	if err := parity.WriteSnapshot(w, snap); err != nil {
		return err
	}
	if f.out != "-" {
		kept := "Secret keys only"
		if fp != nil {
			kept = "Secret values as HMACs under key " + fp.KeyID()
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "wrote %d objects of %s to %s (%s)\n", len(snap.Objects), arg, f.out, kept)
	}
	return nil
}
