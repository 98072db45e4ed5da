// Package manifest reads Kubernetes objects written down: a YAML or JSON
// stream, a file, a directory of files, or a kustomization rendered in
// process with kustomize's API (no kustomize or kubectl binary). What it
// returns is what pkg/parity.Normalize takes. Errors name the file, the
// document and its line, never a value (a Secret's data may be anywhere).
package manifest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// MaxDocument bounds one YAML document, so a stream cannot make the
// decoder hold more than this at once.
const MaxDocument = 16 << 20

// Decode reads the objects of a YAML (or JSON) stream. name is the
// stream's name for errors. Empty documents are skipped; a List is
// expanded into its items.
func Decode(data []byte, name string) ([]map[string]any, error) {
	var out []map[string]any
	for i, doc := range splitDocuments(data) {
		if len(doc.text) > MaxDocument {
			return nil, fmt.Errorf("%s: document %d (line %d) is over %d MiB", name, i+1, doc.line, MaxDocument>>20)
		}
		objs, err := decodeDocument(doc.text)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d (line %d): %w", name, i+1, doc.line, err)
		}
		out = append(out, objs...)
	}
	return out, nil
}

type document struct {
	text []byte
	line int // of its first line, from 1
}

// splitDocuments cuts a YAML stream at its "---" lines.
func splitDocuments(data []byte) []document {
	var docs []document
	var cur bytes.Buffer
	start, line := 1, 0
	flush := func(next int) {
		if len(bytes.TrimSpace(cur.Bytes())) > 0 {
			docs = append(docs, document{text: append([]byte(nil), cur.Bytes()...), line: start})
		}
		cur.Reset()
		start = next
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), MaxDocument+1)
	for sc.Scan() {
		line++
		l := sc.Bytes()
		if isSeparator(l) {
			flush(line + 1)
			continue
		}
		cur.Write(l)
		cur.WriteByte('\n')
	}
	if sc.Err() != nil {
		// A line over the bound: hand the rest over whole, Decode refuses it.
		cur.Write(data)
	}
	flush(line + 1)
	return docs
}

func isSeparator(l []byte) bool {
	if !bytes.HasPrefix(l, []byte("---")) {
		return false
	}
	rest := bytes.TrimRight(l[3:], " \t\r")
	return len(rest) == 0 || rest[0] == '#' || rest[0] == ' '
}

// decodeDocument decodes one document: an object, a List of them, or
// nothing (comments only).
func decodeDocument(doc []byte) ([]map[string]any, error) {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, cleanYAMLError(err)
	}
	j = bytes.TrimSpace(j)
	if bytes.Equal(j, []byte("null")) {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, errors.New("not valid YAML or JSON")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("not an object (a YAML mapping with apiVersion and kind)")
	}
	kind, _ := obj["kind"].(string)
	if kind == "" {
		return nil, errors.New("no kind: not a Kubernetes object")
	}
	if strings.HasSuffix(kind, "List") {
		if items, ok := obj["items"].([]any); ok {
			var out []map[string]any
			for i, it := range items {
				m, ok := it.(map[string]any)
				if !ok {
					return nil, fmt.Errorf("%s item %d is not an object", kind, i+1)
				}
				if k, _ := m["kind"].(string); k == "" {
					return nil, fmt.Errorf("%s item %d has no kind", kind, i+1)
				}
				out = append(out, m)
			}
			return out, nil
		}
	}
	return []map[string]any{obj}, nil
}

// cleanYAMLError keeps the YAML parser's message (line and what is wrong)
// and drops any quoted text, which could be a value.
func cleanYAMLError(err error) error {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	if i := strings.IndexAny(msg, "\"'`"); i >= 0 {
		msg = strings.TrimSpace(msg[:i]) + " …"
	}
	return errors.New(msg)
}

// kustomizationFiles are the names kustomize looks for in a directory.
var kustomizationFiles = []string{"kustomization.yaml", "kustomization.yml", "Kustomization"}

// IsKustomization says whether dir holds a kustomization.
func IsKustomization(dir string) bool {
	for _, f := range kustomizationFiles {
		if st, err := os.Stat(filepath.Join(dir, f)); err == nil && !st.IsDir() {
			return true
		}
	}
	return false
}

// ReadDir reads a directory: rendered with kustomize when it holds a
// kustomization, else every .yaml, .yml and .json file below it (in name
// order, skipping names that start with a dot).
func ReadDir(dir string) ([]map[string]any, error) {
	if IsKustomization(dir) {
		return Kustomize(dir)
	}
	var files []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir && strings.HasPrefix(e.Name(), ".") {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if e.IsDir() {
			return nil
		}
		switch strings.ToLower(filepath.Ext(p)) {
		case ".yaml", ".yml", ".json":
			for _, k := range kustomizationFiles {
				if e.Name() == k {
					return nil // a nested kustomization's own file is no object
				}
			}
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	sort.Strings(files)
	var out []map[string]any
	for _, f := range files {
		objs, err := ReadFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	return out, nil
}

// ReadFile reads the objects of one file.
func ReadFile(file string) ([]map[string]any, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return Decode(b, file)
}

// Kustomize renders the kustomization in dir as `kustomize build` would,
// with its defaults: loads restricted to the directory tree, no plugins,
// no Helm.
func Kustomize(dir string) ([]map[string]any, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %s", dir, firstLine(err.Error()))
	}
	var out []map[string]any
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			return nil, fmt.Errorf("kustomize %s: %s: %w", dir, r.CurId(), err)
		}
		out = append(out, m)
	}
	return out, nil
}

// firstLine keeps kustomize's message short: some of its errors go on to
// print a whole resource, and a resource can be a Secret.
func firstLine(msg string) string {
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if len(msg) > 300 {
		msg = msg[:300] + " …"
	}
	return msg
}
