package controller

import (
	"context"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// agentLocked returns the record of a node's agent, creating it: an agent
// that watches or reports before registering (a controller restarted under
// it) is still an agent.
func (s *Server) agentLocked(node string) *agent {
	a, ok := s.agents[node]
	if !ok {
		a = &agent{}
		s.agents[node] = a
	}
	return a
}

func (s *Server) countConnectedLocked() {
	n := 0
	for _, a := range s.agents {
		if a.streams > 0 {
			n++
		}
	}
	s.metrics.connectedAgents.Set(float64(n))
}

// Register records a node's agent and its version.
func (s *Server) Register(_ context.Context, req *detourv1.RegisterRequest) (*detourv1.RegisterResponse, error) {
	if req.GetNode() == "" {
		return nil, status.Error(codes.InvalidArgument, "no node given")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.agentLocked(req.GetNode())
	a.version = req.GetVersion()
	a.lastSeen = s.clock.Now()
	s.log.Info("agent registered", "node", req.GetNode(), "version", req.GetVersion())
	return &detourv1.RegisterResponse{}, nil
}

// WatchDesiredState sends the node's whole desired state, then each change
// to it. The snapshot is taken and the watcher registered under one lock, so
// no change falls between them. Several watchers per node are allowed (an
// agent restarting overlaps with its predecessor).
func (s *Server) WatchDesiredState(req *detourv1.WatchDesiredStateRequest, stream grpc.ServerStreamingServer[detourv1.WatchDesiredStateResponse]) error {
	node := req.GetNode()
	if node == "" {
		return status.Error(codes.InvalidArgument, "no node given")
	}
	w := &dsWatcher{node: node, ch: make(chan *detourv1.WatchDesiredStateResponse, watchBuffer)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "controller shutting down")
	}
	snap := &detourv1.WatchDesiredStateResponse{
		Type:        detourv1.WatchDesiredStateResponse_TYPE_SNAPSHOT,
		Assignments: sortedAssignments(s.desired.nodes[node]),
	}
	s.dsWatchers[w] = struct{}{}
	a := s.agentLocked(node)
	a.streams++
	a.lastSeen = s.clock.Now()
	s.countConnectedLocked()
	s.mu.Unlock()
	s.log.Info("agent watching desired state", "node", node, "assignments", len(snap.Assignments))
	defer func() {
		s.mu.Lock()
		delete(s.dsWatchers, w)
		a.streams--
		a.lastSeen = s.clock.Now()
		s.countConnectedLocked()
		s.mu.Unlock()
		s.log.Info("agent watch ended", "node", node)
	}()

	if err := stream.Send(snap); err != nil {
		return err
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

// ReportStatus keeps the node's latest counters. Each report is the node's
// whole picture, so it replaces the previous one.
func (s *Server) ReportStatus(_ context.Context, req *detourv1.ReportStatusRequest) (*detourv1.ReportStatusResponse, error) {
	node := req.GetNode()
	if node == "" {
		return nil, status.Error(codes.InvalidArgument, "no node given")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.agentLocked(node).lastSeen = s.clock.Now()
	for k := range s.reports[node] {
		s.statusChangedLocked(k) // one it no longer reports on, too
	}
	m := make(map[string]*detourv1.InterceptReport, len(req.GetIntercepts()))
	for _, r := range req.GetIntercepts() {
		k := keyOf(r.GetNamespace(), r.GetName())
		// Reports on intercepts the controller no longer has are stale
		// (an agent still tearing down); keeping them would resurrect
		// status for a deleted intercept.
		if _, ok := s.intercepts[k]; !ok {
			continue
		}
		m[k] = proto.Clone(r).(*detourv1.InterceptReport)
		s.statusChangedLocked(k)
	}
	s.reports[node] = m
	return &detourv1.ReportStatusResponse{}, nil
}

// GetStatus reports the controller, the agents and, per intercept, each
// node it targets or that reported on it (see nodeStatusLocked).
func (s *Server) GetStatus(_ context.Context, req *detourv1.GetStatusRequest) (*detourv1.GetStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &detourv1.GetStatusResponse{
		ControllerVersion: s.version,
		ControllerStarted: timestamppb.New(s.started),
	}
	nodes := make([]string, 0, len(s.agents))
	for n := range s.agents {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	for _, n := range nodes {
		a := s.agents[n]
		as := &detourv1.AgentStatus{Node: n, Connected: a.streams > 0, Version: a.version}
		if !a.lastSeen.IsZero() {
			as.LastSeen = timestamppb.New(a.lastSeen)
		}
		resp.Agents = append(resp.Agents, as)
	}
	for _, ic := range s.listLocked(req.GetNamespace()) {
		st := &detourv1.InterceptStatus{Namespace: ic.GetNamespace(), Name: ic.GetName(),
			Nodes: s.nodeStatusLocked(keyOf(ic.GetNamespace(), ic.GetName()))}
		resp.Intercepts = append(resp.Intercepts, st)
	}
	return resp, nil
}
