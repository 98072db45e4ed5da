// Package data is the pure core of an environment's data of its own
// (docs/architecture.md, "Environment data"): the plan that makes a
// PostgreSQL branch from a snapshot of the baseline's database (BranchPlan:
// which pg_dump, pg_restore and psql runs, in which phase, against which
// side), the checks of what a spec may put into SQL (table names are plain
// identifiers, row filters one condition), the branch's connection as
// variables and Secret keys, and the Redactor that keeps passwords out of
// messages. It does no I/O: the runners do, package data/lab with the
// lab's processes and data/cluster with Kubernetes Jobs.
package data
