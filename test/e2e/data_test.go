//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/echo"
	"github.com/detourdev/detour/internal/testutil"
)

// baseline's rows: three customers with real-looking addresses, two notes.
const storeSQL = `CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL);
CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);
INSERT INTO customers (email) SELECT 'customer' || g || '@example.com' FROM generate_series(1, 3) g;
INSERT INTO notes (body) VALUES ('baseline note 1'), ('baseline note 2');`

// testEnvironmentData: PostgreSQL (an image built from Debian's packages)
// runs the baseline database; an environment branches it (all rows,
// anonymised by a ConfigMap's script) and forks its app; the fork reads a
// baseline row from its branch and writes one the baseline does not see;
// when the TTL ends, the branch is gone with everything it made.
func testEnvironmentData(t *testing.T, e env, c *client) {
	e.k(t, "apply", "-f", "testdata/pgdata.yaml")
	e.k(t, "-n", "store", "rollout", "status", "statefulset/postgres", "--timeout=120s")
	e.k(t, "-n", "store", "rollout", "status", "deployment/notes", "--timeout=120s")
	psql := func(pod, sql string) string {
		t.Helper()
		return strings.TrimSpace(e.k(t, "-n", "store", "exec", pod, "--", "psql", "--host=/tmp", "--username=app", "--dbname=shop",
			"--no-psqlrc", "--quiet", "--tuples-only", "--no-align", "--set=ON_ERROR_STOP=1", "--command="+sql))
	}
	psql("postgres-0", storeSQL)

	start := time.Now()
	out := e.detour(t, "admin", "env", "create", "pr-db", "-n", "store", "--fork", "notes",
		"--data", "db=postgres-branch", "--data-workload", "db:statefulset/postgres", "--data-service", "db:postgres",
		"--data-credentials", "db:pg-creds:database=database", "--data-anonymize", "db:configmap/anon/anonymize.sql",
		"--ttl", "10m", "--wait", "240s")
	t.Logf("pr-db Ready in %s\n%s", time.Since(start).Round(100*time.Millisecond), out)
	if got := e.k(t, "-n", "store", "get", "environment", "pr-db", "-o", "jsonpath={.status.data[0].phase} {.status.data[0].secret}"); got != "Ready db-pr-db" {
		t.Errorf("the branch's status: %q", got)
	}
	t.Log(e.k(t, "-n", "store", "get", "statefulsets,services,jobs,pods,secrets", "-l", "detour.dev/data-of=pr-db"))

	notes := "http://" + strings.TrimSpace(e.k(t, "-n", "store", "get", "svc", "notes", "-o", "jsonpath={.spec.clusterIP}")) + ":80/notes"
	call := func(method, key, body string) (string, string, error) {
		req, _ := http.NewRequest(method, notes, strings.NewReader(body))
		if key != "" {
			req.Header.Set("x-detour-session", key)
		}
		resp, err := c.fresh.Do(req)
		if err != nil {
			return "", "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", "", fmt.Errorf("%s %s: %s: %s", method, notes, resp.Status, b)
		}
		return resp.Header.Get(echo.PodHeader), string(b), nil
	}
	// The fork reads the baseline's rows from its branch...
	testutil.Eventually(t, 30*time.Second, func() error {
		pod, body, err := call("GET", "pr-db", "")
		if err != nil || !strings.HasPrefix(pod, "notes-pr-db-") || !strings.Contains(body, "baseline note 1") {
			return fmt.Errorf("GET /notes with the key: %s %q %v", pod, body, err)
		}
		return nil
	})
	// ...and writes there, not to the baseline.
	if pod, _, err := call("POST", "pr-db", "written by pr-db"); err != nil || !strings.HasPrefix(pod, "notes-pr-db-") {
		t.Fatalf("POST /notes with the key: %s %v", pod, err)
	}
	if _, body, err := call("GET", "pr-db", ""); err != nil || !strings.Contains(body, "written by pr-db") {
		t.Errorf("the fork does not read back its row: %q %v", body, err)
	}
	if pod, body, err := call("GET", "", ""); err != nil || strings.HasPrefix(pod, "notes-pr-db-") || strings.Contains(body, "written by pr-db") || !strings.Contains(body, "baseline note 2") {
		t.Errorf("the baseline, without the key: %s %q %v", pod, body, err)
	}
	if got := psql("postgres-0", "SELECT count(*) FROM notes"); got != "2" {
		t.Errorf("the baseline holds %s notes, want 2", got)
	}
	// The anonymising script ran in the branch, not in the baseline.
	if got := psql("db-pr-db-0", "SELECT count(*) FROM customers WHERE email LIKE '%@example.com'"); got != "0" {
		t.Errorf("%s original addresses in the branch", got)
	}
	if got := psql("postgres-0", "SELECT count(*) FROM customers WHERE email LIKE '%@example.com'"); got != "3" {
		t.Errorf("the baseline holds %s original addresses, want 3", got)
	}

	t.Log("the TTL ends")
	t.Log(e.detour(t, "admin", "env", "renew", "pr-db", "-n", "store", "--ttl", "3s"))
	testutil.Eventually(t, 120*time.Second, func() error {
		if out, err := runErr(e.kubectl, "--kubeconfig", e.kubeconfig("admin"), "-n", "store", "get", "environment", "pr-db"); err == nil {
			return fmt.Errorf("pr-db still there:\n%s", out)
		}
		return nil
	})
	testutil.Eventually(t, 90*time.Second, func() error {
		left := e.k(t, "-n", "store", "get", "statefulsets,services,jobs,pods,secrets,persistentvolumeclaims,deployments", "-o", "name")
		if strings.Contains(left, "pr-db") {
			return fmt.Errorf("left after expiry:\n%s", left)
		}
		return nil
	})
	e.k(t, "delete", "namespace", "store", "--wait=false")
}
