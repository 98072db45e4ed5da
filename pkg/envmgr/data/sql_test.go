package data

import (
	"strings"
	"testing"
)

func TestParseTable(t *testing.T) {
	for _, tc := range []struct {
		in, want, quoted string
	}{
		{"orders", "public.orders", `"public"."orders"`},
		{"sales.orders", "sales.orders", `"sales"."orders"`},
		{"_t$1", "public._t$1", `"public"."_t$1"`},
	} {
		got, err := ParseTable(tc.in)
		if err != nil || got.String() != tc.want || got.Quoted() != tc.quoted {
			t.Errorf("ParseTable(%q) = %v %q, %v", tc.in, got, got.Quoted(), err)
		}
	}
	// Refused, never quoted into SQL: what would change the statement,
	// and what a quote would make mean another table.
	for _, in := range []string{
		"", "Orders", `orders"`, `orders"; drop table users; --`, "a.b.c", "1orders", "orders ", "or-ders",
		"public.", ".orders", "orders;", "pg_catalog.pg_authid'", strings.Repeat("a", 64),
	} {
		if _, err := ParseTable(in); err == nil {
			t.Errorf("ParseTable(%q) accepted", in)
		}
	}
}

func TestCheckWhere(t *testing.T) {
	for _, ok := range []string{
		"created_at > now() - interval '7 days'",
		"id % 10 = 0",
		"email like '%@example.com' and (a or b)",
		`"Weird Column" = 'it''s'`,
		"note = 'a; b -- c /* d */ ) ('", // all of it inside a string
		"customer_id IN (SELECT id FROM customers WHERE region = 'eu')",
		"x::date = current_date",
	} {
		if err := CheckWhere(ok); err != nil {
			t.Errorf("CheckWhere(%q): %v", ok, err)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "empty"},
		{"true; delete from orders", "';'"},
		{"true) to stdout; copy (select 1", "closes a parenthesis"},
		{"true) union select * from secrets where (true", "closes a parenthesis"},
		{"true -- and the rest", "comment"},
		{"true /* x */", "comment"},
		{`a = E'\''`, "backslash"},
		{`true \! rm -rf /`, "backslash"},
		{"a = $$x$$", "'$'"},
		{"a = $1", "'$'"},
		{"a = 'open", "unterminated ' quote"},
		{`"open = 1`, `unterminated " quote`},
		{"(a = 1", "unclosed"},
		{"a = 1\nb", "control character"},
		{strings.Repeat("x", 4097), "longer than 4096"},
	} {
		if err := CheckWhere(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckWhere(%q): %v, want an error with %q", tc.in, err, tc.want)
		}
	}
}

func FuzzCheckWhere(f *testing.F) {
	for _, s := range []string{"a = 'x'", "(a)", "a) or (b", "'';", `"x"""`} {
		f.Add(s)
	}
	// Whatever CheckWhere accepts, wrapped as BranchPlan wraps it, leaves
	// the statement's parentheses balanced outside quotes and adds no
	// statement: the condition cannot reach out of its WHERE.
	f.Fuzz(func(t *testing.T, w string) {
		if CheckWhere(w) != nil {
			return
		}
		stmt := "SELECT * FROM t WHERE (" + w + ")"
		depth, quote, closedAt := 0, byte(0), -1
		for i := 0; i < len(stmt); i++ {
			c := stmt[i]
			switch {
			case quote != 0:
				if c == quote {
					quote = 0
				}
			case c == '\'' || c == '"':
				quote = c
			case c == ';':
				t.Fatalf("accepted %q: a ';' outside quotes", w)
			case c == '(':
				depth++
			case c == ')':
				depth--
				if depth == 0 {
					closedAt = i
				}
			}
		}
		if depth != 0 || closedAt != len(stmt)-1 {
			t.Fatalf("accepted %q: the WHERE's parenthesis closes at %d of %d", w, closedAt, len(stmt))
		}
	})
}
