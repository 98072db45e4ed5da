package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// dataFlags gathers `detour env create`'s data flags into data entries:
// --data NAME=KIND[:ARG] makes an entry; every other --data-* flag names
// its entry first, then a colon.
type dataFlags struct {
	data        []string // NAME=postgres-branch[:MODE] | NAME=job[:IMAGE]
	workload    []string // NAME:[KIND/]WORKLOAD
	container   []string // NAME:CONTAINER
	service     []string // NAME:SERVICE[:PORT]
	database    []string // NAME:DATABASE
	credentials []string // NAME:SECRET[:user=KEY,password=KEY,database=KEY]
	filters     []string // NAME:TABLE=WHERE
	anonymize   []string // NAME:configmap/CM/KEY | NAME:@FILE
	env         []string // NAME:VAR[=PART]
	forks       []string // NAME:W1,W2
	storage     []string // NAME:emptydir | NAME:pvc[:CLASS[:SIZE]]
	command     []string // NAME:ARGV (job)
	setEnv      []string // NAME:VAR=VALUE (job)
	timeout     []string // NAME:DURATION (job)
}

func (df *dataFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&df.data, "data", nil, "`NAME=KIND[:ARG]`: data of the environment's own: postgres-branch[:schema|all|filtered] or job[:IMAGE] (repeatable)")
	f.StringArrayVar(&df.workload, "data-workload", nil, "`NAME:[KIND/]WORKLOAD`: the baseline's database workload a branch copies (default: the entry's name)")
	f.StringArrayVar(&df.container, "data-container", nil, "`NAME:CONTAINER`: the workload's database container (default: its only or first)")
	f.StringArrayVar(&df.service, "data-service", nil, "`NAME:SERVICE[:PORT]`: the baseline database's Service and port (default: the workload's name, 5432)")
	f.StringArrayVar(&df.database, "data-database", nil, "`NAME:DATABASE`: the database branched (default: the credentials' database key, else the user's name)")
	f.StringArrayVar(&df.credentials, "data-credentials", nil, "`NAME:SECRET[:user=KEY,password=KEY,database=KEY]`: the baseline's Secret to snapshot with (keys default to username and password)")
	f.StringArrayVar(&df.filters, "data-filter", nil, "`NAME:TABLE=WHERE`: only the rows of TABLE that WHERE selects (mode filtered; repeatable)")
	f.StringArrayVar(&df.anonymize, "data-anonymize", nil, "`NAME:SCRIPT`: an SQL script run in the branch before any fork sees it: configmap/CM/KEY, or @FILE in the lab")
	f.StringArrayVar(&df.env, "data-env", nil, "`NAME:VAR[=PART]`: a variable the forks get the branch's connection in; PART: url (default), host, port, user, password, database (repeatable; default DATABASE_URL=url)")
	f.StringArrayVar(&df.forks, "data-forks", nil, "`NAME:W1,W2`: the forks that get the branch's variables (default: every fork)")
	f.StringArrayVar(&df.storage, "data-storage", nil, "`NAME:emptydir|pvc[:CLASS[:SIZE]]`: where the branch keeps its data (default: emptydir)")
	f.StringArrayVar(&df.command, "data-command", nil, "`NAME:ARGV`: a seed job's command (words split as a shell would, no expansion)")
	f.StringArrayVar(&df.setEnv, "data-set-env", nil, "`NAME:VAR=VALUE`: a seed job's variable (repeatable)")
	f.StringArrayVar(&df.timeout, "data-timeout", nil, "`NAME:DURATION`: a seed job's longest run (default 10m)")
}

// build turns the flags into data entries, or a usage error naming the
// flag.
func (df *dataFlags) build() ([]*detourv1.DataSource, error) {
	byName := map[string]*detourv1.DataSource{}
	var out []*detourv1.DataSource
	for _, s := range df.data {
		name, kind, ok := strings.Cut(s, "=")
		kind, arg, _ := strings.Cut(kind, ":")
		if !ok || name == "" {
			return nil, usageErrorf("--data %q: want NAME=postgres-branch[:MODE] or NAME=job[:IMAGE]", s)
		}
		if byName[name] != nil {
			return nil, usageErrorf("--data %s given twice", name)
		}
		d := &detourv1.DataSource{Name: name, Kind: kind}
		switch kind {
		case "postgres-branch":
			switch arg {
			case "", "schema", "all", "filtered":
			default:
				return nil, usageErrorf("--data %q: mode %q: want schema, all or filtered", s, arg)
			}
			d.PostgresBranch = &detourv1.PostgresBranch{Workload: &detourv1.WorkloadRef{Kind: "Deployment", Name: name}, Mode: arg}
		case "job":
			d.Job = &detourv1.DataJob{Image: arg}
		default:
			return nil, usageErrorf("--data %q: kind %q: want postgres-branch or job", s, kind)
		}
		byName[name] = d
		out = append(out, d)
	}
	// entry finds the flag's entry, of the kind the flag is for.
	entry := func(flag, s, kind string) (*detourv1.DataSource, string, error) {
		name, rest, ok := strings.Cut(s, ":")
		d := byName[name]
		switch {
		case !ok:
			return nil, "", usageErrorf("--%s %q: want NAME:...", flag, s)
		case d == nil:
			return nil, "", usageErrorf("--%s %q: %q is not a data entry (add --data %s=%s)", flag, s, name, name, kind)
		case d.GetKind() != kind:
			return nil, "", usageErrorf("--%s %q: %s is a %s entry; the flag is for %s entries", flag, s, name, d.GetKind(), kind)
		}
		return d, rest, nil
	}
	const pg, job = "postgres-branch", "job"
	for _, s := range df.workload {
		d, w, err := entry("data-workload", s, pg)
		if err != nil {
			return nil, err
		}
		ref, err := workloadRef(w)
		if err != nil {
			return nil, usageErrorf("--data-workload %q: %v", s, err)
		}
		d.PostgresBranch.Workload = ref
	}
	for _, s := range df.container {
		d, c, err := entry("data-container", s, pg)
		if err != nil {
			return nil, err
		}
		d.PostgresBranch.Container = c
	}
	for _, s := range df.service {
		d, v, err := entry("data-service", s, pg)
		if err != nil {
			return nil, err
		}
		svc, port, hasPort := strings.Cut(v, ":")
		d.PostgresBranch.Service = svc
		if hasPort {
			n, err := strconv.Atoi(port)
			if err != nil || n < 1 || n > 65535 {
				return nil, usageErrorf("--data-service %q: port %q: want 1 to 65535", s, port)
			}
			d.PostgresBranch.Port = int32(n)
		}
	}
	for _, s := range df.database {
		d, v, err := entry("data-database", s, pg)
		if err != nil {
			return nil, err
		}
		d.PostgresBranch.Database = v
	}
	for _, s := range df.credentials {
		d, v, err := entry("data-credentials", s, pg)
		if err != nil {
			return nil, err
		}
		secret, keys, _ := strings.Cut(v, ":")
		c := &detourv1.PostgresCredentials{Secret: secret}
		if keys != "" {
			for _, kv := range strings.Split(keys, ",") {
				k, key, ok := strings.Cut(kv, "=")
				switch {
				case ok && k == "user":
					c.UserKey = key
				case ok && k == "password":
					c.PasswordKey = key
				case ok && k == "database":
					c.DatabaseKey = key
				default:
					return nil, usageErrorf("--data-credentials %q: %q: want user=KEY, password=KEY or database=KEY", s, kv)
				}
			}
		}
		d.PostgresBranch.Credentials = c
	}
	for _, s := range df.filters {
		d, v, err := entry("data-filter", s, pg)
		if err != nil {
			return nil, err
		}
		table, where, ok := strings.Cut(v, "=")
		if !ok || table == "" || where == "" {
			return nil, usageErrorf("--data-filter %q: want NAME:TABLE=WHERE", s)
		}
		b := d.PostgresBranch
		if b.Mode == "" {
			b.Mode = "filtered"
		}
		b.Filters = append(b.Filters, &detourv1.RowFilter{Table: table, Where: where})
	}
	for _, s := range df.anonymize {
		d, v, err := entry("data-anonymize", s, pg)
		if err != nil {
			return nil, err
		}
		parts := strings.SplitN(v, "/", 3)
		switch {
		case strings.HasPrefix(v, "@") && len(v) > 1:
			abs, err := filepath.Abs(v[1:])
			if err != nil {
				return nil, usageErrorf("--data-anonymize %q: %v", s, err)
			}
			d.PostgresBranch.Anonymize = &detourv1.SQLScript{File: abs}
		case len(parts) == 3 && parts[0] == "configmap" && parts[1] != "" && parts[2] != "":
			d.PostgresBranch.Anonymize = &detourv1.SQLScript{ConfigMapKey: &detourv1.KeyRef{Name: parts[1], Key: parts[2]}}
		default:
			return nil, usageErrorf("--data-anonymize %q: want NAME:configmap/CM/KEY or NAME:@FILE", s)
		}
	}
	for _, s := range df.env {
		d, v, err := entry("data-env", s, pg)
		if err != nil {
			return nil, err
		}
		name, part, _ := strings.Cut(v, "=")
		if name == "" {
			return nil, usageErrorf("--data-env %q: want NAME:VAR[=PART]", s)
		}
		d.PostgresBranch.Env = append(d.PostgresBranch.Env, &detourv1.ConnectionEnv{Name: name, Part: part})
	}
	for _, s := range df.forks {
		d, v, err := entry("data-forks", s, pg)
		if err != nil {
			return nil, err
		}
		for _, w := range strings.Split(v, ",") {
			if w != "" {
				d.PostgresBranch.Forks = append(d.PostgresBranch.Forks, w)
			}
		}
	}
	for _, s := range df.storage {
		d, v, err := entry("data-storage", s, pg)
		if err != nil {
			return nil, err
		}
		parts := strings.SplitN(v, ":", 3)
		switch strings.ToLower(parts[0]) {
		case "emptydir":
			if len(parts) > 1 {
				return nil, usageErrorf("--data-storage %q: an emptydir takes no class or size", s)
			}
			d.PostgresBranch.Storage = &detourv1.BranchStorage{Type: "emptyDir"}
		case "pvc":
			st := &detourv1.BranchStorage{Type: "pvc"}
			if len(parts) > 1 {
				st.StorageClassName = parts[1]
			}
			if len(parts) > 2 {
				st.Size = parts[2]
			}
			d.PostgresBranch.Storage = st
		default:
			return nil, usageErrorf("--data-storage %q: want NAME:emptydir or NAME:pvc[:CLASS[:SIZE]]", s)
		}
	}
	for _, s := range df.command {
		d, line, err := entry("data-command", s, job)
		if err != nil {
			return nil, err
		}
		argv, err := splitWords(line)
		if err != nil || len(argv) == 0 {
			return nil, usageErrorf("--data-command %q: %v", s, orEmpty(err, "no command"))
		}
		d.Job.Command = argv
	}
	for _, s := range df.setEnv {
		d, kv, err := entry("data-set-env", s, job)
		if err != nil {
			return nil, err
		}
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return nil, usageErrorf("--data-set-env %q: want NAME:VAR=VALUE", s)
		}
		d.Job.Env = append(d.Job.Env, &detourv1.JobEnvVar{Name: name, Value: value})
	}
	for _, s := range df.timeout {
		d, v, err := entry("data-timeout", s, job)
		if err != nil {
			return nil, err
		}
		t, err := time.ParseDuration(v)
		if err != nil || t <= 0 {
			return nil, usageErrorf("--data-timeout %q: want a positive duration", s)
		}
		d.Job.Timeout = durationpb.New(t)
	}
	for _, d := range out {
		if b := d.GetPostgresBranch(); b != nil && b.GetCredentials().GetSecret() == "" {
			return nil, usageErrorf("--data %s=postgres-branch: give the baseline's credentials (--data-credentials %s:SECRET)", d.GetName(), d.GetName())
		}
		if j := d.GetJob(); j != nil && j.GetImage() == "" && len(j.GetCommand()) == 0 {
			return nil, usageErrorf("--data %s=job: give an image (--data %s=job:IMAGE) or a command (--data-command %s:ARGV)", d.GetName(), d.GetName(), d.GetName())
		}
	}
	return out, nil
}

// workloadRef reads [KIND/]NAME as --fork does.
func workloadRef(s string) (*detourv1.WorkloadRef, error) {
	kind, name := "Deployment", s
	if k, n, ok := strings.Cut(s, "/"); ok {
		switch strings.ToLower(k) {
		case "deployment", "deploy", "deployments":
			kind = "Deployment"
		case "statefulset", "sts", "statefulsets":
			kind = "StatefulSet"
		default:
			return nil, fmt.Errorf("kind %q: want Deployment or StatefulSet", k)
		}
		name = n
	}
	if name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("want NAME or KIND/NAME")
	}
	return &detourv1.WorkloadRef{Kind: kind, Name: name}, nil
}

// printData writes an environment's data table, if it has data.
func printData(w io.Writer, e *detourv1.Environment) {
	ds := e.GetStatus().GetData()
	if len(ds) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nDATA\tKIND\tPHASE\tROWS\tSIZE\tTOOK\tAT\tMESSAGE")
	for _, d := range ds {
		rows, size, took := "-", "-", "-"
		if d.GetKind() == "postgres-branch" && d.GetPhase() == "Ready" {
			rows, size = strconv.FormatInt(d.GetRows(), 10), byteSize(d.GetBytes())
		}
		if d.GetDuration() != nil {
			took = d.GetDuration().AsDuration().Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.GetName(), d.GetKind(), orDash(d.GetPhase()), rows, size, took,
			orDash(d.GetEndpoint()), orDash(d.GetMessage()))
	}
	_ = tw.Flush()
}

func byteSize(b int64) string {
	switch {
	case b >= 10<<20:
		return strconv.FormatInt(b>>20, 10) + "MiB"
	case b >= 10<<10:
		return strconv.FormatInt(b>>10, 10) + "KiB"
	}
	return strconv.FormatInt(b, 10) + "B"
}
