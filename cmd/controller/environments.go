package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/controller"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/envmgr/cluster"
	"github.com/detourdev/detour/pkg/envmgr/data/clusterdata"
	"github.com/detourdev/detour/pkg/envmgr/data/labdata"
	"github.com/detourdev/detour/pkg/envmgr/labenv"
	"github.com/detourdev/detour/pkg/lab"
	parityenv "github.com/detourdev/detour/pkg/parity/environment"
	"github.com/detourdev/detour/pkg/store"
	"github.com/detourdev/detour/pkg/store/kube"
)

// startEnvironments builds the environments' store, the runtime their forks
// run on (the cluster, or the lab) and their reconciler, and hands the
// environment calls to srv. The reconciler runs under the same lease as the
// rest of the controller: only the leader serves.
func startEnvironments(ctx context.Context, o *options, d *deps, st store.Store, inv inventorySource, srv *controller.Server) (*envmgr.Reconciler, error) {
	log := d.log.With("component", "environments")
	var (
		envs       store.Environments
		workloads  envmgr.Workloads
		events     envmgr.Events
		dataRunner envmgr.Data
	)
	switch s := st.(type) {
	case *store.Bolt:
		envs = store.NewBoltEnvironments(s)
		dir := o.labState
		if dir == "" {
			dir = filepath.Dir(o.inventoryPath)
		}
		// Fork commands are looked up like the lab's: the controller's
		// own directory (bin/, where detour-echo is) first.
		var path []string
		if exe, err := os.Executable(); err == nil {
			path = append(path, filepath.Dir(exe))
		}
		workloads = labenv.New(dir, lab.Options{PathPrepend: path})
		runner := labdata.New(labdata.Config{StateDir: dir, Lab: lab.Options{PathPrepend: path}, PGBin: o.labPostgres, Logger: log})
		context.AfterFunc(ctx, runner.Close)
		dataRunner = runner
	case *kube.Store:
		ke, err := kube.NewEnvironments(d.kube.config, fieldManager)
		if err != nil {
			return nil, err
		}
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = ke.ListEnvironments(lctx, "")
		cancel()
		if apierrors.IsNotFound(errors.Unwrap(err)) || apierrors.IsNotFound(err) {
			_ = ke.Close()
			if o.environments == "on" {
				return nil, errors.New("the Environment CRD (environments.detour.dev) is not installed: kubectl apply -f deploy/crds/, or --environments off")
			}
			log.Warn("environments off: the Environment CRD (environments.detour.dev) is not installed")
			return nil, nil
		}
		context.AfterFunc(ctx, func() { _ = ke.Close() })
		envs = ke
		workloads = cluster.New(d.kube.client, fieldManager)
		runner := clusterdata.New(d.kube.client, fieldManager, log)
		if err := runner.Start(ctx); err != nil {
			return nil, err
		}
		dataRunner = runner
		ev, err := cluster.NewEvents(d.kube.client, "detour-controller")
		if err != nil {
			return nil, err
		}
		context.AfterFunc(ctx, ev.Close)
		events = ev
	default:
		return nil, fmt.Errorf("environments: no environment store beside %T", st)
	}
	limits := envmgr.Limits{DefaultTTL: o.envDefaultTTL, MaxTTL: o.envMaxTTL}
	cfg := envmgr.Config{
		Store: envs, Workloads: workloads, Intercepts: srv, Inventory: inv,
		Data: dataRunner, Limits: limits, Events: events, Logger: log, Registerer: d.reg,
	}
	if _, inCluster := st.(*kube.Store); inCluster && o.parityChecks != "off" {
		cfg.Parity = func(ctx context.Context, env *v1alpha1.Environment, now time.Time) (*v1alpha1.EnvironmentParity, time.Duration, error) {
			return parityenv.Refresh(ctx, d.kube.client, env, now)
		}
	}
	rec, err := envmgr.NewReconciler(cfg)
	if err != nil {
		return nil, err
	}
	api, err := envmgr.NewAPI(envmgr.APIConfig{Store: envs, Workloads: workloads, Intercepts: srv, Limits: limits, Logger: log})
	if err != nil {
		return nil, err
	}
	srv.SetEnvironments(api)
	if envs == nil {
		return nil, errors.New("environments: no store")
	}
	return rec, nil
}
