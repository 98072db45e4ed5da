package kubeauth

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestTokenFileRereads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	f := TokenFile(path)
	if _, err := f.GetRequestMetadata(context.Background()); err == nil {
		t.Fatal("no error for a missing file")
	}
	for _, tok := range []string{"first", "second"} {
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		md, err := f.GetRequestMetadata(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got := md["authorization"]; got != "Bearer "+tok {
			t.Fatalf("authorization %q, want Bearer %s", got, tok)
		}
	}
	if err := os.WriteFile(path, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.GetRequestMetadata(context.Background()); err == nil {
		t.Fatal("no error for an empty token")
	}
	if !f.RequireTransportSecurity() || !Token("x").RequireTransportSecurity() {
		t.Fatal("a token may be sent in clear text")
	}
}

// What the client sends is what the server parses.
func TestTokenRoundTrip(t *testing.T) {
	md, err := Token("abc").GetRequestMetadata(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := parseBearer(md["authorization"]); err != nil || got != "abc" {
		t.Fatalf("parseBearer: %q %v", got, err)
	}
}
