package check

import (
	"context"
	"errors"
	"fmt"
	"path"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/parity"
	"github.com/detourdev/detour/pkg/parity/policy"
)

// errPolicy is a policy that cannot be used; the check's Ready condition
// says why (PolicyInvalid) until it is fixed.
var errPolicy = errors.New("policy")

// policyOf is the check's policy: spec.policy, the policy file in
// spec.policyFrom's ConfigMap (read now, so an edit counts at the next
// run), or the defaults.
func policyOf(ctx context.Context, kube kubernetes.Interface, pc *v1alpha1.ParityCheck) (*parity.Policy, error) {
	if ref := pc.Spec.PolicyFrom; ref != nil {
		key := ref.Key
		if key == "" {
			key = v1alpha1.DefaultPolicyKey
		}
		cm, err := kube.CoreV1().ConfigMaps(pc.Namespace).Get(ctx, ref.ConfigMap, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w: ConfigMap %s/%s not found", errPolicy, pc.Namespace, ref.ConfigMap)
		}
		if err != nil {
			return nil, fmt.Errorf("policy ConfigMap %s/%s: %w", pc.Namespace, ref.ConfigMap, err)
		}
		data, ok := cm.Data[key]
		if !ok {
			return nil, fmt.Errorf("%w: ConfigMap %s/%s has no key %s", errPolicy, pc.Namespace, ref.ConfigMap, key)
		}
		pol, err := policy.Parse([]byte(data), "configmap/"+ref.ConfigMap+"/"+key)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errPolicy, err)
		}
		return pol, nil
	}
	if pc.Spec.Policy == nil {
		return &parity.Policy{}, nil
	}
	return convertPolicy(pc.Spec.Policy)
}

// convertPolicy turns spec.policy into a parity.Policy. The CRD's schema
// refuses most of what is wrong; this checks again what it cannot (globs).
func convertPolicy(in *v1alpha1.ParityPolicy) (*parity.Policy, error) {
	out := &parity.Policy{}
	if in.FailOn != "" {
		sev, err := parity.ParseSeverity(string(in.FailOn), true)
		if err != nil {
			return nil, fmt.Errorf("%w: spec.policy.failOn: %w", errPolicy, err)
		}
		out.FailOn = sev
	}
	for c, s := range in.Severity {
		cat, err := parity.ParseCategory(string(c))
		if err != nil {
			return nil, fmt.Errorf("%w: spec.policy.severity: %w", errPolicy, err)
		}
		sev, err := parity.ParseSeverity(string(s), false)
		if err != nil {
			return nil, fmt.Errorf("%w: spec.policy.severity.%s: %w", errPolicy, c, err)
		}
		if out.Severity == nil {
			out.Severity = map[parity.Category]parity.Severity{}
		}
		out.Severity[cat] = sev
	}
	var err error
	if out.Ignore, err = convertRules(in.Ignore, "spec.policy.ignore"); err != nil {
		return nil, err
	}
	if out.Expected, err = convertRules(in.Expected, "spec.policy.expected"); err != nil {
		return nil, err
	}
	return out, nil
}

func convertRules(in []v1alpha1.ParityRule, field string) ([]parity.Rule, error) {
	var out []parity.Rule
	for i, r := range in {
		where := fmt.Sprintf("%s[%d]", field, i)
		rule := parity.Rule{Kind: r.Kind, Name: r.Name, Path: r.Path, Reason: r.Reason, Origin: where}
		for _, g := range []string{r.Kind, r.Name} {
			if _, err := path.Match(g, ""); err != nil {
				return nil, fmt.Errorf("%w: %s: bad pattern %q", errPolicy, where, g)
			}
		}
		if err := parity.ValidPattern(r.Path); err != nil {
			return nil, fmt.Errorf("%w: %s.path: bad pattern %q", errPolicy, where, r.Path)
		}
		if r.Category != "" {
			c, err := parity.ParseCategory(string(r.Category))
			if err != nil {
				return nil, fmt.Errorf("%w: %s.category: %w", errPolicy, where, err)
			}
			rule.Category = c
		}
		out = append(out, rule)
	}
	return out, nil
}
