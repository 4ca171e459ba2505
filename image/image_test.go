package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/cocoon-runtime/cocoon/internal/modindex"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestCacheKey(t *testing.T) {
	od := []string{"net/*.ko"}
	base := cacheKey("deb1", "agent1", []string{"a", "b"}, od)
	if base != cacheKey("deb1", "agent1", []string{"a", "b"}, od) {
		t.Fatal("cache key not stable")
	}
	for name, k := range map[string]string{
		"kernel":       cacheKey("deb2", "agent1", []string{"a", "b"}, od),
		"agent":        cacheKey("deb1", "agent2", []string{"a", "b"}, od),
		"modules":      cacheKey("deb1", "agent1", []string{"a", "b", "c"}, od),
		"module order": cacheKey("deb1", "agent1", []string{"b", "a"}, od),
		"module split": cacheKey("deb1", "agent1", []string{"ab"}, od),
		"on-demand":    cacheKey("deb1", "agent1", []string{"a", "b"}, []string{"fs/*.ko"}),
		"no on-demand": cacheKey("deb1", "agent1", []string{"a", "b"}, nil),
	} {
		if k == base {
			t.Errorf("key unchanged when the %s changes", name)
		}
	}
}

const aptShowMeta = `Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 13
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Description-en: Linux for x86-64 cloud (meta-package)
 This package depends on the latest Linux kernel and modules for use on
 cloud platforms including Amazon EC2, Microsoft Azure, and GCE.
SHA256: 00be21c0c17f08ddf26e82d3b53fe7a41efa4a288938da6bb69e89c4b25c281d

Package: linux-image-cloud-amd64
Version: 6.1.100-1
`

func TestParseControl(t *testing.T) {
	f := parseControl(aptShowMeta)
	if f["Package"] != "linux-image-cloud-amd64" || f["Version"] != "6.1.192-2" || f["Architecture"] != "amd64" ||
		f["SHA256"] != "00be21c0c17f08ddf26e82d3b53fe7a41efa4a288938da6bb69e89c4b25c281d" {
		t.Errorf("fields: %v", f)
	}
	if !strings.HasSuffix(f["Description-en"], "\ncloud platforms including Amazon EC2, Microsoft Azure, and GCE.") {
		t.Errorf("continuation lines: %q", f["Description-en"])
	}
	pkg, version, ok := kernelDependency(f["Package"], f["Depends"])
	if !ok || pkg != "linux-image-6.1.0-56-cloud-amd64" || version != "6.1.192-2" {
		t.Errorf("kernelDependency = %q, %q, %v", pkg, version, ok)
	}
	// The kernel package itself depends on no other kernel.
	if pkg, _, ok := kernelDependency("linux-image-6.1.0-56-cloud-amd64", "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool"); ok {
		t.Errorf("kernel package resolved to %s", pkg)
	}
	if pkg, version, ok := kernelDependency("m", "foo, linux-image-6.1.0-9-amd64:amd64"); !ok || pkg != "linux-image-6.1.0-9-amd64" || version != "" {
		t.Errorf("unpinned dependency: %q %q %v", pkg, version, ok)
	}
}

func TestNormalizeModules(t *testing.T) {
	got, err := normalizeModules([]string{"virtio-rng", " overlay "})
	if err != nil || !slices.Equal(got, []string{"virtio_rng", "overlay"}) {
		t.Errorf("got %v, %v", got, err)
	}
	for _, bad := range [][]string{nil, {""}, {"a,b"}, {"a/b"}} {
		if _, err := normalizeModules(bad); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

func TestReadAgent(t *testing.T) {
	dir := t.TempDir()
	static := filepath.Join(dir, "static")
	dynamic := filepath.Join(dir, "dynamic")
	os.WriteFile(static, fakeAgent(t, "s", false), 0o755)
	os.WriteFile(dynamic, fakeAgent(t, "d", true), 0o755)
	if _, _, err := readAgent(static); err != nil {
		t.Errorf("static agent: %v", err)
	}
	if _, _, err := readAgent(dynamic); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("dynamic agent: error %v", err)
	}
	if _, _, err := readAgent(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing agent: error %v", err)
	}
}

func TestCurrentNoImage(t *testing.T) {
	_, err := Current(t.TempDir())
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("error %v does not wrap fs.ErrNotExist", err)
	}
	if !strings.Contains(err.Error(), "cocoon image build") {
		t.Errorf("error %q does not tell to run cocoon image build", err)
	}
}

// recorder collects progress messages.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) progress(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}

func (r *recorder) has(sub string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

// TestBuildFakeKernel runs the whole build on a synthetic kernel package.
func TestBuildFakeKernel(t *testing.T) {
	dir := t.TempDir()
	deb := fakeKernelDeb(t, dir, "6.1.0-99-test", "6.1.1-1")
	agent := filepath.Join(dir, "cocoon-agent")
	if err := os.WriteFile(agent, fakeAgent(t, "v1", false), 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	ctx := context.Background()

	rec := &recorder{}
	img, err := Build(ctx, BuildOptions{DataDir: data, AgentPath: agent, KernelDeb: deb, Progress: rec.progress})
	if err != nil {
		t.Fatal(err)
	}
	if img.KernelRelease != "6.1.0-99-test" || img.KernelPackage != "linux-image-6.1.0-99-test" || img.KernelVersion != "6.1.1-1" {
		t.Errorf("image: %+v", img)
	}
	if !slices.Equal(img.Modules, wantDefaultOrder) {
		t.Errorf("modules:\n got %v\nwant %v", img.Modules, wantDefaultOrder)
	}
	if img.Dir != filepath.Join(data, "images", img.ID) || img.Kernel != filepath.Join(img.Dir, "vmlinux") || img.Initrd != filepath.Join(img.Dir, "initramfs.cpio") {
		t.Errorf("paths: %+v", img)
	}
	for _, p := range []string{img.Kernel, img.KernelBzImage, img.Initrd, filepath.Join(img.Dir, ManifestFile)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o644 {
			t.Errorf("%s: mode %v, want 0644", p, fi.Mode())
		}
	}
	if _, _, err := checkVmlinux(img.Kernel); err != nil {
		t.Error(err)
	}
	archive, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	var list string
	var netFailover []byte
	for _, m := range readNewc(t, archive) {
		switch m.Name {
		case "etc/cocoon/modules":
			list = string(m.Data)
		case "lib/modules/6.1.0-99-test/net_failover.ko":
			netFailover = m.Data
		}
	}
	// net_failover comes before virtio_net in the package, so it was
	// taken on the second read.
	if !bytes.Equal(netFailover, fakeModule(t, "net_failover", "6.1.0-99-test", "failover")) {
		t.Errorf("net_failover.ko in initramfs is %d bytes, not the module", len(netFailover))
	}
	if n := strings.Count(list, "\n"); n != len(wantDefaultOrder) || !strings.HasPrefix(list, "/lib/modules/6.1.0-99-test/virtio_ring.ko\n") {
		t.Errorf("modules list:\n%s", list)
	}
	if !rec.has("ready in") {
		t.Errorf("progress: %q", rec.msgs)
	}

	// The on-demand tree: the modules the default patterns match (overlay,
	// tun and its dependency), not the others, and an index the guest
	// resolves the kernel's requests with.
	if img.ModulesDir != filepath.Join(img.Dir, ModulesDir) {
		t.Fatalf("modules dir %q", img.ModulesDir)
	}
	b, err := os.ReadFile(filepath.Join(img.ModulesDir, "index"))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := modindex.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	var tree []string
	ents, _ := os.ReadDir(img.ModulesDir)
	for _, e := range ents {
		tree = append(tree, e.Name())
	}
	if want := []string{"index", "overlay.ko", "tap_helper.ko", "tun.ko"}; !slices.Equal(tree, want) {
		t.Errorf("module tree %v, want %v", tree, want)
	}
	if order, err := ix.Resolve("char-major-10-200"); err != nil || !slices.Equal(order, []string{"tap_helper", "tun"}) {
		t.Errorf("Resolve(char-major-10-200) = %v, %v", order, err)
	}
	if len(ix.Nodes) != 1 || ix.Nodes[0].Name != "net/tun" || ix.Release != "6.1.0-99-test" {
		t.Errorf("index %+v", ix)
	}
	if got := ModuleTree(img.Initrd); got != img.ModulesDir {
		t.Errorf("ModuleTree(%s) = %q", img.Initrd, got)
	}
	if got := ModuleTree(filepath.Join(dir, "elsewhere", InitramfsFile)); got != "" {
		t.Errorf("ModuleTree of an initrd outside an image = %q", got)
	}

	cur, err := Current(data)
	if err != nil {
		t.Fatal(err)
	}
	if cur.ID != img.ID || cur.Dir != img.Dir || !cur.Built.Equal(img.Built) {
		t.Errorf("Current = %+v, want %+v", cur, img)
	}

	// Same inputs: nothing is rebuilt.
	before, _ := os.Stat(img.Kernel)
	rec = &recorder{}
	again, err := Build(ctx, BuildOptions{DataDir: data, AgentPath: agent, KernelDeb: deb, Progress: rec.progress})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(img.Kernel)
	if again.ID != img.ID || !rec.has("up to date") || rec.has("extracting") || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("second build was not skipped: id %s→%s, progress %q", img.ID, again.ID, rec.msgs)
	}

	// A new agent makes a new image, which becomes current; the old one
	// stays.
	if err := os.WriteFile(agent, fakeAgent(t, "v2", false), 0o755); err != nil {
		t.Fatal(err)
	}
	newer, err := Build(ctx, BuildOptions{DataDir: data, AgentPath: agent, KernelDeb: deb})
	if err != nil {
		t.Fatal(err)
	}
	if newer.ID == img.ID {
		t.Error("agent change kept the image id")
	}
	if cur, err := Current(data); err != nil || cur.ID != newer.ID {
		t.Errorf("Current after rebuild: %v, %v", cur, err)
	}
	if _, err := Load(img.Dir); err != nil {
		t.Errorf("old image: %v", err)
	}

	// Fewer modules: a different image with a shorter list.
	small, err := Build(ctx, BuildOptions{DataDir: data, AgentPath: agent, KernelDeb: deb, Modules: []string{"overlay"}})
	if err != nil {
		t.Fatal(err)
	}
	if small.ID == newer.ID || !slices.Equal(small.Modules, []string{"overlay"}) {
		t.Errorf("modules [overlay]: id %s, modules %v", small.ID, small.Modules)
	}
	if stale, _ := filepath.Glob(filepath.Join(data, "images", ".build-*")); len(stale) != 0 {
		t.Errorf("build directories left: %v", stale)
	}
}

// A complete image for the inputs is reused without reading the kernel
// package at all: here the package is garbage, so any attempt to build
// would fail.
func TestBuildSkipsWhenUpToDate(t *testing.T) {
	dir := t.TempDir()
	deb := filepath.Join(dir, "kernel.deb")
	agent := filepath.Join(dir, "agent")
	os.WriteFile(deb, []byte("not a package"), 0o644)
	os.WriteFile(agent, fakeAgent(t, "x", false), 0o755)
	data := filepath.Join(dir, "data")

	debSum, _ := sha256File(deb)
	agentSum, _ := sha256File(agent)
	key := cacheKey(debSum, agentSum, DefaultModules(), DefaultOnDemandModules())
	imgDir := filepath.Join(data, "images", imageID(key))
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &manifest{Format: FormatVersion, Key: key, KernelRelease: "6.1.0-1", AgentSHA256: agentSum, Modules: []string{"overlay"}}
	for _, f := range []string{VmlinuxFile, VmlinuzFile, InitramfsFile} {
		os.WriteFile(filepath.Join(imgDir, f), []byte(f), 0o644)
		m.Files = append(m.Files, manifestFile{Name: f, Size: int64(len(f))})
	}
	if err := writeManifest(imgDir, m); err != nil {
		t.Fatal(err)
	}

	img, err := Build(context.Background(), BuildOptions{DataDir: data, AgentPath: agent, KernelDeb: deb})
	if err != nil {
		t.Fatalf("up-to-date build did work: %v", err)
	}
	if img.ID != imageID(key) || img.KernelRelease != "6.1.0-1" {
		t.Errorf("image %+v", img)
	}
	if target, err := os.Readlink(filepath.Join(data, "images", "current")); err != nil || target != imageID(key) {
		t.Errorf("current -> %q, %v", target, err)
	}

	// Any input change means a rebuild, which fails on the garbage package.
	_, err = Build(context.Background(), BuildOptions{DataDir: data, AgentPath: agent, KernelDeb: deb, Modules: []string{"fuse"}})
	if err == nil {
		t.Error("changed module list did not rebuild")
	}
	os.WriteFile(agent, fakeAgent(t, "y", false), 0o755)
	if _, err = Build(context.Background(), BuildOptions{DataDir: data, AgentPath: agent, KernelDeb: deb}); err == nil {
		t.Error("changed agent did not rebuild")
	}

	// An image whose files do not match its manifest is not up to date.
	os.WriteFile(agent, fakeAgent(t, "x", false), 0o755)
	os.WriteFile(filepath.Join(imgDir, VmlinuxFile), []byte("truncated"), 0o644)
	if _, err := Load(imgDir); err == nil {
		t.Error("Load accepted an image with a wrong file size")
	}
	if _, err = Build(context.Background(), BuildOptions{DataDir: data, AgentPath: agent, KernelDeb: deb}); err == nil {
		t.Error("damaged image was taken as up to date")
	}
}
