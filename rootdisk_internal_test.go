package cocoon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-runtime/cocoon/internal/specutil"
)

// A RootDisk replaces the bundle's rootfs only if it is an image or a
// block device; the disk is read-only only when RootDiskReadOnly says so,
// whatever the spec's root.readonly (the guest applies that).
func TestRootDisk(t *testing.T) {
	dir := t.TempDir()
	b := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(filepath.Join(b, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := specutil.Default("true")
	spec.Root.Readonly = true
	if err := specutil.WriteBundle(b, spec); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "snapshot")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		disk string
		ok   bool
	}{{img, true}, {dir, false}, {filepath.Join(dir, "missing"), false}, {"/dev/null", false}} {
		cfg := ContainerConfig{ID: "c", Bundle: b, RootDisk: c.disk}
		err := prepareContainer(&cfg)
		if c.ok != (err == nil) || err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("root disk %s: %v, want ok=%v (else ErrInvalidConfig)", c.disk, err, c.ok)
		}
		if c.ok {
			if got := containerRootfs(&cfg); got != img {
				t.Errorf("rootfs %s, want the root disk %s", got, img)
			}
			if rootDiskReadOnly(&cfg) {
				t.Error("a read-only root in the spec attaches the root disk read-only")
			}
			cfg.RootDiskReadOnly = true
			if !rootDiskReadOnly(&cfg) {
				t.Error("RootDiskReadOnly is not honoured")
			}
		}
	}
	cfg := ContainerConfig{ID: "c", Bundle: b}
	if err := prepareContainer(&cfg); err != nil {
		t.Fatal(err)
	}
	if !rootDiskReadOnly(&cfg) || containerRootfs(&cfg) != filepath.Join(b, "rootfs") {
		t.Error("without a root disk, the spec's root and its read-only flag rule")
	}
}
