package kube

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil/kubetest"
	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/store"
	"github.com/detourdev/detour/pkg/store/storetest"
)

// TestEnvironments runs the Environments rules against Environment
// resources of a real API server, and checks that the CRD's schema and CEL
// rules refuse what they can judge alone, naming the field.
func TestEnvironments(t *testing.T) {
	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := env.InstallCRDs(ctx, "../../../deploy/crds/detour.dev_environments.yaml"); err != nil {
		t.Fatalf("install CRDs: %v", err)
	}
	var n atomic.Int32
	mkns := func(t *testing.T) string {
		name := fmt.Sprintf("envs-%d", n.Add(1))
		body := []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"` + name + `"}}`)
		code, b, err := env.Do(ctx, env.AdminToken, http.MethodPost, "/api/v1/namespaces", body, "application/json")
		if err != nil || code != http.StatusCreated {
			t.Fatalf("create namespace %s: %d %v %s", name, code, err, b)
		}
		return name
	}
	cfg := kubetest.AdminConfig(env)
	open := func(t *testing.T) *Environments {
		s, err := NewEnvironments(cfg, "detour-test")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	storetest.RunEnvironments(t, func(t *testing.T) (store.Environments, [2]string) {
		return open(t), [2]string{mkns(t), mkns(t)}
	})

	t.Run("schema", func(t *testing.T) {
		s := open(t)
		ns := mkns(t)
		dup := func(e *v1alpha1.Environment) { e.Spec.Forks = append(e.Spec.Forks, e.Spec.Forks[0]) }
		for _, tc := range []struct {
			name   string
			change func(*v1alpha1.Environment)
			want   string
		}{
			{"name too long", func(e *v1alpha1.Environment) { e.Name = strings.Repeat("a", 41) }, "at most 40 characters"},
			{"no forks", func(e *v1alpha1.Environment) { e.Spec.Forks = nil }, "spec.forks"},
			{"a workload forked twice", dup, "a workload is forked at most once"},
			{"kind not forkable", func(e *v1alpha1.Environment) { e.Spec.Forks[0].Workload.Kind = "DaemonSet" }, "spec.forks[0].workload.kind"},
			{"negative ttl", func(e *v1alpha1.Environment) { e.Spec.TTL = &metav1.Duration{Duration: -time.Second} }, "ttl must be positive"},
			{"value and valueFrom", func(e *v1alpha1.Environment) {
				v := "x"
				e.Spec.Forks[0].Env = []v1alpha1.EnvOverride{{Name: "A", Value: &v, Delete: true}}
			}, "a deleted variable takes no value"},
			{"two images for one container", func(e *v1alpha1.Environment) {
				e.Spec.Forks[0].Images = []v1alpha1.ImageOverride{{Container: "api", Image: "a"}, {Container: "api", Image: "b"}}
			}, "one image per container"},
			{"bad key", func(e *v1alpha1.Environment) { e.Spec.Key = "has space" }, "spec.key"},
			{"unknown data kind", func(e *v1alpha1.Environment) {
				e.Spec.Data = []v1alpha1.DataSource{{Name: "db", Kind: "mysql-branch"}}
			}, "spec.data[0].kind"},
			{"postgres-branch without its settings", func(e *v1alpha1.Environment) {
				e.Spec.Data = []v1alpha1.DataSource{{Name: "db", Kind: v1alpha1.DataPostgresBranch}}
			}, "a postgres-branch entry takes postgresBranch"},
			{"filters without mode filtered", func(e *v1alpha1.Environment) {
				e.Spec.Data = []v1alpha1.DataSource{{Name: "db", Kind: v1alpha1.DataPostgresBranch, PostgresBranch: &v1alpha1.PostgresBranch{
					Workload: v1alpha1.WorkloadRef{Name: "pg"}, Credentials: v1alpha1.PostgresCredentials{Secret: "pg"},
					Filters: []v1alpha1.RowFilter{{Table: "orders", Where: "true"}},
				}}}
			}, "filters need mode filtered"},
			{"a table that is no identifier", func(e *v1alpha1.Environment) {
				e.Spec.Data = []v1alpha1.DataSource{{Name: "db", Kind: v1alpha1.DataPostgresBranch, PostgresBranch: &v1alpha1.PostgresBranch{
					Workload: v1alpha1.WorkloadRef{Name: "pg"}, Credentials: v1alpha1.PostgresCredentials{Secret: "pg"},
					Mode: v1alpha1.BranchFiltered, Filters: []v1alpha1.RowFilter{{Table: `orders"; drop table x; --`, Where: "true"}},
				}}}
			}, "spec.data[0].postgresBranch.filters[0].table"},
			{"a job entry with a branch", func(e *v1alpha1.Environment) {
				e.Spec.Data = []v1alpha1.DataSource{{Name: "seed", Kind: v1alpha1.DataJobKind, Job: &v1alpha1.DataJob{Image: "x"},
					PostgresBranch: &v1alpha1.PostgresBranch{Workload: v1alpha1.WorkloadRef{Name: "pg"}, Credentials: v1alpha1.PostgresCredentials{Secret: "pg"}}}}
			}, "a job entry takes job, and no postgresBranch"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e := storetest.Environment(ns, "pr-1")
				tc.change(e)
				_, err := s.CreateEnvironment(ctx, e)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("create: %v, want an error naming %q", err, tc.want)
				}
			})
		}
		// A patch keeps whatever fields it has; the kind defaults.
		e := storetest.Environment(ns, "pr-2")
		e.Spec.Forks[0].Workload.Kind = ""
		e.Spec.Forks[0].Patch = &runtime.RawExtension{Raw: []byte(`{"spec":{"priorityClassName":"low"}}`)}
		got, err := s.CreateEnvironment(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if got.Spec.Forks[0].Workload.Kind != v1alpha1.WorkloadDeployment || !strings.Contains(string(got.Spec.Forks[0].Patch.Raw), "priorityClassName") {
			t.Errorf("stored fork: %+v", got.Spec.Forks[0])
		}
	})
}
