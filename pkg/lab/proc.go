package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procStat is the part of /proc/<pid>/stat the lab needs.
type procStat struct {
	state     byte
	pgrp      int
	startTime uint64
}

func readProc(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(string(b))
}

// parseProcStat parses /proc/<pid>/stat. The command name (field 2) may hold
// spaces and parentheses, so fields are counted from the last ')'.
func parseProcStat(s string) (procStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), f[2] field 5 (pgrp), f[19] field 22 (starttime).
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	pgrp, err := strconv.Atoi(f[2])
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat pgrp: %w", err)
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat starttime: %w", err)
	}
	return procStat{state: f[0][0], pgrp: pgrp, startTime: st}, nil
}

// groupLive counts the live (non-zombie) processes in a process group.
// kill(-pgid, 0) cannot tell: it succeeds on zombies, and a zombie whose
// parent never reaps it (an init that does not, in a container) would look
// alive forever.
func groupLive(pgid int) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ps, err := readProc(pid)
		if err != nil || ps.pgrp != pgid || ps.state == 'Z' || ps.state == 'X' {
			continue
		}
		n++
	}
	return n
}

// stopGroup ends the process group a pod's command leads: SIGTERM, then
// SIGKILL if it is still alive after timeout. It acts only if the recorded
// leader is still the process Up started (same start time) or is gone while
// members of its group remain: the kernel does not hand out a PID that is
// still some group's ID, so those members are ours.
func stopGroup(ctx context.Context, pid int, startTime uint64, timeout time.Duration) (stopped bool, err error) {
	if ps, err := readProc(pid); err == nil && ps.startTime != startTime {
		return false, nil // PID recycled: our process and its group are long gone
	}
	if groupLive(pid) == 0 {
		return false, nil
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return false, fmt.Errorf("signal process group %d: %w", pid, err)
		}
		if waitFor(ctx, timeout, func() bool { return groupLive(pid) == 0 }) {
			return true, nil
		}
	}
	return false, fmt.Errorf("process group %d still alive after SIGKILL", pid)
}

// waitFor polls cond until it holds, the timeout passes or ctx ends.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return cond()
		case <-tick.C:
		}
	}
}

// startPod runs the pod's command under `ip netns exec`, which also
// bind-mounts /etc/netns/<pod>/hosts over /etc/hosts in a private mount
// namespace: that is how lab names resolve inside the pod. The command leads
// its own session, so it outlives `detour lab up` and Down can end it and
// all it forked with one signal to the group.
func startPod(f *File, i int, pl *plan, st *State, opts Options) error {
	return startProcess(st, &st.Pods[i], pl.ip, pl.argv[i], podEnv(os.Environ(), pl.path, st.Node, &st.Pods[i]), opts)
}

// startProcess runs argv in pod ps's namespace with env, logging to
// logs/<pod>.log, and records its pid.
func startProcess(st *State, ps *PodState, ip string, argv, env []string, opts Options) error {
	logDir := filepath.Join(opts.StateDir, LogDir)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	logPath := filepath.Join(logDir, ps.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	ps.Log = logPath

	cmd := exec.Command(ip, append([]string{"netns", "exec", ps.Name}, argv...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", strings.Join(ps.Command, " "), err)
	}
	pid := cmd.Process.Pid
	// Reap it if it exits while this process lives (tests, a long-running
	// caller); once this process exits, init adopts it.
	go func() { _ = cmd.Wait() }()
	ps.PID = pid
	if pst, err := readProc(pid); err == nil {
		ps.StartTime = pst.startTime
	}
	if err := st.save(); err != nil {
		return err
	}
	opts.say("pod %s: started pid %d: %s (log %s)", ps.Name, pid, strings.Join(ps.Command, " "), logPath)
	return nil
}

// podEnv is the caller's environment with PATH widened by PathPrepend and
// the pod's identity added, as the downward API would give it, then the
// pod's own Env.
func podEnv(base []string, path, node string, p *PodState) []string {
	env := make([]string, 0, len(base)+5+len(p.Env))
	own := map[string]bool{}
	for _, kv := range p.Env {
		k, _, _ := strings.Cut(kv, "=")
		own[k] = true
	}
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH", "DETOUR_POD_NAME", "DETOUR_POD_NAMESPACE", "DETOUR_POD_IP", "DETOUR_NODE_NAME":
			continue
		}
		if own[k] {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"PATH="+path,
		"DETOUR_POD_NAME="+p.Name,
		"DETOUR_POD_NAMESPACE="+p.Namespace,
		"DETOUR_POD_IP="+p.IP,
		"DETOUR_NODE_NAME="+node,
	)
	return append(env, p.Env...)
}
