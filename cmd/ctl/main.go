// Command detour is the Detour CLI: intercepts, status, and the local lab.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Exit codes scripts can trust.
const (
	exitOK       = 0
	exitError    = 1 // the operation failed (controller unreachable, server error)
	exitUsage    = 2 // bad flags or arguments
	exitNotFound = 3 // the named object does not exist
	exitConflict = 4 // refused: already exists or overlaps another intercept
)

// exitError carries an exit code out of a command.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &codeError{code: code, err: err} }

// usageErrorf reports bad flags or arguments.
func usageErrorf(format string, a ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, a...))
}

// globals are the flags every command shares.
type globals struct {
	controller string
	output     string
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "detour",
		Short: "Detour your own requests in a shared environment to your own pod",
		Long: `detour drives Detour: create intercepts that send the requests carrying your
session key to your pod while everyone else's reach the shared service, see
their status, and run the local lab.

Exit codes: 0 ok, 1 failure, 2 bad usage, 3 not found, 4 conflict.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	def := os.Getenv("DETOUR_CONTROLLER")
	if def == "" {
		def = "127.0.0.1:7070"
	}
	root.PersistentFlags().StringVar(&g.controller, "controller", def, "controller gRPC address (env DETOUR_CONTROLLER)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withCode(exitUsage, err) })
	root.AddCommand(newInterceptCmd(g), newStatusCmd(g), newLabCmd(g))
	return root
}

func main() {
	err := newRootCmd().Execute()
	if err == nil {
		os.Exit(exitOK)
	}
	fmt.Fprintln(os.Stderr, "Error:", err)
	var ce *codeError
	if errors.As(err, &ce) {
		os.Exit(ce.code)
	}
	// cobra's own argument errors (unknown command, wrong arg count).
	os.Exit(exitError)
}
