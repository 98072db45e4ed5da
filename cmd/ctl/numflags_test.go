package main

import (
	"strings"
	"testing"
)

// Every numeric flag of every command refuses a bad value by naming it and
// the range it missed, before any controller or cluster is contacted.
func TestNumericFlagsNameValueAndRange(t *testing.T) {
	const nowhere = "--controller=127.0.0.1:1"
	create := []string{"intercept", "create", "alice", nowhere, "--service", "default/api", "--session", "a", "--to", "a:1"}
	envCreate := []string{"env", "create", "pr-1", nowhere, "--fork", "api"}
	tests := []struct {
		name   string
		args   []string
		flag   string
		values []string
		want   string
	}{
		{"intercept create", create, "--port", []string{"70000", "0", "-1", "x", "4294967296"}, "1-65535"},
		{"intercept create", append(create, "--port", "80"), "--ttl", []string{"-1m", "soon"}, "0s or more"},
		{"intercept create", append(create, "--port", "80"), "--wait", []string{"-1s", "later"}, "0s or more"},
		{"intercept renew", []string{"intercept", "renew", "a", nowhere}, "--ttl", []string{"-5s", "5"}, "0s or more"},
		{"install", []string{"install", "--dry-run"}, "--timeout", []string{"0", "-1m", "x"}, "above 0s"},
		{"uninstall", []string{"uninstall", "--dry-run"}, "--timeout", []string{"0s", "-1m"}, "above 0s"},
		{"env create", envCreate, "--ttl", []string{"-1h"}, "0s or more"},
		{"env create", envCreate, "--wait", []string{"-1s"}, "0s or more"},
		{"env create", envCreate, "--source-pr", []string{"0", "-7", "seven"}, "1 or more"},
		{"env delete", []string{"env", "delete", "pr-1", nowhere}, "--wait", []string{"-1s"}, "0s or more"},
		{"env renew", []string{"env", "renew", "pr-1", nowhere}, "--ttl", []string{"-1h"}, "0s or more"},
		{"env open", []string{"env", "open", "pr-1", nowhere, "--service", "web"}, "--port", []string{"70000", "0", "x"}, "1-65535"},
	}
	for _, tt := range tests {
		for _, v := range tt.values {
			t.Run(tt.name+" "+tt.flag+"="+v, func(t *testing.T) {
				args := append(append([]string(nil), tt.args...), tt.flag, v)
				_, msg, code := runCLI(t, args...)
				if code != exitUsage || !strings.Contains(msg, `"`+v+`"`) || !strings.Contains(msg, tt.flag) || !strings.Contains(msg, tt.want) {
					t.Fatalf("exit %d %q, want %d and a message naming %s, %q and the range (%q)", code, msg, exitUsage, tt.flag, v, tt.want)
				}
			})
		}
	}
}

// A port flag left out is still reported as required, not as out of range.
func TestPortRequired(t *testing.T) {
	_, msg, code := runCLI(t, "intercept", "create", "alice", "--controller=127.0.0.1:1",
		"--service", "default/api", "--session", "a", "--to", "a:1")
	if code != exitUsage || !strings.Contains(msg, "--port is required") {
		t.Fatalf("exit %d %q, want %d and --port is required", code, msg, exitUsage)
	}
}
