package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"sigs.k8s.io/yaml"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/pkg/controller"
	"github.com/detourdev/detour/pkg/inventory"
	"github.com/detourdev/detour/pkg/store"
)

// runCLI runs the CLI as main does and returns stdout, stderr's error line
// and the exit code.
func runCLI(t *testing.T, args ...string) (stdout, errMsg string, code int) {
	t.Helper()
	return runCLIWith(t, newRootCmd(), args...)
}

// runCLIWith is runCLI with a root command made with test dependencies.
func runCLIWith(t *testing.T, root *cobra.Command, args ...string) (stdout, errMsg string, code int) {
	t.Helper()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return out.String(), "", exitOK
	}
	var ce *codeError
	if errors.As(err, &ce) {
		return out.String(), err.Error(), ce.code
	}
	return out.String(), err.Error(), exitError
}

// Flag checks that need no controller: an unreachable address proves no call
// was attempted, since that would exit 1.
func TestFlagValidation(t *testing.T) {
	const nowhere = "--controller=127.0.0.1:1"
	create := func(extra ...string) []string {
		return append([]string{"intercept", "create", "alice", nowhere, "--service", "default/api", "--port", "80"}, extra...)
	}
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"missing --to", create("--session", "alice"), exitUsage, "--to is required"},
		{"--to without port", create("--session", "alice", "--to", "api-alice"), exitUsage, "HOST:PORT"},
		{"no condition", create("--to", "api-alice:8080"), exitUsage, "at least one condition"},
		{"bad --header", create("--header", "x-user", "--to", "a:1"), exitUsage, "NAME=VALUE"},
		{"bad header name", create("--header", "x user=1", "--to", "a:1"), exitUsage, "not a token"},
		{"bad --header-regex", create("--header-regex", "x-user=(", "--to", "a:1"), exitUsage, "regexp"},
		{"bad --path", create("--path", "api", "--to", "a:1"), exitUsage, "does not start with /"},
		{"empty --session", create("--session", "", "--to", "a:1"), exitUsage, "empty session key"},
		{"bad --port", create("--session", "a", "--to", "a:1", "--port", "x"), exitUsage, "--port"},
		{"port out of range", create("--session", "a", "--to", "a:1", "--port", "70000"), exitUsage, "1-65535"},
		{"bad --ttl", create("--session", "a", "--to", "a:1", "--ttl", "soon"), exitUsage, "--ttl"},
		{"negative --ttl", create("--session", "a", "--to", "a:1", "--ttl", "-1m"), exitUsage, "0s or more"},
		{"no --service", []string{"intercept", "create", "x", nowhere, "--port", "80", "--session", "a", "--to", "a:1"}, exitUsage, "--service is required"},
		{"bad --service", []string{"intercept", "create", "x", nowhere, "--service", "a/b/c", "--port", "80", "--session", "a", "--to", "a:1"}, exitUsage, "NAMESPACE/SERVICE"},
		{"create without name", []string{"intercept", "create", nowhere, "--service", "api", "--port", "80", "--session", "a", "--to", "a:1"}, exitUsage, "NAME"},
		{"unknown flag", create("--sesion", "a"), exitUsage, "unknown flag"},
		{"unknown -o", []string{"intercept", "list", nowhere, "-o", "xml"}, exitUsage, "unknown output format"},
		{"unknown -o on status", []string{"status", nowhere, "-o", "wide"}, exitUsage, "unknown output format"},
		{"-n with -A", []string{"intercept", "list", nowhere, "-n", "x", "-A"}, exitUsage, "exclude"},
		{"get without name", []string{"intercept", "get", nowhere}, exitUsage, "NAME"},
		{"delete two names", []string{"intercept", "delete", "a", "b", nowhere}, exitUsage, "NAME"},
		{"renew negative ttl", []string{"intercept", "renew", "a", nowhere, "--ttl", "-5s"}, exitUsage, "0s or more"},
		{"status argument", []string{"status", "x", nowhere}, exitUsage, "unknown command"},
		// Valid flags get as far as dialling.
		{"unreachable", create("--session", "alice", "--to", "api-alice:8080"), exitError, "cannot reach the controller at 127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, msg, code := runCLI(t, tt.args...)
			if code != tt.code || !strings.Contains(msg, tt.msg) {
				t.Fatalf("exit %d %q, want %d and a message containing %q", code, msg, tt.code, tt.msg)
			}
		})
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 45 * time.Second: "45s", 5 * time.Minute: "5m", 200 * time.Second: "3m20s",
		2*time.Hour + 5*time.Minute: "2h5m", 30 * time.Hour: "30h", 76 * time.Hour: "3d4h", -time.Second: "0s",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// startController runs a real controller on a loopback TCP port.
func startController(t *testing.T) (addr string, inv *inventory.StaticSource) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	inv = inventory.NewStaticSource(&inventory.Inventory{
		Node: "lab",
		Pods: []inventory.Pod{
			{Name: "api-0", Namespace: "default", Labels: map[string]string{"app": "api"}, IP: "10.0.0.10", NetNS: "/run/netns/api-0"},
			{Name: "api-alice", Namespace: "default", IP: "10.0.0.20", NetNS: "/run/netns/api-alice"},
			{Name: "api-bob", Namespace: "default", IP: "10.0.0.21", NetNS: "/run/netns/api-bob"},
		},
		Services: []inventory.Service{{Name: "api", Namespace: "default", Selector: map[string]string{"app": "api"},
			Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8080}}}},
	})
	srv, err := controller.New(context.Background(), controller.Config{Store: st, Inventory: inv, Version: "test-1"})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.RegisterServices(gs)
	go func() { _ = gs.Serve(lis) }()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Close()
		gs.Stop()
		_ = st.Close()
	})
	return lis.Addr().String(), inv
}

func TestEndToEnd(t *testing.T) {
	addr, _ := startController(t)
	ctl := "--controller=" + addr
	run := func(want int, args ...string) string {
		t.Helper()
		out, msg, code := runCLI(t, append(args, ctl)...)
		if code != want {
			t.Fatalf("%v: exit %d (%s), want %d", args, code, msg, want)
		}
		if want != exitOK {
			return msg
		}
		return out
	}

	out := run(exitOK, "intercept", "create", "alice", "--service", "default/api", "--port", "80",
		"--session", "alice", "--path-prefix", "/v2", "--to", "api-alice:8080", "--ttl", "1h")
	if !strings.Contains(out, "intercept default/alice created: session=alice & path-prefix=/v2 on default/api port 80 goes to api-alice:8080, expires in 1h") {
		t.Errorf("create said %q", out)
	}
	run(exitOK, "intercept", "create", "bob", "--service", "api", "--port", "80", "--session", "bob", "--header", "x-user=bob", "--to", "api-bob:8080")

	// The server's own errors, with their exit codes.
	msg := run(exitRefused, "intercept", "create", "carol", "--service", "api", "--port", "80", "--session", "alice", "--to", "api-bob:8080")
	if !strings.HasPrefix(msg, "create intercept default/carol: overlaps intercept default/alice") {
		t.Errorf("conflict message %q", msg)
	}
	msg = run(exitRefused, "intercept", "create", "alice", "--service", "api", "--port", "80", "--session", "zed", "--to", "api-bob:8080")
	if !strings.Contains(msg, "already exists") {
		t.Errorf("exists message %q", msg)
	}
	msg = run(exitNotFound, "intercept", "create", "dave", "--service", "web", "--port", "80", "--session", "dave", "--to", "api-bob:8080")
	if msg != "create intercept default/dave: service default/web not found" {
		t.Errorf("not found message %q", msg)
	}
	run(exitUsage, "intercept", "create", "Bad_Name", "--service", "api", "--port", "80", "--session", "x", "--to", "api-bob:8080")
	run(exitUsage, "intercept", "create", "eve", "--service", "api", "--port", "81", "--session", "x", "--to", "api-bob:8080")

	out = run(exitOK, "intercept", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAMESPACE") || !strings.Contains(lines[0], "DESTINATION") {
		t.Fatalf("list table:\n%s", out)
	}
	for _, want := range []string{"alice", "api", "80", "session=alice & path-prefix=/v2", "api-alice:8080", "in 1h"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("alice row %q lacks %q", lines[1], want)
		}
	}
	if !strings.Contains(lines[2], "session=bob & header:x-user=bob") || !strings.Contains(lines[2], "never") {
		t.Errorf("bob row %q", lines[2])
	}
	if out := run(exitOK, "intercept", "list", "-n", "other"); strings.Count(out, "\n") != 1 {
		t.Errorf("list -n other:\n%s", out)
	}

	// JSON and YAML carry the proto's field names.
	var list struct {
		Intercepts []struct {
			Namespace string
			Name      string
			Spec      struct {
				ServiceName string `json:"service_name"`
				Destination string
			}
			ExpiresAt *string `json:"expires_at"`
		}
	}
	if err := json.Unmarshal([]byte(run(exitOK, "intercept", "list", "-A", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Intercepts) != 2 || list.Intercepts[0].Spec.ServiceName != "api" || list.Intercepts[0].ExpiresAt == nil || list.Intercepts[1].ExpiresAt != nil {
		t.Errorf("list json %+v", list)
	}
	var got map[string]any
	if err := yaml.Unmarshal([]byte(run(exitOK, "intercept", "get", "alice", "-o", "yaml")), &got); err != nil {
		t.Fatal(err)
	}
	if ic, _ := got["intercept"].(map[string]any); ic["name"] != "alice" {
		t.Errorf("get yaml %v", got)
	}
	if out := run(exitOK, "intercept", "get", "bob"); !strings.Contains(out, "api-bob:8080") {
		t.Errorf("get table %q", out)
	}
	run(exitNotFound, "intercept", "get", "zed")
	run(exitNotFound, "intercept", "get", "alice", "-n", "other")

	if out := run(exitOK, "intercept", "renew", "alice", "--ttl", "10m"); !strings.Contains(out, "intercept default/alice expires in 10m") {
		t.Errorf("renew %q", out)
	}
	if out := run(exitOK, "intercept", "renew", "bob"); !strings.Contains(out, "never (no lease)") {
		t.Errorf("renew without lease %q", out)
	}
	run(exitNotFound, "intercept", "renew", "zed")

	// Status: the agent connects and reports through the real API.
	conn, err := connectController(context.Background(), addr, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	agent := detourv1.NewAgentSyncServiceClient(conn)
	if _, err := agent.Register(context.Background(), &detourv1.RegisterRequest{Node: "lab", Version: "agent-7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.ReportStatus(context.Background(), &detourv1.ReportStatusRequest{Node: "lab", Intercepts: []*detourv1.InterceptReport{
		{Namespace: "default", Name: "alice", SteeringAttached: true, Matched: 12, Fallbacks: 2, SteeredConnections: 5},
	}}); err != nil {
		t.Fatal(err)
	}
	out = run(exitOK, "status")
	for _, want := range []string{addr, "test-1", "agent-7", "NODE", "CONNECTED", "LAST SEEN", "STEERING", "MATCHED", "FALLBACKS", "STEERED CONNS"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	var aliceRow, bobRow string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 7 && f[0] == "default" && f[1] == "alice" {
			aliceRow = strings.Join(f, " ")
		}
		if len(f) >= 4 && f[0] == "default" && f[1] == "bob" {
			bobRow = strings.Join(f, " ")
		}
	}
	if aliceRow != "default alice lab attached 12 2 5" || bobRow != "default bob lab no 0 0 0" {
		t.Errorf("status rows %q %q:\n%s", aliceRow, bobRow, out)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(run(exitOK, "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st["controller_version"] != "test-1" {
		t.Errorf("status json %v", st)
	}

	if out := run(exitOK, "intercept", "delete", "alice"); out != "intercept default/alice deleted\n" {
		t.Errorf("delete said %q", out)
	}
	msg = run(exitNotFound, "intercept", "delete", "alice")
	if msg != "delete intercept default/alice: intercept default/alice not found" {
		t.Errorf("delete missing %q", msg)
	}
	// The conflict is gone with alice.
	run(exitOK, "intercept", "create", "carol", "--service", "api", "--port", "80", "--session", "alice", "--to", "api-bob:8080")
}
