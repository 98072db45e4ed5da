package data

import (
	"fmt"
	"path/filepath"
	"regexp"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
)

var (
	dnsLabel  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	envVar    = regexp.MustCompile(`^[-._a-zA-Z][-._a-zA-Z0-9]*$`)
	secretKey = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)
)

// Validate checks an environment's data entries as the resource's schema
// and CEL rules do, and what they cannot judge alone (row filters, which
// forks exist, variables two branches would both set), so that the lab and
// a gRPC call refuse what kubectl would and more. Each problem names its
// entry.
func Validate(spec *v1alpha1.EnvironmentSpec) []string {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	forked := map[string]bool{}
	for _, f := range spec.Forks {
		forked[f.Workload.Name] = true
	}
	names := map[string]bool{}
	// setBy: for each fork, which entry sets each variable.
	setBy := map[string]map[string]string{}
	for i := range spec.Data {
		d := &spec.Data[i]
		what := "data " + d.Name
		if !dnsLabel.MatchString(d.Name) || len(d.Name) > 40 {
			bad("data %q: want a DNS-1123 label of at most 40 characters", d.Name)
		}
		if names[d.Name] {
			bad("%s: named twice", what)
		}
		names[d.Name] = true
		if forked[d.Name] {
			bad("%s: a forked workload has the same name (both would be %s-ENV)", what, d.Name)
		}
		switch d.Kind {
		case v1alpha1.DataPostgresBranch:
			if d.Job != nil {
				bad("%s: a postgres-branch entry takes no job settings", what)
			}
			if d.PostgresBranch == nil {
				bad("%s: a postgres-branch entry needs its settings (postgresBranch: workload, credentials...)", what)
				continue
			}
			for _, p := range validateBranch(d.PostgresBranch, forked) {
				bad("%s: %s", what, p)
			}
			for _, e := range EnvSpec(d.PostgresBranch) {
				for f := range forked {
					if !ForkGetsEnv(d.PostgresBranch, f) {
						continue
					}
					if setBy[f] == nil {
						setBy[f] = map[string]string{}
					}
					if other, ok := setBy[f][e.Name]; ok && other != d.Name {
						bad("%s: fork %s would get %s from both data %s and data %s (name the forks each gives it to)", what, f, e.Name, other, d.Name)
					}
					setBy[f][e.Name] = d.Name
				}
			}
		case v1alpha1.DataJobKind:
			if d.PostgresBranch != nil {
				bad("%s: a job entry takes no postgresBranch settings", what)
			}
			if d.Job == nil {
				bad("%s: a job entry needs its settings (job: image, command...)", what)
				continue
			}
			for _, p := range validateJob(d.Job) {
				bad("%s: %s", what, p)
			}
		default:
			bad("%s: kind %q: want postgres-branch or job", what, d.Kind)
		}
	}
	return errs
}

func validateBranch(b *v1alpha1.PostgresBranch, forked map[string]bool) []string {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	switch b.Workload.Kind {
	case v1alpha1.WorkloadDeployment, v1alpha1.WorkloadStatefulSet, "":
	default:
		bad("workload kind %q: want Deployment or StatefulSet", b.Workload.Kind)
	}
	if !dnsLabel.MatchString(b.Workload.Name) || len(b.Workload.Name) > 63 {
		bad("workload name %q: want a DNS-1123 label", b.Workload.Name)
	}
	if forked[b.Workload.Name] {
		bad("workload %s is also forked: a database is branched, not forked", b.Workload.Name)
	}
	if b.Service != "" && (!dnsLabel.MatchString(b.Service) || len(b.Service) > 63) {
		bad("service %q: want a DNS-1123 label", b.Service)
	}
	if b.Port < 0 || b.Port > 65535 {
		bad("port %d: want 1 to 65535", b.Port)
	}
	if b.Database != "" {
		if err := CheckIdent("database", b.Database); err != nil {
			bad("%v", err)
		}
	}
	c := b.Credentials
	if c.Secret == "" || len(c.Secret) > 253 {
		bad("credentials: name the baseline's Secret")
	}
	for _, k := range []struct{ field, key string }{{"userKey", c.UserKey}, {"passwordKey", c.PasswordKey}, {"databaseKey", c.DatabaseKey}} {
		if k.key != "" && !secretKey.MatchString(k.key) {
			bad("credentials %s %q: not a Secret key", k.field, k.key)
		}
	}
	switch b.Mode {
	case "", v1alpha1.BranchAll, v1alpha1.BranchSchema, v1alpha1.BranchFiltered:
	default:
		bad("mode %q: want schema, all or filtered", b.Mode)
	}
	if b.Mode == v1alpha1.BranchFiltered && len(b.Filters) == 0 {
		bad("mode filtered needs at least one filter")
	}
	if b.Mode != v1alpha1.BranchFiltered && len(b.Filters) > 0 {
		bad("filters need mode filtered")
	}
	tables := map[Table]bool{}
	for _, f := range b.Filters {
		t, err := ParseTable(f.Table)
		if err != nil {
			bad("filter: %v", err)
			continue
		}
		if tables[t] {
			bad("filter of %s: given twice", t)
		}
		tables[t] = true
		if err := CheckWhere(f.Where); err != nil {
			bad("filter of %s: %v", t, err)
		}
	}
	if a := b.Anonymize; a != nil {
		switch {
		case (a.ConfigMapKeyRef != nil) == (a.File != ""):
			bad("anonymize: give one of a ConfigMap key and a file")
		case a.ConfigMapKeyRef != nil && (a.ConfigMapKeyRef.Name == "" || a.ConfigMapKeyRef.Key == ""):
			bad("anonymize: the ConfigMap key needs a name and a key")
		case a.File != "" && !filepath.IsAbs(a.File):
			bad("anonymize: file %q: want an absolute path", a.File)
		}
	}
	vars := map[string]bool{}
	for _, e := range b.Env {
		if !envVar.MatchString(e.Name) || len(e.Name) > 256 {
			bad("env %q: not a variable name", e.Name)
		}
		if vars[e.Name] {
			bad("env %s: given twice", e.Name)
		}
		vars[e.Name] = true
		switch e.Part {
		case "", v1alpha1.ConnectionURL, v1alpha1.ConnectionHost, v1alpha1.ConnectionPort,
			v1alpha1.ConnectionUser, v1alpha1.ConnectionPassword, v1alpha1.ConnectionDatabase:
		default:
			bad("env %s: part %q: want url, host, port, user, password or database", e.Name, e.Part)
		}
	}
	for _, f := range b.Forks {
		if !forked[f] {
			bad("forks: %s is not a forked workload of the environment", f)
		}
	}
	if s := b.Storage; s != nil {
		switch s.Type {
		case "", v1alpha1.StorageEmptyDir:
			if s.StorageClassName != nil || s.Size != nil {
				bad("storage: a class and a size are for type pvc")
			}
		case v1alpha1.StoragePVC:
			if s.Size != nil && s.Size.Sign() <= 0 {
				bad("storage size %s: want more than nothing", s.Size)
			}
		default:
			bad("storage type %q: want emptyDir or pvc", s.Type)
		}
	}
	return errs
}

func validateJob(j *v1alpha1.DataJob) []string {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if j.Image == "" && len(j.Command) == 0 {
		bad("give an image (a cluster) or a command (the lab)")
	}
	vars := map[string]bool{}
	for _, e := range j.Env {
		if !envVar.MatchString(e.Name) || len(e.Name) > 256 {
			bad("env %q: not a variable name", e.Name)
		}
		if vars[e.Name] {
			bad("env %s: given twice", e.Name)
		}
		vars[e.Name] = true
	}
	if j.Timeout != nil && j.Timeout.Duration <= 0 {
		bad("timeout %s: want a positive duration", j.Timeout.Duration)
	}
	return errs
}
