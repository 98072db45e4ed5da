package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/generated/clientset/versioned"
)

func TestParityChecksFlag(t *testing.T) {
	if _, err := parseFlags([]string{"--parity-checks", "maybe"}, io.Discard); err == nil || !strings.Contains(err.Error(), "want on or off") {
		t.Errorf("--parity-checks maybe: %v", err)
	}
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.parityChecks != "on" {
		t.Errorf("default --parity-checks %q (%v), want on", o.parityChecks, err)
	}
}

// The controller in a cluster runs ParityChecks: a check's status is
// written and its metrics are on /metrics.
func TestRunParityChecks(t *testing.T) {
	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kc, err := newKubeClients(env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	// Without the CRD (an older install), parity checks stay off.
	if _, err := env.InstallCRDs(ctx, "../../deploy/crds/detour.dev_intercepts.yaml"); err != nil {
		t.Fatal(err)
	}
	if served, err := parityCRDServed(kc); served || err != nil {
		t.Errorf("ParityChecks served before their CRD is installed: %v %v", served, err)
	}
	if _, err := env.InstallCRDs(ctx, "../../deploy/crds/detour.dev_paritychecks.yaml"); err != nil {
		t.Fatal(err)
	}
	if served, err := parityCRDServed(kc); !served || err != nil {
		t.Errorf("ParityChecks not served with their CRD installed: %v %v", served, err)
	}
	kube := kubetest.Clientset(t, env.Kubeconfig)
	for _, ns := range []string{"staging", "production"} {
		kubetest.Namespace(t, kube, ns)
		if _, err := kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg"},
			Data: map[string]string{"namespace": ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	detour, err := versioned.NewForConfig(kubetest.Config(t, env.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := detour.DetourV1alpha1().ParityChecks("default").Create(ctx, &v1alpha1.ParityCheck{
		ObjectMeta: metav1.ObjectMeta{Name: "shop"},
		Spec:       v1alpha1.ParityCheckSpec{Left: "staging", Right: "production"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	o := &options{
		listen: freeAddr(t), metricsListen: freeAddr(t), storeBackend: "kube", kubeconfig: env.Kubeconfig,
		inventoryPath: filepath.Join(t.TempDir(), "missing.json"), parityChecks: "on",
		environments: "off", envDefaultTTL: time.Hour, envMaxTTL: 24 * time.Hour,
	}
	runController(t, ctx, o)
	testutil.Eventually(t, 30*time.Second, func() error {
		pc, err := detour.DetourV1alpha1().ParityChecks("default").Get(ctx, "shop", metav1.GetOptions{})
		if err != nil {
			return err
		}
		// Each side's own name in its value is the same reference.
		if s := pc.Status.Summary; s == nil || s.Result != "pass" || pc.Status.LastRunTime == nil {
			return fmt.Errorf("status %+v", pc.Status)
		}
		return nil
	})
	resp, err := http.Get("http://" + o.metricsListen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`detour_parity_differences{category="config",check="default/shop",severity="medium"} 0`, `detour_parity_last_run_timestamp_seconds{check="default/shop"}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
