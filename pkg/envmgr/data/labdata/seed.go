package labdata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/envmgr/data"
	"github.com/detourdev/detour/pkg/lab"
)

// exitFile is where a seed job's wrapper writes its command's exit status:
// the lab's processes are not the controller's children for long (init
// adopts them), so the status is kept in a file.
const exitFile = "exit"

// seedWrapper runs the job's command ("$@") and records its exit status
// in $0, atomically.
const seedWrapper = `"$@"; s=$?; echo "$s" >"$0.tmp" && mv "$0.tmp" "$0"; exit "$s"`

const defaultJobTimeout = 10 * time.Minute

// seed reports a seed job, starting it when it may (the branches ready
// and the forks up) and has not run for its spec.
func (r *Runner) seed(ctx context.Context, env *v1alpha1.Environment, d *v1alpha1.DataSource, mayStart bool, conns map[string]data.Connection) (envmgr.DataObservation, error) {
	j := d.Job
	name := data.BranchName(d.Name, env.Name)
	dir := filepath.Join(r.envDir(env.Namespace, env.Name), d.Name)
	failed := func(msg string) envmgr.DataObservation {
		return envmgr.DataObservation{Failed: true, Message: msg, Status: v1alpha1.DataStatus{Phase: v1alpha1.DataFailed, Job: name, Message: msg}}
	}
	if j.Image != "" {
		return failed("image " + j.Image + ": the lab runs commands, not images (give the job a command)"), nil
	}
	argv := append(append([]string(nil), j.Command...), j.Args...)
	if len(argv) == 0 {
		return failed("the job has no command to run"), nil
	}
	hash := specHash(env, d)
	rec, err := readRecord(dir)
	if err != nil || rec.UID != string(env.UID) || rec.Spec != hash {
		if !mayStart {
			msg := "waits for the branches and the forks to be ready"
			return envmgr.DataObservation{Message: msg, Status: v1alpha1.DataStatus{Phase: v1alpha1.DataPending, Job: name, Message: msg}}, nil
		}
		vars, msg := r.seedEnv(env, j, conns)
		if msg != "" {
			return failed(msg), nil
		}
		if err := r.startSeed(ctx, env, d, dir, name, argv, vars, hash); err != nil {
			return envmgr.DataObservation{Message: "starting the job", Status: v1alpha1.DataStatus{Phase: v1alpha1.DataSeeding, Job: name}}, err
		}
		if rec, err = readRecord(dir); err != nil {
			return envmgr.DataObservation{}, err
		}
	}
	o := r.seedObservation(rec, name)
	if rec.terminal() {
		return o, nil
	}
	pod, err := r.pod(name, env.Namespace)
	if err != nil {
		return o, err
	}
	now := r.cfg.Now()
	finish := func(phase v1alpha1.DataPhase, msg string) (envmgr.DataObservation, error) {
		rec.Phase, rec.Message, rec.Finished = phase, msg, now
		if err := writeRecord(dir, rec); err != nil {
			return o, err
		}
		return r.seedObservation(rec, name), nil
	}
	logOf := "its log: " + filepath.Join(r.cfg.StateDir, lab.LogDir, name+".log")
	if b, err := os.ReadFile(filepath.Join(dir, exitFile)); err == nil {
		code, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if code == 0 {
			return finish(v1alpha1.DataReady, "")
		}
		return finish(v1alpha1.DataFailed, fmt.Sprintf("seed job %s failed: its command exited with status %d; %s", name, code, logOf))
	}
	timeout := defaultJobTimeout
	if j.Timeout != nil {
		timeout = j.Timeout.Duration
	}
	switch {
	case pod == nil || !pod.Running():
		return finish(v1alpha1.DataFailed, fmt.Sprintf("seed job %s stopped without an exit status; %s", name, logOf))
	case now.Sub(rec.Started) > timeout:
		if err := r.removePod(ctx, *pod); err != nil {
			return o, err
		}
		return finish(v1alpha1.DataFailed, fmt.Sprintf("seed job %s ran longer than its timeout (%s) and was stopped", name, timeout))
	}
	return o, nil
}

func (r *Runner) seedObservation(rec *record, name string) envmgr.DataObservation {
	o := envmgr.DataObservation{
		Ready: rec.Phase == v1alpha1.DataReady, Failed: rec.Phase == v1alpha1.DataFailed,
		Status: v1alpha1.DataStatus{Phase: rec.Phase, Job: name},
	}
	switch rec.Phase {
	case v1alpha1.DataSeeding:
		o.Message = "seed job " + name + " running"
	case v1alpha1.DataReady:
		o.Message = fmt.Sprintf("seed job %s done in %s", name, rec.Finished.Sub(rec.Started).Round(100*time.Millisecond))
	default:
		o.Message = rec.Message
	}
	if !rec.Finished.IsZero() {
		o.Status.Duration = &metav1.Duration{Duration: rec.Finished.Sub(rec.Started).Round(time.Millisecond)}
	}
	o.Status.Message = o.Message
	return o
}

// seedEnv is a seed job's environment: the environment's name and key,
// each ready branch's connection (the variables the forks get, and
// DETOUR_DATA_<NAME>_URL), then the job's own variables. A value from a
// Secret or ConfigMap cannot be had in the lab: msg says so.
func (r *Runner) seedEnv(env *v1alpha1.Environment, j *v1alpha1.DataJob, conns map[string]data.Connection) (vars []string, msg string) {
	vars = []string{envmgr.EnvVarEnvironment + "=" + env.Name, envmgr.EnvVarSession + "=" + envmgr.Key(env)}
	for _, d := range env.Spec.Data {
		c, ok := conns[d.Name]
		if !ok || d.PostgresBranch == nil {
			continue
		}
		for _, e := range data.LiteralEnv(d.PostgresBranch, c) {
			vars = append(vars, e.Name+"="+e.Value)
		}
		vars = append(vars, data.SeedVar(d.Name)+"="+c.URL())
	}
	for _, e := range j.Env {
		if e.ValueFrom != nil {
			return nil, "env " + e.Name + ": the lab has no ConfigMaps, Secrets or pod fields to take a value from"
		}
		vars = append(vars, e.Name+"="+e.Value)
	}
	return vars, ""
}

// startSeed starts a seed job as a lab pod, with the hosts file of the
// first fork's baseline pod so that it resolves the lab's names as the
// forks do.
func (r *Runner) startSeed(ctx context.Context, env *v1alpha1.Environment, d *v1alpha1.DataSource, dir, name string, argv, vars []string, hash string) error {
	if pod, err := r.pod(name, env.Namespace); err != nil {
		return err
	} else if pod != nil {
		if err := r.removePod(ctx, *pod); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	hosts := ""
	if pods, err := lab.Pods(r.cfg.StateDir); err == nil && len(env.Spec.Forks) > 0 {
		for _, p := range pods {
			if !p.Added && p.Namespace == env.Namespace && p.Workload == env.Spec.Forks[0].Workload.Name {
				hosts = p.Name
				break
			}
		}
	}
	rec := &record{UID: string(env.UID), Spec: hash, Phase: v1alpha1.DataSeeding, Started: r.cfg.Now()}
	if err := writeRecord(dir, rec); err != nil {
		return err
	}
	_, err := lab.AddPod(ctx, r.cfg.StateDir, lab.NewPod{
		Name:      name,
		Namespace: env.Namespace,
		Labels:    map[string]string{LabelDataOf: env.Name, LabelData: d.Name},
		Workload:  name,
		Command:   append([]string{"sh", "-c", seedWrapper, filepath.Join(dir, exitFile)}, argv...),
		Env:       vars,
		HostsLike: hosts,
	}, r.cfg.Lab)
	if err != nil {
		_ = os.Remove(filepath.Join(dir, recordFile))
		if errors.Is(err, lab.ErrNoCommand) {
			return fmt.Errorf("seed job %s: %w", name, err)
		}
		return fmt.Errorf("start seed job %s: %w", name, err)
	}
	return nil
}
