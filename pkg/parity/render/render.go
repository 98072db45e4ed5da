// Package render writes a parity report for people and programs: a table
// grouped by object, the JSON of docs/parity.md, or markdown for a pull
// request comment. It prints what the report holds and nothing else, so a
// Secret value, which a report never holds, cannot reach any format.
package render

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/detourdev/detour/pkg/parity"
)

// Formats.
const (
	Table    = "table"
	JSON     = "json"
	Markdown = "markdown"
)

// Formats lists the formats -o takes.
var Formats = []string{Table, JSON, Markdown}

// Write writes r in format.
func Write(w io.Writer, format string, r *parity.Report) error {
	switch format {
	case Table:
		return WriteTable(w, r)
	case JSON:
		return WriteJSON(w, r)
	case Markdown, "md":
		return WriteMarkdown(w, r)
	}
	return fmt.Errorf("unknown format %q (want %s)", format, strings.Join(Formats, ", "))
}

// WriteJSON writes the report's JSON, indented, keys in a fixed order.
func WriteJSON(w io.Writer, r *parity.Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// none is an absent value in the table and markdown.
const none = "(none)"

// maxValue bounds a value in the table: a whole ConfigMap file does not
// belong in a column; -o json has it whole.
const maxValue = 48

func value(v *string, max int) string {
	if v == nil {
		return none
	}
	s := printable(*v)
	if s == "" {
		return `""`
	}
	if utf8.RuneCountInString(s) > max {
		r := []rune(s)
		s = string(r[:max-1]) + "…"
	}
	return s
}

// printable writes control characters as escapes: a value must not move
// the terminal's cursor or break a table row.
func printable(v string) string {
	var b strings.Builder
	for _, r := range v {
		switch {
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func field(d *parity.Difference) string {
	if d.Path == "" {
		return "(object)"
	}
	return d.Path
}

// WriteTable writes the differences grouped by object, one row per
// field with its left and right values, then a summary line. Ignored
// differences are counted, not listed.
func WriteTable(w io.Writer, r *parity.Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "LEFT   %s\n", sideLine(r.Left))
	fmt.Fprintf(&b, "RIGHT  %s\n\n", sideLine(r.Right))
	type row struct {
		group bool
		cells [6]string
	}
	rows := []row{{cells: [6]string{"OBJECT / FIELD", "LEFT", "RIGHT", "CATEGORY", "SEVERITY", "NOTE"}}}
	last := ""
	for i := range r.Differences {
		d := &r.Differences[i]
		if d.Ignored {
			continue
		}
		obj := objectName(d)
		if obj != last {
			rows = append(rows, row{group: true, cells: [6]string{obj}})
			last = obj
		}
		note := ""
		if d.Expected {
			note = "expected: " + d.Reason
		}
		rows = append(rows, row{cells: [6]string{"  " + field(d), value(d.Left, maxValue), value(d.Right, maxValue),
			string(d.Category), string(d.Severity), note}})
	}
	if len(rows) == 1 {
		b.WriteString("No differences.\n")
	} else {
		var width [6]int
		for _, rw := range rows {
			if rw.group {
				continue
			}
			for c, s := range rw.cells {
				width[c] = max(width[c], utf8.RuneCountInString(s))
			}
		}
		for _, rw := range rows {
			if rw.group {
				b.WriteString(rw.cells[0] + "\n")
				continue
			}
			line := ""
			for c, s := range rw.cells {
				if c < 5 {
					s += strings.Repeat(" ", width[c]-utf8.RuneCountInString(s)+2)
				}
				line += s
			}
			b.WriteString(strings.TrimRight(line, " ") + "\n")
		}
	}
	b.WriteString("\n" + SummaryLine(r) + "\n")
	for _, n := range r.Notes {
		b.WriteString("note: " + n + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func objectName(d *parity.Difference) string {
	if d.RightName != "" {
		return d.Object() + " (right: " + d.RightName + ")"
	}
	return d.Object()
}

func sideLine(s parity.SideInfo) string {
	ns := s.Namespace
	if ns == "" {
		ns = "none"
	}
	return fmt.Sprintf("%s (namespace %s, %d objects)", s.Source, ns, s.Objects)
}

// SummaryLine says in one line what the report found and whether it fails.
func SummaryLine(r *parity.Report) string {
	s := r.Summary
	line := fmt.Sprintf("%d %s: %d unexpected%s, %d expected, %d ignored", s.Total, plural(s.Total, "difference"),
		s.Unexpected, bySeverity(s), s.Expected, s.Ignored)
	if r.FailOn == parity.SeverityNone {
		return line + " (--fail-on none: nothing fails)"
	}
	if s.Failing > 0 {
		return line + fmt.Sprintf("; DRIFT: %d at or above %s", s.Failing, r.FailOn)
	}
	return line + fmt.Sprintf("; pass: none at or above %s", r.FailOn)
}

func bySeverity(s parity.Summary) string {
	var parts []string
	for _, sev := range []parity.Severity{parity.SeverityHigh, parity.SeverityMedium, parity.SeverityLow, parity.SeverityInfo} {
		if n := s.BySeverity[sev]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, sev))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func plural(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

// WriteMarkdown writes the report as a pull request comment: the verdict,
// the unexpected differences in a table, the expected and ignored ones
// folded.
func WriteMarkdown(w io.Writer, r *parity.Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "### Parity: %s ↔ %s\n\n", code(r.Left.Source), code(r.Right.Source))
	verdict := "✅ **pass**"
	if r.Drift() {
		verdict = "❌ **drift**"
	}
	fmt.Fprintf(&b, "%s: %s\n\n", verdict, SummaryLine(r))
	var unexpected, expected, ignored []*parity.Difference
	for i := range r.Differences {
		d := &r.Differences[i]
		switch {
		case d.Ignored:
			ignored = append(ignored, d)
		case d.Expected:
			expected = append(expected, d)
		default:
			unexpected = append(unexpected, d)
		}
	}
	if len(unexpected) > 0 {
		b.WriteString("| Object | Field | Left | Right | Category | Severity |\n| --- | --- | --- | --- | --- | --- |\n")
		for _, d := range unexpected {
			sev := string(d.Severity)
			if d.Failing(r.FailOn) {
				sev = "**" + sev + "**"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", cell(objectName(d)), code(field(d)),
				codeValue(d.Left), codeValue(d.Right), d.Category, sev)
		}
		b.WriteString("\n")
	}
	for _, part := range []struct {
		what string
		ds   []*parity.Difference
	}{{"expected", expected}, {"ignored", ignored}} {
		if len(part.ds) == 0 {
			continue
		}
		fmt.Fprintf(&b, "<details><summary>%d %s %s</summary>\n\n", len(part.ds), part.what, plural(len(part.ds), "difference"))
		b.WriteString("| Object | Field | Left | Right | Reason |\n| --- | --- | --- | --- | --- |\n")
		for _, d := range part.ds {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", cell(objectName(d)), code(field(d)),
				codeValue(d.Left), codeValue(d.Right), cell(d.Reason))
		}
		b.WriteString("\n</details>\n\n")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "> %s\n", cell(n))
	}
	_, err := io.WriteString(w, strings.TrimRight(b.String(), "\n")+"\n")
	return err
}

// cell makes text safe in a markdown table cell.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ", "<", "&lt;", ">", "&gt;").Replace(s)
}

// code writes s as a code span that survives a table: pipes escaped, and
// fenced with more backticks than it holds.
func code(s string) string {
	s = strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ").Replace(s)
	fence := "`"
	for strings.Contains(s, fence) {
		fence += "`"
	}
	if strings.HasPrefix(s, "`") || strings.HasSuffix(s, "`") {
		s = " " + s + " "
	}
	return fence + s + fence
}

func codeValue(v *string) string {
	if v == nil {
		return "*" + none + "*"
	}
	return code(value(v, 80))
}
