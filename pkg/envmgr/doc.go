// Package envmgr provisions ephemeral environments: per branch or pull
// request it forks a few workloads of a baseline namespace, shares the rest,
// routes the environment's traffic to its forks through intercepts the
// environment owns, and removes it all when the TTL ends or the environment
// is deleted.
//
// The core is pure: RenderFork (a baseline workload's pod template plus the
// overrides → the fork), PlanRoutes (forks and services → the intercepts the
// environment owns) and Phase (what was observed → the status). Reconciler
// is the thin shell around them; Workloads is what it runs forks on: a
// cluster's Deployments and StatefulSets, or the lab's network namespaces.
// docs/architecture.md ("Environments") explains the design.
package envmgr
