package cocoon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-runtime/cocoon/internal/specutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
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

// A block volume is checked whole before anything is attached: its
// source, its file system and its options.
func TestBlockVolumeChecks(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	// An ext4 superblock's magic, nothing else.
	b := make([]byte, 4096)
	b[1024+56], b[1024+57] = 0x53, 0xef
	if err := os.WriteFile(img, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]specs.Mount{
		"relative source":    {Destination: "/d", Type: "ext4", Source: "img"},
		"missing source":     {Destination: "/d", Type: "ext4", Source: filepath.Join(dir, "none")},
		"directory source":   {Destination: "/d", Type: "ext4", Source: dir},
		"other file system":  {Destination: "/d", Type: "xfs", Source: img},
		"unsupported option": {Destination: "/d", Type: "ext4", Source: img, Options: []string{"data=journal"}},
	} {
		spec := specutil.Default("true")
		spec.Mounts = append(spec.Mounts, m)
		s := &Sandbox{}
		if _, _, err := s.attachVolumes(context.Background(), "c", spec); err == nil || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	spec := specutil.Default("true")
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/d", Type: "ext4", Source: img, Options: []string{"loop", "ro"}},
		specs.Mount{Destination: "/b", Type: "ext4", Source: img, Options: []string{"bind"}})
	if got := blockVolumes(spec); len(got) != 1 || spec.Mounts[got[0]].Destination != "/d" {
		t.Errorf("blockVolumes = %v, want only /d (a bind stays a bind)", got)
	}
	if _, _, err := (&Sandbox{}).attachVolumes(context.Background(), "c", spec); !errors.Is(err, ErrState) {
		t.Errorf("a valid volume without a VM: %v, want ErrState", err)
	}
}
