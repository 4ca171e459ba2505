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
	b := &blockMounts{dir: t.TempDir(), sysfs: sys, dev: "/dev", mounted: map[string]string{}}
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
