package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkPrivilegedBranch100MB times, in the lab, an environment that
// branches a database of about 100 MB (mode all) and forks one app, from
// `detour env create` to Ready, and what the branch's time went to (the
// controller's record of each step: the data directory, the server's
// start, the dump, the restore of rows and of indexes, ANALYZE). Not part
// of make test (make bench-data runs it); docs/performance.md has the
// numbers.
//
//	flock /tmp/detour-priv.lock go test -run '^$' -bench Branch100MB -benchtime 3x ./test/integration
func BenchmarkPrivilegedBranch100MB(b *testing.B) {
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		b.Skipf("PostgreSQL is not installed (apt-get install postgresql): %v", err)
	}
	pgdir := b.TempDir()
	openUp(b, pgdir)
	baselineData := filepath.Join(pgdir, "baseline")
	initBaseline(b, baselineData)
	cmd := fmt.Sprintf(`"setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", %q, "-D", %q, "-p", "5432", "-c", "listen_addresses=*", "-c", "unix_socket_directories=", "-c", "shared_buffers=256MB"`,
		filepath.Join(pgBin, "postgres"), baselineData)
	l := startLab(b, fmt.Sprintf(dataLab, cmd))
	openUp(b, l.stateDir)
	ctx := context.Background()
	url := "postgres://app:" + baselinePassword + "@" + l.pod("id-pg").IP + ":5432/shop"
	var db *pgx.Conn
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		if db, err = pgx.Connect(ctx, url); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer db.Close(ctx)
	// About 100 MB: 550,000 events (a row of ~130 bytes), their primary
	// key and a second index.
	fill := time.Now()
	for _, sql := range []string{
		`CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)`,
		`CREATE TABLE events (id bigserial PRIMARY KEY, account int NOT NULL, created_at timestamptz NOT NULL, payload text NOT NULL)`,
		`INSERT INTO events (account, created_at, payload) SELECT g % 1000, now() - g * interval '1 second', md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 550000) g`,
		`CREATE INDEX events_account ON events (account, created_at)`,
		`VACUUM ANALYZE events`,
	} {
		if _, err := db.Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	var size int64
	if err := db.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&size); err != nil {
		b.Fatal(err)
	}
	b.Logf("baseline: %d MiB, filled in %v", size>>20, time.Since(fill).Round(time.Second))
	secret := filepath.Join(l.stateDir, "secrets", "default", "pg-creds")
	if err := os.MkdirAll(secret, 0o700); err != nil {
		b.Fatal(err)
	}
	for k, v := range map[string]string{"username": "app", "password": baselinePassword, "database": "shop"} {
		if err := os.WriteFile(filepath.Join(secret, k), []byte(v), 0o600); err != nil {
			b.Fatal(err)
		}
	}

	var total time.Duration
	steps := map[string]time.Duration{}
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("bench-%d", i)
		start := time.Now()
		l.ctl("env", "create", name, "--fork", "api", "--command", "api=detour-echo --listen :8080",
			"--data", "db=postgres-branch", "--data-workload", "db:postgres", "--data-service", "db:pg",
			"--data-credentials", "db:pg-creds:database=database", "--wait", "300s")
		took := time.Since(start)
		total += took
		var rec struct {
			Rows, Bytes int64
			Steps       map[string]time.Duration
		}
		raw, err := os.ReadFile(filepath.Join(l.stateDir, "data", "default", name, "db", "record.json"))
		if err == nil {
			err = json.Unmarshal(raw, &rec)
		}
		if err != nil {
			b.Fatalf("the branch's record: %v", err)
		}
		var parts []string
		for what, d := range rec.Steps {
			steps[what] += d
			parts = append(parts, fmt.Sprintf("%s %.2fs", what, d.Seconds()))
		}
		sort.Strings(parts)
		b.Logf("%s Ready in %.2fs: %d rows, %d MiB; %s", name, took.Seconds(), rec.Rows, rec.Bytes>>20, strings.Join(parts, ", "))
		b.StopTimer()
		l.ctl("env", "delete", name, "--wait", "60s")
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/ready")
	for what, d := range steps {
		b.ReportMetric(d.Seconds()/float64(b.N), "s/"+strings.ReplaceAll(what, " ", "-"))
	}
}
