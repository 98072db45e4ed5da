// Package kubeclient connects the detour CLI to a cluster: it loads the
// user's kubeconfig as kubectl does, finds the controller's Ready pod and
// forwards a local port to it through the API server, and installs or
// removes Detour's manifests with server-side apply.
package kubeclient

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrContext is a --context the kubeconfig does not have, or a kubeconfig
// with no current context: a usage error, not a cluster failure.
var ErrContext = errors.New("kubeconfig context")

// LoadOptions say which kubeconfig and context to use. The zero value is
// kubectl's default: $KUBECONFIG (a list of files, merged), else
// ~/.kube/config, and the current context.
type LoadOptions struct {
	Kubeconfig string
	Context    string
}

// Config is a loaded kubeconfig context.
type Config struct {
	// REST is the client configuration of the context.
	REST *rest.Config
	// Context is the name of the context used, User the name of its user.
	Context, User string
	// Namespace is the context's namespace, "default" when it names none.
	Namespace string
	// Files are the kubeconfig files read, for messages.
	Files []string
}

// loadingRules are kubectl's: an explicit file, else the $KUBECONFIG list,
// else ~/.kube/config.
func loadingRules(o LoadOptions) *clientcmd.ClientConfigLoadingRules {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.Kubeconfig
	return rules
}

// KubeconfigExists says whether one of the files kubectl would read by
// default exists. The CLI uses it to choose between a cluster and the local
// lab when no flag says which.
func KubeconfigExists() bool {
	for _, f := range loadingRules(LoadOptions{}).GetLoadingPrecedence() {
		if st, err := os.Stat(f); err == nil && !st.IsDir() {
			return true
		}
	}
	return false
}

// Load reads the kubeconfig and resolves the context. It makes no request.
func Load(o LoadOptions) (*Config, error) {
	rules := loadingRules(o)
	var files []string
	for _, f := range rules.GetLoadingPrecedence() {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		}
	}
	where := strings.Join(files, ", ")
	if o.Kubeconfig == "" && len(files) == 0 {
		return nil, fmt.Errorf("no kubeconfig: neither $KUBECONFIG nor %s names an existing file", clientcmd.RecommendedHomeFile)
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.Context})
	raw, err := cc.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	name := o.Context
	if name == "" {
		name = raw.CurrentContext
	}
	if name == "" {
		return nil, fmt.Errorf("%w: kubeconfig %s has no current context: pass --context (it has %s)", ErrContext, where, contextNames(raw.Contexts))
	}
	kctx, ok := raw.Contexts[name]
	if !ok {
		return nil, fmt.Errorf("%w %q not found in kubeconfig %s (it has %s)", ErrContext, name, where, contextNames(raw.Contexts))
	}
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s, context %q: %w", where, name, err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s, context %q: %w", where, name, err)
	}
	return &Config{REST: rc, Context: name, User: kctx.AuthInfo, Namespace: ns, Files: files}, nil
}

func contextNames[V any](m map[string]V) string {
	if len(m) == 0 {
		return "no contexts"
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return "contexts " + strings.Join(names, ", ")
}
