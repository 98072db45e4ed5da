package main

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

func TestDataFlags(t *testing.T) {
	df := dataFlags{
		data:        []string{"orders-db=postgres-branch", "users=postgres-branch:schema", "seed=job:reg/seed:1", "local=job"},
		workload:    []string{"orders-db:sts/postgres"},
		container:   []string{"orders-db:db"},
		service:     []string{"orders-db:pg:5433"},
		database:    []string{"orders-db:orders"},
		credentials: []string{"orders-db:pg-creds:user=u,password=p,database=d", "users:users-creds"},
		filters:     []string{`orders-db:orders=created_at > now() - interval '7 days'`, "orders-db:items=a=b"},
		anonymize:   []string{"orders-db:configmap/anon/orders.sql", "users:@/tmp/anon.sql"},
		env:         []string{"orders-db:DATABASE_URL", "orders-db:PGHOST=host"},
		forks:       []string{"orders-db:api,worker"},
		storage:     []string{"orders-db:pvc:fast:2Gi", "users:emptydir"},
		command:     []string{`local:seed --rows 10 "a b"`},
		setEnv:      []string{"seed:MODE=fast=1"},
		timeout:     []string{"seed:2m"},
	}
	got, err := df.build()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("%d entries", len(got))
	}
	o := got[0].GetPostgresBranch()
	switch {
	case o.GetWorkload().GetKind() != "StatefulSet" || o.GetWorkload().GetName() != "postgres":
		t.Errorf("workload %v", o.GetWorkload())
	case o.GetContainer() != "db" || o.GetService() != "pg" || o.GetPort() != 5433 || o.GetDatabase() != "orders":
		t.Errorf("where: %v", o)
	case o.GetCredentials().GetSecret() != "pg-creds" || o.GetCredentials().GetUserKey() != "u" || o.GetCredentials().GetPasswordKey() != "p" || o.GetCredentials().GetDatabaseKey() != "d":
		t.Errorf("credentials %v", o.GetCredentials())
	case o.GetMode() != "filtered" || len(o.GetFilters()) != 2 || o.GetFilters()[0].GetWhere() != "created_at > now() - interval '7 days'" || o.GetFilters()[1].GetWhere() != "a=b":
		t.Errorf("a filter makes the mode filtered, its condition whole: %v %v", o.GetMode(), o.GetFilters())
	case o.GetAnonymize().GetConfigMapKey().GetName() != "anon" || o.GetAnonymize().GetConfigMapKey().GetKey() != "orders.sql":
		t.Errorf("anonymize %v", o.GetAnonymize())
	case len(o.GetEnv()) != 2 || o.GetEnv()[0].GetPart() != "" || o.GetEnv()[1].GetPart() != "host":
		t.Errorf("env %v", o.GetEnv())
	case strings.Join(o.GetForks(), ",") != "api,worker":
		t.Errorf("forks %v", o.GetForks())
	case o.GetStorage().GetType() != "pvc" || o.GetStorage().GetStorageClassName() != "fast" || o.GetStorage().GetSize() != "2Gi":
		t.Errorf("storage %v", o.GetStorage())
	}
	u := got[1].GetPostgresBranch()
	if u.GetMode() != "schema" || u.GetWorkload().GetName() != "users" || u.GetWorkload().GetKind() != "Deployment" ||
		u.GetAnonymize().GetFile() != "/tmp/anon.sql" || u.GetStorage().GetType() != "emptyDir" {
		t.Errorf("users: %v", u)
	}
	if j := got[2].GetJob(); j.GetImage() != "reg/seed:1" || j.GetEnv()[0].GetValue() != "fast=1" || j.GetTimeout().AsDuration() != durationpb.New(120e9).AsDuration() {
		t.Errorf("seed: %v", j)
	}
	if j := got[3].GetJob(); strings.Join(j.GetCommand(), "|") != "seed|--rows|10|a b" {
		t.Errorf("local: %v", j)
	}

	for _, tc := range []struct {
		df   dataFlags
		want string
	}{
		{dataFlags{data: []string{"db"}}, "want NAME=postgres-branch"},
		{dataFlags{data: []string{"db=mysql"}}, `kind "mysql"`},
		{dataFlags{data: []string{"db=postgres-branch:most"}}, `mode "most"`},
		{dataFlags{data: []string{"db=postgres-branch", "db=job:x"}}, "given twice"},
		{dataFlags{data: []string{"db=postgres-branch"}}, "--data-credentials db:SECRET"},
		{dataFlags{data: []string{"s=job"}}, "give an image"},
		{dataFlags{data: []string{"db=postgres-branch"}, filters: []string{"other:t=1"}}, `"other" is not a data entry`},
		{dataFlags{data: []string{"s=job:x"}, filters: []string{"s:t=1"}}, "s is a job entry"},
		{dataFlags{data: []string{"db=postgres-branch"}, filters: []string{"db:t"}}, "want NAME:TABLE=WHERE"},
		{dataFlags{data: []string{"db=postgres-branch"}, service: []string{"db:pg:x"}}, "port"},
		{dataFlags{data: []string{"db=postgres-branch"}, credentials: []string{"db:s:pw=x"}}, "want user=KEY"},
		{dataFlags{data: []string{"db=postgres-branch"}, storage: []string{"db:nfs"}}, "want NAME:emptydir"},
		{dataFlags{data: []string{"db=postgres-branch"}, anonymize: []string{"db:secret/x/y"}}, "configmap/CM/KEY"},
		{dataFlags{data: []string{"db=postgres-branch"}, workload: []string{"db:ds/x"}}, `kind "ds"`},
		{dataFlags{data: []string{"s=job:x"}, timeout: []string{"s:soon"}}, "positive duration"},
	} {
		if _, err := tc.df.build(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error with %q", tc.df, err, tc.want)
		}
	}
}

func TestPrintData(t *testing.T) {
	var b bytes.Buffer
	printData(&b, &detourv1.Environment{})
	if b.Len() != 0 {
		t.Errorf("no data, yet %q", b.String())
	}
	printData(&b, &detourv1.Environment{Status: &detourv1.EnvironmentStatus{Data: []*detourv1.DataStatus{
		{Name: "orders-db", Kind: "postgres-branch", Phase: "Ready", Rows: 1200, Bytes: 12 << 20, Duration: durationpb.New(3210e6), Endpoint: "10.0.0.9:5432", Message: "branch ready"},
		{Name: "seed", Kind: "job", Phase: "Seeding", Message: "seed job seed-pr-1 running"},
	}}})
	for _, want := range []string{"orders-db  postgres-branch  Ready    1200  12MiB  3.2s", "seed       job              Seeding  -     -      -     -"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
