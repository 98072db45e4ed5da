package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/detourdev/detour/pkg/inventory"
	invkube "github.com/detourdev/detour/pkg/inventory/kube"
	"github.com/detourdev/detour/pkg/store"
	"github.com/detourdev/detour/pkg/store/kube"
)

// fieldManager names the controller's writes to Intercept resources (spec,
// and status.expiresAt); statusFieldManager its server-side applies of the
// rest of their status. Two names, so that neither write takes the other's
// fields.
const (
	fieldManager       = "detour-controller"
	statusFieldManager = "detour-controller-status"
)

// kubeClients is the one API server configuration every part shares (the
// store, the inventory, leader election, authentication), and a clientset
// on it.
type kubeClients struct {
	config *rest.Config
	where  string // the API server, for the log
	client kubernetes.Interface
}

func newKubeClients(kubeconfig string) (*kubeClients, error) {
	cfg, where, err := kubeConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &kubeClients{config: cfg, where: where, client: cs}, nil
}

// openStore opens the backend --store-backend names and says where it is,
// for the log.
func openStore(ctx context.Context, o *options, kc *kubeClients) (store.Store, string, error) {
	switch o.storeBackend {
	case "", "bolt":
		st, err := store.Open(o.storePath)
		if err != nil {
			return nil, "", err
		}
		return st, o.storePath, nil
	case "kube":
		st, err := kube.New(kc.config, fieldManager)
		if err != nil {
			return nil, "", err
		}
		if err := checkCRD(ctx, st); err != nil {
			_ = st.Close()
			return nil, "", err
		}
		return st, "kube:" + kc.where, nil
	}
	return nil, "", fmt.Errorf("--store-backend %q: want bolt or kube", o.storeBackend)
}

// kubeConfig builds the API server's client configuration: from path when
// given, else in-cluster when running in a pod, else from $KUBECONFIG or
// ~/.kube/config.
func kubeConfig(path string) (*rest.Config, string, error) {
	if path == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, "", fmt.Errorf("in-cluster Kubernetes config: %w", err)
		}
		return cfg, cfg.Host, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig: %w", err)
	}
	return cfg, cfg.Host, nil
}

// checkCRD fails clearly when the API server does not serve Intercepts,
// rather than with the informer's endless retries.
func checkCRD(ctx context.Context, st store.Store) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := st.List(ctx, "")
	switch {
	case err == nil:
		return nil
	case apierrors.IsNotFound(err):
		return errors.New("the Intercept CRD (intercepts.detour.dev) is not installed: kubectl apply -f deploy/crds/")
	case apierrors.IsForbidden(err):
		return fmt.Errorf("not allowed to list intercepts.detour.dev in all namespaces (check the controller's RBAC): %w", err)
	}
	return fmt.Errorf("reach the Kubernetes API server: %w", err)
}

// inventorySource is a source of pods and services that runs until ctx
// ends: the lab's file, or the API server's informers.
type inventorySource interface {
	inventory.Source
	Run(ctx context.Context) error
}

// openInventory opens the source --inventory-source names and says where it
// reads, for the log.
func openInventory(o *options, kc *kubeClients, log *slog.Logger) (inventorySource, string, error) {
	if o.inventoryFrom != "kube" {
		return inventory.NewFileSource(o.inventoryPath, log), o.inventoryPath, nil
	}
	return invkube.New(kc.client, invkube.Options{}), "kube:" + kc.where, nil
}
