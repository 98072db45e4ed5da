// Package envtest runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver of Version, on free loopback ports, with static bearer
// tokens (an admin in system:masters and low-privilege users), a CA and
// serving certificate made with crypto/x509, service-account keys, and
// Node,RBAC authorization. No controller-manager, scheduler or kubelet: what
// a controller test needs, like controller-runtime's envtest, without its
// downloads. The binaries are built from source by test/cluster/build.sh
// into a cache directory (see CacheDir) the first time they are needed.
//
// It needs no root. It talks to the API with net/http, so it does not tie
// its users to client-go; a client-go test builds its rest.Config from URL,
// AdminToken and CAPEM (Host, BearerToken, TLSClientConfig.CAData), or loads
// Kubeconfig.
package envtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detourdev/detour/internal/testutil"
)

// Default identities. The user has no RBAC binding: every request it makes
// beyond discovery is forbidden until a test grants it something.
const (
	AdminName = "envtest-admin"
	UserName  = "envtest-user"
)

// User is a static-token identity for the API server's token file.
type User struct {
	Name   string
	Groups []string
}

// Options tunes Run. The zero value is what Start uses.
type Options struct {
	// Dir holds data, certificates, configuration and logs. Run makes (and
	// Stop removes) a temporary one when empty.
	Dir string
	// Users are extra low-privilege identities, beside AdminName and UserName.
	Users []User
	// APIServerArgs are appended to the API server's flags (a later flag
	// wins), e.g. "--feature-gates=...".
	APIServerArgs []string
	// StartTimeout bounds the wait for etcd and /readyz; 60 s when zero.
	StartTimeout time.Duration
	// Progress receives the build's progress and the harness's notes;
	// os.Stderr when nil.
	Progress io.Writer
}

// Env is a running etcd and kube-apiserver.
type Env struct {
	// URL is the API server's base URL, https://127.0.0.1:<port>.
	URL string
	// Kubeconfig is a kubeconfig file for the admin; UserKubeconfig one for
	// UserName.
	Kubeconfig     string
	UserKubeconfig string
	// AdminToken authenticates AdminName, in group system:masters.
	AdminToken string
	// UserToken authenticates UserName, in no group but system:authenticated.
	UserToken string
	// Tokens maps every static user's name (admin, user and Options.Users)
	// to its bearer token.
	Tokens map[string]string
	// CAPEM is the CA that signed the serving certificate; CAFile holds it.
	CAPEM  []byte
	CAFile string
	// ClientCertFile and ClientKeyFile are a client certificate of the same
	// CA in group system:masters (what a kubelet client or a
	// controller-manager would use).
	ClientCertFile, ClientKeyFile string
	// ServiceAccountKeyFile is the private key that signs service-account
	// tokens (a controller-manager's --service-account-private-key-file).
	ServiceAccountKeyFile string
	// EtcdURL is etcd's client URL.
	EtcdURL string
	// Dir is the working directory; BinDir where the binaries came from.
	Dir, BinDir string

	removeDir bool
	etcd      *process
	apiserver *process
	client    *http.Client
}

// Start runs an Env for the test and stops it when the test ends. When the
// binaries cannot be had it skips the test with the reason, but under
// CI=true it fails it: nothing hides behind a skip in CI.
func Start(t testing.TB) *Env {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options. Dir defaults to a t.TempDir.
func StartWith(t testing.TB, opts Options) *Env {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	env, err := Run(ctx, opts)
	if errors.Is(err, ErrNoBinaries) {
		if testutil.InCI() {
			t.Fatalf("envtest: %v (CI=true forbids skipping)", err)
		}
		t.Skipf("envtest: %v", err)
	}
	if err != nil {
		t.Fatalf("envtest: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(env.apiserver.tail(40))
		}
		stopping := time.Now()
		if err := env.Stop(); err != nil {
			t.Errorf("envtest: stop: %v", err)
		}
		t.Logf("envtest: stopped in %v", time.Since(stopping).Round(time.Millisecond))
	})
	return env
}

// Run starts etcd and kube-apiserver and returns once /readyz answers ok.
// The caller must Stop the Env. For a TestMain that shares one Env between
// the tests of a package.
func Run(ctx context.Context, opts Options) (_ *Env, err error) {
	if opts.Progress == nil {
		opts.Progress = os.Stderr
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	bin, err := EnsureBinaries(ctx, opts.Progress)
	if err != nil {
		return nil, err
	}
	e := &Env{Dir: opts.Dir, BinDir: bin}
	if e.Dir == "" {
		if e.Dir, err = os.MkdirTemp("", "detour-envtest-"); err != nil {
			return nil, err
		}
		e.removeDir = true
	}
	defer func() {
		if err != nil {
			_ = e.Stop()
		}
	}()
	if err := e.configure(opts); err != nil {
		return nil, err
	}
	// A free port can be taken between our check and the server's bind:
	// try again on new ports when a server exits while starting.
	for attempt := 1; ; attempt++ {
		err = e.start(ctx, opts)
		if err == nil {
			return e, nil
		}
		var exit *exitedError
		if !errors.As(err, &exit) || attempt == 3 {
			return nil, err
		}
		fmt.Fprintf(opts.Progress, "envtest: %v; retrying on other ports\n", err)
		_ = e.stopProcesses()
	}
}

// exitedError is a server that exited while starting.
type exitedError struct {
	name string
	err  error
	tail string
}

func (e *exitedError) Error() string {
	return fmt.Sprintf("%s exited while starting: %v\n%s", e.name, e.err, e.tail)
}

// configure writes the certificates, keys and token file.
func (e *Env) configure(opts Options) error {
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 0, 0, 1)}
	if adv := advertiseAddress(); adv != nil {
		ips = append(ips, adv)
	}
	p, err := newPKI(ips)
	if err != nil {
		return err
	}
	pkiDir := filepath.Join(e.Dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.crt": p.caCert, "ca.key": p.caKey,
		"apiserver.crt": p.servingCert, "apiserver.key": p.servKey,
		"admin.crt": p.clientCert, "admin.key": p.clientKey,
		"sa.pub": p.saPub, "sa.key": p.saKey,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(pkiDir, name), b, 0o600); err != nil {
			return err
		}
	}
	e.CAPEM = p.caCert
	e.CAFile = filepath.Join(pkiDir, "ca.crt")
	e.ClientCertFile = filepath.Join(pkiDir, "admin.crt")
	e.ClientKeyFile = filepath.Join(pkiDir, "admin.key")
	e.ServiceAccountKeyFile = filepath.Join(pkiDir, "sa.key")

	users := append([]User{{Name: AdminName, Groups: []string{"system:masters"}}, {Name: UserName}}, opts.Users...)
	e.Tokens = make(map[string]string, len(users))
	var csv strings.Builder
	for i, u := range users {
		if _, dup := e.Tokens[u.Name]; dup {
			return fmt.Errorf("user %q given twice", u.Name)
		}
		tok := randomToken()
		e.Tokens[u.Name] = tok
		// token,user,uid[,"group1,group2"]
		fmt.Fprintf(&csv, "%s,%s,uid-%d", tok, u.Name, i)
		if len(u.Groups) > 0 {
			fmt.Fprintf(&csv, ",%q", strings.Join(u.Groups, ","))
		}
		csv.WriteString("\n")
	}
	e.AdminToken = e.Tokens[AdminName]
	e.UserToken = e.Tokens[UserName]
	return os.WriteFile(filepath.Join(pkiDir, "tokens.csv"), []byte(csv.String()), 0o600)
}

func randomToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

// start runs etcd, then the API server, on fresh ports.
func (e *Env) start(ctx context.Context, opts Options) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()

	e.EtcdURL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
	dataDir := filepath.Join(e.Dir, "etcd")
	if err := os.RemoveAll(dataDir); err != nil {
		return err
	}
	e.etcd, err = startProcess("etcd", filepath.Join(e.BinDir, "etcd"), filepath.Join(e.Dir, "etcd.log"), []string{
		"--name=envtest",
		"--data-dir=" + dataDir,
		"--listen-client-urls=" + e.EtcdURL,
		"--advertise-client-urls=" + e.EtcdURL,
		"--listen-peer-urls=http://127.0.0.1:" + strconv.Itoa(ports[1]),
		"--initial-advertise-peer-urls=http://127.0.0.1:" + strconv.Itoa(ports[1]),
		"--initial-cluster=envtest=http://127.0.0.1:" + strconv.Itoa(ports[1]),
		"--listen-metrics-urls=",
		// A test's data is thrown away: no fsync, much faster on a shared disk.
		"--unsafe-no-fsync",
		"--log-level=warn",
	})
	if err != nil {
		return err
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	if err := waitFor(ctx, e.etcd, func() bool {
		resp, err := plain.Get(e.EtcdURL + "/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && bytes.Contains(b, []byte(`"health":"true"`))
	}); err != nil {
		return err
	}

	pki := filepath.Join(e.Dir, "pki")
	e.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	args := []string{
		"--etcd-servers=" + e.EtcdURL,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[2]),
		"--cert-dir=" + pki,
		"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
		"--client-ca-file=" + e.CAFile,
		"--token-auth-file=" + filepath.Join(pki, "tokens.csv"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file=" + e.ServiceAccountKeyFile,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		// No controller-manager makes the default service account, so pods
		// could not be created with this admission plugin on.
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
	}
	if adv := advertiseAddress(); adv != nil {
		args = append(args, "--advertise-address="+adv.String())
	} else {
		// No non-loopback address here: keep no endpoints for the
		// kubernetes Service rather than log a rejected loopback one.
		args = append(args, "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none")
	}
	args = append(args, opts.APIServerArgs...)
	e.apiserver, err = startProcess("kube-apiserver", filepath.Join(e.BinDir, "kube-apiserver"),
		filepath.Join(e.Dir, "kube-apiserver.log"), args)
	if err != nil {
		return err
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.CAPEM)
	e.client = &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	if err := waitFor(ctx, e.apiserver, func() bool {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		defer rcancel()
		code, _, err := e.Do(rctx, e.AdminToken, http.MethodGet, "/readyz", nil, "")
		return err == nil && code == http.StatusOK
	}); err != nil {
		return err
	}

	e.Kubeconfig = filepath.Join(e.Dir, "admin.kubeconfig")
	e.UserKubeconfig = filepath.Join(e.Dir, "user.kubeconfig")
	if err := e.WriteKubeconfig(e.Kubeconfig, AdminName); err != nil {
		return err
	}
	return e.WriteKubeconfig(e.UserKubeconfig, UserName)
}

// waitFor polls ready every 50 ms until it is true, the process exits, or
// ctx ends.
func waitFor(ctx context.Context, p *process, ready func() bool) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case <-p.done:
			return &exitedError{name: p.name, err: p.err, tail: p.tail(30)}
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w\n%s", p.name, ctx.Err(), p.tail(30))
		case <-tick.C:
		}
	}
}

// Stop stops the API server (SIGTERM, a second SIGTERM after 2 s, SIGKILL
// after 10 s more), then etcd, and removes Dir if Run made it. It is safe to
// call twice.
func (e *Env) Stop() error {
	err := e.stopProcesses()
	if e.removeDir {
		if rerr := os.RemoveAll(e.Dir); rerr != nil && err == nil {
			err = rerr
		}
		e.removeDir = false
	}
	return err
}

func (e *Env) stopProcesses() error {
	errA := e.apiserver.stop(2*time.Second, 10*time.Second)
	errE := e.etcd.stop(10*time.Second, 5*time.Second)
	if e.client != nil {
		e.client.CloseIdleConnections()
	}
	return errors.Join(errA, errE)
}

// HTTPClient returns a client that trusts the API server's CA. It sends no
// credentials: add "Authorization: Bearer <token>", or use Do.
func (e *Env) HTTPClient() *http.Client { return e.client }

// Do sends one request to the API server as the holder of token (none when
// empty) and returns the status code and body. path starts with "/".
func (e *Env) Do(ctx context.Context, token, method, path string, body []byte, contentType string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, e.URL+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType == "" && body != nil {
		contentType = "application/json"
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// WriteKubeconfig writes a kubeconfig for the static user name (admin, user
// or one of Options.Users) to path.
func (e *Env) WriteKubeconfig(path, name string) error {
	tok, ok := e.Tokens[name]
	if !ok {
		return fmt.Errorf("no static user %q", name)
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: envtest
  context:
    cluster: envtest
    user: %s
    namespace: default
current-context: envtest
`, e.URL, base64.StdEncoding.EncodeToString(e.CAPEM), name, tok, name)
	return os.WriteFile(path, []byte(kc), 0o600)
}
