package data

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

func branch(mode v1alpha1.BranchMode, filters ...v1alpha1.RowFilter) *v1alpha1.PostgresBranch {
	return &v1alpha1.PostgresBranch{
		Workload:    v1alpha1.WorkloadRef{Kind: v1alpha1.WorkloadStatefulSet, Name: "postgres"},
		Credentials: v1alpha1.PostgresCredentials{Secret: "pg"},
		Mode:        mode,
		Filters:     filters,
	}
}

// line is a step as one line, for comparing plans.
func line(s Step) string {
	l := string(s.Phase) + " " + s.Side.String() + ": " + strings.Join(s.Argv, " ")
	if s.Stdin != "" {
		l += " < " + s.Stdin
	}
	return l
}

// TestBranchPlan: each mode's steps, in order, against the right side.
func TestBranchPlan(t *testing.T) {
	restore := " --no-owner --no-privileges --no-tablespaces --no-security-labels --no-subscriptions --no-publications --exit-on-error --dbname=orders snapshot.dump"
	psql := "psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1"
	for _, tc := range []struct {
		name      string
		b         *v1alpha1.PostgresBranch
		anonymize bool
		want      []string
	}{
		{"all", branch(""), false, []string{
			"Snapshotting baseline: pg_dump --format=custom --compress=0 --no-subscriptions --no-publications --file=snapshot.dump",
			"Restoring branch: pg_restore --section=pre-data" + restore,
			"Restoring branch: pg_restore --section=data --jobs=2" + restore,
			"Restoring branch: pg_restore --section=post-data --jobs=2" + restore,
			"Restoring branch: " + psql + " --command=ANALYZE",
			"Restoring branch: " + psql + " --no-align --tuples-only --command=" + ReportQuery,
		}},
		{"schema, anonymised", branch(v1alpha1.BranchSchema), true, []string{
			"Snapshotting baseline: pg_dump --format=custom --compress=0 --no-subscriptions --no-publications --file=snapshot.dump --schema-only",
			"Restoring branch: pg_restore --section=pre-data" + restore,
			"Restoring branch: pg_restore --section=post-data --jobs=2" + restore,
			"Anonymising branch: " + psql + " --single-transaction --file=anonymize.sql",
			"Anonymising branch: " + psql + " --command=ANALYZE",
			"Anonymising branch: " + psql + " --no-align --tuples-only --command=" + ReportQuery,
		}},
		{"filtered", branch(v1alpha1.BranchFiltered,
			v1alpha1.RowFilter{Table: "orders", Where: "created_at > now() - interval '7 days'"},
			v1alpha1.RowFilter{Table: "sales.items", Where: "order_id IN (SELECT id FROM orders WHERE created_at > now() - interval '7 days')"},
		), true, []string{
			"Snapshotting baseline: pg_dump --format=custom --compress=0 --no-subscriptions --no-publications --file=snapshot.dump --exclude-table-data=public.orders --exclude-table-data=sales.items",
			"Snapshotting baseline: " + psql + ` --command=BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY --command=\o rows-1.copy --command=COPY (SELECT * FROM "public"."orders" WHERE (created_at > now() - interval '7 days')) TO STDOUT --command=\o rows-2.copy --command=COPY (SELECT * FROM "sales"."items" WHERE (order_id IN (SELECT id FROM orders WHERE created_at > now() - interval '7 days'))) TO STDOUT --command=\o --command=COMMIT`,
			"Restoring branch: pg_restore --section=pre-data" + restore,
			"Restoring branch: pg_restore --section=data --jobs=2" + restore,
			"Restoring branch: " + psql + ` --command=COPY "public"."orders" FROM STDIN < rows-1.copy`,
			"Restoring branch: " + psql + ` --command=COPY "sales"."items" FROM STDIN < rows-2.copy`,
			"Restoring branch: pg_restore --section=post-data --jobs=2" + restore,
			"Anonymising branch: " + psql + " --single-transaction --file=anonymize.sql",
			"Anonymising branch: " + psql + " --command=ANALYZE",
			"Anonymising branch: " + psql + " --no-align --tuples-only --command=" + ReportQuery,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := BranchPlan(tc.b, PlanOptions{Database: "orders", Jobs: 2, Anonymize: tc.anonymize})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range p.Steps {
				got = append(got, line(s))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if !p.Steps[len(p.Steps)-1].Report {
				t.Error("the last step is not the report")
			}
			for _, ph := range p.Phases() {
				if len(p.StepsOf(ph)) == 0 {
					t.Errorf("phase %s without steps", ph)
				}
			}
		})
	}
	for _, tc := range []struct {
		name string
		b    *v1alpha1.PostgresBranch
		db   string
		want string
	}{
		{"bad database", branch(""), `orders"`, "database"},
		{"filters without mode filtered", branch("", v1alpha1.RowFilter{Table: "t", Where: "true"}), "orders", "filters need mode filtered"},
		{"filtered without filters", branch(v1alpha1.BranchFiltered), "orders", "needs at least one filter"},
		{"bad table", branch(v1alpha1.BranchFiltered, v1alpha1.RowFilter{Table: `t"`, Where: "true"}), "orders", `table "t\""`},
		{"bad filter", branch(v1alpha1.BranchFiltered, v1alpha1.RowFilter{Table: "t", Where: "true; drop table t"}), "orders", "filter of public.t"},
		{"bad mode", branch("some"), "orders", `mode "some"`},
	} {
		if _, err := BranchPlan(tc.b, PlanOptions{Database: tc.db}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// TestScript runs a plan's script with sh against stand-ins for the
// PostgreSQL programs that record their arguments: every argument arrives
// as the plan has it, nothing expanded, whatever quotes or $ it holds, and
// the report lands where it is sent.
func TestScript(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	stub := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done >>" + filepath.Join(dir, "args") + "\nprintf '\\n\\0' >>" + filepath.Join(dir, "args") + "\necho '3|4096'\n"
	for _, p := range []string{"pg_dump", "pg_restore", "psql"} {
		if err := os.WriteFile(filepath.Join(bin, p), []byte(stub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The server the steps use accepts connections at once.
	if err := os.WriteFile(filepath.Join(bin, "pg_isready"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(dir, "work dir's")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"rows-1.copy"} {
		if err := os.WriteFile(filepath.Join(work, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := BranchPlan(branch(v1alpha1.BranchFiltered, v1alpha1.RowFilter{Table: "orders", Where: `note = 'it''s $HOME $(id) "x"' and true`}),
		PlanOptions{Database: "orders", Jobs: 2, Anonymize: true})
	if err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(dir, "report")
	cmd := exec.Command("sh", "-c", Script(p.Steps, work, report))
	cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("script: %v\n%s", err, out)
	} else if !strings.Contains(string(out), "detour: filtered rows") {
		t.Errorf("the script does not say its steps:\n%s", out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "args"))
	if err != nil {
		t.Fatal(err)
	}
	var runs [][]string
	for _, run := range strings.Split(strings.TrimSuffix(string(b), "\n\x00"), "\n\x00") {
		runs = append(runs, strings.Split(strings.TrimSuffix(run, "\x00"), "\x00"))
	}
	if len(runs) != len(p.Steps) {
		t.Fatalf("%d runs for %d steps", len(runs), len(p.Steps))
	}
	for i, s := range p.Steps {
		if !slices.Equal(runs[i], s.Argv[1:]) {
			t.Errorf("step %d (%s): got %q, want %q", i, s.What, runs[i], s.Argv[1:])
		}
	}
	if r, err := os.ReadFile(report); err != nil || strings.TrimSpace(string(r)) != "3|4096" {
		t.Errorf("report: %q %v", r, err)
	}
	// A container's steps wait first for the server they use: the branch
	// (5 minutes: it may be initialising), the baseline (a minute: its
	// Service may not have its endpoint yet).
	if s := Script(p.StepsOf(v1alpha1.DataRestoring), "/work", ""); !strings.Contains(s, "until pg_isready") || !strings.Contains(s, "-ge 300 ") {
		t.Errorf("the restore does not wait 5 minutes for the branch:\n%s", s)
	}
	if s := Script(p.StepsOf(v1alpha1.DataSnapshotting), "/work", ""); !strings.Contains(s, "until pg_isready") || !strings.Contains(s, "baseline") || !strings.Contains(s, "-ge 60 ") {
		t.Errorf("the snapshot does not wait a minute for the baseline:\n%s", s)
	}
}

func TestParseReport(t *testing.T) {
	if r, err := ParseReport("1200|8675309\n"); err != nil || r != (Report{Rows: 1200, Bytes: 8675309}) {
		t.Errorf("ParseReport: %+v %v", r, err)
	}
	for _, bad := range []string{"", "12", "a|b", "1|2|3"} {
		if _, err := ParseReport(bad); err == nil {
			t.Errorf("ParseReport(%q) accepted", bad)
		}
	}
}
