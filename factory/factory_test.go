package factory

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
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
