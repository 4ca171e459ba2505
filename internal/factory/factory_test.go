package factory

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/vm"
	"golang.org/x/sys/unix"
)

func TestKey(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o600)
	base := templated(hypervisor.Config{Kernel: kernel, MemoryMiB: 256, VCPUs: 1})
	k1, err := Key(base)
	if err != nil {
		t.Fatal(err)
	}
	same := base
	same.StateDir, same.SharedFSSocket, same.MemoryFile = "/elsewhere", "/x.sock", "/m"
	if k, _ := Key(same); k != k1 {
		t.Error("per-VM paths changed the template key")
	}
	for name, change := range map[string]func(*hypervisor.Config){
		"memory":        func(c *hypervisor.Config) { c.MemoryMiB = 512 },
		"vcpus":         func(c *hypervisor.Config) { c.VCPUs = 2 },
		"kernel params": func(c *hypervisor.Config) { c.KernelParams = []string{"x=1"} },
		"machine":       func(c *hypervisor.Config) { c.MachineType = "microvm" },
	} {
		c := base
		change(&c)
		if k, _ := Key(c); k == k1 {
			t.Errorf("a different %s kept the template key", name)
		}
	}
	// A rebuilt kernel at the same path is another template.
	later := time.Now().Add(time.Hour)
	os.Chtimes(kernel, later, later)
	if k, _ := Key(base); k == k1 {
		t.Error("a kernel with another mtime kept the template key")
	}
	os.Remove(kernel)
	if _, err := Key(base); err == nil {
		t.Error("a missing kernel gave a key")
	}
}

func TestTemplated(t *testing.T) {
	c := templated(hypervisor.Config{HotplugSlots: 0})
	if c.HotplugSlots != 1 || !c.GenerationID {
		t.Errorf("templated config %+v: want a root port and a generation ID", c)
	}
	if c := templated(hypervisor.Config{HotplugSlots: 3}); c.HotplugSlots != 3 {
		t.Errorf("templated lowered the hotplug slots to %d", c.HotplugSlots)
	}
}

// testFactory is a factory over temporary directories that mounts
// nothing and boots nothing.
func testFactory(t *testing.T, limit int) *Factory {
	t.Helper()
	root := t.TempDir()
	f := New(Config{Dir: filepath.Join(root, "factory"), MemoryDir: filepath.Join(root, "mem"), TemplateLimit: limit}, vm.Options{})
	f.mount = func(context.Context, string, uint32) error { return nil }
	f.boot = func(context.Context, template, hypervisor.Config) error {
		t.Error("a template VM was booted")
		return errors.New("no VMs in unit tests")
	}
	f.removeVM = func(context.Context, string) error {
		t.Error("a template VM was removed")
		return nil
	}
	return f
}

// fakeTemplate puts on disk what a made template holds, its sources
// recorded from cfg when cfg is not nil.
func fakeTemplate(t *testing.T, f *Factory, key string, cfg *hypervisor.Config) template {
	t.Helper()
	tp := f.template(key)
	os.MkdirAll(tp.dir, 0o700)
	os.MkdirAll(filepath.Dir(tp.memory), 0o700)
	os.WriteFile(tp.memory, make([]byte, 4096), 0o600)
	if cfg != nil {
		if err := writeSources(tp.dir, *cfg); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(tp.path(stateFile), nil, 0o600)
	if !tp.ready() {
		t.Fatal("fake template not ready")
	}
	return tp
}

// gone reports whether nothing of template tp is left.
func gone(tp template) bool {
	for _, p := range []string{tp.dir, tp.memory} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			return false
		}
	}
	return true
}

// prune removes the templates whose guest image changed or that an older
// version made, and keeps the current one, the ones still valid, and any
// a process holds (making it or restoring from it).
func TestPrune(t *testing.T) {
	f := testFactory(t, 10)
	img := t.TempDir()
	kernel, initrd := filepath.Join(img, "vmlinux"), filepath.Join(img, "initrd")
	os.WriteFile(kernel, []byte("kernel"), 0o600)
	os.WriteFile(initrd, []byte("initrd"), 0o600)
	cfg := &hypervisor.Config{Kernel: kernel, Initrd: initrd}
	ctx := context.Background()
	current := fakeTemplate(t, f, "000000000000000c", cfg)
	valid := fakeTemplate(t, f, "000000000000000a", cfg) // another configuration of the same image
	old := fakeTemplate(t, f, "0000000000000001", nil)   // made before templates recorded their sources
	busy := fakeTemplate(t, f, "0000000000000b00", nil)
	lock, err := f.lock(ctx, busy, unix.LOCK_SH)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	// The image is rebuilt: a template of it made before is stale.
	rebuilt := fakeTemplate(t, f, "00000000000000eb", cfg)
	later := time.Now().Add(time.Hour)
	os.Chtimes(initrd, later, later)
	for _, tp := range []template{current, valid} {
		os.Remove(tp.path(sourcesFile))
		writeSources(tp.dir, *cfg)
	}

	f.prune(ctx, current.key)
	for _, tp := range []template{current, valid, old, busy, rebuilt} {
		want := tp != old && tp != rebuilt
		if kept := !gone(tp); kept != want {
			t.Errorf("%s: kept %v, want %v", tp.key, kept, want)
		}
	}
	// The current template is kept even when stale: it was just made.
	os.Remove(current.path(sourcesFile))
	f.prune(ctx, current.key)
	if gone(current) {
		t.Error("prune removed the current template")
	}
}
