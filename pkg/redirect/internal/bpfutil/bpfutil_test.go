package bpfutil

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/detourdev/detour/internal/testutil"
)

func TestLoadErrorWraps(t *testing.T) {
	cause := errors.New("no such map")
	err := LoadError("steer objects", cause)
	if !errors.Is(err, cause) {
		t.Fatalf("%v does not wrap its cause", err)
	}
	if got, want := err.Error(), "load steer objects: no such map"; got != want {
		t.Fatalf("LoadError = %q, want %q", got, want)
	}
}

// TestPrivilegedLoadErrorVerifierLog has the verifier refuse a program that
// returns a register it never set, and checks that the whole log is shown.
func TestPrivilegedLoadErrorVerifierLog(t *testing.T) {
	testutil.RequirePrivileged(t)
	_, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Reg(asm.R0, asm.R2), asm.Return()},
	})
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		t.Fatalf("loading an invalid program: %v, want a verifier error", err)
	}
	got := LoadError("test objects", err)
	if !errors.As(got, &ve) {
		t.Fatalf("%v does not wrap the verifier error", got)
	}
	msg := got.Error()
	if !strings.HasPrefix(msg, "load test objects: ") || !strings.Contains(msg, "\nverifier log:\n") {
		t.Fatalf("LoadError = %q, want the context and a verifier log section", msg)
	}
	log := msg[strings.Index(msg, "\nverifier log:\n"):]
	for _, line := range ve.Log {
		if !strings.Contains(log, line) {
			t.Errorf("verifier log line %q missing from %q", line, log)
		}
	}
}

func TestCloseOnce(t *testing.T) {
	var (
		mu     sync.Mutex
		closed bool
		calls  int
	)
	failed := errors.New("detach failed")
	release := func() error {
		if mu.TryLock() {
			t.Error("release ran without the lock held")
			mu.Unlock()
		}
		calls++
		return failed
	}
	if err := CloseOnce(&mu, &closed, release); !errors.Is(err, failed) {
		t.Fatalf("first CloseOnce = %v, want release's error", err)
	}
	if !closed {
		t.Fatal("closed not set by the first CloseOnce")
	}
	if err := CloseOnce(&mu, &closed, release); err != nil {
		t.Fatalf("second CloseOnce = %v, want nil", err)
	}
	if calls != 1 {
		t.Fatalf("release ran %d times, want once", calls)
	}
}

// TestPrivilegedProgramLoaded follows a program by its id from load to
// unload.
func TestPrivilegedProgramLoaded(t *testing.T) {
	testutil.RequirePrivileged(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	id, err := ProgramID(prog)
	if err != nil {
		prog.Close()
		t.Fatal(err)
	}
	if ok, err := ProgramLoaded(id); err != nil || !ok {
		t.Fatalf("ProgramLoaded(%d) of a loaded program = %v, %v", id, ok, err)
	}
	prog.Close()
	// The kernel frees a program after an RCU grace period.
	testutil.Eventually(t, 10*time.Second, func() error {
		if ok, err := ProgramLoaded(id); err != nil || ok {
			return fmt.Errorf("program %d still loaded (%v)", id, err)
		}
		return nil
	})
}
