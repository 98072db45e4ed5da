package data

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

func TestConnection(t *testing.T) {
	c := Connection{Host: "orders-db-pr-42", Port: 5432, User: "app", Password: "p@ss:w/rd", Database: "orders"}
	if got, want := c.URL(), "postgres://app:p%40ss%3Aw%2Frd@orders-db-pr-42:5432/orders"; got != want {
		t.Errorf("URL %q, want %q", got, want)
	}
	back, ok := ConnectionFromSecret(c.SecretData())
	if !ok || back != c {
		t.Errorf("through the Secret: %+v %v", back, ok)
	}
	b := branch("")
	b.Env = []v1alpha1.ConnectionEnv{{Name: "PGHOST", Part: v1alpha1.ConnectionHost}, {Name: "PGPASSWORD", Part: v1alpha1.ConnectionPassword}, {Name: "URL"}}
	lit := LiteralEnv(b, c)
	if len(lit) != 3 || lit[0].Value != "orders-db-pr-42" || lit[1].Value != c.Password || lit[2].Value != c.URL() {
		t.Errorf("literal env %+v", lit)
	}
	// In a cluster no value is written out: each variable refers to the
	// branch's Secret.
	for _, e := range SecretEnv(b, "orders-db-pr-42") {
		if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef.Name != "orders-db-pr-42" {
			t.Errorf("secret env %+v", e)
		}
	}
	if e := SecretEnv(branch(""), "s"); len(e) != 1 || e[0].Name != "DATABASE_URL" || e[0].ValueFrom.SecretKeyRef.Key != "url" {
		t.Errorf("the default variable: %+v", e)
	}
	b.Forks = []string{"api"}
	if !ForkGetsEnv(b, "api") || ForkGetsEnv(b, "worker") || !ForkGetsEnv(branch(""), "worker") {
		t.Error("ForkGetsEnv")
	}
	if got := SeedVar("orders-db"); got != "DETOUR_DATA_ORDERS_DB_URL" {
		t.Errorf("SeedVar %q", got)
	}
	if p, q := NewPassword(), NewPassword(); len(p) < 26 || p == q || strings.ContainsAny(p, `'"\@:/`) {
		t.Errorf("passwords %q %q", p, q)
	}
}

// TestRedactor: a password leaves no trace in a message, however it was
// written into it.
func TestRedactor(t *testing.T) {
	var r Redactor
	r.Add("s3cr3t/pw", "", "s3cr3t")
	c := Connection{Host: "h", Port: 5432, User: "app", Password: "s3cr3t/pw", Database: "d"}
	other := Connection{Host: "h", Port: 5432, User: "app", Password: "unknown!", Database: "d"}
	for _, msg := range []string{
		"psql: error: password s3cr3t/pw rejected",
		"connecting to " + c.URL() + " failed",
		"connecting to " + other.URL() + " failed",
		"PGPASSWORD=s3cr3t/pw and s3cr3t alone",
		"query string: pw=s3cr3t%2Fpw",
	} {
		got := r.Redact(msg)
		for _, leak := range []string{"s3cr3t", "unknown!", "s3cr3t%2Fpw"} {
			if strings.Contains(got, leak) {
				t.Errorf("Redact(%q) = %q: %q left", msg, got, leak)
			}
		}
		if !strings.Contains(got, "***") {
			t.Errorf("Redact(%q) = %q: nothing marked", msg, got)
		}
	}
	if got := r.Redact("nothing to hide"); got != "nothing to hide" {
		t.Errorf("Redact changed %q", got)
	}
}

func TestValidate(t *testing.T) {
	valid := func() *v1alpha1.EnvironmentSpec {
		return &v1alpha1.EnvironmentSpec{
			Forks: []v1alpha1.Fork{{Workload: v1alpha1.WorkloadRef{Name: "api"}}, {Workload: v1alpha1.WorkloadRef{Name: "worker"}}},
			Data: []v1alpha1.DataSource{
				{Name: "orders-db", Kind: v1alpha1.DataPostgresBranch, PostgresBranch: branch(v1alpha1.BranchFiltered,
					v1alpha1.RowFilter{Table: "orders", Where: "id > 10"})},
				{Name: "seed", Kind: v1alpha1.DataJobKind, Job: &v1alpha1.DataJob{Image: "reg/seed:1"}},
			},
		}
	}
	if errs := Validate(valid()); len(errs) > 0 {
		t.Fatalf("a valid spec: %v", errs)
	}
	size := resource.MustParse("0")
	for _, tc := range []struct {
		name   string
		change func(*v1alpha1.EnvironmentSpec)
		want   string
	}{
		{"kind", func(s *v1alpha1.EnvironmentSpec) { s.Data[1].Kind = "mysql" }, "want postgres-branch or job"},
		{"name", func(s *v1alpha1.EnvironmentSpec) { s.Data[1].Name = "Seed" }, "DNS-1123"},
		{"twice", func(s *v1alpha1.EnvironmentSpec) { s.Data[1].Name = "orders-db" }, "named twice"},
		{"named as a fork", func(s *v1alpha1.EnvironmentSpec) { s.Data[1].Name = "api" }, "a forked workload has the same name"},
		{"no settings", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].PostgresBranch = nil }, "needs its settings"},
		{"job settings on a branch", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].Job = s.Data[1].Job }, "takes no job settings"},
		{"the database forked", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].PostgresBranch.Workload.Name = "api" }, "is also forked"},
		{"no secret", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].PostgresBranch.Credentials.Secret = "" }, "name the baseline's Secret"},
		{"bad key", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].PostgresBranch.Credentials.PasswordKey = "a b" }, "passwordKey"},
		{"bad database", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].PostgresBranch.Database = "Orders" }, "database"},
		{"bad table", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].PostgresBranch.Filters[0].Table = "x;y" }, `table "x;y"`},
		{"bad filter", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].PostgresBranch.Filters[0].Where = "1=1) or (1=1" }, "closes a parenthesis"},
		{"no filter", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].PostgresBranch.Filters = nil }, "at least one filter"},
		{"two scripts", func(s *v1alpha1.EnvironmentSpec) {
			s.Data[0].PostgresBranch.Anonymize = &v1alpha1.SQLScript{}
		}, "give one of a ConfigMap key and a file"},
		{"relative file", func(s *v1alpha1.EnvironmentSpec) {
			s.Data[0].PostgresBranch.Anonymize = &v1alpha1.SQLScript{File: "anon.sql"}
		}, "absolute path"},
		{"bad part", func(s *v1alpha1.EnvironmentSpec) {
			s.Data[0].PostgresBranch.Env = []v1alpha1.ConnectionEnv{{Name: "X", Part: "socket"}}
		}, `part "socket"`},
		{"unknown fork", func(s *v1alpha1.EnvironmentSpec) { s.Data[0].PostgresBranch.Forks = []string{"web"} }, "web is not a forked workload"},
		{"size on emptyDir", func(s *v1alpha1.EnvironmentSpec) {
			s.Data[0].PostgresBranch.Storage = &v1alpha1.BranchStorage{Type: v1alpha1.StorageEmptyDir, Size: &size}
		}, "for type pvc"},
		{"two branches, one variable", func(s *v1alpha1.EnvironmentSpec) {
			s.Data = append(s.Data, v1alpha1.DataSource{Name: "users-db", Kind: v1alpha1.DataPostgresBranch, PostgresBranch: branch("")})
			s.Data[2].PostgresBranch.Workload.Name = "users"
		}, "would get DATABASE_URL from both"},
		{"job without image or command", func(s *v1alpha1.EnvironmentSpec) { s.Data[1].Job.Image = "" }, "give an image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := valid()
			tc.change(s)
			errs := Validate(s)
			if !strings.Contains(strings.Join(errs, "; "), tc.want) {
				t.Errorf("Validate: %v, want an error with %q", errs, tc.want)
			}
		})
	}
}
