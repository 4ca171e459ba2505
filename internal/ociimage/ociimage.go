// Package ociimage writes OCI image archives (an OCI image layout in a
// tar: oci-layout, index.json, blobs/sha256/...) that `ctr image import`
// accepts, built from a local root filesystem, so containerd can run
// images without a registry.
//
// The output is deterministic: entries are sorted, modification times are
// fixed and owners are root, so the same rootfs and configuration always
// give the same digests.
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// AnnotationImageName is the annotation containerd reads on an index's
// manifest to name the image it imports (images.AnnotationImageName).
const AnnotationImageName = "io.containerd.image.name"

// Epoch is the modification time of every file in the archives: fixed, so
// that equal inputs give equal digests.
var Epoch = time.Unix(0, 0).UTC()

// ImageConfig is the part of an image configuration that says how its
// containers run.
type ImageConfig struct {
	Entrypoint []string
	Cmd        []string
	Env        []string // KEY=value; empty means a default PATH
	WorkingDir string
	User       string
	Labels     map[string]string
}

// DefaultEnv is the environment of an image whose ImageConfig has none.
var DefaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// Image is one image of an archive: its full name (host/path:tag, such as
// cocoon.local/busybox:latest), the directory its one layer is made of, and
// its configuration.
type Image struct {
	Name   string
	Rootfs string
	Config ImageConfig
}

// Descriptors are the digests of one image WriteImages wrote: its manifest
// (the image's digest in containerd), its configuration and its one layer
// (compressed; DiffID is the digest of the uncompressed tar).
type Descriptors struct {
	Manifest, Config, Layer ocispec.Descriptor
	DiffID                  digest.Digest
}

// Write writes to w an OCI image archive holding one image named name (a
// full reference such as cocoon.local/busybox:latest) whose one layer holds
// the tree at rootfs and whose configuration is cfg. The image is for this
// machine's architecture.
func Write(w io.Writer, name, rootfs string, cfg ImageConfig) error {
	_, err := WriteImages(w, Image{Name: name, Rootfs: rootfs, Config: cfg})
	return err
}

// WriteImages writes to w one OCI image archive holding images, in that
// order in its index, and returns their digests. Images made of the same
// rootfs directory share their layer blob.
func WriteImages(w io.Writer, images ...Image) ([]Descriptors, error) {
	if len(images) == 0 {
		return nil, errors.New("write images: no image")
	}
	names := make([]string, len(images))
	for i, img := range images {
		names[i] = img.Name
	}
	fail := func(err error) ([]Descriptors, error) {
		return nil, fmt.Errorf("write image %s: %w", strings.Join(names, ", "), err)
	}
	type blob struct {
		desc ocispec.Descriptor
		data []byte   // or
		file *os.File // for layers
	}
	blobs := map[digest.Digest]blob{}
	type layer struct {
		desc   ocispec.Descriptor
		diffID digest.Digest
	}
	layers := map[string]layer{}
	defer func() {
		for _, b := range blobs {
			if b.file != nil {
				b.file.Close()
				os.Remove(b.file.Name())
			}
		}
	}()

	descs := make([]Descriptors, len(images))
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
	}
	for i, img := range images {
		if img.Name == "" {
			return fail(errors.New("an image has no name"))
		}
		l, ok := layers[img.Rootfs]
		if !ok {
			f, desc, diffID, err := makeLayer(img.Rootfs)
			if err != nil {
				return fail(err)
			}
			if _, dup := blobs[desc.Digest]; dup {
				f.Close()
				os.Remove(f.Name())
			} else {
				blobs[desc.Digest] = blob{desc: desc, file: f}
			}
			l = layer{desc, diffID}
			layers[img.Rootfs] = l
		}
		d := &descs[i]
		d.Layer, d.DiffID = l.desc, l.diffID

		env := img.Config.Env
		if len(env) == 0 {
			env = DefaultEnv
		}
		config := ocispec.Image{
			Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
			Config: ocispec.ImageConfig{
				User: img.Config.User, Env: env, Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd,
				WorkingDir: img.Config.WorkingDir, Labels: img.Config.Labels,
			},
			RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{d.DiffID}},
		}
		configJSON, err := json.Marshal(config)
		if err != nil {
			return fail(err)
		}
		d.Config = descriptorOf(ocispec.MediaTypeImageConfig, configJSON)
		blobs[d.Config.Digest] = blob{desc: d.Config, data: configJSON}

		manifestJSON, err := json.Marshal(ocispec.Manifest{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: ocispec.MediaTypeImageManifest,
			Config:    d.Config,
			Layers:    []ocispec.Descriptor{d.Layer},
		})
		if err != nil {
			return fail(err)
		}
		d.Manifest = descriptorOf(ocispec.MediaTypeImageManifest, manifestJSON)
		blobs[d.Manifest.Digest] = blob{desc: d.Manifest, data: manifestJSON}

		indexed := d.Manifest
		indexed.Platform = &config.Platform
		indexed.Annotations = map[string]string{
			ocispec.AnnotationRefName: img.Name,
			AnnotationImageName:       img.Name,
		}
		index.Manifests = append(index.Manifests, indexed)
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return fail(err)
	}
	layoutJSON, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return fail(err)
	}

	tw := tar.NewWriter(w)
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: Epoch, Format: tar.FormatPAX}); err != nil {
			return fail(err)
		}
	}
	digests := make([]digest.Digest, 0, len(blobs))
	for dg := range blobs {
		digests = append(digests, dg)
	}
	sort.Slice(digests, func(i, j int) bool { return digests[i] < digests[j] })
	for _, dg := range digests {
		b := blobs[dg]
		var r io.Reader = bytes.NewReader(b.data)
		if b.file != nil {
			if _, err := b.file.Seek(0, io.SeekStart); err != nil {
				return fail(err)
			}
			r = b.file
		}
		if err := writeFile(tw, "blobs/sha256/"+dg.Encoded(), b.desc.Size, r); err != nil {
			return fail(err)
		}
	}
	if err := writeFile(tw, "index.json", int64(len(indexJSON)), bytes.NewReader(indexJSON)); err != nil {
		return fail(err)
	}
	if err := writeFile(tw, ocispec.ImageLayoutFile, int64(len(layoutJSON)), bytes.NewReader(layoutJSON)); err != nil {
		return fail(err)
	}
	if err := tw.Close(); err != nil {
		return fail(err)
	}
	return descs, nil
}

// makeLayer writes the gzipped tar of rootfs to a temporary file (the
// archive's tar header needs the size before the bytes) and returns it
// with its descriptor and the digest of the uncompressed tar.
func makeLayer(rootfs string) (*os.File, ocispec.Descriptor, digest.Digest, error) {
	var desc ocispec.Descriptor
	st, err := os.Stat(rootfs)
	if err != nil {
		return nil, desc, "", err
	}
	if !st.IsDir() {
		return nil, desc, "", fmt.Errorf("rootfs %s is not a directory", rootfs)
	}
	f, err := os.CreateTemp("", "ociimage-layer-")
	if err != nil {
		return nil, desc, "", err
	}
	fail := func(err error) (*os.File, ocispec.Descriptor, digest.Digest, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, desc, "", err
	}
	compressed, uncompressed := sha256.New(), sha256.New()
	size := &countingWriter{w: io.MultiWriter(f, compressed)}
	gz, err := gzip.NewWriterLevel(size, gzip.DefaultCompression)
	if err != nil {
		return fail(err)
	}
	if err := writeLayer(io.MultiWriter(gz, uncompressed), rootfs); err != nil {
		return fail(fmt.Errorf("layer of %s: %w", rootfs, err))
	}
	if err := gz.Close(); err != nil {
		return fail(err)
	}
	desc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digestOf(compressed), Size: size.n}
	return f, desc, digestOf(uncompressed), nil
}

// WriteFile writes the archive Write makes to path, atomically: a
// temporary file in the same directory renamed over path.
func WriteFile(path, name, rootfs string, cfg ImageConfig) error {
	return writeFileAtomic(path, func(w io.Writer) error { return Write(w, name, rootfs, cfg) })
}

func writeFileAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// writeFile writes one regular file of the outer archive.
func writeFile(tw *tar.Writer, name string, size int64, r io.Reader) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: Epoch, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, r)
	if err == nil && n != size {
		err = fmt.Errorf("%s: wrote %d bytes, want %d", name, n, size)
	}
	return err
}

// writeLayer writes the tree at root as a tar: entries in lexical order of
// their paths, modes, symlinks, hard links and device numbers kept, owners
// root, times fixed.
func writeLayer(w io.Writer, root string) error {
	var paths []string
	err := filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != root {
			paths = append(paths, path)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// WalkDir already visits in lexical order within a directory; sorting
	// the slash-separated relative names makes the order independent of it.
	rel := make(map[string]string, len(paths))
	for _, p := range paths {
		r, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel[p] = filepath.ToSlash(r)
	}
	sort.Slice(paths, func(i, j int) bool { return rel[paths[i]] < rel[paths[j]] })

	tw := tar.NewWriter(w)
	type inode struct{ dev, ino uint64 }
	links := map[inode]string{}
	for _, p := range paths {
		name := rel[p]
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{
			Name:    name,
			Mode:    int64(fi.Mode().Perm()),
			ModTime: Epoch,
			Format:  tar.FormatPAX,
		}
		if fi.Mode()&fs.ModeSetuid != 0 {
			hdr.Mode |= 0o4000
		}
		if fi.Mode()&fs.ModeSetgid != 0 {
			hdr.Mode |= 0o2000
		}
		if fi.Mode()&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		switch m := fi.Mode(); {
		case m.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		case m&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		case m.IsRegular():
			if st != nil && st.Nlink > 1 {
				key := inode{uint64(st.Dev), st.Ino}
				if first, ok := links[key]; ok {
					hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
					break
				}
				links[key] = name
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
		case m&fs.ModeNamedPipe != 0:
			hdr.Typeflag = tar.TypeFifo
		case m&fs.ModeDevice != 0:
			hdr.Typeflag = tar.TypeBlock
			if m&fs.ModeCharDevice != 0 {
				hdr.Typeflag = tar.TypeChar
			}
			if st != nil {
				hdr.Devmajor, hdr.Devminor = int64(major(st.Rdev)), int64(minor(st.Rdev))
			}
		default:
			// Sockets and other special files have no place in an image.
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if err := copyFile(tw, p, hdr.Size); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	return tw.Close()
}

func copyFile(w io.Writer, path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err == nil && n != size {
		err = fmt.Errorf("file changed size while being archived (%d of %d bytes)", n, size)
	}
	return err
}

func major(dev uint64) uint64 { return (dev>>8)&0xfff | (dev>>32)&^0xfff }
func minor(dev uint64) uint64 { return dev&0xff | (dev>>12)&^0xff }

func digestOf(h hash.Hash) digest.Digest { return digest.NewDigest(digest.SHA256, h) }

func descriptorOf(mediaType string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
