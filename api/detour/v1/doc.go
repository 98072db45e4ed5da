// Package detourv1 is the Detour API: the messages and gRPC stubs that
// protoc-gen-go and protoc-gen-go-grpc generate from the protos beside this
// file (common.proto, control.proto for ControlService, agentsync.proto for
// AgentSyncService). The protos are the reference; `make generate` rebuilds
// the Go from them. docs/architecture.md, "Control plane", says who speaks
// which service.
package detourv1
