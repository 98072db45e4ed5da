package data

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// identifier is what a table, schema, user or database name may be here:
// a lower-case SQL identifier that needs no quoting (PostgreSQL folds
// unquoted names to lower case, so this is also how they are usually
// written). Anything else is refused rather than quoted, so that no name
// from a spec can change the SQL around it.
var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_$]{0,62}$`)

// Table is a table of the baseline, by schema and name.
type Table struct{ Schema, Name string }

// ParseTable reads [SCHEMA.]TABLE; the schema defaults to public.
func ParseTable(s string) (Table, error) {
	schema, name, ok := strings.Cut(s, ".")
	if !ok {
		schema, name = "public", s
	}
	if !identifier.MatchString(schema) || !identifier.MatchString(name) {
		return Table{}, fmt.Errorf("table %q: want [SCHEMA.]TABLE, lower-case SQL identifiers (letters, digits, _ and $, not first a digit)", s)
	}
	return Table{Schema: schema, Name: name}, nil
}

// Quoted is the table as SQL names it, each part quoted.
func (t Table) Quoted() string { return QuoteIdent(t.Schema) + "." + QuoteIdent(t.Name) }

// Pattern is the table as pg_dump's --table patterns name it.
func (t Table) Pattern() string { return t.Schema + "." + t.Name }

func (t Table) String() string { return t.Schema + "." + t.Name }

// CheckIdent refuses a name that is not a plain identifier.
func CheckIdent(what, s string) error {
	if !identifier.MatchString(s) {
		return fmt.Errorf("%s %q: want a lower-case SQL identifier (letters, digits, _ and $, not first a digit, at most 63)", what, s)
	}
	return nil
}

// QuoteIdent quotes an identifier for SQL. Every name that reaches SQL here
// has passed CheckIdent or ParseTable too: quoting is the second guard,
// not the first.
func QuoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// CheckWhere refuses a row filter that is not one SQL condition: it must not
// end the statement it is put in (a ';', or a ')' that closes a parenthesis
// it did not open), hide anything in a comment, or use what psql or the
// server would read as something else than SQL text (backslashes, dollar
// quoting, positional parameters, control characters). String literals and
// quoted identifiers may hold anything but a backslash. The filter runs
// only in a read-only transaction of the baseline: this check keeps the
// statement around it whole, the transaction keeps the baseline unchanged
// whatever the condition does.
func CheckWhere(w string) error {
	if strings.TrimSpace(w) == "" {
		return errors.New("empty condition")
	}
	if len(w) > 4096 {
		return errors.New("condition longer than 4096 bytes")
	}
	depth := 0
	var quote byte // ' or ", while inside one
	for i := 0; i < len(w); i++ {
		c := w[i]
		switch {
		case c == '\\':
			return fmt.Errorf("backslash at byte %d: not allowed (write E'' strings without escapes)", i)
		case c < 0x20 && c != '\t' || c == 0x7f:
			return fmt.Errorf("control character at byte %d", i)
		case quote != 0:
			if c == quote {
				if i+1 < len(w) && w[i+1] == quote { // '' or "" inside
					i++
					continue
				}
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == ';':
			return fmt.Errorf("';' at byte %d: one condition, not statements", i)
		case c == '-' && i+1 < len(w) && w[i+1] == '-', c == '/' && i+1 < len(w) && w[i+1] == '*':
			return fmt.Errorf("comment at byte %d: not allowed", i)
		case c == '$':
			return fmt.Errorf("'$' at byte %d: dollar quoting and parameters are not allowed", i)
		case c == '(':
			depth++
		case c == ')':
			depth--
			if depth < 0 {
				return fmt.Errorf("')' at byte %d closes a parenthesis the condition did not open", i)
			}
		}
	}
	switch {
	case quote != 0:
		return fmt.Errorf("unterminated %c quote", quote)
	case depth != 0:
		return fmt.Errorf("%d unclosed parentheses", depth)
	}
	return nil
}
