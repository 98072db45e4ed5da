// Package labdata makes an environment's data in the lab
// (docs/architecture.md, "Environment data"). A postgres-branch is a lab
// pod running Debian's PostgreSQL as the postgres user, with a data
// directory of its own (a copy of one initdb'd template, so a lab pays for
// initdb once), filled by pg_dump, pg_restore and psql run by the
// controller on the host against the pods' addresses, following
// data.BranchPlan. A seed job is a lab pod running the job's command. The
// lab has no Secrets: the baseline's credentials are files,
// secrets/NAMESPACE/NAME/KEY under the lab's state directory, and so is the
// branch's connection, which the environment owns and removes.
package labdata

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/envmgr/data"
	"github.com/detourdev/detour/pkg/lab"
)

// Labels on the lab pods an environment's data runs in. They are not the
// forks' labels (detour.dev/environment), so no fork route selects them and
// the forks' runtime never takes them for forks.
const (
	LabelDataOf = "detour.dev/data-of" // the environment
	LabelData   = "detour.dev/data"    // the data entry
)

// Config is what a Runner needs.
type Config struct {
	// StateDir is the lab's state directory; data goes to data/ and
	// secrets/ in it.
	StateDir string
	// Lab are the options pods are added with (PathPrepend: where seed
	// commands are found).
	Lab lab.Options
	// PGBin holds Debian's PostgreSQL server and client programs;
	// /usr/lib/postgresql/15/bin when empty.
	PGBin string
	// User is who the branches' PostgreSQL runs as (it refuses root);
	// postgres when empty.
	User string
	// Jobs is pg_restore's --jobs for rows and indexes; 2 when 0.
	Jobs   int
	Logger *slog.Logger
	Now    func() time.Time
}

// Runner is envmgr.Data in the lab.
type Runner struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	tasks map[string]*task // by branchKey: branches being made
	tmpl  sync.Mutex       // held while the template is made
}

var _ envmgr.Data = (*Runner)(nil)

// New returns a Runner for the lab in cfg.StateDir.
func New(cfg Config) *Runner {
	if cfg.PGBin == "" {
		cfg.PGBin = "/usr/lib/postgresql/15/bin"
	}
	if cfg.User == "" {
		cfg.User = "postgres"
	}
	if cfg.Jobs == 0 {
		cfg.Jobs = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Runner{cfg: cfg, log: cfg.Logger, tasks: map[string]*task{}}
}

// Close stops the branches being made (the controller is stopping); the
// next controller starts them again. When no environment has data left,
// the template goes too, so that a stopped lab keeps nothing of it.
func (r *Runner) Close() {
	r.mu.Lock()
	tasks := r.tasks
	r.tasks = map[string]*task{}
	r.mu.Unlock()
	for _, t := range tasks {
		t.cancel()
		<-t.done
	}
	r.tmpl.Lock()
	defer r.tmpl.Unlock()
	root := filepath.Join(r.cfg.StateDir, "data")
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "template-") {
			return // an environment's data: its template stays
		}
	}
	if err := os.RemoveAll(root); err != nil {
		r.log.Warn("remove the branches' template", "err", err)
	}
}

// envDir holds everything of one environment's data.
func (r *Runner) envDir(ns, env string) string {
	return filepath.Join(r.cfg.StateDir, "data", ns, env)
}

// secretDir is the lab's stand-in for the Secret NAME of namespace ns.
func (r *Runner) secretDir(ns, name string) string {
	return filepath.Join(r.cfg.StateDir, "secrets", ns, name)
}

// readSecret reads one key of a lab Secret; a trailing newline (as echo
// writes) is not part of the value.
func (r *Runner) readSecret(ns, name, key string) (string, error) {
	b, err := os.ReadFile(filepath.Join(r.secretDir(ns, name), key))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("lab secret %s/%s has no key %s (the file %s)", ns, name, key, filepath.Join(r.secretDir(ns, name), key))
		}
		return "", fmt.Errorf("lab secret %s/%s: %w", ns, name, err)
	}
	return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"), nil
}

// writeSecret writes a lab Secret, readable by root only.
func (r *Runner) writeSecret(ns, name string, kv map[string][]byte) error {
	dir := r.secretDir(ns, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for k, v := range kv {
		tmp := filepath.Join(dir, "."+k)
		if err := os.WriteFile(tmp, v, 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(dir, k)); err != nil {
			return err
		}
	}
	return nil
}

// Sync implements envmgr.Data: branches first, then seed jobs once the
// branches are ready and the forks up.
func (r *Runner) Sync(ctx context.Context, env *v1alpha1.Environment, stage envmgr.DataStage) (envmgr.DataResult, error) {
	res := envmgr.DataResult{BranchesReady: true, ForkEnv: map[string][]corev1.EnvVar{}}
	conns := map[string]data.Connection{} // ready branches, by entry
	obs := make([]envmgr.DataObservation, len(env.Spec.Data))
	var errs []error
	for i := range env.Spec.Data {
		d := &env.Spec.Data[i]
		if d.Kind != v1alpha1.DataPostgresBranch {
			continue
		}
		o, conn, err := r.branch(ctx, env, d)
		obs[i] = o
		if err != nil {
			errs = append(errs, fmt.Errorf("data %s: %w", d.Name, err))
		}
		if !o.Ready {
			res.BranchesReady = false
			continue
		}
		conns[d.Name] = conn
		for _, f := range env.Spec.Forks {
			if data.ForkGetsEnv(d.PostgresBranch, f.Workload.Name) {
				res.ForkEnv[f.Workload.Name] = append(res.ForkEnv[f.Workload.Name], data.LiteralEnv(d.PostgresBranch, conn)...)
			}
		}
	}
	for i := range env.Spec.Data {
		d := &env.Spec.Data[i]
		if d.Kind != v1alpha1.DataJobKind {
			continue
		}
		o, err := r.seed(ctx, env, d, stage.ForksReady && res.BranchesReady, conns)
		obs[i] = o
		if err != nil {
			errs = append(errs, fmt.Errorf("data %s: %w", d.Name, err))
		}
	}
	for i := range obs {
		obs[i].Name = env.Spec.Data[i].Name
		obs[i].Status.Kind = env.Spec.Data[i].Kind
		if obs[i].Status.Message == "" {
			obs[i].Status.Message = obs[i].Message
		}
	}
	res.Observations = obs
	if err := r.removeUnlisted(ctx, env); err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// removeUnlisted removes the data of entries the spec no longer has.
func (r *Runner) removeUnlisted(ctx context.Context, env *v1alpha1.Environment) error {
	want := map[string]bool{}
	for _, d := range env.Spec.Data {
		want[d.Name] = true
	}
	ents, err := os.ReadDir(r.envDir(env.Namespace, env.Name))
	if err != nil {
		return nil // nothing made yet
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() && !want[e.Name()] {
			errs = append(errs, r.removeEntry(ctx, env.Namespace, env.Name, e.Name()))
		}
	}
	return errors.Join(errs...)
}

// Cleanup implements envmgr.Data: every lab pod, data directory and
// Secret the environment's data made.
func (r *Runner) Cleanup(ctx context.Context, env *v1alpha1.Environment) error {
	ns, name := env.Namespace, env.Name
	var errs []error
	if ents, err := os.ReadDir(r.envDir(ns, name)); err == nil {
		for _, e := range ents {
			if e.IsDir() {
				errs = append(errs, r.removeEntry(ctx, ns, name, e.Name()))
			}
		}
	}
	// Pods whose directory is gone (a crash between the two).
	pods, err := lab.Pods(r.cfg.StateDir)
	if err != nil && !errors.Is(err, lab.ErrNotUp) {
		errs = append(errs, err)
	}
	for _, p := range pods {
		if p.Added && p.Namespace == ns && p.Labels[LabelDataOf] == name {
			errs = append(errs, r.removePod(ctx, p))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.RemoveAll(r.envDir(ns, name)); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(r.cfg.StateDir, "data", ns)) // only when empty
	return nil
}

// removeEntry removes one data entry of an environment: its work (stopped
// first), its lab pod, its Secret and its directory.
func (r *Runner) removeEntry(ctx context.Context, ns, env, entry string) error {
	key := ns + "/" + env + "/" + entry
	r.mu.Lock()
	t := r.tasks[key]
	delete(r.tasks, key)
	r.mu.Unlock()
	if t != nil {
		t.cancel()
		<-t.done
	}
	name := data.BranchName(entry, env)
	pods, err := lab.Pods(r.cfg.StateDir)
	if err != nil && !errors.Is(err, lab.ErrNotUp) {
		return err
	}
	for _, p := range pods {
		if p.Added && p.Namespace == ns && p.Name == name {
			if err := r.removePod(ctx, p); err != nil {
				return err
			}
		}
	}
	if err := os.RemoveAll(r.secretDir(ns, name)); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(r.envDir(ns, env), entry))
}

// removePod stops a data pod and removes it. A PostgreSQL branch is asked
// to stop at once (SIGINT, its fast shutdown) rather than wait for its
// clients, as the SIGTERM lab.RemovePod sends would have it do.
func (r *Runner) removePod(ctx context.Context, p lab.PodState) error {
	if p.Running() {
		_ = signalPod(p)
	}
	return lab.RemovePod(ctx, r.cfg.StateDir, p.Name, r.cfg.Lab)
}
