package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode"

	"sigs.k8s.io/yaml"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// forkFlags gathers `detour env create`'s per-workload flags into forks.
// Each flag names its workload first (W, or W/CONTAINER where a container
// is meant), so that one command can fork several workloads.
type forkFlags struct {
	forks    []string // [KIND/]NAME, in order
	images   []string // W[/CONTAINER]=IMAGE
	setEnv   []string // W[/CONTAINER]:NAME=VALUE
	unsetEnv []string // W[/CONTAINER]:NAME
	envFrom  []string // W[/CONTAINER]:NAME=configmap|secret/OBJECT/KEY, or field/PATH
	commands []string // W[/CONTAINER]=ARGV
	replicas []string // W=N
	patches  []string // W=JSON|YAML|@FILE
}

// build turns the flags into forks, or a usage error naming the flag.
func (ff *forkFlags) build() ([]*detourv1.Fork, error) {
	if len(ff.forks) == 0 {
		return nil, usageErrorf("give at least one --fork WORKLOAD")
	}
	byName := map[string]*detourv1.Fork{}
	var out []*detourv1.Fork
	for _, s := range ff.forks {
		kind, name := "Deployment", s
		if k, n, ok := strings.Cut(s, "/"); ok {
			switch strings.ToLower(k) {
			case "deployment", "deploy", "deployments":
				kind = "Deployment"
			case "statefulset", "sts", "statefulsets":
				kind = "StatefulSet"
			default:
				return nil, usageErrorf("--fork %q: kind %q cannot be forked (Deployment or StatefulSet)", s, k)
			}
			name = n
		}
		if name == "" || strings.Contains(name, "/") {
			return nil, usageErrorf("--fork %q: want NAME or KIND/NAME", s)
		}
		if byName[name] != nil {
			return nil, usageErrorf("--fork %s given twice", name)
		}
		f := &detourv1.Fork{Workload: &detourv1.WorkloadRef{Kind: kind, Name: name}}
		byName[name] = f
		out = append(out, f)
	}
	target := func(flag, s string) (*detourv1.Fork, string, error) {
		w, c, _ := strings.Cut(s, "/")
		f := byName[w]
		if f == nil {
			return nil, "", usageErrorf("--%s %q: %q is not a forked workload (add --fork %s)", flag, s, w, w)
		}
		return f, c, nil
	}
	for _, s := range ff.images {
		wc, image, ok := strings.Cut(s, "=")
		if !ok || image == "" {
			return nil, usageErrorf("--image %q: want WORKLOAD[/CONTAINER]=IMAGE", s)
		}
		f, c, err := target("image", wc)
		if err != nil {
			return nil, err
		}
		f.Images = append(f.Images, &detourv1.ImageOverride{Container: c, Image: image})
	}
	for _, s := range ff.setEnv {
		wc, kv, ok := strings.Cut(s, ":")
		name, value, ok2 := strings.Cut(kv, "=")
		if !ok || !ok2 || name == "" {
			return nil, usageErrorf("--set-env %q: want WORKLOAD[/CONTAINER]:NAME=VALUE", s)
		}
		f, c, err := target("set-env", wc)
		if err != nil {
			return nil, err
		}
		v := value
		f.Env = append(f.Env, &detourv1.EnvOverride{Container: c, Name: name, Value: &v})
	}
	for _, s := range ff.unsetEnv {
		wc, name, ok := strings.Cut(s, ":")
		if !ok || name == "" || strings.Contains(name, "=") {
			return nil, usageErrorf("--unset-env %q: want WORKLOAD[/CONTAINER]:NAME", s)
		}
		f, c, err := target("unset-env", wc)
		if err != nil {
			return nil, err
		}
		f.Env = append(f.Env, &detourv1.EnvOverride{Container: c, Name: name, Delete: true})
	}
	for _, s := range ff.envFrom {
		wc, kv, ok := strings.Cut(s, ":")
		name, from, ok2 := strings.Cut(kv, "=")
		if !ok || !ok2 || name == "" {
			return nil, usageErrorf("--env-from %q: want WORKLOAD[/CONTAINER]:NAME=configmap/OBJECT/KEY, secret/OBJECT/KEY or field/PATH", s)
		}
		f, c, err := target("env-from", wc)
		if err != nil {
			return nil, err
		}
		src := &detourv1.EnvValueSource{}
		parts := strings.SplitN(from, "/", 3)
		switch {
		case len(parts) == 3 && parts[0] == "configmap" && parts[1] != "" && parts[2] != "":
			src.ConfigMapKey = &detourv1.KeyRef{Name: parts[1], Key: parts[2]}
		case len(parts) == 3 && parts[0] == "secret" && parts[1] != "" && parts[2] != "":
			src.SecretKey = &detourv1.KeyRef{Name: parts[1], Key: parts[2]}
		case len(parts) >= 2 && parts[0] == "field":
			src.FieldPath = strings.TrimPrefix(from, "field/")
		default:
			return nil, usageErrorf("--env-from %q: want configmap/OBJECT/KEY, secret/OBJECT/KEY or field/PATH after =", s)
		}
		f.Env = append(f.Env, &detourv1.EnvOverride{Container: c, Name: name, ValueFrom: src})
	}
	for _, s := range ff.commands {
		wc, line, ok := strings.Cut(s, "=")
		if !ok {
			return nil, usageErrorf("--command %q: want WORKLOAD[/CONTAINER]=COMMAND ARGS...", s)
		}
		argv, err := splitWords(line)
		if err != nil || len(argv) == 0 {
			return nil, usageErrorf("--command %q: %v", s, orEmpty(err, "no command"))
		}
		f, c, err := target("command", wc)
		if err != nil {
			return nil, err
		}
		f.Commands = append(f.Commands, &detourv1.CommandOverride{Container: c, Command: argv})
	}
	for _, s := range ff.replicas {
		w, n, ok := strings.Cut(s, "=")
		count, err := strconv.Atoi(n)
		if !ok || err != nil || count < 0 || count > 100 {
			return nil, usageErrorf("--replicas %q: want WORKLOAD=N, N from 0 to 100", s)
		}
		f, c, err := target("replicas", w)
		if err != nil {
			return nil, err
		}
		if c != "" {
			return nil, usageErrorf("--replicas %q: replicas are the workload's, not a container's", s)
		}
		r := int32(count)
		f.Replicas = &r
	}
	for _, s := range ff.patches {
		w, p, ok := strings.Cut(s, "=")
		if !ok || p == "" {
			return nil, usageErrorf("--patch %q: want WORKLOAD=PATCH (JSON or YAML, or @FILE)", s)
		}
		f, c, err := target("patch", w)
		if err != nil {
			return nil, err
		}
		if c != "" {
			return nil, usageErrorf("--patch %q: a patch is of the workload's pod template, not a container's", s)
		}
		if strings.HasPrefix(p, "@") {
			b, err := os.ReadFile(p[1:])
			if err != nil {
				return nil, usageErrorf("--patch %s: %v", w, err)
			}
			p = string(b)
		}
		j, err := yaml.YAMLToJSON([]byte(p))
		var obj map[string]any
		if err == nil {
			err = json.Unmarshal(j, &obj)
		}
		if err != nil || obj == nil {
			return nil, usageErrorf("--patch %s: not a JSON or YAML object: %v", w, orEmpty(err, "empty"))
		}
		f.Patch = string(j)
	}
	return out, nil
}

func orEmpty(err error, otherwise string) any {
	if err == nil {
		return otherwise
	}
	return err
}

// splitWords splits a command line into words as a shell would for plain
// words and quotes: spaces separate, '...' and "..." group, \ escapes
// outside single quotes. Nothing is expanded.
func splitWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	in := false // a word is started
	var quote rune
	esc := false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\\':
			esc, in = true, true
		case quote == '"':
			if r == '"' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, in = r, true
		case unicode.IsSpace(r):
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if quote != 0 || esc {
		return nil, fmt.Errorf("unterminated quote or escape in %q", s)
	}
	if in {
		out = append(out, cur.String())
	}
	return out, nil
}
