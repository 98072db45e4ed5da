package data

import (
	"strings"
)

// Script is steps as a POSIX shell script, for a container that has the
// PostgreSQL programs (a cluster's Job runs the baseline's own image): it
// runs in dir, says each step on stderr (what `kubectl logs` shows), stops
// at the first failure, and writes the report step's output to reportTo
// (the container's termination message, which the controller reads). Every
// word is single-quoted: nothing in a step is expanded by the shell.
func Script(steps []Step, dir, reportTo string) string {
	var b strings.Builder
	b.WriteString("set -eu\ncd " + shellQuote(dir) + "\n")
	for _, s := range steps {
		b.WriteString("echo " + shellQuote("detour: "+s.What) + " >&2\n")
		for i, a := range s.Argv {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(shellQuote(a))
		}
		if s.Stdin != "" {
			b.WriteString(" <" + shellQuote(s.Stdin))
		}
		if s.Report && reportTo != "" {
			b.WriteString(" >" + shellQuote(reportTo))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// shellQuote quotes s for sh: inside single quotes nothing is special but
// the single quote itself, which ends the quoted part, is escaped with a
// backslash and starts a new one.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
