package labdata

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/envmgr/data"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/lab"
)

// record is where a branch or seed job is, on disk beside its data, so
// that a controller that restarts knows what is done: a branch whose
// record is not Ready or Failed is made again from the start.
type record struct {
	UID      string             `json:"uid"`
	Spec     string             `json:"spec"` // specHash of the entry
	Phase    v1alpha1.DataPhase `json:"phase"`
	Started  time.Time          `json:"started"`
	Finished time.Time          `json:"finished,omitzero"`
	Rows     int64              `json:"rows,omitempty"`
	Bytes    int64              `json:"bytes,omitempty"`
	Endpoint string             `json:"endpoint,omitempty"`
	// Message is what the status shows; never a secret (redacted).
	Message string `json:"message,omitempty"`
	// Took is how long each phase took, and Steps each step of the
	// making (the plan's, by what they do, and starting the server), for
	// the logs and the bench: what bounds a branch's time.
	Took  map[v1alpha1.DataPhase]time.Duration `json:"took,omitempty"`
	Steps map[string]time.Duration             `json:"steps,omitempty"`
}

func (rec *record) terminal() bool {
	return rec.Phase == v1alpha1.DataReady || rec.Phase == v1alpha1.DataFailed
}

const recordFile = "record.json"

func readRecord(dir string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return nil, err
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, recordFile), err)
	}
	return &rec, nil
}

func writeRecord(dir string, rec *record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+recordFile)
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, recordFile))
}

// specHash identifies what a data entry asks for, so that a changed entry
// is made again.
func specHash(env *v1alpha1.Environment, d *v1alpha1.DataSource) string {
	j, _ := json.Marshal(struct {
		UID  string
		Data *v1alpha1.DataSource
	}{string(env.UID), d})
	sum := sha256.Sum256(j)
	return hex.EncodeToString(sum[:12])
}

// task is a branch being made, in the background: the reconciler only
// looks at its progress.
type task struct {
	hash   string
	cancel context.CancelFunc
	done   chan struct{}

	mu  sync.Mutex
	rec record
}

func (t *task) set(f func(*record)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(&t.rec)
}

func (t *task) get() record {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rec
}

// branch reports a branch, starting its making when nothing is under way
// or done for its spec. conn is its connection once it is Ready.
func (r *Runner) branch(ctx context.Context, env *v1alpha1.Environment, d *v1alpha1.DataSource) (envmgr.DataObservation, data.Connection, error) {
	key := env.Namespace + "/" + env.Name + "/" + d.Name
	dir := filepath.Join(r.envDir(env.Namespace, env.Name), d.Name)
	name := data.BranchName(d.Name, env.Name)
	hash := specHash(env, d)

	r.mu.Lock()
	t := r.tasks[key]
	r.mu.Unlock()
	if t != nil {
		if t.hash == hash {
			rec := t.get()
			if !rec.terminal() {
				return r.branchObservation(&rec, name), data.Connection{}, nil
			}
		} else {
			t.cancel() // the spec changed: start again
		}
		<-t.done
		r.mu.Lock()
		if r.tasks[key] == t {
			delete(r.tasks, key)
		}
		r.mu.Unlock()
	}
	rec, err := readRecord(dir)
	if err == nil && rec.UID == string(env.UID) && rec.Spec == hash && rec.terminal() {
		o := r.branchObservation(rec, name)
		if rec.Phase != v1alpha1.DataReady {
			return o, data.Connection{}, nil
		}
		// Ready: it stays so while its database runs.
		pod, err := r.pod(name, env.Namespace)
		if err != nil {
			return o, data.Connection{}, err
		}
		if pod == nil || !pod.Running() {
			o.Ready, o.Failed = false, true
			o.Message = "the branch's database is not running any more"
			if pod != nil {
				o.Message += " (its log: " + pod.Log + ")"
			}
			o.Status.Phase, o.Status.Message = v1alpha1.DataFailed, o.Message
			return o, data.Connection{}, nil
		}
		conn, err := r.branchConn(env.Namespace, name)
		if err != nil {
			return o, data.Connection{}, err
		}
		return o, conn, nil
	}

	// Nothing done for this spec, or a making that a stopped controller
	// left half done: start from the beginning.
	tctx, cancel := context.WithCancel(context.Background())
	t = &task{hash: hash, cancel: cancel, done: make(chan struct{}),
		rec: record{UID: string(env.UID), Spec: hash, Phase: v1alpha1.DataStarting, Started: r.cfg.Now()}}
	r.mu.Lock()
	r.tasks[key] = t
	r.mu.Unlock()
	envCopy, dCopy := env.DeepCopy(), d.DeepCopy()
	go func() {
		defer close(t.done)
		defer cancel()
		r.make(tctx, t, envCopy, dCopy, dir)
	}()
	rec0 := t.get()
	return r.branchObservation(&rec0, name), data.Connection{}, nil
}

// branchObservation is what the status shows of a branch.
func (r *Runner) branchObservation(rec *record, name string) envmgr.DataObservation {
	o := envmgr.DataObservation{
		Ready:  rec.Phase == v1alpha1.DataReady,
		Failed: rec.Phase == v1alpha1.DataFailed,
		Status: v1alpha1.DataStatus{
			Phase: rec.Phase, Rows: rec.Rows, Bytes: rec.Bytes, Endpoint: rec.Endpoint,
			Secret: name, Job: name,
		},
	}
	switch rec.Phase {
	case v1alpha1.DataStarting:
		o.Message = "starting the branch's database (lab pod " + name + ")"
	case v1alpha1.DataSnapshotting:
		o.Message = "snapshotting the baseline's database"
	case v1alpha1.DataRestoring:
		o.Message = "restoring the snapshot into the branch"
	case v1alpha1.DataAnonymising:
		o.Message = "anonymising the branch"
	case v1alpha1.DataReady:
		o.Message = fmt.Sprintf("branch ready at %s: %d rows, %s, in %s", rec.Endpoint, rec.Rows, sizeOf(rec.Bytes),
			rec.Finished.Sub(rec.Started).Round(100*time.Millisecond))
	default:
		o.Message = rec.Message
	}
	if !rec.Finished.IsZero() {
		o.Status.Duration = &metav1.Duration{Duration: rec.Finished.Sub(rec.Started).Round(time.Millisecond)}
	}
	o.Status.Message = o.Message
	return o
}

func sizeOf(b int64) string {
	switch {
	case b >= 10<<20:
		return strconv.FormatInt(b>>20, 10) + " MiB"
	case b >= 10<<10:
		return strconv.FormatInt(b>>10, 10) + " KiB"
	}
	return strconv.FormatInt(b, 10) + " bytes"
}

// branchConn reads a ready branch's connection from its lab Secret.
func (r *Runner) branchConn(ns, name string) (data.Connection, error) {
	kv := map[string][]byte{}
	for _, p := range data.Parts {
		b, err := os.ReadFile(filepath.Join(r.secretDir(ns, name), string(p)))
		if err != nil {
			return data.Connection{}, fmt.Errorf("the branch's lab secret %s/%s: %w", ns, name, err)
		}
		kv[string(p)] = b
	}
	c, ok := data.ConnectionFromSecret(kv)
	if !ok {
		return c, fmt.Errorf("the branch's lab secret %s/%s is incomplete", ns, name)
	}
	return c, nil
}

// pod is the lab pod of that name, or nil.
func (r *Runner) pod(name, ns string) (*lab.PodState, error) {
	pods, err := lab.Pods(r.cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	for i := range pods {
		if pods[i].Name == name && pods[i].Namespace == ns {
			return &pods[i], nil
		}
	}
	return nil, nil
}

// make makes a branch and records how it ended, unless it was stopped
// (Cleanup, a changed spec, the controller stopping).
func (r *Runner) make(ctx context.Context, t *task, env *v1alpha1.Environment, d *v1alpha1.DataSource, dir string) {
	var red data.Redactor
	log := r.log.With("environment", env.Namespace+"/"+env.Name, "data", d.Name)
	err := r.makeBranch(ctx, t, env, d, dir, &red, log)
	if ctx.Err() != nil {
		log.Info("branch making stopped")
		return
	}
	now := r.cfg.Now()
	t.set(func(rec *record) {
		rec.Finished = now
		if err != nil {
			rec.Message = red.Redact(fmt.Sprintf("%s: %v", strings.ToLower(string(rec.Phase)), err))
			rec.Phase = v1alpha1.DataFailed
		} else {
			rec.Phase = v1alpha1.DataReady
		}
	})
	rec := t.get()
	if werr := writeRecord(dir, &rec); werr != nil {
		log.Warn("record the branch", "err", werr)
	}
	if err != nil {
		log.Warn("branch failed", "reason", rec.Message)
		return
	}
	steps := make([]string, 0, len(rec.Steps))
	for what, d := range rec.Steps {
		steps = append(steps, fmt.Sprintf("%s %s", what, d.Round(time.Millisecond)))
	}
	sort.Strings(steps)
	log.Info("branch ready", "rows", rec.Rows, "bytes", rec.Bytes, "took", rec.Finished.Sub(rec.Started),
		"start", rec.Took[v1alpha1.DataStarting], "snapshot", rec.Took[v1alpha1.DataSnapshotting],
		"restore", rec.Took[v1alpha1.DataRestoring], "anonymise", rec.Took[v1alpha1.DataAnonymising],
		"steps", strings.Join(steps, ", "))
}

// makeBranch does the work: a data directory from the template with the
// branch's user, password and database, the lab pod running PostgreSQL on
// it, its Secret, then the plan's steps.
func (r *Runner) makeBranch(ctx context.Context, t *task, env *v1alpha1.Environment, d *v1alpha1.DataSource, dir string, red *data.Redactor, log interface{ Info(string, ...any) }) error {
	b := d.PostgresBranch
	ns := env.Namespace
	name := data.BranchName(d.Name, env.Name)
	phaseStart := r.cfg.Now()
	timed := func(what string, since time.Time) {
		d := r.cfg.Now().Sub(since)
		t.set(func(rec *record) {
			if rec.Steps == nil {
				rec.Steps = map[string]time.Duration{}
			}
			rec.Steps[what] += d
		})
	}
	enter := func(ph v1alpha1.DataPhase) {
		now := r.cfg.Now()
		t.set(func(rec *record) {
			if rec.Took == nil {
				rec.Took = map[v1alpha1.DataPhase]time.Duration{}
			}
			rec.Took[rec.Phase] += now.Sub(phaseStart)
			rec.Phase = ph
		})
		phaseStart = now
	}

	// What a previous attempt left.
	if pod, err := r.pod(name, ns); err != nil {
		return err
	} else if pod != nil {
		if err := r.removePod(ctx, *pod); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	// PostgreSQL's user goes through these to its data; the work
	// directory (the snapshot) is root's alone.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(dir, "work"), 0o700); err != nil {
		return err
	}
	if err := writeRecord(dir, &record{UID: string(env.UID), Spec: t.hash, Phase: v1alpha1.DataStarting, Started: t.get().Started}); err != nil {
		return err
	}

	base, err := r.baseline(ns, b)
	if err != nil {
		return err
	}
	creds := b.Credentials
	userKey, passKey := orDefault(creds.UserKey, "username"), orDefault(creds.PasswordKey, "password")
	user, err := r.readSecret(ns, creds.Secret, userKey)
	if err != nil {
		return err
	}
	pass, err := r.readSecret(ns, creds.Secret, passKey)
	if err != nil {
		return err
	}
	red.Add(pass)
	db := b.Database
	if db == "" && creds.DatabaseKey != "" {
		if db, err = r.readSecret(ns, creds.Secret, creds.DatabaseKey); err != nil {
			return err
		}
	}
	if db == "" {
		db = user
	}
	if err := data.CheckIdent("user "+strconv.Quote(user)+" of the credentials", user); err != nil {
		return err
	}
	if err := data.CheckIdent("database", db); err != nil {
		return err
	}
	source := data.Connection{Host: base.ip.String(), Port: base.port, User: user, Password: pass, Database: db}
	branchPass := data.NewPassword()
	red.Add(branchPass)

	pgdata := filepath.Join(dir, "pgdata")
	since := r.cfg.Now()
	if err := r.newDataDir(ctx, pgdata, user, branchPass, db); err != nil {
		return err
	}
	timed("data directory", since)
	since = r.cfg.Now()
	pod, err := lab.AddPod(ctx, r.cfg.StateDir, lab.NewPod{
		Name:      name,
		Namespace: ns,
		Labels:    map[string]string{LabelDataOf: env.Name, LabelData: d.Name},
		Workload:  name,
		Command:   r.serverCommand(pgdata, base.port),
		HostsLike: base.pod,
	}, r.cfg.Lab)
	if err != nil {
		return fmt.Errorf("start the branch's lab pod: %w", err)
	}
	ip, err := netip.ParseAddr(pod.IP)
	if err != nil {
		return err
	}
	conn := data.Connection{Host: ip.String(), Port: base.port, User: user, Password: branchPass, Database: db}
	if err := r.writeSecret(ns, name, conn.SecretData()); err != nil {
		return fmt.Errorf("the branch's lab secret: %w", err)
	}
	t.set(func(rec *record) { rec.Endpoint = netip.AddrPortFrom(ip, uint16(base.port)).String() })
	if err := r.waitReady(ctx, conn, name, ns); err != nil {
		return err
	}
	timed("server start", since)

	plan, err := data.BranchPlan(b, data.PlanOptions{Database: db, Jobs: r.cfg.Jobs, Anonymize: b.Anonymize != nil})
	if err != nil {
		return err
	}
	work := filepath.Join(dir, "work")
	if a := b.Anonymize; a != nil {
		if a.File == "" {
			return errors.New("the lab takes the anonymising script from a file (anonymize.file), not a ConfigMap")
		}
		script, err := os.ReadFile(a.File)
		if err != nil {
			return fmt.Errorf("anonymising script: %w", err)
		}
		if err := os.WriteFile(filepath.Join(work, data.AnonymizeFile), script, 0o600); err != nil {
			return err
		}
	}
	for _, s := range plan.Steps {
		if t.get().Phase != s.Phase {
			enter(s.Phase)
		}
		c := source
		if s.Side == data.Branch {
			c = conn
		}
		since := r.cfg.Now()
		out, err := r.runStep(ctx, work, s, c)
		timed(s.What, since)
		if err != nil {
			return fmt.Errorf("%s: %w", s.What, err)
		}
		if s.Report {
			rep, err := data.ParseReport(out)
			if err != nil {
				return err
			}
			t.set(func(rec *record) { rec.Rows, rec.Bytes = rep.Rows, rep.Bytes })
		}
	}
	enter(v1alpha1.DataReady)
	// The snapshot is no longer needed; it may be as large as the
	// database.
	return os.RemoveAll(work)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// baselineDB is where the baseline's database answers.
type baselineDB struct {
	ip   netip.Addr
	port int32  // the port the database listens on (the Service's target)
	pod  string // the lab pod, whose hosts file the branch gets
}

// baseline finds the baseline database through its Service, as the
// snapshot would in a cluster: the lab has no ClusterIP, so a pod the
// Service selects, at the Service port's target port.
func (r *Runner) baseline(ns string, b *v1alpha1.PostgresBranch) (baselineDB, error) {
	st, err := lab.LoadState(r.cfg.StateDir)
	if err != nil {
		return baselineDB{}, fmt.Errorf("lab: %w", err)
	}
	svcName := orDefault(b.Service, b.Workload.Name)
	port := b.Port
	if port == 0 {
		port = 5432
	}
	inv := st.NodeInventory()
	var svc *inventory.Service
	for i := range inv.Services {
		if inv.Services[i].Name == svcName && inv.Services[i].Namespace == ns {
			svc = &inv.Services[i]
		}
	}
	if svc == nil {
		return baselineDB{}, fmt.Errorf("the baseline database's service %s/%s is not in the lab", ns, svcName)
	}
	tp, err := svc.TargetPort(uint32(port))
	if err != nil {
		return baselineDB{}, fmt.Errorf("service %s/%s: %w", ns, svcName, err)
	}
	target := int32(tp)
	for _, p := range st.Pods {
		pod := inventory.Pod{Namespace: p.Namespace, Labels: p.Labels}
		if p.Added || p.Namespace != ns || p.Workload != b.Workload.Name || !svc.Selects(&pod) || !p.Running() {
			continue
		}
		ip, err := netip.ParseAddr(p.IP)
		if err != nil {
			continue
		}
		return baselineDB{ip: ip, port: target, pod: p.Name}, nil
	}
	return baselineDB{}, fmt.Errorf("no running pod of workload %s/%s behind service %s", ns, b.Workload.Name, svcName)
}
