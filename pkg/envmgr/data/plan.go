package data

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// Side is the database a step connects to.
type Side int

// The two databases of a branch's making.
const (
	// Baseline: the snapshot is read from the baseline's database, in
	// read-only transactions, with the baseline's credentials.
	Baseline Side = iota
	// Branch: everything else runs in the branch, as its user.
	Branch
)

func (s Side) String() string {
	if s == Baseline {
		return "baseline"
	}
	return "branch"
}

// Files of a branch's work directory, which every step runs in.
const (
	// SnapshotFile is the baseline's dump (pg_dump's custom format).
	SnapshotFile = "snapshot.dump"
	// AnonymizeFile is where the runner puts the anonymising script.
	AnonymizeFile = "anonymize.sql"
)

// RowsFile is where the rows of the i-th filtered table are kept between
// the snapshot and the restore (COPY's text format).
func RowsFile(i int) string { return "rows-" + strconv.Itoa(i+1) + ".copy" }

// Step is one run of a PostgreSQL program. The connection (PGHOST, PGPORT,
// PGUSER, PGPASSWORD, PGDATABASE) comes from the environment the runner
// gives it for its Side, with SideEnv; nothing secret is in Argv, which
// status messages may show.
type Step struct {
	Phase v1alpha1.DataPhase
	// What names the step in messages: "dump", "rows of public.orders".
	What string
	Side Side
	// Argv is the program (pg_dump, pg_restore or psql) and its arguments;
	// file names are relative to the work directory.
	Argv []string
	// Stdin is a file of the work directory the program reads, if any.
	Stdin string
	// Report marks the last step, whose output is ParseReport's input.
	Report bool
}

// Plan is how a branch is made: the steps, in order, each phase's steps
// together.
type Plan struct {
	Steps []Step
}

// Phases are the plan's phases in order, each once.
func (p Plan) Phases() []v1alpha1.DataPhase {
	var out []v1alpha1.DataPhase
	for _, s := range p.Steps {
		if len(out) == 0 || out[len(out)-1] != s.Phase {
			out = append(out, s.Phase)
		}
	}
	return out
}

// StepsOf are the plan's steps of one phase.
func (p Plan) StepsOf(ph v1alpha1.DataPhase) []Step {
	var out []Step
	for _, s := range p.Steps {
		if s.Phase == ph {
			out = append(out, s)
		}
	}
	return out
}

// PlanOptions tune a plan.
type PlanOptions struct {
	// Database is the branch's database, which pg_restore connects to.
	Database string
	// Jobs is how many connections pg_restore uses for the rows and the
	// indexes (its --jobs); 1 when 0.
	Jobs int
	// Anonymize says that the anonymising script is in AnonymizeFile.
	Anonymize bool
}

// The options every pg_restore of a branch takes: objects belong to the
// branch's user, and nothing that reaches outside the branch (grants to
// roles it does not have, tablespaces, logical replication) is restored.
var restoreFlags = []string{
	"--no-owner", "--no-privileges", "--no-tablespaces", "--no-security-labels",
	"--no-subscriptions", "--no-publications", "--exit-on-error",
}

// ReportQuery counts the branch's rows, exactly (count(*) of every table,
// partitions once), and measures its size: the report a branch ends with.
const ReportQuery = `SELECT coalesce(sum((xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint), 0), pg_database_size(current_database()) ` +
	`FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace ` +
	`WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'`

// BranchPlan is how to fill a branch from the baseline (docs/architecture.md,
// "Environment data"):
//
//   - Snapshotting: pg_dump of the baseline in its custom format (the
//     schema only in mode schema; without the filtered tables' rows in mode
//     filtered), then for mode filtered one psql session that copies each
//     filtered table's selected rows to a file, in one repeatable-read,
//     read-only transaction;
//   - Restoring: pg_restore of the schema (pre-data), the rows, the filtered
//     rows with COPY, then the indexes and constraints (post-data), so that
//     indexes are built once, over all rows, and a filter that breaks a
//     foreign key fails the branch rather than leaving it inconsistent;
//   - Anonymising: the script, in one transaction, stopping at its first
//     error; then ANALYZE (a restore leaves no statistics) and the report
//     (ReportQuery).
//
// Table names are checked and quoted; row filters are checked
// (CheckWhere) and run only on the baseline in read-only transactions.
func BranchPlan(b *v1alpha1.PostgresBranch, o PlanOptions) (Plan, error) {
	if err := CheckIdent("database", o.Database); err != nil {
		return Plan{}, err
	}
	mode := b.Mode
	if mode == "" {
		mode = v1alpha1.BranchAll
	}
	var tables []Table
	var wheres []string
	for _, f := range b.Filters {
		t, err := ParseTable(f.Table)
		if err != nil {
			return Plan{}, err
		}
		if err := CheckWhere(f.Where); err != nil {
			return Plan{}, fmt.Errorf("filter of %s: %w", t, err)
		}
		tables, wheres = append(tables, t), append(wheres, f.Where)
	}
	switch {
	case mode == v1alpha1.BranchFiltered && len(tables) == 0:
		return Plan{}, errors.New("mode filtered needs at least one filter")
	case mode != v1alpha1.BranchFiltered && len(tables) > 0:
		return Plan{}, fmt.Errorf("filters need mode filtered (the mode is %s)", mode)
	case mode != v1alpha1.BranchAll && mode != v1alpha1.BranchSchema && mode != v1alpha1.BranchFiltered:
		return Plan{}, fmt.Errorf("mode %q: want schema, all or filtered", mode)
	}
	jobs := max(o.Jobs, 1)

	var p Plan
	add := func(s Step) { p.Steps = append(p.Steps, s) }
	// Not compressed: the file stays on the machine that restores it, and
	// zlib would take three times as long as the dump itself
	// (docs/performance.md, "Environment data").
	dump := []string{"pg_dump", "--format=custom", "--compress=0", "--no-subscriptions", "--no-publications", "--file=" + SnapshotFile}
	if mode == v1alpha1.BranchSchema {
		dump = append(dump, "--schema-only")
	}
	for _, t := range tables {
		dump = append(dump, "--exclude-table-data="+t.Pattern())
	}
	add(Step{Phase: v1alpha1.DataSnapshotting, What: "dump", Side: Baseline, Argv: dump})
	if len(tables) > 0 {
		argv := []string{"psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
			"--command=BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"}
		for i, t := range tables {
			argv = append(argv, `--command=\o `+RowsFile(i),
				"--command=COPY (SELECT * FROM "+t.Quoted()+" WHERE ("+wheres[i]+")) TO STDOUT")
		}
		argv = append(argv, `--command=\o`, "--command=COMMIT")
		add(Step{Phase: v1alpha1.DataSnapshotting, What: "filtered rows", Side: Baseline, Argv: argv})
	}

	restore := func(section string, jobs int) []string {
		argv := []string{"pg_restore", "--section=" + section}
		if jobs > 1 {
			argv = append(argv, "--jobs="+strconv.Itoa(jobs))
		}
		argv = append(argv, restoreFlags...)
		return append(argv, "--dbname="+o.Database, SnapshotFile)
	}
	add(Step{Phase: v1alpha1.DataRestoring, What: "schema", Side: Branch, Argv: restore("pre-data", 1)})
	if mode != v1alpha1.BranchSchema {
		add(Step{Phase: v1alpha1.DataRestoring, What: "rows", Side: Branch, Argv: restore("data", jobs)})
	}
	for i, t := range tables {
		add(Step{Phase: v1alpha1.DataRestoring, What: "rows of " + t.String(), Side: Branch, Stdin: RowsFile(i),
			Argv: []string{"psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", "--command=COPY " + t.Quoted() + " FROM STDIN"}})
	}
	add(Step{Phase: v1alpha1.DataRestoring, What: "indexes and constraints", Side: Branch, Argv: restore("post-data", jobs)})

	if o.Anonymize {
		add(Step{Phase: v1alpha1.DataAnonymising, What: "anonymising script", Side: Branch,
			Argv: []string{"psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", "--single-transaction", "--file=" + AnonymizeFile}})
	}
	last := p.Steps[len(p.Steps)-1].Phase
	add(Step{Phase: last, What: "statistics", Side: Branch, Argv: []string{"psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", "--command=ANALYZE"}})
	add(Step{Phase: last, What: "report", Side: Branch, Report: true,
		Argv: []string{"psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", "--no-align", "--tuples-only", "--command=" + ReportQuery}})
	return p, nil
}

// SideEnv is what every step of a side gets in its environment besides the
// connection: on the baseline, read-only transactions by default (a
// second guard, after the read-only transactions the steps open) and a
// name in pg_stat_activity; in the branch, commits that do not wait for
// the disk (a branch that crashes is made again) and memory to build
// indexes with.
func SideEnv(s Side) []string {
	if s == Baseline {
		return []string{"PGOPTIONS=-c default_transaction_read_only=on", "PGAPPNAME=detour-snapshot", "PGCONNECT_TIMEOUT=10"}
	}
	return []string{"PGOPTIONS=-c synchronous_commit=off -c maintenance_work_mem=128MB", "PGAPPNAME=detour-branch", "PGCONNECT_TIMEOUT=10"}
}

// ConnEnv is a connection as libpq's variables.
func ConnEnv(c Connection) []string {
	return []string{
		"PGHOST=" + c.Host, "PGPORT=" + strconv.Itoa(int(c.Port)), "PGUSER=" + c.User,
		"PGPASSWORD=" + c.Password, "PGDATABASE=" + c.Database,
	}
}

// Report is what a finished branch holds.
type Report struct {
	Rows, Bytes int64
}

// ParseReport reads the report step's output: "ROWS|BYTES".
func ParseReport(out string) (Report, error) {
	rows, bytes, ok := strings.Cut(strings.TrimSpace(out), "|")
	r, err1 := strconv.ParseInt(rows, 10, 64)
	b, err2 := strconv.ParseInt(bytes, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return Report{}, fmt.Errorf("report %q: want ROWS|BYTES", firstLine(out))
	}
	return Report{Rows: r, Bytes: b}, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
