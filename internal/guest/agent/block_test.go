package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// The disk is found by its serial in sysfs, whatever its name; what the
// host sends is checked before anything is looked up or made.
func TestBlockRootFindsBySerialAndChecks(t *testing.T) {
	sys := t.TempDir()
	for name, serial := range map[string]string{"vda": "other", "vdc": "rb0123456789abcdef01\n"} {
		if err := os.MkdirAll(filepath.Join(sys, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sys, name, "serial"), []byte(serial), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b := &blockMounts{dir: t.TempDir(), sysfs: sys, dev: "/dev", mounted: map[string][]string{}}
	if dev, err := b.find(context.Background(), "rb0123456789abcdef01"); err != nil || dev != "/dev/vdc" {
		t.Fatalf("find: %q, %v", dev, err)
	}
	for _, st := range []*protocol.Storage{
		{Kind: protocol.Storage_SHARED, Path: "rb0123456789abcdef01", Fstype: "ext4"},
		{Kind: protocol.Storage_BLOCK, Path: "../../dev/sda", Fstype: "ext4"},
		{Kind: protocol.Storage_BLOCK, Path: "rb0123456789abcdef0123", Fstype: "ext4"},
		{Kind: protocol.Storage_BLOCK, Path: "rb0123456789abcdef01", Fstype: "nfs"},
		{Kind: protocol.Storage_BLOCK, Path: "rb0123456789abcdef01", Fstype: ""},
	} {
		if _, err := b.mountRoot(context.Background(), "c1", st); err == nil {
			t.Errorf("mountRoot(%+v) succeeded", st)
		}
	}
	if entries, _ := os.ReadDir(b.dir); len(entries) != 0 {
		t.Errorf("refused storages left %v", entries)
	}
}

// A container's disk is queued for a VM: no scheduler, not rotational, a
// large readahead; a setting the kernel lacks is skipped.
func TestBlockTune(t *testing.T) {
	sys := t.TempDir()
	q := filepath.Join(sys, "vdb", "queue")
	if err := os.MkdirAll(q, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"scheduler", "read_ahead_kb"} { // no "rotational"
		if err := os.WriteFile(filepath.Join(q, f), []byte("default"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	(&blockMounts{sysfs: sys}).tune("vdb")
	for f, want := range map[string]string{"scheduler": "none", "read_ahead_kb": "4096"} {
		if b, _ := os.ReadFile(filepath.Join(q, f)); string(b) != want {
			t.Errorf("%s = %q, want %q", f, b, want)
		}
	}
	if _, err := os.Stat(filepath.Join(q, "rotational")); err == nil {
		t.Error("tune created a setting the kernel does not have")
	}
}
