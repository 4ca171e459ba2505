package factory

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/vm"
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

// prune removes the templates whose guest image changed or that an older
// version made, and keeps the current one, the ones still valid, and any
// a process holds (making it or restoring from it).
func TestPrune(t *testing.T) {
	dir := t.TempDir()
	img := t.TempDir()
	kernel, initrd := filepath.Join(img, "vmlinux"), filepath.Join(img, "initrd")
	os.WriteFile(kernel, []byte("kernel"), 0o600)
	os.WriteFile(initrd, []byte("initrd"), 0o600)
	cfg := hypervisor.Config{Kernel: kernel, Initrd: initrd}
	mk := func(name string, withSources bool) string {
		d := filepath.Join(dir, name)
		os.MkdirAll(d, 0o700)
		os.WriteFile(filepath.Join(d, stateFile), nil, 0o600)
		if withSources {
			if err := writeSources(d, cfg); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	current := mk("current", true)
	valid := mk("valid", true) // another configuration of the same image
	old := mk("old", false)    // made before templates recorded their sources
	busy := mk("busy", false)
	lock, err := lockTemplate(busy, unix.LOCK_SH)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	// The image is rebuilt: a template of it made before is stale.
	rebuilt := mk("rebuilt", true)
	later := time.Now().Add(time.Hour)
	os.Chtimes(initrd, later, later)
	os.Remove(filepath.Join(current, sourcesFile))
	writeSources(current, cfg)
	os.Remove(filepath.Join(valid, sourcesFile))
	writeSources(valid, cfg)

	New(dir, vm.Options{}).prune("current")
	for d, want := range map[string]bool{current: true, valid: true, old: false, busy: true, rebuilt: false} {
		_, err := os.Stat(d)
		if got := err == nil; got != want {
			t.Errorf("%s: kept %v, want %v", filepath.Base(d), got, want)
		}
	}
	// The current template is kept even when stale: it was just made.
	os.Remove(filepath.Join(current, sourcesFile))
	New(dir, vm.Options{}).prune("current")
	if _, err := os.Stat(current); err != nil {
		t.Error("prune removed the current template")
	}
}
