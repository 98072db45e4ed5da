package kubeauth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Keys of the serving Secret and the CA ConfigMap. ca.key is kept beside
// the kubernetes.io/tls keys so that the serving certificate can be
// re-issued from the same CA, which clients already trust.
const (
	CACertKey = "ca.crt"
	caKeyKey  = "ca.key"
)

const (
	fieldManager    = "detour-controller"
	caValidity      = 10 * 365 * 24 * time.Hour
	servingValidity = 365 * 24 * time.Hour
	renewBefore     = 30 * 24 * time.Hour
	// backdate covers clocks a little behind ours.
	backdate = time.Hour
	// writeAttempts bounds the read-modify-write loops against other
	// replicas doing the same.
	writeAttempts = 5
)

// EnsureServingCert keeps a CA and a serving certificate for dnsNames in
// the kubernetes.io/tls Secret secretName of namespace (keys ca.crt,
// tls.crt, tls.key, and ca.key) and publishes the CA as ca.crt in the
// ConfigMap caConfigMap of the same namespace, for agents and the CLI to
// verify the controller with. It creates what is missing, reuses a
// certificate that is valid for every name and more than 30 days from
// expiry, and otherwise re-issues the serving certificate from the same CA
// (a new CA only when the old one is unusable or near its end). Replicas
// racing to do the same end with one Secret. A name that is an IP address
// goes into the certificate's IP addresses.
func EnsureServingCert(ctx context.Context, c kubernetes.Interface, namespace, secretName, caConfigMap string, dnsNames []string) (*tls.Certificate, error) {
	if len(dnsNames) == 0 {
		return nil, errors.New("serving certificate: no DNS names")
	}
	sec, err := ensureSecret(ctx, c, namespace, secretName, dnsNames)
	if err != nil {
		return nil, err
	}
	if err := publishCA(ctx, c, namespace, caConfigMap, sec.Data[CACertKey]); err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("serving certificate in secret %s/%s: %w", namespace, secretName, err)
	}
	return &cert, nil
}

// ensureSecret returns the Secret once it holds a good certificate.
func ensureSecret(ctx context.Context, c kubernetes.Interface, namespace, name string, dnsNames []string) (*corev1.Secret, error) {
	secrets := c.CoreV1().Secrets(namespace)
	for range writeAttempts {
		now := time.Now()
		cur, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			data, err := issue(nil, dnsNames, now)
			if err != nil {
				return nil, err
			}
			sec := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{
					"app.kubernetes.io/name": "detour", "app.kubernetes.io/managed-by": fieldManager,
				}},
				Type: corev1.SecretTypeTLS,
				Data: data,
			}
			created, err := secrets.Create(ctx, sec, metav1.CreateOptions{FieldManager: fieldManager})
			if apierrors.IsAlreadyExists(err) {
				continue // another replica was first: use theirs
			}
			if err != nil {
				return nil, fmt.Errorf("create secret %s/%s: %w", namespace, name, err)
			}
			return created, nil
		}
		if err != nil {
			return nil, fmt.Errorf("get secret %s/%s: %w", namespace, name, err)
		}
		if cur.Type != corev1.SecretTypeTLS {
			return nil, fmt.Errorf("secret %s/%s has type %q, not %q: delete it to let the controller make its own",
				namespace, name, cur.Type, corev1.SecretTypeTLS)
		}
		if checkServing(cur.Data, dnsNames, now) == nil {
			return cur, nil
		}
		data, err := issue(cur.Data, dnsNames, now)
		if err != nil {
			return nil, err
		}
		upd := cur.DeepCopy()
		if upd.Data == nil {
			upd.Data = map[string][]byte{}
		}
		for k, v := range data {
			upd.Data[k] = v
		}
		updated, err := secrets.Update(ctx, upd, metav1.UpdateOptions{FieldManager: fieldManager})
		if apierrors.IsConflict(err) {
			continue // another replica renewed it: check theirs
		}
		if err != nil {
			return nil, fmt.Errorf("update secret %s/%s: %w", namespace, name, err)
		}
		return updated, nil
	}
	return nil, fmt.Errorf("secret %s/%s: still changing under us after %d attempts", namespace, name, writeAttempts)
}

// publishCA makes the ConfigMap hold caPEM as ca.crt.
func publishCA(ctx context.Context, c kubernetes.Interface, namespace, name string, caPEM []byte) error {
	cms := c.CoreV1().ConfigMaps(namespace)
	for range writeAttempts {
		cur, err := cms.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			cm := &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{
					"app.kubernetes.io/name": "detour", "app.kubernetes.io/managed-by": fieldManager,
				}},
				Data: map[string]string{CACertKey: string(caPEM)},
			}
			_, err := cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: fieldManager})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("create configmap %s/%s: %w", namespace, name, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("get configmap %s/%s: %w", namespace, name, err)
		}
		if cur.Data[CACertKey] == string(caPEM) {
			return nil
		}
		upd := cur.DeepCopy()
		if upd.Data == nil {
			upd.Data = map[string]string{}
		}
		upd.Data[CACertKey] = string(caPEM)
		_, err = cms.Update(ctx, upd, metav1.UpdateOptions{FieldManager: fieldManager})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("update configmap %s/%s: %w", namespace, name, err)
		}
		return nil
	}
	return fmt.Errorf("configmap %s/%s: still changing under us after %d attempts", namespace, name, writeAttempts)
}

// parseCA returns the CA of a Secret's data if it is usable for at least
// renewBefore more.
func parseCA(data map[string][]byte, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	ca, err := parseCertPEM(data[CACertKey])
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", CACertKey, err)
	}
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, errors.New("ca.crt is no CA certificate")
	}
	if !now.Add(renewBefore).Before(ca.NotAfter) {
		return nil, nil, fmt.Errorf("CA expires at %v", ca.NotAfter)
	}
	block, _ := pem.Decode(data[caKeyKey])
	if block == nil {
		return nil, nil, errors.New("no CA key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", caKeyKey, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: %T is no signer", caKeyKey, k)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(ca.PublicKey) {
		return nil, nil, errors.New("CA key does not match ca.crt")
	}
	return ca, signer, nil
}

// checkServing says why a Secret's data will not do, or nil.
func checkServing(data map[string][]byte, dnsNames []string, now time.Time) error {
	ca, _, err := parseCA(data, now)
	if err != nil {
		return err
	}
	pair, err := tls.X509KeyPair(data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return err
	}
	leaf := pair.Leaf
	if !now.Add(renewBefore).Before(leaf.NotAfter) {
		return fmt.Errorf("serving certificate expires at %v", leaf.NotAfter)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, name := range dnsNames {
		if _, err := leaf.Verify(x509.VerifyOptions{
			DNSName:     name,
			Roots:       roots,
			CurrentTime: now,
			KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}); err != nil {
			return err
		}
	}
	return nil
}

// issue returns the Secret data for a new serving certificate, signed by
// the CA in old when that is usable, else by a new CA.
func issue(old map[string][]byte, dnsNames []string, now time.Time) (map[string][]byte, error) {
	data := map[string][]byte{}
	ca, caKey, err := parseCA(old, now)
	if err != nil {
		ca, caKey, data[CACertKey], data[caKeyKey], err = newCA(now)
		if err != nil {
			return nil, err
		}
	} else {
		data[CACertKey], data[caKeyKey] = old[CACertKey], old[caKeyKey]
	}
	data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey], err = newServing(ca, caKey, dnsNames, now, now.Add(servingValidity))
	if err != nil {
		return nil, err
	}
	return data, nil
}

func newCA(now time.Time) (*x509.Certificate, crypto.Signer, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "detour-controller-ca", Organization: []string{"detour"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return ca, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// newServing issues a serving certificate for names, valid from notBefore
// (less backdate) to notAfter but never beyond the CA.
func newServing(ca *x509.Certificate, caKey crypto.Signer, names []string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0], Organization: []string{"detour"}},
		NotBefore:    notBefore.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create serving certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("more than one PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}
