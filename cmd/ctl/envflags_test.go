package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

func TestForkFlags(t *testing.T) {
	ff := forkFlags{
		forks:    []string{"api", "sts/db"},
		images:   []string{"api=reg/api:pr-42", "api/sidecar=reg/proxy:2"},
		setEnv:   []string{"api:FEATURE_X=on", "api/sidecar:A=b=c", "db:EMPTY="},
		unsetEnv: []string{"api:OLD"},
		envFrom:  []string{"api:DB=secret/db-creds/url", "api:REGION=configmap/cfg/region", "api:IP=field/status.podIP"},
		commands: []string{`api=server --name "a b" 'c d' e\ f`},
		replicas: []string{"db=3"},
		patches:  []string{`api={"spec":{"priorityClassName":"low"}}`, "db=metadata:\n  annotations: {x: v}"},
	}
	forks, err := ff.build()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := protojson.Marshal(&detourv1.EnvironmentSpec{Forks: forks})
	var got struct {
		Forks []map[string]any
	}
	if err := json.Unmarshal(b, &got); err != nil || len(got.Forks) != 2 {
		t.Fatalf("%v %s", err, b)
	}
	api, db := forks[0], forks[1]
	if api.GetWorkload().GetKind() != "Deployment" || db.GetWorkload().GetKind() != "StatefulSet" || db.GetWorkload().GetName() != "db" {
		t.Errorf("workloads: %v %v", api.GetWorkload(), db.GetWorkload())
	}
	if len(api.GetImages()) != 2 || api.GetImages()[0].GetContainer() != "" || api.GetImages()[1].GetContainer() != "sidecar" {
		t.Errorf("images: %v", api.GetImages())
	}
	if v := api.GetEnv()[1]; v.GetContainer() != "sidecar" || v.GetName() != "A" || v.GetValue() != "b=c" {
		t.Errorf("a value with '=': %v", v)
	}
	if v := db.GetEnv()[0]; v.GetName() != "EMPTY" || v.Value == nil || v.GetValue() != "" {
		t.Errorf("an empty value is a value: %v", v)
	}
	if v := api.GetEnv()[2]; !v.GetDelete() || v.GetName() != "OLD" {
		t.Errorf("unset: %v", v)
	}
	if v := api.GetEnv()[3].GetValueFrom().GetSecretKey(); v.GetName() != "db-creds" || v.GetKey() != "url" {
		t.Errorf("secret ref: %v", api.GetEnv()[3])
	}
	if v := api.GetEnv()[5].GetValueFrom().GetFieldPath(); v != "status.podIP" {
		t.Errorf("field ref: %v", api.GetEnv()[5])
	}
	if c := api.GetCommands()[0].GetCommand(); strings.Join(c, "|") != "server|--name|a b|c d|e f" {
		t.Errorf("command words: %q", c)
	}
	if db.GetReplicas() != 3 || api.Replicas != nil {
		t.Errorf("replicas: api %v db %v", api.Replicas, db.GetReplicas())
	}
	if api.GetPatch() != `{"spec":{"priorityClassName":"low"}}` || db.GetPatch() != `{"metadata":{"annotations":{"x":"v"}}}` {
		t.Errorf("patches: %q %q", api.GetPatch(), db.GetPatch())
	}
}

func TestForkFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		ff   forkFlags
		want string
	}{
		{"no fork", forkFlags{}, "give at least one --fork"},
		{"bad kind", forkFlags{forks: []string{"daemonset/x"}}, `kind "daemonset" cannot be forked`},
		{"twice", forkFlags{forks: []string{"api", "api"}}, "--fork api given twice"},
		{"override of an unforked workload", forkFlags{forks: []string{"api"}, images: []string{"web=x"}}, `"web" is not a forked workload (add --fork web)`},
		{"image without =", forkFlags{forks: []string{"api"}, images: []string{"api"}}, "want WORKLOAD[/CONTAINER]=IMAGE"},
		{"set-env without name", forkFlags{forks: []string{"api"}, setEnv: []string{"api:=x"}}, "--set-env"},
		{"env-from of nothing", forkFlags{forks: []string{"api"}, envFrom: []string{"api:A=vault/x"}}, "configmap/OBJECT/KEY"},
		{"replicas out of range", forkFlags{forks: []string{"api"}, replicas: []string{"api=101"}}, "N from 0 to 100"},
		{"replicas of a container", forkFlags{forks: []string{"api"}, replicas: []string{"api/c=1"}}, "the workload's, not a container's"},
		{"unterminated quote", forkFlags{forks: []string{"api"}, commands: []string{`api=sh -c 'x`}}, "unterminated"},
		{"patch not an object", forkFlags{forks: []string{"api"}, patches: []string{"api=[1,2]"}}, "not a JSON or YAML object"},
		{"patch file missing", forkFlags{forks: []string{"api"}, patches: []string{"api=@/nonexistent/p.yaml"}}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.ff.build()
			var ce *codeError
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ce) || ce.code != exitUsage {
				t.Errorf("error %v, want a usage error containing %q", err, tc.want)
			}
		})
	}
}

func TestSplitWords(t *testing.T) {
	for in, want := range map[string]string{
		"a b  c":                             "a|b|c",
		`"a b" c`:                            "a b|c",
		`'it''s'`:                            "its",
		`a\ b`:                               "a b",
		`"x \"y\""`:                          `x "y"`,
		`''`:                                 "",
		"detour-echo --call http://api:8080": "detour-echo|--call|http://api:8080",
	} {
		got, err := splitWords(in)
		if err != nil || strings.Join(got, "|") != want {
			t.Errorf("splitWords(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
