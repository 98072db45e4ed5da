// Command mkimage wraps static binaries in a one-layer container image and
// writes it as a tarball that `ctr -n k8s.io images import` (and `docker
// load`) accept: images for a cluster without Docker or a registry. It uses
// go-containerregistry, so the result is a standard image whatever builds it.
//
//	mkimage -tag detour.local/detour-agent:dev -o agent.tar bin/detour-agent [more binaries...]
//
// The first binary is the entrypoint; every binary lands at /<its name>.
// The layer's file times are fixed, so the same binaries give the same image
// ID and a re-import is a no-op.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	tag := fs.String("tag", "", "image reference, e.g. detour.local/detour-agent:dev (required)")
	out := fs.String("o", "", "output tarball (required)")
	user := fs.String("user", "", "user the entrypoint runs as, e.g. 65532:65532 (empty: the runtime's default, root)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: mkimage -tag REF -o FILE [-user UID:GID] BINARY [BINARY...]\n\n"+
			"Wraps static binaries in a one-layer image (the first is the entrypoint, at /<name>)\n"+
			"and writes an image tarball for `ctr images import` or `docker load`.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	if *tag == "" || *out == "" || fs.NArg() == 0 {
		fs.Usage()
		os.Exit(2)
	}
	if err := build(*tag, *out, *user, fs.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

// epoch is the time of every file in the layer and of the image.
var epoch = time.Unix(0, 0).UTC()

func build(ref, out, user string, bins []string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("bad -tag: %w", err)
	}
	layerTar, err := layerOf(bins)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = []string{"/" + filepath.Base(bins[0])}
	cf.Config.Env = []string{"PATH=/"}
	cf.Config.User = user
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, tag, img); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", out, tag, id)
	return nil
}

// layerOf makes the one layer: the directories a container runtime expects
// and each binary at /<name>.
func layerOf(bins []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"etc/", "tmp/", "dev/", "proc/", "sys/", "var/", "var/run/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	for _, bin := range bins {
		exe, err := os.ReadFile(bin)
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: filepath.Base(bin), Mode: 0o755, Size: int64(len(exe)), ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(exe); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
