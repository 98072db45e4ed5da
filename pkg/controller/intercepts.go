package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/apiconv"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/redirect/match"
	"github.com/detourdev/detour/pkg/store"
)

// CreateIntercept validates and stores a new intercept. The intercept lives
// in its service's namespace (where, in Kubernetes, RBAC on intercepts is
// checked), so a request may name either namespace or both, alike.
func (s *Server) CreateIntercept(ctx context.Context, req *detourv1.CreateInterceptRequest) (resp *detourv1.CreateInterceptResponse, err error) {
	defer func() { s.metrics.creates.WithLabelValues(result(err)).Inc() }()
	if req.GetIntercept().GetOwner() != nil {
		return nil, status.Error(codes.InvalidArgument, "owner is set by the controller: environments make their own intercepts")
	}
	ic, err := s.normalize(req.GetIntercept())
	if err != nil {
		return nil, err
	}
	if err := s.createChecked(ctx, ic); err != nil {
		return nil, err
	}
	return &detourv1.CreateInterceptResponse{Intercept: ic}, nil
}

// createChecked validates ic (normalized, a copy the server owns) against
// the inventory and the other intercepts, and stores it.
func (s *Server) createChecked(ctx context.Context, ic *detourv1.Intercept) error {
	inv, err := s.inv.Get()
	if err != nil {
		return status.Errorf(codes.Unavailable, "inventory unavailable: %v", err)
	}
	conds, err := validateSpec(ic, inv)
	if err != nil {
		return err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	k := keyOf(ic.GetNamespace(), ic.GetName())
	if _, ok := s.intercepts[k]; ok {
		return status.Errorf(codes.AlreadyExists, "intercept %s already exists", k)
	}
	if err := s.checkOverlapLocked(ic, conds); err != nil {
		return err
	}
	now := s.clock.Now()
	ic.CreatedAt = timestamppb.New(now)
	ic.ExpiresAt = nil
	if ttl := ic.GetSpec().GetTtl().AsDuration(); ttl > 0 {
		ic.ExpiresAt = timestamppb.New(now.Add(ttl))
	}
	if err := s.store.Create(ctx, ic); err != nil {
		if errors.Is(err, store.ErrExists) {
			return status.Errorf(codes.AlreadyExists, "intercept %s already exists", k)
		}
		s.log.Error("store intercept", "namespace", ic.GetNamespace(), "intercept", ic.GetName(), "err", err)
		return status.Errorf(codes.Internal, "store intercept %s: %v", k, err)
	}
	s.intercepts[k] = ic
	s.metrics.activeIntercepts.Set(float64(len(s.intercepts)))
	s.log.Info("intercept created", "namespace", ic.GetNamespace(), "intercept", ic.GetName(),
		"service", ic.GetSpec().GetServiceName(), "port", ic.GetSpec().GetPort())
	s.publishLocked(detourv1.WatchInterceptsResponse_TYPE_CREATED, ic)
	s.reconcileLocked()
	s.leaseMoved()
	return nil
}

// normalize checks the names and fills in the defaults of a create request,
// returning a copy the server owns.
func (s *Server) normalize(in *detourv1.Intercept) (*detourv1.Intercept, error) {
	if in == nil {
		return nil, status.Error(codes.InvalidArgument, "no intercept in the request")
	}
	ic := proto.Clone(in).(*detourv1.Intercept)
	if ic.Spec == nil {
		return nil, status.Error(codes.InvalidArgument, "intercept has no spec")
	}
	if !isDNSLabel(ic.Name) {
		return nil, status.Errorf(codes.InvalidArgument,
			"name %q is not a DNS-1123 label (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)", ic.Name)
	}
	spec := ic.Spec
	switch {
	case ic.Namespace == "" && spec.ServiceNamespace == "":
		ic.Namespace, spec.ServiceNamespace = inventory.NamespaceDefault, inventory.NamespaceDefault
	case ic.Namespace == "":
		ic.Namespace = spec.ServiceNamespace
	case spec.ServiceNamespace == "":
		spec.ServiceNamespace = ic.Namespace
	case ic.Namespace != spec.ServiceNamespace:
		return nil, status.Errorf(codes.InvalidArgument,
			"intercept namespace %q differs from the service's namespace %q: an intercept lives beside its service", ic.Namespace, spec.ServiceNamespace)
	}
	if !isDNSLabel(ic.Namespace) {
		return nil, status.Errorf(codes.InvalidArgument, "namespace %q is not a DNS-1123 label", ic.Namespace)
	}
	return ic, nil
}

// validateSpec checks the spec against the inventory and returns its
// conditions in the matcher's form.
func validateSpec(ic *detourv1.Intercept, inv *inventory.Inventory) ([]match.Condition, error) {
	spec := ic.GetSpec()
	if spec.GetServiceName() == "" {
		return nil, status.Error(codes.InvalidArgument, "no service given")
	}
	if spec.GetPort() == 0 || spec.GetPort() > 65535 {
		return nil, status.Errorf(codes.InvalidArgument, "port %d is not from 1 to 65535", spec.GetPort())
	}
	if ttl := spec.GetTtl(); ttl != nil {
		if err := ttl.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "ttl: %v", err)
		}
		if ttl.AsDuration() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "ttl %s is negative", ttl.AsDuration())
		}
	}
	conds, err := apiconv.ConditionsFromProto(spec.GetMatch())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "match: %v", err)
	}
	if spec.GetL4() {
		if len(conds) > 0 {
			return nil, status.Error(codes.InvalidArgument, "an l4 intercept takes whole connections and reads no request: give no request conditions")
		}
	} else if err := match.Validate(conds); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "match: %v", err)
	}
	if err := validateSources(spec, inv); err != nil {
		return nil, err
	}
	var dest destination
	if dp := spec.GetDestinationPods(); dp != nil {
		if spec.GetDestination() != "" {
			return nil, status.Error(codes.InvalidArgument, "give destination or destination pods, not both")
		}
		if len(dp.GetLabels()) == 0 {
			return nil, status.Error(codes.InvalidArgument, "destination pods: no labels: that would select every pod")
		}
		if err := validateLabels("destination pods", dp.GetLabels()); err != nil {
			return nil, err
		}
		if dp.GetPort() > 65535 {
			return nil, status.Errorf(codes.InvalidArgument, "destination pods: port %d is over 65535", dp.GetPort())
		}
	} else if dest, err = parseDestination(spec.GetDestination(), spec.GetServiceNamespace()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	svc, err := inv.Service(spec.GetServiceNamespace(), spec.GetServiceName())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "service %s/%s not found", spec.GetServiceNamespace(), spec.GetServiceName())
	}
	if _, err := svc.TargetPort(spec.GetPort()); err != nil {
		ports := make([]string, 0, len(svc.Ports))
		for _, p := range svc.Ports {
			ports = append(ports, fmt.Sprint(p.Port))
		}
		return nil, status.Errorf(codes.InvalidArgument, "service %s/%s has no port %d (its ports: %s)",
			svc.Namespace, svc.Name, spec.GetPort(), strings.Join(ports, ", "))
	}
	if dest.podName != "" {
		if _, err := inv.Pod(dest.podNS, dest.podName); err != nil {
			return nil, status.Errorf(codes.NotFound, "destination pod %s/%s not found", dest.podNS, dest.podName)
		}
	}
	return conds, nil
}

// checkOverlapLocked refuses an intercept that could select a request an
// existing one on the same service port selects: two developers must never
// both be sent the same request. Intercepts on other services or ports
// cannot compete for a request.
func (s *Server) checkOverlapLocked(ic *detourv1.Intercept, conds []match.Condition) error {
	spec := ic.GetSpec()
	keys := make([]string, 0, len(s.intercepts))
	for k := range s.intercepts {
		keys = append(keys, k)
	}
	slices.Sort(keys) // report the same conflict every time
	self := keyOf(ic.GetNamespace(), ic.GetName())
	for _, k := range keys {
		if k == self { // an edit does not overlap the version it replaces
			continue
		}
		o := s.intercepts[k].GetSpec()
		if o.GetServiceNamespace() != spec.GetServiceNamespace() || o.GetServiceName() != spec.GetServiceName() || o.GetPort() != spec.GetPort() {
			continue
		}
		oc, err := apiconv.ConditionsFromProto(o.GetMatch())
		if err != nil {
			// A stored intercept we cannot read could match anything.
			return status.Errorf(codes.FailedPrecondition, "overlaps intercept %s: its match cannot be read: %v", k, err)
		}
		if overlap, why := overlaps(ic, conds, s.intercepts[k], oc); overlap {
			return status.Errorf(codes.FailedPrecondition, "overlaps intercept %s on %s/%s port %d (%s): %s",
				k, spec.GetServiceNamespace(), spec.GetServiceName(), spec.GetPort(), apiconv.DescribeSpec(o), why)
		}
	}
	return nil
}

// GetIntercept returns one intercept.
func (s *Server) GetIntercept(_ context.Context, req *detourv1.GetInterceptRequest) (*detourv1.GetInterceptResponse, error) {
	ns, err := namespaceOf(req.GetNamespace(), req.GetName())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ic, ok := s.intercepts[keyOf(ns, req.GetName())]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "intercept %s/%s not found", ns, req.GetName())
	}
	return &detourv1.GetInterceptResponse{Intercept: ic}, nil
}

// namespaceOf applies the default namespace and checks a get/delete/renew
// request names something.
func namespaceOf(ns, name string) (string, error) {
	if name == "" {
		return "", status.Error(codes.InvalidArgument, "no intercept name given")
	}
	if ns == "" {
		ns = inventory.NamespaceDefault
	}
	return ns, nil
}

// ListIntercepts lists one namespace, or all when none is given.
func (s *Server) ListIntercepts(_ context.Context, req *detourv1.ListInterceptsRequest) (*detourv1.ListInterceptsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &detourv1.ListInterceptsResponse{Intercepts: s.listLocked(req.GetNamespace())}, nil
}

func (s *Server) listLocked(ns string) []*detourv1.Intercept {
	keys := make([]string, 0, len(s.intercepts))
	for k, ic := range s.intercepts {
		if ns == "" || ic.GetNamespace() == ns {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b string) int {
		// By namespace then name, as the store lists them.
		x, y := s.intercepts[a], s.intercepts[b]
		if c := strings.Compare(x.GetNamespace(), y.GetNamespace()); c != 0 {
			return c
		}
		return strings.Compare(x.GetName(), y.GetName())
	})
	out := make([]*detourv1.Intercept, 0, len(keys))
	for _, k := range keys {
		out = append(out, s.intercepts[k])
	}
	return out
}

// DeleteIntercept removes an intercept; agents drop its steering.
func (s *Server) DeleteIntercept(ctx context.Context, req *detourv1.DeleteInterceptRequest) (_ *detourv1.DeleteInterceptResponse, err error) {
	defer func() { s.metrics.deletes.WithLabelValues(result(err)).Inc() }()
	ns, err := namespaceOf(req.GetNamespace(), req.GetName())
	if err != nil {
		return nil, err
	}
	k := keyOf(ns, req.GetName())
	s.mu.Lock()
	defer s.mu.Unlock()
	ic, ok := s.intercepts[k]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "intercept %s not found", k)
	}
	if err := ownedError(ic, "delete"); err != nil {
		return nil, err
	}
	if err := s.deleteLocked(ctx, k, ic); err != nil {
		return nil, err
	}
	return &detourv1.DeleteInterceptResponse{}, nil
}

// ownedError refuses a user's change to an intercept an owner made.
func ownedError(ic *detourv1.Intercept, verb string) error {
	o := ic.GetOwner()
	if o == nil {
		return nil
	}
	return status.Errorf(codes.FailedPrecondition, "intercept %s/%s belongs to %s %s: %s the %s instead",
		ic.GetNamespace(), ic.GetName(), strings.ToLower(o.GetKind()), o.GetName(), verb, strings.ToLower(o.GetKind()))
}

// deleteLocked removes the stored intercept ic, held under k.
func (s *Server) deleteLocked(ctx context.Context, k string, ic *detourv1.Intercept) error {
	if err := s.store.Delete(ctx, ic.GetNamespace(), ic.GetName()); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Error("delete intercept", "namespace", ic.GetNamespace(), "intercept", ic.GetName(), "err", err)
		return status.Errorf(codes.Internal, "delete intercept %s: %v", k, err)
	}
	delete(s.intercepts, k)
	s.dropReportsLocked(k)
	s.metrics.activeIntercepts.Set(float64(len(s.intercepts)))
	s.log.Info("intercept deleted", "namespace", ic.GetNamespace(), "intercept", ic.GetName())
	s.publishLocked(detourv1.WatchInterceptsResponse_TYPE_DELETED, ic)
	s.reconcileLocked()
	s.leaseMoved()
	s.retryRejectedLocked()
	return nil
}

// RenewIntercept sets the lease to end ttl from now: the request's ttl, or
// the intercept's own when the request gives none. An intercept with
// neither keeps having no lease.
func (s *Server) RenewIntercept(ctx context.Context, req *detourv1.RenewInterceptRequest) (_ *detourv1.RenewInterceptResponse, err error) {
	defer func() { s.metrics.renewals.WithLabelValues(result(err)).Inc() }()
	ns, err := namespaceOf(req.GetNamespace(), req.GetName())
	if err != nil {
		return nil, err
	}
	if t := req.GetTtl(); t != nil {
		if err := t.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "ttl: %v", err)
		}
		if t.AsDuration() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "ttl %s is negative", t.AsDuration())
		}
	}
	k := keyOf(ns, req.GetName())
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.intercepts[k]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "intercept %s not found", k)
	}
	if err := ownedError(cur, "renew"); err != nil {
		return nil, err
	}
	ttl := req.GetTtl().AsDuration()
	if ttl == 0 {
		ttl = cur.GetSpec().GetTtl().AsDuration()
	}
	if ttl == 0 {
		return &detourv1.RenewInterceptResponse{Intercept: cur}, nil
	}
	ic := proto.Clone(cur).(*detourv1.Intercept) // published objects are never mutated
	ic.ExpiresAt = timestamppb.New(s.clock.Now().Add(ttl))
	if err := s.store.Update(ctx, ic); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "intercept %s not found", k)
		}
		s.log.Error("renew intercept", "namespace", ns, "intercept", req.GetName(), "err", err)
		return nil, status.Errorf(codes.Internal, "renew intercept %s: %v", k, err)
	}
	s.intercepts[k] = ic
	s.log.Debug("intercept renewed", "namespace", ns, "intercept", req.GetName(), "expires", ic.GetExpiresAt().AsTime())
	s.publishLocked(detourv1.WatchInterceptsResponse_TYPE_UPDATED, ic)
	s.leaseMoved()
	return &detourv1.RenewInterceptResponse{Intercept: ic}, nil
}

// WatchIntercepts sends one EXISTING event per intercept, then every change,
// until the client goes away.
func (s *Server) WatchIntercepts(req *detourv1.WatchInterceptsRequest, stream grpc.ServerStreamingServer[detourv1.WatchInterceptsResponse]) error {
	w := &icWatcher{namespace: req.GetNamespace(), ch: make(chan *detourv1.WatchInterceptsResponse, watchBuffer)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "controller shutting down")
	}
	existing := s.listLocked(req.GetNamespace())
	s.icWatchers[w] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.icWatchers, w)
		s.mu.Unlock()
	}()

	for _, ic := range existing {
		if err := stream.Send(&detourv1.WatchInterceptsResponse{Type: detourv1.WatchInterceptsResponse_TYPE_EXISTING, Intercept: ic}); err != nil {
			return err
		}
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case ev, ok := <-w.ch:
			if !ok {
				return w.err
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}
