package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// archive is an image archive read back: its files by name, in order.
type archive struct {
	names []string
	files map[string][]byte
}

func readArchive(t *testing.T, b []byte) archive {
	t.Helper()
	a := archive{files: map[string][]byte{}}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !hdr.ModTime.Equal(Epoch) || hdr.Uid != 0 || hdr.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d", hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid)
		}
		a.names = append(a.names, hdr.Name)
		if hdr.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			a.files[hdr.Name] = data
		}
	}
	return a
}

// blob returns the blob of desc, checking its digest and size.
func (a archive) blob(t *testing.T, desc ocispec.Descriptor) []byte {
	t.Helper()
	name := "blobs/sha256/" + desc.Digest.Encoded()
	b, ok := a.files[name]
	if !ok {
		t.Fatalf("no blob %s", name)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != desc.Digest.Encoded() {
		t.Errorf("blob %s has digest %x", name, sum)
	}
	if int64(len(b)) != desc.Size {
		t.Errorf("blob %s: %d bytes, descriptor says %d", name, len(b), desc.Size)
	}
	return b
}

func unmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}

// testRootfs makes a small tree with the kinds of files an image holds.
func testRootfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "empty"), 0o700))
	must(os.MkdirAll(filepath.Join(dir, "tmp"), 0o755))
	must(os.Chmod(filepath.Join(dir, "tmp"), os.ModeSticky|0o777))
	must(os.WriteFile(filepath.Join(dir, "bin", "tool"), []byte("#!/bin/sh\necho tool\n"), 0o755))
	must(os.Chmod(filepath.Join(dir, "bin", "tool"), os.ModeSetuid|0o755))
	must(os.WriteFile(filepath.Join(dir, "etc"), []byte("conf\n"), 0o600))
	must(os.Symlink("tool", filepath.Join(dir, "bin", "link")))
	must(os.Link(filepath.Join(dir, "bin", "tool"), filepath.Join(dir, "bin", "hard")))
	must(syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	return dir
}

func TestWriteReadBack(t *testing.T) {
	rootfs := testRootfs(t)
	cfg := ImageConfig{Entrypoint: []string{"/bin/tool"}, Cmd: []string{"-x"}, Env: []string{"A=1"}, WorkingDir: "/tmp"}
	var buf bytes.Buffer
	const name = "example.local/test:1"
	if err := Write(&buf, name, rootfs, cfg); err != nil {
		t.Fatal(err)
	}
	a := readArchive(t, buf.Bytes())

	var layout ocispec.ImageLayout
	unmarshal(t, a.files[ocispec.ImageLayoutFile], &layout)
	if layout.Version != ocispec.ImageLayoutVersion {
		t.Errorf("oci-layout version %q", layout.Version)
	}
	var index ocispec.Index
	unmarshal(t, a.files["index.json"], &index)
	if index.SchemaVersion != 2 || index.MediaType != ocispec.MediaTypeImageIndex || len(index.Manifests) != 1 {
		t.Fatalf("index: %+v", index)
	}
	m := index.Manifests[0]
	if m.Annotations[ocispec.AnnotationRefName] != name || m.Annotations["io.containerd.image.name"] != name {
		t.Errorf("index annotations %v, want both names %s", m.Annotations, name)
	}
	if m.MediaType != ocispec.MediaTypeImageManifest || m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != runtime.GOARCH {
		t.Errorf("index manifest descriptor %+v", m)
	}

	var manifest ocispec.Manifest
	unmarshal(t, a.blob(t, m), &manifest)
	if manifest.SchemaVersion != 2 || len(manifest.Layers) != 1 || manifest.Config.MediaType != ocispec.MediaTypeImageConfig {
		t.Fatalf("manifest %+v", manifest)
	}
	var config ocispec.Image
	unmarshal(t, a.blob(t, manifest.Config), &config)
	if !slices.Equal(config.Config.Entrypoint, cfg.Entrypoint) || !slices.Equal(config.Config.Cmd, cfg.Cmd) ||
		!slices.Equal(config.Config.Env, cfg.Env) || config.Config.WorkingDir != "/tmp" || config.OS != "linux" {
		t.Errorf("config %+v", config)
	}

	layer := manifest.Layers[0]
	if layer.MediaType != ocispec.MediaTypeImageLayerGzip {
		t.Errorf("layer media type %s", layer.MediaType)
	}
	gz, err := gzip.NewReader(bytes.NewReader(a.blob(t, layer)))
	if err != nil {
		t.Fatal(err)
	}
	tarball, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(tarball); len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0].Encoded() != hex.EncodeToString(sum[:]) {
		t.Errorf("diff ids %v, uncompressed layer %x", config.RootFS.DiffIDs, sum)
	}

	type entry struct {
		typ      byte
		mode     int64
		linkname string
		content  string
	}
	got := map[string]entry{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !hdr.ModTime.Equal(Epoch) || hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("layer %s: mtime %v owner %d:%d %q:%q", hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname)
		}
		data, _ := io.ReadAll(tr)
		got[hdr.Name] = entry{hdr.Typeflag, hdr.Mode, hdr.Linkname, string(data)}
		order = append(order, hdr.Name)
	}
	want := map[string]entry{
		"bin/":     {tar.TypeDir, 0o755, "", ""},
		"bin/hard": {tar.TypeReg, 0o4755, "", "#!/bin/sh\necho tool\n"},
		"bin/link": {tar.TypeSymlink, 0o777, "tool", ""},
		"bin/tool": {tar.TypeLink, 0o4755, "bin/hard", ""},
		"empty/":   {tar.TypeDir, 0o700, "", ""},
		"etc":      {tar.TypeReg, 0o600, "", "conf\n"},
		"fifo":     {tar.TypeFifo, 0o644 &^ umask(), "", ""},
		"tmp/":     {tar.TypeDir, 0o1777, "", ""},
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || g != w {
			t.Errorf("layer entry %s: got %+v (present %v), want %+v", name, g, ok, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("layer entries %v, want %d", order, len(want))
	}
	if !slices.IsSorted(order) {
		t.Errorf("layer entries not sorted: %v", order)
	}
}

func umask() int64 {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return int64(m)
}

func TestWriteDeterministic(t *testing.T) {
	rootfs := testRootfs(t)
	var a, b bytes.Buffer
	if err := Write(&a, "x.local/a:1", rootfs, ImageConfig{Cmd: []string{"sh"}}); err != nil {
		t.Fatal(err)
	}
	// The same tree elsewhere, with other times: the same bytes.
	other := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", rootfs, other).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if err := os.Chtimes(filepath.Join(other, "etc"), Epoch.AddDate(1, 0, 0), Epoch.AddDate(1, 0, 0)); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, "x.local/a:1", other, ImageConfig{Cmd: []string{"sh"}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("the same tree and config gave different archives")
	}
}

func TestWriteImagesShareLayer(t *testing.T) {
	rootfs := testRootfs(t)
	var buf bytes.Buffer
	descs, err := WriteImages(&buf,
		Image{Name: "x.local/one:1", Rootfs: rootfs, Config: ImageConfig{Cmd: []string{"one"}}},
		Image{Name: "x.local/two:1", Rootfs: rootfs, Config: ImageConfig{Cmd: []string{"two"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(descs) != 2 || descs[0].Layer.Digest != descs[1].Layer.Digest || descs[0].Manifest.Digest == descs[1].Manifest.Digest {
		t.Fatalf("descriptors %+v", descs)
	}
	a := readArchive(t, buf.Bytes())
	var index ocispec.Index
	unmarshal(t, a.files["index.json"], &index)
	if len(index.Manifests) != 2 {
		t.Fatalf("index has %d manifests", len(index.Manifests))
	}
	for i, name := range []string{"x.local/one:1", "x.local/two:1"} {
		m := index.Manifests[i]
		if m.Digest != descs[i].Manifest.Digest || m.Annotations["io.containerd.image.name"] != name || m.Annotations[ocispec.AnnotationRefName] != name {
			t.Errorf("index manifest %d: %+v", i, m)
		}
		a.blob(t, m)
	}
	blobs := 0
	for _, n := range a.names {
		if strings.HasPrefix(n, "blobs/sha256/") && n != "blobs/sha256/" {
			blobs++
		}
	}
	if blobs != 5 { // one layer, two configs, two manifests
		t.Errorf("%d blobs, want 5: %v", blobs, a.names)
	}
}

func TestWriteErrors(t *testing.T) {
	if err := Write(io.Discard, "", t.TempDir(), ImageConfig{}); err == nil {
		t.Error("no name: no error")
	}
	if err := Write(io.Discard, "x.local/a:1", filepath.Join(t.TempDir(), "missing"), ImageConfig{}); err == nil {
		t.Error("missing rootfs: no error")
	}
	if _, err := WriteImages(io.Discard); err == nil {
		t.Error("no image: no error")
	}
}

func TestBusyboxAndPause(t *testing.T) {
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("no busybox (apt-get install busybox-static)")
	}
	path := filepath.Join(t.TempDir(), "local.tar")
	if err := WriteBusyboxFile(path, BusyboxImage(""), PauseImage("")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := WriteBusybox(&again, BusyboxImage(""), PauseImage("")); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, again.Bytes()) {
		t.Error("two busybox archives differ")
	}
	a := readArchive(t, b)
	var index ocispec.Index
	unmarshal(t, a.files["index.json"], &index)
	if len(index.Manifests) != 2 || index.Manifests[0].Annotations[AnnotationImageName] != BusyboxName ||
		index.Manifests[1].Annotations[AnnotationImageName] != PauseName {
		t.Fatalf("index %+v", index)
	}
	var manifest ocispec.Manifest
	unmarshal(t, a.blob(t, index.Manifests[1]), &manifest)
	var config ocispec.Image
	unmarshal(t, a.blob(t, manifest.Config), &config)
	if !slices.Equal(config.Config.Entrypoint, []string{"/bin/sh", "-c", PauseScript}) {
		t.Errorf("pause entrypoint %q", config.Config.Entrypoint)
	}
	// The layer holds bin/busybox and its applets as symlinks.
	gz, err := gzip.NewReader(bytes.NewReader(a.blob(t, manifest.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	found := map[string]*tar.Header{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		found[hdr.Name] = hdr
	}
	if h := found["bin/busybox"]; h == nil || h.Mode != 0o755 || h.Size == 0 {
		t.Errorf("bin/busybox: %+v", h)
	}
	if h := found["bin/sh"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
		t.Errorf("bin/sh: %+v", h)
	}
	if h := found["tmp/"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("tmp: %+v", h)
	}
}

// TestPauseScript runs the pause entrypoint with the host's busybox: it
// keeps running, and exits 0 on SIGTERM. (ctrtest runs it as PID 1 of a
// PID namespace, with runc.)
func TestPauseScript(t *testing.T) {
	sh, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("no busybox")
	}
	cmd := exec.Command(sh, "sh", "-c", PauseScript)
	// Its own process group: its sleep outlives it (outside a PID
	// namespace nothing kills it), and the group is killed at the end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("pause exited by itself: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("pause on SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("pause ignored SIGTERM")
	}
}
