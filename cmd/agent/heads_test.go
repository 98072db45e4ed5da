package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/detourdev/detour/pkg/redirect/proxy"
)

func TestHeadFlags(t *testing.T) {
	getenv := func(string) string { return "" }
	tests := []struct {
		args     []string
		timeout  time.Duration
		maxHeads int
		wantErr  string
	}{
		{args: nil, timeout: proxy.DefaultHeadTimeout, maxHeads: proxy.DefaultMaxSlowHeads},
		{args: []string{"--head-timeout", "1m", "--max-slow-heads", "64"}, timeout: time.Minute, maxHeads: 64},
		{args: []string{"--max-slow-heads=0"}, timeout: proxy.DefaultHeadTimeout, maxHeads: 0},
		{args: []string{"--head-timeout=500ms"}, wantErr: "--head-timeout 500ms: want 1s or more"},
		{args: []string{"--max-slow-heads=-1"}, wantErr: "--max-slow-heads -1: want 0 or more"},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, getenv, io.Discard)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseFlags(%q) = %v, want an error containing %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseFlags(%q): %v", tt.args, err)
		} else if o.headTimeout != tt.timeout || o.maxSlowHeads != tt.maxHeads {
			t.Errorf("parseFlags(%q): head timeout %v, max slow heads %d; want %v, %d", tt.args, o.headTimeout, o.maxSlowHeads, tt.timeout, tt.maxHeads)
		}
	}
	var help bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, getenv, &help); err == nil {
		t.Fatal("--help: no flag.ErrHelp")
	}
	for _, want := range []string{"-head-timeout duration", "-max-slow-heads int", "(default 512)"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, help.String())
		}
	}
}
