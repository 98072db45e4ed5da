package testutil

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
)

// A certificate of Issue verifies for each of its hosts against its own CA
// and no other's; one of IssueClient only for client auth; PEMPair
// round-trips through tls.X509KeyPair.
func TestCA(t *testing.T) {
	ca, other := NewCA(t), NewCA(t)
	srv := ca.Issue(t, "svc.test", "127.0.0.1")
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, name := range []string{"svc.test", "127.0.0.1"} {
		if _, err := srv.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := srv.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.test"}); err == nil {
		t.Error("verifies for a name it was not issued for")
	}
	otherRoots := x509.NewCertPool()
	if !otherRoots.AppendCertsFromPEM(other.PEM) {
		t.Fatal("CA PEM does not parse")
	}
	if _, err := srv.Leaf.Verify(x509.VerifyOptions{Roots: otherRoots, DNSName: "svc.test"}); err == nil {
		t.Error("verifies against another CA")
	}

	cli := ca.IssueClient(t, "someone")
	if _, err := cli.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Error(err)
	}
	if _, err := cli.Leaf.Verify(x509.VerifyOptions{Roots: roots}); err == nil {
		t.Error("a client certificate verifies for server auth")
	}
	certPEM, keyPEM := PEMPair(t, cli)
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Error(err)
	}
}

func TestSyncBuffer(t *testing.T) {
	var b SyncBuffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100 {
			_, _ = b.Write([]byte("x"))
		}
	}()
	_ = b.String()
	<-done
	if got := b.String(); len(got) != 100 {
		t.Fatalf("%d bytes, want 100", len(got))
	}
	b.Reset()
	if got := b.String(); got != "" {
		t.Fatalf("after Reset: %q", got)
	}
}
