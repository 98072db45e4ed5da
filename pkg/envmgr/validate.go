package envmgr

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr/data"
)

// Limits is what the controller allows beyond the schema.
type Limits struct {
	// DefaultTTL is an environment's life when its spec gives none.
	DefaultTTL time.Duration
	// MaxTTL bounds spec.ttl and renewals.
	MaxTTL time.Duration
}

// TTL is env's life: its spec's, or the default.
func (l Limits) TTL(env *v1alpha1.Environment) time.Duration {
	if env.Spec.TTL != nil && env.Spec.TTL.Duration > 0 {
		return env.Spec.TTL.Duration
	}
	return l.DefaultTTL
}

// CheckTTL refuses a life over the maximum, or not positive.
func (l Limits) CheckTTL(ttl time.Duration) error {
	switch {
	case ttl <= 0:
		return fmt.Errorf("ttl %s: want a positive duration", ttl)
	case l.MaxTTL > 0 && ttl > l.MaxTTL:
		return fmt.Errorf("ttl %s is longer than this controller allows (%s, its --env-max-ttl)", ttl, l.MaxTTL)
	}
	return nil
}

var (
	envName   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	headerTok = regexp.MustCompile("^[-!#$%&'*+.^_|~0-9A-Za-z`]+$")
	envVar    = regexp.MustCompile(`^[-._a-zA-Z][-._a-zA-Z0-9]*$`)
)

// Validate checks an environment as the resource's schema and CEL rules do,
// plus the controller's limits, so that the lab (which has no API server)
// and a gRPC call refuse what kubectl would. The errors name the field.
func Validate(env *v1alpha1.Environment, l Limits) error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if len(env.Name) > 40 || !envName.MatchString(env.Name) {
		bad("name %q: want a DNS-1123 label of at most 40 characters (forks are named <workload>-<environment>)", env.Name)
	}
	if env.Namespace == "" || len(validation.IsDNS1123Label(env.Namespace)) > 0 {
		bad("namespace %q: want a DNS-1123 label", env.Namespace)
	}
	s := &env.Spec
	if s.Key != "" && (len(s.Key) > 128 || !headerTok.MatchString(s.Key)) {
		bad("key %q: want at most 128 characters that a header value token allows (letters, digits, -._~ and a few more)", s.Key)
	}
	switch n := len(s.Forks); {
	case n == 0:
		bad("forks: fork at least one workload")
	case n > 32:
		bad("forks: %d, at most 32", n)
	}
	seen := map[v1alpha1.WorkloadRef]bool{}
	for i := range s.Forks {
		f := &s.Forks[i]
		what := fmt.Sprintf("fork %s", f.Workload.Name)
		switch f.Workload.Kind {
		case v1alpha1.WorkloadDeployment, v1alpha1.WorkloadStatefulSet:
		default:
			bad("%s: kind %q: only Deployment and StatefulSet can be forked", what, f.Workload.Kind)
		}
		if !envName.MatchString(f.Workload.Name) || len(f.Workload.Name) > 63 {
			bad("fork %d: workload name %q: want a DNS-1123 label", i+1, f.Workload.Name)
		}
		if seen[f.Workload] {
			bad("%s: forked twice", what)
		}
		seen[f.Workload] = true
		images := map[string]bool{}
		for _, im := range f.Images {
			if images[im.Container] {
				bad("%s: two images for container %q", what, im.Container)
			}
			images[im.Container] = true
			if im.Image == "" || len(im.Image) > 512 || strings.ContainsAny(im.Image, " \t\n") {
				bad("%s: image %q: want an image reference", what, im.Image)
			}
		}
		commands := map[string]bool{}
		for _, c := range f.Commands {
			if commands[c.Container] {
				bad("%s: two commands for container %q", what, c.Container)
			}
			commands[c.Container] = true
			if len(c.Command)+len(c.Args) == 0 {
				bad("%s: command for container %q: give a command or arguments", what, c.Container)
			}
		}
		for _, e := range f.Env {
			if !envVar.MatchString(e.Name) || len(e.Name) > 256 {
				bad("%s: env %q: not a variable name", what, e.Name)
			}
			switch {
			case e.Delete && (e.Value != nil || e.ValueFrom != nil):
				bad("%s: env %s: a deleted variable takes no value", what, e.Name)
			case e.Value != nil && e.ValueFrom != nil:
				bad("%s: env %s: value and valueFrom are exclusive", what, e.Name)
			case !e.Delete && e.Value == nil && e.ValueFrom == nil:
				bad("%s: env %s: give a value, a valueFrom, or delete", what, e.Name)
			}
		}
		if f.Replicas != nil && (*f.Replicas < 0 || *f.Replicas > 100) {
			bad("%s: replicas %d: want 0 to 100", what, *f.Replicas)
		}
		if f.Patch != nil && len(f.Patch.Raw) > 0 {
			var obj map[string]any
			if err := json.Unmarshal(f.Patch.Raw, &obj); err != nil {
				bad("%s: patch is not a JSON object: %v", what, err)
			}
		}
	}
	errs = append(errs, data.Validate(s)...)
	if s.TTL != nil {
		if err := l.CheckTTL(s.TTL.Duration); err != nil {
			bad("%v", err)
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}
