package envtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// process is one child (etcd or kube-apiserver) with its output in a file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's error, valid once done is closed
}

func startProcess(name, bin, logPath string, args []string) (*process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Die with the test binary, even when it is killed: no etcd or
		// apiserver outlives a test run.
		Pdeathsig: syscall.SIGKILL,
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	// Pdeathsig fires when the OS thread that forked the child ends, not
	// the process, and Go ends a thread when a goroutine exits locked to it
	// (what a netns test helper does on purpose). So fork from a goroutine
	// that holds its thread until the child has exited.
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, again after grace (the API server sometimes ignores
// the first one: a second makes it exit at once), then SIGKILL after kill.
func (p *process) stop(grace, kill time.Duration) error {
	if p == nil {
		return nil
	}
	signals := []struct {
		sig   os.Signal
		after time.Duration
	}{{syscall.SIGTERM, grace}, {syscall.SIGTERM, kill}, {syscall.SIGKILL, 10 * time.Second}}
	for _, s := range signals {
		if p.exited() {
			return nil
		}
		if err := p.cmd.Process.Signal(s.sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signal %s: %w", p.name, err)
		}
		select {
		case <-p.done:
			return nil
		case <-time.After(s.after):
		}
	}
	return fmt.Errorf("%s (pid %d) still running after SIGKILL", p.name, p.cmd.Process.Pid)
}

// tail returns the last n lines of the process's log, for error messages.
func (p *process) tail(n int) string {
	return tailFile(p.logPath, n)
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- last lines of %s ---\n%s", filepath.Base(path), bytes.Join(lines, []byte("\n")))
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. They are free
// when returned, not reserved: a process may take one first, which startup
// catches and retries.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// advertiseAddress picks the address the API server writes into the
// kubernetes Service's endpoints. A loopback one is rejected by the
// endpoints validation and logged as an error every 10 s, so it takes the
// node's: an IPv4 of the default route's interface, else of the first
// interface that is up. The server only records it: nothing in the harness
// connects to it (clients use 127.0.0.1).
func advertiseAddress() net.IP {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	if name := defaultRouteInterface(); name != "" {
		for _, ifc := range ifaces {
			if ifc.Name == name {
				if ip := firstIPv4(ifc); ip != nil {
					return ip
				}
			}
		}
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp != 0 && ifc.Flags&net.FlagLoopback == 0 {
			if ip := firstIPv4(ifc); ip != nil {
				return ip
			}
		}
	}
	return nil
}

func firstIPv4(ifc net.Interface) net.IP {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
			return ipn.IP.To4()
		}
	}
	return nil
}

// defaultRouteInterface reads /proc/net/route for the IPv4 default route.
func defaultRouteInterface() string {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// Iface Destination Gateway Flags ... Mask ...
		f := strings.Fields(line)
		if len(f) >= 8 && f[1] == "00000000" && f[7] == "00000000" {
			return f[0]
		}
	}
	return ""
}
