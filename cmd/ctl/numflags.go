package main

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/pflag"
)

// Numeric flags check their range when they are parsed, so that a bad value
// is refused with the range it missed: cobra names the flag and the value
// (`invalid argument "70000" for "--port" flag`) and the flag's Set says
// what it wants. A check after parsing could no longer tell a flag left out
// from one given as 0.

// portVar defines a TCP port flag, 1-65535; 0 means not given.
func portVar(fs *pflag.FlagSet, p *uint32, name, usage string) {
	fs.Var(&uintFlag{p: p, min: 1, max: 65535}, name, usage)
}

// int64Var defines a whole-number flag of at least min, unbounded above.
func int64Var(fs *pflag.FlagSet, p *int64, name string, min int64, usage string) {
	fs.Var(&intFlag{p: p, min: min}, name, usage)
}

// durationVar defines a duration flag of at least min (above it, when
// above is set) with the default def.
func durationVar(fs *pflag.FlagSet, p *time.Duration, name string, def, min time.Duration, above bool, usage string) {
	*p = def
	fs.Var(&durationFlag{p: p, min: min, above: above}, name, usage)
}

type uintFlag struct {
	p        *uint32
	min, max uint32
}

func (f *uintFlag) Type() string   { return "uint" }
func (f *uintFlag) String() string { return strconv.FormatUint(uint64(*f.p), 10) }

func (f *uintFlag) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return fmt.Errorf("not a whole number: want %d-%d", f.min, f.max)
	}
	if err != nil || n < uint64(f.min) || n > uint64(f.max) {
		return fmt.Errorf("out of range: want %d-%d", f.min, f.max)
	}
	*f.p = uint32(n)
	return nil
}

type intFlag struct {
	p   *int64
	min int64
}

func (f *intFlag) Type() string   { return "int" }
func (f *intFlag) String() string { return strconv.FormatInt(*f.p, 10) }

func (f *intFlag) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return fmt.Errorf("not a whole number: want %d or more", f.min)
	}
	if err != nil || n < f.min {
		return fmt.Errorf("out of range: want %d or more", f.min)
	}
	*f.p = n
	return nil
}

type durationFlag struct {
	p     *time.Duration
	min   time.Duration
	above bool // min itself is out of range
}

func (f *durationFlag) Type() string { return "duration" }

func (f *durationFlag) String() string {
	if *f.p == 0 {
		return "0" // pflag shows no default for "0"
	}
	return f.p.String()
}

func (f *durationFlag) want() string {
	if f.above {
		return fmt.Sprintf("want a duration above %v, like 90s, 5m or 2h", f.min)
	}
	return fmt.Sprintf("want a duration of %v or more, like 90s, 5m or 2h", f.min)
}

func (f *durationFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration: %s", f.want())
	}
	if d < f.min || f.above && d == f.min {
		return fmt.Errorf("out of range: %s", f.want())
	}
	*f.p = d
	return nil
}
