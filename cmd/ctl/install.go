package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/detourdev/detour/pkg/kubeclient"
)

// The image names the manifests give the two containers; the kustomization's
// images entries and the --*-image flags replace them.
const (
	controllerImage = "detour.local/detour-controller"
	agentImage      = "detour.local/detour-agent"
)

// clusterOnly refuses --controller on the commands that talk to the API
// server, and a --detour-namespace the manifests do not use.
func clusterOnly(g *globals, objs []*unstructured.Unstructured) error {
	if g.controllerSet {
		return usageErrorf("--controller does not apply: install and uninstall talk to the API server of a kubeconfig context (--kubeconfig, --context)")
	}
	for _, u := range objs {
		if u.GetKind() == "Namespace" && u.GetName() != g.detourNamespace {
			return usageErrorf("--detour-namespace %s: the manifests install Detour in namespace %s; to install it elsewhere, use kubectl apply -k with a kustomize overlay of deploy/",
				g.detourNamespace, u.GetName())
		}
	}
	return nil
}

// manifests loads the embedded manifests and renders their images.
func manifests(g *globals, overrides map[string]string) ([]*unstructured.Unstructured, error) {
	ms, err := kubeclient.LoadManifests(g.deps.manifests)
	if err != nil {
		return nil, fmt.Errorf("the manifests built into detour: %w", err)
	}
	objs, err := kubeclient.Render(ms, overrides)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	return objs, nil
}

// installer connects to the API server of the kubeconfig context.
func installer(g *globals, out, progress io.Writer) (*kubeclient.Installer, *kubeclient.Config, error) {
	kc, err := g.kubeConfig()
	if err != nil {
		return nil, nil, err
	}
	in, err := kubeclient.NewInstaller(kc.REST, out)
	if err != nil {
		return nil, nil, err
	}
	in.Progress = progress
	return in, kc, nil
}

// apiError gives the API server's refusals the refused exit code.
func apiError(err error) error {
	var ce *codeError
	switch {
	case err == nil || errors.As(err, &ce):
		return err
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return withCode(exitRefused, err)
	}
	return err
}

func newInstallCmd(g *globals) *cobra.Command {
	var (
		ctlImage, agtImage string
		wait, dryRun       bool
		timeout            time.Duration
	)
	cmd := &cobra.Command{
		Use:   "install [--controller-image IMAGE] [--agent-image IMAGE] [--wait] [--timeout D] [--dry-run]",
		Short: "Install Detour in the cluster of the kubeconfig context",
		Long: `Apply Detour's manifests, the files under deploy/ that "kubectl apply -k deploy/"
applies, built into this binary: the namespace, the Intercept CRD, service
accounts and RBAC, the controller Deployment and its Services, and the agent
DaemonSet. Each object is applied with server-side apply (field manager
"detour", taking over conflicting fields), in dependency order: Namespace,
CRDs (waiting until they are Established), ServiceAccounts, ClusterRoles,
ClusterRoleBindings, Roles, RoleBindings, ConfigMaps, Secrets, Services,
Deployments, DaemonSets. Each line of output says whether an object was
created, configured or unchanged; installing again changes nothing.

Detour goes into the namespace the manifests name, detour-system; a
--detour-namespace other than that is refused (use a kustomize overlay of
deploy/ with kubectl for another). The images are those of the
kustomization's images entries (detour.local/detour-controller:dev and
detour.local/detour-agent:dev as shipped); --controller-image and
--agent-image replace them with the references given.

With --wait (the default), install then waits until the controller
Deployment has a Ready replica (only the elected leader is Ready) and every
pod of the agent DaemonSet is Ready, printing progress, and fails (exit 1)
naming what was not ready. --timeout bounds the whole command, applying
included. --dry-run prints the objects that would be applied, as YAML (a
JSON List with -o json), and contacts no cluster.

This needs the rights to create all of these, cluster-scoped ones included
(typically cluster-admin); without them it exits 4.`,
		Example: `  detour install
  detour install --context staging --controller-image registry.example/detour-controller:v0.3.0 --agent-image registry.example/detour-agent:v0.3.0
  detour install --dry-run > detour.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutputFlag(g); err != nil {
				return err
			}
			overrides := map[string]string{}
			if ctlImage != "" {
				overrides[controllerImage] = ctlImage
			}
			if agtImage != "" {
				overrides[agentImage] = agtImage
			}
			objs, err := manifests(g, overrides)
			if err != nil {
				return err
			}
			if err := clusterOnly(g, objs); err != nil {
				return err
			}
			objs = kubeclient.ApplyOrder(objs)
			if dryRun {
				return printObjects(cmd.OutOrStdout(), g.output, objs)
			}
			in, kc, err := installer(g, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			fmt.Fprintf(cmd.ErrOrStderr(), "installing Detour with context %q\n", kc.Context)
			if err := in.Apply(ctx, objs); err != nil {
				return apiError(err)
			}
			if !wait {
				return nil
			}
			if err := in.WaitReady(ctx, objs); err != nil {
				if kubeclient.IsTimeout(err) {
					//lint:ignore ST1005 the message the CLI prints, and it starts with the product's name
					return withCode(exitError, fmt.Errorf("Detour is installed but not ready within --timeout %s: %w", timeout, err))
				}
				return apiError(err)
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "Detour is ready")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&ctlImage, "controller-image", "", "controller `IMAGE` instead of the manifests' "+controllerImage)
	f.StringVar(&agtImage, "agent-image", "", "agent `IMAGE` instead of the manifests' "+agentImage)
	f.BoolVar(&wait, "wait", true, "wait until the controller and every agent are ready")
	durationVar(f, &timeout, "timeout", 2*time.Minute, 0, true, "give up after `DURATION` (applying and waiting)")
	f.BoolVar(&dryRun, "dry-run", false, "print the objects instead of applying them; no cluster is contacted")
	return cmd
}

func newUninstallCmd(g *globals) *cobra.Command {
	var (
		wait, dryRun bool
		timeout      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "uninstall [--wait] [--timeout D] [--dry-run]",
		Short: "Remove Detour from the cluster of the kubeconfig context",
		Long: `Delete the objects of Detour's manifests (those "detour install" applies), and
only those, in this order: every Environment first, while the controller
still runs to remove their forks and routes (after 30 s without it, their
finalizers are removed and the forks go with them); the agent DaemonSet, waiting (always, up to
--timeout) until its pods are gone, since each agent detaches its programs
from the pods' network namespaces as it stops; then the rest in the reverse of
the install order; the CRDs last but one, and with them EVERY Intercept, Environment and
ParityCheck resource in the cluster; then the namespace, and with it whatever
the controller made there (its CA, certificate Secret and leader Lease).

An object already gone is reported and is not an error, so uninstall can be
run again. With --wait (the default) it waits until every deleted object is
gone, and fails (exit 1) naming what is left. --timeout bounds the whole
command. --dry-run prints what would be deleted, in order, and contacts no
cluster. Like install, it needs cluster-admin-like rights (exit 4 without).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, err := manifests(g, nil)
			if err != nil {
				return err
			}
			if err := clusterOnly(g, objs); err != nil {
				return err
			}
			if dryRun {
				for _, u := range kubeclient.DeleteOrder(objs) {
					fmt.Fprintf(cmd.OutOrStdout(), "%s would be deleted\n", kubeclient.Ref(u))
				}
				return nil
			}
			in, kc, err := installer(g, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			fmt.Fprintf(cmd.ErrOrStderr(), "removing Detour with context %q\n", kc.Context)
			err = in.Delete(ctx, objs, wait)
			if kubeclient.IsTimeout(err) {
				//lint:ignore ST1005 the message the CLI prints, and it starts with the product's name
				return withCode(exitError, fmt.Errorf("Detour is being removed but not gone within --timeout %s: %w", timeout, err))
			}
			return apiError(err)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&wait, "wait", true, "wait until every deleted object is gone")
	durationVar(f, &timeout, "timeout", 2*time.Minute, 0, true, "give up after `DURATION`")
	f.BoolVar(&dryRun, "dry-run", false, "print what would be deleted; no cluster is contacted")
	return cmd
}

// printObjects writes objs as a YAML stream, or as a JSON List with -o json.
func printObjects(w io.Writer, format string, objs []*unstructured.Unstructured) error {
	if format == outJSON {
		items := make([]map[string]any, len(objs))
		for i, u := range objs {
			items[i] = u.Object
		}
		b, err := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items}, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	for _, u := range objs {
		b, err := yaml.Marshal(u.Object)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "---\n%s", b); err != nil {
			return err
		}
	}
	return nil
}
