package kubeauth

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// certNamespace makes a namespace of the test's own.
func certNamespace(t *testing.T, f *fixture, name string) string {
	t.Helper()
	if _, err := f.admin.CoreV1().Namespaces().Create(callCtx(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// published returns the CA in the ConfigMap.
func published(t *testing.T, c kubernetes.Interface, ns string) []byte {
	t.Helper()
	cm, err := c.CoreV1().ConfigMaps(ns).Get(callCtx(t), "ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return []byte(cm.Data[CACertKey])
}

// verifies checks that cert is valid for every name under caPEM.
func verifies(t *testing.T, cert *tls.Certificate, caPEM []byte, names ...string) {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: n, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Fatalf("certificate for %s: %v", n, err)
		}
	}
}

func secretData(t *testing.T, c kubernetes.Interface, ns string) map[string][]byte {
	t.Helper()
	s, err := c.CoreV1().Secrets(ns).Get(callCtx(t), "tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Type != corev1.SecretTypeTLS {
		t.Fatalf("secret type %q", s.Type)
	}
	return s.Data
}

func TestEnsureServingCertCreatesThenReuses(t *testing.T) {
	f := cluster(t)
	ns := certNamespace(t, f, "certs-reuse")
	names := []string{"detour-controller." + ns + ".svc", "127.0.0.1"}
	cert, err := EnsureServingCert(callCtx(t), f.admin, ns, "tls", "ca", names)
	if err != nil {
		t.Fatal(err)
	}
	first := secretData(t, f.admin, ns)
	for _, k := range []string{CACertKey, corev1.TLSCertKey, corev1.TLSPrivateKeyKey} {
		if len(first[k]) == 0 {
			t.Fatalf("secret lacks %s", k)
		}
	}
	ca := published(t, f.admin, ns)
	if !bytes.Equal(ca, first[CACertKey]) {
		t.Fatal("ConfigMap CA differs from the Secret's")
	}
	verifies(t, cert, ca, names...)
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	if d := time.Until(leaf.NotAfter); d < 360*24*time.Hour || d > 366*24*time.Hour {
		t.Fatalf("serving certificate valid for %v, want a year", d)
	}
	caCert, _ := parseCertPEM(ca)
	if d := time.Until(caCert.NotAfter); d < 9*365*24*time.Hour {
		t.Fatalf("CA valid for %v, want ten years", d)
	}

	again, err := EnsureServingCert(callCtx(t), f.admin, ns, "tls", "ca", names)
	if err != nil {
		t.Fatal(err)
	}
	second := secretData(t, f.admin, ns)
	if !bytes.Equal(first[CACertKey], second[CACertKey]) || !bytes.Equal(first[corev1.TLSCertKey], second[corev1.TLSCertKey]) {
		t.Fatal("a valid certificate was replaced")
	}
	if !bytes.Equal(again.Certificate[0], cert.Certificate[0]) {
		t.Fatal("second call returned another certificate")
	}
}

func TestEnsureServingCertConcurrent(t *testing.T) {
	f := cluster(t)
	ns := certNamespace(t, f, "certs-race")
	names := []string{"detour-controller." + ns + ".svc"}
	var wg sync.WaitGroup
	certs := make([]*tls.Certificate, 2)
	errs := make([]error, 2)
	start := make(chan struct{})
	for i := range certs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			certs[i], errs[i] = EnsureServingCert(callCtx(t), f.admin, ns, "tls", "ca", names)
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	list, err := f.admin.CoreV1().Secrets(ns).List(callCtx(t), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 {
		t.Fatalf("%d secrets, want 1", len(list.Items))
	}
	ca := published(t, f.admin, ns)
	for _, c := range certs {
		verifies(t, c, ca, names...)
	}
}

func TestEnsureServingCertReissues(t *testing.T) {
	f := cluster(t)
	ns := certNamespace(t, f, "certs-reissue")
	if _, err := EnsureServingCert(callCtx(t), f.admin, ns, "tls", "ca", []string{"a.example"}); err != nil {
		t.Fatal(err)
	}
	before := secretData(t, f.admin, ns)

	// A name the certificate lacks: re-issued from the same CA.
	cert, err := EnsureServingCert(callCtx(t), f.admin, ns, "tls", "ca", []string{"a.example", "b.example"})
	if err != nil {
		t.Fatal(err)
	}
	after := secretData(t, f.admin, ns)
	if !bytes.Equal(before[CACertKey], after[CACertKey]) {
		t.Fatal("the CA changed")
	}
	if bytes.Equal(before[corev1.TLSCertKey], after[corev1.TLSCertKey]) {
		t.Fatal("the serving certificate was not re-issued")
	}
	verifies(t, cert, published(t, f.admin, ns), "a.example", "b.example")

	// A certificate 10 days from its end: re-issued.
	ca, caKey, err := parseCA(after, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := newServing(ca, caKey, []string{"a.example", "b.example"}, time.Now(), time.Now().Add(10*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	s, err := f.admin.CoreV1().Secrets(ns).Get(callCtx(t), "tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey] = crt, key
	if _, err := f.admin.CoreV1().Secrets(ns).Update(callCtx(t), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cert, err = EnsureServingCert(callCtx(t), f.admin, ns, "tls", "ca", []string{"a.example", "b.example"})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(cert.Leaf.NotAfter); d < 300*24*time.Hour {
		t.Fatalf("certificate near its end kept: %v left", d)
	}
	if got := secretData(t, f.admin, ns); !bytes.Equal(got[CACertKey], before[CACertKey]) {
		t.Fatal("the CA changed")
	}

	// A stale ConfigMap is brought back to the Secret's CA.
	cm, err := f.admin.CoreV1().ConfigMaps(ns).Get(callCtx(t), "ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[CACertKey] = "stale"
	if _, err := f.admin.CoreV1().ConfigMaps(ns).Update(callCtx(t), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureServingCert(callCtx(t), f.admin, ns, "tls", "ca", []string{"a.example"}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(published(t, f.admin, ns), before[CACertKey]) {
		t.Fatal("ConfigMap not updated")
	}
}

// The losing side of a race, made deterministic with a fake clientset:
// Create answers AlreadyExists once another replica's Secret is there, and
// an Update answers Conflict once; both end with the other's Secret.
func TestEnsureServingCertRaceLoser(t *testing.T) {
	ctx := context.Background()
	names := []string{"svc.example"}
	theirs := fake.NewClientset()
	if _, err := EnsureServingCert(ctx, theirs, "ns", "tls", "ca", names); err != nil {
		t.Fatal(err)
	}
	winner, err := theirs.CoreV1().Secrets("ns").Get(ctx, "tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	c := fake.NewClientset()
	gr := schema.GroupResource{Resource: "secrets"}
	c.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		// The other replica created it just before us.
		if err := c.Tracker().Add(winner.DeepCopy()); err != nil {
			return true, nil, err
		}
		return true, nil, apierrors.NewAlreadyExists(gr, "tls")
	})
	cert, err := EnsureServingCert(ctx, c, "ns", "tls", "ca", names)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert.Certificate[0], mustPair(t, winner).Certificate[0]) {
		t.Fatal("did not adopt the other replica's certificate")
	}
	verifies(t, cert, published(t, c, "ns"), names...)

	// Now a name is missing; the other replica renews first.
	more := []string{"svc.example", "other.example"}
	renewed := winner.DeepCopy()
	renewed.Data, err = issue(winner.Data, more, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	conflicted := false
	c.PrependReactor("update", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		if conflicted {
			return false, nil, nil
		}
		conflicted = true
		if err := c.Tracker().Update(schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, renewed.DeepCopy(), "ns"); err != nil {
			return true, nil, err
		}
		return true, nil, apierrors.NewConflict(gr, "tls", nil)
	})
	cert, err = EnsureServingCert(ctx, c, "ns", "tls", "ca", more)
	if err != nil {
		t.Fatal(err)
	}
	if !conflicted || !bytes.Equal(cert.Certificate[0], mustPair(t, renewed).Certificate[0]) {
		t.Fatal("did not adopt the other replica's renewal")
	}
}

func mustPair(t *testing.T, s *corev1.Secret) tls.Certificate {
	t.Helper()
	p, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		t.Fatal(err)
	}
	return p
}
