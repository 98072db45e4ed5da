package data

import (
	"strconv"
	"strings"
)

// Script is steps as a POSIX shell script, for a container that has the
// PostgreSQL programs (a cluster's Job runs the baseline's own image): it
// runs in dir, says each step on stderr (what `kubectl logs` shows), stops
// at the first failure, and writes the report step's output to reportTo
// (the container's termination message, which the controller reads).
// Steps against the branch first wait until it accepts connections. Every
// word is single-quoted: nothing in a step is expanded by the shell.
func Script(steps []Step, dir, reportTo string) string {
	var b strings.Builder
	b.WriteString("set -eu\ncd " + shellQuote(dir) + "\n")
	if len(steps) > 0 {
		// The side's PG* variables name the server the steps use.
		if steps[0].Side == Branch {
			b.WriteString(waitFor(300, "the branch does not accept connections after 5 minutes"))
		} else {
			b.WriteString(waitFor(60, "the baseline's database does not accept connections after a minute"))
		}
	}
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

// waitFor waits, up to secs seconds, until the database the container's
// PG* variables name accepts connections, else ends the container with
// why: a branch that was just started may still be initialising its data
// directory, and a baseline's Service refuses connections for a moment
// after its pod turns ready, until kube-proxy has its endpoint.
func waitFor(secs int, why string) string {
	return `i=0
until pg_isready --quiet --timeout=2; do
  i=$((i+1))
  if [ "$i" -ge ` + strconv.Itoa(secs) + ` ]; then echo ` + shellQuote("detour: "+why) + ` >&2; exit 1; fi
  sleep 1
done
`
}

// shellQuote quotes s for sh: inside single quotes nothing is special but
// the single quote itself, which ends the quoted part, is escaped with a
// backslash and starts a new one.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
