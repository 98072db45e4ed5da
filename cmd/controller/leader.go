package main

import (
	"context"

	"github.com/detourdev/detour/pkg/leader"
)

// leaseName is the leader-election Lease of the controller's namespace.
const leaseName = "detour-controller"

// elect serves only while this replica holds the Lease (pkg/leader). Until
// it leads it touches neither the store nor --listen, and /readyz says "not
// the leader"; serving stops before the lease is let go.
func elect(ctx context.Context, d *deps) error {
	o := d.o
	id, err := o.identity()
	if err != nil {
		return err
	}
	d.ready.set("not the leader")
	return leader.Run(ctx, leader.Config{
		RESTConfig:    d.kube.config,
		Namespace:     o.namespace(),
		Name:          leaseName,
		Identity:      id,
		LeaseDuration: o.leaseDuration,
		RenewDeadline: o.renewDeadline,
		RetryPeriod:   o.retryPeriod,
		Logger:        d.log,
	}, func(ctx context.Context) error { return serve(ctx, d) })
}
