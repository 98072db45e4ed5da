package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const validLab = `
name: demo
pods:
  - name: api
    labels: {app: api}
    command: ["detour-echo", "--listen", ":8080"]
  - name: client
    namespace: tools
services:
  - name: api
    selector: {app: api}
    ports: [{port: 80, targetPort: 8080}]
`

func TestParseDefaults(t *testing.T) {
	f, err := Parse([]byte(validLab))
	if err != nil {
		t.Fatal(err)
	}
	if f.Node != DefaultNode || f.Network.Bridge != DefaultBridge || f.Network.Subnet != DefaultSubnet {
		t.Errorf("defaults not applied: node %q bridge %q subnet %q", f.Node, f.Network.Bridge, f.Network.Subnet)
	}
	if f.Pods[0].Namespace != "default" || f.Pods[1].Namespace != "tools" {
		t.Errorf("namespaces: %q %q", f.Pods[0].Namespace, f.Pods[1].Namespace)
	}
	if got := f.Gateway().String(); got != "10.213.0.1" {
		t.Errorf("gateway %s", got)
	}
	for i, want := range []string{"10.213.0.2", "10.213.0.3"} {
		if got := f.PodIP(i).String(); got != want {
			t.Errorf("pod %d ip %s, want %s", i, got, want)
		}
	}
	if f.Services[0].Namespace != "default" {
		t.Errorf("service namespace %q", f.Services[0].Namespace)
	}
	if w := f.Warnings(); len(w) != 0 {
		t.Errorf("unexpected warnings %q", w)
	}
	inv := f.Inventory(nil)
	if inv.Node != "lab" || len(inv.Pods) != 2 || inv.Pods[0].NetNS != "/run/netns/api" || inv.Pods[0].IP != "10.213.0.2" {
		t.Errorf("inventory %+v", inv)
	}
	if eps := inv.Endpoints(&inv.Services[0]); len(eps) != 1 || eps[0].Name != "api" {
		t.Errorf("endpoints of api: %+v", eps)
	}
	if p := inv.Services[0].Ports[0]; p.Port != 80 || p.TargetPort != 8080 {
		t.Errorf("ports %+v", p)
	}
}

func TestParseTargetPortDefaultsToPort(t *testing.T) {
	f, err := Parse([]byte("name: x\npods: [{name: a, labels: {app: a}}]\nservices: [{name: s, selector: {app: a}, ports: [{port: 81}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tp := f.Services[0].Ports[0].TargetPort; tp != 81 {
		t.Errorf("targetPort %d, want 81", tp)
	}
}

func TestParseErrors(t *testing.T) {
	pods := func(s string) string { return "name: demo\npods:\n" + s }
	long := strings.Repeat("a", 64)
	tests := []struct {
		name string
		in   string
		want []string // substrings of the error
	}{
		{"yaml", "name: [", []string{"parse"}},
		{"unknown field", "name: demo\npods: [{name: a, lables: {app: a}}]", []string{"unknown field", "lables"}},
		{"no name", "pods: [{name: a}]", []string{"name is empty"}},
		{"no pods", "name: demo", []string{"at least one pod"}},
		{"duplicate pod", pods("  - {name: a}\n  - {name: a, namespace: other}\n"), []string{`pods[1] "a": duplicate pod name (also pods[0])`}},
		{"pod name upper", pods("  - {name: Api}\n"), []string{`pods[0] "Api"`, "DNS-1123"}},
		{"pod name too long", pods("  - {name: " + long + "}\n"), []string{"64 characters", "at most 63"}},
		{"pod name empty", pods("  - {labels: {a: b}}\n"), []string{"pods[0]: name is empty"}},
		{"bad namespace", pods("  - {name: a, namespace: Foo_bar}\n"), []string{`pods[0] "a": namespace "Foo_bar"`}},
		{"empty command entry", pods("  - {name: a, command: [sleep, '']}\n"), []string{`pods[0] "a": command[1] is empty`}},
		{"bad label value", pods("  - {name: a, labels: {app: 'x y'}}\n"), []string{`pods[0] "a": label "app"`}},
		{"bad label key", pods("  - {name: a, labels: {'-x': y}}\n"), []string{`label key "-x"`}},
		{"bad subnet", "name: demo\nnetwork: {subnet: 10.0.0.0}\npods: [{name: a}]", []string{"not a CIDR"}},
		{"host bits", "name: demo\nnetwork: {subnet: 10.0.0.5/24}\npods: [{name: a}]", []string{"did you mean 10.0.0.0/24"}},
		{"ipv6", "name: demo\nnetwork: {subnet: 'fd00::/64'}\npods: [{name: a}]", []string{"only IPv4"}},
		{"subnet too small", "name: demo\nnetwork: {subnet: 10.0.0.0/31}\npods: [{name: a}]", []string{"too small"}},
		{"too many pods", "name: demo\nnetwork: {subnet: 10.0.0.0/30}\npods: [{name: a}, {name: b}]", []string{"2 pods do not fit (at most 1"}},
		{"bridge too long", "name: demo\nnetwork: {bridge: abcdefghijklmnop}\npods: [{name: a}]", []string{"network.bridge", "at most 15"}},
		{"bridge slash", "name: demo\nnetwork: {bridge: a/b}\npods: [{name: a}]", []string{"network.bridge"}},
		{"port range", pods("  - {name: a}\nservices: [{name: s, ports: [{port: 70000}]}]\n"), []string{`services[0] "s": ports[0]: port 70000 out of range`}},
		{"target port range", pods("  - {name: a}\nservices: [{name: s, ports: [{port: 80, targetPort: -1}]}]\n"), []string{"targetPort -1 out of range"}},
		{"no ports", pods("  - {name: a}\nservices: [{name: s}]\n"), []string{`services[0] "s": needs at least one port`}},
		{"duplicate port", pods("  - {name: a}\nservices: [{name: s, ports: [{name: x, port: 80}, {name: y, port: 80}]}]\n"), []string{"duplicate port 80"}},
		{"unnamed ports", pods("  - {name: a}\nservices: [{name: s, ports: [{port: 80}, {port: 81}]}]\n"), []string{"must name each"}},
		{"duplicate service", pods("  - {name: a}\nservices: [{name: s, ports: [{port: 80}]}, {name: s, ports: [{port: 81}]}]\n"), []string{"duplicate service default/s"}},
		{"service namespaces differ", pods("  - {name: a}\nservices: [{name: s, ports: [{port: 80}]}, {name: s, namespace: o, ports: [{port: 81}]}]\n"), nil},
		{"all reported", pods("  - {name: A}\n  - {name: b, command: ['']}\n"), []string{`pods[0] "A"`, `pods[1] "b": command[0]`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	f, err := Parse([]byte(`
name: demo
pods:
  - {name: api, labels: {app: api}}
  - {name: web, labels: {app: web}}
services:
  - {name: nothing, selector: {app: none}, ports: [{port: 80}]}
  - {name: empty, ports: [{port: 80}]}
  - {name: web, selector: {app: api}, ports: [{port: 80}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(f.Warnings(), "\n")
	for _, want := range []string{"default/nothing selects no pod", "default/empty selects no pod", "service default/web and pod web share a name"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings %q lack %q", w, want)
		}
	}
}

func TestLoadNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("name: demo\npods: [{name: a, command: ['']}]"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "command[0] is empty") {
		t.Fatalf("error %v should name the file and the problem", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file: no error")
	}
}

// The example lab shipped in test/lab must stay valid and keep the developer
// pods out of the shared service.
func TestDemoLab(t *testing.T) {
	f, err := Load("../../test/lab/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inv := f.Inventory(nil)
	svc, err := inv.Service("default", "api")
	if err != nil {
		t.Fatal(err)
	}
	eps := inv.Endpoints(svc)
	if len(eps) != 1 || eps[0].Name != "api" {
		t.Fatalf("service api selects %+v, want only pod api", eps)
	}
	for _, name := range []string{"api-alice", "api-bob", "client"} {
		if _, err := inv.Pod("default", name); err != nil {
			t.Error(err)
		}
	}
	if p, _ := svc.TargetPort(80); p != 8080 {
		t.Errorf("api:80 -> %d, want 8080", p)
	}
	if w := f.Warnings(); len(w) != 0 {
		t.Errorf("demo lab warns: %q", w)
	}
}

func TestHostsFile(t *testing.T) {
	f, err := Parse([]byte(`
name: demo
pods:
  - {name: api, labels: {app: api}}
  - {name: api-2, labels: {app: api}}
  - {name: web, labels: {app: web}}
  - {name: tool, namespace: ops, labels: {app: api}}
services:
  - {name: api, selector: {app: api}, ports: [{port: 80}]}
  - {name: web, selector: {app: api}, ports: [{port: 80}]}
  - {name: none, selector: {app: none}, ports: [{port: 80}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	lines := func(i int) map[string]string { // name -> ip (last wins, fine for unique names)
		m := map[string]string{}
		for _, l := range strings.Split(string(f.hostsFile(i)), "\n") {
			fs := strings.Fields(l)
			if len(fs) < 2 || strings.HasPrefix(fs[0], "#") {
				continue
			}
			for _, n := range fs[1:] {
				if prev, ok := m[n]; ok && prev != fs[0] {
					m[n] = prev + "," + fs[0]
				} else {
					m[n] = fs[0]
				}
			}
		}
		return m
	}
	def := lines(0)
	want := map[string]string{
		"localhost":                     "127.0.0.1,::1",
		"api":                           "10.213.0.2,10.213.0.3", // pod api and service api (both pods)
		"api-2":                         "10.213.0.3",
		"api.default":                   "10.213.0.2,10.213.0.3",
		"api.default.svc":               "10.213.0.2,10.213.0.3",
		"api.default.svc.cluster.local": "10.213.0.2,10.213.0.3",
		"web":                           "10.213.0.2,10.213.0.3", // the service shadows pod web
		"web.default.pod":               "10.213.0.4",
		"tool.ops.pod":                  "10.213.0.5",
		"tool":                          "10.213.0.5",
		"web.default.svc.cluster.local": "10.213.0.2,10.213.0.3",
		"api-2.default.pod":             "10.213.0.3",
	}
	for n, ip := range want {
		if def[n] != ip {
			t.Errorf("from default: %s -> %q, want %q", n, def[n], ip)
		}
	}
	if _, ok := def["none"]; ok {
		t.Error("a service selecting nothing must not resolve")
	}
	// From namespace ops, bare service names of default do not resolve
	// (no search path into another namespace), so pod web keeps its name.
	ops := lines(3)
	if ops["web"] != "10.213.0.4" {
		t.Errorf("from ops: web -> %q, want pod web 10.213.0.4", ops["web"])
	}
	if ops["api.default"] != "10.213.0.2,10.213.0.3" {
		t.Errorf("from ops: api.default -> %q", ops["api.default"])
	}
	if !strings.HasPrefix(strings.Fields(strings.Split(string(f.hostsFile(0)), "\n")[4])[1], "api") {
		t.Error("the bare name should come first on a line")
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("detour0", "api")
	if len(a) > 15 || !strings.HasPrefix(a, "dt") {
		t.Errorf("%q: want dt-prefixed, at most 15 characters", a)
	}
	if a != HostVethName("detour0", "api") {
		t.Error("not stable")
	}
	if a == HostVethName("detour1", "api") || a == HostVethName("detour0", "api-2") {
		t.Error("collides")
	}
	if n := HostVethName("b", strings.Repeat("x", 63)); len(n) > 15 {
		t.Errorf("%q too long", n)
	}
}

func TestParseProcStat(t *testing.T) {
	// comm may contain spaces and parentheses.
	s := "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10"
	ps, err := parseProcStat(s)
	if err != nil {
		t.Fatal(err)
	}
	if ps.state != 'S' || ps.pgrp != 4242 || ps.startTime != 987654 {
		t.Errorf("%+v", ps)
	}
	if _, err := parseProcStat("1 (x) S 1"); err == nil {
		t.Error("short stat accepted")
	}
	self, err := readProc(os.Getpid())
	if err != nil || self.state == 0 || self.startTime == 0 {
		t.Errorf("own stat: %+v %v", self, err)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := lookPath("tool", []string{"/nonexistent", dir}); err != nil || got != exe {
		t.Errorf("lookPath tool = %q, %v", got, err)
	}
	if _, err := lookPath("data", []string{dir}); err == nil {
		t.Error("non-executable file found")
	}
	if _, err := lookPath("nope", []string{dir}); err == nil || !strings.Contains(err.Error(), `"nope" not found`) {
		t.Errorf("missing command: %v", err)
	}
	if got, err := lookPath(exe, nil); err != nil || got != exe {
		t.Errorf("absolute path: %q, %v", got, err)
	}
}

// A File built in code gets the same defaults as a parsed one, without
// Up changing the caller's copy.
func TestNormalized(t *testing.T) {
	f := &File{Name: "x", Pods: []Pod{{Name: "a"}}, Services: []Service{{Name: "s", Ports: []ServicePort{{Port: 80}}}}}
	n := f.normalized()
	if err := n.Validate(); err != nil {
		t.Fatal(err)
	}
	if n.Pods[0].Namespace != "default" || n.Services[0].Ports[0].TargetPort != 80 || n.Network.Bridge != DefaultBridge {
		t.Errorf("defaults missing: %+v", n)
	}
	if f.Pods[0].Namespace != "" || f.Services[0].Ports[0].TargetPort != 0 || f.Network.Bridge != "" {
		t.Errorf("caller's File changed: %+v", f)
	}
}

// FuzzParse: whatever a lab file holds, Parse returns an error or a File on
// which Up's pure steps (addresses, warnings, hosts files) do not panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validLab))
	if b, err := os.ReadFile("../../test/lab/demo.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("name: x\nnetwork: {subnet: 10.0.0.0/30}\npods: [{name: a}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		lf, err := Parse(b)
		if err != nil {
			return
		}
		_ = lf.Warnings()
		_ = lf.Inventory(nil)
		for i := range lf.Pods {
			if !lf.Prefix().Contains(lf.PodIP(i)) {
				t.Fatalf("pod %d address %s outside %s", i, lf.PodIP(i), lf.Prefix())
			}
			_ = lf.hostsFile(i)
		}
	})
}
