package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/detourdev/detour/pkg/lab"
)

// Pod names of the bench lab. They are global netns names: the b- prefix
// keeps them apart from the demo's and the tests' labs, which may be up at
// the same time on a shared machine.
const (
	podApp    = "b-app"
	podDev    = "b-dev"
	podNginx  = "b-nginx"
	podClient = "b-client"
)

// tools the bench drives, and the Debian package of each.
var tools = []struct{ bin, pkg string }{
	{"wrk", "wrk"},
	{"nginx", "nginx-light"},
	{"h2load", "nghttp2-client"},
	{"iperf3", "iperf3"},
}

// ensureTools installs the missing tools with apt-get (the bench runs on
// fresh machines). Services the packages would start (nginx on :80) are held
// back with a policy-rc.d for the install: only lab namespaces may receive
// traffic. It returns the path of each tool found.
func ensureTools(ctx context.Context, install bool) map[string]string {
	found := map[string]string{}
	look := func() []string {
		var missing []string
		for _, t := range tools {
			if p, err := lookPath(t.bin); err == nil {
				found[t.bin] = p
			} else {
				missing = append(missing, t.pkg)
			}
		}
		return missing
	}
	missing := look()
	if len(missing) == 0 || !install {
		return found
	}
	say("installing %s (apt-get)", strings.Join(missing, " "))
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); errors.Is(err, os.ErrNotExist) {
		if os.WriteFile(policy, []byte("#!/bin/sh\n# written by detour's bench for one apt-get install\nexit 101\n"), 0o755) == nil {
			defer os.Remove(policy)
		}
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, argv := range [][]string{
		{"apt-get", "update", "-q"},
		append([]string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}, missing...),
	} {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			say("%s failed: %v\n%s", strings.Join(argv, " "), err, tail(string(out), 10))
		}
	}
	look()
	return found
}

// lookPath also searches the sbin dirs, which a non-login root shell may
// lack in PATH (nginx lives in /usr/sbin).
func lookPath(bin string) (string, error) {
	if p, err := exec.LookPath(bin); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, bin)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", bin)
}

// machine describes where the numbers come from.
type machine struct {
	Cores      int               `json:"cores"`
	CPU        string            `json:"cpu,omitempty"`
	Kernel     string            `json:"kernel"`
	OS         string            `json:"os,omitempty"`
	Go         string            `json:"go"`
	LoadStart  string            `json:"loadavg_start,omitempty"`
	LoadEnd    string            `json:"loadavg_end,omitempty"`
	Tools      map[string]string `json:"tools,omitempty"`
	SharedNote string            `json:"note"`
}

func describeMachine(found map[string]string) machine {
	m := machine{
		Cores:      runtime.NumCPU(),
		Kernel:     readTrim("/proc/sys/kernel/osrelease"),
		Go:         runtime.Version(),
		LoadStart:  readTrim("/proc/loadavg"),
		Tools:      map[string]string{},
		SharedNote: "shared, noisy machine: compare ratios within one run, not absolute numbers across runs",
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	versions := map[string][]string{"wrk": {"--version"}, "nginx": {"-v"}, "h2load": {"--version"}, "iperf3": {"--version"}}
	for bin, p := range found {
		out, _ := exec.Command(p, versions[bin]...).CombinedOutput()
		if l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n"); l != "" {
			m.Tools[bin] = strings.TrimSpace(l)
		}
	}
	return m
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// labFile is the bench lab: the app (echo on 8080 and 8081, iperf3 on 5201),
// the developer's pod (echo on 8080, iperf3 on 5201), nginx and the client.
func labFile(bridge, subnet, nginxBin, nginxConf, iperf3 string) *lab.File {
	iperf := "exec sleep infinity"
	if iperf3 != "" {
		iperf = "exec " + iperf3 + " -s -p 5201"
	}
	nginxCmd := []string{"sleep", "infinity"}
	if nginxBin != "" {
		nginxCmd = []string{nginxBin, "-c", nginxConf}
	}
	return &lab.File{
		Name:    "bench",
		Node:    lab.DefaultNode,
		Network: lab.Network{Bridge: bridge, Subnet: subnet},
		Pods: []lab.Pod{
			{Name: podApp, Labels: map[string]string{"app": podApp},
				Command: []string{"sh", "-c", "detour-echo --listen :8080 & detour-echo --listen :8081 & " + iperf}},
			{Name: podDev, Labels: map[string]string{"app": podDev, "owner": "alice"},
				Command: []string{"sh", "-c", "detour-echo --listen :8080 & " + iperf}},
			{Name: podNginx, Labels: map[string]string{"app": podNginx}, Command: nginxCmd},
			{Name: podClient, Labels: map[string]string{"app": podClient}, Command: []string{"sleep", "infinity"}},
		},
		Services: []lab.Service{{
			Name:     "app",
			Selector: map[string]string{"app": podApp},
			Ports: []lab.ServicePort{
				{Name: "http", Port: 80, TargetPort: 8080},
				{Name: "bulk", Port: 5201, TargetPort: 5201},
			},
		}},
	}
}

// nginxConfTmpl routes on the session header like the agent does, to a
// keep-alive upstream pool per destination. worker_processes auto (2 here):
// the agent may use every core too (GOMAXPROCS), so nginx gets the same.
const nginxConfTmpl = `# generated by detour's bench (test/bench); nginx is the comparison point for
# the agent's per-request routing.
daemon off;
master_process on;
worker_processes auto;
user root;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path {{.Dir}}/body;
    proxy_temp_path {{.Dir}}/proxy;
    fastcgi_temp_path {{.Dir}}/fastcgi;
    uwsgi_temp_path {{.Dir}}/uwsgi;
    scgi_temp_path {{.Dir}}/scgi;
    keepalive_requests 1000000;
    map $http_x_detour_session $detour_upstream {
        default app;
        alice   dev;
    }
    upstream app { server {{.App}}:8080; keepalive 64; keepalive_requests 1000000; }
    upstream dev { server {{.Dev}}:8080; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 8080;
        location / {
            proxy_pass http://$detour_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }
    }
}
`

// nginxSummary is the config in one line, for the report.
const nginxSummary = "nginx in pod b-nginx: worker_processes auto, access_log off, map $http_x_detour_session -> upstream dev (b-dev:8080) or app (b-app:8080), keepalive 64 per upstream, proxy_http_version 1.1"

func writeNginxConf(dir, app, dev string) (string, error) {
	var b bytes.Buffer
	t := template.Must(template.New("nginx").Parse(nginxConfTmpl))
	if err := t.Execute(&b, struct{ Dir, App, Dev string }{dir, app, dev}); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "nginx.conf")
	return path, os.WriteFile(path, b.Bytes(), 0o644)
}

// podIP is the address the lab gives pod i of f: .1 is the bridge.
func podIP(f *lab.File, name string) string {
	for i, p := range f.Pods {
		if p.Name == name {
			return f.PodIP(i).String()
		}
	}
	return ""
}

// proc is a process the bench started and must stop.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// startProc starts argv with its output in logPath, in its own process
// group, so a Ctrl-C at the terminal reaches the bench, which stops it in
// order, rather than killing it under the bench's feet.
func startProc(name, logPath string, argv ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, then SIGKILL after timeout, and waits.
func (p *proc) stop(timeout time.Duration) {
	if !p.alive() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// procRecord lets a later run stop processes a killed bench left behind,
// by pid, and only if the pid still names the same process (start time).
type procRecord struct {
	Name      string `json:"name"`
	PID       int    `json:"pid"`
	StartTime string `json:"start_time"`
}

func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22, starttime
}

func saveProcs(path string, ps []*proc) {
	var recs []procRecord
	for _, p := range ps {
		recs = append(recs, procRecord{p.name, p.pid(), procStartTime(p.pid())})
	}
	b, _ := json.Marshal(recs)
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	_ = os.WriteFile(path, b, 0o644)
}

// reapStale kills the processes a previous bench recorded and that still
// run (same pid and start time), then forgets them.
func reapStale(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var recs []procRecord
	_ = json.Unmarshal(b, &recs)
	for _, r := range recs {
		if r.PID > 0 && r.StartTime != "" && procStartTime(r.PID) == r.StartTime {
			say("stopping %s (pid %d) left by an earlier bench", r.Name, r.PID)
			_ = syscall.Kill(r.PID, syscall.SIGTERM)
			for i := 0; i < 50 && procStartTime(r.PID) == r.StartTime; i++ {
				time.Sleep(100 * time.Millisecond)
			}
			if procStartTime(r.PID) == r.StartTime {
				_ = syscall.Kill(r.PID, syscall.SIGKILL)
			}
		}
	}
	_ = os.Remove(path)
}

// freeLoopbackPort returns a port free on 127.0.0.1 right now.
func freeLoopbackPort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times.
func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func say(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
}
