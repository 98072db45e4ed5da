package deploy

import (
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/detourdev/detour/pkg/kubeclient"
)

// Objects returns the objects of the embedded manifests as `detour install`
// renders them without image overrides: the kustomizations' images applied.
func Objects() ([]*unstructured.Unstructured, error) {
	ms, err := kubeclient.LoadManifests(FS)
	if err != nil {
		return nil, err
	}
	return kubeclient.Render(ms, nil)
}
