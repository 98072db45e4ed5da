package labdata

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/detourdev/detour/pkg/envmgr/data"
	"github.com/detourdev/detour/pkg/lab"
)

// pgUser is the account the branches' PostgreSQL runs as.
type pgUser struct {
	name     string
	uid, gid int
}

func (r *Runner) pgUser() (pgUser, error) {
	u, err := user.Lookup(r.cfg.User)
	if err != nil {
		return pgUser{}, fmt.Errorf("PostgreSQL's user %s: %w (install postgresql: apt-get install postgresql)", r.cfg.User, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return pgUser{name: u.Username, uid: uid, gid: gid}, nil
}

// asUser is argv run as u (setpriv, from util-linux).
func asUser(u pgUser, argv ...string) []string {
	return append([]string{"setpriv", "--reuid=" + strconv.Itoa(u.uid), "--regid=" + strconv.Itoa(u.gid), "--init-groups", "--"}, argv...)
}

// reachable refuses a data directory PostgreSQL's user could not get to:
// every directory above it must let others through.
func reachable(dir string, u pgUser) error {
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		owned := st != nil && int(st.Uid) == u.uid
		if fi.Mode().Perm()&0o001 == 0 && !owned {
			return fmt.Errorf("PostgreSQL runs as %s, which cannot get through %s (mode %o) to its data in %s: give others search permission there (chmod o+x)",
				u.name, d, fi.Mode().Perm(), dir)
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}

// template is the initdb'd data directory branches are copied from: made
// once per lab (initdb takes about a second; a copy, a tenth of that).
func (r *Runner) template(ctx context.Context, u pgUser) (string, error) {
	r.tmpl.Lock()
	defer r.tmpl.Unlock()
	version := filepath.Base(filepath.Dir(r.cfg.PGBin)) // /usr/lib/postgresql/15/bin → 15
	dir := filepath.Join(r.cfg.StateDir, "data", "template-"+version)
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	if err := reachable(dir, u); err != nil {
		return "", err
	}
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return "", err
	}
	if err := os.Chown(tmp, u.uid, u.gid); err != nil {
		return "", err
	}
	argv := asUser(u, filepath.Join(r.cfg.PGBin, "initdb"), "--pgdata="+tmp, "--username=postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions")
	if out, err := run(ctx, "/", argv, nil, nil); err != nil {
		return "", fmt.Errorf("initdb of the branches' template: %w\n%s", err, tailOf(out))
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// newDataDir makes a branch's data directory: a copy of the template, its
// user with the branch's password and its database, set in single-user
// mode before the server listens, and password logins from the network
// only.
func (r *Runner) newDataDir(ctx context.Context, pgdata, user, password, db string) error {
	u, err := r.pgUser()
	if err != nil {
		return err
	}
	tmpl, err := r.template(ctx, u)
	if err != nil {
		return err
	}
	if err := os.Chmod(filepath.Dir(pgdata), 0o755); err != nil {
		return err
	}
	if err := reachable(pgdata, u); err != nil {
		return err
	}
	if out, err := run(ctx, "/", []string{"cp", "-a", tmpl, pgdata}, nil, nil); err != nil {
		return fmt.Errorf("copy the template: %w\n%s", err, tailOf(out))
	}
	hba := "# detour: a branch takes password logins from the network only.\n" +
		"host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(pgdata, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return err
	}
	// One statement per line: single-user mode ends each at a newline.
	// The names passed data.CheckIdent; the password is base32.
	var sql strings.Builder
	if user == "postgres" {
		fmt.Fprintf(&sql, "ALTER ROLE postgres PASSWORD '%s'\n", password)
	} else {
		fmt.Fprintf(&sql, "CREATE ROLE %s LOGIN PASSWORD '%s'\n", data.QuoteIdent(user), password)
	}
	if db == "postgres" {
		fmt.Fprintf(&sql, "ALTER DATABASE postgres OWNER TO %s\n", data.QuoteIdent(user))
	} else {
		fmt.Fprintf(&sql, "CREATE DATABASE %s OWNER %s\n", data.QuoteIdent(db), data.QuoteIdent(user))
	}
	argv := asUser(u, filepath.Join(r.cfg.PGBin, "postgres"), "--single", "-D", pgdata, "-c", "unix_socket_directories=", "postgres")
	if out, err := run(ctx, "/", argv, nil, strings.NewReader(sql.String())); err != nil {
		var red data.Redactor
		red.Add(password)
		return fmt.Errorf("set the branch's user and database: %w\n%s", err, red.Redact(tailOf(out)))
	}
	return nil
}

// serverCommand runs PostgreSQL on a branch's data: listening on every
// address of its pod at the baseline's port, no Unix socket (the pods
// share the host's /run), and without waiting for the disk: a branch is
// thrown away, never recovered.
func (r *Runner) serverCommand(pgdata string, port int32) []string {
	u, _ := r.pgUser() // newDataDir looked it up
	return asUser(u, filepath.Join(r.cfg.PGBin, "postgres"), "-D", pgdata, "-p", strconv.Itoa(int(port)),
		"-c", "listen_addresses=*", "-c", "unix_socket_directories=",
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off")
}

// waitReady waits until the branch accepts connections (pg_isready), or
// fails with its log when its server exits.
func (r *Runner) waitReady(ctx context.Context, c data.Connection, pod, ns string) error {
	deadline := time.Now().Add(30 * time.Second)
	argv := []string{filepath.Join(r.cfg.PGBin, "pg_isready"), "--host=" + c.Host, "--port=" + strconv.Itoa(int(c.Port)), "--timeout=2"}
	for {
		if _, err := run(ctx, "/", argv, nil, nil); err == nil {
			return nil
		}
		p, err := r.pod(pod, ns)
		if err != nil {
			return err
		}
		if p == nil || !p.Running() {
			msg := "the branch's database exited"
			if p != nil {
				if b, err := os.ReadFile(p.Log); err == nil {
					msg += ": " + tailOf(b)
				}
			}
			return errors.New(msg)
		}
		if time.Now().After(deadline) {
			return errors.New("the branch's database does not accept connections after 30s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// runStep runs one step of the plan against c, in the work directory, with
// nothing of the controller's own environment (no PG* variable of the
// host's reaches it). Its error carries the end of what it said.
func (r *Runner) runStep(ctx context.Context, work string, s data.Step, c data.Connection) (string, error) {
	argv := append([]string{filepath.Join(r.cfg.PGBin, s.Argv[0])}, s.Argv[1:]...)
	env := append([]string{"PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8", "HOME=/nonexistent", "PGPASSFILE=/dev/null"}, data.SideEnv(s.Side)...)
	env = append(env, data.ConnEnv(c)...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = work, env
	if s.Stdin != "" {
		f, err := os.Open(filepath.Join(work, s.Stdin))
		if err != nil {
			return "", err
		}
		defer f.Close()
		cmd.Stdin = f
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(tailOf(stderr.Bytes()))
		if msg == "" {
			msg = strings.TrimSpace(tailOf(stdout.Bytes()))
		}
		return "", fmt.Errorf("%s failed (%v): %s", s.Argv[0], err, msg)
	}
	return stdout.String(), nil
}

// run runs argv and returns its combined output.
func run(ctx context.Context, dir string, argv []string, env []string, stdin *strings.Reader) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = env
	}
	if stdin != nil {
		cmd.Stdin = stdin
	}
	return cmd.CombinedOutput()
}

// tailOf is the last lines of a program's output, for a message.
func tailOf(b []byte) string {
	s := strings.TrimSpace(string(b))
	const max = 600
	if len(s) > max {
		s = "..." + s[len(s)-max:]
	}
	return s
}

// signalPod asks a branch's PostgreSQL to stop at once: SIGINT is its fast
// shutdown, which does not wait for clients. The pod's pid is the server's
// (ip netns exec and setpriv exec it).
func signalPod(p lab.PodState) error {
	return syscall.Kill(p.PID, syscall.SIGINT)
}
