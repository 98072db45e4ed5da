// Command mkimage wraps one static binary in a one-layer container image and
// writes it as a docker-archive tarball that `ctr -n k8s.io images import`
// loads: images for a cluster with no registry. The standard library is
// enough for that format (manifest.json, a config, one layer tar).
//
//	mkimage -bin ./pause -tag detour.local/pause:1 -o pause.tar [-- args...]
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func main() {
	bin := flag.String("bin", "", "static binary to put at /<its name> as the entrypoint")
	tag := flag.String("tag", "", "image name, e.g. detour.local/pause:1")
	out := flag.String("o", "", "output tarball")
	flag.Parse()
	if *bin == "" || *tag == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*bin, *tag, *out, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(bin, tag, out string, args []string) error {
	exe, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	name := "/" + filepath.Base(bin)
	// A fixed time keeps the layer, and so the image ID, the same for the
	// same binary.
	mtime := time.Unix(0, 0)
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, d := range []string{"etc/", "tmp/", "dev/", "proc/", "sys/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime}); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name[1:], Mode: 0o755, Size: int64(len(exe)), ModTime: mtime}); err != nil {
		return err
	}
	if _, err := tw.Write(exe); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer.Bytes())
	layerHex := hex.EncodeToString(layerSum[:])

	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      mtime.UTC().Format(time.RFC3339),
		"config": map[string]any{
			"Entrypoint": append([]string{name}, args...),
			"Env":        []string{"PATH=/"},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{tag},
		"Layers":   []string{layerHex + "/layer.tar"},
	}})
	if err != nil {
		return err
	}

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	ow := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		data []byte
	}{{configName, config}, {layerHex + "/layer.tar", layer.Bytes()}, {"manifest.json", manifest}} {
		if err := ow.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: mtime}); err != nil {
			return err
		}
		if _, err := ow.Write(e.data); err != nil {
			return err
		}
	}
	if err := ow.Close(); err != nil {
		return err
	}
	return f.Close()
}
