// Command mkimage wraps static binaries in a one-layer container image and
// writes it as a tarball that `ctr -n k8s.io images import` (and `docker
// load`) accept: images for a cluster without Docker or a registry. It uses
// go-containerregistry, so the result is a standard image whatever builds it.
//
//	mkimage -tag detour.local/detour-agent:dev -o agent.tar bin/detour-agent [more binaries...]
//
// The first binary is the entrypoint; every binary lands at /<its name>.
// With -root DIR, the layer is that directory's tree instead (files,
// directories and symbolic links, with their modes; owned by root), and
// -entrypoint and -env say how it runs: how test/e2e/pgimage.sh makes a
// PostgreSQL image from Debian's package files.
// The layer's file times are fixed, so the same files give the same image
// ID and a re-import is a no-op.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
	root := fs.String("root", "", "a directory whose tree is the layer, instead of binaries")
	entrypoint := fs.String("entrypoint", "", "the entrypoint's path in the image (default: /<the first binary>)")
	var env []string
	fs.Func("env", "NAME=VALUE in the image's environment (repeatable; default PATH=/)", func(s string) error {
		if !strings.Contains(s, "=") {
			return errors.New("want NAME=VALUE")
		}
		env = append(env, s)
		return nil
	})
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: mkimage -tag REF -o FILE [-user UID:GID] BINARY [BINARY...]\n"+
			"       mkimage -tag REF -o FILE -root DIR -entrypoint PATH [-env NAME=VALUE...] [-user UID:GID]\n\n"+
			"Wraps static binaries in a one-layer image (the first is the entrypoint, at /<name>),\n"+
			"or a directory tree, and writes an image tarball for `ctr images import` or `docker load`.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	if *tag == "" || *out == "" || (fs.NArg() == 0) == (*root == "") || *root != "" && *entrypoint == "" {
		fs.Usage()
		os.Exit(2)
	}
	if *entrypoint == "" {
		*entrypoint = "/" + filepath.Base(fs.Arg(0))
	}
	if len(env) == 0 {
		env = []string{"PATH=/"}
	}
	if err := build(*tag, *out, *user, *root, *entrypoint, env, fs.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

// epoch is the time of every file in the layer and of the image.
var epoch = time.Unix(0, 0).UTC()

func build(ref, out, user, root, entrypoint string, env, bins []string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("bad -tag: %w", err)
	}
	var layerTar []byte
	if root != "" {
		layerTar, err = layerOfTree(root)
	} else {
		layerTar, err = layerOf(bins)
	}
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
	cf.Config.Entrypoint = []string{entrypoint}
	cf.Config.Env = env
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

// layerOfTree makes the one layer from a directory tree: its directories,
// regular files and symbolic links, in a fixed order, owned by root, with
// their modes and the fixed time.
func layerOfTree(root string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := int64(info.Mode().Perm())
		for bit, m := range map[fs.FileMode]int64{fs.ModeSetuid: 0o4000, fs.ModeSetgid: 0o2000, fs.ModeSticky: 0o1000} {
			if info.Mode()&bit != 0 {
				mode |= m
			}
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), Mode: mode, ModTime: epoch}
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
			return tw.WriteHeader(hdr)
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			return tw.WriteHeader(hdr)
		case info.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(b))
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return fmt.Errorf("%s: not a file, directory or symbolic link", path)
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
