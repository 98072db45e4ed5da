// Package parity compares two environments: it turns the Kubernetes objects
// of one side (a namespace, manifests, a snapshot) into a normalized
// Snapshot, and compares two snapshots under a Policy into a Report. It does
// no I/O: reading a side is pkg/parity/source's job (and live, manifest
// below it), writing a report is pkg/parity/render's, so that the CLI and a
// controller share one comparison. What is compared, the noise rules and the
// report's JSON schema are in docs/parity.md.
//
// A snapshot holds, per object (kind and name), its fields as flat
// JSON-pointer-like paths with list entries keyed by what identifies them
// (containers and env vars by name, ports by number and protocol), so that
// a diff is a walk over two maps. Secret values are never held: only an
// HMAC-SHA256 of each under a key the caller chooses, or nothing.
package parity
