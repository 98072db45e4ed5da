// Package labenv runs an environment's forks in the lab: a lab workload is
// the lab pods that stand for it (a pod's `workload`, or its name), and a
// fork of it is a new lab pod (a network namespace of its own) running the
// baseline pod's command with the fork's overrides (environment variables,
// command). The lab runs commands, not images, and has no ConfigMaps or
// Secrets: forks that need those are refused with the reason.
package labenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/lab"
	"github.com/detourdev/detour/pkg/netns"
)

// specEnv records, in an added pod's environment, the hash of the fork it
// runs, so that a changed fork is made again and an unchanged one left.
const specEnv = "DETOUR_FORK_HASH"

// Workloads is envmgr.Workloads on the lab in a state directory.
type Workloads struct {
	stateDir string
	opts     lab.Options
}

var _ envmgr.Workloads = (*Workloads)(nil)

// New returns the lab's Workloads; opts.PathPrepend is where fork commands
// are looked up (the lab's bin dir).
func New(stateDir string, opts lab.Options) *Workloads {
	return &Workloads{stateDir: stateDir, opts: opts}
}

// Baseline implements envmgr.Workloads. Deployment and StatefulSet mean the
// same in the lab: the pods that stand for the workload.
func (w *Workloads) Baseline(_ context.Context, namespace string, ref v1alpha1.WorkloadRef) (*envmgr.Baseline, error) {
	if ref.Kind != v1alpha1.WorkloadDeployment && ref.Kind != v1alpha1.WorkloadStatefulSet {
		return nil, fmt.Errorf("kind %s: only Deployment and StatefulSet can be forked: %w", ref.Kind, envmgr.ErrUnsupported)
	}
	pods, err := lab.Pods(w.stateDir)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	for _, p := range pods {
		if p.Namespace != namespace || p.Workload != ref.Name || p.Added {
			continue
		}
		c := corev1.Container{Name: ref.Name, Command: slices.Clone(p.Command)}
		return &envmgr.Baseline{
			Namespace: namespace,
			Ref:       ref,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: p.Labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{c}},
			},
			Object: p,
		}, nil
	}
	return nil, fmt.Errorf("lab workload %s/%s (no lab pod stands for it): %w", namespace, ref.Name, envmgr.ErrWorkloadNotFound)
}

// replicaName is the name of a fork's i-th pod: the fork's name for the
// first, with -i after it for the others.
func replicaName(fork string, i int) string {
	if i == 0 {
		return fork
	}
	return fork + "-" + strconv.Itoa(i)
}

// podOf turns a fork plan into what the lab runs, or refuses what the lab
// cannot run.
func podOf(p *envmgr.ForkPlan, base lab.PodState) (lab.NewPod, error) {
	spec := p.Template.Spec
	if len(spec.InitContainers) > 0 || len(spec.Containers) != 1 {
		return lab.NewPod{}, fmt.Errorf("fork %s: a lab pod runs one command: %w", p.Name, envmgr.ErrUnsupported)
	}
	c := spec.Containers[0]
	if c.Image != "" {
		return lab.NewPod{}, fmt.Errorf("fork %s: image %s: the lab runs commands, not images (use a command override): %w", p.Name, c.Image, envmgr.ErrUnsupported)
	}
	argv := append(slices.Clone(c.Command), c.Args...)
	if len(argv) == 0 {
		return lab.NewPod{}, fmt.Errorf("fork %s: no command to run: %w", p.Name, envmgr.ErrUnsupported)
	}
	var env []string
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			return lab.NewPod{}, fmt.Errorf("fork %s: env %s: the lab has no ConfigMaps, Secrets or pod fields to take a value from: %w", p.Name, e.Name, envmgr.ErrUnsupported)
		}
		env = append(env, e.Name+"="+e.Value)
	}
	return lab.NewPod{
		Namespace: p.Namespace,
		Labels:    p.Template.Labels,
		Workload:  p.Name,
		Command:   argv,
		Env:       env,
		HostsLike: base.Name,
	}, nil
}

// hashOf identifies what a fork's pods run.
func hashOf(np lab.NewPod) string {
	j, _ := json.Marshal(np)
	sum := sha256.Sum256(j)
	return hex.EncodeToString(sum[:8])
}

// Check implements envmgr.Workloads: what a lab pod cannot run.
func (w *Workloads) Check(b *envmgr.Baseline, p *envmgr.ForkPlan) error {
	base, ok := b.Object.(lab.PodState)
	if !ok {
		return fmt.Errorf("fork %s: baseline %T is not a lab pod: %w", p.Name, b.Object, envmgr.ErrUnsupported)
	}
	_, err := podOf(p, base)
	return err
}

// Apply implements envmgr.Workloads: one lab pod per replica, made again
// when what it runs changed.
func (w *Workloads) Apply(ctx context.Context, env *v1alpha1.Environment, b *envmgr.Baseline, p *envmgr.ForkPlan) error {
	base, ok := b.Object.(lab.PodState)
	if !ok {
		return fmt.Errorf("fork %s: baseline %T is not a lab pod: %w", p.Name, b.Object, envmgr.ErrUnsupported)
	}
	np, err := podOf(p, base)
	if err != nil {
		return err
	}
	hash := hashOf(np)
	np.Env = append(np.Env, specEnv+"="+hash)
	pods, err := lab.Pods(w.stateDir)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	have := map[string]lab.PodState{}
	for _, q := range pods {
		if q.Added && q.Workload == p.Name && q.Namespace == p.Namespace {
			have[q.Name] = q
		}
	}
	for i := range int(p.Replicas) {
		name := replicaName(p.Name, i)
		if q, ok := have[name]; ok {
			delete(have, name)
			if slices.Contains(q.Env, specEnv+"="+hash) {
				continue
			}
			if err := lab.RemovePod(ctx, w.stateDir, name, w.opts); err != nil {
				return err
			}
		}
		one := np
		one.Name = name
		if _, err := lab.AddPod(ctx, w.stateDir, one, w.opts); err != nil {
			if errors.Is(err, lab.ErrNoCommand) {
				// Waiting will not make the command appear.
				return fmt.Errorf("fork %s: %w (%w)", p.Name, err, envmgr.ErrUnsupported)
			}
			return fmt.Errorf("fork %s: %w", p.Name, err)
		}
	}
	for name := range have { // replicas beyond the count
		if err := lab.RemovePod(ctx, w.stateDir, name, w.opts); err != nil {
			return err
		}
	}
	return nil
}

// Observe implements envmgr.Workloads: a fork's pod is ready when its
// command runs and listens on every port that the Services over its
// baseline send to (sock_diag in its namespace; nothing is sent to it).
func (w *Workloads) Observe(_ context.Context, p *envmgr.ForkPlan) (envmgr.ForkObservation, error) {
	o := envmgr.ForkObservation{Plan: p}
	st, err := lab.LoadState(w.stateDir)
	if err != nil {
		return o, fmt.Errorf("lab: %w", err)
	}
	ports := targetPorts(st, p)
	var problems []string
	for _, q := range st.Pods {
		if !q.Added || q.Workload != p.Name || q.Namespace != p.Namespace {
			continue
		}
		o.Exists = true
		if !q.Running() {
			o.Failed = true
			problems = append(problems, fmt.Sprintf("pod %s: its command exited (log: %s)", q.Name, q.Log))
			continue
		}
		ip, err := netip.ParseAddr(q.IP)
		if err != nil {
			continue
		}
		ready := true
		for _, port := range ports {
			if ok, err := netns.Listening(q.NetNS, netip.AddrPortFrom(ip, port)); err != nil || !ok {
				ready = false
				problems = append(problems, fmt.Sprintf("pod %s: nothing listens on port %d yet", q.Name, port))
				break
			}
		}
		if ready {
			o.Ready++
		}
	}
	sort.Strings(problems)
	o.Message = strings.Join(problems, "; ")
	return o, nil
}

// targetPorts are the ports that the lab's Services over the fork's
// baseline pods send to.
func targetPorts(st *lab.State, p *envmgr.ForkPlan) []uint16 {
	inv := st.NodeInventory()
	set := map[uint16]bool{}
	for _, q := range st.Pods {
		if q.Added || q.Workload != p.Baseline.Name || q.Namespace != p.Namespace {
			continue
		}
		pod := inventory.Pod{Namespace: q.Namespace, Labels: q.Labels}
		for i := range inv.Services {
			if inv.Services[i].Selects(&pod) {
				for _, sp := range inv.Services[i].Ports {
					set[uint16(sp.TargetPort)] = true
				}
			}
		}
	}
	out := make([]uint16, 0, len(set))
	for port := range set {
		out = append(out, port)
	}
	slices.Sort(out)
	return out
}

// Forks implements envmgr.Workloads.
func (w *Workloads) Forks(_ context.Context, namespace, env string) ([]envmgr.ForkRef, error) {
	pods, err := lab.Pods(w.stateDir)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	seen := map[string]bool{}
	var out []envmgr.ForkRef
	for _, q := range pods {
		if q.Added && q.Namespace == namespace && q.Labels[v1alpha1.LabelEnvironment] == env && !seen[q.Workload] {
			seen[q.Workload] = true
			out = append(out, envmgr.ForkRef{Kind: v1alpha1.WorkloadDeployment, Name: q.Workload})
		}
	}
	return out, nil
}

// Delete implements envmgr.Workloads.
func (w *Workloads) Delete(ctx context.Context, namespace string, f envmgr.ForkRef) error {
	pods, err := lab.Pods(w.stateDir)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	for _, q := range pods {
		if q.Added && q.Namespace == namespace && q.Workload == f.Name {
			if err := lab.RemovePod(ctx, w.stateDir, q.Name, w.opts); err != nil {
				return err
			}
		}
	}
	return nil
}
