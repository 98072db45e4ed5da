package cluster

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/detourdev/detour/pkg/apis/detour/v1alpha1"
	"github.com/detourdev/detour/pkg/envmgr"
)

// Events records what happens to environments as Kubernetes Events on the
// Environment, for `kubectl describe environment`.
type Events struct {
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
}

var _ envmgr.Events = (*Events)(nil)

// NewEvents starts recording through kube as component.
func NewEvents(kube kubernetes.Interface, component string) (*Events, error) {
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	return &Events{broadcaster: b, recorder: b.NewRecorder(scheme, corev1.EventSource{Component: component})}, nil
}

// Event implements envmgr.Events.
func (e *Events) Event(env *v1alpha1.Environment, warning bool, reason, message string) {
	typ := corev1.EventTypeNormal
	if warning {
		typ = corev1.EventTypeWarning
	}
	e.recorder.Event(env, typ, reason, message)
}

// Close stops recording.
func (e *Events) Close() { e.broadcaster.Shutdown() }
