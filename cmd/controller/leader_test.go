package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/leader"
)

// get fetches an HTTP path of a controller's metrics listener.
func get(addr, path string) (int, string, error) {
	resp, err := http.Get(fmt.Sprintf("http://%s%s", addr, path))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// gauge reads an unlabelled series from a controller's /metrics.
func gauge(t *testing.T, addr, name string) float64 {
	t.Helper()
	_, body, err := get(addr, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics of %s has no %s", addr, name)
	return 0
}

// replica is one controller process of the test, run with run().
type replica struct {
	name string
	o    *options
	stop context.CancelFunc
	done chan struct{} // closed when run has returned err
	err  error
}

func startReplica(t *testing.T, env *envtest.Env, name string) *replica {
	t.Helper()
	o := &options{
		listen: freeAddr(t), metricsListen: freeAddr(t),
		storeBackend: "kube", kubeconfig: env.Kubeconfig,
		inventoryPath: filepath.Join(t.TempDir(), "missing.json"),
		leaderElect:   true, leaderElectNamespace: "default", leaderElectID: name,
		// Short enough that the test is quick (in the order client-go
		// requires: lease > renew deadline > 1.2 × retry period), and
		// long enough that a loaded CI machine does not miss a renewal.
		leaseDuration: 10 * time.Second, renewDeadline: 8 * time.Second, retryPeriod: 500 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{name: name, o: o, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = run(ctx, o, slog.New(slog.DiscardHandler).With("replica", name))
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(20 * time.Second):
			t.Errorf("replica %s did not stop", name)
		}
	})
	return r
}

// ready reports whether the replica's /readyz answers 200; otherwise its
// body.
func (r *replica) ready() (bool, string) {
	code, body, err := get(r.o.metricsListen, "/readyz")
	if err != nil {
		return false, err.Error()
	}
	return code == http.StatusOK, strings.TrimSpace(body)
}

// serves reports whether a ListIntercepts call on the replica's gRPC port
// succeeds.
func (r *replica) serves(t *testing.T) bool {
	t.Helper()
	conn, err := grpc.NewClient(r.o.listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = detourv1.NewControlServiceClient(conn).ListIntercepts(ctx, &detourv1.ListInterceptsRequest{})
	return err == nil
}

func (r *replica) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(20 * time.Second):
		t.Fatalf("replica %s did not stop", r.name)
		return nil
	}
}

// TestLeaderElection runs two controllers on one API server: exactly one
// leads, serves gRPC and is ready; the other serves only /metrics,
// /healthz and a 503 /readyz. When the leader stops, the other takes over;
// when a leader loses its lease, it stops with an error.
func TestLeaderElection(t *testing.T) {
	env := envtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := env.InstallCRDs(ctx, "../../deploy/crds/detour.dev_intercepts.yaml"); err != nil {
		t.Fatal(err)
	}
	a, b := startReplica(t, env, "a"), startReplica(t, env, "b")

	var leading, follower *replica
	testutil.Eventually(t, 20*time.Second, func() error {
		ra, whyA := a.ready()
		rb, whyB := b.ready()
		switch {
		case ra && !rb:
			leading, follower = a, b
		case rb && !ra:
			leading, follower = b, a
		default:
			return fmt.Errorf("not one replica leading: a ready %v (%s), b ready %v (%s)", ra, whyA, rb, whyB)
		}
		return nil
	})
	t.Logf("%s leads", leading.name)
	if !leading.serves(t) {
		t.Fatalf("leader %s does not serve gRPC", leading.name)
	}
	if ok, why := follower.ready(); ok || why != "not the leader" {
		t.Fatalf("follower /readyz: %v %q, want 503 not the leader", ok, why)
	}
	if code, _, err := get(follower.o.metricsListen, "/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("follower /healthz: %d %v", code, err)
	}
	if c, err := net.DialTimeout("tcp", follower.o.listen, time.Second); err == nil {
		c.Close()
		t.Fatalf("follower %s listens on its gRPC address", follower.name)
	}
	if l, f := gauge(t, leading.o.metricsListen, "detour_controller_leader"), gauge(t, follower.o.metricsListen, "detour_controller_leader"); l != 1 || f != 0 {
		t.Fatalf("detour_controller_leader: leader %v, follower %v", l, f)
	}

	// The leader stops cleanly (SIGTERM): it releases the lease, and the
	// other replica takes over well within a lease duration.
	stopped := time.Now()
	leading.stop()
	if err := leading.wait(t); err != nil {
		t.Fatalf("leader %s stopped with %v", leading.name, err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		if ok, why := follower.ready(); !ok {
			return fmt.Errorf("%s has not taken over: %s", follower.name, why)
		}
		if !follower.serves(t) {
			return fmt.Errorf("%s is ready but does not serve gRPC", follower.name)
		}
		return nil
	})
	t.Logf("%s took over in %v", follower.name, time.Since(stopped).Round(time.Millisecond))

	// Someone else takes the lease: the leader cannot renew it, stops
	// serving and ends with an error, for the kubelet to restart it.
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	leases := kubernetes.NewForConfigOrDie(cfg).CoordinationV1().Leases("default")
	lease, err := leases.Get(ctx, leaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := lease.Spec.HolderIdentity; h == nil || *h != follower.name {
		t.Fatalf("lease held by %v, want %s", h, follower.name)
	}
	thief, long := "thief", int32(3600)
	now := metav1.NewMicroTime(time.Now())
	lease.Spec = coordinationv1.LeaseSpec{HolderIdentity: &thief, LeaseDurationSeconds: &long, AcquireTime: &now, RenewTime: &now}
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := follower.wait(t); !errors.Is(err, leader.ErrLost) {
		t.Fatalf("replica %s after losing its lease: %v, want %v", follower.name, err, leader.ErrLost)
	}
}
