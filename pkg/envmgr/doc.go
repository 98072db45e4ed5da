// Package envmgr provisions ephemeral environments: it forks a few services
// of a baseline namespace per branch, shares the rest, routes the
// environment's traffic to its forks, seeds data, tears everything down when
// the TTL ends, and reports configuration parity between environments.
//
// Nothing is implemented yet: the environments work comes after the
// intercept data path and Kubernetes mode.
package envmgr
