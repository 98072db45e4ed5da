package labdata

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

// TestSeedWrapper: the wrapper a seed job runs under keeps its command's
// exit status, in the file and as its own.
func TestSeedWrapper(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		argv []string
		code int
	}{
		{[]string{"true"}, 0},
		{[]string{"sh", "-c", "exit 3"}, 3},
		{[]string{"no-such-command-here"}, 127},
	} {
		exit := filepath.Join(dir, "exit")
		_ = os.Remove(exit)
		cmd := exec.Command("sh", append([]string{"-c", seedWrapper, exit}, tc.argv...)...)
		err := cmd.Run()
		got := 0
		if ee, ok := err.(*exec.ExitError); ok {
			got = ee.ExitCode()
		}
		b, rerr := os.ReadFile(exit)
		if got != tc.code || rerr != nil || strings.TrimSpace(string(b)) != strconv.Itoa(tc.code) {
			t.Errorf("%v: exit %d, file %q %v; want %d", tc.argv, got, b, rerr, tc.code)
		}
	}
}

// TestReachable: a data directory PostgreSQL's user cannot get to is
// refused, saying where and what to do.
func TestReachable(t *testing.T) {
	u := pgUser{name: "postgres", uid: 424242, gid: 424242}
	base := t.TempDir()
	closed := filepath.Join(base, "closed")
	if err := os.MkdirAll(filepath.Join(closed, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The test's own directories let others through; the system's (/tmp)
	// do.
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	err := reachable(filepath.Join(closed, "data", "pgdata"), u)
	if err == nil || !strings.Contains(err.Error(), "cannot get through "+filepath.Join(closed, "data")) || !strings.Contains(err.Error(), "chmod o+x") {
		t.Errorf("a closed directory: %v", err)
	}
	if err := os.Chmod(filepath.Join(closed, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(closed, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := reachable(filepath.Join(closed, "data", "pgdata"), u); err != nil {
		t.Errorf("an open path: %v", err)
	}
}

// TestSecrets: the lab's Secrets are files; a trailing newline is not part
// of a value; the branch's are written for root alone.
func TestSecrets(t *testing.T) {
	r := New(Config{StateDir: t.TempDir()})
	dir := r.secretDir("shop", "pg")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "password"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, err := r.readSecret("shop", "pg", "password"); err != nil || v != "s3cret" {
		t.Errorf("readSecret: %q %v", v, err)
	}
	if _, err := r.readSecret("shop", "pg", "username"); err == nil || !strings.Contains(err.Error(), "has no key username") {
		t.Errorf("a missing key: %v", err)
	}
	if err := r.writeSecret("shop", "db-pr-1", map[string][]byte{"password": []byte("x")}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(r.secretDir("shop", "db-pr-1"), "password"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the branch's secret file: %v %v", fi.Mode(), err)
	}
}

// TestBranchObservation: what the status shows of a branch in each phase.
func TestBranchObservation(t *testing.T) {
	r := New(Config{StateDir: t.TempDir()})
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ready := r.branchObservation(&record{Phase: v1alpha1.DataReady, Started: start, Finished: start.Add(3200 * time.Millisecond),
		Rows: 27, Bytes: 12 << 20, Endpoint: "10.0.0.9:5432"}, "db-pr-1")
	if !ready.Ready || ready.Status.Duration.Duration != 3200*time.Millisecond || ready.Message != "branch ready at 10.0.0.9:5432: 27 rows, 12 MiB, in 3.2s" ||
		ready.Status.Secret != "db-pr-1" {
		t.Errorf("ready: %+v", ready)
	}
	failed := r.branchObservation(&record{Phase: v1alpha1.DataFailed, Message: "restoring: rows: pg_restore failed"}, "db-pr-1")
	if !failed.Failed || failed.Message != "restoring: rows: pg_restore failed" || failed.Status.Duration != nil {
		t.Errorf("failed: %+v", failed)
	}
	if o := r.branchObservation(&record{Phase: v1alpha1.DataSnapshotting}, "db-pr-1"); o.Ready || o.Failed || o.Message != "snapshotting the baseline's database" {
		t.Errorf("snapshotting: %+v", o)
	}
}
