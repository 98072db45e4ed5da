package controller

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// EnvironmentService serves the environment calls of ControlService; the
// Server hands them over (pkg/envmgr's API does them). Kept apart because
// environments are made of the Server's intercepts, not the other way.
type EnvironmentService interface {
	CreateEnvironment(context.Context, *detourv1.CreateEnvironmentRequest) (*detourv1.CreateEnvironmentResponse, error)
	GetEnvironment(context.Context, *detourv1.GetEnvironmentRequest) (*detourv1.GetEnvironmentResponse, error)
	ListEnvironments(context.Context, *detourv1.ListEnvironmentsRequest) (*detourv1.ListEnvironmentsResponse, error)
	DeleteEnvironment(context.Context, *detourv1.DeleteEnvironmentRequest) (*detourv1.DeleteEnvironmentResponse, error)
	RenewEnvironment(context.Context, *detourv1.RenewEnvironmentRequest) (*detourv1.RenewEnvironmentResponse, error)
	WatchEnvironments(*detourv1.WatchEnvironmentsRequest, grpc.ServerStreamingServer[detourv1.WatchEnvironmentsResponse]) error
}

// SetEnvironments installs the environment calls; until then they answer
// Unimplemented. Call it before serving.
func (s *Server) SetEnvironments(e EnvironmentService) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.envs = e
}

func (s *Server) environments() (EnvironmentService, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.envs == nil {
		return nil, status.Error(codes.Unimplemented, "this controller does not run environments")
	}
	return s.envs, nil
}

// CreateEnvironment implements ControlService.
func (s *Server) CreateEnvironment(ctx context.Context, req *detourv1.CreateEnvironmentRequest) (*detourv1.CreateEnvironmentResponse, error) {
	e, err := s.environments()
	if err != nil {
		return nil, err
	}
	return e.CreateEnvironment(ctx, req)
}

// GetEnvironment implements ControlService.
func (s *Server) GetEnvironment(ctx context.Context, req *detourv1.GetEnvironmentRequest) (*detourv1.GetEnvironmentResponse, error) {
	e, err := s.environments()
	if err != nil {
		return nil, err
	}
	return e.GetEnvironment(ctx, req)
}

// ListEnvironments implements ControlService.
func (s *Server) ListEnvironments(ctx context.Context, req *detourv1.ListEnvironmentsRequest) (*detourv1.ListEnvironmentsResponse, error) {
	e, err := s.environments()
	if err != nil {
		return nil, err
	}
	return e.ListEnvironments(ctx, req)
}

// DeleteEnvironment implements ControlService.
func (s *Server) DeleteEnvironment(ctx context.Context, req *detourv1.DeleteEnvironmentRequest) (*detourv1.DeleteEnvironmentResponse, error) {
	e, err := s.environments()
	if err != nil {
		return nil, err
	}
	return e.DeleteEnvironment(ctx, req)
}

// RenewEnvironment implements ControlService.
func (s *Server) RenewEnvironment(ctx context.Context, req *detourv1.RenewEnvironmentRequest) (*detourv1.RenewEnvironmentResponse, error) {
	e, err := s.environments()
	if err != nil {
		return nil, err
	}
	return e.RenewEnvironment(ctx, req)
}

// WatchEnvironments implements ControlService.
func (s *Server) WatchEnvironments(req *detourv1.WatchEnvironmentsRequest, stream grpc.ServerStreamingServer[detourv1.WatchEnvironmentsResponse]) error {
	e, err := s.environments()
	if err != nil {
		return err
	}
	return e.WatchEnvironments(req, stream)
}
