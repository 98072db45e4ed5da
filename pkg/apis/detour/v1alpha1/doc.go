// Package v1alpha1 is the detour.dev/v1alpha1 API: the custom resources that
// hold the control plane's state in Kubernetes, so that kubectl sees it and
// a controller restart loses nothing.
//
// Intercept carries the same spec as the gRPC API's InterceptSpec
// (api/detour/v1), so an intercept applied with kubectl behaves exactly like
// one created with the CLI; ToProto and InterceptSpecFromProto convert
// between the two. The schema rejects what it can express (enums, ranges,
// names, the l4/match rule); the controller still runs the full validation
// (regular expressions, whitespace, overlaps, that the service and pods
// exist) and reports a refusal in the status.
//
// Environment, the ephemeral environments' resource, comes with the
// environments work and is not defined yet.
//
// +k8s:deepcopy-gen=package
// +groupName=detour.dev
package v1alpha1
