package main

import (
	"context"
	"flag"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
	"github.com/detourdev/detour/pkg/parity/check"
)

// parityFieldManager names the controller's writes of ParityChecks'
// status.
const parityFieldManager = "detour-controller-parity"

func addParityFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.parityChecks, "parity-checks", "on", "run ParityCheck resources, which compare two namespaces on an interval (docs/parity.md): on or off; only with --store-backend=kube, a cluster")
}

func (o *options) validateParity() error {
	switch o.parityChecks {
	case "", "on", "off":
		return nil
	}
	return fmt.Errorf("--parity-checks %q: want on or off", o.parityChecks)
}

// startParity runs the ParityCheck reconciler in the serving group (so
// under the leader's lease, like the rest of serve), in a cluster and
// unless --parity-checks=off. An API server without the ParityCheck CRD
// (an install older than the controller) leaves it off, with a warning,
// rather than failing the controller.
func startParity(ctx context.Context, d *deps, goRun func(name string, f func() error)) error {
	o := d.o
	if o.parityChecks == "off" || o.storeBackend != "kube" {
		return nil
	}
	log := d.log.With("component", "parity")
	served, err := parityCRDServed(d.kube)
	if err != nil {
		return err
	}
	if !served {
		log.Warn("the ParityCheck CRD (paritychecks.detour.dev) is not installed: parity checks are off until the controller restarts with it (kubectl apply -f deploy/crds/)")
		return nil
	}
	detour, err := versioned.NewForConfig(d.kube.config)
	if err != nil {
		return fmt.Errorf("parity checks: %w", err)
	}
	rec, err := check.New(check.Config{
		Kube: d.kube.client, Detour: detour, FieldManager: parityFieldManager,
		Logger: log, Registerer: d.reg,
	})
	if err != nil {
		return err
	}
	goRun("parity checks", func() error { return rec.Run(ctx) })
	return nil
}

// parityCRDServed asks discovery whether the API server serves
// ParityChecks.
func parityCRDServed(kc *kubeClients) (bool, error) {
	res, err := kc.client.Discovery().ServerResourcesForGroupVersion(v1alpha1.SchemeGroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("parity checks: discover %s: %w", v1alpha1.SchemeGroupVersion, err)
	}
	return slices.ContainsFunc(res.APIResources, func(r metav1.APIResource) bool { return r.Name == "paritychecks" }), nil
}
