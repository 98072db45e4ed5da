package kubeclient

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Image is one entry of a kustomization's images: containers whose image
// is Name (with any tag) get NewName (when set) and NewTag or Digest.
type Image struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
	Digest  string `json:"digest,omitempty"`
}

// kustomization is the part of kustomize's format that detour install
// understands. Anything else is refused rather than ignored, so that the
// binary never applies something other than `kubectl apply -k` would.
type kustomization struct {
	APIVersion string   `json:"apiVersion,omitempty"`
	Kind       string   `json:"kind,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	Images     []Image  `json:"images,omitempty"`
}

// Manifest is one object of the manifests, as written, with the image
// entries of the kustomizations that include it, innermost first.
type Manifest struct {
	Object *unstructured.Unstructured
	File   string
	images []Image
}

// LoadManifests reads kustomization.yaml at the root of fsys and, through
// its resources (files or directories with their own kustomization.yaml),
// every object it names, in order.
func LoadManifests(fsys fs.FS) ([]Manifest, error) {
	ms, err := loadKustomization(fsys, ".", nil)
	if err != nil {
		return nil, err
	}
	seen := map[string]string{}
	for _, m := range ms {
		k := m.Object.GroupVersionKind().GroupKind().String() + " " + m.Object.GetNamespace() + "/" + m.Object.GetName()
		if f, dup := seen[k]; dup {
			return nil, fmt.Errorf("%s: %s is also in %s", m.File, k, f)
		}
		seen[k] = m.File
	}
	return ms, nil
}

func loadKustomization(fsys fs.FS, dir string, visiting []string) ([]Manifest, error) {
	file := path.Join(dir, "kustomization.yaml")
	for _, v := range visiting {
		if v == dir {
			return nil, fmt.Errorf("%s: resources include each other in a cycle", file)
		}
	}
	b, err := fs.ReadFile(fsys, file)
	if err != nil {
		return nil, fmt.Errorf("read manifests: %w", err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("%s: %w (detour install reads resources and images only)", file, err)
	}
	if k.Kind != "" && k.Kind != "Kustomization" {
		return nil, fmt.Errorf("%s: kind %q, want Kustomization", file, k.Kind)
	}
	for _, im := range k.Images {
		if im.Name == "" {
			return nil, fmt.Errorf("%s: an images entry has no name", file)
		}
	}
	var out []Manifest
	for _, r := range k.Resources {
		if strings.Contains(r, "://") || strings.HasPrefix(r, "github.com/") {
			return nil, fmt.Errorf("%s: remote resource %q is not supported", file, r)
		}
		p := path.Join(dir, r)
		st, err := fs.Stat(fsys, p)
		if err != nil {
			return nil, fmt.Errorf("%s: resource %q: %w", file, r, err)
		}
		var ms []Manifest
		if st.IsDir() {
			ms, err = loadKustomization(fsys, p, append(visiting, dir))
		} else {
			ms, err = loadFile(fsys, p)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	for i := range out {
		out[i].images = append(out[i].images, k.Images...)
	}
	return out, nil
}

// loadFile parses the YAML documents of one file.
func loadFile(fsys fs.FS, file string) ([]Manifest, error) {
	b, err := fs.ReadFile(fsys, file)
	if err != nil {
		return nil, err
	}
	var out []Manifest
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", file, n, err)
		}
		if t := bytes.TrimSpace(j); len(t) == 0 || string(t) == "null" {
			continue // comments only, or an empty document
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", file, n, err)
		}
		if u.IsList() || u.GetName() == "" {
			return nil, fmt.Errorf("%s, document %d: want one object with apiVersion, kind and metadata.name", file, n)
		}
		out = append(out, Manifest{Object: u, File: file})
	}
}

// Render returns deep copies of the objects with the kustomizations' image
// entries applied, then the overrides: a map from an image name as written
// in the manifests (without tag) to the full image reference to use
// instead. It reports an override that no container uses.
func Render(ms []Manifest, overrides map[string]string) ([]*unstructured.Unstructured, error) {
	used := map[string]bool{}
	out := make([]*unstructured.Unstructured, 0, len(ms))
	for _, m := range ms {
		u := m.Object.DeepCopy()
		err := mapImages(u, func(orig string) string {
			if ref, ok := overrides[imageName(orig)]; ok {
				used[imageName(orig)] = true
				return ref
			}
			img := orig
			for _, e := range m.images {
				img = e.apply(img)
			}
			return img
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %s %s: %w", m.File, u.GetKind(), u.GetName(), err)
		}
		out = append(out, u)
	}
	var unused []string
	for name := range overrides {
		if !used[name] {
			unused = append(unused, name)
		}
	}
	if len(unused) > 0 {
		sort.Strings(unused)
		return nil, fmt.Errorf("no container of the manifests uses image %s", strings.Join(unused, ", "))
	}
	return out, nil
}

// Images lists the images of the rendered objects' containers by object,
// "Kind/name: image, image".
func Images(objs []*unstructured.Unstructured) map[string][]string {
	out := map[string][]string{}
	for _, u := range objs {
		_ = mapImages(u, func(img string) string {
			out[u.GetKind()+"/"+u.GetName()] = append(out[u.GetKind()+"/"+u.GetName()], img)
			return img
		})
	}
	return out
}

// podSpecPaths are where pod specs sit in the workload kinds, as in
// kustomize's image transformer.
var podSpecPaths = [][]string{
	{"spec"},                     // Pod
	{"spec", "template", "spec"}, // Deployment, DaemonSet, StatefulSet, ReplicaSet, Job
	{"spec", "jobTemplate", "spec", "template", "spec"}, // CronJob
}

// mapImages replaces the image of every container and init container.
func mapImages(u *unstructured.Unstructured, f func(string) string) error {
	for _, p := range podSpecPaths {
		spec, ok, err := unstructured.NestedMap(u.Object, p...)
		if err != nil || !ok {
			continue
		}
		changed := false
		for _, field := range []string{"containers", "initContainers"} {
			cs, ok := spec[field].([]any)
			if !ok {
				continue
			}
			for _, c := range cs {
				cm, ok := c.(map[string]any)
				if !ok {
					return fmt.Errorf("%s: a container is not an object", field)
				}
				img, _ := cm["image"].(string)
				if img == "" {
					continue
				}
				if n := f(img); n != img {
					cm["image"] = n
					changed = true
				}
			}
		}
		if changed {
			if err := unstructured.SetNestedMap(u.Object, spec, p...); err != nil {
				return err
			}
		}
	}
	return nil
}

// imageName is an image reference without its tag or digest.
func imageName(ref string) string {
	name, _, _ := strings.Cut(ref, "@")
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	return name
}

// apply is kustomize's image transformation of one reference.
func (e Image) apply(ref string) string {
	name := imageName(ref)
	if name != e.Name {
		return ref
	}
	suffix := ref[len(name):] // ":tag", "@digest", ":tag@digest" or ""
	if e.NewName != "" {
		name = e.NewName
	}
	switch {
	case e.Digest != "":
		suffix = "@" + e.Digest
	case e.NewTag != "":
		suffix = ":" + e.NewTag
	}
	return name + suffix
}
