// Package bpfutil holds what every owner of BPF objects in pkg/redirect does
// the same way, and what their tests ask the kernel about programs.
package bpfutil

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/cilium/ebpf"
)

// LoadError wraps err, from loading the BPF objects named what (a bpf2go
// load function or ebpf.CollectionSpec.LoadAndAssign), with context. When
// the verifier refused a program it adds the verifier's whole log: the
// error's own message keeps only its last lines, rarely the ones that
// explain the refusal.
func LoadError(what string, err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("load %s: %w\nverifier log:\n%+v", what, err, ve)
	}
	return fmt.Errorf("load %s: %w", what, err)
}

// CloseOnce is the idempotent Close of an owner whose methods refuse work
// once *closed is set under mu: the first call sets it and runs release
// under mu, so no method is halfway through what release takes apart; later
// calls return nil.
func CloseOnce(mu *sync.Mutex, closed *bool, release func() error) error {
	mu.Lock()
	defer mu.Unlock()
	if *closed {
		return nil
	}
	*closed = true
	return release()
}

// ProgramID is the kernel's id of a loaded program, by which a test can ask
// the kernel later whether the program is still there (ProgramLoaded).
func ProgramID(p *ebpf.Program) (ebpf.ProgramID, error) {
	info, err := p.Info()
	if err != nil {
		return 0, err
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("program id not available")
	}
	return id, nil
}

// ProgramLoaded reports whether the kernel still has the program with id.
func ProgramLoaded(id ebpf.ProgramID) (bool, error) {
	p, err := ebpf.NewProgramFromID(id)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	p.Close()
	return true, nil
}
