package parity_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/detourdev/detour/pkg/parity"
)

// Every noise rule has a fixture pair in testdata/noise/RULE that differs
// only by that noise: with every rule on there is no difference, with the
// rule off there is one. So each rule is what removes its noise, and no
// rule goes untested.
func TestNoiseRules(t *testing.T) {
	seen := map[string]bool{}
	for _, rule := range parity.NoiseRules {
		if seen[rule.Name] {
			t.Errorf("rule %s is listed twice", rule.Name)
		}
		seen[rule.Name] = true
		t.Run(rule.Name, func(t *testing.T) {
			dir := filepath.Join("testdata", "noise", rule.Name)
			if _, err := os.Stat(dir); err != nil {
				t.Fatalf("rule %s has no fixture: %v", rule.Name, err)
			}
			l, r := filepath.Join(dir, "left.yaml"), filepath.Join(dir, "right.yaml")
			rep := diff(t, load(t, l), load(t, r), nil)
			for _, d := range rep.Differences {
				t.Errorf("with every rule on: %s %s %s: %v → %v", d.Object(), d.Path, d.Change, str(d.Left), str(d.Right))
			}
			off := diff(t, load(t, l, rule.Name), load(t, r, rule.Name), nil, rule.Name)
			if len(off.Differences) == 0 {
				t.Errorf("with rule %s off, the fixture shows no difference: it does not test the rule", rule.Name)
			}
		})
	}
}

func str(p *string) string {
	if p == nil {
		return "(none)"
	}
	return *p
}

func TestUnknownNoiseRule(t *testing.T) {
	if _, err := parity.Normalize(nil, parity.Options{KeepNoise: []string{"nope"}}); err == nil {
		t.Error("Normalize took an unknown rule")
	}
	if _, err := parity.Diff(&parity.Snapshot{}, &parity.Snapshot{}, parity.DiffOptions{KeepNoise: []string{"nope"}}); err == nil {
		t.Error("Diff took an unknown rule")
	}
}
