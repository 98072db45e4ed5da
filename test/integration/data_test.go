package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/detourdev/detour/internal/testutil"
	labpkg "github.com/detourdev/detour/pkg/lab"
	"github.com/detourdev/detour/pkg/netns"
)

// pgBin is Debian's PostgreSQL 15 (apt-get install postgresql), which the
// lab's database branches run.
const pgBin = "/usr/lib/postgresql/15/bin"

// baselinePassword is the baseline database's password. It must appear in
// no output of Detour's.
const baselinePassword = "baseline-Secret-9f27"

// dataLab: a baseline PostgreSQL (workload postgres, service pg), an app
// that reads and writes its notes table (api, which has no database of its
// own in the lab: its forks are given one), and a client.
const dataLab = `
name: it-data
network: {bridge: dtit-data, subnet: 10.213.212.0/24}
pods:
  - name: id-pg
    labels: {app: id-pg}
    workload: postgres
    command: [%s]
  - name: id-api
    labels: {app: id-api}
    workload: api
    command: ["detour-echo", "--listen", ":8080"]
  - name: id-client
    command: ["sleep", "infinity"]
services:
  - name: pg
    selector: {app: id-pg}
    ports: [{port: 5432}]
  - name: api
    selector: {app: id-api}
    ports: [{port: 80, targetPort: 8080}]
`

// The baseline's rows: 5 customers with real-looking addresses, 20 orders
// from 1 to 20 days old, 2 notes.
const baselineSQL = `
CREATE TABLE customers (id serial PRIMARY KEY, email text UNIQUE NOT NULL, name text);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers, created_at timestamptz NOT NULL, total numeric(10,2));
CREATE INDEX orders_created_at ON orders (created_at);
CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);
INSERT INTO customers (email, name) SELECT 'customer' || g || '@example.com', 'Customer ' || g FROM generate_series(1, 5) g;
INSERT INTO orders (customer_id, created_at, total) SELECT 1 + g % 5, now() - g * interval '1 day', g * 10 FROM generate_series(1, 20) g;
INSERT INTO notes (body) VALUES ('baseline note 1'), ('baseline note 2');
`

// seedSH is the seed job: it adds a note to the branch, with the
// environment's key.
const seedSH = `exec psql -X -q "$DETOUR_DATA_DB_URL" -c "INSERT INTO notes (body) VALUES ('seeded by $DETOUR_SESSION')"
`

// anonymizeSQL replaces every customer's address.
const anonymizeSQL = `UPDATE customers SET email = 'customer' || id || '@anonymised.invalid', name = 'Customer ' || id;`

// TestPrivilegedEnvironmentData runs environment data in the lab against a
// real PostgreSQL: three environments at once, each branching the baseline
// database in one mode (all, anonymised, with a seed job; schema, with a
// seed job that fails; filtered); rows written through a fork land in its
// branch and not in the baseline; the row filter holds; the anonymising
// script ran; the failing seed job makes its environment Failed with the
// way to its log; no password shows in any output or log; delete leaves
// no branch process, data directory, lab pod or Secret.
func TestPrivilegedEnvironmentData(t *testing.T) {
	testutil.RequirePrivileged(t)
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is not installed (apt-get install postgresql): %v", err)
		}
		t.Skipf("PostgreSQL is not installed (apt-get install postgresql): %v", err)
	}
	// PostgreSQL runs as postgres: it must get through the test's
	// directories to its data.
	pgdir := t.TempDir()
	openUp(t, pgdir)
	baselineData := filepath.Join(pgdir, "baseline")
	initBaseline(t, baselineData)
	cmd := fmt.Sprintf(`"setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", %q, "-D", %q, "-p", "5432", "-c", "listen_addresses=*", "-c", "unix_socket_directories="`,
		filepath.Join(pgBin, "postgres"), baselineData)
	l := startLab(t, fmt.Sprintf(dataLab, cmd))
	openUp(t, l.stateDir)

	pgIP := l.pod("id-pg").IP
	baselineURL := "postgres://app:" + baselinePassword + "@" + pgIP + ":5432/shop"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var db *pgx.Conn
	testutil.Eventually(t, 20*time.Second, func() error {
		var err error
		db, err = pgx.Connect(ctx, baselineURL)
		return err
	})
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, baselineSQL); err != nil {
		t.Fatalf("fill the baseline: %v", err)
	}
	// The lab's Secret of the baseline's credentials, and the script.
	secret := filepath.Join(l.stateDir, "secrets", "default", "pg-creds")
	if err := os.MkdirAll(secret, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"username": "app\n", "password": baselinePassword + "\n", "database": "shop"} {
		if err := os.WriteFile(filepath.Join(secret, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	anon := filepath.Join(pgdir, "anonymize.sql")
	if err := os.WriteFile(anon, []byte(anonymizeSQL), 0o644); err != nil {
		t.Fatal(err)
	}

	seed := filepath.Join(pgdir, "seed.sh")
	if err := os.WriteFile(seed, []byte(seedSH), 0o755); err != nil {
		t.Fatal(err)
	}

	branch := func(mode string) []string {
		return []string{"--data", "db=postgres-branch" + mode, "--data-workload", "db:postgres", "--data-service", "db:pg",
			"--data-credentials", "db:pg-creds:database=database"}
	}
	fork := []string{"--fork", "api", "--command", "api=detour-echo --listen :8080"} // its DATABASE_URL is the branch's
	join := func(parts ...[]string) []string { return slices.Concat(parts...) }
	creates := map[string][]string{
		"br-all": join(fork, branch(""), []string{"--data-anonymize", "db:@" + anon, "--data", "seed=job", "--data-command", "seed:sh " + seed}),
		"br-schema": join(fork, branch(":schema"),
			[]string{"--data", "seed=job", "--data-command", `seed:sh -c "echo the seed fails >&2; exit 3"`}),
		"br-filtered": join(fork, branch(""), []string{"--data-filter", "db:orders=created_at > now() - interval '7 days'"}),
	}

	// What is refused before anything is made.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{join(branch(""), []string{"--data-filter", "db:orders=true; drop table orders"}), "';'"},
		{join(branch(""), []string{"--data-filter", `db:orders"=true`}), `table "orders\""`},
		{join(branch(""), []string{"--data-filter", "db:orders=id > 0) or (true"}), "closes a parenthesis"},
	} {
		args := append(append([]string{"env", "create", "br-bad"}, fork...), tc.args...)
		if out, code := l.ctlCode(args...); code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, want 2 and %q\n%s", tc.args, code, tc.want, out)
		}
	}

	// The three at once.
	start := time.Now()
	outs := map[string]string{}
	codes := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, args := range creates {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, code := l.ctlCode(append([]string{"env", "create", name, "--wait", "90s"}, args...)...)
			mu.Lock()
			outs[name], codes[name] = out, code
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("three environments with branches settled in %v", time.Since(start).Round(100*time.Millisecond))
	for _, name := range []string{"br-all", "br-filtered"} {
		if codes[name] != 0 {
			t.Fatalf("env create %s: exit %d\n%s", name, codes[name], outs[name])
		}
		t.Logf("env create %s --wait:\n%s", name, outs[name])
	}
	// The failing seed job: Failed, with the job's reason and its log.
	if out := outs["br-schema"]; codes["br-schema"] != 1 || !strings.Contains(out, "failed (DataFailed)") ||
		!strings.Contains(out, "exited with status 3") || !strings.Contains(out, "its log: ") {
		t.Errorf("a failing seed job: exit %d\n%s", codes["br-schema"], out)
	} else if log := out[strings.Index(out, "its log: ")+len("its log: "):]; true {
		log = strings.Fields(log)[0]
		log = strings.TrimRight(log, ";")
		if b, err := os.ReadFile(log); err != nil || !strings.Contains(string(b), "the seed fails") {
			t.Errorf("the failed seed job's log %s: %q %v", log, b, err)
		}
	}

	type dataStatus struct {
		Name, Kind, Phase, Endpoint, Secret, Message string
		Rows, Bytes                                  string // int64 in JSON
	}
	status := func(name string) map[string]dataStatus {
		t.Helper()
		var got struct {
			Environment struct {
				Status struct{ Data []dataStatus }
			}
		}
		if err := json.Unmarshal([]byte(l.ctl("env", "get", name, "-o", "json")), &got); err != nil {
			t.Fatal(err)
		}
		out := map[string]dataStatus{}
		for _, d := range got.Environment.Status.Data {
			out[d.Name] = d
		}
		return out
	}
	branchURL := func(env string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(l.stateDir, "secrets", "default", "db-"+env, "url"))
		if err != nil {
			t.Fatalf("the branch's lab secret: %v", err)
		}
		return string(b)
	}
	query := func(url, sql string) string {
		t.Helper()
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer c.Close(ctx)
		var s string
		if err := c.QueryRow(ctx, sql).Scan(&s); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return s
	}
	const count = `SELECT (SELECT count(*) FROM customers) || ' ' || (SELECT count(*) FROM orders) || ' ' || (SELECT count(*) FROM notes)`

	// all: every row, anonymised, then seeded; the status says so.
	st := status("br-all")
	if d := st["db"]; d.Phase != "Ready" || d.Rows != "27" || d.Bytes == "" || d.Secret != "db-br-all" {
		t.Errorf("br-all's branch: %+v", d)
	}
	if d := st["seed"]; d.Phase != "Ready" {
		t.Errorf("br-all's seed: %+v", d)
	}
	all := branchURL("br-all")
	if got := query(all, count); got != "5 20 3" {
		t.Errorf("br-all's branch holds %s customers, orders, notes; want 5 20 3 (seeded)", got)
	}
	if got := query(all, `SELECT count(*)::text FROM customers WHERE email LIKE '%@example.com'`); got != "0" {
		t.Errorf("%s original addresses left in the anonymised branch", got)
	}
	if got := query(all, `SELECT body FROM notes ORDER BY id DESC LIMIT 1`); got != "seeded by br-all" {
		t.Errorf("the seed job wrote %q", got)
	}
	// Through the fork: it reads the branch and writes there, not to the
	// baseline.
	hc := l.client("id-client")
	api := "http://" + l.pod("id-api").IP + ":8080/notes"
	notes := func(method, key, body string) string {
		t.Helper()
		req, _ := http.NewRequest(method, api, strings.NewReader(body))
		req.Header.Set("x-detour-session", key)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s /notes: %v", method, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.Header.Get("X-Detour-Pod") != "api-"+key {
			t.Fatalf("%s /notes with key %s: %s from %s: %s", method, key, resp.Status, resp.Header.Get("X-Detour-Pod"), b)
		}
		return string(b)
	}
	if got := notes("GET", "br-all", ""); !strings.Contains(got, "baseline note 1") || !strings.Contains(got, "seeded by br-all") {
		t.Errorf("the fork reads from its branch:\n%s", got)
	}
	notes("POST", "br-all", "written by the fork")
	if got := query(all, `SELECT count(*)::text FROM notes WHERE body = 'written by the fork'`); got != "1" {
		t.Errorf("the fork's row is in its branch %s times, want 1", got)
	}
	if got := query(baselineURL, `SELECT count(*)::text FROM notes WHERE body <> 'baseline note 1' AND body <> 'baseline note 2'`); got != "0" {
		t.Errorf("%s rows of the environments' reached the baseline", got)
	}
	if got := query(baselineURL, `SELECT count(*)::text FROM customers WHERE email LIKE '%@example.com'`); got != "5" {
		t.Errorf("the baseline's addresses changed: %s left", got)
	}

	// filtered: the orders of the last 7 days, every other row.
	if got := query(branchURL("br-filtered"), count); got != "5 6 2" {
		t.Errorf("br-filtered's branch holds %s customers, orders, notes; want 5 6 2", got)
	}
	if d := status("br-filtered")["db"]; d.Phase != "Ready" || d.Rows != "13" {
		t.Errorf("br-filtered's branch: %+v", d)
	}
	// schema: the tables, no rows; the branch is Ready though the seed
	// failed.
	if got := query(branchURL("br-schema"), count); got != "0 0 0" {
		t.Errorf("br-schema's branch holds %s customers, orders, notes; want none", got)
	}
	if d := status("br-schema")["db"]; d.Phase != "Ready" || d.Rows != "" && d.Rows != "0" {
		t.Errorf("br-schema's branch: %+v", d)
	}

	// No password anywhere a user or an operator reads.
	secrets := []string{baselinePassword}
	for _, env := range []string{"br-all", "br-schema", "br-filtered"} {
		b, err := os.ReadFile(filepath.Join(l.stateDir, "secrets", "default", "db-"+env, "password"))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, string(b))
	}
	var shown strings.Builder
	for _, out := range outs {
		shown.WriteString(out)
	}
	for _, env := range []string{"br-all", "br-schema", "br-filtered"} {
		for _, o := range []string{"json", "yaml", "table"} {
			shown.WriteString(l.ctl("env", "get", env, "-o", o))
		}
	}
	shown.WriteString(l.ctl("env", "list"))
	ctlLog, _ := os.ReadFile(l.controller.log)
	shown.Write(ctlLog)
	for _, s := range secrets {
		if strings.Contains(shown.String(), s) {
			t.Errorf("a password (%d characters) shows in Detour's output or the controller's log", len(s))
		}
	}

	// Delete: nothing of the branches is left.
	var dirs []string
	for _, env := range []string{"br-all", "br-schema", "br-filtered"} {
		dirs = append(dirs, filepath.Join(l.stateDir, "data", "default", env))
		l.ctl("env", "delete", env, "--wait", "30s")
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("data directory %s left: %v", d, err)
		}
	}
	for _, env := range []string{"br-all", "br-schema", "br-filtered"} {
		if _, err := os.Stat(filepath.Join(l.stateDir, "secrets", "default", "db-"+env)); !os.IsNotExist(err) {
			t.Errorf("the branch's lab secret of %s is left: %v", env, err)
		}
		for _, ns := range []string{"db-" + env, "seed-" + env, "api-" + env} {
			if netns.Exists(ns) {
				t.Errorf("namespace %s left", ns)
			}
		}
	}
	pods, err := labpkg.Pods(l.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if p.Added {
			t.Errorf("lab pod %s left", p.Name)
		}
	}
	if procs := processesWith(filepath.Join(l.stateDir, "data")); len(procs) > 0 {
		t.Errorf("processes of the branches left: %v", procs)
	}
	// The baseline took nothing of it.
	if got := query(baselineURL, count); got != "5 20 2" {
		t.Errorf("the baseline holds %s customers, orders, notes; want 5 20 2", got)
	}
}

// openUp lets others (PostgreSQL's user) through dir and the directories
// the test made above it.
func openUp(t testing.TB, dir string) {
	t.Helper()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// initBaseline makes the baseline's data directory: user app with
// baselinePassword owning database shop, password logins from the lab's
// network.
func initBaseline(t testing.TB, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chown", "postgres:postgres", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	as := []string{"setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"}
	if out, err := exec.Command(as[0], append(as[1:], filepath.Join(pgBin, "initdb"), "-D", dir, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C.UTF-8", "--no-instructions")...).CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	hba := "host all all 0.0.0.0/0 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(dir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	single := exec.Command(as[0], append(as[1:], filepath.Join(pgBin, "postgres"), "--single", "-D", dir, "-c", "unix_socket_directories=", "postgres")...)
	single.Stdin = strings.NewReader("CREATE ROLE app LOGIN PASSWORD '" + baselinePassword + "'\nCREATE DATABASE shop OWNER app\n")
	if out, err := single.CombinedOutput(); err != nil {
		t.Fatalf("the baseline's user and database: %v\n%s", err, out)
	}
}

// processesWith lists the processes whose command line mentions path.
func processesWith(path string) []string {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []string
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), path) {
			out = append(out, filepath.Base(filepath.Dir(p))+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}
