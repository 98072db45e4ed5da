package echo

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// NotesTable is the table GET and POST /notes read and write: an app that
// talks to its database, for the tests and the demo of environment data
// (a fork's writes land in its branch, not the baseline's database).
//
//	CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)
const NotesTable = "notes"

// notes answers GET /notes with every row of the notes table, one per
// line ("ID<TAB>BODY", by id), and POST /notes by inserting the request's
// body as a row and answering "ID". Each request opens its own connection
// to Options.Database, so a database that changes under the server (a
// branch) is never reached through a stale one.
func (h *handler) notes(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if h.opts.Database == "" {
		http.Error(w, h.name+": no database (--database, or $DATABASE_URL)", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, h.opts.Database)
	if err != nil {
		http.Error(w, h.name+": connect to the database: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if r.Method == http.MethodPost {
		var id int64
		if err := conn.QueryRow(ctx, "INSERT INTO notes (body) VALUES ($1) RETURNING id", string(body)).Scan(&id); err != nil {
			http.Error(w, h.name+": insert: "+err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%d\n", id)
		return
	}
	rows, err := conn.Query(ctx, "SELECT id, body FROM notes ORDER BY id")
	if err != nil {
		http.Error(w, h.name+": select: "+err.Error(), http.StatusInternalServerError)
		return
	}
	var b strings.Builder
	for rows.Next() {
		var id int64
		var s string
		if err := rows.Scan(&id, &s); err != nil {
			http.Error(w, h.name+": read: "+err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(&b, "%d\t%s\n", id, s)
	}
	if err := rows.Err(); err != nil {
		http.Error(w, h.name+": read: "+err.Error(), http.StatusInternalServerError)
		return
	}
	io.WriteString(w, b.String())
}
