package envtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"time"

	"sigs.k8s.io/yaml"
)

// crd is the part of a CustomResourceDefinition the harness reads.
type crd struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Group string `json:"group"`
		Names struct {
			Plural string `json:"plural"`
		} `json:"names"`
		Versions []struct {
			Name   string `json:"name"`
			Served bool   `json:"served"`
		} `json:"versions"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

// InstallCRDs applies the CustomResourceDefinitions in the YAML files (one
// or more documents each) as the admin, with server-side apply, and waits
// until each is Established and its served versions answer a list: after
// that, a test can create custom resources. It returns the CRDs' names.
func (e *Env) InstallCRDs(ctx context.Context, files ...string) ([]string, error) {
	var crds []crd
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, doc := range splitYAML(b) {
			j, err := yaml.YAMLToJSON(doc)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			var c crd
			if err := json.Unmarshal(j, &c); err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if c.Metadata.Name == "" {
				return nil, fmt.Errorf("%s: a document without metadata.name", f)
			}
			path := "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/" + url.PathEscape(c.Metadata.Name) +
				"?fieldManager=detour-envtest&force=true"
			code, body, err := e.Do(ctx, e.AdminToken, http.MethodPatch, path, j, "application/apply-patch+yaml")
			if err != nil {
				return nil, fmt.Errorf("apply %s: %w", c.Metadata.Name, err)
			}
			if code != http.StatusOK && code != http.StatusCreated {
				return nil, fmt.Errorf("apply %s: HTTP %d: %s", c.Metadata.Name, code, body)
			}
			crds = append(crds, c)
		}
	}
	names := make([]string, 0, len(crds))
	for _, c := range crds {
		if err := e.waitEstablished(ctx, c); err != nil {
			return nil, err
		}
		names = append(names, c.Metadata.Name)
	}
	return names, nil
}

func (e *Env) waitEstablished(ctx context.Context, c crd) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ready := func() error {
		code, body, err := e.Do(ctx, e.AdminToken, http.MethodGet,
			"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"+url.PathEscape(c.Metadata.Name), nil, "")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("HTTP %d: %s", code, body)
		}
		var got crd
		if err := json.Unmarshal(body, &got); err != nil {
			return err
		}
		established := false
		for _, cond := range got.Status.Conditions {
			if cond.Type == "Established" && cond.Status == "True" {
				established = true
			}
		}
		if !established {
			return fmt.Errorf("not Established: %+v", got.Status.Conditions)
		}
		// Established comes a moment before the handler serves the
		// resource: wait for a list to answer too.
		for _, v := range got.Spec.Versions {
			if !v.Served {
				continue
			}
			path := "/apis/" + got.Spec.Group + "/" + v.Name + "/" + got.Spec.Names.Plural + "?limit=1"
			code, body, err := e.Do(ctx, e.AdminToken, http.MethodGet, path, nil, "")
			if err != nil {
				return err
			}
			if code != http.StatusOK {
				return fmt.Errorf("list %s: HTTP %d: %s", path, code, body)
			}
		}
		return nil
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s: %w (last: %w)", c.Metadata.Name, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// splitYAML splits a multi-document YAML stream on "---" lines and drops
// empty documents.
func splitYAML(b []byte) [][]byte {
	var docs [][]byte
	for _, doc := range bytes.Split(append([]byte("\n"), b...), []byte("\n---")) {
		// The separator may carry a comment or trailing spaces: drop the
		// rest of its line.
		if i := bytes.IndexByte(doc, '\n'); i >= 0 && !bytes.HasPrefix(doc, []byte("\n")) {
			doc = doc[i:]
		}
		if len(bytes.TrimSpace(doc)) > 0 {
			docs = append(docs, doc)
		}
	}
	return docs
}
