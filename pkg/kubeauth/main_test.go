package kubeauth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/internal/envtest"
	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/internal/testutil/kubetest"
)

// One API server for the package's tests (TestMain): the fixture is
// read-only to the tests, except the EnsureServingCert tests, which each
// work in a namespace of their own. The rules of Detour's services are
// tested beside them, in pkg/controller.

const (
	agentNS  = "detour-system"
	agentSA  = "detour-agent"
	nodeA    = "node-a"
	audience = "detour"
)

type fixture struct {
	env   *envtest.Env
	admin kubernetes.Interface
	// agentToken is a token of detour-agent for audience detour, bound to
	// a pod on node-a, from the TokenRequest API.
	agentToken string
}

var (
	fx        *fixture
	noCluster string // why there is no fixture
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// Cold, envtest builds Kubernetes first (minutes, once per machine).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	env, err := envtest.Run(ctx, envtest.Options{})
	if errors.Is(err, envtest.ErrNoBinaries) && !testutil.InCI() {
		noCluster = err.Error()
		return m.Run()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "envtest: %v\n", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	setupCtx, setupCancel := context.WithTimeout(ctx, time.Minute)
	defer setupCancel()
	fx, err = setup(setupCtx, env)
	if err != nil {
		fmt.Fprintf(os.Stderr, "setup: %v\n", err)
		return 1
	}
	return m.Run()
}

// cluster returns the shared fixture, or skips the test when there is no
// API server to run (never under CI=true: TestMain fails then).
func cluster(t *testing.T) *fixture {
	t.Helper()
	if fx == nil {
		t.Skipf("envtest: %s", noCluster)
	}
	return fx
}

func setup(ctx context.Context, env *envtest.Env) (*fixture, error) {
	cfg := kubetest.AdminConfig(env)
	cfg.QPS = -1 // no client-side throttling: the tests make many quick requests
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	f := &fixture{env: env, admin: admin}
	create := metav1.CreateOptions{}
	// An agent: a node, and a pod on it whose token the agent would mount.
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: agentNS}}, create); err != nil {
		return nil, err
	}
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeA}}, create); err != nil {
		return nil, err
	}
	if _, err := admin.CoreV1().ServiceAccounts(agentNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: agentSA}}, create); err != nil {
		return nil, err
	}
	pod, err := admin.CoreV1().Pods(agentNS).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: agentSA + "-" + nodeA},
		Spec: corev1.PodSpec{
			ServiceAccountName: agentSA,
			NodeName:           nodeA,
			Containers:         []corev1.Container{{Name: "agent", Image: "detour-agent:test"}},
		},
	}, create)
	if err != nil {
		return nil, err
	}
	res, err := admin.CoreV1().ServiceAccounts(agentNS).CreateToken(ctx, agentSA, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{audience},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, create)
	if err != nil {
		return nil, fmt.Errorf("token for %s: %w", agentSA, err)
	}
	f.agentToken = res.Status.Token
	return f, nil
}
