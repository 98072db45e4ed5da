package render

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/manifest"
	"github.com/detourdev/detour/pkg/parity/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func side(t *testing.T, dir, source string) *parity.Snapshot {
	t.Helper()
	objs, err := manifest.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := parity.NewFingerprinter([]byte("render-test-key-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := parity.Normalize(objs, parity.Options{Source: source, Fingerprint: fp})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// examplesReport is the report of the examples the README shows.
func examplesReport(t *testing.T) *parity.Report {
	t.Helper()
	pol, err := policy.Load("../../../examples/parity/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := parity.Diff(side(t, "../../../examples/parity/staging", "examples/parity/staging"),
		side(t, "../../../examples/parity/production", "examples/parity/production"), parity.DiffOptions{Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func driftReport(t *testing.T) *parity.Report {
	t.Helper()
	r, err := parity.Diff(side(t, "../testdata/drift/left", "left"), side(t, "../testdata/drift/right", "right"), parity.DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it); got:\n%s", file, got)
	}
}

// The three formats, as golden files.
func TestFormats(t *testing.T) {
	for _, r := range []struct {
		name string
		rep  *parity.Report
	}{{"examples", examplesReport(t)}, {"drift", driftReport(t)}} {
		for _, f := range []struct{ format, ext string }{{Table, "txt"}, {JSON, "json"}, {Markdown, "md"}} {
			var b bytes.Buffer
			if err := Write(&b, f.format, r.rep); err != nil {
				t.Fatal(err)
			}
			golden(t, r.name+"."+f.ext, b.Bytes())
		}
	}
	if err := Write(&bytes.Buffer{}, "xml", examplesReport(t)); err == nil {
		t.Error("format xml was taken")
	}
}

// The JSON is the report: it decodes back to the same report, so the
// schema in docs/parity.md is the Go types'.
func TestJSONRoundTrip(t *testing.T) {
	r := examplesReport(t)
	var b bytes.Buffer
	if err := WriteJSON(&b, r); err != nil {
		t.Fatal(err)
	}
	var back parity.Report
	dec := json.NewDecoder(&b)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := WriteJSON(&again, &back); err != nil {
		t.Fatal(err)
	}
	var first bytes.Buffer
	if err := WriteJSON(&first, r); err != nil {
		t.Fatal(err)
	}
	if back.APIVersion != parity.ReportAPIVersion || !bytes.Equal(again.Bytes(), first.Bytes()) {
		t.Errorf("round trip changed the report:\n%s", again.String())
	}
}

func TestNoDifferences(t *testing.T) {
	s := side(t, "../../../examples/parity/staging", "a")
	r, err := parity.Diff(s, s, parity.DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "No differences.") || !strings.Contains(b.String(), "0 differences: 0 unexpected, 0 expected, 0 ignored; pass: none at or above low") {
		t.Errorf("table:\n%s", b.String())
	}
	b.Reset()
	if err := WriteMarkdown(&b, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "✅ **pass**") || strings.Contains(b.String(), "| Object |") {
		t.Errorf("markdown:\n%s", b.String())
	}
}

// The values planted in the fixtures' Secrets appear in no format, in
// clear or in base64.
func TestNoSecretValueInAnyFormat(t *testing.T) {
	planted := []string{"planted-LEFT-db-password", "planted-RIGHT-db-password", "planted-RIGHT-api-token",
		"planted-LEFT-tls-cert", "planted-LEFT-tls-key", "staging-not-a-real-password", "production-not-a-real-password",
		"whsec-staging-example", "key-production-example"}
	for _, r := range []*parity.Report{driftReport(t), examplesReport(t)} {
		for _, f := range Formats {
			var b bytes.Buffer
			if err := Write(&b, f, r); err != nil {
				t.Fatal(err)
			}
			for _, p := range planted {
				if strings.Contains(b.String(), p) || strings.Contains(b.String(), base64.StdEncoding.EncodeToString([]byte(p))) {
					t.Errorf("%s output holds %q", f, p)
				}
			}
			if strings.Contains(b.String(), "hmac:") {
				t.Errorf("%s output holds a fingerprint", f)
			}
		}
	}
}

func TestMarkdownCells(t *testing.T) {
	for in, want := range map[string]string{
		"a|b":    "`a\\|b`",
		"x`y":    "``x`y``",
		"`edge`": "`` `edge` ``",
	} {
		if got := code(in); got != want {
			t.Errorf("code(%q) = %s, want %s", in, got, want)
		}
	}
	if got := cell("<b>|\n"); got != "&lt;b&gt;\\| " {
		t.Errorf("cell: %q", got)
	}
	esc := "a\x1b[2Jb\tc\u0085"
	if got := value(&esc, maxValue); got != `a\x1b[2Jb\tc\x85` {
		t.Errorf("control characters: %q", got)
	}
	long := strings.Repeat("x", 100) + "\nmore"
	if got := value(&long, maxValue); len([]rune(got)) != maxValue || !strings.HasSuffix(got, "…") {
		t.Errorf("value not cut: %q", got)
	}
}
