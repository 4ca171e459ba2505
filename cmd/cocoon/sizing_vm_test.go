package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// withMemoryLimit sets the memory limit of the bundle's container.
func withMemoryLimit(t *testing.T, bundle string, limit int64) {
	t.Helper()
	p := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	if spec.Linux.Resources == nil {
		spec.Linux.Resources = &specs.LinuxResources{}
	}
	spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
	if b, err = json.Marshal(&spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRunSizedVM: `cocoon run` sizes the VM from the container's own
// memory limit (--memory is the base) and refuses one beyond --max-memory.
func TestRunSizedVM(t *testing.T) {
	c := needVM(t)
	b := c.bundle(t, "awk", "/MemTotal/ {print $2}", "/proc/meminfo")
	withMemoryLimit(t, b, 512<<20)
	c.deleteAtEnd(t, "sized")
	r := c.run(t, nil, "run", "--boot-timeout", "2m", "--bundle", b, "sized")
	kib, err := strconv.Atoi(strings.TrimSpace(r.stdout))
	if r.code != 0 || err != nil || kib < (256+512-128)<<10 {
		t.Fatalf("a 512 MiB container on a 256 MiB base: %v; want MemTotal near 768 MiB", r)
	}
	r = c.run(t, nil, "run", "--max-memory", "512", "--bundle", b, "toobig")
	if r.code == 0 || !strings.Contains(r.stderr, "more than 512 MiB") {
		t.Errorf("beyond --max-memory: %v", r)
	}
	c.assertGone(t, "toobig")
}

// TestUpdateResizesVM: `cocoon update` raising a running container's
// memory limit grows its VM (what `state` shows and the guest sees), and
// lowering it shrinks the VM back.
func TestUpdateResizesVM(t *testing.T) {
	c := needVM(t)
	b := c.bundle(t, "sleep", "1000")
	withMemoryLimit(t, b, 128<<20)
	c.runDetached(t, "grows", b)
	before := c.state(t, "grows").VM
	c.ok(t, "update", "--memory", "640m", "grows")
	after := c.state(t, "grows").VM
	r := c.run(t, nil, "exec", "grows", "awk", "/MemTotal/ {print $2}", "/proc/meminfo")
	kib, _ := strconv.Atoi(strings.TrimSpace(r.stdout))
	if before.MemoryMiB != 256+128 || after.MemoryMiB != 256+640 || kib < (256+640-128)<<10 {
		t.Errorf("VM %d MiB, then %d MiB after the update, guest MemTotal %d KiB; want 384, 896 and MemTotal near 896 MiB", before.MemoryMiB, after.MemoryMiB, kib)
	}
	c.ok(t, "update", "--memory", "128m", "grows")
	if m := c.state(t, "grows").VM.MemoryMiB; m != 256+128 {
		t.Errorf("after lowering the limit the VM has %d MiB, want 384", m)
	}
}
